"""CLI commands: a bad argument or an unusable database is one line and exit 2, no traceback;
`report audit` without --since covers the last 24 hours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from config.settings import load_settings
from node.cli import main
from storage.db import Database
from storage.models import AuditEvent
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def cxr_node(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def refusal(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    return line


def write_config(tmp_path: Path, storage: dict) -> Path:
    path = tmp_path / "cxr-node.yaml"
    path.write_text(yaml.safe_dump({"storage": storage}))
    return path


def test_synth_seed_out_of_range_names_the_argument(tmp_path, capsys):
    # In process: what `cxr-node` prints and returns, without a second interpreter importing
    # the phantom's libraries again (an exception here would be the traceback).
    code = main(["synth", "--out", str(tmp_path / "out"), "--count", "1", "--seed", "73020"])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "cxr-node synth: error: --seed 73020 is outside 0..9999"]


@pytest.mark.parametrize("command", [["studies"], ["scheduler"], ["scheduler", "jobs"]])
def test_unreachable_database_is_one_line_for_admin_commands(tmp_path, command):
    url = f"postgresql+psycopg://cxr:secret@127.0.0.1:{free_port()}/cxr?connect_timeout=5"
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data"), "database_url": url})

    line = refusal(cxr_node("--config", str(config), *command))

    assert line.startswith("cxr-node: error: storage.database_url: ")
    assert "secret" not in line


def test_report_audit_without_since_covers_the_last_24_hours(tmp_path):
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data")})
    db = Database.for_storage(load_settings(config, environ={}).storage)
    now = datetime.now(UTC).replace(tzinfo=None)
    with db.session() as session:
        for calling, age in (("RECENT", timedelta(hours=1)), ("DAYOLD", timedelta(hours=25))):
            session.add(AuditEvent(occurred_at=now - age, event_id="110113",
                                   event_type="association-rejected", outcome=4,
                                   calling_ae_title=calling, message="not a known peer"))
    db.dispose()

    result = cxr_node("--config", str(config), "report", "audit", "--out", str(tmp_path / "r"))

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r" / "audit-report.json").read_text())
    since = datetime.fromisoformat(report["period"]["since"])
    until = datetime.fromisoformat(report["period"]["until"])
    assert until - since == timedelta(hours=24)
    assert abs(until - now) < timedelta(minutes=5)
    assert report["security"]["by_calling_ae_title"] == {"RECENT": 1}


def test_demo_viewer_without_ohif_names_what_to_install(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--viewer",
                 "--ohif-dist", str(tmp_path / "no-ohif")])

    [line] = capsys.readouterr().err.splitlines()
    assert code == 2
    assert line.startswith("cxr-node demo: error: the viewer needs OHIF 3.13.2 in ")
    assert "make viewer-assets" in line
    assert not (tmp_path / "demo").exists()  # refused before anything started


@pytest.mark.parametrize(("arguments", "expected"), [
    ([], "give HOST PORT, or --destination NAME"),
    (["127.0.0.1"], "give HOST PORT, or --destination NAME"),
    (["127.0.0.1", "104", "--destination", "PACS"],
     "give HOST PORT or --destination, not both"),
], ids=["nothing", "host-without-port", "both"])
def test_echo_needs_host_and_port_or_a_destination(tmp_path, capsys, arguments, expected):
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data")})

    code = main(["--config", str(config), "echo", *arguments])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"cxr-node echo: error: {expected}"]
