"""Metrics shared by the regression and A/B benchmarks.

Regression metrics follow OmniPred's evaluation (REFERENCE.md section 1): errors are divided
by the y range of the *test* set, so numbers are comparable across studies whose objectives
live on very different scales (BBOB values in the thousands, HPOBench accuracies near 1).

Uncertainty is judged by one number, calibration: the fraction of test points inside the
predicted central 80% interval. A calibrated model scores about 0.8; over-confident models
score less. Language-model regressors give samples, classic ones a mean and a standard
deviation; `PredictiveDistribution` covers both so every model is judged the same way.

A/B metrics: normalized regret (0 = optimum, 1 = as good as a typical random point) and
paired win rates with a sign test and a bootstrap interval, because benchmarks here have
few repeats (5-20) and a p-value alone hides how uncertain the rate itself is.
"""

from __future__ import annotations

import math
from typing import Sequence

import attrs
import numpy as np
from scipy import stats

DEFAULT_COVERAGE = 0.8


def _as_1d(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _check_same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"length mismatch: {a.shape[0]} true values, {b.shape[0]} predictions")


def y_range(y_true: Sequence[float] | np.ndarray) -> float:
    """max - min of the finite test values; the normaliser of all error metrics."""
    y = _as_1d(y_true, "y_true")
    y = y[np.isfinite(y)]
    if y.size == 0:
        return float("nan")
    return float(np.max(y) - np.min(y))


