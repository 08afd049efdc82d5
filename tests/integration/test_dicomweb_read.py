"""Reading the node's studies over DICOMweb, as a viewer and a DICOMweb client read them.

One ``cxr-node serve`` (with its worker and the bundled model) receives three studies over
DICOM C-STORE from dcmtk's storescu: a synthetic chest radiograph with findings, the real
JPEG 2000 chest radiograph of pydicom-data, and a CT that the gate does not analyse. It
writes its SR, GSPS and SC. Then ``dicomweb-client`` (the highdicom authors' client)
searches with QIDO-RS and retrieves with WADO-RS through a viewer's console login, and
OHIF, served by the node itself, opens the study in Debian's Chromium and shows the
findings by name (screenshots in ``var/test-output/dicomweb-viewer/``).
"""

from __future__ import annotations

import http.client
import io
import re
import time
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from sqlalchemy import select

from storage import accounts
from storage.accounts import Passwords
from storage.models import AuditEvent, ResultKind, ResultObject, Study
from tests.conftest import unavailable
from tests.integration import ohif
from tests.integration.conftest import node_database, wait_until
from tests.integration.test_viewer import RAW_CODE, findings_in, shows
from tests.peers import REPO, NodeProcess, StorescpProcess, require_tool, storescu

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PASSWORD = "correct horse battery"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
SCREENSHOTS = REPO / "var" / "test-output" / "dicomweb-viewer"


class Held:
    """The running node, what was sent to it, and a logged-in viewer's DICOMweb client."""

    def __init__(self, node: NodeProcess, sources: dict[str, pydicom.Dataset]) -> None:
        self.node = node
        self.sources = sources  # "chest", "j2k", "ct" -> the dataset as sent
        self.base = f"http://127.0.0.1:{node.web_port}"

    def session(self, name: str = "vera") -> requests.Session:
        """A browser's session after logging in to the console as ``name``."""
        session = requests.Session()
        page = session.get(f"{self.base}/login", timeout=30)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        answer = session.post(f"{self.base}/login", data={
            "csrf_token": token, "name": name, "password": PASSWORD, "next": "/console"},
            allow_redirects=False, timeout=30)
        assert answer.status_code == 303 and "cxr_session" in session.cookies, answer.text
        return session

    def client(self, session: requests.Session | None = None) -> DICOMwebClient:
        return DICOMwebClient(f"{self.base}/dicomweb", session=session or self.session())

    def uid(self, name: str, level: str = "StudyInstanceUID") -> str:
        return str(getattr(self.sources[name], level))

    def results(self, name: str) -> dict[ResultKind, list[ResultObject]]:
        db = node_database(self.node)
        try:
            with db.session() as session:
                rows = session.scalars(select(ResultObject).join(Study).where(
                    Study.study_uid == self.uid(name)))
                found: dict[ResultKind, list[ResultObject]] = {}
                for row in rows:
                    found.setdefault(ResultKind(row.kind), []).append(row)
                return found
        finally:
            db.dispose()


def _chest() -> pydicom.Dataset:
    from model.phantom import synthesize_case

    ds = synthesize_case(2, 2, size_range=(1500, 2200)).dataset  # the viewer test's case
    ds.PatientName, ds.PatientID = "DOE^JANE", "DW-CHEST"
    ds.AccessionNumber, ds.StudyDate = "ACC-CHEST", "20260115"
    ds.PatientSex, ds.PatientBirthDate = "F", "19600304"
    return ds


def _j2k() -> pydicom.Dataset:
    path = get_testdata_file("RG1_J2KR.dcm", download=False)
    if path is None:
        unavailable("RG1_J2KR.dcm from the PyPI package pydicom-data is not installed")
    ds = pydicom.dcmread(path)  # the header changes, the JPEG 2000 stream stays as it is
    ds.PatientName, ds.PatientID = "ROE^JOHN", "DW-J2K"
    ds.AccessionNumber, ds.StudyDate = "ACC-J2K", "20260120"
    return ds


