"""Run `rapport serve` as a real subprocess (its own Ray, real HTTP) for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
SERVING = "Rapport is serving on"  # `rapport serve` prints it once the application is deployed


# Ports for listeners a test starts are drawn from below the kernel's ephemeral range (32768-60999 by
# default) and above Ray's worker ports (10002-19999): a port the kernel hands out (bind to port 0) is free
# only until some process's outbound connection takes it as its local port, and Ray and Postgres clients
# open many. HAProxy once failed to start in a bench for that reason ("cannot bind socket").
PORT_RANGE = (20000, 32767)
# Less the ports Ray Serve's replicas listen on (direct ingress, RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT):
# any Ray on the machine hands them out, so a test's listener there can take a replica's port, or lose it.
SERVE_REPLICA_PORTS = (30000, 31000)
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range and Serve's replica ports, not handed out before
    in this process."""
    low, high = PORT_RANGE
    ephemeral_low, ephemeral_high = ephemeral_range()
    replica_low, replica_high = SERVE_REPLICA_PORTS
    candidates = [
        p
        for p in range(low, high + 1)
        if not (ephemeral_low <= p <= ephemeral_high or replica_low <= p <= replica_high)
    ]
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
            raise RuntimeError(f"{process.args!r:.200} exited early with {process.returncode}:\n{tail}")
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


def serve_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """The environment `rapport serve` runs in for a test: its own RAPPORT_HOME, free side ports (see
    ``side_ports``) and ``env`` over the test process's, less its database, auth and Ray address."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DB_", "AUTH_", "RAY_ADDRESS"))},
        "RAPPORT_HOME": str(home),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        **side_ports(),
        **env,
    }


def start_rapport_serve(full_env: dict[str, str], home: Path, port: int, log_path: Path) -> subprocess.Popen:
    """Start `rapport serve` on ``port`` in ``full_env`` (see ``serve_env``), its output in ``log_path``."""
    home.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "rapport.cli", "serve", "--port", str(port), "--config", str(REPO / "serve_config.yaml")],
            cwd=home, env=full_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


@contextmanager
def rapport_serve(
    env: dict[str, str], home: Path, startup_timeout_s: float = 180, *, port: int | None = None
) -> Iterator[str]:
    """Start `rapport serve` (on ``port``, else a free one), yield its base URL once /health answers, then
    stop it with SIGTERM. ``env`` may hold the side ports (``serve_env``) of an earlier start, to reuse them.

    On exit it checks the service stopped cleanly (exit code 0, "Rapport stopped" printed, nothing it
    started still running).
    """
    port = port or free_port()
    log_path = home / "serve.log"
    process = start_rapport_serve(serve_env(env, home), home, port, log_path)
    url = f"http://127.0.0.1:{port}"
    with ProcessTree(process.pid) as tree:
        try:
            deadline = time.monotonic() + startup_timeout_s
            wait_healthy(url, process, log_path, startup_timeout_s)
            # The API answers before serve.run returns (the other deployments may still be starting); a
            # signal before this line is a stop during start-up, which exits 143, not 0.
            while SERVING not in log_path.read_text():
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.1)
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
    left = tree.alive()
    assert not left, "still running after `rapport serve` stopped:\n" + "\n".join(left)


class ProcessTree:
    """Every process started under ``pid`` while it runs, sampled every ``interval_s``; also what was
    orphaned after the sample that saw it (HAProxy outliving the Serve proxy that started it, Ray's agents
    the raylet), which a look at the tree after the fact would miss."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name=f"process-tree-{pid}", daemon=True)

    def __enter__(self) -> ProcessTree:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                return  # the root exited: what it left is in `seen`
            for child in children:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault((child.pid, child.create_time()), child)
            self._done.wait(self._interval_s)

    def alive(self, grace_s: float = 5) -> list[str]:
        """The processes seen that still run after ``grace_s`` (zombies, which run nothing, excepted)."""
        deadline = time.monotonic() + grace_s
        while True:
            running = []
            for process in list(self.seen.values()):
                with contextlib.suppress(psutil.Error):
                    if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                        running.append(f"{process.pid} {' '.join(process.cmdline())[:160]}")
            if not running or time.monotonic() > deadline:
                return running
            time.sleep(0.2)

    def kill_alive(self) -> None:
        """Kill what still runs, so that a failing test leaves nothing behind either."""
        for process in list(self.seen.values()):
            with contextlib.suppress(psutil.Error):
                if process.is_running():
                    process.kill()
