"""The level map and the range frame: fitted exactly, order-keeping, bound to their study,
saved with the weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vizier import pyvizier as vz

from vizier_omnipred.level_map import RANGE_FRAME, LevelMap, fit_level_map, fit_range_map, fit_rank_frame
from vizier_omnipred.regressor import OmniPredRegressor
from vizier_omnipred.training import FinetuneConfig, recipe

from conftest import make_problem_2d, make_trials


def test_fit_recovers_an_affine_relation_exactly_within_the_trials():
    from vizier_omnipred.level_map import SLOPE_BEYOND_TRIALS

    m = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    level = fit_level_map(m, 3.0 * m - 2.0)
    inside = np.linspace(0.1, 0.9, 17)
    np.testing.assert_allclose(level.apply(inside), 3.0 * inside - 2.0)
    beyond = level.apply(np.array([0.0, 1.0]))  # the line continues at a hedged slope
    np.testing.assert_allclose(beyond, [-1.7 - 0.1 * 3.0 * SLOPE_BEYOND_TRIALS, 0.7 + 0.1 * 3.0 * SLOPE_BEYOND_TRIALS])
    assert level.invert(float(level.apply(np.array([0.7]))[0])) == pytest.approx(0.7)


def test_fit_with_few_points_or_flat_medians_only_shifts():
    assert fit_level_map(np.array([1.0, 2.0]), np.array([11.0, 13.0])) == LevelMap(1.0, 10.5)
    assert fit_level_map(np.full(5, 0.3), np.arange(5.0)) == LevelMap(1.0, 2.0 - 0.3)


def test_fit_never_reverses_the_model_order():
    m = np.array([1.0, 2.0, 3.0, 4.0])
    level = fit_level_map(m, -m)  # the data disagree with the model's order
    assert level.scale > 0
    assert np.std(level.apply(m)) == pytest.approx(np.std(-m))  # the observed spread
    assert np.mean(level.apply(m)) == pytest.approx(np.mean(-m))


def test_fit_ignores_non_finite_pairs_and_empty_input_is_identity():
    m = np.array([0.0, 1.0, np.nan, 2.0, 3.0])
    y = np.array([1.0, 3.0, 5.0, math.inf, 7.0])
    level = fit_level_map(m, y)  # the pairs left: (0, 1), (1, 3), (3, 7): y = 2 m + 1
    np.testing.assert_allclose(level.apply(np.array([0.0, 0.5, 2.0, 3.0])), [1.0, 2.0, 5.0, 7.0])
    assert fit_level_map(np.array([]), np.array([])).is_identity


def test_a_bent_relation_is_fitted_monotone_and_keeps_every_order():
    """A model that compresses the top of a new study's scale: an affine map misses the bend."""
    rng = np.random.default_rng(0)
    m_train, m_test = rng.uniform(0, 1, 10), rng.uniform(-0.2, 1.2, 200)  # test beyond the trials too
    bend = lambda m: np.exp(3 * m)  # noqa: E731
    level = fit_level_map(m_train, bend(m_train))
    assert len(level.knots) >= 2
    mapped = level.apply(m_test)
    affine = np.polyval(np.polyfit(m_train, bend(m_train), 1), m_test)  # the least-squares line alone
    inside = (m_test >= m_train.min()) & (m_test <= m_train.max())
    assert np.mean(np.abs(mapped - bend(m_test))[inside]) < 0.5 * np.mean(np.abs(affine - bend(m_test))[inside])
    order = np.argsort(m_test)
    assert np.all(np.diff(mapped[order]) > 0)  # strictly increasing: ties would lose the ranking's top
    for v in (-0.5, 0.05, 0.5, 1.5):  # inside and beyond the knots
        assert level.invert(float(level.apply(np.array([v]))[0])) == pytest.approx(v)
    assert np.isnan(level.apply(np.array([np.nan]))[0])


def test_level_maps_read_back_from_json_old_and_new():
    level = fit_level_map(np.array([0.1, 0.5, 0.3, 0.9]), np.array([1.0, 2.0, 1.2, 5.0]))
    assert level.knots and LevelMap.from_json(level.to_json()) == level
    assert LevelMap.from_json([2.0, 1.0]) == LevelMap(2.0, 1.0)  # saved by an earlier version: affine
    with pytest.raises(ValueError, match="strictly increasing"):
        LevelMap(knots=((0.0, 1.0), (1.0, 1.0)))


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_a_level_map_needs_a_positive_finite_scale(scale):
    with pytest.raises(ValueError, match="scale > 0"):
        LevelMap(scale=scale)


