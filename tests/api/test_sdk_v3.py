"""Honcho's current SDKs, unmodified, drive scenarios against `rapport serve` with auth on:

- Python (``honcho-ai`` 2.x, in its own venv, tests/sdk/honcho_v3_scenario.py): workspaces, peers,
  sessions of several peers, messages in bulk, lists, clone, delete, search, context, queue status,
  conclusions, peer cards, representations and scoped keys;
- TypeScript (``@honcho-ai/sdk`` 2.x on Node, tests/sdk/ts/scenario.mjs): a short version of it.

`make install` (scripts/install) makes both SDKs' installs."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.api.auth import mint_key
from tests.db import scratch_database
from tests.served import REPO, rapport_serve

pytestmark = pytest.mark.slow

SDK_PYTHON = REPO / ".venv-honcho3" / "bin" / "python"
SCENARIO = REPO / "tests" / "sdk" / "honcho_v3_scenario.py"
TS = REPO / "tests" / "sdk" / "ts"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A `rapport serve` with auth on: the environment that tells a scenario its URL and admin key."""
    secret = secrets.token_hex(32)
    env = {"AUTH_USE_AUTH": "true", "AUTH_JWT_SECRET": secret, "DERIVER_ENABLED": "false"}
    home: Path = tmp_path_factory.mktemp("sdk-v3")
    with (
        scratch_database("rapport_sdk_v3") as url,
        rapport_serve({"DB_CONNECTION_URI": url, **env}, home) as base,
    ):
        yield {**os.environ, "RAPPORT_URL": base, "RAPPORT_ADMIN_KEY": mint_key(secret)}


def test_the_python_sdk_scenario_passes(served: dict[str, str]) -> None:
    assert SDK_PYTHON.exists(), f"{SDK_PYTHON} is missing: `make install` (scripts/install) makes it"
    run = subprocess.run(
        [str(SDK_PYTHON), str(SCENARIO)], env=served, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == 7, run.stdout


@pytest.mark.skipif(shutil.which("node") is None, reason="Node is not installed: the TypeScript SDK needs it")
def test_the_typescript_sdk_scenario_passes(served: dict[str, str]) -> None:
    assert (TS / "node_modules" / "@honcho-ai" / "sdk").exists(), (
        f"the TypeScript SDK is not installed in {TS}: `make install` (scripts/install) runs `npm ci` there"
    )
    run = subprocess.run(
        ["node", "scenario.mjs"], cwd=TS, env=served, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == 3, run.stdout
