"""The HTTP API (FastAPI), served as the Ray Serve ingress."""

from deployments.api.app import create_api

__all__ = ["create_api"]
