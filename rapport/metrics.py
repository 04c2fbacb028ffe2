"""Rapport's metrics, each declared once here and recorded the same way everywhere.

Where they go depends on the process: inside Ray (Serve replicas, derivation workers, batch-job actors)
they are recorded with ``ray.util.metrics`` and exported by every node's Ray metrics agent, which
prefixes each name with ``ray_`` (``ray_rapport_http_requests_total``); in a plain process (the API under
uvicorn, `rapport deriver run`) they go to prometheus_client's registry and are served at ``/metrics``.
A Ray process calls :func:`export_via_ray` once, before it records anything.

Names and labels follow Prometheus' conventions: base units (seconds), ``_total`` on counters, labels of
bounded cardinality (a route template, never a path; a provider and model; an app id only where a limit
acts per app).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

_backend: Literal["prometheus", "ray"] = "prometheus"
_lock = threading.Lock()


def export_via_ray() -> None:
    """Record this process's metrics with Ray's metrics agent (call it in a Ray actor or replica)."""
    global _backend
    _backend = "ray"


def exported_via_ray() -> bool:
    return _backend == "ray"


class Metric:
    """One metric. Its recorder on the chosen backend is made on first use, so declaring metrics at
    import time costs nothing and a process may choose its backend later."""

    def __init__(
        self,
        kind: Kind,
        name: str,
        description: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = (),
    ) -> None:
        self.kind = kind
        self.name = name  # counters: without _total (prometheus_client adds it; the Ray branch below)
        self.description = description
        self.labels = tuple(labels)
        self.buckets = tuple(buckets)
        self._recorders: dict[str, Any] = {}
        self._failed = False

    def _recorder(self) -> Any:
        recorder = self._recorders.get(_backend)
        if recorder is None:
            with _lock:
                recorder = self._recorders.get(_backend)
                if recorder is None:
                    recorder = self._recorders[_backend] = self._make(_backend)
        return recorder

    def _make(self, backend: str) -> Any:
        if backend == "ray":
            from ray.util import metrics as ray_metrics

            if self.kind == "counter":
                return ray_metrics.Counter(self.name + "_total", self.description, tag_keys=self.labels)
            if self.kind == "gauge":
                return ray_metrics.Gauge(self.name, self.description, tag_keys=self.labels)
            return ray_metrics.Histogram(
                self.name, self.description, boundaries=list(self.buckets), tag_keys=self.labels
            )
        import prometheus_client

        if self.kind == "counter":
            return prometheus_client.Counter(self.name, self.description, self.labels)
        if self.kind == "gauge":
            return prometheus_client.Gauge(self.name, self.description, self.labels)
        return prometheus_client.Histogram(self.name, self.description, self.labels, buckets=self.buckets)

    def _record(self, method: str, value: float, labels: dict[str, str]) -> None:
        try:
            recorder = self._recorder()
            if _backend == "ray":
                getattr(recorder, method)(value, tags=labels or None)
                return
            target = recorder.labels(**labels) if self.labels else recorder
            getattr(target, method)(value)
        except Exception:  # a metric must never fail the request or the work it measures
            if not self._failed:
                self._failed = True
                log.exception("recording %s failed (logged once)", self.name)

    def _check(self, labels: dict[str, Any]) -> dict[str, str]:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(labels)}")
        return {key: str(value) for key, value in labels.items()}


class Counter(Metric):
    def __init__(self, name: str, description: str, labels: Sequence[str] = ()) -> None:
        super().__init__("counter", name, description, labels)

    def inc(self, amount: float = 1.0, /, **labels: Any) -> None:
        if amount > 0:  # Ray refuses zero
            self._record("inc", amount, self._check(labels))


class Gauge(Metric):
    def __init__(self, name: str, description: str, labels: Sequence[str] = ()) -> None:
        super().__init__("gauge", name, description, labels)

    def set(self, value: float, /, **labels: Any) -> None:
        self._record("set", value, self._check(labels))


class Histogram(Metric):
    def __init__(
        self, name: str, description: str, labels: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> None:
        super().__init__("histogram", name, description, labels, buckets)

    def observe(self, value: float, /, **labels: Any) -> None:
        self._record("observe", value, self._check(labels))


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# --- the API -------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "rapport_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ("method", "route", "status"),
)
HTTP_DURATION = Histogram(
    "rapport_http_request_duration_seconds",
    "Time to answer an HTTP request (to the last byte of the response), by method, route and status.",
    ("method", "route", "status"),
    buckets=LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "rapport_rate_limited_requests",
    "Requests answered 429 because their app was over limits.app_requests_per_s.",
    ("app_id",),
)

# --- derivation ----------------------------------------------------------------------------------------
WEBHOOKS = Counter(
    "rapport_webhooks",
    "Webhook events sent to an endpoint, by event type and outcome (delivered, failed after retries).",
    ("event", "outcome"),
)
DERIVATION_PENDING = Gauge(
    "rapport_derivation_queue_depth", "Messages waiting to be derived (retries included)."
)
DERIVATION_OLDEST = Gauge(
    "rapport_derivation_queue_oldest_age_seconds", "Age of the oldest message waiting to be derived."
)
DERIVATION_PARKED = Gauge(
    "rapport_derivation_parked_items",
    "Messages parked after deriver.max_attempts failures (`rapport deriver retry` revives them).",
)
DERIVATION_PARKED_EVENTS = Counter(
    "rapport_derivation_items_parked",
    "Messages this process parked (rapport_derivation_parked_items is how many wait in the database).",
)
QUEUE_WORK = Counter(
    "rapport_queue_batches",
    "Batches a queue worker took, by queue (deriver, index sync) and result (done, failed, outage).",
    ("queue", "result"),
)
DREAMS = Counter(
    "rapport_dreams",
    "Dreams this process ran, by outcome (done, failed: retried later or marked failed, outage).",
    ("outcome",),
)
DREAMS_QUEUED = Gauge(
    "rapport_dreams_queued",
    "Dreams in the queue by status: pending, running, done, failed (after dream.max_attempts).",
    ("status",),
)
WEBHOOK_DELIVERIES = Gauge(
    "rapport_webhook_deliveries",
    "Webhook deliveries waiting to be sent (pending, retries included) and failed for good.",
    ("status",),
)
DREAM_CHANGES = Counter(
    "rapport_dream_changes",
    "What dreams changed, by kind: merged (near-duplicates), superseded (contradicted), deduced (new).",
    ("change",),
)

HEALTH_DEGRADED = Gauge(
    "rapport_health_degraded",
    "1 while a part of Rapport is degraded, else 0, by part: embedder, index, llm and deriver as /health "
    "last said (its reasons there and in the log); index_backlog and deriver_backlog as the index sync "
    "reads them every 10 s (writes waiting too long for the index; derivation paused or not progressing).",
    ("part",),
)
HEALTH_PARTS = ("embedder", "index", "llm", "deriver")

# --- the search index ----------------------------------------------------------------------------------
INDEX_LAG = Gauge("rapport_index_lag_entries", "Writes waiting to reach the search index.")
INDEX_LAG_AGE = Gauge("rapport_index_lag_seconds", "Age of the oldest write waiting to reach the index.")
INDEX_PARKED = Gauge("rapport_index_parked_entries", "Index writes parked after vector_store.max_attempts.")

# --- models --------------------------------------------------------------------------------------------
LLM_CALLS = Counter(
    "rapport_llm_calls",
    "LLM requests sent (each retry is one), by provider and model.",
    ("provider", "model"),
)
LLM_ERRORS = Counter(
    "rapport_llm_errors",
    "Failed LLM requests, by provider, model and kind: transient (retried), unavailable (gave up after "
    "retries), config (a setting must change), invalid_output (no valid JSON after a repair).",
    ("provider", "model", "kind"),
)
LLM_TOKENS = Counter(
    "rapport_llm_tokens",
    "Tokens the LLM read (prompt) and wrote (completion), by provider and model.",
    ("provider", "model", "direction"),
)
LLM_APP_TOKENS = Counter(
    "rapport_llm_app_tokens",
    "Tokens the LLM read (prompt) and wrote (completion) for each app, by part: deriver (facts and "
    "summaries), dream, dialectic (a streamed answer's by estimate, as prompts are fitted).",
    ("app_id", "part", "direction"),
)
LLM_DURATION = Histogram(
    "rapport_llm_request_duration_seconds",
    "Time one LLM request took (a stream: to its first piece), by provider and model, failures included.",
    ("provider", "model"),
    buckets=LLM_BUCKETS,
)
EMBED_BATCH = Histogram(
    "rapport_embedding_batch_size",
    "Texts per call of the embedding model (what dynamic batching achieved), by model.",
    ("model",),
    buckets=SIZE_BUCKETS,
)
