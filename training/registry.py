"""The model registry: versions with their cards, files, test-set figures and lineage.

States are candidate, active and retired, and exactly one version is active (a partial
unique index makes the database refuse a second). A candidate becomes active only through
the promotion gate (:func:`gate`): it reports every finding the active model reports, is
non-inferior to it on the locked test set for each, and its weights reproduce their golden
outputs. :func:`promote` itself holds the gate, so no caller (the CLI, a console, a script)
can activate a refused or unjudged candidate except by an explicit override that names its
reason and is audited with the checks it overrides. Rollback makes the previously active
version active again at once. Workers follow the active version without a restart
(node.worker).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from model.card import ModelCard
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.models import ModelState, ModelVersion, utcnow


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


class PromotionRefused(RegistryError):
    """A candidate that did not pass the promotion gate, promoted without an override."""


def register(session: Session, model_dir: Path, *, state: ModelState = ModelState.CANDIDATE,
             parent: ModelVersion | None = None, snapshot_id: int | None = None,
             test_metrics: dict | None = None) -> ModelVersion:
    """Add the model in ``model_dir`` (its card is validated, weights checked)."""
    model_dir = Path(model_dir).resolve()
    card = ModelCard.load(model_dir)
    refuse_registered(session, card)
    version = ModelVersion(name=card.name, version=card.version, state=state,
                           path=str(model_dir), weights_sha256=card.weights_sha256,
                           parent_id=parent.id if parent else None, snapshot_id=snapshot_id,
                           test_metrics=json.dumps(test_metrics) if test_metrics else None,
                           activated_at=utcnow() if state == ModelState.ACTIVE else None)
    session.add(version)
    session.flush()
    return version


def refuse_registered(session: Session, card: ModelCard) -> None:
    """Raise :class:`RegistryError` if ``card``'s name and version are registered already."""
    existing = session.scalar(select(ModelVersion).where(
        ModelVersion.name == card.name, ModelVersion.version == card.version))
    if existing is not None:
        raise RegistryError(f"{card.name} {card.version} is already registered "
                            f"(id {existing.id}, {existing.state})")


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.state == ModelState.ACTIVE))


def ensure_active(session: Session, default_model_dir: Path) -> ModelVersion:
    """The active version; on a new installation, ``default_model_dir`` becomes it."""
    active = active_version(session)
    if active is not None:
        return active
    card = ModelCard.load(default_model_dir)
    known = session.scalar(select(ModelVersion).where(
        ModelVersion.name == card.name, ModelVersion.version == card.version))
    if known is not None:
        _activate(session, known)
        return known
    version = register(session, default_model_dir, state=ModelState.ACTIVE)
    audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "model-activated", Outcome.SUCCESS,
                 f"{card.name} {card.version} from {version.path} is the first active model")
    return version


def _activate(session: Session, version: ModelVersion) -> ModelVersion | None:
    """Retire the active version (if another) and make ``version`` active; the old one."""
    previous = active_version(session)
    if previous is not None and previous.id != version.id:
        previous.state = ModelState.RETIRED
        previous.retired_at = utcnow()
        session.flush()  # the unique "one active" index sees the retirement first
    version.state = ModelState.ACTIVE
    version.activated_at = utcnow()
    version.retired_at = None
    session.flush()
    return previous


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str]  # one line per finding and check, pass or fail
    failures: list[str] = field(default_factory=list)  # the reasons that refused it

    def text(self) -> str:
        verdict = "passed" if self.passed else "refused"
        return f"promotion gate {verdict}:\n" + "\n".join(f"- {r}" for r in self.reasons)


def _figure(metrics: dict, label: str, name: str) -> float:
    value = metrics.get("per_finding", {}).get(label, {}).get(name)
    return math.nan if value is None else float(value)


