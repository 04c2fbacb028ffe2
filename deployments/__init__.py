"""How the pieces are served on Ray Serve: the API ingress, the embedder, LLM deployments."""
