"""OmniPredDesigner against real Vizier machinery and a real (tiny, untrained) T5.

Nothing is mocked: the conformance runner, the designer policies and the Eagle
optimiser are Vizier's own, and every suggestion is scored by the model. Budgets are
tiny (8 samples, a few dozen candidates, 1-2 fine-tuning epochs) so the file runs in
well under a minute on two cores. Whether the designer *optimises* well is a benchmark
question (vizier_omnipred/bench); here acquisition direction is covered by
test_acquisitions.py and the designer's plumbing by these tests.
"""

from __future__ import annotations

import json
import logging
import math

import attrs
import numpy as np
import pytest
from vizier import algorithms as vza
from vizier import pythia
from vizier import pyvizier as vz
from vizier._src.algorithms.policies.designer_policy import PartiallySerializableDesignerPolicy
from vizier._src.algorithms.testing import test_runners
from vizier._src.pyvizier.shared.parameter_iterators import SequentialParameterBuilder
from vizier.interfaces import serializable
from vizier.testing import test_studies

from vizier_omnipred import designer as designer_lib
from vizier_omnipred.designer import (DESIGNER_COLD_STEPS, DESIGNER_FIT_COST, OmniPredDesigner, StateVersionError,
                                      problem_key)
from vizier_omnipred.model import CheckpointError
from vizier_omnipred.sampling import sampling_cost
from vizier_omnipred.training import FinetuneConfig

