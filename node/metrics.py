"""Prometheus metrics of one node process, and the gauges every process reads from the database.

Events are counted where they happen (the listener, the completion monitor, the worker's
stages, the sender) in a :class:`NodeMetrics` of the process: each process of a
scaled-out site exports its own counters and Prometheus sums them. What is a state of the
whole site (queue depth, oldest queued job, transfers by state and destination, dead
letters) is read from the shared database at scrape time by :class:`DatabaseCollector`,
so every process reports the same, right numbers however many there are.

Each :class:`NodeMetrics` has its own ``CollectorRegistry`` (never prometheus-client's
global one): tests build several in one interpreter, and a part built without one (a unit
test's worker) counts into a private registry that nobody scrapes.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from storage.db import Database
from storage.models import Job, JobState, Transfer, TransferState, utcnow

LOGGER = logging.getLogger("cxr_node.metrics")

PREFIX = "cxr_node"
# C-STORE handling (the handler's part: header check, fsync, rename, commit) and worker
# stages: from milliseconds to the minutes a large batch on a CPU may take.
_STORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STAGES = ("read", "preprocess", "model", "results", "send")


class NodeMetrics:
    """The counters and histograms of one process, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.associations_accepted = Counter(
            f"{PREFIX}_associations_accepted", "DICOM associations accepted", registry=r)
        self.associations_rejected = Counter(
            f"{PREFIX}_associations_rejected", "DICOM associations rejected, by reason",
            ["reason"], registry=r)
        self.instances_received = Counter(
            f"{PREFIX}_instances_received", "Instances answered with C-STORE success "
            "(stored, replaced or an identical duplicate)", registry=r)
        self.received_bytes = Counter(
            f"{PREFIX}_received_bytes", "Bytes of the instances received", registry=r)
        self.instances_refused = Counter(
            f"{PREFIX}_instances_refused", "C-STORE requests refused, by status",
            ["status"], registry=r)
        self.store_seconds = Histogram(
            f"{PREFIX}_store_handling_seconds", "C-STORE handler time: checks, fsync and "
            "commit before the status goes back", buckets=_STORE_BUCKETS, registry=r)
        self.studies_completed = Counter(
            f"{PREFIX}_studies_completed", "Studies completed (quiet period over), a job "
            "queued for each", registry=r)
        self.jobs = Counter(
            f"{PREFIX}_jobs", "Analysis jobs finished by this process, by outcome (done, "
            "retried, failed, taken-over)", ["outcome"], registry=r)
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_seconds", "Time per stage: read and preprocess per job, model "
            "per batch, results per job, send per association", ["stage"],
            buckets=_STAGE_BUCKETS, registry=r)
        self.findings = Counter(
            f"{PREFIX}_findings", "Findings reported, by label", ["label"], registry=r)
        self.results_sent = Counter(
            f"{PREFIX}_results_sent", "Result objects sent, by destination", ["destination"],
            registry=r)
        self.send_failures = Counter(
            f"{PREFIX}_send_failures", "Failed attempts to send a result object, by "
            "destination", ["destination"], registry=r)
        self._model: Info | None = None  # registered when a model loads: only where one runs
        for stage in STAGES:  # every stage's series exists from the start, at zero
            self.stage_seconds.labels(stage=stage)
        for outcome in ("done", "retried", "failed", "taken-over"):
            self.jobs.labels(outcome=outcome)

    def store_answered(self, status: int, size: int, seconds: float) -> None:
        """One instance answered, over C-STORE or STOW-RS: counted the same either way."""
        if status == 0:
            self.instances_received.inc()
            self.received_bytes.inc(size)
        else:
            self.instances_refused.labels(status=f"0x{status:04X}").inc()
        self.store_seconds.observe(seconds)

    def model_loaded(self, name: str, version: str) -> None:
        """Set the active model info metric (``cxr_node_model_info{name,version} 1``)."""
        if self._model is None:
            self._model = Info(f"{PREFIX}_model", "The model this process runs",
                               registry=self.registry)
        self._model.info({"name": name, "version": version})

    def watch_database(self, db: Database, data_dir: Path) -> None:
        """Also export the site's queue and outbox state and the free disk at each scrape."""
        self.registry.register(DatabaseCollector(db, data_dir))


class DatabaseCollector(Collector):
    """Gauges computed at scrape time from the shared database and the data volume.

    A database that does not answer is reported (``cxr_node_database_up 0``) rather than
    failing the scrape: the free disk and every counter still come through.
    """

    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.data_dir = Path(data_dir)

    def describe(self) -> list[Metric]:
        return []  # computed on collect; nothing to check against at registration

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(f"{PREFIX}_free_disk_bytes",
                                 "Free bytes on the volume of storage.data_dir")
        try:
            free.add_metric([], shutil.disk_usage(self.data_dir).free)
        except OSError as exc:
            LOGGER.warning("free disk of %s unknown: %s", self.data_dir, exc)
        yield free
        up = GaugeMetricFamily(f"{PREFIX}_database_up",
                               "1 when the database answered this scrape's queries")
        try:
            families = self._from_database()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the database
            LOGGER.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_database(self) -> list[Metric]:
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Analysis jobs queued, not claimed")
        oldest = GaugeMetricFamily(f"{PREFIX}_oldest_job_age_seconds",
                                   "Age of the oldest queued or running job (0: none)")
        transfers = GaugeMetricFamily(f"{PREFIX}_transfers",
                                      "Result transfers, by state and destination",
                                      labels=["state", "destination"])
        dead = GaugeMetricFamily(f"{PREFIX}_dead_letters",
                                 "Transfers given up (`cxr-node transfers retry` queues them)")
        state = site_state(self.db)
        depth.add_metric([], state.queue_depth)
        oldest.add_metric([], state.oldest_job_age_seconds)
        for (transfer_state, destination), count in state.transfers.items():
            transfers.add_metric([str(transfer_state), destination], count)
        dead.add_metric([], state.dead_letters)
        return [depth, oldest, transfers, dead]


@dataclass(frozen=True)
class SiteState:
    """The queue and outbox of the whole site now, as the metrics and the console show it."""

    queue_depth: int
    oldest_job_age_seconds: float  # 0 when no job is queued or running
    transfers: dict[tuple[str, str], int]  # (state, destination): count

    @property
    def dead_letters(self) -> int:
        return self.in_state(TransferState.DEAD)

    def in_state(self, state: TransferState) -> int:
        return sum(n for (s, _), n in self.transfers.items() if s == state)


def site_state(db: Database) -> SiteState:
    """Read the queue depth, the oldest waiting job's age and the transfers by state."""
    with db.session() as session:
        queued = session.scalar(select(func.count(Job.id))
                                .where(Job.state == JobState.QUEUED))
        first = session.scalar(select(func.min(Job.created_at))
                               .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING])))
        rows = session.execute(select(Transfer.state, Transfer.destination,
                                      func.count(Transfer.id))
                               .group_by(Transfer.state, Transfer.destination)).all()
    return SiteState(
        queue_depth=queued or 0,
        oldest_job_age_seconds=max(0.0, (utcnow() - first).total_seconds()) if first else 0.0,
        transfers={(str(state), destination): count for state, destination, count in rows})
