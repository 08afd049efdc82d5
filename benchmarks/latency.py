"""Result latency: dcmtk storescu sends single-image studies; how soon is the SR at the PACS?

cxr-node runs as its own process (``cxr-node serve`` with the bundled model, default quiet
period and worker settings) and sends its results to a pynetdicom store SCP in this
process, which timestamps each arrival. Studies are generated chest radiographs of
realistic size (1500-2200 px), each sent by its own storescu run, ``--interval`` seconds
apart. Per study: the time from storescu's return (the last instance acknowledged) to
the SR stored at the destination, and the part of it after the node marked the study
complete (the quiet period excluded). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select  # noqa: E402

from node.demo_pacs import InboxPacs  # noqa: E402
from node.reporting import SR_CLASSES  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.models import Study  # noqa: E402
from tests.peers import NodeProcess, storescu  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def make_studies(directory: Path, count: int) -> list[tuple[Path, str]]:
    from model.phantom import synthesize_case

    directory.mkdir(parents=True, exist_ok=True)
    studies = []
    for index in range(count):
        ds = synthesize_case(3, index, size_range=(1500, 2200)).dataset
        path = directory / f"study{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        studies.append((path, str(ds.StudyInstanceUID)))
    return studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds between the starts of two studies")
    parser.add_argument("--device", default="auto", help="the worker's device (auto, cpu, cuda)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cxr-latency-") as tmp:
        work = Path(tmp)
        studies = make_studies(work / "studies", args.count)
        pacs = InboxPacs().start()
        node = NodeProcess(work / "node", worker={"run_in_serve": True, "device": args.device},
                           completion={"study_quiet_seconds": 2.0,
                                       "check_interval_seconds": 0.25},
                           sending={"poll_interval_seconds": 0.2},
                           destinations=[{"name": "PACS", "ae_title": "PACS",
                                          "host": "127.0.0.1", "port": pacs.port}])
        acknowledged: dict[str, float] = {}
        with node:
            time.sleep(5)  # the worker loads the model after the listener is up
            for path, study_uid in studies:
                started = time.time()
                result = storescu(node.port, [path])
                acknowledged[study_uid] = time.time()
                if result.returncode != 0:
                    raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
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
    print(json.dumps({"studies": len(total), "p50_s": round(percentile(total, 0.5), 2),
                      "p95_s": round(percentile(total, 0.95), 2),
                      "p95_after_completion_s": round(percentile(after, 0.95), 2),
                      "device": device}))


if __name__ == "__main__":
    main()
