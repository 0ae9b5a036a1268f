"""Several metrics (objectives and safety metrics) with one text model.

Real Vizier (its conformance runner, designer policies, SafetyChecker and pyvizier
validation) and real tiny T5 models trained with torch; nothing is mocked. The numpy
pieces of `multimetric.py` are checked against exact geometry (Pareto fronts,
hypervolume and the hypervolume-scalarization identity of Golovin & Zhang).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from vizier import algorithms as vza
from vizier import pyvizier as vz
from vizier._src.algorithms.testing import test_runners
from vizier._src.pyvizier.oss import proto_converters
from vizier._src.service import study_pb2
from vizier.pyvizier import multimetric as vz_multimetric
from vizier.testing import test_studies

from vizier_omnipred import multimetric
from vizier_omnipred.sampling import YSamples
from vizier_omnipred.text import TrialTextError
from vizier_omnipred.training import FinetuneConfig

MIN = vz.ObjectiveMetricGoal.MINIMIZE
MAX = vz.ObjectiveMetricGoal.MAXIMIZE
LEARN = FinetuneConfig(max_epochs=60, learning_rate=3e-3, batch_size=32, dropout=0.0)  # learn these 14 trials fast


def metrics_problem(space, *metrics: vz.MetricInformation) -> vz.ProblemStatement:
    return vz.ProblemStatement(search_space=space, metric_information=list(metrics))


# ----------------------------------------------------------------- numpy pieces
def test_pareto_front_and_exact_2d_hypervolume():
    y = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.5, 1.5], [0.5, 0.5]])
    assert multimetric.pareto_mask(y).tolist() == [True, True, True, False, False]
    # Staircase above (0, 0): 1*3 + 1*2 + 1*1 = 6; dominated points add nothing.
    assert multimetric.hypervolume_2d(y, np.zeros(2)) == pytest.approx(6.0)
    assert multimetric.hypervolume_2d(y[:3], np.zeros(2)) == pytest.approx(6.0)
    assert multimetric.hypervolume_2d(y, np.array([5.0, 5.0])) == 0.0


def test_mean_scalarization_is_the_hypervolume():
    """HV(Y) = pi/4 * E_w[max_y s_w(y)] for two objectives (Golovin & Zhang 2020): the
    scalarizations' mean over random weights measures the front they are used to grow."""
    rng = np.random.default_rng(0)
    y = rng.uniform(0.0, 1.0, size=(12, 2))
    s = multimetric.HypervolumeScalarization.create(20000, np.zeros((0, 2)), rng, num_objectives=2)
    s = multimetric.HypervolumeScalarization(weights=s.weights, reference=np.zeros(2), scale=np.ones(2),
                                             best=np.zeros(len(s.weights)))
    estimate = math.pi / 4 * s(y).max(axis=0).mean()
    assert estimate == pytest.approx(multimetric.hypervolume_2d(y, np.zeros(2)), rel=0.03)


def test_greedy_front_picks_spread_along_the_front():
    rng = np.random.default_rng(1)
    observed = np.array([[0.0, 0.0], [1.0, 1.0]])
    s = multimetric.HypervolumeScalarization.create(512, observed, rng, num_objectives=2)
    # Three near-copies good in objective 0, one good in objective 1, one dominated.
    candidates = np.array([[3.0, 1.0], [2.95, 1.0], [2.9, 1.0], [1.0, 2.5], [0.5, 0.5]])
    vectors = s(candidates)
    scores = s.improvement(vectors)
    assert np.argmax(scores) == 0 and scores[4] == 0.0
    picks = multimetric.greedy_front_picks(vectors, s.best, 3)
    # Second pick: the other end of the front, not a near-copy of the first.
    assert picks[:2] == [0, 3]
    assert 4 not in picks


