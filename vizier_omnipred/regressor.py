"""`OmniPredRegressor`: the language model as a Vizier `Predictor`.

It owns a T5 checkpoint (weights + tokenizers + codecs) and the study it was last fitted
to. Predictions come from sampling the model's number tokens: the median of the samples
is the point estimate and their spread the uncertainty, in the metric's own units and
sign, for MINIMIZE and MAXIMIZE metrics alike (unlike Vizier's GP bandit, nothing here
negates minimisation metrics).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from vizier import algorithms as vza
from vizier import pyvizier as vz

from vizier_omnipred import model as model_lib
from vizier_omnipred.numbers import FloatTokenizer
from vizier_omnipred.sampling import GrammarMasks, YSamples, sample_y
from vizier_omnipred.text import TextCodec
from vizier_omnipred.training import (
    DataSummary,
    FinetuneConfig,
    FitReport,
    finetune,
    leading_positions,
    make_examples,
    split_validation,
)
from vizier_omnipred.vocab import Vocabulary, train_input_tokenizer

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "omnipred-small"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
METADATA_NS = "omnipred"
# Gaussian-equivalent sigma from the central 68.3% of the samples (robust to outliers).
_SIGMA_QUANTILES = (0.158655, 0.841345)


def _as_problem_trials(study: Any) -> tuple[vz.ProblemStatement, Sequence[vz.Trial]]:
    if hasattr(study, "problem") and hasattr(study, "trials"):
        return study.problem, study.trials
    problem, trials = study
    return problem, trials


def resolve_device(device: str | torch.device | None) -> torch.device:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return device


class OmniPredRegressor(vza.Predictor):
    """A T5 that reads trials as text and samples their objective values.

    Build it with `from_pretrained(path)` (default: the checkpoint shipped in the package)
    or `from_scratch(preset)`; `fit` fine-tunes on a study, `sample`/`predict` read it.
    """

    def __init__(
        self,
        checkpoint: model_lib.Checkpoint,
        *,
        device: str | torch.device = "cpu",
        num_samples: int = 64,
        temperature: float = 1.0,
        seed: int = 0,
        pretrained: bool = True,
    ):
        self._device = resolve_device(device)
        self._ckpt = checkpoint
        self._ckpt.model.to(self._device)
        self._ckpt.model.eval()
        self.num_samples = num_samples
        self.temperature = temperature
        self._seed = seed
        self._calls = 0
        self._pretrained = pretrained
        self._problem: vz.ProblemStatement | None = None
        self._metric_name: str | None = None
        self._masks = GrammarMasks.build(checkpoint.vocab, self._device)
        self.last_fit: FitReport | None = None

    # ----- construction and persistence -------------------------------------------------
    @classmethod
    def from_scratch(
        cls,
        preset: str | model_lib.ModelPreset = "small",
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
        tokenizer_texts: Sequence[str] | None = None,
        float_tokenizer: FloatTokenizer | None = None,
        codec: TextCodec | None = None,
        vocab: Vocabulary | None = None,
        **kwargs,
    ) -> "OmniPredRegressor":
        """A randomly initialised model.

        Its input BPE is `vocab`'s if given, else trained on `tokenizer_texts` (default: a
        built-in sample of synthetic trial text, so no data is needed).
        """
        preset = model_lib.get_preset(preset)
        codec = codec or TextCodec()
        if vocab is None:
            texts = list(tokenizer_texts) if tokenizer_texts is not None else default_tokenizer_texts(codec)
            vocab = Vocabulary(
                train_input_tokenizer(texts, preset.input_vocab_size), float_tokenizer or FloatTokenizer()
            )
        torch.manual_seed(seed)
        model = model_lib.build_model(preset, vocab.size, reads_numbers=codec.writes_numbers)
        ckpt = model_lib.Checkpoint(model=model, vocab=vocab, codec=codec, preset=preset, training={})
        return cls(ckpt, device=device, seed=seed, pretrained=False, **kwargs)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu", **kwargs
    ) -> "OmniPredRegressor":
        """Loads a checkpoint directory (default: the one shipped with the package)."""
        if path is None:
            path = SHIPPED_CHECKPOINT
        ckpt = model_lib.load_checkpoint(path, device="cpu")
        return cls(ckpt, device=device, pretrained=bool(ckpt.training.get("steps")), **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        training = dict(self._ckpt.training)
        if self.last_fit is not None:
            training["last_fit"] = attrs.asdict(self.last_fit)
        return model_lib.save_checkpoint(
            path, self._ckpt.model, self._ckpt.vocab, self._ckpt.codec, self._ckpt.preset, training
        )

    # ----- accessors ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def checkpoint(self) -> model_lib.Checkpoint:
        return self._ckpt

    @property
    def codec(self) -> TextCodec:
        return self._ckpt.codec

    @property
    def vocab(self) -> Vocabulary:
        return self._ckpt.vocab

    @property
    def pretrained(self) -> bool:
        """Whether the weights come from pretraining: it sets the fine-tune defaults."""
        return self._pretrained

    @property
    def problem(self) -> vz.ProblemStatement | None:
        return self._problem

    def set_problem(self, problem: vz.ProblemStatement, *, metric_name: str | None = None) -> None:
        """Sets the study predictions are made for, without training (e.g. zero-shot)."""
        metric = self.codec.objective_metric(problem, metric_name)  # validates
        self._problem, self._metric_name = problem, metric.name

    def default_learning_rate(self) -> float:
        """A tenth of the pretraining rate for a pretrained model, the full rate otherwise.

        The pretraining rate is the lineage's peak: a checkpoint continued at a lower rate than
        its parent still fine-tunes at a tenth of the parent's (`pretraining.inherited_training`).
        """
        training = self._ckpt.training
        base = float(training.get("peak_learning_rate",
                                  training.get("learning_rate", self._ckpt.preset.learning_rate)))
        return base / 10.0 if self._pretrained else base

    # ----- training ----------------------------------------------------------------------
    def fit(
        self,
        problem: vz.ProblemStatement,
        trials: Sequence[vz.Trial],
        *,
        metric_name: str | None = None,
        prior_studies: Sequence[Any] = (),
        config: FinetuneConfig | None = None,
    ) -> FitReport:
        """Fine-tunes on a study's completed trials (plus optional prior studies).

        Prior studies (any search spaces; `(problem, trials)` pairs or corpus records) are
        written with their own study text, so their metadata tells them apart from the
        current study; they join the training split, never the validation split.
        """
        config = config or FinetuneConfig()
        self.set_problem(problem, metric_name=metric_name)
        examples, summary = make_examples(self.vocab, self.codec, problem, trials, metric_name=self._metric_name)
        prior_examples = []
        prior_summary = DataSummary()
        for study in prior_studies:
            p_problem, p_trials = _as_problem_trials(study)
            p_examples, p_summary = make_examples(self.vocab, self.codec, p_problem, p_trials)
            prior_examples += p_examples
            prior_summary = prior_summary + p_summary
        if not examples and not prior_examples:
            raise ValueError(
                f"fit: none of the {summary.num_trials} trials can be trained on "
                f"({summary.num_not_completed} not completed, {summary.num_missing_metric} without metric "
                f"'{self._metric_name}', {summary.num_nonfinite} NaN/inf). A pretrained model can still "
                "predict without fitting: call set_problem(problem) instead."
            )
        config = config.resolved(pretrained=self._pretrained, num_train=len(examples) + len(prior_examples))
        train_idx, val_idx = split_validation(len(examples), config)
        train = [examples[i] for i in train_idx] + prior_examples
        validation = [examples[i] for i in val_idx]
        lr = config.learning_rate or self.default_learning_rate()
        self.last_fit = finetune(
            self._ckpt.model,
            train,
            validation,
            config=config,
            learning_rate=lr,
            masks=self._masks,
            device=self._device,
            data=summary,
            num_prior_examples=len(prior_examples),
            validation_positions=leading_positions(self.vocab.float_tokenizer, config.early_stopping_digits),
        )
        return self.last_fit

    # ----- inference ---------------------------------------------------------------------
    def _resolve_problem(self, problem: vz.ProblemStatement | None) -> tuple[vz.ProblemStatement, str | None]:
        if problem is not None:
            return problem, self.codec.objective_metric(problem, self._metric_name if problem is self._problem else None).name
        if self._problem is None:
            raise ValueError("no study set: call fit(problem, trials) or set_problem(problem) first, or pass problem=")
        return self._problem, self._metric_name

    def model_inputs(
        self, trials: Sequence[vz.TrialSuggestion], problem: vz.ProblemStatement | None = None
    ) -> list[tuple[list[int], list[float] | None]]:
        """(token ids, per-token number positions) of each trial, as the model reads them."""
        problem, metric_name = self._resolve_problem(problem)
        texts = self.codec.trial_texts(problem, list(trials), metric_name=metric_name)
        return self.vocab.encode_trial_texts(texts)

    def input_ids(self, trials: Sequence[vz.TrialSuggestion], problem: vz.ProblemStatement | None = None) -> list[list[int]]:
        return [ids for ids, _ in self.model_inputs(trials, problem)]

    def sample(
        self,
        trials: Sequence[vz.TrialSuggestion],
        num_samples: int | None = None,
        *,
        problem: vz.ProblemStatement | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> YSamples:
        """(N, S) samples of y; `infeasible` marks samples the model predicts infeasible."""
        if not trials:
            return YSamples(values=np.zeros((0, num_samples or self.num_samples)),
                            infeasible=np.zeros((0, num_samples or self.num_samples), dtype=bool))
        if seed is None:
            seed = self._seed * 1_000_003 + self._calls
            self._calls += 1
        inputs = self.model_inputs(trials, problem)
        return sample_y(
            self._ckpt.model,
            self.vocab,
            [ids for ids, _ in inputs],
            num_samples or self.num_samples,
            input_values=[values for _, values in inputs],
            temperature=temperature or self.temperature,
            seed=seed,
            device=self._device,
            masks=self._masks,
        )

    def predict(
        self,
        trials: Sequence[vz.TrialSuggestion],
        rng: Any = None,
        num_samples: int | None = None,
    ) -> vza.Prediction:
        """mean = median of the feasible samples; stddev = half the spread between their
        15.9% and 84.1% quantiles (a Gaussian's sigma, robust to stray samples).

        Metadata (namespace 'omnipred'): 'quantiles' (JSON {q: [per trial]}) and
        'infeasible_probability' (JSON list). A trial whose samples are all infeasible gets
        mean and stddev nan and infeasible probability 1.
        """
        seed = None
        if rng is not None:
            seed = int(np.asarray(rng).ravel()[-1]) if not isinstance(rng, int) else rng
        samples = self.sample(trials, num_samples, seed=seed)
        qs = samples.quantiles(QUANTILES + _SIGMA_QUANTILES)
        mean = qs[QUANTILES.index(0.5)]
        stddev = (qs[-1] - qs[-2]) / 2.0
        md = vz.Metadata()
        md.ns(METADATA_NS)["quantiles"] = json.dumps(
            {str(q): _json_list(qs[i]) for i, q in enumerate(QUANTILES)}
        )
        md.ns(METADATA_NS)["infeasible_probability"] = json.dumps(samples.infeasible_probability.tolist())
        return vza.Prediction(mean=mean, stddev=stddev, metadata=md)


def _json_list(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(x) else float(x) for x in a]


# Words that trial text in the wild is made of; only used to train the BPE of models built
# from scratch, so that common names become single tokens. Sequence length, not
# correctness, depends on it: byte fallback encodes any text.
_NAME_POOL = (
    "learning_rate lr batch_size num_layers layers hidden_units units dropout weight_decay momentum "
    "epochs optimizer activation kernel_size num_filters filters alpha beta gamma lambda temperature "
    "max_depth n_estimators min_samples_leaf subsample colsample_bytree l2 l1 warmup_steps "
    "x0 x1 x2 x3 x4 x5 x6 x7 x8 x9 width depth rate size ratio scale factor threshold"
).split()
_WORD_POOL = (
    "accuracy loss error auc f1 latency throughput objective score validation test train eval "
    "adam sgd rmsprop relu tanh gelu sigmoid linear log true false model dataset study project "
    "convnet transformer mlp resnet cifar10 mnist imagenet bbob sphere rastrigin rosenbrock tuning "
    "hyperparameter search experiment description name tabular benchmark"
).split()


def default_tokenizer_texts(codec: TextCodec, num_lines: int = 3000, seed: int = 0) -> list[str]:
    """Synthetic trial text for training the input BPE of a from-scratch model."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines // 10):
        problem = vz.ProblemStatement()
        names = rng.sample(_NAME_POOL, rng.randint(1, 8))
        for name in names:
            kind = rng.random()
            if kind < 0.5:
                scale = vz.ScaleType.LOG if rng.random() < 0.3 else vz.ScaleType.LINEAR
                lo = 10 ** rng.uniform(-5, 0) if scale == vz.ScaleType.LOG else rng.uniform(-10, 0)
                problem.search_space.root.add_float_param(name, lo, lo + 10 ** rng.uniform(-1, 2), scale_type=scale)
            elif kind < 0.75:
                problem.search_space.root.add_int_param(name, 0, rng.randint(1, 1000))
            else:
                problem.search_space.root.add_categorical_param(name, rng.sample(_WORD_POOL, 3))
        goal = rng.choice([vz.ObjectiveMetricGoal.MINIMIZE, vz.ObjectiveMetricGoal.MAXIMIZE])
        problem.metric_information.append(vz.MetricInformation(rng.choice(_WORD_POOL), goal=goal))
        problem.metadata["description"] = " ".join(rng.sample(_WORD_POOL, 5))
        trials = []
        for _ in range(10):
            params = {}
            for pc in problem.search_space.parameters:
                if pc.type == vz.ParameterType.CATEGORICAL:
                    params[pc.name] = rng.choice(pc.feasible_values)
                elif pc.type == vz.ParameterType.INTEGER:
                    params[pc.name] = rng.randint(*pc.bounds)
                else:
                    lo, hi = pc.bounds
                    params[pc.name] = rng.uniform(lo, hi)
            trials.append(vz.TrialSuggestion(params))
        lines += codec.serialize_many(problem, trials)
    return lines
