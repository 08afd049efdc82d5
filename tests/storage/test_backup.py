"""Backup and restore in process: what the node-level test does not reach.

The rows are one snapshot while others write (SQLite and PostgreSQL). On SQLite: a file
the rows refer to that is gone at the backup (retention) is named and comes back as
purged; folders under the old data directory follow it to the new one; leases of processes
that ran at the backup are free after it; a backup of an older schema is migrated; a
newer one, an existing --out or one inside the data directory is refused in one line; and
a node does not start on a data directory whose restore did not finish.
"""

from __future__ import annotations

import io
import json
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from config.settings import ConfigError, Settings, StorageSettings
from node.cli import main
from node.preflight import check_data_dir
from storage.backup import RESTORE_MARKER, snapshot, write_backup
from storage.db import Database, make_engine, migrate
from storage.models import (
    AuditEvent,
    Instance,
    Job,
    JobState,
    ModelState,
    ModelVersion,
    ResultObject,
    Series,
    Study,
    Transfer,
    TransferState,
    utcnow,
)
from storage.restore import restore_backup


def site(folder: Path) -> StorageSettings:
    return StorageSettings(data_dir=folder / "data")


def receive(db: Database, storage: StorageSettings, sop_uid: str, *, file: bool = True) -> None:
    """A study of one image as the receiver registers it (the file written only if ``file``)."""
    path = f"dicom/1.2/1.2.3/{sop_uid}.dcm"
    if file:
        (storage.data_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (storage.data_dir / path).write_bytes(b"DICM" + sop_uid.encode())
    with db.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == "1.2")) \
            or Study(study_uid="1.2")
        series = session.scalar(select(Series).where(Series.series_uid == "1.2.3")) \
            or Series(study=study, series_uid="1.2.3")
        session.add(Instance(series=series, sop_instance_uid=sop_uid, sop_class_uid="1.2.840",
                             transfer_syntax_uid="1.2.840.10008.1.2.1", path=path,
                             size_bytes=4 + len(sop_uid), sha256="0" * 64))


def test_a_file_gone_at_the_backup_is_named_and_restored_as_purged(tmp_path, capsys):
    storage = site(tmp_path / "old")
    db = Database.for_storage(storage)
    receive(db, storage, "1.2.3.1")
    receive(db, storage, "1.2.3.2", file=False)  # retention deleted it after the snapshot
    config = tmp_path / "old.yaml"
    config.write_text(f"storage: {{data_dir: {storage.data_dir}}}\n")

    assert main(["--config", str(config), "backup", "--out", str(tmp_path / "b.tar")]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "cxr-node backup: warning: 1 files the database refers to were missing (deleted after "
        "the snapshot, e.g. by retention): dicom/1.2/1.2.3/1.2.3.2.dcm"]
    assert "instances 2" in out and "1 files" in out

    restored = site(tmp_path / "new")
    restore_backup(restored, tmp_path / "b.tar")
    new = Database.for_storage(restored, upgrade=False)
    with new.session() as session:
        purged = dict(session.execute(select(Instance.sop_instance_uid,
                                                 Instance.purged_at)).all())
    assert purged["1.2.3.1"] is None and purged["1.2.3.2"] is not None
    assert (restored.data_dir / "dicom/1.2/1.2.3/1.2.3.1.dcm").read_bytes() == b"DICM1.2.3.1"
    new.dispose()
    db.dispose()


def test_model_folders_move_with_the_data_directory_and_leases_are_released(tmp_path):
    storage = site(tmp_path / "old")
    db = Database.for_storage(storage)
    receive(db, storage, "1.2.3.1")
    model = storage.data_dir.resolve() / "training" / "runs" / "r1" / "model"
    model.mkdir(parents=True)
    (model / "card.json").write_text("{}")
    with db.session() as session:
        session.add(ModelVersion(name="cxr", version="2", state=ModelState.ACTIVE,
                                 path=str(model), weights_sha256="0" * 64))
        study = session.scalar(select(Study))
        job = Job(study=study, study_generation=1, state=JobState.DONE)
        session.add(job)
        session.flush()
        result = ResultObject(job_id=job.id, study_id=study.id, kind="sr", sop_class_uid="1.2",
                              sop_instance_uid="1.2.9", series_instance_uid="1.2.8",
                              path="results/1.2/1.2.8/1.2.9.dcm")
        session.add(result)
        session.flush()
        session.add(Transfer(result_id=result.id, destination="PACS",
                             state=TransferState.SENDING, lease_owner="elsewhere:1:sender:x",
                             lease_expires_at=utcnow() + timedelta(hours=1)))
    (storage.data_dir / "results/1.2/1.2.8").mkdir(parents=True)
    (storage.data_dir / "results/1.2/1.2.8/1.2.9.dcm").write_bytes(b"SR")
    write_backup(db.engine, storage, tmp_path / "b.tar")
    db.dispose()

    restored = site(tmp_path / "new")
    restore_backup(restored, tmp_path / "b.tar")

    new = Database.for_storage(restored, upgrade=False)
    with new.session() as session:
        path = session.scalar(select(ModelVersion.path))
        lease = session.scalar(select(Transfer.lease_expires_at))
    new.dispose()
    assert path == str(restored.data_dir.resolve() / "training" / "runs" / "r1" / "model")
    assert (Path(path) / "card.json").read_text() == "{}"
    assert lease <= utcnow()  # claimable at once: its sender is not running any more


