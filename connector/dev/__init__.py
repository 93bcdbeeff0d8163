"""Tools for trying the product, not the product: the simulated site (`sim`), the demo, the chaos
suite, and throwaway local services (Kafka, PostgreSQL, RabbitMQ, their TLS material).

The core (everything else under `connector/`) never imports this package; only the CLI's
development commands (`sim`, `demo`, `local-kafka`), the tests and the benchmarks do. A contract
in `pyproject.toml` keeps it so. Its extra dependencies (pyyaml, cryptography) come with the
`tools` extra.
"""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_run(count: int) -> int:
    """The first of `count` consecutive loopback ports that can be bound right now, below the
    kernel's ephemeral range (32768+), where an outgoing connection may take a port meanwhile."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20_000, 32_000 - count)
        if all(_bindable(port) for port in range(first, first + count)):
            return first
    raise OSError(f"no run of {count} free ports found on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
