"""benchmarks/device/checks.sh: the GPU machine's one command, run here in its dry-run form.

The dry run is the same script at tiny sizes on the CPU (about 50 s alone, more beside
other tests): what is checked is what the person reading a GPU run would read, i.e. that
each line is there, parses, and carries the figures and targets it promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.peers import REPO

CHECKS = REPO / "benchmarks" / "device" / "checks.sh"
REPORT = REPO / "benchmarks" / "device" / "report.py"


def _environment(out) -> dict:  # noqa: ANN001 - a path
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    return {**env, "OUT": str(out), "PYTHON": sys.executable}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dry_run_prints_every_line_of_the_device_check(tmp_path):
    result = subprocess.run(["bash", str(CHECKS), "--dry-run"], cwd=REPO, capture_output=True,
                            text=True, timeout=580, env=_environment(tmp_path))

    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["check"] for line in lines] == ["card", "inference", "training", "latency",
                                                 "summary"]
    card, inference, training, latency, summary = lines
    assert not [line for line in lines if "error" in line], result.stdout
    assert card["device"] == "cpu" and card["model"]["architecture"] == "tf_efficientdet_d0"
    for key in ("stock_img_s", "eager_img_s", "compiled_img_s", "from_pixels_img_s"):
        assert inference[key] > 0, key
    assert inference["compiled"] is True and inference["preprocessing"] == "torch"
    assert inference["target_img_s"] == 1000
    assert training["ours_img_s"] > 0 and training["plain_img_s"] > 0
    assert training["target_img_s"] == 500
    assert latency["studies"] == 2 and latency["sender"] == "pynetdicom"
    assert 0 < latency["p50_s"] <= latency["p95_s"]
    assert latency["target_p95_after_completion_s"] == 1.0
    assert summary["failed"] == [] and set(summary["targets_met"]) == {
        "inference.compiled_img_s", "training.ours_img_s", "latency.p95_after_completion_s"}
    assert (tmp_path / "checks.jsonl").read_text() == result.stdout
    for step in ("card", "inference", "training", "latency"):
        assert (tmp_path / f"{step}.log").exists()


def test_a_step_that_fails_or_times_out_is_a_line_that_says_so(tmp_path):
    log = tmp_path / "inference.log"
    log.write_text("compiling\nRuntimeError: CUDA out of memory\n")

    timed_out = json.loads(subprocess.run(
        [sys.executable, str(REPORT), "error", "inference", "124", "180", str(log)],
        capture_output=True, text=True, check=True).stdout)
    lines = tmp_path / "checks.jsonl"
    lines.write_text(json.dumps(timed_out) + "\n" + json.dumps(
        {"check": "training", "ours_img_s": 612.0}) + "\n" + json.dumps(
        {"check": "latency", "p95_after_completion_s": 1.4}) + "\n")
    summary = json.loads(subprocess.run(
        [sys.executable, str(REPORT), "summary", str(lines), "--started", "0"],
        capture_output=True, text=True, check=True).stdout)

    assert timed_out["error"] == "timed out after 180 s"
    assert timed_out["log_tail"][-1] == "RuntimeError: CUDA out of memory"
    assert summary["targets_met"] == {"inference.compiled_img_s": None,
                                      "training.ours_img_s": True,
                                      "latency.p95_after_completion_s": False}
    assert summary["failed"] == ["card", "inference"]


def test_an_unknown_argument_is_refused(tmp_path):
    result = subprocess.run(["bash", str(CHECKS), "--fast"], cwd=REPO, capture_output=True,
                            text=True, timeout=30, env=_environment(tmp_path))
    assert result.returncode == 2 and "usage" in result.stderr