def test_safe_probability_follows_vizier_safety_checker():
    safety = [vz.MetricInformation("mem", goal=MIN, safety_threshold=16.0),
              vz.MetricInformation("acc", goal=MAX, safety_threshold=0.5)]
    checker = vz_multimetric.SafetyChecker(vz.MetricsConfig(safety))
    cases = [{"mem": 8.0, "acc": 0.9}, {"mem": 32.0, "acc": 0.9}, {"mem": 8.0, "acc": 0.1}, {"mem": 16.0}]
    expected = list(checker.are_measurements_safe([vz.Measurement(metrics=c) for c in cases]))
    assert [multimetric.is_safe(c, safety) for c in cases] == expected == [True, False, False, True]
    mem = np.array([[8.0, 32.0, 8.0, np.nan]])
    acc = np.array([[0.9, 0.9, 0.1, 0.9]])
    samples = {"mem": YSamples(values=mem, infeasible=np.isnan(mem)),
               "acc": YSamples(values=acc, infeasible=np.zeros_like(acc, dtype=bool))}
    # Joint samples: only the first is safe for both; an infeasible sample is not safe.
    assert multimetric.safe_probability(samples, safety).tolist() == [0.25]
    assert multimetric.safe_probability(samples, []) is None


def test_safety_margin_orders_points_by_how_close_to_safe_they_are():
    safety = [vz.MetricInformation("mem", goal=MIN, safety_threshold=16.0),
              vz.MetricInformation("acc", goal=MAX, safety_threshold=0.5)]
    scales = multimetric.safety_scales([{"mem": 8.0, "acc": 0.4}, {"mem": 24.0, "acc": 0.6}], safety)
    assert scales == pytest.approx({"mem": 8.0, "acc": 0.1})
    # mem 20 is 0.5 of its spread over the line; acc 0.45 is 0.5 below: the worst metric counts.
    assert multimetric.safety_margin({"mem": 20.0, "acc": 0.9}, safety, scales) == pytest.approx(-0.5)
    assert multimetric.safety_margin({"mem": 8.0, "acc": 0.45}, safety, scales) == pytest.approx(-0.5)
    assert multimetric.safety_margin({"mem": 8.0, "acc": 0.9}, safety, scales) == pytest.approx(1.0)
    assert multimetric.safety_margin({"mem": 8.0}, safety, scales) == pytest.approx(1.0)  # unreported: not counted
    assert multimetric.safety_margin({}, safety, scales) == math.inf
    # One value, no spread: |threshold| (or 1 for a zero threshold) is the unit.
    lone = [vz.MetricInformation("risk", goal=MIN, safety_threshold=0.0)]
    assert multimetric.safety_scales([{"risk": 3.0}], lone) == {"risk": 1.0}

    # Predicted: the median over joint samples; an infeasible sample is -inf.
    mem = np.array([[20.0, 20.0, 40.0], [18.0, np.nan, np.nan]])
    acc = np.full((2, 3), 0.9)
    samples = {"mem": YSamples(values=mem, infeasible=np.isnan(mem)),
               "acc": YSamples(values=acc, infeasible=np.zeros_like(acc, dtype=bool))}
    margin = multimetric.predicted_safety_margin(samples, safety, scales)
    assert margin[0] == pytest.approx(-0.5) and margin[1] == -np.inf
    assert multimetric.predicted_safety_margin(samples, [], scales) is None

    # Among candidates that are all probably unsafe, closer to safe scores higher, and the
    # margin never outweighs a step in the safe probability.
    floor = multimetric.unsafe_floor(np.array([0.0, 0.0, 0.0, 0.001]), np.array([-3.0, -0.1, -np.inf, -50.0]))
    assert floor[1] > floor[0] > floor[2] and floor[3] > floor[1]
    assert np.all(floor < multimetric.UNSAFE_FLOOR) and np.all(floor >= 2 * multimetric.UNSAFE_FLOOR)


