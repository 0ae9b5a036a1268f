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
import math
import random
import time
import warnings
from collections.abc import Sequence

import attrs
import numpy as np
import torch
from vizier import pyvizier as vz

from vizier_omnipred.numbers import OutOfRangeWarning
from vizier_omnipred.sampling import GrammarMasks, pad_batch
from vizier_omnipred.text import TextCodec
from vizier_omnipred.vocab import PAD_ID, Vocabulary


@attrs.frozen
class Example:
    input_ids: tuple[int, ...]
    y_ids: tuple[int, ...]


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


def trial_targets(
    vocab: Vocabulary, problem: vz.ProblemStatement, trials: Sequence[vz.Trial], metric_name: str
) -> tuple[list[int], list[tuple[str, ...]], DataSummary]:
    """Indices of usable trials and their y tokens, with a summary of what was left out."""
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
) -> tuple[list[Example], DataSummary]:
    metric = codec.objective_metric(problem, metric_name)
    keep, targets, summary = trial_targets(vocab, problem, trials, metric.name)
    texts = codec.serialize_many(problem, [trials[i] for i in keep], metric_name=metric.name)
    input_ids = vocab.encode_inputs(texts)
    examples = [Example(tuple(x), tuple(vocab.y_ids(y))) for x, y in zip(input_ids, targets)]
    return examples, summary


@attrs.frozen(eq=False)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # (B, L) y ids

    @classmethod
    def collate(cls, examples: Sequence[Example], device: torch.device) -> "Batch":
        ids, mask = pad_batch([list(e.input_ids) for e in examples], device)
        labels = torch.as_tensor([e.y_ids for e in examples], dtype=torch.long, device=device)
        return cls(ids, mask, labels)


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
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        decoder_input_ids=decoder_input_ids,
        use_cache=False,
    ).logits.float()
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


@attrs.frozen
class FinetuneConfig:
    """Fine-tuning recipe (OmniPred's: lower rate, early stopping, best state restored).

    learning_rate: None means a tenth of the checkpoint's pretraining rate, or the
      preset's full rate for a model trained from scratch (decided by the regressor).
    max_epochs: upper bound on passes over the study (OmniPred: 30).
    max_steps: upper bound on optimizer steps (None: no bound), so a refit's cost stops
      growing with the study's size; epochs end early when it is reached.
    patience: epochs without a validation improvement before stopping.
    train_encoder: whether the encoder and the token embeddings are updated. None lets the
      regressor decide: False for a pretrained checkpoint, True for a model from scratch.
      A pretrained encoder's reading of the input is what ranks trials of an unseen study;
      updating it on 10-30 trials overfits that ranking away, while a decoder-only
      fine-tune moves the predicted level and keeps the order (see docs/BENCHMARKS.md).
      It also skips the encoder's backward pass.
    validation_fraction: share of the study's trials held out for early stopping; studies
      with fewer than `min_validation_trials / validation_fraction` trials train all
      `max_epochs` on every trial instead (a 1-trial validation set only adds noise).
    """

    learning_rate: float | None = None
    max_epochs: int = 30
    max_steps: int | None = None
    patience: int = 3
    train_encoder: bool | None = None
    batch_size: int = 64
    validation_fraction: float = 0.2
    min_validation_trials: int = 3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0

    def __attrs_post_init__(self):
        if self.max_epochs < 1:
            raise ValueError("max_epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 or None")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1)")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


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

    @property
    def examples_per_second(self) -> float:
        seen = min(self.steps * self.batch_size, self.epochs * (self.num_train_examples + self.num_prior_examples))
        return seen / max(self.seconds, 1e-9)


def split_validation(n: int, config: FinetuneConfig) -> tuple[list[int], list[int]]:
    """Deterministic (train, validation) index split of a study's examples."""
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


def evaluate_loss(model, examples: Sequence[Example], masks: GrammarMasks, device, batch_size: int = 256) -> float:
    total = sum(float(t.sum()) for t in _eval_losses(model, examples, masks, device, batch_size, "none"))
    return total / max(len(examples), 1)


def model_token_nll(model, examples: Sequence[Example], masks: GrammarMasks, device,
                    batch_size: int = 128) -> np.ndarray:
    """The model's NLL (nats) of each example's y tokens, per position: shape (N, L)."""
    parts = [t.cpu().numpy() for t in _eval_losses(model, examples, masks, device, batch_size, "tokens")]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


@contextlib.contextmanager
def encoder_frozen(model):
    """Freezes the encoder and the token embeddings inside the block, then restores them.

    T5 ties the token embeddings (and, in our presets, the output layer) to `shared`, so
    freezing the encoder's input side means freezing `shared` too. Parameters that were
    already frozen stay frozen afterwards.
    """
    params = list(model.get_encoder().parameters()) + list(model.get_input_embeddings().parameters())
    frozen = list({id(p): p for p in params if p.requires_grad}.values())
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


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
) -> FitReport:
    """AdamW over `train` for up to `max_epochs`; early stopping restores the best state.

    `config.train_encoder` must be decided (True/False) by the caller; with False the
    encoder and the shared embeddings are frozen for this call only. The best state kept
    for early stopping holds only the parameters being trained: the rest cannot change.
    """
    if not train:
        raise ValueError("no training examples")
    if config.train_encoder is None:
        raise ValueError("finetune: config.train_encoder must be True or False (the regressor decides None)")
    with contextlib.nullcontext() if config.train_encoder else encoder_frozen(model):
        started = time.perf_counter()
        rng = random.Random(config.seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=config.weight_decay)

        def snapshot() -> list[torch.Tensor]:
            return [p.detach().clone() for p in trainable]

        best_loss = evaluate_loss(model, validation, masks, device) if validation else math.inf
        best_state = snapshot() if validation else None
        best_epoch, bad_epochs, epoch, train_loss = 0, 0, 0, math.nan
        order = list(train)
        steps, step_limit = 0, config.max_steps or math.inf
        model.train()
        for epoch in range(1, config.max_epochs + 1):
            rng.shuffle(order)
            losses = []
            for i in range(0, len(order), config.batch_size):
                if steps >= step_limit:
                    break
                steps += 1
                batch = Batch.collate(order[i : i + config.batch_size], device)
                loss = y_loss(model, batch, masks)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                optimizer.step()
                losses.append(loss.item())
            train_loss = float(np.mean(losses))  # an epoch starts only below the step limit
            if not validation:
                best_epoch = epoch
            else:
                val_loss = evaluate_loss(model, validation, masks, device)
                if val_loss < best_loss - 1e-4:
                    best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
                    best_state = snapshot()
                else:
                    bad_epochs += 1
                    if bad_epochs >= config.patience:
                        break
            if steps >= step_limit:
                break
        if best_state is not None:
            with torch.no_grad():
                for p, saved in zip(trainable, best_state):
                    p.copy_(saved)
        model.eval()
        return FitReport(
            data=data,
            num_train_examples=len(train) - num_prior_examples,
            num_validation_examples=len(validation),
            num_prior_examples=num_prior_examples,
            epochs=epoch,
            best_epoch=best_epoch,
            train_loss=train_loss,
            validation_loss=best_loss if validation else None,
            learning_rate=learning_rate,
            seconds=time.perf_counter() - started,
            steps=steps,
            batch_size=config.batch_size,
            trained_encoder=bool(config.train_encoder),
        )


