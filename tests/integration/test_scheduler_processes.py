"""Two `cxr-node scheduler` processes on PostgreSQL: each occurrence runs exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml
from sqlalchemy import inspect, select
from sqlalchemy.exc import SQLAlchemyError

from storage.db import Database
from storage.models import TaskRun
from tests.peers import CXR_NODE, REPO

# Two processes import torch and run on a 2 s grid: a limit of its own.
pytestmark = pytest.mark.timeout(300)


def _retrain_occurrences(url: str) -> int:
    db = Database.connect(url, upgrade=False)
    try:
        with db.session() as session:
            return len(session.scalars(select(TaskRun).where(TaskRun.task == "retrain")).all())
    except SQLAlchemyError:  # the schedulers have not created the tables yet
        return 0
    finally:
        db.dispose()


def test_two_schedulers_on_postgresql_never_run_an_occurrence_twice(tmp_path, postgres_url):
    config = tmp_path / "cxr-node.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"data_dir": str(tmp_path / "data"), "database_url": postgres_url},
        # A compressed schedule: retraining every 2 s (skipped: too few new labels).
        "scheduler": {"retrain_cron": "*/2 * * * * *", "misfire_grace_seconds": 5},
        "training": {"min_new_labelled_studies": 1000}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    logs = [open(tmp_path / f"scheduler{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    schedulers = [subprocess.Popen([*CXR_NODE, "--config", str(config), "scheduler"], cwd=REPO,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
                  for log in logs]
    # Both processes import torch before they schedule anything: on a busy machine that
    # alone can take most of a fixed wait, so wait for the occurrences themselves.
    # Then until both fired one occurrence (one process started a little later).
    def collided() -> bool:
        return any("is run by another scheduler" in (tmp_path / f"scheduler{i}.log").read_text()
                   for i in range(2))

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (_retrain_occurrences(postgres_url) < 4
                                           or not collided()):
        time.sleep(1)
    for process in schedulers:
        process.send_signal(signal.SIGTERM)
    for process, log in zip(schedulers, logs, strict=True):
        assert process.wait(timeout=30) == 0
        log.close()

    db = Database.connect(postgres_url, upgrade=False)
    with db.session() as session:
        runs = session.scalars(select(TaskRun).where(TaskRun.task == "retrain")
                               .order_by(TaskRun.scheduled_for)).all()
    # Each process keeps its schedule in memory (APScheduler 3 does not support a job
    # store shared between processes): no APScheduler job table in the shared database.
    tables = inspect(db.engine).get_table_names()
    db.dispose()
    assert "task_runs" in tables and "apscheduler_jobs" not in tables
    occurrences = [run.scheduled_for for run in runs]
    assert len(occurrences) >= 3
    assert len(set(occurrences)) == len(occurrences)  # never twice
    pairs = zip(occurrences, occurrences[1:], strict=False)
    gaps = {(b - a).total_seconds() for a, b in pairs}
    # On the 2 s grid; a busy machine may skip an occurrence still running (max_instances 1).
    assert all(gap > 0 and gap % 2 == 0 for gap in gaps)
    assert {run.outcome for run in runs} == {"skipped"}
    assert "0 newly labelled studies; 1000 needed" in {run.message for run in runs}
    both_logs = "".join((tmp_path / f"scheduler{i}.log").read_text() for i in range(2))
    assert "is run by another scheduler" in both_logs  # the other process fired it too

    listing = subprocess.run([*CXR_NODE, "--config", str(config), "scheduler", "jobs"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "retrain    */2 * * * * *" in listing.stdout
    assert "skipped" in listing.stdout
