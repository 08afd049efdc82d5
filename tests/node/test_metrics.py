"""Gauges read from the database at scrape time: the numbers an operator's dashboard shows."""

from __future__ import annotations

import uuid
from datetime import timedelta

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import NodeMetrics
from storage.models import Job, JobState, ResultObject, Study, StudyState, Transfer, utcnow


def scrape(metrics: NodeMetrics) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_queue_outbox_and_dead_letters_come_from_the_database(database, tmp_path):
    now = utcnow()
    with database.session() as session:
        for generation, (state, age) in enumerate([(JobState.QUEUED, 90), (JobState.QUEUED, 30),
                                                   (JobState.DONE, 600)], start=1):
            study = Study(study_uid=f"2.25.{uuid.uuid4().int}", state=StudyState.COMPLETE,
                          generation=1)
            session.add(study)
            session.flush()
            job = Job(study_id=study.id, study_generation=generation, state=state,
                      created_at=now - timedelta(seconds=age))
            session.add(job)
            session.flush()
        for destination, state in [("PACS", "sent"), ("PACS", "dead"), ("VIEWER", "dead"),
                                   ("VIEWER", "pending")]:
            result = ResultObject(job_id=job.id, study_id=study.id, kind="sr",
                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                                  sop_instance_uid=f"2.25.{uuid.uuid4().int}",
                                  series_instance_uid=f"2.25.{uuid.uuid4().int}",
                                  path="results/x")
            session.add(Transfer(result=result, destination=destination, state=state))
    metrics = NodeMetrics()
    metrics.watch_database(database, tmp_path)

    found = scrape(metrics)

    assert found[("cxr_node_database_up", frozenset())] == 1
    assert found[("cxr_node_queue_depth", frozenset())] == 2
    assert 85 <= found[("cxr_node_oldest_job_age_seconds", frozenset())] < 200
    assert found[("cxr_node_dead_letters", frozenset())] == 2
    transfers = {dict(labels)["state"] + "/" + dict(labels)["destination"]: value
                 for (name, labels), value in found.items() if name == "cxr_node_transfers"}
    assert transfers == {"sent/PACS": 1, "dead/PACS": 1, "dead/VIEWER": 1, "pending/VIEWER": 1}
    assert found[("cxr_node_free_disk_bytes", frozenset())] > 0
    assert not any(name == "cxr_node_model_info" for name, _ in found)  # no model here


def test_two_processes_count_into_registries_of_their_own():
    receiver, worker = NodeMetrics(), NodeMetrics()

    receiver.instances_received.inc(3)
    worker.model_loaded("cxr-test", "1.0.0")

    assert scrape(receiver)[("cxr_node_instances_received_total", frozenset())] == 3
    assert scrape(worker)[("cxr_node_instances_received_total", frozenset())] == 0
    assert scrape(worker)[("cxr_node_model_info",
                           frozenset({"name": "cxr-test", "version": "1.0.0"}.items()))] == 1
