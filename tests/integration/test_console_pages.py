"""The console's overview, transfers and configuration pages, read as a person reads them.

A real uvicorn on a free port, urllib with a cookie jar (the helpers of
test_console_accounts), and rows put in the test's own SQLite database: what the page
shows is checked against what was put there, and what a button did against the database
and the audit trail.
"""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from config.settings import Settings
from node.metrics import NodeMetrics
from node.web.app import build_app
from node.web.auth import Accounts
from node.web.health import Readiness
from node.web.server import WebServer
from storage.accounts import Passwords
from storage.db import Database
from storage.models import (
    ImageAnalysis,
    Instance,
    Job,
    JobState,
    ResultKind,
    ResultObject,
    Series,
    Study,
    StudyState,
    Transfer,
    TransferState,
    utcnow,
)
from tests.integration.console import Browser, Console, text_of
from tests.ports import free_port

METRICS_TOKEN = "metrics-token-0123456789abcdef"
DB_PASSWORD = "s3cret-db-pass"
ARCHIVE_TOKEN = "ya29.archive-token-0123"
ARCHIVE_PASSWORD = "archive-pass-4567"



def _add_study(db: Database, n: int, *, hours_ago: float = 0.0, images: int = 2,
               job: JobState | None = JobState.DONE,
               transfers: tuple[tuple[str, TransferState], ...] = ()) -> list[int]:
    """A study with ``images`` instances, a job, an SR and its transfers; the transfer ids."""
    at = utcnow() - timedelta(hours=hours_ago)
    with db.session() as session:
        study = Study(study_uid=f"1.2.826.0.1.3680043.10.9999.{n}", patient_id=f"P{n}",
                      state=StudyState.COMPLETE, first_received_at=at, last_instance_at=at,
                      completed_at=at)
        series = Series(study=study, series_uid=f"{study.study_uid}.1", modality="DX")
        instances = [Instance(series=series, sop_instance_uid=f"{series.series_uid}.{i}",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                              transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{n}/{i}",
                              size_bytes=1, sha256="0" * 64, received_at=at)
                     for i in range(images)]
        session.add_all(instances)
        session.add(study)
        session.flush()
        ids = []
        if job is not None:
            row = Job(study_id=study.id, study_generation=1, state=job, created_at=at,
                      finished_at=None if job == JobState.QUEUED else at,
                      error="model crashed: out of memory" if job == JobState.FAILED else None)
            session.add(row)
            session.flush()
            if job == JobState.DONE:  # the gate let every image through to the model
                session.add_all(ImageAnalysis(job_id=row.id, instance_id=instance.id,
                                              analysed=True) for instance in instances)
            result = ResultObject(job_id=row.id, study_id=study.id, kind=ResultKind.SR,
                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                                  sop_instance_uid=f"{study.study_uid}.99",
                                  series_instance_uid=f"{study.study_uid}.98", path="r")
            session.add(result)
            for destination, state in transfers:
                transfer = Transfer(
                    result=result, destination=destination, state=state, attempts=3,
                    queued_at=at, sent_at=at + timedelta(seconds=4)
                    if state == TransferState.SENT else None,
                    last_attempt_at=at + timedelta(seconds=4),
                    last_error=None if state == TransferState.SENT
                    else f"association rejected by {destination}: 0x0001 <b>busy</b>")
                session.add(transfer)
                session.flush()
                ids.append(transfer.id)
    return ids


def test_overview_shows_the_sites_figures(console: Console):
    console.add_user("vera", "viewer")
    _add_study(console.db, 1, transfers=(("pacs", TransferState.SENT),))
    _add_study(console.db, 2, images=3, transfers=(("pacs", TransferState.DEAD),
                                                   ("viewer", TransferState.PENDING)))
    _add_study(console.db, 3, job=JobState.QUEUED)
    _add_study(console.db, 4, job=JobState.FAILED)
    _add_study(console.db, 5, hours_ago=30)  # yesterday and more: in no figure of today
    browser = Browser(console.base)
    browser.logged_in_as("vera", "viewer")

    page = browser.get("/console").body

    # A test process with no listener and no worker says so rather than showing 0.
    assert text_of(page, "associations") == "not this process (no DICOM listener here)"
    assert text_of(page, "device").startswith("not this process")
    assert text_of(page, "received") == "4 studies, 9 images"
    assert text_of(page, "analysed") == "2 studies, 1 failed"
    assert text_of(page, "sent") == "1 result objects"
    assert text_of(page, "queue").startswith("1 waiting, oldest job ")
    assert text_of(page, "transfers") == "1 pending, 1 dead letters"
    assert text_of(page, "model") == "none registered (the bundled model)"
    assert re.match(r"[\d.]+ GiB free, floor 2\.0 GiB", text_of(page, "disk"))
    assert "p50 4.0 s, p95 4.0 s (1 studies)" in text_of(page, "latency")
    errors = text_of(page, "errors")
    assert "model crashed: out of memory" in errors
    assert "association rejected by pacs: 0x0001 &lt;b&gt;busy&lt;/b&gt;" in errors  # escaped
    # The chart: 24 bars, the current hour's holding the four studies of the last hour.
    chart = re.search(r"<svg.*?</svg>", page, re.S).group(0)
    bars = re.findall(r"<rect [^>]*><title>(\d\d):00 UTC: (\d+) studies</title>", chart)
    assert len(bars) == 24 and bars[-1][1] == "4" and sum(int(n) for _, n in bars) == 4
    assert "<script" not in page
    assert "Retry every dead letter" not in page  # a viewer has no such button


