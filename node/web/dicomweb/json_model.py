"""The DICOM JSON model (PS3.18 Annex F) of what QIDO-RS and WADO-RS answer.

pydicom writes the model (``Dataset.to_json_dict``); this module adds what pydicom leaves to
the caller: attributes named by keyword or tag in a query, values the node has in its
database rather than in a file, and pixel data given as a ``BulkDataURI`` (F.2.6) instead
of inline, so that a metadata answer stays a few kilobytes per image.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import Tag

LOGGER = logging.getLogger("cxr_node.web.dicomweb")
MEDIA_TYPE = "application/dicom+json"
PIXEL_DATA = "7FE00010"
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")

JsonDataset = dict[str, dict[str, Any]]


class UnknownAttribute(ValueError):
    """A query key or includefield that is neither a dictionary keyword nor a tag."""


def attribute_key(name: str) -> str:
    """``PatientID`` or ``00100020`` as the model's key, ``"00100020"`` (PS3.18 8.3.4.1).

    Raises :class:`UnknownAttribute` for a name that is neither, or a private or
    repeating-group tag that has no keyword (this node matches none of those).
    """
    if _TAG.match(name):
        key = name.upper()
        if keyword_for_tag(int(key, 16)):
            return key
        raise UnknownAttribute(f'attribute "{name}" is not in the DICOM data dictionary')
    tag = tag_for_keyword(name)
    if tag is None:
        raise UnknownAttribute(f'attribute "{name}" is not a DICOM keyword or tag')
    return f"{tag:08X}"


def keyword(key: str) -> str:
    """``"00100020"`` -> ``"PatientID"``."""
    return keyword_for_tag(int(key, 16)) or key


def dataset_json(ds: Dataset) -> JsonDataset:
    """``ds`` in the JSON model, sorted by tag; an element that pydicom cannot write (a
    malformed value from a sender) is left out and logged rather than failing the answer."""
    model = ds.to_json_dict(bulk_data_threshold=2**31, suppress_invalid_tags=True)
    return dict(sorted(model.items()))


def values_json(**values: Any) -> JsonDataset:
    """Attributes by keyword with the node's own values (a database column, a count).

    ``None`` gives the attribute with no value, as a required attribute the node does not
    know is answered (PS3.18 10.6.3.3: "if not present, shall be returned empty").
    """
    ds = Dataset()
    for name, value in values.items():
        setattr(ds, name, value)
    return dataset_json(ds)


def bulk_data(vr: str, uri: str) -> dict[str, str]:
    """An element whose value is fetched from ``uri`` (PS3.18 F.2.6)."""
    return {"vr": vr, "BulkDataURI": uri}


def first_value(model: JsonDataset, name: str) -> Any:
    """The first value of the attribute ``name`` (keyword) in ``model``, or None."""
    element = model.get(f"{Tag(name):08X}")
    if not element or not element.get("Value"):
        return None
    value = element["Value"][0]
    if dictionary_VR(name) == "PN" and isinstance(value, dict):
        return value.get("Alphabetic")
    return value


def encode(models: list[JsonDataset]) -> bytes:
    """The response body: a JSON array of datasets (PS3.18 F.2)."""
    return json.dumps(models, separators=(",", ":"), allow_nan=False,
                      default=_unserialisable).encode()


def _unserialisable(value: object) -> str:
    LOGGER.warning("a value of type %s written as text in DICOM JSON", type(value).__name__)
    return str(value)
