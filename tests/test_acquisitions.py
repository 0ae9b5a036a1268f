"""Acquisition functions on hand-made samples: direction, feasibility, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from vizier import pyvizier as vz

from vizier_omnipred import acquisitions as acq
from vizier_omnipred.sampling import YSamples

MIN = vz.ObjectiveMetricGoal.MINIMIZE
MAX = vz.ObjectiveMetricGoal.MAXIMIZE
ALL = [acq.UpperQuantile(), acq.ExpectedImprovement(), acq.ProbabilityOfImprovement(), acq.ThompsonSample()]


def samples(rows, infeasible=None) -> YSamples:
    values = np.array(rows, dtype=float)
    mask = np.zeros(values.shape, dtype=bool) if infeasible is None else np.array(infeasible, dtype=bool)
    return YSamples(values=np.where(mask, np.nan, values), infeasible=mask)


def call(a, s, goal, best=None, seed=0):
    return a(s, goal=goal, best=best, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("a", ALL, ids=lambda a: type(a).__name__)
def test_direction_follows_the_goal(a):
    # Candidate 0's samples are all lower than candidate 1's.
    rng = np.random.default_rng(0)
    low = rng.normal(1.0, 0.1, size=32)
    high = rng.normal(3.0, 0.1, size=32)
    s = samples([low, high])
    best_min, best_max = 2.0, 2.0  # between the two: only one side can improve on it
    minimise = call(a, s, MIN, best_min)
    maximise = call(a, s, MAX, best_max)
    assert minimise[0] > minimise[1]
    assert maximise[1] > maximise[0]


def test_upper_quantile_is_a_quantile_in_maximise_space():
    y = np.arange(11, dtype=float)  # 0..10
    s = samples([y])
    assert call(acq.UpperQuantile(0.9), s, MAX)[0] == pytest.approx(np.quantile(y, 0.9))
    # MINIMIZE: the optimistic (low) quantile, negated into maximise space.
    assert call(acq.UpperQuantile(0.9), s, MIN)[0] == pytest.approx(-np.quantile(y, 0.1))
    assert call(acq.UpperQuantile(0.5), s, MIN)[0] == pytest.approx(-5.0)
    with pytest.raises(ValueError):
        acq.UpperQuantile(1.5)


def test_upper_quantile_prefers_spread_when_optimistic():
    # Same median; the wider candidate has the better upper quantile (exploration).
    narrow = np.full(21, 5.0)
    wide = np.linspace(0.0, 10.0, 21)
    s = samples([narrow, wide])
    assert call(acq.UpperQuantile(0.9), s, MAX)[1] > call(acq.UpperQuantile(0.9), s, MAX)[0]
    assert call(acq.UpperQuantile(0.9), s, MIN)[1] > call(acq.UpperQuantile(0.9), s, MIN)[0]


@pytest.mark.parametrize("a", ALL, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("goal", [MIN, MAX], ids=["min", "max"])
def test_infeasibility_lowers_scores_and_all_infeasible_is_lowest(a, goal):
    y = np.linspace(0.0, 10.0, 20)
    half = np.arange(20) % 2 == 0
    mostly = np.arange(20) != 3  # 19 of 20 infeasible
    s = samples([y, y, y, y], infeasible=[np.zeros(20, bool), half, mostly, np.ones(20, bool)])
    # Average over Thompson's randomness.
    scores = np.mean([call(a, s, goal, best=5.0, seed=i) for i in range(200)], axis=0)
    assert scores[0] >= scores[1] >= scores[2] > scores[3]
    assert scores[0] > scores[2]
    assert call(a, s, goal, best=5.0)[3] == -np.inf
    assert call(a, s, goal, best=None)[3] == -np.inf


def test_expected_improvement_is_monte_carlo_and_weighted_by_feasibility():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    s = samples([y, y], infeasible=[[False] * 4, [False, False, True, True]])
    ei_max = call(acq.ExpectedImprovement(), s, MAX, best=2.0)
    assert ei_max[0] == pytest.approx((0 + 0 + 1 + 2) / 4)
    assert ei_max[1] == pytest.approx(0.0)  # only the non-improving samples are feasible
    ei_min = call(acq.ExpectedImprovement(), s, MIN, best=2.0)
    assert ei_min[0] == pytest.approx((1 + 0 + 0 + 0) / 4)
    assert ei_min[1] == pytest.approx((1 + 0) / 4)  # p = 1/2 times E[I | feasible] = 1/2


def test_probability_of_improvement():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    s = samples([y, y], infeasible=[[False] * 4, [True, False, False, False]])
    assert call(acq.ProbabilityOfImprovement(), s, MAX, best=2.0).tolist() == [0.5, 0.5]
    assert call(acq.ProbabilityOfImprovement(), s, MIN, best=2.0).tolist() == [0.25, 0.0]
    assert call(acq.ProbabilityOfImprovement(margin=1.0), s, MAX, best=2.0).tolist() == [0.25, 0.25]


@pytest.mark.parametrize("a", [acq.ExpectedImprovement(), acq.ProbabilityOfImprovement()], ids=["ei", "pi"])
def test_without_incumbent_ei_and_pi_are_the_feasibility_probability(a):
    y = np.ones(4)
    s = samples([y, y, y], infeasible=[[False] * 4, [True, True, False, False], [True] * 4])
    for goal in (MIN, MAX):
        out = call(a, s, goal, best=None)
        assert out[0] == 1.0 and out[1] == 0.5 and out[2] == -np.inf
        # a non-finite incumbent is treated as no incumbent
        assert call(a, s, goal, best=float("nan"))[1] == 0.5


def test_thompson_draws_one_of_the_candidates_samples():
    y = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    s = samples(y)
    draws = np.array([call(acq.ThompsonSample(), s, MAX, seed=i) for i in range(50)])
    assert set(draws[:, 0]) <= {1.0, 2.0, 3.0} and len(set(draws[:, 0])) > 1
    draws_min = np.array([call(acq.ThompsonSample(), s, MIN, seed=i) for i in range(50)])
    assert set(draws_min[:, 1]) <= {-10.0, -20.0, -30.0}


@pytest.mark.parametrize("a", [acq.UpperQuantile(), acq.ExpectedImprovement(), acq.ProbabilityOfImprovement()],
                         ids=lambda a: type(a).__name__)
def test_scores_do_not_depend_on_the_rest_of_the_batch(a):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(5, 16))
    mask = rng.random((5, 16)) < 0.3
    full = call(a, samples(rows, mask), MIN, best=0.0)
    for i in range(5):
        alone = call(a, samples(rows[i : i + 1], mask[i : i + 1]), MIN, best=0.0)
        assert alone[0] == full[i]


def test_edge_shapes_and_bad_samples():
    empty = YSamples(values=np.zeros((0, 8)), infeasible=np.zeros((0, 8), bool))
    for a in ALL:
        assert call(a, empty, MAX, best=1.0).shape == (0,)
    # A feasible-marked nan/inf sample (not something the sampler emits) counts as infeasible.
    odd = YSamples(values=np.array([[np.nan, 1.0], [np.inf, np.inf]]), infeasible=np.zeros((2, 2), bool))
    out = call(acq.ExpectedImprovement(), odd, MAX, best=0.0)
    assert out[0] == pytest.approx(0.5) and out[1] == -np.inf
    with pytest.raises(ValueError):
        call(acq.UpperQuantile(), YSamples(values=np.zeros(3), infeasible=np.zeros(3, bool)), MAX)


def test_get_acquisition():
    assert isinstance(acq.get_acquisition("ucb"), acq.UpperQuantile)
    assert isinstance(acq.get_acquisition("EI"), acq.ExpectedImprovement)
    assert isinstance(acq.get_acquisition("pi"), acq.ProbabilityOfImprovement)
    assert isinstance(acq.get_acquisition("thompson"), acq.ThompsonSample)
    with pytest.raises(ValueError, match="ei.*pi.*thompson.*ucb"):
        acq.get_acquisition("gp-ucb")

    def mine(samples, *, goal, best, rng):
        return -np.nanmean(samples.values, axis=1)

    assert acq.get_acquisition(mine) is mine
    custom = acq.UpperQuantile(q=0.75)
    assert acq.get_acquisition(custom) is custom
    assert isinstance(custom, acq.Acquisition)
    with pytest.raises(TypeError):
        acq.get_acquisition(3)
