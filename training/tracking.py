"""Production sensitivity and specificity of every model version, against radiologists' labels.

The test set says how a model did before it was trusted; this module says how it does on
the site's own studies, as radiologists label them. A study counts for a version when its
latest done job read images with that version (``image_analyses.model_version``) and the
study has current labels (``label_batches.superseded_at`` IS NULL). Per finding, a study is
truly positive when any current label of it has that label, and called when the job has a
``findings`` row with that label (findings rows are already above the card's thresholds).
Figures are study-level, with 95% Wilson intervals, over windows by the time the labels
arrived. :func:`check_performance` writes an audit alert when a version falls below its
own test-set figure by more than a margin, so a drift in the site's population or a
scanner change is seen before anyone relies on stale numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from numbers import Real
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from model.card import CardError, ModelCard
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.models import (
    AuditEvent,
    FindingRecord,
    ImageAnalysis,
    Job,
    JobState,
    Label,
    LabelBatch,
    ModelVersion,
    utcnow,
)
from training.metrics import wilson_interval

LOGGER = logging.getLogger("cxr_node.tracking")
ALERT_EVENT_TYPE = "model-performance-alert"
FIGURES = ("sensitivity", "specificity")


@dataclass(frozen=True)
class Case:
    """One labelled study as read by one model version: the unit every figure counts."""

    study_id: int
    job_id: int
    version: str
    labelled_at: datetime  # created_at of the study's current label batch
    truth: frozenset[str]  # finding labels the radiologist gave (empty: normal)
    called: frozenset[str]  # finding labels the model reported


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels \
            or not all(isinstance(x, str) and x for x in labels):
        raise TypeError(f"labels {labels!r} must be a non-empty list of finding labels")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels {list(labels)} contain duplicates")
    return tuple(labels)


def load_cases(session: Session) -> list[Case]:
    """Every (labelled study, model version) pair, with the latest done job per pair."""
    latest: dict[tuple[int, str], tuple[datetime, int]] = {}
    rows = session.execute(
        select(Job.study_id, Job.id, Job.finished_at, ImageAnalysis.model_version)
        .join(ImageAnalysis, ImageAnalysis.job_id == Job.id)
        .where(Job.state == JobState.DONE, ImageAnalysis.analysed.is_(True),
               ImageAnalysis.model_version.is_not(None))
        .distinct())
    for study_id, job_id, finished_at, version in rows:
        key, rank = (study_id, version), (finished_at or datetime.min, job_id)
        if key not in latest or rank > latest[key]:
            latest[key] = rank

    labelled_at: dict[int, datetime] = {}
    truth: dict[int, set[str]] = {}
    for study_id, created_at, label in session.execute(
            select(LabelBatch.study_id, LabelBatch.created_at, Label.label)
            .join(Label, Label.batch_id == LabelBatch.id)
            .where(LabelBatch.superseded_at.is_(None))):
        labelled_at[study_id] = max(created_at, labelled_at.get(study_id, created_at))
        truth.setdefault(study_id, set())
        if label:
            truth[study_id].add(label)

    jobs = {job_id for (study_id, _), (_, job_id) in latest.items() if study_id in labelled_at}
    called: dict[int, set[str]] = {}
    # Filtered here, not with IN (...): a site's labelled studies outgrow SQLite's bound limit.
    for job_id, label in session.execute(
            select(FindingRecord.job_id, FindingRecord.label)
            .join(Job, Job.id == FindingRecord.job_id)
            .where(Job.state == JobState.DONE).distinct()):
        if job_id in jobs:
            called.setdefault(job_id, set()).add(label)

    return [Case(study_id, job_id, version, labelled_at[study_id],
                 frozenset(truth[study_id]), frozenset(called.get(job_id, ())))
            for (study_id, version), (_, job_id) in sorted(latest.items(),
                                                           key=lambda item: item[1][1])
            if study_id in labelled_at]


def _rate(successes: int, total: int) -> tuple[float | None, list[float] | None]:
    if total == 0:
        return None, None
    low, high = wilson_interval(successes, total)
    return successes / total, [low, high]


def finding_figures(cases: Iterable[Case], label: str) -> dict[str, Any]:
    """Study-level counts and rates of one finding; None where there is no denominator."""
    tp = fn = tn = fp = 0
    for case in cases:
        present, call = label in case.truth, label in case.called
        tp += present and call
        fn += present and not call
        fp += call and not present
        tn += not call and not present
    sensitivity, sensitivity_ci = _rate(tp, tp + fn)
    specificity, specificity_ci = _rate(tn, tn + fp)
    return {"positives": tp + fn, "negatives": tn + fp, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": sensitivity, "specificity": specificity,
            "sensitivity_ci": sensitivity_ci, "specificity_ci": specificity_ci}


def _registry(session: Session) -> dict[str, list[ModelVersion]]:
    by_version: dict[str, list[ModelVersion]] = {}
    for row in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        by_version.setdefault(row.version, []).append(row)
    return by_version


def summarise(cases: Sequence[Case], labels: Sequence[str], since: datetime | None,
              until: datetime, registry: dict[str, list[ModelVersion]] | None = None
              ) -> list[dict[str, Any]]:
    """One dict per version with cases labelled in [since, until) (since None: all time).

    A version string missing from the registry (a model run before it was registered)
    is still reported, with no name or id.
    """
    labels = _check_labels(labels)
    chosen = [c for c in cases if (since is None or c.labelled_at >= since)
              and c.labelled_at < until]
    out = []
    for version in sorted({c.version for c in cases}):
        mine = [c for c in chosen if c.version == version]
        rows = (registry or {}).get(version, [])
        out.append({
            "version": version,
            "name": " / ".join(r.name for r in rows) or None,
            "model_version_ids": [r.id for r in rows],
            "since": since, "until": until, "studies": len(mine),
            "per_finding": {label: finding_figures(mine, label) for label in labels},
        })
    return out


def production_figures(session: Session, labels: Sequence[str],
                       windows_days: Sequence[float | None] = (30, 90, None),
                       now: datetime | None = None) -> list[dict[str, Any]]:
    """Figures per (model version, window); a window is the last N days of labels, None all.

    Each dict holds ``version``, ``name``, ``model_version_ids``, ``window_days``,
    ``since``, ``until``, ``studies`` and ``per_finding`` {label: {positives, negatives,
    tp, fn, tn, fp, sensitivity, specificity, sensitivity_ci, specificity_ci}}.
    """
    for days in windows_days:
        if days is not None and (not isinstance(days, Real) or isinstance(days, bool)
                                 or days <= 0):
            raise ValueError(f"window {days!r} must be a positive number of days or None")
    now = now or utcnow()
    cases, registry = load_cases(session), _registry(session)
    out = []
    for days in windows_days:
        since = None if days is None else now - timedelta(days=days)
        # Labels stamped at `now` itself count: the window is closed at its end.
        for row in summarise(cases, labels, since, now + timedelta(microseconds=1), registry):
            out.append({**row, "window_days": days, "until": now})
    return out


def held_out_figures(version: ModelVersion) -> dict[str, dict[str, float]]:
    """The held-out figures a version is held to: {label: {"sensitivity", "specificity"}}.

    A retrained version keeps them in ``test_metrics["candidate"]`` (the locked test set);
    the bundled or an imported version only has its card's ``metrics`` (the first
    dataset with per-finding figures). Empty when neither is readable.
    """
    per_finding: Any = None
    if version.test_metrics:
        try:
            per_finding = json.loads(version.test_metrics).get("candidate", {}).get("per_finding")
        except (json.JSONDecodeError, AttributeError):
            LOGGER.warning("model version %s: test_metrics is not a JSON object", version.id)
    if not per_finding and version.path:
        try:
            card = ModelCard.load(Path(version.path), verify_weights=False)
        except (CardError, OSError, TypeError, ValueError) as exc:
            LOGGER.info("model version %s: no card metrics (%s)", version.id, exc)
        else:
            for name in sorted(card.metrics):
                values = card.metrics[name]
                values = values.get("values") if isinstance(values, dict) else None
                if isinstance(values, dict) and values.get("per_finding"):
                    per_finding = values["per_finding"]
                    break
    out: dict[str, dict[str, float]] = {}
    for label, values in (per_finding if isinstance(per_finding, dict) else {}).items():
        if not isinstance(values, dict):
            continue
        kept = {name: float(values[name]) for name in FIGURES
                if isinstance(values.get(name), Real) and values[name] == values[name]}
        if kept:
            out[label] = kept
    return out


def _window_text(days: float | None) -> str:
    return "all time" if days is None else f"the last {days:g} days"


def _ci_text(ci: list[float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


def check_performance(db: Database, labels: Sequence[str], margin: float = 0.1,
                      min_cases: int = 10, window_days: float | None = 30,
                      now: datetime | None = None) -> list[str]:
    """Audit a version whose production figure fell below its test-set figure by > margin.

    A figure is judged only with at least ``min_cases`` studies in its denominator: with
    fewer, the interval is too wide for a drop to mean anything. An alert for the same
    version, finding, figure and window is written once per (UTC) day, however often the
    check runs. Returns the messages of the alerts written now.
    """
    if not isinstance(margin, Real) or not 0.0 <= margin < 1.0:
        raise ValueError(f"margin {margin!r} must be a number in [0, 1)")
    if not isinstance(min_cases, int) or min_cases < 1:
        raise ValueError(f"min_cases {min_cases!r} must be a positive integer")
    now = now or utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    written: list[str] = []
    with db.session() as session:
        figures = production_figures(session, labels, (window_days,), now)
        registry = _registry(session)
        already = set(session.scalars(select(AuditEvent.message).where(
            AuditEvent.event_type == ALERT_EVENT_TYPE, AuditEvent.occurred_at >= day,
            AuditEvent.occurred_at < day + timedelta(days=1))))
        for row in figures:
            for version in registry.get(row["version"], []):
                reference = held_out_figures(version)
                for label, figures_now in row["per_finding"].items():
                    for name in FIGURES:
                        expected = reference.get(label, {}).get(name)
                        value = figures_now[name]
                        count = figures_now["positives" if name == "sensitivity"
                                            else "negatives"]
                        if expected is None or value is None or count < min_cases \
                                or value >= expected - margin:
                            continue
                        key = (f"{version.name} {version.version}: {label} {name} over "
                               f"{_window_text(window_days)}:")
                        if any(message.startswith(key) for message in already):
                            continue
                        message = (f"{key} {value:.3f} (95% CI "
                                   f"{_ci_text(figures_now[name + '_ci'])}, {count} studies) "
                                   f"is below its test-set {expected:.3f} by more than {margin:g}")
                        event = audit.record(session, AuditEventId.APPLICATION_ACTIVITY,
                                             ALERT_EVENT_TYPE, Outcome.SERIOUS_FAILURE, message)
                        event.occurred_at = now  # the day the deduplication above looks at
                        already.add(message)
                        written.append(message)
    return written
