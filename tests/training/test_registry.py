"""The promotion gate guards itself: promote() refuses what the gate refused, for any caller.

The CLI, a console or a script all reach ``training.registry.promote``; a candidate that
failed (or never met) the gate becomes active only through an admin's override, and the
audit trail names the reason and the checks it overrode.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from sqlalchemy import select

from config.settings import Settings
from model import BUNDLED_MODEL
from storage.db import Database
from storage.models import AuditEvent, ModelState, ModelVersion
from tests.peers import CXR_NODE, REPO
from training.registry import (
    PromotionRefused,
    RegistryError,
    active_version,
    ensure_active,
    gate,
    promote,
    register,
    rollback,
    rollback_target,
)

PASSING = {"gate_passed": True, "gate_failures": []}
REFUSED = {"gate_passed": False,
           "gate_failures": ["Nodule sensitivity: 0.500 vs active 0.900 (lower by more than 0.05)"]}


def report(**figures: tuple[float, float]) -> dict:
    return {"per_finding": {label: {"sensitivity": sens, "specificity": spec}
                            for label, (sens, spec) in figures.items()}}


def copy_of_bundled(tmp_path, version: str):
    folder = tmp_path / version
    shutil.copytree(BUNDLED_MODEL, folder)
    card = json.loads((folder / "card.json").read_text())
    card["version"] = version
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def promotions(session) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(
        AuditEvent.event_type == "model-promoted")))


def test_a_candidate_lacking_a_finding_of_the_active_model_fails_naming_it():
    active = report(Mass=(0.9, 0.9), Nodule=(0.9, 0.9), Pneumothorax=(0.9, 0.9))
    candidate = report(Mass=(0.95, 0.95))

    result = gate(candidate, active, 0.05, [])

    assert not result.passed
    assert result.failures == ["findings of the active model missing from the candidate: "
                               "Nodule, Pneumothorax"]
    assert "missing from the candidate: Nodule, Pneumothorax" in result.text()


def test_a_figure_the_test_set_cannot_measure_is_reported_not_failed():
    active = report(Mass=(0.9, 0.9), Nodule=(float("nan"), 0.9))
    candidate = report(Mass=(0.9, 0.9), Nodule=(float("nan"), 0.9))

    result = gate(candidate, active, 0.05, [])

    assert result.passed, result.text()
    assert "Nodule sensitivity: not measurable on this test set" in result.reasons


def test_promote_refuses_a_candidate_the_gate_refused(tmp_path, database):
    with database.session() as session:
        bundled = ensure_active(session, BUNDLED_MODEL)
        refused = register(session, copy_of_bundled(tmp_path, "9.0.0-refused"),
                           test_metrics=REFUSED)
        unjudged = register(session, copy_of_bundled(tmp_path, "9.0.1-unjudged"))
        ids = bundled.id, refused.id, unjudged.id

    with pytest.raises(PromotionRefused, match=r"9\.0\.0-refused did not pass the promotion "
                                               r"gate \(Nodule sensitivity: 0\.500"):
        with database.session() as session:
            promote(session, ids[1], "a script")
    with pytest.raises(PromotionRefused, match="not judged on the locked test set"):
        with database.session() as session:
            promote(session, ids[2], "a console", override_reason="   ")

    with database.session() as session:
        assert active_version(session).id == ids[0]
        assert promotions(session) == []


def test_an_admin_override_activates_a_refused_candidate_and_is_audited(tmp_path, database):
    with database.session() as session:
        ensure_active(session, BUNDLED_MODEL)
        refused = register(session, copy_of_bundled(tmp_path, "9.0.0-refused"),
                           test_metrics=REFUSED)
        refused_id = refused.id

    with database.session() as session:
        promote(session, refused_id, "promoted by alice",
                override_reason="site physicist accepts lower Nodule sensitivity for a week")

    with database.session() as session:
        assert active_version(session).id == refused_id
        [event] = promotions(session)
    assert "promotion gate OVERRIDDEN, reason: site physicist accepts lower Nodule " \
           "sensitivity for a week" in event.message
    assert "failed checks: Nodule sensitivity: 0.500 vs active 0.900" in event.message
    assert "promoted by alice" in event.message
    assert event.outcome != 0  # not a plain success: it stands out in the audit trail


def test_a_passed_candidate_and_a_retired_version_are_promoted_without_override(tmp_path,
                                                                              database):
    with database.session() as session:
        bundled = ensure_active(session, BUNDLED_MODEL)
        passed = register(session, copy_of_bundled(tmp_path, "9.0.2-passed"),
                          test_metrics=PASSING)
        ids = bundled.id, passed.id

    with database.session() as session:
        promote(session, ids[1], "gate passed")
    with database.session() as session:
        assert session.get(ModelVersion, ids[0]).state == ModelState.RETIRED
        promote(session, ids[0], "back to the bundled model")  # it was active before
    with database.session() as session:
        assert active_version(session).id == ids[0]
        assert [e.outcome for e in promotions(session)] == [0, 0]
        with pytest.raises(RegistryError, match="already active"):
            promote(session, ids[0], "again")


def test_promotion_and_rollback_name_the_person_and_the_reason(tmp_path, database):
    with database.session() as session:
        bundled = ensure_active(session, BUNDLED_MODEL)
        passed = register(session, copy_of_bundled(tmp_path, "9.0.2-passed"),
                          test_metrics=PASSING)
        ids = bundled.id, passed.id

    with database.session() as session:
        promote(session, ids[1], "better Nodule sensitivity", user_name="alice")
    with database.session() as session:
        current, restored = rollback_target(session)
        assert (current.id, restored.id) == (ids[1], ids[0])  # what a console announces
        assert rollback(session, "false positives on the new scanner",
                        user_name="bob").id == ids[0]
    with database.session() as session:
        [promoted] = promotions(session)
        [rolled_back] = session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "model-rolled-back")).all()
        assert active_version(session).id == ids[0]
    assert promoted.user_name == "alice" and "better Nodule sensitivity" in promoted.message
    assert rolled_back.user_name == "bob"
    assert rolled_back.message.endswith("9.0.2-passed retired: false positives on the new "
                                        "scanner")


def test_cli_promote_refuses_in_one_line_and_overrides_with_a_reason(tmp_path):
    config = tmp_path / "cxr-node.yaml"
    config.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}}))
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data")}})
    db = Database.connect(settings.storage.resolved_database_url())
    with db.session() as session:
        ensure_active(session, BUNDLED_MODEL)
        refused_id = register(session, copy_of_bundled(tmp_path, "9.0.0-refused"),
                              test_metrics=REFUSED).id

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CXR_NODE, "--config", str(config), "models", "promote", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    denied = cli(str(refused_id))
    overridden = cli(str(refused_id), "--override", "accepted by the site physicist")

    assert denied.returncode == 2
    assert denied.stderr.count("\n") == 1 and "Traceback" not in denied.stderr
    assert "9.0.0-refused did not pass the promotion gate (Nodule sensitivity" in denied.stderr
    assert "--override" in denied.stderr
    assert overridden.returncode == 0, overridden.stderr
    assert "9.0.0-refused is the active model" in overridden.stdout
    with db.session() as session:
        assert active_version(session).id == refused_id
        [event] = promotions(session)
    db.dispose()
    assert "reason: accepted by the site physicist" in event.message
    assert "(cxr-node models promote)" in event.message
    assert event.user_name.startswith("cli:")
