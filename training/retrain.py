"""``cxr-node retrain``: a candidate model from the site's labels, judged on the locked test set.

The candidate is fine-tuned from the active model (or trained from scratch) on the
snapshot's training split, validated on its validation split (where thresholds are
chosen), then the candidate and the active model are both evaluated on the same locked
test set and the promotion gate decides (training.registry.gate). The candidate is
registered either way, with its figures and the gate's reasons; it becomes active only
if the gate passed and ``training.auto_promote`` is on (else ``cxr-node models promote``).

Only the training is spread over processes (``training.nproc_per_node``, one per GPU of
this host): the snapshot, the judging and the registry stay in the calling process, the
one that holds the database.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from config.settings import Settings
from model.card import ModelCard
from model.detector import BackboneFileError, Detector
from model.golden import check_golden, write_golden
from storage import audit
from storage.audit import AuditEventId, Outcome
from storage.db import Database
from storage.files import DicomFileStore
from storage.models import DatasetSnapshot, ModelVersion, utcnow
from training.distributed import Launch, launch
from training.evaluate import evaluate_model
from training.registry import (
    GateResult,
    active_version,
    gate,
    promote,
    refuse_registered,
    register,
)
from training.snapshots import create_snapshot
from training.train import TrainConfig, train

LOGGER = logging.getLogger("cxr_node.retrain")


class RetrainError(RuntimeError):
    """Retraining cannot start or finish; the message says what is missing."""


@dataclass(frozen=True)
class RetrainOutcome:
    candidate_id: int
    candidate_version: str
    snapshot_id: int
    gate: GateResult
    promoted: bool


def next_version(session, name: str, version: str) -> str:  # noqa: ANN001 - Session
    """The active version with its last number raised until no version has it."""
    match = re.fullmatch(r"(.*?)(\d+)", version)
    prefix, number = (match.group(1), int(match.group(2))) if match else (f"{version}.", 0)
    taken = set(session.scalars(select(ModelVersion.version).where(ModelVersion.name == name)))
    number += 1
    while f"{prefix}{number}" in taken:
        number += 1
    return f"{prefix}{number}"


def _images(labels_csv: Path) -> int:
    with open(labels_csv, newline="") as handle:
        return len({row["file"] for row in csv.DictReader(handle)})


KEPT_FIGURES = ("sensitivity", "specificity", "sensitivity_ci", "specificity_ci",
                "tp", "fn", "tn", "fp", "auc", "roc", "threshold")


def summary(report: dict) -> dict:
    """The figures the gate and the registry keep from an evaluation report: rates with
    their intervals and counts, AUC and the thinned ROC curve (the console draws it)."""
    return {"images": report["data"]["images"], "map50": report["map50"],
            "per_finding": {label: {k: values[k] for k in KEPT_FIGURES if k in values}
                            for label, values in report["per_finding"].items()}}


def retrain(settings: Settings, db: Database, store: DicomFileStore, *, from_scratch: bool = False,
            epochs: int | None = None, image_size: int | None = None,
            device: str = "auto", init_backbone: Path | None = None,
            processes: int | None = None) -> RetrainOutcome:
    """``init_backbone``: a timm ImageNet checkpoint to start the backbone of a network
    trained from scratch with (see ``model.detector.load_backbone``); ``processes``:
    training processes on this host (default ``training.nproc_per_node``)."""
    if init_backbone and not from_scratch:
        raise RetrainError("a backbone file goes with training from scratch: fine-tuning "
                           "starts from the active model's whole network")
    training = settings.training
    processes = training.nproc_per_node if processes is None else processes
    try:  # before the snapshot: more processes than GPUs, a batch that does not split
        Launch(nproc_per_node=processes).check_devices(device, training.batch_size)
    except ValueError as exc:
        raise RetrainError(f"training.{exc}") from None
    with db.session() as session:
        active = active_version(session)
        if active is None:
            raise RetrainError("no active model: start the node once (it registers the "
                               "bundled model) or register one")
        active_path = Path(active.path)
    card = ModelCard.load(active_path)
    snapshot = create_snapshot(settings, db, store, card.findings)
    folder = Path(snapshot.path)
    sizes = {split: _images(folder / split / "labels.csv")
             for split in ("train", "validation", "test")}
    if not all(sizes.values()):
        raise RetrainError(f"not enough labelled images in snapshot {snapshot.id}: {sizes}")
    with db.session() as session:
        version = next_version(session, card.name, card.version)
    run = Path(settings.storage.data_dir) / training.runs_dir / "runs" / \
        f"{utcnow():%Y%m%dT%H%M%S}-{version}"
    LOGGER.info("retraining %s %s -> %s on snapshot %s %s", card.name, card.version, version,
                snapshot.id, sizes)
    config = TrainConfig(
        data=folder / "train", validation_data=folder / "validation", out=run,
        architecture=card.architecture, image_size=image_size or card.image_size,
        anchor_scale=card.anchor_scale, epochs=epochs or training.epochs,
        batch_size=training.batch_size, learning_rate=training.learning_rate,
        device=device, target_sensitivity=training.target_sensitivity,
        target_specificity=training.target_specificity,
        init_from=None if from_scratch else active_path, init_backbone=init_backbone,
        name=card.name, version=version, findings=card.findings)
    model_dir = train_candidate(config, processes)
    outcome = judge(settings, db, model_dir, snapshot.id, device, run)
    LOGGER.info("candidate %s: %s", version, outcome.gate.text())
    return outcome


def train_candidate(config: TrainConfig, processes: int) -> Path:
    """The candidate's model folder, trained here or in ``processes`` processes that
    torchrun starts on this host, each training the run folder's ``config.json``
    (:mod:`training.train_process`)."""
    if processes == 1:
        try:
            return train(config, progress=False)
        except BackboneFileError as exc:
            raise RetrainError(str(exc)) from None
    config.out.mkdir(parents=True, exist_ok=True)
    config_file = config.out / "config.json"
    config_file.write_text(json.dumps(config.to_json(), indent=2) + "\n")
    status = launch(Launch(nproc_per_node=processes), "training.train_process",
                    [str(config_file)])
    if status:
        raise RetrainError(f"training in {processes} processes failed (exit status {status}; "
                           f"their messages are in this command's output); run folder "
                           f"{config.out}")
    return config.out / "model"


def judge(settings: Settings, db: Database, model_dir: Path, snapshot_id: int,
          device: str = "auto", work: Path | None = None) -> RetrainOutcome:
    """Register ``model_dir`` as a candidate judged against the active model.

    Both are evaluated on the snapshot's locked test set; the golden outputs are written
    from the candidate's weights and must be reproduced after reloading them.
    """
    training = settings.training
    with db.session() as session:
        active = active_version(session)
        snapshot = session.get(DatasetSnapshot, snapshot_id)
        if active is None or snapshot is None:
            raise RetrainError("judging needs an active model and a dataset snapshot")
        active_id, active_path, folder = active.id, Path(active.path), Path(snapshot.path)
    test_images = _images(folder / "test" / "labels.csv")
    if not test_images:
        raise RetrainError(f"snapshot {snapshot_id} has no test images")
    card = ModelCard.load(model_dir)
    work = work or Path(model_dir).parent
    torch_device = None if device == "auto" else device
    write_golden(model_dir, Detector.load(model_dir, torch_device))
    candidate = evaluate_model(model_dir, folder / "test", work / "test-candidate", torch_device)
    current = evaluate_model(active_path, folder / "test", work / "test-active", torch_device)
    golden = check_golden(model_dir, Detector.load(model_dir, torch_device))
    result = gate(candidate, current, training.promotion_margin, golden)
    figures = {"snapshot": snapshot_id, "test_images": test_images,
               "candidate": summary(candidate), "active": summary(current),
               "gate_passed": result.passed, "gate_failures": result.failures}
    with db.session() as session:
        parent = session.get(ModelVersion, active_id)
        registered = register(session, model_dir, parent=parent, snapshot_id=snapshot_id,
                              test_metrics=figures)
        registered.gate_report = result.text()
        audit.record(session, AuditEventId.APPLICATION_ACTIVITY, "model-candidate",
                     Outcome.SUCCESS if result.passed else Outcome.MINOR_FAILURE,
                     f"{card.name} {card.version} judged on snapshot {snapshot_id} "
                     f"({test_images} test images); {result.text()}")
        promoted = result.passed and training.auto_promote
        if promoted:
            promote(session, registered.id, "passed the promotion gate (auto_promote)")
        candidate_id = registered.id
    return RetrainOutcome(candidate_id, card.version, snapshot_id, result, promoted)


def judge_external(settings: Settings, db: Database, store: DicomFileStore, model_dir: Path,
                   device: str = "auto") -> RetrainOutcome:
    """A model trained elsewhere (``cxr-node train``): snapshot the labels, then judge it."""
    with db.session() as session:
        active = active_version(session)
        if active is None:
            raise RetrainError("no active model to judge against")
        # Before the snapshot and the test-set evaluations, not after minutes of them.
        refuse_registered(session, ModelCard.load(model_dir))
        findings = ModelCard.load(Path(active.path)).findings
    snapshot = create_snapshot(settings, db, store, findings)
    return judge(settings, db, Path(model_dir).resolve(), snapshot.id, device)
