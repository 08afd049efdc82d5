"""The periodic audit report: what the node received, read, sent and refused, and how well.

An admin (or the scheduler) writes it for a period; a radiology IT team files it, a
clinical lead reads it. So it is one self-contained HTML page (charts are PNG files beside
it, no script, style sheet or font from the network: it must open on a reading-room PC
with no internet) and a JSON twin with the same figures for anyone who wants to chart
them elsewhere. Every text that comes from the database (AE titles, errors, gate reports)
is escaped: a peer chooses its AE title, and an error may quote what a peer sent.
All times are naive UTC, the database's convention (storage.models).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from storage.db import Database

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from storage.models import (
    AuditEvent,
    FindingRecord,
    ImageAnalysis,
    Instance,
    Job,
    JobState,
    ModelState,
    ModelVersion,
    ResultKind,
    ResultObject,
    Series,
    Study,
    Transfer,
    TransferState,
)
from training.tracking import held_out_figures, load_cases, summarise

REPORT_HTML = "audit-report.html"
REPORT_JSON = "audit-report.json"
SECURITY_EVENT_ID = "110113"  # PS3.15 A.5.3: Security Alert
SECURITY_EVENTS_LISTED = 20


def _naive_utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} {value!r} must be a datetime")
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def _in(column, since: datetime, until: datetime):  # noqa: ANN001, ANN202 - SQL expression
    return (column >= since) & (column < until)


def study_counts(session: Session, since: datetime, until: datetime) -> dict[str, Any]:
    """Studies received; jobs finished as analysed, skipped or failed; skips by reason."""
    received = session.scalar(
        select(func.count(func.distinct(Series.study_id))).select_from(Instance).join(Series)
        .where(_in(Instance.received_at, since, until), Instance.produced_by_node.is_(False)))
    read = func.sum(case((ImageAnalysis.analysed.is_(True), 1), else_=0))
    jobs = session.execute(
        select(Job.id, Job.study_id, Job.state, read, func.count(ImageAnalysis.id))
        .outerjoin(ImageAnalysis, ImageAnalysis.job_id == Job.id)
        .where(_in(Job.finished_at, since, until)).group_by(Job.id, Job.study_id, Job.state)).all()
    done = [row for row in jobs if row[2] == JobState.DONE]
    reasons = session.execute(
        select(ImageAnalysis.skip_reason, func.count()).join(Job, Job.id == ImageAnalysis.job_id)
        .where(_in(Job.finished_at, since, until), ImageAnalysis.analysed.is_(False))
        .group_by(ImageAnalysis.skip_reason)).all()
    counted = Counter({reason or "(no reason recorded)": n for reason, n in reasons})
    return {
        "received": int(received or 0),
        "analysed": sum(1 for row in done if (row[3] or 0) > 0),
        "analysed_studies": len({row[1] for row in done if (row[3] or 0) > 0}),
        "skipped": sum(1 for row in done if row[4] > 0 and not row[3]),
        "failed": sum(1 for row in jobs if row[2] == JobState.FAILED),
        "images_analysed": sum(int(row[3] or 0) for row in done),
        "images_skipped": sum(counted.values()),
        "skip_reasons": dict(counted.most_common()),
    }


def _percentiles(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    values = np.asarray(seconds, dtype=float)
    return {"count": len(seconds), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": float(values.max())}


def _first_after(rows: Sequence[tuple[int, datetime, datetime]]) -> list[float]:
    """Per study, seconds from completion to the first event at or after it."""
    first: dict[int, float] = {}
    for study_id, completed_at, at in rows:
        seconds = (at - completed_at).total_seconds()
        first[study_id] = min(seconds, first.get(study_id, seconds))
    return list(first.values())


def result_latency(session: Session, since: datetime, until: datetime) -> dict[str, Any]:
    """Study completion to the first SR sent, and to the job's end (studies completed then).

    Events before the completion belong to an earlier generation of a re-opened study.
    """
    sent = session.execute(
        select(Study.id, Study.completed_at, Transfer.sent_at)
        .join(ResultObject, ResultObject.study_id == Study.id)
        .join(Transfer, Transfer.result_id == ResultObject.id)
        .where(_in(Study.completed_at, since, until), ResultObject.kind == ResultKind.SR,
               Transfer.state == TransferState.SENT, Transfer.sent_at >= Study.completed_at))
    finished = session.execute(
        select(Study.id, Study.completed_at, Job.finished_at).join(Job, Job.study_id == Study.id)
        .where(_in(Study.completed_at, since, until), Job.state == JobState.DONE,
               Job.finished_at >= Study.completed_at))
    return {"completion_to_sr_sent": _percentiles(_first_after(sent.all())),
            "completion_to_job_finished": _percentiles(_first_after(finished.all()))}


def _transfers(session: Session, since: datetime, until: datetime) -> dict[str, Any]:
    """The outbox rows queued in the period, by state and destination; dead letters listed."""
    rows = session.execute(
        select(Transfer, ResultObject.kind, Study.study_uid)
        .join(ResultObject, ResultObject.id == Transfer.result_id)
        .join(Study, Study.id == ResultObject.study_id)
        .where(_in(Transfer.queued_at, since, until)).order_by(Transfer.id)).all()
    state_names = {TransferState.SENT: "sent", TransferState.DEAD: "dead"}
    totals = dict.fromkeys(("sent", "pending", "dead"), 0)
    by_destination: dict[str, dict[str, int]] = {}
    dead, failed_attempts = [], 0
    for transfer, kind, study_uid in rows:
        state = state_names.get(transfer.state, "pending")  # pending or sending
        totals[state] += 1
        by_destination.setdefault(transfer.destination, dict.fromkeys(totals, 0))[state] += 1
        # A sent transfer's last attempt succeeded; every other attempt failed.
        failed_attempts += max(0, transfer.attempts - (state == "sent"))
        if state == "dead":
            dead.append({"destination": transfer.destination, "kind": kind,
                         "study_uid": study_uid, "attempts": transfer.attempts,
                         "queued_at": transfer.queued_at,
                         "last_attempt_at": transfer.last_attempt_at,
                         "last_error": transfer.last_error})
    return {**totals, "failed_attempts": failed_attempts,
            "by_destination": dict(sorted(by_destination.items())),
            "dead_letters": dead}


def _findings(session: Session, since: datetime, until: datetime,
              labels: Sequence[str]) -> dict[str, Any]:
    """Share of analysed studies (latest analysed job per study) with each finding."""
    latest: dict[int, tuple[datetime, int]] = {}
    for job_id, study_id, finished_at in session.execute(
            select(Job.id, Job.study_id, Job.finished_at)
            .join(ImageAnalysis, ImageAnalysis.job_id == Job.id)
            .where(_in(Job.finished_at, since, until), Job.state == JobState.DONE,
                   ImageAnalysis.analysed.is_(True)).distinct()):
        latest[study_id] = max((finished_at, job_id), latest.get(study_id, (finished_at, job_id)))
    chosen = {job_id for _, job_id in latest.values()}
    with_finding: dict[str, set[int]] = {label: set() for label in labels}
    for job_id, study_id, label in session.execute(
            select(Job.id, Job.study_id, FindingRecord.label)
            .join(FindingRecord, FindingRecord.job_id == Job.id)
            .where(_in(Job.finished_at, since, until), Job.state == JobState.DONE).distinct()):
        if job_id in chosen and label in with_finding:
            with_finding[label].add(study_id)
    total = len(latest)
    return {"analysed_studies": total, "per_finding": {
        label: {"studies": len(studies), "share": len(studies) / total if total else None}
        for label, studies in with_finding.items()}}


def _security(session: Session, since: datetime, until: datetime) -> dict[str, Any]:
    """Security alerts and refused associations or instances: who tried, and how often."""
    events = session.scalars(
        select(AuditEvent).where(_in(AuditEvent.occurred_at, since, until), or_(
            AuditEvent.event_id == SECURITY_EVENT_ID, AuditEvent.event_type.contains("rejected")))
        .order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())).all()
    return {
        "events": len(events),
        "by_event_type": dict(Counter(e.event_type for e in events).most_common()),
        "by_calling_ae_title": dict(Counter(e.calling_ae_title or "(none)"
                                            for e in events).most_common()),
        "last": [{"occurred_at": e.occurred_at, "event_id": e.event_id,
                  "event_type": e.event_type, "calling_ae_title": e.calling_ae_title,
                  "peer_address": e.peer_address, "message": e.message}
                 for e in events[:SECURITY_EVENTS_LISTED]],
    }


def _version_row(version: ModelVersion) -> dict[str, Any]:
    return {"id": version.id, "name": version.name, "version": version.version,
            "state": version.state, "activated_at": version.activated_at,
            "created_at": version.created_at, "retired_at": version.retired_at,
            "test_set": held_out_figures(version)}


def _refused(version: ModelVersion) -> bool:
    try:
        figures = json.loads(version.test_metrics) if version.test_metrics else {}
    except json.JSONDecodeError:
        figures = {}
    if isinstance(figures, dict) and "gate_passed" in figures:
        return not figures["gate_passed"]
    return "refused" in (version.gate_report or "").split("\n", 1)[0]


def _models(session: Session, since: datetime, until: datetime) -> dict[str, Any]:
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
    events = session.scalars(
        select(AuditEvent).where(_in(AuditEvent.occurred_at, since, until),
                                 AuditEvent.event_type.in_(["model-promoted",
                                                            "model-rolled-back"]))
        .order_by(AuditEvent.occurred_at, AuditEvent.id)).all()
    return {
        "active": [_version_row(v) for v in versions
                   if v.activated_at is not None and v.activated_at < until
                   and (v.retired_at is None or v.retired_at >= since)],
        "promotions": [{"occurred_at": e.occurred_at, "message": e.message}
                       for e in events if e.event_type == "model-promoted"],
        "rollbacks": [{"occurred_at": e.occurred_at, "message": e.message}
                      for e in events if e.event_type == "model-rolled-back"],
        "refused_candidates": [{**_version_row(v), "gate_report": v.gate_report}
                               for v in versions if v.state == ModelState.CANDIDATE
                               and v.gate_report and _refused(v)
                               and since <= v.created_at < until],
    }


def _performance(session: Session, since: datetime, until: datetime, labels: Sequence[str],
                 active: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Production figures per version for the period, week by week, beside the test set."""
    cases = load_cases(session)
    registry: dict[str, list[ModelVersion]] = {}
    for row in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        registry.setdefault(row.version, []).append(row)
    weeks = []
    start = since
    while start < until:
        weeks.append((start, min(start + timedelta(days=7), until)))
        start += timedelta(days=7)
    weekly = [summarise(cases, labels, a, b, registry) for a, b in weeks]
    active_versions = {row["version"] for row in active}
    out = []
    for index, row in enumerate(summarise(cases, labels, since, until, registry)):
        if not row["studies"] and row["version"] not in active_versions:
            continue
        test_set = next((f for f in map(held_out_figures, registry.get(row["version"], []))
                         if f), {})
        out.append({**row, "test_set": test_set, "weekly": [
            {"week_start": a, "studies": week[index]["studies"], "per_finding": {
                label: {k: v for k, v in figures.items()
                        if k in ("sensitivity", "specificity", "positives", "negatives")}
                for label, figures in week[index]["per_finding"].items()}}
            for (a, _), week in zip(weeks, weekly, strict=True)]})
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- charts ---------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "finding"


