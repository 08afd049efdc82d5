"""One of the training processes that ``cxr-node retrain`` starts on its host.

``torchrun --nproc-per-node N --module training.train_process RUN/config.json``: each
process trains the run that the run folder's ``config.json`` describes (the same file
:func:`training.train.train` writes there), in DistributedDataParallel with the others.
``cxr-node train`` needs no such entry: it starts ``node.cli`` itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.distributed import World
from training.train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_process",
                                     description=__doc__)
    parser.add_argument("config", type=Path, help="a run folder's config.json")
    args = parser.parse_args(argv)
    world = World.from_environment()
    logging.basicConfig(level=logging.INFO if world.main else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s [rank {world.rank}] %(name)s: "
                        "%(message)s")
    try:
        train(TrainConfig.from_json(json.loads(args.config.read_text())), progress=False)
    except (OSError, ValueError) as exc:  # TrainError, a backbone file that does not fit
        if world.main:  # every process meets it; one line is enough
            print(f"training: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