def _ct() -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID = "POE^ANNA", "DW-CT"
    ds.AccessionNumber, ds.StudyDate = "ACC-CT", "20250601"
    return ds


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> Held:
    for name in ("storescu", "storescp"):
        try:
            require_tool(name)
        except Exception as exc:  # noqa: BLE001 - MissingTool: the skip says which
            unavailable(str(exc))
    work = tmp_path_factory.mktemp("dicomweb")
    sources = {"chest": _chest(), "j2k": _j2k(), "ct": _ct()}
    pacs = StorescpProcess(work, "PACS").__enter__()  # where the SR, GSPS and SC go too
    node = NodeProcess(work / "node", worker={"run_in_serve": True, "device": "cpu"},
                       destinations=[{"name": "PACS", "ae_title": "PACS", "host": "127.0.0.1",
                                      "port": pacs.port}]).start()
    try:
        for name, ds in sources.items():
            path = work / f"{name}.dcm"
            ds.save_as(path, enforce_file_format=True)
            extra = ["-R", "-xv"] if name == "j2k" else []
            sent = storescu(node.port, [path], extra=extra)
            assert sent.returncode == 0, sent.stderr
        state = Held(node, sources)
        wait_until(lambda: all(state.results(name).get(kind) for name, kind in (
            ("chest", ResultKind.SR), ("chest", ResultKind.SC), ("j2k", ResultKind.SR),
            ("ct", ResultKind.NOT_ANALYSED_SR))), timeout=300, interval=0.5)
        db = node_database(node)
        from argon2 import PasswordHasher

        with db.session() as session:
            hasher = Passwords(PasswordHasher(memory_cost=8192))
            accounts.add_user(session, hasher, "vera", "viewer", PASSWORD)
        db.dispose()
        yield state
    finally:
        node.stop()
        pacs.__exit__()


def _value(model: dict, keyword: str):
    element = model.get(f"{pydicom.tag.Tag(keyword):08X}")
    values = (element or {}).get("Value") or [None]
    value = values[0]
    return value.get("Alphabetic") if isinstance(value, dict) else value


def test_studies_are_found_by_the_keys_a_radiologist_types(held):
    client = held.client()

    every = client.search_for_studies()
    by_patient = client.search_for_studies(search_filters={"PatientID": "DW-CHEST"})
    by_name = client.search_for_studies(search_filters={"PatientName": "doe*"})
    by_accession = client.search_for_studies(search_filters={"AccessionNumber": "ACC-J2K"})
    in_january = client.search_for_studies(search_filters={"StudyDate": "20260101-20260131"})
    with_ct = client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})
    with_report = client.search_for_studies(search_filters={"ModalitiesInStudy": "SR"})
    nobody = client.search_for_studies(search_filters={"PatientID": "NOBODY"})
    second = client.search_for_studies(limit=1, offset=1)

    def ids(models):
        return [_value(m, "PatientID") for m in models]

    # newest study date first
    assert ids(every) == ["DW-J2K", "DW-CHEST", "DW-CT"]
    assert ids(by_patient) == ["DW-CHEST"] and ids(by_name) == ["DW-CHEST"]
    assert ids(by_accession) == ["DW-J2K"] and ids(in_january) == ["DW-J2K", "DW-CHEST"]
    assert ids(with_ct) == ["DW-CT"] and ids(with_report) == ids(every)
    assert nobody == [] and ids(second) == ["DW-CHEST"]

    chest = by_patient[0]
    source = held.sources["chest"]
    results = held.results("chest")
    assert _value(chest, "StudyInstanceUID") == held.uid("chest")
    assert _value(chest, "PatientName") == "DOE^JANE"
    assert _value(chest, "AccessionNumber") == "ACC-CHEST"
    assert _value(chest, "StudyDate") == "20260115"
    # not in the database: read from the stored file's header
    assert _value(chest, "PatientSex") == "F" and _value(chest, "PatientBirthDate") == "19600304"
    assert _value(chest, "StudyTime") == source.StudyTime
    # the node's own SR, GSPS and SC are part of the study
    assert chest["00080061"]["Value"] == sorted({"DX", "SR", "PR", "OT"})
    produced = sum(len(rows) for rows in results.values())
    assert _value(chest, "NumberOfStudyRelatedInstances") == 1 + produced
    # the host is the request's Host header (dicomweb-client leaves the port out of it)
    assert urlsplit(_value(chest, "RetrieveURL")).path == f"/dicomweb/studies/{held.uid('chest')}"
    for required in ("ReferringPhysicianName", "StudyID", "NumberOfStudyRelatedSeries",
                     "ModalitiesInStudy"):
        assert f"{pydicom.tag.Tag(required):08X}" in chest, required


