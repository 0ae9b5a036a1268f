"""`OmniPredRegressor`: the language model as a Vizier `Predictor`.

It owns a T5 checkpoint (weights + tokenizers + codecs) and the study it was last fitted
to. Predictions come from sampling the model's number tokens: the median of the samples
is the point estimate and their spread the uncertainty, in the metric's own units and
sign, for MINIMIZE and MAXIMIZE metrics alike (unlike Vizier's GP bandit, nothing here
negates minimisation metrics).

Several metrics (objectives and safety metrics): the text names the metric and its goal,
so one model predicts every metric of a study by changing only that part of the input.
`fit` then trains on one example per (trial, metric); a trial without a (finite) value
for a metric is left out of that metric's examples and counted in `last_fit_metrics`.
`sample`/`predict` take `metric_name=`; without it they read the study's single
objective, and `predict` on a study with several objectives returns every metric:
mean and stddev of shape (N, M), columns in `metric_names` order (the problem's
`metric_information` order), as Vizier's `Prediction` documents for several metrics.
`sample_metrics` returns {metric name: YSamples}. The samples of different metrics come
from separate decoder runs: a joint sample is a draw from the product of the model's
per-metric distributions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from vizier import algorithms as vza
from vizier import pyvizier as vz

from vizier_omnipred import model as model_lib
from vizier_omnipred.model import resolve_device
from vizier_omnipred.designer_state import problem_key
from vizier_omnipred.level_map import LevelMap, fit_level_map
from vizier_omnipred.numbers import FloatTokenizer
from vizier_omnipred.sampling import GrammarMasks, YSamples, check_temperature, sample_y
from vizier_omnipred.text import OMNIPRED_NS, TextCodec, TrialTextError
from vizier_omnipred.training import (
    PRETRAINED_FULL_LR_FRACTION,
    DataSummary,
    FinetuneConfig,
    FitReport,
    finetune,
    leading_positions,
    make_examples,
    split_validation,
    trials_range_frame,
    usable_values,
)
from vizier_omnipred.vocab import EncodedTrial, Vocabulary, train_input_tokenizer

_log = logging.getLogger(__name__)

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "omnipred-small"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
# After a fit that took gradient steps, sampled exponents stay at most this many decades above
# the largest value the study showed (`GrammarMasks.capped`): magnitudes up to 10-100x its
# largest |y|. Fits without a non-zero value, and the level map alone, leave samples uncapped.
SCALE_HEADROOM_DECADES = 1
METADATA_NS = OMNIPRED_NS  # where predictions go; the codec never reads it back
# Gaussian-equivalent sigma from the central 68.3% of the samples (robust to outliers).
_SIGMA_QUANTILES = (0.158655, 0.841345)


# The level map is fitted on at most this many of the study's trials, from this many samples each.
LEVEL_MAP_TRIALS = 256
LEVEL_MAP_SAMPLES = 32


def _as_problem_trials(study: Any) -> tuple[vz.ProblemStatement, Sequence[vz.Trial]]:
    if hasattr(study, "problem") and hasattr(study, "trials"):
        return study.problem, study.trials
    problem, trials = study
    return problem, trials


def _fit_record(training: Mapping[str, Any], path: Path) -> tuple[dict[str, LevelMap], dict[str, int], str | None, int]:
    """The study fit a saved regressor carries (level maps, exponent caps, the study they
    belong to, ensemble size), read from its checkpoint's training record. A record that
    does not parse is a damaged checkpoint: `CheckpointError` naming the file, not a
    TypeError from deep in the loader."""
    try:
        saved = training.get("level_maps") or {}
        maps = {str(name): LevelMap.from_json(v) for name, v in (saved.get("maps") or {}).items()}
        capped = training.get("max_exponents") or {}
        caps = {str(n): int(e) for n, e in (capped.get("caps") or {}).items()}
        key = saved.get("problem_key") or capped.get("problem_key")
        if key is not None and not isinstance(key, str):
            raise TypeError(f"problem_key must be a string, got {type(key).__name__}")
        members = training.get("ensemble_size", 1)
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"ensemble_size must be an int >= 1, got {members!r}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise model_lib.CheckpointError(
            f"{path}: invalid training record (level_maps, max_exponents or ensemble_size): "
            f"{type(e).__name__}: {e}") from e
    return maps, caps, key, members


class OmniPredRegressor(vza.Predictor):
    """A T5 that reads trials as text and samples their objective values.

    Build it with `from_pretrained(path)` (default: the checkpoint shipped in the package)
    or `from_scratch(preset)`; `fit` fine-tunes on a study, `sample`/`predict` read it.

    `ensemble_size=K` fine-tunes K copies of the model on each study, each seeing the trials in
    its own order, and splits every request's samples among them. A fine-tune on a few dozen
    trials lands somewhere different for every seed (held-out Spearman moves by up to 0.2);
    three members averaged ranked 0.1 better than one on each task measured (docs/BENCHMARKS.md),
    at K times the fit's CPU and about K times the encoder passes when sampling. Saved and
    loaded with the checkpoint (`member_{i}.safetensors`).
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
        level_maps: dict[str, LevelMap] | None = None,
        max_exponents: dict[str, int] | None = None,
        study_key: str | None = None,
        ensemble_size: int = 1,
        members: Sequence[model_lib.OmniPredT5] = (),
    ):
        self._device = resolve_device(device)
        self._ckpt = checkpoint
        self.ensemble_size = ensemble_size
        # The models samples come from: the checkpoint's, then the ensemble's other members (a fit
        # adds copies of the first until there are `ensemble_size`; before it, the first alone).
        self._members = [checkpoint.model, *members]
        for member in self._members:
            member.to(self._device)
            member.eval()
        self.num_samples = num_samples
        self.temperature = temperature
        self._seed = seed
        self._calls = 0
        self._pretrained = pretrained
        self._problem: vz.ProblemStatement | None = None
        self._metric_name: str | None = None
        self._masks = GrammarMasks.build(checkpoint.vocab, self._device)
        self.last_fit: FitReport | None = None
        # What the last fit learnt of the study's scale, per metric, and the key of the problem it
        # belongs to: level maps (model frame -> study values) and exponent caps (`_sampling_masks`).
        self._level_maps: dict[str, LevelMap] = dict(level_maps or {})
        self._max_exponents: dict[str, int] = dict(max_exponents or {})
        self._study_key: str | None = study_key if (level_maps or max_exponents) else None
        self._capped_masks: dict[int, GrammarMasks] = {}
        # Per metric: how the last fit used the trials (missing / NaN values are counted there).
        self.last_fit_metrics: dict[str, DataSummary] = {}

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
        number_embedding: model_lib.NumberEmbeddingConfig | None = None,
        **kwargs,
    ) -> "OmniPredRegressor":
        """A randomly initialised model.

        Its input BPE is `vocab`'s if given, else trained on `tokenizer_texts` (default: a
        built-in sample of synthetic trial text, so no data is needed). `number_embedding`:
        its number embedding's frequencies (None: `model.SCRATCH_NUMBER_EMBEDDING`, smoother
        than a pretrained model's, for a model that learns from one study).
        """
        preset = model_lib.get_preset(preset)
        codec = codec or TextCodec()
        if vocab is None:
            texts = list(tokenizer_texts) if tokenizer_texts is not None else default_tokenizer_texts(codec)
            vocab = Vocabulary(
                train_input_tokenizer(texts, preset.input_vocab_size), float_tokenizer or FloatTokenizer()
            )
        torch.manual_seed(seed)
        model = model_lib.build_model(preset, vocab.size, reads_numbers=codec.writes_numbers,
                                      number_embedding=number_embedding or model_lib.SCRATCH_NUMBER_EMBEDDING)
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
        maps, caps, key, saved_members = _fit_record(ckpt.training, Path(path) / model_lib.META_FILE)
        kwargs.setdefault("ensemble_size", saved_members)
        wanted = min(saved_members, kwargs["ensemble_size"])  # members beyond the wanted size stay on disk
        members = [model_lib.load_member(path, i, ckpt.model) for i in range(1, wanted)]
        return cls(ckpt, device=device, pretrained=bool(ckpt.training.get("steps")), level_maps=maps,
                   max_exponents=caps, study_key=key, members=members, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        training = dict(self._ckpt.training)
        if self.last_fit is not None:
            training["last_fit"] = attrs.asdict(self.last_fit)
        training.pop("level_maps", None)
        training.pop("max_exponents", None)
        if self._level_maps:
            training["level_maps"] = {"problem_key": self._study_key,
                                      "maps": {n: m.to_json() for n, m in self._level_maps.items()}}
        if self._max_exponents:
            training["max_exponents"] = {"problem_key": self._study_key, "caps": dict(self._max_exponents)}
        training.pop("ensemble_size", None)
        if len(self._members) > 1:
            training["ensemble_size"] = len(self._members)
        return model_lib.save_checkpoint(
            path, self._ckpt.model, self._ckpt.vocab, self._ckpt.codec, self._ckpt.preset, training,
            extra_files={model_lib.member_file(i): model_lib.member_weights(m)
                         for i, m in enumerate(self._members) if i > 0},
        )

    # ----- accessors ---------------------------------------------------------------------
    @property
    def ensemble_size(self) -> int:
        """Members the next fit trains (samples come from those fitted so far)."""
        return self._ensemble_size

    @ensemble_size.setter
    def ensemble_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ensemble_size must be an int >= 1, got {value!r}")
        self._ensemble_size = value

    @property
    def temperature(self) -> float:
        """Softmax temperature of every sampled token (1: the model's own distribution)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def checkpoint(self) -> model_lib.Checkpoint:
        return self._ckpt

    @property
    def masks(self) -> GrammarMasks:
        """The y grammar's logit masks on this regressor's device (built once)."""
        return self._masks

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
        """Sets the study predictions are made for, without training (e.g. zero-shot).

        Without `metric_name`, the default metric is the problem's single objective; a
        problem with several objectives has none (every metric is predicted; pass
        `metric_name=` to `sample`).
        """
        check_metrics(problem)
        if metric_name is None and len([m for m in problem.metric_information if m.type.is_objective]) > 1:
            self._problem, self._metric_name = problem, None
            return
        metric = self.codec.objective_metric(problem, metric_name)  # validates
        self._problem, self._metric_name = problem, metric.name

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics of the current study, in `metric_information` order (predict's columns)."""
        if self._problem is None:
            return ()
        return tuple(m.name for m in self._problem.metric_information)

    @property
    def metric_name(self) -> str | None:
        """The default metric of `sample`/`predict` (None: several objectives, no default)."""
        return self._metric_name

    @contextlib.contextmanager
    def _metric_scope(self, problem: vz.ProblemStatement | None, metric_name: str) -> Iterator[None]:
        """Temporarily makes `metric_name` (of `problem` or the current study) the default,
        so one metric is read through the same input path as a single-metric study."""
        problem = problem if problem is not None else self._problem
        if problem is None:
            raise ValueError("no study set: call fit(problem, trials) or set_problem(problem) first, or pass problem=")
        metric = self.codec.objective_metric(problem, metric_name)
        saved = self._problem, self._metric_name
        self._problem, self._metric_name = problem, metric.name
        try:
            yield
        finally:
            self._problem, self._metric_name = saved

    def default_learning_rate(self, *, decoder_only: bool = False) -> float:
        """A fit's rate: the preset's from scratch. From a pretrained model, a fraction of the
        pretraining rate: `training.PRETRAINED_FULL_LR_FRACTION` in the full recipe, a tenth in the
        decoder-only one (OmniPred's transfer recipe, `FinetuneConfig.train_encoder=False`).

        The pretraining rate is the lineage's peak: a checkpoint continued at a lower rate than
        its parent still fine-tunes at a fraction of the parent's (`pretraining.inherited_training`).
        """
        base = self.pretraining_learning_rate
        if not self._pretrained:
            return base
        return base / 10.0 if decoder_only else base * PRETRAINED_FULL_LR_FRACTION

    @property
    def pretraining_learning_rate(self) -> float:
        """The peak rate of the checkpoint's lineage (the preset's for a model never trained):
        what fine-tuning rates are fractions of."""
        training = self._ckpt.training
        return float(training.get("peak_learning_rate", training.get("learning_rate", self._ckpt.preset.learning_rate)))

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
        names = [self._metric_name] if metric_name is not None else [m.name for m in problem.metric_information]
        maps = self._fit_frames(problem, trials, names, config)
        if len(names) > 1:  # several metrics: one example per (trial, metric)
            by_metric, summary = self._metrics_examples(problem, trials, names, has_priors=bool(prior_studies),
                                                        level_maps=maps)
        else:
            metric_examples, summary = make_examples(self.vocab, self.codec, problem, trials,
                                                     metric_name=self._metric_name,
                                                     level_map=maps.get(self._metric_name))
            by_metric = {self._metric_name: metric_examples}
            self.last_fit_metrics = {self._metric_name: summary}
        examples = [e for metric_examples in by_metric.values() for e in metric_examples]
        prior_examples = []
        prior_summary = DataSummary()
        in_range_frame = config.uses_range_map(pretrained=self._pretrained)
        for study in prior_studies:
            p_problem, p_trials = _as_problem_trials(study)
            p_map = maps.get(self.codec.objective_metric(p_problem).name) if in_range_frame else None
            p_examples, p_summary = make_examples(self.vocab, self.codec, p_problem, p_trials, level_map=p_map)
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
        lr = config.learning_rate or self.default_learning_rate(decoder_only=not config.train_encoder)
        # Every member starts from the same weights (copies made before the first one trains) and
        # sees the study in its own order: what makes them disagree where the data says little.
        self._members = self._members[: self.ensemble_size]
        self._members += [copy.deepcopy(self._members[0]) for _ in range(self.ensemble_size - len(self._members))]
        validation_positions = leading_positions(self.vocab.float_tokenizer, config.early_stopping_digits)
        reports = [
            finetune(
                member,
                train,
                validation,
                config=attrs.evolve(config, seed=config.seed + i),
                learning_rate=lr,
                masks=self._masks,
                device=self._device,
                data=summary,
                num_prior_examples=len(prior_examples),
                validation_positions=validation_positions,
            )
            for i, member in enumerate(self._members)
        ]
        self.last_fit = attrs.evolve(reports[0], seconds=sum(r.seconds for r in reports), members=len(reports))
        self._level_maps = {n: m for n, m in maps.items() if not m.is_identity}
        # A fit without a gradient step (the level map alone) keeps the model's samples exactly.
        caps = ((n, self._max_exponent(x)) for n, x in by_metric.items()) if self.last_fit.steps else ()
        self._max_exponents = {n: e for n, e in caps if e is not None}
        self._study_key = problem_key(problem) if (self._level_maps or self._max_exponents) else None
        return self.last_fit

    def _max_exponent(self, examples: Sequence[Any]) -> int | None:
        """The exponent cap of a metric's training targets (in the model's frame):
        `SCALE_HEADROOM_DECADES` above the largest one's exponent, or None when no target is
        a non-zero number (nothing says what scale the study lives on)."""
        ft, offset = self.vocab.float_tokenizer, self.vocab.y_offset
        values = (abs(ft.decode([ft.tokens[i - offset] for i in e.y_ids])) for e in examples)
        largest = max((v for v in values if math.isfinite(v)), default=0.0)  # infeasible targets decode to nan
        if largest == 0.0:
            return None
        return ft.token_exponent(ft.encode(largest)[-1]) + SCALE_HEADROOM_DECADES

    def max_exponent(self, problem: vz.ProblemStatement | None = None, metric_name: str | None = None) -> int | None:
        """The exponent cap the last fit found for `metric_name` of `problem` (defaults: the
        current study and metric), or None: samples may take any exponent the tokenizer has."""
        return self._study_entry(self._max_exponents, problem, metric_name)

    def _study_entry(self, by_metric: dict[str, Any], problem: vz.ProblemStatement | None,
                     metric_name: str | None) -> Any:
        """`by_metric[metric_name]` when `problem` (default: the current study) is the study the
        last fit learnt it from; None otherwise. Shared by the level maps and exponent caps."""
        if not by_metric:
            return None
        problem = problem if problem is not None else self._problem
        name = metric_name if metric_name is not None else self._metric_name
        if problem is None or name not in by_metric or problem_key(problem) != self._study_key:
            return None
        return by_metric[name]

    def _sampling_masks(self, problem: vz.ProblemStatement | None) -> GrammarMasks:
        cap = self.max_exponent(problem)
        if cap is None:
            return self._masks
        if cap not in self._capped_masks:
            self._capped_masks[cap] = self._masks.capped(self.vocab, cap)
        return self._capped_masks[cap]

    def _fit_frames(self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial], names: Sequence[str],
                    config: FinetuneConfig) -> dict[str, LevelMap]:
        """The frame each metric's targets are written in for a fit (`FinetuneConfig.level_map`,
        `range_map`), by metric name; empty: the model's own frame. Clears the last fit's maps
        and caps: the fit below starts from the model's own frame, unbounded."""
        previous = {name: self._study_entry(self._level_maps, problem, name) for name in names}
        self._level_maps, self._max_exponents, self._study_key = {}, {}, None
        if config.uses_level_map(pretrained=self._pretrained):
            return {name: self._fit_level_map(problem, trials, name) for name in names}
        if config.uses_range_map(pretrained=self._pretrained):
            return {name: trials_range_frame(trials, name, previous[name], ranks=config.rank_frame) for name in names}
        return {}

    def _fit_level_map(self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial], metric_name: str) -> LevelMap:
        """The map from this model's zero-shot medians to the study's values of `metric_name`
        (feasible completed trials with a finite value; at most `LEVEL_MAP_TRIALS` of them)."""
        usable = usable_values(trials, metric_name)
        if not usable:
            return LevelMap()
        if len(usable) > LEVEL_MAP_TRIALS:
            usable = random.Random(self._seed).sample(usable, LEVEL_MAP_TRIALS)
        samples = self.sample([t for t, _ in usable], LEVEL_MAP_SAMPLES, problem=problem, metric_name=metric_name,
                              seed=self._seed)
        return fit_level_map(samples.quantiles([0.5])[0], np.asarray([y for _, y in usable]))

    def _metrics_examples(
        self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial], names: Sequence[str], *, has_priors: bool,
        level_maps: dict[str, LevelMap],
    ) -> tuple[dict[str, list], DataSummary]:
        """Examples of every metric (that metric's name and goal in the text), by metric, and
        their summed counts (so `FitReport.data` counts examples, not trials); the per-metric
        counts go to `last_fit_metrics`. A metric without any usable value is a warning;
        no usable value for any metric (and no prior studies) an error naming each."""
        by_metric: dict[str, list] = {}
        summaries: dict[str, DataSummary] = {}
        for name in names:
            by_metric[name], summaries[name] = make_examples(self.vocab, self.codec, problem, trials, metric_name=name,
                                                             level_map=level_maps.get(name))
        self.last_fit_metrics = summaries
        if not any(by_metric.values()) and not has_priors:
            raise ValueError(
                f"fit: none of the {len(trials)} trials can be trained on for any metric ("
                + "; ".join(f"'{n}': {s.num_not_completed} not completed, {s.num_missing_metric} without it, "
                            f"{s.num_nonfinite} NaN/inf" for n, s in summaries.items())
                + "). A pretrained model can still predict without fitting: call set_problem(problem) instead."
            )
        for name, summary in summaries.items():
            if summary.num_used == 0 and summary.num_trials:
                _log.warning(
                    "fit: metric %r has no usable value in %d trials (%d missing, %d NaN/inf, %d not completed); "
                    "its predictions come from the other metrics and pretraining alone",
                    name, summary.num_trials, summary.num_missing_metric, summary.num_nonfinite,
                    summary.num_not_completed,
                )
        total = DataSummary()
        for summary in summaries.values():
            total = total + summary
        return by_metric, total

    # ----- inference ---------------------------------------------------------------------
    def _resolve_problem(self, problem: vz.ProblemStatement | None) -> tuple[vz.ProblemStatement, str | None]:
        if problem is not None:
            return problem, self.codec.objective_metric(problem, self._metric_name if problem is self._problem else None).name
        if self._problem is None:
            raise ValueError("no study set: call fit(problem, trials) or set_problem(problem) first, or pass problem=")
        return self._problem, self._metric_name

    def model_inputs(
        self, trials: Sequence[vz.TrialSuggestion], problem: vz.ProblemStatement | None = None, *,
        metric_name: str | None = None,
    ) -> list[EncodedTrial]:
        """Token ids, per-token number positions and study start of each trial, as the model reads them.

        `metric_name`: the metric whose input to build (a study with several objectives needs it;
        default: the study's single objective)."""
        if metric_name is None:
            problem, metric_name = self._resolve_problem(problem)
        elif problem is None:
            problem = self._resolve_problem(None)[0]
        texts = self.codec.trial_texts(problem, list(trials), metric_name=metric_name)
        return self.vocab.encode_trial_texts(texts)

    def input_ids(self, trials: Sequence[vz.TrialSuggestion], problem: vz.ProblemStatement | None = None) -> list[list[int]]:
        return [x.ids for x in self.model_inputs(trials, problem)]

    def sample(
        self,
        trials: Sequence[vz.TrialSuggestion],
        num_samples: int | None = None,
        *,
        problem: vz.ProblemStatement | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        metric_name: str | None = None,
    ) -> YSamples:
        """(N, S) samples of y; `infeasible` marks samples the model predicts infeasible.

        `metric_name`: the metric to sample (default: the study's single objective; a
        study with several objectives needs it, or use `sample_metrics`).
        """
        if metric_name is not None and not (problem is None and metric_name == self._metric_name):
            with self._metric_scope(problem, metric_name):
                return self.sample(trials, num_samples, temperature=temperature, seed=seed)
        if problem is None and self._problem is not None and self._metric_name is None:
            raise ValueError(
                f"the study has several objectives {list(self.metric_names)}: pass metric_name= to sample one, "
                "or call sample_metrics() for all"
            )
        if not trials:
            return YSamples(values=np.zeros((0, num_samples or self.num_samples)),
                            infeasible=np.zeros((0, num_samples or self.num_samples), dtype=bool))
        if seed is None:
            seed = self._seed * 1_000_003 + self._calls
            self._calls += 1
        inputs = self.model_inputs(trials, problem)
        total = num_samples or self.num_samples
        k = len(self._members)
        counts = [total // k + (i < total % k) for i in range(k)]  # an ensemble's members share the samples
        masks = self._sampling_masks(problem)
        temperature = self.temperature if temperature is None else temperature  # sample_y checks it
        parts = [
            sample_y(
                member,
                self.vocab,
                [x.ids for x in inputs],
                count,
                input_values=[x.values for x in inputs],
                study_starts=[x.study_start for x in inputs],
                temperature=temperature,
                seed=seed + 7_919 * i,
                device=self._device,
                masks=masks,
            )
            for i, (member, count) in enumerate(zip(self._members, counts))
            if count
        ]
        samples = parts[0] if len(parts) == 1 else YSamples(
            values=np.concatenate([p.values for p in parts], axis=1),
            infeasible=np.concatenate([p.infeasible for p in parts], axis=1))
        level_map = self.level_map(problem)
        if level_map is None:
            return samples
        return attrs.evolve(samples, values=level_map.apply(samples.values))

    def level_map(self, problem: vz.ProblemStatement | None = None,
                  metric_name: str | None = None) -> LevelMap | None:
        """The level map the last fit found for `metric_name` of `problem` (defaults: the
        current study and metric), or None: samples are the model's own."""
        return self._study_entry(self._level_maps, problem, metric_name)

    def sample_metrics(
        self,
        trials: Sequence[vz.TrialSuggestion],
        num_samples: int | None = None,
        *,
        metric_names: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> dict[str, YSamples]:
        """{metric name: (N, S) samples} for `metric_names` (default: every metric of the
        study, in `metric_names` order). Metric i uses seed `seed + i` (when given)."""
        names = list(self.metric_names if metric_names is None else metric_names)
        if seed is None:
            seed = self._seed * 1_000_003 + self._calls
            self._calls += 1
        return {name: self.sample(trials, num_samples, seed=seed + i, metric_name=name) for i, name in enumerate(names)}

    def predict(
        self,
        trials: Sequence[vz.TrialSuggestion],
        rng: Any = None,
        num_samples: int | None = None,
        *,
        metric_name: str | None = None,
    ) -> vza.Prediction:
        """mean = median of the feasible samples; stddev = half the spread between their
        15.9% and 84.1% quantiles (a Gaussian's sigma, robust to stray samples).

        Metadata (namespace 'omnipred'): 'quantiles' (JSON {q: [per trial]}) and
        'infeasible_probability' (JSON list). A trial whose samples are all infeasible gets
        mean and stddev nan and infeasible probability 1.

        Shape (N,) for `metric_name` or the study's single objective; on a study with
        several objectives and no `metric_name`, (N, M) over every metric (`metric_names`
        order, also in the metadata as 'metrics'), and the metadata values are lists per
        metric.
        """
        seed = None
        if rng is not None:
            seed = int(np.asarray(rng).ravel()[-1]) if not isinstance(rng, int) else rng
        if metric_name is None and self._problem is not None and self._metric_name is None:
            return self._predict_all(trials, num_samples, seed)
        samples = self.sample(trials, num_samples, seed=seed, metric_name=metric_name)
        qs = samples.quantiles(QUANTILES + _SIGMA_QUANTILES)
        mean = qs[QUANTILES.index(0.5)]
        stddev = (qs[-1] - qs[-2]) / 2.0
        md = vz.Metadata()
        md.ns(METADATA_NS)["quantiles"] = json.dumps(
            {str(q): _json_list(qs[i]) for i, q in enumerate(QUANTILES)}
        )
        md.ns(METADATA_NS)["infeasible_probability"] = json.dumps(samples.infeasible_probability.tolist())
        return vza.Prediction(mean=mean, stddev=stddev, metadata=md)

    def _predict_all(self, trials: Sequence[vz.TrialSuggestion], num_samples: int | None, seed: int | None) -> vza.Prediction:
        by_metric = self.sample_metrics(trials, num_samples, seed=seed)
        means, stddevs, quantiles, infeasible = [], [], [], []
        for samples in by_metric.values():
            qs = samples.quantiles(QUANTILES + _SIGMA_QUANTILES)
            means.append(qs[QUANTILES.index(0.5)])
            stddevs.append((qs[-1] - qs[-2]) / 2.0)
            quantiles.append({str(q): _json_list(qs[i]) for i, q in enumerate(QUANTILES)})
            infeasible.append(samples.infeasible_probability.tolist())
        n = len(trials)
        md = vz.Metadata()
        md.ns(METADATA_NS)["metrics"] = json.dumps(list(by_metric))
        md.ns(METADATA_NS)["quantiles"] = json.dumps(quantiles)
        md.ns(METADATA_NS)["infeasible_probability"] = json.dumps(infeasible)
        mean = np.stack(means, axis=1) if means else np.zeros((n, 0))
        stddev = np.stack(stddevs, axis=1) if stddevs else np.zeros((n, 0))
        return vza.Prediction(mean=mean, stddev=stddev, metadata=md)


def check_metrics(problem: vz.ProblemStatement) -> None:
    """Clear errors for metric configurations the model cannot be trained on.

    Vizier itself refuses a metric without a goal (`MetricInformation` requires one; the
    service's proto converter rejects GOAL_UNSPECIFIED), so a safety metric always says
    which side of its threshold is safe. Left to check here: duplicate names and a
    safety threshold that is not a finite number.
    """
    names = [m.name for m in problem.metric_information]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TrialTextError(f"metric names must be unique; repeated: {duplicates}")
    for m in problem.metric_information:
        if not isinstance(m.goal, vz.ObjectiveMetricGoal):
            raise TrialTextError(f"metric {m.name!r} has no goal (MAXIMIZE or MINIMIZE)")
        if m.safety_threshold is not None and not math.isfinite(float(m.safety_threshold)):
            raise TrialTextError(f"safety metric {m.name!r} has a non-finite safety_threshold {m.safety_threshold}")


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
