"""`rapport serve`: Postgres, migrations, Ray and the Serve application in one foreground process."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import psutil

from cluster import SERVE_APP
from rapport.settings import Settings, mask_url_password

log = logging.getLogger(__name__)

APP_NAME = SERVE_APP

# Ray must never wait on the network: no usage-stats upload. Set before Ray is imported.
OFFLINE_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# For a Ray that `rapport serve` starts itself (see docs/benchmarks.md for what each gave):
LOCAL_RAY_ENV = {
    "RAY_worker_niceness": "0",  # Ray runs workers at nice 15; the API replicas are latency-bound
    # The Serve controller's loop runs every 0.1 s by default: 7-8% of a core on an idle 2-core box, CPU the
    # local model does not get. Every 1 s it took 2%, and `rapport serve` was healthy as soon.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",
}
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",  # HAProxy in front, routing straight to the replicas
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_LOG_TO_STDERR": "1",  # keep replica logs on the console (the profile turns this off)
    # A stopping replica keeps serving for this long so HAProxy can stop routing to it (default 30 s,
    # sized for multi-node clusters). One node's HAProxy reloads in under a second; 3 s keeps Ctrl-C quick.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
}
# How long the application gets to stop gracefully before Ray is stopped under it (Serve's own limits are
# 30 s for serve.shutdown and 60 s for serve.delete, but not every call they make has one).
GRACEFUL_STOP_S = 40
# What the teardown's last step gives a leftover process between SIGTERM and SIGKILL. Ray's agents, once
# their raylet is gone, ignore SIGTERM.
LEFTOVER_GRACE_S = 3.0


@dataclass
class ServeOptions:
    host: str
    port: int
    config: Path | None


class Interrupted(KeyboardInterrupt):
    """A signal arrived while `rapport serve` started or served: unwinds it from wherever it was, so that the
    teardown stops what was started. A KeyboardInterrupt, which libraries let through (``except Exception``)
    or cancel their work on (psycopg its query); Ray's ray.get turns it into a plain KeyboardInterrupt, so
    catch that and ask `StopSignals.last` which signal it was."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)


