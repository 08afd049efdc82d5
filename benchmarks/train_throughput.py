"""Training throughput: our training step against a plain effdet loop, in one run.

Plain: effdet's DetBenchTrain in fp32, contiguous NCHW, torch.optim.AdamW (for-each
implementation), a batch of 8, as in effdet's own examples. Ours: the same network and
loss with bf16 autocast, channels_last and fused AdamW on CUDA, at the best of several
batch sizes. Both train on one fixed batch of random images with random boxes already
on the device, so the figure is the training step, not data loading. The last line
printed is one JSON object (``"check": "training"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.inference import _card, best_of_batches, device_name, timed_rate  # noqa: E402
from model.detector import create_network  # noqa: E402

TARGET_IMAGES_PER_SECOND = 500  # issue 18, d0 at 512 px on one H100/H200


def _targets(batch: int, size: int, device: torch.device) -> dict[str, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    boxes, classes = [], []
    for _ in range(batch):
        corner = torch.rand(3, 2, generator=generator) * size * 0.7
        extent = 16 + torch.rand(3, 2, generator=generator) * size * 0.25
        boxes.append(torch.cat([corner, corner + extent], 1).to(device))  # YXYX
        classes.append(torch.randint(1, 8, (3,), generator=generator).float().to(device))
    return {"bbox": boxes, "cls": classes}


def images_per_second(card, batch_size: int, device: torch.device, seconds: float,  # noqa: ANN001
                      fast: bool) -> float:
    torch.manual_seed(0)
    bench = create_network(card, bench_task="train").to(device).train()
    images = torch.randn(batch_size, 3, card.image_size, card.image_size, device=device)
    if fast and device.type == "cuda":
        bench = bench.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    target = _targets(batch_size, card.image_size, device)
    optimizer = torch.optim.AdamW(bench.parameters(), lr=1e-4,
                                  fused=fast and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=fast and device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = bench(images, target)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_rate(step, batch_size, seconds, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architecture", default="tf_efficientdet_d0")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="8,32,64,128", help="batch sizes to try for ours")
    parser.add_argument("--plain-batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    card = _card(args.architecture, args.size)
    plain = images_per_second(card, args.plain_batch, device, args.seconds, fast=False)
    print(f"plain effdet loop, fp32, batch {args.plain_batch}: {plain:.1f} images/s",
          flush=True)
    best, best_batch = best_of_batches(
        lambda batch_size: images_per_second(card, batch_size, device, args.seconds, fast=True),
        args.batches)
    print(json.dumps({"check": "training", "device": device_name(device),
                      "model": args.architecture, "size": args.size,
                      "ours_img_s": round(best, 1), "ours_batch": best_batch,
                      "plain_img_s": round(plain, 1), "plain_batch": args.plain_batch,
                      "ratio": round(best / plain, 2), "target_img_s": TARGET_IMAGES_PER_SECOND,
                      "meets_target": best >= TARGET_IMAGES_PER_SECOND}), flush=True)


if __name__ == "__main__":
    main()