MIN = vz.ObjectiveMetricGoal.MINIMIZE
MAX = vz.ObjectiveMetricGoal.MAXIMIZE
COLD = FinetuneConfig(max_epochs=2, batch_size=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def problem_of(space: vz.SearchSpace, goal=MAX, metric="objective") -> vz.ProblemStatement:
    return vz.ProblemStatement(search_space=space, metric_information=[vz.MetricInformation(metric, goal=goal)])


def assert_valid(space: vz.SearchSpace, params: vz.ParameterDict) -> None:
    """Validity checked with Vizier's own tools, not the designer's."""
    if not space.is_conditional:
        space.assert_contains(params)
        return
    # Walk the conditional tree with Vizier's builder: every active parameter must be
    # present and feasible, and nothing else may be present.
    values = params.as_dict()
    builder = SequentialParameterBuilder(space)
    for pc in builder:
        assert pc.name in values, f"active parameter {pc.name} missing from {values}"
        assert pc.contains(values[pc.name]), f"{values[pc.name]} infeasible for {pc}"
        builder.choose_value(values[pc.name])
    assert builder.parameters.as_dict() == values


def complete(suggestions, fn, *, start_id, metric="objective"):
    trials = []
    for i, s in enumerate(suggestions):
        t = vz.Trial(parameters=s.parameters, id=start_id + i)
        y = fn(s.parameters.as_dict())
        if y is None:
            t.complete(vz.Measurement(), infeasibility_reason="crashed")
        else:
            t.complete(vz.Measurement(metrics={metric: y}))
        trials.append(t)
    return trials


def run_loop(designer, rounds, count, fn, start_id=1):
    """suggest -> complete -> update, like a client; returns all completed trials."""
    history = []
    for _ in range(rounds):
        suggestions = designer.suggest(count)
        trials = complete(suggestions, fn, start_id=start_id + len(history))
        history += trials
        designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
    return history


def keys_of(trials):
    return [json.dumps(t.parameters.as_dict(), sort_keys=True) for t in trials]


# ------------------------------------------------------------------ conformance
SPACES = {
    "continuous_with_scaling": test_studies.flat_continuous_space_with_scaling,
    "categorical": test_studies.flat_categorical_space,
    "all_types": test_studies.flat_space_with_all_types,
    "singletons": test_studies.flat_space_with_all_types_with_singletons,
    "conditional": test_studies.conditional_automl_space,
}


@pytest.mark.parametrize("goal", [MIN, MAX], ids=["min", "max"])
@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_vizier_random_metrics_runner(make, space_name, goal):
    space = SPACES[space_name]()
    problem = problem_of(space, goal)
    designer = make(problem)
    runner = test_runners.RandomMetricsRunner(
        problem, iters=3, batch_size=2, seed=1, validate_parameters=not space.is_conditional
    )
    trials = runner.run_designer(designer)
    assert len(trials) == 6
    for t in trials:
        assert_valid(space, t.parameters)
    assert len(set(keys_of(trials))) == len(trials), "repeated suggestions"
    # The seeds came from the seed designer, the rest from the (fitted) model.
    sources = [t.metadata.ns("omnipred").get("source") for t in trials]
    assert sources[:2] == ["seed", "seed"] and set(sources[2:]) == {"model"}
    assert designer.num_fits >= 1


def test_a_seeded_designer_makes_the_same_suggestions_in_another_process(make):
    """Same seed, same trials: the same picks, the model's included (its fits use dropout), whatever
    torch's global generator holds, so an A/B rerun compares like with like."""
    import torch

    problem = problem_of(vz.SearchSpace(), goal=MIN)
    problem.search_space.root.add_float_param("x", -2.0, 2.0)
    problem.search_space.root.add_float_param("y", 1e-3, 1.0, scale_type=vz.ScaleType.LOG)

    def picks(global_seed: int) -> list[str]:
        torch.manual_seed(global_seed)
        designer = make(problem, finetune_config=FinetuneConfig(max_epochs=2, batch_size=32, dropout=0.3))
        trials = run_loop(designer, 4, 1, lambda p: (p["x"] - 0.3) ** 2 + math.log(p["y"]) ** 2)
        assert designer._num_fits >= 1  # the model picked some of them
        return keys_of(trials)

    assert picks(1) == picks(2)


def test_every_fit_of_the_designer_is_bounded_in_compute_unless_told_otherwise(make):
    """A study with long trial texts must not make the first suggestion take an hour on a CPU."""
    problem = problem_of(vz.SearchSpace())
    problem.search_space.root.add_float_param("x", 0.0, 1.0)
    designer = make(problem)
    assert designer.refit.cold.max_cost == designer.refit.warm.max_cost == DESIGNER_FIT_COST
    unbounded = make(problem, finetune_config=FinetuneConfig(max_epochs=2, max_cost=math.inf))
    assert unbounded.refit.cold.max_cost == math.inf


def test_a_wide_integer_parameter_is_searched_as_a_number_and_suggested_as_an_integer(make):
    """Vizier's scaler lists every integer of a range to round one value: with 1 to 10 million
    that was most of a suggestion's time. Eagle now searches such a parameter as a DOUBLE and the
    designer rounds it; suggestions stay valid integers of the space."""
    from vizier_omnipred.search_space import relax_wide_integers

    problem = problem_of(vz.SearchSpace(), goal=MIN)
    problem.search_space.root.add_int_param("units", 1, 10_000_000, scale_type=vz.ScaleType.LOG)
    problem.search_space.root.add_int_param("layers", 1, 8)
    problem.search_space.root.add_float_param("lr", 1e-4, 1.0, scale_type=vz.ScaleType.LOG)
    eagle_space, wide = relax_wide_integers(problem.search_space)
    assert wide == {"units": (1, 10_000_000)}
    assert eagle_space.get("units").type == vz.ParameterType.DOUBLE
    assert eagle_space.get("units").scale_type == vz.ScaleType.LOG
    assert eagle_space.get("layers").type == vz.ParameterType.INTEGER  # a narrow one is left to Vizier

    designer = make(problem)
    designer.search = attrs.evolve(designer.search, strategy="eagle")
    trials = run_loop(designer, 4, 1, lambda p: math.log(p["units"]) * p["lr"] + p["layers"])
    assert designer._num_fits >= 1
    for t in trials:
        assert_valid(problem.search_space, t.parameters)
        assert isinstance(t.parameters["units"].value, (int, float)) and float(t.parameters["units"].value).is_integer()


@pytest.mark.parametrize(
    "space_name, expected",
    [("conditional", "pool"), ("continuous_with_scaling", "eagle"), ("all_types", "eagle"), ("categorical", "enumerate")],
)
def test_search_strategy_by_space(make, space_name, expected):
    # Eagle refuses conditional spaces; small finite spaces are scored whole.
    space = SPACES[space_name]()
    designer = make(problem_of(space), num_seed_trials=1)
    trials = run_loop(designer, rounds=3, count=2, fn=lambda p: float(len(json.dumps(p))))
    assert designer.last_search == expected
    assert len(set(keys_of(trials))) == 6
    for t in trials:
        assert_valid(space, t.parameters)


def test_pool_search_on_a_flat_space(make):
    space = test_studies.flat_space_with_all_types()
    designer = make(problem_of(space, MIN), num_seed_trials=1)
    designer.search = attrs.evolve(designer.search, strategy="pool")
    trials = run_loop(designer, rounds=3, count=2, fn=lambda p: p["lineardouble"])
    assert designer.last_search == "pool" and len(set(keys_of(trials))) == 6
    for t in trials:
        assert_valid(space, t.parameters)


def test_search_budget_shrinks_with_long_inputs_and_only_then():
    # A candidate of L input tokens costs L (1 + L / 1024): the budget buys fewer of them as
    # L grows, never fewer than MIN_EVALUATIONS, and None means no bound.
    config = designer_lib.SearchConfig(num_evaluations=256)
    assert config.evaluations(0) == 256
    assert config.evaluations(100) == 256 and config.evaluations(1024) == 256 and config.evaluations(1100) < 256
    long = config.evaluations(3000)
    assert designer_lib.MIN_EVALUATIONS <= long < 64
    assert long == int(config.token_budget // sampling_cost(3000))
    assert config.evaluations(50_000) == designer_lib.MIN_EVALUATIONS
    assert config.evaluations(1500) > config.evaluations(3000)  # monotone in L
    assert attrs.evolve(config, token_budget=None).evaluations(50_000) == 256
    with pytest.raises(ValueError, match="token_budget"):
        designer_lib.SearchConfig(token_budget=0)


def test_a_study_with_long_trial_texts_scores_fewer_candidates(make):
    # 30 parameters with long names: several hundred input tokens a trial. The search then
    # scores what the budget affords (still valid suggestions); short inputs keep the full count.
    space = vz.SearchSpace()
    for i in range(30):
        space.root.add_float_param(f"encoder_block_{i}_attention_dropout_rate", 0.0, 1.0)
    problem = problem_of(space, MIN)
    designer = make(problem, num_candidates=64, num_seed_trials=2)
    designer.search = attrs.evolve(designer.search, token_budget=64 * 200)
    trials = run_loop(designer, rounds=3, count=1, fn=lambda p: sum(p.values()))
    tokens = designer._input_tokens()
    assert tokens > 200
    assert designer.last_num_evaluations == designer.search.evaluations(tokens) < 64
    for t in trials:
        assert_valid(space, t.parameters)

    short = make(problem_of(SPACES["continuous_with_scaling"]()), num_candidates=64, num_seed_trials=2)
    short.search = attrs.evolve(short.search, token_budget=64 * 200)
    run_loop(short, rounds=3, count=1, fn=lambda p: float(len(json.dumps(p))))
    assert short._input_tokens() < 100 and short.last_num_evaluations == 64


# ------------------------------------------------------------------ bad input
def test_zero_completed_trials_seeds_and_keeps_seeding(make):
    space = test_studies.flat_space_with_all_types()
    designer = make(problem_of(space), num_seed_trials=3)
    first = designer.suggest(5)  # 3 seeds + 2 more: no data to fit, the model is untrained
    assert len(first) == 5
    for s in first:
        assert_valid(space, s.parameters)
        assert s.metadata.ns("omnipred")["source"] == "seed"
    assert len(set(keys_of(first))) == 5
    assert designer.num_fits == 0
    second = designer.suggest(2)  # nothing completed, suggestions remembered: no repeats
    assert not set(keys_of(second)) & set(keys_of(first))


def test_a_wide_integer_range_is_seeded_without_listing_its_values(make):
    # Vizier's QuasiRandomDesigner lists every value of an INTEGER parameter: with 2e9 of
    # them the designer's constructor never returned. They are drawn as DOUBLE and rounded.
    space = vz.SearchSpace()
    space.root.add_int_param("seed", -10**9, 10**9)
    space.root.add_int_param("width", 1, 2**40, scale_type=vz.ScaleType.LOG)
    space.root.add_int_param("layers", 1, 8)
    space.root.add_float_param("x", 0.0, 1.0)
    designer = make(problem_of(space), num_seed_trials=5)
    seeds = designer.suggest(5)
    assert len(seeds) == 5 and len(set(keys_of(seeds))) == 5
    for s in seeds:
        assert_valid(space, s.parameters)
        for name in ("seed", "width", "layers"):
            assert isinstance(s.parameters[name].value, int)
    assert len({s.parameters["seed"].value for s in seeds}) == 5  # quasi-random, not one value
    restored = make(problem_of(space), num_seed_trials=5)
    restored.load(designer.dump())
    assert keys_of(restored.suggest(2)) == keys_of(designer.suggest(2))


def test_relax_wide_integers_keeps_narrow_parameters_and_rounds_into_bounds():
    from vizier_omnipred.search_space import WIDE_INTEGER_RANGE, relax_wide_integers, round_wide_integers

    space = vz.SearchSpace()
    space.root.add_int_param("n", 0, 10**6)
    space.root.add_int_param("k", 1, WIDE_INTEGER_RANGE)  # a range of 999: left to Vizier
    space.root.add_categorical_param("c", ["a", "b"])
    relaxed, wide = relax_wide_integers(space)
    assert wide == {"n": (0, 10**6)}
    assert relaxed.get("n").type == vz.ParameterType.DOUBLE and relaxed.get("n").bounds == (0.0, 1e6)
    assert relaxed.get("k") == space.get("k") and relaxed.get("c") == space.get("c")
    assert round_wide_integers({"n": 1e6 + 0.4, "k": 3, "c": "a"}, wide) == {"n": 10**6, "k": 3, "c": "a"}
    assert round_wide_integers({"n": 41.6}, wide) == {"n": 42}
    conditional = vz.SearchSpace()
    conditional.root.add_categorical_param("m", ["a", "b"]).select_values(["a"]).add_int_param("n", 0, 10**6)
    assert relax_wide_integers(conditional) == (conditional, {})


def test_a_new_study_starts_at_the_center_like_vizier_gp_bandit(make):
    from vizier._src.algorithms.designers import gp_bandit

    space = test_studies.flat_continuous_space_with_scaling()  # linear, log and reverse-log doubles
    problem = problem_of(space)
    first = make(problem, num_seed_trials=3).suggest(1)[0]
    assert first.metadata.ns("omnipred")["source"] == "seed"
    gp_first = gp_bandit.VizierGPBandit(problem).suggest(1)[0]
    assert gp_first.metadata.get("seeded") == "center"
    ours, theirs = first.parameters.as_dict(), gp_first.parameters.as_dict()
    for pc in space.parameters:
        assert ours[pc.name] == pytest.approx(theirs[pc.name], rel=1e-6), pc.name

    mixed = make(problem_of(test_studies.flat_space_with_all_types()), num_seed_trials=3)
    center = mixed.suggest(1)[0].parameters.as_dict()
    for pc in test_studies.flat_space_with_all_types().parameters:
        if pc.type == vz.ParameterType.CATEGORICAL:
            assert center[pc.name] == pc.feasible_values[0]
        elif pc.type != vz.ParameterType.DISCRETE:
            lo, hi = pc.bounds
            assert lo < center[pc.name] < hi or lo == hi
    # log-scaled grids (DISCRETE, INTEGER; HPOBench's): the feasible value Vizier's GP bandit picks
    grid = vz.ProblemStatement()
    grid.search_space.root.add_discrete_param("lr", [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], scale_type=vz.ScaleType.LOG)
    grid.search_space.root.add_discrete_param("batch", [4, 6, 10, 16, 25, 40, 64, 101, 161, 256],
                                              scale_type=vz.ScaleType.LOG)
    grid.search_space.root.add_int_param("width", 16, 1024, scale_type=vz.ScaleType.LOG)
    grid.metric_information.append(vz.MetricInformation("objective", goal=vz.ObjectiveMetricGoal.MAXIMIZE))
    ours = make(grid, num_seed_trials=1).suggest(1)[0].parameters.as_dict()
    assert ours == gp_bandit.VizierGPBandit(grid).suggest(1)[0].parameters.as_dict() == {
        "lr": 1e-3, "batch": 25, "width": 128}
    # a study that already has trials does not go back to the center
    resumed = make(problem, num_seed_trials=3)
    trials = [vz.Trial(parameters=first.parameters, id=1).complete(vz.Measurement({"objective": 1.0}))]
    resumed.update(vza.CompletedTrials(trials), vza.ActiveTrials())
    assert resumed.suggest(1)[0].parameters.as_dict() != ours


def test_every_trial_infeasible(make):
    space = test_studies.flat_continuous_space_with_scaling()
    for acquisition in ("ucb", "ei", "pi", "thompson"):
        designer = make(problem_of(space, MIN), acquisition=acquisition)
        trials = run_loop(designer, rounds=3, count=2, fn=lambda p: None)
        assert all(t.infeasible for t in trials) and len(set(keys_of(trials))) == 6
        for t in trials:
            assert_valid(space, t.parameters)
        assert designer.last_fit is not None and designer.last_fit.data.num_infeasible == 4


def test_all_objective_values_equal(make):
    space = test_studies.flat_space_with_all_types()
    designer = make(problem_of(space))
    trials = run_loop(designer, rounds=3, count=2, fn=lambda p: 1.0)
    assert len(set(keys_of(trials))) == 6
    for t in trials:
        assert_valid(space, t.parameters)


def test_update_without_active_trials_means_none_are_active(make):
    """`update(completed)` as a hand-written loop calls it: the same as an empty ActiveTrials,
    and active trials given later are still not suggested again."""
    space = test_studies.flat_continuous_space_with_scaling()
    designer = make(problem_of(space))
    first = designer.suggest(2)
    designer.update(vza.CompletedTrials(complete(first, lambda p: 1.0, start_id=1)))
    pending = designer.suggest(1)
    designer.update(vza.CompletedTrials([]), vza.ActiveTrials([vz.Trial(parameters=pending[0].parameters, id=3)]))
    assert keys_of(designer.suggest(1)) != keys_of(pending)


def test_single_feasible_point(make):
    space = vz.SearchSpace()
    space.root.add_categorical_param("only", ["x"])
    space.root.add_int_param("n", 3, 3)
    space.root.add_float_param("f", 0.5, 0.5)
    designer = make(problem_of(space))
    out = designer.suggest(3)
    assert [s.parameters.as_dict() for s in out] == [{"only": "x", "n": 3, "f": 0.5}]
    assert designer.suggest(2) == []  # already suggested, even before it completes
    trials = complete(out, lambda p: 1.0, start_id=1)
    designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
    assert designer.suggest(1) == []
    # Vizier's runner stops when a designer has nothing left to suggest.
    runner_trials = test_runners.RandomMetricsRunner(problem_of(space), iters=3, validate_parameters=True).run_designer(
        make(problem_of(space))
    )
    assert len(runner_trials) == 1


def test_fewer_feasible_points_than_count(make):
    space = test_studies.flat_categorical_space()  # 3 x 3 = 9 points
    designer = make(problem_of(space), num_seed_trials=2)
    trials = run_loop(designer, rounds=1, count=2, fn=lambda p: len(p["categorical_0"]))
    # Model phase on a finite space: all 7 untried points are enumerated and scored.
    rest = designer.suggest(20)
    assert len(rest) == 7
    all_points = keys_of(trials) + keys_of(rest)
    assert len(set(all_points)) == 9
    assert designer.suggest(1) == []


def test_points_with_the_same_text_count_as_one(make):
    # The codec writes 3 significant digits: every x in [1, 1.0004] is written "1", so
    # the model cannot tell them apart and the designer suggests only one of them.
    space = vz.SearchSpace()
    space.root.add_float_param("x", 1.0, 1.0004)
    designer = make(problem_of(space), num_seed_trials=1)
    assert len(designer.suggest(3)) == 1
    assert designer.suggest(3) == []


def test_categorical_values_that_look_like_syntax(make):
    weird = ['a,b', 'say "hi"', "{x}", "}", "ünï©ødé", "🙂 emoji", " lead", "a:b", "back\\slash", "new\nline"]
    space = vz.SearchSpace()
    space.root.add_categorical_param("choice, with \"quotes\"", weird)
    space.root.add_float_param("x", -1.0, 1.0)
    problem = problem_of(space)
    designer = make(problem)
    scores = {v: i for i, v in enumerate(weird)}
    trials = test_runners.RandomMetricsRunner(problem, iters=4, batch_size=2, validate_parameters=True).run_designer(
        designer
    )
    assert len(trials) == 8 and len(set(keys_of(trials))) == 8
    assert {t.parameters["choice, with \"quotes\""].value for t in trials} <= set(weird)
    # The history round-trips through the JSON state exactly.
    designer.update(vza.CompletedTrials(complete(trials[:2], lambda p: scores[p['choice, with "quotes"']], start_id=100)),
                    vza.ActiveTrials())
    restored = make(problem)
    restored.load(designer.dump())
    assert {json.dumps(t.parameters.as_dict(), sort_keys=True) for t in restored.completed_trials} == {
        json.dumps(t.parameters.as_dict(), sort_keys=True) for t in designer.completed_trials
    }
    # ... with the study's trial ids, in id order.
    assert [t.id for t in restored.completed_trials] == [t.id for t in designer.completed_trials]
    assert [t.id for t in designer.completed_trials][-2:] == [100, 101]


def test_checkpoint_with_another_codec_fails_at_construction(base, tmp_path):
    ckpt = base.save(tmp_path / "ckpt")
    meta = json.loads((ckpt / "omnipred.json").read_text())
    meta["text_codec"]["version"] = 999
    (ckpt / "omnipred.json").write_text(json.dumps(meta))
    problem = problem_of(test_studies.flat_categorical_space())
    with pytest.raises(CheckpointError, match="text codec version 999"):
        OmniPredDesigner(problem, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="does not exist"):
        OmniPredDesigner(problem, checkpoint=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not both"):
        OmniPredDesigner(problem, checkpoint=ckpt, regressor=base)


def test_metric_name_makes_a_multi_objective_problem_single_objective(make):
    problem = vz.ProblemStatement(
        search_space=test_studies.flat_continuous_space_with_scaling(),
        metric_information=[vz.MetricInformation("a", goal=MAX), vz.MetricInformation("b", goal=MIN)],
    )
    assert make(problem).multi_objective  # without metric_name: both objectives (test_multimetric.py)
    designer = make(problem, metric_name="b")
    assert not designer.multi_objective
    assert designer.metric.name == "b" and designer.metric.goal == MIN
    trials = run_loop(designer, rounds=2, count=2, fn=lambda p: p["lineardouble"], start_id=1)
    assert designer.last_fit is None  # metric 'objective' was reported, not 'b': nothing to fit on yet
    assert len(trials) == 4


def test_metadata_from_another_version_is_a_clear_decode_error(make):
    problem = problem_of(test_studies.flat_categorical_space())
    designer = make(problem)
    run_loop(designer, rounds=1, count=2, fn=lambda p: 1.0)
    md = designer.dump()
    md.ns("omnipred")["version"] = "0"
    fresh = make(problem)
    with pytest.raises(StateVersionError, match="version '0'.*reads version 1") as info:
        fresh.load(md)
    # Vizier's policies catch DecodeError and restart the designer on all trials.
    assert isinstance(info.value, serializable.HarmlessDecodeError)
    assert fresh._history == {}  # untouched
    with pytest.raises(serializable.HarmlessDecodeError, match="no OmniPredDesigner state"):
        fresh.load(vz.Metadata())
    md = designer.dump()
    md.ns("omnipred")["state"] = "{not json"
    with pytest.raises(serializable.HarmlessDecodeError, match="damaged"):
        fresh.load(md)
    other = make(problem_of(test_studies.flat_continuous_space_with_scaling()))
    with pytest.raises(serializable.HarmlessDecodeError, match="another problem"):
        other.load(designer.dump())


# ------------------------------------------------------------------ state
def test_dump_load_continues_without_repeats_and_without_refitting(make, base, tmp_path):
    space = test_studies.flat_space_with_all_types()
    problem = problem_of(space, MIN)
    fn = lambda p: (p["lineardouble"] - 0.5) ** 2 + p["integer"] ** 2  # noqa: E731
    first = make(problem, num_seed_trials=3)
    history = run_loop(first, rounds=3, count=2, fn=fn)  # 3 seeds, then model suggestions
    pending = first.suggest(2)  # suggested, never completed, not reported as active
    assert first.num_fits == 3  # at rounds 2 and 3 and now: new trials each time
    md = first.dump()
    weights = tmp_path / "work" / "weights"
    assert (weights / "model.safetensors").is_file()
    state = json.loads(md.ns("omnipred")["state"])
    assert state["version"] == 2 and len(state["trials"]) == 6
    assert state["weights"]["path"] == str(weights.resolve())

    # Restore the way Vizier's PartiallySerializableDesignerPolicy does: factory(problem), load.
    second = OmniPredDesigner(
        problem, regressor=base, num_samples=8, num_candidates=24, num_seed_trials=3, finetune_config=COLD,
        work_dir=tmp_path / "work",
    )
    second.load(md)
    assert second.num_fits == 3 and len(second.completed_trials) == 6
    probe = [vz.TrialSuggestion(t.parameters) for t in history]
    restored = second.regressor.sample(probe, 16, seed=3).values
    assert np.array_equal(restored, first.regressor.sample(probe, 16, seed=3).values, equal_nan=True)
    second_base = make(problem)
    second_base.regressor.set_problem(problem)
    assert not np.array_equal(restored, second_base.regressor.sample(probe, 16, seed=3).values, equal_nan=True)

    more = second.suggest(3)
    assert second.num_fits == 3  # no new trials: no refit at all
    seen = set(keys_of(history)) | set(keys_of(pending))
    assert not set(keys_of(more)) & seen and len(set(keys_of(more))) == 3
    for s in more:
        assert_valid(space, s.parameters)
    trials = complete(more, fn, start_id=100)
    second.update(vza.CompletedTrials(trials), vza.ActiveTrials())
    second.suggest(1)
    assert second.num_fits == 4
    assert second.last_fit.epochs == second.refit.warm.max_epochs == 1  # a warm refit
    assert second.last_fit.data.num_used == 9


def test_missing_weights_refit_from_base_with_a_warning(make, tmp_path, caplog):
    import shutil

    problem = problem_of(test_studies.flat_continuous_space_with_scaling())
    first = make(problem, finetune_config=FinetuneConfig(max_epochs=3, batch_size=32))
    run_loop(first, rounds=3, count=1, fn=lambda p: p["lineardouble"])
    md = first.dump()
    shutil.rmtree(tmp_path / "work" / "weights")
    second = make(problem, finetune_config=FinetuneConfig(max_epochs=3, batch_size=32))
    with caplog.at_level(logging.WARNING, logger="vizier_omnipred.designer"):
        second.load(md)
    assert "missing" in caplog.text and "refits from the base checkpoint" in caplog.text
    assert second.num_fits == 0
    out = second.suggest(1)
    assert second.num_fits == 1 and second.last_fit.epochs == 3  # a cold fit on the 3 stored trials
    assert second.last_fit.data.num_used == 3
    assert keys_of(out)[0] not in set(keys_of(first.completed_trials))


def test_vizier_policy_restores_the_designer_every_request(base, tmp_path):
    """The service path: a new PartiallySerializableDesignerPolicy (and designer) per
    Suggest request, state in the study metadata, only new trials sent after load()."""
    space = test_studies.flat_continuous_space_with_scaling()
    problem = problem_of(space, MIN)
    calls = []

    def factory(problem, seed=None):
        calls.append(seed)
        return OmniPredDesigner(problem, seed=seed, regressor=base, num_samples=8, num_candidates=16,
                                num_seed_trials=2, finetune_config=COLD, work_dir=tmp_path / "w")

    supporter = pythia.InRamPolicySupporter(problem)
    for _ in range(4):
        policy = PartiallySerializableDesignerPolicy(supporter.GetStudyConfig(), supporter, factory, seed=11)
        for t in supporter.SuggestTrials(policy, count=1):
            t.complete(vz.Measurement(metrics={"objective": t.parameters["lineardouble"].value ** 2}))
    trials = supporter.GetTrials()
    assert len(trials) == 4 and len(set(keys_of(trials))) == 4
    assert calls == [11, None, None, None]  # first: factory(problem, seed=...); then restored
    state = json.loads(supporter.GetStudyConfig().metadata.ns("designer_policy_v0").ns("designer").ns("omnipred")["state"])
    assert state["seed"] == 11 and len(state["trials"]) == 3 and state["weights"]["fits"] == 2


def test_default_work_dir_uses_the_cache_env_and_a_study_token(make, tmp_path, monkeypatch):
    monkeypatch.setenv(designer_lib.CACHE_ENV, str(tmp_path / "cache"))
    problem = problem_of(test_studies.flat_categorical_space())
    a = make(problem, work_dir=None)
    b = make(problem, work_dir=None)
    run_loop(a, rounds=2, count=2, fn=lambda p: 1.0)
    run_loop(b, rounds=2, count=2, fn=lambda p: 2.0)
    md_a, md_b = a.dump(), b.dump()
    path_a = json.loads(md_a.ns("omnipred")["state"])["weights"]["path"]
    path_b = json.loads(md_b.ns("omnipred")["state"])["weights"]["path"]
    key = problem_key(problem)
    assert path_a.startswith(str(tmp_path / "cache" / key)) and path_b.startswith(str(tmp_path / "cache" / key))
    assert path_a != path_b  # same problem, two studies: separate weights
    restored = make(problem, work_dir=None)
    restored.load(md_a)
    assert str(restored.work_dir / "weights") == path_a


def test_problem_key_ignores_designer_state_only():
    problem = problem_of(test_studies.flat_continuous_space_with_scaling())
    key = problem_key(problem)
    with_state = problem_of(test_studies.flat_continuous_space_with_scaling())
    with_state.metadata.ns("designer_policy_v0").ns("designer")["anything"] = "changes every suggest"
    with_state.metadata.ns("omnipred")["x"] = "y"
    assert problem_key(with_state) == key
    described = problem_of(test_studies.flat_continuous_space_with_scaling())
    described.metadata["description"] = "a real study"
    assert problem_key(described) != key
    assert problem_key(problem_of(test_studies.flat_continuous_space_with_scaling(), MIN)) != key


# ------------------------------------------------------------------ model plumbing
def test_studies_do_not_share_weights(make, base):
    problem = problem_of(test_studies.flat_continuous_space_with_scaling())
    before = {k: v.clone() for k, v in base.checkpoint.model.state_dict().items()}
    a, b = make(problem), make(problem)
    run_loop(a, rounds=3, count=1, fn=lambda p: p["lineardouble"])
    assert a.num_fits == 1 and b.num_fits == 0
    for k, v in base.checkpoint.model.state_dict().items():
        assert np.array_equal(v.numpy(), before[k].numpy()), k
        assert np.array_equal(b.regressor.checkpoint.model.state_dict()[k].numpy(), v.numpy())
    assert any(
        not np.array_equal(a.regressor.checkpoint.model.state_dict()[k].numpy(), v.numpy()) for k, v in before.items()
    )


def test_predict_delegates_to_the_fine_tuned_regressor(make):
    problem = problem_of(test_studies.flat_continuous_space_with_scaling(), MIN)
    designer = make(problem)
    trials = run_loop(designer, rounds=2, count=1, fn=lambda p: 3.0 + p["lineardouble"])
    pred = designer.predict([vz.TrialSuggestion(t.parameters) for t in trials], rng=5)  # fits first
    assert designer.num_fits == 1
    again = designer.regressor.predict([vz.TrialSuggestion(t.parameters) for t in trials], rng=5)
    assert isinstance(pred, vza.Prediction) and pred.mean.shape == (2,)
    assert np.array_equal(pred.mean, again.mean) and np.array_equal(pred.stddev, again.stddev)
    assert designer.predict([vz.TrialSuggestion(trials[0].parameters)], rng=np.random.default_rng(0)).mean.shape == (1,)


def test_custom_acquisition_callable(make):
    seen = []

    def lowest_median_first(samples, *, goal, best, rng):
        seen.append((goal, best, samples.values.shape))
        return -np.nanmedian(np.where(samples.infeasible, np.inf, samples.values), axis=1)

    problem = problem_of(test_studies.flat_continuous_space_with_scaling(), MIN)
    designer = make(problem, acquisition=lowest_median_first)
    run_loop(designer, rounds=3, count=1, fn=lambda p: 2.0 + p["lineardouble"])
    assert seen and all(g == MIN and b is not None and shape[1] == 8 for g, b, shape in seen)
    assert math.isclose(seen[0][1], min(2.0 + t.parameters["lineardouble"].value for t in designer.completed_trials[:2]))

    bad = make(problem, acquisition=lambda samples, **_: np.zeros(samples.num_inputs + 1))
    run_loop(bad, rounds=2, count=1, fn=lambda p: 1.0)  # seeds only
    with pytest.raises(ValueError, match="acquisition returned shape"):
        bad.suggest(1)
    with pytest.raises(ValueError, match="unknown acquisition"):
        make(problem, acquisition="gp")


def test_batch_suggestions_are_spread_out(make):
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 1.0)
    designer = make(problem_of(space), num_candidates=48, num_seed_trials=2)
    run_loop(designer, rounds=1, count=2, fn=lambda p: p["x"])
    batch = sorted(s.parameters["x"].value for s in designer.suggest(4))
    assert len(batch) == 4
    # Greedy selection scales down candidates within diversity_radius (0.1) of a pick.
    assert min(np.diff(batch)) > 0.01


def test_search_screens_with_few_samples_and_rescores_finalists(make):
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 1.0)
    space.root.add_float_param("y", 0.0, 1.0)
    designer = make(problem_of(space), num_samples=12, num_candidates=40)
    designer.search = attrs.evolve(designer.search, screening_samples=3, finalists=5)
    run_loop(designer, rounds=1, count=2, fn=lambda p: p["x"] + p["y"])
    regressor = designer.regressor
    calls = []
    real_sample = regressor.sample

    def recording_sample(trials, num_samples=None, **kwargs):  # the real sampler, with its calls noted
        calls.append((len(trials), num_samples))
        return real_sample(trials, num_samples, **kwargs)

    regressor.sample = recording_sample
    try:
        [suggestion] = designer.suggest(1)
    finally:
        del regressor.sample
    assert calls[-1] == (5, 12)  # the finalists, with every sample
    assert {n for _, n in calls[:-1]} == {3} and sum(k for k, _ in calls[:-1]) >= 20
    assert suggestion.metadata.ns("omnipred")["source"] == "model"


def test_fallback_without_shipped_checkpoint_logs_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(designer_lib, "SHIPPED_CHECKPOINT", tmp_path / "not-built")
    problem = problem_of(test_studies.flat_categorical_space())
    with caplog.at_level(logging.WARNING, logger="vizier_omnipred.designer"):
        designer = OmniPredDesigner(problem, seed=3)  # Vizier's factory convention
    assert "does not exist" in caplog.text and "UNTRAINED 'small'" in caplog.text
    assert designer.regressor.checkpoint.preset.name == "small"
    assert len(OmniPredDesigner(problem).suggest(2)) == 2  # seed=None works too (restore path)


def test_active_trials_are_not_suggested_again(make):
    space = test_studies.flat_categorical_space()  # 9 points
    problem = problem_of(space)
    designer = make(problem, num_seed_trials=1)
    done = complete(designer.suggest(1), lambda p: 1.0, start_id=1)
    active = [vz.Trial(parameters={"categorical_0": "a", "categorical_1": v}, id=10 + i) for i, v in enumerate(["b", "bb", "bbb"])]
    designer.update(vza.CompletedTrials(done), vza.ActiveTrials(active))
    rest = designer.suggest(9)
    assert designer.last_search == "enumerate"
    assert len(rest) == 9 - 1 - len(set(keys_of(active)) - set(keys_of(done)))
    assert not set(keys_of(rest)) & (set(keys_of(active)) | set(keys_of(done)))
    assert designer.suggest(None) == [] and designer.suggest(0) == []


def test_finite_conditional_space_is_enumerated(make):
    space = vz.SearchSpace()
    root = space.root
    root.add_categorical_param("model", ["tree", "linear"])
    root.select("model", ["tree"]).add_int_param("depth", 1, 3)
    root.select("model", ["linear"]).add_discrete_param("l2", [0.0, 0.1])
    root.add_bool_param("scale")
    problem = problem_of(space)
    everything = designer_lib._Space(space).enumerate(100)
    assert len(everything) == (3 + 2) * 2
    wide = vz.SearchSpace()
    wide.root.add_int_param("units", 1, 10_000_000)
    wide.root.add_bool_param("scale")
    assert designer_lib._Space(wide).enumerate(100) is None  # stops at the limit, never lists the range
    for p in everything:
        assert_valid(space, vz.ParameterDict(p))
    designer = make(problem, num_seed_trials=2)
    trials = run_loop(designer, rounds=2, count=2, fn=lambda p: p.get("depth", 0) + p.get("l2", 0.0))
    rest = designer.suggest(10)
    assert len(trials) + len(rest) == 10 and len(set(keys_of(trials) + keys_of(rest))) == 10
    for s in rest:
        assert_valid(space, s.parameters)


def test_prior_studies_let_the_model_suggest_without_seeds(make):
    space = test_studies.flat_continuous_space_with_scaling()
    prior_problem = problem_of(space, MIN)
    prior_problem.metadata["description"] = "an earlier, related study"
    rng = np.random.default_rng(0)
    prior_trials = []
    for i in range(10):
        t = vz.Trial(parameters={"lineardouble": float(rng.uniform(-1, 2)), "logdouble": float(10 ** rng.uniform(-4, 2))}, id=i + 1)
        t.complete(vz.Measurement(metrics={"objective": t.parameters["lineardouble"].value ** 2}))
        prior_trials.append(t)
    designer = make(problem_of(space, MIN), num_seed_trials=0, prior_studies=[(prior_problem, prior_trials)])
    first = designer.suggest(2)
    assert [s.metadata.ns("omnipred")["source"] for s in first] == ["model", "model"]
    assert designer.last_fit.num_prior_examples == 10 and designer.last_fit.num_train_examples == 0
    designer.update(vza.CompletedTrials(complete(first, lambda p: p["lineardouble"] ** 2, start_id=1)), vza.ActiveTrials())
    designer.suggest(1)
    assert designer.num_fits == 2 and designer.last_fit.num_prior_examples == 10  # priors in every fit


def test_a_pretrained_model_is_used_zero_shot_once_seeds_are_spent(make, tiny_regressor_factory):
    pretrained = tiny_regressor_factory(seed=1)
    pretrained.checkpoint.training["steps"] = 100  # what a pretraining run records
    designer = make(problem_of(test_studies.flat_space_with_all_types()), regressor=pretrained, num_seed_trials=0)
    out = designer.suggest(2)
    assert [s.metadata.ns("omnipred")["source"] for s in out] == ["model", "model"]
    assert designer.num_fits == 0 and designer.last_fit is None  # nothing to fit on: zero-shot


def test_picks_stay_in_the_trust_region_around_completed_trials(make):
    assert designer_lib.trust_radius(0, 3) == math.inf
    assert designer_lib.trust_radius(20, 3) == pytest.approx(0.5)  # Vizier GP bandit's rule
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 10.0)
    space.root.add_float_param("y", 0.0, 10.0)
    space.root.add_categorical_param("c", ["a", "b"])  # categorical values never limit the region
    corner = [{"x": 0.1 * i, "y": 0.2 * i, "c": "a"} for i in range(4)]
    trials = [vz.Trial(parameters=p, id=i + 1) for i, p in enumerate(corner)]
    for t in trials:
        t.complete(vz.Measurement(metrics={"objective": t.parameters["x"].value}))
    radius = designer_lib.trust_radius(4, 3) * 10.0  # in raw units: the space is 10 wide

    def farthest(trust_region: bool) -> float:
        designer = make(problem_of(space), num_candidates=64, num_seed_trials=2)
        designer.search = attrs.evolve(designer.search, trust_region=trust_region)
        designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
        picks = designer.suggest(4)
        assert len(picks) == 4
        return max(
            min(max(abs(s.parameters["x"].value - p["x"]), abs(s.parameters["y"].value - p["y"])) for p in corner)
            for s in picks
        )

    assert farthest(True) <= radius + 1e-9
    # the untrained model's scores are noise: without the region its picks roam the space
    assert farthest(False) > radius