# ------------------------------------------------------------------- regressor
def test_regressor_fits_every_metric_and_counts_what_is_missing(tiny_regressor_factory, caplog):
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 1.0)
    problem = metrics_problem(
        space, vz.MetricInformation("acc", goal=MAX), vz.MetricInformation("latency", goal=MIN),
        vz.MetricInformation("mem", goal=MIN, safety_threshold=5.0),
    )
    trials = []
    for i in range(20):
        metrics = {"acc": 0.5 + 0.01 * i, "mem": math.nan}  # mem: NaN in every trial
        if i % 4:
            metrics["latency"] = 10.0 + i  # latency missing in 5 trials
        t = vz.Trial(parameters={"x": i / 20}, id=i + 1)
        t.complete(vz.Measurement(metrics=metrics))
        trials.append(t)
    reg = tiny_regressor_factory(seed=1)
    with caplog.at_level(logging.WARNING, logger="vizier_omnipred.regressor"):
        report = reg.fit(problem, trials, config=FinetuneConfig(max_epochs=1))
    per = reg.last_fit_metrics
    assert (per["acc"].num_used, per["latency"].num_used, per["latency"].num_missing_metric) == (20, 15, 5)
    assert (per["mem"].num_used, per["mem"].num_nonfinite) == (0, 20)
    assert report.data.num_used == 35  # examples: one per (trial, metric) with a value
    assert "'mem' has no usable value in 20 trials" in caplog.text
    points = [vz.TrialSuggestion({"x": 0.1}), vz.TrialSuggestion({"x": 0.7})]
    by_metric = reg.sample_metrics(points, 6, seed=3)
    assert list(by_metric) == ["acc", "latency", "mem"]
    assert all(s.values.shape == (2, 6) for s in by_metric.values())
    pred = reg.predict(points)
    assert pred.mean.shape == pred.stddev.shape == (2, 3)
    md = pred.metadata.ns("omnipred")
    assert json.loads(md["metrics"]) == ["acc", "latency", "mem"]
    assert len(json.loads(md["infeasible_probability"])) == 3
    assert reg.predict(points, metric_name="latency").mean.shape == (2,)
    with pytest.raises(ValueError, match="metric_name"):
        reg.sample(points, 4)
    with pytest.raises(TrialTextError, match="not a metric"):
        reg.sample(points, 4, metric_name="nope")


def test_one_model_tells_metrics_apart_by_their_text(tiny_regressor_factory):
    """Same parameters, two metrics three orders of magnitude apart: only the metric's
    name and goal in the text tell the examples apart."""
    space = vz.SearchSpace()
    space.root.add_categorical_param("mode", ["a", "b"])
    problem = metrics_problem(space, vz.MetricInformation("small", goal=MAX), vz.MetricInformation("big", goal=MIN))
    trials = []
    for i in range(24):
        t = vz.Trial(parameters={"mode": "ab"[i % 2]}, id=i + 1)
        t.complete(vz.Measurement(metrics={"small": 2.0, "big": 3000.0}))
        trials.append(t)
    reg = tiny_regressor_factory(seed=2)
    reg.fit(problem, trials, config=LEARN)
    pred = reg.predict([vz.TrialSuggestion({"mode": "a"})], rng=0)
    small, big = pred.mean[0]
    assert 1.0 < small < 4.0 and 1500.0 < big < 6000.0, pred.mean


# -------------------------------------------------------------------- designer
def _two_objectives(space, goals=(MAX, MIN)):
    return metrics_problem(space, vz.MetricInformation("f1", goal=goals[0]), vz.MetricInformation("f2", goal=goals[1]))


@pytest.mark.parametrize("goals", [(MAX, MIN), (MIN, MIN)], ids=["max-min", "min-min"])
def test_vizier_random_metrics_runner_two_objectives(make, goals):
    space = test_studies.flat_space_with_all_types()
    problem = _two_objectives(space, goals)
    designer = make(problem)
    assert designer.multi_objective
    trials = test_runners.RandomMetricsRunner(problem, iters=3, batch_size=2, seed=1, validate_parameters=True
                                              ).run_designer(designer)
    assert len(trials) == 6
    keys = {json.dumps(t.parameters.as_dict(), sort_keys=True) for t in trials}
    assert len(keys) == 6, "repeated suggestions"
    model = [t for t in trials if t.metadata.ns("omnipred").get("source") == "model"]
    assert len(model) == 4 and designer.num_fits >= 1
    assert designer.regressor.last_fit_metrics["f2"].num_used >= 2
    medians = json.loads(model[-1].metadata.ns("omnipred")["predicted_medians"])
    assert set(medians) == {"f1", "f2"}
    assert designer.last_scalarization is not None and designer.last_scalarization.has_reference
    pred = designer.predict([vz.TrialSuggestion(t.parameters) for t in trials[:3]])
    assert pred.mean.shape == (3, 2)


