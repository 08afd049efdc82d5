"""Console accounts as a browser meets them: real uvicorn on a free port, urllib with cookies.

The app is the one ``cxr-node serve`` builds, on a SQLite database of the test's own, so
each test can read the users, sessions and audit rows it caused. What is checked is what
a person or an attacker would see: status codes, redirects, cookie flags, and that a
refused request changed nothing.
"""

from __future__ import annotations

import http.client
import logging
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from sqlalchemy import select

from node.web.app import OPEN_PATHS
from storage import accounts
from storage.models import WebSession
from tests.conftest import unavailable
from tests.integration.console import (
    LOCKOUT_SECONDS,
    PASSWORD,
    Browser,
    start_console,
)


def test_setup_link_creates_the_first_admin_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cxr_node.web.auth"):
        console = start_console(tmp_path)
    try:
        [link] = re.findall(r"create the first admin at (\S+/setup/\S+)", caplog.text)
        path = urllib.parse.urlparse(link).path
        browser = Browser(console.base)
        token = browser.csrf(path)

        created = browser.post(path, {"csrf_token": token, "name": "root-admin",
                                      "password": PASSWORD, "password_again": PASSWORD})
        second_page = Browser(console.base).get(path)
        # The same browser again, its form token still good: refused for the link alone.
        second_post = browser.post(path, {"csrf_token": token, "name": "intruder",
                                          "password": PASSWORD, "password_again": PASSWORD})

        assert created.status == 303 and created.location == "/login?created=1"
        assert second_page.status == 404 and "not valid" in second_page.body
        assert second_post.status == 404
        with console.db.session() as session:
            assert [(u.name, u.role) for u in accounts.list_users(session)] == [
                ("root-admin", "admin")]
        [audited] = console.audit("user-added")
        assert (audited.event_id, audited.user_name) == ("110100", "root-admin")
        assert browser.logged_in_as("root-admin", "admin")
    finally:
        console.server.stop()
        console.db.dispose()


def test_no_setup_link_once_an_account_exists(tmp_path, caplog):
    first = start_console(tmp_path)
    first.add_user("alice", "admin")
    first.server.stop()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxr_node.web.auth"):
        console = start_console(tmp_path)
    try:
        assert "setup" not in caplog.text
    finally:
        console.server.stop()
        console.db.dispose()
        first.db.dispose()


