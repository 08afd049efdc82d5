"""What the documents in docs/ claim, read from their marked tables, and what the code does.

A table a test checks sits between ``<!-- name:begin -->`` and ``<!-- name:end -->``. The
facts come from the code itself, never from a copy of it: the contexts the listener's AE
registers, the A-ASSOCIATE-RQ the sender really sends to a pynetdicom peer, and result
objects built by the same builders, device and algorithm as the worker's.
"""

from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt, sop_class
from pynetdicom.sop_class import Verification

from config.settings import Settings
from model import BUNDLED_MODEL
from model.card import ModelCard
from model.phantom import synthesize_case
from node.reporting import COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, SECONDARY_CAPTURE, Reporter
from node.results import (
    ImageFinding,
    build_measurement_report,
    build_not_analysed_report,
    build_presentation_state,
    build_secondary_capture,
)
from node.scp.listener import Listener
from node.sender import Sender

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CONFORMANCE_STATEMENT = DOCS / "conformance-statement.md"
IHE_AIR = DOCS / "ihe-air.md"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
VERIFICATION = str(Verification)
# The statement's table of the transfer syntaxes every accepted context takes.
ACCEPTED_SYNTAXES_TABLE = "Table 4.2-9"
# A coded concept as DICOM writes it in prose: (code value, scheme designator, "meaning").
_TRIPLET = re.compile(r'\(([^,()\s]+), ([A-Za-z0-9-]+), "([^"]+)"\)')
_BACKTICKED = re.compile(r"`([^`]+)`")


# -- reading the documents -------------------------------------------------------------

def block(text: str, name: str) -> str:
    """The text between the ``name`` markers; fails the test when they are missing."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, \
        f"the document must hold exactly one {begin} ... {end} block"
    return text.split(begin, 1)[1].split(end, 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the Markdown table in ``text``, as stripped cells."""
    rows = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    body = [row for row in rows[1:] if not re.fullmatch(r"\|[\s|:-]+\|", row)]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in body]


def backticked(cell: str) -> list[str]:
    return _BACKTICKED.findall(cell)


def triplets(text: str) -> list[tuple[str, str, str]]:
    return _TRIPLET.findall(text)


def doc_text(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    return path.read_text(encoding="utf-8")


# -- names, as the tables print them ---------------------------------------------------

def uid_name(uid: str) -> str:
    """pydicom's name for a UID, pynetdicom's keyword spelled out when pydicom has none."""
    name = UID(uid).name
    if name == uid:
        keyword = next((k for k, v in vars(sop_class).items()
                        if k[:1].isupper() and isinstance(v, str) and v == uid), uid)
        name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", keyword)
    return name + (" (retired)" if UID(uid).is_retired else "")


def _uid_order(uid: str) -> tuple:
    return (uid != VERIFICATION, [int(part) for part in uid.split(".")])


# -- the listener ----------------------------------------------------------------------

def listener_ae():  # noqa: ANN201 - pynetdicom AE
    """The AE the listener of a default node builds (nothing is opened or started)."""
    return Listener(Settings(), None, None, None, None)._ae


def accepted_contexts() -> dict[str, list[str]]:
    """{abstract syntax: transfer syntaxes in the listener's order of preference}."""
    return {str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax]
            for cx in listener_ae().supported_contexts}


def render_accepted_rows(contexts: dict[str, list[str]]) -> str:
    return "\n".join(f"| {uid_name(uid)} | `{uid}` | {ACCEPTED_SYNTAXES_TABLE} | SCP | None |"
                     for uid in sorted(contexts, key=_uid_order))


def render_transfer_syntax_rows(syntaxes: list[str]) -> str:
    return "\n".join(f"| {i} | {uid_name(uid)} | `{uid}` |" for i, uid in enumerate(syntaxes, 1))


# -- result objects as the worker builds them ----------------------------------------

def production_reporter() -> Reporter:
    """A Reporter of a default node with the bundled model: its device and algorithm are
    what every result object of such a node carries."""
    card = ModelCard.load(BUNDLED_MODEL, verify_weights=False)
    return Reporter(Settings(), None, card)


def phantom_with_findings(seed: int = 11) -> tuple[Dataset, list[ImageFinding]]:
    """A small synthetic DX chest radiograph and its drawn boxes as detections."""
    card = ModelCard.load(BUNDLED_MODEL, verify_weights=False)
    findings = {finding.label: finding for finding in card.findings}
    for index in range(200):
        case = synthesize_case(seed, index, size_range=(256, 320))
        if len(case.boxes) >= 2:
            source = case.dataset
            return source, [
                ImageFinding(str(source.SOPInstanceUID), findings[box.label],
                             round(0.873 - 0.109 * i, 3), (box.x1, box.y1, box.x2, box.y2))
                for i, box in enumerate(case.boxes)]
    raise AssertionError("no synthetic case with two findings in 200 tries")


def rich_source(source: Dataset) -> Dataset:
    """``source`` with the optional patient, study and trial attributes a hospital's have."""
    rich = copy.deepcopy(source)
    rich.SpecificCharacterSet = "ISO_IR 192"
    rich.IssuerOfPatientID = "HOSPITAL"
    rich.PatientComments = "comment"
    rich.PatientIdentityRemoved = "NO"
    rich.ClinicalTrialSponsorName = "sponsor"
    rich.NameOfPhysiciansReadingStudy = "Reader^Rita"
    rich.PatientAge = "054Y"
    rich.PatientSize = "1.80"
    rich.PatientWeight = "70"
    rich.AdmittingDiagnosesDescription = "cough"
    rich.PixelSpacing = [0.5, 0.5]
    return rich


