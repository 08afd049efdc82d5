"""Listening ports for test peers that no other process on the machine will take meanwhile.

A port the kernel hands out for ``bind(("", 0))`` comes from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the same range every
outgoing connection takes its local port from, and the same one the other xdist workers
draw their ports from. A test that picks a port there and starts its peer seconds later
(storescp after the node has tried and failed to send to it) can find the port taken by
another worker's listener; the sender then talks to a stranger and the test waits in vain
(seen once in CI on test_destination_down_then_up). So each xdist worker takes ports from
its own block below the ephemeral range, in turn, and skips any that is already bound.
"""

from __future__ import annotations

import itertools
import os
import socket

FIRST_PORT = 20000
PORTS_PER_WORKER = 1000
EPHEMERAL_START = 32768


def _worker_number() -> int:
    """0 for ``gw0`` or no xdist, N for ``gwN``."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def _block() -> range:
    start = FIRST_PORT + (_worker_number() * PORTS_PER_WORKER) % (EPHEMERAL_START - FIRST_PORT)
    return range(start, min(start + PORTS_PER_WORKER, EPHEMERAL_START))


_candidates = itertools.cycle(_block())


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port from this worker's block, not handed out before by this process (until
    the block wraps round after a thousand)."""
    for _ in range(PORTS_PER_WORKER):
        port = next(_candidates)
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {_block()} for this test worker")
