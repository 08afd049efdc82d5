"""Ingest throughput: dcmtk storescu -> storescp, Orthanc and cxr-node, in one run.

40 chest-radiograph-sized instances (2500 x 2048, 16-bit, ~10 MB each) are sent on one
association over loopback to each receiver in turn, ``--rounds`` times, each round into
an empty receiver. storescp writes without fsync; Orthanc fsyncs before it answers
(SyncStorageArea), like cxr-node, which also fsyncs the directory and commits its
database row before the success status. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.phantom import dx_dataset  # noqa: E402
from tests.peers import NodeProcess, OrthancProcess, StorescpProcess, storescu  # noqa: E402


def make_instances(directory: Path, count: int, rows: int, columns: int) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
        ds = dx_dataset(pixels, study_uid=study, series_uid=series, instance_number=index + 1)
        path = directory / f"cr{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def timed_send(port: int, aec: str, files: list[Path]) -> float:
    start = time.perf_counter()
    result = storescu(port, files, aec=aec)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {aec} failed:\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--node-max-pdu", type=int, default=None,
                        help="cxr-node's dicom.max_pdu_bytes (storescp and Orthanc use 16384)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        files = make_instances(root / "in", args.count, args.rows, args.columns)
        total_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} instances, {total_mb:.0f} MB in all, {args.rounds} rounds each")
        seconds: dict[str, list[float]] = {"storescp": [], "orthanc": [], "cxr_node": []}
        for round_index in range(args.rounds):
            work = root / f"round{round_index}"
            with StorescpProcess(work) as scp:
                seconds["storescp"].append(timed_send(scp.port, scp.aet, files))
            with OrthancProcess(work) as orthanc:
                seconds["orthanc"].append(timed_send(orthanc.dicom_port, orthanc.aet, files))
            dicom = {"max_pdu_bytes": args.node_max_pdu} if args.node_max_pdu else {}
            with NodeProcess(work / "node", dicom=dicom) as node:
                seconds["cxr_node"].append(timed_send(node.port, "CXRNODE", files))
            print("round", round_index + 1, {k: f"{v[-1]:.2f} s" for k, v in seconds.items()})

    rates = {name: total_mb / statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({
        "storescp_mb_s": round(rates["storescp"], 1),
        "orthanc_mb_s": round(rates["orthanc"], 1),
        "cxr_node_mb_s": round(rates["cxr_node"], 1),
        "ratio_vs_orthanc": round(rates["cxr_node"] / rates["orthanc"], 2),
        "ratio_vs_storescp": round(rates["cxr_node"] / rates["storescp"], 2),
    }))


if __name__ == "__main__":
    main()
