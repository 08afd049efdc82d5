"""Training in several processes: ``torch.distributed``, started by ``torchrun``.

One process per GPU (several on one host, or on several hosts), each holding the whole
network in DistributedDataParallel, which averages the gradients after every backward
pass. NCCL connects processes on GPUs, gloo processes on CPUs (the tests run two on a
CPU). Nothing here is home-made: ``torchrun`` (``torch.distributed.run``) starts the
processes and tells each its rank in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; this
module reads them, joins the process group and starts ``torchrun`` for ``cxr-node train
--nproc-per-node N`` and for ``cxr-node retrain``.

How a run in N processes relates to a run in one (:mod:`training.train` follows this):

- ``batch_size`` is the global batch: each process trains on ``batch_size / N`` images a
  step (it must divide evenly). The run's settings, its steps per epoch and its
  learning-rate schedule do not depend on N, so a checkpoint resumes on any number of
  processes, and the images of each step are those a single process would train on
  (a ``DistributedSampler`` with the seed of the single-process order, last partial
  batch dropped).
- The detection loss is divided by the positive anchors of the whole batch, summed over
  the processes (as mmdetection's ``reduce_mean`` of the normaliser), not by each
  process's own count: the averaged gradient is then the single-process gradient.
- BatchNorm normalises over each process's images, as plain DDP does: SyncBatchNorm
  runs only on GPUs and costs an all-reduce per layer (EfficientDet-d0 has 108). Its
  running statistics are rank 0's (DDP broadcasts them before each forward pass, and
  :func:`sync_buffers` before validation). Keep ``batch_size / N`` at 8 or more on GPUs.
- Stochastic depth (DropPath in the backbone) draws its random numbers per process, from
  the seed plus the rank. With these two in eval mode, N processes and one give the same
  weights to float rounding (tests/training/test_distributed.py); with them training,
  the same run in expectation, not bit for bit.
- Rank 0 alone writes the run folder; validation images are shared out with a
  ``DistributedSampler`` and the predictions gathered, so every epoch's mAP is measured
  on the whole validation split.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

LOGGER = logging.getLogger("cxr_node.distributed")
T = TypeVar("T")
# The rendezvous id every host of a several-host run gives torchrun's c10d backend.
RENDEZVOUS_ID = "cxr-node"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and logs."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> World:
        """Read by every process that ``torchrun`` starts; without them, one process."""
        if "WORLD_SIZE" not in environ:
            return cls()
        try:
            world = cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                        int(environ.get("LOCAL_RANK", "0")))
        except (KeyError, ValueError):
            raise ValueError("WORLD_SIZE is set but RANK or LOCAL_RANK is missing or not a "
                             "number: start the processes with torchrun") from None
        if not 0 <= world.rank < world.size:
            raise ValueError(f"RANK {world.rank} is outside 0..{world.size - 1}")
        return world


def under_launcher(environ: Mapping[str, str] = os.environ) -> bool:
    """This process was started by ``torchrun`` (it must not start processes itself)."""
    return "WORLD_SIZE" in environ


def training_device(name: str, world: World) -> torch.device:
    """The device this process trains on: ``cuda:LOCAL_RANK`` for CUDA in several processes.

    ``name`` is the run's ``device`` setting (``auto``, ``cpu``, ``cuda``).
    """
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available()
                          else "cpu" if name == "auto" else name)
    if world.size == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"device {name} names one GPU, but each of the {world.size} "
                         "processes takes the GPU of its local rank: give cuda or auto")
    return torch.device("cuda", world.local_rank)


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Joined for the ``with`` block (NCCL for CUDA, gloo otherwise) and left after it,
    unless a caller had joined already."""
    if world.size == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` summed over the processes (a new tensor; ``value`` itself in one)."""
    if world.size == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def on_main(world: World, action: Callable[[], T]) -> T:
    """``action`` run on rank 0 only; its result, or the ``ValueError`` it raised, is
    handed to every process, so all go on or all stop with the same message (a rank left
    waiting for one that stopped would hang)."""
    if world.size == 1:
        return action()
    outcome: list = [None, None]
    if world.main:
        try:
            outcome[0] = action()
        except ValueError as exc:
            outcome[1] = exc
    dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def gather_by_index(local: dict[int, T], world: World) -> dict[int, T]:
    """Every process's ``{index: value}`` merged, on every process."""
    if world.size == 1:
        return dict(local)
    parts: list = [None] * world.size
    dist.all_gather_object(parts, local)
    merged: dict[int, T] = {}
    for part in parts:
        merged.update(part)
    return merged


def sync_buffers(module: torch.nn.Module, world: World) -> None:
    """Rank 0's buffers (BatchNorm running statistics) copied to every process."""
    if world.size > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


@dataclass(frozen=True)
class Launch:
    """How many training processes to start, and how hosts find each other.

    The fields are torchrun's options of the same names. One host: ``nproc_per_node``
    alone (a local rendezvous on a free port). Several hosts: ``nnodes`` and either
    ``rdzv_endpoint`` (``host:port`` of any one of them; every host runs the same
    command) or ``master_addr`` (and ``master_port``) with each host's ``node_rank``.
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None

    def __post_init__(self) -> None:
        for name in ("nproc_per_node", "nnodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be 1 or more")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be in 0..{self.nnodes - 1} "
                             f"for {self.nnodes} hosts")
        if self.master_addr and self.rdzv_endpoint:
            raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint} and --master-addr "
                             f"{self.master_addr} are both given: give one")
        if self.nnodes > 1 and not (self.master_addr or self.rdzv_endpoint):
            raise ValueError(f"nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT, or "
                             "--master-addr HOST with --node-rank, for the hosts to find "
                             "each other")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ValueError(f"master_port {self.master_port} must be in 1..65535")
        if self.master_port is not None and not self.master_addr:
            raise ValueError(f"master_port {self.master_port} goes with --master-addr")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def torchrun_options(self) -> list[str]:
        """The options ``torchrun`` is given for this launch (the README quotes them)."""
        options = ["--nproc-per-node", str(self.nproc_per_node), "--nnodes", str(self.nnodes)]
        if self.rdzv_endpoint:
            return options + ["--rdzv-backend", "c10d", "--rdzv-endpoint", self.rdzv_endpoint,
                              "--rdzv-id", RENDEZVOUS_ID]
        if self.master_addr:
            return options + ["--node-rank", str(self.node_rank), "--master-addr",
                              self.master_addr, "--master-port", str(self.master_port or 29500)]
        return options + ["--standalone"]

    def check_devices(self, device: str, batch_size: int) -> None:
        """Refuse, before any process starts, a launch that could not run: more processes
        than this host has GPUs, or a batch that does not split evenly over them."""
        if device in ("auto", "cuda") and torch.cuda.is_available() \
                and self.nproc_per_node > torch.cuda.device_count():
            raise ValueError(f"nproc_per_node {self.nproc_per_node} is more than the "
                             f"{torch.cuda.device_count()} GPUs of this host")
        check_batch(batch_size, self.world_size)


def check_batch(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {processes} "
                         f"processes (it is the global batch): give a multiple of {processes}")


def launch(how: Launch, module: str, arguments: list[str]) -> int:
    """``python -m module arguments`` in ``how.nproc_per_node`` processes on this host,
    through torchrun's own launcher; returns 0, or the exit status of the first process
    that failed (its own message is what the operator reads)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    command = [*how.torchrun_options(), "--module", module, *arguments]
    LOGGER.info("starting %d training processes: torchrun %s", how.nproc_per_node,
                " ".join(command))
    # The elastic agent narrates every start and failure at WARNING/ERROR, with the
    # failed process's traceback file; the processes' own output says what went wrong.
    agent_logs = logging.getLogger("torch.distributed.elastic")
    level = agent_logs.level
    agent_logs.setLevel(logging.CRITICAL)
    try:
        run(parse_args(command))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as exc:  # Ctrl-C or a stop: torchrun has ended the processes
        return 128 + int(exc.sigval)
    finally:
        agent_logs.setLevel(level)
        sys.stderr.flush()
    return 0
