"""The console's Models pages, read and used as an admin, an operator and a viewer would.

A real uvicorn on a free port and urllib with a cookie jar (tests/integration/console.py).
The registry's rows are put in the test's own SQLite database with ``test_metrics`` shaped
as :func:`training.retrain.judge` writes them, rather than training a model: what the pages
show is checked against those figures, and what a button did against the registry's state
and the audit trail.
"""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from model import BUNDLED_MODEL
from storage.audit import AuditEventId, Outcome, record
from storage.models import AuditEvent, DatasetSnapshot, ModelState, ModelVersion, utcnow
from tests.integration.console import Browser, Console, text_of
from tests.training.test_tracking import History
from training.metrics import roc_points, wilson_interval
from training.tracking import check_performance

PTX, NODULE = "Pneumothorax", "Nodule"
FINGERPRINT = "f1e2d3c4b5a6" + "0" * 52
REFUSAL = "Nodule sensitivity: 0.500 vs active 0.900 (lower by more than 0.05)"


def judged(sensitivity: float, tp: int, fn: int, tn: int, fp: int, *, auc: float | None,
           curve: bool = True, intervals: bool = True) -> dict:
    """One finding's figures as retrain.summary keeps them (older reports kept fewer)."""
    figures = {"sensitivity": sensitivity, "specificity": tn / (tn + fp),
               "tp": tp, "fn": fn, "tn": tn, "fp": fp, "threshold": 0.5}
    if intervals:
        figures |= {"sensitivity_ci": list(wilson_interval(tp, tp + fn)),
                    "specificity_ci": list(wilson_interval(tn, tn + fp))}
    if auc is not None:
        figures["auc"] = auc
    if curve:
        scores = [0.9] * tp + [0.2] * fn + [0.1] * tn + [0.7] * fp
        figures["roc"] = roc_points(scores, [1] * (tp + fn) + [0] * (tn + fp))
    return figures


def report(passed: bool, candidate: dict, active: dict, snapshot: int) -> dict:
    return {"snapshot": snapshot, "test_images": 40,
            "candidate": {"images": 40, "map50": 0.81, "per_finding": candidate},
            "active": {"images": 40, "map50": 0.78, "per_finding": active},
            "gate_passed": passed, "gate_failures": [] if passed else [REFUSAL]}


@pytest.fixture
def site(console):
    """The registry of :func:`add_registry`; an admin, an operator and a viewer."""
    ids = add_registry(console)
    for name, role in (("ada", "admin"), ("otto", "operator"), ("vic", "viewer")):
        console.add_user(name, role)
    return console, ids


def add_registry(console: Console) -> dict[str, int]:
    """Bundled 1.0.0 active, 2.0.0 passed the gate, 2.0.1 refused (an older report: counts
    but no intervals, no AUC, no curve); their ids by version."""
    now = utcnow()
    with console.db.session() as session:
        snapshot = DatasetSnapshot(fingerprint=FINGERPRINT, path="/snapshots/7", counts="{}")
        session.add(snapshot)
        session.flush()
        bundled = ModelVersion(name="cxr-effdet", version="1.0.0", state=ModelState.ACTIVE,
                               path=str(BUNDLED_MODEL), weights_sha256="a" * 64,
                               activated_at=now - timedelta(days=60),
                               created_at=now - timedelta(days=60))
        session.add(bundled)
        session.flush()
        active_figures = {PTX: judged(0.8, 16, 4, 18, 2, auc=0.88),
                          NODULE: judged(0.9, 18, 2, 17, 3, auc=0.91)}
        passed = ModelVersion(
            name="cxr-effdet", version="2.0.0", state=ModelState.CANDIDATE, path="/models/2.0.0",
            weights_sha256="b" * 64, parent_id=bundled.id, snapshot_id=snapshot.id,
            created_at=now - timedelta(days=1),
            test_metrics=json.dumps(report(True, {PTX: judged(0.9, 18, 2, 19, 1, auc=0.95),
                                                  NODULE: judged(0.9, 18, 2, 18, 2, auc=0.93)},
                                           active_figures, snapshot.id)),
            gate_report="promotion gate passed:\n- Nodule sensitivity: 0.900 vs active 0.900 "
                        "(ok)\n- golden outputs reproduced")
        refused = ModelVersion(
            name="cxr-effdet", version="2.0.1", state=ModelState.CANDIDATE, path="/models/2.0.1",
            weights_sha256="c" * 64, parent_id=bundled.id, snapshot_id=snapshot.id,
            created_at=now,
            test_metrics=json.dumps(report(False, {
                PTX: judged(0.85, 17, 3, 19, 1, auc=None, curve=False, intervals=False),
                NODULE: judged(0.5, 10, 10, 19, 1, auc=None, curve=False, intervals=False)},
                active_figures, snapshot.id)),
            gate_report=f"promotion gate refused:\n- {REFUSAL}\n- golden outputs reproduced")
        session.add_all([passed, refused])
        session.flush()
        return {"1.0.0": bundled.id, "2.0.0": passed.id, "2.0.1": refused.id}