def test_a_backup_of_an_older_schema_is_restored_and_migrated(tmp_path):
    storage = site(tmp_path / "old")
    engine = make_engine(storage.resolved_database_url())
    migrate(engine, "0006")  # before studies.patient_name
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO studies (study_uid, state, generation, "
                                "first_received_at, last_instance_at) VALUES "
                                "('1.2', 'complete', 1, '2026-01-02 03:04:05', "
                                "'2026-01-02 03:04:05')"))
    write_backup(engine, storage, tmp_path / "b.tar")
    engine.dispose()

    _, revision = restore_backup(site(tmp_path / "new"), tmp_path / "b.tar")

    assert revision == "0006"
    new = Database.for_storage(site(tmp_path / "new"), upgrade=False)
    with new.session() as session:
        study = session.scalar(select(Study))
        assert (study.study_uid, study.patient_name, str(study.last_instance_at)) == (
            "1.2", None, "2026-01-02 03:04:05")
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == "0007"
    new.dispose()


def _rewrite_manifest(archive: Path, out: Path, **changes: object) -> None:
    with tarfile.open(archive) as source, tarfile.open(out, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), **changes}).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))


def test_refusals_are_one_line_and_exit_2(tmp_path, capsys):
    storage = site(tmp_path / "old")
    db = Database.for_storage(storage)
    receive(db, storage, "1.2.3.1")
    db.dispose()
    config = tmp_path / "old.yaml"
    config.write_text(f"storage: {{data_dir: {storage.data_dir}}}\n")
    archive = tmp_path / "b.tar"
    assert main(["--config", str(config), "backup", "--out", str(archive)]) == 0
    _rewrite_manifest(archive, tmp_path / "newer.tar", revision="0099")
    capsys.readouterr()
    new = tmp_path / "new.yaml"
    new.write_text(f"storage: {{data_dir: {tmp_path / 'new'}}}\n")

    cases = {
        ("--config", str(config), "backup", "--out", str(archive)):
            f"cxr-node backup: error: --out {archive} exists; give a new file name (a backup "
            "is never overwritten)",
        ("--config", str(config), "backup", "--out", str(storage.data_dir / "b.tar")):
            f"cxr-node backup: error: --out {storage.data_dir / 'b.tar'} is inside "
            f"storage.data_dir {storage.data_dir}; write the backup elsewhere, ideally to "
            "another disk",
        ("--config", str(new), "restore", str(tmp_path / "newer.tar")):
            f"cxr-node restore: error: {tmp_path / 'newer.tar'} holds database revision 0099, "
            "which this cxr-node does not know: restore it with the version that wrote it (or "
            "a newer one)",
        ("--config", str(new), "restore", str(config)):
            f"cxr-node restore: error: {config} is not a cxr-node backup (truncated header)",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2
        assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "new").exists()


def test_a_node_does_not_start_where_a_restore_did_not_finish(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / RESTORE_MARKER).write_text("restoring b.tar\n")

    with pytest.raises(ConfigError) as refused:
        check_data_dir(Settings(storage={"data_dir": data_dir}))

    assert str(refused.value) == (f"storage.data_dir: {data_dir} holds a restore that did not "
                                  "finish; empty it and the database, and run cxr-node restore "
                                  "again")


def test_the_rows_are_read_in_one_snapshot_while_the_node_writes(database_url):
    # The backup reads table after table; a row committed meanwhile (a C-STORE, an audit
    # event) must not appear in a later table when its parent was read before it.
    db = Database.connect(database_url)
    with snapshot(db.engine) as reading:
        before = reading.execute(select(func.count()).select_from(AuditEvent)).scalar()
        with db.session() as writing:
            writing.add(AuditEvent(event_id="110100", event_type="node-started", outcome=0))
        during = reading.execute(select(func.count()).select_from(AuditEvent)).scalar()
    with db.session() as session:
        after = session.scalar(select(func.count()).select_from(AuditEvent))
    db.dispose()

    assert (before, during, after) == (0, 0, 1)
