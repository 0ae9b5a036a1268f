"""Driving `OmniPredDesigner` directly: the suggest -> evaluate -> update loop, no service.

The designer is a plain Vizier designer: `suggest(count)` returns `vz.TrialSuggestion`s,
`update(completed, all_active)` feeds results back (only the new ones). Here it runs in
batches of 2 on a shifted 3-D BBOB function (a Vizier `Experimenter`) and at the end asks
the designer, also a `vza.Predictor`, what it expects at its best point. `dump()`/`load()`
would carry its state across processes, as the Vizier service does.
`--tiny` (or OMNIPRED_EXAMPLES_TINY=1): a tiny untrained model, for a quick check.
"""

import argparse
import os

from vizier import algorithms as vza

from vizier_omnipred import OmniPredDesigner
from vizier_omnipred.corpus.bbob import random_bbob_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="suggest/update rounds of 2 trials")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the shipped one)")
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("OMNIPRED_EXAMPLES_TINY")))
    args = parser.parse_args()
    problem, experimenter = random_bbob_task(seed=1, dim=3, function_name="Sphere")
    metric = problem.metric_information.item().name
    kwargs = {"checkpoint": args.checkpoint}
    if args.tiny:
        from vizier_omnipred.regressor import OmniPredRegressor
        from vizier_omnipred.training import FinetuneConfig

        kwargs = {"regressor": OmniPredRegressor.from_scratch("tiny"), "num_seed_trials": 2, "num_samples": 8,
                  "num_candidates": 16, "finetune_config": FinetuneConfig(max_epochs=2)}
    designer = OmniPredDesigner(problem, seed=0, acquisition="ucb", **kwargs)

    completed, next_id = [], 1
    for round_ in range(args.rounds):
        trials = []
        for suggestion in designer.suggest(count=2):
            trials.append(suggestion.to_trial(next_id))
            next_id += 1
        experimenter.evaluate(trials)  # completes each trial with its measurement
        designer.update(vza.CompletedTrials(trials), vza.ActiveTrials())
        completed += trials
        values = [t.final_measurement.metrics[metric].value for t in trials]
        sources = [t.metadata.ns("omnipred").get("source") for t in trials]
        print(f"round {round_}: {', '.join(f'{v:.3g} ({s})' for v, s in zip(values, sources))}")

    best = min(completed, key=lambda t: t.final_measurement.metrics[metric].value)
    prediction = designer.predict([best])
    print(f"best trial {best.id}: {best.final_measurement.metrics[metric].value:.4g} "
          f"(model: {prediction.mean[0]:.4g} +- {prediction.stddev[0]:.3g}) at {dict(best.parameters)}")


if __name__ == "__main__":
    main()
