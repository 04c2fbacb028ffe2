"""Rapport: self-hosted memory and user modelling for LLM apps (Honcho v1.1.0 wire-compatible)."""

__version__ = "0.1.0"
