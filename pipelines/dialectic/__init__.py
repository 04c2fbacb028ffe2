"""The dialectic: answers questions about a user from their facts, summaries and messages
(pipelines/context.py gathers them; one LLM call answers)."""

from pipelines.dialectic.answer import Dialectic, DialecticOptions, Prepared

__all__ = ["Dialectic", "DialecticOptions", "Prepared"]
