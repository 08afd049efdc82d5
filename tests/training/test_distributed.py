"""Training in two processes (torchrun, gloo on the CPU) against training in one.

What an operator checks: the command trains in two processes and the loss falls; both
processes hold the same weights after every step; the run folder is written once, by
rank 0; the result is what one process gives with the same (global) batch; a run stopped
after two epochs in two processes resumes in one; launch options that cannot work are
refused in one line.

The data: 12 generated 128 px squares images (10 for training after the patient split),
a global batch of 4 (2 per process), so an epoch is 2 steps.

Two processes equal one only where nothing depends on how the batch is split.
BatchNorm normalises over each process's 2 images instead of the batch's 4, and
stochastic depth draws its random numbers per process (training.distributed says why);
with both training, the first step's loss already differs by about a fifth here. So the
equality test fine-tunes the bundled model with those layers in eval mode
(tests/training/ddp_probe.py) and holds the runs to float rounding: the two processes
sum a batch's gradients in another order than one process does, and Adam, dividing by the
root of the squared gradients, turns those last-bit differences into whole steps for
parameters whose gradient is close to zero. Measured on a 2-core VM: the final weights
differ by 5e-5 of their norm, 0.2% of the distance training moved them; the epochs'
losses by 2e-7, 3e-5 and 8e-4 (relative), the sums of squares of the weights after
each step by at most 5e-7. The tolerances are four to twenty times those.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from model import BUNDLED_MODEL
from model.card import ModelCard
from tests.peers import REPO
from tests.training.conftest import write_squares_set

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUN_FILES = {"anchor_coverage.json", "best.pt", "checkpoint.pt", "config.json",
             "metrics.jsonl", "model", "training_curves.png", "validation_metrics.json"}
WEIGHTS_TOLERANCE = 2e-4  # of the weights' norm
MOVED_TOLERANCE = 0.01  # of the distance training moved the weights
LOSS_TOLERANCE = 5e-3  # relative, per epoch


def environment() -> dict[str, str]:
    """This one's, without a launch of its own, one thread per process (two cores)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                        "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}


def run(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, time.monotonic() - started


def train_arguments(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--image-size", "128",
            "--anchor-scale", "2", "--batch-size", "4", "--lr", "4e-3", "--device", "cpu",
            "--workers", "0", "--epochs", str(epochs), *extra]


def torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes)]


def epochs_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def flat_weights(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double() for v in state.values() if v.is_floating_point()])


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    return write_squares_set(tmp_path_factory.mktemp("squares"), 12, size=128)


@pytest.fixture(scope="module")
def relaunched(squares, tmp_path_factory):
    """``cxr-node train --nproc-per-node 2``: 2 epochs fine-tuning the bundled model, every
    layer as in production."""
    out = tmp_path_factory.mktemp("relaunched") / "run"
    done, _ = run([sys.executable, "-m", "node.cli", *train_arguments(
        squares, out, 2, "--nproc-per-node", "2", "--init-from", str(BUNDLED_MODEL))])
    return done, out


@dataclass(frozen=True)
class Runs:
    one: Path  # one process, 3 epochs
    two: Path  # two processes stopped after 2 of 3 epochs, then resumed in one
    one_trace: dict
    two_traces: list[dict]  # rank 0, rank 1 (the first 2 epochs)
    resumed_trace: dict


