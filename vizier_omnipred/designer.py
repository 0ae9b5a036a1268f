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
`STATE_VERSION`): the completed trials themselves (compact JSON: parameters and metric
value or infeasibility per trial id), because Vizier's `PartiallySerializableDesignerPolicy`
sends only *new* trials to a restored designer; the text hashes of earlier suggestions;
counters; the seed designer's state; and where the fine-tuned weights are: a
checkpoint directory under `work_dir` with a SHA-256 fingerprint of its weights file.
A restored designer loads those weights (no refit from scratch); if they are gone or
do not match the fingerprint, it warns and refits from the base checkpoint on the
stored trials.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from vizier import algorithms as vza
from vizier import pyvizier as vz
from vizier.interfaces import serializable

from vizier_omnipred import model as model_lib
from vizier_omnipred.acquisitions import INFEASIBLE_FLOOR, Acquisition, get_acquisition
from vizier_omnipred.regressor import SHIPPED_CHECKPOINT, OmniPredRegressor
from vizier_omnipred.text import TrialTextError
from vizier_omnipred.training import FinetuneConfig, FitReport

_log = logging.getLogger(__name__)

__all__ = [
    "OmniPredDesigner",
    "RefitSchedule",
    "SearchConfig",
    "StateVersionError",
    "STATE_VERSION",
    "STATE_NS",
    "CACHE_ENV",
    "default_cache_root",
    "problem_key",
]

STATE_VERSION = 1
STATE_NS = "omnipred"  # the TextCodec skips this namespace: the model never reads designer state
POLICY_NS = "designer_policy_v0"  # where Vizier's policies keep their (and our) state
CACHE_ENV = "VIZIER_OMNIPRED_CACHE"
WEIGHTS_DIR = "weights"
_EXCLUDED_FROM_KEY = (POLICY_NS, STATE_NS)
_MAX_SEED_TRIALS = 20


def default_num_seed_trials(problem: vz.ProblemStatement) -> int:
    """Quasi-random trials before the model is used: two per parameter, 5 to 20."""
    return min(max(5, 2 * len(_Space(problem.search_space).names)), _MAX_SEED_TRIALS)


class StateVersionError(serializable.HarmlessDecodeError):
    """Designer metadata written by another version of the state format.

    A `HarmlessDecodeError` (the designer is left untouched): called directly, `load`
    raises it with both versions named; under Vizier's `PartiallySerializableDesignerPolicy`
    the policy catches it, logs it, and restarts the designer on all of the study's
    trials, which is the right recovery for a server that was upgraded mid-study.
    """


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


# --------------------------------------------------------------------- search space
def _py(value: Any) -> float | int | str:
    """A parameter value as a plain Python scalar (Vizier hands out numpy types)."""
    if isinstance(value, vz.ParameterValue):
        value = value.value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


def _params_dict(parameters: vz.ParameterDict | Mapping[str, Any]) -> dict[str, float | int | str]:
    if isinstance(parameters, vz.ParameterDict):
        return {k: _py(v) for k, v in parameters.as_dict().items()}
    return {k: _py(v) for k, v in parameters.items()}


_MISSING = object()


def _is_log(pc: vz.ParameterConfig) -> bool:
    return pc.scale_type == vz.ScaleType.LOG and pc.bounds[0] > 0


