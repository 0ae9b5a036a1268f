"""The OmniPred designer in a Vizier service study, through `vizier.service.clients.Study`.

Starts an in-process Vizier server on a SQLite file with OmniPred's policy factory, creates
a study whose StudyConfig says `algorithm='OMNIPRED'` (a plain string: Vizier forwards it to
the policy factory), and runs suggest -> evaluate -> complete. Run it again with the same
`--db` and the study continues where it stopped: trials live in the database, the designer's
state in the study metadata, its fine-tuned weights in `<db>.omnipred/`.
`--tiny` (or OMNIPRED_EXAMPLES_TINY=1): a tiny untrained model, for a quick check.
"""

import argparse
import os
import tempfile

from vizier import pyvizier as vz
from vizier.service import clients
from vizier.service import pyvizier as svz

from vizier_omnipred import service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file (default: a new temporary one)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("OMNIPRED_EXAMPLES_TINY")))
    args = parser.parse_args()
    args.db = args.db or os.path.join(tempfile.mkdtemp(), "study.db")
    designer_kwargs = {}  # e.g. {"acquisition": "ei", "num_seed_trials": 6}
    if args.tiny:
        from vizier_omnipred.regressor import OmniPredRegressor
        from vizier_omnipred.training import FinetuneConfig

        designer_kwargs = {"regressor": OmniPredRegressor.from_scratch("tiny"), "num_seed_trials": 2,
                           "num_samples": 8, "num_candidates": 16, "finetune_config": FinetuneConfig(max_epochs=2)}
    factory = service.OmniPredPolicyFactory(work_dir=service.default_work_dir(args.db), designer_kwargs=designer_kwargs)

    with service.start_server(args.db, policy_factory=factory) as server:  # localhost only; clients point at it
        config = svz.StudyConfig(algorithm="OMNIPRED")
        config.search_space.root.add_float_param("learning_rate", 1e-4, 1e-1, scale_type=svz.ScaleType.LOG)
        config.search_space.root.add_int_param("num_layers", 1, 8)
        config.metric_information.append(svz.MetricInformation("val_loss", goal=svz.ObjectiveMetricGoal.MINIMIZE))
        config.metadata["description"] = "mlp on a tabular dataset"
        study = clients.Study.from_study_config(config, owner="examples", study_id="mlp-tuning")
        print(f"study {study.resource_name} on {server.endpoint}, database {args.db}")
        for _ in range(args.trials):
            for trial in study.suggest(count=1):
                p = trial.parameters  # numbers come back as floats from the service
                lr, layers = p["learning_rate"], int(p["num_layers"])
                loss = (lr - 0.003) ** 2 * 1e4 + 0.05 * abs(layers - 4)
                trial.complete(vz.Measurement({"val_loss": loss}))
                print(f"trial {trial.id}: lr={lr:.3g} layers={layers} -> {loss:.4f}")
        best = next(iter(study.optimal_trials())).materialize()
        print(f"best: trial {best.id} {dict(best.parameters)} -> {best.final_measurement.metrics['val_loss'].value:.4f}")


if __name__ == "__main__":
    main()
