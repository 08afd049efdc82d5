"""Claiming rows under a lease: the one pattern the job queue and the outbox share.

PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` picks rows no other transaction holds,
then an ``UPDATE`` of exactly those ids takes them (one ``UPDATE … WHERE id IN (SELECT …
LIMIT n FOR UPDATE SKIP LOCKED)`` statement is not safe there: the planner may run the
subquery more than once and take more than ``n`` rows). SQLite serialises writers, so
one ``UPDATE … WHERE id IN (SELECT … LIMIT n)`` statement is atomic and avoids upgrading
a read transaction, which SQLite may refuse under concurrency.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session


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