@pytest.fixture(scope="module")
def runs(squares, tmp_path_factory) -> Runs:
    """The same fine-tuning with BatchNorm and DropPath in eval mode, in one process and
    in two (stopped after epoch 2 and resumed in one), through tests/training/ddp_probe.py
    (torchrun starts ``node.cli train`` directly, as an operator may)."""
    tmp = tmp_path_factory.mktemp("runs")

    def probe(trace: Path, out: Path, *options: str) -> list[str]:
        return ["-m", "tests.training.ddp_probe", str(trace), "--eval-mode-layers", *options,
                "--", *train_arguments(squares, out, 3, "--init-from", str(BUNDLED_MODEL))]

    _, two_seconds = run([*torchrun(2), *probe(tmp / "two", tmp / "run2",
                                               "--stop-after-epochs", "2")])
    _, one_seconds = run([sys.executable, *probe(tmp / "one", tmp / "run1")])
    print(f"\n2 processes, 2 epochs: {two_seconds:.1f} s; 1 process, 3 epochs: "
          f"{one_seconds:.1f} s (wall, with start-up)")
    two_traces = [json.loads((tmp / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    run([sys.executable, *probe(tmp / "resumed", tmp / "run2")])
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    return Runs(tmp / "run1", tmp / "run2", read(tmp / "one" / "rank0.json"), two_traces,
                read(tmp / "resumed" / "rank0.json"))


def test_cli_trains_in_two_processes_and_the_loss_falls(relaunched):
    done, out = relaunched

    assert done.stdout.count("best model:") == 1  # one process reports
    epochs = epochs_of(out)
    assert [(e["epoch"], e["processes"]) for e in epochs] == [(1, 2), (2, 2)]
    assert epochs[-1]["loss"] < 0.9 * epochs[0]["loss"]
    assert {p.name for p in out.iterdir()} == RUN_FILES  # no partial or per-rank files
    assert json.loads((out / "config.json").read_text())["batch_size"] == 4  # the global one
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert ModelCard.load(out / "model").version == "0.1.0"


def test_both_processes_hold_the_same_weights_after_every_step(runs):
    rank0, rank1 = ([step["sha256"] for step in trace["steps"]] for trace in runs.two_traces)

    assert len(rank0) == 4  # 2 epochs of 2 steps
    assert rank0 == rank1  # bit for bit
    assert len(set(rank0)) == 4  # and every step changed them


def test_only_rank_0_writes_the_run_folder(runs):
    written = [sorted({Path(p).name for p in trace["writes"]
                       if Path(p).is_relative_to(runs.two)}) for trace in runs.two_traces]

    assert written[1] == []
    assert {"config.json", "anchor_coverage.json", "metrics.jsonl", "checkpoint.pt",
            "best.pt"} <= set(written[0])
    assert [e["processes"] for e in epochs_of(runs.two)] == [2, 2, 1]  # one line an epoch


def test_two_processes_equal_one_with_the_same_global_batch_and_resume_in_one(runs):
    one, two = epochs_of(runs.one), epochs_of(runs.two)
    assert [e["epoch"] for e in two] == [1, 2, 3]
    for mine, theirs in zip(two, one, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=LOSS_TOLERANCE)
        assert mine["lr"] == pytest.approx(theirs["lr"])  # the schedule went on, not anew
    assert two[-1]["loss"] < 0.6 * two[0]["loss"]

    # Step by step, the two runs' weights stay together (sums over all parameters).
    steps_one = [s["sum_of_squares"] for s in runs.one_trace["steps"]]
    steps_two = [s["sum_of_squares"] for s in runs.two_traces[0]["steps"]
                 + runs.resumed_trace["steps"]]
    assert steps_two == pytest.approx(steps_one, rel=1e-5)

    start = flat_weights(torch.load(BUNDLED_MODEL / "weights.pt", weights_only=True))
    final_one, final_two = (
        flat_weights(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
        for out in (runs.one, runs.two))
    difference = float((final_two - final_one).norm())
    assert difference < WEIGHTS_TOLERANCE * float(final_one.norm())
    assert difference < MOVED_TOLERANCE * float((final_one - start).norm())


def test_a_wrong_number_of_processes_is_refused_in_one_line(squares, tmp_path):
    done = subprocess.run([sys.executable, "-m", "node.cli",
                           *train_arguments(squares, tmp_path / "run", 1, "--nproc-per-node",
                                            "0")],
                          cwd=REPO, env=environment(), capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cxr-node train: error: --nproc-per-node 0 must be 1 or more"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--nproc-per-node", "2", "--batch-size", "5"],
     "--batch-size 5 does not split evenly over 2 processes"),
    (["--nproc-per-node", "2", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint"),
    (["--nnodes", "2", "--node-rank", "2", "--master-addr", "gpu1"],
     "--node-rank 2 must be in 0..1 for 2 hosts"),
    (["--nnodes", "2", "--master-addr", "gpu1", "--rdzv-endpoint", "gpu1:29400"],
     "--rdzv-endpoint gpu1:29400 and --master-addr gpu1 are both given"),
    (["--nproc-per-node", "2", "--master-port", "29600"],
     "--master-port 29600 goes with --master-addr"),
])
def test_launch_options_that_cannot_work_are_refused_in_one_line(options, message, squares,
                                                                 tmp_path, capsys):
    from node.cli import main

    status = main([*train_arguments(squares, tmp_path / "run", 1), *options])

    assert status == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cxr-node train: error: {message}")
    assert not (tmp_path / "run").exists()


def test_a_resume_with_other_settings_is_refused_before_processes_start(relaunched, squares,
                                                                         tmp_path, capsys):
    from node.cli import main

    out = tmp_path / "run"
    shutil.copytree(relaunched[1], out)

    status = main([*train_arguments(squares, out, 3, "--init-from", str(BUNDLED_MODEL)),
                   "--nproc-per-node", "2", "--lr", "1e-3"])

    assert status == 2
    [line] = capsys.readouterr().err.strip().splitlines()  # no process was started
    assert line.startswith("cxr-node train: error: ")
    assert "(learning_rate 0.004 there, 0.001 now)" in line
    assert [e["epoch"] for e in epochs_of(out)] == [1, 2]


def test_under_torchrun_the_launch_options_must_match_it(squares, tmp_path, capsys,
                                                         monkeypatch):
    from node.cli import main

    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"),
                        ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)

    assert main([*train_arguments(squares, tmp_path / "run", 1),
                 "--nproc-per-node", "3"]) == 2
    assert main(["retrain", "--nproc-per-node", "2"]) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "cxr-node train: error: --nproc-per-node 3 given, but torchrun started 2 processes "
        "on this host: give the number once",
        "cxr-node retrain: error: retrain starts its own training processes "
        "(--nproc-per-node, training.nproc_per_node): run it without torchrun"]


def test_retraining_trains_its_candidate_in_two_processes(squares, tmp_path, monkeypatch):
    """The part of ``cxr-node retrain`` that several processes share: the candidate's
    training (the snapshot and the judging stay in the command's process)."""
    from training.retrain import train_candidate
    from training.train import TrainConfig

    for name, value in environment().items():
        monkeypatch.setenv(name, value)
    config = TrainConfig(data=squares, out=tmp_path / "run", image_size=128,
                         anchor_scale=2.0, epochs=1, batch_size=4, device="cpu", workers=0,
                         version="0.0.2-candidate", init_from=BUNDLED_MODEL)

    model_dir = train_candidate(config, 2)

    assert ModelCard.load(model_dir).version == "0.0.2-candidate"
    assert [e["processes"] for e in epochs_of(config.out)] == [2]
    # The processes trained the configuration they were given, and wrote it back as it was.
    saved = json.loads((config.out / "config.json").read_text())
    assert TrainConfig.from_json(saved) == config
    shutil.rmtree(config.out)
