"""`cxr-node users`: add, list, disable, enable and passwd, each audited; a bad name, role or
password is one line and exit 2, and changes nothing."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import select

from node.cli import main
from storage import accounts
from storage.accounts import Passwords
from storage.db import Database
from storage.models import AuditEvent, User, WebSession, utcnow

PASSWORD = "correct horse battery"


@pytest.fixture
def config(tmp_path) -> str:
    path = tmp_path / "cxr-node.yaml"
    path.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}}))
    return str(path)


@pytest.fixture
def db(tmp_path, config):
    main(["--config", config, "users", "list"])  # creates the database, migrated
    database = Database.connect(f"sqlite:///{tmp_path / 'data' / 'cxr-node.sqlite3'}",
                                upgrade=False)
    yield database
    database.dispose()


def users(config: str, *args: str, stdin: str = "", monkeypatch=None) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["--config", config, "users", *args])


def rows(db: Database, model) -> list:  # noqa: ANN001
    with db.session() as session:
        return list(session.scalars(select(model).order_by(model.id)))


def test_add_list_disable_enable_and_passwd(config, db, monkeypatch, capsys):
    add = users(config, "add", "ada", "--role", "admin", "--password-stdin",
                stdin=PASSWORD + "\n", monkeypatch=monkeypatch)
    add_viewer = users(config, "add", "vera", "--role", "viewer", "--password-stdin",
                       stdin=PASSWORD + "\n", monkeypatch=monkeypatch)
    capsys.readouterr()
    listed = users(config, "list", monkeypatch=monkeypatch)
    table = capsys.readouterr().out.splitlines()
    disable = users(config, "disable", "vera", monkeypatch=monkeypatch)
    disabled = {u.name: u.disabled for u in rows(db, User)}
    enable = users(config, "enable", "vera", monkeypatch=monkeypatch)
    with db.session() as session:  # a session and a lockout that passwd must end
        vera = accounts.find_user(session, "vera")
        vera.locked_until = utcnow().replace(year=2100)
        accounts.open_session(session, vera, timedelta(hours=1), None)
    passwd = users(config, "passwd", "vera", "--password-stdin",
                   stdin="another long password\n", monkeypatch=monkeypatch)

    assert (add, add_viewer, listed, disable, enable, passwd) == (0, 0, 0, 0, 0, 0)
    assert [line.split()[:3] for line in table[1:]] == [["ada", "admin", "active"],
                                                        ["vera", "viewer", "active"]]
    assert disabled == {"ada": False, "vera": True}
    [vera] = [u for u in rows(db, User) if u.name == "vera"]
    assert not vera.disabled and vera.locked_until is None
    assert Passwords().verify(vera.password_hash, "another long password")
    assert not Passwords().verify(vera.password_hash, PASSWORD)
    assert rows(db, WebSession) == []
    audited = [(r.event_id, r.event_type, r.user_name.startswith("cli:")) for r in
               rows(db, AuditEvent)]
    assert audited == [("110100", "user-added", True), ("110100", "user-added", True),
                       ("110100", "user-disabled", True), ("110100", "user-enabled", True),
                       ("110100", "password-changed", True)]


@pytest.mark.parametrize("args, stdin, expected", [
    (["add", "bad name", "--role", "viewer"], PASSWORD,
     '"bad name" is not a user name'),
    (["add", "bob", "--role", "superuser"], PASSWORD,
     '"superuser" is not a role (one of viewer, operator, admin)'),
    (["add", "bob", "--role", "viewer"], "short", "a password is at least 12 characters"),
    (["add", "ada", "--role", "viewer"], PASSWORD, 'user "ada" exists already'),
    (["disable", "nobody"], "", 'there is no user "nobody"'),
    (["passwd", "nobody"], PASSWORD, 'there is no user "nobody"'),
])
def test_bad_arguments_are_one_line_and_exit_2(config, db, monkeypatch, capsys, args, stdin,
                                               expected):
    users(config, "add", "ada", "--role", "admin", "--password-stdin", stdin=PASSWORD,
          monkeypatch=monkeypatch)
    before = [(u.name, u.role, u.password_hash, u.disabled) for u in rows(db, User)]
    capsys.readouterr()

    code = users(config, *args, *(["--password-stdin"] if args[0] != "disable" else []),
                 stdin=stdin + "\n", monkeypatch=monkeypatch)

    [line] = capsys.readouterr().err.splitlines()
    assert code == 2
    assert line.startswith(f"cxr-node users {args[0]}: error: {expected}")
    assert [(u.name, u.role, u.password_hash, u.disabled) for u in rows(db, User)] == before
    assert len(rows(db, AuditEvent)) == 1  # the first add only


def test_prompted_passwords_that_differ_change_nothing(config, db, monkeypatch, capsys):
    answers = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))

    code = main(["--config", config, "users", "add", "ada", "--role", "admin"])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "cxr-node users add: error: the two passwords differ; nothing changed"]
    assert rows(db, User) == []
