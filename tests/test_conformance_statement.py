"""docs/conformance-statement.md against the code: contexts, identification, statuses, objects.

Each test reads one marked table of the statement and compares it, both ways, with what the
node does: a SOP class or transfer syntax the listener accepts and the statement omits fails,
and so does one the statement lists that the listener does not accept. A failure prints the
rows the code implies, ready to paste.
"""

from __future__ import annotations

import re

import pytest
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.tag import Tag

from config.settings import Settings
from model import BUNDLED_MODEL
from model.card import ModelCard
from node import statuses
from node.results.sr import FINDING_SITES
from node.statuses import Rejection, StoreStatus
from tests.docs_check import (
    ACCEPTED_SYNTAXES_TABLE,
    CONFORMANCE_STATEMENT,
    backticked,
    block,
    built_objects,
    doc_text,
    listener_ae,
    render_accepted_rows,
    render_proposed_rows,
    render_transfer_syntax_rows,
    sender_requests,
    sr_codes,
    table_rows,
    triplets,
)
from tests.docs_check import accepted_contexts as listener_contexts

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def statement() -> str:
    return doc_text(CONFORMANCE_STATEMENT)


@pytest.fixture(scope="module")
def objects():
    return built_objects()


@pytest.fixture(scope="module")
def requests(objects):
    """The sender's A-ASSOCIATE-RQs: a batch of every kind of result object (both SR
    classes), then a batch whose only file could not be read."""
    sr_3d, _, sr_2d, _ = objects.sr[:4]
    return sender_requests([[sr_3d, sr_2d, objects.plain["gsps"], objects.plain["sc"]],
                            [None]])


def test_accepted_sop_classes_are_those_the_listener_registers(statement):
    contexts = listener_contexts()
    rows = table_rows(block(statement, "accepted-contexts"))
    listed = [backticked(row[1])[0] for row in rows]

    assert len(listed) == len(set(listed)), "a SOP class is listed twice"
    missing, extra = set(contexts) - set(listed), set(listed) - set(contexts)
    assert not missing and not extra, (
        f"accepted by the listener, not in the statement: {sorted(missing)}; in the "
        f"statement, not accepted: {sorted(extra)}. The table the code implies:\n"
        + render_accepted_rows(contexts))
    for row in rows:
        assert row[2:] == [ACCEPTED_SYNTAXES_TABLE, "SCP", "None"], row


def test_accepted_transfer_syntaxes_are_the_listeners_in_its_order(statement):
    per_context = {tuple(syntaxes) for syntaxes in listener_contexts().values()}
    assert len(per_context) == 1, "the listener no longer accepts one list for every context"
    (syntaxes,) = per_context
    rows = table_rows(block(statement, "accepted-transfer-syntaxes"))
    listed = [backticked(row[2])[0] for row in rows]

    assert listed == list(syntaxes), (
        f"the statement's {ACCEPTED_SYNTAXES_TABLE} is not the listener's list in its order "
        "of preference; the table the code implies:\n"
        + render_transfer_syntax_rows(list(syntaxes)))
    assert [row[0] for row in rows] == [str(i) for i in range(1, len(rows) + 1)]


def test_proposed_contexts_are_what_the_sender_really_proposes(statement, requests):
    proposed = {context for request in requests for context in request.contexts}
    rows = table_rows(block(statement, "proposed-contexts"))
    listed = set()
    for row in rows:
        abstract, *syntaxes = backticked(row[1]) + backticked(row[2])
        listed.add((abstract, tuple(syntaxes)))
        assert row[3:] == ["SCU", "None"], row

    assert listed == proposed, ("the statement's proposed contexts differ from the sender's "
                                "A-ASSOCIATE-RQ; the table the code implies:\n"
                                + render_proposed_rows(proposed))
    # One context per SOP class in the batch, the unreadable batch proposing Verification.
    assert [abstract for abstract, _ in requests[1].contexts] == ["1.2.840.10008.1.1"]
    assert all(request.calling_ae_title == Settings().dicom.ae_title for request in requests)


def _identification(statement: str) -> dict[str, list[str]]:
    rows = table_rows(block(statement, "implementation-identification"))
    return {row[0]: [backticked(cell)[0] for cell in row[1:]] for row in rows}


def test_implementation_identification_is_the_listeners_and_the_senders(statement, requests):
    table = _identification(statement)
    ae = listener_ae()
    sender = requests[0]

    assert table["Implementation Class UID"] == [ae.implementation_class_uid,
                                                 sender.implementation_class_uid]
    assert table["Implementation Version Name"] == [ae.implementation_version_name,
                                                    sender.implementation_version_name]
    assert table["Maximum PDU length received"] == [str(Settings().dicom.max_pdu_bytes),
                                                    str(sender.maximum_pdu_length)]
    assert ae.maximum_pdu_size == Settings().dicom.max_pdu_bytes


