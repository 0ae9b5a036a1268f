"""A study's level and spread, fitted on its trials, kept apart from what the model ranks.

A pretrained model that reads a new study often ranks its trials well before it has seen
any (its shape transfers from related studies) but misplaces their level: a held-out
HPOBench dataset whose accuracies sit at 0.9 where its neighbours sat at 0.7. A
fine-tune on 10 trials fixes the level by moving every weight, and throws part of the
ranking away with it (issue 13's probe: Spearman 0.84 zero-shot, 0.73 after fine-tuning).

`LevelMap` is the cheap part done exactly: y = scale * y_model + shift, fitted by least
squares from the model's zero-shot medians to the study's observed values. A positive
scale keeps the model's ranking; the fine-tune that may follow then trains in the model's
own frame (targets mapped back through the inverse), where it has only shape left to
correct, not the level.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

# Below this many observed values only the shift is fitted: a slope through two points is noise.
MIN_TRIALS_FOR_SCALE = 3


@attrs.frozen
class LevelMap:
    """y = scale * y_model + shift (scale > 0, so the model's order is kept)."""

    scale: float = 1.0
    shift: float = 0.0

    def __attrs_post_init__(self):
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.shift)):
            raise ValueError(f"a level map needs a finite scale > 0 and a finite shift, got {self}")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0

    def apply(self, model_values: np.ndarray) -> np.ndarray:
        """Model samples -> the study's scale (non-finite values stay as they are)."""
        return self.scale * np.asarray(model_values, dtype=float) + self.shift

    def invert(self, value: float) -> float:
        """An observed value -> the model's frame (what a fine-tune trains on)."""
        return (value - self.shift) / self.scale

    def to_json(self) -> list[float]:
        return [self.scale, self.shift]

    @classmethod
    def from_json(cls, value) -> "LevelMap":
        scale, shift = (float(v) for v in value)
        return cls(scale=scale, shift=shift)


def fit_level_map(model_medians: np.ndarray, observed: np.ndarray) -> LevelMap:
    """The least-squares map from the model's medians to the observed values.

    Pairs with a non-finite median or value are left out. With fewer than
    `MIN_TRIALS_FOR_SCALE` pairs, or medians that do not vary, only the shift is fitted
    (scale 1). A fitted slope <= 0 means the model orders these trials against the data;
    the map then keeps the model's order but matches the observed spread (scale = std of
    the values / std of the medians), leaving the order for the fine-tune to correct.
    No usable pair gives the identity.
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
