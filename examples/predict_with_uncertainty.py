"""OmniPredRegressor on your own trials: fine-tune, then predict with quantiles.

A hand-made study (log-scaled float, integer, categorical, study text) is fine-tuned on;
unseen configurations get a median, a Gaussian-equivalent stddev and 10%/90% quantiles of
the sampled objective, in the metric's own units. `--tiny` (or OMNIPRED_EXAMPLES_TINY=1):
an untrained tiny model that checks the plumbing in seconds; its numbers mean nothing."""

import argparse
import json
import os

import numpy as np
from vizier import pyvizier as vz

from vizier_omnipred import SHIPPED_CHECKPOINT, FinetuneConfig, OmniPredRegressor


def val_loss(p) -> float:  # the "unknown" objective: best near lr=3e-3, 4 layers, adam
    return (np.log10(p["learning_rate"]) + 2.5) ** 2 + 0.1 * abs(p["num_layers"] - 4) + 0.3 * (p["optimizer"] == "sgd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("OMNIPRED_EXAMPLES_TINY")))
    args = parser.parse_args()
    problem = vz.ProblemStatement()
    problem.search_space.root.add_float_param("learning_rate", 1e-4, 1e-1, scale_type=vz.ScaleType.LOG)
    problem.search_space.root.add_int_param("num_layers", 1, 8)
    problem.search_space.root.add_categorical_param("optimizer", ["adam", "sgd"])
    problem.metric_information.append(vz.MetricInformation("val_loss", goal=vz.ObjectiveMetricGoal.MINIMIZE))
    problem.metadata["description"] = "mlp on a tabular classification dataset"
    rng = np.random.default_rng(0)
    draw = lambda: {"learning_rate": 10 ** rng.uniform(-4, -1), "num_layers": int(rng.integers(1, 9)),  # noqa: E731
                    "optimizer": str(rng.choice(["adam", "sgd"]))}
    trials = [vz.Trial(p, id=i + 1).complete(vz.Measurement({"val_loss": val_loss(p)}))
              for i, p in enumerate(draw() for _ in range(8 if args.tiny else 40))]
    if args.tiny:
        regressor, config = OmniPredRegressor.from_scratch("tiny", num_samples=16), FinetuneConfig(max_epochs=2)
    elif (SHIPPED_CHECKPOINT / "omnipred.json").exists():
        regressor, config = OmniPredRegressor.from_pretrained(), None
    else:
        print(f"no checkpoint in {SHIPPED_CHECKPOINT}: a 'small' model from scratch (weak)")
        regressor, config = OmniPredRegressor.from_scratch("small"), None
    report = regressor.fit(problem, trials, config=config)
    print(f"fine-tuned on {report.data.num_used} trials: {report.epochs} epochs, {report.seconds:.1f} s")
    new = [vz.TrialSuggestion(draw()) for _ in range(5)]
    prediction = regressor.predict(new)  # quantiles: JSON {q: [per trial, None if all infeasible]}
    q = {k: np.array(v, dtype=float) for k, v in json.loads(prediction.metadata.ns("omnipred")["quantiles"]).items()}
    print(f"{'parameters':<40} {'true':>8} {'median':>8} {'stddev':>8} {'q10':>8} {'q90':>8}")
    for i, s in enumerate(new):
        p = s.parameters.as_dict()
        text = f"lr={p['learning_rate']:.2g} layers={p['num_layers']} {p['optimizer']}"
        print(f"{text:<40} {val_loss(p):8.3g} {prediction.mean[i]:8.3g} {prediction.stddev[i]:8.3g} "
              f"{q['0.1'][i]:8.3g} {q['0.9'][i]:8.3g}")


if __name__ == "__main__":
    main()
