"""Training the detector: effdet's training bench, focal and box losses, AdamW, warm-up and
cosine decay, AMP on a GPU, checkpoints and resume, and mAP on a patient split each epoch.

Every run writes a run folder: ``config.json`` (the resolved configuration),
``anchor_coverage.json`` (per finding, the share of training boxes that some anchor
matches at IoU >= 0.5; see :mod:`training.anchor_fit`), ``metrics.jsonl`` (one line per
epoch), ``training_curves.png``, ``checkpoint.pt`` (the last epoch, for resume), and
``model/`` (the best epoch's weights and card, thresholds
chosen on validation).

A run folder with a checkpoint is resumed only with the settings it was started with
(more ``epochs``, another ``device``, ``workers`` or MLflow address excepted): anything
else would silently mix two runs in one model, so it is refused, naming the keys.
Checkpoints and the best weights are written to a temporary file and renamed (as timm's
``CheckpointSaver`` does), so a crash or a full disk mid-write leaves the previous one
whole. A validation split without a single box has no mAP; the run says so and keeps the
last epoch instead of the best.

Under ``torchrun`` this is one of several processes: ``batch_size`` stays the global
batch, rank 0 alone writes the run folder, and a checkpoint resumes on any number of
processes (:mod:`training.distributed` says how a distributed run relates to a single
one). The last partial batch of an epoch is dropped, so that every step trains on a
whole batch however many processes share it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from model.card import ModelCard, file_sha256
from model.detector import Detection, Detector, create_network, load_backbone
from model.preprocess import PreprocessConfig
from model.vocabulary import DEFAULT_FINDINGS, Finding
from training import metrics
from training.anchor_fit import MATCH_IOU, anchor_boxes, anchor_coverage
from training.dataset import (
    DetectionDataset,
    LabelledImage,
    collate,
    fingerprint,
    read_labels_csv,
    split_by_patient,
)
from training.distributed import (
    World,
    all_sum,
    check_batch,
    gather_by_index,
    on_main,
    process_group,
    sync_buffers,
    training_device,
)
from training.experiment_log import ExperimentLog

LOGGER = logging.getLogger("cxr_node.train")
INTENDED_USE = ("Trained on synthetic chest radiographs for demonstration and testing of "
                "cxr-node. Not for clinical use.")


class TrainError(ValueError):
    """A run that cannot go on as asked; the message says what to change."""


# Settings a run may be resumed with although they differ from its config.json: none
# changes what the finished epochs mean (more epochs extend the same schedule).
RESUMABLE_CHANGES = frozenset({"epochs", "device", "workers", "mlflow_tracking_uri", "out"})


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    architecture: str = "tf_efficientdet_d0"
    image_size: int = 512
    anchor_scale: float = 4.0
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    validation_fraction: float = 0.15
    target_sensitivity: float = 0.90
    target_specificity: float = 0.90
    seed: int = 0
    device: str = "auto"
    init_from: Path | None = None  # a model folder to fine-tune from
    # A timm ImageNet checkpoint of the backbone (a local file) to train from scratch with.
    init_backbone: Path | None = None
    # A folder with its own labels.csv for validation (a site's fixed split); None: 15% of
    # the patients in ``data``.
    validation_data: Path | None = None
    # Also log to MLflow (an optional extra); None: $MLFLOW_TRACKING_URI, if set.
    mlflow_tracking_uri: str | None = None
    name: str = "cxr-node-detector"
    version: str = "0.1.0"
    findings: tuple[Finding, ...] = field(default=DEFAULT_FINDINGS)
    max_train_images: int | None = None
    workers: int = 1  # data-loading processes beside the training one; 0 loads inline

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be 0 to epochs ({self.epochs}), "
                             f"got {self.warmup_epochs}")
        for name in ("target_sensitivity", "target_specificity"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be in (0, 1)")
        if self.init_backbone and self.init_from:
            raise ValueError(f"init_backbone {self.init_backbone} and init_from "
                             f"{self.init_from} are both given; a model folder brings its own "
                             "backbone")

    def to_json(self) -> dict:
        data = asdict(self)
        data["findings"] = [f.to_dict() for f in self.findings]
        return json.loads(json.dumps(data, default=str))

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """The inverse of :meth:`to_json` (a run's ``config.json``)."""
        paths = ("data", "out", "init_from", "init_backbone", "validation_data")
        values = {key: Path(value) if key in paths and value is not None else value
                  for key, value in data.items()}
        values["findings"] = tuple(Finding.from_dict(f) for f in data["findings"])
        return cls(**values)


# A fine-tuned model re-chooses a finding's threshold only from at least this many
# positive validation images; with fewer, one image more or less would swing it.
MIN_POSITIVES_FOR_THRESHOLD = 10


def code_version() -> str:
    """The git commit of this code, or "unknown" outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def predicted_boxes(detections: list[Detection]) -> list[metrics.PredictedBox]:
    return [metrics.PredictedBox(*d.box, label=d.label, score=d.score) for d in detections]


def predict_dataset(detector: Detector, dataset: DetectionDataset,
                    indices: list[int] | None = None) -> list[list[metrics.PredictedBox]]:
    """All detections (no threshold) for a dataset's cached images (or those at
    ``indices``), in original pixels."""
    indices = list(range(len(dataset))) if indices is None else indices
    return [predicted_boxes(d) for d in detector.predict_images(
        [dataset.pixels(i) for i in indices], [dataset.letterboxes[i] for i in indices],
        apply_thresholds=False)]


def predict_shared(detector: Detector, dataset: DetectionDataset,
                   world: World) -> list[list[metrics.PredictedBox]]:
    """:func:`predict_dataset`, each process predicting its share (a ``DistributedSampler``
    without shuffling); every process gets all of them, in order."""
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank,
                                 shuffle=False)
    mine = sorted(set(sampler))  # the sampler repeats a few images to even out the shares
    merged = gather_by_index(dict(zip(mine, predict_dataset(detector, dataset, mine),
                                      strict=True)), world)
    return [merged[index] for index in range(len(dataset))]


def ground_truth(images: list[LabelledImage]) -> list[list[metrics.GroundTruthBox]]:
    return [[metrics.GroundTruthBox(b.x1, b.y1, b.x2, b.y2, b.label) for b in image.boxes]
            for image in images]


def validation_split(data: Path, validation_data: Path | None, fraction: float, seed: int,
                     labels: tuple[str, ...]) -> tuple[list[LabelledImage],
                                                       list[LabelledImage], str]:
    """(training images, validation images, how they were split).

    ``validation_data``, a folder with its own labels.csv, is a site's fixed split;
    otherwise ``fraction`` of the patients in ``data``. ``cxr-node calibrate`` rebuilds a
    model's validation split through this too, so it is the one training held out.
    """
    images = read_labels_csv(Path(data) / "labels.csv", vocabulary=labels)
    if validation_data:
        return images, read_labels_csv(Path(validation_data) / "labels.csv",
                                       vocabulary=labels), str(validation_data)
    train_images, validation_images = split_by_patient(images, fraction, seed)
    return (train_images, validation_images,
            f"{fraction:.0%} of patients, stratified by finding, seed {seed}")


def validation_figures(source: Path, images: int, split: str, target_sensitivity: float,
                       target_specificity: float, report: dict,
                       labels: tuple[str, ...]) -> dict:
    """The card's ``metrics["validation"]``: the figures at the chosen thresholds, the data
    and how the thresholds were chosen."""
    rule = (f"per finding, the threshold with the widest margin over sensitivity "
            f"{target_sensitivity:.2f} and specificity {target_specificity:.2f} on validation "
            f"(sensitivity {target_sensitivity:.2f} first where both cannot hold)")
    return {"dataset": {"source": str(source), "images": images, "split": split,
                        "operating_point": rule},
            "values": metrics.headline(report, labels)}


def choose_thresholds(truth: list[list[metrics.GroundTruthBox]],
                      predictions: list[list[metrics.PredictedBox]], labels: tuple[str, ...],
                      target_sensitivity: float, target_specificity: float,
                      parent_thresholds: dict[str, float] | None) -> dict[str, float]:
    """Each finding's operating threshold from validation predictions.

    A finding with fewer than ``MIN_POSITIVES_FOR_THRESHOLD`` positive images keeps the
    parent's threshold (0.5 without a parent, unless it has some positives to go on).
    """
    thresholds = {}
    for label in labels:
        positives = metrics.image_positives(truth, label)
        scores = metrics.image_scores(predictions, label)
        if positives.sum() >= MIN_POSITIVES_FOR_THRESHOLD or (parent_thresholds is None
                                                              and positives.any()):
            thresholds[label] = metrics.threshold_for_operating_point(
                scores, positives, target_sensitivity, target_specificity)
        elif parent_thresholds is not None and label in parent_thresholds:
            thresholds[label] = parent_thresholds[label]
        else:
            thresholds[label] = 0.5
    return thresholds


def _autocast(device: torch.device):  # noqa: ANN202
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def check_resume(out: Path, config: TrainConfig) -> None:
    """Refuse to resume the run in ``out`` with settings it was not started with."""
    saved_file = out / "config.json"
    if not (out / "checkpoint.pt").exists() or not saved_file.exists():
        return
    saved, wanted = json.loads(saved_file.read_text()), config.to_json()
    differing = sorted(key for key in saved.keys() | wanted.keys()
                       if key not in RESUMABLE_CHANGES and saved.get(key) != wanted.get(key))
    if differing:
        changes = "; ".join(f"{key} {saved.get(key)!r} there, {wanted.get(key)!r} now"
                            if key != "findings" else "findings differ"
                            for key in differing)
        raise TrainError(f"{out} holds a run started with other settings ({changes}); "
                         f"resume it with the same {', '.join(differing)}, or train into "
                         "another folder")


def save_atomically(state: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, on disk, then renamed over it."""
    partial = path.with_name(f"{path.name}.tmp")
    try:
        with open(partial, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _keep_epochs(metrics_file: Path, last_epoch: int) -> None:
    """Drop epochs after the checkpoint's (a run killed between the two writes)."""
    if metrics_file.exists():
        lines = [line for line in metrics_file.read_text().splitlines()
                 if line and json.loads(line)["epoch"] <= last_epoch]
        metrics_file.write_text("".join(f"{line}\n" for line in lines))


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Run (or resume) training; return the folder of the best model.

    Started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set), this is one
    process of a distributed run; only rank 0 writes, and the others return the folder
    rank 0 writes the model to.
    """
    world = World.from_environment()
    check_batch(config.batch_size, world.size)
    device = training_device(config.device, world)
    with process_group(world, device):
        return _train(config, world, device, progress and world.main)


def _start_run_folder(out: Path, config: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    check_resume(out, config)  # before config.json is written: it is what we compare to
    (out / "config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")


def _read_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _train(config: TrainConfig, world: World, device: torch.device, progress: bool) -> Path:
    out = Path(config.out)
    on_main(world, lambda: _start_run_folder(out, config))
    torch.manual_seed(config.seed)
    labels = tuple(f.label for f in config.findings)

    train_images, validation_images, split = validation_split(
        config.data, config.validation_data, config.validation_fraction, config.seed, labels)
    images = train_images + validation_images
    if not validation_images or not train_images:
        side = "validation" if train_images else "training"
        raise TrainError(f"the {side} split is empty ({split}; {len(images)} images in "
                         f"all): the data has too few patients to split")
    if config.max_train_images:
        train_images = train_images[: config.max_train_images]
    # Every step trains on a whole batch (the last partial one of an epoch is dropped), so
    # that the steps are the same however many processes share a batch.
    steps_per_epoch = len(train_images) // config.batch_size
    if not steps_per_epoch:
        raise TrainError(f"the training split has {len(train_images)} images, fewer than "
                         f"one batch (batch_size {config.batch_size})")
    preprocessing = PreprocessConfig(image_size=config.image_size)
    draft = _card(config, preprocessing, {f: 0.5 for f in labels}, "0" * 64,
                  fingerprint(images), {})
    bench = create_network(draft, bench_task="train")
    if config.init_from:
        parent = ModelCard.load(config.init_from)
        state = torch.load(Path(config.init_from) / parent.weights_file, map_location="cpu",
                           weights_only=True)
        bench.model.load_state_dict(state)
    if config.init_backbone:  # before the images are read: a file that does not fit fails fast
        load_backbone(bench.model, config.init_backbone)
        LOGGER.info("backbone from %s (sha256 %s)", config.init_backbone,
                    file_sha256(config.init_backbone))
    LOGGER.info("preparing %d training and %d validation images", len(train_images),
                len(validation_images))
    train_set = DetectionDataset(train_images, labels, preprocessing, augment=True,
                                 seed=config.seed)
    validation_set = DetectionDataset(validation_images, labels, preprocessing)
    if world.main:
        coverage = anchor_coverage(*train_set.model_boxes(), labels,
                                   anchor_boxes(bench.model.config))
        (out / "anchor_coverage.json").write_text(json.dumps(coverage, indent=2) + "\n")
        for label, fit in coverage.items():
            if fit["boxes"]:
                LOGGER.info("%s: %d of %d training boxes have an anchor at IoU >= %.1f",
                            label, round(fit["covered"] * fit["boxes"]), fit["boxes"],
                            MATCH_IOU)
    bench.to(device)
    # The node's own inference path, sharing the network being trained, scores validation.
    detector = Detector(draft, bench.model, device)
    optimizer = torch.optim.AdamW(bench.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, warmup))

    start_epoch, best_map = 0, -1.0
    checkpoint_path = out / "checkpoint.pt"
    # Rank 0's file, handed to every process: the other hosts need not see the run folder.
    checkpoint = on_main(world, lambda: _read_checkpoint(checkpoint_path))
    if checkpoint is not None:
        bench.model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch, best_map = checkpoint["epoch"] + 1, checkpoint["best_map50"]
        LOGGER.info("resuming after epoch %d (best mAP@0.5 %.3f)", start_epoch, best_map)
        if world.main:
            _keep_epochs(out / "metrics.jsonl", start_epoch)
        del checkpoint
    network = bench.model
    if world.size > 1:
        network = DistributedDataParallel(
            bench.model, device_ids=[device] if device.type == "cuda" else None)
        # Stochastic depth draws from torch's generator: a stream of its own per process
        # (as timm seeds seed + rank), lest every process drop the same blocks.
        torch.manual_seed(config.seed + world.rank)
    # The order a single process would take (the same seed), dealt out to the processes.
    sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank,
                                 shuffle=True, seed=config.seed * 1000, drop_last=True)

    truth = ground_truth(validation_images)
    # mAP averages over findings with a box; with none at all it is undefined (NaN), no
    # epoch would ever be "best", and the run would end without a model.
    measurable = any(truth)
    if not measurable and world.main:
        LOGGER.warning("the validation split (%s, %d images) has no boxes: mAP cannot be "
                       "measured, so the last epoch is kept as the model; thresholds come "
                       "from the parent model or 0.5", split, len(validation_images))
    experiment = None
    if world.main:
        experiment = ExperimentLog(config.mlflow_tracking_uri, config.name,
                                   f"{config.version} ({out.name})")
        experiment.params({k: v for k, v in config.to_json().items() if k != "findings"})
    for epoch in range(start_epoch, config.epochs):
        train_set.epoch = epoch
        sampler.set_epoch(epoch)
        bench.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss, class_loss, box_loss
        started = time.monotonic()
        # Workers (forked each epoch, so they see this epoch's augmentation seed) prepare
        # the next batches while the current one trains.
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=config.batch_size // world.size, sampler=sampler,
            collate_fn=collate, num_workers=config.workers,
            pin_memory=device.type == "cuda", drop_last=True)
        for step, (batch, target) in enumerate(loader):
            batch = batch.to(device, non_blocking=True)
            target = {k: [t.to(device, non_blocking=True) for t in v] for k, v in target.items()}
            with _autocast(device):
                losses = _batch_losses(bench, network, batch, target, world)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients; each loss is a share of the batch's.
            (losses[0] * world.size).backward()
            torch.nn.utils.clip_grad_norm_(bench.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            totals += all_sum(losses.detach(), world).cpu().double()
            if progress:
                done = step + 1
                print(f"\repoch {epoch + 1}/{config.epochs} [{done}/{steps_per_epoch}] "
                      f"loss {totals[0] / done:.4f}", end="", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
        sync_buffers(bench.model, world)  # validate with the statistics rank 0 saves
        # Validation in eval mode: BatchNorm's running statistics, no stochastic depth, and
        # the validation images left out of the statistics that are saved.
        bench.eval()
        map50 = map40 = None  # JSON null, not NaN, when unmeasurable
        if measurable:
            predictions = predict_shared(detector, validation_set, world)
            map50, _ = metrics.mean_average_precision(truth, predictions, labels, 0.5)
            map40, _ = metrics.mean_average_precision(truth, predictions, labels, 0.4)
        if not world.main:
            continue
        record = {"epoch": epoch + 1,
                  **{key: float(total) / steps_per_epoch
                     for key, total in zip(("loss", "class_loss", "box_loss"), totals,
                                           strict=True)},
                  "map50": map50, "map40": map40, "lr": scheduler.get_last_lr()[0],
                  "train_images_per_second": steps_per_epoch * config.batch_size / elapsed,
                  "processes": world.size}
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        experiment.metrics(record, step=epoch + 1)
        if progress:
            shown = (f"mAP@0.5 {map50:.3f} mAP@0.4 {map40:.3f}" if measurable
                     else "mAP n/a (no validation boxes)")
            print(f"\repoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} {shown} "
                  f"({record['train_images_per_second']:.1f} img/s)", file=sys.stderr)
        if not measurable or map50 > best_map:
            best_map = map50 if measurable else best_map
            save_atomically(bench.model.state_dict(), out / "best.pt")
        save_atomically({"model": bench.model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch,
                         "best_map50": best_map}, checkpoint_path)
    if not world.main:
        return out / "model"

    from training.evaluate import plot_training_curves  # matplotlib only when a run ends

    plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    model_dir = _write_model(config, out, bench, detector, validation_set, validation_images,
                             split, labels, preprocessing, fingerprint(images))
    experiment.files([out / "config.json", out / "training_curves.png",
                      out / "validation_metrics.json", model_dir / "card.json"])
    experiment.end()
    return model_dir


def _batch_losses(bench: torch.nn.Module, network: torch.nn.Module, batch: torch.Tensor,
                  target: dict, world: World) -> torch.Tensor:
    """(loss, class loss, box loss) of this process's images, as shares of the batch's.

    effdet's training bench divides the losses by the positive anchors of the images it
    is given; here the count is the whole batch's (summed over the processes), so the
    processes' shares add up to the loss one process would compute for the whole batch.
    ``network`` is the DDP-wrapped ``bench.model`` in several processes.
    """
    class_out, box_out = network(batch)
    cls_targets, box_targets, positives = bench.anchor_labeler.batch_label_anchors(
        target["bbox"], target["cls"])
    loss, class_loss, box_loss = bench.loss_fn(class_out, box_out, cls_targets, box_targets,
                                               all_sum(positives.sum(), world))
    return torch.stack([loss, class_loss, box_loss])


def _card(config: TrainConfig, preprocessing: PreprocessConfig, thresholds: dict[str, float],
          weights_sha256: str, data_fingerprint: str, card_metrics: dict) -> ModelCard:
    parent = ModelCard.load(config.init_from, verify_weights=False).version \
        if config.init_from else None
    return ModelCard(
        name=config.name, version=config.version, architecture=config.architecture,
        image_size=config.image_size, findings=config.findings,
        preprocessing=preprocessing.to_dict(), thresholds=thresholds, weights_file="weights.pt",
        weights_sha256=weights_sha256, training_data_fingerprint=data_fingerprint,
        code_version=code_version(), intended_use=INTENDED_USE, parent_version=parent,
        anchor_scale=config.anchor_scale,
        metrics=card_metrics, created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _write_model(config: TrainConfig, out: Path, bench: torch.nn.Module,
                 detector: Detector, validation_set: DetectionDataset,
                 validation_images: list[LabelledImage], split: str, labels: tuple[str, ...],
                 preprocessing: PreprocessConfig, data_fingerprint: str) -> Path:
    """The best epoch as a model folder, with thresholds chosen for the target sensitivity."""
    state = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    bench.model.load_state_dict(state)
    bench.eval()
    predictions = predict_dataset(detector, validation_set)
    truth = ground_truth(validation_images)
    parent = ModelCard.load(config.init_from, verify_weights=False) if config.init_from else None
    thresholds = choose_thresholds(truth, predictions, labels, config.target_sensitivity,
                                   config.target_specificity,
                                   parent.thresholds if parent else None)
    report = metrics.evaluate(truth, predictions, labels, thresholds)
    model_dir = out / "model"
    model_dir.mkdir(exist_ok=True)
    torch.save(state, model_dir / "weights.pt")
    card = _card(config, preprocessing, thresholds, file_sha256(model_dir / "weights.pt"),
                 data_fingerprint, {"validation": validation_figures(
                     config.data, len(validation_images), split, config.target_sensitivity,
                     config.target_specificity, report, labels)})
    card.save(model_dir)
    (out / "validation_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return model_dir

