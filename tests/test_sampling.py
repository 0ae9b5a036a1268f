"""Cached, constrained sampling agrees with a plain full forward pass of the same T5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vizier import pyvizier as vz

from vizier_omnipred.sampling import GrammarMasks, sample_y, sample_y_indices
from vizier_omnipred.vocab import PAD_ID


def _greedy_full_forward(model, vocab, ids, masks, values=None, study_starts=None):
    """Reference decoder: recompute everything at every step, no cache, no repetition."""
    from vizier_omnipred.sampling import EncoderInputs

    inputs = EncoderInputs.collate(ids, torch.device("cpu"), values, study_starts)
    dec = torch.full((len(ids), 1), PAD_ID, dtype=torch.long)
    classes = None
    for p in range(vocab.float_tokenizer.length):
        logits = model(**inputs.model_kwargs(), decoder_input_ids=dec, use_cache=False).logits[:, -1]
        logits = logits + (masks.first if p == 0 else masks.rest[classes, p])
        nxt = logits.argmax(-1)
        if p == 0:
            classes = masks.first_class[nxt]
        dec = torch.cat([dec, nxt[:, None]], dim=1)
    return dec[:, 1:].numpy() - vocab.y_offset


@pytest.mark.parametrize("study_text", ["inline", "separate"])
def test_cached_sampling_matches_full_forward(tiny_regressor_factory, problem_2d, study_text):
    from vizier_omnipred.regressor import OmniPredRegressor
    from vizier_omnipred.text import TextCodec

    reg = tiny_regressor_factory(seed=7)
    if study_text == "separate":  # same BPE, a model that encodes the study text apart
        reg = OmniPredRegressor.from_scratch("tiny", vocab=reg.vocab, seed=7, codec=TextCodec(study_text=study_text))
    model, vocab = reg.checkpoint.model, reg.vocab
    with torch.no_grad():  # make the random model's logits peaked so low temperature is ~greedy
        model.lm_head.weight.mul_(30.0) if not model.config.tie_word_embeddings else model.shared.weight.mul_(8.0)
    reg.set_problem(problem_2d)
    trials = [vz.TrialSuggestion({"x0": float(a), "x1": float(-a)}) for a in np.linspace(-2, 2, 5)]
    inputs = reg.model_inputs(trials)
    ids, values, starts = [x.ids for x in inputs], [x.values for x in inputs], [x.study_start for x in inputs]
    assert model.reads_numbers and all(v is not None for v in values)
    assert all((s is not None) == (study_text == "separate") for s in starts)
    masks = GrammarMasks.build(vocab, torch.device("cpu"))
    ref = _greedy_full_forward(model, vocab, ids, masks, values, starts)
    ref_values, ref_inf = vocab.float_tokenizer.decode_indices(ref)
    got = sample_y(model, vocab, ids, 3, temperature=1e-4, seed=0, masks=masks, input_values=values,
                   study_starts=starts)
    for s in range(3):
        np.testing.assert_array_equal(got.infeasible[:, s], ref_inf)
        np.testing.assert_array_equal(np.nan_to_num(got.values[:, s]), np.nan_to_num(ref_values))


def test_samples_are_well_formed_and_chunking_is_invisible(tiny_regressor_factory, problem_2d):
    reg = tiny_regressor_factory(seed=8)
    reg.set_problem(problem_2d)
    trials = [vz.TrialSuggestion({"x0": float(a), "x1": 0.5}) for a in np.linspace(-3, 3, 7)]
    ids = reg.input_ids(trials)
    model, vocab = reg.checkpoint.model, reg.vocab
    big = sample_y(model, vocab, ids, 32, seed=3)
    assert big.values.shape == (7, 32) and big.infeasible.shape == (7, 32)
    # every sample is a number or an explicit infeasible mark, never both
    assert np.all(np.isnan(big.values) == big.infeasible)
    # an untrained model still samples only grammatical sequences
    ft = vocab.float_tokenizer
    finite = big.values[~big.infeasible]
    assert np.all(np.abs(finite) <= ft.max_value)
    # chunking (one input per chunk here) and padding to other inputs' lengths do not
    # change the model's choice: compare the near-greedy decodes
    whole = sample_y(model, vocab, ids, 4, seed=3, temperature=1e-4)
    chunked = sample_y(model, vocab, ids, 4, seed=4, temperature=1e-4, max_rows=4)
    np.testing.assert_array_equal(np.nan_to_num(chunked.values), np.nan_to_num(whole.values))
    np.testing.assert_array_equal(chunked.infeasible, whole.infeasible)


def test_seed_reproducible_and_temperature_validated(tiny_regressor_factory, problem_2d):
    import pytest

    reg = tiny_regressor_factory(seed=9)
    reg.set_problem(problem_2d)
    t = [vz.TrialSuggestion({"x0": 0.0, "x1": 0.0})]
    a, b = reg.sample(t, 16, seed=1), reg.sample(t, 16, seed=1)
    np.testing.assert_array_equal(np.nan_to_num(a.values), np.nan_to_num(b.values))
    with pytest.raises(ValueError, match="temperature"):
        reg.sample(t, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        sample_y(reg.checkpoint.model, reg.vocab, reg.input_ids(t), 0)


def test_tree_sampling_draws_from_the_models_distribution(tiny_regressor_factory, problem_2d):
    """Empirical frequencies of the first two tokens match the model's exact probabilities."""
    from vizier_omnipred.sampling import pad_batch

    reg = tiny_regressor_factory(seed=11)
    reg.set_problem(problem_2d)
    model, vocab = reg.checkpoint.model, reg.vocab
    ids = reg.input_ids([vz.TrialSuggestion({"x0": 0.3, "x1": -0.7})])
    masks = GrammarMasks.build(vocab, torch.device("cpu"))
    n = 4000
    idx = sample_y_indices(model, vocab, ids, n, seed=0, masks=masks, max_rows=n)[0]  # (n, length)
    tokens = np.array(vocab.float_tokenizer.tokens)[idx]
    x, attn = pad_batch(ids, torch.device("cpu"))
    with torch.no_grad():
        start = torch.full((1, 1), PAD_ID, dtype=torch.long)
        p0 = torch.softmax(model(input_ids=x, attention_mask=attn, decoder_input_ids=start).logits[0, -1]
                           + masks.first, -1)
        plus = vocab.y_ids(["<+>"])[0]
        dec = torch.tensor([[PAD_ID, plus]])
        cls = masks.first_class[plus]
        p1 = torch.softmax(model(input_ids=x, attention_mask=attn, decoder_input_ids=dec).logits[0, -1]
                           + masks.rest[cls, 1], -1)

    def close(freq, p):
        return abs(freq - p) < 4 * np.sqrt(max(p * (1 - p), 1e-4) / n) + 0.005

    for first in ("<+>", "<->", "<INFEASIBLE>"):  # position 0
        assert close(np.mean(tokens[:, 0] == first), float(p0[vocab.y_ids([first])[0]])), first
    second = tokens[tokens[:, 0] == "<+>", 1]  # position 1 given '+'
    for digit in range(10):
        t = f"<{digit}>"
        p = float(p1[vocab.y_ids([t])[0]])
        assert abs(np.mean(second == t) - p) < 4 * np.sqrt(max(p * (1 - p), 1e-4) / len(second)) + 0.005, t


