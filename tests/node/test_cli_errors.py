"""CLI commands: a bad argument or an unusable database is one line and exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from node.cli import main
from node.demo_pacs import free_port

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


def test_unreachable_database_is_one_line_for_admin_commands(tmp_path):
    url = f"postgresql+psycopg://cxr:secret@127.0.0.1:{free_port()}/cxr?connect_timeout=5"
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data"), "database_url": url})

    line = refusal(cxr_node("--config", str(config), "studies"))

    assert line.startswith("cxr-node: error: storage.database_url: ")
    assert "secret" not in line

