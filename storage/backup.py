"""``cxr-node backup``: the database and the data directory as one archive, taken hot.

The rows are a logical dump of every table, read in one transaction (REPEATABLE READ on
PostgreSQL, one WAL read snapshot on SQLite), written as JSON lines per table with the
schema's Alembic revision. A dump, not the database's own files, so that a backup restores
into either engine: a site that outgrows SQLite moves to PostgreSQL with it.

Files are copied after the rows were read. Under ``dicom/`` and ``results/``, whose files
belong to rows, only those the snapshot references are taken: a file written later has no
row in the backup, and one deleted since (retention) is listed as missing. Everything
else in the data directory (models, training runs, reports) is taken as found; the
database file itself, transfers in flight (``incoming/``) and the archive are not.

The archive is a plain tar (DICOM pixel data hardly compresses), with ``manifest.json``
last: the revision, the rows and SHA-256 of each table's dump, the size and SHA-256 of
each file, and what was missing. It is written to ``FILE.partial`` and renamed when
complete and on disk, so a ``FILE`` that exists is a whole backup.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sqlalchemy import Connection, Engine, MetaData, make_url, select
from sqlalchemy.exc import DBAPIError

from config.settings import StorageSettings
from storage.files import fsync_directory

FORMAT = "cxr-node-backup/1"
MANIFEST = "manifest.json"
DATABASE_PREFIX = "database/"
FILES_PREFIX = "files/"
# Left in the data directory while a restore runs; a node does not start beside it.
RESTORE_MARKER = ".cxr-node-restore-unfinished"
# Folders whose files belong to rows: (table, path column) that reference them.
ROW_FILES = {"instances": "path", "result_objects": "path"}
ROW_OWNED_FOLDERS = frozenset({"dicom", "results"})
# Not data: transfers in flight (removed at start) and the start-up write probe.
SKIPPED_FOLDERS = frozenset({"incoming"})
SKIPPED_PREFIXES = (".write-probe-", ".cxr-node-backup-", RESTORE_MARKER)
# Columns holding absolute folder paths (the rest are relative to the data directory).
ABSOLUTE_PATH_COLUMNS = {"model_versions": "path", "dataset_snapshots": "path"}
ROWS_PER_FETCH = 1000


class BackupError(ValueError):
    """A backup or restore that cannot be done; one line that names what to change."""


@dataclass
class BackupSummary:
    """What went into (or came out of) an archive, for the one line the command prints."""

    rows: dict[str, int]
    files: int = 0
    file_bytes: int = 0
    archive_bytes: int | None = None
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)

    def counts(self) -> str:
        tables = ", ".join(f"{name} {count}" for name, count in self.rows.items() if count)
        archive = "" if self.archive_bytes is None else f", archive {self.archive_bytes} bytes"
        return (f"{sum(self.rows.values())} rows in {len(self.rows)} tables ({tables}), "
                f"{self.files} files ({self.file_bytes} bytes){archive}, {self.seconds:.1f} s")

    def warnings(self) -> list[str]:
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} files the database refers to were missing "
                         f"(deleted after the snapshot, e.g. by retention): "
                         f"{', '.join(self.missing[:3])}{' ...' if len(self.missing) > 3 else ''}")
        for path in self.outside:
            lines.append(f"model folder {path} is outside the data directory and not in the "
                         "backup: keep a copy of it yourself")
        return lines


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def sqlite_files(url: str) -> list[Path]:
    """The SQLite database file and its companions (WAL, shared memory, journal); [] else."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return []
    database = Path(parsed.database).resolve()
    return [database] + [database.with_name(database.name + suffix)
                         for suffix in ("-wal", "-shm", "-journal")]


def database_error(url: str, exc: DBAPIError) -> BackupError:
    lines = str(exc.orig or exc).strip().splitlines()
    reason = lines[0].strip() if lines else type(exc.orig or exc).__name__
    return BackupError(f"storage.database_url: cannot use {safe_url(url)} ({reason}); check "
                       "that the server runs and the URL is right")


