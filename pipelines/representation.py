"""A peer's representation, as Honcho v3 words it: what an observer holds about an observed peer, read
from the stored conclusions (storage/conclusions.py), no LLM involved.

Of at most ``max_conclusions``: a share found by ``search_query`` (``search_top_k``, else a third), a
share of the most often derived (``include_most_frequent``: a third with a query, else a half), and the
newest for the rest; without repeats. The text has a section per level, each oldest first, and each
conclusion is dated:

    ## Explicit Observations

    [2026-01-02 10:00:00] Ana lives in Lisbon

    ## Deductive Observations

    [2026-01-03 09:30:00] Ana likely speaks Portuguese
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.memory import Memory
from storage import conclusions, documents
from storage.query import Record
from storage.workspaces import pair_named

SECTIONS = (
    ("explicit", "## Explicit Observations"),
    ("deductive", "## Deductive Observations"),
    ("inductive", "## Inductive Observations"),
    ("contradiction", "## Contradictions"),
)


@dataclass(frozen=True, slots=True)
class Ask:
    """What to put in a representation."""

    search_query: str | None = None
    search_top_k: int | None = None
    search_max_distance: float | None = None
    include_most_frequent: bool = False
    max_conclusions: int = 25
    session_ids: Sequence[str] | None = None  # only explicit conclusions drawn from these sessions


async def representation(memory: Memory, ws: str, observer: str, target: str | None, ask: Ask) -> str:
    """The representation ``observer`` holds of ``target`` (itself when None). 404 if either peer is
    missing."""
    app_id, seer, seen = await memory.run(pair_named, ws, observer, target)
    everything = await memory.run(conclusions.of_pair, app_id, seer, seen, session_ids=ask.session_ids)
    total = ask.max_conclusions
    chosen: dict[str, Record] = {}
    if ask.search_query:
        top_k = min(max(ask.search_top_k or total // 3, 1), total)
        filters = {"observer_id": seer.name, "observed_id": seen.name}
        if ask.session_ids is not None:
            allowed = set(ask.session_ids)
            found = [
                r
                for r in await memory.query_conclusions(
                    ws, ask.search_query, top_k=total, distance=ask.search_max_distance, filters=filters
                )
                if r.session_id in allowed and r.level == "explicit"
            ][:top_k]
        else:
            found = await memory.query_conclusions(
                ws, ask.search_query, top_k=top_k, distance=ask.search_max_distance, filters=filters
            )
        chosen.update((row.id, row) for row in found)
    if ask.include_most_frequent:
        share = min(total // 3 if ask.search_query else total // 2, total - len(chosen))
        frequent = sorted(
            everything, key=lambda r: (-documents.times_derived(r.metadata_), -r.created_at.timestamp(), r.id)
        )
        for row in frequent:
            if share <= 0:
                break
            if row.id not in chosen:
                chosen[row.id] = row
                share -= 1
    for row in everything:  # newest first
        if len(chosen) >= total:
            break
        chosen.setdefault(row.id, row)
    return render(list(chosen.values()))


def render(rows: Sequence[Record]) -> str:
    """The representation's text: a section per level, each conclusion dated, oldest first."""
    lines: list[str] = []
    for level, heading in SECTIONS:
        of_level = sorted((r for r in rows if r.level == level), key=lambda r: (r.created_at, r.seq))
        if not of_level:
            continue
        lines += [heading, ""]
        lines += [f"[{r.created_at.strftime('%Y-%m-%d %H:%M:%S')}] {r.content}" for r in of_level]
        lines.append("")
    return "\n".join(lines).strip("\n")
