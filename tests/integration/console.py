"""A console of the node's own web app on a free port, and a browser for it (urllib).

Shared by the console tests: ``start_console`` builds the app ``cxr-node serve`` builds, on
a SQLite database of the test's own; ``Browser`` keeps cookies and shows each redirect.
"""

from __future__ import annotations

import http.cookiejar
import re
import secrets
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from sqlalchemy import select

from config.settings import Settings
from node.metrics import NodeMetrics
from node.web.app import build_app
from node.web.auth import Accounts
from node.web.health import Readiness
from node.web.server import WebServer
from storage import accounts
from storage.accounts import Passwords
from storage.db import Database
from storage.models import AuditEvent, User
from tests.ports import free_port

PASSWORD = "correct horse battery"
LOCKOUT_SECONDS = 2.0


@dataclass
class Console:
    server: WebServer
    db: Database
    accounts: Accounts

    @property
    def base(self) -> str:
        return self.server.url.rstrip("/")

    def add_user(self, name: str, role: str, password: str = PASSWORD) -> None:
        with self.db.session() as session:
            accounts.add_user(session, self.accounts.passwords, name, role, password)

    def audit(self, event_type: str) -> list[AuditEvent]:
        with self.db.session() as session:
            return list(session.scalars(select(AuditEvent).where(
                AuditEvent.event_type == event_type).order_by(AuditEvent.id)))

    def user(self, name: str) -> User:
        with self.db.session() as session:
            return session.scalar(select(User).where(User.name == name))


def start_console(tmp_path, **web) -> Console:
    settings = Settings.model_validate({
        "storage": {"data_dir": str(tmp_path / "data")},
        "web": {"bind_address": "127.0.0.1", "port": free_port(),
                "lockout_seconds": LOCKOUT_SECONDS, **web}})
    db = Database.connect(settings.storage.resolved_database_url())
    # argon2 with less memory than the default: the same code paths, faster tests.
    from argon2 import PasswordHasher
    console_accounts = Accounts(settings, db, Passwords(PasswordHasher(memory_cost=8192)))
    app = build_app(settings, Readiness(), NodeMetrics(), "serve", console_accounts)
    server = WebServer(app, settings.web, settings.web.port, "web.port")
    server.start()
    return Console(server, db, console_accounts)


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None  # the test sees each 303 and where it points


@dataclass
class Answer:
    status: int
    headers: dict
    body: str
    set_cookies: list[str]

    @property
    def location(self) -> str | None:
        return self.headers.get("location")


class Browser:
    """One person's browser: a cookie jar, and redirects shown rather than followed."""

    def __init__(self, base: str, context: ssl.SSLContext | None = None) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        handlers = [urllib.request.HTTPCookieProcessor(self.jar), _KeepRedirects()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def _send(self, request: urllib.request.Request) -> Answer:
        try:
            response = self.opener.open(request, timeout=30)
        except urllib.error.HTTPError as error:
            response = error
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Answer(response.status if hasattr(response, "status") else response.code,
                      headers, response.read().decode(),
                      response.headers.get_all("set-cookie") or [])

    def get(self, path: str) -> Answer:
        return self._send(urllib.request.Request(self.base + path))

    def post(self, path: str, fields: dict[str, str] | list[tuple[str, str]]) -> Answer:
        """A form POST; a list of pairs sends a field more than once (ticked boxes)."""
        data = urllib.parse.urlencode(fields).encode()
        return self._send(urllib.request.Request(self.base + path, data=data, method="POST"))

    def upload(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]],
               chunked: bool = False) -> Answer:
        """A multipart/form-data POST, as a form with a file input sends it; ``chunked``
        sends it without a Content-Length (Transfer-Encoding: chunked)."""
        boundary = secrets.token_hex(16)
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                 f"{value}\r\n".encode() for name, value in fields.items()]
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{filename}"\r\nContent-Type: text/csv\r\n\r\n'.encode()
                  + data + b"\r\n" for name, (filename, data) in files.items()]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        data = iter([body[i:i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
        return self._send(urllib.request.Request(
            self.base + path, data=data, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}))

    def csrf(self, path: str) -> str:
        """The hidden CSRF field of the page at ``path``, as a browser would submit it."""
        page = self.get(path)
        assert page.status == 200, (page.status, page.body)
        return re.search(r'name="csrf_token" value="([^"]+)"', page.body).group(1)

    def login(self, name: str, password: str = PASSWORD) -> Answer:
        return self.post("/login", {"csrf_token": self.csrf("/login"), "name": name,
                                    "password": password, "next": "/console"})

    def logged_in_as(self, name: str, role: str) -> str:
        answer = self.login(name)
        assert answer.status == 303 and answer.location == "/console", answer
        return self.csrf("/console")


def text_of(html: str, element_id: str) -> str:
    """The text of the element with ``element_id``, tags removed, spaces collapsed."""
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</(dd|p|table)>', html, re.S)
    assert match, f"no #{element_id} in the page"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split())
