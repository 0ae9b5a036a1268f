"""From trials to training examples, the loss, and fine-tuning on one study.

What becomes a training example (documented in the README, counted in `DataSummary`):
- a completed, feasible trial with a finite value of the metric -> its number tokens;
- an infeasible trial -> the `<INFEASIBLE>` sequence, so the model learns where the
  search space fails and the designer can steer away from it;
- a trial that is not completed, lacks the metric, or has NaN/inf -> left out of the
  loss (there is no number to learn from), never turned into a number;
- a value beyond the float tokenizer's range -> clipped to the range end (counted, warned).

The loss is token cross-entropy restricted to what the number grammar allows at each
position, the same masks that constrain sampling, so the model spends no capacity on
tokens that can never be emitted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence

import attrs
import numpy as np
import torch
from vizier import pyvizier as vz

from vizier_omnipred.level_map import LevelMap, fit_range_map, fit_rank_frame
from vizier_omnipred.numbers import OutOfRangeWarning
from vizier_omnipred.sampling import EncoderInputs, GrammarMasks
from vizier_omnipred.text import TextCodec
from vizier_omnipred.vocab import PAD_ID, Vocabulary

_log = logging.getLogger(__name__)


@attrs.frozen
class Example:
    """One (input, y) pair. `input_values` holds, per input token, the position of the numeric
    value it belongs to (nan elsewhere), or is None for pure-text input (see text.TrialText);
    `study_start`: where the study's text starts in `input_ids` when it is encoded apart
    (`vocab.EncodedTrial`)."""

    input_ids: tuple[int, ...]
    y_ids: tuple[int, ...]
    input_values: tuple[float, ...] | None = None
    study_start: int | None = None


@attrs.frozen
class DataSummary:
    """How the trials handed to training were used; nothing is dropped without a count."""

    num_trials: int = 0
    num_used: int = 0
    num_infeasible: int = 0  # used, as the infeasible token
    num_not_completed: int = 0  # excluded
    num_missing_metric: int = 0  # excluded
    num_nonfinite: int = 0  # excluded: NaN or +-inf
    num_clipped: int = 0  # used, clipped to the tokenizer's range

    def __add__(self, other: "DataSummary") -> "DataSummary":
        return DataSummary(*(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other))))

    @property
    def num_excluded(self) -> int:
        return self.num_not_completed + self.num_missing_metric + self.num_nonfinite


def usable_values(trials: Sequence[vz.Trial], metric_name: str) -> list[tuple[vz.Trial, float]]:
    """(trial, value) of the feasible completed trials with a finite value of `metric_name`:
    what a study's level map and range frame are fitted on."""
    usable = []
    for t in trials:
        m = t.final_measurement.metrics.get(metric_name) if (
            t.final_measurement is not None and not t.infeasible and t.status == vz.TrialStatus.COMPLETED) else None
        if m is not None and math.isfinite(float(m.value)):
            usable.append((t, float(m.value)))
    return usable


def trials_range_frame(trials: Sequence[vz.Trial], metric_name: str, previous: LevelMap | None = None, *,
                       ranks: bool = False) -> LevelMap:
    """The range frame (`level_map.fit_range_map`) of `metric_name` over the trials' usable values:
    one rule for the frame a fine-tune trains in and the one pretraining writes synthetic studies
    in, so that the two agree. `ranks`: the frame over their normal scores instead
    (`level_map.fit_rank_frame`; `previous` is not kept: ranks move with every trial)."""
    values = np.asarray([y for _, y in usable_values(trials, metric_name)], dtype=float)
    return fit_rank_frame(values) if ranks else fit_range_map(values, previous)


