"""`bench ab --suite multiobjective|safety` plumbing with Vizier's RandomDesigner (fast).

The OmniPred and GP-bandit rows need minutes per run; their numbers live in
docs/BENCHMARKS.md. Here: tasks, hypervolume bookkeeping, unsafe counts, summary, table,
plot and resume, on real Vizier BBOB functions and Vizier's own safety rule.
"""

from __future__ import annotations

import argparse
import json

import attrs
import numpy as np
import pytest
from vizier import pyvizier as vz
from vizier.pyvizier import multimetric as vz_multimetric

from vizier_omnipred.bench import multiobjective as mo
from vizier_omnipred.multimetric import hypervolume_2d


def test_front_task_conflicts_and_the_reference_is_typical():
    built = mo.FrontTask("Sphere", "Sphere", 2).build(3)
    a, b = built.problem.metric_information
    assert (a.goal, b.goal) == (vz.ObjectiveMetricGoal.MINIMIZE,) * 2
    # Each objective's optimum is bad for the other: the front is a real trade-off.
    grid = np.stack(np.meshgrid(np.linspace(-5, 5, 41), np.linspace(-5, 5, 41)), -1).reshape(-1, 2)
    values = np.array([[built.evaluate(x)["f1"], built.evaluate(x)["f2"]] for x in grid])
    assert values[np.argmin(values[:, 0]), 1] > np.min(values[:, 1]) + 1.0
    assert np.all(built.reference > values.min(axis=0))


def test_safety_task_puts_the_optimum_outside_the_safe_ball():
    built = mo.SafetyTask("Sphere", 2).build(0)
    safety = [m for m in built.problem.metric_information if m.type == vz.MetricType.SAFETY]
    assert [m.name for m in safety] == ["dist"] and safety[0].safety_threshold == mo.SAFE_RADIUS
    grid = np.stack(np.meshgrid(np.linspace(-5, 5, 81), np.linspace(-5, 5, 81)), -1).reshape(-1, 2)
    evaluated = [built.evaluate(x) for x in grid]
    best = min(evaluated, key=lambda m: m["y"])
    checker = vz_multimetric.SafetyChecker(built.problem.metric_information)
    assert not checker.are_measurements_safe([vz.Measurement(metrics=best)])[0]
    assert any(checker.are_measurements_safe([vz.Measurement(metrics=m) for m in evaluated]))


@pytest.mark.parametrize("suite", ["multiobjective", "safety"])
def test_random_runs_summary_table_plot_and_resume(tmp_path, suite, capsys):
    config = mo.Config(suite=suite, designers=("random",), budget=6, repeats=2, pairs=(("Sphere", "Sphere", 2),),
                       out_dir=tmp_path)
    summary, table = mo.run(config)
    [task] = summary["tasks"]
    entry = summary["tasks"][task]["random"]
    assert entry["runs"] == 2 and entry["failed"] == 0
    record = json.loads(next((tmp_path / suite).rglob("repeat_000.json")).read_text())
    assert len(record["metrics"]) == 6
    if suite == "multiobjective":
        y = np.array([[m["f1"], m["f2"]] for m in record["metrics"]])
        assert record["hypervolume"] == pytest.approx(hypervolume_2d(-y, -np.array(record["reference"])))
        assert (tmp_path / suite / f"front_{task}.png").stat().st_size > 0
        assert "HV / GP bandit" in table
    else:
        assert 0 <= record["num_unsafe"] <= 6 and "unsafe trials" in table
    before = record["seconds_per_suggest"]
    mo.run(attrs.evolve(config, resume=True))  # nothing to redo
    again = json.loads(next((tmp_path / suite).rglob("repeat_000.json")).read_text())
    assert again["seconds_per_suggest"] == before


def test_cli_routes_the_suites_and_rejects_unknown_designers(tmp_path, capsys):
    from vizier_omnipred.bench.cli import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "ab", "--suite", "safety", "--designers", "nope", "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "unknown designers" in capsys.readouterr().err
