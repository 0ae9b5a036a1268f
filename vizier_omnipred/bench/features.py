"""vz.ParameterDict -> numeric feature vector, for the classic regressors of the benchmarks.

OmniPred reads trials as text and needs none of this; the baselines it is compared with
need fixed-length numeric inputs. The encoding is the conventional one, so the baselines
are as strong as they usually are:

- DOUBLE / INTEGER / DISCRETE: scaled to [0, 1] within the bounds (DISCRETE: within its
  smallest and largest feasible value), in the parameter's own scale (LOG: log-linear,
  REVERSE_LOG: the mirror image Vizier uses), so tree splits and kernel length scales act
  on the scale the study's author declared. A value outside the bounds extrapolates
  linearly (not clipped): it is a different point and should look like one.
- CATEGORICAL (and Vizier's bool, a two-valued categorical): one-hot, one column per
  feasible value.
- Conditional parameters (children of a parent value): one column block per (parent
  path, child) plus an "active" indicator column; when inactive the block is 0 and the
  indicator is 0. The indicator lets a model tell "inactive" from "at the lower bound".
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import attrs
import numpy as np
from vizier import pyvizier as vz


def _raw(value: Any) -> Any:
    """A ParameterDict holds vz.ParameterValue; plain mappings hold raw values."""
    return value.value if isinstance(value, vz.ParameterValue) else value


def _values_match(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


@attrs.frozen
class _Slot:
    """One parameter occurrence in the search-space tree and its columns."""

    config: vz.ParameterConfig
    path: str  # unique column prefix, e.g. "model=linear/l2"
    start: int  # first column
    width: int  # columns for the value (1, or number of categories)
    indicator: int | None  # column of the active flag; None for root parameters
    parent: int | None  # index of the parent slot
    parent_value: Any  # the parent value that activates this slot

    @property
    def name(self) -> str:
        return self.config.name


def _scale_numeric(config: vz.ParameterConfig, value: float) -> float:
    if config.type == vz.ParameterType.DISCRETE:
        feasible = [float(v) for v in config.feasible_values]
        low, high = min(feasible), max(feasible)
    else:
        low, high = (float(b) for b in config.bounds)
    value = float(value)
    if high == low:
        return 0.5
    scale = config.scale_type
    if scale == vz.ScaleType.LOG and low > 0:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    if scale == vz.ScaleType.REVERSE_LOG and low > 0:
        # Mirror of LOG: resolution concentrated near the upper bound (e.g. momentum 0.99).
        return 1.0 - (math.log(low + high - value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


class ParameterFeaturizer:
    """Maps parameter dicts of one search space to rows of a float matrix.

    Built once per problem; `transform` accepts vz.ParameterDict, plain mappings, or trials.
    """

    def __init__(self, search_space: vz.SearchSpace):
        self._slots: list[_Slot] = []
        self._names: list[str] = []
        self._build(search_space, prefix="", parent=None, parent_value=None)
        if not self._slots:
            raise ValueError("search space has no parameters")

    @classmethod
    def from_problem(cls, problem: vz.ProblemStatement) -> "ParameterFeaturizer":
        return cls(problem.search_space)

    def _build(self, space: vz.SearchSpace, prefix: str, parent: int | None, parent_value: Any) -> None:
        for config in space.parameters:
            path = f"{prefix}{config.name}"
            indicator = None
            if parent is not None:
                indicator = len(self._names)
                self._names.append(f"{path}:active")
            start = len(self._names)
            if config.type == vz.ParameterType.CATEGORICAL:
                for v in config.feasible_values:
                    self._names.append(f"{path}={v}")
            elif config.type in (vz.ParameterType.DOUBLE, vz.ParameterType.INTEGER, vz.ParameterType.DISCRETE):
                self._names.append(path)
            else:
                raise ValueError(f"parameter {config.name!r}: type {config.type} has no numeric encoding")
            slot = _Slot(
                config=config,
                path=path,
                start=start,
                width=len(self._names) - start,
                indicator=indicator,
                parent=parent,
                parent_value=parent_value,
            )
            self._slots.append(slot)
            index = len(self._slots) - 1
            for value, subspace in config.subspaces():
                self._build(subspace, prefix=f"{path}={value}/", parent=index, parent_value=value)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self._names)

    @property
    def num_features(self) -> int:
        return len(self._names)

    def _iter_values(self, params: Mapping[str, Any]) -> Iterator[tuple[_Slot, Any]]:
        """Yields (slot, raw value or None if inactive), parents before children."""
        active_values: list[Any] = []
        for slot in self._slots:
            value = None
            if slot.parent is None:
                if slot.name not in params:
                    raise ValueError(f"parameter {slot.name!r} missing from {dict(params)}")
                value = _raw(params[slot.name])
            else:
                parent_val = active_values[slot.parent]
                if parent_val is not None and _values_match(parent_val, slot.parent_value) and slot.name in params:
                    value = _raw(params[slot.name])
            active_values.append(value)
            yield slot, value

    def transform_one(self, params: Mapping[str, Any]) -> np.ndarray:
        row = np.zeros(self.num_features, dtype=float)
        for slot, value in self._iter_values(params):
            if value is None:
                continue
            if slot.indicator is not None:
                row[slot.indicator] = 1.0
            config = slot.config
            if config.type == vz.ParameterType.CATEGORICAL:
                feasible = [str(v) for v in config.feasible_values]
                if str(value) not in feasible:
                    raise ValueError(f"parameter {slot.name!r}: {value!r} is not one of {feasible}")
                row[slot.start + feasible.index(str(value))] = 1.0
            else:
                row[slot.start] = _scale_numeric(config, value)
        return row

    def transform(self, items: Sequence[Mapping[str, Any] | vz.Trial | vz.TrialSuggestion]) -> np.ndarray:
        """(N, num_features) matrix. Trials and suggestions are read through `.parameters`."""
        rows = [
            self.transform_one(item.parameters if isinstance(item, (vz.Trial, vz.TrialSuggestion)) else item)
            for item in items
        ]
        if not rows:
            return np.zeros((0, self.num_features), dtype=float)
        return np.stack(rows)
