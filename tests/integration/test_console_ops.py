"""The console's Scheduler and Audit pages, read and used as a person would.

A real uvicorn on a free port (tests/integration/console.py), task runs and audit rows put
in the test's own SQLite database: the pages are checked against those rows, "Run now"
against the ``task_runs`` row it leaves, the CSV against the csv module's reading of it,
and the audit report against the file a browser downloads.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from node.scheduler import cron_trigger
from node.web.scheduler_page import described_owner, previous_fire
from storage.audit import AuditEventId, Outcome, record
from storage.models import AuditEvent, TaskRun, utcnow
from tests.integration.conftest import wait_until
from tests.integration.console import Browser, Console, text_of

STUDY = "1.2.826.0.1.3680043.10.9999.7"


def _row(html: str, row_id: str) -> str:
    """The text of table row ``row_id``, tags removed, spaces collapsed."""
    match = re.search(rf'<tr id="{row_id}">(.*?)</tr>', html, re.S)
    assert match, f"no row #{row_id} in the page"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split())


def _runs(console: Console, task: str) -> list[TaskRun]:
    with console.db.session() as session:
        return list(session.scalars(select(TaskRun).where(TaskRun.task == task)
                                    .order_by(TaskRun.id)))


def _add_events(console: Console) -> None:
    """Four events of a fortnight: two users, one study, one failure."""
    now = utcnow()
    with console.db.session() as session:
        for days, event_id, event_type, outcome, kwargs in (
                (14, AuditEventId.USER_AUTHENTICATION, "login", Outcome.SUCCESS,
                 {"user_name": "olga", "peer_address": "10.0.0.5"}),
                (3, AuditEventId.INSTANCES_TRANSFERRED, "instance-stored", Outcome.SUCCESS,
                 {"calling_ae_title": "MODALITY", "study_uid": STUDY}),
                (2, AuditEventId.USER_AUTHENTICATION, "login-failed", Outcome.MINOR_FAILURE,
                 {"user_name": "mallory", "peer_address": "10.0.0.66"}),
                (1, AuditEventId.APPLICATION_ACTIVITY, "study-requeued", Outcome.SUCCESS,
                 {"user_name": "olga", "study_uid": STUDY})):
            row = record(session, event_id, event_type, outcome,
                         f'=HYPERLINK("x") "{event_type}", with a comma', **kwargs)
            row.occurred_at = now - timedelta(days=days)


def test_scheduler_page_shows_each_task_its_next_run_and_the_last_runs(console: Console):
    console.add_user("vera", "viewer")
    now = utcnow()
    with console.db.session() as session:
        session.add_all([
            TaskRun(task="report", scheduled_for=now.replace(hour=6, minute=0, second=0,
                                                              microsecond=0),
                    owner="host-a:4242:scheduler", started_at=now - timedelta(minutes=5),
                    finished_at=now - timedelta(minutes=4), outcome="done",
                    message="report in var/reports/x; 0 performance alerts"),
            TaskRun(task="retrain", scheduled_for=now - timedelta(days=2),
                    owner="host-b:17:scheduler", started_at=now - timedelta(days=2),
                    finished_at=now - timedelta(days=2), outcome="failed",
                    message="RuntimeError: CUDA out of memory")])
    browser = Browser(console.base)
    browser.logged_in_as("vera", "viewer")

    page = browser.get("/console/scheduler")

    assert page.status == 200
    report = text_of(page.body, "task-list")
    assert "report Writes the audit report" in report
    for cron in ("0 2 * * 0", "0 6 * * *", "30 3 * * *"):
        assert cron in report
    assert "done" in report and "0 performance alerts" in report
    assert "scheduler on host-a (pid 4242)" in report
    assert "failed" in report and "CUDA out of memory" in report
    # The next report run is the next 06:00 UTC, with its time zone.
    upcoming = cron_trigger("0 6 * * *", "UTC").get_next_fire_time(None, datetime.now(UTC))
    assert f"{upcoming:%Y-%m-%d %H:%M:%S} UTC" in report
    history = text_of(page.body, "run-history")
    assert history.index("report") < history.index("retrain")  # newest first
    assert "Run now" not in page.body  # a viewer has no such button
    assert ">Audit</a>" not in page.body  # nor the audit trail in the menu


def test_a_viewer_may_not_run_a_task_and_an_operators_run_is_recorded(console: Console):
    console.add_user("vera", "viewer")
    console.add_user("olga", "operator")
    viewer, operator = Browser(console.base), Browser(console.base)
    viewer_csrf = viewer.logged_in_as("vera", "viewer")
    operator.logged_in_as("olga", "operator")

    refused = viewer.post("/console/scheduler/retention/run", {"csrf_token": viewer_csrf})
    csrf = operator.csrf("/console/scheduler")
    started = operator.post("/console/scheduler/retention/run", {"csrf_token": csrf})
    [run] = wait_until(lambda: [r for r in _runs(console, "retention")
                                if r.outcome != "running"])
    page = operator.get(started.location).body

    assert refused.status == 403 and "needs the operator role" in refused.body
    assert started.status == 303
    assert "retention started; see its last run below" in page
    assert (run.outcome, run.message) == ("skipped", "retention_days is 0: images are kept")
    assert run.owner.endswith(":console:olga")
    row = _row(page, "task-retention")
    assert "skipped" in row and "(asked for)" in row and "asked by olga" in row
    [requested] = console.audit("task-run-requested")
    assert (requested.event_id, requested.user_name, requested.peer_address) == (
        "110100", "olga", "127.0.0.1")
    assert requested.message == "retention run requested (console)"
    [finished] = wait_until(lambda: console.audit("requested-retention"))
    assert finished.user_name == "olga" and "skipped" in finished.message
    assert "asked by olga" in text_of(operator.get("/console/scheduler").body, "run-history")


def test_run_now_is_refused_while_the_task_is_running(console: Console):
    console.add_user("olga", "operator")
    with console.db.session() as session:
        session.add(TaskRun(task="report", scheduled_for=utcnow(),
                            owner="host-a:99:scheduler", started_at=utcnow()))
    operator = Browser(console.base)
    operator.logged_in_as("olga", "operator")
    page = operator.get("/console/scheduler").body
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    refused = operator.post("/console/scheduler/report/run", {"csrf_token": csrf})
    unknown = operator.post("/console/scheduler/backup/run", {"csrf_token": csrf})

    assert "running since" in _row(page, "task-report")
    assert 'action="/console/scheduler/report/run"' not in page  # no button while it runs
    assert refused.status == 409 and "scheduler on host-a (pid 99)" in refused.body
    assert unknown.status == 404
    assert len(_runs(console, "report")) == 1 and console.audit("task-run-requested") == []


def test_operator_runs_the_report_and_it_shows_among_the_reports(console: Console):
    console.add_user("olga", "operator")
    operator = Browser(console.base)
    csrf = operator.logged_in_as("olga", "operator")

    assert operator.post("/console/scheduler/report/run", {"csrf_token": csrf}).status == 303
    [run] = wait_until(lambda: [r for r in _runs(console, "report") if r.outcome != "running"])

    assert run.outcome == "done", run.message
    folder = re.search(r"report in \S+/(\S+);", run.message).group(1)
    assert f'href="/console/reports/{folder}/audit-report.html"' in \
        operator.get("/console/audit").body


def test_audit_page_filters_by_type_time_user_study_and_outcome(console: Console):
    console.add_user("vera", "viewer")
    console.add_user("olga", "operator")
    _add_events(console)
    viewer, operator = Browser(console.base), Browser(console.base)
    viewer.logged_in_as("vera", "viewer")
    operator.logged_in_as("olga", "operator")
    today = utcnow().date()

    def types(query: str) -> list[str]:
        page = operator.get(f"/console/audit?{query}")
        assert page.status == 200, page.body
        return re.findall(r'<tr id="event-\d+">\s*<td>[^<]*</td>\s*<td>([^<]+)<br>',
                          page.body)

    # Newest first; the logins of this test are today's, the events put in are older.
    assert types("")[-4:] == ["study-requeued", "login-failed", "instance-stored", "login"]
    assert types(f"event_type=login&to={today - timedelta(days=1)}") == ["login"]
    assert types(f"from={today - timedelta(days=4)}&to={today - timedelta(days=2)}") == \
        ["login-failed", "instance-stored"]
    assert types("user=OLG") == ["login", "study-requeued", "login"]  # any part, any case
    assert types(f"study_uid={STUDY}") == ["study-requeued", "instance-stored"]
    assert types("outcome=4") == ["login-failed"]
    assert types(f"user=olga&study_uid={STUDY}") == ["study-requeued"]
    assert operator.get("/console/audit?from=yesterday").status == 400
    page = operator.get("/console/audit?event_type=login-failed").body
    assert "1 events match" in text_of(page, "audit-count")
    assert '<option value="login-failed" selected>' in page  # the filter shown back
    assert viewer.get("/console/audit").status == 403
    assert viewer.get("/console/audit.csv").status == 403


def test_audit_page_goes_on_to_older_events(console: Console):
    console.add_user("olga", "operator")
    now = utcnow()
    with console.db.session() as session:
        for n in range(130):
            row = record(session, AuditEventId.APPLICATION_ACTIVITY, "probe", Outcome.SUCCESS,
                         f"probe {n:03d}")
            row.occurred_at = now - timedelta(days=1, minutes=n)
    operator = Browser(console.base)
    operator.logged_in_as("olga", "operator")

    first = operator.get("/console/audit?event_type=probe").body
    older = re.search(r'href="/console/audit\?([^"]+)" id="older"', first).group(1)
    second = operator.get("/console/audit?" + older.replace("&amp;", "&")).body

    shown = re.findall(r"probe (\d{3})", first)
    rest = re.findall(r"probe (\d{3})", second)
    assert shown == [f"{n:03d}" for n in range(100)]
    assert rest == [f"{n:03d}" for n in range(100, 130)]
    assert 'id="older"' not in second


def test_audit_csv_has_the_filtered_rows_quoted_and_is_audited(console: Console):
    console.add_user("olga", "operator")
    _add_events(console)
    operator = Browser(console.base)
    operator.logged_in_as("olga", "operator")

    answer = operator.get(f"/console/audit.csv?study_uid={STUDY}")

    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert re.match(r'attachment; filename="cxr-node-audit-\d{8}-\d{6}\.csv"',
                    answer.headers["content-disposition"])
    rows = list(csv.DictReader(io.StringIO(answer.body)))
    assert [r["event_type"] for r in rows] == ["study-requeued", "instance-stored"]
    assert {r["study_uid"] for r in rows} == {STUDY}
    assert rows[0]["user_name"] == "olga" and rows[1]["calling_ae_title"] == "MODALITY"
    # Commas and quotes survive; a formula is defused for spreadsheets.
    assert rows[0]["message"] == '\'=HYPERLINK("x") "study-requeued", with a comma'
    assert rows[0]["outcome_name"] == "success"
    [exported] = console.audit("audit-exported")
    assert (exported.event_id, exported.user_name) == ("110101", "olga")
    assert f"study_uid={STUDY}" in exported.message


def test_audit_csv_streams_more_rows_than_one_batch(console: Console):
    console.add_user("olga", "operator")
    with console.db.session() as session:
        session.add_all(AuditEvent(event_id="110100", event_type="bulk", outcome=0,
                                   message=f"row {n}", occurred_at=utcnow())
                        for n in range(2500))
    operator = Browser(console.base)
    operator.logged_in_as("olga", "operator")

    rows = list(csv.DictReader(io.StringIO(
        operator.get("/console/audit.csv?event_type=bulk").body)))

    assert len(rows) == 2500 and len({r["id"] for r in rows}) == 2500


def test_audit_report_is_written_for_the_period_and_downloaded(console: Console):
    console.add_user("olga", "operator")
    _add_events(console)
    operator = Browser(console.base)
    csrf = operator.logged_in_as("olga", "operator")
    today = utcnow().date()
    since = today - timedelta(days=10)

    made = operator.post("/console/audit/report", {"csrf_token": csrf, "from": str(since),
                                                   "to": str(today)})
    page = operator.get(made.location.split("#")[0]).body
    name = re.search(r"<strong>(console-[^<]+)</strong> \(new\)", page).group(1)
    report = operator.get(f"/console/reports/{name}/audit-report.html")
    zipped = operator.opener.open(f"{console.base}/console/reports/{name}.zip").read()

    assert made.status == 303
    assert f"audit report for {since} 00:00 to" in page
    assert report.status == 200 and report.headers["content-type"].startswith("text/html")
    assert f"{since}T00:00:00 to " in report.body  # the period, from the chosen day
    assert "default-src 'none'" in report.headers["content-security-policy"]
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert f"{name}/audit-report.html" in archive.namelist()
        assert f"{name}/audit-report.json" in archive.namelist()
    [audited] = console.audit("audit-report-generated")
    assert audited.user_name == "olga" and audited.outcome == 0
    assert f"{since:%Y-%m-%d} 00:00" in audited.message
    folder = console.accounts.settings.storage.data_dir / "reports" / name
    assert (folder / "audit-report.html").is_file()


def test_report_files_are_served_only_from_inside_a_report_folder(console: Console):
    console.add_user("olga", "operator")
    console.add_user("vera", "viewer")
    data = console.accounts.settings.storage.data_dir
    folder = data / "reports" / "2026-11-27-060000"
    folder.mkdir(parents=True)
    (folder / "audit-report.html").write_text("<p>the report</p>")
    (folder / "prevalence.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "notes.txt").write_text("not a report file")
    (data / "secret.html").write_text("<p>outside</p>")
    (folder / "linked.html").symlink_to(data / "secret.html")
    (data / "reports" / "escape").symlink_to(data)
    operator, viewer = Browser(console.base), Browser(console.base)
    operator.logged_in_as("olga", "operator")
    viewer.logged_in_as("vera", "viewer")
    base = "/console/reports/2026-11-27-060000"

    assert operator.get(f"{base}/audit-report.html").body == "<p>the report</p>"
    chart = operator.opener.open(f"{console.base}{base}/prevalence.png")
    assert chart.headers["content-type"] == "image/png"  # what the report's <img> asks for
    for attempt in (f"{base}/..%2F..%2Fsecret.html", f"{base}/%2e%2e",
                    "/console/reports/..%2F..%2Fdata/secret.html", f"{base}/..",
                    "/console/reports/escape/secret.html", f"{base}/linked.html",
                    f"{base}/notes.txt", "/console/reports/../secret.html",
                    "/console/reports/escape.zip", "/console/reports/..%2F.zip"):
        answer = operator.get(attempt)
        assert answer.status == 404, (attempt, answer.status)
        assert "outside" not in answer.body
    assert viewer.get(f"{base}/audit-report.html").status == 403


def test_previous_fire_of_fast_and_slow_schedules():
    now = datetime(2026, 11, 27, 12, 0, 1, tzinfo=UTC)  # a Friday

    assert previous_fire(cron_trigger("*/2 * * * * *", "UTC"), now) == now - timedelta(
        seconds=1)
    assert previous_fire(cron_trigger("0 2 * * 0", "UTC"), now) == datetime(
        2026, 11, 22, 2, 0, tzinfo=UTC)
    assert described_owner("host:12:scheduler") == "scheduler on host (pid 12)"
    assert described_owner("host:12:console:olga") == "console on host (pid 12), asked by olga"
    assert described_owner("something else") == "something else"