def _series_uid(held: Held, name: str) -> str:
    return held.uid(name, "SeriesInstanceUID")


def _instance_path(held: Held, name: str) -> str:
    return (f"/dicomweb/studies/{held.uid(name)}/series/{_series_uid(held, name)}"
            f"/instances/{held.uid(name, 'SOPInstanceUID')}")


def test_series_and_instances_include_the_nodes_own_results(held):
    client = held.client()
    chest = held.sources["chest"]

    series = client.search_for_series(held.uid("chest"), fields=["BodyPartExamined"])
    reports = client.search_for_series(search_filters={"Modality": "SR"})
    images = client.search_for_instances(held.uid("chest"), _series_uid(held, "chest"))
    by_uid = client.search_for_instances(
        search_filters={"SOPInstanceUID": held.uid("j2k", "SOPInstanceUID")})
    ct_study = client.search_for_instances(held.uid("ct"))

    assert [_value(s, "Modality") for s in series] == ["DX", "SR", "PR", "OT"]
    image_series, sr = series[0], series[1]
    assert _value(image_series, "BodyPartExamined") == chest.BodyPartExamined  # includefield
    assert _value(image_series, "SeriesDescription") == chest.SeriesDescription
    assert _value(sr, "SeriesDescription") == ohif.SR_TITLE
    assert _value(sr, "NumberOfSeriesRelatedInstances") == 1
    # across studies, each series says which study and patient it belongs to
    assert sorted(_value(s, "PatientID") for s in reports) == ["DW-CHEST", "DW-CT", "DW-J2K"]
    assert {_value(s, "StudyInstanceUID") for s in reports} == {held.uid(n) for n in held.sources}

    assert [_value(i, "SOPInstanceUID") for i in images] == [str(chest.SOPInstanceUID)]
    assert (_value(images[0], "Rows"), _value(images[0], "Columns")) == (chest.Rows, chest.Columns)
    assert _value(images[0], "InstanceNumber") == int(chest.InstanceNumber)
    assert [_value(i, "PatientID") for i in by_uid] == ["DW-J2K"]
    assert _value(by_uid[0], "SeriesInstanceUID") == _series_uid(held, "j2k")
    assert sorted(_value(i, "SOPClassUID") for i in ct_study) == sorted(
        [str(held.sources["ct"].SOPClassUID), held.results("ct")[ResultKind.NOT_ANALYSED_SR][0]
         .sop_class_uid])


