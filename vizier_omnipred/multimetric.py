"""Several metrics from one text model: hypervolume scalarizations of sampled objective
vectors, the sampled probability of being safe, Pareto fronts and hypervolumes (numpy only).

The regressor samples every metric of a candidate (`OmniPredRegressor.sample_metrics`);
sample j of each metric together is one *joint sample*, an objective vector. Vizier's
multi-objective GP bandit scalarizes its UCB with random hypervolume scalarizations
(Golovin & Zhang 2020, arXiv 2006.04655): for a weight w on the positive unit sphere and a
reference point r, s_w(y) = min_i(max(0, y_i - r_i) / w_i) ** M, and the mean of s_w over
random w measures dominated hypervolume. Here the scalarizations act on the joint
samples: a candidate's optimistic value for weight w is the q-quantile over its samples
of s_w(sample), and its score is the mean over w of the improvement of that value over
the best s_w among the observed (safe, feasible) trials: an optimistic estimate of the
hypervolume a candidate adds to the front. Keeping the per-weight values lets a batch be
picked greedily (`greedy_front_picks`): each pick raises the per-weight bests, so the
next pick gains only where the front is still open, and a batch spreads along it.

Objectives are compared in *maximise space* (MINIMIZE metrics negated) and divided by
the observed range of each objective, so no objective dominates by its units. An
infeasible sample is below the reference point in every objective: it adds nothing.

Safety (Vizier's `SafetyChecker` rule): a value is safe if it is >= the threshold for a
MAXIMIZE safety metric, <= for MINIMIZE; a trial that does not report a safety metric is
safe for it. `safe_probability` is the fraction of joint samples in which *every* safety
metric is feasible and safe (an infeasible sample of a safety metric counts as unsafe).
The *safety margin* says how far: each safety metric's distance to the safe side of its
threshold (positive inside), in units of that metric's observed spread, the smallest over
the metrics. It orders points that are all (probably) unsafe by how close to safe they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np
from vizier import pyvizier as vz

from vizier_omnipred.sampling import YSamples

__all__ = [
    "HypervolumeScalarization",
    "UNSAFE_FLOOR",
    "greedy_front_picks",
    "hypervolume_2d",
    "is_safe",
    "pareto_mask",
    "predicted_safety_margin",
    "safe_probability",
    "safety_margin",
    "safety_scales",
    "to_maximise",
    "unsafe_floor",
]

# Scores of candidates gated out as probably unsafe: below any real acquisition value
# (the float tokenizer writes |y| < 1e14) and above the trust region's outside band
# (-1e20 and lower) and the infeasible floor (-1e200), ordered by the safe probability.
UNSAFE_FLOOR = -1e15


def unsafe_floor(p_safe: np.ndarray, margin: np.ndarray | None = None) -> np.ndarray:
    """Finite scores in [-2e15, -1e15], higher for a higher probability of being safe and,
    between equal probabilities (all 0 while the model thinks nothing is safe), for a larger
    predicted safety margin: closer to safe first. The margin moves a score by less than a
    step of 1/1000 in probability, so it only breaks ties for up to 1,000 samples."""
    p = np.asarray(p_safe, dtype=float)
    if margin is not None:
        m = np.nan_to_num(np.asarray(margin, dtype=float), nan=-np.inf)
        p = p + 1e-3 * (0.5 + np.arctan(m) / np.pi)  # in (0, 1e-3); -inf -> 0
    return UNSAFE_FLOOR * (2.0 - p)


def _signed_distance(values: np.ndarray, metric: vz.MetricInformation) -> np.ndarray:
    """Distance to the safe side of the threshold, positive when safe."""
    if metric.goal == vz.ObjectiveMetricGoal.MAXIMIZE:
        return values - metric.safety_threshold
    return metric.safety_threshold - values


def safety_scales(observed: Sequence[Mapping[str, float]], safety: Sequence[vz.MetricInformation]) -> dict[str, float]:
    """Per safety metric, the spread (std) of its observed finite values: the unit of its
    margin, so that metrics in different units compare. Fewer than two values or no spread:
    |threshold|, or 1 for a zero threshold."""
    scales = {}
    for m in safety:
        v = np.array([float(o[m.name]) for o in observed if m.name in o], dtype=float)
        v = v[np.isfinite(v)]
        s = float(np.std(v)) if v.size >= 2 else 0.0
        scales[m.name] = s if s > 0 else (abs(float(m.safety_threshold)) or 1.0)
    return scales


def safety_margin(metrics: Mapping[str, float], safety: Sequence[vz.MetricInformation],
                  scales: Mapping[str, float]) -> float:
    """A trial's smallest scaled distance to the safe side over its safety metrics (> 0:
    strictly safe; a metric it did not report does not count, as in `is_safe`; +inf when
    it reported none)."""
    margins = [float(_signed_distance(np.float64(metrics[m.name]), m)) / scales[m.name]
               for m in safety if m.name in metrics]
    return min(margins) if margins else float("inf")


def _joint_margins(samples: Mapping[str, YSamples], safety: Sequence[vz.MetricInformation],
                   scales: Mapping[str, float] | None = None) -> np.ndarray:
    """(N, S) per joint sample, the smallest (scaled) distance to the safe side over the safety
    metrics; an infeasible sample of any safety metric is -inf. >= 0 exactly when safe."""
    worst = None
    for m in safety:
        s = samples[m.name]
        values = np.asarray(s.values, dtype=float)
        feasible = ~np.asarray(s.infeasible, dtype=bool) & np.isfinite(values)
        d = _signed_distance(np.where(feasible, values, 0.0), m) / (scales[m.name] if scales else 1.0)
        d = np.where(feasible, d, -np.inf)
        worst = d if worst is None else np.minimum(worst, d)
    return worst


def predicted_safety_margin(samples: Mapping[str, YSamples], safety: Sequence[vz.MetricInformation],
                            scales: Mapping[str, float]) -> np.ndarray | None:
    """(N,) median over joint samples of the smallest scaled margin over the safety metrics
    (an infeasible sample counts as -inf); None without safety metrics."""
    if not safety:
        return None
    worst = _joint_margins(samples, safety, scales)
    if worst.shape[1] == 0:
        return np.full(worst.shape[0], -np.inf)
    return np.median(worst, axis=1)


def to_maximise(values: np.ndarray, goals: Sequence[vz.ObjectiveMetricGoal]) -> np.ndarray:
    """(..., M) values in maximise space: MINIMIZE columns negated."""
    signs = np.array([-1.0 if g == vz.ObjectiveMetricGoal.MINIMIZE else 1.0 for g in goals])
    return np.asarray(values, dtype=float) * signs


def is_safe(metrics: Mapping[str, float], safety: Sequence[vz.MetricInformation]) -> bool:
    """Vizier's SafetyChecker rule for one trial's reported values."""
    for m in safety:
        if m.name not in metrics:
            continue
        v = float(metrics[m.name])
        if m.goal == vz.ObjectiveMetricGoal.MAXIMIZE:
            if not v >= m.safety_threshold:
                return False
        elif not v <= m.safety_threshold:
            return False
    return True


def safe_probability(samples: Mapping[str, YSamples], safety: Sequence[vz.MetricInformation]) -> np.ndarray | None:
    """(N,) fraction of joint samples safe for every safety metric; None without safety metrics."""
    if not safety:
        return None
    ok = _joint_margins(samples, safety) >= 0.0
    return ok.mean(axis=1) if ok.shape[1] else np.zeros(ok.shape[0])


def pareto_mask(y: np.ndarray) -> np.ndarray:
    """(T,) True for rows of (T, M) maximise-space values that no other row dominates."""
    y = np.asarray(y, dtype=float)
    keep = np.ones(len(y), dtype=bool)
    for i in range(len(y)):
        if not keep[i]:
            continue
        dominated = np.all(y >= y[i], axis=1) & np.any(y > y[i], axis=1)
        if dominated.any():
            keep[i] = False
    return keep


def hypervolume_2d(y: np.ndarray, reference: np.ndarray) -> float:
    """Exact dominated hypervolume of (T, 2) maximise-space points above `reference`."""
    y = np.asarray(y, dtype=float).reshape(-1, 2)
    y = y[np.all(np.isfinite(y), axis=1) & np.all(y > reference, axis=1)]
    if len(y) == 0:
        return 0.0
    y = y[pareto_mask(y)]
    y = y[np.argsort(-y[:, 0])]  # x descending, so y ascending along the front
    volume, previous = 0.0, float(reference[1])
    for a, b in y:
        volume += (a - reference[0]) * (b - previous)
        previous = b
    return float(volume)


@attrs.frozen(eq=False)
class HypervolumeScalarization:
    """Random hypervolume scalarizations, in maximise space, scaled by the observed range.

    weights: (W, M), |normal| draws normalised to the unit sphere (Vizier's
      `create_hv_scalarization`).
    reference: (M,) the observed nadir less 0.1 of the observed range (Vizier's
      `get_reference_point`; scale 0.1 as its docstring recommends).
    scale: (M,) the observed range per objective (1 where it is 0 or unknown).
    best: (W,) the best scalarized value among the observed points (0 without any).
    """

    weights: np.ndarray
    reference: np.ndarray
    scale: np.ndarray
    best: np.ndarray

    @classmethod
    def create(cls, num: int, observed: np.ndarray, rng: np.random.Generator, num_objectives: int) -> "HypervolumeScalarization":
        """`observed`: (T, M) maximise-space values of the safe, feasible trials (T may be 0)."""
        weights = np.abs(rng.normal(size=(num, num_objectives)))
        weights /= np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)
        observed = np.asarray(observed, dtype=float).reshape(-1, num_objectives)
        if len(observed):
            hi, lo = observed.max(axis=0), observed.min(axis=0)
            span = hi - lo
            scale = np.where(span > 0, span, np.maximum(np.abs(hi), 1.0))
            reference = lo - 0.1 * np.where(span > 0, span, scale)
        else:
            scale = np.ones(num_objectives)
            reference = np.full(num_objectives, np.nan)
        self = cls(weights=weights, reference=reference, scale=scale, best=np.zeros(num))
        if len(observed):
            self = attrs.evolve(self, best=self(observed).max(axis=0))
        return self

    @property
    def has_reference(self) -> bool:
        return bool(np.all(np.isfinite(self.reference)))

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """(..., M) maximise-space values (-inf for infeasible) -> (..., W) scalarized."""
        y = np.asarray(y, dtype=float)
        shifted = (y - self.reference) / self.scale
        shifted = np.where(np.isfinite(shifted), np.maximum(shifted, 0.0), 0.0)  # (..., M)
        ratio = shifted[..., None, :] / self.weights  # (..., W, M)
        return np.min(ratio, axis=-1) ** y.shape[-1]

    def optimistic(self, y: np.ndarray, q: float) -> np.ndarray:
        """(N, S, M) joint samples -> (N, W): the q-quantile over samples of each scalarization."""
        s = self(y)  # (N, S, W)
        if s.shape[1] == 0:
            return np.zeros((s.shape[0], s.shape[2]))
        return np.quantile(s, q, axis=1, method="lower")

    def improvement(self, per_weight: np.ndarray, best: np.ndarray | None = None) -> np.ndarray:
        """(N, W) optimistic values -> (N,) mean improvement over the per-weight bests."""
        best = self.best if best is None else best
        return np.maximum(np.asarray(per_weight) - best, 0.0).mean(axis=-1)


def greedy_front_picks(vectors: np.ndarray, best: np.ndarray, n: int) -> list[int]:
    """Greedy batch on per-weight optimistic values (N, W): each pick maximises the mean
    improvement over the bests so far, then raises them. Stops early when no remaining
    candidate improves any weight (the caller fills the rest)."""
    vectors = np.asarray(vectors, dtype=float)
    best = np.asarray(best, dtype=float).copy()
    chosen: list[int] = []
    available = np.ones(len(vectors), dtype=bool)
    while len(chosen) < min(n, len(vectors)):
        gains = np.where(available, np.maximum(vectors - best, 0.0).mean(axis=1), -np.inf)
        i = int(np.argmax(gains))
        if not gains[i] > 0.0:
            break
        chosen.append(i)
        available[i] = False
        best = np.maximum(best, vectors[i])
    return chosen