class StopSignals:
    """SIGINT and SIGTERM while `rapport serve` runs.

    In an armed block (``interrupting``), a signal raises `Interrupted` in the main thread, which ends
    whatever blocking call it was in (ray.init, serve.run's wait for the replicas, a migration's query).
    The handler disarms itself as it raises: one signal unwinds once, and a second cannot cut short the
    handlers of the first. A signal that finds it disarmed is kept, and raised by the next armed block.
    """

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None  # the last raised
        self.pending: int | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def arrived(self, signum: int) -> NoReturn:
        """``signum`` arrived through another handler (Ray's): unwind as if it had come through this one."""
        self.first = self.first or signum
        self._raise(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGALRM and not self.armed:
            return  # a deadline that passed as its block ended
        stopping = self.first is not None
        if signum != signal.SIGALRM:
            self.first = self.first or signum
        if self.armed:
            self._raise(signum)
        self.pending = signum
        name = signal.Signals(signum).name
        log.warning("%s: %s", name, "already stopping" if stopping else "stopping once this step is done")

    def _raise(self, signum: int) -> NoReturn:
        self.armed = False
        self.pending = None
        self.last = signum
        raise Interrupted(signum)

    @contextmanager
    def interrupting(self, within_s: float | None = None) -> Iterator[None]:
        """Within, a signal raises `Interrupted` (one kept from before at once), and so does the end of
        ``within_s`` (as SIGALRM); leaving, whatever way, disarms."""
        try:
            self.armed = True
            if within_s is not None:
                signal.setitimer(signal.ITIMER_REAL, within_s)
            # Armed before looking: a signal between the two raises from the handler, one before from here.
            if self.pending is not None:
                self._raise(self.pending)
            yield
        finally:
            self.armed = False
            if within_s is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within an armed block, a signal waits for the end of this one: what it does must not be cut in
        two."""
        self.armed = False
        yield
        self.armed = True
        if self.pending is not None:
            self._raise(self.pending)


@dataclass
class _Run:
    """What `rapport serve` has started so far, and what it was doing: what the teardown has to stop."""

    phase: str = "starting"
    embedded_home: Path | None = None  # the embedded PostgreSQL's home, once its start has begun
    ray: str | None = None  # "local" (ours, to stop) or the address of a Ray we connected to
    serve_started: bool = False
    app_deployed: bool = False


def run_service(settings: Settings, options: ServeOptions) -> int:
    """Start everything, print the URL and serve until SIGINT or SIGTERM; then stop all it started, whatever
    it was doing when the signal came. Returns the exit status: 0 when stopped while serving, 128 + the
    signal's number when a signal cut the start-up short."""
    signals = StopSignals()
    run = _Run()
    _adopt_orphans()
    try:
        with signals.interrupting():
            signals.install()
            _start_and_serve(settings, options, signals, run)
    except KeyboardInterrupt:  # see Interrupted
        signum = signals.last or signal.SIGINT  # SIGINT: before the handlers were in place
        log.warning("%s while %s: stopping Rapport", signal.Signals(signum).name, run.phase)
        status = 0 if run.phase == "serving" else 128 + signum
    finally:
        try:
            _stop(run, signals)
        finally:
            signals.restore()
    return status


def _start_and_serve(settings: Settings, options: ServeOptions, signals: StopSignals, run: _Run) -> NoReturn:
    address = os.environ.get("RAY_ADDRESS")
    ray_env = dict(OFFLINE_RAY_ENV)
    if not address:  # our own Ray: we choose its proxy; a shared cluster's operators choose theirs
        ray_env |= LOCAL_RAY_ENV | (HAPROXY_ENV if settings.serve.proxy == "haproxy" else {})
    for key, value in ray_env.items():
        os.environ.setdefault(key, value)

    import ray
    from ray import serve

    from deployments.app import rapport_application, read_serve_config
    from storage import migrate
    from storage.db import resolve_database_url

    deployment_options: dict[str, dict] = {}
    if options.config is not None:
        _, deployment_options = read_serve_config(options.config)

    run.phase = "starting the database"
    if not settings.db.connection_uri:
        run.embedded_home = settings.home
    # Not cut in two: initdb killed half-way leaves a data directory that never starts again.
    with signals.deferred():
        url = resolve_database_url(settings)
    log.info("database: %s", mask_url_password(url))
    if settings.db.migrate_on_start:
        run.phase = "migrating the database"
        migrate.upgrade(url)
    # Replicas get the resolved database and an absolute home, whatever their working directory.
    settings = settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"connection_uri": url}),
            "app": settings.app.model_copy(update={"home": settings.home}),
        }
    )

    run.phase = "starting Ray"
    run.ray = address or "local"
    log.info("starting %s", f"a connection to Ray at {address}" if address else "a local Ray")
    metrics: dict[str, Any] = {} if address else {"_metrics_export_port": settings.serve.metrics_port or None}
    try:
        ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING, **metrics)
    except SystemExit as exit_:
        # ray.init begins by installing a SIGTERM handler that calls sys.exit(SIGTERM).
        if exit_.code == signal.SIGTERM:
            signals.arrived(signal.SIGTERM)
        raise
    finally:
        signals.install()  # over Ray's, which exits without stopping anything

    run.phase = "deploying the application"
    run.serve_started = True
    serve.start(http_options={"host": options.host, "port": options.port})
    run.app_deployed = True
    serve.run(
        rapport_application(settings, deployment_options), name=APP_NAME, route_prefix="/", blocking=False
    )
    run.phase = "serving"
    print(f"Rapport is serving on http://{options.host}:{options.port}  (Ctrl-C stops it)", flush=True)
    if not address and settings.serve.metrics_port:
        print(f"metrics for Prometheus: http://127.0.0.1:{settings.serve.metrics_port}/metrics", flush=True)
    while True:
        time.sleep(3600)


