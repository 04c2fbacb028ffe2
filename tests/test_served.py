"""The helpers that start `rapport serve` for end-to-end tests and benches."""

from __future__ import annotations

import socket

from tests.served import PORT_RANGE, SERVE_REPLICA_PORTS, ephemeral_range, free_port


def test_free_ports_are_outside_the_ephemeral_and_replica_ranges_distinct_and_bindable() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert PORT_RANGE[0] <= port <= PORT_RANGE[1]
        assert not low <= port <= high  # an outbound connection cannot have taken it as its local port
        assert not SERVE_REPLICA_PORTS[0] <= port <= SERVE_REPLICA_PORTS[1]  # nor a replica of any Ray here
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
