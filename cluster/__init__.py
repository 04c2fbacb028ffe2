"""How work is spread over a Ray cluster: queue workers and batch jobs."""
