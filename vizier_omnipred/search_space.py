"""Search-space helpers the designer's searches share: plain values, random points,
mutations, membership, enumeration and [0, 1] features of any Vizier search space.

Vizier's designers work on a converted array view of a flat space; this module walks
the `vz.SearchSpace` itself so that conditional spaces (which Vizier's converters and
most designers refuse) get the same treatment.

Scaling note: `Space.features` scales a numeric column linearly unless *every* config
of that name is LOG-scaled; REVERSE_LOG parameters are scaled linearly here (while
`bench/features.py` mirrors a log for them). The trust region and the batch diversity
depend on this scaling; do not merge the two without meaning to change behaviour.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from vizier import pyvizier as vz

__all__ = [
    "WIDE_INTEGER_RANGE",
    "Space",
    "distances",
    "is_log",
    "params_dict",
    "py_value",
    "relax_wide_integers",
    "round_wide_integers",
]


def py_value(value: Any) -> float | int | str:
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


def params_dict(parameters: vz.ParameterDict | Mapping[str, Any]) -> dict[str, float | int | str]:
    """Parameters as a plain dict of Python scalars: what keys, records and JSON state hold."""
    if isinstance(parameters, vz.ParameterDict):
        return {k: py_value(v) for k, v in parameters.as_dict().items()}
    return {k: py_value(v) for k, v in parameters.items()}


_MISSING = object()


def is_log(pc: vz.ParameterConfig) -> bool:
    """Whether a parameter is sampled and mutated on a log scale (LOG with positive bounds)."""
    return pc.scale_type == vz.ScaleType.LOG and pc.bounds[0] > 0


# Vizier's designers list every value of an INTEGER parameter (`ParameterConfig.feasible_values`):
# its scaler builds that list twice per candidate to round one value (0.7 s a candidate for a range
# of 10 million, three quarters of a 40-parameter study's suggestion), and its QuasiRandomDesigner
# never finished building for a range of 2e9. An integer parameter this wide is handed to them as
# a DOUBLE of the same bounds and scale instead (`relax_wide_integers`), and their points are
# rounded to the nearest integer (`round_wide_integers`), as Vizier would round it (Eagle searches
# a continuified integer as continuous either way).
WIDE_INTEGER_RANGE = 1000


def relax_wide_integers(search_space: vz.SearchSpace) -> tuple[vz.SearchSpace, dict[str, tuple[int, int]]]:
    """The space with each INTEGER parameter of range >= `WIDE_INTEGER_RANGE` as a DOUBLE, and
    those parameters' integer bounds; a space without one, or a conditional space (which
    Vizier's designers that would list the values refuse anyway), comes back as it is."""
    wide = {
        pc.name: (int(pc.bounds[0]), int(pc.bounds[1]))
        for pc in search_space.parameters
        if pc.type == vz.ParameterType.INTEGER and pc.bounds[1] - pc.bounds[0] >= WIDE_INTEGER_RANGE
    }
    if not wide or search_space.is_conditional:
        return search_space, {}
    relaxed = vz.SearchSpace()
    for pc in search_space.parameters:
        if pc.name in wide:
            relaxed.root.add_float_param(pc.name, float(pc.bounds[0]), float(pc.bounds[1]), scale_type=pc.scale_type)
        else:
            relaxed.add(copy.deepcopy(pc))
    return relaxed, wide


def round_wide_integers(params: Mapping[str, Any], wide: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """A point of `relax_wide_integers`' space back in the original one: the relaxed values
    rounded to the nearest integer within their bounds."""
    out = dict(params)
    for name, (lo, hi) in wide.items():
        if name in out:
            out[name] = int(min(max(round(float(out[name])), lo), hi))
    return out


class Space:
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
            if is_log(pc):
                v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            else:
                v = rng.uniform(lo, hi)
            return float(min(max(v, lo), hi))
        if pc.type == vz.ParameterType.INTEGER:
            lo, hi = pc.bounds
            return int(rng.integers(lo, hi + 1))
        values = pc.feasible_values
        return py_value(values[int(rng.integers(len(values)))])

    @staticmethod
    def perturb_value(pc: vz.ParameterConfig, value: Any, rng: np.random.Generator, scale: float):
        if pc.type in (vz.ParameterType.DOUBLE, vz.ParameterType.INTEGER):
            lo, hi = pc.bounds
            if lo == hi:
                return py_value(lo)
            log = pc.type == vz.ParameterType.DOUBLE and is_log(pc)
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
        values = [py_value(v) for v in pc.feasible_values]
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
                point[name] = py_value(pc.feasible_values[0])
                continue
            lo, hi = (float(b) for b in pc.bounds)
            # Log-scaled parameters of every numeric type (HPOBench's grids are log DISCRETE):
            # the midpoint of the log scale, the nearest feasible value to it, as Vizier's GP bandit.
            mid = math.sqrt(lo * hi) if is_log(pc) else (lo + hi) / 2
            if pc.type == vz.ParameterType.DOUBLE:
                point[name] = float(mid)
            elif pc.type == vz.ParameterType.INTEGER:
                point[name] = int(round(mid))
            else:
                point[name] = py_value(min(pc.feasible_values, key=lambda v: abs(float(v) - mid)))
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
                value = py_value(base[name])
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
            if pc.type == vz.ParameterType.INTEGER:  # lazily: Vizier's feasible_values lists the whole range
                return range(int(pc.bounds[0]), int(pc.bounds[1]) + 1)
            return [py_value(v) for v in pc.feasible_values]

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


def distances(x: np.ndarray, is_cat: np.ndarray, i: int) -> np.ndarray:
    """RMS per-parameter distance of every row of x to row i (in [0, 1])."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    a = x[i][None, :]
    missing_a, missing_b = np.isnan(a), np.isnan(x)
    diff = np.where(is_cat[None, :], (a != x).astype(float), np.abs(a - x))
    diff = np.where(missing_a & missing_b, 0.0, np.where(missing_a | missing_b, 1.0, diff))
    return np.sqrt(np.mean(diff**2, axis=1))