def _figure(**options: Any) -> Figure:
    """A matplotlib figure; matplotlib is imported here, when a report draws, not with
    this module: the console's overview uses its queries on every page load, and the
    import cost a node about a second of CPU at the first one."""
    from matplotlib.figure import Figure

    return Figure(**options)


def _save(figure: Figure, path: Path) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=96)
    return path.name


def _bar_chart(values: dict[str, float], title: str, xlabel: str, path: Path) -> str:
    figure = _figure(figsize=(7, 0.45 * len(values) + 1.2))
    axis = figure.add_subplot()
    names = [name if len(name) <= 50 else name[:47] + "..." for name in values]
    axis.barh(names[::-1], list(values.values())[::-1], color="#4c72b0")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    if xlabel.startswith("share"):
        axis.set_xlim(0, 1)
    return _save(figure, path)


def _trend_chart(label: str, performance: list[dict[str, Any]], path: Path) -> str | None:
    """Weekly sensitivity and specificity of one finding, a line per version."""
    if not any(w["per_finding"][label][name] is not None for row in performance
               for w in row["weekly"] for name in ("sensitivity", "specificity")):
        return None
    weeks = [datetime.fromisoformat(w["week_start"]) for w in performance[0]["weekly"]]
    ticks = weeks[::math.ceil(len(weeks) / 12)]  # a year of weeks stays legible
    figure = _figure(figsize=(10, 3.6))
    axes = figure.subplots(1, 2, sharey=True)
    for axis, name in zip(axes, ("sensitivity", "specificity"), strict=True):
        for index, row in enumerate(performance):
            colour = f"C{index % 10}"
            values = [w["per_finding"][label][name] for w in row["weekly"]]
            axis.plot(weeks, [math.nan if v is None else v for v in values], marker="o",
                      color=colour, label=f"{row['name'] or ''} {row['version']}".strip())
            expected = row["test_set"].get(label, {}).get(name)
            if expected is not None:
                axis.axhline(expected, color=colour, linestyle="--", linewidth=1)
        axis.set_title(f"{label}: {name} per week (dashed: test set)")
        axis.set_ylim(-0.05, 1.05)
        axis.set_xlim(weeks[0] - timedelta(days=2), weeks[-1] + timedelta(days=2))
        axis.set_xticks(ticks, [f"{w:%Y-%m-%d}" for w in ticks], rotation=30, ha="right")
    axes[0].legend(loc="lower left", fontsize="small")
    return _save(figure, path)


