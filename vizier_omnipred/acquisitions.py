"""Acquisition functions over sampled objective values (numpy only).

The regressor gives S samples of y per candidate (`YSamples`: values (N, S), nan where
a sample is `<INFEASIBLE>`, and the matching boolean mask). An acquisition turns those
into one score per candidate, **higher is better**, so the designer can rank
candidates without knowing which acquisition it runs.

Conventions shared by every acquisition here:

* **Goal direction.** Scores are computed in "maximise space": y for MAXIMIZE, -y for
  MINIMIZE (the regressor's samples are always in the metric's own units and sign).
  `best` is the incumbent in the metric's own units too (the lowest observed value for
  MINIMIZE); it is flipped the same way.
* **Feasibility.** An infeasible sample is the worst possible outcome. EI and PI count
  it as zero improvement, which multiplies them by the sampled probability of being
  feasible p = 1 - (infeasible fraction). UCB takes its quantile over all samples with
  infeasible ones at -inf, so a candidate is pulled down by its infeasible mass (a 50%
  infeasible candidate's 0.9-quantile is its feasible samples' 0.8-quantile). Thompson
  draws one sample out of all S, so it draws an infeasible one with probability 1 - p.
* **Scores are absolute**, i.e. a candidate's score depends only on its own samples and
  on `best`, never on the other candidates of the batch: the designer compares scores
  computed in different batches (an optimiser's successive iterations).
* **Orderings that a plain number cannot express** (UCB or Thompson landing on the
  infeasible mass) use `infeasible_floor(p)`: finite scores far below any value the
  float tokenizer can write (|y| < 1e14), ordered by p, so "more likely feasible" still
  wins among them. A candidate whose samples are *all* infeasible always scores -inf,
  the lowest score there is.

Any callable with the `Acquisition` signature can be passed to the designer instead of
a name: see `get_acquisition`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs
import numpy as np
from vizier import pyvizier as vz

from vizier_omnipred.sampling import YSamples

__all__ = [
    "Acquisition",
    "UpperQuantile",
    "ExpectedImprovement",
    "ProbabilityOfImprovement",
    "ThompsonSample",
    "ACQUISITIONS",
    "get_acquisition",
    "maximise_space",
    "infeasible_floor",
    "INFEASIBLE_FLOOR",
]

# Below any representable objective value (the float tokenizer tops out near 1e14).
INFEASIBLE_FLOOR = -1e200


@runtime_checkable
class Acquisition(Protocol):
    """Scores candidates from their sampled objective values; higher is better.

    Args:
      samples: (N, S) samples per candidate, in the metric's own units.
      goal: the metric's goal; MINIMIZE acquisitions prefer lower samples.
      best: the best feasible observed value so far in the metric's own units (the
        minimum for MINIMIZE), or None when no feasible trial has been observed yet.
      rng: randomness for stochastic acquisitions (Thompson sampling).

    Returns:
      (N,) float scores. -inf marks a candidate the model thinks is surely infeasible.
    """

    def __call__(
        self,
        samples: YSamples,
        *,
        goal: vz.ObjectiveMetricGoal,
        best: float | None,
        rng: np.random.Generator,
    ) -> np.ndarray: ...


def maximise_space(
    samples: YSamples, goal: vz.ObjectiveMetricGoal, best: float | None
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(values with infeasible samples at -inf, infeasible mask, best) with larger = better."""
    sign = -1.0 if goal == vz.ObjectiveMetricGoal.MINIMIZE else 1.0
    infeasible = np.asarray(samples.infeasible, dtype=bool)
    values = np.asarray(samples.values, dtype=float)
    if values.shape != infeasible.shape or values.ndim != 2:
        raise ValueError(
            f"samples must be (N, S) values and mask of the same shape, got {values.shape} and {infeasible.shape}"
        )
    # A non-finite feasible sample would poison the statistics; the sampler never
    # emits one, but a user-built YSamples might: count it as infeasible.
    bad = infeasible | ~np.isfinite(values)
    y = np.where(bad, -np.inf, sign * np.where(bad, 0.0, values))
    if best is not None:
        best = float(best)
        if not np.isfinite(best):
            best = None
        else:
            best = sign * best
    return y, bad, best


