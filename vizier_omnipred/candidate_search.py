"""Acquisition optimisation over the regressor's samples: candidate scoring, Vizier's
Eagle strategy or a pool search, and the diverse pick of a batch.

The pieces are module-level so each can be read and tested without a designer:

* `CandidateScorer` scores parameter dicts once each (by their text key), in chunks,
  through an `Evaluator` the designer supplies (sampling + acquisition); it remembers
  every candidate it scored, and it is the scoring function the searches call.
* `eagle_search` runs Vizier's `EagleStrategyDesigner` through `DesignerAsOptimizer`
  on the scorer (flat spaces), `pool_search` random points plus mutations (any space,
  conditional ones included).
* `select_diverse` picks a batch greedily: best first, then each next pick's
  rank-score scaled down by its closeness to the picks so far.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import numpy as np
from vizier import algorithms as vza
from vizier import pyvizier as vz

from vizier_omnipred.acquisitions import INFEASIBLE_FLOOR
from vizier_omnipred.search_space import Space, distances, params_dict, relax_wide_integers, round_wide_integers
from vizier_omnipred.trust_region import TrustRegion

_log = logging.getLogger(__name__)

__all__ = [
    "Candidate",
    "CandidateScorer",
    "Evaluation",
    "Evaluator",
    "eagle_search",
    "for_eagle",
    "pool_search",
    "select_diverse",
]


@attrs.define
class Candidate:
    """A scored point; `info` is extra suggestion metadata (strings) from the evaluator."""

    params: dict[str, Any]
    key: str
    score: float = -math.inf
    median: float = math.nan
    outside: float = 0.0  # L-inf distance beyond the trust radius (0: inside)
    info: dict[str, str] = attrs.field(factory=dict)
    vector: np.ndarray | None = None  # per-scalarization optimistic values (several objectives)

    @property
    def search_score(self) -> float:
        """The score the search optimises: outside the trust region, below every score
        inside it, less the further out (finite, and within Eagle's float32)."""
        return self.score if self.outside <= 0.0 else -1e20 * (1.0 + self.outside)


@attrs.frozen(eq=False)
class Evaluation:
    """What an evaluator says about n points: acquisition scores (n,), higher is better,
    nan allowed (read as -inf); medians (n,) for the suggestion's metadata; optional
    per-point metadata strings and per-point vectors (kept on the candidates for the
    multi-objective batch pick)."""

    scores: np.ndarray
    medians: np.ndarray
    info: Sequence[Mapping[str, str]] | None = None
    vectors: np.ndarray | None = None  # (n, W) per-scalarization values (several objectives)


class Evaluator(Protocol):
    """Scores points with `num_samples` y samples each (one model call per chunk)."""

    def __call__(self, points: Sequence[Mapping[str, Any]], num_samples: int) -> Evaluation: ...


@attrs.define(eq=False)
class CandidateScorer:
    """Scores each distinct point once (by its key) and remembers the candidates.

    Calling it with points returns their *search* scores (`Candidate.search_score`:
    points outside the trust region rank below every inside point), with -inf for a
    point that has no key (the codec cannot write it). The screening pass uses
    `screening_samples` per point; `evaluate` rescoring finalists with more samples
    returns fresh candidates and leaves the remembered ones alone.
    """

    evaluator: Evaluator
    keys: Callable[[Sequence[Mapping[str, Any]]], list[str | None]]
    trust_region: TrustRegion
    screening_samples: int
    chunk_size: int
    scored: dict[str, Candidate] = attrs.field(factory=dict)

    def evaluate(self, items: Sequence[tuple[str, dict[str, Any]]], num_samples: int) -> list[Candidate]:
        """Candidates for (key, params) items, scored in chunks of `chunk_size`."""
        out: list[Candidate] = []
        for start in range(0, len(items), self.chunk_size):
            chunk = items[start : start + self.chunk_size]
            points = [p for _, p in chunk]
            ev = self.evaluator(points, num_samples)
            values = np.asarray(ev.scores, dtype=float).reshape(-1)
            if values.shape != (len(chunk),):
                raise ValueError(
                    f"acquisition returned shape {values.shape} for {len(chunk)} candidates; expected ({len(chunk)},)"
                )
            values = np.where(np.isnan(values), -np.inf, values)
            outside = self.trust_region.beyond(points)
            infos = ev.info if ev.info is not None else [{}] * len(chunk)
            vectors = ev.vectors if ev.vectors is not None else [None] * len(chunk)
            out += [
                Candidate(params=p, key=k, score=float(v), median=float(m), outside=float(o), info=dict(i), vector=w)
                for (k, p), v, m, o, i, w in zip(chunk, values, ev.medians, outside, infos, vectors)
            ]
        return out

    def __call__(self, points: Sequence[Mapping[str, Any]]) -> np.ndarray:
        keys = self.keys(points)
        new: dict[str, dict[str, Any]] = {}
        for p, k in zip(points, keys):
            if k is not None and k not in self.scored and k not in new:
                new[k] = dict(p)
        for c in self.evaluate(list(new.items()), self.screening_samples):
            self.scored[c.key] = c
        return np.array([self.scored[k].search_score if k is not None else -np.inf for k in keys])


def for_eagle(scores: np.ndarray) -> np.ndarray:
    """Acquisition scores as Eagle can compare them: its converters work in float32, so
    the acquisitions' infeasible floor (about -1e200) and -inf are mapped, in the same
    order, to about -1e30 .. -3e30."""
    scores = np.asarray(scores, dtype=float)
    floor = scores < INFEASIBLE_FLOOR / 2
    with np.errstate(over="ignore", invalid="ignore"):
        mapped = np.where(floor, scores * (1e30 / -INFEASIBLE_FLOOR), scores)
    return np.where(np.isfinite(mapped), mapped, -3e30)


def eagle_search(
    score: Callable[[Sequence[Mapping[str, Any]]], np.ndarray],
    search_space: vz.SearchSpace,
    primers: Sequence[Mapping[str, Any]],
    budget: int,
    batch_size: int,
    rng: np.random.Generator,
) -> bool:
    """Vizier's Eagle strategy on the acquisition, its pool primed with `primers` (the
    study's best trials; they count against the budget). Returns False if Eagle refuses
    the space."""
    from vizier._src.algorithms.designers.eagle_strategy import eagle_strategy
    from vizier._src.algorithms.optimizers import designer_optimizer

    eagle_space, wide = relax_wide_integers(search_space)
    acq_problem = vz.ProblemStatement(
        search_space=eagle_space,
        metric_information=[vz.MetricInformation("acquisition", goal=vz.ObjectiveMetricGoal.MAXIMIZE)],
    )
    try:
        eagle = eagle_strategy.EagleStrategyDesigner(acq_problem, seed=int(rng.integers(2**31)))
    except ValueError as e:
        _log.info("Eagle strategy refused the search space (%s); using the pool search", e)
        return False

    if primers:
        values = score(primers)
        primed = []
        for p, v in zip(primers, values):
            t = vz.Trial(parameters=p)
            t.complete(vz.Measurement(metrics={"acquisition": for_eagle(np.array([float(v)]))[0]}))
            primed.append(t)
        eagle.update(vza.CompletedTrials(primed), vza.ActiveTrials())
        budget -= len(primers)
    if budget <= 0:
        return True
    batch = min(batch_size, budget)
    optimizer = designer_optimizer.DesignerAsOptimizer(
        lambda _problem, **_: eagle, batch_size=batch, num_evaluations=budget
    )

    def score_fn(trials: Sequence[vz.Trial]) -> dict[str, np.ndarray]:
        values = score([round_wide_integers(params_dict(t.parameters), wide) for t in trials])
        return {"acquisition": for_eagle(values)[:, None]}

    optimizer.optimize(score_fn, acq_problem, count=1)
    return True


def pool_search(
    score: Callable[[Sequence[Mapping[str, Any]]], np.ndarray],
    space: Space,
    top: Sequence[Mapping[str, Any]],
    budget: int,
    mutation_scale: float,
    rng: np.random.Generator,
) -> None:
    """Random points + mutations of the best trials (`top`), then mutations of the best
    candidates (works on any space, conditional ones included)."""
    names = space.names

    def mutants(parents: Sequence[Mapping[str, Any]], k: int, scale: float) -> list[dict[str, Any]]:
        out = []
        if not parents or not names:
            return out
        for _ in range(k):
            parent = parents[int(rng.integers(len(parents)))]
            chosen = {names[int(rng.integers(len(names)))]}
            chosen |= {m for m in names if rng.random() < 1.0 / len(names)}
            out.append(space.sample(rng, base=parent, mutate=frozenset(chosen), scale=scale))
        return out

    # Round 1: random points (+ a quarter of the budget around the best trials);
    # round 2: the rest of the budget around round 1's best candidates.
    top = list(top)
    if top:
        n_mut = budget // 4
        first = [space.sample(rng) for _ in range(budget - 2 * n_mut)] + mutants(top, n_mut, mutation_scale)
    else:
        first = [space.sample(rng) for _ in range((budget + 1) // 2)]
    values = score(first)
    remaining = budget - len(first)
    if remaining <= 0:
        return
    order = np.argsort(-values, kind="stable")[:8]
    best_candidates = [first[i] for i in order if np.isfinite(values[i])] or top or [first[int(order[0])]]
    score(mutants(best_candidates, remaining, mutation_scale / 2))


def select_diverse(
    candidates: list[Candidate], n: int, rng: np.random.Generator, space: Space, diversity_radius: float
) -> list[Candidate]:
    """Best first, then greedily by rank-score x min(1, distance to picks / radius)."""
    if not candidates:
        return []
    scores = np.array([c.score for c in candidates])
    # Random tie-break: equal scores (e.g. EI == 0) are ordered at random.
    order = np.lexsort((rng.random(len(candidates)), -scores))
    candidates = [candidates[i] for i in order]
    if n == 1 or len(candidates) <= 1:
        return candidates[:n]
    utility = 1.0 - np.arange(len(candidates)) / len(candidates)  # rank-scores in (0, 1]
    x, is_cat = space.features([c.params for c in candidates])
    nearest = np.full(len(candidates), np.inf)
    chosen: list[int] = []
    radius = max(diversity_radius, 1e-12)
    available = np.ones(len(candidates), dtype=bool)
    while len(chosen) < min(n, len(candidates)):
        effective = np.where(available, utility * np.minimum(1.0, nearest / radius), -np.inf)
        i = int(np.argmax(effective))
        chosen.append(i)
        available[i] = False
        nearest = np.minimum(nearest, distances(x, is_cat, i))
    return [candidates[i] for i in chosen]
