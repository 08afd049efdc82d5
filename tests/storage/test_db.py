"""Schema migrations and the constraints the database itself enforces, on both backends."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from storage.db import MIGRATIONS_DIR, Database, make_engine
from storage.models import Base, Job, Series, Study, Transfer


def add_study(db: Database, study_uid: str = "1.2.3.4") -> int:
    with db.session() as session:
        study = Study(study_uid=study_uid)
        session.add(study)
        session.flush()
        return study.id


def test_migrated_schema_matches_models(database):
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    assert differences == []


def test_upgrade_from_first_release_keeps_existing_rows(database_url):
    engine = make_engine(database_url)
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text("INSERT INTO studies (study_uid, state, generation, "
                                "first_received_at, last_instance_at) VALUES ('1.2.3.4', "
                                "'complete', 1, '2026-01-01', '2026-01-01')"))
    engine.dispose()

    upgraded = Database.connect(database_url)
    try:
        with upgraded.session() as session:
            assert session.scalars(select(Study.study_uid)).all() == ["1.2.3.4"]
            head = ScriptDirectory.from_config(config).get_current_head()
            assert session.scalar(text("SELECT version_num FROM alembic_version")) == head
            assert head != "0001"
            assert session.scalar(select(func.count(Transfer.id))) == 0  # new tables exist
    finally:
        upgraded.dispose()


def test_one_job_per_study_generation(database):
    study_id = add_study(database)
    with database.session() as session:
        session.add(Job(study_id=study_id, study_generation=1))

    with pytest.raises(IntegrityError), database.session() as session:
        session.add(Job(study_id=study_id, study_generation=1))

    with database.session() as session:
        assert session.scalar(select(func.count(Job.id))) == 1


@pytest.fixture
def sqlite_database(tmp_path):
    db = Database.connect(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    yield db
    db.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_database):
    with sqlite_database.engine.connect() as connection:
        assert connection.scalar(text("PRAGMA journal_mode")) == "wal"


def test_sqlite_enforces_foreign_keys(sqlite_database):
    with sqlite_database.engine.connect() as connection:
        assert connection.scalar(text("PRAGMA foreign_keys")) == 1

    with pytest.raises(IntegrityError), sqlite_database.session() as session:
        session.add(Series(study_id=999, series_uid="1.2.3.4.5"))
