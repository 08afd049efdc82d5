"""The EfficientDet detector: build from a card, load local weights, predict batches.

effdet provides the network; post-processing is ours and batched. effdet's own
``DetBenchPredict`` decodes and runs NMS one image at a time, which limits a GPU to a few
hundred images per second; here top-k, box decoding and NMS run once for the whole batch
(NMS with the image and class folded into a coordinate offset), and when thresholds apply
only candidates above the card's lowest threshold reach NMS. On CUDA the network can be
compiled (:meth:`Detector.compile`) and images are preprocessed on the device
(:mod:`model.preprocess_torch`). Weights come from a local file only: the network is
created with ``pretrained=False, pretrained_backbone=False``, which never reaches for a
hub, and a backbone starts from a local file at most (:func:`load_backbone`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms

with warnings.catch_warnings():
    # effdet scripts a helper with torch.jit as it is imported, which torch now calls
    # deprecated: an operator would see that warning on every command that loads a model.
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from effdet import create_model_from_config, get_efficientdet_config
    from effdet.anchors import Anchors, decode_box_outputs

from model.card import ModelCard
from model.preprocess import Letterbox, PreprocessConfig, UnsupportedImage, normalise, preprocess
from model.preprocess_torch import (
    DeviceFeed,
    HostImage,
    PreparedImage,
    display_batch,
    stored_image,
    unusable,
)
from model.vocabulary import Finding

LOGGER = logging.getLogger("cxr_node.model")

# Candidates kept per image before NMS, and detections kept after it.
MAX_CANDIDATES = 1000
MAX_DETECTIONS = 100
NMS_IOU = 0.5


class Preprocessing(StrEnum):
    """Where a dataset becomes model input."""

    NUMPY = "numpy"  # on the host (model.preprocess): the reference, and the CPU default
    TORCH = "torch"  # decoded pixels to the device (model.preprocess_torch): the CUDA default


def score_floor(thresholds: Iterable[float]) -> float:
    """The largest float32 not above the lowest threshold.

    Post-processing compares float32 scores on the device; the per-finding thresholds are
    applied afterwards on the host in float64, as always. A candidate dropped on the
    device is then below every threshold in float64 too, so dropping it early changes
    nothing that the thresholds let through.
    """
    lowest = min(thresholds)
    floor = np.float32(lowest)
    if float(floor) > lowest:
        floor = np.nextafter(floor, np.float32(-np.inf))
    return float(floor)


@dataclass(frozen=True)
class Detection:
    """One finding on one image: its coded label, probability and box in original pixels."""

    finding: Finding
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2; (0,0) = top-left pixel corner

    @property
    def label(self) -> str:
        return self.finding.label


def create_network(card: ModelCard, bench_task: str = "") -> torch.nn.Module:
    """The effdet network for ``card``; ``bench_task="train"`` wraps it for training."""
    config = get_efficientdet_config(card.architecture)
    config.anchor_scale = card.anchor_scale  # not among create_model's keyword overrides
    return create_model_from_config(
        config,
        bench_task=bench_task,
        num_classes=card.num_classes,
        pretrained=False,
        pretrained_backbone=False,
        image_size=(card.image_size, card.image_size),
        bench_labeler=bench_task == "train",
    )


class BackboneFileError(ValueError):
    """A backbone checkpoint that cannot be read, or does not fit; one line says why."""


# A timm ImageNet classifier's head: in its checkpoint, not in a detector's backbone.
CLASSIFIER_HEAD = ("conv_head.", "bn2.", "classifier.")


def load_backbone(network: torch.nn.Module, path: Path) -> None:
    """Start ``network``'s backbone from a timm ImageNet checkpoint in a local file.

    A site without internet access downloads e.g. ``tf_efficientnet_b0`` weights elsewhere
    (``.pth`` or ``.safetensors``; a training checkpoint's ``state_dict`` reads too);
    nothing is fetched here. Strict, because a partial load trains silently from noise:
    every backbone tensor must be in the file with its shape, and the file may hold nothing
    else but the classifier head (:data:`CLASSIFIER_HEAD`), which a detector does not use.
    """
    from timm.models import load_state_dict

    name = network.config.backbone_name
    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch, zipfile, pickle and safetensors errors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackboneFileError(f"{path} is not a readable PyTorch or safetensors "
                                f"checkpoint ({reason})") from None
    own = network.backbone.state_dict()
    given = {key: value for key, value in state.items() if not key.startswith(CLASSIFIER_HEAD)}
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")]
    unknown = [k for k in given if k not in own]
    shaped = [f"{k} {_shape(given[k])} where the backbone has {_shape(own[k])}"
              for k in own if k in given and _shape(given[k]) != _shape(own[k])]
    problems = [f"{len(keys)} tensor(s) {what} ({', '.join(keys[:2])}"
                f"{', ...' if len(keys) > 2 else ''})"
                for what, keys in (("missing", missing), ("of another shape", shaped),
                                   ("the backbone does not have", unknown)) if keys]
    if problems:
        raise BackboneFileError(f"{path} does not fit the {name} backbone: "
                                + "; ".join(problems))
    network.backbone.load_state_dict(given, strict=False)  # num_batches_tracked may be absent


def _shape(value: object) -> str:
    return "x".join(str(n) for n in getattr(value, "shape", ())) or "no tensor"


class BatchedPostProcess(torch.nn.Module):
    """Top-k, decode and NMS for a whole batch at once.

    Returns ``(batch, MAX_DETECTIONS, 6)`` rows of x1, y1, x2, y2, score, class (0-based),
    in model-input pixels; unused rows have score 0.

    ``min_score``: candidates scoring below it are dropped before NMS (thresholds first).
    NMS keeps a box unless a better-scoring kept box of its image and class overlaps it, so
    dropping worse-scoring boxes changes no decision about those that remain; the rows at
    or above ``min_score`` are then exactly those of ``min_score=0``, in the same order,
    while NMS sees hundreds of boxes instead of a thousand per image.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        config = network.config
        self.num_levels = config.num_levels
        self.num_classes = config.num_classes
        self.image_size = float(max(config.image_size))
        self.register_buffer("anchors", Anchors.from_config(config).boxes, persistent=False)

    def forward(self, class_out: list[torch.Tensor], box_out: list[torch.Tensor],
                min_score: float = 0.0) -> torch.Tensor:
        batch = class_out[0].shape[0]
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1, self.num_classes)
                            for c in class_out[: self.num_levels]], 1)
        regress = torch.cat([b.permute(0, 2, 3, 1).reshape(batch, -1, 4)
                             for b in box_out[: self.num_levels]], 1)
        k = min(MAX_CANDIDATES, logits.shape[1] * self.num_classes)
        top_logits, flat = torch.topk(logits.reshape(batch, -1), k, dim=1)
        anchor_index = flat // self.num_classes
        classes = flat % self.num_classes
        codes = torch.gather(regress, 1, anchor_index.unsqueeze(2).expand(-1, -1, 4))
        boxes = decode_box_outputs(codes.reshape(-1, 4).float(),
                                   self.anchors[anchor_index.reshape(-1)], output_xyxy=True)
        boxes = boxes.reshape(batch, k, 4).clamp(0, self.image_size)
        scores = top_logits.float().sigmoid()

        # One NMS call for all images and classes: shift each (image, class) group apart.
        group = torch.arange(batch, device=boxes.device).unsqueeze(1) * self.num_classes + classes
        offset = (group.to(boxes.dtype) * (self.image_size + 1)).unsqueeze(2)
        shifted, flat_scores = (boxes + offset).reshape(-1, 4), scores.reshape(-1)
        if min_score > 0:
            candidates = torch.nonzero(flat_scores >= min_score).squeeze(1)
            keep = candidates[nms(shifted[candidates], flat_scores[candidates], NMS_IOU)]
        else:
            keep = nms(shifted, flat_scores, NMS_IOU)
        image_of = keep // k
        # Group by image keeping the score order (stable sort), then rank within each image.
        order = torch.argsort(image_of, stable=True)
        keep, image_of = keep[order], image_of[order]
        rank = torch.arange(keep.numel(), device=keep.device) - torch.searchsorted(image_of,
                                                                                   image_of)
        chosen = rank < MAX_DETECTIONS
        keep, image_of, rank = keep[chosen], image_of[chosen], rank[chosen]
        out = torch.zeros(batch, MAX_DETECTIONS, 6, device=boxes.device)
        flat_boxes = boxes.reshape(-1, 4)
        out[image_of, rank, :4] = flat_boxes[keep]
        out[image_of, rank, 4] = flat_scores[keep]
        out[image_of, rank, 5] = classes.reshape(-1)[keep].to(out.dtype)
        return out


