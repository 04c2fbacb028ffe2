"""The API as a Ray Serve ingress deployment: one replica = one process with its own DB pool."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments.api import create_api
from rapport.logs import configure_logging
from rapport.settings import Settings


@serve.deployment(
    name="RapportAPI",
    # Serve's default of 5 makes the proxy back off under load (measured: 16 req/s at 64 callers).
    max_ongoing_requests=100,
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress()
class RapportAPI:
    """Serves the FastAPI app built from the settings it is bound with."""

    def __init__(self, settings: dict[str, Any]) -> None:
        # model_validate skips the env/file sources: replicas use exactly the settings they were given.
        self.settings = Settings.model_validate(settings)
        configure_logging(self.settings.app.log_level)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.settings)
