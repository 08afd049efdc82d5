"""Study completion over real associations: one job per study, late instances, duplicates,
replaced instances, and the node's own objects, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pydicom
from sqlalchemy import select

from config.settings import load_settings
from storage.models import Instance, Job, Study, StudyState
from tests.factories import study_files, write_dx
from tests.integration.conftest import audit_events, node_database, wait_until
from tests.peers import storescu

QUIET = 1.0  # the test node's study_quiet_seconds


def jobs_by_study(node) -> dict[str, list[int]]:
    db = node_database(node)
    try:
        with db.session() as session:
            rows = session.execute(select(Study.study_uid, Job.study_generation)
                                   .join(Job, Job.study_id == Study.id).order_by(Job.id)).all()
    finally:
        db.dispose()
    jobs: dict[str, list[int]] = {}
    for uid, generation in rows:
        jobs.setdefault(uid, []).append(generation)
    return jobs


def send(node, files) -> None:
    result = storescu(node.port, files)
    assert result.returncode == 0, result.stdout + result.stderr


def uid_of(path, keyword: str = "StudyInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True)[keyword].value)


def settle(node) -> None:
    """Wait until no study is still receiving: the completion monitor has then queued every
    job it ever will for what was sent, so an extra job would already be there."""
    db = node_database(node)
    try:
        def receiving() -> list[str]:
            with db.session() as session:
                return list(session.scalars(select(Study.study_uid)
                                            .where(Study.state == StudyState.RECEIVING)))

        wait_until(lambda: not receiving(), timeout=QUIET + 30)
    finally:
        db.dispose()


def test_one_job_per_study_and_a_second_for_a_late_instance(start_node, database_url, tmp_path):
    node = start_node(database_url=database_url)
    first = study_files(tmp_path / "a", 4, seed=1)
    other = study_files(tmp_path / "b", 2, seed=2)
    study_a, study_b = uid_of(first[0]), uid_of(other[0])

    send(node, first[:2])
    send(node, first[2:])  # a second association to the same study within the quiet period
    send(node, other)
    wait_until(lambda: len(jobs_by_study(node)) == 2)
    settle(node)
    assert jobs_by_study(node) == {study_a: [1], study_b: [1]}

    late = write_dx(tmp_path / "late.dcm", seed=99, study_uid=study_a,
                    series_uid=uid_of(first[0], "SeriesInstanceUID"), instance_number=5)
    send(node, [late])
    wait_until(lambda: jobs_by_study(node)[study_a] == [1, 2])
    settle(node)
    assert jobs_by_study(node) == {study_a: [1, 2], study_b: [1]}


def test_duplicates_are_acknowledged_once_and_changed_content_requeues(start_node, database_url,
                                                                      tmp_path):
    node = start_node(database_url=database_url)
    [original] = study_files(tmp_path / "a", 1, seed=3)
    study = uid_of(original)
    send(node, [original])
    wait_until(lambda: jobs_by_study(node) == {study: [1]})

    send(node, [original])  # identical: acknowledged, no second copy, no job
    settle(node)
    assert jobs_by_study(node) == {study: [1]}
    files = list((node.data_dir / "dicom").rglob("*.dcm"))
    assert len(files) == 1
    assert len(audit_events(node, "instance-duplicate")) == 1

    changed = pydicom.dcmread(original)
    changed.PatientName = "Corrected^Name"
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    send(node, [tmp_path / "changed.dcm"])
    wait_until(lambda: jobs_by_study(node) == {study: [1, 2]})
    [replaced] = audit_events(node, "instance-replaced")
    assert replaced.sop_instance_uid == uid_of(original, "SOPInstanceUID")
    stored = pydicom.dcmread(files[0])
    assert stored.PatientName == "Corrected^Name"
    db = node_database(node)
    with db.session() as session:
        assert len(list(session.scalars(select(Instance)))) == 1
    db.dispose()


def test_the_nodes_own_objects_never_queue_a_job(start_node, database_url, tmp_path):
    node = start_node(database_url=database_url)
    own_uid = load_settings(node.config_path, environ={}).device_uid
    [image] = study_files(tmp_path / "a", 1, seed=4)
    study = uid_of(image)
    send(node, [image])
    wait_until(lambda: jobs_by_study(node) == {study: [1]})

    # Results of ours for that study (as a PACS would echo them back), and for a new study.
    [result_same_study] = study_files(tmp_path / "r1", 1, seed=5, study_uid=study,
                                      device_uid=own_uid)
    [result_new_study] = study_files(tmp_path / "r2", 1, seed=6, device_uid=own_uid)
    send(node, [result_same_study, result_new_study])
    settle(node)

    assert jobs_by_study(node) == {study: [1]}
    db = node_database(node)
    with db.session() as session:
        states = dict(session.execute(select(Study.study_uid, Study.state)).all())
        own = session.scalars(select(Instance).where(Instance.produced_by_node)).all()
    db.dispose()
    assert states[uid_of(result_new_study)] == StudyState.COMPLETE
    assert len(own) == 2
