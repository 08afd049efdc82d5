"""The findings a model reports, with the codes that go into DICOM results.

The default vocabulary is the NIH ChestX-ray8 box classes less Pneumonia (a clinical
diagnosis the image alone does not separate from Infiltration). Each model's card carries
its own vocabulary, so a site may train another set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    """A finding label and its coded concept (scheme designator, code value, meaning)."""

    label: str
    scheme: str
    code: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("label", "scheme", "code", "meaning"):
            if not getattr(self, name):
                raise ValueError(f"Finding {name} must not be empty")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Finding:
        return cls(**data)


DEFAULT_FINDINGS: tuple[Finding, ...] = (
    Finding("Atelectasis", "SCT", "46621007", "Atelectasis"),
    Finding("Cardiomegaly", "SCT", "287272002", "Cardiomegaly"),
    Finding("Pleural effusion", "SCT", "60046008", "Pleural effusion"),
    Finding("Infiltration", "DCM", "112121", "Infiltrate"),
    Finding("Mass", "SCT", "4147007", "Mass"),
    Finding("Nodule", "SCT", "27925004", "Nodule"),
    Finding("Pneumothorax", "SCT", "36118008", "Pneumothorax"),
)
DEFAULT_LABELS: tuple[str, ...] = tuple(f.label for f in DEFAULT_FINDINGS)
