"""How data is kept and found: PostgreSQL (source of truth) and, later, the LanceDB index. No HTTP, no LLM calls."""
