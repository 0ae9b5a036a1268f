"""Baseline regressors the OmniPred regressor is compared with.

Two layers:

1. Classic regressors on numeric features (`features.py`), all with the same small
   interface, `fit(X, y) -> self` and `predict(X) -> (mean, std)`, so the benchmark can
   judge point accuracy and calibration the same way for all of them:
   - `SklearnGPRegressor`: Matern-5/2 ARD kernel x constant + white noise, normalize_y.
   - `ForestRegressor`: std = spread of the trees' predictions (epistemic only, so
     it tends to be over-confident; that is the usual RF recipe and what users get).
   - `GradientBoostingQuantileRegressor`: three quantile-loss boosted models (10%, 50%,
     90%). Point estimate = the 50% model (like OmniPred's median); std =
     (q90 - q10) / (2 * 1.2816), i.e. the Gaussian whose central 80% interval has the
     same width. Quantile models were chosen over a bootstrap ensemble because they
     estimate the noise spread, which is what the 80% calibration metric checks; a
     bootstrap ensemble of boosted trees only measures model variance.
   - `MLPEnsembleRegressor`: 5 MLPs from different seeds (a small deep ensemble), std =
     spread across members.

2. Trial-level models, `fit(problem, trials)` / `predict(trials) -> PredictiveDistribution`,
   the shape OmniPred itself has:
   - `FeatureModel`: any classic regressor behind a `ParameterFeaturizer`.
   - `VizierGPModel`: Vizier's own `VizierGPBandit` used as a `vza.Predictor`. Its
     converter flips the sign of MINIMIZE metrics and `predict` does not flip back
     (REFERENCE.md section 2; checked in tests/test_bench.py), so we negate for MINIMIZE.
   - `TransferMeanTableModel`: REFERENCE.md section 4's transfer baseline: the mean of
     other related studies' full result tables at the same configuration, rescaled by a
     least-squares line fitted on the new study's training trials. It is the row that
     shows how much of a pretrained model's advantage any transfer method would get.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, Protocol, Sequence

import attrs
import numpy as np
from vizier import pyvizier as vz

from vizier_omnipred.bench.features import ParameterFeaturizer
from vizier_omnipred.bench.metrics import PredictiveDistribution

_Z80 = 1.2815515655446004  # standard normal 90% quantile: half-width of a central 80% interval


class ClassicRegressor(Protocol):
    def fit(self, X: np.ndarray, y: np.ndarray) -> "ClassicRegressor": ...

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _one_blas_thread():
    """Context limiting BLAS/OpenMP to one thread.

    The matrices here are tiny (<= a few hundred rows); on a shared 2-core machine a
    multi-threaded BLAS spends its time waiting on other processes: an MLP fit measured
    5x slower with the default thread pool than with one thread.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (N, D) with N = len(y); got X {X.shape}, y {y.shape}")
    if X.shape[0] < 2:
        raise ValueError(f"need at least 2 training points, got {X.shape[0]}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains non-finite values; drop infeasible trials before fitting")
    return X, y


# ---------------------------------------------------------------------------------------------
# Classic regressors
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class GPConfig:
    nu: float = 2.5  # Matern smoothness; 2.5 is Vizier's and most BO libraries' default
    n_restarts_optimizer: int = 3
    length_scale_bounds: tuple[float, float] = (1e-2, 1e2)
    noise_bounds: tuple[float, float] = (1e-8, 1.0)  # on normalized y


@attrs.define
class SklearnGPRegressor:
    config: GPConfig = attrs.field(factory=GPConfig)
    seed: int = 0
    _model: Any = attrs.field(default=None, init=False)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "SklearnGPRegressor":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        X, y = _check_xy(X, y)
        c = self.config
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
            length_scale=np.full(X.shape[1], 0.5), length_scale_bounds=c.length_scale_bounds, nu=c.nu
        ) + WhiteKernel(1e-3, c.noise_bounds)
        self._model = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=c.n_restarts_optimizer,
            random_state=self.seed,
        )
        with warnings.catch_warnings(), _one_blas_thread():
            # Hyperparameters at their bounds are common with 10 points; not an error.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._model.fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with _one_blas_thread():
            mean, std = self._model.predict(np.asarray(X, dtype=float), return_std=True)
        return np.asarray(mean, dtype=float), np.asarray(std, dtype=float)


