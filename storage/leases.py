"""Claiming rows under a lease: the one pattern the job queue and the outbox share.

PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` picks rows no other transaction holds,
then an ``UPDATE`` of exactly those ids takes them (one ``UPDATE … WHERE id IN (SELECT …
LIMIT n FOR UPDATE SKIP LOCKED)`` statement is not safe there: the planner may run the
subquery more than once and take more than ``n`` rows). SQLite serialises writers, so
one ``UPDATE … WHERE id IN (SELECT … LIMIT n)`` statement is atomic and avoids upgrading
a read transaction, which SQLite may refuse under concurrency.

A lease owner is ``host:pid:role:nonce``. When a process is killed, its leases would
hold its rows until they expire (minutes); a node starting on the same host expires at
once the leases of processes there that no longer run, so a restart picks up at once.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import JobState, utcnow


def claim(session: Session, is_sqlite: bool, model: type, condition: ColumnElement[bool],
          order_by: tuple, limit: int, values: dict[str, Any]) -> list[int]:
    """Set ``values`` on up to ``limit`` rows of ``model`` matching ``condition``; their ids."""
    candidates = select(model.id).where(condition).order_by(*order_by).limit(limit)
    if is_sqlite:
        chosen = model.id.in_(candidates.scalar_subquery())
    else:
        ids = session.scalars(candidates.with_for_update(skip_locked=True)).all()
        if not ids:
            return []
        chosen = model.id.in_(ids)
    statement = (update(model).where(chosen, condition).values(**values)
                 .returning(model.id).execution_options(synchronize_session=False))
    return sorted(session.scalars(statement).all())


def claim_queued(db: Database, model: type, owner: str, lease_seconds: float, limit: int,
                 max_attempts: int) -> list[int]:
    """Claim up to ``limit`` rows of a queue table (oldest first) for ``owner``; their ids.

    A queue table (analysis jobs, label intakes) has ``state``, ``lease_owner``,
    ``lease_expires_at``, ``started_at``, ``attempts`` and ``created_at``: a row is
    claimable when queued, or running under a lease that expired, while it has attempts left.
    """
    now = utcnow()
    expired = and_(model.state == JobState.RUNNING, model.lease_expires_at < now)
    claimable = and_(or_(model.state == JobState.QUEUED, expired),
                     model.attempts < max_attempts)
    with db.session() as session:
        return claim(session, db.is_sqlite, model, claimable, (model.created_at, model.id),
                     limit, {"state": JobState.RUNNING, "lease_owner": owner,
                             "started_at": now,
                             "lease_expires_at": now + timedelta(seconds=lease_seconds),
                             "attempts": model.attempts + 1})


def fail_abandoned(session: Session, model: type, max_attempts: int) -> list:
    """Rows of a queue table whose holders died ``max_attempts`` times: mark them failed."""
    now = utcnow()
    rows = session.scalars(
        select(model).where(model.state == JobState.RUNNING, model.lease_expires_at < now,
                            model.attempts >= max_attempts)
    ).all()
    for row in rows:
        row.state = JobState.FAILED
        row.finished_at = now
        row.error = (f"abandoned: lease of {row.lease_owner} expired after "
                     f"{row.attempts} attempts")
    return list(rows)


def lease_owner(role: str) -> str:
    """``host:pid:role:nonce``: unique per claimer, and checkable from this host."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}:{uuid.uuid4().hex[:8]}"


def _process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def expire_leases_of_dead_local_processes(session: Session, model: type) -> list[str]:
    """Expire now the live leases held by processes on this host that no longer run.

    Only processes on this host can be checked; a lease from elsewhere runs its course.
    Our own pid is never taken for dead. Returns the owners whose leases were expired.
    """
    prefix = f"{socket.gethostname()}:"
    now = utcnow()
    held = session.execute(select(model.id, model.lease_owner).where(
        model.lease_owner.startswith(prefix, autoescape=True), model.lease_expires_at > now))
    ids, dead = [], set()
    for row_id, owner in held:
        pid = owner.removeprefix(prefix).split(":")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_is_running(int(pid)):
            ids.append(row_id)
            dead.add(owner)
    if ids:
        session.execute(update(model).where(model.id.in_(ids), model.lease_expires_at > now)
                        .values(lease_expires_at=now)
                        .execution_options(synchronize_session=False))
    return sorted(dead)
