"""Console logins: the login and logout routes, the first admin's setup link, roles and CSRF.

Every console route is wrapped in :func:`require` with the least role it needs (viewer <
operator < admin): the server refuses, whatever the page shows. A request without a
session is sent to ``/login`` (GET) or refused (anything else); a role too low is 403.
Every POST, PUT, PATCH and DELETE carries the session's CSRF token in a form field
(``csrf_token``) or an ``X-CSRF-Token`` header, else 403; the login and setup forms,
which come before any session, carry one matched against a cookie of their own (a
double-submit token), so no state-changing request goes unchecked.

Cookies are HttpOnly, SameSite=Strict, and Secure when the web service runs TLS. Sessions
are server-side rows (see :mod:`storage.accounts` for why). Logins, failed logins,
lockouts and logouts are audited as 110114 User Authentication with the name and the
source address; what a person changes is audited as 110100 Application Activity with the
person's name.
"""

from __future__ import annotations

import collections
import functools
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from urllib.parse import quote

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from config.settings import Settings
from storage import accounts
from storage.accounts import AccountError, LoginOutcome, Passwords, SessionUser
from storage.audit import AuditEventId, Outcome, record
from storage.db import Database
from storage.models import UserRole

LOGGER = logging.getLogger("cxr_node.web.auth")
SESSION_COOKIE = "cxr_session"
LOGIN_CSRF_COOKIE = "cxr_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_REFUSED = ("Wrong name or password, or the account is locked or disabled. "
                 "Ask an admin if this persists.")

Endpoint = Callable[[Request], Awaitable[Response]]


class LoginThrottle:
    """Failed logins per source address in a sliding window, in this process's memory.

    The per-account lockout stops guessing one name; this stops one address guessing
    across many names (each wrong name costs an argon2 hash). Kept in memory: a restart
    forgets it, and each web process counts its own, which still bounds the rate.
    """

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit, self.window = limit, window_seconds
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> collections.deque[float]:
        failures = self._failures.setdefault(address, collections.deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]  # bounded: only addresses failing now are kept
            return collections.deque()
        return failures

    def retry_after(self, address: str | None) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        if address is None:
            return None
        now = time.monotonic()
        with self._lock:
            failures = self._recent(address, now)
            if len(failures) < self.limit:
                return None
            return max(1.0, failures[-self.limit] + self.window - now)

    def failed(self, address: str | None) -> None:
        if address is None:
            return
        with self._lock:
            self._failures.setdefault(address, collections.deque()).append(time.monotonic())


