"""Result latency: single-image studies are sent to the node; how soon is the SR at the PACS?

cxr-node runs as its own process (``cxr-node serve`` with the bundled model, default quiet
period and worker settings: on a GPU the network is compiled at start) and sends its
results to a pynetdicom store SCP in this process, which timestamps each arrival. Studies
are generated chest radiographs of realistic size (1500-2200 px), each sent on its own
association (dcmtk's storescu where installed, else pynetdicom, as on the GPU machine),
``--interval`` seconds apart, once the worker has warmed up. Per study: the time from the
sender's return (the last instance acknowledged) to the SR stored at the destination, and
the part of it after the node marked the study complete (the quiet period excluded; the
target, p95 <= 1 s, is on this part). The last line printed is one JSON object
(``"check": "latency"``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select  # noqa: E402

from model import BUNDLED_MODEL  # noqa: E402
from model.card import ModelCard  # noqa: E402
from node.demo_pacs import InboxPacs  # noqa: E402
from node.reporting import SR_CLASSES  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.models import Study  # noqa: E402
from tests.peers import NodeProcess, storescu  # noqa: E402

TARGET_P95_AFTER_COMPLETION_S = 1.0  # issue 18, with a GPU


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def make_studies(directory: Path, count: int,
                 sizes: tuple[int, int] = (1500, 2200)) -> list[tuple[Path, str]]:
    from model.phantom import synthesize_case

    directory.mkdir(parents=True, exist_ok=True)
    studies = []
    for index in range(count):
        ds = synthesize_case(3, index, size_range=sizes).dataset
        path = directory / f"study{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        studies.append((path, str(ds.StudyInstanceUID)))
    return studies


def send(port: int, path: Path, sender: str) -> None:
    """One study on one association: storescu, or pynetdicom (the AE title the node's
    test configuration accepts, PYSCU) where dcmtk is not installed."""
    if sender == "storescu":
        result = storescu(port, [path])
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
        return
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    if not association.is_established:
        raise RuntimeError("the node refused the association")
    try:
        status = association.send_c_store(ds)
        if getattr(status, "Status", None) != 0:
            raise RuntimeError(f"C-STORE answered {status}")
    finally:
        association.release()


def wait_for_warm_up(node: NodeProcess, timeout: float) -> float | None:
    """Seconds the worker's compilation took (None: not compiled), once it has warmed up."""
    deadline = time.time() + timeout
    while "warmed up" not in node.log():
        if time.time() > deadline:
            raise SystemExit(f"the worker did not warm up within {timeout:.0f} s:\n"
                             f"{node.log()[-3000:]}")
        time.sleep(0.5)
    found = re.search(r"network compiled .* in ([0-9.]+) s", node.log())
    return float(found[1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds between the starts of two studies")
    parser.add_argument("--device", default="auto", help="the worker's device (auto, cpu, cuda)")
    parser.add_argument("--min-size", type=int, default=1500, help="smallest study side, px")
    parser.add_argument("--max-size", type=int, default=2200, help="largest study side, px")
    parser.add_argument("--sender", choices=["auto", "storescu", "pynetdicom"], default="auto")
    parser.add_argument("--warm-up-timeout", type=float, default=420.0,
                        help="seconds to wait for the worker's start (a compilation)")
    parser.add_argument("--images-per-batch", type=int, default=None,
                        help="the worker's images_per_batch (default: the node's); on a GPU "
                             "the network is compiled for 1 and this at start")
    args = parser.parse_args()
    sender = args.sender
    if sender == "auto":
        sender = "storescu" if shutil.which("storescu") else "pynetdicom"

    with tempfile.TemporaryDirectory(prefix="cxr-latency-") as tmp:
        work = Path(tmp)
        studies = make_studies(work / "studies", args.count, (args.min_size, args.max_size))
        pacs = InboxPacs().start()
        worker = {"run_in_serve": True, "device": args.device}
        if args.images_per_batch:
            worker["images_per_batch"] = args.images_per_batch
        node = NodeProcess(work / "node", worker=worker,
                           completion={"study_quiet_seconds": 2.0,
                                       "check_interval_seconds": 0.25},
                           sending={"poll_interval_seconds": 0.2},
                           destinations=[{"name": "PACS", "ae_title": "PACS",
                                          "host": "127.0.0.1", "port": pacs.port}])
        acknowledged: dict[str, float] = {}
        with node:
            # The worker loads (and on a GPU compiles) the model after the listener is up.
            compile_s = wait_for_warm_up(node, args.warm_up_timeout)
            for path, study_uid in studies:
                started = time.time()
                send(node.port, path, sender)
                acknowledged[study_uid] = time.time()
                time.sleep(max(0.0, args.interval - (time.time() - started)))
            reports: dict[str, float] = {}
            deadline = time.time() + 120
            while len(reports) < len(studies) and time.time() < deadline:
                for arrival in pacs.arrivals():
                    ds = arrival.dataset
                    if ds.SOPClassUID in SR_CLASSES:
                        reports.setdefault(str(ds.StudyInstanceUID), arrival.at)
                time.sleep(0.1)
            db = Database.connect(node.database_url, upgrade=False)
            with db.session() as session:
                completed = {uid: at.replace(tzinfo=UTC).timestamp() for uid, at in
                             session.execute(select(Study.study_uid, Study.completed_at))}
            db.dispose()
            device = "cuda" if "on cuda" in node.log() else "cpu"
        pacs.stop()

    missing = [uid for uid in acknowledged if uid not in reports]
    if missing:
        raise SystemExit(f"{len(missing)} studies got no SR within 120 s")
    total = [reports[uid] - acknowledged[uid] for uid in acknowledged]
    after = [reports[uid] - completed[uid] for uid in acknowledged]
    for uid in acknowledged:
        print(f"{uid}: {reports[uid] - acknowledged[uid]:.2f} s after acknowledgement, "
              f"{reports[uid] - completed[uid]:.2f} s after completion")
    card = ModelCard.load(BUNDLED_MODEL)
    p95_after = round(percentile(after, 0.95), 2)
    print(json.dumps({"check": "latency", "studies": len(total),
                      "p50_s": round(percentile(total, 0.5), 2),
                      "p95_s": round(percentile(total, 0.95), 2),
                      "p50_after_completion_s": round(percentile(after, 0.5), 2),
                      "p95_after_completion_s": p95_after, "device": device,
                      "compiled": compile_s is not None, "compile_s": compile_s,
                      "model": f"{card.name} {card.version}", "image_size": card.image_size,
                      "sender": sender,
                      "target_p95_after_completion_s": TARGET_P95_AFTER_COMPLETION_S,
                      "meets_target": p95_after <= TARGET_P95_AFTER_COMPLETION_S}), flush=True)


if __name__ == "__main__":
    main()
