"""The first admin as a person makes one: the setup link from a real node's log, opened in
Debian's Chromium (Playwright), then a login, the overview of a node that has received a
study from dcmtk's storescu and analysed it, that study found on the Studies page and
opened with its findings and the preview of the Secondary Capture the node made, its
results dead letters (the PACS is down) retried from the Transfers page, and the
configuration page. The screenshots are kept in ``var/test-output/console/``.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select

from model.phantom import synthesize_case
from storage.models import Transfer, TransferState
from tests.conftest import unavailable
from tests.integration import ohif
from tests.integration.conftest import audit_events, query, wait_until
from tests.peers import REPO, free_port, storescu

SCREENSHOTS = REPO / "var" / "test-output" / "console"
PASSWORD = "correct horse battery"


def test_setup_link_login_and_console_in_a_browser(start_node, tmp_path):
    missing = ohif.browser_missing()
    if missing:
        unavailable(missing)
    pacs_down = free_port()  # nothing listens there: every send fails, then is dead
    node = start_node(worker={"run_in_serve": True, "device": "cpu"},
                      destinations=[{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1",
                                     "port": pacs_down}],
                      sending={"first_retry_delay_seconds": 0.2, "max_retry_delay_seconds": 0.5,
                               "max_age_seconds": 1.0, "poll_interval_seconds": 0.1})
    link = wait_until(lambda: re.search(r"create the first admin at (\S+/setup/\S+)",
                                        node.log())).group(1)
    case = synthesize_case(3, 1, size_range=(256, 256))
    sent = tmp_path / "study.dcm"
    case.dataset.save_as(sent, enforce_file_format=True)
    assert storescu(node.port, [sent]).returncode == 0
    wait_until(lambda: query(node, select(func.count(Transfer.id)).where(  # SR, GSPS, SC
        Transfer.state == TransferState.DEAD)) == [(3,)], timeout=90)

    with ohif.chromium_page(SCREENSHOTS) as shots:
        page = shots.page
        page.goto(link)
        page.get_by_label("Name").fill("root-admin")
        page.get_by_label("Password (at least 12 characters)").fill(PASSWORD)
        page.get_by_label("The password again").fill(PASSWORD)
        setup = shots.shot("1-setup")
        page.get_by_role("button", name="Create the admin").click()
        page.wait_for_url(re.compile(r"/login\?created=1$"))
        created = page.get_by_text("The admin account was created").is_visible()
        page.get_by_label("Name").fill("root-admin")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/console$"))
        who = page.locator("#who").inner_text()
        accounts_table = page.locator("#accounts").inner_text()
        associations = page.locator("#associations").inner_text()
        received = page.locator("#received").inner_text()
        bars = page.locator("svg.chart rect").count()
        console = shots.shot("2-console-overview")
        page.get_by_role("link", name="Studies").click()
        page.wait_for_url(re.compile(r"/console/studies$"))
        page.get_by_label("Patient ID").fill(case.patient_id)
        page.get_by_role("button", name="Search").click()
        listed = page.locator("#study-list tbody tr").inner_text()
        page.get_by_role("link", name=case.patient_id).click()
        page.wait_for_url(re.compile(r"/console/studies/2\.25\.\d+$"))
        instances = page.locator("#instances").inner_text()
        preview = page.locator("#previews img").first
        preview.scroll_into_view_if_needed()
        preview_width = page.wait_for_function(
            "img => img.complete && img.naturalWidth", arg=preview.element_handle()).json_value()
        study = shots.shot("4-console-study")
        page.get_by_role("link", name="Transfers").click()
        page.wait_for_url(re.compile(r"/console/transfers$"))
        counts = page.locator("#counts").inner_text()
        shots.shot("5-console-transfers")
        page.get_by_role("button", name="Retry every dead letter (3)").click()
        page.wait_for_url(re.compile(r"/console/transfers\?notice="))
        retried = page.locator("p.notice").inner_text()
        page.get_by_role("link", name="Configuration").click()
        page.wait_for_url(re.compile(r"/console/config$"))
        settings_shown = page.locator("#settings").inner_text()
        config = shots.shot("3-console-config")
        cookies = {c["name"]: c for c in page.context.cookies()}
        page.goto(link)  # the link again: used
        used = page.locator("h2").inner_text()
        print(f"screenshots: {setup} {console} {study} {config}")

    assert created
    assert who == "Logged in as root-admin, role admin."
    assert "root-admin" in accounts_table and "admin" in accounts_table
    assert associations == "0"  # serve runs the listener: its own count, none open now
    assert received == "1 studies, 1 images"
    assert bars == 24
    assert case.patient_id in listed and "\t1\t" in listed  # one image
    assert f"Synthetic, {case.patient_id}" in listed  # the Patient's Name storescu sent
    assert str(case.dataset.SOPInstanceUID) in instances
    assert 0 < preview_width <= 640  # the SC, downscaled, drawn by the browser
    assert counts.startswith("3 dead letters")
    assert retried == "queued 3 dead letters again"
    assert [e.user_name for e in audit_events(node, "transfers-requeued")] == ["root-admin"]
    assert "dicom.ae_title" in settings_shown
    session = cookies["cxr_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert used == "Setup link not valid"
