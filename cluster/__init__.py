"""How work is spread over a Ray cluster: queue workers, batch jobs, and the stack each process
assembles (cluster/stack.py)."""

SERVE_APP = "rapport"  # the name `rapport serve` deploys its Serve application under
