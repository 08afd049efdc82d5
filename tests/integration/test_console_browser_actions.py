"""An admin's day in Debian's Chromium: retry a dead letter, promote a candidate, roll back.

The console app on a free port (tests/integration/console.py) with the registry of
test_console_models and a study whose SR is a dead letter; Playwright clicks what a person
clicks. Each action is checked where it lands: the page, the database and the audit trail
with the admin's name. The screenshots are kept in ``var/test-output/console-actions/``.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from storage.models import Transfer, TransferState
from tests.conftest import unavailable
from tests.integration import ohif
from tests.integration.console import PASSWORD
from tests.integration.test_console_models import add_registry, model_events, states
from tests.integration.test_console_pages import _add_study
from tests.peers import REPO

SCREENSHOTS = REPO / "var" / "test-output" / "console-actions"


def test_admin_retries_a_dead_letter_promotes_and_rolls_back_in_a_browser(console):
    missing = ohif.browser_missing()
    if missing:
        unavailable(missing)
    ids = add_registry(console)
    [dead] = _add_study(console.db, 1, transfers=(("pacs", TransferState.DEAD),))
    console.add_user("ada", "admin")

    with ohif.chromium_page(SCREENSHOTS) as shots:
        page = shots.page
        page.goto(f"{console.base}/login")
        page.get_by_label("Name").fill("ada")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/console$"))

        page.get_by_role("link", name="Transfers").click()
        page.wait_for_url(re.compile(r"/console/transfers$"))
        dead_row = page.locator(f"#transfer-{dead}").inner_text()
        shots.shot("1-transfers-dead-letter")
        page.locator(f"#transfer-{dead}").get_by_role("button", name="Retry").click()
        page.wait_for_url(re.compile(r"/console/transfers\?notice="))
        retried = page.locator("p.notice").inner_text()
        shots.shot("2-transfers-retried")

        page.get_by_role("link", name="Models").click()
        page.wait_for_url(re.compile(r"/console/models$"))
        page.locator(f'a[href="/console/models/{ids["2.0.0"]}"]').first.click()
        page.wait_for_url(re.compile(rf"/console/models/{ids['2.0.0']}$"))
        shots.shot("3-model-candidate")
        page.get_by_label(re.compile("Reason for promoting")).fill("better Pneumothorax")
        page.get_by_role("button", name="Promote…").click()
        plan = page.locator("#plan").inner_text()
        before_confirm = states(console)
        shots.shot("4-promote-confirm")
        page.get_by_role("button", name="Confirm").click()
        page.wait_for_url(re.compile(r"/console/models"))
        after_promote = states(console)

        page.goto(f"{console.base}/console/models")
        page.get_by_label("Reason (required; written to the audit trail)").fill(
            "radiologists report missed nodules")
        page.get_by_role("button", name="Roll back…").click()
        rollback_plan = page.locator("#plan").inner_text()
        page.get_by_role("button", name="Confirm").click()
        page.wait_for_url(re.compile(r"/console/models"))
        shots.shot("5-rolled-back")
        after_rollback = states(console)

    with console.db.session() as session:
        transfer = session.scalar(select(Transfer).where(Transfer.id == dead))
    events = model_events(console)
    assert "dead" in dead_row and "association rejected by pacs" in dead_row
    assert "queued 1 dead letters again" in retried
    assert transfer.state == TransferState.PENDING
    assert [e.user_name for e in console.audit("transfers-requeued")] == ["ada"]
    assert "2.0.0" in plan and before_confirm["2.0.0"] == "candidate"
    assert after_promote["2.0.0"] == "active" and after_promote["1.0.0"] == "retired"
    assert "1.0.0" in rollback_plan
    assert after_rollback["1.0.0"] == "active" and after_rollback["2.0.0"] == "retired"
    assert [(e.event_type, e.user_name) for e in events] == [
        ("model-promoted", "ada"), ("model-rolled-back", "ada")]
    assert "better Pneumothorax" in events[0].message
    assert "radiologists report missed nodules" in events[1].message
