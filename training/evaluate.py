"""``cxr-node evaluate``: a model's figures on a labelled set, as JSON, Markdown and plots.

Per finding: study-level sensitivity and specificity with 95% Wilson intervals at the
card's thresholds, AUC, FROC (lesion-level sensitivity at 0.5/1/2/4 false positives per
image), AP at IoU 0.4 and 0.5, and sensitivity by the finding's size in mm; the same for
"any finding" against normal images.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model.detector import Detector  # noqa: E402
from model.image_file import read_image  # noqa: E402
from model.preprocess import pixel_spacing_mm  # noqa: E402
from training import metrics  # noqa: E402
from training.dataset import fingerprint, read_labels_csv  # noqa: E402
from training.train import ground_truth, predicted_boxes  # noqa: E402

BATCH = 16


def predict_set(detector: Detector, paths: list[Path]) -> tuple[
        list[list[metrics.PredictedBox]], list[tuple[float, float] | None]]:
    """Every detection (no threshold) through the same path the node uses, and each
    image's pixel spacing (None for a PNG or JPEG), from the datasets read for it."""
    predictions: list[list[metrics.PredictedBox]] = []
    spacing: list[tuple[float, float] | None] = []
    for start in range(0, len(paths), BATCH):
        datasets = [read_image(p) for p in paths[start:start + BATCH]]
        predictions += [predicted_boxes(d)
                        for d in detector.predict(datasets, apply_thresholds=False)]
        spacing += [pixel_spacing_mm(ds) for ds in datasets]
    return predictions, spacing


def evaluate_model(model_dir: Path, data_dir: Path, out_dir: Path,
                   device: str | None = None, record_as: str | None = None) -> dict:
    """Evaluate ``model_dir`` on ``data_dir/labels.csv``; write the report to ``out_dir``.

    With ``record_as``, the headline figures and a description of the data are also
    written into the model card under ``metrics[record_as]``.
    """
    detector = Detector.load(Path(model_dir), device)
    card = detector.card
    images = read_labels_csv(Path(data_dir) / "labels.csv", vocabulary=card.labels)
    truth = ground_truth(images)
    predictions, spacing = predict_set(detector, [image.path for image in images])
    report = metrics.evaluate(truth, predictions, list(card.labels), card.thresholds, spacing)
    report["model"] = {"name": card.name, "version": card.version}
    report["data"] = {"labels": str(Path(data_dir) / "labels.csv"), "images": len(images)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(report, card.labels))
    _plot_roc(truth, predictions, card.labels, out / "roc.png")
    _plot_froc(truth, predictions, card.labels, out / "froc.png")
    if record_as:
        values = metrics.headline(report, card.labels)
        dataset = {"labels": str(Path(data_dir) / "labels.csv"), "images": len(images),
                   "fingerprint": fingerprint(images)}
        replace(card, metrics={**card.metrics, record_as: {"dataset": dataset,
                                                           "values": values}}).save(model_dir)
    return report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(interval) -> str:  # noqa: ANN001 - (low, high) with None for NaN
    return f"({_fmt(interval[0], 2)}-{_fmt(interval[1], 2)})"


def summary_markdown(report: dict, labels: tuple[str, ...]) -> str:
    lines = [
        f"# Evaluation of {report['model']['name']} {report['model']['version']}", "",
        f"{report['images']} images from `{report['data']['labels']}`. "
        f"mAP@0.5 **{_fmt(report['map50'])}**, mAP@0.4 **{_fmt(report['map40'])}**.", "",
        "| finding | threshold | sensitivity (95% CI) | specificity (95% CI) | AUC | AP@0.5 "
        "| AP@0.4 | FROC sens. @1 FP/img |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        row = report["per_finding"][label]
        lines.append(
            f"| {label} | {_fmt(row['threshold'])} | {_fmt(row['sensitivity'])} "
            f"{_ci(row['sensitivity_ci'])} | {_fmt(row['specificity'])} "
            f"{_ci(row['specificity_ci'])} | {_fmt(row['auc'])} | {_fmt(row['ap50'])} | "
            f"{_fmt(row['ap40'])} | {_fmt(row['froc']['1'])} |")
    anyf = report["any_finding"]
    lines.append(f"| **any finding** | per finding | {_fmt(anyf['sensitivity'])} "
                 f"{_ci(anyf['sensitivity_ci'])} | {_fmt(anyf['specificity'])} "
                 f"{_ci(anyf['specificity_ci'])} | {_fmt(anyf['auc'])} | | | |")
    return "\n".join(lines + _size_table(report, labels)) + "\n"


def _size_table(report: dict, labels: tuple[str, ...]) -> list[str]:
    """Sensitivity by the size of the finding, as found/positives (sensitivity)."""
    rows = [(label, report["per_finding"][label].get("sensitivity_by_size"))
            for label in labels]
    rows = [(label, bands) for label, bands in rows
            if bands and any(b["positives"] for b in bands.values())]
    if not rows:
        return []
    names = list(rows[0][1])
    lines = ["", "Sensitivity by size (longer side of the image's largest box of the "
             "finding, mm), at the same thresholds:", "",
             "| finding | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, bands in rows:
        cells = [f"{b['found']}/{b['positives']} ({_fmt(b['sensitivity'], 2)})"
                 if b["positives"] else "-" for b in bands.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _plot_roc(truth, predictions, labels, path: Path) -> None:  # noqa: ANN001
    figure, axis = plt.subplots(figsize=(6, 6))
    for label in (*labels, None):
        positives = metrics.image_positives(truth, label)
        if positives.all() or not positives.any():
            continue
        scores = metrics.image_scores(predictions, label)
        fpr, tpr, _ = metrics.roc_curve(scores, positives)
        name = label or "any finding"
        axis.plot(fpr, tpr, label=f"{name} (AUC {metrics.auc(scores, positives):.3f})",
                  linewidth=2.5 if label is None else 1.2)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="Study-level ROC")
    axis.legend(fontsize=7, loc="lower right")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _plot_froc(truth, predictions, labels, path: Path) -> None:  # noqa: ANN001
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for label in (*labels, None):
        curve = metrics.froc(truth, predictions, label)
        if not curve["lesions"]:
            continue
        axis.plot(curve["fppi"], curve["sensitivity"], label=label or "all findings",
                  linewidth=2.5 if label is None else 1.2)
    axis.set(xscale="log", xlim=(0.05, 8), ylim=(0, 1.02), xlabel="false positives per image",
             ylabel="lesion sensitivity", title="FROC")
    axis.legend(fontsize=7, loc="lower right")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def plot_training_curves(metrics_jsonl: Path, path: Path) -> None:
    """Loss and validation mAP per epoch, from a run's ``metrics.jsonl``."""
    epochs = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line]
    x = [e["epoch"] for e in epochs]
    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "class_loss", "box_loss"):
        loss_axis.plot(x, [e[key] for e in epochs], marker="o", label=key)
    loss_axis.set(xlabel="epoch", ylabel="training loss", yscale="log", title="Loss")
    loss_axis.legend()
    for key, name in (("map50", "mAP@0.5"), ("map40", "mAP@0.4")):
        map_axis.plot(x, [e[key] for e in epochs], marker="o", label=name)
    map_axis.set(xlabel="epoch", ylabel="validation mAP", ylim=(0, 1), title="Validation")
    map_axis.legend()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)

