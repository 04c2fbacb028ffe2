"""Local HTTP servers that speak the OpenAI and Anthropic wire formats, scripted per test (no network).

Each answers the requests it gets from a queue of scripted replies and records the request bodies, so a
test says what the server does and then checks what the client sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.served import free_port


@dataclass
class Reply:
    """One scripted answer: a status with a JSON body, or (``stream``) server-sent events."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: list[str] | None = None  # SSE lines, sent as they are


@dataclass
class FakeServer:
    url: str
    replies: list[Reply] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    # Answers every request from its body when set (a server that computes its reply, e.g. one that
    # honours response_format), instead of the scripted replies.
    responder: Callable[[dict[str, Any]], Reply] | None = None

    def script(self, *replies: Reply) -> None:
        self.replies[:] = list(replies)
        self.requests.clear()
        self.headers.clear()


def _app(server: FakeServer, path: str) -> Starlette:
    async def handle(request: Request) -> Response:
        server.requests.append(json.loads(await request.body()))
        server.headers.append(dict(request.headers))
        if server.responder is not None:
            answer = server.responder(server.requests[-1])
            return JSONResponse(answer.body, answer.status, headers=answer.headers)
        if not server.replies:
            return JSONResponse({"error": {"message": "the test scripted no more replies"}}, 500)
        reply = server.replies.pop(0)
        if reply.stream is not None:
            lines = reply.stream

            async def events() -> Any:
                for line in lines:
                    yield (line + "\n").encode()
                    await asyncio.sleep(0)

            return StreamingResponse(events(), media_type="text/event-stream", headers=reply.headers)
        return JSONResponse(reply.body, reply.status, headers=reply.headers)

    return Starlette(routes=[Route(path, handle, methods=["POST"])])


@contextmanager
def serve_fake(path: str) -> Iterator[FakeServer]:
    """A fake server answering POSTs to ``path`` on a loopback port, for the duration of the block."""
    port = free_port()
    fake = FakeServer(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(
        _app(fake, path), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the fake LLM server did not start")
        time.sleep(0.02)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- replies in each wire format ----------------------------------------------------------------------


def openai_reply(text: str, prompt_tokens: int = 11, completion_tokens: int = 7) -> Reply:
    return Reply(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "served-model",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }
    )


def openai_stream(pieces: list[str]) -> Reply:
    lines = []
    for piece in pieces:
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
        lines += [f"data: {json.dumps(chunk)}", ""]
    return Reply(stream=[*lines, "data: [DONE]", ""])


def openai_error(status: int, message: str, retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after else {}
    return Reply(status, {"error": {"message": message, "type": "error"}}, headers)


def anthropic_reply(content: list[dict[str, Any]], input_tokens: int = 13, output_tokens: int = 5) -> Reply:
    return Reply(
        body={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": content,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
    )


def anthropic_stream(pieces: list[str]) -> Reply:
    def event(name: str, data: dict[str, Any]) -> list[str]:
        return [f"event: {name}", f"data: {json.dumps({'type': name, **data})}", ""]

    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1},
    }  # fmt: skip
    lines = event("message_start", {"message": message})
    lines += event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    for piece in pieces:
        lines += event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
    lines += event("content_block_stop", {"index": 0})
    lines += event(
        "message_delta",
        {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 4}},
    )
    lines += event("message_stop", {})
    return Reply(stream=lines)


def anthropic_error(status: int, message: str, retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after else {}
    kind = {401: "authentication_error", 429: "rate_limit_error", 529: "overloaded_error"}.get(
        status, "api_error"
    )
    return Reply(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)
