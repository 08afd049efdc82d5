"""Fixtures for tests that run cxr-node as a process and talk to it with real peers."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import AuditEvent
from tests.peers import NodeProcess

NODE_LOG_LINES = 80


@pytest.fixture
def start_node(tmp_path, dcmtk) -> Callable[..., NodeProcess]:
    """``start_node(**config)`` -> a running ``cxr-node serve``; all are stopped afterwards."""
    nodes: list[NodeProcess] = []

    def start(**config) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node{len(nodes)}", **config).start()
        nodes.append(node)
        return node

    start.nodes = nodes  # for the failure report below
    yield start
    for node in nodes:
        node.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001, ANN201 - pytest's hook
    """A failed test's report ends with the log of each node it started: what the node
    did is often the only way to tell why a condition was never met (in CI, the only one:
    the temporary directories are gone)."""
    report = yield
    start = getattr(item, "funcargs", {}).get("start_node")
    if report.when == "call" and report.failed and start is not None:
        for node in start.nodes:
            lines = node.log().splitlines()[-NODE_LOG_LINES:]
            report.sections.append((f"{node.workdir.name}: the last {len(lines)} lines of "
                                    "its log", "\n".join(lines)))
    return report


@pytest.fixture
def console(tmp_path):
    """The console app on a free port (tests/integration/console.py), stopped afterwards."""
    from tests.integration.console import start_console

    running = start_console(tmp_path)
    yield running
    running.server.stop()
    running.db.dispose()


def node_database(node: NodeProcess) -> Database:
    """The node's own database, opened the way an admin's tool would open it."""
    return Database.connect(node.database_url, upgrade=False)


def query(node: NodeProcess, statement):
    """Rows of ``statement`` on the node's own database."""
    db = node_database(node)
    try:
        with db.session() as session:
            return session.execute(statement).all()
    finally:
        db.dispose()


def audit_events(node: NodeProcess, event_type: str | None = None) -> list[AuditEvent]:
    db = node_database(node)
    try:
        with db.session() as session:
            query = select(AuditEvent).order_by(AuditEvent.id)
            if event_type:
                query = query.where(AuditEvent.event_type == event_type)
            return list(session.scalars(query))
    finally:
        db.dispose()


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    assert value, f"condition not met within {timeout} s"
    return value
