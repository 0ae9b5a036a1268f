"""Wiring your own acquisition function into `OmniPredDesigner`.

An acquisition is any callable `(samples, *, goal, best, rng) -> (N,) scores`, higher is
better: `samples.values` are (N, S) sampled objective values per candidate, nan where the
model sampled `<INFEASIBLE>`; `maximise_space` flips MINIMIZE metrics, so one code serves
both goals. This one is "mean + beta * std" of the feasible samples. In a Vizier service:
`OmniPredPolicyFactory(designer_kwargs={'acquisition': MeanPlusStd(2.0)})` (callables are
not stored in metadata: the factory hands it to every designer it builds or restores).
`--tiny` (or OMNIPRED_EXAMPLES_TINY=1): a tiny untrained model, for a quick check."""

import argparse
import os

import attrs
import numpy as np
from vizier import algorithms as vza

from vizier_omnipred.acquisitions import infeasible_floor, maximise_space
from vizier_omnipred import FinetuneConfig, OmniPredDesigner, OmniPredRegressor
from vizier_omnipred.corpus.bbob import random_bbob_task


@attrs.frozen
class MeanPlusStd:
    beta: float = 1.0

    def __call__(self, samples, *, goal, best, rng) -> np.ndarray:
        y, bad, _ = maximise_space(samples, goal, best)  # larger = better; `bad`: infeasible samples
        n_ok = np.maximum((~bad).sum(axis=1), 1)
        mean = np.where(bad, 0.0, y).sum(axis=1) / n_ok
        std = np.sqrt(np.where(bad, 0.0, (y - mean[:, None]) ** 2).sum(axis=1) / n_ok)
        p_feasible = 1.0 - bad.mean(axis=1)  # below 0.5: under every other candidate, ordered by p
        return np.where(p_feasible >= 0.5, mean + self.beta * std, infeasible_floor(p_feasible))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("OMNIPRED_EXAMPLES_TINY")))
    args = parser.parse_args()
    problem, experimenter = random_bbob_task(seed=2, dim=2, function_name="Ellipsoidal")
    kwargs = {}
    if args.tiny:
        kwargs = {"regressor": OmniPredRegressor.from_scratch("tiny"), "num_seed_trials": 2, "num_samples": 8,
                  "num_candidates": 16, "finetune_config": FinetuneConfig(max_epochs=2)}
    designer = OmniPredDesigner(problem, seed=0, acquisition=MeanPlusStd(beta=2.0), **kwargs)
    for i in range(args.trials):
        (suggestion,) = designer.suggest(count=1)
        trial = suggestion.to_trial(i + 1)
        experimenter.evaluate([trial])
        designer.update(vza.CompletedTrials([trial]), vza.ActiveTrials())
        md = trial.metadata.ns("omnipred")  # where a suggestion came from, and its score
        print(f"trial {trial.id}: {trial.final_measurement.metrics['bbob_eval'].value:9.4g}  {dict(md)}")


if __name__ == "__main__":
    main()
