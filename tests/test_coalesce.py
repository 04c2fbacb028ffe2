"""Merging concurrent calls (rapport/coalesce.py), with a recording embedding-model double."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rapport.coalesce import Coalescer


async def embed(coalescer: Coalescer[str], texts: list[str]) -> np.ndarray:
    return np.concatenate(await coalescer.run(texts))


class Model:
    """Answers each text "n" with the row [n]; records the groups it was sent; can fail or be slow."""

    def __init__(self, delay_s: float = 0.01, fail_on: str | None = None) -> None:
        self.groups: list[list[str]] = []
        self.running = 0
        self.most_at_once = 0
        self.delay_s = delay_s
        self.fail_on = fail_on

    async def send(self, texts: list[str]) -> np.ndarray:
        self.groups.append(texts)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_on in texts:
                raise RuntimeError(f"cannot embed {self.fail_on}")
            return np.array([[float(t)] for t in texts], dtype=np.float32)
        finally:
            self.running -= 1


async def test_one_model_call_at_a_time_takes_everything_that_queued_meanwhile() -> None:
    model = Model()
    coalescer = Coalescer(model.send, max_items=64, max_in_flight=1)
    first = asyncio.ensure_future(embed(coalescer, ["0", "1"]))
    await asyncio.sleep(0.001)  # with the model now
    rest = await asyncio.gather(*(embed(coalescer, [str(2 * i), str(2 * i + 1)]) for i in range(1, 10)))
    results = [await first, *rest]
    assert [r[:, 0].tolist() for r in results] == [[2.0 * i, 2.0 * i + 1] for i in range(10)]
    assert model.most_at_once == 1
    assert [len(g) for g in model.groups] == [2, 18], "the first call goes alone, the rest wait and merge"


async def test_groups_hold_at_most_max_texts_and_a_long_call_is_split_in_order() -> None:
    model = Model()
    coalescer = Coalescer(model.send, max_items=4, max_in_flight=1)
    long_call = embed(coalescer, [str(i) for i in range(10)])
    short = embed(coalescer, ["100"])
    vectors, alone = await asyncio.gather(long_call, short)
    assert vectors[:, 0].tolist() == [float(i) for i in range(10)] and alone.tolist() == [[100.0]]
    assert all(len(g) <= 4 for g in model.groups) and sum(map(len, model.groups)) == 11


async def test_a_failed_group_fails_its_callers_only_and_later_calls_work() -> None:
    model = Model(fail_on="13")
    coalescer = Coalescer(model.send, max_items=2, max_in_flight=1)
    results = await asyncio.gather(
        embed(coalescer, ["1"]),
        embed(coalescer, ["12", "13"]),
        embed(coalescer, ["5"]),
        return_exceptions=True,
    )
    assert results[0].tolist() == [[1.0]]  # type: ignore[union-attr]
    assert isinstance(results[1], RuntimeError) and "13" in str(results[1])
    assert results[2].tolist() == [[5.0]]  # type: ignore[union-attr]
    assert (await embed(coalescer, ["7"])).tolist() == [[7.0]]


async def test_a_cancelled_caller_is_skipped_and_others_are_answered() -> None:
    model = Model(delay_s=0.05)
    coalescer = Coalescer(model.send, max_items=64, max_in_flight=1)
    first = asyncio.ensure_future(embed(coalescer, ["1"]))
    await asyncio.sleep(0.01)  # the first call is with the model
    doomed = asyncio.ensure_future(embed(coalescer, ["2"]))
    kept = asyncio.ensure_future(embed(coalescer, ["3"]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert (await first).tolist() == [[1.0]] and (await kept).tolist() == [[3.0]]
    assert model.groups == [["1"], ["3"]]


async def test_without_a_limit_groups_overlap_after_the_wait() -> None:
    model = Model(delay_s=0.05)
    coalescer = Coalescer(model.send, max_items=64, wait_s=0.005)
    first = asyncio.ensure_future(embed(coalescer, ["1"]))
    await asyncio.sleep(0.01)
    await asyncio.gather(first, *(embed(coalescer, [str(i)]) for i in range(2, 6)))
    assert model.most_at_once == 2 and model.groups == [["1"], ["2", "3", "4", "5"]]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Coalescer(Model().send, max_items=0)
    with pytest.raises(ValueError):
        Coalescer(Model().send, max_items=8, max_in_flight=0)