@attrs.frozen
class ForestConfig:
    n_estimators: int = 200
    min_samples_leaf: int = 1
    max_features: float = 1.0


@attrs.define
class ForestRegressor:
    """scikit-learn's random forest plus a per-point std from the spread of its trees."""

    config: ForestConfig = attrs.field(factory=ForestConfig)
    seed: int = 0
    _model: Any = attrs.field(default=None, init=False)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ForestRegressor":
        from sklearn.ensemble import RandomForestRegressor

        X, y = _check_xy(X, y)
        c = self.config
        self._model = RandomForestRegressor(
            n_estimators=c.n_estimators,
            min_samples_leaf=c.min_samples_leaf,
            max_features=c.max_features,
            random_state=self.seed,
            n_jobs=1,
        ).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=float)
        per_tree = np.stack([tree.predict(X) for tree in self._model.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0)


@attrs.frozen
class GBTConfig:
    n_estimators: int = 200
    learning_rate: float = 0.05
    max_depth: int = 3
    subsample: float = 1.0
    quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9)


@attrs.define
class GradientBoostingQuantileRegressor:
    config: GBTConfig = attrs.field(factory=GBTConfig)
    seed: int = 0
    _models: list[Any] = attrs.field(factory=list, init=False)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "GradientBoostingQuantileRegressor":
        from sklearn.ensemble import GradientBoostingRegressor

        X, y = _check_xy(X, y)
        c = self.config
        self._models = [
            GradientBoostingRegressor(
                loss="quantile",
                alpha=q,
                n_estimators=c.n_estimators,
                learning_rate=c.learning_rate,
                max_depth=c.max_depth,
                subsample=c.subsample,
                random_state=self.seed,
            ).fit(X, y)
            for q in c.quantiles
        ]
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=float)
        q = np.sort(np.stack([m.predict(X) for m in self._models]), axis=0)  # fixes quantile crossing
        lo, mid, hi = q
        return mid, (hi - lo) / (2.0 * _Z80)


@attrs.frozen
class MLPConfig:
    hidden_layer_sizes: tuple[int, ...] = (64, 64)
    alpha: float = 1e-3  # L2 penalty
    ensemble_size: int = 5
    max_iter: int = 1000
    solver: str = "lbfgs"  # full-batch quasi-Newton: the sensible choice at 10-100 points


@attrs.define
class MLPEnsembleRegressor:
    config: MLPConfig = attrs.field(factory=MLPConfig)
    seed: int = 0
    _models: list[Any] = attrs.field(factory=list, init=False)
    _y_mean: float = attrs.field(default=0.0, init=False)
    _y_std: float = attrs.field(default=1.0, init=False)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "MLPEnsembleRegressor":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor

        X, y = _check_xy(X, y)
        c = self.config
        # Standardize y: MLP weights with default init cannot reach y in the thousands.
        self._y_mean = float(y.mean())
        self._y_std = float(y.std()) or 1.0
        z = (y - self._y_mean) / self._y_std
        self._models = []
        with warnings.catch_warnings(), _one_blas_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for i in range(c.ensemble_size):
                self._models.append(
                    MLPRegressor(
                        hidden_layer_sizes=c.hidden_layer_sizes,
                        alpha=c.alpha,
                        solver=c.solver,
                        max_iter=c.max_iter,
                        random_state=(self.seed * 1000 + i) % 2**32,
                    ).fit(X, z)
                )
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=float)
        with _one_blas_thread():
            preds = np.stack([m.predict(X) for m in self._models]) * self._y_std + self._y_mean
        return preds.mean(axis=0), preds.std(axis=0)


