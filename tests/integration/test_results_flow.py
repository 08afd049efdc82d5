"""Results back to the PACS, with real peers: Orthanc as the PACS, dcmtk as modality and
destination, cxr-node as processes that may be killed.

What a site checks: the SR, GSPS and SC arrive in the source study and point at the right
image; a destination that is down gets the results once it is up; one that stays down
leaves dead letters an admin can list and re-queue; a SIGKILL loses no pending transfer;
and several worker processes on PostgreSQL complete each job exactly once.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pydicom
import pytest
from sqlalchemy import func, select

from storage.models import AuditEvent, Job, JobState, ResultObject, Transfer, TransferState
from tests.factories import write_chest
from tests.integration.conftest import audit_events, query, wait_until
from tests.peers import CXR_NODE, REPO, OrthancProcess, StorescpProcess, free_port, storescu

WORKER = {"run_in_serve": True, "device": "cpu"}
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"


def destination(port: int, ae_title: str = "STORESCP", **kinds) -> list[dict]:
    return [{"name": "PACS", "ae_title": ae_title, "host": "127.0.0.1", "port": port, **kinds}]


def fast_retries(max_age: float = 600) -> dict:
    return {"first_retry_delay_seconds": 0.5, "backoff_factor": 1.5,
            "max_retry_delay_seconds": 1, "max_age_seconds": max_age,
            "poll_interval_seconds": 0.1}


def transfer_states(node) -> dict[str, int]:
    return dict(query(node, select(Transfer.state, func.count(Transfer.id))
                      .group_by(Transfer.state)))


def result_uids(node) -> set[str]:
    return {uid for (uid,) in query(node, select(ResultObject.sop_instance_uid))}


def received_uids(storescp: StorescpProcess) -> set[str]:
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in storescp.output.iterdir() if path.is_file()}


@pytest.fixture
def orthanc_tool(tool):
    tool("Orthanc")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> str:
    """A small untrained model (128 px) for the tests about what happens to results on
    their way out (retries, dead letters, SIGKILL, claiming, grouping): they need the
    objects a study gets, not the findings, and the bundled model reads at 768 px (a
    worker's warm-up and each study cost seconds of it). The PACS test keeps the bundled
    model, as a site runs it."""
    from tests.model.conftest import write_model  # torch, only for these tests

    folder = tmp_path_factory.mktemp("small-model")
    write_model(folder, image_size=128)
    return str(folder)


@pytest.fixture
def worker(small_model) -> dict:
    return {**WORKER, "model_dir": small_model}


def test_orthanc_sends_a_study_and_gets_sr_gsps_and_sc_back_in_it(start_node, tmp_path,
                                                                   orthanc_tool):
    node_port = free_port()
    with OrthancProcess(tmp_path, modalities={
            "cxrnode": {"AET": "CXRNODE", "Host": "127.0.0.1", "Port": node_port}}) as orthanc:
        start_node(port=node_port, worker=WORKER,
                   peers=[{"ae_title": "ORTHANC", "hosts": ["127.0.0.1"]}],
                   destinations=destination(orthanc.dicom_port, "ORTHANC"))
        source = pydicom.dcmread(write_chest(tmp_path / "in", 11, 1))
        source_file = tmp_path / "in" / "chest-11-1.dcm"
        instance = orthanc.upload(source_file)
        study = orthanc.get(f"/instances/{instance}/study")["ID"]

        orthanc.post("/modalities/cxrnode/store", {"Resources": [study], "Synchronous": True})

        def results_in_study():
            instances = orthanc.get(f"/studies/{study}/instances")
            ours = [i for i in instances if i["ID"] != instance]
            return ours if len(ours) >= 3 else None

        ours = wait_until(results_in_study, timeout=90, interval=0.5)
        objects = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.download(i["ID"])))
                   for i in ours]
    by_class = {str(ds.SOPClassUID): ds for ds in objects}
    assert set(by_class) == {SR_3D, GSPS, "1.2.840.10008.5.1.4.1.1.7"}
    for ds in objects:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID
    sr = by_class[SR_3D]
    library = sr.ContentSequence  # the image library references the source image
    assert str(source.SOPInstanceUID) in str(library)
    gsps = by_class[GSPS]
    referenced = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    sc = by_class["1.2.840.10008.5.1.4.1.1.7"]
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_destination_down_then_up_gets_the_same_objects_after_a_retry(start_node, tmp_path, worker):
    storescp = StorescpProcess(tmp_path)  # its port is chosen; it is not listening yet
    node = start_node(worker=worker, destinations=destination(storescp.port),
                      sending=fast_retries())
    assert storescu(node.port, [write_chest(tmp_path / "in", 11, 2)]).returncode == 0

    wait_until(lambda: query(node, select(Transfer.id).where(Transfer.attempts >= 1,
                                                             Transfer.last_error.is_not(None))),
               timeout=60)
    assert TransferState.SENT not in transfer_states(node)

    with storescp:
        wait_until(lambda: transfer_states(node) == {TransferState.SENT: 3}, timeout=30)
        received = received_uids(storescp)
    assert received == result_uids(node)  # the retry sent the very objects first tried
    assert len(audit_events(node, "result-sent")) == 3


def test_destination_down_for_good_leaves_dead_letters_an_admin_can_requeue(start_node,
                                                                            tmp_path, worker):
    storescp = StorescpProcess(tmp_path)
    node = start_node(worker=worker, destinations=destination(storescp.port),
                      sending=fast_retries(max_age=2))
    assert storescu(node.port, [write_chest(tmp_path / "in", 11, 3)]).returncode == 0

    wait_until(lambda: transfer_states(node) == {TransferState.DEAD: 3}, timeout=60)
    dead = audit_events(node, "transfer-dead-letter")
    assert len(dead) == 3 and all("given up" in event.message for event in dead)
    listing = subprocess.run([*CXR_NODE, "--config", str(node.config_path), "transfers"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0
    assert "dead 3" in listing.stdout
    assert "last error: cannot connect" in listing.stdout

    with storescp:
        retry = subprocess.run([*CXR_NODE, "--config", str(node.config_path), "transfers",
                                "retry"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert retry.returncode == 0 and "queued 3 dead letters again" in retry.stdout
        wait_until(lambda: transfer_states(node) == {TransferState.SENT: 3}, timeout=30)
        assert received_uids(storescp) == result_uids(node)


def test_sigkill_with_transfers_pending_then_restart_sends_them(start_node, tmp_path, worker):
    storescp = StorescpProcess(tmp_path)
    node = start_node(worker=worker, destinations=destination(storescp.port),
                      sending=fast_retries())
    assert storescu(node.port, [write_chest(tmp_path / "in", 11, 4)]).returncode == 0
    wait_until(lambda: transfer_states(node).get(TransferState.PENDING) == 3, timeout=60)

    node.kill()
    with storescp:
        node.start()
        wait_until(lambda: transfer_states(node) == {TransferState.SENT: 3}, timeout=30)
        assert received_uids(storescp) == result_uids(node)


def test_sigkill_while_sending_then_restart_sends_at_once_not_after_the_lease(start_node,
                                                                             tmp_path, worker):
    storescp = StorescpProcess(tmp_path)
    silent = socket.create_server(("127.0.0.1", storescp.port))  # accepts, never answers
    node = start_node(worker=worker, destinations=destination(storescp.port),
                      sending={"lease_seconds": 600})
    assert storescu(node.port, [write_chest(tmp_path / "in", 11, 5)]).returncode == 0
    wait_until(lambda: transfer_states(node).get(TransferState.SENDING) == 3, timeout=60)

    node.kill()
    silent.close()
    with storescp:
        node.start()
        wait_until(lambda: transfer_states(node) == {TransferState.SENT: 3}, timeout=30)
        assert received_uids(storescp) == result_uids(node)
    assert "transfers leases of" in node.log()


# Two worker processes import torch before they take a job: over a minute on a machine
# shared by six test runs, hence a limit of its own.
@pytest.mark.timeout(360)
def test_two_worker_processes_on_postgresql_complete_each_of_30_jobs_once(
        start_node, tmp_path, postgres_url, small_model):
    # What is proven is the claiming, not the findings: the small model keeps 30 jobs in
    # two processes to seconds (the bundled one reads at 768 px).
    node = start_node(database_url=postgres_url, completion={"study_quiet_seconds": 0.2},
                      worker={"run_in_serve": False, "model_dir": small_model})
    files = [write_chest(tmp_path / "in", 12, index, size=(256, 256)) for index in range(30)]

    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    worker_env["CXR_NODE_WORKER__MAX_JOBS_PER_BATCH"] = "2"  # spread the jobs out
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = []
    for log in logs:
        with open(log, "wb") as output:
            workers.append(subprocess.Popen(
                [*CXR_NODE, "--config", str(node.config_path), "worker"], cwd=REPO,
                env=worker_env, stdout=output, stderr=subprocess.STDOUT))
    try:
        # Both ready before the studies arrive: a worker still importing torch would
        # otherwise leave every job to the other, and prove nothing about claiming.
        wait_until(lambda: all("warmed up" in log.read_text() for log in logs), timeout=180)
        assert storescu(node.port, files).returncode == 0
        wait_until(lambda: query(node, select(func.count(Job.id))
                                 .where(Job.state == JobState.DONE))[0][0] == 30,
                   timeout=90, interval=0.5)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=60)

    jobs = query(node, select(Job.id, Job.lease_owner))
    owners = {owner for _, owner in jobs}
    assert len(owners) == 2, f"both workers should have taken jobs, got {owners}"
    reports = query(node, select(ResultObject.job_id, func.count(ResultObject.id))
                    .where(ResultObject.kind == "sr").group_by(ResultObject.job_id))
    assert sorted(count for _, count in reports) == [1] * 30  # one report per job, no repeats
    analysed = query(node, select(AuditEvent.study_uid)
                     .where(AuditEvent.event_type == "study-analysed"))
    assert len(analysed) == 30 and len(set(analysed)) == 30


def test_a_series_mixing_sizes_and_polarities_gets_every_result_at_the_pacs(start_node,
                                                                             tmp_path, worker):
    """A PA, a repeat PA collimated to another size, and an AP on a MONOCHROME1 plate, in
    one series, sent by storescu: the PACS (storescp) gets one SR, a GSPS per size and
    polarity, and an SC per image, after one analysis."""
    from pydicom.uid import generate_uid

    from tests.node.test_worker_results import Study

    study, series = Study(tmp_path / "in"), generate_uid()
    files = [study.image(series, size=320), study.image(series, size=384),
             study.image(series, size=384, photometric="MONOCHROME1", view="AP")]
    with StorescpProcess(tmp_path) as storescp:
        node = start_node(worker=worker, destinations=destination(storescp.port),
                          sending=fast_retries())
        assert storescu(node.port, files).returncode == 0
        wait_until(lambda: transfer_states(node) == {TransferState.SENT: 7}, timeout=120,
                   interval=0.5)
        received = [pydicom.dcmread(path) for path in storescp.output.iterdir()
                    if path.is_file()]
    assert {str(ds.SOPInstanceUID) for ds in received} == result_uids(node)
    classes = sorted(str(ds.SOPClassUID) for ds in received)
    assert classes == sorted([SR_3D] + [GSPS] * 3 + ["1.2.840.10008.5.1.4.1.1.7"] * 3)
    assert all(ds.StudyInstanceUID == study.uid for ds in received)
    assert query(node, select(Job.state, Job.attempts)) == [(JobState.DONE, 1)]