def gate(candidate: dict[str, Any], active: dict[str, Any], margin: float,
         golden_problems: list[str]) -> GateResult:
    """Non-inferiority per finding on the same locked test set, and the golden check.

    ``candidate`` and ``active`` are evaluation reports of the two models on the same
    images (``{"per_finding": {label: {"sensitivity": …, "specificity": …}}}``). A finding
    of the active model that the candidate does not report at all is a failure (promoting
    it would silently stop that finding); a figure that cannot be measured on this test
    set (no positive or no negative image) is reported, not compared.
    """
    reasons, failures = [], []
    reported = candidate.get("per_finding", {})
    missing = sorted(set(active.get("per_finding", {})) - set(reported))
    if missing:
        failures.append(f"findings of the active model missing from the candidate: "
                        f"{', '.join(missing)}")
        reasons.append(failures[-1])
    for label in sorted(set(active.get("per_finding", {})) - set(missing)):
        for name in ("sensitivity", "specificity"):
            new, old = _figure(candidate, label, name), _figure(active, label, name)
            if math.isnan(old) or math.isnan(new):
                reasons.append(f"{label} {name}: not measurable on this test set")
                continue
            ok = new >= old - margin
            reasons.append(f"{label} {name}: {new:.3f} vs active {old:.3f} "
                           f"({'ok' if ok else f'lower by more than {margin}'})")
            if not ok:
                failures.append(reasons[-1])
    if golden_problems:
        failures.append("golden outputs not reproduced: " + "; ".join(golden_problems[:3]))
        reasons.append(failures[-1])
    else:
        reasons.append("golden outputs reproduced")
    return GateResult(not failures, reasons, failures)


def gate_verdict(version: ModelVersion) -> tuple[bool, list[str]]:
    """Whether ``version`` passed the gate when it was judged, and the checks it failed.

    A version registered without being judged (no test-set figures) has not passed.
    """
    try:
        figures = json.loads(version.test_metrics) if version.test_metrics else {}
    except json.JSONDecodeError:
        figures = {}
    if not isinstance(figures, dict) or "gate_passed" not in figures:
        return False, ["not judged on the locked test set (cxr-node models register)"]
    if figures["gate_passed"]:
        return True, []
    # Versions judged before the failed checks were kept say only that it refused them.
    return False, figures.get("gate_failures") or ["refused (see its gate report)"]


def gate_passed(version: ModelVersion) -> bool:
    return gate_verdict(version)[0]


def promote(session: Session, version_id: int, why: str, *,
            override_reason: str | None = None, user_name: str | None = None,
            peer_address: str | None = None) -> ModelVersion:
    """Make a version active; audited with ``why``, the person acting (``user_name``) and
    where they acted from (``peer_address``, a console's client).

    A candidate must have passed the promotion gate (a retired version was active before
    and may return). Otherwise :class:`PromotionRefused` is raised, unless an admin gives
    ``override_reason``: then it is activated and the audit row names the reason and the
    checks it failed.
    """
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise RegistryError(f"no model version with id {version_id}")
    if version.state == ModelState.ACTIVE:
        raise RegistryError(f"{version.name} {version.version} is already active")
    passed, failed = gate_verdict(version)
    override = (override_reason or "").strip()
    needs_gate = version.state == ModelState.CANDIDATE and not passed
    if needs_gate and not override:
        raise PromotionRefused(f"{version.name} {version.version} did not pass the promotion "
                               f"gate ({'; '.join(failed)}); an admin may override it with a "
                               "reason")
    previous = _activate(session, version)
    message = (f"{version.name} {version.version} active (was "
               f"{f'{previous.name} {previous.version}' if previous else 'none'}): {why}")
    if needs_gate:
        message += (f"; promotion gate OVERRIDDEN, reason: {override}; failed checks: "
                    f"{'; '.join(failed)}")
    audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "model-promoted",
                 Outcome.MINOR_FAILURE if needs_gate else Outcome.SUCCESS, message,
                 user_name=user_name, peer_address=peer_address)
    return version


def rollback_target(session: Session) -> tuple[ModelVersion, ModelVersion]:
    """The active version and the one a rollback would restore; RegistryError if none.

    The restored one is the version retired last among those that were ever active, so
    a console can say exactly what a rollback will do before anyone confirms it.
    """
    current = active_version(session)
    if current is None:
        raise RegistryError("no active model to roll back from")
    previous = session.scalar(
        select(ModelVersion).where(ModelVersion.state == ModelState.RETIRED,
                                   ModelVersion.activated_at.is_not(None))
        .order_by(ModelVersion.retired_at.desc(), ModelVersion.id.desc()).limit(1))
    if previous is None:
        raise RegistryError(f"{current.name} {current.version} has no previous active version")
    return current, previous


def rollback(session: Session, why: str | None = None, *, user_name: str | None = None,
             peer_address: str | None = None) -> ModelVersion:
    """Restore the version that was active before the current one; audited with ``why``,
    the person acting (``user_name``) and where from (``peer_address``)."""
    current, previous = rollback_target(session)
    _activate(session, previous)
    message = (f"{previous.name} {previous.version} active again; "
               f"{current.name} {current.version} retired")
    if why:
        message += f": {why}"
    audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "model-rolled-back",
                 Outcome.SUCCESS, message, user_name=user_name, peer_address=peer_address)
    return previous


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))
