"""serve_config.yaml: what `rapport serve` reads from it, and `serve run` deploying it to a running Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.app import read_serve_config
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
            path = tmp_path / "serve_config.yaml"
            path.write_text(yaml.safe_dump(config))
            # Ray 2.60 clusters use token auth; the CLI reads the token from ~/.ray when told to.
            run_env = {**env, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
            serve_run = subprocess.Popen(
                [str(Path(sys.executable).parent / "serve"), "run", str(path)],
                env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, serve_run, None)
            created = httpx.post(f"{url}/v1/apps", json={"name": "deployed-by-serve-run"}, timeout=10)
            assert created.status_code == 200, created.text
            serve_run.send_signal(signal.SIGINT)
            # It deletes the application and waits out each replica's graceful shutdown: on a busy
            # 2-core box (a full CI run) that has taken over a minute.
            serve_run.wait(timeout=180)
    finally:
        if serve_run is not None and serve_run.poll() is None:
            serve_run.kill()
        ray_driver.stdin.close()  # type: ignore[union-attr]  # the driver exits and its Ray with it
        try:
            ray_driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ray_driver.kill()
