"""The site's learning loop on generated data: labels in, a candidate out, the gate decides.

Studies arrive through the node's Ingest, labels through an import, ``retrain`` makes
candidates that are judged against the active (bundled) model on the locked test set:
a barely trained one is refused and stays a candidate, a fine-tuned one passes and is
promoted, and rollback restores the bundled model. The worker follows each switch.

The active model is the bundled one (same weights, same version) with a 384 px input
instead of 768, the studies' own size: fine-tuning and the test-set evaluations then cost
a quarter of the pixels. On these 320-384 px studies it finds 23 of the 51 findings at
IoU 0.4 (512 px: 42), and on the locked test set its sensitivity is 0.33-1.0 for five
findings where a barely trained candidate's is 0, so the gate has something to refuse
that candidate against; the fine-tuned one, its weights barely moved, passes.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from config.settings import Settings
from model import BUNDLED_MODEL
from model.card import ModelCard
from model.detector import Detector
from model.phantom import synthesize_case
from model.vocabulary import DEFAULT_LABELS
from node.audit_report import write_audit_report
from node.completion import complete_quiet_studies
from node.ingest import ActiveStudies, Ingest, StoreRequest
from node.worker import Worker
from storage.db import Database
from storage.files import DicomFileStore
from storage.models import AuditEvent, DatasetSplit, ModelState, ModelVersion, Split
from tests.peers import CXR_NODE, REPO
from training.label_store import current_labels, import_file
from training.registry import RegistryError, active_version, ensure_active, promote, rollback
from training.retrain import judge_external, retrain
from training.snapshots import create_snapshot

BUNDLED_VERSION = ModelCard.load(BUNDLED_MODEL, verify_weights=False).version

# Retraining and judging candidates: a limit of its own (the fine-tuning test took 644 s
# on a 2-core machine shared by six test runs).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
STUDIES = 48
SITE_IMAGE_SIZE = 384


def site_model(folder) -> Path:  # noqa: ANN001 - a pathlib.Path
    """The bundled model's files with its card's input size set to SITE_IMAGE_SIZE."""
    shutil.copytree(BUNDLED_MODEL, folder)
    card = json.loads((folder / "card.json").read_text())
    card["image_size"] = card["preprocessing"]["image_size"] = SITE_IMAGE_SIZE
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A node's storage with 48 received studies and their labels imported."""
    tmp = tmp_path_factory.mktemp("site")
    settings = Settings.model_validate({
        "storage": {"data_dir": str(tmp / "data")},
        "worker": {"device": "cpu"},
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-6,
                     "test_fraction": 0.35, "validation_fraction": 0.2,
                     "promotion_margin": 0.2}})
    db = Database.connect(settings.storage.resolved_database_url())
    store = DicomFileStore(settings.storage.data_dir)
    ingest = Ingest(settings, db, store, ActiveStudies())
    rows = []
    for index in range(STUDIES):
        case = synthesize_case(5, index, size_range=(320, 384))
        path = tmp / "in" / f"{index}.dcm"
        path.parent.mkdir(exist_ok=True)
        case.dataset.save_as(path, enforce_file_format=True)
        incoming = store.new_incoming(1 << 30)
        incoming.write(path.read_bytes())
        ds = case.dataset
        assert ingest.store_instance(incoming, StoreRequest(
            str(ds.SOPClassUID), str(ds.SOPInstanceUID), "STORESCU", "CXRNODE", "127.0.0.1"),
            set()).status == 0
        uid = str(ds.SOPInstanceUID)
        rows += [[uid, b.label, b.x1, b.y1, b.x2, b.y2] for b in case.boxes] or \
            [[uid, "", "", "", "", ""]]
    complete_quiet_studies(db, 0, frozenset())
    labels_file = tmp / "labels.csv"
    with open(labels_file, "w", newline="") as handle:
        csv.writer(handle).writerows([["sop_instance_uid", "label", "x1", "y1", "x2", "y2"],
                                      *rows])
    summary = import_file(settings, db, store, labels_file, "csv")
    assert (summary.studies, summary.unmatched_keys) == (STUDIES, [])
    with db.session() as session:
        bundled = ensure_active(session, site_model(tmp / "bundled"))
        bundled_id = bundled.id
    yield settings, db, store, bundled_id
    db.dispose()


def versions(db) -> dict[str, str]:
    with db.session() as session:
        return {v.version: v.state for v in session.scalars(select(ModelVersion))}


def test_imported_labels_are_current_and_splits_are_fixed(site):
    settings, db, store, _ = site
    with db.session() as session:
        labelled = current_labels(session)
    assert len(labelled) == STUDIES


def test_a_barely_trained_candidate_is_refused_and_cannot_be_promoted(site):
    settings, db, store, bundled_id = site

    outcome = retrain(settings, db, store, from_scratch=True, image_size=128, device="cpu")

    assert not outcome.gate.passed
    assert any("lower by more than 0.2" in reason for reason in outcome.gate.reasons)
    with db.session() as session:
        candidate = session.get(ModelVersion, outcome.candidate_id)
        assert candidate.state == ModelState.CANDIDATE
        assert "refused" in candidate.gate_report
        figures = json.loads(candidate.test_metrics)
        assert figures["test_images"] >= 8 and figures["gate_passed"] is False
        # What the console's Models page shows: intervals, counts, AUC and the ROC curve.
        assert all({"sensitivity_ci", "specificity_ci", "tp", "fp", "auc", "roc"} <= set(f)
                   for f in figures["candidate"]["per_finding"].values())
        assert active_version(session).id == bundled_id
        splits = dict(session.execute(select(DatasetSplit.split,
                                             DatasetSplit.id)).all())
    assert set(splits) == {Split.TRAIN, Split.VALIDATION, Split.TEST}


