"""A model card loads only when complete and consistent, and says which field is wrong."""

from __future__ import annotations

import json

import pytest

from model.card import CARD_FILE, CardError, ModelCard
from tests.model.conftest import write_model


def edit_card(model_dir, change) -> None:
    path = model_dir / CARD_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_saved_card_loads_back_equal(tiny_model):
    card = ModelCard.load(tiny_model)
    assert card.labels[0] == "Atelectasis" and card.num_classes == 7
    assert ModelCard.from_dict(card.to_dict()) == card


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.pop("thresholds"), "thresholds: missing"),
    (lambda d: d.pop("intended_use"), "intended_use: missing"),
    (lambda d: d["thresholds"].pop("Mass"), "thresholds: keys"),
    (lambda d: d["thresholds"].update(Mass=1.5), "thresholds.Mass"),
    (lambda d: d.update(image_size=500), "image_size"),
    (lambda d: d["preprocessing"].update(image_size=512), "preprocessing.image_size"),
    (lambda d: d.update(architecture="resnet50"), "architecture"),
    (lambda d: d.update(colour="blue"), "colour: unknown field"),
    (lambda d: d["findings"][0].update(code=""), "findings"),
    (lambda d: d.update(training_data_fingerprint="abc"), "training_data_fingerprint"),
    (lambda d: d.update(weights_file="../weights.pt"), "weights_file"),
])
def test_missing_or_inconsistent_fields_are_named(tiny_model, change, field):
    edit_card(tiny_model, change)
    with pytest.raises(CardError, match=field.replace(".", r"\.")):
        ModelCard.load(tiny_model)


def test_weights_that_do_not_match_the_card_are_refused(tiny_model):
    with open(tiny_model / "weights.pt", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(CardError, match="weights_sha256"):
        ModelCard.load(tiny_model)


def test_a_missing_card_names_the_path(tmp_path):
    with pytest.raises(CardError, match=str(tmp_path)):
        ModelCard.load(tmp_path)


def test_write_model_helper_produces_distinct_weights_per_seed(tmp_path):
    first = write_model(tmp_path / "a", seed=1)
    second = write_model(tmp_path / "b", seed=2)
    assert first.weights_sha256 != second.weights_sha256