def _study(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    problem = make_problem_2d()
    trials = make_trials(rng.uniform(-3, 3, size=(n, 2)))
    return problem, trials


def test_level_map_alone_keeps_the_model_ranking_and_moves_its_level(tiny_regressor_factory):
    problem, trials = _study(12)
    # The study's values far from what an untrained model writes: only a level fit can reach them.
    for t in trials:
        t.final_measurement.metrics["loss"] = vz.Metric(1000.0 + 10.0 * t.final_measurement.metrics["loss"].value)
    test = _study(20, seed=1)[1]
    reg = tiny_regressor_factory(seed=3)
    reg.set_problem(problem)
    raw = reg.sample(test, 16, seed=5)
    report = reg.fit(problem, trials, config=FinetuneConfig(level_map=True, max_steps=0))
    assert report.steps == 0
    level = reg.level_map()
    assert level is not None and level.scale > 0
    mapped = reg.sample(test, 16, seed=5)
    # Sample by sample: the same draws, each through the map (a median interpolates between two
    # samples, which a map with knots does not commute with).
    assert np.array_equal(mapped.infeasible, raw.infeasible)
    np.testing.assert_allclose(mapped.values, level.apply(raw.values), rtol=1e-9)
    # The ranking kept: any order statistic of a point's samples goes through the increasing map.
    def eighth(samples):
        return np.sort(np.where(samples.infeasible, np.inf, samples.values), axis=1)[:, 7]

    assert np.array_equal(np.argsort(eighth(mapped), kind="stable"), np.argsort(eighth(raw), kind="stable"))
    observed = np.array([t.final_measurement.metrics["loss"].value for t in trials])
    assert abs(np.median(reg.sample(trials, 16, seed=5).quantiles([0.5])[0]) - np.median(observed)) < 0.5 * np.ptp(observed)


def test_level_map_is_saved_and_applies_to_its_own_study_only(tiny_regressor_factory, tmp_path):
    problem, trials = _study(12)
    reg = tiny_regressor_factory(seed=3)
    reg.fit(problem, trials, config=FinetuneConfig(level_map=True, max_steps=3, batch_size=4))
    level = reg.level_map()
    assert level is not None
    loaded = OmniPredRegressor.from_pretrained(reg.save(tmp_path / "ckpt"))
    loaded.set_problem(problem)
    assert loaded.level_map() == level
    other = make_problem_2d(bound=5.0)  # another study: the model's own samples
    loaded.set_problem(other)
    assert loaded.level_map() is None
    # a new fit without the map drops the old one
    reg.fit(problem, trials, config=FinetuneConfig(level_map=False, range_map=False, max_steps=1, batch_size=4))
    assert reg.level_map() is None


def test_range_map_puts_the_observed_range_on_one_decade():
    level = fit_range_map(np.array([3.0, np.nan, 11.0, 5.0, -np.inf]))
    assert not level.knots
    assert level.invert(3.0) == pytest.approx(RANGE_FRAME[0]) and level.invert(11.0) == pytest.approx(RANGE_FRAME[1])
    np.testing.assert_allclose(level.apply(np.array([2.0, 8.0])), [3.0, 11.0])
    # one distinct value: the middle of the frame; none: the identity
    one = fit_range_map(np.array([1e6, 1e6]))
    assert one.invert(1e6) == pytest.approx(sum(RANGE_FRAME) / 2) and one.scale > 0
    assert fit_range_map(np.array([np.nan])).is_identity and fit_range_map(np.array([])).is_identity
    # heavy tails (one diverged trial) keep the raw frame, whose exponents keep the rest apart
    assert fit_range_map(np.r_[np.linspace(1.0, 2.0, 20), 1e30]).is_identity


def test_range_map_keeps_a_previous_frame_while_the_values_fit_in_it():
    first = fit_range_map(np.array([0.0, 6.0]))  # z = 2 + y
    assert fit_range_map(np.array([0.0, 6.0, -0.5, 7.0]), previous=first) is first  # z in [1.5, 9]
    wider = fit_range_map(np.array([0.0, 6.0, -3.0]), previous=first)  # z = -1: a new frame
    assert wider != first and wider.invert(-3.0) == pytest.approx(RANGE_FRAME[0])
    # a map that is not a plain affine frame (a level map's knots) is never kept
    bent = fit_level_map(np.array([0.1, 0.5, 0.3, 0.9]), np.array([1.0, 2.0, 1.2, 5.0]))
    assert fit_range_map(np.array([1.0, 2.0]), previous=bent) != bent


def test_range_frame_is_the_full_recipe_default_and_exclusive_with_the_level_map():
    resolved = lambda c, pretrained: c.resolved(pretrained=pretrained, num_train=30)
    assert resolved(FinetuneConfig(), True).range_map and resolved(FinetuneConfig(), False).range_map
    assert resolved(FinetuneConfig(train_encoder=False), False).range_map  # from scratch: the full recipe
    assert not resolved(FinetuneConfig(train_encoder=False), True).range_map  # decoder-only transfer
    for name in ("transfer", "level"):
        assert not resolved(recipe(name), True).range_map
    assert not resolved(FinetuneConfig(max_steps=0), True).range_map  # no step: the samples stay the model's
    assert not resolved(FinetuneConfig(level_map=True), True).range_map
    with pytest.raises(ValueError, match="exclusive"):
        FinetuneConfig(level_map=True, range_map=True)
    with pytest.raises(ValueError, match="gradient steps"):
        FinetuneConfig(range_map=True, max_steps=0)


def test_rank_frame_spreads_the_best_trials_and_keeps_every_order():
    # Sphere-like values: the best three within 1e-3 of a range of 100
    y = np.array([0.001, 0.002, 0.01, 1.0, 5.0, 20.0, 50.0, 50.0, 100.0, np.nan])
    frame = fit_rank_frame(y)
    z = np.array([frame.invert(v) for v in y[:-1]])
    assert z[0] == pytest.approx(RANGE_FRAME[0]) and z[-1] == pytest.approx(RANGE_FRAME[1])
    assert np.all(np.diff(z) >= 0) and z[6] == z[7]  # increasing; ties share a position
    assert z[1] - z[0] > 0.5  # a linear frame puts them 6e-5 apart
    np.testing.assert_allclose(frame.apply(z), y[:-1])  # exact at the trials
    beyond = frame.apply(np.array([RANGE_FRAME[0] - 1.0, RANGE_FRAME[1] + 1.0, np.nan]))
    assert beyond[0] < y[0] and y[0] - beyond[0] < 0.01  # a modest improvement beyond the best
    assert beyond[1] > y[-2] and np.isnan(beyond[2])
    assert LevelMap.from_json(frame.to_json()) == frame
    # too few distinct values: the affine range frame
    assert fit_rank_frame(np.array([3.0, 5.0, 5.0])) == fit_range_map(np.array([3.0, 5.0, 5.0]))
    # one diverged trial is one rank: no fallback to the raw frame
    assert not fit_rank_frame(np.r_[np.linspace(1.0, 2.0, 20), 1e30]).is_identity


def test_rank_frame_config_needs_the_range_frame(tiny_regressor_factory):
    assert FinetuneConfig(rank_frame=True, train_encoder=False).resolved(pretrained=True, num_train=30).range_map
    for bad in (dict(range_map=False), dict(level_map=True), dict(max_steps=0)):
        with pytest.raises(ValueError, match="rank_frame"):
            FinetuneConfig(rank_frame=True, **bad)
    problem, trials = _study(12)
    reg = tiny_regressor_factory(seed=3)
    reg.fit(problem, trials, config=FinetuneConfig(max_steps=2, batch_size=4, rank_frame=True))
    frame = reg.level_map()
    assert frame is not None and len(frame.knots) == 12
    samples = reg.sample(trials[:3], 8, seed=1)
    assert np.isfinite(samples.values[~samples.infeasible]).all()  # mapped back, never nan


def test_full_recipe_trains_in_the_range_frame_and_a_refit_keeps_it(tiny_regressor_factory, tmp_path):
    problem, trials = _study(12)
    for t in trials:  # values far from one decade: 1e4 to 1e5
        t.final_measurement.metrics["loss"] = vz.Metric(1e4 + 1e4 * abs(t.final_measurement.metrics["loss"].value))
    observed = np.array([t.final_measurement.metrics["loss"].value for t in trials])
    reg = tiny_regressor_factory(seed=3)
    reg.fit(problem, trials, config=FinetuneConfig(max_steps=3, batch_size=4))
    frame = reg.level_map()
    assert frame is not None and not frame.knots
    assert frame.invert(observed.min()) == pytest.approx(RANGE_FRAME[0])
    assert frame.invert(observed.max()) == pytest.approx(RANGE_FRAME[1])
    assert reg.max_exponent() is not None  # targets in [2, 8]: samples capped one decade above them
    samples = reg.sample(trials[:4], 16, seed=5)
    assert np.all(np.abs(samples.values[np.isfinite(samples.values)]) < frame.apply(np.array([100.0]))[0])
    # a refit with a value inside the frame continues in it; the frame is saved with the weights
    inside = make_trials(np.array([[0.1, 0.2]]))[0]
    inside.final_measurement.metrics["loss"] = vz.Metric(float(np.mean(observed)))
    reg.fit(problem, trials + [inside], config=FinetuneConfig(max_steps=2, batch_size=4))
    assert reg.level_map() == frame
    loaded = OmniPredRegressor.from_pretrained(reg.save(tmp_path / "ckpt"))
    loaded.set_problem(problem)
    assert loaded.level_map() == frame
