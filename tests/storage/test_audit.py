"""Audit rows are written with the caller's transaction, coded per PS3.15 A.5."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from storage import audit
from storage.models import AuditEvent


def test_record_adds_coded_row(database):
    with database.session() as session:
        audit.record(session, audit.AuditEventId.SECURITY_ALERT, "association-rejected",
                     audit.Outcome.SERIOUS_FAILURE, "calling AE title not recognised",
                     calling_ae_title="INTRUDER", called_ae_title="CXRNODE",
                     peer_address="10.0.0.5")

    with database.session() as session:
        rows = session.scalars(select(AuditEvent)).all()

    assert len(rows) == 1
    row = rows[0]
    assert row.event_id == "110113"
    assert row.event_type == "association-rejected"
    assert row.outcome == 8
    assert row.message == "calling AE title not recognised"
    assert (row.calling_ae_title, row.called_ae_title, row.peer_address) == (
        "INTRUDER", "CXRNODE", "10.0.0.5")
    assert row.occurred_at is not None


def test_record_rolls_back_with_session(database):
    with pytest.raises(RuntimeError), database.session() as session:
        audit.record(session, audit.AuditEventId.INSTANCES_TRANSFERRED, "instance-stored",
                     audit.Outcome.SUCCESS)
        raise RuntimeError("the transaction fails")

    with database.session() as session:
        assert session.scalars(select(AuditEvent)).all() == []