def trial_targets(
    vocab: Vocabulary, problem: vz.ProblemStatement, trials: Sequence[vz.Trial], metric_name: str,
    level_map: LevelMap | None = None,
) -> tuple[list[int], list[tuple[str, ...]], DataSummary]:
    """Indices of usable trials and their y tokens, with a summary of what was left out.

    With `level_map`, values are written in the model's frame (`LevelMap.invert`)."""
    ft = vocab.float_tokenizer
    keep: list[int] = []
    targets: list[tuple[str, ...]] = []
    counts = dict(num_infeasible=0, num_not_completed=0, num_missing_metric=0, num_nonfinite=0, num_clipped=0)
    for i, trial in enumerate(trials):
        if trial.infeasible:
            keep.append(i)
            targets.append(ft.encode_infeasible())
            counts["num_infeasible"] += 1
            continue
        measurement = trial.final_measurement
        if measurement is None or trial.status != vz.TrialStatus.COMPLETED:
            counts["num_not_completed"] += 1
            continue
        metric = measurement.metrics.get(metric_name)
        if metric is None:
            counts["num_missing_metric"] += 1
            continue
        value = float(metric.value)
        if not math.isfinite(value):
            counts["num_nonfinite"] += 1
            continue
        if level_map is not None:
            value = level_map.invert(value)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutOfRangeWarning)
            tokens = ft.encode(value)
        if any(issubclass(w.category, OutOfRangeWarning) for w in caught):
            counts["num_clipped"] += 1
        keep.append(i)
        targets.append(tokens)
    if counts["num_clipped"]:
        warnings.warn(
            f"{counts['num_clipped']} objective values were outside the float tokenizer's range "
            f"[{ft.min_positive_value:g}, {ft.max_value:g}] and were clipped to it",
            OutOfRangeWarning,
            stacklevel=2,
        )
    return keep, targets, DataSummary(num_trials=len(trials), num_used=len(keep), **counts)


def make_examples(
    vocab: Vocabulary,
    codec: TextCodec,
    problem: vz.ProblemStatement,
    trials: Sequence[vz.Trial],
    *,
    metric_name: str | None = None,
    level_map: LevelMap | None = None,
) -> tuple[list[Example], DataSummary]:
    metric = codec.objective_metric(problem, metric_name)
    keep, targets, summary = trial_targets(vocab, problem, trials, metric.name, level_map)
    texts = codec.trial_texts(problem, [trials[i] for i in keep], metric_name=metric.name)
    inputs = vocab.encode_trial_texts(texts)
    examples = [
        Example(tuple(x.ids), tuple(vocab.y_ids(y)), None if x.values is None else tuple(x.values), x.study_start)
        for x, y in zip(inputs, targets)
    ]
    return examples, summary


@attrs.frozen(eq=False)
class Batch:
    inputs: EncoderInputs
    labels: torch.Tensor  # (B, L) y ids

    @classmethod
    def collate(cls, examples: Sequence[Example], device: torch.device) -> "Batch":
        inputs = EncoderInputs.collate([e.input_ids for e in examples], device, [e.input_values for e in examples],
                                       [e.study_start for e in examples])
        labels = torch.as_tensor([e.y_ids for e in examples], dtype=torch.long, device=device)
        return cls(inputs, labels)


