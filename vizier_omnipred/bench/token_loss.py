"""Has a checkpoint learned how y depends on x, or only each study's spread of y?

A model that reads a study's text but ignores its parameters can still reach a fair
y-token loss: it learns each study's distribution of y (the "marginal") from the study's
description. Ranking new trials needs more: the loss must drop *below* that marginal.
This diagnostic puts the two side by side, per study and per y position (sign, each
mantissa digit, exponent), on trials the checkpoint is scored on:

* model: the checkpoint's cross-entropy of the y tokens (teacher forcing, number grammar).
* marginal: an x-blind model fitted on the study's *other* trials: for each position,
  token counts conditioned on the tokens before it, smoothed towards shorter contexts and
  finally towards the tokens the grammar allows there (`marginal_token_nll`). It knows
  the study's marginal better than any zero-shot model can (it has seen the study's
  other values), so on a held-out study the model may lose to it; on the studies the
  checkpoint was trained on, a model that has learned the x -> y map must beat it,
  above all on the leading digit.

Later mantissa digits are close to uniform (log 10 = 2.30 nats) for most objectives;
they are where most of the loss sits, and where neither model can do much.
"""

from __future__ import annotations

import collections
import math
import random
from typing import Any, Iterable, Sequence

import attrs
import numpy as np
import torch

from vizier_omnipred.model import resolve_device
from vizier_omnipred.numbers import FloatTokenizer
from vizier_omnipred.sampling import GrammarMasks
from vizier_omnipred.training import make_examples, model_token_nll

__all__ = ["StudyTokenLoss", "marginal_token_nll", "model_token_nll", "compare_token_loss", "format_table"]


class _LeadingContextCounts:
    """Counts of the token at each position after each leading context t_<k of the sequence."""

    def __init__(self, sequences: Sequence[Sequence[str]], length: int):
        # counts[p][k][t_<k] = Counter of t_p, for k = min(1, p) .. p: the leading sign or
        # `<INFEASIBLE>` is always kept, so the grammar's branch is respected.
        self.counts = [[collections.defaultdict(collections.Counter) for _ in range(p + 1)] for p in range(length)]
        for seq in sequences:
            for p in range(length):
                for k in range(min(1, p), p + 1):
                    self.counts[p][k][tuple(seq[:k])][seq[p]] += 1

    def nll(self, seq: Sequence[str], p: int, max_context: int, ft: FloatTokenizer) -> float:
        """Witten-Bell interpolation from a uniform choice among the grammar's tokens up to
        the leading context of `max_context` tokens."""
        prob = 1.0 / len(ft.allowed_next(tuple(seq[:p])))
        for k in range(min(1, p), max_context + 1):
            c = self.counts[p][k].get(tuple(seq[:k]))
            if c:
                total, distinct = sum(c.values()), len(c)
                prob = (c[seq[p]] + distinct * prob) / (total + distinct)
        return -math.log(prob)


def marginal_token_nll(train: Sequence[Sequence[str]], test: Sequence[Sequence[str]], ft: FloatTokenizer,
                       *, seed: int = 0) -> np.ndarray:
    """Held-out NLL (nats) of each test sequence at each position under the x-blind count model.

    P(t_p | t_<p) interpolates (Witten-Bell) the counts after leading contexts t_<1 .. t_<k
    down to a uniform choice among the tokens the grammar allows. Leading tokens are kept
    rather than recent ones because they carry the value: the exponent of 0.95 (9500E-4) and
    of 1.0 (1000E-3) is decided by the first digit, not the fourth. How long a context each
    position uses (k) is chosen on a fifth of `train` held out from the counts, then the
    counts are refitted on all of `train`: long contexts are sparse and make noise digits
    look worse than uniform, short ones miss real structure (e.g. accuracies on a finite
    test set take few values).
    """
    if not train:
        raise ValueError("the marginal model needs at least one training sequence")
    length = ft.length
    order = np.random.default_rng(seed).permutation(len(train))
    cut = max(1, len(train) // 5) if len(train) >= 2 else 0
    fit = _LeadingContextCounts([train[i] for i in order[cut:]], length)
    tune = [train[i] for i in order[:cut]]
    contexts = []
    for p in range(length):
        choices = range(min(1, p), p + 1)
        contexts.append(min(choices, key=lambda k: sum(fit.nll(seq, p, k, ft) for seq in tune)) if tune else p)
    full = _LeadingContextCounts(train, length)
    return np.array([[full.nll(seq, p, contexts[p], ft) for p in range(length)] for seq in test]).reshape(
        len(test), length)


@attrs.frozen
class StudyTokenLoss:
    study: str
    num_scored: int
    model: tuple[float, ...]  # mean NLL per y position
    marginal: tuple[float, ...]

    @property
    def gain(self) -> float:
        """Nats per trial by which the model beats the x-blind marginal (negative: it loses)."""
        return float(sum(self.marginal) - sum(self.model))

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "model_total": float(sum(self.model)),
                "marginal_total": float(sum(self.marginal)), "gain": self.gain}


def compare_token_loss(checkpoint, studies: Iterable[Any], *, num_scored: int = 300, seed: int = 0,
                       device: str | torch.device = "cpu") -> list[StudyTokenLoss]:
    """Scores `num_scored` random trials of each study; the marginal is fitted on the rest.

    `checkpoint` is a loaded `model.Checkpoint`; `studies` are corpus `StudyRecord`s. Studies
    with fewer than 2 * num_scored usable trials are skipped (the marginal would be too thin).
    """
    device = resolve_device(device)
    model = checkpoint.model.to(device)
    vocab = checkpoint.vocab
    ft = vocab.float_tokenizer
    masks = GrammarMasks.build(vocab, device)
    rng = random.Random(seed)
    rows = []
    for record in studies:
        examples, _ = make_examples(vocab, checkpoint.codec, record.problem, list(record.trials))
        if len(examples) < 2 * num_scored:
            continue
        order = list(range(len(examples)))
        rng.shuffle(order)
        scored, rest = order[:num_scored], order[num_scored:]
        tokens = [tuple(ft.tokens[i - vocab.y_offset] for i in e.y_ids) for e in examples]
        marginal = marginal_token_nll([tokens[i] for i in rest], [tokens[i] for i in scored], ft, seed=seed)
        nll = model_token_nll(model, [examples[i] for i in scored], masks, device)
        rows.append(StudyTokenLoss(record.name, num_scored, tuple(map(float, nll.mean(0))),
                                   tuple(map(float, marginal.mean(0)))))
    return rows


def format_table(rows: Sequence[StudyTokenLoss], ft: FloatTokenizer) -> str:
    names = ["sign"] + [f"d{i + 1}" for i in range(ft.num_digits)] + ["exp"]
    head = "| study | model | marginal | gain | " + " | ".join(f"{n} model/marg." for n in names) + " |"
    lines = [head, "|" + "---|" * (4 + len(names))]
    for r in rows:
        cells = " | ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r.model, r.marginal))
        lines.append(f"| {r.study} | {sum(r.model):.2f} | {sum(r.marginal):.2f} | {r.gain:+.2f} | {cells} |")
    return "\n".join(lines)