def _charts(report: dict[str, Any], labels: Sequence[str], out_dir: Path) -> dict[str, str]:
    charts = {}
    prevalence = report["findings"]["per_finding"]
    if report["findings"]["analysed_studies"]:
        charts["prevalence"] = _bar_chart({k: v["share"] for k, v in prevalence.items()},
                                          "Share of analysed studies with each finding",
                                          "share of studies", out_dir / "prevalence.png")
    if report["studies"]["skip_reasons"]:
        charts["skips"] = _bar_chart(report["studies"]["skip_reasons"], "Images not analysed",
                                     "images", out_dir / "skip-reasons.png")
    for label in labels:
        name = _trend_chart(label, report["performance"],
                            out_dir / f"performance-{_slug(label)}.png")
        if name:
            charts[f"performance:{label}"] = name
    return charts


# -- HTML -----------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _rate(figures: dict[str, Any], name: str) -> str:
    ci = figures.get(f"{name}_ci")
    text = _fmt(figures.get(name))
    return f"{text} ({ci[0]:.2f}–{ci[1]:.2f})" if ci else text


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(charts: dict[str, str], key: str) -> str:
    return (f'<p><img src="{html.escape(charts[key])}" alt="{html.escape(key)}"></p>'
            if key in charts else "")


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;"
         "padding:.2em .6em;text-align:left;vertical-align:top;white-space:pre-wrap}"
         "th{background:#eee}img{max-width:100%}")


