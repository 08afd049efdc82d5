"""How the node reads a DICOMweb request: query keys (PS3.18 8.3.4) and Accept headers, as
OHIF, dicomweb-client and curl send them. Matching runs in SQLite, as the node runs it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from node.web.dicomweb.qido import MAX_RESULTS, BadQuery, Level, parse_query
from node.web.dicomweb.wado import frame_syntax, instance_syntax_acceptable
from storage.db import Database
from storage.models import Study

EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture
def db(tmp_path):
    database = Database.connect(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    with database.session() as session:
        for n, (patient_id, name, date) in enumerate([
                ("A_1", "DOE^JANE", "20260115"), ("AB1", "Doe^John", "20251231"),
                ("A%9", "ROE^ANNA", None)]):
            session.add(Study(study_uid=f"1.2.3.{n}", patient_id=patient_id,
                              patient_name=name, study_date=date))
    yield database
    database.dispose()


def found(db: Database, *items: tuple[str, str]) -> list[str]:
    query = parse_query(list(items), Level.STUDY)
    with db.session() as session:
        rows = session.scalars(select(Study.patient_id).where(
            *(match.sql(getattr(Study, {"PatientID": "patient_id", "PatientName":
                                        "patient_name", "StudyDate": "study_date",
                                        "StudyInstanceUID": "study_uid"}[match.keyword]))
              for match in query.study)).order_by(Study.id))
        return list(rows)


def test_wildcards_names_dates_and_uid_lists_match_as_ps3_4_says(db):
    assert found(db, ("PatientID", "A_1")) == ["A_1"]
    assert found(db, ("PatientID", "A_*")) == ["A_1"]  # "_" is a character, not a wildcard
    assert found(db, ("PatientID", "A%*")) == ["A%9"]
    assert found(db, ("PatientID", "A?1")) == ["A_1", "AB1"]
    assert found(db, ("PatientName", "doe*")) == ["A_1", "AB1"]  # names: any case
    assert found(db, ("PatientName", "doe^jane")) == ["A_1"]
    assert found(db, ("StudyDate", "20260101-")) == ["A_1"]
    assert found(db, ("StudyDate", "-20251231")) == ["AB1"]
    assert found(db, ("StudyDate", "20251201-20260131")) == ["A_1", "AB1"]
    assert found(db, ("StudyInstanceUID", "1.2.3.0,1.2.3.2")) == ["A_1", "A%9"]
    assert found(db, ("StudyInstanceUID", "1.2.3.1\\1.2.3.2")) == ["AB1", "A%9"]
    assert found(db, ("PatientID", "")) == ["A_1", "AB1", "A%9"]  # asks, matches all


def test_a_query_that_cannot_be_answered_is_refused_or_warned_about():
    for items in ([("StudyDate", "2026-01-15")], [("StudyDate", "yesterday-")],
                  [("StudyInstanceUID", "1.2.x")], [("limit", "-1")], [("offset", "a")],
                  [("NoSuchKeyword", "1")], [("includefield", "Nonsense")],
                  [("SeriesNumber", "one")]):
        level = Level.SERIES if items[0][0] == "SeriesNumber" else Level.STUDY
        with pytest.raises(BadQuery):
            parse_query(items, level)

    query = parse_query([("PatientSex", "F"), ("Modality", "CR"), ("fuzzymatching", "true"),
                         ("ReferencedSeriesSequence.SeriesInstanceUID", "1.2"),
                         ("limit", "5000"), ("includefield", "00100030,all")], Level.STUDY)
    assert query.study == [] and query.limit == MAX_RESULTS and query.include_all
    assert "00100030" in query.include and "00100040" in query.include
    assert [w.split(" ")[0] for w in query.warnings] == [
        "PatientSex", "Modality", "fuzzymatching", "ReferencedSeriesSequence.SeriesInstanceUID:",
        "limit"]


def test_frames_go_as_ohif_dicomweb_client_and_curl_ask():
    assert frame_syntax(OHIF_FRAMES, J2K) == J2K  # compressed, for the browser to decode
    assert frame_syntax(OHIF_FRAMES, EXPLICIT_LE) == EXPLICIT_LE
    assert frame_syntax(OHIF_FRAMES, "1.2.840.10008.1.2") == EXPLICIT_LE  # same bytes
    assert frame_syntax('multipart/related; type="application/octet-stream"', J2K) == EXPLICIT_LE
    assert frame_syntax(None, J2K) == EXPLICIT_LE and frame_syntax("*/*", J2K) == EXPLICIT_LE
    assert frame_syntax(f"multipart/related; type=application/octet-stream; "
                        f"transfer-syntax={J2K}", J2K) == J2K
    assert frame_syntax("multipart/related; type=image/jls; transfer-syntax=1.2.840.10008."
                        "1.2.4.80", J2K) is None
    assert frame_syntax("image/jpeg, " + OHIF_FRAMES, J2K) == J2K  # the first one it can
    assert frame_syntax("application/dicom+json", J2K) is None


def test_instances_go_as_stored_or_not_at_all():
    stored = {J2K}
    assert instance_syntax_acceptable('multipart/related; type="application/dicom"; '
                                      'transfer-syntax=*', stored)
    assert instance_syntax_acceptable('multipart/related; type="application/dicom"', stored)
    assert instance_syntax_acceptable(None, stored) and instance_syntax_acceptable("*/*", stored)
    assert instance_syntax_acceptable(f"multipart/related; type=application/dicom; "
                                      f"transfer-syntax={J2K}", stored)
    assert not instance_syntax_acceptable(f"multipart/related; type=application/dicom; "
                                          f"transfer-syntax={EXPLICIT_LE}", stored)
    assert not instance_syntax_acceptable(f"multipart/related; type=application/dicom; "
                                          f"transfer-syntax={J2K}", {J2K, EXPLICIT_LE})
    assert not instance_syntax_acceptable("application/dicom+json", stored)