def test_sample_order_is_shuffled(tiny_regressor_factory, problem_2d):
    """Sample 0 is a fair draw (Thompson sampling reads it), not the smallest prefix."""
    reg = tiny_regressor_factory(seed=12)
    reg.set_problem(problem_2d)
    s = reg.sample([vz.TrialSuggestion({"x0": 0.0, "x1": 0.0})], 256, seed=1)
    v = np.nan_to_num(s.values[0], nan=np.inf)
    assert not np.all(np.diff(v) >= 0)


def test_capped_masks_bound_the_exponent_and_keep_one_allowed(tiny_regressor_factory, problem_2d):
    from vizier_omnipred.sampling import sample_y

    reg = tiny_regressor_factory(seed=1)
    ft = reg.vocab.float_tokenizer
    ids = reg.vocab.encode_inputs(["{suggestion:{x0:0.5,x1:1}}"]) * 3
    for cap in (-3, 2, ft.min_exponent - 5):
        samples = sample_y(reg.checkpoint.model, reg.vocab, ids, 256, seed=0,
                           masks=reg.masks.capped(reg.vocab, cap))
        finite = np.abs(samples.values[~samples.infeasible])
        assert finite.size and finite.max() < 10.0 ** (ft.num_digits + max(cap, ft.min_exponent))


def test_study_texts_apart_are_encoded_once_per_batch_and_rows_do_not_depend_on_their_batch():
    """A batch's rows that share a study text share one study row; a row's encoding is the same
    alone as in a batch with other studies (the study rows are not mixed up by the sharing)."""
    from vizier_omnipred.model import PRESETS, build_model
    from vizier_omnipred.sampling import EncoderInputs

    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"], 300).eval()
    nan = float("nan")
    rows = [([5, 6, 7, 1, 40, 41, 1], [0.2, nan, nan, nan, nan, nan, nan]),
            ([5, 8, 1, 50, 51, 52, 1], [0.7, nan, nan, nan, nan, nan, nan]),
            ([5, 9, 9, 9, 1, 40, 41, 1], [0.9, 0.9, nan, nan, nan, nan, nan, nan])]
    starts = [4, 3, 5]
    batch = EncoderInputs.collate([r for r, _ in rows], torch.device("cpu"), [v for _, v in rows], starts)
    assert batch.study_ids.shape[0] == 2 and batch.study_index.tolist() == [0, 1, 0]
    with torch.no_grad():
        hidden, mask = model.encode(**batch.model_kwargs())
        for i, (ids, values) in enumerate(rows):
            alone = EncoderInputs.collate([ids], torch.device("cpu"), [values], [starts[i]])
            h, m = model.encode(**alone.model_kwargs())
            keep = mask[i].bool()
            assert int(keep.sum()) == len(ids)  # the trial's tokens and its study's, nothing padded
            torch.testing.assert_close(hidden[i][keep], h[0][m[0].bool()], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mixes"):
        EncoderInputs.collate([rows[0][0], rows[1][0]], torch.device("cpu"), None, [4, None])


def test_model_inputs_of_one_metric_of_a_study_with_several(tiny_regressor_factory, problem_2d):
    # A study with two objectives has no single input until a metric is named; naming one writes
    # that metric's text, as the codec does.
    reg = tiny_regressor_factory()
    problem = vz.ProblemStatement(search_space=problem_2d.search_space, metric_information=[
        vz.MetricInformation("loss", goal=vz.ObjectiveMetricGoal.MINIMIZE),
        vz.MetricInformation("latency", goal=vz.ObjectiveMetricGoal.MINIMIZE)])
    reg.set_problem(problem)
    trials = [vz.TrialSuggestion({"x0": 0.5, "x1": -1.0})]
    from vizier_omnipred.text import TrialTextError

    with pytest.raises(TrialTextError, match="pass metric_name"):
        reg.model_inputs(trials)
    for name in ("loss", "latency"):
        expected = reg.vocab.encode_trial_texts(reg.codec.trial_texts(problem, trials, metric_name=name))
        for given in (None, problem):
            (got,) = reg.model_inputs(trials, given, metric_name=name)
            assert got.ids == expected[0].ids and got.study_start == expected[0].study_start
