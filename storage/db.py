"""Engine, sessions and schema migrations for SQLite (embedded) and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL``: a commit is on disk when it returns,
which the receiver relies on before it answers a C-STORE with success.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from alembic.util import CommandError as AlembicError
from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock keys (any constant the site's other software does not use).
MIGRATION_LOCK_KEY = 0x6378726E6F6465  # "cxrnode"
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10


def make_engine(url: str, sqlite_busy_timeout_seconds: float = 30.0) -> Engine:
    """Create an engine; for SQLite, set WAL, the busy timeout and foreign keys per connection.

    A PostgreSQL connection attempt gives up after ``POSTGRES_CONNECT_TIMEOUT_SECONDS``
    unless the URL sets ``connect_timeout``: libpq's default waits for ever on a server that
    accepts but does not answer, so a start-up would hang instead of saying which key is wrong.
    """
    if not url.startswith("sqlite"):
        parsed = make_url(url)
        connect_args = ({"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS}
                        if parsed.get_backend_name() == "postgresql"
                        and "connect_timeout" not in parsed.query else {})
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": sqlite_busy_timeout_seconds})
    busy_ms = int(sqlite_busy_timeout_seconds * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default); existing rows are kept.

    A restore creates the schema of the backup's own revision first, loads the rows into
    it, and only then migrates to the newest, as an upgrade of that site would.
    """
    config = _alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Processes starting together on a new database migrate one after the other.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def head_revision() -> str:
    """The newest schema revision this code knows."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this code's migrations (a newer version's is not)."""
    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except AlembicError:
        return False


class Database:
    """One engine and its session factory; the object every part of the node is handed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def connect(cls, url: str, sqlite_busy_timeout_seconds: float = 30.0,
                upgrade: bool = True) -> Database:
        engine = make_engine(url, sqlite_busy_timeout_seconds)
        if upgrade:
            migrate(engine)
        return cls(engine)

    @classmethod
    def for_storage(cls, storage, upgrade: bool = True) -> Database:  # noqa: ANN001
        """The database ``config.settings.StorageSettings`` points at (URL, busy timeout)."""
        return cls.connect(storage.resolved_database_url(), storage.sqlite_busy_timeout_seconds,
                           upgrade)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