def y_loss(model, batch: Batch, masks: GrammarMasks, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the y tokens under the number grammar (teacher forcing).

    reduction: "mean" over examples, "none" one sum per example (B,), "tokens" one value per
    example and y position (B, L), to see which digits the loss is spent on.
    """
    if reduction not in ("mean", "none", "tokens"):
        raise ValueError(f"reduction must be 'mean', 'none' or 'tokens', got {reduction!r}")
    decoder_input_ids = torch.cat(
        [torch.full_like(batch.labels[:, :1], PAD_ID), batch.labels[:, :-1]], dim=1
    )
    logits = model(**batch.inputs.model_kwargs(), decoder_input_ids=decoder_input_ids, use_cache=False).logits.float()
    classes = masks.first_class[batch.labels[:, 0]]
    allowed = masks.rest[classes].clone()  # (B, L, V)
    allowed[:, 0] = masks.first
    logp = torch.log_softmax(logits + allowed, dim=-1)
    nll = -logp.gather(-1, batch.labels[..., None]).squeeze(-1)  # (B, L)
    if reduction == "tokens":
        return nll
    per_example = nll.sum(dim=1)
    if reduction == "none":
        return per_example
    return per_example.mean()


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """Learning-rate factor of a step: linear warm-up, then cosine decay to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class FitDivergedError(RuntimeError):
    """A fit whose loss or weights became nan or inf (a learning rate far too high).
    `finetune` puts back the weights the model had when the fit started before raising, so
    the model still samples finite values instead of failing later inside torch; the
    regressor's study frame is cleared, as at the start of any fit: refit it."""


# What a training step's forward pass computes in (`train_step`, `TrainStepper`).
PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def mixed_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's numerics: float32, or bfloat16 autocast.

    bfloat16 runs the matmuls (most of a step's time) in bfloat16 while the weights, the
    optimizer state, the norms, the attention softmax and the loss stay float32. Why: on a
    CPU with bfloat16 instructions (AVX512-BF16, AMX) a matmul of this model's shapes is
    about 2.5x faster; measured on `small` it trains as accurately per step
    (docs/BENCHMARKS.md, "bfloat16 training steps"). A CUDA device without bfloat16 is refused.
    """
    check_precision(precision)
    if precision == "float32":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bfloat16': {device} has no bfloat16 support; use 'float32'")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model, batch: Batch, optimizer: torch.optim.Optimizer, masks: GrammarMasks,
               params: Sequence[torch.nn.Parameter], grad_clip: float, precision: str = "float32") -> float:
    """One AdamW step on a batch (gradients clipped to `grad_clip`); returns the loss.

    Shared by fine-tuning, pretraining and the learning-curve benchmark, so that they
    measure and train exactly the same thing. `precision` is the forward pass's
    (`mixed_precision`); the backward pass follows it, the update is float32.
    """
    with mixed_precision(precision, batch.labels.device):
        loss = y_loss(model, batch, masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return loss.item()


@attrs.define(eq=False)
class TrainStepper:
    """`train_step` on a model, through `torch.compile` when asked and possible.

    This model is small enough that its matmuls are not the whole cost of a step: T5's RMS
    norms, gates, masks and casts are hundreds of small element-wise kernels, which the
    compiler fuses. On one CPU thread that is about 1.4x the examples/s of `small`
    (`bench speed`), after a one-off compile of 30-130 s (inductor caches it on disk for
    later processes), so it pays over a pretraining run, not a fine-tune of a few dozen
    steps. A compile that fails (no C++ compiler, an op the compiler does not handle)
    fails on the first step, in its forward or backward pass, before the optimizer has
    stepped: that step's gradients are dropped and it is redone eagerly, with one warning,
    and every later step is eager too. `precision` is `train_step`'s.
    """

    model: torch.nn.Module
    compile: bool = False
    precision: str = attrs.field(default="float32", validator=lambda _, __, v: check_precision(v))
    _compiled: torch.nn.Module | None = attrs.field(default=None, init=False)
    _tried: bool = attrs.field(default=False, init=False)  # a compiled step has succeeded

    def __attrs_post_init__(self) -> None:
        if self.compile:
            self._compiled = torch.compile(self.model, dynamic=True)

    @property
    def compiled(self) -> bool:
        """Whether steps run compiled (False after a failed compile)."""
        return self._compiled is not None

    def __call__(self, batch: "Batch", optimizer: torch.optim.Optimizer, masks: GrammarMasks,
                 params: Sequence[torch.nn.Parameter], grad_clip: float) -> float:
        if self._compiled is None:
            return train_step(self.model, batch, optimizer, masks, params, grad_clip, self.precision)
        if self._tried:
            return train_step(self._compiled, batch, optimizer, masks, params, grad_clip, self.precision)
        try:
            loss = train_step(self._compiled, batch, optimizer, masks, params, grad_clip, self.precision)
        except Exception as e:  # noqa: BLE001 - any compile failure; a real error recurs eagerly below
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "training continues without compiling", RuntimeWarning, stacklevel=2)
            self._compiled = None
            optimizer.zero_grad(set_to_none=True)
            return train_step(self.model, batch, optimizer, masks, params, grad_clip, self.precision)
        self._tried = True
        return loss


# Defaults when FinetuneConfig leaves them None (see FinetuneConfig and docs/BENCHMARKS.md).
SCRATCH_STEPS = 500
# The full recipe from a pretrained checkpoint: it starts from a prior over smooth functions and
# has only the study's shape and level to fit. On BBOB tasks (2-D and 4-D; Sphere, Ellipsoidal,
# Rastrigin, Rosenbrock) at 30 trials, 500 steps memorise the trials: 100 ranked held-out points
# better on 4 of the 5 tasks where both ran (Sphere 4-D 0.77 against 0.69) with sample intervals
# far closer to calibrated (calib@80 0.57 against 0.23), at a fifth of the cost; 200 sat between.
PRETRAINED_FULL_STEPS = 100
# ... at this fraction of the pretraining rate: on 8 BBOB tasks 0.3 of it (3e-4 for the shipped
# checkpoint) ranked better than the full rate (median Spearman 0.66 against 0.61, nMAE 0.090
# against 0.098, calib@80 0.73 against 0.57). With both, `bench scratch-fit` (30 trials) ranks
# better than the recipe before on all four families (HPOBench kc1: 0.61 -> 0.85, above a random
# forest's 0.83) and `bench regression --suite bbob` at 10 trials went from 1.67x to 1.18x the
# best classic regressor's nMAE (docs/BENCHMARKS.md, "A shorter fine-tune").
PRETRAINED_FULL_LR_FRACTION = 0.3
SCRATCH_DROPOUT = 0.1
PRETRAINED_EPOCHS = 30
PRETRAINED_MAX_STEPS = 100
# What an input of L tokens costs a training step, in the units of `FinetuneConfig.max_cost`: the
# embeddings and feed-forward layers grow with L, the attention scores (and their bias, mask,
# softmax and dropout, all L x L per head) with L^2. Fitted on `small`, one CPU thread: a 56-token
# 2-D BBOB trial costs 81 units, a 1,074-token trial of 40 parameters with long names 10,085, and a
# step of three of those took 1.5 s (about 20,000 units a second), 7x a 2-D trial's time per token.
ATTENTION_COST_LENGTH = 128


def input_cost(length: int) -> float:
    """Cost of one input of `length` tokens in a training step (see ATTENTION_COST_LENGTH)."""
    return length * (1.0 + length / ATTENTION_COST_LENGTH)


@attrs.frozen
class FinetuneConfig:
    """Fine-tuning recipe: a step budget, dropout or early stopping, from scratch or a checkpoint.

    learning_rate: None: the pretraining rate (the preset's from scratch), or
      `PRETRAINED_FULL_LR_FRACTION` of it in the full recipe from a pretrained checkpoint, and a
      tenth of it in the decoder-only recipe (decided by the regressor).

    Two recipes, chosen by `train_encoder`:

    * the full recipe (`train_encoder` None or True, the default, from scratch and from a
      checkpoint alike): every parameter trained, `SCRATCH_STEPS` steps at the preset's rate from
      scratch, `PRETRAINED_FULL_STEPS` at `PRETRAINED_FULL_LR_FRACTION` of the pretraining rate
      from a checkpoint, dropout `SCRATCH_DROPOUT`, no early stopping. From the shipped
      checkpoint it beats the same preset from scratch on new tasks (30 trials, held-out
      Spearman: smooth3 0.70 vs 0.39, BBOB Sphere 4-D 0.89 vs 0.52), where the decoder-only
      recipe could not even move the predicted level of a new study (smooth3 nMAE 2,343).
    * the decoder-only transfer recipe (`train_encoder=False`, OmniPred's): a tenth of the
      pretraining rate, `PRETRAINED_EPOCHS` passes and at most `PRETRAINED_MAX_STEPS`
      steps, early stopping, encoder and input embeddings frozen. For a study like those the
      checkpoint was pretrained on it keeps their ranking (HPOBench kc1, 30 trials: 0.89,
      where the full recipe drops to 0.68): use it for studies of a family the checkpoint
      has read (docs/BENCHMARKS.md).

    max_steps: the optimizer-step budget; None: the recipe's (an epoch count would give a
      150-trial study about 60 steps, far too few to learn anything from scratch).
    max_epochs: optional bound on passes over the study (None: the step budget decides).
    patience: validation evaluations without improvement before stopping.
    eval_every: steps between validation evaluations; None: a twentieth of the budget, so
      that with the default patience a fit stops after a quarter of its budget without
      improvement (a 30-example validation loss is noisy: stopping at its first bump ended
      fits from scratch after 30 of 500 steps).
    train_encoder: whether the encoder and the input embeddings are updated (None: True);
      False selects the decoder-only transfer recipe above.
    dropout: dropout rate in the T5 during the fit (the model's own rate is restored
      after); None: the recipe's. A 0.6M-parameter model memorises 150 trials within a few
      dozen steps (held-out Spearman 0.81 after 50 steps, 0.66 after 300 without dropout;
      0.87 after 300 with 0.1).
    early_stopping: whether a validation split is held out to stop early and restore the
      best state; None: the recipe's. Off in the full recipe, where dropout keeps the fit
      stable and the loss of 30 held-out trials did not track the ranking (it picked step
      50 of 500, Spearman 0.62, on a 150-trial study the full budget ranks at 0.85): those
      trials are worth more as training data.
    validation_fraction: share of the study's trials held out for early stopping; studies
      with fewer than `min_validation_trials / validation_fraction` trials train the whole
      budget on every trial instead (a 1-trial validation set only adds noise).

    level_map: whether a pretrained model's zero-shot medians are first mapped onto the
      study's values by a fitted, increasing `level_map.LevelMap`, the
      fine-tune then training in the model's frame; None: True in the decoder-only recipe
      of a pretrained model, False otherwise (from scratch the zero-shot output carries
      nothing to map; the full recipe moves every weight, and the map before it diverged
      on held-out HPOBench datasets). `max_steps=0` with it is the map alone: no gradient
      step, the model's ranking kept exactly.
    range_map: whether the study's targets are first mapped onto one decade of the float
      tokens by `level_map.fit_range_map` (its observed range onto [2, 8]), the fit training
      there and samples mapped back; None: True in the full recipe (from scratch and from a
      checkpoint) when it takes a gradient step, False otherwise. Every target then shares
      its sign and exponent tokens and its first digit is its place in the study's range:
      on BBOB from the shipped checkpoint, 30 trials, held-out Spearman 0.30-0.54 -> 0.59-0.70
      on Sphere (docs/BENCHMARKS.md). Exclusive with `level_map` (one frame per fit). A
      refit that continues from a fit in such a frame keeps it while the study's values stay
      inside it (`level_map.RANGE_FRAME_KEPT`). Prior studies are written in the frame of
      the metric of the same name, else as they are.
    rank_frame: the range frame's positions are the study's normal scores (its values' ranks
      through the Gaussian quantile function, `level_map.fit_rank_frame`) instead of their
      linear places in its range: the output warping of Vizier's GP bandit. Implies the range
      frame. Samples are mapped back through the same monotone map, so an acquisition's
      ordering is the model's; predicted values between two observed ones are interpolated
      between them. What a designer needs near an optimum (the best trials told apart), at the
      cost of the model not seeing how much better one trial is than another.

    max_cost: a bound on the fit's compute, whatever its inputs' lengths: the step budget is cut
      so that steps x (a batch's summed `input_cost`) stays within it (at least one step; each
      member of an ensemble has its own); None or math.inf: no bound. Without it a study of 40
      parameters with long names (1,074 tokens a trial) took 1.5 s a step where a 2-D study
      takes 0.03 s, and the designer's first fit of 500 steps on its 20 seed trials would have
      run for over an hour on a CPU. The designer bounds its fits (`designer.DESIGNER_FIT_COST`);
      a direct `fit` does not.
    seed: the order of the trials, the validation split and the dropout masks. A fit of the
      same weights on the same data with the same seed is bit-identical on CPU with the same
      number of threads (torch's global generator is left as it was), so two runs of a
      seeded designer make the same suggestions.
    precision: the training steps' forward pass (`mixed_precision`): "float32", or "bfloat16"
      autocast, faster on a CPU with bfloat16 instructions and to other weights.

    The rate follows `warmup_cosine`: warm-up over a tenth of the budget (at most 40
    steps), then cosine decay to a tenth.
    """

    learning_rate: float | None = None
    max_steps: int | None = None
    max_epochs: int | None = None
    patience: int = 5
    eval_every: int | None = None
    train_encoder: bool | None = None
    dropout: float | None = None
    early_stopping: bool | None = None
    level_map: bool | None = None
    range_map: bool | None = None
    rank_frame: bool = False
    batch_size: int = 64
    validation_fraction: float = 0.2
    min_validation_trials: int = 3
    early_stopping_digits: int = 2  # mantissa digits early stopping watches (`leading_positions`)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    max_cost: float | None = None
    precision: str = "float32"

    def __attrs_post_init__(self):
        check_precision(self.precision)
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError("max_epochs must be >= 1 or None")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be >= 0 or None (0: no gradient steps, the level map alone)")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError("eval_every must be >= 1 or None")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1)")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.max_cost is not None and not (self.max_cost > 0):  # NaN is refused too
            raise ValueError(f"max_cost must be > 0 (math.inf: unbounded) or None, got {self.max_cost}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1) or None")
        if self.level_map and self.range_map:
            raise ValueError("level_map and range_map are exclusive: a fit trains in one frame")
        if self.range_map and self.max_steps == 0:
            raise ValueError("range_map needs gradient steps (max_steps > 0): the model's samples are not in that frame")
        if self.rank_frame and (self.range_map is False or self.level_map or self.max_steps == 0):
            raise ValueError("rank_frame is a range frame: it needs range_map (True or None), no level_map, "
                             "and gradient steps (max_steps > 0)")

    def is_full_recipe(self, *, pretrained: bool) -> bool:
        """Whether a fit of a model (pretrained or not) with this config is the full recipe:
        every parameter trained (a model from scratch has no other recipe)."""
        return self.train_encoder is not False or not pretrained

    def resolved(self, *, pretrained: bool, num_train: int) -> "FinetuneConfig":
        """This config with every None decided for a model and a study (see the class doc)."""
        encoder = True if self.train_encoder is None else self.train_encoder
        steps, dropout, stopping = self.max_steps, self.dropout, self.early_stopping
        if self.is_full_recipe(pretrained=pretrained):
            steps = (PRETRAINED_FULL_STEPS if pretrained else SCRATCH_STEPS) if steps is None else steps
            dropout = SCRATCH_DROPOUT if dropout is None else dropout
            stopping = False if stopping is None else stopping
        else:  # decoder-only transfer recipe
            per_epoch = max(1, math.ceil(num_train / self.batch_size))
            steps = min(PRETRAINED_MAX_STEPS, PRETRAINED_EPOCHS * per_epoch) if steps is None else steps
            stopping = True if stopping is None else stopping
        return attrs.evolve(self, max_steps=steps, train_encoder=encoder, dropout=dropout, early_stopping=stopping,
                            level_map=self.uses_level_map(pretrained=pretrained),
                            range_map=self.uses_range_map(pretrained=pretrained))

    def uses_range_map(self, *, pretrained: bool) -> bool:
        """`range_map`, decided: by default in the full recipe, unless it takes no step or the
        fit trains in the level map's frame."""
        if self.range_map is not None:
            return self.range_map
        if self.rank_frame:
            return True
        return (self.is_full_recipe(pretrained=pretrained) and self.max_steps != 0
                and not self.uses_level_map(pretrained=pretrained))

    def uses_level_map(self, *, pretrained: bool) -> bool:
        """`level_map`, decided: by default only where the encoder stays as pretrained. The
        full recipe moves every weight (it re-learns the level anyway), and on held-out
        HPOBench datasets the map followed by it diverged (australian, 30 trials: nMAE 3,001;
        without the map 0.15)."""
        if self.level_map is not None:
            return self.level_map
        return pretrained and self.train_encoder is False and not self.rank_frame


@attrs.frozen
class FitReport:
    data: DataSummary
    num_train_examples: int
    num_validation_examples: int
    num_prior_examples: int
    epochs: int
    best_epoch: int
    train_loss: float
    validation_loss: float | None
    learning_rate: float
    seconds: float
    steps: int = 0  # optimizer steps taken
    batch_size: int = 0
    trained_encoder: bool = True
    best_step: int = 0  # the step whose state was kept (early stopping)
    # Ensemble members fitted alike (`OmniPredRegressor(ensemble_size=K)`): the report is the
    # first member's (steps, epochs, losses), `seconds` the time of all of them.
    members: int = 1

    @property
    def examples_per_second(self) -> float:
        seen = min(self.steps * self.batch_size, self.epochs * (self.num_train_examples + self.num_prior_examples))
        return self.members * seen / max(self.seconds, 1e-9)


# Named fit recipes, for the places that pick one by name (CLI flags, benchmark options).
# "full": every parameter trained, SCRATCH_STEPS steps at the preset's rate from scratch,
#   PRETRAINED_FULL_STEPS at PRETRAINED_FULL_LR_FRACTION of the pretraining rate from a checkpoint
#   (on a study unlike what it read); "transfer": the level map, then the decoder-only
#   fine-tune (a checkpoint pretrained on the study's family, e.g. warm-started from the user's
#   history); "level": the level map alone, the model's ranking kept exactly;
#   "full-raw": the full recipe on the study's raw values, without the range frame (the ablation);
#   "full-rank": the full recipe in the rank frame (`FinetuneConfig.rank_frame`).
RECIPES: dict[str, FinetuneConfig] = {
    "full": FinetuneConfig(train_encoder=True),
    "full-raw": FinetuneConfig(train_encoder=True, range_map=False),
    "full-rank": FinetuneConfig(train_encoder=True, rank_frame=True),
    "transfer": FinetuneConfig(train_encoder=False, level_map=True),
    "level": FinetuneConfig(max_steps=0, level_map=True),
}


def recipe(name: str) -> FinetuneConfig:
    """`RECIPES[name]`, with a clear error for an unknown name."""
    if name not in RECIPES:
        raise ValueError(f"unknown fit recipe {name!r}; one of {sorted(RECIPES)}")
    return RECIPES[name]


def split_validation(n: int, config: FinetuneConfig) -> tuple[list[int], list[int]]:
    """Deterministic (train, validation) index split of a study's examples (no validation
    examples when `config.early_stopping` is False)."""
    if config.early_stopping is False:
        return list(range(n)), []
    num_val = int(round(n * config.validation_fraction))
    if num_val < config.min_validation_trials or n - num_val < 1:
        return list(range(n)), []
    order = list(range(n))
    random.Random(config.seed).shuffle(order)
    return sorted(order[num_val:]), sorted(order[:num_val])


@torch.no_grad()
def _eval_losses(model, examples: Sequence[Example], masks: GrammarMasks, device, batch_size: int, reduction: str):
    """`y_loss` of each batch of `examples`, in eval mode; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(examples), batch_size):
            yield y_loss(model, Batch.collate(examples[i : i + batch_size], device), masks, reduction=reduction)
    finally:
        model.train(was_training)


def evaluate_loss(model, examples: Sequence[Example], masks: GrammarMasks, device, batch_size: int = 256,
                  positions: Sequence[int] | None = None) -> float:
    """Mean y-token NLL per example; with `positions`, summed over those y positions only."""
    if positions is None:
        total = sum(float(t.sum()) for t in _eval_losses(model, examples, masks, device, batch_size, "none"))
    else:
        index = list(positions)
        total = sum(float(t[:, index].sum()) for t in _eval_losses(model, examples, masks, device, batch_size,
                                                                   "tokens"))
    return total / max(len(examples), 1)


def leading_positions(float_tokenizer, digits: int) -> tuple[int, ...]:
    """y positions of the sign, the first `digits` mantissa digits and the exponent.

    Early stopping watches these: the trailing digits of a small study's values are noise
    that a model memorises long before it has learned the leading ones, so a loss over
    all digits turned up after 30 of 500 steps of a fit from scratch on 150 trials while
    the ranking was still improving.
    """
    length = float_tokenizer.length
    return (0, *range(1, 1 + min(digits, float_tokenizer.num_digits)), length - 1)


def model_token_nll(model, examples: Sequence[Example], masks: GrammarMasks, device,
                    batch_size: int = 128) -> np.ndarray:
    """The model's NLL (nats) of each example's y tokens, per position: shape (N, L)."""
    parts = [t.cpu().numpy() for t in _eval_losses(model, examples, masks, device, batch_size, "tokens")]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


@contextlib.contextmanager
def dropout_rate(model, rate: float | None):
    """Sets every dropout of the model to `rate` inside the block (None: unchanged): the
    dropout layers, and T5's attention-weight dropout, a float attribute of its attention."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)] if rate is not None else []
    attention = [m for m in model.modules() if isinstance(getattr(m, "dropout", None), float)] \
        if rate is not None else []
    saved = [m.p for m in layers], [m.dropout for m in attention]
    for m in layers:
        m.p = rate
    for m in attention:
        m.dropout = rate
    try:
        yield
    finally:
        for m, p in zip(layers, saved[0]):
            m.p = p
        for m, p in zip(attention, saved[1]):
            m.dropout = p


@contextlib.contextmanager
def encoder_frozen(model):
    """Freezes the encoder and its inputs' embeddings inside the block, then restores them.

    T5 ties the token embeddings (and, in our presets, the output layer) to `shared`, so
    freezing the encoder's input side means freezing `shared` too, and the number
    embedding with it. Parameters that were already frozen stay frozen afterwards.
    """
    params = list(model.get_encoder().parameters()) + list(model.get_input_embeddings().parameters())
    if getattr(model, "number_embedding", None) is not None:
        params += list(model.number_embedding.parameters())
    frozen = list({id(p): p for p in params if p.requires_grad}.values())
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


@contextlib.contextmanager
def seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's generators (CPU, and `device`'s if it is a GPU) seeded with `seed` inside the
    block and restored after: dropout draws from the global generator, and an unseeded fit
    made every run of a seeded designer different (same data, same seed, other picks)."""
    devices = []
    if device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def finetune(
    model: torch.nn.Module,
    train: Sequence[Example],
    validation: Sequence[Example],
    *,
    config: FinetuneConfig,
    learning_rate: float,
    masks: GrammarMasks,
    device: torch.device,
    data: DataSummary,
    num_prior_examples: int = 0,
    validation_positions: Sequence[int] | None = None,
) -> FitReport:
    """AdamW over `train` for `config.max_steps` steps; early stopping restores the best state.

    Early stopping watches the validation NLL of `validation_positions` (all y positions
    when None; the regressor passes `leading_positions`).

    `config.max_steps` and `config.train_encoder` must be decided by the caller
    (`FinetuneConfig.resolved`); with train_encoder False the encoder and the input
    embeddings are frozen for this call only. The best state kept for early stopping holds
    only the parameters being trained: the rest cannot change.
    """
    if not train:
        raise ValueError("no training examples")
    if config.train_encoder is None or config.max_steps is None:
        raise ValueError("finetune: config.max_steps and config.train_encoder must be decided "
                         "(FinetuneConfig.resolved)")
    budget = config.max_steps
    per_epoch = max(1, math.ceil(len(train) / config.batch_size))
    if config.max_epochs is not None:
        budget = min(budget, config.max_epochs * per_epoch)
    if config.max_cost is not None and math.isfinite(config.max_cost) and budget > 0:
        lengths = [len(e.input_ids) if e.study_start is None else e.study_start for e in train]
        step_cost = min(config.batch_size, len(train)) * float(np.mean([input_cost(n) for n in lengths]))
        if train[0].study_start is not None:  # each distinct study text is encoded once a step
            studies = {e.input_ids[e.study_start:] for e in train}
            step_cost += min(config.batch_size, len(studies)) * float(np.mean([input_cost(len(s)) for s in studies]))
        affordable = max(1, int(config.max_cost // step_cost))
        if affordable < budget:
            _log.info("fit: %d of %d steps within max_cost %.3g (inputs of %.0f tokens on average)", affordable,
                      budget, config.max_cost, np.mean(lengths))
            budget = affordable
    eval_every = config.eval_every or max(1, budget // 20)
    with contextlib.nullcontext() if config.train_encoder else encoder_frozen(model), \
            dropout_rate(model, config.dropout), seeded_torch(config.seed, device):
        started = time.perf_counter()
        rng = random.Random(config.seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(max(1, min(40, budget // 10)), budget, 0.1))

        def snapshot() -> list[torch.Tensor]:
            return [p.detach().clone() for p in trainable]

        initial = snapshot()

        def diverged(what: str) -> FitDivergedError:
            with torch.no_grad():
                for p, saved in zip(trainable, initial):
                    p.copy_(saved)
            model.eval()
            return FitDivergedError(
                f"the fit diverged ({what}) at learning rate {learning_rate:g}; the model's weights are back to "
                "what they were before this fit. Lower the learning rate (FinetuneConfig.learning_rate).")

        best_loss = (evaluate_loss(model, validation, masks, device, positions=validation_positions)
                     if validation else math.inf)
        best_state = snapshot() if validation else None
        best_step, bad_evals, steps = 0, 0, 0
        order: list[Example] = []
        recent: list[float] = []
        model.train()
        while steps < budget:
            if len(order) < config.batch_size:  # a new epoch: the rest of the old one goes first
                fresh = list(train)
                rng.shuffle(fresh)
                order = order + fresh
            batch, order = order[: config.batch_size], order[config.batch_size:]
            loss = train_step(model, Batch.collate(batch, device), optimizer, masks, trainable, config.grad_clip,
                              config.precision)
            if not math.isfinite(loss):
                raise diverged(f"loss {loss} at step {steps + 1} of {budget}")
            recent.append(loss)
            recent = recent[-per_epoch:]
            scheduler.step()
            steps += 1
            if not validation:
                best_step = steps
            elif steps % eval_every == 0 or steps == budget:
                val_loss = evaluate_loss(model, validation, masks, device, positions=validation_positions)
                if val_loss < best_loss - 1e-4:
                    best_loss, best_step, bad_evals = val_loss, steps, 0
                    best_state = snapshot()
                else:
                    bad_evals += 1
                    if bad_evals >= config.patience:
                        break
        if best_state is not None:
            with torch.no_grad():
                for p, saved in zip(trainable, best_state):
                    p.copy_(saved)
        if not all(bool(torch.isfinite(p).all()) for p in trainable):
            raise diverged(f"nan or inf weights after step {steps}")
        model.eval()
        return FitReport(
            data=data,
            num_train_examples=len(train) - num_prior_examples,
            num_validation_examples=len(validation),
            num_prior_examples=num_prior_examples,
            epochs=math.ceil(steps / per_epoch),
            best_epoch=math.ceil(best_step / per_epoch),
            train_loss=float(np.mean(recent)) if recent else math.nan,
            validation_loss=best_loss if validation else None,
            learning_rate=learning_rate,
            seconds=time.perf_counter() - started,
            steps=steps,
            batch_size=config.batch_size,
            trained_encoder=bool(config.train_encoder),
            best_step=best_step,
        )