def normalized_mae(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """mean |pred - y| / (max y_test - min y_test), over points where both are finite.

    A prediction that is nan (a model that answers "infeasible") counts as missing, not as an
    error of infinite size; callers that care report the missing fraction separately.
    Returns nan when the test set has a single distinct value (the range is zero).
    """
    y = _as_1d(y_true, "y_true")
    p = _as_1d(y_pred, "y_pred")
    _check_same_length(y, p)
    ok = np.isfinite(y) & np.isfinite(p)
    if not ok.any():
        return float("nan")
    span = y_range(y)
    if not span > 0:
        return float("nan")
    return float(np.mean(np.abs(p[ok] - y[ok])) / span)


def top_k_regret(
    y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray, *, k: int = 5, maximize: bool
) -> float:
    """How good the model's favourite test points are: (best test y - best y among the k
    points predicted best) / (best test y - median test y), in the goal's direction.

    0: the model's top k hold the best test point; 1: its best pick is a typical point.
    What an acquisition exploits is the top of the ranking, which Spearman over the whole
    test set weighs like any other part: a model can rank 0.9 and still put mediocre points
    first. Points without a finite prediction are never picked; nan when no point has one or
    the test set's best equals its median.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y = _as_1d(y_true, "y_true")
    p = _as_1d(y_pred, "y_pred")
    _check_same_length(y, p)
    loss, score = to_loss(y, maximize), to_loss(p, maximize)
    ok_y = np.isfinite(loss)
    ok = ok_y & np.isfinite(score)
    if not ok.any():
        return float("nan")
    best, typical = float(np.min(loss[ok_y])), float(np.median(loss[ok_y]))
    if not typical > best:
        return float("nan")
    idx = np.flatnonzero(ok)
    top = idx[np.argsort(score[idx], kind="stable")[:k]]
    return float((np.min(loss[top]) - best) / (typical - best))


def _rank_correlation(fn, y_true, y_pred) -> float:
    y = _as_1d(y_true, "y_true")
    p = _as_1d(y_pred, "y_pred")
    _check_same_length(y, p)
    ok = np.isfinite(y) & np.isfinite(p)
    if ok.sum() < 2:
        return float("nan")
    y, p = y[ok], p[ok]
    # A constant prediction has no ranking: scipy warns and returns nan; say so quietly.
    if np.all(p == p[0]) or np.all(y == y[0]):
        return float("nan")
    return float(fn(y, p)[0])


def spearman(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation over finite pairs; nan for constant inputs."""
    return _rank_correlation(stats.spearmanr, y_true, y_pred)


def kendall(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Kendall tau-b over finite pairs; nan for constant inputs."""
    return _rank_correlation(stats.kendalltau, y_true, y_pred)


def gaussian_interval(
    mean: np.ndarray, std: np.ndarray, coverage: float = DEFAULT_COVERAGE
) -> tuple[np.ndarray, np.ndarray]:
    """Central `coverage` interval of N(mean, std^2), elementwise."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    z = stats.norm.ppf(0.5 + coverage / 2.0)
    mean = np.asarray(mean, dtype=float)
    std = np.abs(np.asarray(std, dtype=float))
    return mean - z * std, mean + z * std


def sample_interval(samples: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> tuple[np.ndarray, np.ndarray]:
    """Central `coverage` interval of per-point samples, shape (N, S), ignoring nan samples.

    Rows whose samples are all nan (predicted infeasible) get a nan interval.
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2:
        raise ValueError(f"samples must have shape (N, S), got {samples.shape}")
    lo_q, hi_q = 0.5 - coverage / 2.0, 0.5 + coverage / 2.0
    lower = np.full(samples.shape[0], np.nan)
    upper = np.full(samples.shape[0], np.nan)
    ok = np.isfinite(samples).any(axis=1)
    if ok.any():
        with np.errstate(all="ignore"):
            lower[ok] = np.nanquantile(samples[ok], lo_q, axis=1)
            upper[ok] = np.nanquantile(samples[ok], hi_q, axis=1)
    return lower, upper


def interval_coverage(y_true: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of finite y with lower <= y <= upper; points with a nan interval count as outside.

    Counting a missing interval as a miss keeps a model from improving its score by declining
    to predict.
    """
    y = _as_1d(y_true, "y_true")
    lower = _as_1d(lower, "lower")
    upper = _as_1d(upper, "upper")
    _check_same_length(y, lower)
    _check_same_length(y, upper)
    ok = np.isfinite(y)
    if not ok.any():
        return float("nan")
    with np.errstate(invalid="ignore"):
        inside = (lower[ok] <= y[ok]) & (y[ok] <= upper[ok])
    return float(np.mean(inside))


@attrs.frozen
class PredictiveDistribution:
    """A model's answer for N points: a point estimate, a spread, optionally raw samples.

    `samples` (N, S) in metric units, nan where a sample said "infeasible". When present,
    intervals come from the empirical quantiles (language models' predictive distributions
    are far from Gaussian); otherwise from N(mean, std^2).
    """

    mean: np.ndarray = attrs.field(converter=lambda a: np.asarray(a, dtype=float).reshape(-1))
    std: np.ndarray = attrs.field(converter=lambda a: np.asarray(a, dtype=float).reshape(-1))
    samples: np.ndarray | None = attrs.field(
        default=None, converter=lambda a: None if a is None else np.asarray(a, dtype=float)
    )

    def __attrs_post_init__(self) -> None:
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean {self.mean.shape} and std {self.std.shape} differ in shape")
        if self.samples is not None and (
            self.samples.ndim != 2 or self.samples.shape[0] != self.mean.shape[0]
        ):
            raise ValueError(f"samples must be (N, S) with N={self.mean.shape[0]}, got {self.samples.shape}")

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def interval(self, coverage: float = DEFAULT_COVERAGE) -> tuple[np.ndarray, np.ndarray]:
        if self.samples is not None:
            return sample_interval(self.samples, coverage)
        return gaussian_interval(self.mean, self.std, coverage)

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> "PredictiveDistribution":
        """Median as point estimate (OmniPred's choice, robust to stray samples), std of samples."""
        samples = np.asarray(samples, dtype=float)
        n = samples.shape[0]
        mean = np.full(n, np.nan)
        std = np.full(n, np.nan)
        ok = np.isfinite(samples).any(axis=1)
        if ok.any():
            mean[ok] = np.nanmedian(samples[ok], axis=1)
            std[ok] = np.nanstd(samples[ok], axis=1)
        return cls(mean=mean, std=std, samples=samples)


def calibration(
    y_true: Sequence[float] | np.ndarray,
    prediction: PredictiveDistribution,
    coverage: float = DEFAULT_COVERAGE,
) -> float:
    """Fraction of test points inside the predicted central `coverage` interval (ideal: coverage)."""
    lower, upper = prediction.interval(coverage)
    return interval_coverage(np.asarray(y_true, dtype=float), lower, upper)


@attrs.frozen
class RegressionScores:
    """All regression metrics of one (task, model, train size) cell."""

    normalized_mae: float
    spearman: float
    kendall: float
    calibration: float
    missing_fraction: float  # predictions that were nan (model said infeasible / failed)
    top5_regret: float  # see `top_k_regret`

    def to_dict(self) -> dict[str, float]:
        return attrs.asdict(self)


def score_regression(
    y_true: Sequence[float] | np.ndarray,
    prediction: PredictiveDistribution,
    coverage: float = DEFAULT_COVERAGE,
    *,
    maximize: bool,
) -> RegressionScores:
    y = _as_1d(y_true, "y_true")
    if len(prediction) != y.shape[0]:
        raise ValueError(f"{len(prediction)} predictions for {y.shape[0]} test points")
    return RegressionScores(
        normalized_mae=normalized_mae(y, prediction.mean),
        spearman=spearman(y, prediction.mean),
        kendall=kendall(y, prediction.mean),
        calibration=calibration(y, prediction, coverage),
        missing_fraction=float(np.mean(~np.isfinite(prediction.mean))),
        top5_regret=top_k_regret(y, prediction.mean, k=5, maximize=maximize),
    )


# ---------------------------------------------------------------------------------------------
# Optimisation metrics
# ---------------------------------------------------------------------------------------------


def to_loss(values: np.ndarray | Sequence[float] | float, maximize: bool) -> np.ndarray:
    """Values in "lower is better" orientation: negated for MAXIMIZE metrics."""
    arr = np.asarray(values, dtype=float)
    return -arr if maximize else arr


def best_so_far(losses: Sequence[float] | np.ndarray) -> np.ndarray:
    """Running minimum of losses, ignoring nan (infeasible trials); nan until the first finite."""
    arr = np.asarray(losses, dtype=float).reshape(-1)
    out = np.full(arr.shape, np.nan)
    best = math.inf
    for i, v in enumerate(arr):
        if np.isfinite(v) and v < best:
            best = float(v)
        out[i] = best if math.isfinite(best) else np.nan
    return out


def normalized_regret(
    loss: np.ndarray | float, optimum: float, reference: float
) -> np.ndarray:
    """(loss - optimum) / (reference - optimum), in loss orientation.

    `reference` is a typical random point's loss (the median of a random sample), so 1 means
    "no better than random guessing" and 0 means "found the optimum". The scale makes tasks
    with different units averageable. A degenerate task (reference == optimum) gives 0 where
    the optimum was reached and inf elsewhere.
    """
    loss = np.asarray(loss, dtype=float)
    denom = float(reference) - float(optimum)
    with np.errstate(divide="ignore", invalid="ignore"):
        if denom > 0:
            return (loss - optimum) / denom
        return np.where(loss <= optimum, 0.0, np.inf)


@attrs.frozen
class WinRate:
    """Paired comparison of designer A against designer B over the same (task, repeat) pairs.

    rate = (wins + ties/2) / n. `sign_test_p` is the two-sided exact binomial test of wins
    against losses (ties dropped, the usual sign test). `ci_low`/`ci_high` is a percentile
    bootstrap interval of the rate over pairs.
    """

    wins: int
    losses: int
    ties: int
    rate: float
    sign_test_p: float
    ci_low: float
    ci_high: float

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    def to_dict(self) -> dict[str, float | int]:
        return attrs.asdict(self)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties already removed); 1.0 with no decided pairs."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be non-negative")
    n = wins + losses
    if n == 0:
        return 1.0
    return float(stats.binomtest(wins, n, 0.5, alternative="two-sided").pvalue)


def bootstrap_ci(
    outcomes: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `outcomes` (e.g. 1/0.5/0 per pair)."""
    x = np.asarray(outcomes, dtype=float).reshape(-1)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(num_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def win_rate(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    tie_tolerance: float = 1e-9,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Paired win rate of A over B where lower is better (regrets), pairs aligned by index.

    Pairs where either side is nan (a failed run) are dropped. |a - b| <= tie_tolerance is a
    tie: both designers finding the optimum must not count as a win for either.
    """
    a = np.asarray(a, dtype=float).reshape(-1)
    b = np.asarray(b, dtype=float).reshape(-1)
    _check_same_length(a, b)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    with np.errstate(invalid="ignore"):
        diff = a - b
        tie = (np.abs(diff) <= tie_tolerance) | (a == b)
    win = (~tie) & (diff < 0)
    loss = (~tie) & (diff > 0)
    outcomes = np.where(win, 1.0, np.where(tie, 0.5, 0.0))
    n = int(outcomes.size)
    wins, losses, ties = int(win.sum()), int(loss.sum()), int(tie.sum())
    rate = float(outcomes.mean()) if n else float("nan")
    lo, hi = bootstrap_ci(outcomes, confidence=confidence, seed=seed)
    return WinRate(
        wins=wins,
        losses=losses,
        ties=ties,
        rate=rate,
        sign_test_p=sign_test(wins, losses),
        ci_low=lo,
        ci_high=hi,
    )
