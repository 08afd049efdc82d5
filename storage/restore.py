"""``cxr-node restore``: a backup into an empty database and an empty data directory.

Both must be empty, so a restore never mixes two sites' rows or overwrites a file. The
schema is created at the backup's own revision, the rows are inserted in foreign-key
order (PostgreSQL's sequences then continue after the highest id), the files are written
and checked against the manifest's SHA-256, and only then is the database committed and
migrated to this version's newest revision, as a node does at start. Any failure (a
damaged archive, a row this database refuses) removes every table and file the restore
made: the database and the data directory are empty again.

What changes on the way, and why:
- leases still running at the backup are expired: no process of the restored database
  runs, so what was being analysed or sent is taken up at once;
- absolute model and snapshot folders under the old data directory (or the old install's
  bundled model) point to the same place under the new one;
- an image whose file was missing at the backup is marked purged, as retention would have.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import (
    Connection,
    Date,
    DateTime,
    Engine,
    Integer,
    MetaData,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from config.settings import StorageSettings
from storage.backup import (
    ABSOLUTE_PATH_COLUMNS,
    DATABASE_PREFIX,
    FILES_PREFIX,
    FORMAT,
    MANIFEST,
    RESTORE_MARKER,
    BackupError,
    BackupSummary,
    HashingReader,
    database_error,
    relative_inside,
    safe_url,
    sqlite_files,
)
from storage.db import is_known_revision, make_engine, migrate

LOGGER = logging.getLogger("cxr_node.restore")
INSERT_BATCH = 500
CHUNK_BYTES = 1 << 20


def _require_empty_data_dir(data_dir: Path, database_files: list[Path]) -> None:
    if (data_dir / RESTORE_MARKER).exists():
        raise BackupError(f"storage.data_dir: {data_dir} holds an unfinished restore; empty "
                          "it and the database, then restore again")
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupError(f"storage.data_dir: {data_dir} is a file, not a directory")
    found = [path for path in sorted(data_dir.rglob("*"))
             if not path.is_dir() and path not in database_files] if data_dir.exists() else []
    if found:
        raise BackupError(f"storage.data_dir: {data_dir} is not empty ({len(found)} files, e.g. "
                          f"{found[0].relative_to(data_dir)}); restore needs an empty data "
                          "directory: choose a new one or empty it")


def _require_empty_database(engine: Engine, url: str, database_files: list[Path]) -> None:
    if database_files and not database_files[0].exists():
        return
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
    except DBAPIError as exc:
        raise database_error(url, exc) from None
    if tables:
        raise BackupError(f"storage.database_url: {safe_url(url)} is not empty ({len(tables)} "
                          f"tables, e.g. {sorted(tables)[0]}); restore needs an empty "
                          "database: create a new one or drop its tables")


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> tuple[dict, dict]:
    """The manifest and the archive's members by name, checked against each other."""
    members = {member.name: member for member in tar.getmembers()}
    if MANIFEST not in members:
        raise BackupError(f"{archive} is not a cxr-node backup (it has no {MANIFEST})")
    try:
        manifest = json.loads(tar.extractfile(members[MANIFEST]).read())
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{archive} is a backup of format {manifest.get('format')!r}, "
                              f"not {FORMAT}; restore it with the version that wrote it")
        expected = ({f"{DATABASE_PREFIX}{t['name']}.jsonl" for t in manifest["tables"]}
                    | {FILES_PREFIX + relative_inside(name) for name in manifest["files"]}
                    | {MANIFEST})
        manifest["revision"], manifest["data_dir"]  # noqa: B018 - present, or KeyError
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"{archive}: its {MANIFEST} is damaged ({exc}); nothing was "
                          "restored") from None
    for name in sorted(set(members) ^ expected):
        what = "lacks" if name in expected else "holds an entry its manifest does not list:"
        raise BackupError(f"{archive} {what} {name}; the archive is damaged or not "
                          "cxr-node's; nothing was restored")
    for name in expected:
        if not members[name].isfile():
            raise BackupError(f"{archive}: {name} is not a plain file; nothing was restored")
    return manifest, members