def test_splits_never_change_between_snapshots(site):
    settings, db, store, _ = site
    with db.session() as session:
        before = dict(session.execute(select(DatasetSplit.study_id, DatasetSplit.split)).all())
    create_snapshot(settings, db, store, ModelCard.load(BUNDLED_MODEL).findings)
    with db.session() as session:
        after = dict(session.execute(select(DatasetSplit.study_id, DatasetSplit.split)).all())
    assert after == before and len(after) == STUDIES


def test_fine_tuned_candidate_passes_is_promoted_followed_and_rolled_back(site, tmp_path):
    settings, db, store, bundled_id = site
    with db.session() as session:
        active_path = active_version(session).path
    worker = Worker(settings, db, store, Detector.load(active_path, device="cpu"), bundled_id)

    outcome = retrain(settings, db, store, device="cpu")

    assert outcome.gate.passed, outcome.gate.text()
    assert any(r == "golden outputs reproduced" for r in outcome.gate.reasons)
    with db.session() as session:
        candidate = session.get(ModelVersion, outcome.candidate_id)
        assert candidate.parent_id == bundled_id
        promote(session, outcome.candidate_id, "test")
    assert versions(db)[outcome.candidate_version] == ModelState.ACTIVE

    assert worker.follow_active_model()
    assert worker.detector.card.version == outcome.candidate_version

    with db.session() as session:
        restored = rollback(session)
        assert restored.id == bundled_id
    assert versions(db)[outcome.candidate_version] == ModelState.RETIRED
    worker._next_model_check = 0
    assert worker.follow_active_model()
    assert worker.detector.card.version == ModelCard.load(BUNDLED_MODEL).version
    with db.session() as session:
        events = [e.event_type for e in session.scalars(select(AuditEvent))]
        with pytest.raises(RegistryError):
            promote(session, bundled_id, "already active")
    assert {"model-candidate", "model-promoted", "model-rolled-back", "model-loaded"} <= set(events)

    report = write_audit_report(db, datetime(2000, 1, 1), datetime.now(UTC).replace(tzinfo=None)
                                + timedelta(minutes=1), tmp_path / "report", DEFAULT_LABELS)
    shown = {model["version"]: model for model in report["models"]["active"]}
    assert {outcome.candidate_version, ModelCard.load(BUNDLED_MODEL).version} <= set(shown)
    assert shown[outcome.candidate_version]["test_set"]  # its locked-test-set figures
    assert [p["message"] for p in report["models"]["promotions"]]
    assert [r["message"] for r in report["models"]["rollbacks"]]
    assert report["models"]["refused_candidates"]  # the barely trained one, with its reasons


def test_two_active_versions_are_refused_by_the_database(site):
    settings, db, _, _ = site

    with pytest.raises(IntegrityError), db.session() as session:
        for version in session.scalars(select(ModelVersion)):
            version.state = ModelState.ACTIVE


def test_a_model_trained_elsewhere_is_judged_before_it_can_be_promoted(site, tmp_path):
    settings, db, store, bundled_id = site
    copy = site_model(tmp_path / "site-model")
    card = json.loads((copy / "card.json").read_text())
    card["version"] = f"{BUNDLED_VERSION}-copy"
    (copy / "card.json").write_text(json.dumps(card))

    outcome = judge_external(settings, db, store, copy, device="cpu")

    assert outcome.gate.passed, outcome.gate.text()  # the same weights: equal on every figure
    with db.session() as session:
        registered = session.get(ModelVersion, outcome.candidate_id)
        assert (registered.version, registered.state) == (f"{BUNDLED_VERSION}-copy",
                                                          ModelState.CANDIDATE)
        assert registered.parent_id == active_version(session).id
    with pytest.raises(RegistryError, match="already registered"):
        judge_external(settings, db, store, copy, device="cpu")


def test_admin_commands_list_promote_and_roll_back(site, tmp_path):
    settings, db, _, bundled_id = site
    config = tmp_path / "cxr-node.yaml"
    config.write_text(yaml.safe_dump({"storage": {"data_dir": str(settings.storage.data_dir)}}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CXR_NODE, "--config", str(config), "models", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    with db.session() as session:
        by_version = {v.version: v.id for v in session.scalars(select(ModelVersion))}
        refused = next(v.id for v in session.scalars(select(ModelVersion))
                       if v.gate_report and "refused" in v.gate_report)

    denied = cli("promote", str(refused))
    assert denied.returncode == 2 and "did not pass the promotion gate" in denied.stderr
    promoted = cli("promote", str(by_version[f"{BUNDLED_VERSION}-copy"]))
    assert promoted.returncode == 0, promoted.stderr
    listing = cli("list")
    rows = {line.split()[2]: line.split()[3] for line in listing.stdout.splitlines()[1:]}
    assert rows[f"{BUNDLED_VERSION}-copy"] == "active"
    assert rows[BUNDLED_VERSION] == "retired"
    assert "gate refused" in listing.stdout and "gate passed" in listing.stdout
    rolled_back = cli("rollback")
    assert rolled_back.returncode == 0
    assert f"{BUNDLED_VERSION} is the active model again" in rolled_back.stdout
    with db.session() as session:
        assert active_version(session).id == bundled_id