def test_an_ensemble_designer_restores_every_member(base, tmp_path, caplog):
    from vizier_omnipred import model as model_lib

    problem = problem_of(test_studies.flat_continuous_space_with_scaling())
    with pytest.raises(ValueError, match="ensemble_size"):
        OmniPredDesigner(problem, regressor=base, ensemble_size=0)
    kwargs = dict(regressor=base, ensemble_size=2, num_samples=8, num_candidates=24, num_seed_trials=2,
                  finetune_config=FinetuneConfig(max_epochs=2, batch_size=32), work_dir=tmp_path / "work")
    first = OmniPredDesigner(problem, **kwargs)
    run_loop(first, rounds=3, count=1, fn=lambda p: p["lineardouble"])
    assert first.regressor.ensemble_size == 2 and first.last_fit.members == 2 and base.ensemble_size == 1
    md = first.dump()
    assert (tmp_path / "work" / "weights" / model_lib.member_file(1)).is_file()
    second = OmniPredDesigner(problem, **kwargs)
    second.load(md)
    probe = [vz.TrialSuggestion(t.parameters) for t in first.completed_trials]
    np.testing.assert_array_equal(second.regressor.sample(probe, 16, seed=3).values,
                                  first.regressor.sample(probe, 16, seed=3).values)
    # A member file changed behind the designer's back: the fingerprint notices.
    member = tmp_path / "work" / "weights" / model_lib.member_file(1)
    member.write_bytes(member.read_bytes()[:-8] + b"\0" * 8)
    third = OmniPredDesigner(problem, **kwargs)
    with caplog.at_level(logging.WARNING, logger="vizier_omnipred.designer"):
        third.load(md)
    assert "fingerprint" in caplog.text and third.num_fits == 0