def test_a_retrieved_instance_is_the_stored_file_as_it_is(held):
    client = held.client()
    chest, j2k = held.sources["chest"], held.sources["j2k"]

    image = client.retrieve_instance(held.uid("chest"), _series_uid(held, "chest"),
                                     held.uid("chest", "SOPInstanceUID"))
    compressed = client.retrieve_instance(held.uid("j2k"), _series_uid(held, "j2k"),
                                          held.uid("j2k", "SOPInstanceUID"))
    study = client.retrieve_study(held.uid("chest"))
    with pytest.raises(requests.HTTPError) as transcoding:
        client.retrieve_instance(held.uid("j2k"), _series_uid(held, "j2k"),
                                 held.uid("j2k", "SOPInstanceUID"),
                                 media_types=(("application/dicom", EXPLICIT_LE),))

    assert image.SOPInstanceUID == chest.SOPInstanceUID
    assert np.array_equal(image.pixel_array, chest.pixel_array)
    assert compressed.file_meta.TransferSyntaxUID == JPEG2000_LOSSLESS  # sent as stored
    assert np.array_equal(compressed.pixel_array, j2k.pixel_array)
    assert transcoding.value.response.status_code == 406
    produced = {row.sop_instance_uid for rows in held.results("chest").values() for row in rows}
    assert {str(ds.SOPInstanceUID) for ds in study} == {str(chest.SOPInstanceUID)} | produced
    assert {ds.Modality for ds in study} == {"DX", "SR", "PR", "OT"}

    # byte for byte what the node stored (the multipart part, undecoded)
    answer = held.session().get(held.base + _instance_path(held, "j2k"), timeout=60,
                                headers={"Accept": 'multipart/related; type="application/dicom"'})
    boundary = answer.headers["content-type"].split("boundary=")[1].encode()
    part = answer.content.split(b"--" + boundary)[1]
    header, _, body = part.partition(b"\r\n\r\n")
    stored = next((held.node.data_dir / "dicom").rglob(f"{held.uid('j2k', 'SOPInstanceUID')}.dcm"))
    assert body[:-2] == stored.read_bytes()
    assert f"transfer-syntax={JPEG2000_LOSSLESS}".encode() in header


def test_metadata_carries_the_findings_and_points_at_the_pixels(held):
    client = held.client()
    chest = held.sources["chest"]

    metadata = client.retrieve_study_metadata(held.uid("chest"))
    series_metadata = client.retrieve_series_metadata(held.uid("chest"), _series_uid(held, "chest"))

    by_modality = {_value(m, "Modality"): m for m in metadata}
    assert set(by_modality) == {"DX", "SR", "PR", "OT"}
    report_row = held.results("chest")[ResultKind.SR][0]
    stored_report = pydicom.dcmread(held.node.data_dir / report_row.path)
    report = pydicom.Dataset.from_json(by_modality["SR"])
    assert findings_in(report) == findings_in(stored_report) and findings_in(report)
    assert len(series_metadata) == 1 and "7FE00010" in series_metadata[0]
    pixel_data = by_modality["DX"]["7FE00010"]
    assert set(pixel_data) == {"vr", "BulkDataURI"}  # by reference, never inline
    uri = held.base + urlsplit(pixel_data["BulkDataURI"]).path  # the port: see above
    assert client.retrieve_bulkdata(uri) == [chest.PixelData]
    assert "7FE00010" not in by_modality["SR"]


def test_frames_come_uncompressed_or_as_stored_when_asked(held):
    client = held.client()
    chest, j2k = held.sources["chest"], held.sources["j2k"]
    j2k_uids = (held.uid("j2k"), _series_uid(held, "j2k"), held.uid("j2k", "SOPInstanceUID"))

    native = client.retrieve_instance_frames(held.uid("chest"), _series_uid(held, "chest"),
                                             held.uid("chest", "SOPInstanceUID"), [1])
    decoded = client.retrieve_instance_frames(*j2k_uids, [1])
    as_stored = client.retrieve_instance_frames(
        *j2k_uids, [1], media_types=(("application/octet-stream", "*"),))
    # what OHIF's image loader sends (omitQuotationForMultipartRequest)
    ohif_like = held.session().get(
        held.base + _instance_path(held, "j2k") + "/frames/1", timeout=60,
        headers={"Accept": "multipart/related; type=application/octet-stream; "
                           "transfer-syntax=*"})
    beyond = held.session().get(held.base + _instance_path(held, "j2k") + "/frames/2",
                                timeout=60)

    assert native == [chest.PixelData]
    assert decoded == [j2k.pixel_array.astype("<u2").tobytes()]
    assert as_stored == [next(generate_frames(j2k.PixelData, number_of_frames=1))]
    assert ohif_like.status_code == 200
    assert f"transfer-syntax={JPEG2000_LOSSLESS}".encode() in ohif_like.content[:300]
    assert beyond.status_code == 404


