"""``cxr-node demo --out DIR``: the whole loop on one machine, as a newcomer first sees it.

Starts the node on its embedded defaults (SQLite, the bundled model, files under
``DIR/node``), starts a receiving PACS (Orthanc when installed, else a pynetdicom store
SCP), sends generated chest radiographs (normal and abnormal, from a seed the bundled
model was not trained on) and the real chest CR from ``pydicom-data`` as a modality
would, waits for the results, and prints a table: study, findings with scores, latency
from the last image acknowledged to the SR stored at the PACS. What the PACS received
is written under ``DIR/received/``, the burned-in overlays as PNG under ``DIR/previews/``;
the last line is one JSON object.

With ``--viewer`` the node keeps running with its web service on a free port of
127.0.0.1, where it serves what it holds (the sources and its SR, GSPS and SC) over
QIDO-RS and WADO-RS and OHIF reading them at ``/viewer/``; no other server. The PACS is
then always the store SCP (it only times the results for the table). The demo makes a
console account of the viewer role with a random password for this run, prints the
viewer's address, the account and one address per study, and stops at Ctrl-C.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pynetdicom import AE
from sqlalchemy import select

from config.settings import Settings
from node.demo_pacs import InboxPacs, OrthancPacs, free_port
from node.reporting import SECONDARY_CAPTURE, SR_CLASSES
from storage.models import FindingRecord, Instance, Series, Study, UserRole

MODALITY_AE = "DEMO-MODALITY"
SYNTHETIC_SEED = 2  # held out: the bundled model was trained on seed 1
VIEWER_ACCOUNT = "demo-viewer"  # made by --viewer, with a new random password each run


@dataclass
class DemoStudy:
    path: Path
    study_uid: str
    description: str
    truth: str  # the generated findings, "normal", or "unknown" for a real image
    acknowledged_at: float = math.nan
    report_at: float = math.nan
    findings: list[str] = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.report_at - self.acknowledged_at


def make_studies(directory: Path, abnormal: int = 4, normal: int = 2) -> list[DemoStudy]:
    """Generated studies (``abnormal`` with findings, ``normal`` without) and the real CR."""
    from model.phantom import synthesize_case

    directory.mkdir(parents=True, exist_ok=True)
    studies, wanted, index = [], {"abnormal": abnormal, "normal": normal}, 0
    while any(wanted.values()):
        case = synthesize_case(SYNTHETIC_SEED, index, size_range=(1500, 2200))
        index += 1
        kind = "abnormal" if case.boxes else "normal"
        if not wanted[kind]:
            continue
        wanted[kind] -= 1
        path = directory / f"{case.patient_id}.dcm"
        case.dataset.save_as(path, enforce_file_format=True)
        truth = ", ".join(sorted({box.label for box in case.boxes})) or "normal"
        studies.append(DemoStudy(path, str(case.dataset.StudyInstanceUID),
                                 f"synthetic {case.patient_id}", truth))
    try:
        from pydicom.data import get_testdata_file

        real = get_testdata_file("RG1_UNCR.dcm", download=False)
    except ImportError:
        real = None
    if real:
        ds = pydicom.dcmread(real, stop_before_pixels=True)
        studies.append(DemoStudy(Path(real), str(ds.StudyInstanceUID),
                                 "real CR, pydicom-data RG1_UNCR", "unknown"))
    return studies


def send_study(study: DemoStudy, port: int, called_ae: str) -> None:
    """C-STORE one study as a modality would; remember when it was acknowledged."""
    ds = pydicom.dcmread(study.path)
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    association = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not association.is_established:
        raise RuntimeError(f"the node refused the demo modality on port {port}")
    status = association.send_c_store(ds)
    study.acknowledged_at = time.time()
    association.release()
    if not status or status.Status != 0:
        raise RuntimeError(f"C-STORE of {study.path.name} failed: {status}")


def demo_settings(out: Path, pacs_port: int, web_port: int | None = None) -> Settings:
    """The embedded defaults, with the demo's own data folder, modality and PACS; the web
    service on ``web_port`` of 127.0.0.1 when given."""
    web = {"enabled": web_port is not None, "bind_address": "127.0.0.1"}
    if web_port is not None:
        web["port"] = web_port
    return Settings.model_validate({
        "storage": {"data_dir": str(out / "node")},
        "dicom": {"bind_address": "127.0.0.1", "port": free_port(), "min_free_disk_bytes": 0,
                  "peers": [{"ae_title": MODALITY_AE, "hosts": ["127.0.0.1"]}]},
        "destinations": [{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1",
                          "port": pacs_port}],
        "web": web,
    })


@dataclass(frozen=True)
class DemoAccount:
    name: str
    password: str


def add_viewer_account(db) -> DemoAccount:  # noqa: ANN001 - storage.db.Database
    """A console account of the viewer role with a random password, made as ``cxr-node
    users add`` makes one (and audited so): the demo's data folder is new each run."""
    from node.users import create_user

    account = DemoAccount(VIEWER_ACCOUNT, secrets.token_urlsafe(12))
    with db.session() as session:
        create_user(session, account.name, UserRole.VIEWER, account.password, "cxr-node demo")
    return account


