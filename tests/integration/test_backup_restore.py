"""Back up, wipe, restore: the node serves the same studies and sends the same pending results.

What an operator checks after a restore, on SQLite and on PostgreSQL: `cxr-node studies`
lists what it listed before, the same transfers wait (ids, objects, destination), every
file is byte for byte the one backed up, and once the destination is up the pending
results arrive. The backup is taken while the node runs. A damaged archive, or a data
directory or database that is not empty, is refused in one line and leaves nothing; a
SQLite site's backup restores into PostgreSQL in another data directory, and that node
goes on receiving (its ids continue after the restored ones).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url, select, text

from storage.models import Instance, Job, JobState, ResultObject, Study, Transfer, TransferState
from tests.conftest import unavailable
from tests.factories import write_chest
from tests.integration.conftest import query, wait_until
from tests.integration.test_results_flow import destination, fast_retries, received_uids
from tests.peers import (
    CXR_NODE,
    REPO,
    MissingTool,
    NodeProcess,
    StorescpProcess,
    require_tool,
    storescu,
)

# A study of one 256 px image each: what is proven is the restore, not the findings.
IMAGE_SIZE = (256, 256)


def cxr_node(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    return subprocess.run([*CXR_NODE, "--config", str(config), *args], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)


def refusal(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    return line


def file_hashes(data_dir: Path) -> dict[str, str]:
    """SHA-256 of every file a backup carries (not the SQLite database, not incoming/)."""
    if not data_dir.exists():
        return {}
    return {path.relative_to(data_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(data_dir.rglob("*"))
            if path.is_file() and not path.name.startswith("cxr-node.sqlite3")
            and "incoming" not in path.relative_to(data_dir).parts}


def unsent_transfers(node: NodeProcess) -> dict[int, tuple[str, str, str]]:
    rows = query(node, select(Transfer.id, ResultObject.sop_instance_uid, Transfer.destination,
                              Transfer.state)
                 .join(ResultObject, ResultObject.id == Transfer.result_id)
                 .where(Transfer.state != TransferState.SENT))
    return {row.id: (row.sop_instance_uid, row.destination, row.state) for row in rows}


def table_names(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return inspect(connection).get_table_names()
    finally:
        engine.dispose()


def recreate_postgres_database(url: str) -> None:
    """What a wipe is on PostgreSQL: the database dropped and created again, empty."""
    name = make_url(url).database
    server = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        server.dispose()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> str:
    """A small untrained model (128 px): the results need objects, not good findings."""
    from tests.model.conftest import write_model  # torch, only for the worker's model

    folder = tmp_path_factory.mktemp("small-model")
    write_model(folder, image_size=128)
    return str(folder)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_backup_wipe_restore_serves_the_same_studies_and_sends_the_pending_results(
        request, start_node, tmp_path, backend, small_model):
    database_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    storescp = StorescpProcess(tmp_path)  # its port is chosen; it is not listening: down
    sending = {"destinations": destination(storescp.port), "sending": fast_retries()}
    node = start_node(database_url=database_url, completion={"study_quiet_seconds": 0.3},
                      worker={"run_in_serve": True, "device": "cpu", "model_dir": small_model},
                      **sending)
    sources = [write_chest(tmp_path / "in", 21, index, size=IMAGE_SIZE) for index in range(2)]
    assert storescu(node.port, sources).returncode == 0

    def analysed_and_waiting():
        jobs = query(node, select(Job.state))
        tried = query(node, select(Transfer.id).where(Transfer.last_error.is_not(None)))
        return len(jobs) == 2 and {s for (s,) in jobs} == {JobState.DONE} and len(tried) == 6
    wait_until(analysed_and_waiting, timeout=120, interval=0.3)
    studies_before = cxr_node(node.config_path, "studies")
    assert studies_before.returncode == 0 and studies_before.stdout.count(" done ") == 2
    waiting = {transfer_id: row[:2] for transfer_id, row in unsent_transfers(node).items()}
    assert len(waiting) == 6  # SR, GSPS and SC of each study, the destination being down
    files = file_hashes(node.data_dir)
    assert sum(name.startswith(("dicom/", "results/")) for name in files) == 2 + 6

    archive = tmp_path / "backups" / "node.tar"
    archive.parent.mkdir()
    backup = cxr_node(node.config_path, "backup", "--out", str(archive))  # the node runs
    assert backup.returncode == 0, backup.stderr
    [summary] = backup.stdout.splitlines()
    assert summary.startswith(f"backup {archive}: ") and "studies 2" in summary
    assert "transfers 6" in summary and f"{len(files)} files" in summary
    assert not (archive.parent / "node.tar.partial").exists()
    assert backup.stderr.splitlines() == [  # the worker's model is not under data_dir
        f"cxr-node backup: warning: model folder {small_model} is outside the data directory "
        "and not in the backup: keep a copy of it yourself"]

    node.stop()
    shutil.rmtree(node.data_dir)  # with SQLite, the database goes with it
    if backend == "postgresql":
        recreate_postgres_database(database_url)

    restore = cxr_node(node.config_path, "restore", str(archive))
    assert restore.returncode == 0, restore.stderr
    [restored] = restore.stdout.splitlines()
    assert restored.startswith(f"restored {archive}") and "studies 2" in restored
    print(f"\n{backend}: {summary}\n{backend}: {restored}")

    assert cxr_node(node.config_path, "studies").stdout == studies_before.stdout
    after = unsent_transfers(node)
    assert {transfer_id: row[:2] for transfer_id, row in after.items()} == waiting
    assert {row[2] for row in after.values()} <= {TransferState.PENDING, TransferState.SENDING}
    assert file_hashes(node.data_dir) == files

    # The restored node with a sender only: the pending results need no model.
    restarted = NodeProcess(node.workdir, port=node.port, database_url=database_url,
                            worker={"run_in_serve": False}, **sending)
    with restarted, storescp:
        wait_until(lambda: not unsent_transfers(restarted), timeout=60, interval=0.3)
        assert received_uids(storescp) == {sop for sop, _ in waiting.values()}


@dataclass(frozen=True)
class ReceivedBackup:
    archive: Path
    studies: str  # `cxr-node studies` at the backup
    files: dict[str, str]


@pytest.fixture(scope="module")
def received_backup(tmp_path_factory) -> ReceivedBackup:
    """A SQLite node that received two studies (no worker), backed up while it runs."""
    try:
        require_tool("storescu")
    except MissingTool as exc:
        unavailable(str(exc))
    folder = tmp_path_factory.mktemp("received")
    with NodeProcess(folder / "node", completion={"study_quiet_seconds": 0.3}) as node:
        sources = [write_chest(folder / "in", 22, index, size=IMAGE_SIZE) for index in range(2)]
        assert storescu(node.port, sources).returncode == 0
        wait_until(lambda: {s for (s,) in query(node, select(Study.state))} == {"complete"}
                   and len(query(node, select(Study.id))) == 2)
        studies = cxr_node(node.config_path, "studies").stdout
        archive = folder / "received.tar"
        assert cxr_node(node.config_path, "backup", "--out", str(archive)).returncode == 0
        return ReceivedBackup(archive, studies, file_hashes(node.data_dir))


def write_config(folder: Path, database_url: str | None = None) -> Path:
    """A site's configuration: only where its data directory and database are."""
    node = NodeProcess(folder, database_url=database_url)
    return node.config_path


