"""The console's Models pages: the registry, one version's figures, promotion and rollback.

The figures are the ones the registry stored when a version was judged
(``ModelVersion.test_metrics``, written by :func:`training.retrain.judge`): per finding,
sensitivity and specificity with 95% Wilson intervals on the locked test set, and, for
versions judged since the registry kept them, the counts, AUC and a thinned ROC curve.
Nothing is recomputed from images here; an interval missing from an older report is
computed from its counts when they are stored, and a curve that is not stored is said to
be missing, never drawn from anything else.

Promotion and rollback change which model every worker runs, so each takes two POSTs:
the first (with a required reason) answers a page that says exactly what will happen, the
second (with ``confirm``) does it, only if the active model is still the one that page
named. The registry itself holds the promotion gate and writes the audit row (110100
Application Activity) with the admin's name and reason.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from model.card import CardError, ModelCard
from model.vocabulary import DEFAULT_LABELS
from node.web.auth import Accounts, client_address, message_page, require
from storage.db import Database
from storage.models import AuditEvent, DatasetSnapshot, ModelState, ModelVersion, UserRole
from training.metrics import wilson_interval
from training.registry import (
    RegistryError,
    active_version,
    gate_verdict,
    promote,
    rollback,
    rollback_target,
)
from training.tracking import ALERT_EVENT_TYPE, held_out_figures, production_figures

REASON_MAX = 1000
HISTORY_SHOWN = 50
WINDOWS_DAYS = (30, 90, None)
MODEL_EVENTS = ("model-activated", "model-candidate", "model-promoted", "model-rolled-back")


class Changed(RegistryError):
    """The registry moved between the confirmation page and the confirming POST."""


def _figures(version: ModelVersion) -> dict[str, Any]:
    try:
        figures = json.loads(version.test_metrics) if version.test_metrics else {}
    except json.JSONDecodeError:
        return {}
    return figures if isinstance(figures, dict) else {}


def verdict_of(version: ModelVersion) -> tuple[str, list[str]]:
    """``passed``, ``refused`` or ``not judged``, and the checks that refused it."""
    passed, failures = gate_verdict(version)
    if passed:
        return "passed", []
    return ("refused" if "gate_passed" in _figures(version) else "not judged"), failures


def _name(version: ModelVersion | None) -> str | None:
    return f"{version.name} {version.version}" if version is not None else None


def version_rows(session: Session) -> list[dict[str, Any]]:
    """Every registered version, newest first, with what the list page shows."""
    rows = session.execute(
        select(ModelVersion, DatasetSnapshot.fingerprint)
        .outerjoin(DatasetSnapshot, DatasetSnapshot.id == ModelVersion.snapshot_id)
        .order_by(ModelVersion.id.desc())).all()
    names = {version.id: _name(version) for version, _ in rows}
    out = []
    for version, fingerprint in rows:
        verdict, _ = verdict_of(version)
        out.append({
            "id": version.id, "name": _name(version), "state": str(version.state),
            "parent_id": version.parent_id, "parent": names.get(version.parent_id),
            "snapshot_id": version.snapshot_id, "fingerprint": fingerprint,
            "test_images": _figures(version).get("test_images"), "verdict": verdict,
            "created_at": version.created_at, "activated_at": version.activated_at,
            "retired_at": version.retired_at})
    return out


def _interval(stored: Any, successes: Any, total: Any) -> tuple[list[float] | None, str]:
    """The stored 95% interval, else a Wilson interval from stored counts; and its source."""
    if isinstance(stored, list) and len(stored) == 2 and None not in stored:
        return [float(stored[0]), float(stored[1])], "stored"
    if isinstance(successes, int) and isinstance(total, int) and total > 0:
        return list(wilson_interval(successes, total)), "computed from the stored counts"
    return None, "not stored"


def _rate(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def finding_rows(per_finding: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finding of a stored evaluation summary, intervals filled in if possible."""
    rows = []
    for label, values in sorted(per_finding.items()):
        if not isinstance(values, dict):
            continue
        tp, fn, tn, fp = (values.get(k) for k in ("tp", "fn", "tn", "fp"))
        counted = all(isinstance(c, int) for c in (tp, fn, tn, fp))
        sens_ci, sens_source = _interval(values.get("sensitivity_ci"), tp,
                                         tp + fn if counted else None)
        spec_ci, spec_source = _interval(values.get("specificity_ci"), tn,
                                         tn + fp if counted else None)
        roc = values.get("roc")
        rows.append({
            "label": label, "sensitivity": _rate(values.get("sensitivity")),
            "specificity": _rate(values.get("specificity")),
            "sensitivity_ci": sens_ci, "specificity_ci": spec_ci,
            "interval_source": sens_source if sens_source == spec_source
            else f"sensitivity {sens_source}, specificity {spec_source}",
            "counts": {"tp": tp, "fn": fn, "tn": tn, "fp": fp} if counted else None,
            "auc": _rate(values.get("auc")), "threshold": _rate(values.get("threshold")),
            "roc": roc if isinstance(roc, dict) and roc.get("fpr") and roc.get("tpr")
            else None})
    return rows


