"""What the sender saw acknowledged survives a SIGKILL of the node, byte for byte."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.files import INCOMING_SUFFIX
from storage.models import Instance
from tests.factories import dataset_bytes, write_dx
from tests.integration.conftest import node_database
from tests.peers import NodeProcess, require_tool

INSTANCES = 50
KILL_AFTER_ACKS = 20


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(tmp_path, dcmtk):
    study, series = generate_uid(), generate_uid()
    files = [write_dx(tmp_path / f"in{i:02d}.dcm", rows=768, columns=640, seed=i, study_uid=study,
                      series_uid=series, instance_number=i + 1) for i in range(INSTANCES)]
    node = NodeProcess(tmp_path / "node").start()

    sender = subprocess.Popen(
        [require_tool("storescu"), "-v", "-aet", "STORESCU", "-aec", "CXRNODE", "127.0.0.1",
         str(node.port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    acknowledged, current = [], None
    for line in sender.stdout:
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: ").strip())
        elif line.startswith("I: Received Store Response (Success)"):
            acknowledged.append(current)
            if len(acknowledged) == KILL_AFTER_ACKS:
                node.kill()
    sender.wait(timeout=60)
    assert len(acknowledged) == KILL_AFTER_ACKS, "the kill did not land mid-transfer"
    assert sender.returncode != 0

    node.start()  # same data directory and database
    try:
        db = node_database(node)
        with db.session() as session:
            rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
        db.dispose()

        for path in acknowledged:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert uid in rows, f"{path} was acknowledged but is not registered"
            stored = node.data_dir / rows[uid].path
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == rows[uid].sha256
            assert dataset_bytes(stored) == dataset_bytes(path)
        assert all((node.data_dir / row.path).is_file() for row in rows.values()), "orphan rows"
        assert len(rows) <= KILL_AFTER_ACKS + 1  # at most the one in flight besides
        assert not list((node.data_dir / "incoming").glob(f"*{INCOMING_SUFFIX}"))
    finally:
        node.stop()