def states(console: Console) -> dict[str, str]:
    with console.db.session() as session:
        return {v.version: str(v.state) for v in session.scalars(select(ModelVersion))}


def model_events(console: Console) -> list[AuditEvent]:
    with console.db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_type.in_(
            ["model-promoted", "model-rolled-back"])).order_by(AuditEvent.id)))


def hidden_fields(page: str) -> list[tuple[str, str]]:
    """The hidden fields of the confirmation form, as the browser would send them."""
    return [(html.unescape(name), html.unescape(value)) for name, value in re.findall(
        r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)]


def signed_in(console: Console, name: str, role: str) -> tuple[Browser, str]:
    browser = Browser(console.base)
    return browser, browser.logged_in_as(name, role)


def test_the_list_and_a_version_show_the_registry_and_its_figures(site):
    console, ids = site
    with console.db.session() as session:
        for version in ("2.0.0", "2.0.01"):  # the second must not show on 2.0.0's page
            record(session, AuditEventId.APPLICATION_ACTIVITY, "model-candidate",
                   Outcome.SUCCESS, f"cxr-effdet {version} judged on snapshot 1 (40 test "
                                    "images); promotion gate passed")
    viewer, _ = signed_in(console, "vic", "viewer")

    listing = viewer.get("/console/models")

    assert listing.status == 200
    assert 'href="/console/models" aria-current="page">Models' in listing.body
    row = text_of(listing.body, "model-list")
    assert "cxr-effdet 2.0.1" in row and "cxr-effdet 1.0.0" in row
    assert "snapshot 1 f1e2d3c4b5a60000" in row  # the training data's fingerprint
    assert "40 images" in row and "refused" in row and "passed" in row and "not judged" in row
    assert "A rollback makes" not in listing.body  # nothing was active before 1.0.0
    assert "An admin can roll back" not in listing.body

    page = viewer.get(f"/console/models/{ids['2.0.0']}")

    assert page.status == 200
    assert text_of(page.body, "state") == "candidate"
    assert text_of(page.body, "parent") == "cxr-effdet 1.0.0"
    assert FINGERPRINT in text_of(page.body, "snapshot")
    assert text_of(page.body, "verdict") == "Verdict: passed"
    assert "<li>Nodule sensitivity: 0.900 vs active 0.900 (ok)</li>" in page.body
    figures = text_of(page.body, "test-figures")
    low, high = wilson_interval(18, 20)
    assert f"Pneumothorax 0.900 ({low:.3f}–{high:.3f})" in figures
    assert "18 / 2 / 19 / 1" in figures and "0.950" in figures  # counts, AUC
    assert "0.800 / 0.900" in figures  # the active model it was judged against
    assert page.body.count('class="chart roc"') == 2  # one ROC curve per finding
    assert "ROC of Pneumothorax on the locked test set: this version AUC 0.950" in page.body
    assert 'id="promote"' not in page.body and "An admin can promote" in page.body
    history = text_of(page.body, "history")
    assert "cxr-effdet 2.0.0 judged on snapshot 1" in history and "2.0.01" not in history


def test_an_older_report_gets_intervals_from_its_counts_and_no_invented_curve(site):
    console, ids = site
    viewer, _ = signed_in(console, "vic", "viewer")

    page = viewer.get(f"/console/models/{ids['2.0.1']}")

    verdict = text_of(page.body, "verdict")
    assert verdict.startswith("Verdict: refused") and REFUSAL in verdict
    low, high = wilson_interval(10, 20)
    figures = text_of(page.body, "test-figures")
    assert f"Nodule 0.500 ({low:.3f}–{high:.3f})" in figures
    assert "not stored" in figures  # AUC
    assert "Intervals: computed from the stored counts" in page.body
    assert 'class="chart roc"' not in page.body
    assert "No ROC curve is stored for this version" in text_of(page.body, "roc")


