"""How text becomes vectors or answers: the embedding model and LLM providers. No database access."""
