"""The compiled network: built once per batch size, same detections as eager, eager on failure.

Tolerance for compiled against eager (the bundled model on generated radiographs): the same
findings above the card's thresholds, and among the 20 best-scoring detections of each
image every one found again with the same label, its probability within 1e-3 and each box
edge within 0.5 original pixels. Inductor fuses and reorders float arithmetic, so the last
bits differ; on this CPU the differences seen were about 1e-5 in probability.

Compiling effdet's d0 with inductor takes minutes on a small CPU (about 200 s per batch size
here, against under a second per image to run it), so that comparison is a slow test;
the quick ones compile through a backend that records each graph dynamo hands it and runs
it as traced, which exercises everything of ours (the warm-up, padding, slicing, the
fall-back) but inductor's code generation.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from model import BUNDLED_MODEL
from model.detector import Detector
from model.phantom import synthesize_case
from tests.model.conftest import IMAGE_SIZE

IMAGE_TOLERANCE = {"score": 1e-3, "box_px": 0.5, "top": 20}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from nothing; dynamo's caches are per process."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def recording_backend(graphs: list[int]):  # noqa: ANN201 - a torch.compile backend
    def backend(graph_module, example_inputs):  # noqa: ANN001, ANN202
        # The images among the graph's inputs (the weights are inputs too).
        graphs.append(next(t.shape[0] for t in example_inputs
                           if t.dim() == 4 and t.shape[1] == 3 and t.shape[-1] == IMAGE_SIZE))
        return graph_module.forward

    return backend


def cases(count: int, size: int) -> list:
    return [synthesize_case(5, index, size_range=(size, size + 200)).dataset
            for index in range(count)]


def assert_same_detections(eager: list, compiled: list, tolerance: dict) -> None:
    for expected, got in zip(eager, compiled, strict=True):
        best = sorted(expected, key=lambda d: -d.score)[:tolerance["top"]]
        for detection in best:
            assert any(
                other.label == detection.label
                and abs(other.score - detection.score) <= tolerance["score"]
                and np.abs(np.subtract(other.box, detection.box)).max() <= tolerance["box_px"]
                for other in got), f"{detection} is not found again"


def test_compiled_once_per_batch_size_and_other_batches_padded_or_sliced(tiny_model, caplog):
    eager = Detector.load(tiny_model, device="cpu")
    detector = Detector.load(tiny_model, device="cpu")
    graphs: list[int] = []
    caplog.set_level(logging.INFO, logger="cxr_node.model")

    assert detector.compile([4, 1], backend=recording_backend(graphs)) is True

    assert graphs == [1, 4]  # built at start, smallest first
    assert "network compiled (torch.compile" in caplog.text and "batch sizes 1, 4" in caplog.text
    datasets = cases(6, 300)
    for batch_size in (3, 1, 6):  # padded to 4; as built; sliced into 4 + (2 padded to 4)
        found = detector.predict_prepared([detector.prepare(ds) for ds in datasets[:batch_size]],
                                          apply_thresholds=False, batch_size=batch_size)
        expected = eager.predict(datasets[:batch_size], apply_thresholds=False)
        # The top 50 of at most 100 kept: an untrained network's scores near 0.01 are close
        # enough for a 1e-7 difference to swap which box is 100th and which is dropped.
        assert_same_detections(expected, found, {"score": 1e-6, "box_px": 1e-4, "top": 50})
    assert graphs == [1, 4], "no graph was built after the warm-up"


def test_a_failing_compiler_leaves_the_network_eager_and_says_so(tiny_model, caplog):
    detector = Detector.load(tiny_model, device="cpu")

    def broken(graph_module, example_inputs):  # noqa: ANN001, ANN202
        raise RuntimeError("no C++ compiler on this host")

    assert detector.compile([2], backend=broken) is False

    assert not detector.compiled
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "torch.compile failed, the network runs eager" in warning.getMessage()
    assert "no C++ compiler on this host" in warning.getMessage()
    datasets = cases(2, 300)
    assert detector.predict(datasets, apply_thresholds=False) == \
        Detector.load(tiny_model, device="cpu").predict(datasets, apply_thresholds=False)


def test_compile_refuses_batch_sizes_that_are_not_positive(tiny_model):
    with pytest.raises(ValueError, match="batch_sizes must be positive"):
        Detector.load(tiny_model, device="cpu").compile([0, 2])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bundled_model_compiled_with_inductor_finds_what_eager_finds(caplog):
    eager = Detector.load(BUNDLED_MODEL, device="cpu")
    detector = Detector.load(BUNDLED_MODEL, device="cpu")
    datasets = cases(2, 640)
    caplog.set_level(logging.INFO, logger="cxr_node.model")

    assert detector.compile([2]) is True, caplog.text

    expected_all = eager.predict(datasets, apply_thresholds=False)
    found_all = detector.predict(datasets, apply_thresholds=False)
    assert_same_detections(expected_all, found_all, IMAGE_TOLERANCE)
    expected, found = eager.predict(datasets), detector.predict(datasets)
    assert sum(map(len, expected)) > 0, "the generated cases hold findings"
    assert [[d.label for d in image] for image in found] == \
        [[d.label for d in image] for image in expected]
    assert_same_detections(expected, found, IMAGE_TOLERANCE)