def test_every_c_store_status_the_node_returns_is_in_the_statement(statement):
    rows = table_rows(block(statement, "store-statuses"))
    listed = {int(backticked(row[2])[0], 16): backticked(row[3])[0] for row in rows}

    assert listed == {int(status): status.name for status in StoreStatus}, (
        "Table 4.2-10 must list every member of node.statuses.StoreStatus, and only them, "
        "with its code and name")


def test_every_association_rejection_is_in_the_statement(statement):
    defined = {name: value for name, value in vars(statuses).items()
               if isinstance(value, Rejection)}
    rows = table_rows(block(statement, "association-rejections"))
    listed = {}
    for row in rows:
        codes = [int(backticked(cell)[0], 16) for cell in row[:3]]
        listed[backticked(row[3])[0]] = tuple(codes)

    assert listed == {name: (r.result, r.source, r.reason) for name, r in defined.items()}


def test_sr_codes_are_those_our_reports_carry(statement, objects):
    card = ModelCard.load(BUNDLED_MODEL, verify_weights=False)
    finding_codes = {(f.code, f.scheme) for f in card.findings}
    carried = set()
    for sr in objects.sr:
        for role, code, scheme, meaning in sr_codes(sr):
            if (code, scheme) in finding_codes:
                continue  # Table 8.3-2
            if role == "value" and scheme == "DCM" and code in ("CR", "DX"):
                continue  # the source's modality in the image library
            carried.add((code, scheme, meaning))
    # Every finding site, whether or not the phantom's findings used it.
    carried |= {(site.value, site.scheme_designator, site.meaning)
                for site in FINDING_SITES.values()}
    listed = set(triplets(block(statement, "sr-codes")))

    assert listed == carried, (f"in the SR, not in Table 8.3-1: {sorted(carried - listed)}; "
                               f"in Table 8.3-1, not in the SR: {sorted(listed - carried)}")


def test_findings_vocabulary_is_the_bundled_cards(statement):
    card = ModelCard.load(BUNDLED_MODEL, verify_weights=False)
    rows = table_rows(block(statement, "findings-vocabulary"))
    listed = [(row[0], triplets(row[1]), triplets(row[2])) for row in rows]
    expected = []
    for finding in card.findings:
        site = FINDING_SITES.get((finding.scheme, finding.code))
        expected.append((finding.label, [(finding.code, finding.scheme, finding.meaning)],
                         [(site.value, site.scheme_designator, site.meaning)] if site else []))

    assert listed == expected


@pytest.mark.parametrize("kind", ["sr", "gsps", "sc"])
def test_created_object_attributes_are_all_in_the_statement(statement, objects, kind):
    rows = table_rows(block(statement, f"{kind}-attributes"))
    listed = {}
    for row in rows:
        (keyword,) = backticked(row[1])
        tag = tag_for_keyword(keyword)
        assert tag is not None, f"{keyword} is not a DICOM keyword"
        group, element = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", row[2]).groups()
        assert Tag(int(group, 16), int(element, 16)) == tag, f"{keyword} is {Tag(tag)}"
        listed[keyword] = row[4]
    built = getattr(objects, kind)
    written = {element.keyword for ds in built for element in ds}
    always = {keyword for keyword, presence in listed.items() if presence == "always"}
    plain = {element.keyword for element in objects.plain[kind]}

    assert written <= set(listed), (f"written but not in the {kind} table: "
                                    f"{sorted(written - set(listed))}")
    assert always <= plain, f"listed as always but absent: {sorted(always - plain)}"
    assert not set(listed) - written, (f"in the {kind} table but never written for these "
                                       f"sources: {sorted(set(listed) - written)}")
    for ds in built:
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
        assert not [keyword_for_tag(e.tag) for e in ds if e.tag.is_private]


def test_dicomweb_resources_are_the_routes_the_web_service_serves(statement, tmp_path):
    """Table 4.5-1 against the app ``cxr-node serve`` builds: every /dicomweb route and
    method, and only them."""
    from node.metrics import NodeMetrics
    from node.web.app import build_app
    from node.web.auth import Accounts
    from node.web.dicomweb.stow import StowService
    from node.web.health import Readiness
    from storage.db import Database

    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path)}})
    db = Database.connect(settings.storage.resolved_database_url())
    try:
        app = build_app(settings, Readiness(), NodeMetrics(), "serve", Accounts(settings, db),
                        stow=StowService(settings, db, None, None, None))
    finally:
        db.dispose()
    served = {(method, route.path) for route in app.routes
              if route.path.startswith("/dicomweb") for method in route.methods - {"HEAD"}}
    listed = {(backticked(row[0])[0], backticked(row[1])[0])
              for row in table_rows(block(statement, "dicomweb-resources"))}

    assert listed == served, (f"served, not in Table 4.5-1: {sorted(served - listed)}; "
                              f"listed, not served: {sorted(listed - served)}")
