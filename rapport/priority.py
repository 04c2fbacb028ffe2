"""CPU priorities of Rapport's background work on a shared machine, highest first: API requests (nice 0),
indexing new messages (the background embedder, ``INDEXING``), deriving (the local LLM, ``DERIVING``).

Linux shares a busy CPU by these weights (nice 0: 1024, 10: 110, 19: 15): the API keeps about nine
tenths of the cores from indexing, and indexing about seven eighths from the model, so new messages
are searchable within seconds while the model derives on the same cores, and the model takes whatever
is left, which on an idle service is everything.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

INDEXING = 10
DERIVING = 19


def lower_priority(niceness: int) -> None:
    """Renice every thread of this process (Linux nice values are per thread; new threads inherit)."""
    try:
        for tid in os.listdir("/proc/self/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted: run at normal priority
        log.warning("could not lower this process's priority to %d (%s); it runs as it is", niceness, exc)