CLASSIC_REGRESSORS: Mapping[str, Callable[[int], ClassicRegressor]] = {
    "gp": lambda seed: SklearnGPRegressor(seed=seed),
    "rf": lambda seed: ForestRegressor(seed=seed),
    "gbt": lambda seed: GradientBoostingQuantileRegressor(seed=seed),
    "mlp": lambda seed: MLPEnsembleRegressor(seed=seed),
}
"""Classic regressors by benchmark name; each entry makes a fresh, unfitted model."""


# ---------------------------------------------------------------------------------------------
# Trial-level models
# ---------------------------------------------------------------------------------------------


class TrialModel(Protocol):
    """What the regression benchmark runs: fit on completed trials, predict distributions."""

    def fit(self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial]) -> None: ...

    def predict(self, trials: Sequence[vz.TrialSuggestion]) -> PredictiveDistribution: ...


def single_metric(problem: vz.ProblemStatement) -> vz.MetricInformation:
    metrics = list(problem.metric_information)
    if len(metrics) != 1:
        raise ValueError(f"benchmarks need a single-objective problem, got metrics {[m.name for m in metrics]}")
    return metrics[0]


def objective_values(problem: vz.ProblemStatement, trials: Sequence[vz.Trial]) -> np.ndarray:
    """The objective of each trial in metric units; nan if infeasible or not measured."""
    name = single_metric(problem).name
    out = np.full(len(trials), np.nan)
    for i, t in enumerate(trials):
        if t.infeasible or t.final_measurement is None:
            continue
        metric = t.final_measurement.metrics.get(name)
        if metric is not None:
            out[i] = float(metric.value)
    return out


def _feasible(problem: vz.ProblemStatement, trials: Sequence[vz.Trial]) -> tuple[list[vz.Trial], np.ndarray]:
    y = objective_values(problem, trials)
    keep = np.isfinite(y)
    return [t for t, k in zip(trials, keep) if k], y[keep]


@attrs.define
class FeatureModel:
    """A classic regressor behind the parameter featurizer, as a TrialModel."""

    regressor: ClassicRegressor
    _featurizer: ParameterFeaturizer | None = attrs.field(default=None, init=False)

    def fit(self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial]) -> None:
        self._featurizer = ParameterFeaturizer.from_problem(problem)
        kept, y = _feasible(problem, trials)
        self.regressor.fit(self._featurizer.transform(kept), y)

    def predict(self, trials: Sequence[vz.TrialSuggestion]) -> PredictiveDistribution:
        if self._featurizer is None:
            raise RuntimeError("fit() first")
        mean, std = self.regressor.predict(self._featurizer.transform(trials))
        return PredictiveDistribution(mean=mean, std=std)


def ensure_jax_x64() -> None:
    """Vizier's GP designers assume float64 JAX (the Pythia service sets it); without it
    their ARD and Cholesky steps lose precision or fail. Must run before they build arrays."""
    import jax

    jax.config.update("jax_enable_x64", True)


def padded_gp_bandit(problem: vz.ProblemStatement, *, seed: int):
    """Vizier's `VizierGPBandit` for `problem`, float64 JAX, trial counts padded to multiples of
    10: Vizier's own knob against re-compiling the GP at every new trial (the same model,
    3-4x less time per suggest on a CPU). The GP baseline of the A/B and of the main job."""
    ensure_jax_x64()
    from vizier._src.algorithms.designers import gp_bandit
    from vizier.pyvizier.converters import padding

    return gp_bandit.VizierGPBandit.from_problem(
        problem, seed=seed, padding_schedule=padding.PaddingSchedule(num_trials=padding.PaddingType.MULTIPLES_OF_10))


