"""Detector throughput including post-processing: ours compiled and eager against stock effdet.

All variants run the bundled model's weights (EfficientDet is convolutional: the same
weights load at any input size) on generated chest radiographs, so the post-processing
sees the candidates a trained model gives, and use the card's thresholds:

- stock: effdet's DetBenchPredict, fp32, batch 1, which decodes and runs NMS image by image;
- eager: the node's Detector (bf16 autocast and channels_last on CUDA, thresholds-first
  batched NMS) at the best of several batch sizes, on batches already on the device;
- compiled: the same under ``torch.compile`` (``Detector.compile``; its time is reported);
- compiled from pixels: the node's whole device path, from decoded uint16 pixels in pinned
  memory (copies overlapped with compute, display pipeline on the device) to detections
  in original pixels, with the network compiled.

The last line printed is one JSON object (``"check": "inference"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import BUNDLED_MODEL  # noqa: E402
from model.card import ModelCard  # noqa: E402
from model.detector import Detector, create_network  # noqa: E402
from model.preprocess import PreprocessConfig, preprocess, to_tensor  # noqa: E402
from model.vocabulary import DEFAULT_FINDINGS  # noqa: E402

TARGET_IMAGES_PER_SECOND = 1000  # issue 18, d0 at 1024 px on an H100/H200


def _card(architecture: str, size: int) -> ModelCard:
    return ModelCard(
        name="bench", version="0", architecture=architecture, image_size=size,
        findings=DEFAULT_FINDINGS, preprocessing=PreprocessConfig(image_size=size).to_dict(),
        thresholds={f.label: 0.5 for f in DEFAULT_FINDINGS}, weights_file="weights.pt",
        weights_sha256="0" * 64, training_data_fingerprint="0" * 64, code_version="bench",
        intended_use="benchmark")


def bundled_at(size: int) -> tuple[ModelCard, dict]:
    """The bundled model's card and weights, for an input of ``size`` pixels."""
    card = ModelCard.load(BUNDLED_MODEL)
    resized = ModelCard.from_dict({**card.to_dict(), "image_size": size, "preprocessing": {
        **card.preprocessing, "image_size": size}})
    state = torch.load(BUNDLED_MODEL / card.weights_file, map_location="cpu", weights_only=True)
    return resized, state


def radiographs(count: int, low: int, high: int) -> list:
    from model.phantom import synthesize_case

    return [synthesize_case(18, index, size_range=(low, high)).dataset for index in range(count)]


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


def best_of_batches(rate_for: Callable[[int], float], batches: str,
                    label: str = "ours") -> tuple[float, int]:
    """The best rate over comma-separated batch sizes, stopping at the first out-of-memory."""
    best_rate, best_batch = 0.0, 0
    for batch_size in (int(b) for b in batches.split(",")):
        try:
            rate = rate_for(batch_size)
        except torch.OutOfMemoryError:
            print(f"{label}, batch {batch_size}: out of memory", flush=True)
            break
        print(f"{label}, batch {batch_size}: {rate:.1f} images/s", flush=True)
        if rate > best_rate:
            best_rate, best_batch = rate, batch_size
    return best_rate, best_batch


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architecture", default="tf_efficientdet_d0")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batches", default="1,8,32,64", help="batch sizes to try, eager")
    parser.add_argument("--compile-batch", type=int, default=64,
                        help="the batch size compiled and timed; 0: no compiled variants")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (the dry run uses eager: no codegen)")
    parser.add_argument("--pixels", type=int, default=2048,
                        help="side of the stored images for 'from pixels'; 0: skip it")
    parser.add_argument("--images", type=int, default=4, help="distinct radiographs used")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preprocessing", default="torch", choices=["torch", "numpy"],
                        help="for 'from pixels': the device path (torch) or the host's")
    args = parser.parse_args()
    if args.architecture != ModelCard.load(BUNDLED_MODEL).architecture:
        parser.error(f"--architecture: the bundled weights are "
                     f"{ModelCard.load(BUNDLED_MODEL).architecture}")

    device = torch.device(args.device)
    card, state = bundled_at(args.size)
    network = create_network(card)
    network.load_state_dict(state)
    detector = Detector(card, network, device, preprocessing=args.preprocessing)
    stored = radiographs(args.images, int(args.pixels * 0.9) or 256, args.pixels or 256)
    config = PreprocessConfig(image_size=args.size)
    images = to_tensor([preprocess(ds, config)[0] for ds in stored]).to(device)
    result = {"check": "inference", "device": device_name(device), "model": args.architecture,
              "size": args.size, "thresholds_first": round(detector.score_floor, 4)}

    stock = create_network(card, bench_task="predict")
    stock.model.load_state_dict(state)
    stock = stock.eval().to(device)
    with torch.inference_mode():
        stock_rate = timed_rate(lambda: stock(images[:1]), 1, args.seconds, device)
    print(f"stock effdet, fp32, batch 1: {stock_rate:.1f} images/s", flush=True)
    result["stock_img_s"] = round(stock_rate, 1)

    def batch_of(size: int) -> torch.Tensor:
        with torch.inference_mode():
            return images.repeat((size + len(images) - 1) // len(images), 1, 1, 1)[:size].clone()

    def ours(batch_size: int) -> float:
        batch = batch_of(batch_size)
        return timed_rate(lambda: detector.raw_detections(batch, detector.score_floor),
                          batch_size, args.seconds, device)

    eager_rate, eager_batch = best_of_batches(ours, args.batches, "eager")
    result.update(eager_img_s=round(eager_rate, 1), eager_batch=eager_batch)
    best = eager_rate

    if args.compile_batch:
        started = time.perf_counter()
        compiled = detector.compile([args.compile_batch], backend=args.compile_backend)
        result.update(compiled=compiled, compile_backend=args.compile_backend,
                      compile_s=round(time.perf_counter() - started, 1))
        if compiled:
            rate = ours(args.compile_batch)
            print(f"compiled, batch {args.compile_batch}: {rate:.1f} images/s", flush=True)
            result.update(compiled_img_s=round(rate, 1), compiled_batch=args.compile_batch)
            best = max(best, rate)
        if compiled and args.pixels:
            prepared = [detector.prepare(ds) for ds in stored]
            items = (prepared * (4 * args.compile_batch // len(prepared) + 1))[
                :4 * args.compile_batch]
            rate = timed_rate(lambda: detector.predict_prepared(items, True, args.compile_batch),
                              len(items), args.seconds, device)
            print(f"compiled from {args.pixels} px uint16 pixels: {rate:.1f} images/s",
                  flush=True)
            result.update(from_pixels_img_s=round(rate, 1), pixels_side=args.pixels,
                          preprocessing=detector.preprocessing.value)

    result.update(ours_img_s=round(best, 1), ratio=round(best / stock_rate, 2),
                  target_img_s=TARGET_IMAGES_PER_SECOND,
                  meets_target=result.get("compiled_img_s", 0) >= TARGET_IMAGES_PER_SECOND)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
