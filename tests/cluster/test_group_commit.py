"""GroupCommit, the batch job actors' writer: users finishing together share a transaction, and one that
cannot be stored (given to another actor meanwhile) does not sink the others."""

from __future__ import annotations

import asyncio

from cluster.batch import GroupCommit
from storage.jobs import UserLost


async def test_users_finishing_together_share_a_commit_and_a_bad_one_fails_alone() -> None:
    calls: list[list[str]] = []

    async def store(group: list[tuple[str, str]]) -> list[int]:
        calls.append([facts for facts, _ in group])
        await asyncio.sleep(0.01)  # a transaction's round trips: others finish meanwhile
        if any(facts == "lost" for facts, _ in group):
            raise UserLost("no longer this actor's")
        return [len(facts) for facts, _ in group]

    commits = GroupCommit(store, max_group=3)
    first = asyncio.create_task(commits.submit("a", "entry"))
    await asyncio.sleep(0)  # the first goes alone: nobody waits for company
    rest = [asyncio.create_task(commits.submit(facts, "entry")) for facts in ("bb", "lost", "dddd", "eeeee")]
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    await commits.close()

    assert results[0] == 1 and results[1] == 2 and results[3] == 4 and results[4] == 5
    assert isinstance(results[2], UserLost)
    assert calls[0] == ["a"]
    assert calls[1] == ["bb", "lost", "dddd"], "the users that finished meanwhile went in one group"
    assert ["bb"] in calls and ["lost"] in calls and ["dddd"] in calls, "the failed group was retried alone"
    assert ["eeeee"] in calls