def _card(version: ModelVersion) -> tuple[ModelCard | None, str | None]:
    try:
        return ModelCard.load(Path(version.path), verify_weights=False), None
    except (CardError, OSError, TypeError, ValueError) as exc:
        return None, str(exc)


def _card_figures(card: ModelCard) -> list[dict[str, Any]]:
    """The per-finding figures a card records (no intervals or counts are kept there)."""
    out = []
    for name in sorted(card.metrics):
        entry = card.metrics[name]
        values = entry.get("values") if isinstance(entry, dict) else None
        if isinstance(values, dict) and isinstance(values.get("per_finding"), dict):
            dataset = entry.get("dataset") if isinstance(entry.get("dataset"), dict) else {}
            out.append({"name": name, "images": dataset.get("images"),
                        "fingerprint": dataset.get("fingerprint"),
                        "rows": finding_rows(values["per_finding"])})
    return out


def _production(session: Session, version: ModelVersion, labels: tuple[str, ...]
                ) -> list[dict[str, Any]]:
    reference = held_out_figures(version)
    out = []
    for row in production_figures(session, labels, WINDOWS_DAYS):
        if version.id not in row["model_version_ids"]:
            continue
        out.append({"window_days": row["window_days"], "studies": row["studies"],
                    "findings": [{"label": label, **figures,
                                  "test_set": reference.get(label, {})}
                                 for label, figures in row["per_finding"].items()]})
    return out


