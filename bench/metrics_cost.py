"""What recording a request's metrics costs, per backend: the counter and the histogram that the API's
middleware records for every request, timed in a Ray actor (as in a Serve replica).

    python -m bench.metrics_cost [--requests 20000]

Prints microseconds per request for prometheus_client (plain uvicorn) and ray.util.metrics (Serve).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

LABELS = {"method": "POST", "route": "/v1/apps/{app_id}/users/{user_id}/sessions/{session_id}/messages"}


@ray.remote
class Recorder:
    def cost_us(self, backend: str, requests: int) -> float:
        from rapport import metrics

        if backend == "ray":
            metrics.export_via_ray()

        def one_request() -> None:
            metrics.HTTP_REQUESTS.inc(**LABELS, status=200)
            metrics.HTTP_DURATION.observe(0.01, **LABELS, status=200)

        for _ in range(200):  # the recorders are made on first use
            one_request()
        start = time.perf_counter()
        for _ in range(requests):
            one_request()
        return (time.perf_counter() - start) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    ray.init(include_dashboard=False, num_cpus=1, logging_level="ERROR")
    try:
        print(f"# bench/metrics_cost.py  {time.strftime('%Y-%m-%d %H:%M')}  cores={os.cpu_count()}")
        for backend in ("prometheus", "ray"):
            cost = ray.get(Recorder.remote().cost_us.remote(backend, args.requests))  # type: ignore[attr-defined]
            print(f"{backend:<11} {cost:6.1f} us per request (counter + histogram)")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
