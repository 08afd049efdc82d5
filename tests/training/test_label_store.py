"""Labels into the database: a VinDr import matched to stored images, superseded by a later one."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from config.settings import Settings
from node.cli import main
from storage.files import DicomFileStore
from storage.models import AuditEvent, Instance, Label, LabelBatch, Series, Study
from training.label_store import current_labels, import_file
from training.labels import LabelImportError

VINDR_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"


def add_image(database, sop_uid: str, study_uid: str) -> None:
    with database.session() as session:
        study = Study(study_uid=study_uid, patient_id=f"P{study_uid[-1]}")
        series = Series(study=study, series_uid=f"{study_uid}.1")
        session.add_all([study, series, Instance(
            series=series, sop_instance_uid=sop_uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"dicom/{sop_uid}.dcm",
            size_bytes=1, sha256="0" * 64)])


@pytest.fixture
def site(tmp_path, database, database_url):
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "data"),
                                                   "database_url": database_url}})
    add_image(database, "1.2.3.1.1", "1.2.3.1")
    add_image(database, "1.2.3.2.1", "1.2.3.2")
    return settings, database, DicomFileStore(settings.storage.data_dir)


def test_vindr_import_merges_readers_keeps_unmapped_and_supersedes(site, tmp_path):
    settings, database, store = site
    first = tmp_path / "train.csv"
    first.write_text(VINDR_HEADER
                     + "1.2.3.1.1,Cardiomegaly,3,R8,100,300,300,400\n"
                     + "1.2.3.1.1,Cardiomegaly,3,R9,110,310,310,410\n"
                     + "1.2.3.1.1,Aortic enlargement,0,R8,200,100,260,160\n"
                     + "1.2.3.1.1,Aortic enlargement,0,R9,202,102,262,162\n"
                     + "1.2.3.2.1,No finding,14,R1,,,,\n"
                     + "1.2.3.2.1,No finding,14,R2,,,,\n"
                     + "9.9.9,No finding,14,R2,,,,\n")

    summary = import_file(settings, database, store, first, "vindr")

    assert (summary.studies, summary.labels, summary.unmatched_keys) == (2, 3, ["9.9.9"])
    assert summary.unmapped_codes == [("99VINDR", "0", "Aortic enlargement")]
    with database.session() as session:
        labelled = {instance.sop_instance_uid: [(label.label, label.normal, label.x1)
                                                for label in labels]
                    for _, instance, labels in current_labels(session)}
    assert labelled == {"1.2.3.1.1": [("Cardiomegaly", False, 105.0), (None, False, 201.0)],
                        "1.2.3.2.1": [(None, True, None)]}

    second = tmp_path / "relabelled.csv"
    second.write_text("sop_instance_uid,label,x1,y1,x2,y2\n1.2.3.1.1,,,,,\n")
    import_file(settings, database, store, second, "csv")
    with database.session() as session:
        batches = session.execute(select(LabelBatch.source, LabelBatch.superseded_at)
                                  .join(Study).where(Study.study_uid == "1.2.3.1")
                                  .order_by(LabelBatch.id)).all()
        current = [(label.label, label.normal) for study, instance, labels
                   in current_labels(session) if instance.sop_instance_uid == "1.2.3.1.1"
                   for label in labels]
        kept = session.scalar(select(Label.id).where(Label.label == "Cardiomegaly"))
    assert [source for source, _ in batches] == ["vindr", "csv"]
    assert batches[0][1] is not None and batches[1][1] is None
    assert current == [(None, True)]
    assert kept is not None  # the superseded labels stay as history


def test_physionet_annotations_import_through_the_command(site, tmp_path, monkeypatch,
                                                          capsys):
    """`cxr-node labels import --format vindr` takes PhysioNet's annotations_train.csv
    (rad_id second, no class_id, classes Kaggle does not have) as it takes train.csv."""
    settings, database, store = site
    monkeypatch.setenv("CXR_NODE_STORAGE__DATA_DIR", str(settings.storage.data_dir))
    monkeypatch.setenv("CXR_NODE_STORAGE__DATABASE_URL", settings.storage.database_url)
    annotations = tmp_path / "annotations_train.csv"
    annotations.write_text("image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
                           "1.2.3.1.1,R8,Cardiomegaly,100,300,300,400\n"
                           "1.2.3.1.1,R9,Cardiomegaly,110,310,310,410\n"
                           "1.2.3.1.1,R8,Emphysema,0,0,500,500\n"
                           "1.2.3.1.1,R9,Emphysema,0,0,500,500\n"
                           "1.2.3.2.1,R1,No finding,,,,\n"
                           "1.2.3.2.1,R2,No finding,,,,\n")

    assert main(["labels", "import", str(annotations), "--format", "vindr"]) == 0

    assert capsys.readouterr().out.startswith("imported ")
    with database.session() as session:
        labelled = {instance.sop_instance_uid: [(label.label, label.code_value, label.normal,
                                                 label.x1) for label in labels]
                    for _, instance, labels in current_labels(session)}
    assert labelled == {"1.2.3.1.1": [("Cardiomegaly", "287272002", False, 105.0),
                                      (None, "Emphysema", False, 0.0)],
                        "1.2.3.2.1": [(None, None, True, None)]}


def test_a_bad_row_imports_nothing(site, tmp_path):
    settings, database, store = site
    bad = tmp_path / "train.csv"
    bad.write_text(VINDR_HEADER + "1.2.3.1.1,Cardiomegaly,3,R8,100,300,300,400\n"
                   + "1.2.3.1.1,Cardiomegaly,3,R9,310,310,110,410\n")

    with pytest.raises(LabelImportError, match="line 3"):
        import_file(settings, database, store, bad, "vindr")

    with database.session() as session:
        assert session.scalars(select(Label.id)).all() == []


def test_an_import_keeps_the_files_own_name_and_audits_who_imported_it(site, tmp_path):
    """The console imports an upload from a temporary file: the batches keep the name the
    admin chose, and the audit row names the admin and shares the batches' time."""
    settings, database, store = site
    upload = tmp_path / "tmp8k2j.part"
    upload.write_text("sop_instance_uid,label,x1,y1,x2,y2\n1.2.3.1.1,Nodule,1,2,3,4\n"
                      "1.2.3.2.1,,,,,\n")

    summary = import_file(settings, database, store, upload, "csv",
                          source_name="site-labels.csv", user_name="ada",
                          peer_address="10.0.0.7")

    with database.session() as session:
        batches = session.scalars(select(LabelBatch).order_by(LabelBatch.id)).all()
        [event] = session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "labels-imported")).all()
    assert summary.batch_ids == [batch.id for batch in batches] and len(batches) == 2
    assert {batch.labeller for batch in batches} == {"site-labels.csv"}
    assert {batch.created_at for batch in batches} == {event.occurred_at}
    assert (event.user_name, event.peer_address) == ("ada", "10.0.0.7")
    assert event.message.startswith(
        f"csv file site-labels.csv (sha256 {batches[0].source_reference}): 2 labels on 2 "
        "studies")