def test_the_bundled_version_shows_its_card_figures_and_production_alerts(site):
    console, ids = site
    now = utcnow()
    with console.db.session() as session:
        history = History(session)
        for index in range(10):  # 1.0.0 calls 2 of 10 pneumothoraces, and no normal study
            history.case([PTX], [PTX] if index < 2 else [], version="1.0.0",
                         labelled_at=now - timedelta(days=3))
            history.case([], [], version="1.0.0", labelled_at=now - timedelta(days=3))
    [alert] = check_performance(console.db, [PTX], margin=0.1, min_cases=10)
    viewer, _ = signed_in(console, "vic", "viewer")

    page = viewer.get(f"/console/models/{ids['1.0.0']}")

    assert "not judged on a locked test set here" in text_of(page.body, "test-set")
    assert "Figures from its model card: held_out_synthetic (400 images)" in page.body
    production = text_of(page.body, "production-30")
    low, high = wilson_interval(2, 10)
    assert f"Pneumothorax 10 / 10 0.200 ({low:.3f}–{high:.3f}) 1.000 (0.722–1.000)" in \
        production
    assert "1.000 / 0.994" in production  # its test-set figures (from the card)
    assert html.escape(alert) in text_of(page.body, "alerts")
    other = viewer.get(f"/console/models/{ids['2.0.0']}")
    assert "No labelled study read by this version yet" in other.body
    assert 'id="alerts">None' in other.body


def test_a_viewer_and_an_operator_cannot_promote_or_roll_back(site):
    console, ids = site
    for name, role in (("vic", "viewer"), ("otto", "operator")):
        browser, csrf = signed_in(console, name, role)
        promoted = browser.post(f"/console/models/{ids['2.0.0']}/promote", {
            "csrf_token": csrf, "reason": "better", "confirm": "yes",
            "expected_active": str(ids["1.0.0"])})
        rolled = browser.post("/console/models/rollback", {
            "csrf_token": csrf, "reason": "worse", "confirm": "yes"})
        assert (promoted.status, rolled.status) == (403, 403)
        assert "This needs the admin role" in promoted.body
    assert states(console)["1.0.0"] == "active" and model_events(console) == []


def test_a_promotion_needs_a_reason_then_a_confirmation(site):
    console, ids = site
    admin, csrf = signed_in(console, "ada", "admin")
    url = f"/console/models/{ids['2.0.0']}/promote"
    assert 'id="promote"' in admin.get(f"/console/models/{ids['2.0.0']}").body
    assert 'name="override"' not in admin.get(f"/console/models/{ids['2.0.0']}").body

    unsigned = admin.post(url, {"reason": "better Nodule sensitivity"})
    empty = admin.post(url, {"csrf_token": csrf, "reason": "  "})
    asked = admin.post(url, {"csrf_token": csrf, "reason": "better Nodule sensitivity"})

    assert unsigned.status == 403 and "security token" in unsigned.body
    assert empty.status == 400 and "A reason is required" in empty.body
    assert asked.status == 200
    plan = " ".join(re.sub(r"<[^>]+>", " ", asked.body).split())
    assert ("cxr-effdet 2.0.0 becomes the active model. cxr-effdet 1.0.0 is retired (a "
            "rollback can restore it). Workers switch to it within seconds") in plan
    assert "Nothing has changed yet" in plan
    assert states(console)["2.0.0"] == "candidate" and model_events(console) == []

    done = admin.post(url, hidden_fields(asked.body))

    assert done.status == 303 and done.location.startswith(f"/console/models/{ids['2.0.0']}?")
    assert states(console) == {"1.0.0": "retired", "2.0.0": "active", "2.0.1": "candidate"}
    [event] = model_events(console)
    assert (event.event_type, event.event_id, event.outcome) == ("model-promoted", "110100", 0)
    assert event.user_name == "ada" and event.peer_address == "127.0.0.1"
    assert "cxr-effdet 2.0.0 active (was cxr-effdet 1.0.0): better Nodule sensitivity" in \
        event.message
    page = admin.get(done.location)
    assert "cxr-effdet 2.0.0 is the active model" in page.body
    assert "ada" in text_of(page.body, "history")