def version_detail(session: Session, version_id: int) -> dict[str, Any] | None:
    """Everything the version page shows, or None for an unknown id."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        return None
    figures = _figures(version)
    verdict, failures = verdict_of(version)
    parent = session.get(ModelVersion, version.parent_id) if version.parent_id else None
    snapshot = session.get(DatasetSnapshot, version.snapshot_id) if version.snapshot_id \
        else None
    card, card_problem = _card(version)
    candidate = figures.get("candidate") if isinstance(figures.get("candidate"), dict) else {}
    judged_against = figures.get("active") if isinstance(figures.get("active"), dict) else {}
    rows = finding_rows(candidate.get("per_finding") or {})
    against = {r["label"]: r for r in finding_rows(judged_against.get("per_finding") or {})}
    for row in rows:
        other = against.get(row["label"])
        row["against"] = other
        row["roc_svg"] = roc_svg(row["label"], row, other) if row["roc"] else None
    labels = (card.labels if card is not None
              else tuple(r["label"] for r in rows) or DEFAULT_LABELS)
    key = f"{version.name} {version.version}"
    alerts = list(session.scalars(
        select(AuditEvent).where(AuditEvent.event_type == ALERT_EVENT_TYPE,
                                 AuditEvent.message.startswith(f"{key}:", autoescape=True))
        .order_by(AuditEvent.id.desc()).limit(HISTORY_SHOWN)))
    # "cxr-effdet 1.0.1" is inside "cxr-effdet 1.0.10": LIKE narrows, the pattern decides.
    named = re.compile(re.escape(key) + r"(?![\w.+-])")
    history = [e for e in session.scalars(
        select(AuditEvent).where(AuditEvent.event_type.in_(MODEL_EVENTS),
                                 AuditEvent.message.contains(key, autoescape=True))
        .order_by(AuditEvent.id.desc()).limit(HISTORY_SHOWN * 10))
        if named.search(e.message)][:HISTORY_SHOWN]
    active = active_version(session)
    return {
        "version": {
            "id": version.id, "name": key, "state": str(version.state), "path": version.path,
            "weights_sha256": version.weights_sha256, "created_at": version.created_at,
            "activated_at": version.activated_at, "retired_at": version.retired_at,
            "parent_id": version.parent_id, "parent": _name(parent)},
        "active": {"id": active.id, "name": _name(active)} if active else None,
        "snapshot": {"id": snapshot.id, "fingerprint": snapshot.fingerprint,
                     "created_at": snapshot.created_at} if snapshot else None,
        "card": {"training_data_fingerprint": card.training_data_fingerprint,
                 "parent_version": card.parent_version, "code_version": card.code_version,
                 "image_size": card.image_size, "thresholds": card.thresholds,
                 "figures": _card_figures(card)} if card else None,
        "card_problem": card_problem,
        "verdict": verdict, "failures": failures,
        # GateResult.text(): a verdict line, then "- " and one check per line.
        "gate_report": [line.removeprefix("- ") for line in
                        (version.gate_report or "").splitlines()[1:] if line.strip()],
        "test_images": figures.get("test_images"), "map50": _rate(candidate.get("map50")),
        "rows": rows, "any_curve": any(r["roc"] for r in rows),
        "any_auc": any(r["auc"] is not None for r in rows),
        "production": _production(session, version, labels),
        "alerts": [{"at": e.occurred_at, "message": e.message} for e in alerts],
        "history": [{"at": e.occurred_at, "type": e.event_type, "outcome": e.outcome,
                     "user": e.user_name, "message": e.message} for e in history],
        "shown": HISTORY_SHOWN,
    }


def roc_svg(label: str, row: dict[str, Any], against: dict[str, Any] | None,
            size: int = 240) -> str:
    """The stored ROC curve of one finding as inline SVG (no script, no chart library).

    The curve of the model it was judged against is drawn dashed when stored, and the
    operating point at the card's threshold as a dot. The label, which comes from the
    database, is escaped; every other value is a number formatted here.
    """
    pad, top = 34, 8
    plot = size - pad - top

    def xy(fpr: float, tpr: float) -> str:
        return f"{pad + fpr * plot:.1f},{top + (1 - tpr) * plot:.1f}"

    def line(roc: dict[str, list], colour: str, dashed: bool) -> str:
        points = " ".join(xy(float(x), float(y))
                          for x, y in zip(roc["fpr"], roc["tpr"], strict=False))
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        return (f'<polyline points="{points}" fill="none" stroke="{colour}" '
                f'stroke-width="2"{dash}/>')

    def auc(value: float | None) -> str:
        return "AUC not stored" if value is None else f"AUC {value:.3f}"

    name = html.escape(label)
    title = f"ROC of {name} on the locked test set: this version {auc(row['auc'])}"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
             f'viewBox="0 0 {size} {size}" role="img" class="chart roc">',
             f"<title>{title}</title>",
             f'<rect x="{pad}" y="{top}" width="{plot}" height="{plot}" fill="none" '
             f'stroke="#888"/>',
             f'<line x1="{pad}" y1="{top + plot}" x2="{pad + plot}" y2="{top}" '
             f'stroke="#bbb" stroke-dasharray="2 3"/>']
    for tick in (0, 0.5, 1):
        x, y = pad + tick * plot, top + (1 - tick) * plot
        parts.append(f'<text x="{x:.1f}" y="{top + plot + 12}" font-size="9" '
                     f'text-anchor="middle">{tick:g}</text>')
        parts.append(f'<text x="{pad - 4}" y="{y + 3:.1f}" font-size="9" '
                     f'text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{pad + plot / 2:.1f}" y="{size - 4}" font-size="10" '
                 f'text-anchor="middle">1 - specificity</text>')
    parts.append(f'<text x="10" y="{top + plot / 2:.1f}" font-size="10" text-anchor="middle" '
                 f'transform="rotate(-90 10 {top + plot / 2:.1f})">sensitivity</text>')
    if against is not None and against.get("roc"):
        parts.append(line(against["roc"], "#999", True))
    parts.append(line(row["roc"], "#2b6cb0", False))
    if row["sensitivity"] is not None and row["specificity"] is not None:
        x, y = xy(1 - row["specificity"], row["sensitivity"]).split(",")
        parts.append(f'<circle cx="{x}" cy="{y}" r="3.5" fill="#a00"><title>operating point: '
                     f'sensitivity {row["sensitivity"]:.3f}, specificity '
                     f'{row["specificity"]:.3f}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Plan:
    """What a confirmed action will do, in words, and what must still hold to do it."""

    title: str
    steps: list[str]
    action: str  # the form's URL
    fields: dict[str, str]  # hidden fields carried to the confirming POST
    back: str


def promotion_plan(session: Session, version_id: int, reason: str, override: bool) -> Plan:
    """The confirmation page of promoting ``version_id``; RegistryError where refused now.

    A candidate that failed the gate is refused here already unless ``override`` is
    ticked, so the admin learns it before confirming anything.
    """
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise LookupError(version_id)
    if version.state == ModelState.ACTIVE:
        raise RegistryError(f"{_name(version)} is already the active model")
    passed, failures = gate_verdict(version)
    needs_override = version.state == ModelState.CANDIDATE and not passed
    if needs_override and not override:
        raise RegistryError(f"{_name(version)} did not pass the promotion gate "
                            f"({'; '.join(failures)}). Nothing changed. To promote it anyway, "
                            "tick the override; your reason is then recorded as the override "
                            "reason.")
    active = active_version(session)
    steps = [f"{_name(version)} becomes the active model.",
             f"{_name(active)} is retired (a rollback can restore it)." if active
             else "No model is active now.",
             "Workers switch to it within seconds, without a restart; studies already "
             "analysed keep their results."]
    if needs_override:
        steps.append("The promotion gate is OVERRIDDEN (failed checks: "
                     f"{'; '.join(failures)}); your reason is recorded as the override reason.")
    steps.append(f'The audit trail records your name and the reason: "{reason}".')
    fields = {"reason": reason, "expected_active": str(active.id) if active else ""}
    if needs_override:
        fields["override"] = "yes"
    return Plan(f"Promote {_name(version)}?", steps, f"/console/models/{version.id}/promote",
                fields, f"/console/models/{version.id}")


def rollback_plan(session: Session, reason: str) -> Plan:
    current, previous = rollback_target(session)
    return Plan(f"Roll back to {_name(previous)}?", [
        f"{_name(previous)} becomes the active model again.",
        f"{_name(current)} is retired.",
        "Workers switch to it within seconds, without a restart; studies already analysed "
        "keep their results.",
        f'The audit trail records your name and the reason: "{reason}".'],
        "/console/models/rollback",
        {"reason": reason, "expected_current": str(current.id),
         "expected_restored": str(previous.id)}, "/console/models")


@contextmanager
def _one_change() -> Iterator[None]:
    """Two admins confirming at the same moment: the database keeps one active version
    (a unique index), and the one refused is told, not shown a traceback."""
    try:
        yield
    except IntegrityError:
        raise Changed("Another change to the registry was made at the same moment. Nothing "
                      "changed; look again.") from None


def confirm_promotion(db: Database, version_id: int, expected_active: str, reason: str,
                      override: bool, actor: str, address: str | None) -> str:
    """Promote, if the active model is still the one the confirmation page named."""
    with _one_change(), db.session() as session:
        active = active_version(session)
        if (str(active.id) if active else "") != expected_active:
            raise Changed(f"The active model changed since you were asked (it is now "
                          f"{_name(active) or 'none'}). Nothing changed; look again.")
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise LookupError(version_id)
        needs_override = version.state == ModelState.CANDIDATE and not gate_verdict(version)[0]
        why = ("promoted over the promotion gate (console)" if needs_override and override
               else f"{reason} (console)")
        promote(session, version_id, why, override_reason=reason if override else None,
                user_name=actor, peer_address=address)
        return _name(version) or ""


def confirm_rollback(db: Database, expected_current: str, expected_restored: str, reason: str,
                     actor: str, address: str | None) -> str:
    """Roll back, if it still restores what the confirmation page said it would."""
    with _one_change(), db.session() as session:
        current, previous = rollback_target(session)
        if (str(current.id), str(previous.id)) != (expected_current, expected_restored):
            raise Changed(f"The registry changed since you were asked (a rollback would now "
                          f"restore {_name(previous)} and retire {_name(current)}). Nothing "
                          "changed; look again.")
        return _name(rollback(session, f"{reason} (console)", user_name=actor,
                              peer_address=address)) or ""


def _reason(form: Any) -> str | None:  # noqa: ANN401 - Starlette FormData
    """The reason given, or None when it is missing (the caller answers 400)."""
    reason = " ".join(str(form.get("reason", "")).split())
    return reason or None


def model_routes(accounts_: Accounts, templates: Jinja2Templates) -> list[Route]:
    db = accounts_.db

    def listing() -> dict[str, Any]:
        with db.session() as session:
            try:
                current, previous = rollback_target(session)
                target = {"current": _name(current), "previous": _name(previous)}
            except RegistryError:
                target = None
            return {"rows": version_rows(session), "rollback": target}

    @require(UserRole.VIEWER, accounts_, templates)
    async def models(request: Request) -> Response:
        user = request.state.user
        context = await run_in_threadpool(listing)
        return templates.TemplateResponse(request, "models.html", {
            "user": user, "csrf_token": user.csrf_token, "UserRole": UserRole,
            "notice": request.query_params.get("notice"), **context})

    def detail(version_id: int) -> dict[str, Any] | None:
        with db.session() as session:
            return version_detail(session, version_id)

    @require(UserRole.VIEWER, accounts_, templates)
    async def model(request: Request) -> Response:
        user = request.state.user
        context = await run_in_threadpool(detail, request.path_params["version_id"])
        if context is None:
            return message_page(templates, request, 404, "No such model version",
                                "No model version with this id is registered.", user)
        return templates.TemplateResponse(request, "model.html", {
            "user": user, "csrf_token": user.csrf_token, "UserRole": UserRole,
            "notice": request.query_params.get("notice"), **context})

    def refused(request: Request, title: str, exc: Exception) -> Response:
        if isinstance(exc, LookupError):
            return message_page(templates, request, 404, "No such model version",
                                "No model version with this id is registered; nothing "
                                "changed.", request.state.user)
        return message_page(templates, request, 409, title, str(exc), request.state.user)

    def missing_reason(request: Request, title: str, form: Any) -> Response | None:  # noqa: ANN401
        reason = _reason(form)
        if reason is None:
            return message_page(templates, request, 400, title,
                                "A reason is required (the reason field is empty); nothing "
                                "changed.", request.state.user)
        if len(reason) > REASON_MAX:
            return message_page(templates, request, 400, title,
                                f"The reason is longer than {REASON_MAX} characters; nothing "
                                "changed.", request.state.user)
        return None

    def confirmation(request: Request, plan: Plan) -> Response:
        user = request.state.user
        return templates.TemplateResponse(request, "model_confirm.html", {
            "user": user, "csrf_token": user.csrf_token, "plan": plan})

    @require(UserRole.ADMIN, accounts_, templates)
    async def promote_version(request: Request) -> Response:
        user = request.state.user
        version_id = request.path_params["version_id"]
        form = await request.form()
        if (answer := missing_reason(request, "Not promoted", form)) is not None:
            return answer
        reason, override = _reason(form) or "", form.get("override") == "yes"
        try:
            if not form.get("confirm"):
                def plan() -> Plan:
                    with db.session() as session:
                        return promotion_plan(session, version_id, reason, override)
                return confirmation(request, await run_in_threadpool(plan))
            name = await run_in_threadpool(
                confirm_promotion, db, version_id, str(form.get("expected_active", "")),
                reason, override, user.name, client_address(request))
        except (RegistryError, LookupError) as exc:
            return refused(request, "Not promoted", exc)
        return RedirectResponse(f"/console/models/{version_id}?"
                                + urlencode({"notice": f"{name} is the active model"}),
                                status_code=303)

    @require(UserRole.ADMIN, accounts_, templates)
    async def roll_back(request: Request) -> Response:
        user = request.state.user
        form = await request.form()
        if (answer := missing_reason(request, "Not rolled back", form)) is not None:
            return answer
        reason = _reason(form) or ""
        try:
            if not form.get("confirm"):
                def plan() -> Plan:
                    with db.session() as session:
                        return rollback_plan(session, reason)
                return confirmation(request, await run_in_threadpool(plan))
            name = await run_in_threadpool(
                confirm_rollback, db, str(form.get("expected_current", "")),
                str(form.get("expected_restored", "")), reason, user.name,
                client_address(request))
        except RegistryError as exc:
            return refused(request, "Not rolled back", exc)
        return RedirectResponse("/console/models?" + urlencode(
            {"notice": f"{name} is the active model again"}), status_code=303)

    return [
        Route("/console/models", models, methods=["GET"]),
        Route("/console/models/rollback", roll_back, methods=["POST"]),
        Route("/console/models/{version_id:int}", model, methods=["GET"]),
        Route("/console/models/{version_id:int}/promote", promote_version, methods=["POST"]),
    ]