@attrs.define
class VizierGPModel:
    """Vizier's VizierGPBandit as a regressor, in the metric's own units and sign."""

    seed: int = 0
    # Vizier unwarps its samples one by one in Python: 1000 samples cost ~7 s per predict on
    # a loaded 2-core machine, 256 about a quarter; plenty for 10%/90% quantiles.
    num_samples: int = 256
    _designer: Any = attrs.field(default=None, init=False)
    _minimize: bool = attrs.field(default=True, init=False)

    def fit(self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial]) -> None:
        ensure_jax_x64()
        import jax
        from vizier import algorithms as vza
        from vizier._src.algorithms.designers import gp_bandit

        self._minimize = single_metric(problem).goal == vz.ObjectiveMetricGoal.MINIMIZE
        kept, _ = _feasible(problem, trials)
        self._designer = gp_bandit.VizierGPBandit(problem, rng=jax.random.PRNGKey(self.seed))
        self._designer.update(vza.CompletedTrials(kept), vza.ActiveTrials())

    def predict(self, trials: Sequence[vz.TrialSuggestion]) -> PredictiveDistribution:
        import jax

        if self._designer is None:
            raise RuntimeError("fit() first")
        samples = np.asarray(
            self._designer.sample(list(trials), rng=jax.random.PRNGKey(self.seed), num_samples=self.num_samples),
            dtype=float,
        ).T  # Vizier gives (S, N)
        if self._minimize:
            samples = -samples  # undo the converter's sign flip for MINIMIZE metrics
        return PredictiveDistribution(mean=samples.mean(axis=1), std=samples.std(axis=1), samples=samples)


