"""The console's Labels page, used as an admin uses it (a real uvicorn, urllib multipart).

Images are rows in the test's own SQLite database, keyed by SOP Instance UID (the CSV
format's key); an upload goes through the same import as ``cxr-node labels import``. What
the page says is checked against the label rows, the audit trail and the upload folder.
"""

from __future__ import annotations

import html

import pytest
from sqlalchemy import func, select

from storage.db import Database
from storage.models import AuditEvent, Instance, Label, LabelBatch, Series, Study
from tests.integration.console import Browser, Console, start_console, text_of

ROOT = "1.2.826.0.1.3680043.10.9999"
MAX_UPLOAD = 16 * 1024
HEADER = "sop_instance_uid,label,x1,y1,x2,y2,reader\n"
GOOD = (HEADER
        + f"{ROOT}.1.1.1,Nodule,10,20,110,140,Dr A\n"
        + f"{ROOT}.1.1.1,Pleural effusion,200,300,400,500,Dr A\n"
        + f"{ROOT}.2.1.1,,,,,,Dr A\n"  # a normal image
        + f"{ROOT}.9.1.1,Mass,1,2,3,4,Dr A\n").encode()  # an image not received yet
BAD = (HEADER
       + f"{ROOT}.1.1.1,Nodule,10,20,110,140,Dr A\n"
       + f"{ROOT}.1.1.1,Nodule,110,20,10,140,Dr A\n"  # line 3: x2 < x1
       + f"{ROOT}.2.1.1,Pneumothorax,1,2,3,4,Dr A\n"
       + f"{ROOT}.2.1.1,Fracture,1,2,3,4,Dr A\n").encode()  # line 5: not in the vocabulary


@pytest.fixture
def console(tmp_path):
    running = start_console(tmp_path, max_upload_bytes=MAX_UPLOAD)
    for n in (1, 2):
        _add_study(running.db, n)
    running.add_user("ada", "admin")
    yield running
    running.server.stop()
    running.db.dispose()


def _add_study(db: Database, n: int) -> None:
    uid = f"{ROOT}.{n}"
    with db.session() as session:
        study = Study(study_uid=uid, patient_id=f"P{n}")
        series = Series(study=study, series_uid=f"{uid}.1", modality="DX")
        session.add_all([study, Instance(
            series=series, sop_instance_uid=f"{uid}.1.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{n}", size_bytes=1,
            sha256="0" * 64)])


def _imported(console: Console) -> tuple[int, int, int]:
    """Labels, label batches and labels-imported audit rows in the database."""
    with console.db.session() as session:
        return (session.scalar(select(func.count(Label.id))),
                session.scalar(select(func.count(LabelBatch.id))),
                session.scalar(select(func.count(AuditEvent.id)).where(
                    AuditEvent.event_type == "labels-imported")))


def _left_in_incoming(console: Console) -> list[str]:
    incoming = console.accounts.settings.storage.data_dir / "incoming"
    return sorted(p.name for p in incoming.iterdir()) if incoming.exists() else []


def test_admin_imports_a_csv_and_sees_its_batches_and_who_imported_them(console: Console):
    admin = Browser(console.base)
    admin.logged_in_as("ada", "admin")
    csrf = admin.csrf("/console/labels")

    answer = admin.upload("/console/labels/import", {"csrf_token": csrf, "format": "csv"},
                          {"file": ("site-labels.csv", GOOD)})
    page = admin.get(answer.location)

    assert answer.status == 303 and answer.location.startswith("/console/labels?notice=")
    notice = text_of(page.body, "notice")
    assert notice.startswith("imported 3 labels from site-labels.csv as batches 1-2 "
                             "(2 studies)")
    assert f"1 image keys match no stored image (such as {ROOT}.9.1.1)" in notice
    with console.db.session() as session:
        labels = session.execute(select(Label.label, Label.normal, Label.x1, Label.reader,
                                        LabelBatch.labeller, LabelBatch.source)
                                 .join(LabelBatch).order_by(Label.id)).all()
    assert [tuple(row) for row in labels] == [
        ("Nodule", False, 10.0, "Dr A", "site-labels.csv", "csv"),
        ("Pleural effusion", False, 200.0, "Dr A", "site-labels.csv", "csv"),
        (None, True, None, "Dr A", "site-labels.csv", "csv")]
    [event] = console.audit("labels-imported")
    assert (event.user_name, event.peer_address) == ("ada", "127.0.0.1")
    assert event.message.startswith("csv file site-labels.csv (sha256 ")
    assert "3 labels on 2 studies" in event.message
    rows = text_of(page.body, "batches")
    assert rows.startswith("batch study source from imported by when (UTC) labels state")
    assert f"2 {ROOT}.2 csv site-labels.csv ada" in rows and "1 on 1 image current" in rows
    assert f"1 {ROOT}.1 csv site-labels.csv ada" in rows and "2 on 1 image current" in rows
    assert _left_in_incoming(console) == []  # the copy the import read is gone

    detail = admin.get("/console/labels/1")
    assert detail.status == 200
    assert text_of(detail.body, "imported-by") == "ada"
    assert "Nodule SCT:27925004 Nodule 10.0, 20.0, 110.0, 140.0 Dr A" in text_of(
        detail.body, "labels")
    assert admin.get("/console/labels/99").status == 404


