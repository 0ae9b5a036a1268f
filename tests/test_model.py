"""Checkpoints: written atomically, and every kind of damage is named at load time."""

from __future__ import annotations

import json
import shutil

import pytest

from vizier_omnipred.model import PRESETS, CheckpointError, count_parameters, get_preset, load_checkpoint
from vizier_omnipred.regressor import OmniPredRegressor


@pytest.fixture
def saved(tmp_path, tiny_regressor_factory):
    reg = tiny_regressor_factory()
    path = reg.save(tmp_path / "ckpt")
    return path


def test_presets_exist_and_unknown_is_clear():
    assert {"tiny", "small", "base"} <= set(PRESETS)
    with pytest.raises(ValueError, match="valid"):
        get_preset("huge")


def test_small_preset_size(tiny_regressor_factory):
    from vizier_omnipred.model import build_model

    n = count_parameters(build_model(PRESETS["small"], 1100))
    assert 0.5e6 < n < 3e6  # "small" trains on a 2-core CPU


@pytest.mark.parametrize("name", ["omnipred.json", "config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(saved)


def test_truncated_weights_are_named(saved):
    w = saved / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(saved)


def test_corrupt_json_is_named(saved):
    (saved / "omnipred.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="omnipred.json"):
        load_checkpoint(saved)


def test_other_codec_version_is_refused(saved):
    meta = json.loads((saved / "omnipred.json").read_text())
    meta["text_codec"]["version"] = 999
    (saved / "omnipred.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="codec version 999"):
        OmniPredRegressor.from_pretrained(saved)


def test_swapped_tokenizer_is_refused(saved, tmp_path):
    other = OmniPredRegressor.from_scratch("tiny", tokenizer_texts=["completely different text"] * 50)
    other_path = other.save(tmp_path / "other")
    shutil.copy(other_path / "tokenizer.json", saved / "tokenizer.json")
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_checkpoint(saved)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_save_over_existing_checkpoint_keeps_it_loadable(saved, tiny_regressor_factory):
    reg = tiny_regressor_factory(seed=4)
    reg.save(saved)
    load_checkpoint(saved)
    assert not any(p.name.startswith(".") for p in saved.parent.iterdir())


def test_number_embedding_is_saved_with_the_weights_and_checked_against_the_codec(saved, tmp_path):
    import torch

    from vizier_omnipred.text import TextCodec

    reg = OmniPredRegressor.from_pretrained(saved)
    model = reg.checkpoint.model
    assert model.reads_numbers and reg.codec.writes_numbers
    with torch.no_grad():
        model.number_embedding.proj.weight.add_(0.5)
    path = reg.save(tmp_path / "changed")
    again = load_checkpoint(path).model
    assert torch.equal(again.number_embedding.proj.weight, model.number_embedding.proj.weight)
    # a model without the embedding under a codec that writes number positions is refused
    config = json.loads((saved / "config.json").read_text())
    config["number_embedding_frequencies"] = 0
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="number embedding"):
        load_checkpoint(saved)
    # and a pure-text model (the paper's input) round-trips as one
    text_only = OmniPredRegressor.from_scratch("tiny", codec=TextCodec(number_features="none"))
    assert not text_only.checkpoint.model.reads_numbers
    loaded = load_checkpoint(text_only.save(tmp_path / "text"))
    assert loaded.codec.number_features == "none" and not loaded.model.reads_numbers


def test_number_embedding_frequencies_differ_from_scratch_and_pretraining_and_are_kept(saved, tmp_path):
    from vizier_omnipred.model import (PRETRAINING_NUMBER_EMBEDDING, SCRATCH_NUMBER_EMBEDDING, NumberEmbeddingConfig,
                                       build_model)

    def max_frequency(model):
        return model.number_embedding.max_frequency

    assert SCRATCH_NUMBER_EMBEDDING.max_frequency < PRETRAINING_NUMBER_EMBEDDING.max_frequency
    assert max_frequency(build_model(PRESETS["tiny"], 300)) == PRETRAINING_NUMBER_EMBEDDING.max_frequency
    # the saved tiny is from scratch: its frequencies travel in config.json and come back at load
    assert max_frequency(load_checkpoint(saved).model) == SCRATCH_NUMBER_EMBEDDING.max_frequency
    wide = OmniPredRegressor.from_scratch("tiny", number_embedding=NumberEmbeddingConfig(max_frequency=32.0))
    assert max_frequency(load_checkpoint(wide.save(tmp_path / "wide")).model) == 32.0
    with pytest.raises(ValueError, match="max_frequency"):
        NumberEmbeddingConfig(min_frequency=2.0, max_frequency=1.0)
    with pytest.raises(ValueError):
        NumberEmbeddingConfig(frequencies=0)


def test_checkpoint_from_before_numbers_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["architectures"] = ["T5ForConditionalGeneration"]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="retrain"):
        load_checkpoint(saved)


def test_nan_weights_are_refused_at_load(saved):
    """A valid safetensors file whose tensors hold nan (a diverged run saved, bit rot) would
    load and then fail inside torch's sampler; the loader names the file and the tensor."""
    import torch
    from safetensors.torch import load_file, save_file

    w = saved / "model.safetensors"
    weights = load_file(str(w))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(w), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"model.safetensors.*{name}.*nan"):
        load_checkpoint(saved)


@pytest.mark.parametrize("field, value", [
    ("level_maps", "x"),
    ("level_maps", {"maps": {"loss": "garbage"}}),
    ("max_exponents", [1]),
    ("max_exponents", {"caps": {"loss": "big"}}),
    ("ensemble_size", "two"),
    ("ensemble_size", 0),
])
def test_a_damaged_fit_record_is_a_checkpoint_error(saved, field, value):
    meta = json.loads((saved / "omnipred.json").read_text())
    meta["training"][field] = value
    (saved / "omnipred.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"omnipred.json.*{field}"):
        OmniPredRegressor.from_pretrained(saved)