def relative_inside(path: str) -> str:
    """``path`` as a clean relative POSIX path, or :class:`BackupError` if it could escape."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or not pure.parts or any(p in ("..", ".", "") for p in pure.parts) \
            or "\\" in path or "\0" in path:
        raise BackupError(f'path "{path[:200]}" is not a plain path inside the data directory')
    return str(pure)


class HashingReader:
    """A file read at most ``limit`` bytes far, hashed on the way (tarfile reads it)."""

    def __init__(self, raw: BinaryIO, limit: int | None = None) -> None:
        self.raw = raw
        self.left = limit
        self.digest = hashlib.sha256()
        self.size = 0

    def _take(self, data: bytes) -> bytes:
        self.digest.update(data)
        self.size += len(data)
        if self.left is not None:
            self.left -= len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        if self.left is not None:
            n = self.left if n < 0 else min(n, self.left)
        return self._take(self.raw.read(n))

    def readline(self) -> bytes:
        return self._take(self.raw.readline())

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction over every table, so the rows agree with each other.

    PostgreSQL: REPEATABLE READ, read only. SQLite: Python's driver opens no transaction
    for reads, so a BEGIN is sent; in WAL mode the snapshot holds from the first read and
    writers are not blocked.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="REPEATABLE READ",
                                                postgresql_readonly=True) as connection:
            with connection.begin():
                yield connection
    elif engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("BEGIN")
            try:
                yield connection
            finally:
                connection.rollback()
    else:
        raise BackupError(f"storage.database_url: {engine.dialect.name} is not supported; "
                          "use SQLite or PostgreSQL")


def _json_value(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise BackupError(f"a {type(value).__name__} value cannot be written to a backup")


@dataclass
class _Dump:
    revision: str
    tables: list[dict]  # name, rows, bytes, sha256, file (the temporary dump)
    referenced: dict[str, None]  # relative paths the rows refer to, in row order
    model_paths: list[str]


def _dump(connection: Connection, folder: Path) -> _Dump:
    """Every table (foreign-key order, rows by primary key) as JSON lines under ``folder``."""
    metadata = MetaData()
    metadata.reflect(connection)
    if "alembic_version" not in metadata.tables:
        raise BackupError("storage.database_url: the database holds no cxr-node schema; "
                          "nothing to back up")
    version = metadata.tables["alembic_version"]
    revision = connection.execute(select(version.c.version_num)).scalar_one()
    dump = _Dump(revision, [], {}, [])
    for table in metadata.sorted_tables:
        if table.name == "alembic_version":
            continue
        path = folder / f"{table.name}.jsonl"
        digest, count = hashlib.sha256(), 0
        order = list(table.primary_key.columns) or list(table.columns)
        file_column = ROW_FILES.get(table.name)
        with path.open("wb") as out:
            # Streamed (a server-side cursor on PostgreSQL): years of audit rows need not
            # fit in memory.
            rows = connection.execute(select(table).order_by(*order).execution_options(
                yield_per=ROWS_PER_FETCH)).mappings()
            for row in rows:
                line = (json.dumps({k: _json_value(v) for k, v in row.items()},
                                   ensure_ascii=False, separators=(",", ":")) + "\n").encode()
                digest.update(line)
                out.write(line)
                count += 1
                if file_column and row.get("purged_at") is None:
                    dump.referenced[relative_inside(row[file_column])] = None
                if table.name == "model_versions":
                    dump.model_paths.append(row["path"])
        dump.tables.append({"name": table.name, "rows": count, "bytes": path.stat().st_size,
                            "sha256": digest.hexdigest(), "file": path})
    return dump


def _data_files(data_dir: Path, referenced: dict[str, None], skipped: set[Path]) -> list[str]:
    """Relative paths to copy: the referenced row files, then the rest of the data directory."""
    found = list(referenced)
    for root, folders, files in os.walk(data_dir):
        here = Path(root)
        if here == data_dir:
            folders[:] = [f for f in folders
                          if f not in ROW_OWNED_FOLDERS and f not in SKIPPED_FOLDERS]
        folders.sort()
        for name in sorted(files):
            path = here / name
            if path in skipped or name.startswith(SKIPPED_PREFIXES) or path.is_symlink():
                continue
            found.append(path.relative_to(data_dir).as_posix())
    return found


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> tuple[int, str] | None:
    """Copy ``path`` into ``tar`` as ``name``; (size, sha256), or None if it is gone."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        status = os.fstat(handle.fileno())
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = status.st_size, int(status.st_mtime), 0o644
        reader = HashingReader(handle, status.st_size)
        try:
            tar.addfile(info, reader)
        except OSError as exc:
            if "unexpected end of data" in str(exc):
                raise BackupError(f"{path} shrank while it was copied; run the backup "
                                  "again") from None
            raise
        return status.st_size, reader.hexdigest()


