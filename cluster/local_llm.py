"""One local (GGUF) model per node, shared by every derivation worker on it.

A 1.9 GB model in each worker would not fit a laptop, and llama.cpp already queues and batches
concurrent requests itself. So the first worker on a node starts a ``LocalModelHost`` actor there (a
named actor, found by the others), which loads the model once and serves it on a loopback port as an
OpenAI-compatible endpoint; workers talk to it with the ordinary OpenAI-compatible client. The host is
owned by the worker that started it: if that worker goes, the host goes with it, the other workers'
health checks fail, and Serve restarts them, the first of which starts a new host.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from models.llm import LLMClient, RetryPolicy
from models.llm.local import PROSE_SAMPLING, LocalModelOptions, shared_server
from models.llm.openai_compatible import OpenAICompatibleLLM
from models.llm.weights import resolve_local_model
from rapport import priority
from rapport.priority import lower_priority
from rapport.settings import LLMSettings

log = logging.getLogger(__name__)

NAMESPACE = "rapport"


@ray.remote(num_cpus=0)
class LocalModelHost:
    def __init__(self, path: str, options: dict[str, Any]) -> None:
        # Deriving yields the CPU to requests and to indexing (rapport/priority.py); llama.cpp's threads,
        # started by the model's load below, inherit this.
        lower_priority(priority.DERIVING)
        self._server = shared_server(Path(path), LocalModelOptions(**options))

    def address(self) -> str:
        return str(self._server.listening_address)


def host_name(node_id: str, model: str) -> str:
    return f"local-llm-{node_id[:16]}-{model}"


def host_alive(node_id: str, model: str) -> bool:
    try:
        ray.get_actor(host_name(node_id, model), namespace=NAMESPACE)
        return True
    except ValueError:
        return False


@dataclass
class NodeModel:
    """A client of this node's shared model. Keep it referenced: the host is reference-counted like any
    actor, so the last worker dropping its handle stops it."""

    llm: LLMClient
    node_id: str
    model: str
    host: Any

    def alive(self) -> bool:
        return host_alive(self.node_id, self.model)


async def node_local_llm(llm: LLMSettings, home: Path) -> NodeModel:
    """A client of this node's shared local model, started here if it is not running yet."""
    path = resolve_local_model(llm.local_model, home)  # joined and checked once per node (RAPPORT_HOME)
    node_id = ray.get_runtime_context().get_node_id()
    options = LocalModelOptions(
        context_tokens=llm.local_context_tokens, threads=llm.local_threads, parallel=llm.local_parallel
    )
    host = LocalModelHost.options(  # type: ignore[attr-defined]
        name=host_name(node_id, path.stem),
        namespace=NAMESPACE,
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(str(path), asdict(options))
    address = await host.address.remote()
    log.info("using the local model %s served on this node at %s", llm.local_model, address)
    client = OpenAICompatibleLLM(
        f"{address}/v1",
        llm.model or llm.local_model,
        timeout_s=llm.call_timeout_s,
        max_tokens=llm.max_tokens,
        retry=RetryPolicy(attempts=llm.max_retries + 1),
        prose_fields=PROSE_SAMPLING,  # as the in-process client asks
        context_tokens=llm.context_window,
    )
    client.provider = "local"  # recorded beside what it derived as local/<model>, as in one process
    return NodeModel(client, node_id, path.stem, host)
