"""What the web service costs the node, and how fast its pages are on a large site.

(a) Ingest with the web service on, as a ratio to off (issue 16: >= 0.97). dcmtk storescu
    sends ``--count`` chest-radiograph-sized instances (10 MB) on one association to ``cxr-node
    serve``, with ``web.enabled`` false and true in pairs of rounds (alternating which
    goes first), each into an empty node after a disk sync. While the web service is on, a
    scraper reads ``/metrics`` and ``/readyz`` every 0.5 s and a logged-in admin reloads
    the console overview every second, as Prometheus and a watching admin would. The ratio
    is the median of the pairs' ratios.
(b) Page time with ``--studies`` studies in PostgreSQL (issue 16: p95 <= 300 ms). Each
    study has a patient's name, a series, an image, a finished job and an audit event,
    received over the last 30 days (a 30th of them today). ``cxr-node web`` runs alone on
    that database; a logged-in admin GETs the overview and each other console page
    ``--requests`` times; p50 and p95 per page.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import yaml
from sqlalchemy import create_engine, insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ingest import make_instances, timed_send  # noqa: E402
from node.demo_pacs import free_port  # noqa: E402
from storage import accounts  # noqa: E402
from storage.accounts import Passwords  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.models import (  # noqa: E402
    AuditEvent,
    Instance,
    Job,
    JobState,
    Series,
    Study,
    StudyState,
    utcnow,
)
from tests.integration.console import Browser  # noqa: E402
from tests.peers import CXR_NODE, REPO, NodeProcess, wait_for_port  # noqa: E402

ADMIN, PASSWORD = "bench-admin", "bench password 1234"
# Patient's names of the filled site: "doe" matches one study in 50, as a common name would.
FAMILY_NAMES = ("DOE", "SMITH", "NGUYEN", "GARCIA", "MUELLER", "ROSSI", "KOWALSKI", "SILVA",
                "TANAKA", "KIM") + tuple(f"NAME{n}" for n in range(40))
GIVEN_NAMES = ("JOHN", "ANNA", "LI", "MARIA", "JAN", "SARA", "OMAR")
# Pages an admin opens; a page that does not exist yet (404) is left out of the figures.
PAGES = ("/console", "/console/transfers", "/console/config", "/console/studies",
         "/console/studies?patient_id=P0000042", "/console/studies?patient_name=doe",
         "/console/models", "/console/labels", "/console/scheduler", "/console/audit")


def add_admin(database_url: str) -> None:
    db = Database.connect(database_url, upgrade=False)
    try:
        with db.session() as session:
            accounts.add_user(session, Passwords(), ADMIN, "admin", PASSWORD)
    finally:
        db.dispose()


def logged_in(base: str) -> Browser:
    browser = Browser(base)
    answer = browser.login(ADMIN, PASSWORD)
    if answer.status != 303:
        raise RuntimeError(f"login failed: {answer.status} {answer.body[:300]}")
    return browser


class Watchers:
    """Prometheus (metrics and readiness every 0.5 s) and an admin (overview every 1 s)."""

    def __init__(self, web_port: int, browser: Browser) -> None:
        self.base = f"http://127.0.0.1:{web_port}"
        self.browser = browser
        self.stopping = threading.Event()
        self.requests = 0
        self.threads = [threading.Thread(target=self._scrape, daemon=True),
                        threading.Thread(target=self._watch, daemon=True)]

    def _scrape(self) -> None:
        while not self.stopping.wait(0.5):
            for path in ("/metrics", "/readyz"):
                with urllib.request.urlopen(self.base + path, timeout=30) as response:
                    response.read()
                self.requests += 1

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            if self.browser.get("/console").status != 200:
                raise RuntimeError("the overview did not answer 200")
            self.requests += 1

    def __enter__(self) -> Watchers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()


def ingest_ratio(root: Path, files: list[Path], rounds: int) -> dict:
    """Pairs of rounds, web off and on, in alternating order; the ratio is the median of
    the pairs' ratios. Before each send the disk is synced and the last round's files
    removed, so one round's writeback does not slow the next (it did: 3.7 s rounds took
    6.8 s after 6 GB had been written)."""
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    requests = 0

    def send(mode: str, work: Path) -> None:
        nonlocal requests
        with NodeProcess(work, **({"web": {"enabled": False}} if mode == "off" else {})) as node:
            os.sync()
            if mode == "off":
                seconds["off"].append(timed_send(node.port, "CXRNODE", files))
                return
            add_admin(node.database_url)
            browser = logged_in(f"http://127.0.0.1:{node.web_port}")
            browser.get("/console")  # the admin had the page open before the studies came
            with Watchers(node.web_port, browser) as watchers:
                seconds["on"].append(timed_send(node.port, "CXRNODE", files))
            requests += watchers.requests
        shutil.rmtree(work)

    for index in range(rounds):
        for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):
            send(mode, root / f"{mode}{index}")
        print(f"round {index + 1}: web off {seconds['off'][-1]:.2f} s, "
              f"on {seconds['on'][-1]:.2f} s", flush=True)
    ratios = [off / on for off, on in zip(seconds["off"], seconds["on"], strict=True)]
    rate = {k: total_mb / statistics.median(v) for k, v in seconds.items()}
    return {"ingest_mb_s_web_off": round(rate["off"], 1),
            "ingest_mb_s_web_on": round(rate["on"], 1),
            "ingest_ratio_on_off": round(statistics.median(ratios), 3),
            "ingest_ratio_per_round": [round(r, 3) for r in ratios],
            "web_requests_during_ingest": requests}


def fill_site(url: str, studies: int) -> None:
    """``studies`` studies with a series, an image and a finished job each, in bulk."""
    db = Database.connect(url)  # creates the schema
    db.dispose()
    engine = create_engine(url)
    now = utcnow()
    chunk = 10_000
    with engine.begin() as connection:
        for start in range(0, studies, chunk):
            ids = range(start + 1, min(start + chunk, studies) + 1)
            received = {i: now - timedelta(days=(i % 30), minutes=i % 1440) for i in ids}
            connection.execute(insert(Study), [{
                "id": i, "study_uid": f"2.25.{i}", "patient_id": f"P{i:07d}",
                "patient_name": f"{FAMILY_NAMES[i % len(FAMILY_NAMES)]}^{GIVEN_NAMES[i % 7]}",
                "accession_number": f"A{i}", "study_date": received[i].strftime("%Y%m%d"),
                "state": StudyState.COMPLETE, "generation": 1, "first_received_at": received[i],
                "last_instance_at": received[i], "completed_at": received[i]} for i in ids])
            connection.execute(insert(Series), [{
                "id": i, "study_id": i, "series_uid": f"2.25.{i}.1", "modality": "DX"}
                for i in ids])
            connection.execute(insert(Instance), [{
                "id": i, "series_id": i, "sop_instance_uid": f"2.25.{i}.1.1",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": f"x/{i}.dcm",
                "size_bytes": 10_000_000, "sha256": "0" * 64, "received_at": received[i]}
                for i in ids])
            connection.execute(insert(Job), [{
                "id": i, "study_id": i, "study_generation": 1, "state": JobState.DONE,
                "created_at": received[i], "finished_at": received[i] + timedelta(seconds=20)}
                for i in ids])
            connection.execute(insert(AuditEvent), [{
                "id": i, "occurred_at": received[i], "event_id": "110104",
                "event_type": "instance-stored", "outcome": 0, "calling_ae_title": "MODALITY",
                "called_ae_title": "CXRNODE", "peer_address": "10.0.0.7",
                "study_uid": f"2.25.{i}", "sop_instance_uid": f"2.25.{i}.1.1",
                "message": "stored"} for i in ids])
        for table in ("studies", "series", "instances", "jobs", "audit_events"):
            connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                    f"(SELECT max(id) FROM {table}))"))
            connection.execute(text(f"ANALYZE {table}"))
    engine.dispose()


def page_times(root: Path, url: str, requests: int) -> dict:
    port = free_port()
    config = root / "web.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"data_dir": str(root / "web-data"), "database_url": url},
        "web": {"bind_address": "127.0.0.1", "port": port}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    log = open(root / "web.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([*CXR_NODE, "--config", str(config), "web"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, process)
        add_admin(url)
        browser = logged_in(f"http://127.0.0.1:{port}")
        figures = {}
        for page in PAGES:
            if browser.get(page).status == 404:
                continue  # not built yet
            times = []
            for _ in range(requests):
                start = time.perf_counter()
                answer = browser.get(page)
                times.append((time.perf_counter() - start) * 1000)
                if answer.status != 200:
                    raise RuntimeError(f"{page}: {answer.status}")
            times.sort()
            figures[page] = {"p50_ms": round(statistics.median(times), 1),
                             "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1)}
            print(f"{page}: {figures[page]}", flush=True)
        return figures
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # 120 instances (1.2 GB, about 4 s here): long enough that a few requests' start-up
    # (templates, first queries) do not swamp a 3 % difference.
    parser.add_argument("--count", type=int, default=120, help="instances per ingest round")
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40, help="GETs per page")
    parser.add_argument("--postgres", default=os.environ.get(
        "CXR_NODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="server for (b); a database of its own is made there and dropped")
    args = parser.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cxr-console-bench-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        files = make_instances(root / "in", args.count, args.rows, args.columns)
        result = ingest_ratio(root, files, args.rounds)

        name = f"cxr_console_bench_{os.getpid()}"
        server = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with server.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = str(server.url.set(database=name).render_as_string(hide_password=False))
        try:
            fill_started = time.monotonic()
            fill_site(url, args.studies)
            print(f"{args.studies} studies written in {time.monotonic() - fill_started:.0f} s",
                  flush=True)
            pages = page_times(root, url, args.requests)
        finally:
            with server.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            server.dispose()

    worst = max(p["p95_ms"] for p in pages.values())
    result.update({
        "studies": args.studies, "pages": pages, "worst_page_p95_ms": worst,
        "meets_targets": result["ingest_ratio_on_off"] >= 0.97 and worst <= 300,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "seconds": round(time.monotonic() - started, 1)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
