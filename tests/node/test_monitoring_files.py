"""The monitoring files in docker/ agree with what the node exports and how compose runs it.

No Prometheus or Grafana runs here (no container runtime works on these machines), so the
files are checked against the node itself: every metric a dashboard panel or the scrape
example names must be one a node process exports, and every scrape target must be a
compose service on the port its configuration gives it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from node.metrics import NodeMetrics
from storage.db import Database
from tests.peers import REPO

DOCKER = REPO / "docker"
# The sample names of a family of each type, after its family name (exposition format).
SAMPLE_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "info": ("_info",),
                   "histogram": ("_bucket", "_sum", "_count")}


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name one node process can export, with the database gauges.

    From the families, not from a scrape's samples: a labelled counter has no sample
    until its first event (no findings yet), but its name is fixed by its type.
    """
    db = Database.connect(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    try:
        metrics = NodeMetrics()
        metrics.watch_database(db, tmp_path)
        metrics.model_loaded("cxr-node-detector", "0.0.0")
        families = list(metrics.registry.collect())
    finally:
        db.dispose()
    names = set()
    for family in families:
        names |= {f"{family.name}{suffix}" for suffix in SAMPLE_SUFFIXES[family.type]}
    return names


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bcxr_node_[a-z_]+", expr))


def test_every_dashboard_query_names_an_exported_metric(tmp_path):
    exported = exported_names(tmp_path)
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "cxr-node.json").read_text())
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in named_metrics(target["expr"])}

    unknown = sorted(name for name in asked if name not in exported)
    assert not unknown, f"the dashboard asks for metrics no process exports: {unknown}"
    # Each family of the node's own appears on the dashboard (by its exposition name).
    missing = sorted(name for name in exported
                     if not name.endswith(("_sum", "_count")) and name not in asked)
    assert not missing, f"exported but on no panel: {missing}"


def test_scrape_example_targets_the_compose_services_on_their_web_ports():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    node_config = yaml.safe_load((DOCKER / "cxr-node.yaml").read_text())
    web = node_config.get("web", {})
    ports = {"serve": web.get("port", 8080), "worker": web.get("worker_port", 8081)}

    targets = {labels["role"]: target
               for job in scrape["scrape_configs"] for group in job["static_configs"]
               for target in group["targets"] for labels in [group["labels"]]}
    assert targets == {"serve": f"node:{ports['serve']}", "worker": f"worker:{ports['worker']}"}
    for target in targets.values():
        assert target.split(":")[0] in compose["services"]
    assert web.get("bind_address") == "0.0.0.0", "a container must listen beyond loopback"


def test_monitoring_services_are_off_by_default_and_provisioned():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    mounts = services["grafana"]["volumes"]
    for mount in mounts:
        source = mount.split(":")[0]
        assert (DOCKER / source).resolve().is_dir(), mount
    datasource = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "cxr-node.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {
        datasource["datasources"][0]["uid"]}
