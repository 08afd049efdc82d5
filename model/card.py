"""The model card: everything a set of weights needs to be used, trusted and audited.

A model is never a bare weights file. Its card (``card.json`` beside the weights) says
what it detects and how each finding is coded, how images must be prepared, the
per-finding operating thresholds, how well it did and on which data, what it was trained
on (a fingerprint), what it descends from, and what it is for. A card with a missing or
inconsistent field fails to load with a message naming that field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.vocabulary import Finding

CARD_FILE = "card.json"
SUPPORTED_ARCHITECTURES = frozenset({
    "tf_efficientdet_d0", "tf_efficientdet_d1", "tf_efficientdet_d2", "efficientdet_d0",
    "efficientdet_d1", "tf_efficientdet_lite0", "tf_efficientdet_lite1",
})
# EfficientDet's feature pyramid goes down to stride 2**7, so inputs must divide by it.
_INPUT_STRIDE = 128


class CardError(ValueError):
    """A model card that cannot be used; the message names the field."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    architecture: str
    image_size: int
    findings: tuple[Finding, ...]
    preprocessing: dict[str, Any]
    thresholds: dict[str, float]
    weights_file: str
    weights_sha256: str
    training_data_fingerprint: str
    code_version: str
    intended_use: str
    parent_version: str | None = None
    # EfficientDet's anchor size relative to the feature stride (effdet's default is 4);
    # smaller anchors let small findings such as nodules be matched at a given input size.
    anchor_scale: float = 4.0
    # {"<dataset name>": {"dataset": {...what it was measured on...}, "values": {...}}}
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def __post_init__(self) -> None:
        for name in ("name", "version", "weights_file", "code_version", "intended_use"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise CardError(f"{name}: must be a non-empty string")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise CardError(f'architecture: "{self.architecture}" is not one of '
                            f"{sorted(SUPPORTED_ARCHITECTURES)}")
        if not isinstance(self.image_size, int) or self.image_size <= 0 \
                or self.image_size % _INPUT_STRIDE:
            raise CardError(f"image_size: {self.image_size!r} must be a positive multiple of "
                            f"{_INPUT_STRIDE}")
        if not isinstance(self.anchor_scale, (int, float)) or not 0.5 <= self.anchor_scale <= 8:
            raise CardError(f"anchor_scale: {self.anchor_scale!r} must be between 0.5 and 8")
        if not self.findings:
            raise CardError("findings: at least one finding is required")
        labels = [f.label for f in self.findings]
        if len(set(labels)) != len(labels):
            raise CardError(f"findings: labels must be unique, got {labels}")
        if set(self.thresholds) != set(labels):
            raise CardError(f"thresholds: keys {sorted(self.thresholds)} must be the finding "
                            f"labels {sorted(labels)}")
        for label, value in self.thresholds.items():
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise CardError(f"thresholds.{label}: {value!r} is not a probability in [0, 1]")
        if self.preprocessing.get("image_size") != self.image_size:
            raise CardError(f"preprocessing.image_size: {self.preprocessing.get('image_size')!r} "
                            f"differs from image_size {self.image_size}")
        for name in ("weights_sha256", "training_data_fingerprint"):
            value = getattr(self, name)
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise CardError(f"{name}: {value!r} is not a SHA-256 hex digest")
        if Path(self.weights_file).name != self.weights_file:
            raise CardError(f"weights_file: {self.weights_file!r} must be a file name beside the "
                            "card, not a path")

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f.label for f in self.findings)

    @property
    def num_classes(self) -> int:
        return len(self.findings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [f.to_dict() for f in self.findings]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError("card: must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise CardError(f"{unknown[0]}: unknown field")
        required = {name for name, f in cls.__dataclass_fields__.items()
                    if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise CardError(f"{missing[0]}: missing")
        try:
            findings = tuple(Finding.from_dict(f) for f in data["findings"])
        except (TypeError, ValueError) as exc:
            raise CardError(f"findings: {exc}") from None
        return cls(**{**data, "findings": findings})

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CARD_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path, verify_weights: bool = True) -> ModelCard:
        """Read and validate ``model_dir/card.json``; check the weights' SHA-256 too."""
        path = Path(model_dir) / CARD_FILE
        if not path.is_file():
            raise CardError(f"card: {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CardError(f"card: {path} is not valid JSON ({exc})") from None
        card = cls.from_dict(data)
        if verify_weights:
            weights = Path(model_dir) / card.weights_file
            if not weights.is_file():
                raise CardError(f"weights_file: {weights} does not exist")
            if file_sha256(weights) != card.weights_sha256:
                raise CardError(f"weights_sha256: {weights} does not match the card")
        return card