def test_a_rendered_image_is_the_picture_a_person_sees(held):
    from PIL import Image

    answer = held.session().get(held.base + _instance_path(held, "chest") + "/rendered",
                                headers={"Accept": "image/png"}, timeout=60)

    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(answer.content))
    chest = held.sources["chest"]
    assert picture.size == (chest.Columns, chest.Rows) and picture.mode == "L"
    assert 0 < np.asarray(picture).mean() < 255  # not a blank page


def test_without_a_viewer_login_nothing_is_read(held):
    anonymous = requests.Session()
    forged = requests.Session()
    forged.cookies.set("cxr_session", "x" * 43)
    paths = ["/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances",
             f"/dicomweb/studies/{held.uid('chest')}/series",
             f"/dicomweb/studies/{held.uid('chest')}/metadata",
             f"/dicomweb/studies/{held.uid('chest')}", _instance_path(held, "chest"),
             _instance_path(held, "chest") + "/frames/1",
             _instance_path(held, "chest") + "/bulkdata/7FE00010",
             _instance_path(held, "chest") + "/rendered"]

    for session in (anonymous, forged):
        for path in paths:
            answer = session.get(held.base + path, timeout=30)
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert b"DOE" not in answer.content
    viewer = anonymous.get(f"{held.base}/viewer/viewer?StudyInstanceUIDs={held.uid('chest')}",
                           allow_redirects=False, timeout=30)
    assert viewer.status_code == 303
    assert viewer.headers["location"] == (
        f"/login?next=%2Fviewer%2Fviewer%3FStudyInstanceUIDs%3D{held.uid('chest')}")

    client = held.client(held.session())
    client.retrieve_series_metadata(held.uid("chest"), _series_uid(held, "chest"))
    db = node_database(held.node)
    try:
        with db.session() as session:
            reads = list(session.scalars(select(AuditEvent).where(
                AuditEvent.event_type.in_(["dicomweb-retrieve", "dicomweb-query"]))))
    finally:
        db.dispose()
    assert reads and {event.user_name for event in reads} == {"vera"}
    assert any(e.event_id == "110103" and e.study_uid == held.uid("chest") for e in reads)


