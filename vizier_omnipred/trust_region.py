"""The trust region: L-inf balls around the completed trials, Vizier GP bandit's rule.

A language model's samples far from every observed point reflect how it reads unseen
digits more than the objective, and a wide spread there is what an optimistic
acquisition rewards; the designer therefore picks within `trust_radius` of a completed
trial (numeric parameters scaled to [0, 1] by `Space.features`, categorical ones never
limit), as Vizier's `gp/acquisitions.py` `TrustRegion` does for its GP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from vizier_omnipred.search_space import Space

__all__ = ["TrustRegion", "linf_to_nearest", "trust_radius"]


def trust_radius(num_trials: int, num_parameters: int) -> float:
    """Radius of the trust region around completed trials, Vizier GP bandit's rule:
    0.2 + 0.3 * n / (5 (d + 1)) for n trials and d parameters (0.5 after 5 (d + 1) trials,
    and on), infinite before the first trial."""
    if num_trials <= 0:
        return math.inf
    return 0.2 + 0.3 * num_trials / (5.0 * (num_parameters + 1))


def linf_to_nearest(x: np.ndarray, is_cat: np.ndarray, trusted: np.ndarray) -> np.ndarray:
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


@attrs.frozen(eq=False)
class TrustRegion:
    """Distance beyond the trust radius of any point (0 inside).

    Built once per suggestion: the trusted points' features are computed once (numeric
    columns scale the same way in every call; categorical ids do not, but they never
    count). A disabled region, or one whose radius covers the space, puts every point
    inside.
    """

    space: Space
    radius: float
    trusted_x: np.ndarray | None  # None: no limit
    is_cat: np.ndarray | None

    @classmethod
    def around(cls, space: Space, trusted: Sequence[Mapping[str, Any]], *, enabled: bool = True) -> "TrustRegion":
        """The region around `trusted` points (every completed trial, infeasible ones
        included: the model was told what happened there)."""
        radius = trust_radius(len(trusted), len(space.names))
        if not enabled or radius >= 1.0:
            return cls(space=space, radius=math.inf, trusted_x=None, is_cat=None)
        trusted_x, is_cat = space.features(trusted)
        return cls(space=space, radius=radius, trusted_x=trusted_x, is_cat=is_cat)

    @property
    def limits(self) -> bool:
        return self.trusted_x is not None

    def beyond(self, points: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """(len(points),) L-inf distance beyond the radius; 0 inside."""
        if self.trusted_x is None:
            return np.zeros(len(points))
        x, _ = self.space.features(points)
        return np.maximum(0.0, linf_to_nearest(x, self.is_cat, self.trusted_x) - self.radius)