def _findings(settings: Settings, studies: list[DemoStudy]) -> None:
    from storage.db import Database

    db = Database.for_storage(settings.storage, upgrade=False)
    with db.session() as session:
        for study in studies:
            rows = session.execute(
                select(FindingRecord.label, FindingRecord.score)
                .join(Instance, Instance.id == FindingRecord.instance_id)
                .join(Series).join(Study).where(Study.study_uid == study.study_uid)
                .order_by(FindingRecord.score.desc())).all()
            study.findings = [f"{label} {score:.0%}" for label, score in rows]
    db.dispose()


def _save_received(arrivals, out: Path) -> int:  # noqa: ANN001 - list of Arrival
    received, previews = out / "received", out / "previews"
    for folder in (received, previews):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for arrival in arrivals:
        ds = arrival.dataset
        folder = received / str(ds.StudyInstanceUID)
        folder.mkdir(exist_ok=True)
        ds.save_as(folder / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        if ds.SOPClassUID == SECONDARY_CAPTURE:
            Image.fromarray(np.asarray(ds.pixel_array, dtype=np.uint8)).save(
                previews / f"{ds.PatientID}-{ds.SOPInstanceUID}.png")
    return len(arrivals)


def run_demo(out: Path, timeout_s: float = 600.0, viewer_dist: Path | None = None) -> dict:
    """The demo; with ``viewer_dist`` (OHIF's prebuilt files) the node then stays up with
    its viewer until Ctrl-C."""
    from node.server import Node

    out = Path(out).resolve()
    shutil.rmtree(out / "node", ignore_errors=True)
    studies = make_studies(out / "sent")
    viewer = viewer_dist is not None
    pacs = InboxPacs() if viewer or not OrthancPacs.available() else OrthancPacs(out / "pacs")
    pacs.start()
    try:
        settings = demo_settings(out, pacs.port, free_port() if viewer else None)
        node = Node(settings, web_port=(settings.web.port, "web.port") if viewer else None,
                    ohif_dist=viewer_dist)
        try:
            # Before the web service starts: with an account there, it logs no setup link.
            account = add_viewer_account(node.db) if viewer else None
        except BaseException:
            node.db.dispose()
            raise
        node.start()
        try:
            summary = _send_and_wait(node, pacs, studies, out, timeout_s)
            if account is not None:
                _keep_viewer_up(node, account, studies)
        finally:
            node.stop()
    finally:
        pacs.stop()
    return summary


def _send_and_wait(node, pacs, studies: list[DemoStudy], out: Path,  # noqa: ANN001
                   timeout_s: float) -> dict:
    """Send every study, wait for its SR at the PACS (the GSPS and SC follow), print the
    table and return its summary."""
    settings = node.settings
    print(f"node {settings.dicom.ae_title} on port {node.listener.port}; PACS: {pacs.name} "
          f"on port {pacs.port}; sending {len(studies)} studies", flush=True)
    for study in studies:
        send_study(study, node.listener.port, settings.dicom.ae_title)
    deadline = time.time() + timeout_s
    waiting = {study.study_uid: study for study in studies}
    arrivals = []
    while waiting and time.time() < deadline:
        time.sleep(0.1)
        arrivals = pacs.arrivals()
        for arrival in arrivals:
            ds = arrival.dataset
            study = waiting.get(str(ds.StudyInstanceUID))
            if study is not None and ds.SOPClassUID in SR_CLASSES:
                study.report_at = arrival.at
                del waiting[study.study_uid]
    time.sleep(2 * settings.sending.poll_interval_seconds + 1)  # the GSPS and SCs follow
    arrivals = pacs.arrivals()
    _findings(settings, studies)
    objects = _save_received(arrivals, out)
    return _report(studies, objects)


def _keep_viewer_up(node, account: DemoAccount,  # noqa: ANN001 - node.server.Node
                    studies: list[DemoStudy]) -> None:
    """Where to look and how to log in, then the node stays up until Ctrl-C."""
    from node.viewer import OHIF_VERSION
    from node.web.ohif import PREFIX, study_url

    root = node.web.url.rstrip("/")
    print(f"\nOHIF {OHIF_VERSION}, served by the node from what it holds: {root}{PREFIX} "
          "(the study list)")
    print(f"Log in as {account.name} (viewer role), password {account.password}")
    print("Each study:")
    for study in studies:
        print(f"  {study.description:<31} {root}{study_url(study.study_uid)}")
    print("In OHIF, double-click the SR series (AI findings) to see the boxes; Ctrl-C stops "
          "the node.", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _report(studies: list[DemoStudy], objects: int) -> dict:
    print(f"\n{'study':<31} {'truth (generated findings)':<44} {'latency':>7}  "
          "findings reported (score)")
    for study in studies:
        latency = "-" if math.isnan(study.latency_s) else f"{study.latency_s:.1f} s"
        print(f"{study.description:<31} {study.truth:<44} {latency:>7}  "
              f"{', '.join(study.findings) or 'none'}")
    latencies = sorted(s.latency_s for s in studies if not math.isnan(s.latency_s))
    p95 = latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
    summary = {"studies_sent": len(studies), "studies_with_results": len(latencies),
               "objects_received": objects,
               "latency_p95_s": None if p95 is None else round(p95, 2)}
    print(json.dumps(summary), flush=True)
    return summary