def _config_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Hashable key of a configuration; floats at 6 significant digits so that values read
    from different tables of the same grid (7.742637e-08 vs 7.7426370e-08) match."""
    items = []
    for name in sorted(params):
        v = params[name]
        v = v.value if isinstance(v, vz.ParameterValue) else v
        if isinstance(v, str):
            items.append((name, "s:" + v))
        else:
            fv = float(v)
            items.append((name, f"n:{fv:.6g}" if math.isfinite(fv) else f"n:{fv}"))
    return tuple(items)


class MeanTable:
    """Mean objective per configuration over related studies' full result tables.

    Built once per held-out study (hundreds of thousands of rows for HPOBench) and shared
    by every TransferMeanTableModel fitted on it. `prior_tables`: one (parameter dicts,
    objective values) pair per related study, in the new study's metric units.
    """

    def __init__(
        self,
        prior_tables: Sequence[tuple[Sequence[Mapping[str, Any]], np.ndarray]],
        *,
        key_cache: dict[int, tuple[Any, list[tuple]]] | None = None,
    ):
        """`key_cache` (any dict, shared by the caller) remembers each table's configuration
        keys by the identity of its parameter list: leave-one-out over 8 HPOBench tables
        builds 8 mean tables from the same 30,000-row lists, and keying a row is the slow part."""
        if not prior_tables:
            raise ValueError("a mean table needs at least one prior table")
        self._index: dict[tuple, int] = {}
        self.params: list[Mapping[str, Any]] = []
        sums: list[float] = []
        counts: list[int] = []
        for params_list, values in prior_tables:
            values = np.asarray(values, dtype=float).reshape(-1)
            if len(params_list) != values.shape[0]:
                raise ValueError(f"prior table has {len(params_list)} configurations, {values.shape[0]} values")
            cached = key_cache.get(id(params_list)) if key_cache is not None else None
            if cached is not None and cached[0] is params_list:
                keys = cached[1]
            else:
                keys = [_config_key(p) for p in params_list]
                if key_cache is not None:
                    key_cache[id(params_list)] = (params_list, keys)  # holds the list: id stays valid
            for params, key, v in zip(params_list, keys, values):
                if not math.isfinite(v):
                    continue
                i = self._index.get(key)
                if i is None:
                    i = self._index[key] = len(self.params)
                    self.params.append(params)
                    sums.append(0.0)
                    counts.append(0)
                sums[i] += float(v)
                counts[i] += 1
        self.means = np.asarray(sums) / np.asarray(counts)
        self._features: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.params)

    def lookup(self, items: Sequence[Any], featurizer: ParameterFeaturizer) -> np.ndarray:
        """Table mean at each configuration; the nearest configuration (in `featurizer`'s
        feature space) where the exact one is not in the table."""
        params_list = [it.parameters if isinstance(it, vz.TrialSuggestion) else it for it in items]
        out = np.empty(len(params_list))
        missing = []
        for i, p in enumerate(params_list):
            idx = self._index.get(_config_key(p))
            if idx is None:
                missing.append(i)
            else:
                out[i] = self.means[idx]
        if missing:
            table_X = self._features.get(id(featurizer))
            if table_X is None:
                table_X = self._features[id(featurizer)] = featurizer.transform(self.params)
            Xq = featurizer.transform([params_list[i] for i in missing])
            d2 = ((Xq[:, None, :] - table_X[None, :, :]) ** 2).sum(axis=-1)
            out[missing] = self.means[np.argmin(d2, axis=1)]
        return out


@attrs.define
class TransferMeanTableModel:
    """Related studies' mean table at the same configuration, rescaled per new study.

    `fit` fits y = a * table_mean(x) + b by least squares on the new study's training trials
    (>= 2 trials and a non-constant table value; else slope 1 and only the offset). std =
    residual standard deviation of that line (n - 2 degrees of freedom), the same for every
    point. Pass a MeanTable, or the prior tables themselves.
    """

    table: MeanTable = attrs.field(converter=lambda t: t if isinstance(t, MeanTable) else MeanTable(t))
    _featurizer: ParameterFeaturizer | None = attrs.field(default=None, init=False)
    _slope: float = attrs.field(default=1.0, init=False)
    _offset: float = attrs.field(default=0.0, init=False)
    _resid_std: float = attrs.field(default=0.0, init=False)

    def fit(self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial]) -> None:
        self._featurizer = ParameterFeaturizer.from_problem(problem)
        kept, y = _feasible(problem, trials)
        if not kept:
            raise ValueError("no feasible training trials")
        m = self.table.lookup(kept, self._featurizer)
        if len(kept) >= 2 and np.ptp(m) > 0:
            self._slope, self._offset = (float(c) for c in np.polyfit(m, y, 1))
        else:
            self._slope, self._offset = 1.0, float(np.mean(y - m))
        resid = y - (self._slope * m + self._offset)
        if len(kept) > 2:
            self._resid_std = float(math.sqrt(np.sum(resid**2) / (len(kept) - 2)))
        else:
            self._resid_std = float(np.std(y))

    def predict(self, trials: Sequence[vz.TrialSuggestion]) -> PredictiveDistribution:
        if self._featurizer is None:
            raise RuntimeError("fit() first")
        mean = self._slope * self.table.lookup(trials, self._featurizer) + self._offset
        return PredictiveDistribution(mean=mean, std=np.full(mean.shape, self._resid_std))


def classic_model(name: str, seed: int = 0) -> FeatureModel:
    """A TrialModel around the classic regressor `name` (one of CLASSIC_REGRESSORS)."""
    try:
        make = CLASSIC_REGRESSORS[name]
    except KeyError:
        raise ValueError(f"unknown classic regressor {name!r}; valid: {sorted(CLASSIC_REGRESSORS)}") from None
    return FeatureModel(make(seed))


__all__ = [
    "CLASSIC_REGRESSORS",
    "ClassicRegressor",
    "FeatureModel",
    "GBTConfig",
    "GPConfig",
    "ForestConfig",
    "GradientBoostingQuantileRegressor",
    "MLPConfig",
    "MLPEnsembleRegressor",
    "MeanTable",
    "ForestRegressor",
    "SklearnGPRegressor",
    "TransferMeanTableModel",
    "TrialModel",
    "VizierGPModel",
    "classic_model",
    "ensure_jax_x64",
    "objective_values",
    "single_metric",
]