def test_viewer_may_not_retry_and_operator_retries_one_dead_letter(console: Console):
    console.add_user("vera", "viewer")
    console.add_user("olga", "operator")
    first, second = _add_study(console.db, 1, transfers=(("pacs", TransferState.DEAD),
                                                         ("viewer", TransferState.DEAD)))
    viewer, operator = Browser(console.base), Browser(console.base)
    viewer_csrf = viewer.logged_in_as("vera", "viewer")
    operator.logged_in_as("olga", "operator")

    listed = viewer.get("/console/transfers")
    refused = viewer.post("/console/transfers/retry", {"csrf_token": viewer_csrf,
                                                       "one": str(first)})
    page = operator.get("/console/transfers").body
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    nothing_chosen = operator.post("/console/transfers/retry", {"csrf_token": csrf})
    retried = operator.post("/console/transfers/retry", {"csrf_token": csrf,
                                                         "one": str(first)})

    assert listed.status == 200
    row = text_of(listed.body, "transfer-list")
    assert "pacs" in row and "association rejected by viewer" in row
    assert 'name="one"' not in listed.body  # a viewer sees no retry buttons
    assert f'name="one" value="{first}"' in page
    assert refused.status == 403 and "needs the operator role" in refused.body
    assert nothing_chosen.status == 400  # an empty choice is not "all"
    assert retried.status == 303
    assert retried.location == "/console/transfers?notice=queued+1+dead+letters+again"
    with console.db.session() as session:
        states = dict(session.execute(select(Transfer.id, Transfer.state)).all())
    assert states == {first: TransferState.PENDING, second: TransferState.DEAD}
    [audited] = console.audit("transfers-requeued")
    assert (audited.event_id, audited.user_name, audited.peer_address) == (
        "110100", "olga", "127.0.0.1")
    assert audited.message == f"1 dead letters queued again (ids {first}; console)"


def test_operator_retries_a_selection_and_then_all(console: Console):
    console.add_user("olga", "operator")
    ids = _add_study(console.db, 1, transfers=tuple(
        (name, TransferState.DEAD) for name in ("a", "b", "c", "d")))
    operator = Browser(console.base)
    operator.logged_in_as("olga", "operator")
    csrf = operator.csrf("/console/transfers")

    selected = operator.post("/console/transfers/retry", [
        ("csrf_token", csrf), ("ids", str(ids[0])), ("ids", str(ids[2]))])
    with console.db.session() as session:
        after_selection = dict(session.execute(select(Transfer.id, Transfer.state)).all())
    every = operator.post("/console/transfers/retry", {"csrf_token": csrf, "scope": "all",
                                                       "ids": str(ids[0])})
    with console.db.session() as session:
        after_all = set(session.scalars(select(Transfer.state)))

    assert selected.status == 303
    assert [after_selection[i] for i in ids] == [TransferState.PENDING, TransferState.DEAD,
                                                 TransferState.PENDING, TransferState.DEAD]
    assert every.status == 303 and "queued+2+dead" in every.location
    assert after_all == {TransferState.PENDING}
    assert [row.user_name for row in console.audit("transfers-requeued")] == ["olga", "olga"]


def test_configuration_page_masks_tokens_and_passwords(tmp_path):
    settings = Settings.model_validate({
        "storage": {"data_dir": str(tmp_path / "data"),
                    "database_url": f"postgresql+psycopg://cxr:{DB_PASSWORD}@db.example/cxr"},
        "web": {"bind_address": "127.0.0.1", "port": free_port(),
                "metrics_token": METRICS_TOKEN},
        "destinations": [
            {"name": "CLOUD", "kind": "dicomweb", "url": "https://dicom.example/v1/dicomWeb",
             "token": ARCHIVE_TOKEN},
            {"name": "ARCHIVE", "kind": "dicomweb", "url": "https://archive.example/dicom-web",
             "username": "cxr-node", "password": ARCHIVE_PASSWORD}]})
    # The page shows the settings; the app's own database is a SQLite file of the test.
    db = Database.connect(f"sqlite:///{tmp_path / 'console.db'}")
    from argon2 import PasswordHasher
    accounts_ = Accounts(settings, db, Passwords(PasswordHasher(memory_cost=8192)))
    server = WebServer(build_app(settings, Readiness(), NodeMetrics(), "web", accounts_),
                       settings.web, settings.web.port, "web.port")
    server.start()
    try:
        running = Console(server, db, accounts_)
        running.add_user("vera", "viewer")
        browser = Browser(running.base)
        browser.logged_in_as("vera", "viewer")
        page = browser.get("/console/config")
    finally:
        server.stop()
        db.dispose()

    assert page.status == 200
    rows = dict(re.findall(r"<tr><td><code>([^<]+)</code></td><td>([^<]*)</td></tr>",
                           page.body))
    assert rows["web.metrics_token"] == "(set, hidden)"
    assert rows["storage.database_url"] == "postgresql+psycopg://cxr:***@db.example/cxr"
    assert rows["dicom.ae_title"] == "CXRNODE" and rows["web.port"] == str(settings.web.port)
    assert rows["destinations[0].token"] == "(set, hidden)"
    assert rows["destinations[1].password"] == "(set, hidden)"
    assert rows["destinations[1].username"] == "cxr-node"
    assert rows["destinations[1].url"] == "https://archive.example/dicom-web"
    assert rows["destinations[1].token"] == "-"  # unset is shown as unset, not as hidden
    for secret in (METRICS_TOKEN, DB_PASSWORD, ARCHIVE_TOKEN, ARCHIVE_PASSWORD):
        assert secret not in page.body
