"""``cxr-node users``: console accounts from the command line, each change audited.

Passwords are read with ``getpass`` (twice) or, with ``--password-stdin``, as one line
from standard input, for scripts; never from an argument, where ``ps`` and the shell's
history would show them. The person acting is audited as ``cli:<os user>``.
"""

from __future__ import annotations

import getpass
import sys

from sqlalchemy.orm import Session

from config.settings import Settings
from node.admin import database
from storage import accounts
from storage.accounts import AccountError, Passwords
from storage.audit import AuditEventId, Outcome, record
from storage.models import utcnow


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (e.g. a bare container)
        return "cli:unknown"


def read_password(from_stdin: bool) -> str:
    """The new password, checked; AccountError if short, long or the two differ."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("The same again: ") != password:
            raise AccountError("the two passwords differ; nothing changed")
    return accounts.check_password(password)


def create_user(session: Session, name: str, role: str, password: str, actor: str) -> None:
    """Add the account and audit who added it (``cxr-node users add``, ``cxr-node demo``)."""
    accounts.add_user(session, Passwords(), name, role, password)
    record(session, AuditEventId.APPLICATION_ACTIVITY, "user-added", Outcome.SUCCESS,
           f'console user "{name}" added as {role}', user_name=actor)


def add_user(settings: Settings, name: str, role: str, password_stdin: bool) -> None:
    accounts.check_name(name)
    accounts.check_role(role)
    password = read_password(password_stdin)
    with database(settings) as db, db.session() as session:
        create_user(session, name, role, password, cli_actor())
    print(f"added {name} ({role})")


def change_password(settings: Settings, name: str, password_stdin: bool) -> None:
    accounts.check_name(name)
    password = read_password(password_stdin)
    with database(settings) as db, db.session() as session:
        accounts.set_password(session, Passwords(), name, password)
        record(session, AuditEventId.APPLICATION_ACTIVITY, "password-changed",
               Outcome.SUCCESS, f'password of console user "{name}" changed; their sessions '
               "ended, a lockout lifted", user_name=cli_actor())
    print(f"password of {name} changed; their sessions ended")


def set_disabled(settings: Settings, name: str, disabled: bool) -> None:
    accounts.check_name(name)
    with database(settings) as db, db.session() as session:
        accounts.set_disabled(session, name, disabled)
        event, what = (("user-disabled", "disabled; their sessions ended") if disabled
                       else ("user-enabled", "enabled"))
        record(session, AuditEventId.APPLICATION_ACTIVITY, event, Outcome.SUCCESS,
               f'console user "{name}" {what}', user_name=cli_actor())
    print(f"{name} {'disabled' if disabled else 'enabled'}")


def list_users(settings: Settings) -> None:
    now = utcnow()
    with database(settings) as db, db.session() as session:
        users = accounts.list_users(session)
    print(f"{'name':<24} {'role':<9} {'state':<26} {'created (UTC)':<16}  last login (UTC)")
    for user in users:
        state = ("disabled" if user.disabled else
                 f"locked until {user.locked_until:%Y-%m-%d %H:%M}"
                 if user.locked_until and user.locked_until > now else "active")
        last = f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "never"
        print(f"{user.name:<24} {user.role:<9} {state:<26} {user.created_at:%Y-%m-%d %H:%M}  "
              f"{last}")
    if not users:
        print("(no accounts: the log of cxr-node serve shows a one-time link for the first "
              "admin, or use cxr-node users add)")
