"""A study's level and spread, fitted on its trials, kept apart from what the model ranks.

A pretrained model that reads a new study often ranks its trials well before it has seen
any (its shape transfers from related studies) but misplaces their level: a held-out
HPOBench dataset whose accuracies sit at 0.9 where its neighbours sat at 0.7. A
fine-tune on 10 trials fixes the level by moving every weight, and throws part of the
ranking away with it (issue 13's probe: Spearman 0.84 zero-shot, 0.73 after fine-tuning).

`LevelMap` is the cheap part done exactly: an increasing map from the model's zero-shot
medians to the study's observed values. Increasing, so it keeps the model's ranking; the
fine-tune that may follow then trains in the model's own frame (targets mapped back through
the inverse), where it has only shape left to correct, not the level.

The map is monotone, not affine: isotonic regression of the observed values on the medians
(pool-adjacent-violators), linear between its blocks and with half the least-squares slope
beyond them (`SLOPE_BEYOND_TRIALS`). A model that read other datasets ranks a new one well
but bends its scale (compresses the top, say), which an affine map fitted on 10 trials turns
into error: on the 8 held-out HPOBench datasets this map's median nMAE was 0.092 at 10
trials and 0.077 at 30, the affine one's 0.137 and 0.117 (docs/BENCHMARKS.md). Piecewise
linear rather than isotonic's steps, so that points between two trials, and beyond the best
one, keep their order.

`fit_range_map` is the other frame a fit can train in: the study's own range mapped onto one
decade of the float tokens (`RANGE_FRAME`). The full recipe, which re-learns a new study's
shape from its trials, trains there: every target then shares the sign and exponent tokens
and its first digit says where in the study's range it lies, instead of raw values whose
exponent changes across the range (1.2e2 and 9.8e1 are neighbours whose leading digits are
not). Measured on BBOB, 30 trials, the shipped checkpoint (docs/BENCHMARKS.md).

`fit_rank_frame` is the range frame with the values' normal scores (their ranks through the
Gaussian quantile function) as positions instead of their linear ones: the output warping
Vizier's GP bandit applies before its fit. An optimiser's trials crowd where the objective is
good, and a linear frame gives that crowd a sliver of the float tokens (on Sphere the best
trials of a study sit within a thousandth of its range of each other): the model cannot write,
let alone learn, the differences a search near the optimum has to rank. In ranks every trial
gets an equal share, and a monotone map keeps every ordering an acquisition reads.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import attrs
import numpy as np

# Below this many observed values only the shift is fitted: a slope through two points is noise.
MIN_TRIALS_FOR_SCALE = 3
# Beyond the trials' range the map continues at this fraction of the least-squares slope: a
# hedge between clipping (isotonic regression's own rule, which ties every point beyond the
# best trial and so loses the top of the ranking) and the full slope (a line fitted on the
# trials, extrapolated). Measured on held-out HPOBench datasets (docs/BENCHMARKS.md): nMAE
# 0.091 at 10 trials with 0.5, 0.099 with 1.0, 0.085 clipped (with ties).
SLOPE_BEYOND_TRIALS = 0.5
# The model-frame interval a study's observed range is mapped onto by `fit_range_map`: inside
# one decade ([1, 10): one sign, one exponent token), with a sixth of the range to spare on
# either side for values beyond the trials' (a new best) before the exponent has to change.
RANGE_FRAME = (2.0, 8.0)
# A previous range map is kept while the study's values stay inside this part of the decade
# (model frame): a warm refit then trains on the same targets plus the new trials', instead of
# spending its few steps on re-levelling every target.
RANGE_FRAME_KEPT = (1.0, 9.5)
# Values whose range exceeds this many interquartile ranges stay in the raw frame (the identity
# map): one diverged trial at 1e30 would squeeze every other target onto one token string,
# where the exponent token of raw values keeps them apart. Synthetic BBOB functions at 30 random
# trials span 2-26 interquartile ranges, HPOBench tables 1-10.
RANGE_FRAME_MAX_SPREAD = 50.0


def _knots_converter(value) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in value)


@attrs.frozen
class LevelMap:
    """y = f(y_model), increasing.

    Without knots, f is affine: scale * y_model + shift. With knots ((model value, study
    value) pairs, both strictly increasing), f is linear between them and has slope `scale`
    beyond the first and the last (`shift` is then unused).
    """

    scale: float = 1.0
    shift: float = 0.0
    knots: tuple[tuple[float, float], ...] = attrs.field(default=(), converter=_knots_converter)

    def __attrs_post_init__(self):
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.shift)):
            raise ValueError(f"a level map needs a finite scale > 0 and a finite shift, got {self}")
        if self.knots:
            k = np.asarray(self.knots, dtype=float)
            if len(k) < 2 or not np.all(np.isfinite(k)) or np.any(np.diff(k[:, 0]) <= 0) or np.any(np.diff(k[:, 1]) <= 0):
                raise ValueError("a level map's knots must be 2 or more finite pairs, strictly increasing in both values")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0 and not self.knots

    def apply(self, model_values: np.ndarray) -> np.ndarray:
        """Model samples -> the study's scale (non-finite values stay as they are)."""
        v = np.asarray(model_values, dtype=float)
        if not self.knots:
            return self.scale * v + self.shift
        return _piecewise(v, *np.asarray(self.knots, dtype=float).T, self.scale)

    def invert(self, value: float) -> float:
        """An observed value -> the model's frame (what a fine-tune trains on)."""
        if not self.knots:
            return (value - self.shift) / self.scale
        kx, ky = np.asarray(self.knots, dtype=float).T
        return float(_piecewise(np.asarray(value, dtype=float), ky, kx, 1.0 / self.scale))

    def to_json(self) -> list:
        out: list = [self.scale, self.shift]
        if self.knots:
            out.append([list(k) for k in self.knots])
        return out

    @classmethod
    def from_json(cls, value) -> "LevelMap":
        """Reads `to_json`'s list; [scale, shift] alone is an affine map (as saved before knots)."""
        scale, shift, *rest = value
        return cls(scale=float(scale), shift=float(shift), knots=rest[0] if rest else ())


