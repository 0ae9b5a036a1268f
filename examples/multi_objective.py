"""Two objectives and a safety metric with one text model: `OmniPredDesigner` on a front.

Objectives f1, f2 (two shifted spheres); safety metric 'dist' (safe when <= 2). One model samples
every metric (only the metric's name in the text changes); the designer scores joint samples
with hypervolume scalarizations and picks points predicted safe.
`--tiny` (or OMNIPRED_EXAMPLES_TINY=1): a tiny untrained model, for a quick check.
"""

import argparse
import os

import numpy as np
from vizier import algorithms as vza
from vizier import pyvizier as vz

from vizier_omnipred import OmniPredDesigner
from vizier_omnipred.multimetric import is_safe, pareto_mask

MIN = vz.ObjectiveMetricGoal.MINIMIZE


def measure(x: np.ndarray) -> dict[str, float]:
    return {"f1": np.sum((x - 1) ** 2), "f2": np.sum((x + 1) ** 2), "dist": np.linalg.norm(x - [0, 1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="suggest/update rounds of 2 trials")
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("OMNIPRED_EXAMPLES_TINY")))
    args = parser.parse_args()
    problem = vz.ProblemStatement(metric_information=[
        vz.MetricInformation("f1", goal=MIN), vz.MetricInformation("f2", goal=MIN),
        vz.MetricInformation("dist", goal=MIN, safety_threshold=2.0)])
    [problem.search_space.root.add_float_param(name, -3.0, 3.0) for name in ("x0", "x1")]
    kwargs = {}  # default: the shipped checkpoint
    if args.tiny:
        from vizier_omnipred.regressor import OmniPredRegressor
        from vizier_omnipred.training import FinetuneConfig

        kwargs = {"regressor": OmniPredRegressor.from_scratch("tiny"), "num_seed_trials": 2, "num_samples": 8,
                  "num_candidates": 16, "finetune_config": FinetuneConfig(max_epochs=2)}
    designer = OmniPredDesigner(problem, seed=0, **kwargs)
    completed = []
    for _ in range(args.rounds):
        trials = [s.to_trial(len(completed) + i + 1) for i, s in enumerate(designer.suggest(count=2))]
        for t in trials:
            t.complete(vz.Measurement(metrics=measure(np.array([t.parameters[p].value for p in ("x0", "x1")]))))
        designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
        completed += trials
    metrics = [{k: m.value for k, m in t.final_measurement.metrics.items()} for t in completed]
    safe = [m for m in metrics if is_safe(m, designer.safety_metrics)]  # Vizier's SafetyChecker rule
    front = pareto_mask(-np.array([[m["f1"], m["f2"]] for m in safe]).reshape(-1, 2))
    print(f"{len(completed)} trials, {len(completed) - len(safe)} unsafe; safe front:", [(round(m["f1"], 3), round(m["f2"], 3)) for m, keep in zip(safe, front) if keep])
    prediction = designer.predict([vz.TrialSuggestion({"x0": 0.0, "x1": 0.0})])  # (1, 3): every metric
    print("predicted at (0, 0):", dict(zip(["f1", "f2", "dist"], prediction.mean[0].round(3).tolist())))


if __name__ == "__main__":
    main()