def infeasible_floor(feasible_probability: np.ndarray) -> np.ndarray:
    """Finite scores below any real value, ordered by the probability of feasibility.

    p == 0 gives -inf (all samples infeasible: the lowest score of all).
    """
    p = np.asarray(feasible_probability, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(p > 0, INFEASIBLE_FLOOR * (2.0 - p), -np.inf)


@attrs.frozen
class UpperQuantile:
    """Upper confidence bound as a quantile of the sampled outcomes (OmniPred's UCB).

    The q-quantile of the outcomes in maximise space, infeasible outcomes counted as
    -inf: for MAXIMIZE the q-quantile of y, for MINIMIZE the (1-q)-quantile of y (an
    optimistic, i.e. low, value). q = 0.5 is the pure-exploitation median; larger q
    explores more. When the quantile falls on the infeasible mass, the score is
    `infeasible_floor(p)`.
    """

    q: float = attrs.field(default=0.9)

    @q.validator
    def _check_q(self, _, value):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"quantile q must be in [0, 1], got {value}")

    def __call__(self, samples, *, goal, best=None, rng=None) -> np.ndarray:
        y, bad, _ = maximise_space(samples, goal, best)
        if y.shape[1] == 0:
            return np.full(y.shape[0], -np.inf)
        # np.quantile with -inf entries: use the 'lower' order statistic so an -inf
        # never gets interpolated with a finite value into nan/-inf arithmetic.
        sorted_y = np.sort(y, axis=1)
        k = int(np.floor(self.q * (y.shape[1] - 1) + 1e-9))
        frac = self.q * (y.shape[1] - 1) - k
        lo = sorted_y[:, k]
        hi = sorted_y[:, min(k + 1, y.shape[1] - 1)]
        with np.errstate(invalid="ignore"):
            score = np.where(np.isfinite(lo) & np.isfinite(hi), lo + frac * (hi - lo), lo)
        p = 1.0 - bad.mean(axis=1)
        return np.where(np.isfinite(score), score, infeasible_floor(p))


@attrs.frozen
class ExpectedImprovement:
    """Monte Carlo expected improvement over the incumbent.

    EI = mean over all S samples of max(0, y - best) in maximise space, an infeasible
    sample improving by 0; that is p * E[improvement | feasible].

    Without an incumbent (`best is None`: no feasible trial observed yet, e.g. every
    trial so far was infeasible) any feasible outcome is an improvement, so EI falls
    back to the probability of being feasible p: the designer first looks for the
    feasible region. Candidates whose samples are all infeasible score -inf.
    """

    def __call__(self, samples, *, goal, best=None, rng=None) -> np.ndarray:
        y, bad, best = maximise_space(samples, goal, best)
        p = 1.0 - bad.mean(axis=1) if y.shape[1] else np.zeros(y.shape[0])
        if best is None:
            score = p.copy()
        else:
            improvement = np.where(bad, 0.0, np.maximum(np.where(bad, best, y) - best, 0.0))
            score = improvement.mean(axis=1) if y.shape[1] else np.zeros(y.shape[0])
        return np.where(p > 0, score, -np.inf)


@attrs.frozen
class ProbabilityOfImprovement:
    """Fraction of the samples that are feasible and strictly better than the incumbent.

    Without an incumbent (`best is None`) it is the probability of being feasible, as
    for `ExpectedImprovement`. `margin` asks for an improvement of at least that much
    (in the metric's units). Candidates whose samples are all infeasible score -inf.
    """

    margin: float = 0.0

    def __call__(self, samples, *, goal, best=None, rng=None) -> np.ndarray:
        y, bad, best = maximise_space(samples, goal, best)
        if y.shape[1] == 0:
            return np.full(y.shape[0], -np.inf)
        p = 1.0 - bad.mean(axis=1)
        if best is None:
            score = p.copy()
        else:
            score = ((~bad) & (y > best + self.margin)).mean(axis=1)
        return np.where(p > 0, score, -np.inf)


@attrs.frozen
class ThompsonSample:
    """One sample per candidate, drawn uniformly among its S samples (Thompson sampling).

    Uses `rng`, so successive calls draw different samples: a batch of suggestions
    scored in several calls explores different plausible functions. An infeasible draw
    scores `infeasible_floor(p)`.
    """

    def __call__(self, samples, *, goal, best=None, rng=None) -> np.ndarray:
        y, bad, _ = maximise_space(samples, goal, best)
        n, s = y.shape
        if s == 0:
            return np.full(n, -np.inf)
        rng = rng if rng is not None else np.random.default_rng()
        pick = rng.integers(0, s, size=n)
        draw = y[np.arange(n), pick]
        p = 1.0 - bad.mean(axis=1)
        return np.where(np.isfinite(draw), draw, infeasible_floor(p))


ACQUISITIONS: dict[str, Callable[[], Acquisition]] = {
    "ucb": UpperQuantile,
    "ei": ExpectedImprovement,
    "pi": ProbabilityOfImprovement,
    "thompson": ThompsonSample,
}


def get_acquisition(name_or_obj: str | Acquisition) -> Acquisition:
    """An acquisition by name ('ucb', 'ei', 'pi', 'thompson') or a user's own callable.

    A callable is returned unchanged: it must follow the `Acquisition` signature.
    """
    if isinstance(name_or_obj, str):
        key = name_or_obj.strip().lower()
        if key not in ACQUISITIONS:
            raise ValueError(
                f"unknown acquisition {name_or_obj!r}; valid names: {sorted(ACQUISITIONS)}, "
                "or pass a callable (samples, *, goal, best, rng) -> (N,) scores"
            )
        return ACQUISITIONS[key]()
    if callable(name_or_obj):
        return name_or_obj
    raise TypeError(
        f"acquisition must be a name in {sorted(ACQUISITIONS)} or a callable, got {type(name_or_obj).__name__}"
    )