def _piecewise(v: np.ndarray, kx: np.ndarray, ky: np.ndarray, slope: float) -> np.ndarray:
    """Linear through (kx, ky) inside, slope `slope` beyond the ends; nan/inf pass through."""
    inside = np.interp(v, kx, ky)
    out = np.where(v < kx[0], ky[0] + slope * (v - kx[0]), np.where(v > kx[-1], ky[-1] + slope * (v - kx[-1]), inside))
    return np.where(np.isfinite(v), out, v)


def isotonic_blocks(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the blocks of the least-squares non-decreasing fit of y on x,
    as (mean x, fitted y) per block, both strictly increasing. Equal x values share a block."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    # one starting block per distinct x: (sum of x, sum of y, count)
    starts = np.r_[0, np.flatnonzero(np.diff(x) > 0) + 1]
    sx, sy, n = (list(np.add.reduceat(a, starts)) for a in (x, y, np.ones_like(x)))
    merged_x, merged_y, merged_n = [], [], []
    for bx, by, bn in zip(sx, sy, n):
        merged_x.append(bx)
        merged_y.append(by)
        merged_n.append(bn)
        while len(merged_y) > 1 and merged_y[-2] / merged_n[-2] >= merged_y[-1] / merged_n[-1]:
            bx, by, bn = merged_x.pop(), merged_y.pop(), merged_n.pop()
            merged_x[-1] += bx
            merged_y[-1] += by
            merged_n[-1] += bn
    counts = np.asarray(merged_n)
    return np.asarray(merged_x) / counts, np.asarray(merged_y) / counts


def fit_level_map(model_medians: np.ndarray, observed: np.ndarray) -> LevelMap:
    """The monotone map from the model's medians to the observed values (module doc).

    Pairs with a non-finite median or value are left out. The slope beyond the knots is
    `SLOPE_BEYOND_TRIALS` times the least-squares line's (the whole map is that line when
    the isotonic fit pools everything into one block). With fewer than
    `MIN_TRIALS_FOR_SCALE` pairs, or medians that do not vary, only the shift is fitted
    (scale 1). A fitted slope <= 0 means the model orders these trials against the data;
    the map is then affine: it keeps the model's order but matches the observed spread
    (scale = std of the values / std of the medians), leaving the order for the fine-tune
    to correct. No usable pair gives the identity.
    """
    m = np.asarray(model_medians, dtype=float)
    y = np.asarray(observed, dtype=float)
    ok = np.isfinite(m) & np.isfinite(y)
    m, y = m[ok], y[ok]
    if m.size == 0:
        return LevelMap()
    spread_m = float(np.std(m))
    if m.size < MIN_TRIALS_FOR_SCALE or spread_m <= 1e-12 * max(1.0, float(np.max(np.abs(m)))):
        return LevelMap(scale=1.0, shift=float(np.mean(y - m)))
    slope, intercept = np.polyfit(m, y, 1)
    if not (np.isfinite(slope) and slope > 0):
        spread_y = float(np.std(y))
        slope = spread_y / spread_m if spread_y > 0 else 1.0
        intercept = float(np.mean(y) - slope * np.mean(m))
        return LevelMap(scale=float(slope), shift=float(intercept))
    kx, ky = isotonic_blocks(m, y)
    if len(kx) < 2:
        return LevelMap(scale=float(slope), shift=float(intercept))
    return LevelMap(scale=SLOPE_BEYOND_TRIALS * float(slope), shift=float(intercept),
                    knots=tuple(zip(kx.tolist(), ky.tolist())))


def fit_range_map(observed: np.ndarray, previous: LevelMap | None = None) -> LevelMap:
    """The affine map from `RANGE_FRAME` onto the observed values' range (module doc).

    Non-finite values are left out; none left gives the identity. One distinct value v is
    mapped to the middle of the frame with a scale of max(|v|, 1) / 6 (nothing says how wide
    the study's range is). `previous`, an affine map, is returned unchanged when every value
    falls inside `RANGE_FRAME_KEPT` in its frame (see there). Heavy tails (a range over
    `RANGE_FRAME_MAX_SPREAD` interquartile ranges) give the identity: the raw frame.
    """
    y = np.asarray(observed, dtype=float)
    y = y[np.isfinite(y)]
    if y.size == 0:
        return LevelMap()
    lo_frame, hi_frame = RANGE_FRAME
    if previous is not None and not previous.knots and not previous.is_identity:
        z = (y - previous.shift) / previous.scale
        if RANGE_FRAME_KEPT[0] <= z.min() and z.max() <= RANGE_FRAME_KEPT[1]:
            return previous
    lo, hi = float(y.min()), float(y.max())
    q1, q3 = np.percentile(y, [25, 75])
    if hi - lo > RANGE_FRAME_MAX_SPREAD * (q3 - q1):
        return LevelMap()
    scale = (hi - lo) / (hi_frame - lo_frame)
    if not (math.isfinite(scale) and scale > 1e-12 * max(1.0, abs(lo), abs(hi))):
        scale = max(abs(lo), 1.0) / (hi_frame - lo_frame)
        return LevelMap(scale=scale, shift=lo - scale * (lo_frame + hi_frame) / 2)
    return LevelMap(scale=scale, shift=lo - scale * lo_frame)


def fit_rank_frame(observed: np.ndarray) -> LevelMap:
    """The range frame over the observed values' normal scores (module doc).

    Each distinct value's position in `RANGE_FRAME` is the Gaussian quantile of its mean rank,
    (rank - 0.5) / n, scaled so that the worst and best values sit at the frame's ends; the
    map is linear between those knots. Beyond them it continues with the smaller of its two
    end slopes (each the secant over the two knots nearest that end): a sample beyond the
    best trial reads as a modest improvement, not as the whole study's range per unit.
    Fewer than `MIN_TRIALS_FOR_SCALE` distinct values give `fit_range_map`'s affine frame.
    Heavy tails need no exception here: a diverged trial is one rank like any other.
    """
    y = np.asarray(observed, dtype=float)
    y = y[np.isfinite(y)]
    values, inverse = np.unique(y, return_inverse=True)
    if values.size < MIN_TRIALS_FOR_SCALE:
        return fit_range_map(y)
    counts = np.bincount(inverse)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # ties share their mean rank (1-based)
    normal = NormalDist()
    z = np.array([normal.inv_cdf((r - 0.5) / y.size) for r in mean_rank])
    lo_frame, hi_frame = RANGE_FRAME
    positions = lo_frame + (hi_frame - lo_frame) * (z - z[0]) / (z[-1] - z[0])
    k = min(2, values.size - 1)
    slope = min((values[k] - values[0]) / (positions[k] - positions[0]),
                (values[-1] - values[-1 - k]) / (positions[-1] - positions[-1 - k]))
    return LevelMap(scale=float(slope), knots=tuple(zip(positions.tolist(), values.tolist())))
