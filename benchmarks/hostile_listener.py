"""The listener under a hostile network (issue 13, items 1-5): one figure per attack.

Runs ``cxr-node serve`` (ACSE timeout 2 s, network timeout 3 s) and attacks it with raw
sockets and pynetdicom: 50 connections that send 3 bytes of a PDU header; 8 allowed
associations that each stop inside a P-DATA-TF; 200 connect/close in a row; command-set
and data fragments that never end (``--flood-mb`` each); 40 C-STOREs with an empty
Affected SOP Instance UID; one with a 74-character UID. Each line says what a site would
check (open sockets, echo result, RSS, descriptors, ``incoming/`` files, status); the last
line is one JSON object. Run it from a checkout to measure that checkout.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration import test_hostile_network as hostile  # noqa: E402
from tests.integration.test_bad_input import send_c_store  # noqa: E402
from tests.peers import NodeProcess  # noqa: E402

TIMEOUTS = {"acse_timeout_seconds": 2.0, "network_timeout_seconds": 3.0,
            "dimse_timeout_seconds": 10.0}


def start(**dicom: object) -> NodeProcess:
    return NodeProcess(Path(tempfile.mkdtemp()), dicom={**TIMEOUTS, **dicom}).start()


def still_open(sockets: list[socket.socket]) -> int:
    count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            sock.recv(1)
        except BlockingIOError:
            count += 1
        except OSError:
            pass
    return count


def stalled_headers() -> dict:
    node = start(max_associations=8)
    sockets = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", node.port))
        sock.sendall(b"\x01\x00\x00")
        sockets.append(sock)
    time.sleep(4)
    result = {"open_after_4s": still_open(sockets), "echo": hostile.echo(node.port)}
    for sock in sockets:
        sock.close()
    node.stop()
    return result


def truncated_p_data() -> dict:
    node = start(max_associations=8)
    held = []
    for _ in range(8):
        assoc = hostile.associate(node.port)
        pdu = hostile.p_data_tf(assoc.accepted_contexts[0].context_id, 3, b"\0" * 200)
        assoc.dul.socket.socket.sendall(pdu[:60])
        held.append(assoc)
    time.sleep(5)
    result = {"held_after_5s": sum(1 for a in held if a.is_established),
              "echo": hostile.echo(node.port)}
    for assoc in held:
        assoc.abort()
    node.stop()
    return result


def connect_close() -> dict:
    node = start(acse_timeout_seconds=15.0, max_associations=8)
    begin, slowest = time.monotonic(), 0.0
    for _ in range(200):
        before = time.monotonic()
        socket.create_connection(("127.0.0.1", node.port), timeout=5).close()
        slowest = max(slowest, time.monotonic() - before)
    result = {"seconds": round(time.monotonic() - begin, 2), "slowest_ms": round(slowest * 1000),
              "echo_at_once": hostile.echo(node.port)}
    node.stop()
    return result


def endless_fragments(control: int, flood_mb: int) -> dict:
    node = start()
    rss_before = hostile.rss_bytes(node.process.pid)
    assoc = hostile.associate(node.port)
    pdu = hostile.p_data_tf(assoc.accepted_contexts[0].context_id, control, b"\xab" * 65536)
    sent, begin = 0, time.monotonic()
    try:
        while sent < flood_mb * 1_000_000:
            assoc.dul.socket.socket.sendall(pdu)
            sent += len(pdu)
    except OSError:
        pass
    time.sleep(1)
    result = {"sent_mb": round(sent / 1e6, 1), "seconds": round(time.monotonic() - begin, 1),
              "rss_growth_mb": round((hostile.rss_bytes(node.process.pid) - rss_before) / 1e6, 1)}
    assoc.abort()
    node.stop()
    return result


def bad_uids() -> dict:
    node = start()
    data, _ = hostile.dx_bytes(Path(tempfile.mkdtemp()))
    hostile.echo(node.port)
    fds_before, statuses = hostile.fd_count(node.process.pid), set()
    for _ in range(40):
        assoc = hostile.associate(node.port)
        assoc.dimse_timeout = 1
        response = send_c_store(assoc, data, hostile.DX, "")
        statuses.add(f"0x{response.Status:04X}" if response else "none")
        assoc.release() if response else assoc.abort()
    time.sleep(2)
    empty = {"fds": f"{fds_before} -> {hostile.fd_count(node.process.pid)}",
             "part_files": len(list((node.data_dir / "incoming").iterdir())),
             "statuses": sorted(statuses)}
    assoc = hostile.associate(node.port)
    assoc.dimse_timeout = 3
    response = send_c_store(assoc, data, hostile.DX, "1.2." + "3" * 70)
    long_uid = {"status": f"0x{response.Status:04X}" if response else "none",
                "aborted": assoc.is_aborted}
    assoc.abort()
    node.stop()
    return {"empty_uid_x40": empty, "uid_74_chars": long_uid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-mb", type=int, default=2000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    results = {"stalled_headers_x50": stalled_headers(), "truncated_p_data_x8": truncated_p_data(),
               "connect_close_x200": connect_close(),
               "command_never_last": endless_fragments(0x01, args.flood_mb),
               "data_before_command": endless_fragments(0x00, args.flood_mb), **bad_uids()}
    for name, value in results.items():
        print(f"{name}: {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