def test_login_console_and_logout_with_cookie_flags_and_audit(console):
    console.add_user("vera", "viewer")
    browser = Browser(console.base)

    anonymous = browser.get("/console")
    login = browser.login("vera")
    page = browser.get("/console")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.body).group(1)
    logout = browser.post("/logout", {"csrf_token": csrf})
    after = browser.get("/console")

    assert anonymous.status == 303 and anonymous.location == "/login?next=/console"
    assert login.status == 303 and login.location == "/console"
    [session_cookie] = [c for c in login.set_cookies if c.startswith("cxr_session=")]
    flags = {part.strip().lower() for part in session_cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain HTTP here; the TLS test checks Secure
    assert page.status == 200 and "Logged in as <strong>vera</strong>" in page.body
    assert "role <strong>viewer</strong>" in page.body
    assert "Retry every dead letter" not in page.body  # and refused on the server below
    assert logout.status == 303 and logout.location == "/login"
    assert after.status == 303  # the session row is gone: the old cookie is worth nothing
    with console.db.session() as session:
        assert session.scalars(select(WebSession)).all() == []
    [logged_in] = console.audit("login")
    [logged_out] = console.audit("logout")
    for row in (logged_in, logged_out):
        assert (row.event_id, row.outcome, row.user_name, row.peer_address) == (
            "110114", 0, "vera", "127.0.0.1")


def test_wrong_passwords_lock_the_account_until_the_lockout_ends(console):
    console.add_user("olga", "operator")
    browser = Browser(console.base)

    wrong = [browser.login("olga", "not the password") for _ in range(5)]
    right_while_locked = browser.login("olga")
    unknown = browser.login("nobody-here")
    time.sleep(LOCKOUT_SECONDS + 0.2)
    right_after = browser.login("olga")

    assert [a.status for a in wrong] == [401] * 5
    assert right_while_locked.status == 401 and unknown.status == 401
    # The same words for a wrong password, a locked account and an unknown name.
    refusals = {re.search(r'role="alert">([^<]+)<', a.body).group(1)
                for a in (*wrong, right_while_locked, unknown)}
    assert len(refusals) == 1 and refusals.pop().startswith("Wrong name or password")
    assert right_after.status == 303
    failed = console.audit("login-failed")
    assert [(r.event_id, r.outcome, r.user_name) for r in failed] == (
        [("110114", 4, "olga")] * 6 + [("110114", 4, "nobody-here")])
    assert [r.message for r in failed][-2:] == [
        "console login refused: account locked", "console login refused: unknown user"]
    [locked] = console.audit("account-locked")
    assert (locked.event_id, locked.outcome, locked.user_name, locked.peer_address) == (
        "110114", 8, "olga", "127.0.0.1")
    assert console.user("olga").failed_logins == 0


def test_one_address_guessing_across_names_is_throttled_then_let_in(tmp_path):
    window = 2.0
    console = start_console(tmp_path, max_failed_logins_per_address=3,
                            failed_login_window_seconds=window)
    try:
        console.add_user("olga", "operator")
        browser = Browser(console.base)

        guesses = [browser.login(name, "not the password") for name in ("a1", "b2", "c3")]
        throttled = browser.login("olga")  # the right password: refused unchecked
        time.sleep(window + 0.2)
        after = browser.login("olga")

        assert [a.status for a in guesses] == [401] * 3
        assert throttled.status == 429 and 1 <= int(throttled.headers["retry-after"]) <= 2
        assert "Too many failed logins from 127.0.0.1" in throttled.body
        assert after.status == 303
        [row] = console.audit("login-throttled")
        assert (row.event_id, row.outcome, row.user_name, row.peer_address) == (
            "110114", 8, "olga", "127.0.0.1")
        assert console.user("olga").failed_logins == 0  # no account was locked by it
    finally:
        console.server.stop()
        console.db.dispose()


def test_roles_are_enforced_on_the_server(console):
    for name, role in (("vera", "viewer"), ("olga", "operator"), ("ada", "admin")):
        console.add_user(name, role)
    viewer, operator, admin = (Browser(console.base) for _ in range(3))
    viewer_csrf = viewer.logged_in_as("vera", "viewer")
    operator_csrf = operator.logged_in_as("olga", "operator")
    admin_csrf = admin.logged_in_as("ada", "admin")

    viewer_disables = viewer.post("/console/users/olga/disable", {"csrf_token": viewer_csrf})
    viewer_retries = viewer.post("/console/transfers/retry", {"csrf_token": viewer_csrf,
                                                              "scope": "all"})
    operator_disables = operator.post("/console/users/vera/disable",
                                      {"csrf_token": operator_csrf})
    operator_retries = operator.post("/console/transfers/retry",
                                     {"csrf_token": operator_csrf, "scope": "all"})
    anonymous = Browser(console.base).post("/console/users/olga/disable",
                                           {"csrf_token": admin_csrf})

    assert viewer_disables.status == 403 and "needs the admin role" in viewer_disables.body
    assert viewer_retries.status == 403
    assert operator_disables.status == 403
    assert anonymous.status == 403
    assert not console.user("olga").disabled and not console.user("vera").disabled
    assert operator_retries.status == 303
    [requeued] = console.audit("transfers-requeued")
    assert (requeued.event_id, requeued.user_name) == ("110100", "olga")
    assert console.audit("user-disabled") == []

    admin_disables = admin.post("/console/users/olga/disable", {"csrf_token": admin_csrf})

    assert admin_disables.status == 303
    assert console.user("olga").disabled
    assert operator.get("/console").status == 303  # her session ended at once
    assert operator.login("olga").status == 401
    [disabled] = console.audit("user-disabled")
    assert (disabled.event_id, disabled.user_name) == ("110100", "ada")
    assert "olga" in disabled.message


def test_csrf_token_missing_or_wrong_is_403_and_changes_nothing(console):
    console.add_user("ada", "admin")
    console.add_user("vera", "viewer")
    admin = Browser(console.base)
    admin.logged_in_as("ada", "admin")

    missing = admin.post("/console/users/vera/disable", {})
    wrong = admin.post("/console/users/vera/disable", {"csrf_token": "x" * 43})
    logout_without = admin.post("/logout", {})
    fresh = Browser(console.base)
    login_without = fresh.post("/login", {"name": "ada", "password": PASSWORD})

    assert (missing.status, wrong.status, logout_without.status) == (403, 403, 403)
    assert login_without.status == 403
    assert not console.user("vera").disabled
    assert admin.get("/console").status == 200  # still logged in
    assert console.audit("logout") == [] and len(console.audit("login")) == 1


def test_every_console_route_names_the_role_it_needs(console):
    guarded = {}
    for route in console.server.app.routes:
        if route.path in OPEN_PATHS:
            continue
        role = getattr(route.endpoint, "required_role", None)
        assert role is not None, f"{route.path} has no require(role)"
        guarded[route.path] = role

    assert guarded == {"/logout": "viewer", "/console": "viewer",
                       "/console/users/{name}/disable": "admin",
                       "/console/transfers": "viewer",
                       "/console/transfers/retry": "operator",
                       "/console/config": "viewer",
                       "/console/studies": "viewer",
                       "/console/studies/{study_uid}": "viewer",
                       "/console/studies/{study_uid}/analyse": "operator",
                       "/console/studies/{study_uid}/preview/{sop_uid}.png": "viewer",
                       "/console/scheduler": "viewer",
                       "/console/scheduler/{task}/run": "operator",
                       "/console/audit": "operator",
                       "/console/audit.csv": "operator",
                       "/console/audit/report": "operator",
                       "/console/reports/{name}.zip": "operator",
                       "/console/reports/{name}/{file}": "operator",
                       "/console/models": "viewer", "/console/models/{version_id:int}": "viewer",
                       "/console/models/{version_id:int}/promote": "admin",
                       "/console/models/rollback": "admin",
                       "/console/labels": "viewer",
                       "/console/labels/{batch_id:int}": "viewer",
                       "/console/labels/import": "admin",
                       # QIDO-RS and WADO-RS reads, and OHIF reading them (401/login without)
                       **{path: "viewer" for path in (
                           "/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances",
                           "/dicomweb/studies/{study}/series",
                           "/dicomweb/studies/{study}/instances",
                           "/dicomweb/studies/{study}/series/{series}/instances",
                           "/dicomweb/studies/{study}", "/dicomweb/studies/{study}/metadata",
                           "/dicomweb/studies/{study}/series/{series}",
                           "/dicomweb/studies/{study}/series/{series}/metadata",
                           *(f"/dicomweb/studies/{{study}}/series/{{series}}/instances/"
                             f"{{instance}}{tail}" for tail in (
                                 "", "/metadata", "/frames/{frames}", "/bulkdata/{tag}",
                                 "/rendered", "/frames/{frames}/rendered")),
                           "/viewer", "/viewer/{path:path}")}}


def test_session_cookie_is_secure_under_tls(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed: no certificate for the TLS web service")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "web.key", "-out", "web.crt", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], cwd=tmp_path, check=True,
                   capture_output=True)
    console = start_console(tmp_path, tls={"enabled": True,
                                           "certificate": str(tmp_path / "web.crt"),
                                           "private_key": str(tmp_path / "web.key")})
    try:
        console.add_user("ada", "admin")
        context = ssl.create_default_context(cafile=str(tmp_path / "web.crt"))
        browser = Browser(console.base, context)
        page = browser.get("/login")
        login = browser.login("ada")
    finally:
        console.server.stop()
        console.db.dispose()

    assert console.base.startswith("https://")
    for answer, name in ((page, "cxr_login_csrf"), (login, "cxr_session")):
        [cookie] = [c for c in answer.set_cookies if c.startswith(f"{name}=")]
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "secure"} <= flags
    assert login.status == 303