def test_restore_refuses_a_data_directory_that_is_not_empty(tmp_path, received_backup):
    config = write_config(tmp_path / "site")
    notes = tmp_path / "site" / "data" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("the operator's")

    line = refusal(cxr_node(config, "restore", str(received_backup.archive)))

    assert line == (f"cxr-node restore: error: storage.data_dir: {notes.parent} is not empty "
                    "(1 files, e.g. notes.txt); restore needs an empty data directory: choose "
                    "a new one or empty it")
    assert notes.read_text() == "the operator's"
    assert not (notes.parent / "cxr-node.sqlite3").exists()


def test_restore_refuses_a_database_that_is_not_empty(tmp_path, received_backup, postgres_url):
    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE other_software (id integer)"))
    engine.dispose()
    config = write_config(tmp_path / "site", postgres_url)

    line = refusal(cxr_node(config, "restore", str(received_backup.archive)))

    assert "storage.database_url: postgresql+psycopg://postgres@127.0.0.1" in line
    assert line.endswith("is not empty (1 tables, e.g. other_software); restore needs an empty "
                         "database: create a new one or drop its tables")
    assert table_names(postgres_url) == ["other_software"]
    assert file_hashes(tmp_path / "site" / "data") == {}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_damaged_archive_is_refused_naming_the_file_and_leaves_nothing(
        request, tmp_path, received_backup, backend):
    database_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    damaged = tmp_path / "damaged.tar"
    shutil.copyfile(received_backup.archive, damaged)
    with tarfile.open(damaged) as tar:
        image = next(m for m in tar.getmembers() if m.name.startswith("files/dicom/"))
    with damaged.open("r+b") as raw:  # one bit flipped in the middle of an image's bytes
        raw.seek(image.offset_data + image.size // 2)
        byte = raw.read(1)[0]
        raw.seek(-1, os.SEEK_CUR)
        raw.write(bytes([byte ^ 0x01]))
    config = write_config(tmp_path / "site", database_url)

    line = refusal(cxr_node(config, "restore", str(damaged)))

    assert line == (f"cxr-node restore: error: {damaged}: {image.name.removeprefix('files/')} "
                    "does not match its checksum in the manifest (the archive is damaged); "
                    "nothing was restored")
    data_dir = tmp_path / "site" / "data"
    assert not data_dir.exists() or not any(p.is_file() for p in data_dir.rglob("*"))
    if backend == "postgresql":
        assert table_names(database_url) == []


def test_a_sqlite_backup_restores_into_postgresql_in_another_data_directory(
        tmp_path, received_backup, postgres_url):
    site = NodeProcess(tmp_path / "moved", database_url=postgres_url,
                       completion={"study_quiet_seconds": 0.3})

    restore = cxr_node(site.config_path, "restore", str(received_backup.archive))

    assert restore.returncode == 0, restore.stderr
    assert cxr_node(site.config_path, "studies").stdout == received_backup.studies
    assert file_hashes(site.data_dir) == received_backup.files
    with site:  # it goes on receiving: new rows take ids after the restored ones
        third = write_chest(tmp_path / "in", 22, 2, size=IMAGE_SIZE)
        assert storescu(site.port, [third]).returncode == 0
        ids = {row.sop_instance_uid: row.id
               for row in query(site, select(Instance.sop_instance_uid, Instance.id))}
    assert sorted(ids.values()) == [1, 2, 3]