def _raw_get(held: Held, path: str, cookie: str) -> tuple[int, bytes]:
    """A GET with the path exactly as written: no client tidies ``..`` away first."""
    connection = http.client.HTTPConnection("127.0.0.1", held.node.web_port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.putheader("Cookie", cookie)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_unknown_or_malformed_uids_are_404_or_400_and_never_a_file_outside(held):
    session = held.session()
    unknown = "1.2.826.0.1.3680043.10.9999.404"
    chest_series = f"/dicomweb/studies/{held.uid('chest')}/series/{_series_uid(held, 'chest')}"

    def status(path: str) -> int:
        return session.get(held.base + path, timeout=30).status_code

    for path in (f"/dicomweb/studies/{unknown}", f"/dicomweb/studies/{unknown}/metadata",
                 f"/dicomweb/studies/{unknown}/series",
                 f"/dicomweb/studies/{held.uid('chest')}/series/{unknown}/metadata",
                 f"{chest_series}/instances/{unknown}/frames/1",
                 f"{chest_series}/instances/{held.uid('chest', 'SOPInstanceUID')}/bulkdata/"
                 "00280010"):
        assert status(path) == 404, path
    for junk in ("1.2.abc", "1." + "2" * 70, "01.2", "1..2"):
        assert status(f"/dicomweb/studies/{junk}/metadata") == 400, junk
        assert status(f"/dicomweb/studies/{junk}/series") == 400, junk
        assert status(f"/dicomweb/studies?StudyInstanceUID={junk}") == 400, junk
    assert status("/dicomweb/studies?StudyDate=last-week") == 400
    assert status(f"{chest_series}/instances/{held.uid('chest', 'SOPInstanceUID')}"
                  "/frames/0") == 400

    cookie = f"cxr_session={session.cookies['cxr_session']}"
    database = "cxr-node.sqlite3"
    for path in (f"/dicomweb/studies/../../{database}",
                 f"/dicomweb/studies/..%2F..%2F{database}/metadata",
                 f"/dicomweb/studies/%2e%2e/series/%2e%2e/instances/{database}",
                 f"{chest_series}/instances/..%2F..%2F..%2F..%2F{database}",
                 f"/viewer/../../data/{database}", f"/viewer/..%2F..%2F..%2F{database}",
                 "/viewer/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"):
        code, body = _raw_get(held, path, cookie)
        assert code in (400, 404), (path, code)
        assert b"SQLite format 3" not in body and b"root:" not in body, path


@pytest.mark.slow
def test_radiologist_opens_the_study_in_ohif_served_by_the_node_and_sees_the_findings(held):
    ohif.require_viewer()
    started = time.monotonic()
    chest = held.sources["chest"]
    report = pydicom.dcmread(held.node.data_dir / held.results("chest")[ResultKind.SR][0].path)
    expected = findings_in(report)
    assert len(expected) >= 3, f"the bundled model should find several: {expected}"

    with ohif.chromium_page(SCREENSHOTS) as page:
        # from the console's page of the study, after the login, to the viewer
        page.page.goto(f"{held.base}/console/studies/{chest.StudyInstanceUID}")
        page.page.fill("#name", "vera")
        page.page.fill("#password", PASSWORD)
        page.page.get_by_role("button", name="Log in").click()
        page.page.get_by_role("link", name="Open in the viewer").click()
        page.page.get_by_text("Skip all").click()  # OHIF's tour, once the image is up
        print(f"\nstudy opened from the node: {page.shot('1-study')}")
        page.open_series(ohif.SR_TITLE)
        labels = page.overlay_labels(len(expected))
        print(f"labels on the image: {labels}  ({page.shot('2-sr')})")
        for name, percent in expected:
            assert shows(labels, name, percent), f"no {name} {percent}: {labels}"
        assert not [label for label in labels if RAW_CODE.search(label)], labels
        panel = page.track_measurements(len(expected))
        print(f"measurement panel after tracking: {panel!r}  ({page.shot('3-sr-tracked')})")
        assert f"Measurements ({len(expected)})" in panel
        for name, percent in expected:
            assert shows([panel], name, percent), f"{name} {percent} not listed: {panel}"
        page.open_series(ohif.SC_TITLE)
        corner = page.wait_for_viewport_series(ohif.SC_TITLE)
        print(f"secondary capture ({corner!r}): {page.shot('4-secondary-capture')}")
        # OHIF's study list: the node's QIDO-RS, newest first, with the results' modalities
        page.page.goto(f"{held.base}/viewer/")
        for accession in ("ACC-J2K", "ACC-CHEST", "ACC-CT"):
            page.page.get_by_text(accession, exact=True).wait_for()
        listed = page.page.inner_text("body")
        print(f"study list: {page.shot('5-study-list')}")
        assert listed.index("ACC-J2K") < listed.index("ACC-CHEST") < listed.index("ACC-CT")
        assert "DOE, JANE" in listed and "DX\\OT\\PR\\SR" in listed
    print(f"OHIF on the node's DICOMweb took {time.monotonic() - started:.1f} s")
