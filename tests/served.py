"""Run `rapport serve` as a real subprocess (its own Ray, real HTTP) for end-to-end tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


# Ports for listeners a test starts are drawn from below the kernel's ephemeral range (32768-60999 by
# default) and above Ray's worker ports (10002-19999): a port the kernel hands out (bind to port 0) is free
# only until some process's outbound connection takes it as its local port, and Ray and Postgres clients
# open many. HAProxy once failed to start in a bench for that reason ("cannot bind socket").
PORT_RANGE = (20000, 32767)
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range, not handed out before in this process."""
    low, high = PORT_RANGE
    ephemeral_low, ephemeral_high = ephemeral_range()
    candidates = [p for p in range(low, high + 1) if not ephemeral_low <= p <= ephemeral_high]
    for port in random.sample(candidates, min(200, len(candidates))):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(
        f"no free port in {low}-{high} outside the ephemeral range {ephemeral_low}-{ephemeral_high}"
    )


def wait_healthy(url: str, process: subprocess.Popen, log: Path | None, timeout_s: float = 180) -> None:
    """Return once ``url``/health answers 200; raise (with the log's tail) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        tail = log.read_text()[-4000:] if log is not None else ""
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited early:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not healthy in {timeout_s}s:\n{tail}")
        time.sleep(0.5)


def side_ports() -> dict[str, str]:
    """Free ports for HAProxy's stats and metrics listeners (fixed at 8404 and 9101 by default) and for
    Ray's metrics agent (serve.metrics_port, 9464), so a test or bench instance can run beside another
    Rapport on the same machine."""
    return {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "SERVE_METRICS_PORT": str(free_port()),
    }


@contextmanager
def rapport_serve(env: dict[str, str], home: Path, startup_timeout_s: float = 180) -> Iterator[str]:
    """Start `rapport serve`, yield its base URL once /health answers, then stop it with SIGTERM.

    On exit it checks the service stopped cleanly (exit code 0, "Rapport stopped" printed).
    """
    port = free_port()
    log_path = home / "serve.log"
    home.mkdir(parents=True, exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "AUTH_", "RAY_ADDRESS"))},
        "RAPPORT_HOME": str(home),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        **side_ports(),
        **env,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rapport.cli", "serve", "--port", str(port), "--config", str(REPO / "serve_config.yaml")],
            cwd=home, env=full_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process, log_path, startup_timeout_s)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
    output = log_path.read_text()
    assert code == 0, f"rapport serve exited with {code}:\n{output[-4000:]}"
    assert "Rapport stopped" in output, output[-4000:]