def test_a_viewer_sees_the_batches_without_the_import_form(console: Console):
    admin = Browser(console.base)
    admin.logged_in_as("ada", "admin")
    admin.upload("/console/labels/import",
                 {"csrf_token": admin.csrf("/console/labels"), "format": "csv"},
                 {"file": ("site-labels.csv", GOOD)})
    console.add_user("vera", "viewer")
    viewer = Browser(console.base)
    viewer.logged_in_as("vera", "viewer")

    page = viewer.get("/console/labels")

    assert page.status == 200
    assert "site-labels.csv" in text_of(page.body, "batches")
    assert 'action="/console/labels/import"' not in page.body
    assert "An admin imports labels files here" in page.body
    assert '<a href="/console/labels" aria-current="page">Labels</a>' in page.body


def test_a_file_with_two_bad_rows_imports_nothing_and_names_both_lines(console: Console):
    admin = Browser(console.base)
    admin.logged_in_as("ada", "admin")
    csrf = admin.csrf("/console/labels")

    refused = admin.upload("/console/labels/import", {"csrf_token": csrf, "format": "csv"},
                           {"file": ("bad.csv", BAD)})

    assert refused.status == 400
    assert text_of(refused.body, "refusal").startswith("bad.csv: 2 bad rows, nothing imported")
    problems = html.unescape(text_of(refused.body, "problems"))
    assert "line 3 x2 must be > x1, got x1 110, x2 10" in problems
    assert 'line 5 label "Fracture" is neither a vocabulary label' in problems
    assert "line 2" not in problems and "line 4" not in problems
    assert '<option value="csv" selected>' in refused.body  # the form keeps the format
    assert _imported(console) == (0, 0, 0)
    assert _left_in_incoming(console) == []


def test_a_file_that_is_not_utf8_text_is_one_line_not_a_server_error(console: Console):
    admin = Browser(console.base)
    admin.logged_in_as("ada", "admin")
    csrf = admin.csrf("/console/labels")

    refused = admin.upload("/console/labels/import", {"csrf_token": csrf, "format": "nih"},
                           {"file": ("chest.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")})
    no_file = admin.upload("/console/labels/import", {"csrf_token": csrf, "format": "csv"},
                           {})
    no_format = admin.upload("/console/labels/import", {"csrf_token": csrf, "format": "xls"},
                             {"file": ("site-labels.csv", GOOD)})

    assert refused.status == 400
    assert "line 1 not UTF-8 text" in text_of(refused.body, "problems")
    assert no_file.status == 400 and "Choose a file" in text_of(no_file.body, "problem")
    assert no_format.status == 400
    assert "Choose the file's format" in html.unescape(text_of(no_format.body, "problem"))
    assert _imported(console) == (0, 0, 0)


def test_only_an_admin_with_the_forms_token_may_import(console: Console):
    console.add_user("vera", "viewer")
    console.add_user("olga", "operator")
    viewer, operator, admin, stranger = (Browser(console.base) for _ in range(4))
    viewer_csrf = viewer.logged_in_as("vera", "viewer")
    operator_csrf = operator.logged_in_as("olga", "operator")
    admin.logged_in_as("ada", "admin")
    file = {"file": ("site-labels.csv", GOOD)}

    as_viewer = viewer.upload("/console/labels/import",
                              {"csrf_token": viewer_csrf, "format": "csv"}, file)
    as_operator = operator.upload("/console/labels/import",
                                  {"csrf_token": operator_csrf, "format": "csv"}, file)
    no_token = admin.upload("/console/labels/import", {"format": "csv"}, file)
    wrong_token = admin.upload("/console/labels/import",
                               {"csrf_token": operator_csrf, "format": "csv"}, file)
    not_logged_in = stranger.upload("/console/labels/import", {"format": "csv"}, file)
    operator_page = operator.get("/console/labels")

    assert as_viewer.status == 403 and "needs the admin role" in as_viewer.body
    assert as_operator.status == 403 and "needs the admin role" in as_operator.body
    assert no_token.status == 403 and "security token" in no_token.body
    assert wrong_token.status == 403
    assert not_logged_in.status == 403
    assert 'action="/console/labels/import"' not in operator_page.body
    assert _imported(console) == (0, 0, 0)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_past_the_limit_is_refused_and_leaves_nothing(console: Console, chunked):
    admin = Browser(console.base)
    admin.logged_in_as("ada", "admin")
    csrf = admin.csrf("/console/labels")
    rows = "".join(f"{ROOT}.1.1.1,Nodule,10,20,110,140,Dr {i}\n" for i in range(600))
    big = (HEADER + rows).encode()
    assert len(big) > MAX_UPLOAD

    refused = admin.upload("/console/labels/import", {"csrf_token": csrf, "format": "csv"},
                           {"file": ("big.csv", big)}, chunked=chunked)
    after = admin.upload("/console/labels/import", {"csrf_token": csrf, "format": "csv"},
                         {"file": ("site-labels.csv", GOOD)}, chunked=chunked)

    assert refused.status == 413
    assert "larger than 16 KiB (web.max_upload_bytes); nothing was imported" in refused.body
    assert after.status == 303  # the limit refused that one upload, nothing else
    assert _imported(console) == (3, 2, 1)
    assert _left_in_incoming(console) == []
