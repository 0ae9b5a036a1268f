"""`OmniPredDesigner`: the language-model regressor as a Vizier designer.

The loop (one `suggest` call):

1. **Seeding.** The first `num_seed_trials` suggestions of a study: the center of a flat
   space first (as Vizier's GP bandits seed), then points from Vizier's
   own `QuasiRandomDesigner` (Halton; flat spaces, all parameter types) or, where it
   refuses the space (conditional spaces; Vizier's `RandomDesigner` refuses those
   too), from this module's tree-walking random sampler. Default:
   `min(max(5, 2 * number of parameters), 20)`: enough points to fine-tune on, few
   enough that a pretrained model soon gets to use its prior. A study without any
   usable trial (nothing completed yet) keeps seeding, unless the model has something
   to go on without the study's trials (prior studies, or a pretrained checkpoint used
   zero-shot once the seed budget is spent).
2. **Refit** (see `RefitSchedule`): when completed trials arrived since the last fit,
   fine-tune on *all* completed trials of the study (and `prior_studies`). The first
   fit starts from the base checkpoint with `finetune_config`; later fits are *warm*:
   they continue from the previous fine-tune's weights with a quarter of the epochs.
3. **Acquisition optimisation.** Candidates are scored in batches through
   `OmniPredRegressor.sample` (one encoder pass per candidate, `num_samples` sampled y
   each) and an acquisition from `vizier_omnipred.acquisitions`. The optimiser is
   Vizier's `EagleStrategyDesigner` driven by `DesignerAsOptimizer` with a small
   budget (`num_candidates` evaluations; a GP bandit spends 75,000, each LM evaluation
   costs far more), its firefly pool primed with the study's best trials. Conditional
   spaces (which Eagle refuses) use a pool search instead: random points plus
   mutations around the best trials, then mutations around the best candidates. A
   finite space with at most `num_candidates` points is enumerated and scored whole.
   The search scores with `SearchConfig.screening_samples` samples per candidate (16);
   its best `finalists` are scored again with all `num_samples` before the pick.
   Picks stay within a trust region around the completed trials (L-inf balls whose
   radius grows with the number of trials, Vizier GP bandit's rule;
   `SearchConfig.trust_region`): the model is least reliable where it has seen nothing.
4. **Selection.** Candidates are compared by their text (`TextCodec`, which rounds
   floats to 3 significant digits): two points with the same text get the same
   prediction, so a candidate whose text matches a completed, active or previously
   suggested trial is never suggested, and a batch never holds two of the same text.
   A batch (count > 1) is picked greedily: best score first, then each next pick's
   rank-score is scaled down by its closeness to the picks so far (distance in the
   search space scaled to [0, 1]; `SearchConfig.diversity_radius`). When the space
   has fewer distinct points left than `count`, `suggest` returns as many as exist
   (possibly none) instead of repeating or searching forever.

State (`dump`/`load`, namespace 'omnipred' of the returned metadata; see
`STATE_VERSION`, `designer_state.py`): the completed trials themselves (compact JSON:
parameters and every metric's value, or infeasibility, per trial id), because Vizier's `PartiallySerializableDesignerPolicy`
sends only *new* trials to a restored designer; the text hashes of earlier suggestions;
counters; the seed designer's state; and where the fine-tuned weights are: a
checkpoint directory under `work_dir` with a SHA-256 fingerprint of its weights file.
A restored designer loads those weights (no refit from scratch); if they are gone or
do not match the fingerprint, it warns and refits from the base checkpoint on the
stored trials.

Several metrics (several objectives, safety metrics): see `OmniPredDesigner` and
`multimetric.py`. The module's pieces: `search_space.py` (points, mutations, features),
`trust_region.py`, `candidate_search.py` (`CandidateScorer`, Eagle and pool search,
diverse batches), `designer_state.py` (records, `DesignerState`, study key); this module
keeps the designer's life cycle and its configs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from vizier import algorithms as vza
from vizier import pyvizier as vz
from vizier.interfaces import serializable

from vizier_omnipred import model as model_lib
from vizier_omnipred.acquisitions import Acquisition, UpperQuantile, get_acquisition
from vizier_omnipred.candidate_search import (
    Candidate,
    CandidateScorer,
    Evaluation,
    eagle_search,
    pool_search,
    select_diverse,
)
from vizier_omnipred.designer_state import (
    CACHE_ENV,
    POLICY_NS,
    STATE_NS,
    STATE_VERSION,
    WEIGHTS_DIR,
    BaseState,
    DesignerState,
    Record,
    StateVersionError,
    WeightsState,
    default_cache_root,
    id_order,
    problem_key,
    weights_fingerprint,
)
from vizier_omnipred.multimetric import (
    HypervolumeScalarization,
    greedy_front_picks,
    is_safe,
    pareto_mask,
    predicted_safety_margin,
    safe_probability,
    safety_margin,
    safety_scales,
    to_maximise,
    unsafe_floor,
)
from vizier_omnipred.regressor import SHIPPED_CHECKPOINT, OmniPredRegressor, check_metrics
from vizier_omnipred.sampling import sampling_cost
from vizier_omnipred.search_space import Space, params_dict, relax_wide_integers, round_wide_integers
from vizier_omnipred.text import TrialTextError
from vizier_omnipred.training import FinetuneConfig, FitReport, recipe
from vizier_omnipred.trust_region import TrustRegion, trust_radius
from vizier_omnipred.warm_start import WarmStartConfig, WarmStartResult, warm_start_checkpoint

# Names other modules and tests reach through this module (kept after the split).
_Space = Space
_params_dict = params_dict
Record = Record
_Candidate = Candidate
id_order = id_order

_log = logging.getLogger(__name__)

__all__ = [
    "OmniPredDesigner",
    "RefitSchedule",
    "SearchConfig",
    "StateVersionError",
    "STATE_VERSION",
    "TRANSFER_UCB_QUANTILE",
    "STATE_NS",
    "CACHE_ENV",
    "default_cache_root",
    "problem_key",
    "trust_radius",
    "POLICY_NS",
]

_MAX_SEED_TRIALS = 20
# The first fit of a study in the full recipe, when the recipe leaves its budget open; the
# designer's full-recipe fits (cold and warm) run at the pretraining rate unless the recipe sets
# one. A one-off regression fit from a checkpoint takes `training.PRETRAINED_FULL_STEPS` (100) at
# `training.PRETRAINED_FULL_LR_FRACTION` (0.3) of that rate: on 30 trials more steps or a higher
# rate memorise them. The designer's first fit is on its few seed trials and only warm refits of
# 8 steps follow, and there both lost in the BBOB 2-D A/B (5 repeats): median regret 7.4x the GP
# bandit's with 100 steps against 4.2x with 500; at 0.3 of the rate 4 of 5 Sphere runs ended
# further from the optimum (median regret 0.0056 against 0.0015; docs/BENCHMARKS.md).
DESIGNER_COLD_STEPS = 500
# A bound on the compute of each of the designer's fits (`FinetuneConfig.max_cost`, in
# `training.input_cost` units; about 100 s on one CPU thread with `small`), whatever the study's
# inputs' lengths. Every fit measured in docs/BENCHMARKS.md fits within it (the largest, a cold fit
# on 8-D BBOB's 16 seed trials of 103 tokens: 1.5 million), so they are unchanged; a study of 40
# parameters with long names (about 1,100 tokens a trial) gets 62 steps for a first fit on 3 seed
# trials (95 s) and 9 on 20, instead of 500 (1.5 s each). On a GPU, `FinetuneConfig(max_cost=math.inf)`.
DESIGNER_FIT_COST = 2_000_000.0
# The UCB quantile of a designer whose fit keeps the model's own ranking of the study (a level map
# fitted on the trials: the `transfer` and `level` recipes, the default with `history`). Such a
# model ranked the study before it saw a trial (held-out HPOBench datasets: Spearman 0.93 zero-shot),
# and the spread of its samples is mostly how its other studies differed, not doubt about this one:
# the 0.9-quantile then pays for exploring what the history already ruled out. HPOBench A/B, 8
# datasets x 5 repeats from the fold checkpoints, against the GP bandit: 0.7 won 26-12-2 (median
# regret 0.055 against 0.059), 0.9 20-19-1 (0.059). A model that learns the study from its trials
# (the full recipe) keeps OmniPred's 0.9: on BBOB 2-D the median (0.5) ended further from the
# optimum (docs/BENCHMARKS.md).
TRANSFER_UCB_QUANTILE = 0.7


def default_num_seed_trials(problem: vz.ProblemStatement) -> int:
    """Quasi-random trials before the model is used: two per parameter, 5 to 20."""
    return min(max(5, 2 * len(Space(problem.search_space).names)), _MAX_SEED_TRIALS)


# --------------------------------------------------------------------------- configs
@attrs.frozen
class RefitSchedule:
    """When and how hard the regressor is fine-tuned during a study.

    A fit happens at a `suggest` (or `predict`) when completed trials arrived since the
    last fit, on all completed trials of the study. The first fit of a study starts
    from the base checkpoint with `cold`; later fits continue from the previous
    fine-tune's weights (warm start) with at most `warm_max_steps` optimizer steps (and
    `ceil(cold.max_epochs * warm_epoch_fraction)` epochs if `cold` bounds epochs): the weights already fit all
    but the newest trials, and a refit on a long study should not cost more than one
    on a short study.
    """

    cold: FinetuneConfig = attrs.field(factory=FinetuneConfig)
    warm_epoch_fraction: float = attrs.field(default=0.25)
    warm_max_steps: int = attrs.field(default=8, validator=attrs.validators.ge(1))

    @warm_epoch_fraction.validator
    def _check_fraction(self, _, value):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"warm_epoch_fraction must be in (0, 1], got {value}")

    @property
    def warm(self) -> FinetuneConfig:
        epochs = None if self.cold.max_epochs is None else max(1, math.ceil(self.cold.max_epochs * self.warm_epoch_fraction))
        steps = self.warm_max_steps if self.cold.max_steps is None else min(self.cold.max_steps, self.warm_max_steps)
        return attrs.evolve(self.cold, max_epochs=epochs, max_steps=steps, patience=min(self.cold.patience, 2))


MIN_EVALUATIONS = 16  # candidates a suggest call scores however long its inputs are


@attrs.frozen
class SearchConfig:
    """How candidates are searched for and picked.

    strategy: 'auto' (Eagle on flat spaces, pool on conditional ones), 'eagle', 'pool'.
    num_evaluations: candidates scored per suggest call (each costs one encoder pass
      and `num_samples` decoded samples).
    batch_size: candidates scored per model call (an Eagle iteration).
    diversity_radius: within a batch, a candidate closer than this (RMS distance in the
      search space scaled to [0, 1]) to an earlier pick has its rank-score scaled by
      distance / radius.
    mutation_scale: std of the Gaussian step of a pool-search mutation (scaled units).
    max_enumeration: a finite space is enumerated to find the last untried points when
      random draws cannot, up to this many points.
    screening_samples: y samples per candidate during the search (None: the designer's
      `num_samples`). The search only has to rank candidates roughly; the `finalists`
      best are then scored again with the full `num_samples`, and the pick is made on
      those scores. Sampling dominates a suggestion's cost, so this cuts it about
      `num_samples / screening_samples` times.
    finalists: candidates rescored with the full sample count (at least 2x the count asked for).
    trust_region: pick only candidates within `trust_radius` (L-inf distance, numeric
      parameters scaled to [0, 1]; categorical ones never limit) of a completed trial,
      as Vizier's GP bandit does. A language model's samples far from every observed
      point reflect how it reads unseen digits more than the objective, and a wide
      spread there is what an upper quantile rewards. Outside points still reach the
      search, with a penalty that grows with their distance (so Eagle is drawn back),
      and are picked only when nothing inside is left. The radius grows with the
      number of trials until the region is the whole space.
    safe_probability: a pick must be predicted safe (every safety metric on the safe side
      of its threshold) in at least this fraction of its joint samples; candidates below
      it are picked only when none passes (most likely safe first).
    num_scalarizations: random hypervolume scalarization weights (several objectives).
    front_quantile: the quantile, over a candidate's joint samples, of each
      scalarization (several objectives): its optimism, as UCB's quantile is.
    token_budget: what the search may spend on model inputs per suggest call, in tokens
      weighted by attention's growth (`sampling.sampling_cost`: a candidate of L input
      tokens costs L (1 + L/1024)). A study whose trial texts are very long (many
      parameters, long names) gets fewer than `num_evaluations` candidates, at least
      `MIN_EVALUATIONS`, so its search costs at most about what 256 candidates of 1,024
      tokens do (25-55 s on one CPU thread with `small`, below a bounded fit's ~100 s,
      `DESIGNER_FIT_COST`) instead of growing with the square of the length: 100
      parameters with long names (2,730 tokens) get 52 candidates, 50-56 s, where 256 ran
      over 6 minutes. Inputs up to 1,024 tokens keep `num_evaluations` (fewer candidates do
      pick worse points: a 40-parameter study at 56 candidates picked 279/305/373 where
      256 picked 260/261/268). None: no bound.
    """

    strategy: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "eagle", "pool")))
    num_evaluations: int = attrs.field(default=256)
    batch_size: int = attrs.field(default=64)
    diversity_radius: float = 0.1
    mutation_scale: float = 0.1
    max_enumeration: int = 100_000
    screening_samples: int | None = attrs.field(default=16)
    finalists: int = attrs.field(default=16)
    trust_region: bool = True
    safe_probability: float = attrs.field(default=0.75)
    num_scalarizations: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    front_quantile: float = attrs.field(default=0.9)
    token_budget: int | None = attrs.field(default=524_288)

    @token_budget.validator
    def _check_token_budget(self, _, value):
        if value is not None and value < 1:
            raise ValueError(f"token_budget must be >= 1 or None, got {value}")

    def evaluations(self, input_tokens: int) -> int:
        """Candidates to score per suggest call when each input is `input_tokens` long."""
        if self.token_budget is None or input_tokens <= 0:
            return self.num_evaluations
        affordable = int(self.token_budget // sampling_cost(input_tokens))
        return min(self.num_evaluations, max(MIN_EVALUATIONS, affordable))

    @safe_probability.validator
    def _check_safe(self, _, value):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"safe_probability must be in [0, 1], got {value}")

    @front_quantile.validator
    def _check_front_quantile(self, _, value):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"front_quantile must be in [0, 1], got {value}")

    @screening_samples.validator
    def _check_screening(self, _, value):
        if value is not None and value < 1:
            raise ValueError(f"screening_samples must be >= 1 or None, got {value}")

    @finalists.validator
    def _check_finalists(self, _, value):
        if value < 1:
            raise ValueError(f"finalists must be >= 1, got {value}")

    @num_evaluations.validator
    def _check_evals(self, _, value):
        if value < 1:
            raise ValueError(f"num_candidates/num_evaluations must be >= 1, got {value}")

    @batch_size.validator
    def _check_batch(self, _, value):
        if value < 1:
            raise ValueError(f"batch_size must be >= 1, got {value}")


# ------------------------------------------------------------------- regressors
_FALLBACK_BASE: dict[str, OmniPredRegressor] = {}


def _copy_regressor(
    regressor: OmniPredRegressor, *, device: str, num_samples: int, seed: int
) -> OmniPredRegressor:
    """A regressor with its own copy of the weights (tokenizers are shared: immutable) and the
    same ensemble size (its members are copied from the base's model at the study's first fit)."""
    ckpt = regressor.checkpoint
    own = attrs.evolve(ckpt, model=copy.deepcopy(ckpt.model), training=copy.deepcopy(ckpt.training))
    return OmniPredRegressor(
        own, device=device, num_samples=num_samples, temperature=regressor.temperature, seed=seed,
        pretrained=regressor.pretrained, ensemble_size=regressor.ensemble_size,
    )


def _base_regressor(
    checkpoint: str | os.PathLike[str] | None,
    regressor: OmniPredRegressor | None,
    *,
    device: str,
    num_samples: int,
    seed: int,
) -> OmniPredRegressor:
    if regressor is not None and checkpoint is not None:
        raise ValueError("pass either checkpoint= (a path) or regressor= (a loaded model), not both")
    if regressor is not None:
        if not isinstance(regressor, OmniPredRegressor):
            raise TypeError(f"regressor must be an OmniPredRegressor, got {type(regressor).__name__}")
        return _copy_regressor(regressor, device=device, num_samples=num_samples, seed=seed)
    if checkpoint is None and not Path(SHIPPED_CHECKPOINT).is_dir():
        _log.warning(
            "The shipped checkpoint %s does not exist (not built or not installed); falling back to an "
            "UNTRAINED 'small' model built from scratch. Suggestions will only be as good as a model "
            "fine-tuned on this study alone. Pass checkpoint= or regressor= to use a pretrained model.",
            SHIPPED_CHECKPOINT,
        )
        if "small" not in _FALLBACK_BASE:
            _FALLBACK_BASE["small"] = OmniPredRegressor.from_scratch("small", seed=0)
        return _copy_regressor(_FALLBACK_BASE["small"], device=device, num_samples=num_samples, seed=seed)
    # Loads now (not lazily): a mismatched or damaged checkpoint raises CheckpointError here.
    return OmniPredRegressor.from_pretrained(
        checkpoint if checkpoint is not None else SHIPPED_CHECKPOINT, device=device, num_samples=num_samples, seed=seed
    )


def _warm_start(
    history: str | os.PathLike[str] | WarmStartResult,
    problem: vz.ProblemStatement,
    checkpoint: str | os.PathLike[str] | None,
    regressor: OmniPredRegressor | None,
    config: WarmStartConfig | None,
) -> WarmStartResult:
    """The warm-started checkpoint for `history` (built or found in the cache)."""
    if isinstance(history, WarmStartResult):
        if checkpoint is not None:
            raise ValueError("history= is an already built WarmStartResult: do not pass checkpoint= too")
        return history
    if regressor is not None:
        raise ValueError("history= continues pretraining from a checkpoint directory: pass checkpoint= "
                         "(or nothing, for the shipped one), not regressor=")
    if config is not None and not isinstance(config, WarmStartConfig):
        raise TypeError(f"warm_start must be a WarmStartConfig, got {type(config).__name__}")
    return warm_start_checkpoint(history, problem, checkpoint=checkpoint, config=config or WarmStartConfig())


# ---------------------------------------------------------------------- designer
class OmniPredDesigner(vza.PartiallySerializableDesigner, vza.Predictor):
    """Suggests trials by fine-tuning a T5 regressor on the study and maximising an
    acquisition over its sampled predictions (see the module docstring for the loop).

    Args:
      problem: the study: one objective, or several (multi-objective: hypervolume
        scalarizations of the sampled objective vectors), each optionally with safety
        metrics (`MetricInformation.safety_threshold`: picks must be predicted safe with
        probability `SearchConfig.safe_probability`). See "Several metrics" below.
      seed: makes suggestions reproducible: the same seed and trials give the same picks in
        any process on the same device (on a CPU, with the same torch thread count), fits
        and sampling included (None: random, recorded in `dump`).
      checkpoint: a checkpoint directory to start from; None = the package's shipped
        checkpoint `vizier_omnipred.regressor.SHIPPED_CHECKPOINT`, or, if that is not
        there, an untrained 'small' model (a warning is logged). Loaded here, so a
        damaged or incompatible checkpoint raises `CheckpointError` at construction.
      regressor: an already loaded `OmniPredRegressor` to start from instead; the
        designer fine-tunes its own deep copy (studies never share weights).
      acquisition: 'ucb', 'ei', 'pi', 'thompson', or a callable following
        `vizier_omnipred.acquisitions.Acquisition`. None (default): UCB at the
        0.9-quantile (`acquisitions.UpperQuantile`), or at `TRANSFER_UCB_QUANTILE` (0.7)
        when the fit recipe keeps the model's ranking (a level map: with `history`, or the
        `transfer` and `level` recipes).
      num_samples: y samples per candidate.
      num_seed_trials: quasi-random trials before the model is used (None: see module;
        with `history`, 1: the space's center, then the warm-started model).
      num_candidates: candidates scored per suggest call (the optimiser's budget).
      device: torch device for the model.
      work_dir: where this study's fine-tuned weights are saved by `dump()`; None =
        `$VIZIER_OMNIPRED_CACHE/<study key>` (default root ~/.cache/vizier-omnipred), the
        key being `problem_key(problem)` plus a random token created at the first dump.
      prior_studies: `(problem, trials)` pairs or corpus records fine-tuned on together
        with the study (transfer); they are part of every fit.
      finetune_config: the first (cold) fit's recipe; warm refits use a quarter of its
        epochs (`RefitSchedule`). A full recipe without a step budget gets
        `DESIGNER_COLD_STEPS` for that first fit, and without a rate the pretraining rate for
        every fit (not the regressor's lower one-off rate); without `max_cost`, every fit is
        bounded by `DESIGNER_FIT_COST` (long inputs get fewer steps). None: the full recipe in the range frame
        (`training.recipe("full")`, the regressor's default: the frame the shipped
        checkpoint's synthetic studies were pretrained in), or with `history` the transfer
        recipe (`training.recipe("transfer")`: the level map, then the decoder alone), which
        keeps the ranking the warm-started model brings. With the shipped checkpoint the frame
        picked better than raw values in the BBOB A/B (docs/BENCHMARKS.md: 15-12-3 against the
        previous checkpoint's raw fits, where raw fits of this checkpoint went 9-16-5).
      metric_name: optimise only this objective of a multi-objective problem (the
        designer is then single-objective; safety metrics still apply).
      history: the user's past studies to warm-start from: a Vizier datastore (SQLite
        file or SQLAlchemy URL), a corpus file or a folder of corpus files. The base model
        is then `checkpoint` (None: the shipped one) continued-pretrained on the history's
        studies with this study's objective (`warm_start.warm_start_checkpoint`: built
        once, here, and cached on disk by the history's content; a bad history raises
        `WarmStartError`). Also a `WarmStartResult` already built (then `regressor` may be
        its loaded model, as the service factory shares one). The study's own fits then
        start from that model. Recorded in `dump()`: a restored designer whose fine-tuned
        weights are gone refits from the same warm-started checkpoint, if it still exists.
      warm_start: how `history` is turned into a checkpoint (`WarmStartConfig`: steps,
        bounds on studies and trials, cache folder); None: the defaults.
      ensemble_size: models fine-tuned on the study, samples shared among them
        (`OmniPredRegressor` ensembles: each fit and each encoder pass costs K times as
        much); None: the regressor's (1 for a checkpoint).
      temperature: softmax temperature of the sampled number tokens, which sets how wide
        the y distributions the acquisition reads are; None: the regressor's (1.0).

    Tuning beyond the constructor: `designer.search` (`SearchConfig`: strategy, batch
    size, diversity radius) and `designer.refit` (`RefitSchedule`) are plain attributes
    holding frozen configs; replace them with `attrs.evolve(...)`.

    Several metrics: the regressor is fine-tuned on every metric of the study (one
    example per trial and metric: the metric's name and goal are in the text), and each
    candidate is sampled for every objective and safety metric.
    - Several objectives: the acquisition is `multimetric.HypervolumeScalarization`
      over the joint samples (`SearchConfig.num_scalarizations` random weights, the
      `SearchConfig.front_quantile` of each scalarization over the samples, mean
      improvement over the observed front); a batch is picked greedily so that each
      pick adds where the front is still open (`multimetric.greedy_front_picks`).
      `acquisition` is not used. `predict` returns every metric, shape (N, M).
    - Safety metrics: a candidate's probability of being safe is the fraction of its
      joint samples in which every safety metric is feasible and on the safe side of its
      threshold. Below `SearchConfig.safe_probability` its score drops to
      `multimetric.unsafe_floor(p, margin)` (below every candidate that passes, ordered by
      p, then by the predicted safety margin), so such a point is picked only when no
      candidate passes: most likely safe first, then closest to safe.
      Unsafe trials (by Vizier's `SafetyChecker` rule) are trained on twice: their
      safety values, and as infeasible (as Vizier's `UnsafeAsInfeasibleDesigner`
      reports them), so the model learns where the space is unsafe; they are never
      incumbents, front points or search primers; once a trial is known safe, the trust
      region is around the safe trials only, and before that around the quarter of the
      trials that came closest to safe.
    """

    def __init__(
        self,
        problem: vz.ProblemStatement,
        *,
        seed: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        regressor: OmniPredRegressor | None = None,
        acquisition: str | Acquisition | None = None,
        num_samples: int = 64,
        num_seed_trials: int | None = None,
        num_candidates: int = 256,
        device: str = "cpu",
        work_dir: str | os.PathLike[str] | None = None,
        prior_studies: Sequence[Any] = (),
        finetune_config: FinetuneConfig | None = None,
        metric_name: str | None = None,
        history: str | os.PathLike[str] | WarmStartResult | None = None,
        warm_start: WarmStartConfig | None = None,
        ensemble_size: int | None = None,
        temperature: float | None = None,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if num_seed_trials is not None and num_seed_trials < 0:
            raise ValueError(f"num_seed_trials must be >= 0, got {num_seed_trials}")
        self._problem = copy.deepcopy(problem)
        self._seed = int(seed) if seed is not None else secrets.randbits(31)
        self._num_samples = int(num_samples)
        self.search = SearchConfig(num_evaluations=int(num_candidates), batch_size=min(64, int(num_candidates)))
        if finetune_config is None:
            # A model warm-started on the user's related studies ranks a new one before seeing
            # it: the transfer recipe keeps that ranking (held-out HPOBench datasets: Spearman
            # 0.88 kept, where the full recipe fell to 0.18-0.59; docs/BENCHMARKS.md).
            finetune_config = recipe("transfer") if history is not None else recipe("full")
        self._device = device
        self._work_dir_arg = Path(work_dir).expanduser() if work_dir is not None else None
        self._prior_studies = tuple(prior_studies)
        self._warm_start: WarmStartResult | None = None
        self._base_state: BaseState | None = None  # the warm-started base, recorded in dump()
        if history is not None:
            self._warm_start = _warm_start(history, self._problem, checkpoint, regressor, warm_start)
            self._base_state = BaseState(path=str(Path(self._warm_start.path).resolve()), key=self._warm_start.key)
            checkpoint = self._warm_start.path if regressor is None else None
        elif warm_start is not None:
            raise ValueError("warm_start= configures a history warm start: pass history= too")
        self._regressor = _base_regressor(
            checkpoint, regressor, device=device, num_samples=self._num_samples, seed=self._seed
        )
        if finetune_config.is_full_recipe(pretrained=self._regressor.pretrained):  # the designer's budget and rate
            finetune_config = attrs.evolve(
                finetune_config,
                max_steps=DESIGNER_COLD_STEPS if finetune_config.max_steps is None else finetune_config.max_steps,
                learning_rate=finetune_config.learning_rate or self._regressor.pretraining_learning_rate,
            )
        if finetune_config.max_cost is None:
            finetune_config = attrs.evolve(finetune_config, max_cost=DESIGNER_FIT_COST)
        self.refit = RefitSchedule(cold=finetune_config)
        if acquisition is None:
            # A model from scratch has no ranking of its own to keep, whatever the recipe says.
            keeps_ranking = self._regressor.pretrained and finetune_config.uses_level_map(pretrained=True)
            acquisition = UpperQuantile(q=TRANSFER_UCB_QUANTILE) if keeps_ranking else UpperQuantile()
        self._acquisition = get_acquisition(acquisition)
        if ensemble_size is not None:
            self._regressor.ensemble_size = ensemble_size  # members are made at the first fit
        if temperature is not None:
            self._regressor.temperature = temperature
        check_metrics(self._problem)
        self._metric = self._regressor.codec.objective_metric(
            self._problem, metric_name if metric_name is not None else self._first_objective_name()
        )
        if metric_name is not None:
            self._objectives = (self._metric,)
        else:
            self._objectives = tuple(m for m in self._problem.metric_information if m.type.is_objective)
        self._safety = tuple(m for m in self._problem.metric_information if m.type == vz.MetricType.SAFETY)
        self._space = Space(self._problem.search_space)
        # Keys are the codec's text of the parameters alone (fixed metric, no metadata):
        # the same point always gets the same key, whatever the study text says.
        self._key_problem = vz.ProblemStatement(
            search_space=self._problem.search_space,
            metric_information=[vz.MetricInformation("y", goal=vz.ObjectiveMetricGoal.MAXIMIZE)],
        )
        self._problem_key = problem_key(self._problem)
        if num_seed_trials is None:
            # Warm-started, the model is used from the second trial (the first is the center).
            num_seed_trials = 1 if history is not None else default_num_seed_trials(self._problem)
        self._num_seed_trials = int(num_seed_trials)
        # Vizier's quasi-random seeding draws wide integer ranges as DOUBLE (it would list their
        # every value: a range of 2e9 never finished), rounded back by `round_wide_integers`.
        self._seed_space, self._seed_wide = relax_wide_integers(self._problem.search_space)
        self._seed_designer = self._make_seed_designer(self._seed)

        # Study state (dumped).
        self._token: str | None = None
        self._history: dict[str, Record] = {}
        self._suggested: list[str] = []  # keys (text hashes) of every suggestion made
        self._num_seed_suggested = 0
        self._num_suggest_calls = 0
        self._fitted_ids: frozenset[str] | None = None  # None: still the base weights
        self._num_fits = 0
        self._anonymous = 0  # trials reported without an id get 'anon-<n>'
        # Transient state.
        self._active_keys: set[str] = set()
        self._weights_fingerprint: str | None = None
        self._weights_dirty = False
        self.last_fit: FitReport | None = None
        # How the last model suggestion searched: 'enumerate', 'eagle' or 'pool'.
        self.last_search: str | None = None
        # Candidates the last model suggestion's search could score (`SearchConfig.evaluations`).
        self.last_num_evaluations: int | None = None
        # The scalarizations of the last multi-objective suggestion.
        self.last_scalarization: HypervolumeScalarization | None = None

    # ------------------------------------------------------------------ accessors
    @property
    def acquisition(self) -> Acquisition:
        """The acquisition that scores candidates from their y samples."""
        return self._acquisition

    @property
    def regressor(self) -> OmniPredRegressor:
        """The designer's own (fine-tuned) regressor."""
        return self._regressor

    @property
    def problem(self) -> vz.ProblemStatement:
        return self._problem

    @property
    def metric(self) -> vz.MetricInformation:
        """The objective (the first one of a multi-objective problem)."""
        return self._metric

    @property
    def objectives(self) -> tuple[vz.MetricInformation, ...]:
        """The objectives optimised: one, or several (multi-objective)."""
        return self._objectives

    @property
    def safety_metrics(self) -> tuple[vz.MetricInformation, ...]:
        return self._safety

    @property
    def multi_objective(self) -> bool:
        return len(self._objectives) > 1

    def _first_objective_name(self) -> str | None:
        objectives = [m.name for m in self._problem.metric_information if m.type.is_objective]
        return objectives[0] if objectives else None

    def _fit_metric_name(self) -> str | None:
        """What the regressor is fitted on: the one metric of a single-metric problem,
        else every metric (None)."""
        return self._metric.name if len(self._problem.metric_information) == 1 else None

    @property
    def num_seed_trials(self) -> int:
        return self._num_seed_trials

    @property
    def num_fits(self) -> int:
        return self._num_fits

    @property
    def work_dir(self) -> Path:
        if self._work_dir_arg is not None:
            return self._work_dir_arg
        if self._token is None:
            self._token = secrets.token_hex(4)
        return default_cache_root() / f"{self._problem_key}-{self._token}"

    @property
    def warm_start(self) -> WarmStartResult | None:
        """The `WarmStartResult` the base model came from (None without `history`)."""
        return self._warm_start

    @property
    def completed_trials(self) -> list[vz.Trial]:
        """The completed trials the designer knows (as it would refit on them), in id order,
        with their study ids (0 for the anonymous ones `update` got without an id)."""
        return [self._history[k].to_trial(int(k) if k.isdigit() else 0) for k in sorted(self._history, key=id_order)]

    # ------------------------------------------------------------------- helpers
    def _make_seed_designer(self, seed: int):
        if self._space.is_conditional or not self._space.names:
            return None
        from vizier._src.algorithms.designers import quasi_random

        try:
            return quasi_random.QuasiRandomDesigner(self._seed_space, seed=seed % (2**31))
        except ValueError as e:  # a parameter type it does not handle
            _log.info("QuasiRandomDesigner refused the search space (%s); seeding with random points", e)
            return None

    def _keys(self, points: Sequence[Mapping[str, Any]]) -> list[str | None]:
        """Text hashes of parameter dicts; None for a point the codec cannot write."""
        codec = self._regressor.codec
        suggestions = [vz.TrialSuggestion(parameters=p) for p in points]
        try:  # the common case: the study is compiled once for the whole batch
            texts: list[str | None] = codec.serialize_many(self._key_problem, suggestions)
        except (TrialTextError, ValueError, TypeError):
            texts = []
            for s in suggestions:
                try:
                    texts.append(codec.serialize(self._key_problem, s))
                except (TrialTextError, ValueError, TypeError):
                    texts.append(None)
        return [None if t is None else hashlib.sha1(t.encode("utf-8")).hexdigest()[:20] for t in texts]

    def _excluded(self) -> set[str]:
        keys = {k for k in self._keys([r.params for r in self._history.values()]) if k}
        return keys | self._active_keys | set(self._suggested)

    def _safe_records(self) -> list[Record]:
        """Feasible trials with every objective and on the safe side of every threshold."""
        return [
            r for r in self._history.values()
            if not r.infeasible and all(r.value(m.name) is not None for m in self._objectives)
            and is_safe(r.metrics, self._safety)
        ]

    def _safety_scales(self) -> dict[str, float]:
        """Each safety metric's unit of margin: the spread of its values over every trial
        that reported it (`multimetric.safety_scales`); one unit for the search and the
        trust region alike."""
        return safety_scales([r.metrics for r in self._history.values() if r.metrics], self._safety)

    def _best_value(self) -> float | None:
        values = [r.value(self._metric.name) for r in self._safe_records()]
        if not values:
            return None
        return min(values) if self._metric.goal == vz.ObjectiveMetricGoal.MINIMIZE else max(values)

    def _observed_objectives(self, records: Sequence[Record]) -> np.ndarray:
        """(T, M) maximise-space objective values of records that have them all."""
        values = np.array([[r.value(m.name) for m in self._objectives] for r in records], dtype=float)
        return to_maximise(values.reshape(len(records), len(self._objectives)), [m.goal for m in self._objectives])

    def _input_tokens(self) -> int:
        """How long the model's input is for this study's trials: the longest of the last
        few (a conditional space's vary), or the space's center before any; 0 if neither."""
        points = [r.params for r in list(self._history.values())[-5:] if self._space.contains(r.params)]
        center = self._space.center()
        if not points and center is not None:
            points = [center]
        if not points:
            return 0
        inputs = self._regressor.model_inputs([vz.TrialSuggestion(parameters=p) for p in points], self._problem,
                                              metric_name=self._metric.name)
        return max(len(x.ids) for x in inputs)

    def _top_records(self, k: int) -> list[Record]:
        """The best safe trials (single objective), or the Pareto front's (several)."""
        feasible = [r for r in self._safe_records() if self._space.contains(r.params)]
        if self.multi_objective:
            if not feasible:
                return []
            front = pareto_mask(self._observed_objectives(feasible))
            return [r for r, keep in zip(feasible, front) if keep][:k]
        reverse = self._metric.goal != vz.ObjectiveMetricGoal.MINIMIZE
        feasible.sort(key=lambda r: r.value(self._metric.name), reverse=reverse)
        return feasible[:k]

    def _usable_ids(self) -> set[str]:
        return {i for i, r in self._history.items() if r.usable}

    def _model_has_information(self) -> bool:
        return bool(self._usable_ids()) or bool(self._prior_studies) or bool(
            self._regressor.checkpoint.training.get("steps")
        )

    # ------------------------------------------------------------------- fitting
    def _maybe_fit(self) -> None:
        """Refit schedule: fit when completed trials arrived since the last fit."""
        usable = self._usable_ids()
        if self._fitted_ids is not None and usable <= self._fitted_ids:
            return
        if not usable and not self._prior_studies:
            self._regressor.set_problem(self._problem, metric_name=self._fit_metric_name())
            return
        warm = self._fitted_ids is not None
        config = self.refit.warm if warm else self.refit.cold
        trials = [t for i in sorted(usable, key=id_order) for t in self._training_trials(self._history[i])]
        report = self._regressor.fit(
            self._problem, trials, metric_name=self._fit_metric_name(), prior_studies=self._prior_studies,
            config=config,
        )
        _log.info(
            "OmniPredDesigner: %s fit #%d on %d trials: %d epochs, %.1f s",
            "warm" if warm else "cold", self._num_fits + 1, len(trials), report.epochs, report.seconds,
        )
        self._fitted_ids = frozenset(usable)
        self._num_fits += 1
        self._weights_dirty = True
        self.last_fit = report

    def _training_trials(self, record: Record) -> list[vz.Trial]:
        """What the model is told about a trial: the trial itself, except an unsafe one,
        which is told twice: its safety metrics' values (how unsafe, and where), and as
        infeasible, as Vizier's `UnsafeAsInfeasibleDesigner` reports it (so every metric,
        the objectives included, has infeasible mass there: the acquisitions count it as
        failure and the safety gate as unsafe)."""
        if not self._safety or record.infeasible or is_safe(record.metrics, self._safety):
            return [record.to_trial()]
        values = {m.name: record.metrics[m.name] for m in self._safety if m.name in record.metrics}
        return [Record(params=record.params, metrics=values, infeasible=False).to_trial(),
                Record(params=record.params, metrics={}, infeasible=True).to_trial()]

    # ---------------------------------------------------------------- Designer API
    def update(self, completed: vza.CompletedTrials, all_active: vza.ActiveTrials | None = None) -> None:
        """Adds completed trials to the history (kept across dump/load) and notes the
        active ones (not suggested again). `all_active` None: no trial is active, as an
        empty `vza.ActiveTrials()` says (Vizier's interface passes one; a script driving
        the designer by hand often has none)."""
        for trial in completed.trials:
            params = params_dict(trial.parameters)
            if self._keys([params])[0] is None:
                _log.warning("OmniPredDesigner: trial %s does not fit the search space; ignored: %s", trial.id, params)
                continue
            if trial.id:
                trial_id = str(trial.id)
            else:
                self._anonymous += 1
                trial_id = f"anon-{self._anonymous}"
            metrics, infeasible = {}, bool(trial.infeasible)
            if not infeasible and trial.final_measurement is not None:
                for m in self._problem.metric_information:
                    metric = trial.final_measurement.metrics.get(m.name)
                    if metric is not None and math.isfinite(float(metric.value)):
                        metrics[m.name] = float(metric.value)
            self._history[trial_id] = Record(params=params, metrics=metrics, infeasible=infeasible)
        active = all_active.trials if all_active is not None else ()
        self._active_keys = {k for k in self._keys([params_dict(t.parameters) for t in active]) if k}

    def suggest(self, count: int | None = None) -> Sequence[vz.TrialSuggestion]:
        count = 1 if count is None else int(count)
        if count < 1:
            return []
        self._num_suggest_calls += 1
        rng = np.random.default_rng([self._seed, self._num_suggest_calls])
        excluded = self._excluded()
        known = len(self._history) + len(self._active_keys)
        seeds_left = max(0, self._num_seed_trials - max(known, self._num_seed_suggested))
        out: list[vz.TrialSuggestion] = []
        if seeds_left:
            out += self._seed_suggestions(min(count, seeds_left), excluded, rng)
            self._num_seed_suggested += len(out)
        rest = count - len(out)
        if rest > 0:
            if self._model_has_information():
                out += self._model_suggestions(rest, excluded, rng)
            else:
                out += self._seed_suggestions(rest, excluded, rng)
        if len(out) < count:
            _log.info(
                "OmniPredDesigner: returning %d of %d requested suggestions: no other untried points in the space",
                len(out), count,
            )
        return out

    # ----------------------------------------------------------------- seeding
    def _seed_suggestions(self, n: int, excluded: set[str], rng: np.random.Generator) -> list[vz.TrialSuggestion]:
        points: list[tuple[dict[str, Any], str]] = []
        if not self._history and not self._active_keys and not self._num_seed_suggested and not self._suggested:
            # A study's first trial is the space's center, as Vizier's GP bandits seed: a sane
            # default configuration, and the same start as the designers this one is compared to.
            center = self._space.center()
            if center is not None:
                points += self._take_new([center], excluded, n)
        if self._seed_designer is not None:
            for _ in range(3):
                if len(points) >= n:
                    break
                proposals = [
                    round_wide_integers(params_dict(s.parameters), self._seed_wide)
                    for s in self._seed_designer.suggest(n - len(points))
                ]
                points += self._take_new(proposals, excluded, n - len(points))
        if len(points) < n:
            points += self._random_points(n - len(points), excluded, rng)
        out = []
        for p, k in points:
            self._suggested.append(k)
            s = vz.TrialSuggestion(parameters=p)
            s.metadata.ns(STATE_NS)["source"] = "seed"
            out.append(s)
        return out

    def _take_new(
        self, proposals: Sequence[Mapping[str, Any]], excluded: set[str], n: int
    ) -> list[tuple[dict[str, Any], str]]:
        """Up to n (point, key) of proposals that are valid and new; their keys join `excluded`."""
        taken = []
        for p, k in zip(proposals, self._keys(proposals)):
            if len(taken) >= n:
                break
            if k is None or k in excluded or not self._space.contains(p):
                continue
            excluded.add(k)
            taken.append((dict(p), k))
        return taken

    def _random_points(
        self, n: int, excluded: set[str], rng: np.random.Generator
    ) -> list[tuple[dict[str, Any], str]]:
        """n new random (point, key); bounded effort, then enumeration of a finite space."""
        points: list[tuple[dict[str, Any], str]] = []
        for _ in range(4):
            if len(points) >= n:
                return points
            need = n - len(points)
            proposals = [self._space.sample(rng) for _ in range(8 * need + 16)]
            points += self._take_new(proposals, excluded, need)
        if len(points) < n:
            everything = self._space.enumerate(self.search.max_enumeration)
            if everything is not None:
                order = rng.permutation(len(everything))
                points += self._take_new([everything[i] for i in order], excluded, n - len(points))
        return points

    # ----------------------------------------------------------- model suggestions
    def _model_suggestions(self, n: int, excluded: set[str], rng: np.random.Generator) -> list[vz.TrialSuggestion]:
        self._maybe_fit()
        screening = min(self.search.screening_samples or self._num_samples, self._num_samples)
        scorer = CandidateScorer(
            evaluator=self._evaluator(rng),
            keys=self._keys,
            trust_region=self._trust_region(),
            screening_samples=screening,
            chunk_size=self.search.batch_size * 4,
        )
        self._search(scorer, n, excluded, rng)
        eligible = [c for k, c in scorer.scored.items() if k not in excluded and self._space.contains(c.params)]
        # Inside the trust region first; outside points only fill a batch that the
        # region cannot, nearest to it first (their search score falls with distance).
        inside = [c for c in eligible if c.outside <= 0.0]
        outside = [attrs.evolve(c, score=c.search_score) for c in eligible if c.outside > 0.0]
        if screening < self._num_samples and inside:
            # Second stage: the best screened candidates, scored again with all samples.
            inside.sort(key=lambda c: c.score, reverse=True)
            finalists = inside[: max(self.search.finalists, 2 * n)]
            inside = scorer.evaluate([(c.key, c.params) for c in finalists], self._num_samples)
        picks = self._select(inside, n, rng)
        if len(picks) < n:
            picks += self._select(outside, n - len(picks), rng)
        picks = picks[:n]
        out = []
        for c in picks:
            excluded.add(c.key)
            self._suggested.append(c.key)
            s = vz.TrialSuggestion(parameters=c.params)
            md = s.metadata.ns(STATE_NS)
            md["source"] = "model"
            md["acquisition"] = repr(c.score)
            if math.isfinite(c.median):
                md["predicted_median"] = repr(c.median)
            if c.outside > 0.0:
                md["beyond_trust_region"] = repr(c.outside)
            for key, value in c.info.items():
                md[key] = value
            out.append(s)
        return out

    def _evaluator(self, rng: np.random.Generator):
        """Sampling + acquisition for one chunk of candidates (the scorer's `Evaluator`)."""
        if not self.multi_objective and not self._safety:
            best = self._best_value()

            def evaluate(points: Sequence[Mapping[str, Any]], num_samples: int) -> Evaluation:
                samples = self._regressor.sample(
                    [vz.TrialSuggestion(parameters=p) for p in points], num_samples, seed=int(rng.integers(2**31)),
                    metric_name=self._metric.name,
                )
                values = self._acquisition(samples, goal=self._metric.goal, best=best, rng=rng)
                return Evaluation(scores=np.asarray(values, dtype=float), medians=samples.quantiles([0.5])[0])

            return evaluate
        return self._metrics_evaluator(rng)

    def _metrics_evaluator(self, rng: np.random.Generator):
        """Several objectives and/or safety metrics: every metric sampled per candidate;
        hypervolume scalarizations of the joint objective samples (several objectives) or
        the acquisition (one), gated by the sampled probability of being safe."""
        names = [m.name for m in self._objectives] + [m.name for m in self._safety]
        goals = [m.goal for m in self._objectives]
        scalarizer = None
        if self.multi_objective:
            scalarizer = self._scalarizer(rng)
            self.last_scalarization = scalarizer
        best = self._best_value()
        threshold = self.search.safe_probability
        scales = self._safety_scales() if self._safety else {}

        def evaluate(points: Sequence[Mapping[str, Any]], num_samples: int) -> Evaluation:
            samples = self._regressor.sample_metrics(
                [vz.TrialSuggestion(parameters=p) for p in points], num_samples, metric_names=names,
                seed=int(rng.integers(2**31)),
            )
            vectors = None
            if scalarizer is None:
                primary = samples[self._metric.name]
                scores = np.asarray(self._acquisition(primary, goal=goals[0], best=best, rng=rng), dtype=float)
            else:
                joint = np.stack(
                    [np.where(samples[m.name].infeasible, -np.inf, samples[m.name].values) for m in self._objectives],
                    axis=-1,
                )  # (N, S, M)
                y = to_maximise(np.where(np.isfinite(joint), joint, 0.0), goals)
                y = np.where(np.isfinite(joint), y, -np.inf)
                feasible = np.isfinite(y).all(axis=-1).mean(axis=1)  # (N,)
                if scalarizer.has_reference:
                    vectors = scalarizer.optimistic(y, self.search.front_quantile)
                    scores = scalarizer.improvement(vectors)
                else:  # no feasible trial yet: any feasible outcome is progress (as EI does)
                    scores = feasible.copy()
                scores = np.where(feasible > 0, scores, -np.inf)
            medians = samples[self._metric.name].quantiles([0.5])[0]
            p_safe = safe_probability(samples, self._safety)
            info: list[dict[str, str]] = [{} for _ in points]
            if p_safe is not None:
                margin = predicted_safety_margin(samples, self._safety, scales)
                scores = np.where(np.isnan(scores), -np.inf, scores)
                scores = np.where((p_safe >= threshold) | ~np.isfinite(scores), scores, unsafe_floor(p_safe, margin))
                for d, p, m in zip(info, p_safe, margin):
                    d["safe_probability"] = repr(float(p))
                    d["predicted_safety_margin"] = repr(float(m))
            if scalarizer is not None:
                per_metric = {m.name: samples[m.name].quantiles([0.5])[0] for m in self._objectives}
                for i, d in enumerate(info):
                    d["predicted_medians"] = json.dumps(
                        {k: (float(v[i]) if np.isfinite(v[i]) else None) for k, v in per_metric.items()}
                    )
            return Evaluation(scores=scores, medians=medians, info=info, vectors=vectors)

        return evaluate

    def _scalarizer(self, rng: np.random.Generator) -> HypervolumeScalarization:
        observed = self._observed_objectives(self._safe_records())
        return HypervolumeScalarization.create(
            self.search.num_scalarizations, observed, rng, num_objectives=len(self._objectives)
        )

    def _search(self, scorer: CandidateScorer, n: int, excluded: set[str], rng: np.random.Generator) -> None:
        """Fills `scorer.scored`: a small finite space whole, else Eagle or the pool search."""
        tokens = self._input_tokens()
        budget = self.search.evaluations(tokens)
        if budget < self.search.num_evaluations:
            _log.info("OmniPredDesigner: trial inputs of %d tokens: %d candidates scored, not %d (SearchConfig.token_budget)",
                      tokens, budget, self.search.num_evaluations)
        self.last_num_evaluations = budget
        finite = self._space.enumerate(budget) if not self._space.has_continuous else None
        if finite is not None:
            # Small finite space: score every untried point.
            fresh = [p for p, k in zip(finite, self._keys(finite)) if k is not None and k not in excluded]
            scorer(fresh)
            self.last_search = "enumerate"
            return
        strategy = self.search.strategy
        if strategy == "auto":
            strategy = "pool" if self._space.is_conditional else "eagle"
        if strategy == "eagle":
            primers = [r.params for r in self._top_records(min(5, budget))]
            if not eagle_search(scorer, self._problem.search_space, primers, budget, self.search.batch_size, rng):
                strategy = "pool"
        if strategy == "pool":
            top = [r.params for r in self._top_records(5)]
            pool_search(scorer, self._space, top, budget, self.search.mutation_scale, rng)
        self.last_search = strategy
        if sum(1 for k in scorer.scored if k not in excluded) < n:
            # The search kept proposing tried points: top up with new random ones.
            extra = self._random_points(n, excluded | set(scorer.scored), rng)
            scorer([p for p, _ in extra])

    def _trust_region(self) -> TrustRegion:
        """The region around every completed trial, infeasible ones included: the model
        was told what happened there.

        With safety metrics, once some trial is known safe, the region is around the safe
        trials only (the safe set grows outward from known-safe points, as in SafeOpt): a
        model that has not yet learned where the space is unsafe then still proposes
        points near ones that were safe, and the safe-probability gate decides among them.
        While no trial is safe, it is around the quarter of them (at least one) that came
        closest to safe (`multimetric.safety_margin`): a search for a first safe point
        grows from the least unsafe ones instead of wandering off with the objective.
        """
        records = [r for r in self._history.values() if self._space.contains(r.params)]
        if self._safety:
            measured = [r for r in records if not r.infeasible and r.metrics]
            safe = [r for r in measured if is_safe(r.metrics, self._safety)]
            if safe:
                records = safe
            elif measured:
                scales = self._safety_scales()
                measured.sort(key=lambda r: safety_margin(r.metrics, self._safety, scales), reverse=True)
                records = measured[: max(1, len(measured) // 4)]
        return TrustRegion.around(self._space, [r.params for r in records], enabled=self.search.trust_region)

    def _select(self, candidates: list[Candidate], n: int, rng: np.random.Generator) -> list[Candidate]:
        """Best first, then greedily by rank-score x min(1, distance to picks / radius).

        Several objectives: first the greedy front picks (each adds the most where the
        front is still open); the rest, if any, as above."""
        picks: list[Candidate] = []
        scalarizer = self.last_scalarization if self.multi_objective else None
        if scalarizer is not None and n > 1:
            usable = [c for c in candidates if c.vector is not None and c.score > 0.0]
            if usable:
                order = greedy_front_picks(np.stack([c.vector for c in usable]), scalarizer.best, n)
                picks = [usable[i] for i in order]
            chosen = {id(c) for c in picks}
            candidates = [c for c in candidates if id(c) not in chosen]
        return picks + select_diverse(candidates, n - len(picks), rng, self._space, self.search.diversity_radius)

    # --------------------------------------------------------------- Predictor API
    def predict(
        self, trials: Sequence[vz.TrialSuggestion], rng: Any = None, num_samples: int | None = None
    ) -> vza.Prediction:
        """The fine-tuned regressor's prediction (refits first if trials arrived): shape
        (N,) for the objective of a single-objective problem (safety metrics or not);
        (N, M) over every metric of a multi-objective one (`problem.metric_information`
        order; metadata 'metrics' names the columns)."""
        self._maybe_fit()
        if isinstance(rng, np.random.Generator):
            rng = int(rng.integers(2**31))
        if self.multi_objective:
            if self._regressor.metric_name is not None:
                self._regressor.set_problem(self._problem)
            return self._regressor.predict(trials, rng=rng, num_samples=num_samples)
        return self._regressor.predict(trials, rng=rng, num_samples=num_samples, metric_name=self._metric.name)

    # ------------------------------------------------------------ serialization
    def dump(self) -> vz.Metadata:
        """State as metadata (namespace 'omnipred'); saves fine-tuned weights to work_dir."""
        weights = None
        if self._fitted_ids is not None:
            path = self.work_dir / WEIGHTS_DIR
            if self._weights_dirty or self._weights_fingerprint is None or not (path / model_lib.WEIGHTS_FILE).is_file():
                self._regressor.save(path)
                self._weights_fingerprint = weights_fingerprint(path)
                self._weights_dirty = False
            weights = WeightsState(
                path=str(path.resolve()),
                fingerprint=self._weights_fingerprint,
                trials=tuple(sorted(self._fitted_ids, key=id_order)),
                fits=self._num_fits,
            )
        elif self._token is None and self._work_dir_arg is None:
            self._token = secrets.token_hex(4)
        state = DesignerState(
            problem_key=self._problem_key,
            token=self._token,
            seed=self._seed,
            num_suggest_calls=self._num_suggest_calls,
            num_seed_suggested=self._num_seed_suggested,
            anonymous=self._anonymous,
            suggested=tuple(self._suggested),
            trials=self._history,
            weights=weights,
            base=self._base_state,
        )
        md = vz.Metadata()
        ns = md.ns(STATE_NS)
        ns["version"] = str(STATE_VERSION)
        ns["state"] = state.to_json()
        if self._seed_designer is not None:
            ns.ns("seed_designer").attach(self._seed_designer.dump())
        return md

    def load(self, metadata: vz.Metadata) -> None:
        """Restores `dump()`'s state into a designer built the same way (`factory(problem)`).

        Raises a `serializable.HarmlessDecodeError` (leaving the designer untouched) if
        there is no state, it is damaged, or it belongs to another problem;
        `StateVersionError` if another state version wrote it. Missing or mismatched
        weights are not an error: a warning, and the next fit is a cold one on the stored
        trials, from this designer's current weights (the base checkpoint for a fresh
        designer, which is how Vizier's policies call `load`).
        """
        ns = metadata.ns(STATE_NS)
        state = DesignerState.from_metadata(ns, primary_metric=self._metric.name)
        if state.problem_key != self._problem_key:
            raise serializable.HarmlessDecodeError(
                "OmniPredDesigner state belongs to another problem (search space, metrics or metadata differ)"
            )
        try:
            seed_designer = self._make_seed_designer(state.seed)
            if seed_designer is not None:
                seed_designer.load(ns.ns("seed_designer"))
        except serializable.DecodeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise serializable.HarmlessDecodeError(f"damaged OmniPredDesigner state: {e!r}") from e

        regressor = None
        weights = state.weights
        if weights is not None:
            path = Path(weights.path)
            weights_file = path / model_lib.WEIGHTS_FILE
            problem = None
            # A server killed between the two renames of a weights save left the previous
            # copy aside; put it back (the fingerprint below decides whether it is the one).
            model_lib.restore_interrupted_save(path)
            if not weights_file.is_file():
                problem = f"the weights directory {path} is missing"
            elif weights_fingerprint(path) != weights.fingerprint:
                problem = f"the weights in {path} do not match the recorded fingerprint (overwritten?)"
            else:
                try:
                    regressor = OmniPredRegressor.from_pretrained(
                        path, device=self._device, num_samples=self._num_samples, seed=state.seed
                    )
                except model_lib.CheckpointError as e:
                    problem = f"the weights in {path} cannot be loaded ({e})"
            if problem is not None:
                _log.warning(
                    "OmniPredDesigner: %s; the next suggest refits from the base checkpoint on the %d stored trials.",
                    problem, len(state.trials),
                )
        base = None
        if regressor is None and state.base is not None and (
                self._base_state is None or state.base.key != self._base_state.key):
            # The study was warm-started from another history checkpoint than this designer's
            # (the history changed since): refit from the study's own, while it exists.
            try:
                base = OmniPredRegressor.from_pretrained(
                    state.base.path, device=self._device, num_samples=self._num_samples, seed=state.seed)
            except model_lib.CheckpointError as e:
                _log.warning("OmniPredDesigner: the study's warm-started checkpoint cannot be loaded (%s); "
                             "refitting from this designer's base instead", e)

        # Everything decoded: commit.
        self._history = dict(state.trials)
        self._suggested = list(state.suggested)
        self._seed = state.seed
        self._token = state.token
        self._num_suggest_calls = state.num_suggest_calls
        self._num_seed_suggested = state.num_seed_suggested
        self._anonymous = state.anonymous
        self._seed_designer = seed_designer
        self._active_keys = set()
        self._weights_dirty = False
        if state.base is not None and (regressor is not None or base is not None):
            self._base_state = state.base  # the weights in use descend from the study's own base
        if regressor is not None:
            self._regressor = regressor
            self._regressor.set_problem(self._problem, metric_name=self._fit_metric_name())
            self._fitted_ids = frozenset(weights.trials)
            self._num_fits = weights.fits
            self._weights_fingerprint = weights.fingerprint
        else:
            if base is not None:
                self._regressor = base
            self._fitted_ids = None
            self._num_fits = 0
            self._weights_fingerprint = None

    @classmethod
    def factory(cls, **kwargs):
        """A Vizier designer factory: `factory(problem, seed=...)` -> OmniPredDesigner."""

        def make(problem: vz.ProblemStatement, seed: int | None = None, **more) -> "OmniPredDesigner":
            return cls(problem, seed=seed, **{**kwargs, **more})

        return make