def _html(report: dict[str, Any], labels: Sequence[str], charts: dict[str, str]) -> str:
    s, lat, tr = report["studies"], report["latency_s"], report["transfers"]
    sec, models = report["security"], report["models"]
    period = f"{report['period']['since']} to {report['period']['until']} (UTC)"
    parts = [f"<h1>cxr-node audit report</h1><p>{html.escape(period)}</p>",
             "<h2>Studies</h2>", _table(
                 ["received", "analysed (jobs)", "analysed studies", "skipped (jobs)",
                  "failed (jobs)", "images analysed", "images skipped"],
                 [[s["received"], s["analysed"], s["analysed_studies"], s["skipped"],
                   s["failed"], s["images_analysed"], s["images_skipped"]]]),
             "<h3>Images not analysed, by reason</h3>",
             _table(["reason", "images"], list(s["skip_reasons"].items())), _img(charts, "skips"),
             "<h2>Latency (seconds)</h2>", _table(
                 ["from study completion to", "studies", "p50", "p95", "max"],
                 [[name.replace("completion_to_", "").replace("_", " "), v["count"], v["p50"],
                   v["p95"], v["max"]] for name, v in lat.items()]),
             "<h2>Transfers</h2>", _table(
                 ["sent", "pending", "dead letters", "failed attempts"],
                 [[tr["sent"], tr["pending"], tr["dead"], tr["failed_attempts"]]]),
             _table(["destination", "sent", "pending", "dead"],
                    [[d, c["sent"], c["pending"], c["dead"]]
                     for d, c in tr["by_destination"].items()]),
             "<h3>Dead letters</h3>", _table(
                 ["destination", "object", "study", "attempts", "last attempt", "last error"],
                 [[d["destination"], d["kind"], d["study_uid"], d["attempts"],
                   d["last_attempt_at"], d["last_error"]] for d in tr["dead_letters"]]),
             "<h2>Findings</h2>",
             f"<p>{report['findings']['analysed_studies']} analysed studies.</p>", _table(
                 ["finding", "studies", "share"],
                 [[label, v["studies"], v["share"]]
                  for label, v in report["findings"]["per_finding"].items()]),
             _img(charts, "prevalence"),
             "<h2>Security: rejected associations and alerts</h2>",
             f"<p>{sec['events']} events.</p>",
             _table(["event type", "events"], list(sec["by_event_type"].items())),
             _table(["calling AE title", "events"], list(sec["by_calling_ae_title"].items())),
             f"<h3>Last {SECURITY_EVENTS_LISTED}</h3>", _table(
                 ["when", "event", "type", "calling AE", "address", "message"],
                 [[e["occurred_at"], e["event_id"], e["event_type"], e["calling_ae_title"],
                   e["peer_address"], e["message"]] for e in sec["last"]]),
             "<h2>Model versions</h2><h3>Active in the period</h3>", _table(
                 ["id", "name", "version", "state", "activated", "retired"],
                 [[v["id"], v["name"], v["version"], v["state"], v["activated_at"],
                   v["retired_at"]] for v in models["active"]]),
             "<h3>Promotions and rollbacks</h3>", _table(
                 ["when", "what", "message"],
                 [[e["occurred_at"], what, e["message"]]
                  for kind, what in (("promotions", "promoted"), ("rollbacks", "rolled back"))
                  for e in models[kind]]),
             "<h3>Candidates refused by the promotion gate</h3>", _table(
                 ["id", "version", "created", "gate report"],
                 [[v["id"], v["version"], v.get("created_at"), v["gate_report"]]
                  for v in models["refused_candidates"]]),
             "<h2>Sensitivity and specificity on labelled studies</h2>",
             "<p>Study level, against the radiologists' current labels, by when the labels "
             "arrived; 95% Wilson intervals in brackets. Test set: the version's held-out "
             "figures.</p>"]
    for row in report["performance"]:
        title = (f"{row['name'] or '(unregistered)'} {row['version']} "
                 f"({row['studies']} labelled studies)")
        parts += [f"<h3>{html.escape(title)}</h3>", _table(
            ["finding", "positives", "sensitivity", "test set", "negatives", "specificity",
             "test set"],
            [[label, f["positives"], _rate(f, "sensitivity"),
              row["test_set"].get(label, {}).get("sensitivity"), f["negatives"],
              _rate(f, "specificity"), row["test_set"].get(label, {}).get("specificity")]
             for label, f in row["per_finding"].items()])]
    parts += [_img(charts, f"performance:{label}") for label in labels]
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>cxr-node audit report</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write_audit_report(db: Database, since: datetime, until: datetime, out_dir: Path,
                       labels: Sequence[str]) -> dict[str, Any]:
    """Write ``audit-report.html`` (with its PNG charts) and ``audit-report.json``.

    The period is [since, until); naive times are taken as UTC. Returns the JSON's dict.
    """
    since, until = _naive_utc(since, "since"), _naive_utc(until, "until")
    if since >= until:
        raise ValueError(f"since {since} must be before until {until}")
    if isinstance(labels, str) or not labels or not all(isinstance(x, str) and x
                                                        for x in labels):
        raise TypeError(f"labels {labels!r} must be a non-empty list of finding labels")
    labels = tuple(dict.fromkeys(labels))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with db.session() as session:
        models = _models(session, since, until)
        report = _jsonable({
            "period": {"since": since, "until": until},
            "studies": study_counts(session, since, until),
            "latency_s": result_latency(session, since, until),
            "transfers": _transfers(session, since, until),
            "findings": _findings(session, since, until, labels),
            "security": _security(session, since, until),
            "models": models,
            "performance": _performance(session, since, until, labels, models["active"]),
        })
    charts = _charts(report, labels, out_dir)
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out_dir / REPORT_HTML).write_text(_html(report, labels, charts), encoding="utf-8")
    return report