class Accounts:
    """What the console's routes share: settings, the database, hashing and the setup link.

    The setup link's token is made here, once per process, and lives only in its memory:
    it is good for one use, while no account exists, until this process stops.
    """

    def __init__(self, settings: Settings, db: Database, passwords: Passwords | None = None):
        self.settings = settings
        self.db = db
        self.passwords = passwords or Passwords()
        self._setup_token: str | None = secrets.token_urlsafe(32)
        self._setup_lock = threading.Lock()
        self.throttle = LoginThrottle(settings.web.max_failed_logins_per_address,
                                      settings.web.failed_login_window_seconds)

    @property
    def secure_cookies(self) -> bool:
        return self.settings.web.tls.enabled

    def announce(self, url: str) -> None:
        """Log the setup link if no account exists yet (called once the web service is up)."""
        token = self._setup_token
        if token is None:
            return
        try:
            with self.db.session() as session:
                existing = accounts.count_users(session)
        except SQLAlchemyError:
            LOGGER.warning("the database does not answer; if no console account exists yet, "
                           "create the first admin at %ssetup/%s (valid once, until this "
                           "process stops)", url, token)
            return
        if existing:
            self._setup_token = None
            return
        LOGGER.warning("no console account exists yet: create the first admin at %ssetup/%s "
                       "(valid once, until this process stops; or use cxr-node users add)",
                       url, token)

    def setup_token_matches(self, given: str) -> bool:
        token = self._setup_token
        return token is not None and hmac.compare_digest(given.encode(), token.encode())

    def create_first_admin(self, given: str, name: str, password: str,
                           address: str | None) -> None:
        """Use the setup link: create the first admin, once; AccountError if refused."""
        with self._setup_lock:
            if not self.setup_token_matches(given):
                raise AccountError("this setup link is not valid (used already, or the node "
                                   "restarted: see its log)")
            with self.db.session() as session:
                if accounts.count_users(session):
                    self._setup_token = None
                    raise AccountError("an account exists already; log in")
                accounts.add_user(session, self.passwords, name, UserRole.ADMIN, password)
                record(session, AuditEventId.APPLICATION_ACTIVITY, "user-added", Outcome.SUCCESS,
                       f'first admin "{name}" created with the setup link',
                       peer_address=address, user_name=name)
            self._setup_token = None

    def login(self, name: str, password: str,
              address: str | None) -> tuple[str, SessionUser] | None:
        """Check a login and audit it; the new session's cookie token and user, or None."""
        web = self.settings.web
        with self.db.session() as session:
            attempt = accounts.authenticate(
                session, self.passwords, name, password,
                max_failed_logins=web.max_failed_logins, lockout_seconds=web.lockout_seconds)
            if attempt.outcome != LoginOutcome.SUCCESS:
                self.throttle.failed(address)
                record(session, AuditEventId.USER_AUTHENTICATION, "login-failed",
                       Outcome.MINOR_FAILURE, f"console login refused: {attempt.outcome}",
                       peer_address=address, user_name=name)
                if attempt.locked_now:
                    record(session, AuditEventId.USER_AUTHENTICATION, "account-locked",
                           Outcome.SERIOUS_FAILURE,
                           f"locked for {web.lockout_seconds:g} s after "
                           f"{web.max_failed_logins} wrong passwords in a row",
                           peer_address=address, user_name=name)
                return None
            opened = accounts.open_session(session, attempt.user,
                                           timedelta(hours=web.session_hours), address)
            record(session, AuditEventId.USER_AUTHENTICATION, "login", Outcome.SUCCESS,
                   f"console login as {attempt.user.role}", peer_address=address,
                   user_name=name)
            return opened

    def audit_throttled(self, name: str, address: str | None) -> None:
        web = self.settings.web
        with self.db.session() as session:
            record(session, AuditEventId.USER_AUTHENTICATION, "login-throttled",
                   Outcome.SERIOUS_FAILURE,
                   f"login refused unchecked: {web.max_failed_logins_per_address} failed "
                   f"logins from this address within {web.failed_login_window_seconds:g} s",
                   peer_address=address, user_name=name or None)

    def logout(self, user: SessionUser, address: str | None) -> None:
        with self.db.session() as session:
            accounts.close_session(session, user.session_id)
            record(session, AuditEventId.USER_AUTHENTICATION, "logout", Outcome.SUCCESS,
                   "console logout", peer_address=address, user_name=user.name)

    def current(self, request: Request) -> SessionUser | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        with self.db.session() as session:
            return accounts.load_session(session, token)

    def set_cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict",
                            secure=self.secure_cookies, path="/")

    def clear_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(name, httponly=True, samesite="strict",
                               secure=self.secure_cookies, path="/")


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _token_matches(given: object, expected: str) -> bool:
    return (isinstance(given, str) and bool(given)
            and hmac.compare_digest(given.encode(), expected.encode()))


def message_page(templates: Jinja2Templates, request: Request, status: int, title: str,
                 text: str, user: SessionUser | None = None) -> Response:
    return templates.TemplateResponse(request, "message.html", {
        "title": title, "text": text, "user": user}, status_code=status)


def require(role: UserRole, accounts_: Accounts,
            templates: Jinja2Templates) -> Callable[[Endpoint], Endpoint]:
    """Wrap a console endpoint: a session, at least ``role``, and CSRF on state changes.

    The wrapped endpoint finds the user in ``request.state.user``. ``required_role`` on
    the wrapper lets a test check that every route of the app is guarded.
    """
    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            user = await run_in_threadpool(accounts_.current, request)
            if user is None:
                if request.method in SAFE_METHODS:
                    return RedirectResponse(f"/login?next={quote(request.url.path)}",
                                            status_code=303)
                return message_page(templates, request, 403, "Not logged in",
                                    "Log in first; this request changed nothing.")
            if not user.role.allows(role):
                return message_page(templates, request, 403, "Not allowed",
                                    f"This needs the {role} role; you are {user.role}.", user)
            if request.method not in SAFE_METHODS:
                given = request.headers.get(CSRF_HEADER)
                if given is None:
                    given = (await request.form()).get(CSRF_FIELD)
                if not _token_matches(given, user.csrf_token):
                    return message_page(templates, request, 403, "Form expired",
                                        "The form's security token is missing or wrong; "
                                        "reload the page and try again.", user)
            request.state.user = user
            return await endpoint(request)

        guarded.required_role = role  # type: ignore[attr-defined]
        return guarded

    return wrap


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never ``//host`` or a scheme (an open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") \
            and "\\" not in target:
        return target
    return "/console"


