"""The fault soak (bench/soak.py), short: a real `rapport serve` under writers, readers, erasures of the
users being written to, long and hostile messages, a derivation worker killed and PostgreSQL restarted;
every invariant checked afterwards must hold."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.served import REPO

pytestmark = pytest.mark.slow


def test_a_short_soak_breaks_no_promise() -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "30"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    report = run.stdout + run.stderr[-4000:]
    assert run.returncode == 0 and "violations: 0" in run.stdout, report
    assert "derivation worker SIGKILL: 1" in run.stdout and "PostgreSQL restart: 1" in run.stdout, report
    assert "erasures: 0" not in run.stdout, report
