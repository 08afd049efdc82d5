"""Test peers' ports: each xdist worker has its own block, below the kernel's ephemeral range."""

from __future__ import annotations

import socket

from tests import ports


def test_workers_draw_from_disjoint_blocks_below_the_ephemeral_range(monkeypatch):
    blocks = []
    for worker in ("gw0", "gw1", "gw7"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        blocks.append(set(ports._block()))
    assert all(len(block) == ports.PORTS_PER_WORKER for block in blocks)
    assert not blocks[0] & blocks[1] and not blocks[1] & blocks[2]
    ephemeral_start = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert max(max(block) for block in blocks) < ephemeral_start


def test_a_port_someone_listens_on_is_skipped():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.free_port()))
        taken.listen()
        taken_port = taken.getsockname()[1]
        handed_out = {ports.free_port() for _ in range(ports.PORTS_PER_WORKER - 1)}
    assert taken_port not in handed_out
