"""Concurrent calls of one process merged into fewer, fuller calls of a model or a store.

A call has a fixed cost beside its per-item cost (a Serve request's trip; a forward pass's setup, and
for an in-process model on a busy CPU a thread hop and the GIL handed back and forth; a LanceDB write's
new version and fragment). Callers that each bring a few items at once (derivation workers, API
requests) pay it once per group instead of once each."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Queues items and hands them to ``send`` in groups of at most ``max_items``.

    ``send`` takes a group and returns one result per item, in order (a list, or an array's rows); each
    caller gets the results of its own items. While ``max_in_flight`` groups are under way, what
    arrives waits and then goes as one group. Below that limit a group goes at once when nothing is in
    flight (a lone call pays no wait), and after ``wait_s`` otherwise, so that concurrent callers can
    join it. A failed group fails its callers only. One Coalescer serves one event loop (its futures
    belong to it).
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Any]],
        *,
        max_items: int,
        wait_s: float = 0.0,
        max_in_flight: int | None = None,
    ) -> None:
        if max_items < 1 or (max_in_flight is not None and max_in_flight < 1):
            raise ValueError("max_items and max_in_flight must be at least 1")
        self._send_group = send
        self._max_items = max_items
        self._wait_s = wait_s
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[list[T], asyncio.Future[Any]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()  # referenced, so the event loop cannot drop them
        self._sender: asyncio.Task[None] | None = None

    async def run(self, items: Sequence[T]) -> list[Any]:
        """The results for ``items`` (at least one), as one part per group of at most ``max_items``."""
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(items), self._max_items):
            future: asyncio.Future[Any] = loop.create_future()
            self._pending.append((list(items[start : start + self._max_items]), future))
            futures.append(future)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_loop())
        return list(await asyncio.gather(*futures))

    async def _send_loop(self) -> None:
        while self._pending:
            if self._max_in_flight is not None and len(self._in_flight) >= self._max_in_flight:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            elif self._in_flight:
                await asyncio.sleep(self._wait_s)  # busy: let concurrent callers join this group
            group, size = [], 0
            while self._pending and size + len(self._pending[0][0]) <= self._max_items:
                items, future = self._pending.pop(0)
                if not future.done():  # its caller was cancelled meanwhile
                    group.append((items, future))
                    size += len(items)
            if not group:
                continue
            task = asyncio.create_task(self._send(group))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, group: list[tuple[list[T], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._send_group([item for items, _ in group for item in items])
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:  # the loop is closing
            for _, future in group:
                future.cancel()
            raise
        start = 0
        for items, future in group:
            if not future.done():
                future.set_result(results[start : start + len(items)])
            start += len(items)


class PerLoop(Generic[T]):
    """A Coalescer for each event loop that calls ``run`` (an object used from several loops, e.g. a
    model shared by the tests' loops or by threads running their own)."""

    def __init__(self, make: Callable[[], Coalescer[T]]) -> None:
        self._make = make
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Coalescer[T]] = (
            weakref.WeakKeyDictionary()
        )

    async def run(self, items: Sequence[T]) -> list[Any]:
        loop = asyncio.get_running_loop()
        coalescer = self._by_loop.get(loop)
        if coalescer is None:
            coalescer = self._by_loop[loop] = self._make()
        return await coalescer.run(items)
