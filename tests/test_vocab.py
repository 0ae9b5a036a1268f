"""Tests for vizier_omnipred.vocab: token ids and the number position of each token."""

from __future__ import annotations

import math
import random

from vizier import pyvizier as vz

from vizier_omnipred.numbers import FloatTokenizer
from vizier_omnipred.text import TextCodec
from vizier_omnipred.vocab import EOS_ID, Vocabulary, train_input_tokenizer


def _problem() -> vz.ProblemStatement:
    problem = vz.ProblemStatement()
    root = problem.search_space.root
    root.add_float_param("lr", 1e-6, 1.0, scale_type=vz.ScaleType.LOG)
    root.add_float_param("x", -5.0, 5.0)
    root.add_int_param("units", 1, 4096)
    root.add_categorical_param("act", ["relu", "tanh, with comma", "ünï 1.5"])
    problem.metric_information.append(vz.MetricInformation("loss", goal=vz.ObjectiveMetricGoal.MINIMIZE))
    problem.metadata["dataset"] = "cifar10 v1.2"
    return problem


def _trials(problem, n, seed=0):
    rng = random.Random(seed)
    acts = problem.search_space.get("act").feasible_values
    return [vz.Trial({"lr": 10 ** rng.uniform(-6, 0), "x": rng.uniform(-5, 5), "units": rng.randint(1, 4096),
                      "act": rng.choice(acts)}) for _ in range(n)]


def test_each_token_of_a_number_carries_its_position_and_no_other_token_does():
    problem, codec = _problem(), TextCodec()
    texts = codec.trial_texts(problem, _trials(problem, 200))
    vocab = Vocabulary(train_input_tokenizer([t.text for t in texts], 400), FloatTokenizer())
    encoded = vocab.encode_trial_texts(texts)
    assert [x.ids for x in encoded] == vocab.encode_inputs([t.text for t in texts])
    for tt, x in zip(texts, encoded):
        ids, values = x.ids, x.values
        assert ids[-1] == EOS_ID and math.isnan(values[-1]) and len(values) == len(ids)
        offsets = vocab.input_tokenizer.encode(tt.text, add_special_tokens=False).offsets
        covered = set()
        for (a, b), value in zip(offsets, values):
            inside = [k for k, (s, e, _) in enumerate(tt.numbers) if a < e and b > s]
            if inside:
                assert len(inside) == 1 and value == tt.numbers[inside[0]][2]
                covered.add(inside[0])
            else:
                assert math.isnan(value)  # names, punctuation, categorical text
        assert covered == set(range(len(tt.numbers)))  # no number is lost


def test_pure_text_inputs_have_no_values():
    problem, codec = _problem(), TextCodec(number_features="none")
    texts = codec.trial_texts(problem, _trials(problem, 5))
    vocab = Vocabulary(train_input_tokenizer([t.text for t in texts], 300), FloatTokenizer())
    assert all(x.values is None for x in vocab.encode_trial_texts(texts))
