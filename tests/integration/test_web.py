"""The web service as Prometheus and an orchestrator see it: real processes, real sockets.

A study goes in with dcmtk's storescu, through a separate `cxr-node worker` process, out to
dcmtk's storescp; then each process's /metrics is parsed with prometheus-client's own
parser, and /readyz is asked with the disk floor crossed and with the database down.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from storage.models import FindingRecord, Job, JobState, ResultObject, Transfer, TransferState
from tests.factories import write_chest
from tests.integration.conftest import query, wait_until
from tests.peers import (
    CXR_NODE,
    REPO,
    StorescpProcess,
    echoscu,
    free_port,
    storescu,
    wait_for_port,
)

TOKEN = "scrape-me-0123456789"


def get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of a GET on 127.0.0.1:port; error statuses are returned too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(port: int, token: str | None = None) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(name, labels): value}, read by prometheus-client."""
    status, body = get(port, "/metrics", token)
    assert status == 200, body
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples}


def value(found: dict, metric: str, **labels: str) -> float:
    return found[(metric, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> str:
    """A small untrained model (128 px): the metrics need a study analysed, not findings."""
    from tests.model.conftest import write_model  # torch, only for this module

    folder = tmp_path_factory.mktemp("small-model")
    write_model(folder, image_size=128)
    return str(folder)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_metrics_of_receiver_and_worker_after_studies_went_through(start_node, tmp_path,
                                                                    small_model):
    with StorescpProcess(tmp_path) as pacs:
        node = start_node(
            worker={"run_in_serve": False, "device": "cpu", "model_dir": small_model},
            destinations=[{"name": "PACS", "ae_title": "STORESCP", "host": "127.0.0.1",
                           "port": pacs.port}],
            web={"metrics_token": TOKEN})
        worker_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
        env["CXR_NODE_WEB__WORKER_PORT"] = str(worker_port)
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen([*CXR_NODE, "--config", str(node.config_path), "worker"],
                                      cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(worker_port, 120, worker)
            files = [write_chest(tmp_path / "in", 5, index) for index in range(2)]
            sent = storescu(node.port, files)
            assert sent.returncode == 0, sent.stderr
            assert echoscu(node.port, aet="INTRUDER").returncode != 0

            def all_sent():
                jobs = query(node, select(Job.state))
                transfers = query(node, select(Transfer.state))
                return (len(jobs) == 2 and all(s == JobState.DONE for (s,) in jobs)
                        and transfers and all(s == TransferState.SENT for (s,) in transfers))

            wait_until(all_sent, timeout=120, interval=0.3)
            receiver = samples(node.web_port, TOKEN)
            analyser = samples(worker_port, TOKEN)  # the same web settings, the same token
            worker_ready = get(worker_port, "/readyz")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    results = query(node, select(func.count(ResultObject.id)))[0][0]
    findings = dict(query(node, select(FindingRecord.label, func.count(FindingRecord.id))
                          .group_by(FindingRecord.label)))

    # The receiving process: what came in.
    assert value(receiver, "cxr_node_instances_received_total") == 2
    received = value(receiver, "cxr_node_received_bytes_total")
    assert abs(received - sum(f.stat().st_size for f in files)) < 2048  # our own file meta
    assert value(receiver, "cxr_node_associations_accepted_total") >= 1
    assert value(receiver, "cxr_node_associations_rejected_total",
                 reason="unknown-calling-ae-title") == 1
    assert value(receiver, "cxr_node_store_handling_seconds_count") == 2
    assert value(receiver, "cxr_node_studies_completed_total") == 2
    # The site's state, read from the shared database by whichever process is scraped.
    for process in (receiver, analyser):
        assert value(process, "cxr_node_database_up") == 1
        assert value(process, "cxr_node_queue_depth") == 0
        assert value(process, "cxr_node_oldest_job_age_seconds") == 0
        assert value(process, "cxr_node_transfers", state="sent", destination="PACS") == results
        assert value(process, "cxr_node_dead_letters") == 0
        assert value(process, "cxr_node_free_disk_bytes") > 0
    # The worker process: what it did, stage by stage.
    assert value(analyser, "cxr_node_jobs_total", outcome="done") == 2
    assert value(analyser, "cxr_node_jobs_total", outcome="failed") == 0
    for stage in ("read", "preprocess", "results"):
        assert value(analyser, "cxr_node_stage_seconds_count", stage=stage) == 2
    assert value(analyser, "cxr_node_stage_seconds_count", stage="model") >= 1
    # Both processes run a sender: each counts what it sent, Prometheus adds them up.
    assert sum(value(process, "cxr_node_results_sent_total", destination="PACS")
               for process in (receiver, analyser)) == results
    assert sum(value(process, "cxr_node_stage_seconds_count", stage="send")
               for process in (receiver, analyser)) >= 1
    assert value(analyser, "cxr_node_model_info", name="cxr-test", version="0.0.1-test") == 1
    for label, count in findings.items():
        assert value(analyser, "cxr_node_findings_total", label=label) == count
    assert ("cxr_node_instances_received_total", frozenset()) in analyser  # zero, its own
    assert value(analyser, "cxr_node_instances_received_total") == 0
    status, body = worker_ready
    assert status == 200, body
    assert json.loads(body)["checks"] == {"database": "ok", "model": "ok", "disk": "ok"}


def test_health_ready_and_the_metrics_token(start_node):
    node = start_node(web={"metrics_token": TOKEN})

    assert get(node.web_port, "/healthz") == (200, "ok\n")
    status, body = get(node.web_port, "/readyz")
    assert status == 200, body
    assert json.loads(body) == {"ready": True, "reasons": [], "checks": {
        "database": "ok", "dicom_listener": "ok", "disk": "ok"}}
    status, body = get(node.web_port, "/metrics")
    assert status == 401
    assert "web.metrics_token" in body
    assert get(node.web_port, "/metrics", "wrong-token-0123456789")[0] == 401
    assert value(samples(node.web_port, TOKEN), "cxr_node_database_up") == 1
    status, page = get(node.web_port, "/")
    assert status == 200
    assert 'href="/readyz"' in page


def test_readyz_is_503_naming_the_disk_floor_when_it_is_crossed(start_node):
    node = start_node(dicom={"min_free_disk_bytes": 10**18})

    status, body = get(node.web_port, "/readyz")

    assert status == 503
    answer = json.loads(body)
    assert answer["ready"] is False
    assert answer["checks"]["database"] == "ok"
    assert "dicom.min_free_disk_bytes" in answer["checks"]["disk"]
    assert answer["reasons"] == [answer["checks"]["disk"]]
    assert get(node.web_port, "/healthz")[0] == 200  # the process itself answers


def test_web_alone_with_the_database_down_is_alive_and_not_ready(tmp_path):
    web_port = free_port()
    config = tmp_path / "cxr-node.yaml"
    closed = free_port()  # nothing listens there: the connection is refused
    config.write_text(json.dumps({
        "storage": {"data_dir": str(tmp_path / "data"),
                    "database_url": f"postgresql+psycopg://cxr@127.0.0.1:{closed}/cxr"},
        "dicom": {"min_free_disk_bytes": 0},
        "web": {"port": web_port}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    (tmp_path / "data").mkdir()
    with open(tmp_path / "web.log", "wb") as log:
        web = subprocess.Popen([*CXR_NODE, "--config", str(config), "web"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(web_port, 30, web)
        health = get(web_port, "/healthz")
        status, body = get(web_port, "/readyz")
        metrics = samples(web_port)
    finally:
        web.terminate()
        assert web.wait(timeout=30) == 0, Path(tmp_path / "web.log").read_text()

    assert health[0] == 200
    assert status == 503
    answer = json.loads(body)
    assert answer["checks"]["database"].startswith("the database does not answer")
    assert answer["checks"]["disk"] == "ok"
    assert value(metrics, "cxr_node_database_up") == 0
    assert value(metrics, "cxr_node_free_disk_bytes") > 0