@dataclass
class BuiltObjects:
    """Every kind of result object, from a plain, a rich and a bare source."""

    sr: list[Dataset]
    gsps: list[Dataset]
    sc: list[Dataset]
    plain: dict[str, Dataset]  # kind -> the object built from the plain source


def built_objects() -> BuiltObjects:
    reporter = production_reporter()
    device, algorithm = reporter.device, reporter.algorithm
    plain, findings = phantom_with_findings()
    rich = rich_source(plain)
    # Neither Body Part Examined nor Laterality: Laterality goes out empty (unknown).
    bare = copy.deepcopy(plain)
    del bare.BodyPartExamined
    sr, gsps, sc = [], [], []
    for source in (plain, rich, bare):
        first = build_measurement_report([source], findings, device, algorithm)
        sr += [first,
               build_measurement_report([source], findings, device, algorithm,
                                        predecessor=first),
               build_measurement_report([source], [], device, algorithm,
                                        comprehensive_3d=False),
               build_not_analysed_report([source], "not a chest radiograph", device, algorithm)]
        gsps += [build_presentation_state([source], findings, device, algorithm),
                 build_presentation_state([source], [], device, algorithm)]
        sc.append(build_secondary_capture(source, findings, device, algorithm))
    return BuiltObjects(sr, gsps, sc, {"sr": sr[0], "gsps": gsps[0], "sc": sc[0]})


# -- SR content ------------------------------------------------------------------------

def _triplet(item: Dataset) -> tuple[str, str, str]:
    return (str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def sr_codes(sr: Dataset) -> set[tuple[str, str, str, str]]:
    """(role, code, scheme, meaning) of every coded concept in ``sr``'s content tree (or
    under one content item): "name" for concept names, "value" for CODE values, "unit"
    for NUM units."""
    found = {("name", *_triplet(sr.ConceptNameCodeSequence[0]))}

    def walk(items) -> None:  # noqa: ANN001
        for item in items:
            if "ConceptNameCodeSequence" in item:
                found.add(("name", *_triplet(item.ConceptNameCodeSequence[0])))
            if item.ValueType == "CODE":
                found.add(("value", *_triplet(item.ConceptCodeSequence[0])))
            if item.ValueType == "NUM":
                units = item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
                found.add(("unit", *_triplet(units)))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def content_items(sr: Dataset, code: str, scheme: str) -> list[Dataset]:
    """Every content item of ``sr`` whose concept name is (code, scheme)."""
    found = []

    def walk(items) -> None:  # noqa: ANN001
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if name and (name[0].CodeValue, name[0].CodingSchemeDesignator) == (code, scheme):
                found.append(item)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


# -- the sender, against a real peer ---------------------------------------------------

@dataclass
class AssociationRequest:
    """What a requestor's A-ASSOCIATE-RQ said, as a pynetdicom acceptor read it."""

    calling_ae_title: str
    contexts: list[tuple[str, tuple[str, ...]]]
    implementation_class_uid: str
    implementation_version_name: str
    maximum_pdu_length: int


def sender_requests(batches: list[list[Dataset | None]]) -> list[AssociationRequest]:
    """Let a default node's sender send each batch (``None``: a result file that could not
    be read) to a pynetdicom Storage SCP on loopback; return what each association proposed.
    """
    seen: list[AssociationRequest] = []
    lock = threading.Lock()

    def on_requested(event: evt.Event) -> None:
        requestor = event.assoc.requestor
        with lock:
            seen.append(AssociationRequest(
                str(requestor.primitive.calling_ae_title).strip(),
                [(str(cx.abstract_syntax), tuple(str(ts) for ts in cx.transfer_syntax))
                 for cx in requestor.requested_contexts],
                str(requestor.implementation_class_uid),
                str(requestor.implementation_version_name),
                int(requestor.maximum_length)))

    peer = AE(ae_title="DOCS-PACS")
    for uid in (COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, GSPS, SECONDARY_CAPTURE):
        peer.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    peer.add_supported_context(Verification)
    server = peer.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, lambda event: 0x0000)])
    try:
        settings = Settings.model_validate({"destinations": [{
            "name": "pacs", "ae_title": "DOCS-PACS", "host": "127.0.0.1",
            "port": server.server_address[1]}]})
        sender = Sender(settings, None, None)
        sent: list[int] = []
        sender._sent = lambda transfer_id, *_: sent.append(transfer_id)
        sender._failed = lambda *_args, **_kwargs: None
        for batch in batches:
            items = [(number, ds, "1.2.3") for number, ds in enumerate(batch, 1)]
            sender._load = lambda _ids, items=items: items
            sender._send_batch(settings.destinations[0], [number for number, *_ in items])
        stored = sum(ds is not None for batch in batches for ds in batch)
        assert len(sent) == stored, f"the peer stored {len(sent)} of {stored} objects"
    finally:
        server.shutdown()
    assert len(seen) == len(batches), f"{len(seen)} associations for {len(batches)} batches"
    return seen


def render_proposed_rows(contexts: set[tuple[str, tuple[str, ...]]]) -> str:
    rows = []
    for uid, syntaxes in sorted(contexts, key=lambda cx: _uid_order(cx[0])):
        listed = ", ".join(f"{uid_name(ts)} `{ts}`" for ts in syntaxes)
        rows.append(f"| {uid_name(uid)} | `{uid}` | {listed} | SCU | None |")
    return "\n".join(rows)
