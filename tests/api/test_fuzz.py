"""Property-based run over our own /openapi.json against a live server (schemathesis).

Every operation but the dialectic chat gets generated valid and invalid requests, and four checks must
hold for every response: no 5xx, only documented statuses, bodies matching the documented schema, and
schema-violating requests refused. The seed is fixed, so a red run replays exactly:

    FUZZ_SEED=<seed> FUZZ_MAX_EXAMPLES=<n> .venv/bin/python -m pytest tests/api/test_fuzz.py

(the failing cases are printed with a curl line each, and written to a pytest file beside the log).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.api.auth import mint_key
from tests.db import scratch_database
from tests.served import REPO, free_port, wait_healthy

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("FUZZ_SEED", "20261123"))
# 50 examples an operation: 2-3 minutes on a 2-core machine (100 took 5 minutes of CI's 30 on a slow day).
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "50"))
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,negative_data_rejection"
SECRET = "fuzz-c71e4a09b3d25f86e0a7c3b91d4f62e85b0a9c17d3e6f24b"


def test_the_api_keeps_to_its_openapi_document(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "server.log"
    with scratch_database("rapport_fuzz") as database_url, server_log.open("w") as log:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "AUTH_", "VECTOR_STORE_"))},
            "DB_CONNECTION_URI": database_url,
            "VECTOR_STORE_URI": str(tmp_path / "lancedb"),
            "RAPPORT_HOME": str(tmp_path),
            "AUTH_USE_AUTH": "true",
            "AUTH_JWT_SECRET": SECRET,
            "APP_LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "deployments.api.app:asgi_app",
             "--port", str(port), "--no-access-log"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_healthy(url, server, server_log)
            run = subprocess.run(
                [str(Path(sys.executable).parent / "schemathesis"),
                 "--config-file", str(REPO / "tests/api/schemathesis.toml"),
                 "run", f"{url}/openapi.json",
                 "--checks", CHECKS,
                 "--exclude-path-regex", "/chat$",  # would load the local LLM; tests/api/test_context_chat.py
                 "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
                 "--generation-database", "none",  # no cases carried over from earlier runs
                 "--workers", "1", "--no-color", "--output-truncate", "true",
                 "--report", "junit,pytest", "--report-dir", str(tmp_path / "report")],
                cwd=tmp_path, env={**env, "RAPPORT_FUZZ_KEY": mint_key(SECRET)},
                capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    output = run.stdout + run.stderr
    summary = output[output.rfind("SUMMARY") :] if "SUMMARY" in output else output[-3000:]
    assert run.returncode == 0, (
        f"schemathesis found problems (seed {SEED}, {MAX_EXAMPLES} examples; report in {tmp_path}):\n"
        f"{output[-12000:]}\nserver log:\n{server_log.read_text()[-3000:]}"
    )
    assert "0 generated" not in summary and " passed" in summary, summary