def auth_routes(accounts_: Accounts, templates: Jinja2Templates) -> list[Route]:
    """/login, /logout and /setup/{token}."""

    def form_csrf(request: Request) -> str:
        return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)

    def with_form_csrf(response: Response, token: str) -> Response:
        accounts_.set_cookie(response, LOGIN_CSRF_COOKIE, token)
        return response

    def pre_session_csrf_ok(request: Request, form) -> bool:  # noqa: ANN001 - FormData
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
        return bool(cookie) and _token_matches(form.get(CSRF_FIELD), cookie)

    async def login_page(request: Request) -> Response:
        if await run_in_threadpool(accounts_.current, request) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next")), 303)
        token = form_csrf(request)
        return with_form_csrf(templates.TemplateResponse(request, "login.html", {
            "csrf_token": token, "next": _safe_next(request.query_params.get("next")),
            "error": None, "user": None}), token)

    async def login_submit(request: Request) -> Response:
        form = await request.form()
        if not pre_session_csrf_ok(request, form):
            return message_page(templates, request, 403, "Form expired",
                                "The login form's security token is missing or wrong; "
                                "open the login page again.")
        name = str(form.get("name", "")).strip()
        password = str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "")))
        address = client_address(request)
        wait = accounts_.throttle.retry_after(address)
        if wait is not None:
            await run_in_threadpool(accounts_.audit_throttled, name, address)
            response = message_page(templates, request, 429, "Too many failed logins",
                                    f"Too many failed logins from {address}; try again in "
                                    f"{math.ceil(wait)} s.")
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        opened = await run_in_threadpool(accounts_.login, name, password, address)
        if opened is None:
            token = form_csrf(request)
            return with_form_csrf(templates.TemplateResponse(request, "login.html", {
                "csrf_token": token, "next": target, "error": LOGIN_REFUSED, "user": None},
                status_code=401), token)
        session_token, _ = opened
        response = RedirectResponse(target, status_code=303)
        accounts_.set_cookie(response, SESSION_COOKIE, session_token)
        accounts_.clear_cookie(response, LOGIN_CSRF_COOKIE)
        return response

    @require(UserRole.VIEWER, accounts_, templates)
    async def logout(request: Request) -> Response:
        await run_in_threadpool(accounts_.logout, request.state.user, client_address(request))
        response = RedirectResponse("/login", status_code=303)
        accounts_.clear_cookie(response, SESSION_COOKIE)
        return response

    def setup_refused(request: Request, text: str) -> Response:
        return message_page(templates, request, 404, "Setup link not valid", text)

    async def setup_page(request: Request) -> Response:
        given = request.path_params["token"]
        if not accounts_.setup_token_matches(given):
            return setup_refused(request, "This setup link is not valid: it was used already, "
                                 "or the node restarted (the log shows a new one while no "
                                 "account exists).")
        token = form_csrf(request)
        return with_form_csrf(templates.TemplateResponse(request, "setup.html", {
            "csrf_token": token, "setup_token": given, "error": None, "user": None,
            "min_length": accounts.MIN_PASSWORD_LENGTH}), token)

    async def setup_submit(request: Request) -> Response:
        given = request.path_params["token"]
        form = await request.form()
        if not pre_session_csrf_ok(request, form):
            return message_page(templates, request, 403, "Form expired",
                                "The form's security token is missing or wrong; open the "
                                "setup link again.")
        if not accounts_.setup_token_matches(given):
            return setup_refused(request, "This setup link is not valid: it was used already, "
                                 "or the node restarted.")
        name = str(form.get("name", "")).strip()
        password = str(form.get("password", ""))
        try:
            if password != str(form.get("password_again", "")):
                raise AccountError("the two passwords differ")
            await run_in_threadpool(accounts_.create_first_admin, given, name, password,
                                    client_address(request))
        except AccountError as exc:
            token = form_csrf(request)
            return with_form_csrf(templates.TemplateResponse(request, "setup.html", {
                "csrf_token": token, "setup_token": given, "error": str(exc), "user": None,
                "min_length": accounts.MIN_PASSWORD_LENGTH}, status_code=400), token)
        return RedirectResponse("/login?created=1", status_code=303)

    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/setup/{token}", setup_page, methods=["GET"]),
        Route("/setup/{token}", setup_submit, methods=["POST"]),
    ]
