"""The scheduler: each occurrence runs once, however many schedulers fire it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, select

from config.settings import Settings
from node.scheduler import (
    TaskRunner,
    _latest_occurrence,
    build_scheduler,
    cron_trigger,
    missed_occurrences,
)
from storage.models import Instance, Series, Study, TaskRun, utcnow


def settings_for(tmp_path, database_url, **scheduler) -> Settings:
    return Settings.model_validate({
        "storage": {"data_dir": str(tmp_path / "data"), "database_url": database_url},
        "scheduler": scheduler, "training": {"min_new_labelled_studies": 5}})


def test_latest_occurrence_of_a_weekly_schedule():
    trigger = cron_trigger("0 2 * * 0", "UTC")  # Sundays 02:00
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # a Friday

    assert _latest_occurrence(trigger, now, timedelta(days=8)) == \
        datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


def test_an_occurrence_runs_once_however_many_schedulers_fire_it(tmp_path, database,
                                                                database_url):
    settings = settings_for(tmp_path, database_url)
    first, second = TaskRunner(settings, database), TaskRunner(settings, database)
    second.owner = "another-host:1:scheduler"
    now = datetime(2026, 11, 22, 2, 0, 30, tzinfo=UTC)

    run = first.run("retrain", now)
    assert second.run("retrain", now) is None

    assert run.outcome == "skipped"
    assert run.message == "0 newly labelled studies; 5 needed"
    with database.session() as session:
        runs = session.scalars(select(TaskRun)).all()
    assert [(r.task, r.scheduled_for, r.owner) for r in runs] == \
        [("retrain", datetime(2026, 11, 22, 2, 0), first.owner)]
    later = first.run("retrain", now + timedelta(days=7))
    assert later is not None  # the next week's occurrence is a new run


def test_retention_deletes_old_images_in_no_snapshot_and_keeps_the_rows(tmp_path, database,
                                                                       database_url):
    settings = settings_for(tmp_path, database_url, retention_days=30)
    runner = TaskRunner(settings, database)
    paths = {}
    with database.session() as session:
        study = Study(study_uid="1.2.3")
        series = Series(study=study, series_uid="1.2.3.1")
        session.add_all([study, series])
        for name, age in (("old", 40), ("new", 5)):
            path = f"dicom/{name}.dcm"
            (runner.store.data_dir / path).write_bytes(b"x")
            paths[name] = runner.store.data_dir / path
            session.add(Instance(series=series, sop_instance_uid=f"1.2.3.1.{age}",
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                                 transfer_syntax_uid="1.2.840.10008.1.2.1", path=path,
                                 size_bytes=1, sha256="0" * 64,
                                 received_at=utcnow() - timedelta(days=age)))

    run = runner.run("retention")

    assert (run.outcome, run.message) == ("done", "1 images older than 30 days deleted")
    assert not paths["old"].exists() and paths["new"].exists()
    with database.session() as session:
        purged = dict(session.execute(select(Instance.sop_instance_uid,
                                             Instance.purged_at)).all())
    assert purged["1.2.3.1.40"] is not None and purged["1.2.3.1.5"] is None


def test_report_task_writes_the_previous_days_report(tmp_path, database, database_url):
    settings = settings_for(tmp_path, database_url, report_cron="0 6 * * *")
    now = datetime(2026, 11, 27, 6, 0, 5, tzinfo=UTC)

    run = TaskRunner(settings, database).run("report", now)

    assert run.outcome == "done", run.message
    folder = tmp_path / "data" / "reports" / "2026-11-27-060000"
    assert run.message == f"report in {folder}; 0 performance alerts"
    report = (folder / "audit-report.json").read_text()
    assert '"since": "2026-11-26T06:00:00"' in report
    assert (folder / "audit-report.html").exists()


def test_the_schedule_lives_in_memory_and_a_missed_occurrence_runs_once_at_start(
        tmp_path, database, database_url):
    # Retention at 03:30 daily; the scheduler starts at 03:40, within the hour's grace.
    settings = settings_for(tmp_path, database_url, retention_cron="30 3 * * *")
    start = datetime(2026, 11, 25, 3, 40, tzinfo=UTC)  # a Wednesday: no retrain, no report

    scheduler = build_scheduler(settings, database, now=start)
    assert sorted(job.id for job in scheduler.get_jobs()) == \
        ["report", "retention", "retention-missed", "retrain"]
    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not scheduler_runs(database):
            time.sleep(0.1)
    finally:
        scheduler.shutdown(wait=True)

    assert [(r.task, r.scheduled_for, r.outcome) for r in scheduler_runs(database)] == \
        [("retention", datetime(2026, 11, 25, 3, 30), "skipped")]
    # Started again (or by a second process): the occurrence has its run already.
    assert missed_occurrences(TaskRunner(settings, database), start) == []
    # Past the grace, nothing is caught up.
    assert missed_occurrences(TaskRunner(settings, database),
                              datetime(2026, 11, 26, 4, 31, tzinfo=UTC)) == []
    # APScheduler's own job table is never made: the database holds only our task runs.
    assert "apscheduler_jobs" not in inspect(database.engine).get_table_names()


def scheduler_runs(database) -> list[TaskRun]:
    with database.session() as session:
        return list(session.scalars(select(TaskRun).order_by(TaskRun.id)))
