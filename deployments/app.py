"""The Serve application graph, built by one function from settings and the options in serve_config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from deployments.deriver import DeriverWorker
from deployments.embedder import Embedder
from deployments.indexer import IndexWriter
from deployments.ingress import RapportAPI
from rapport.settings import Settings, get_settings

IMPORT_PATH = "deployments.app:build_app"


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Entry point for ``serve run serve_config.yaml``: settings come from the environment of the cluster
    (the application's ``runtime_env.env_vars``), deployment options from the YAML itself. The YAML names
    a DeriverWorker, and Serve refuses options for a deployment the application lacks: with the deriver
    off, one idle DeriverWorker stands in."""
    return rapport_application(get_settings(), idle_deriver=True)


def rapport_application(
    settings: Settings, options: dict[str, dict[str, Any]] | None = None, *, idle_deriver: bool = False
) -> Application:
    """The application: the API ingress, two batched embedders (requests; background indexing and
    derivation, at low priority), the index's single writer and ``deriver.workers`` derivation workers.

    ``options`` maps a deployment name to Serve deployment options (autoscaling, resources...).
    ``idle_deriver``: with the deriver off (``deriver.enabled`` false or no workers), still bind one
    DeriverWorker, which derives nothing.
    """
    options = options or {}

    def configured(deployment: Any, name: str) -> Any:
        return deployment.options(name=name, **options.get(name, {}))

    payload = settings.model_dump()
    embedder = configured(Embedder, "Embedder").bind(payload)
    background = configured(Embedder, "BackgroundEmbedder").bind(payload, True)
    writer = configured(IndexWriter, "IndexWriter").bind(payload, background)
    deriver = None
    if settings.deriver.deriving or idle_deriver:
        replicas = settings.deriver.workers if settings.deriver.deriving else 1
        worker_options = {"num_replicas": replicas, **options.get("DeriverWorker", {})}
        workers: Any = DeriverWorker
        deriver = workers.options(name="DeriverWorker", **worker_options).bind(payload, background, writer)
    # The ingress holds the deriver's handle only so that the workers are part of the application.
    return configured(RapportAPI, "RapportAPI").bind(payload, embedder, writer, deriver)  # type: ignore[no-any-return]


def read_serve_config(path: Path) -> tuple[ServeApplicationSchema, dict[str, dict[str, Any]]]:
    """Rapport's application from a Serve config file, and its per-deployment options."""
    raw = yaml.safe_load(path.read_text())
    config = ServeDeploySchema.model_validate(raw)
    for app in config.applications:
        if app.import_path == IMPORT_PATH:
            break
    else:
        raise ValueError(f"{path} has no application with import_path {IMPORT_PATH!r}")
    options: dict[str, dict[str, Any]] = {}
    for deployment in app.deployments:
        opts = deployment.model_dump(exclude_unset=True, exclude={"name"})
        env_vars = (app.runtime_env or {}).get("env_vars")
        if env_vars:
            actor = opts.setdefault("ray_actor_options", {})
            actor.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
        options[deployment.name] = opts
    return app, options