def test_the_designer_fits_in_the_range_frame_by_default(base):
    """Without history the designer fits as the regressor does: the full recipe in the range frame
    (the frame the shipped checkpoint was pretrained in), cold and warm; `full-raw` turns it off."""
    from vizier_omnipred.training import recipe

    problem = problem_of(test_studies.flat_continuous_space_with_scaling())
    designer = OmniPredDesigner(problem, regressor=base)
    assert recipe("full") == FinetuneConfig(train_encoder=True)
    # its own budget and rate for the full recipe (a one-off regression fit takes fewer steps at a lower rate)
    assert designer.refit.cold == attrs.evolve(recipe("full"), max_steps=DESIGNER_COLD_STEPS,
                                               learning_rate=base.pretraining_learning_rate, max_cost=DESIGNER_FIT_COST)
    assert designer.refit.cold.uses_range_map(pretrained=True) and designer.refit.warm.uses_range_map(pretrained=True)
    raw = OmniPredDesigner(problem, regressor=base, finetune_config=recipe("full-raw"))
    assert not raw.refit.cold.uses_range_map(pretrained=True) and not raw.refit.warm.uses_range_map(pretrained=True)
    # a budget the caller sets is kept; the rank frame is a range frame, cold and warm
    short = OmniPredDesigner(problem, regressor=base, finetune_config=FinetuneConfig(max_steps=7, rank_frame=True))
    assert short.refit.cold.max_steps == 7 and short.refit.warm.rank_frame and short.refit.warm.uses_range_map(pretrained=True)
    assert short.refit.warm.learning_rate == base.pretraining_learning_rate
    slow = OmniPredDesigner(problem, regressor=base, finetune_config=FinetuneConfig(learning_rate=1e-5))
    assert slow.refit.cold.learning_rate == 1e-5 and slow.refit.cold.max_steps == DESIGNER_COLD_STEPS


