"""The console's overview: the site now and over the last 24 hours, from the database.

The figures of the whole site (queue, outbox, studies, latency, the active model) come
from the shared database through the queries the metrics and the audit report already
use, so the console, ``/metrics`` and the report agree. What only one process knows (the
associations its listener serves, the device its worker runs on) comes from
:class:`ThisProcess`; a ``cxr-node web`` process has neither and says so.

All times are naive UTC, the database's convention (storage.models).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from config.settings import Settings
from node.audit_report import result_latency, study_counts
from node.metrics import site_state
from storage.db import Database
from storage.models import (
    AuditEvent,
    Instance,
    Job,
    JobState,
    ModelState,
    ModelVersion,
    Study,
    Transfer,
    TransferState,
    utcnow,
)

LAST_ERRORS = 8
SERIOUS = 8  # PS3.15 A.5.3.1: serious failure and worse


@dataclass(frozen=True)
class ThisProcess:
    """What this process alone can tell: None where it runs no listener or no worker."""

    open_associations: Callable[[], int] | None = None
    device: Callable[[], str] | None = None


@dataclass(frozen=True)
class HourBar:
    hour: datetime  # start of the hour, UTC
    studies: int


def site_overview(settings: Settings, db: Database, process: ThisProcess) -> dict[str, Any]:
    """Every figure of the overview page, read now."""

    now = utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day_ago = now - timedelta(hours=24)
    state = site_state(db)
    with db.session() as session:
        today = study_counts(session, midnight, now + timedelta(seconds=1))
        instances_today = session.scalar(
            select(func.count(Instance.id)).where(Instance.received_at >= midnight,
                                                  Instance.produced_by_node.is_(False))) or 0
        sent_today = session.scalar(
            select(func.count(Transfer.id)).where(Transfer.state == TransferState.SENT,
                                                  Transfer.sent_at >= midnight)) or 0
        latency = result_latency(session, day_ago, now + timedelta(seconds=1))
        active = session.scalar(select(ModelVersion).where(
            ModelVersion.state == ModelState.ACTIVE))
        hours = studies_per_hour(
            list(session.scalars(select(Study.first_received_at)
                                 .where(Study.first_received_at >= day_ago))), now)
        errors = last_errors(session)
    return {
        "now": now,
        "associations": (process.open_associations() if process.open_associations
                         else None),
        "received_studies": today["received"], "received_instances": instances_today,
        "analysed": today["analysed"], "failed": today["failed"], "sent": sent_today,
        "queue_depth": state.queue_depth, "oldest_job_seconds": state.oldest_job_age_seconds,
        "pending": state.in_state(TransferState.PENDING) + state.in_state(TransferState.SENDING),
        "dead_letters": state.dead_letters,
        "model": f"{active.name} {active.version}" if active else None,
        "device": process.device() if process.device else None,
        "configured_device": settings.worker.device,
        "disk": free_disk(settings.storage.data_dir, settings.dicom.min_free_disk_bytes),
        "errors": errors,
        "hours": hours, "chart": hourly_svg(hours),
        "latency": latency["completion_to_sr_sent"],
    }


def free_disk(data_dir: Path, floor: int) -> dict[str, Any]:
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError as exc:
        return {"free": None, "floor": floor, "low": True, "error": str(exc)}
    return {"free": free, "floor": floor, "low": free < floor, "error": None}


def studies_per_hour(received: list[datetime], now: datetime) -> list[HourBar]:
    """Studies first received in each of the 24 hours up to now (the last one running)."""
    last = now.replace(minute=0, second=0, microsecond=0)
    starts = [last - timedelta(hours=23 - i) for i in range(24)]
    counts = dict.fromkeys(starts, 0)
    for at in received:
        hour = at.replace(minute=0, second=0, microsecond=0)
        if hour in counts:
            counts[hour] += 1
    return [HourBar(hour, counts[hour]) for hour in starts]


def last_errors(session, limit: int = LAST_ERRORS) -> list[dict[str, Any]]:  # noqa: ANN001
    """The latest failed jobs, failed send attempts and serious audit events, newest first."""
    found: list[dict[str, Any]] = []
    for job_id, at, error in session.execute(
            select(Job.id, Job.finished_at, Job.error).where(Job.state == JobState.FAILED)
            .order_by(Job.finished_at.desc()).limit(limit)):
        found.append({"at": at, "what": f"job {job_id}", "text": error or "(no error text)"})
    for transfer_id, destination, at, error in session.execute(
            select(Transfer.id, Transfer.destination, Transfer.last_attempt_at,
                   Transfer.last_error)
            .where(Transfer.last_error.is_not(None), Transfer.state != TransferState.SENT)
            .order_by(Transfer.last_attempt_at.desc()).limit(limit)):
        found.append({"at": at, "what": f"transfer {transfer_id} to {destination}",
                      "text": error})
    for at, event_type, message in session.execute(
            select(AuditEvent.occurred_at, AuditEvent.event_type, AuditEvent.message)
            .where(AuditEvent.outcome >= SERIOUS)
            .order_by(AuditEvent.id.desc()).limit(limit)):
        found.append({"at": at, "what": event_type, "text": message})
    found.sort(key=lambda e: e["at"] or datetime.min, reverse=True)
    return found[:limit]


def hourly_svg(hours: list[HourBar], width: int = 480, height: int = 120) -> str:
    """A bar chart of studies per hour as inline SVG markup (no script, no chart library).

    Every value in it is a number or an hour we format, never text from the database.
    """
    top = max((bar.studies for bar in hours), default=0)
    scale = max(top, 1)
    plot_h, label_h = height - 20, 14
    slot = width / max(len(hours), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-labelledby="per-hour-title" class="chart">',
             f'<title id="per-hour-title">Studies received per hour, last 24 hours '
             f'(most: {top})</title>',
             f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" stroke="#888"/>']
    for i, bar in enumerate(hours):
        bar_h = round(bar.studies / scale * (plot_h - 12), 1)
        x = round(i * slot + 1, 1)
        parts.append(f'<rect x="{x}" y="{round(plot_h - bar_h, 1)}" width="{round(slot - 2, 1)}" '
                     f'height="{bar_h}" fill="#2b6cb0"><title>{bar.hour:%H}:00 UTC: '
                     f'{bar.studies} studies</title></rect>')
        if bar.studies:
            centre, above = round(x + slot / 2 - 1, 1), round(plot_h - bar_h - 2, 1)
            parts.append(f'<text x="{centre}" y="{above}" font-size="9" '
                         f'text-anchor="middle">{bar.studies}</text>')
        if i == len(hours) - 1:  # the running hour, its label flush with the right edge
            parts.append(f'<text x="{width}" y="{plot_h + label_h}" font-size="10" '
                         f'text-anchor="end">{bar.hour:%H}:00</text>')
        elif i % 6 == 0 and i < len(hours) - 3:
            parts.append(f'<text x="{x}" y="{plot_h + label_h}" font-size="10">'
                         f'{bar.hour:%H}:00</text>')
    parts.append("</svg>")
    return "".join(parts)
