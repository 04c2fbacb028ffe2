"""The deriver: facts and theory-of-mind inferences about each user, and session summaries, derived in
the background from the derivation queue (storage/derivation.py)."""

from pipelines.deriver.derive import Deriver, DeriverOptions, Outcome

__all__ = ["Deriver", "DeriverOptions", "Outcome"]
