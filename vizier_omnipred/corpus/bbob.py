"""Synthetic studies from Vizier's BBOB functions, unlimited and reproducible by seed.

OmniPred pretrains on many studies; BBOB functions with random transforms give as many as
wanted. Each study hides one BBOB function behind what a real study looks like: parameters
with realistic names, types (DOUBLE, some log-scaled; INTEGER; DISCRETE; at most one
CATEGORICAL) and per-study bounds, a shifted optimum, an objective rescaled over several
orders of magnitude with an offset, a random goal, and metadata text that names the function
family (so a model can learn to use text). Studies are independent of each other: study `i`
of seed `s` is the same whatever `num_studies` is.

The mapping from a trial to the function's input: each parameter value goes to u in [0, 1]
along its (log) scale, possibly mirrored, then z = 10 u - 5 - shift, so the function's own
domain [-5, 5] spans the bounds and its optimum (near z = 0 for most functions) lands inside
them; a categorical parameter puts each category at its own random z. For MAXIMIZE studies
y is negated, so the best trial is still the function's optimum.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Callable

import attrs
import numpy as np
from scipy.stats import qmc
from vizier import pyvizier as vz
from vizier._src.benchmarks.experimenters.synthetic import bbob
from vizier.benchmarks.experimenters import Experimenter, NumpyExperimenter, ShiftingExperimenter

from vizier_omnipred.corpus.format import StudyRecord

# Every function in Vizier's bbob module with the (arr, seed) signature: the 21 BBOB
# functions it implements plus its three "BBOB-like" exploration functions.
BBOB_FUNCTIONS: tuple[str, ...] = (
    "Sphere",
    "Ellipsoidal",
    "Rastrigin",
    "BuecheRastrigin",
    "LinearSlope",
    "AttractiveSector",
    "StepEllipsoidal",
    "RosenbrockRotated",
    "Discus",
    "BentCigar",
    "SharpRidge",
    "DifferentPowers",
    "Weierstrass",
    "SchaffersF7",
    "SchaffersF7IllConditioned",
    "GriewankRosenbrock",
    "Schwefel",
    "Katsuura",
    "Lunacek",
    "Gallagher101Me",
    "Gallagher21Me",
    "NegativeSphere",
    "NegativeMinDifference",
    "FonsecaFleming",
)

# In 1-D these are constant, fail (division by zero) or return complex numbers.
_MIN_DIM = {
    "GriewankRosenbrock": 2,
    "Lunacek": 2,
    "RosenbrockRotated": 2,
    "SchaffersF7": 2,
    "SchaffersF7IllConditioned": 2,
    "NegativeMinDifference": 2,
}

# The BBOB suite's own grouping, used as study text.
_FAMILY = {
    **dict.fromkeys(
        ["Sphere", "Ellipsoidal", "Rastrigin", "BuecheRastrigin", "LinearSlope"], "separable"
    ),
    **dict.fromkeys(
        ["AttractiveSector", "StepEllipsoidal", "RosenbrockRotated"], "moderately conditioned"
    ),
    **dict.fromkeys(
        ["Discus", "BentCigar", "SharpRidge", "DifferentPowers"], "ill-conditioned unimodal"
    ),
    **dict.fromkeys(
        ["Weierstrass", "SchaffersF7", "SchaffersF7IllConditioned", "GriewankRosenbrock"],
        "multimodal with global structure",
    ),
    **dict.fromkeys(
        ["Schwefel", "Katsuura", "Lunacek", "Gallagher101Me", "Gallagher21Me"],
        "multimodal with weak global structure",
    ),
    **dict.fromkeys(
        ["NegativeSphere", "NegativeMinDifference", "FonsecaFleming"], "exploration test"
    ),
}

_SEED_TAG_STUDIES = 0x0B0B
_SEED_TAG_TASK = 0x7A5C
_SEED_TAG_RELEVANCE = 0x5EA5
_BASE_TIME = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


# BBOB's rotations are dense d x d matrices made by a QR of a random one: at d = 100 each
# takes 80 kB and milliseconds, at d = 100,000 80 GB. Benchmarks stop at 40 dimensions.
MAX_DIMENSION = 100


def check_dimension(dim: int) -> None:
    """A ValueError for a dimension no BBOB task or synthetic study is built in."""
    if not 1 <= dim <= MAX_DIMENSION:
        raise ValueError(f"BBOB dimension must be in [1, {MAX_DIMENSION}], got {dim}")


def min_dimension(function_name: str) -> int:
    """The smallest dimension in which `function_name` is a proper (non-constant) function."""
    return _MIN_DIM.get(function_name, 1)


def bbob_function(function_name: str, *, rotation_seed: int = 0) -> Callable[[np.ndarray], float]:
    """Vizier's BBOB function by name, safe to call on any 1-D array (it is not mutated).

    `rotation_seed` picks the function's random rotations (0: none).
    """
    if function_name not in BBOB_FUNCTIONS:
        raise ValueError(f"unknown BBOB function {function_name!r}; one of {BBOB_FUNCTIONS}")
    fn = getattr(bbob, function_name)

    def evaluate(x: np.ndarray) -> float:
        # Several implementations reshape their argument in place: give them a copy.
        value = fn(np.array(x, dtype=np.float64).reshape(-1), seed=rotation_seed)
        if isinstance(value, complex) or np.iscomplexobj(value):
            return math.nan
        return float(value)

    evaluate.__name__ = function_name
    return evaluate


_rotation_lock = threading.Lock()
_rotation_depth = 0
_original_rotation = bbob._R  # noqa: SLF001


@contextlib.contextmanager
def _cached_rotations() -> Iterator[None]:
    """Memoises Vizier's BBOB rotation matrices while a study is evaluated.

    Vizier's functions rebuild their random rotations (a hash plus SciPy's
    special_ortho_group) on every call, about half of the generation time. `bbob._R` is a
    pure function of its arguments, so returning a cached copy changes no value; the module
    attribute is swapped only inside this context (reentrant, thread-safe) and restored after.
    """
    global _rotation_depth
    cache: dict[tuple, np.ndarray] = {}

    def cached(dim: int, seed: int, *moreseeds: object) -> np.ndarray:
        key = (dim, seed, moreseeds)
        matrix = cache.get(key)
        if matrix is None:
            if len(cache) > 256:
                cache.clear()
            matrix = cache[key] = _original_rotation(dim, seed, *moreseeds)
        return matrix.copy()

    with _rotation_lock:
        if _rotation_depth == 0:
            bbob._R = cached  # noqa: SLF001
        _rotation_depth += 1
    try:
        yield
    finally:
        with _rotation_lock:
            _rotation_depth -= 1
            if _rotation_depth == 0:
                bbob._R = _original_rotation  # noqa: SLF001


# --------------------------------------------------------------------------------------
# Parameter templates: realistic names with plausible types and ranges.


@attrs.frozen
class _Template:
    name: str
    kind: str  # 'double' | 'integer' | 'discrete' | 'categorical'
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    values: tuple = ()


_DOUBLES = (
    _Template("dropout", "double", 0.0, 0.9),
    _Template("momentum", "double", 0.0, 0.999),
    _Template("subsample", "double", 0.1, 1.0),
    _Template("colsample_bytree", "double", 0.1, 1.0),
    _Template("label_smoothing", "double", 0.0, 0.5),
    _Template("temperature", "double", 0.05, 5.0),
    _Template("warmup_fraction", "double", 0.0, 0.3),
    _Template("l1_ratio", "double", 0.0, 1.0),
    _Template("beta1", "double", 0.5, 0.999),
    _Template("mix_ratio", "double", 0.0, 1.0),
    _Template("threshold", "double", -1.0, 1.0),
    _Template("gamma", "double", 0.0, 10.0),
    _Template("lr", "double", 1e-6, 1.0, log=True),
    _Template("learning_rate", "double", 1e-6, 1.0, log=True),
    _Template("weight_decay", "double", 1e-8, 0.1, log=True),
    _Template("l2_reg", "double", 1e-8, 10.0, log=True),
    _Template("epsilon", "double", 1e-10, 1e-3, log=True),
    _Template("init_scale", "double", 1e-3, 10.0, log=True),
    _Template("C", "double", 1e-4, 1e4, log=True),
    _Template("reg_lambda", "double", 1e-6, 100.0, log=True),
    _Template("min_child_weight", "double", 1e-3, 100.0, log=True),
)
_INTEGERS = (
    _Template("num_layers", "integer", 1, 48),
    _Template("num_heads", "integer", 1, 32),
    _Template("max_depth", "integer", 1, 32),
    _Template("kernel_size", "integer", 1, 11),
    _Template("patience", "integer", 1, 50),
    _Template("num_threads", "integer", 1, 64),
    _Template("batch_size", "integer", 4, 4096, log=True),
    _Template("hidden_units", "integer", 8, 4096, log=True),
    _Template("n_estimators", "integer", 10, 5000, log=True),
    _Template("num_filters", "integer", 8, 1024, log=True),
    _Template("warmup_steps", "integer", 10, 100000, log=True),
    _Template("embedding_dim", "integer", 8, 2048, log=True),
    _Template("num_leaves", "integer", 2, 1024, log=True),
    _Template("cache_mb", "integer", 16, 65536, log=True),
)
_DISCRETES = (
    _Template("micro_batch", "discrete", values=(16, 32, 64, 128, 256, 512, 1024)),
    _Template("precision_bits", "discrete", values=(8, 16, 32, 64)),
    _Template("num_workers", "discrete", values=(1, 2, 4, 8, 16, 32)),
    _Template("beam_size", "discrete", values=(1, 2, 4, 8, 16)),
    _Template("keep_prob", "discrete", values=(0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
)
_CATEGORICALS = (
    _Template("optimizer", "categorical", values=("adam", "sgd", "rmsprop", "adagrad", "lamb")),
    _Template("activation", "categorical", values=("relu", "tanh", "gelu", "swish", "elu")),
    _Template("lr_schedule", "categorical", values=("cosine", "linear", "constant", "step")),
    _Template("booster", "categorical", values=("gbtree", "dart", "gblinear")),
    _Template("compression", "categorical", values=("none", "lz4", "zstd", "snappy")),
    _Template("norm_layer", "categorical", values=("batch", "layer", "group", "none")),
)

_MINIMIZE_METRICS = (
    "loss", "val_loss", "error_rate", "latency_ms", "cost", "regret", "objective", "rmse",
    "perplexity", "energy_kwh", "bbob_eval", "test_error",
)  # fmt: skip
_MAXIMIZE_METRICS = (
    "accuracy", "val_accuracy", "reward", "throughput_qps", "score", "auc", "f1",
    "objective", "yield", "ndcg",
)  # fmt: skip
_PROJECT_ADJECTIVES = (
    "swift", "quiet", "amber", "lunar", "crimson", "silent", "rapid", "bright", "frozen",
    "golden", "hidden", "iron", "misty", "northern", "velvet",
)  # fmt: skip
_PROJECT_NOUNS = (
    "ranker", "pipeline", "classifier", "cache", "compiler", "detector", "scheduler",
    "translator", "recommender", "forecaster", "tokenizer", "renderer", "crawler",
)  # fmt: skip
_INFEASIBLE_REASONS = (
    "training diverged (loss is NaN)", "out of memory", "timeout", "job crashed",
)  # fmt: skip


def _round_sig(x: float, digits: int = 2) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


@attrs.frozen
class _Coordinate:
    """One parameter of a synthetic study and how its value maps to the function input."""

    config: vz.ParameterConfig
    kind: str
    log: bool
    flip: bool
    shift: float
    category_z: tuple[float, ...] = ()
    # How strongly the parameter reaches the function: its z is scaled by this (0: the
    # parameter does not matter; `_draw_relevance`).
    weight: float = 1.0

    def value_from_unit(self, u: float) -> float | int | str:
        pc = self.config
        if self.kind == "categorical" or self.kind == "discrete":
            values = pc.feasible_values
            return values[min(int(u * len(values)), len(values) - 1)]
        lo, hi = pc.bounds
        if self.kind == "integer":
            if self.log:
                v = round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))
            else:
                v = lo + math.floor(u * (hi - lo + 1))
            return int(min(max(v, lo), hi))
        if self.log:
            v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            v = lo + u * (hi - lo)
        return float(min(max(v, lo), hi))

    def unit(self, value: float | int | str) -> float:
        """Where `value` lies in [0, 1] along the parameter's scale (before mirroring)."""
        pc = self.config
        if self.kind == "discrete":
            values = list(pc.feasible_values)
            idx = int(np.argmin([abs(float(value) - v) for v in values]))
            return idx / (len(values) - 1) if len(values) > 1 else 0.5
        lo, hi = pc.bounds
        if hi <= lo:
            return 0.5
        if self.log:
            return (math.log(float(value)) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (float(value) - lo) / (hi - lo)

    def z(self, value: float | int | str) -> float:
        if self.kind == "categorical":
            return self.weight * self.category_z[list(self.config.feasible_values).index(value)]
        u = self.unit(value)
        if self.flip:
            u = 1.0 - u
        return self.weight * (10.0 * u - 5.0 - self.shift)


def _bounds_from_template(t: _Template, rng: np.random.Generator) -> tuple[float, float]:
    """A random sub-range (30-100% of the template's range along its scale)."""
    if t.log:
        a, b = math.log10(t.low), math.log10(t.high)
    else:
        a, b = float(t.low), float(t.high)
    width = (b - a) * rng.uniform(0.3, 1.0)
    start = a + rng.uniform(0.0, 1.0) * (b - a - width)
    lo, hi = start, start + width
    if t.log:
        lo, hi = 10.0**lo, 10.0**hi
    return lo, hi


def _make_coordinate(
    t: _Template, rng: np.random.Generator, *, shift: float, flip: bool
) -> _Coordinate:
    if t.kind == "categorical":
        k = int(rng.integers(2, len(t.values) + 1))
        values = [str(v) for v in rng.choice(np.array(t.values, dtype=object), k, replace=False)]
        pc = vz.ParameterConfig.factory(t.name, feasible_values=values)
        z = tuple(float(v) for v in rng.uniform(-5.0, 5.0, k))
        return _Coordinate(pc, "categorical", False, False, 0.0, z)
    if t.kind == "discrete":
        k = int(rng.integers(3, len(t.values) + 1))
        start = int(rng.integers(0, len(t.values) - k + 1))
        values = [float(v) for v in t.values[start : start + k]]
        integral = all(float(v).is_integer() for v in values)
        pc = vz.ParameterConfig.factory(
            t.name,
            feasible_values=values,
            scale_type=vz.ScaleType.LOG if values[0] > 0 and integral else vz.ScaleType.LINEAR,
            external_type=vz.ExternalType.INTEGER if integral else vz.ExternalType.FLOAT,
        )
        return _Coordinate(pc, "discrete", False, flip, shift)
    lo, hi = _bounds_from_template(t, rng)
    if t.kind == "integer":
        ilo, ihi = max(int(round(lo)), 1 if t.log else int(t.low)), int(round(hi))
        if ihi < ilo + 2:
            ihi = ilo + 2
        pc = vz.ParameterConfig.factory(
            t.name,
            bounds=(ilo, ihi),
            scale_type=vz.ScaleType.LOG if t.log else vz.ScaleType.LINEAR,
        )
        return _Coordinate(pc, "integer", t.log, flip, shift)
    lo, hi = _round_sig(lo), _round_sig(hi)
    if not hi > lo:
        hi = lo + abs(lo) + 1.0 if not t.log else lo * 10.0
    pc = vz.ParameterConfig.factory(
        t.name,
        bounds=(lo, hi),
        scale_type=vz.ScaleType.LOG if t.log else vz.ScaleType.LINEAR,
    )
    return _Coordinate(pc, "double", t.log, flip, shift)


def _generic_template(index: int, rng: np.random.Generator) -> _Template:
    """`x{index}` with bounds of random location and scale (the classic BBOB look)."""
    if rng.uniform() < 0.2:
        lo = 10.0 ** rng.uniform(-6.0, 1.0)
        return _Template(f"x{index}", "double", lo, lo * 10.0 ** rng.uniform(1.0, 5.0), log=True)
    scale = 10.0 ** rng.uniform(-2.0, 3.0)
    lo = rng.uniform(-1.0, 1.0) * scale
    return _Template(f"x{index}", "double", lo, lo + scale * rng.uniform(0.2, 2.0))


def _choose_templates(dim: int, rng: np.random.Generator) -> list[_Template]:
    if rng.uniform() < 0.25:
        # A quarter of the studies use anonymous x0..x{d-1}, like BBOB itself.
        return [_generic_template(i, rng) for i in range(dim)]
    pools = {
        "double": list(_DOUBLES),
        "integer": list(_INTEGERS),
        "discrete": list(_DISCRETES),
        "categorical": list(_CATEGORICALS),
    }
    kinds = list(rng.choice(["double", "integer", "discrete"], size=dim, p=[0.6, 0.3, 0.1]))
    if dim >= 2 and rng.uniform() < 0.35:
        kinds[int(rng.integers(dim))] = "categorical"
    templates: list[_Template] = []
    used: set[str] = set()
    for i, kind in enumerate(kinds):
        pool = [t for t in pools[kind] if t.name not in used]
        t = pool[int(rng.integers(len(pool)))] if pool else _generic_template(i, rng)
        if t.name in used:
            t = attrs.evolve(t, name=f"{t.name}_{i}")
        used.add(t.name)
        templates.append(t)
    return templates


@attrs.frozen
class _SyntheticStudy:
    """Everything random about one study, drawn once from its own generator."""

    function_name: str
    rotation_seed: int
    coordinates: tuple[_Coordinate, ...]
    goal: vz.ObjectiveMetricGoal
    metric_name: str
    y_scale: float
    y_offset: float
    infeasible_coordinate: int | None
    infeasible_threshold: float
    infeasible_reason: str
    project: str

    def problem(self) -> vz.ProblemStatement:
        problem = vz.ProblemStatement()
        for c in self.coordinates:
            problem.search_space.add(c.config)
        problem.metric_information.append(
            vz.MetricInformation(name=self.metric_name, goal=self.goal)
        )
        dim = len(self.coordinates)
        problem.metadata["bbob_function"] = self.function_name
        # The function's name is in `bbob_function` already; the text stays short because
        # every trial's input carries it.
        problem.metadata["description"] = (
            f"{self.project}: synthetic BBOB, {_FAMILY[self.function_name]}, {dim}-D"
        )
        return problem

    def objective(self, parameters: Mapping[str, float | int | str]) -> float:
        """The objective at raw parameter values (NaN where the function is undefined)."""
        z = np.array([c.z(parameters[c.config.name]) for c in self.coordinates])
        f = bbob_function(self.function_name, rotation_seed=self.rotation_seed)(z)
        sign = -1.0 if self.goal == vz.ObjectiveMetricGoal.MAXIMIZE else 1.0
        return self.y_offset + sign * self.y_scale * f


def _draw_study(
    rng: np.random.Generator, function_name: str, dims: tuple[int, int]
) -> _SyntheticStudy:
    lo, hi = dims
    low = max(lo, min_dimension(function_name))
    dim = int(rng.integers(low, max(hi, low) + 1))
    templates = _choose_templates(dim, rng)
    coordinates = tuple(
        _make_coordinate(
            t, rng, shift=float(rng.uniform(-3.0, 3.0)), flip=bool(rng.uniform() < 0.5)
        )
        for t in templates
    )
    goal = (
        vz.ObjectiveMetricGoal.MAXIMIZE if rng.uniform() < 0.5 else vz.ObjectiveMetricGoal.MINIMIZE
    )
    names = (
        _MAXIMIZE_METRICS if goal == vz.ObjectiveMetricGoal.MAXIMIZE else _MINIMIZE_METRICS
    )
    numeric = [i for i, c in enumerate(coordinates) if c.kind != "categorical"]
    infeasible = int(rng.choice(numeric)) if numeric and rng.uniform() < 0.15 else None
    offset = (
        float(rng.uniform(-1.0, 1.0) * 10.0 ** rng.uniform(-2.0, 3.0))
        if rng.uniform() < 0.7
        else 0.0
    )
    return _SyntheticStudy(
        function_name=function_name,
        rotation_seed=int(rng.integers(1, 2**31 - 1)),
        coordinates=coordinates,
        goal=goal,
        metric_name=str(rng.choice(names)),
        y_scale=float(10.0 ** rng.uniform(-3.0, 2.0)),
        y_offset=offset,
        infeasible_coordinate=infeasible,
        infeasible_threshold=float(rng.uniform(0.75, 0.95)),
        infeasible_reason=str(rng.choice(_INFEASIBLE_REASONS)),
        project=f"{rng.choice(_PROJECT_ADJECTIVES)}-{rng.choice(_PROJECT_NOUNS)}",
    )


def _draw_relevance(rng: np.random.Generator, dim: int, function_name: str) -> np.ndarray:
    """Weights of a study where only some parameters matter, as in most real tuning studies.

    A random number of coordinates (at least the function's minimum dimension, at most all)
    stays active, the strongest at full scale and the others at 0.1-1 of it; the rest get
    weight 0, so their parameters are in the study and its trials but do not change y. A
    model pretrained on such studies has seen that which parameters matter must be read from
    the study's trials, which a function of every parameter alike never shows it.
    """
    active = int(rng.integers(min(min_dimension(function_name), dim), dim + 1))
    order = rng.permutation(dim)
    weights = np.zeros(dim)
    weights[order[:active]] = 10.0 ** rng.uniform(-1.0, 0.0, active)
    weights[order[0]] = 1.0
    return weights


def _with_weights(study: _SyntheticStudy, weights: np.ndarray) -> _SyntheticStudy:
    return attrs.evolve(study, coordinates=tuple(
        attrs.evolve(c, weight=float(w)) for c, w in zip(study.coordinates, weights)))


def _unit_samples(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    if rng.uniform() < 0.5:
        return rng.uniform(size=(n, dim))
    # Scrambled Halton: quasi-random, as some studies start from a space-filling design.
    return qmc.Halton(d=dim, scramble=True, seed=rng).random(n)


def _trials(study: _SyntheticStudy, rng: np.random.Generator, n: int) -> list[vz.Trial]:
    units = _unit_samples(rng, n, len(study.coordinates))
    trials = []
    for k, u_row in enumerate(units):
        params = {c.config.name: c.value_from_unit(float(u)) for c, u in zip(study.coordinates, u_row)}
        created = _BASE_TIME + datetime.timedelta(minutes=k)
        j = study.infeasible_coordinate
        reason = None
        metrics = {}
        if j is not None and study.coordinates[j].unit(params[study.coordinates[j].config.name]) > (
            study.infeasible_threshold
        ):
            reason = study.infeasible_reason
        else:
            y = study.objective(params)
            if math.isfinite(y):
                metrics[study.metric_name] = y
            else:
                reason = "objective value is not finite"
        # As Vizier completes an infeasible trial: an empty final measurement plus a reason.
        trial = vz.Trial(
            id=k + 1,
            parameters=params,
            final_measurement=vz.Measurement(metrics=metrics),
            infeasibility_reason=reason,
            creation_time=created,
            completion_time=created,
        )
        trials.append(trial)
    return trials


def synthetic_bbob_studies(
    seed: int,
    num_studies: int,
    *,
    trials_per_study: tuple[int, int] = (20, 120),
    dims: tuple[int, int] = (1, 8),
    sparse_fraction: float = 0.0,
) -> Iterator[StudyRecord]:
    """`num_studies` synthetic studies (streamed), the same for the same `seed`.

    Functions go round-robin through a seed-dependent order of all `BBOB_FUNCTIONS`, so any
    24 consecutive studies cover every function. `trials_per_study` and `dims` are inclusive
    ranges; functions that are degenerate in 1-D get at least 2 dimensions. About 15% of
    studies have a region of infeasible trials (the high end of one parameter, as a too
    large learning rate diverges).

    `sparse_fraction` of the studies (drawn per study, from a generator of its own so that
    every other draw is the same at any fraction) have parameters that matter less or not at
    all (`_draw_relevance`); 0 keeps every study as it was before the option existed.
    """
    if not 0.0 <= sparse_fraction <= 1.0:
        raise ValueError(f"sparse_fraction must be in [0, 1], got {sparse_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 1 <= trials_per_study[0] <= trials_per_study[1]:
        raise ValueError(f"bad trials_per_study range {trials_per_study}")
    if not 1 <= dims[0] <= dims[1]:
        raise ValueError(f"bad dims range {dims}")
    check_dimension(dims[1])
    order = np.random.default_rng([seed, _SEED_TAG_STUDIES]).permutation(len(BBOB_FUNCTIONS))
    for i in range(num_studies):
        rng = np.random.default_rng([seed, _SEED_TAG_STUDIES, i])
        function_name = BBOB_FUNCTIONS[int(order[i % len(order)])]
        study = _draw_study(rng, function_name, dims)
        relevance_rng = np.random.default_rng([seed, _SEED_TAG_STUDIES, i, _SEED_TAG_RELEVANCE])
        if relevance_rng.uniform() < sparse_fraction:
            study = _with_weights(study, _draw_relevance(relevance_rng, len(study.coordinates), function_name))
        n = int(rng.integers(trials_per_study[0], trials_per_study[1] + 1))
        with _cached_rotations():
            trials = _trials(study, rng, n)
        yield StudyRecord(
            name=f"bbob-s{seed}-{i:06d}-{function_name}", problem=study.problem(), trials=trials
        )


def random_bbob_task(
    seed: int, dim: int, function_name: str | None = None
) -> tuple[vz.ProblemStatement, Experimenter]:
    """A shifted, rotated BBOB function as a Vizier Experimenter, for designer A/B runs.

    Vizier's `NumpyExperimenter` on `DefaultBBOBProblemStatement` (DOUBLE x0..x{d-1},
    MINIMIZE `bbob_eval`) wrapped in its `ShiftingExperimenter` (shift drawn in [-2, 2]^d,
    bounds restricted accordingly). The same (seed, dim, function_name) gives the same task.
    """
    check_dimension(dim)
    rng = np.random.default_rng([seed, _SEED_TAG_TASK, dim])
    if function_name is None:
        candidates = [f for f in BBOB_FUNCTIONS if min_dimension(f) <= dim]
        function_name = candidates[int(rng.integers(len(candidates)))]
    elif function_name not in BBOB_FUNCTIONS:
        raise ValueError(f"unknown BBOB function {function_name!r}; valid: {', '.join(BBOB_FUNCTIONS)}")
    elif min_dimension(function_name) > dim:
        raise ValueError(f"{function_name} needs dim >= {min_dimension(function_name)}")
    rotation_seed = int(rng.integers(1, 2**31 - 1))
    shift = rng.uniform(-2.0, 2.0, size=dim)
    problem = bbob.DefaultBBOBProblemStatement(dim)
    problem.metadata["bbob_function"] = function_name
    problem.metadata["description"] = (
        f"shifted {_FAMILY[function_name]} BBOB {function_name} in {dim}-D"
    )
    impl = functools.partial(getattr(bbob, function_name), seed=rotation_seed)
    experimenter = ShiftingExperimenter(NumpyExperimenter(impl, problem), shift=shift)
    return experimenter.problem_statement(), experimenter


__all__: Sequence[str] = (
    "BBOB_FUNCTIONS",
    "bbob_function",
    "min_dimension",
    "random_bbob_task",
    "synthetic_bbob_studies",
)
