"""`bench scratch-fit`: `OmniPredRegressor.from_scratch().fit()` on one small study, as a user runs it.

The fit recipe (FinetuneConfig's step budget, validation split, early stopping) decides
whether a model from scratch learns anything from a study of 150 trials. This runs the
regressor exactly as a user would, with its default recipe or other step budgets, on
several task families, and prints held-out Spearman and normalized MAE next to a random
forest's on the same trials, with the fit's seconds:

* `smooth3`: a smooth function of a log-scaled DOUBLE, a linear DOUBLE and a CATEGORICAL,
  with one NaN and one infeasible trial among the training trials (both must be handled);
* `bbob-<Function>-<dim>`: Vizier's shifted BBOB functions (DOUBLE parameters);
* `hpobench-<dataset>`: real tabular results (log-scaled, integer and discrete parameters).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
from vizier import pyvizier as vz

from vizier_omnipred.bench.common import config_json, jsonable, set_torch_threads, write_json_atomic

DEFAULT_TASKS = ("smooth3", "bbob-Sphere-4", "bbob-Rastrigin-2", "hpobench-kc1")


@attrs.frozen
class ScratchTask:
    name: str
    problem: vz.ProblemStatement
    train: list[vz.Trial]
    test: list[vz.Trial]
    y_test: np.ndarray


def smooth3_problem() -> vz.ProblemStatement:
    problem = vz.ProblemStatement()
    root = problem.search_space.root
    root.add_float_param("learning_rate", 1e-5, 1e-1, scale_type=vz.ScaleType.LOG)
    root.add_float_param("dropout", 0.0, 0.8)
    root.add_categorical_param("optimizer", ["adam", "sgd", "rmsprop"])
    problem.metric_information.append(vz.MetricInformation("accuracy", goal=vz.ObjectiveMetricGoal.MAXIMIZE))
    return problem


def smooth3_value(params: vz.ParameterDict) -> float:
    """A smooth, unimodal-in-log-lr accuracy surface with an optimizer offset."""
    lr = math.log10(params.get_value("learning_rate"))
    dropout = params.get_value("dropout")
    offset = {"adam": 0.0, "sgd": -0.08, "rmsprop": -0.03}[params.get_value("optimizer")]
    return 0.9 - 0.04 * (lr + 3.0) ** 2 - 0.3 * (dropout - 0.3) ** 2 + offset


def _random_params(problem: vz.ProblemStatement, rng: np.random.Generator) -> vz.ParameterDict:
    params = vz.ParameterDict()
    for pc in problem.search_space.parameters:
        if pc.type == vz.ParameterType.CATEGORICAL:
            params[pc.name] = pc.feasible_values[int(rng.integers(len(pc.feasible_values)))]
        elif pc.type == vz.ParameterType.DISCRETE:
            params[pc.name] = float(pc.feasible_values[int(rng.integers(len(pc.feasible_values)))])
        else:
            lo, hi = pc.bounds
            u = rng.uniform()
            v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if pc.scale_type == vz.ScaleType.LOG \
                else lo + u * (hi - lo)
            params[pc.name] = int(round(v)) if pc.type == vz.ParameterType.INTEGER else v
    return params


def make_task(name: str, num_train: int, num_test: int, seed: int) -> ScratchTask:
    rng = np.random.default_rng(seed)
    if name == "smooth3" or name.startswith("bbob-"):
        if name == "smooth3":
            problem, evaluate = smooth3_problem(), smooth3_value
        else:
            from vizier_omnipred.corpus.bbob import random_bbob_task

            _, function, dim = name.split("-")
            problem, experimenter = random_bbob_task(seed + 1_000_000, int(dim), function)

            def evaluate(params):
                t = vz.Trial(parameters=params)
                experimenter.evaluate([t])
                return t.final_measurement.metrics[problem.metric_information.item().name].value

        metric = problem.metric_information.item().name
        trials = []
        for i in range(num_train + num_test):
            params = _random_params(problem, rng)
            trials.append(vz.Trial(id=i + 1, parameters=params).complete(
                vz.Measurement({metric: float(evaluate(params))})))
        train, test = trials[:num_train], trials[num_train:]
        if name == "smooth3" and num_train >= 2:
            # Bad input a user's study has: a NaN value and an infeasible trial.
            train[0] = vz.Trial(id=1, parameters=train[0].parameters).complete(vz.Measurement({metric: math.nan}))
            train[1] = vz.Trial(id=2, parameters=train[1].parameters).complete(
                vz.Measurement(), infeasibility_reason="diverged")
    elif name.startswith("hpobench-"):
        from vizier_omnipred.corpus.hpobench import hpobench_studies

        record = next(hpobench_studies([name.split("-", 1)[1]], seed=seed,
                                       max_trials_per_study=num_train + num_test))
        problem, trials = record.problem, list(record.trials)
        metric = problem.metric_information.item().name
        train, test = trials[:num_train], trials[num_train:]
    else:
        raise ValueError(f"unknown task {name!r}: smooth3, bbob-<Function>-<dim> or hpobench-<dataset>")
    y_test = np.array([t.final_measurement.metrics[metric].value for t in test])
    return ScratchTask(name, problem, train, test, y_test)


@attrs.frozen
class ScratchFitConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    num_train: int = 150
    num_test: int = 100
    budgets: tuple[int | None, ...] = (None,)  # FinetuneConfig.max_steps; None: the default recipe
    preset: str = "small"
    number_features: str = "position"
    study_text: str = "inline"  # TextCodec.study_text of the models from scratch
    # The models' number embedding's highest frequency (None: `model.SCRATCH_NUMBER_EMBEDDING`'s).
    number_max_frequency: float | None = None
    seeds: tuple[int, ...] = (0,)
    threads: int = 1
    num_samples: int = 64
    # Also fine-tune this checkpoint (its default recipe) on the same trials: does pretraining
    # beat the same preset from scratch? "shipped": the packaged checkpoint.
    checkpoint: str | None = None
    skip_scratch: bool = False
    out_dir: Path = Path("runs/bench/scratch-fit")


def fit_and_score(task: ScratchTask, reg, config=None) -> dict:
    """Fits `reg` on the task's trials (its default recipe unless `config`) and scores its
    median predictions on the held-out trials."""
    from vizier_omnipred.bench.metrics import normalized_mae, spearman

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = reg.fit(task.problem, task.train, config=config)
    seconds = time.perf_counter() - started
    pred = reg.predict(task.test).mean
    pred = np.where(np.isfinite(pred), pred, np.nanmedian(pred) if np.isfinite(pred).any() else 0.0)
    return {"spearman": spearman(task.y_test, pred), "nmae": normalized_mae(task.y_test, pred),
            "fit_seconds": seconds, "steps": report.steps, "best_step": report.best_step}


def scratch_regressor(config: ScratchFitConfig, seed: int):
    from vizier_omnipred import model as model_lib
    from vizier_omnipred.regressor import OmniPredRegressor
    from vizier_omnipred.text import TextCodec

    codec = TextCodec(number_features=config.number_features, study_text=config.study_text)
    numbers = None
    if config.number_max_frequency is not None:
        numbers = attrs.evolve(model_lib.SCRATCH_NUMBER_EMBEDDING, max_frequency=config.number_max_frequency)
    return OmniPredRegressor.from_scratch(config.preset, codec=codec, seed=seed, num_samples=config.num_samples,
                                          number_embedding=numbers)


def pretrained_regressor(config: ScratchFitConfig, seed: int):
    from vizier_omnipred.regressor import OmniPredRegressor

    path = None if config.checkpoint == "shipped" else config.checkpoint
    return OmniPredRegressor.from_pretrained(path, seed=seed, num_samples=config.num_samples)


def rf_score(task: ScratchTask, seed: int) -> dict:
    from vizier_omnipred.bench.baselines import classic_model
    from vizier_omnipred.bench.metrics import normalized_mae, spearman

    model = classic_model("rf", seed)
    started = time.perf_counter()
    model.fit(task.problem, task.train)
    pred = model.predict(task.test).mean
    return {"spearman": spearman(task.y_test, pred), "nmae": normalized_mae(task.y_test, pred),
            "fit_seconds": time.perf_counter() - started}


def run_scratch_fit(config: ScratchFitConfig, log=print) -> str:
    from vizier_omnipred.training import FinetuneConfig

    set_torch_threads(config.threads)
    rows: list[dict] = []
    for name in config.tasks:
        for seed in config.seeds:
            task = make_task(name, config.num_train, config.num_test, seed)
            rf = rf_score(task, seed)
            rows.append({"task": name, "seed": seed, "model": "random forest", **rf})
            if config.checkpoint is not None:
                r = fit_and_score(task, pretrained_regressor(config, seed))
                label = f"omnipred fine-tuned from {config.checkpoint}"
                rows.append({"task": name, "seed": seed, "model": label, **r})
                log(f"{name} seed {seed} {label}: Spearman {r['spearman']:.3f} nMAE {r['nmae']:.4f} "
                    f"({r['steps']} steps, best {r['best_step']}, {r['fit_seconds']:.0f} s)")
            for budget in () if config.skip_scratch else config.budgets:
                layout = "" if config.study_text == "inline" else f" study text {config.study_text}"
                if config.number_max_frequency is not None:
                    layout += f" max frequency {config.number_max_frequency:g}"
                label = f"omnipred {config.preset} {config.number_features}{layout}, " + (
                    "default recipe" if budget is None else f"{budget} steps")
                r = fit_and_score(task, scratch_regressor(config, seed), FinetuneConfig(max_steps=budget, seed=seed))
                rows.append({"task": name, "seed": seed, "model": label, **r})
                log(f"{name} seed {seed} {label}: Spearman {r['spearman']:.3f} nMAE {r['nmae']:.4f} "
                    f"({r['steps']} steps, best {r['best_step']}, {r['fit_seconds']:.0f} s); "
                    f"random forest {rf['spearman']:.3f} / {rf['nmae']:.4f}")
    lines = [f"from scratch on {config.num_train} trials, {config.num_test} held out, "
             f"{config.threads} thread(s); mean over seeds {list(config.seeds)}", "",
             "| task | model | Spearman | nMAE | steps (best) | fit s |", "|---|---|---|---|---|---|"]
    for name in config.tasks:
        for model in dict.fromkeys(r["model"] for r in rows if r["task"] == name):
            rs = [r for r in rows if r["task"] == name and r["model"] == model]
            steps = f"{np.mean([r['steps'] for r in rs]):.0f} ({np.mean([r['best_step'] for r in rs]):.0f})" \
                if "steps" in rs[0] else ""
            lines.append(f"| {name} | {model} | {np.mean([r['spearman'] for r in rs]):.3f} | "
                         f"{np.mean([r['nmae'] for r in rs]):.4f} | {steps} | "
                         f"{np.mean([r['fit_seconds'] for r in rs]):.1f} |")
    table = "\n".join(lines)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scratch_fit.json", jsonable({"rows": rows, "config": config_json(config)}))
    (out / "table.md").write_text(table + "\n")
    return table


def parse_budgets(values: Sequence[str]) -> tuple[int | None, ...]:
    return tuple(None if v in ("default", "auto") else int(v) for v in values)