def _path_map(manifest: dict, data_dir: Path, bundled_model: Path | None) -> list[tuple]:
    moves = [(manifest["data_dir"], str(data_dir))]
    if manifest.get("bundled_model") and bundled_model is not None:
        moves.append((manifest["bundled_model"], str(bundled_model.resolve())))
    return [(old, new) for old, new in moves if old != new]


def _moved(path: str | None, moves: list[tuple]) -> str | None:
    for old, new in moves:
        if path is not None and (path == old or path.startswith(old + "/")):
            return new + path[len(old):]
    return path


def _load_tables(connection: Connection, tar: tarfile.TarFile, members: dict, manifest: dict,
                 moves: list[tuple], archive: Path) -> dict[str, int]:
    """Insert every table's rows, checking each dump's row count and SHA-256."""
    metadata = MetaData()
    metadata.reflect(connection)
    order = [t.name for t in metadata.sorted_tables if t.name != "alembic_version"]
    listed = {t["name"]: t for t in manifest["tables"]}
    if set(order) != set(listed):
        raise BackupError(f"{archive}: its tables differ from revision {manifest['revision']}'s "
                          f"({sorted(set(order) ^ set(listed))}); nothing was restored")
    counts = {}
    for name in order:
        table = metadata.tables[name]
        converters = {c.name: (datetime.fromisoformat if isinstance(c.type, DateTime)
                               else date.fromisoformat if isinstance(c.type, Date) else None)
                      for c in table.columns}
        member_name = f"{DATABASE_PREFIX}{name}.jsonl"
        reader = HashingReader(tar.extractfile(members[member_name]))
        batch, count = [], 0
        try:
            while line := reader.readline():
                row = json.loads(line)
                for column, value in row.items():
                    convert = converters[column]
                    if convert is not None and value is not None:
                        row[column] = convert(value)
                if ABSOLUTE_PATH_COLUMNS.get(name) in row:
                    column = ABSOLUTE_PATH_COLUMNS[name]
                    row[column] = _moved(row[column], moves)
                batch.append(row)
                count += 1
                if len(batch) == INSERT_BATCH:
                    connection.execute(table.insert(), batch)
                    batch = []
            if reader.hexdigest() != listed[name]["sha256"] or count != listed[name]["rows"]:
                raise ValueError("checksum")
            if batch:
                connection.execute(table.insert(), batch)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, BackupError):
                raise
            raise BackupError(f"{archive}: {member_name} does not match its checksum in the "
                              "manifest (the archive is damaged); nothing was restored") from None
        except DBAPIError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise BackupError(f"table {name}: a row does not fit this database ({reason}); "
                              "nothing was restored") from None
        counts[name] = count
    _expire_leases(connection, metadata)
    _mark_missing_purged(connection, metadata, manifest)
    if connection.dialect.name == "postgresql":
        _continue_sequences(connection, metadata)
    return counts


def _expire_leases(connection: Connection, metadata: MetaData) -> None:
    """No process of the restored database runs: what they held is free now."""
    now = datetime.now(UTC).replace(tzinfo=None)  # the schema's naive UTC
    for table in metadata.sorted_tables:
        if "lease_expires_at" in table.c:
            connection.execute(update(table).where(table.c.lease_expires_at > now)
                               .values(lease_expires_at=now))


def _mark_missing_purged(connection: Connection, metadata: MetaData, manifest: dict) -> None:
    instances = metadata.tables.get("instances")
    if not manifest.get("missing") or instances is None or "purged_at" not in instances.c:
        return
    when = datetime.fromisoformat(manifest["created_at"])
    connection.execute(update(instances).where(instances.c.path.in_(manifest["missing"]),
                                               instances.c.purged_at.is_(None))
                       .values(purged_at=when))


def _continue_sequences(connection: Connection, metadata: MetaData) -> None:
    """Explicit ids leave PostgreSQL's sequences at 1: set each past the highest id."""
    for table in metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or not isinstance(keys[0].type, Integer):
            continue
        key = keys[0]
        connection.execute(select(func.setval(
            func.pg_get_serial_sequence(table.name, key.name),
            func.coalesce(select(func.max(key)).scalar_subquery(), 0) + 1, False)))