@pytest.mark.parametrize("safety_goal", [MIN, MAX], ids=["safe-below", "safe-above"])
def test_vizier_random_metrics_runner_with_a_safety_metric(make, safety_goal):
    space = test_studies.flat_space_with_all_types()
    problem = metrics_problem(
        space, vz.MetricInformation("objective", goal=MAX),
        vz.MetricInformation("risk", goal=safety_goal, safety_threshold=0.0),
    )
    designer = make(problem)
    assert not designer.multi_objective and [m.name for m in designer.safety_metrics] == ["risk"]
    trials = test_runners.RandomMetricsRunner(problem, iters=3, batch_size=2, seed=2, validate_parameters=True
                                              ).run_designer(designer)
    assert len(trials) == 6
    model = [t for t in trials if t.metadata.ns("omnipred").get("source") == "model"]
    assert len(model) == 4
    for t in model:
        assert 0.0 <= float(t.metadata.ns("omnipred")["safe_probability"]) <= 1.0
    # The safety metric is learned too, and a single objective still predicts (N,).
    assert designer.regressor.last_fit_metrics["risk"].num_used >= 2
    assert designer.predict([vz.TrialSuggestion(trials[0].parameters)]).mean.shape == (1,)


def test_picks_must_be_predicted_safe(make):
    """The unconstrained optimum is unsafe; the model learns the safety metric from the
    trials (unsafe ones also as infeasible) and every pick is predicted safe with at
    least the gate's probability."""
    space = vz.SearchSpace()
    space.root.add_categorical_param("mode", ["careful", "reckless"])
    space.root.add_int_param("k", 0, 9)
    problem = metrics_problem(
        space, vz.MetricInformation("speed", goal=MAX), vz.MetricInformation("mem", goal=MIN, safety_threshold=10.0)
    )

    def measure(mode, k):
        return {"speed": float(k + (20 if mode == "reckless" else 0)), "mem": 100.0 if mode == "reckless" else 1.0}

    trials = []
    for i, (mode, k) in enumerate([(m, k) for m in ("careful", "reckless") for k in range(7)]):
        t = vz.Trial(parameters={"mode": mode, "k": k}, id=i + 1)
        t.complete(vz.Measurement(metrics=measure(mode, k)))
        trials.append(t)

    def picks_of(designer):
        designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
        picks = designer.suggest(3)
        assert len(picks) == 3
        return picks, [p.parameters.as_dict()["mode"] for p in picks]

    designer = make(problem, finetune_config=LEARN, num_samples=16)
    picks, modes = picks_of(designer)
    assert modes == ["careful"] * 3, [p.parameters.as_dict() for p in picks]
    for p in picks:
        assert float(p.metadata.ns("omnipred")["safe_probability"]) >= designer.search.safe_probability
    assert designer._best_value() == 6.0  # unsafe trials (speed 20..26) are never incumbents
    # The same model and trials without the safety metric in the problem: the faster,
    # unsafe mode wins. So the safety handling, not the objective, keeps picks safe.
    blind = make(metrics_problem(space, vz.MetricInformation("speed", goal=MAX)), finetune_config=LEARN,
                 num_samples=16)
    _, modes = picks_of(blind)
    assert "reckless" in modes


def test_with_a_safe_trial_the_trust_region_is_around_safe_trials(make):
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 10.0)
    space.root.add_float_param("z", 0.0, 10.0)
    problem = metrics_problem(space, vz.MetricInformation("y", goal=MAX),
                              vz.MetricInformation("risk", goal=MIN, safety_threshold=1.0))
    designer = make(problem)
    trials = []
    for i, (x, risk) in enumerate([(1.0, 0.5), (9.0, 5.0), (8.5, 7.0)]):
        t = vz.Trial(parameters={"x": x, "z": 5.0}, id=i + 1)
        t.complete(vz.Measurement(metrics={"y": x, "risk": risk}))
        trials.append(t)
    designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
    region = designer._trust_region()
    near_safe, near_unsafe = region.beyond([{"x": 1.5, "z": 5.0}, {"x": 9.0, "z": 5.0}])
    assert near_safe == 0.0 and near_unsafe > 0.0
    # No safe trial yet: the region grows from the quarter of the trials closest to safe.
    unsafe = make(problem)
    far = []
    for i, (x, risk) in enumerate([(1.0, 1.5), (5.0, 4.0), (9.0, 5.0), (8.5, 7.0)]):
        t = vz.Trial(parameters={"x": x, "z": 5.0}, id=i + 1)
        t.complete(vz.Measurement(metrics={"y": x, "risk": risk}))
        far.append(t)
    unsafe.update(vza.CompletedTrials(far), vza.ActiveTrials())
    near_least_unsafe, near_worst = unsafe._trust_region().beyond([{"x": 1.5, "z": 5.0}, {"x": 9.0, "z": 5.0}])
    assert near_least_unsafe == 0.0 and near_worst > 0.0
    # Without a safety metric the unsafe-looking trials are trusted like any other.
    plain = make(metrics_problem(space, vz.MetricInformation("y", goal=MAX)))
    plain.update(vza.CompletedTrials(trials), vza.ActiveTrials())
    assert plain._trust_region().beyond([{"x": 9.0, "z": 5.0}])[0] == 0.0