def test_a_huge_form_body_is_refused_before_it_is_read_and_the_console_keeps_serving(console):
    """Anyone who reaches the port can POST to /login: 413 unread, and then 413 at the
    first 64 KiB of a chunked body of 100 MiB (the client sees the refusal long before it
    could have sent it all)."""
    console.add_user("ada", "admin")
    port = int(console.base.rsplit(":", 1)[1])
    declared = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    declared.putrequest("POST", "/login")
    declared.putheader("Content-Type", "application/x-www-form-urlencoded")
    declared.putheader("Content-Length", str(10 * 2**30))
    declared.endheaders()
    refused = declared.getresponse()

    chunked = socket.create_connection(("127.0.0.1", port), timeout=10)
    chunked.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                    b"boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
    start = b'--b\r\nContent-Disposition: form-data; name="f"; filename="f"\r\n\r\n'
    chunked.sendall(b"%x\r\n%s\r\n" % (len(start), start))  # a valid start: a file part
    block = b"x" * 65536
    answer = b""
    sent = 0
    try:
        while sent < 100 * 2**20 and b"\r\n\r\n" not in answer:
            chunked.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
            chunked.setblocking(False)
            try:
                answer += chunked.recv(4096)
            except BlockingIOError:
                pass
            chunked.setblocking(True)
    except (BrokenPipeError, ConnectionResetError):
        pass
    chunked.settimeout(10)
    while b"\r\n\r\n" not in answer:
        more = chunked.recv(4096)
        if not more:
            break
        answer += more
    chunked.close()

    assert refused.status == 413 and b"larger than 65536 bytes" in refused.read()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 10 * 2**20  # refused at the start, not after the whole body
    assert Browser(console.base).login("ada").status == 303  # and still serving
