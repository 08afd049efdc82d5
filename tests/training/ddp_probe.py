"""``cxr-node train`` with instruments, for tests/training/test_distributed.py.

``python -m tests.training.ddp_probe TRACE_DIR [--eval-mode-layers] [--stop-after-epochs N]
-- <cxr-node args>``, alone or under torchrun. Each process writes
``TRACE_DIR/rank<N>.json``:

- ``steps``: after every optimizer step, the SHA-256 of the network's parameters
  (bit for bit) and their sum and sum of squares (float64), to compare ranks and runs;
- ``writes``: every file the process opened for writing, renamed or made a folder of
  (Python's audit events), to show that only rank 0 writes the run folder.

``--eval-mode-layers`` keeps the layers that behave differently in training in eval mode:
BatchNorm (running statistics, not those of each process's images) and DropPath
(stochastic depth, whose random draws depend on how the batch is split). What makes N
processes differ from one is then gone, so a test can hold them to float rounding (see
training.distributed).

``--stop-after-epochs N`` ends every process as it is about to start epoch N + 1 (after
rank 0 wrote epoch N's checkpoint), as if the run had been stopped there, so that a test
can resume it, on another number of processes, with the schedule it started with.

Nothing here changes what training computes otherwise: the optimizer is the same AdamW,
the network the same, and the product's own CLI runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import types
from pathlib import Path

import torch


def _record_steps(steps: list[dict]) -> None:
    base = torch.optim.AdamW

    class RecordingAdamW(base):
        def step(self, closure=None):  # noqa: ANN001, ANN202 - torch's signature
            result = super().step(closure)
            params = [p.detach() for group in self.param_groups for p in group["params"]]
            digest = hashlib.sha256()
            for param in params:
                digest.update(param.cpu().contiguous().numpy().tobytes())
            flat = torch.cat([p.reshape(-1).double() for p in params])
            steps.append({"sha256": digest.hexdigest(), "sum": float(flat.sum()),
                          "sum_of_squares": float((flat * flat).sum())})
            return result

    torch.optim.AdamW = RecordingAdamW


def _record_writes(writes: list[str]) -> None:
    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | Path) and (
                any(flag in str(args[1]) for flag in "wax+")
                or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR))):
            writes.append(str(args[0]))
        elif event in ("os.rename", "os.mkdir"):
            writes.append(str(args[-3] if event == "os.rename" else args[0]))

    sys.addaudithook(hook)


def _eval_mode_layers() -> None:
    from timm.layers import DropPath

    import training.train

    create = training.train.create_network

    def frozen(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        network = create(*args, **kwargs)
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm | DropPath):
                module.eval()
                module.train = types.MethodType(lambda self, mode=True: self, module)
        return network

    training.train.create_network = frozen


class Stopped(BaseException):
    """Raised where the run is to stop; not an Exception, so nothing on the way catches it."""


def _stop_after(epochs: int) -> None:
    from torch.utils.data import DistributedSampler

    set_epoch = DistributedSampler.set_epoch

    def stop_or_set(self, epoch: int) -> None:  # noqa: ANN001
        if epoch >= epochs:
            raise Stopped
        set_epoch(self, epoch)

    DistributedSampler.set_epoch = stop_or_set


def main() -> int:
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("trace", type=Path)
    parser.add_argument("--eval-mode-layers", action="store_true")
    parser.add_argument("--stop-after-epochs", type=int)
    args = parser.parse_args(sys.argv[1:split])
    steps: list[dict] = []
    writes: list[str] = []
    _record_steps(steps)
    if args.eval_mode_layers:
        _eval_mode_layers()
    if args.stop_after_epochs is not None:
        _stop_after(args.stop_after_epochs)
    _record_writes(writes)

    from node.cli import main as cli

    try:
        status = cli(sys.argv[split + 1:])
    except Stopped:
        status = "stopped"
    rank = os.environ.get("RANK", "0")
    args.trace.mkdir(parents=True, exist_ok=True)
    (args.trace / f"rank{rank}.json").write_text(json.dumps({
        "status": status, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "steps": steps, "writes": writes}))
    return 0 if status == "stopped" else status


if __name__ == "__main__":
    sys.exit(main())
