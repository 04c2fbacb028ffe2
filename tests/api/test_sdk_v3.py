"""Honcho's current Python SDK (``honcho-ai`` 2.x, unmodified) drives a scenario against `rapport serve`
with auth on (tests/sdk/honcho_v3_scenario.py, in its own venv): workspaces, peers, sessions of several
peers, messages in bulk, lists, clone, delete, search, context, queue status, conclusions, peer cards,
representations and scoped keys."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from deployments.api.auth import mint_key
from tests.db import scratch_database
from tests.served import REPO, rapport_serve

pytestmark = pytest.mark.slow

SDK_PYTHON = REPO / ".venv-honcho3" / "bin" / "python"
SCENARIO = REPO / "tests" / "sdk" / "honcho_v3_scenario.py"


def test_the_v3_python_sdk_scenario_passes_against_rapport_serve(tmp_path: Path) -> None:
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: `make install` (scripts/install) makes it"
    secret = secrets.token_hex(32)
    env = {"AUTH_USE_AUTH": "true", "AUTH_JWT_SECRET": secret, "DERIVER_ENABLED": "false"}
    with (
        scratch_database("rapport_sdk_v3") as url,
        rapport_serve({"DB_CONNECTION_URI": url, **env}, tmp_path) as base,
    ):
        run = subprocess.run(
            [str(SDK_PYTHON), str(SCENARIO)],
            env={**os.environ, "RAPPORT_URL": base, "RAPPORT_ADMIN_KEY": mint_key(secret)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == 7, run.stdout
