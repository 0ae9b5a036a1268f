"""`bench token-loss`: the x-blind marginal it compares against, and the end-to-end command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vizier_omnipred.bench import token_loss
from vizier_omnipred.numbers import FloatTokenizer

from conftest import make_problem_2d, make_trials

FT = FloatTokenizer()


def test_marginal_of_uniform_digits_costs_log_10_each_and_nothing_for_a_determined_exponent():
    ys = np.random.default_rng(0).uniform(0.5, 1.5, 4000)  # exponent E-4 below 1, E-3 above: set by d1
    seqs = [FT.encode(float(y)) for y in ys]
    nll = token_loss.marginal_token_nll(seqs[:3000], seqs[3000:], FT).mean(axis=0)
    sign, d1, d2, d3, d4, exp = nll
    assert sign < 0.01 and exp < 0.01
    assert d3 == pytest.approx(math.log(10), abs=0.03) and d4 == pytest.approx(math.log(10), abs=0.03)
    # d2 after a 1 is one of 0..4 (1.0-1.5), after 5..9 any digit: the marginal learns the dependence
    assert d2 == pytest.approx(0.5 * math.log(5) + 0.5 * math.log(10), abs=0.03)
    # d1 is 1 with probability 1/2 (1.0-1.5), else one of 5..9 (0.5-1.0): entropy ln 2 / 2 + ln 10 / 2
    assert d1 == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(10), abs=0.03)


def test_marginal_falls_back_to_the_grammar_for_unseen_values():
    nll = token_loss.marginal_token_nll([FT.encode(0.75)] * 50, [FT.encode(-3.0)], FT)[0]
    assert np.all(np.isfinite(nll)) and nll[0] > 1.0  # a sign it never saw: costly, not infinite
    with pytest.raises(ValueError, match="at least one"):
        token_loss.marginal_token_nll([], [FT.encode(1.0)], FT)


def test_model_nll_per_token_adds_up_to_the_training_loss(tiny_regressor_factory):
    from vizier_omnipred.sampling import GrammarMasks
    from vizier_omnipred.training import Batch, make_examples, y_loss

    reg = tiny_regressor_factory(seed=1)
    problem = make_problem_2d()
    examples, _ = make_examples(reg.vocab, reg.codec, problem, make_trials([(0.1 * i, -0.2 * i) for i in range(7)]))
    masks = GrammarMasks.build(reg.vocab, torch.device("cpu"))
    per_token = token_loss.model_token_nll(reg.checkpoint.model, examples, masks, torch.device("cpu"), batch_size=3)
    assert per_token.shape == (7, FT.length)
    per_example = y_loss(reg.checkpoint.model, Batch.collate(examples, torch.device("cpu")), masks, reduction="none")
    np.testing.assert_allclose(per_token.sum(axis=1), per_example.detach().numpy(), rtol=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        y_loss(reg.checkpoint.model, Batch.collate(examples, torch.device("cpu")), masks, reduction="sum")


def test_token_loss_command_scores_studies_and_skips_thin_ones(tmp_path, tiny_regressor_factory, capsys):
    from vizier_omnipred.cli import main
    from vizier_omnipred.corpus.format import StudyRecord, write_corpus

    ckpt = tiny_regressor_factory(seed=2).save(tmp_path / "ckpt")
    problem = make_problem_2d()
    rng = np.random.default_rng(0)
    constant = make_trials(rng.uniform(-3, 3, size=(40, 2)), fn=lambda a, b: 0.75)
    thin = make_trials(rng.uniform(-3, 3, size=(10, 2)))
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, [StudyRecord("constant", problem, constant), StudyRecord("thin", problem, thin)])

    assert main(["bench", "token-loss", "--checkpoint", str(ckpt), "--corpus", str(corpus), "--num-scored", "10",
                 "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "token_loss.json").read_text())
    assert [s["study"] for s in result["studies"]] == ["constant"]  # 10 trials < 2 x 10: skipped
    row = result["studies"][0]
    # y is always 0.75: the marginal has it exactly, an untrained model does not
    assert row["marginal_total"] < 0.5 < row["model_total"] and row["gain"] < 0
    assert "| constant |" in capsys.readouterr().out

    assert main(["bench", "token-loss", "--checkpoint", str(ckpt)]) == 2
    assert main(["bench", "token-loss", "--checkpoint", str(tmp_path / "nope"), "--corpus", str(corpus)]) == 2
    assert main(["bench", "token-loss", "--checkpoint", str(ckpt), "--corpus", str(corpus), "--num-scored", "50",
                 "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "--corpus" in err and "does not exist" in err and "lower --num-scored" in err
