"""Golden outputs: a fixed generated image through a fixed model gives stored detections.

``golden.json`` beside a model's card holds its top detections on one deterministic
synthetic radiograph. Loading the model on another machine, another torch version or
another device and getting the same detections (within the stated tolerances) shows the
weights, the preprocessing and the post-processing all arrived intact. The promotion
gate runs the same check on a retrained model.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydicom.dataset import Dataset

from model.detector import Detector
from model.phantom import synthesize_case

GOLDEN_FILE = "golden.json"
GOLDEN_SEED, GOLDEN_INDEX, GOLDEN_SIZE = 9999, 0, 640
TOP = 10
SCORE_TOLERANCE = 0.02  # absolute, probability; bf16 on a GPU moves scores by ~1e-3
BOX_TOLERANCE_PX = 4.0  # per coordinate, in original pixels


def golden_input() -> Dataset:
    """The fixed input: one synthetic case with findings, deterministic from its seed."""
    for index in range(GOLDEN_INDEX, GOLDEN_INDEX + 50):
        case = synthesize_case(GOLDEN_SEED, index, size_range=(GOLDEN_SIZE, GOLDEN_SIZE))
        if case.boxes:
            return case.dataset
    raise RuntimeError("no synthetic case with findings for the golden input")


def golden_outputs(detector: Detector) -> list[dict]:
    """The top detections, thresholds not applied, as plain data."""
    detections = detector.predict([golden_input()], apply_thresholds=False)[0]
    best = sorted(detections, key=lambda d: -d.score)[:TOP]
    return [{"label": d.label, "score": round(d.score, 6),
             "box": [round(v, 3) for v in d.box]} for d in best]


def write_golden(model_dir: Path, detector: Detector) -> Path:
    path = Path(model_dir) / GOLDEN_FILE
    path.write_text(json.dumps({"seed": GOLDEN_SEED, "size": GOLDEN_SIZE,
                                "score_tolerance": SCORE_TOLERANCE,
                                "box_tolerance_px": BOX_TOLERANCE_PX,
                                "detections": golden_outputs(detector)}, indent=2) + "\n")
    return path


def check_golden(model_dir: Path, detector: Detector) -> list[str]:
    """Differences from the stored outputs beyond tolerance; empty when the model is intact."""
    stored = json.loads((Path(model_dir) / GOLDEN_FILE).read_text())
    expected, actual = stored["detections"], golden_outputs(detector)
    problems = []
    for rank, want in enumerate(expected):
        matches = [got for got in actual if got["label"] == want["label"]
                   and abs(got["score"] - want["score"]) <= stored["score_tolerance"]
                   and all(abs(a - b) <= stored["box_tolerance_px"]
                           for a, b in zip(got["box"], want["box"], strict=True))]
        if not matches:
            problems.append(f"detection {rank + 1} ({want['label']} {want['score']:.3f} at "
                            f"{want['box']}) is not reproduced")
    return problems
