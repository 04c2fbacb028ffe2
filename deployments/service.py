"""`rapport serve`: Postgres, migrations, Ray and the Serve application in one foreground process."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapport.settings import Settings, mask_url_password

log = logging.getLogger(__name__)

APP_NAME = "rapport"

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


@dataclass
class ServeOptions:
    host: str
    port: int
    config: Path | None


def run_service(settings: Settings, options: ServeOptions, ready: threading.Event | None = None) -> None:
    """Start everything, print the URL, block until SIGINT/SIGTERM, then stop what was started."""
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

    url = resolve_database_url(settings)  # starts the embedded Postgres when none is configured
    log.info("database: %s", mask_url_password(url))
    if settings.db.migrate_on_start:
        migrate.upgrade(url)
    # Replicas get the resolved database and an absolute home, whatever their working directory.
    settings = settings.model_copy(
        update={
            "db": settings.db.model_copy(update={"connection_uri": url}),
            "app": settings.app.model_copy(update={"home": settings.home}),
        }
    )

    started_ray = not ray.is_initialized() and not address
    if not ray.is_initialized():
        log.info("starting %s", f"a connection to Ray at {address}" if address else "a local Ray")
        metrics: dict[str, Any] = (
            {} if address else {"_metrics_export_port": settings.serve.metrics_port or None}
        )
        ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING, **metrics)
    # After ray.init, which installs handlers of its own that exit without cleaning up.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(
            rapport_application(settings, deployment_options),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
        print(f"Rapport is serving on http://{options.host}:{options.port}  (Ctrl-C stops it)", flush=True)
        if started_ray and settings.serve.metrics_port:
            print(
                f"metrics for Prometheus: http://127.0.0.1:{settings.serve.metrics_port}/metrics", flush=True
            )
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            pass
        print("stopping Rapport ...", flush=True)
    finally:
        try:
            serve.delete(APP_NAME)
            if started_ray:
                serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("Rapport stopped", flush=True)