def _check_output(out: Path, data_dir: Path) -> Path:
    out = out.absolute()
    if out.exists():
        raise BackupError(f"--out {out} exists; give a new file name (a backup is never "
                          "overwritten)")
    if not out.parent.is_dir():
        raise BackupError(f"--out {out}: folder {out.parent} does not exist")
    if out.resolve().is_relative_to(data_dir):
        raise BackupError(f"--out {out} is inside storage.data_dir {data_dir}; write the "
                          "backup elsewhere, ideally to another disk")
    return out


def write_backup(engine: Engine, storage: StorageSettings, out: Path,
                 bundled_model: Path | None = None) -> BackupSummary:
    """Write the archive ``out`` of ``engine``'s rows and ``storage.data_dir``'s files.

    Raises
    ------
    BackupError
        ``out`` exists, is inside the data directory or has no folder; the database holds
        no cxr-node schema or cannot be read. Nothing is left behind.
    """
    started = time.monotonic()
    data_dir = Path(storage.data_dir).resolve()
    if (data_dir / RESTORE_MARKER).exists():
        raise BackupError(f"storage.data_dir: {data_dir} holds an unfinished restore; "
                          "nothing to back up")
    out = _check_output(out, data_dir)
    partial = out.with_name(out.name + ".partial")
    url = engine.url.render_as_string(hide_password=False)
    skipped = {*sqlite_files(url), out, partial}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".cxr-node-backup-") as work:
        try:
            with snapshot(engine) as connection:
                dump = _dump(connection, Path(work))
        except DBAPIError as exc:
            raise database_error(url, exc) from None
        summary = BackupSummary({t["name"]: t["rows"] for t in dump.tables})
        bundled = str(bundled_model.resolve()) if bundled_model else None
        summary.outside = sorted({p for p in dump.model_paths
                                  if not Path(p).is_relative_to(data_dir) and p != bundled})
        files: dict[str, dict] = {}
        try:
            with partial.open("wb") as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for table in dump.tables:
                        tar.add(table["file"], f"{DATABASE_PREFIX}{table['name']}.jsonl")
                    for name in _data_files(data_dir, dump.referenced, skipped):
                        copied = _add_file(tar, data_dir / name, FILES_PREFIX + name)
                        if copied is None:
                            if name in dump.referenced:
                                summary.missing.append(name)
                            continue  # not referenced: removed since it was listed
                        files[name] = {"size": copied[0], "sha256": copied[1]}
                    manifest = {
                        "format": FORMAT,
                        "created_at": datetime.now(UTC).replace(tzinfo=None).isoformat(),
                        "revision": dump.revision, "dialect": engine.dialect.name,
                        "data_dir": str(data_dir), "bundled_model": bundled,
                        "tables": [{k: t[k] for k in ("name", "rows", "bytes", "sha256")}
                                   for t in dump.tables],
                        "files": files, "missing": summary.missing,
                        "outside_data_dir": summary.outside}
                    body = json.dumps(manifest, indent=1).encode()
                    info = tarfile.TarInfo(MANIFEST)
                    info.size, info.mtime, info.mode = len(body), int(time.time()), 0o644
                    tar.addfile(info, io.BytesIO(body))
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, out)
            fsync_directory(out.parent)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    summary.files = len(files)
    summary.file_bytes = sum(entry["size"] for entry in files.values())
    summary.archive_bytes = out.stat().st_size
    summary.seconds = time.monotonic() - started
    return summary