# ----------------------------------------------------------------- bad input
def test_a_safety_metric_needs_a_goal_and_a_number():
    # Vizier itself refuses a metric without a goal: in Python and from the service's protos.
    with pytest.raises(TypeError, match="goal"):
        vz.MetricInformation("mem", safety_threshold=16.0)
    spec = study_pb2.StudySpec.MetricSpec(metric_id="mem")
    spec.safety_config.safety_threshold = 16.0
    with pytest.raises(ValueError, match="goal"):
        proto_converters.MetricInformationConverter.from_proto(spec)


def test_a_non_finite_threshold_is_a_clear_error(make):
    problem = metrics_problem(
        test_studies.flat_continuous_space_with_scaling(), vz.MetricInformation("y", goal=MAX),
        vz.MetricInformation("mem", goal=MIN, safety_threshold=float("nan")),
    )
    with pytest.raises(TrialTextError, match="mem.*safety_threshold"):
        make(problem)


def test_an_objective_never_reported_is_documented_behaviour(make, caplog):
    """Trials that report only f1: the fit counts f2 as missing and warns, no trial is on
    the front (every objective is needed), and the designer keeps suggesting, ranking
    candidates by their probability of being feasible."""
    problem = _two_objectives(test_studies.flat_continuous_space_with_scaling())
    designer = make(problem)
    history = []
    with caplog.at_level(logging.WARNING, logger="vizier_omnipred.regressor"):
        for _ in range(3):
            suggestions = designer.suggest(2)
            assert len(suggestions) == 2
            for s in suggestions:
                t = s.to_trial(len(history) + 1)
                t.complete(vz.Measurement(metrics={"f1": 1.0 + len(history)}))
                history.append(t)
            designer.update(vza.CompletedTrials(history[-2:]), vza.ActiveTrials())
    assert designer.regressor.last_fit_metrics["f2"].num_missing_metric == 4
    assert "'f2' has no usable value" in caplog.text
    assert designer._top_records(5) == [] and not designer.last_scalarization.has_reference


# ----------------------------------------------------------------------- state
def test_multi_objective_state_round_trip_and_version_1_state(make):
    problem = _two_objectives(test_studies.flat_continuous_space_with_scaling())
    designer = make(problem)
    rng = np.random.default_rng(0)
    for _ in range(2):
        suggestions = designer.suggest(2)
        trials = []
        for s in suggestions:
            t = s.to_trial(len(designer.completed_trials) + len(trials) + 1)
            t.complete(vz.Measurement(metrics={"f1": float(rng.uniform()), "f2": float(rng.uniform())}))
            trials.append(t)
        designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
    md = designer.dump()
    fresh = make(problem)
    fresh.load(md)
    assert [t.final_measurement.metrics for t in fresh.completed_trials] == [
        t.final_measurement.metrics for t in designer.completed_trials
    ]
    assert fresh.num_fits == designer.num_fits
    # A version-1 state (one metric per record, 'y') still loads, as the designer's metric.
    single = metrics_problem(test_studies.flat_continuous_space_with_scaling(), vz.MetricInformation("f1", goal=MAX))
    one = make(single)
    md = one.dump()
    state = json.loads(md.ns("omnipred")["state"])
    state["version"] = 1
    state["trials"] = {"7": {"p": {"lineardouble": 0.5, "logdouble": 0.1}, "y": 3.5}}
    md.ns("omnipred")["version"] = "1"
    md.ns("omnipred")["state"] = json.dumps(state)
    other = make(single)
    other.load(md)
    [trial] = other.completed_trials
    assert trial.final_measurement.metrics["f1"].value == 3.5
