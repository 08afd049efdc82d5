"""The first admin as a person makes one: the setup link from a real node's log, opened in
Debian's Chromium (Playwright), then a login, then the console page. The screenshots are
kept in ``var/test-output/console/``.
"""

from __future__ import annotations

import re

from tests.conftest import unavailable
from tests.integration import ohif
from tests.integration.conftest import wait_until
from tests.peers import REPO

SCREENSHOTS = REPO / "var" / "test-output" / "console"
PASSWORD = "correct horse battery"


def test_setup_link_login_and_console_in_a_browser(start_node):
    missing = ohif.browser_missing()
    if missing:
        unavailable(missing)
    node = start_node()
    link = wait_until(lambda: re.search(r"create the first admin at (\S+/setup/\S+)",
                                        node.log())).group(1)

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
        accounts_table = page.locator("table").inner_text()
        console = shots.shot("2-console-admin")
        cookies = {c["name"]: c for c in page.context.cookies()}
        page.goto(link)  # the link again: used
        used = page.locator("h2").inner_text()
        print(f"screenshots: {setup} {console}")

    assert created
    assert who == "Logged in as root-admin, role admin."
    assert "root-admin" in accounts_table and "admin" in accounts_table
    session = cookies["cxr_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert used == "Setup link not valid"
