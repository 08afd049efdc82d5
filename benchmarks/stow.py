"""STOW-RS ingest throughput: cxr-node's STOW-RS against its C-STORE and Orthanc's STOW-RS.

``--count`` chest-radiograph-sized instances (2500 x 2048, 16-bit, ~10 MB each) go, in each
round and into an empty receiver each time:

- to ``cxr-node serve`` as one STOW-RS request (``POST /dicomweb/studies``, a bearer token
  of a configured peer), the body streamed from the files with its Content-Length;
- to another ``cxr-node serve`` over C-STORE (dcmtk storescu, one association);
- to Orthanc with its DICOMweb plugin as the same STOW-RS request (``SyncStorageArea``:
  Orthanc fsyncs before it answers, as cxr-node fsyncs and commits before its 200).

The clock runs from the first byte sent to the answer read. Issue 17's target: cxr-node's
STOW-RS at least 1.5 x Orthanc's. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ingest import make_instances, timed_send  # noqa: E402
from tests.peers import NodeProcess, OrthancProcess  # noqa: E402

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
BOUNDARY = "cxr-node-stow-benchmark-boundary"
CHUNK = 1 << 20


def _part_header() -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").encode()


def body_length(files: list[Path]) -> int:
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    return (sum(len(_part_header()) + p.stat().st_size for p in files)
            + 2 * (len(files) - 1) + len(closing))


def body_chunks(files: list[Path]) -> Iterator[bytes]:
    """The multipart/related body, read from the files as it is sent."""
    for index, path in enumerate(files):
        yield (b"\r\n" if index else b"") + _part_header()
        with path.open("rb") as handle:
            while block := handle.read(CHUNK):
                yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def timed_stow(port: int, path: str, files: list[Path], token: str | None = None) -> float:
    """Seconds for one STOW-RS request of ``files``; fails unless every instance was stored."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    connection.putrequest("POST", path)
    connection.putheader("Content-Type",
                         f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
    connection.putheader("Accept", "application/dicom+json")
    connection.putheader("Content-Length", str(body_length(files)))
    if token:
        connection.putheader("Authorization", f"Bearer {token}")
    connection.endheaders()
    for chunk in body_chunks(files):
        connection.send(chunk)
    answer = connection.getresponse()
    body = answer.read()
    elapsed = time.perf_counter() - start
    connection.close()
    if answer.status != 200:
        raise RuntimeError(f"STOW-RS to port {port}{path}: HTTP {answer.status}: {body[:500]!r}")
    stored = json.loads(body).get("00081199", {}).get("Value", [])
    if len(stored) != len(files):
        raise RuntimeError(f"STOW-RS to port {port}: {len(stored)} of {len(files)} stored")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not DICOMWEB_PLUGIN.is_file():
        sys.exit(f"{DICOMWEB_PLUGIN} is missing: install Debian's orthanc-dicomweb")

    token = secrets.token_urlsafe(32)
    peer = {"name": "bench", "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
    seconds: dict[str, list[float]] = {"node_stow": [], "node_cstore": [], "orthanc_stow": []}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cxr-stow-bench-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        files = make_instances(root / "in", args.count, args.rows, args.columns)
        total_mb = sum(p.stat().st_size for p in files) / 1e6
        for index in range(args.rounds):
            os.sync()
            with NodeProcess(root / f"stow{index}", dicomweb={"peers": [peer]}) as node:
                seconds["node_stow"].append(
                    timed_stow(node.web_port, "/dicomweb/studies", files, token))
            os.sync()
            with NodeProcess(root / f"cstore{index}") as node:
                seconds["node_cstore"].append(timed_send(node.port, "CXRNODE", files))
            os.sync()
            orthanc = OrthancProcess(root / f"orthanc{index}", extra_config={
                "Plugins": [str(DICOMWEB_PLUGIN)],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
            with orthanc:
                seconds["orthanc_stow"].append(
                    timed_stow(orthanc.http_port, "/dicom-web/studies", files))
            print(f"round {index + 1}: " + ", ".join(
                f"{name} {values[-1]:.2f} s" for name, values in seconds.items()), flush=True)

    rate = {name: round(total_mb / statistics.median(values), 1)
            for name, values in seconds.items()}
    ratio = rate["node_stow"] / rate["orthanc_stow"]
    print(json.dumps({
        "instances": args.count, "mb_per_round": round(total_mb, 1),
        "node_stow_mb_s": rate["node_stow"], "node_cstore_mb_s": rate["node_cstore"],
        "orthanc_stow_mb_s": rate["orthanc_stow"],
        "node_stow_vs_orthanc": round(ratio, 2),
        "node_stow_vs_cstore": round(rate["node_stow"] / rate["node_cstore"], 2),
        "meets_target": ratio >= 1.5,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "seconds": round(time.monotonic() - started, 1)}))


if __name__ == "__main__":
    main()