def test_a_refused_candidate_is_promoted_only_with_the_override(site):
    console, ids = site
    admin, csrf = signed_in(console, "ada", "admin")
    url = f"/console/models/{ids['2.0.1']}/promote"
    assert 'name="override"' in admin.get(f"/console/models/{ids['2.0.1']}").body
    reason = 'physicist accepts "lower" Nodule sensitivity for a week'

    refused = admin.post(url, {"csrf_token": csrf, "reason": reason})
    forced = admin.post(url, {"csrf_token": csrf, "reason": reason, "confirm": "yes",
                              "expected_active": str(ids["1.0.0"])})  # no override ticked

    for answer in (refused, forced):
        assert answer.status == 409 and "Traceback" not in answer.body
        assert "did not pass the promotion gate" in html.unescape(answer.body)
    assert states(console)["2.0.1"] == "candidate" and model_events(console) == []

    asked = admin.post(url, {"csrf_token": csrf, "reason": reason, "override": "yes"})
    assert asked.status == 200
    assert "The promotion gate is OVERRIDDEN (failed checks: " + REFUSAL in \
        html.unescape(asked.body)
    done = admin.post(url, hidden_fields(asked.body))

    assert done.status == 303
    assert states(console)["2.0.1"] == "active"
    [event] = model_events(console)
    assert event.user_name == "ada" and event.outcome == 4  # minor failure: it stands out
    assert f"promotion gate OVERRIDDEN, reason: {reason}; failed checks: {REFUSAL}" in \
        event.message


def test_a_rollback_needs_a_reason_then_a_confirmation(site):
    console, ids = site
    admin, csrf = signed_in(console, "ada", "admin")
    nothing = admin.post("/console/models/rollback", {"csrf_token": csrf, "reason": "why not"})
    assert nothing.status == 409 and "has no previous active version" in nothing.body
    promotion = admin.post(f"/console/models/{ids['2.0.0']}/promote",
                           {"csrf_token": csrf, "reason": "better"})
    assert admin.post(f"/console/models/{ids['2.0.0']}/promote",
                      hidden_fields(promotion.body)).status == 303
    listing = admin.get("/console/models")
    assert ("A rollback makes cxr-effdet 1.0.0 (the version retired last) active again and "
            "retires cxr-effdet 2.0.0") in text_of(listing.body, "rollback-target")

    empty = admin.post("/console/models/rollback", {"csrf_token": csrf, "reason": ""})
    asked = admin.post("/console/models/rollback",
                       {"csrf_token": csrf, "reason": "false positives on the new scanner"})

    assert empty.status == 400 and "A reason is required" in empty.body
    plan = " ".join(re.sub(r"<[^>]+>", " ", asked.body).split())
    assert ("cxr-effdet 1.0.0 becomes the active model again. cxr-effdet 2.0.0 is retired. "
            "Workers switch to it within seconds") in plan
    assert states(console)["2.0.0"] == "active"

    done = admin.post("/console/models/rollback", hidden_fields(asked.body))

    assert done.status == 303
    assert states(console) == {"1.0.0": "active", "2.0.0": "retired", "2.0.1": "candidate"}
    event = model_events(console)[-1]
    assert (event.event_type, event.user_name) == ("model-rolled-back", "ada")
    assert event.message == ("cxr-effdet 1.0.0 active again; cxr-effdet 2.0.0 retired: false "
                             "positives on the new scanner (console)")


def test_a_confirmation_made_stale_by_another_change_changes_nothing(site):
    console, ids = site
    admin, csrf = signed_in(console, "ada", "admin")
    asked = admin.post(f"/console/models/{ids['2.0.1']}/promote",
                       {"csrf_token": csrf, "reason": "accepted", "override": "yes"})
    other, other_csrf = signed_in(console, "ada", "admin")  # a second tab, or admin
    first = other.post(f"/console/models/{ids['2.0.0']}/promote",
                       {"csrf_token": other_csrf, "reason": "better"})
    assert other.post(f"/console/models/{ids['2.0.0']}/promote",
                      hidden_fields(first.body)).status == 303

    stale = admin.post(f"/console/models/{ids['2.0.1']}/promote", hidden_fields(asked.body))
    again = admin.post(f"/console/models/{ids['2.0.0']}/promote",
                       {"csrf_token": csrf, "reason": "twice"})
    unknown = admin.post("/console/models/9999/promote", {"csrf_token": csrf, "reason": "x"})

    assert stale.status == 409 and "The active model changed since you were asked" in stale.body
    assert again.status == 409 and "already the active model" in again.body
    assert unknown.status == 404 and admin.get("/console/models/9999").status == 404
    assert states(console) == {"1.0.0": "retired", "2.0.0": "active", "2.0.1": "candidate"}
    assert len(model_events(console)) == 1