def rows_to_original(rows: np.ndarray, letterbox: Letterbox) -> list[tuple[np.ndarray, float, int]]:
    """Post-processed rows of one image -> (box in original pixels, score, class index).

    Unused rows (score 0) and boxes that lie wholly in the padding (empty once clipped to
    the image) are dropped.
    """
    kept = rows[rows[:, 4] > 0]
    boxes = letterbox.to_original(kept[:, :4].astype(np.float64))
    return [(box, float(score), int(cls))
            for box, score, cls in zip(boxes, kept[:, 4], kept[:, 5], strict=True)
            if box[2] > box[0] and box[3] > box[1]]


class Detector:
    """A loaded model: datasets in, detections in original pixel coordinates out.

    ``preprocessing`` chooses where datasets become model input (:class:`Preprocessing`;
    default: on the device for CUDA, with numpy on the host for the CPU). Every path goes
    through :meth:`prepare` (host: decode, and pin for CUDA) and :meth:`predict_prepared`
    (device: copy, preprocess, network, post-processing, batch by batch).
    """

    def __init__(self, card: ModelCard, network: torch.nn.Module,
                 device: torch.device | str | None = None,
                 preprocessing: Preprocessing | str | None = None) -> None:
        self.card = card
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.preprocess_config = PreprocessConfig.from_dict(card.preprocessing)
        if preprocessing is None:
            preprocessing = Preprocessing.TORCH if self.device.type == "cuda" \
                else Preprocessing.NUMPY
        try:
            self.preprocessing = Preprocessing(preprocessing)
        except ValueError:
            raise ValueError(f'preprocessing "{preprocessing}" is not one of '
                             f"{[p.value for p in Preprocessing]}") from None
        self.network = network.eval().to(self.device)
        self.post_process = BatchedPostProcess(network).to(self.device)
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        self.score_floor = score_floor(card.thresholds.values())
        self.feed = DeviceFeed(self.device)
        # Set by compile(): the compiled network and the batch sizes it was built for.
        self._compiled: torch.nn.Module | None = None
        self.compiled_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | str | None = None,
             preprocessing: Preprocessing | str | None = None) -> Detector:
        """Load the card and its weights from ``model_dir`` (a local folder; no download)."""
        card = ModelCard.load(model_dir)
        network = create_network(card)
        state = torch.load(Path(model_dir) / card.weights_file, map_location="cpu",
                           weights_only=True)
        network.load_state_dict(state)
        return cls(card, network, device, preprocessing)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def compile(self, batch_sizes: Sequence[int], backend: str = "inductor") -> bool:
        """Compile the network with ``torch.compile`` and build it for each batch size now.

        The shapes are static (``dynamic=False``: the fastest kernels, and no compilation
        later): a batch is padded with blank images up to the next size compiled, and one
        larger than all of them runs in slices of the largest. Running each size once here,
        with the post-processing, is the warm-up that keeps the first study from waiting
        on a compiler. Returns False, with the network left eager and the reason logged,
        when compilation fails.
        """
        sizes = tuple(sorted({int(size) for size in batch_sizes}))
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
        started = time.perf_counter()
        self._compiled = torch.compile(self.network, backend=backend, dynamic=False)
        self.compiled_batch_sizes = sizes
        try:
            for size in sizes:
                with torch.inference_mode():
                    blank = torch.zeros(size, 3, self.card.image_size, self.card.image_size,
                                        device=self.device)
                    self.raw_detections(blank)
                    self._synchronise()
        except Exception as exc:  # noqa: BLE001 - any failure here means: run eager
            self._fall_back(exc)
            return False
        if self._compiled is None:  # raw_detections fell back already
            return False
        LOGGER.info("network compiled (torch.compile, %s) for batch sizes %s on %s in %.1f s",
                    backend, ", ".join(map(str, sizes)), self.device,
                    time.perf_counter() - started)
        return True

    def _fall_back(self, exc: BaseException) -> None:
        cause = exc  # dynamo wraps the compiler's own error: name that one
        while (inner := getattr(cause, "inner_exception", None) or cause.__cause__) is not None:
            cause = inner
        reason = (str(cause).strip().splitlines() or [""])[0]
        LOGGER.warning("torch.compile failed, the network runs eager: %s: %s",
                       type(cause).__name__, reason)
        LOGGER.debug("torch.compile failure", exc_info=exc)
        self._compiled, self.compiled_batch_sizes = None, ()

    def _synchronise(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _network_outputs(self, batch: torch.Tensor) -> tuple[list[torch.Tensor],
                                                             list[torch.Tensor]]:
        """The network (compiled when it is) on an (N, 3, S, S) batch already on the device."""
        count = batch.shape[0]
        if self._compiled is not None:
            largest = self.compiled_batch_sizes[-1]
            if count > largest:
                parts = [self._network_outputs(part) for part in batch.split(largest)]
                return ([torch.cat(level) for level in zip(*(p[0] for p in parts), strict=True)],
                        [torch.cat(level) for level in zip(*(p[1] for p in parts), strict=True)])
            size = next(s for s in self.compiled_batch_sizes if s >= count)
            padded = batch
            if size > count:
                padded = torch.cat([batch, batch.new_zeros(size - count, *batch.shape[1:])])
            if not padded.is_inference():
                # A compiled graph is guarded on how its input was made; a tensor made
                # outside inference mode would build another graph.
                padded = padded.clone()
            if self.device.type == "cuda":
                padded = padded.contiguous(memory_format=torch.channels_last)
            try:
                with self._autocast():
                    class_out, box_out = self._compiled(padded)
                return [c[:count] for c in class_out], [b[:count] for b in box_out]
            except torch._dynamo.exc.TorchDynamoException as exc:  # compiling a new graph
                self._fall_back(exc)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.network(batch)

    @torch.inference_mode()
    def raw_detections(self, batch: torch.Tensor, min_score: float = 0.0) -> torch.Tensor:
        """Network and post-processing on a normalised (N, 3, S, S) batch -> (N, 100, 6).

        ``min_score`` > 0: candidates below it are dropped before NMS (thresholds first).
        """
        batch = batch.to(self.device, non_blocking=True)
        class_out, box_out = self._network_outputs(batch)
        return self.post_process([c.float() for c in class_out], [b.float() for b in box_out],
                                 min_score)

    def prepare(self, ds) -> PreparedImage:  # noqa: ANN001 - a pydicom Dataset
        """The host's part for one dataset (decode; pinned for CUDA); ``UnsupportedImage``
        for pixels the model must not see."""
        pin = self.device.type == "cuda"
        if self.preprocessing is Preprocessing.TORCH:
            return stored_image(ds, self.preprocess_config, pin=pin)
        image, letterbox = preprocess(ds, self.preprocess_config)
        return HostImage.from_numpy(image, letterbox, pin=pin)

    def predict_prepared(self, prepared: Sequence[PreparedImage], apply_thresholds: bool = True,
                         batch_size: int = 16) -> list[list[Detection] | UnsupportedImage]:
        """Detections per prepared image, or the ``UnsupportedImage`` that refuses it (only
        the torch path finds an image without contrast here, on the device).

        The next batch's copies are started before this batch computes (:class:`DeviceFeed`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        batches = [prepared[start:start + batch_size]
                   for start in range(0, len(prepared), batch_size)]
        min_score = self.score_floor if apply_thresholds else 0.0
        results: list[list[Detection] | UnsupportedImage] = []
        upcoming = self.feed.send(batches[0]) if batches else None
        for index, batch in enumerate(batches):
            current = upcoming
            upcoming = self.feed.send(batches[index + 1]) if index + 1 < len(batches) else None
            with torch.inference_mode():
                images, bounds = display_batch(self.feed.receive(current),
                                               self.preprocess_config)
                rows = self.raw_detections(normalise(images), min_score)
                rows, bounds = rows.cpu().numpy(), bounds.cpu().numpy()
            for per_image, item, refusal in zip(rows, batch, unusable(bounds), strict=True):
                results.append(refusal if refusal is not None else
                               self._detections(per_image, item.letterbox, apply_thresholds))
        return results

    def _detections(self, rows: np.ndarray, letterbox: Letterbox,
                    apply_thresholds: bool) -> list[Detection]:
        detections = []
        for box, score, cls in rows_to_original(rows, letterbox):
            finding = self.card.findings[cls]
            if apply_thresholds and score < self.card.thresholds[finding.label]:
                continue
            detections.append(Detection(finding, score, tuple(float(v) for v in box)))
        return detections

    def predict_images(self, images: Sequence[np.ndarray], letterboxes: Sequence[Letterbox],
                       apply_thresholds: bool = True,
                       batch_size: int = 16) -> list[list[Detection]]:
        """Detections for images the numpy path made, mapped back through their letterboxes."""
        if len(images) != len(letterboxes):
            raise ValueError(f"{len(images)} images but {len(letterboxes)} letterboxes")
        shapes = sorted({np.shape(image) for image in images})
        size = self.card.image_size
        if shapes and shapes != [(size, size)]:
            raise ValueError(f"images must be {size} x {size}, got shapes {shapes}")
        prepared = [HostImage.from_numpy(image, letterbox)
                    for image, letterbox in zip(images, letterboxes, strict=True)]
        return self.predict_prepared(prepared, apply_thresholds, batch_size)  # type: ignore[return-value]

    def predict(self, datasets: Sequence, apply_thresholds: bool = True) -> list[list[Detection]]:
        """Detections for DICOM datasets; raises ``UnsupportedImage`` for unusable ones."""
        results = self.predict_prepared([self.prepare(ds) for ds in datasets], apply_thresholds)
        for result in results:
            if isinstance(result, UnsupportedImage):
                raise result
        return results  # type: ignore[return-value]