def _stop(run: _Run, signals: StopSignals) -> None:
    """Stop what ``run`` started, in a bounded time: the application gracefully unless a second signal
    comes, then Ray, the embedded PostgreSQL and any process of ours left behind."""
    signals.install()  # again: a SIGTERM just as ray.init returned may have found Ray's handler still there
    print("stopping Rapport ...", flush=True)
    stopped: list[str] = []
    tree = _descendants()  # before Ray goes: what it started may outlive its parent
    if run.ray is not None:
        import ray
        from ray import serve

        try:
            with signals.interrupting(within_s=GRACEFUL_STOP_S):
                if run.ray == "local" and run.serve_started:
                    serve.shutdown()  # deletes the application, then stops the proxies and HAProxy
                    stopped.append("the Serve application")
                elif run.app_deployed:
                    serve.delete(APP_NAME)  # from a shared cluster, only what we deployed
                    stopped.append("the Serve application")
        except KeyboardInterrupt:  # see Interrupted
            why = (
                f"not stopped in {GRACEFUL_STOP_S} s" if signals.last == signal.SIGALRM else "a second signal"
            )
            log.warning("the Serve application: %s; stopping Ray under it", why)
        except Exception:
            log.exception("the Serve application did not stop cleanly; stopping Ray under it")
        try:
            ray.shutdown()  # our own Ray: stops the processes ray.init started; a shared one: disconnects
            stopped.append("the local Ray" if run.ray == "local" else f"the connection to Ray at {run.ray}")
        except Exception:
            log.exception("ray.shutdown failed; its processes are stopped below")
    kept: set[int] = set()
    if run.embedded_home is not None:
        from storage.embedded import stop_embedded_postgres

        try:
            users = stop_embedded_postgres(run.embedded_home)
        except Exception:  # then, if this process started it, the last step stops it
            log.exception("the embedded PostgreSQL did not stop cleanly")
        else:
            if users:
                log.info(
                    "the embedded PostgreSQL is left running for processes %s", ", ".join(map(str, users))
                )
                kept = _postgres_processes(run.embedded_home)
            else:
                stopped.append("the embedded PostgreSQL")
    leftovers: list[str] = []
    for _ in range(3):  # what a stopping process starts or orphans shows up in the next round
        left = [p for p in tree + _descendants() if p.pid not in kept]
        tree = []
        stopping = _stop_processes(left)
        if not stopping:
            break
        leftovers += stopping
    if leftovers:
        stopped.append(f"{len(leftovers)} processes left behind ({', '.join(leftovers)})")
    print(f"Rapport stopped: {', '.join(stopped) or 'nothing had started'}", flush=True)


def _adopt_orphans() -> None:
    """Make this process its descendants' reaper (Linux): what outlives its parent (HAProxy the Serve proxy
    that starts it, Ray's agents their raylet, PostgreSQL the pg_ctl that starts it) is reparented here and
    not to init, so the teardown finds it among this process's descendants, and no other session's."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        log.warning("cannot adopt orphaned processes (%s)", os.strerror(ctypes.get_errno()))


def _descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _postgres_processes(home: Path) -> set[int]:
    from storage.embedded import embedded_postgres_pid

    pid = embedded_postgres_pid(home)
    if pid is None:
        return set()
    try:
        postmaster = psutil.Process(pid)
        return {pid, *(child.pid for child in postmaster.children(recursive=True))}
    except psutil.Error:
        return set()


def _stop_processes(processes: list[psutil.Process]) -> list[str]:
    """SIGTERM, then SIGKILL after LEFTOVER_GRACE_S, to those of ``processes`` still running (psutil checks
    that a pid still names the process it saw). Returns those it stopped, as "name (pid)"."""
    running: dict[int, psutil.Process] = {}
    for process in processes:
        with suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE:
                running[process.pid] = process
    names = []
    for process in running.values():
        with suppress(psutil.Error):
            names.append(f"{_name(process)} ({process.pid})")
            process.terminate()
    # Waiting also reaps the adopted ones (zombies otherwise, until this process exits).
    _, survivors = psutil.wait_procs(list(running.values()), timeout=LEFTOVER_GRACE_S)
    for process in survivors:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(survivors, timeout=LEFTOVER_GRACE_S)
    return names


def _name(process: psutil.Process) -> str:
    """What a process is, for the log: a Python process by its script (Ray's agents and monitors)."""
    name = process.name()
    if name.startswith("python"):
        scripts = [Path(arg).name for arg in process.cmdline()[1:] if arg.endswith(".py")]
        return scripts[0] if scripts else name
    return name
