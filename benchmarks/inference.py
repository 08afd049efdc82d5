"""Detector throughput including post-processing: ours against stock effdet, in one run.

Ours: the node's Detector path (bf16 autocast and channels_last on CUDA, batched top-k,
decode and NMS) at the best of several batch sizes. Stock: effdet's DetBenchPredict, fp32,
batch 1, which decodes and runs NMS image by image. Both run the same network weights
on random inputs already on the device, so the figure is the model and its
post-processing, not image decoding. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from effdet import DetBenchPredict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.card import ModelCard  # noqa: E402
from model.detector import Detector, create_network  # noqa: E402
from model.preprocess import PreprocessConfig  # noqa: E402
from model.vocabulary import DEFAULT_FINDINGS  # noqa: E402


def _card(architecture: str, size: int) -> ModelCard:
    return ModelCard(
        name="bench", version="0", architecture=architecture, image_size=size,
        findings=DEFAULT_FINDINGS, preprocessing=PreprocessConfig(image_size=size).to_dict(),
        thresholds={f.label: 0.5 for f in DEFAULT_FINDINGS}, weights_file="weights.pt",
        weights_sha256="0" * 64, training_data_fingerprint="0" * 64, code_version="bench",
        intended_use="benchmark")


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rate(step: Callable[[], object], items_per_step: int, seconds: float,
               device: torch.device) -> float:
    """Items per second of ``step`` over a ``seconds`` window, after two warm-up calls."""
    step()  # warm-up (kernel selection, allocator)
    step()
    _synchronise(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += items_per_step
    _synchronise(device)
    return count / (time.perf_counter() - started)


def best_of_batches(rate_for: Callable[[int], float], batches: str) -> tuple[float, int]:
    """The best rate over comma-separated batch sizes, stopping at the first out-of-memory."""
    best_rate, best_batch = 0.0, 0
    for batch_size in (int(b) for b in batches.split(",")):
        try:
            rate = rate_for(batch_size)
        except torch.OutOfMemoryError:
            print(f"ours, batch {batch_size}: out of memory")
            break
        print(f"ours, batch {batch_size}: {rate:.1f} images/s")
        if rate > best_rate:
            best_rate, best_batch = rate, batch_size
    return best_rate, best_batch


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architecture", default="tf_efficientdet_d0")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batches", default="1,8,32,64", help="batch sizes to try for ours")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    card = _card(args.architecture, args.size)
    torch.manual_seed(0)
    network = create_network(card)
    detector = Detector(card, network, device)
    stock = DetBenchPredict(create_network(card)).eval().to(device)
    stock.model.load_state_dict(network.state_dict())

    stock_input = torch.randn(1, 3, args.size, args.size, device=device)
    with torch.inference_mode():
        stock_rate = timed_rate(lambda: stock(stock_input), 1, args.seconds, device)
    print(f"stock effdet, fp32, batch 1: {stock_rate:.1f} images/s")

    def ours(batch_size: int) -> float:
        batch = torch.randn(batch_size, 3, args.size, args.size, device=device)
        return timed_rate(lambda: detector.raw_detections(batch), batch_size, args.seconds,
                          device)

    best_rate, best_batch = best_of_batches(ours, args.batches)
    print(json.dumps({
        "device": device_name(device), "model": args.architecture, "size": args.size,
        "ours_img_s": round(best_rate, 1), "ours_batch": best_batch,
        "stock_img_s": round(stock_rate, 1), "ratio": round(best_rate / stock_rate, 2),
    }))


if __name__ == "__main__":
    main()