def _extract_files(tar: tarfile.TarFile, members: dict, manifest: dict, data_dir: Path,
                   archive: Path) -> tuple[int, int]:
    """Write every file, each checked against the manifest; (files, bytes)."""
    total = 0
    for name, entry in manifest["files"].items():
        target = data_dir / relative_inside(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        reader = HashingReader(tar.extractfile(members[FILES_PREFIX + name]))
        with target.open("xb") as out:
            while chunk := reader.read(CHUNK_BYTES):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if reader.size != entry["size"] or reader.hexdigest() != entry["sha256"]:
            raise BackupError(f"{archive}: {name} does not match its checksum in the manifest "
                              "(the archive is damaged); nothing was restored")
        total += reader.size
    return len(manifest["files"]), total


def _undo(engine: Engine, data_dir: Path, existed: set[Path] | None,
          database_files: list[Path], database_existed: bool) -> None:
    """Leave the database and the data directory as empty as they were found."""
    try:
        if database_files and not database_existed:
            engine.dispose()
            for path in database_files:
                path.unlink(missing_ok=True)
        else:
            with engine.begin() as connection:
                metadata = MetaData()
                metadata.reflect(connection)
                metadata.drop_all(connection)
    except Exception as exc:  # noqa: BLE001 - the restore's own error is the one to report
        LOGGER.error("the database could not be emptied again (%s): drop its tables before "
                     "restoring again", exc)
    finally:
        engine.dispose()
    if existed is None:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    kept = set(database_files) if database_existed else set()
    for root, folders, files in os.walk(data_dir, topdown=False):
        for name in files:
            if Path(root) / name not in kept:
                (Path(root) / name).unlink(missing_ok=True)
        for name in folders:
            if Path(root) / name not in existed:
                shutil.rmtree(Path(root) / name, ignore_errors=True)


def restore_backup(storage: StorageSettings, archive: Path,
                   bundled_model: Path | None = None) -> tuple[BackupSummary, str]:
    """Restore ``archive`` into ``storage``'s empty database and data directory.

    Returns the summary and the backup's revision. Raises :class:`BackupError` when
    either target is not empty or the archive is damaged, leaving both as they were.
    """
    started = time.monotonic()
    data_dir = Path(storage.data_dir).resolve()
    url = storage.resolved_database_url()
    database_files = sqlite_files(url)
    if not archive.is_file():
        raise BackupError(f"{archive} is not a file")
    _require_empty_data_dir(data_dir, database_files)
    existed = ({p for p in data_dir.rglob("*") if p.is_dir()} | {data_dir}
               if data_dir.exists() else None)
    database_existed = bool(database_files) and database_files[0].exists()
    try:
        tar = tarfile.open(archive, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"{archive} is not a cxr-node backup ({exc})") from None
    with tar:
        try:
            manifest, members = _read_manifest(tar, archive)
        except tarfile.TarError as exc:
            raise BackupError(f"{archive} is damaged ({exc}); nothing was restored") from None
        revision = manifest["revision"]
        if not is_known_revision(revision):
            raise BackupError(f"{archive} holds database revision {revision}, which this "
                              "cxr-node does not know: restore it with the version that wrote "
                              "it (or a newer one)")
        engine = make_engine(url, storage.sqlite_busy_timeout_seconds)
        try:
            _require_empty_database(engine, url, database_files)
        except BackupError:
            engine.dispose()
            raise
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            (data_dir / RESTORE_MARKER).write_text(f"restoring {archive}\n")
            migrate(engine, revision)
            with engine.begin() as connection:
                moves = _path_map(manifest, data_dir, bundled_model)
                counts = _load_tables(connection, tar, members, manifest, moves, archive)
                files, size = _extract_files(tar, members, manifest, data_dir, archive)
            migrate(engine)
            (data_dir / RESTORE_MARKER).unlink()
        except BaseException as exc:
            _undo(engine, data_dir, existed, database_files, database_existed)
            if isinstance(exc, tarfile.TarError | EOFError):
                raise BackupError(f"{archive} is damaged ({exc}); nothing was "
                                  "restored") from None
            if isinstance(exc, DBAPIError):
                raise database_error(url, exc) from None
            raise
        engine.dispose()
    summary = BackupSummary(counts, files, size, None, time.monotonic() - started,
                            list(manifest.get("missing", [])),
                            list(manifest.get("outside_data_dir", [])))
    return summary, revision
