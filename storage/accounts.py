"""Console accounts and their sessions: argon2id password hashes, lockout, server-side sessions.

Sessions live in the database (``web_sessions``), not in signed cookies. The cookie holds a
random token; the table holds its SHA-256, the user, the CSRF token and the expiry. So a
logout, ``cxr-node users disable`` or a password change ends the person's sessions at once
in every process that shares the database (``serve``, ``web``, another host), which a signed
cookie could only do with a revocation list that every request must read anyway; and a
copy of the table gives no working cookie.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.models import User, UserRole, WebSession, utcnow

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 hashes any length; this bounds the work a request buys
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AccountError(ValueError):
    """A name, role or password that cannot be used, or an account that does not exist."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise AccountError(f'"{name}" is not a user name (1-64 letters, digits, ".", "_", "@", '
                           '"-"; starting with a letter or digit)')
    return name


def check_role(role: str) -> UserRole:
    try:
        return UserRole(role)
    except ValueError:
        raise AccountError(f'"{role}" is not a role (one of '
                           f'{", ".join(r.value for r in UserRole)})') from None


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password is at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"a password is at most {MAX_PASSWORD_LENGTH} characters")
    return password


class Passwords:
    """argon2id with argon2-cffi's defaults (RFC 9106's second recommended option)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        # Verified against when the name is unknown, so that an unknown name costs the same
        # time as a wrong password and the answer's timing does not tell which it was.
        self._decoy = self.hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self.hasher.hash(check_password(password))

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash or self._decoy, password) \
                and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def count_users(session: Session) -> int:
    return session.scalar(select(func.count(User.id))) or 0


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.name)).all()


def add_user(session: Session, passwords: Passwords, name: str, role: str,
             password: str) -> User:
    check_name(name)
    user_role = check_role(role)
    if find_user(session, name) is not None:
        raise AccountError(f'user "{name}" exists already')
    user = User(name=name, role=user_role, password_hash=passwords.hash(password),
                disabled=False, failed_logins=0)
    session.add(user)
    session.flush()
    return user


def _existing(session: Session, name: str) -> User:
    user = find_user(session, name)
    if user is None:
        raise AccountError(f'there is no user "{name}" (cxr-node users list)')
    return user


def set_password(session: Session, passwords: Passwords, name: str, password: str) -> User:
    """A new password ends the user's sessions and lifts a lockout."""
    user = _existing(session, name)
    user.password_hash = passwords.hash(password)
    user.password_changed_at = utcnow()
    user.failed_logins = 0
    user.locked_until = None
    end_sessions(session, user.id)
    return user


def set_disabled(session: Session, name: str, disabled: bool) -> User:
    """Disabling ends the user's sessions at once, in every process."""
    user = _existing(session, name)
    user.disabled = disabled
    if disabled:
        end_sessions(session, user.id)
    return user


class LoginOutcome(StrEnum):
    SUCCESS = "success"
    UNKNOWN_USER = "unknown user"
    WRONG_PASSWORD = "wrong password"
    LOCKED = "account locked"
    DISABLED = "account disabled"


@dataclass(frozen=True)
class LoginAttempt:
    outcome: LoginOutcome
    user: User | None
    locked_now: bool = False  # this failure locked the account


def authenticate(session: Session, passwords: Passwords, name: str, password: str, *,
                 max_failed_logins: int, lockout_seconds: float) -> LoginAttempt:
    """Check a login; count a failure, and lock the account at ``max_failed_logins``.

    Every path verifies exactly one argon2 hash (the decoy for an unknown name), so the
    time taken does not tell an unknown name from a wrong password or a locked account.
    While locked, even the right password fails; the count starts again after the lock.
    """
    user = find_user(session, name) if len(password) <= MAX_PASSWORD_LENGTH else None
    matches = passwords.verify(user.password_hash if user else None,
                               password[:MAX_PASSWORD_LENGTH])
    if user is None:
        return LoginAttempt(LoginOutcome.UNKNOWN_USER, None)
    now = utcnow()
    if user.locked_until is not None and user.locked_until > now:
        return LoginAttempt(LoginOutcome.LOCKED, user)
    if user.disabled:
        return LoginAttempt(LoginOutcome.DISABLED, user)
    if not matches:
        user.failed_logins += 1
        if user.failed_logins >= max_failed_logins:
            user.failed_logins = 0
            user.locked_until = now + timedelta(seconds=lockout_seconds)
            return LoginAttempt(LoginOutcome.WRONG_PASSWORD, user, locked_now=True)
        return LoginAttempt(LoginOutcome.WRONG_PASSWORD, user)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    if passwords.hasher.check_needs_rehash(user.password_hash):
        user.password_hash = passwords.hasher.hash(password)
    return LoginAttempt(LoginOutcome.SUCCESS, user)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SessionUser:
    """Who a request's session belongs to, and the CSRF token its forms must carry."""

    session_id: int
    name: str
    role: UserRole
    csrf_token: str


def open_session(session: Session, user: User, lifetime: timedelta,
                 source_address: str | None) -> tuple[str, SessionUser]:
    """A new session; returns the cookie's token (shown once, stored only as a hash)."""
    token = secrets.token_urlsafe(32)
    row = WebSession(token_hash=_token_hash(token), user_id=user.id,
                     csrf_token=secrets.token_urlsafe(32), source_address=source_address,
                     expires_at=utcnow() + lifetime)
    session.add(row)
    session.flush()
    return token, SessionUser(row.id, user.name, UserRole(user.role), row.csrf_token)


def load_session(session: Session, token: str) -> SessionUser | None:
    """The live session of ``token``: not expired, its user not disabled.

    A lockout does not end sessions: it stops password guessing, and ending the real
    user's sessions would let anyone who knows a name log that person out.
    """
    if not token or len(token) > 128:
        return None
    now = utcnow()
    found = session.execute(
        select(WebSession, User).join(User, User.id == WebSession.user_id)
        .where(WebSession.token_hash == _token_hash(token), WebSession.expires_at > now,
               User.disabled.is_(False))).first()
    if found is None:
        return None
    row, user = found
    return SessionUser(row.id, user.name, UserRole(user.role), row.csrf_token)


def close_session(session: Session, session_id: int) -> None:
    session.execute(delete(WebSession).where(WebSession.id == session_id))


def end_sessions(session: Session, user_id: int) -> None:
    session.execute(delete(WebSession).where(WebSession.user_id == user_id))


def purge_expired_sessions(session: Session, now: datetime | None = None) -> int:
    return session.execute(delete(WebSession).where(
        WebSession.expires_at <= (now or utcnow()))).rowcount
