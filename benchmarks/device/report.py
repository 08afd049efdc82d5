"""The device check's own lines (benchmarks/device/checks.sh): the card, errors, the summary.

``card``: the machine (GPU, driver, torch, CUDA) and the model the node runs, as one JSON
line. ``error NAME STATUS LIMIT LOG``: the line a step prints when it failed or ran out of
time, with the end of its log. ``summary FILE``: each target of issue 18 against the lines
in FILE, and the time the check took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# (check, value key, target, "min" when the value must reach the target, "max" stay below)
TARGETS = [("inference", "compiled_img_s", 1000, "min"),
           ("training", "ours_img_s", 500, "min"),
           ("latency", "p95_after_completion_s", 1.0, "max")]
STEPS = ("card", "inference", "training", "latency")


def card() -> dict:
    import torch

    from model import BUNDLED_MODEL
    from model.card import ModelCard

    line: dict = {"check": "card", "python": platform.python_version(),
                  "torch": torch.__version__, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        line.update(device=properties.name,
                    memory_gib=round(properties.total_memory / 2**30, 1),
                    capability=f"{properties.major}.{properties.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        line.update(device="cpu")
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=30)
        line["driver"] = query.stdout.strip().splitlines()[0] if query.stdout.strip() else None
    model = ModelCard.load(BUNDLED_MODEL)
    line["model"] = {"name": model.name, "version": model.version,
                     "architecture": model.architecture, "image_size": model.image_size}
    return line


def error(name: str, status: int, limit: int, log: Path) -> dict:
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    reason = f"timed out after {limit} s" if status in (124, 137) else f"exit status {status}"
    return {"check": name, "error": reason, "log": str(log), "log_tail": tail}


def summary(path: Path, started: float) -> dict:
    lines = {}
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        lines[line.get("check")] = line
    met = {}
    for check, key, target, sense in TARGETS:
        value = lines.get(check, {}).get(key)
        met[f"{check}.{key}"] = None if value is None else (
            value >= target if sense == "min" else value <= target)
    return {"check": "summary", "targets_met": met,
            "failed": [name for name in STEPS if name not in lines or "error" in lines[name]],
            "elapsed_s": round(time.time() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("card")
    failed = commands.add_parser("error")
    failed.add_argument("name")
    failed.add_argument("status", type=int)
    failed.add_argument("limit", type=int)
    failed.add_argument("log", type=Path)
    summarised = commands.add_parser("summary")
    summarised.add_argument("lines", type=Path)
    summarised.add_argument("--started", type=float, required=True, help="epoch seconds")
    args = parser.parse_args()
    if args.command == "card":
        line = card()
    elif args.command == "error":
        line = error(args.name, args.status, args.limit, args.log)
    else:
        line = summary(args.lines, args.started)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