def test_the_designer_exploits_more_when_its_fit_keeps_the_models_ranking(base):
    """UCB at TRANSFER_UCB_QUANTILE where the fit keeps a pretrained model's ranking (a level map:
    the transfer and level recipes), OmniPred's 0.9 otherwise; an acquisition the caller names wins."""
    from vizier_omnipred.acquisitions import ExpectedImprovement, UpperQuantile
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT
    from vizier_omnipred.training import recipe

    problem = problem_of(test_studies.flat_continuous_space_with_scaling())
    assert OmniPredDesigner(problem, checkpoint=SHIPPED_CHECKPOINT).acquisition == UpperQuantile(q=0.9)
    for name in ("transfer", "level"):
        transfer = OmniPredDesigner(problem, checkpoint=SHIPPED_CHECKPOINT, finetune_config=recipe(name))
        assert transfer.acquisition == UpperQuantile(q=designer_lib.TRANSFER_UCB_QUANTILE) != UpperQuantile()
    named = OmniPredDesigner(problem, checkpoint=SHIPPED_CHECKPOINT, finetune_config=recipe("transfer"),
                             acquisition="ucb")
    assert named.acquisition == UpperQuantile()
    assert isinstance(OmniPredDesigner(problem, checkpoint=SHIPPED_CHECKPOINT, finetune_config=recipe("transfer"),
                                       acquisition="ei").acquisition, ExpectedImprovement)
    # a model from scratch has no ranking to keep: the transfer recipe does not map its level
    assert OmniPredDesigner(problem, regressor=base, finetune_config=recipe("transfer")).acquisition == UpperQuantile()


def test_a_designer_in_the_rank_frame_suggests_and_predicts_in_the_study_units(make):
    """The rank frame through the designer: fits, suggestions and predictions, with values that
    span decades (where a linear frame packs the best trials together)."""
    problem = problem_of(test_studies.flat_continuous_space_with_scaling(), MIN)
    designer = make(problem, finetune_config=FinetuneConfig(max_steps=3, batch_size=8, rank_frame=True))
    trials = run_loop(designer, rounds=6, count=1, fn=lambda p: 10.0 ** (2.0 * abs(p["lineardouble"])))
    assert designer.num_fits >= 1 and len(designer.regressor.level_map().knots) >= 3
    values = [t.final_measurement.metrics["objective"].value for t in trials]
    pred = designer.predict([vz.TrialSuggestion(t.parameters) for t in trials], rng=1)
    finite = pred.mean[np.isfinite(pred.mean)]
    assert finite.size and finite.min() > min(values) - 1.0 and finite.max() < 10 * max(values)