class _Space:
    """Random points, mutations, membership and enumeration for any search space.

    Conditional spaces are walked depth first, the order Vizier's
    `SequentialParameterBuilder` uses: a parameter's children come right after it. A
    name active in several subspaces (Vizier's test AutoML space has three
    'learning_rate's) holds one value that must lie in every active config of it: the
    walk keeps an earlier value when a later config contains it and redraws it from the
    later config otherwise.
    """

    def __init__(self, search_space: vz.SearchSpace):
        self.search_space = search_space
        self.is_conditional = search_space.is_conditional
        self.configs: dict[str, list[vz.ParameterConfig]] = {}
        self._children: dict[int, dict[Any, list[vz.ParameterConfig]]] = {}
        self._collect(search_space.parameters)
        self.names = list(self.configs)
        self.has_continuous = any(
            pc.type == vz.ParameterType.DOUBLE and pc.bounds[0] < pc.bounds[1]
            for pcs in self.configs.values()
            for pc in pcs
        )
        self._columns = self._build_columns()

    def _collect(self, configs: Sequence[vz.ParameterConfig]) -> None:
        for pc in configs:
            self.configs.setdefault(pc.name, []).append(pc)
            children = {value: list(sub.parameters) for value, sub in pc.subspaces() if sub.parameters}
            self._children[id(pc)] = children
            for sub in children.values():
                self._collect(sub)

    def children(self, pc: vz.ParameterConfig, value: Any) -> list[vz.ParameterConfig]:
        table = self._children.get(id(pc))
        if not table:
            return []
        if pc.type == vz.ParameterType.DISCRETE:
            value = float(value)
        return table.get(value, [])

    # -- values
    @staticmethod
    def random_value(pc: vz.ParameterConfig, rng: np.random.Generator) -> float | int | str:
        if pc.type == vz.ParameterType.DOUBLE:
            lo, hi = pc.bounds
            if lo == hi:
                return float(lo)
            if _is_log(pc):
                v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            else:
                v = rng.uniform(lo, hi)
            return float(min(max(v, lo), hi))
        if pc.type == vz.ParameterType.INTEGER:
            lo, hi = pc.bounds
            return int(rng.integers(lo, hi + 1))
        values = pc.feasible_values
        return _py(values[int(rng.integers(len(values)))])

    @staticmethod
    def perturb_value(pc: vz.ParameterConfig, value: Any, rng: np.random.Generator, scale: float):
        if pc.type in (vz.ParameterType.DOUBLE, vz.ParameterType.INTEGER):
            lo, hi = pc.bounds
            if lo == hi:
                return _py(lo)
            log = pc.type == vz.ParameterType.DOUBLE and _is_log(pc)
            f = math.log if log else float
            g = math.exp if log else float
            unit = (f(value) - f(lo)) / (f(hi) - f(lo))
            unit = min(max(unit + rng.normal(0.0, scale), 0.0), 1.0)
            v = g(f(lo) + unit * (f(hi) - f(lo)))
            v = min(max(v, lo), hi)
            if pc.type == vz.ParameterType.INTEGER:
                v = int(round(v))
                if v == value:
                    v = int(min(max(value + rng.choice([-1, 1]), lo), hi))
                return v
            return float(v)
        values = [_py(v) for v in pc.feasible_values]
        if len(values) == 1:
            return values[0]
        if pc.type == vz.ParameterType.DISCRETE and value in values:
            i = values.index(value)
            step = int(round(rng.normal(0.0, max(scale * len(values), 1.0)))) or int(rng.choice([-1, 1]))
            return values[min(max(i + step, 0), len(values) - 1)]
        others = [v for v in values if v != value]
        return others[int(rng.integers(len(others)))]

    # -- points
    def center(self) -> dict[str, float | int | str] | None:
        """The middle of a flat space (None for a conditional one), as Vizier's GP bandit
        seeds: numeric parameters at the midpoint of their (log) scale, discrete ones at the
        feasible value nearest it, categorical ones at their first value."""
        if self.is_conditional:
            return None
        point: dict[str, float | int | str] = {}
        for name, (pc,) in self.configs.items():
            if pc.type == vz.ParameterType.CATEGORICAL:
                point[name] = _py(pc.feasible_values[0])
                continue
            lo, hi = (float(b) for b in pc.bounds)
            mid = math.sqrt(lo * hi) if pc.type == vz.ParameterType.DOUBLE and _is_log(pc) else (lo + hi) / 2
            if pc.type == vz.ParameterType.DOUBLE:
                point[name] = float(mid)
            elif pc.type == vz.ParameterType.INTEGER:
                point[name] = int(round(mid))
            else:
                point[name] = _py(min(pc.feasible_values, key=lambda v: abs(float(v) - mid)))
        return point

    def sample(
        self,
        rng: np.random.Generator,
        base: Mapping[str, Any] | None = None,
        mutate: frozenset[str] = frozenset(),
        scale: float = 0.1,
    ) -> dict[str, float | int | str]:
        """A random point; with `base`, a copy of it whose `mutate` names are perturbed
        (children of a changed parent keep their base values where still valid)."""
        out: dict[str, float | int | str] = {}
        queue = list(self.search_space.parameters)
        while queue:
            pc = queue.pop(0)
            name = pc.name
            if name in out and pc.contains(out[name]):
                value = out[name]
            elif base is not None and name in base and pc.contains(base[name]):
                value = _py(base[name])
                if name in mutate:
                    value = self.perturb_value(pc, value, rng, scale)
            else:
                value = self.random_value(pc, rng)
            out[name] = value
            queue = self.children(pc, value) + queue
        return out

    def contains(self, params: Mapping[str, Any]) -> bool:
        if not self.is_conditional:
            return self.search_space.contains(vz.ParameterDict(params))
        seen: set[str] = set()
        queue = list(self.search_space.parameters)
        while queue:
            pc = queue.pop(0)
            if pc.name not in params or not pc.contains(params[pc.name]):
                return False
            seen.add(pc.name)
            queue = self.children(pc, params[pc.name]) + queue
        return seen == set(params)

    def enumerate(self, limit: int) -> list[dict[str, Any]] | None:
        """Every point of a finite space, or None if it is infinite or has > limit points."""
        if self.has_continuous:
            return None
        points: list[dict[str, Any]] = []

        def values_of(pc):
            if pc.type == vz.ParameterType.DOUBLE:
                return [float(pc.bounds[0])]
            return [_py(v) for v in pc.feasible_values]

        def walk(queue, partial) -> bool:
            if not queue:
                points.append(dict(partial))
                return len(points) <= limit
            pc, rest = queue[0], queue[1:]
            if pc.name in partial and pc.contains(partial[pc.name]):
                return walk(self.children(pc, partial[pc.name]) + rest, partial)
            previous = partial.get(pc.name, _MISSING)
            for value in values_of(pc):
                partial[pc.name] = value
                if not walk(self.children(pc, value) + rest, partial):
                    return False
            if previous is _MISSING:
                del partial[pc.name]
            else:
                partial[pc.name] = previous
            return True

        if not walk(list(self.search_space.parameters), {}):
            return None
        return points

    # -- distances (for diverse batches)
    def _build_columns(self):
        columns = []
        for name, pcs in self.configs.items():
            numeric = all(pc.type in (vz.ParameterType.DOUBLE, vz.ParameterType.INTEGER, vz.ParameterType.DISCRETE) for pc in pcs)
            if numeric:
                lows, highs = [], []
                for pc in pcs:
                    vals = pc.bounds if pc.type != vz.ParameterType.DISCRETE else (min(pc.feasible_values), max(pc.feasible_values))
                    lows.append(float(vals[0]))
                    highs.append(float(vals[1]))
                lo, hi = min(lows), max(highs)
                log = all(pc.scale_type == vz.ScaleType.LOG for pc in pcs) and lo > 0
                columns.append((name, "num", lo, hi, log))
            else:
                columns.append((name, "cat", None, None, False))
        return columns

    def features(self, points: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(values, is_categorical): numeric columns scaled to [0, 1], categorical ones as
        category ids; nan where a parameter is absent (inactive)."""
        x = np.full((len(points), len(self._columns)), np.nan)
        is_cat = np.array([kind == "cat" for _, kind, *_ in self._columns], dtype=bool)
        ids: list[dict[Any, int]] = [{} for _ in self._columns]
        for i, p in enumerate(points):
            for j, (name, kind, lo, hi, log) in enumerate(self._columns):
                if name not in p:
                    continue
                v = p[name]
                if kind == "cat":
                    x[i, j] = ids[j].setdefault(str(v), len(ids[j]))
                elif hi == lo:
                    x[i, j] = 0.0
                elif log:
                    x[i, j] = (math.log(max(float(v), lo)) - math.log(lo)) / (math.log(hi) - math.log(lo))
                else:
                    x[i, j] = (float(v) - lo) / (hi - lo)
        return x, is_cat


def _distances(x: np.ndarray, is_cat: np.ndarray, i: int) -> np.ndarray:
    """RMS per-parameter distance of every row of x to row i (in [0, 1])."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    a = x[i][None, :]
    missing_a, missing_b = np.isnan(a), np.isnan(x)
    diff = np.where(is_cat[None, :], (a != x).astype(float), np.abs(a - x))
    diff = np.where(missing_a & missing_b, 0.0, np.where(missing_a | missing_b, 1.0, diff))
    return np.sqrt(np.mean(diff**2, axis=1))


def trust_radius(num_trials: int, num_parameters: int) -> float:
    """Radius of the trust region around completed trials, Vizier GP bandit's rule:
    0.2 + 0.3 * n / (5 (d + 1)) for n trials and d parameters (0.5 after 5 (d + 1) trials,
    and on), infinite before the first trial."""
    if num_trials <= 0:
        return math.inf
    return 0.2 + 0.3 * num_trials / (5.0 * (num_parameters + 1))


def _linf_to_nearest(x: np.ndarray, is_cat: np.ndarray, trusted: np.ndarray) -> np.ndarray:
    """L-inf distance of every row of x to its nearest row of `trusted`, over numeric
    columns; a column absent (nan) on either side does not count."""
    numeric = ~is_cat
    if len(trusted) == 0:
        return np.full(len(x), np.inf)
    if not numeric.any() or len(x) == 0:
        return np.zeros(len(x))
    diff = np.abs(x[:, None, numeric] - trusted[None, :, numeric])  # (N, T, D)
    diff = np.where(np.isnan(diff), 0.0, diff)
    return diff.max(axis=2).min(axis=1)


# --------------------------------------------------------------------- study key
def default_cache_root() -> Path:
    """Where fine-tuned weights live by default: $VIZIER_OMNIPRED_CACHE or ~/.cache/vizier-omnipred."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "vizier-omnipred"


def _space_json(configs: Sequence[vz.ParameterConfig]) -> list:
    out = []
    for pc in configs:
        entry: dict[str, Any] = {"name": pc.name, "type": pc.type.name, "scale": pc.scale_type.name if pc.scale_type else None}
        if pc.type in (vz.ParameterType.DOUBLE, vz.ParameterType.INTEGER):
            entry["bounds"] = [_py(b) for b in pc.bounds]
        else:
            entry["values"] = [_py(v) for v in pc.feasible_values]
        children = sorted(((str(k), _space_json(sub.parameters)) for k, sub in pc.subspaces() if sub.parameters))
        if children:
            entry["children"] = children
        out.append(entry)
    return out


def problem_key(problem: vz.ProblemStatement) -> str:
    """A deterministic 16-hex-digit key of a problem, blind to designer state.

    It covers the search space (with bounds and scaling), the metrics and the problem
    metadata, except the namespaces where Vizier's policies and this package keep their
    state ('designer_policy_v0', 'omnipred'), which change on every suggest.
    """
    metadata = []
    for ns, key, value in problem.metadata.all_items():
        if len(ns) and ns[0] in _EXCLUDED_FROM_KEY:
            continue
        if not isinstance(value, str):
            serialize = getattr(value, "SerializeToString", None)
            value = hashlib.sha256(serialize(deterministic=True)).hexdigest() if serialize else repr(value)
        metadata.append([ns.encode(), key, value])
    canonical = {
        "space": _space_json(problem.search_space.parameters),
        "metrics": [
            [m.name, m.goal.name, _finite_or_none(m.safety_threshold)] for m in problem.metric_information
        ],
        "metadata": sorted(metadata),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------- regressors
_FALLBACK_BASE: dict[str, OmniPredRegressor] = {}


def _copy_regressor(
    regressor: OmniPredRegressor, *, device: str, num_samples: int, seed: int
) -> OmniPredRegressor:
    """A regressor with its own copy of the weights (tokenizers are shared: immutable)."""
    ckpt = regressor.checkpoint
    own = attrs.evolve(ckpt, model=copy.deepcopy(ckpt.model), training=copy.deepcopy(ckpt.training))
    return OmniPredRegressor(
        own, device=device, num_samples=num_samples, temperature=regressor.temperature, seed=seed,
        pretrained=regressor.pretrained,
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


# ----------------------------------------------------------------------- records
@attrs.frozen
class _Record:
    """A completed trial as the designer keeps it (enough to refit and to dedupe)."""

    params: dict[str, float | int | str]
    value: float | None  # finite metric value, None if infeasible or missing
    infeasible: bool

    @property
    def usable(self) -> bool:
        return self.infeasible or self.value is not None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"p": self.params}
        if self.infeasible:
            d["infeasible"] = True
        elif self.value is not None:
            d["y"] = self.value
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "_Record":
        params = d["p"]
        if not isinstance(params, dict):
            raise TypeError("trial parameters must be a JSON object")
        value = d.get("y")
        return cls(params={k: _py(v) for k, v in params.items()}, value=None if value is None else float(value),
                   infeasible=bool(d.get("infeasible", False)))

    def to_trial(self, metric_name: str) -> vz.Trial:
        trial = vz.Trial(parameters=self.params)
        if self.infeasible:
            trial.complete(vz.Measurement(), infeasibility_reason="infeasible")
        elif self.value is not None:
            trial.complete(vz.Measurement(metrics={metric_name: self.value}))
        else:
            trial.complete(vz.Measurement())
        return trial


@attrs.define
class _Candidate:
    params: dict[str, Any]
    key: str
    score: float = -math.inf
    median: float = math.nan
    outside: float = 0.0  # L-inf distance beyond the trust radius (0: inside)

    @property
    def search_score(self) -> float:
        """The score the search optimises: outside the trust region, below every score
        inside it, less the further out (finite, and within Eagle's float32)."""
        return self.score if self.outside <= 0.0 else -1e20 * (1.0 + self.outside)


# ---------------------------------------------------------------------- designer
class OmniPredDesigner(vza.PartiallySerializableDesigner, vza.Predictor):
    """Suggests trials by fine-tuning a T5 regressor on the study and maximising an
    acquisition over its sampled predictions (see the module docstring for the loop).

    Args:
      problem: the study; single-objective, or pass `metric_name`.
      seed: makes suggestions reproducible (None: random, recorded in `dump`).
      checkpoint: a checkpoint directory to start from; None = the package's shipped
        checkpoint `vizier_omnipred.regressor.SHIPPED_CHECKPOINT`, or, if that is not
        there, an untrained 'small' model (a warning is logged). Loaded here, so a
        damaged or incompatible checkpoint raises `CheckpointError` at construction.
      regressor: an already loaded `OmniPredRegressor` to start from instead; the
        designer fine-tunes its own deep copy (studies never share weights).
      acquisition: 'ucb' (default), 'ei', 'pi', 'thompson', or a callable following
        `vizier_omnipred.acquisitions.Acquisition`.
      num_samples: y samples per candidate.
      num_seed_trials: quasi-random trials before the model is used (None: see module).
      num_candidates: candidates scored per suggest call (the optimiser's budget).
      device: torch device for the model.
      work_dir: where this study's fine-tuned weights are saved by `dump()`; None =
        `$VIZIER_OMNIPRED_CACHE/<study key>` (default root ~/.cache/vizier-omnipred), the
        key being `problem_key(problem)` plus a random token created at the first dump.
      prior_studies: `(problem, trials)` pairs or corpus records fine-tuned on together
        with the study (transfer); they are part of every fit.
      finetune_config: the first (cold) fit's recipe; warm refits use a quarter of its
        epochs (`RefitSchedule`).
      metric_name: the metric to optimise in a multi-objective problem.

    Tuning beyond the constructor: `designer.search` (`SearchConfig`: strategy, batch
    size, diversity radius) and `designer.refit` (`RefitSchedule`) are plain attributes
    holding frozen configs; replace them with `attrs.evolve(...)`.
    """

    def __init__(
        self,
        problem: vz.ProblemStatement,
        *,
        seed: int | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        regressor: OmniPredRegressor | None = None,
        acquisition: str | Acquisition = "ucb",
        num_samples: int = 64,
        num_seed_trials: int | None = None,
        num_candidates: int = 256,
        device: str = "cpu",
        work_dir: str | os.PathLike[str] | None = None,
        prior_studies: Sequence[Any] = (),
        finetune_config: FinetuneConfig | None = None,
        metric_name: str | None = None,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if num_seed_trials is not None and num_seed_trials < 0:
            raise ValueError(f"num_seed_trials must be >= 0, got {num_seed_trials}")
        self._problem = copy.deepcopy(problem)
        self._seed = int(seed) if seed is not None else secrets.randbits(31)
        self._acquisition = get_acquisition(acquisition)
        self._num_samples = int(num_samples)
        self.search = SearchConfig(num_evaluations=int(num_candidates), batch_size=min(64, int(num_candidates)))
        self.refit = RefitSchedule(cold=finetune_config or FinetuneConfig())
        self._device = device
        self._work_dir_arg = Path(work_dir).expanduser() if work_dir is not None else None
        self._prior_studies = tuple(prior_studies)
        self._regressor = _base_regressor(
            checkpoint, regressor, device=device, num_samples=self._num_samples, seed=self._seed
        )
        self._metric = self._regressor.codec.objective_metric(self._problem, metric_name)
        self._space = _Space(self._problem.search_space)
        # Keys are the codec's text of the parameters alone (fixed metric, no metadata):
        # the same point always gets the same key, whatever the study text says.
        self._key_problem = vz.ProblemStatement(
            search_space=self._problem.search_space,
            metric_information=[vz.MetricInformation("y", goal=vz.ObjectiveMetricGoal.MAXIMIZE)],
        )
        self._problem_key = problem_key(self._problem)
        if num_seed_trials is None:
            num_seed_trials = default_num_seed_trials(self._problem)
        self._num_seed_trials = int(num_seed_trials)
        self._seed_designer = self._make_seed_designer(self._seed)

        # Study state (dumped).
        self._token: str | None = None
        self._history: dict[str, _Record] = {}
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

    # ------------------------------------------------------------------ accessors
    @property
    def regressor(self) -> OmniPredRegressor:
        """The designer's own (fine-tuned) regressor."""
        return self._regressor

    @property
    def problem(self) -> vz.ProblemStatement:
        return self._problem

    @property
    def metric(self) -> vz.MetricInformation:
        return self._metric

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
    def completed_trials(self) -> list[vz.Trial]:
        """The completed trials the designer knows (as it would refit on them)."""
        return [r.to_trial(self._metric.name) for r in self._history.values()]

    # ------------------------------------------------------------------- helpers
    def _make_seed_designer(self, seed: int):
        if self._space.is_conditional or not self._space.names:
            return None
        from vizier._src.algorithms.designers import quasi_random

        try:
            return quasi_random.QuasiRandomDesigner(self._problem.search_space, seed=seed % (2**31))
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

    def _best_value(self) -> float | None:
        values = [r.value for r in self._history.values() if not r.infeasible and r.value is not None]
        if not values:
            return None
        return min(values) if self._metric.goal == vz.ObjectiveMetricGoal.MINIMIZE else max(values)

    def _top_records(self, k: int) -> list[_Record]:
        feasible = [r for r in self._history.values() if not r.infeasible and r.value is not None]
        reverse = self._metric.goal != vz.ObjectiveMetricGoal.MINIMIZE
        feasible.sort(key=lambda r: r.value, reverse=reverse)
        return [r for r in feasible if self._space.contains(r.params)][:k]

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
            self._regressor.set_problem(self._problem, metric_name=self._metric.name)
            return
        warm = self._fitted_ids is not None
        config = self.refit.warm if warm else self.refit.cold
        trials = [self._history[i].to_trial(self._metric.name) for i in sorted(usable, key=_id_order)]
        report = self._regressor.fit(
            self._problem, trials, metric_name=self._metric.name, prior_studies=self._prior_studies, config=config
        )
        _log.info(
            "OmniPredDesigner: %s fit #%d on %d trials: %d epochs, %.1f s",
            "warm" if warm else "cold", self._num_fits + 1, len(trials), report.epochs, report.seconds,
        )
        self._fitted_ids = frozenset(usable)
        self._num_fits += 1
        self._weights_dirty = True
        self.last_fit = report

    # ---------------------------------------------------------------- Designer API
    def update(self, completed: vza.CompletedTrials, all_active: vza.ActiveTrials) -> None:
        """Adds completed trials to the history (kept across dump/load) and notes the
        active ones (not suggested again)."""
        for trial in completed.trials:
            params = _params_dict(trial.parameters)
            if self._keys([params])[0] is None:
                _log.warning("OmniPredDesigner: trial %s does not fit the search space; ignored: %s", trial.id, params)
                continue
            if trial.id:
                trial_id = str(trial.id)
            else:
                self._anonymous += 1
                trial_id = f"anon-{self._anonymous}"
            value, infeasible = None, bool(trial.infeasible)
            if not infeasible and trial.final_measurement is not None:
                metric = trial.final_measurement.metrics.get(self._metric.name)
                if metric is not None and math.isfinite(float(metric.value)):
                    value = float(metric.value)
            self._history[trial_id] = _Record(params=params, value=value, infeasible=infeasible)
        self._active_keys = {
            k for k in self._keys([_params_dict(t.parameters) for t in all_active.trials]) if k
        }

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
                proposals = [_params_dict(s.parameters) for s in self._seed_designer.suggest(n - len(points))]
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
        best = self._best_value()
        scored: dict[str, _Candidate] = {}
        screening = min(self.search.screening_samples or self._num_samples, self._num_samples)
        beyond_region = self._trust_region()

        def evaluate(items: Sequence[tuple[str, dict[str, Any]]], num_samples: int) -> list[_Candidate]:
            out: list[_Candidate] = []
            step = self.search.batch_size * 4
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                samples = self._regressor.sample(
                    [vz.TrialSuggestion(parameters=p) for _, p in chunk], num_samples, seed=int(rng.integers(2**31))
                )
                values = np.asarray(
                    self._acquisition(samples, goal=self._metric.goal, best=best, rng=rng), dtype=float
                ).reshape(-1)
                if values.shape != (len(chunk),):
                    raise ValueError(
                        f"acquisition returned shape {values.shape} for {len(chunk)} candidates; expected ({len(chunk)},)"
                    )
                values = np.where(np.isnan(values), -np.inf, values)
                medians = samples.quantiles([0.5])[0]
                outside = beyond_region([p for _, p in chunk])
                out += [_Candidate(params=p, key=k, score=float(v), median=float(m), outside=float(o))
                        for (k, p), v, m, o in zip(chunk, values, medians, outside)]
            return out

        def score(points: Sequence[Mapping[str, Any]]) -> np.ndarray:
            keys = self._keys(points)
            new: dict[str, dict[str, Any]] = {}
            for p, k in zip(points, keys):
                if k is not None and k not in scored and k not in new:
                    new[k] = dict(p)
            for c in evaluate(list(new.items()), screening):
                scored[c.key] = c
            return np.array([scored[k].search_score if k is not None else -np.inf for k in keys])

        budget = self.search.num_evaluations
        finite = self._space.enumerate(budget) if not self._space.has_continuous else None
        if finite is not None:
            # Small finite space: score every untried point.
            fresh = [p for p, k in zip(finite, self._keys(finite)) if k is not None and k not in excluded]
            score(fresh)
            self.last_search = "enumerate"
        else:
            strategy = self.search.strategy
            if strategy == "auto":
                strategy = "pool" if self._space.is_conditional else "eagle"
            if strategy == "eagle" and not self._eagle_search(score, budget, rng):
                strategy = "pool"
            if strategy == "pool":
                self._pool_search(score, budget, rng)
            self.last_search = strategy
            if sum(1 for k in scored if k not in excluded) < n:
                # The search kept proposing tried points: top up with new random ones.
                extra = self._random_points(n, excluded | set(scored), rng)
                score([p for p, _ in extra])
        eligible = [c for k, c in scored.items() if k not in excluded and self._space.contains(c.params)]
        # Inside the trust region first; outside points only fill a batch that the
        # region cannot, nearest to it first (their search score falls with distance).
        inside = [c for c in eligible if c.outside <= 0.0]
        outside = [attrs.evolve(c, score=c.search_score) for c in eligible if c.outside > 0.0]
        if screening < self._num_samples and inside:
            # Second stage: the best screened candidates, scored again with all samples.
            inside.sort(key=lambda c: c.score, reverse=True)
            finalists = inside[: max(self.search.finalists, 2 * n)]
            inside = evaluate([(c.key, c.params) for c in finalists], self._num_samples)
        picks = self._select(inside, n, rng)
        if len(picks) < n:
            picks += self._select(outside, n - len(picks), rng)
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
            out.append(s)
        return out

    def _trust_region(self) -> Callable[[Sequence[Mapping[str, Any]]], np.ndarray]:
        """Distance beyond the trust radius of each point (0 inside; all 0 when the
        region is off or covers the space). Every completed trial is trusted, infeasible
        ones included: the model was told what happened there."""
        trusted = [r.params for r in self._history.values() if self._space.contains(r.params)]
        radius = trust_radius(len(trusted), len(self._space.names))
        if not self.search.trust_region or radius >= 1.0:
            return lambda points: np.zeros(len(points))

        # Numeric columns are scaled the same way in every call (categorical ids are not,
        # but they do not count), so the trusted points' features are computed once.
        trusted_x, is_cat = self._space.features(trusted)

        def beyond(points: Sequence[Mapping[str, Any]]) -> np.ndarray:
            x, _ = self._space.features(points)
            return np.maximum(0.0, _linf_to_nearest(x, is_cat, trusted_x) - radius)

        return beyond

    def _eagle_search(self, score, budget: int, rng: np.random.Generator) -> bool:
        """Vizier's Eagle strategy on the acquisition, its pool primed with the best
        trials. Returns False if Eagle refuses the space."""
        from vizier._src.algorithms.designers.eagle_strategy import eagle_strategy
        from vizier._src.algorithms.optimizers import designer_optimizer

        acq_problem = vz.ProblemStatement(
            search_space=self._problem.search_space,
            metric_information=[vz.MetricInformation("acquisition", goal=vz.ObjectiveMetricGoal.MAXIMIZE)],
        )
        try:
            eagle = eagle_strategy.EagleStrategyDesigner(acq_problem, seed=int(rng.integers(2**31)))
        except ValueError as e:
            _log.info("Eagle strategy refused the search space (%s); using the pool search", e)
            return False

        def as_measurement(v: float) -> vz.Measurement:
            return vz.Measurement(metrics={"acquisition": _for_eagle(np.array([v]))[0]})

        top = self._top_records(min(5, budget))
        if top:
            values = score([r.params for r in top])
            primed = []
            for r, v in zip(top, values):
                t = vz.Trial(parameters=r.params)
                t.complete(as_measurement(float(v)))
                primed.append(t)
            eagle.update(vza.CompletedTrials(primed), vza.ActiveTrials())
            budget -= len(top)
        if budget <= 0:
            return True
        batch = min(self.search.batch_size, budget)
        optimizer = designer_optimizer.DesignerAsOptimizer(
            lambda _problem, **_: eagle, batch_size=batch, num_evaluations=budget
        )

        def score_fn(trials: Sequence[vz.Trial]) -> dict[str, np.ndarray]:
            values = score([_params_dict(t.parameters) for t in trials])
            return {"acquisition": _for_eagle(values)[:, None]}

        optimizer.optimize(score_fn, acq_problem, count=1)
        return True

    def _pool_search(self, score, budget: int, rng: np.random.Generator) -> None:
        """Random points + mutations of the best trials, then mutations of the best
        candidates (works on any space, conditional ones included)."""
        scale = self.search.mutation_scale
        names = self._space.names

        def mutants(parents: Sequence[Mapping[str, Any]], k: int, scale: float) -> list[dict[str, Any]]:
            out = []
            if not parents or not names:
                return out
            for _ in range(k):
                parent = parents[int(rng.integers(len(parents)))]
                chosen = {names[int(rng.integers(len(names)))]}
                chosen |= {m for m in names if rng.random() < 1.0 / len(names)}
                out.append(self._space.sample(rng, base=parent, mutate=frozenset(chosen), scale=scale))
            return out

        # Round 1: random points (+ a quarter of the budget around the best trials);
        # round 2: the rest of the budget around round 1's best candidates.
        top = [r.params for r in self._top_records(5)]
        if top:
            n_mut = budget // 4
            first = [self._space.sample(rng) for _ in range(budget - 2 * n_mut)] + mutants(top, n_mut, scale)
        else:
            first = [self._space.sample(rng) for _ in range((budget + 1) // 2)]
        values = score(first)
        remaining = budget - len(first)
        if remaining <= 0:
            return
        order = np.argsort(-values, kind="stable")[:8]
        best_candidates = [first[i] for i in order if np.isfinite(values[i])] or top or [first[int(order[0])]]
        score(mutants(best_candidates, remaining, scale / 2))

    def _select(self, candidates: list[_Candidate], n: int, rng: np.random.Generator) -> list[_Candidate]:
        """Best first, then greedily by rank-score x min(1, distance to picks / radius)."""
        if not candidates:
            return []
        scores = np.array([c.score for c in candidates])
        # Random tie-break: equal scores (e.g. EI == 0) are ordered at random.
        order = np.lexsort((rng.random(len(candidates)), -scores))
        candidates = [candidates[i] for i in order]
        if n == 1 or len(candidates) <= 1:
            return candidates[:n]
        utility = 1.0 - np.arange(len(candidates)) / len(candidates)  # rank-scores in (0, 1]
        x, is_cat = self._space.features([c.params for c in candidates])
        nearest = np.full(len(candidates), np.inf)
        chosen: list[int] = []
        radius = max(self.search.diversity_radius, 1e-12)
        available = np.ones(len(candidates), dtype=bool)
        while len(chosen) < min(n, len(candidates)):
            effective = np.where(available, utility * np.minimum(1.0, nearest / radius), -np.inf)
            i = int(np.argmax(effective))
            chosen.append(i)
            available[i] = False
            nearest = np.minimum(nearest, _distances(x, is_cat, i))
        return [candidates[i] for i in chosen]

    # --------------------------------------------------------------- Predictor API
    def predict(
        self, trials: Sequence[vz.TrialSuggestion], rng: Any = None, num_samples: int | None = None
    ) -> vza.Prediction:
        """The fine-tuned regressor's prediction (refits first if trials arrived)."""
        self._maybe_fit()
        if isinstance(rng, np.random.Generator):
            rng = int(rng.integers(2**31))
        return self._regressor.predict(trials, rng=rng, num_samples=num_samples)

    # ------------------------------------------------------------ serialization
    def dump(self) -> vz.Metadata:
        """State as metadata (namespace 'omnipred'); saves fine-tuned weights to work_dir."""
        weights = None
        if self._fitted_ids is not None:
            path = self.work_dir / WEIGHTS_DIR
            if self._weights_dirty or self._weights_fingerprint is None or not (path / model_lib.WEIGHTS_FILE).is_file():
                self._regressor.save(path)
                self._weights_fingerprint = _file_fingerprint(path / model_lib.WEIGHTS_FILE)
                self._weights_dirty = False
            weights = {
                "path": str(path.resolve()),
                "fingerprint": self._weights_fingerprint,
                "trials": sorted(self._fitted_ids, key=_id_order),
                "fits": self._num_fits,
            }
        elif self._token is None and self._work_dir_arg is None:
            self._token = secrets.token_hex(4)
        state = {
            "version": STATE_VERSION,
            "problem_key": self._problem_key,
            "token": self._token,
            "seed": self._seed,
            "num_suggest_calls": self._num_suggest_calls,
            "num_seed_suggested": self._num_seed_suggested,
            "anonymous": self._anonymous,
            "suggested": self._suggested,
            "trials": {i: r.to_json() for i, r in self._history.items()},
            "weights": weights,
        }
        md = vz.Metadata()
        ns = md.ns(STATE_NS)
        ns["version"] = str(STATE_VERSION)
        ns["state"] = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
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
        version = ns.get("version")
        if version is None:
            raise serializable.HarmlessDecodeError(
                f"no OmniPredDesigner state in the metadata (namespace {STATE_NS!r} has no 'version')"
            )
        if version != str(STATE_VERSION):
            raise StateVersionError(
                f"OmniPredDesigner state version {version!r} in the metadata, but this vizier-omnipred reads "
                f"version {STATE_VERSION}; the state was written by another version of the package. Start a "
                "new designer on the study's trials (Vizier's designer policies do this automatically)."
            )
        try:
            state = json.loads(ns["state"])
            if state.get("version") != STATE_VERSION:
                raise StateVersionError(
                    f"OmniPredDesigner state says version {state.get('version')!r}, this code reads {STATE_VERSION}"
                )
            if state["problem_key"] != self._problem_key:
                raise serializable.HarmlessDecodeError(
                    "OmniPredDesigner state belongs to another problem (search space, metrics or metadata differ)"
                )
            history = {str(i): _Record.from_json(d) for i, d in state["trials"].items()}
            suggested = [str(k) for k in state["suggested"]]
            seed = int(state["seed"])
            token = state.get("token")
            counters = (int(state["num_suggest_calls"]), int(state["num_seed_suggested"]), int(state.get("anonymous", 0)))
            weights = state.get("weights")
            seed_designer = self._make_seed_designer(seed)
            if seed_designer is not None:
                seed_designer.load(ns.ns("seed_designer"))
        except serializable.DecodeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise serializable.HarmlessDecodeError(f"damaged OmniPredDesigner state: {e!r}") from e

        regressor, fitted_ids, fingerprint = None, None, None
        if weights:
            path = Path(weights["path"])
            weights_file = path / model_lib.WEIGHTS_FILE
            problem = None
            # A server killed between the two renames of a weights save left the previous
            # copy aside; put it back (the fingerprint below decides whether it is the one).
            model_lib.restore_interrupted_save(path)
            if not weights_file.is_file():
                problem = f"the weights directory {path} is missing"
            elif _file_fingerprint(weights_file) != weights.get("fingerprint"):
                problem = f"the weights in {path} do not match the recorded fingerprint (overwritten?)"
            else:
                try:
                    regressor = OmniPredRegressor.from_pretrained(
                        path, device=self._device, num_samples=self._num_samples, seed=seed
                    )
                    fitted_ids = frozenset(str(i) for i in weights["trials"])
                    fingerprint = weights["fingerprint"]
                except model_lib.CheckpointError as e:
                    problem = f"the weights in {path} cannot be loaded ({e})"
            if problem is not None:
                _log.warning(
                    "OmniPredDesigner: %s; the next suggest refits from the base checkpoint on the %d stored trials.",
                    problem, len(history),
                )

        # Everything decoded: commit.
        self._history = history
        self._suggested = suggested
        self._seed = seed
        self._token = token
        self._num_suggest_calls, self._num_seed_suggested, self._anonymous = counters
        self._seed_designer = seed_designer
        self._active_keys = set()
        if regressor is not None:
            self._regressor = regressor
            self._regressor.set_problem(self._problem, metric_name=self._metric.name)
            self._fitted_ids = fitted_ids
            self._num_fits = int(weights.get("fits", 1))
            self._weights_fingerprint = fingerprint
            self._weights_dirty = False
        else:
            self._fitted_ids = None
            self._num_fits = 0
            self._weights_fingerprint = None
            self._weights_dirty = False

    @classmethod
    def factory(cls, **kwargs):
        """A Vizier designer factory: `factory(problem, seed=...)` -> OmniPredDesigner."""

        def make(problem: vz.ProblemStatement, seed: int | None = None, **more) -> "OmniPredDesigner":
            return cls(problem, seed=seed, **{**kwargs, **more})

        return make


def _for_eagle(scores: np.ndarray) -> np.ndarray:
    """Acquisition scores as Eagle can compare them: its converters work in float32, so
    the acquisitions' infeasible floor (about -1e200) and -inf are mapped, in the same
    order, to about -1e30 .. -3e30."""
    scores = np.asarray(scores, dtype=float)
    floor = scores < INFEASIBLE_FLOOR / 2
    with np.errstate(over="ignore", invalid="ignore"):
        mapped = np.where(floor, scores * (1e30 / -INFEASIBLE_FLOOR), scores)
    return np.where(np.isfinite(mapped), mapped, -3e30)


def _id_order(trial_id: str) -> tuple[int, Any]:
    return (0, int(trial_id)) if trial_id.isdigit() else (1, trial_id)
