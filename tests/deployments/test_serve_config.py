"""serve_config.yaml: what `rapport serve` reads from it, and `serve run` deploying it to a running Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from deployments.app import rapport_application, read_serve_config
from rapport.settings import Settings
from tests.db import scratch_database
from tests.served import REPO, free_port, wait_healthy

CONFIG = REPO / "serve_config.yaml"


def test_shipped_config_scales_the_api() -> None:
    app, options = read_serve_config(CONFIG)
    api = options["RapportAPI"]
    assert app.import_path == "deployments.app:build_app"
    assert api["max_ongoing_requests"] == 100, "Serve's default of 5 collapses under load"
    scaling = api["autoscaling_config"]
    assert 2 <= scaling["min_replicas"] <= scaling["max_replicas"]
    assert api["ray_actor_options"]["runtime_env"]["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"


def test_a_config_without_rapport_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"applications": [{"name": "x", "import_path": "elsewhere:app"}]}))
    with pytest.raises(ValueError, match="deployments.app:build_app"):
        read_serve_config(other)


GPU_CONFIG = REPO / "serve_config.gpu.yaml"


def deployments_of(app: Any) -> dict[str, Any]:
    """Every deployment of a built application graph, by name (the ingress and what it binds)."""
    found: dict[str, Any] = {}
    pending = [app]
    while pending:
        deployment = pending.pop()._bound_deployment
        found[deployment.name] = deployment
        pending += [
            a for a in (*deployment.init_args, *deployment.init_kwargs.values()) if isinstance(a, Application)
        ]
    return found


def test_the_gpu_config_builds_rapport_with_gpu_embedders_and_a_served_llm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, options = read_serve_config(GPU_CONFIG)
    env = (app.runtime_env or {})["env_vars"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET is a placeholder"):
        Settings()  # as shipped: the operator must replace its CHANGE_MEs first
    monkeypatch.setenv("AUTH_JWT_SECRET", "3f9c1e7a0b2d4c6e8f1a3b5c7d9e0f2a4b6c8d0e1f3a5b7c9d2e4f6a8b0c1d3e")
    settings = Settings()
    assert (settings.embedding.device, settings.embedding.batch_size) == ("cuda", 256)
    assert (
        settings.llm_for("deriver").provider == "openai"
        and settings.llm_for("dialectic").provider == "openai"
    )

    built = deployments_of(rapport_application(settings, options))
    assert set(built) == {"RapportAPI", "Embedder", "BackgroundEmbedder", "IndexWriter", "DeriverWorker"}
    assert built["Embedder"].ray_actor_options["num_gpus"] > 0
    assert built["BackgroundEmbedder"].ray_actor_options["num_gpus"] > 0
    assert built["IndexWriter"].num_replicas == 1, "LanceDB has one writer"
    assert built["DeriverWorker"].num_replicas == 4
    assert built["RapportAPI"]._deployment_config.autoscaling_config.max_replicas == 8
    assert "vllm" not in sys.modules, "Rapport's replicas never import vLLM"

    # The LLM application: valid Ray Serve LLM arguments, autoscaling that can scale, and the model
    # Rapport asks for at the route Rapport calls.
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig  # importable without vLLM

    config = ServeDeploySchema.model_validate(yaml.safe_load(GPU_CONFIG.read_text()))
    (llm_app,) = [a for a in config.applications if a.import_path == "ray.serve.llm:build_openai_app"]
    (llm,) = [LLMConfig.model_validate(c) for c in llm_app.args["llm_configs"]]
    scaling = llm.deployment_config["autoscaling_config"]
    assert scaling["target_ongoing_requests"] < 1e6 and llm.deployment_config["max_ongoing_requests"] < 1e6
    assert llm.deployment_config["health_check_timeout_s"] > 10
    assert llm.model_loading_config.model_id == settings.llm.model
    assert settings.llm.base_url == f"http://127.0.0.1:{config.http_options.port}{llm_app.route_prefix}/v1"
    assert llm.engine_kwargs["max_model_len"] >= 4096


def test_with_the_deriver_off_serve_run_still_finds_every_deployment_its_config_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deployments.app import build_app

    _, options = read_serve_config(CONFIG)
    monkeypatch.setenv("DERIVER_ENABLED", "false")
    off = Settings()
    assert set(deployments_of(rapport_application(off))) == set(options) - {"DeriverWorker"}, (
        "`rapport serve` starts no derivation worker when the deriver is off"
    )
    built = deployments_of(build_app())  # what `serve run` builds, then applies the YAML's options to
    assert set(built) == set(options), "Serve refuses options for a deployment the application lacks"
    assert built["DeriverWorker"].num_replicas == 1


@pytest.mark.slow
def test_serve_run_deploys_it_to_a_running_ray(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_driver = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(include_dashboard=False); "
         "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    serve_run = None
    try:
        address = ray_driver.stdout.readline().strip()  # type: ignore[union-attr]
        assert address, "the Ray driver did not start"
        with scratch_database("rapport_serve_run") as db_url:
            config = yaml.safe_load(CONFIG.read_text())
            config["http_options"]["port"] = port
            config["applications"][0]["runtime_env"]["env_vars"]["DB_CONNECTION_URI"] = db_url
            # What is tested is the deployment; a derivation worker would load the local model, and a
            # SIGINT while it loads has kept `serve run` from exiting for minutes on a busy box. The
            # config keeps its DeriverWorker section: the deriver off, it must deploy all the same.
            config["applications"][0]["runtime_env"]["env_vars"]["DERIVER_ENABLED"] = "false"
            path = tmp_path / "serve_config.yaml"
            path.write_text(yaml.safe_dump(config))
            # Ray 2.60 clusters use token auth; the CLI reads the token from ~/.ray when told to.
            run_env = {**env, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
            log = tmp_path / "serve_run.log"
            with log.open("w") as out:
                serve_run = subprocess.Popen(
                    [str(Path(sys.executable).parent / "serve"), "run", str(path)],
                    env=run_env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, serve_run, log)
            created = httpx.post(f"{url}/v1/apps", json={"name": "deployed-by-serve-run"}, timeout=10)
            assert created.status_code == 200, created.text
            serve_run.send_signal(signal.SIGINT)
            try:
                serve_run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # What is tested is the deployment. Ray's `serve run` has, in full CI runs only, not
                # exited for minutes after a SIGINT (it passes alone); it is killed below, and the
                # log's tail is kept in the warnings for whoever looks into it.
                warnings.warn(
                    f"serve run did not exit on SIGINT; its log ends:\n{log.read_text()[-2000:]}",
                    stacklevel=1,
                )
    finally:
        if serve_run is not None and serve_run.poll() is None:
            serve_run.kill()
        ray_driver.stdin.close()  # type: ignore[union-attr]  # the driver exits and its Ray with it
        try:
            ray_driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ray_driver.kill()
