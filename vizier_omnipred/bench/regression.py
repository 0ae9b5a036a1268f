"""Regression benchmark: how well each model predicts held-out trials of a study.

For every task (a study with a pool of training trials and a fixed test set), train size
n and model: fit on the first n pool trials, predict the test set, and score normalized
MAE, Spearman, Kendall and calibration (metrics.py). Training sets of one (task, repeat)
are nested prefixes, so a model's numbers across train sizes differ only by the data added.

Suites:
- `bbob`: `corpus.bbob.random_bbob_task` (shifted, rotated BBOB functions) in several
  dimensions; inputs drawn uniformly by Vizier's RandomDesigner. Task seeds start at
  `common.BENCH_SEED_OFFSET`, away from the seeds pretraining corpora use.
- `hpobench`: each dataset's full result table (corpus.hpobench), held out: the
  `transfer` baseline averages *other* datasets' tables (those the dataset's checkpoint
  was pretrained on, so that model and baseline read the same history; all seven others
  without a checkpoint; `hpobench_prior_datasets`), and a pretrained OmniPred model must
  not have seen the test dataset either. Such a checkpoint exists per held-out
  dataset, so it is given as a pattern, `--hpobench-checkpoint-pattern
  'ckpts/loo-{dataset}'`; without one the pretrained/finetuned OmniPred cells of this
  suite are *skipped* (recorded with the reason), never run with a checkpoint that may
  have seen the answers. `--pretrained-checkpoint` (default: the shipped checkpoint) is
  used for BBOB tasks only.

Models: `gp`, `rf`, `gbt`, `mlp` (baselines.py on features.py), `vizier-gp` (Vizier's GP
bandit as a predictor), `transfer` (HPOBench only; REFERENCE.md section 4),
`omnipred-scratch` (from_scratch + fit), `omnipred-pretrained` (no fine-tuning),
`omnipred-finetuned` (pretrained + fit), `omnipred-warmstart` (HPOBench only: the
`--pretrained-checkpoint`, which must never have seen HPOBench - the shipped one is trained on
synthetic BBOB studies only - fine-tuned on the n trials together with
`--prior-trials` random trials of each related dataset, the same ones as `transfer`'s, as
prior studies, so the held-out rule holds by construction). A model that fails on a cell is recorded as
failed with its error; the other cells go on.

Outputs in `out_dir`: results.json (every cell, with predictions), table.md (medians per
suite x train size x model), and with --plot pred_vs_true_n{n}.png per train size.
"""

from __future__ import annotations

import functools
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np
from vizier import pyvizier as vz

from vizier_omnipred.bench import metrics
from vizier_omnipred.bench.baselines import (
    CLASSIC_REGRESSORS,
    MeanTable,
    TransferMeanTableModel,
    TrialModel,
    VizierGPModel,
    classic_model,
    objective_values,
    single_metric,
)
from vizier_omnipred.bench.common import (
    config_json,
    environment_info,
    fmt,
    pyplot,
    run_spawned,
    set_torch_threads,
    stable_seed,
    write_json_atomic,
)

SUITES: tuple[str, ...] = ("bbob", "hpobench", "synthetic")
OMNIPRED_MODELS: tuple[str, ...] = (
    "omnipred-scratch", "omnipred-pretrained", "omnipred-finetuned", "omnipred-warmstart",
)
MODELS: tuple[str, ...] = tuple(CLASSIC_REGRESSORS) + ("vizier-gp", "transfer") + OMNIPRED_MODELS
DEFAULT_BBOB_DIMS: tuple[int, ...] = (2, 4, 8)
DEFAULT_BBOB_FUNCTIONS: tuple[str, ...] = ("Sphere", "Ellipsoidal", "Rastrigin", "RosenbrockRotated")
# The `synthetic` suite: new studies of the family the synthetic pretraining corpus draws from
# (`corpus.bbob.synthetic_bbob_studies`: realistic names and types, any BBOB function), with a
# synthetic seed no pretraining of this project uses (0: the shipped checkpoint, 1: the folds):
# does what pretraining learned carry to a new study of its own family?
SYNTHETIC_TASK_SEED = 77
SYNTHETIC_DIMS = (2, 6)


class RegressionConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


@attrs.frozen
class OmniPredOptions:
    preset: str = "small"  # for omnipred-scratch
    device: str = "cpu"
    num_samples: int = 64
    pretrained_checkpoint: str | None = None  # BBOB tasks; None: the checkpoint shipped in the package
    hpobench_checkpoint_pattern: str | None = None  # must contain '{dataset}'
    prior_trials: int = 32  # omnipred-warmstart: trials drawn from each other HPOBench dataset
    warmstart_epochs: int = 10  # fine-tuning epochs over new trials + priors (priors make epochs long)
    train_encoder: bool | None = None  # FinetuneConfig.train_encoder of the fine-tuned/warm-started cells
    level_map: bool | None = None  # FinetuneConfig.level_map of the fine-tuned cells (None: the recipe's)
    range_map: bool | None = None  # FinetuneConfig.range_map of the fine-tuned and scratch cells (None: the recipe's)
    finetune_steps: int | None = None  # FinetuneConfig.max_steps of the fine-tuned cells (0: level map only)
    rank_frame: bool = False  # FinetuneConfig.rank_frame of the fine-tuned and scratch cells
    ensemble_size: int = 1  # OmniPredRegressor ensemble_size (members fitted alike, samples shared)
    precision: str = "float32"  # FinetuneConfig.precision of every OmniPred fit

    def checkpoint_for(self, task: "RegressionTask") -> tuple[bool, str | None, str]:
        """(usable, path, reason). HPOBench needs a leave-one-out checkpoint per dataset."""
        if task.suite == "hpobench":
            if not self.hpobench_checkpoint_pattern:
                return False, None, (
                    "no leave-one-out checkpoint: pass --hpobench-checkpoint-pattern with '{dataset}' "
                    "(a model pretrained without the test dataset)"
                )
            return True, self.hpobench_checkpoint_pattern.format(dataset=task.dataset), ""
        if task.suite == "synthetic":
            from vizier_omnipred.pretraining import saved_pretrain_config
            from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

            saved = saved_pretrain_config(self.pretrained_checkpoint or SHIPPED_CHECKPOINT) or {}
            if saved.get("synthetic_studies") and saved.get("synthetic_seed") == task.synthetic_seed:
                return False, None, (f"the checkpoint was pretrained on synthetic seed {task.synthetic_seed}, "
                                     "the seed of these test studies")
        return True, self.pretrained_checkpoint, ""


def _suites(value: str) -> tuple[str, ...]:
    if value == "all":
        return SUITES
    return tuple(v.strip() for v in value.split(",") if v.strip())


@attrs.frozen
class RegressionConfig:
    suites: tuple[str, ...] = attrs.field(default=SUITES, converter=tuple)
    train_sizes: tuple[int, ...] = attrs.field(default=(10, 30, 100), converter=tuple)
    test_size: int = 200
    models: tuple[str, ...] = attrs.field(default=MODELS, converter=tuple)
    repeats: int = 1
    bbob_dims: tuple[int, ...] = attrs.field(default=DEFAULT_BBOB_DIMS, converter=tuple)
    bbob_functions: tuple[str, ...] = attrs.field(default=DEFAULT_BBOB_FUNCTIONS, converter=tuple)
    hpobench_datasets: tuple[str, ...] | None = attrs.field(
        default=None, converter=lambda x: None if x is None else tuple(x)
    )
    synthetic_studies: int = 8  # studies of the `synthetic` suite per repeat
    synthetic_sparse_fraction: float = 0.0  # of them, the fraction where only some parameters matter
    omnipred: OmniPredOptions = attrs.field(factory=OmniPredOptions)
    out_dir: Path = attrs.field(default=Path("runs/bench/regression"), converter=Path)
    plot: bool = False
    seed: int = 0
    workers: int = 1  # tasks run in this many spawned processes
    threads: int | None = None  # torch threads per worker process (None: torch's default)


def validate_config(config: RegressionConfig) -> None:
    if config.workers < 1:
        raise RegressionConfigError(f"workers must be >= 1, got {config.workers}")
    if config.omnipred.ensemble_size < 1:
        raise RegressionConfigError(f"--omnipred-ensemble must be >= 1, got {config.omnipred.ensemble_size}")
    bad = [s for s in config.suites if s not in SUITES]
    if bad or not config.suites:
        raise RegressionConfigError(f"unknown suite(s) {bad}; valid: {', '.join(SUITES)}, all")
    unknown = [m for m in config.models if m not in MODELS]
    if unknown or not config.models:
        raise RegressionConfigError(f"unknown model(s) {unknown}; valid: {', '.join(MODELS)}")
    if not config.train_sizes or min(config.train_sizes) < 2:
        raise RegressionConfigError(f"train sizes must be >= 2, got {config.train_sizes}")
    if config.test_size < 2:
        raise RegressionConfigError(f"test size must be >= 2, got {config.test_size}")
    if config.repeats < 1:
        raise RegressionConfigError(f"repeats must be >= 1, got {config.repeats}")
    if config.synthetic_studies < 1:
        raise RegressionConfigError(f"synthetic studies must be >= 1, got {config.synthetic_studies}")
    if not 0.0 <= config.synthetic_sparse_fraction <= 1.0:
        raise RegressionConfigError(f"synthetic sparse fraction must be in [0, 1], got {config.synthetic_sparse_fraction}")
    pattern = config.omnipred.hpobench_checkpoint_pattern
    if pattern is not None and "{dataset}" not in pattern:
        raise RegressionConfigError(
            f"--hpobench-checkpoint-pattern {pattern!r} has no '{{dataset}}': one checkpoint for all "
            "held-out datasets would have seen the test dataset"
        )


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class RegressionTask:
    """A study split into a training pool (train = pool[:n]) and a fixed test set."""

    suite: str
    name: str
    repeat: int
    problem: vz.ProblemStatement
    pool: tuple[vz.Trial, ...] = attrs.field(converter=tuple)
    test: tuple[vz.Trial, ...] = attrs.field(converter=tuple)
    dataset: str | None = None
    prior_table: MeanTable | None = None  # related studies' mean table, for `transfer`
    prior_studies: tuple[tuple[vz.ProblemStatement, tuple[vz.Trial, ...]], ...] = ()  # for omnipred-warmstart
    prior_datasets: tuple[str, ...] = ()  # the related datasets behind prior_table and prior_studies
    synthetic_seed: int | None = None  # the `synthetic` suite: the seed its study was drawn with

    @property
    def y_test(self) -> np.ndarray:
        return objective_values(self.problem, list(self.test))


def _completed(problem: vz.ProblemStatement, params: Sequence[Any], values: np.ndarray, start_id: int = 1) -> list[vz.Trial]:
    metric = single_metric(problem).name
    trials = []
    for i, (p, y) in enumerate(zip(params, values)):
        t = vz.Trial(parameters=dict(p.items()) if hasattr(p, "items") else p, id=start_id + i)
        if math.isfinite(float(y)):
            t.complete(vz.Measurement(metrics={metric: float(y)}))
        else:
            t.complete(vz.Measurement(), infeasibility_reason="not finite in table")
        trials.append(t)
    return trials


def bbob_tasks(config: RegressionConfig) -> list[RegressionTask]:
    from vizier._src.algorithms.designers.random import RandomDesigner

    from vizier_omnipred.corpus.bbob import random_bbob_task

    n_pool = max(config.train_sizes)
    tasks = []
    for repeat in range(config.repeats):
        for fn in config.bbob_functions:
            for dim in config.bbob_dims:
                seed = stable_seed("regression", "bbob", fn, dim, repeat, config.seed)
                problem, experimenter = random_bbob_task(seed, dim, fn)
                sampler = RandomDesigner(problem.search_space, seed=seed % (2**31))
                trials = [s.to_trial(i + 1) for i, s in enumerate(sampler.suggest(n_pool + config.test_size))]
                experimenter.evaluate(trials)
                tasks.append(
                    RegressionTask(
                        suite="bbob",
                        name=f"{fn}-{dim}d",
                        repeat=repeat,
                        problem=problem,
                        pool=trials[:n_pool],
                        test=trials[n_pool:],
                    )
                )
    return tasks


def synthetic_tasks(config: RegressionConfig) -> list[RegressionTask]:
    """`synthetic_studies` new synthetic studies per repeat (2-6 parameters, `SYNTHETIC_TASK_SEED`
    plus the repeat, and 100x `config.seed`), each with enough feasible trials for the largest
    training size and the test set: its first feasible trials are the pool, the next the test.
    A study with fewer (a large infeasible region) is passed over for the next one; a
    RegressionConfigError if too few of the first 50x `synthetic_studies` studies have enough."""
    from vizier_omnipred.corpus.bbob import synthetic_bbob_studies

    n_pool, needed = max(config.train_sizes), max(config.train_sizes) + config.test_size
    tasks = []
    for repeat in range(config.repeats):
        seed = SYNTHETIC_TASK_SEED + repeat + 100 * config.seed
        found = 0
        # Studies are drawn with 1.5x the trials needed; about 15% have an infeasible region.
        studies = synthetic_bbob_studies(seed, 50 * config.synthetic_studies, trials_per_study=(3 * needed // 2,) * 2,
                                         dims=SYNTHETIC_DIMS, sparse_fraction=config.synthetic_sparse_fraction)
        for index, record in enumerate(studies):
            feasible = [t for t in record.trials if not t.infeasible and t.final_measurement.metrics]
            if len(feasible) < needed:
                continue
            dim = len(record.problem.search_space.parameters)
            tasks.append(RegressionTask(
                suite="synthetic", name=f"{record.problem.metadata['bbob_function']}-{dim}d-{index:06d}",
                repeat=repeat, problem=record.problem, pool=feasible[:n_pool], test=feasible[n_pool:needed],
                synthetic_seed=seed))
            found += 1
            if found == config.synthetic_studies:
                break
        if found < config.synthetic_studies:
            raise RegressionConfigError(
                f"synthetic suite: only {found} of {50 * config.synthetic_studies} studies (seed {seed}) have "
                f"{needed} feasible trials; ask for fewer --synthetic-studies or a smaller train or test size")
    return tasks


def hpobench_prior_datasets(dataset: str, checkpoint_pattern: str | None) -> tuple[str, ...]:
    """The related HPOBench datasets that the transfer rivals (`transfer`, `omnipred-warmstart`)
    of `dataset` may read: those its checkpoint (`checkpoint_pattern` with '{dataset}') was
    pretrained on, read from the checkpoint's saved pretraining config, so that the baseline and
    the model learn from the same history (2 folds of 4: four datasets, not seven); when no
    checkpoint is given or it read none of them (or says nothing), every other dataset.
    `dataset` itself never.
    """
    from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS

    others = tuple(o for o in HPOBENCH_DATASETS if o != dataset)
    if checkpoint_pattern:
        from vizier_omnipred.bench.folds import datasets_read_by

        read = datasets_read_by(checkpoint_pattern.format(dataset=dataset))
        if read - {dataset}:
            return tuple(o for o in others if o in read)
    return others


def hpobench_tasks(config: RegressionConfig) -> list[RegressionTask]:
    from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS, hpobench_problem, hpobench_table

    datasets = config.hpobench_datasets or tuple(HPOBENCH_DATASETS)
    bad = [d for d in datasets if d not in HPOBENCH_DATASETS]
    if bad:
        raise RegressionConfigError(f"unknown HPOBench dataset(s) {bad}; valid: {', '.join(HPOBENCH_DATASETS)}")
    tables = {d: hpobench_table(d) for d in HPOBENCH_DATASETS}
    # The transfer rivals of dataset d never see d, and read what d's checkpoint read.
    related = {d: hpobench_prior_datasets(d, config.omnipred.hpobench_checkpoint_pattern) for d in datasets}
    key_cache: dict = {}
    loo_tables = {
        d: MeanTable(
            [(tables[o][0], np.asarray(tables[o][1], dtype=float)) for o in related[d]],
            key_cache=key_cache,
        )
        for d in datasets
    }
    n_pool = max(config.train_sizes)
    tasks = []
    for repeat in range(config.repeats):
        for d in datasets:
            params, values = tables[d]
            values = np.asarray(values, dtype=float)
            if n_pool + config.test_size > len(params):
                raise RegressionConfigError(f"{d}: table has {len(params)} rows, need {n_pool + config.test_size}")
            problem = hpobench_problem(d)
            rng = np.random.default_rng(stable_seed("regression", "hpobench", d, repeat, config.seed))
            order = rng.permutation(len(params))[: n_pool + config.test_size]
            trials = _completed(problem, [params[i] for i in order], values[order])
            priors = []
            for o in related[d]:
                o_params, o_values = tables[o]
                pick = rng.permutation(len(o_params))[: config.omnipred.prior_trials]
                o_problem = hpobench_problem(o)
                priors.append((o_problem, tuple(_completed(o_problem, [o_params[i] for i in pick],
                                                           np.asarray(o_values, dtype=float)[pick]))))
            tasks.append(
                RegressionTask(
                    suite="hpobench",
                    name=d,
                    repeat=repeat,
                    problem=problem,
                    pool=trials[:n_pool],
                    test=trials[n_pool:],
                    dataset=d,
                    prior_table=loo_tables[d],
                    prior_studies=tuple(priors),
                    prior_datasets=related[d],
                )
            )
    return tasks


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@attrs.define
class OmniPredModel:
    """OmniPredRegressor behind the TrialModel interface (imported lazily).

    mode: 'scratch' (from_scratch(preset) + fit), 'pretrained' (checkpoint, zero-shot:
    only told which study it predicts for), 'finetuned' (checkpoint + fit). Predictions
    come from `sample`: median as point estimate, intervals from sample quantiles.
    """

    mode: str
    options: OmniPredOptions
    checkpoint: str | None = None
    seed: int = 0
    prior_studies: Sequence[Any] = ()
    _regressor: Any = attrs.field(default=None, init=False)
    _problem: vz.ProblemStatement | None = attrs.field(default=None, init=False)

    def fit(self, problem: vz.ProblemStatement, trials: Sequence[vz.Trial]) -> None:
        from vizier_omnipred.regressor import OmniPredRegressor
        from vizier_omnipred.training import FinetuneConfig

        o = self.options
        if self.mode == "scratch":
            reg = OmniPredRegressor.from_scratch(o.preset, device=o.device, seed=self.seed,
                                                 ensemble_size=o.ensemble_size)
        elif self.mode in ("pretrained", "finetuned", "warmstart"):
            reg = OmniPredRegressor.from_pretrained(self.checkpoint, device=o.device, ensemble_size=o.ensemble_size)
        else:
            raise ValueError(f"unknown OmniPred mode {self.mode!r}")
        if self.mode == "warmstart":
            reg.fit(problem, list(trials), prior_studies=self.prior_studies,
                    config=FinetuneConfig(max_epochs=o.warmstart_epochs, seed=self.seed, train_encoder=o.train_encoder,
                                          precision=o.precision))
        elif self.mode == "finetuned":
            reg.fit(problem, list(trials), config=FinetuneConfig(
                train_encoder=o.train_encoder, level_map=o.level_map, range_map=o.range_map, max_steps=o.finetune_steps,
                rank_frame=o.rank_frame, precision=o.precision))
        elif self.mode == "scratch":
            reg.fit(problem, list(trials), config=FinetuneConfig(range_map=o.range_map, rank_frame=o.rank_frame,
                                                                 precision=o.precision))
        self._regressor, self._problem = reg, problem

    def predict(self, trials: Sequence[vz.TrialSuggestion]) -> metrics.PredictiveDistribution:
        if self._regressor is None:
            raise RuntimeError("fit() first")
        ys = self._regressor.sample(list(trials), num_samples=self.options.num_samples, problem=self._problem)
        return metrics.PredictiveDistribution.from_samples(np.asarray(ys.values, dtype=float))


def make_model(name: str, task: RegressionTask, config: RegressionConfig, seed: int) -> tuple[TrialModel | None, str]:
    """(model, "") or (None, reason to skip this cell)."""
    if name in CLASSIC_REGRESSORS:
        return classic_model(name, seed), ""
    if name == "vizier-gp":
        return VizierGPModel(seed=seed), ""
    if name == "transfer":
        if task.prior_table is None:
            return None, "transfer needs related studies' tables (HPOBench only)"
        return TransferMeanTableModel(task.prior_table), ""
    if name == "omnipred-scratch":
        return OmniPredModel("scratch", config.omnipred, seed=seed), ""
    if name == "omnipred-warmstart":
        if not task.prior_studies:
            return None, "omnipred-warmstart needs related prior studies (HPOBench only)"
        return OmniPredModel("warmstart", config.omnipred, checkpoint=config.omnipred.pretrained_checkpoint,
                             seed=seed, prior_studies=task.prior_studies), ""
    if name in ("omnipred-pretrained", "omnipred-finetuned"):
        ok, path, reason = config.omnipred.checkpoint_for(task)
        if not ok:
            return None, reason
        return OmniPredModel(name.split("-")[1], config.omnipred, checkpoint=path, seed=seed), ""
    raise RegressionConfigError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


def run_cell(task: RegressionTask, train_size: int, model_name: str, config: RegressionConfig) -> dict[str, Any]:
    """Fits and scores one model on one (task, train size); never raises."""
    cell: dict[str, Any] = {
        "suite": task.suite,
        "task": task.name,
        "repeat": task.repeat,
        "train_size": train_size,
        "model": model_name,
    }
    seed = stable_seed("regression-model", task.suite, task.name, task.repeat, train_size, model_name) % (2**31)
    try:
        model, reason = make_model(model_name, task, config, seed)
        if model is None:
            return cell | {"status": "skipped", "reason": reason}
        train = list(task.pool[:train_size])
        t0 = time.perf_counter()
        model.fit(task.problem, train)
        t1 = time.perf_counter()
        pred = model.predict([vz.TrialSuggestion(parameters=t.parameters) for t in task.test])
        t2 = time.perf_counter()
        maximize = task.problem.metric_information.item().goal.is_maximize
        scores = metrics.score_regression(task.y_test, pred, maximize=maximize)
    except Exception as e:  # noqa: BLE001 - one failing model must not stop the benchmark
        return cell | {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": "".join(traceback.format_exception(e)),
        }
    return cell | {
        "status": "ok",
        **scores.to_dict(),
        "fit_seconds": t1 - t0,
        "predict_seconds": t2 - t1,
        # Vizier's GP does its hyperparameter fit lazily, at the first predict: compare totals.
        "seconds": t2 - t0,
        "y_pred": pred.mean.tolist(),
        "y_std": pred.std.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def aggregate(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (suite, train size, model) over tasks and repeats."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["suite"], c["train_size"], c["model"]), []).append(c)
    rows = []
    for (suite, n, model), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], MODELS.index(kv[0][2]))):
        ok = [c for c in cs if c["status"] == "ok"]

        def med(key: str) -> float | None:
            vals = np.array([c[key] for c in ok if c.get(key) is not None], dtype=float)
            vals = vals[np.isfinite(vals)]
            return float(np.median(vals)) if vals.size else None

        rows.append(
            {
                "suite": suite,
                "train_size": n,
                "model": model,
                "ok": len(ok),
                "failed": sum(c["status"] == "failed" for c in cs),
                "skipped": sum(c["status"] == "skipped" for c in cs),
                "median_normalized_mae": med("normalized_mae"),
                "median_spearman": med("spearman"),
                "median_kendall": med("kendall"),
                "median_calibration": med("calibration"),
                "median_top5_regret": med("top5_regret"),
                "median_fit_seconds": med("fit_seconds"),
                "median_seconds": med("seconds"),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], cells: Sequence[dict[str, Any]]) -> str:
    lines = [
        "Medians over tasks x repeats. nMAE = MAE / test y range (lower is better); calibration = "
        "share of test points inside the central 80% predicted interval (ideal 0.80); top-5 regret = "
        "how far the best of the 5 test points predicted best falls short of the best test point, "
        "over the best-to-median gap (0 = found the best, 1 = a typical point).",
        "",
        "| suite | train n | model | nMAE | Spearman | Kendall | calib@80 | top-5 regret | fit+predict s | ok/failed/skipped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['suite']} | {r['train_size']} | {r['model']} | {fmt(r['median_normalized_mae'])} | "
            f"{fmt(r['median_spearman'])} | {fmt(r['median_kendall'])} | {fmt(r['median_calibration'], 2)} | "
            f"{fmt(r.get('median_top5_regret'))} | "
            f"{fmt(r['median_seconds'], 2)} | {r['ok']}/{r['failed']}/{r['skipped']} |"
        )
    notes: dict[tuple[str, str], list[str]] = {}
    for c in cells:
        if c["status"] in ("failed", "skipped"):
            notes.setdefault((c["model"], c["status"]), []).append(c.get("error") or c.get("reason") or "?")
    if notes:
        lines += ["", "Not scored (count, first reason):"]
        for (model, status), whys in notes.items():
            lines.append(f"- {model} {status} x{len(whys)}: {whys[0]}")
    return "\n".join(lines) + "\n"


def _prior_datasets_note(tasks: Sequence[RegressionTask], models: Sequence[str]) -> str:
    """Which related datasets the transfer rivals read, per held-out dataset (the figure is
    meaningless without it)."""
    if not any(m in ("transfer", "omnipred-warmstart") for m in models):
        return ""
    read = {t.name: t.prior_datasets for t in tasks if t.prior_datasets}
    if not read:
        return ""
    lines = ["", "Related datasets read by `transfer` / `omnipred-warmstart` (never the test dataset):"]
    lines += [f"- {name}: {', '.join(datasets)}" for name, datasets in sorted(read.items())]
    return "\n".join(lines) + "\n"


def plot_predictions(cells: Sequence[dict[str, Any]], tasks: Sequence[RegressionTask], out_dir: Path) -> list[Path]:
    """Predicted vs true, one panel per model, one PNG per train size. Both axes are scaled
    by each task's test range (0 = the task's smallest test value) so tasks can share a panel."""
    plt = pyplot()
    truth = {(t.suite, t.name, t.repeat): t.y_test for t in tasks}
    colors = {"bbob": "tab:blue", "hpobench": "tab:orange", "synthetic": "tab:green"}
    paths = []
    for n in sorted({c["train_size"] for c in cells}):
        models = [m for m in MODELS if any(c["model"] == m and c["train_size"] == n and c["status"] == "ok" for c in cells)]
        if not models:
            continue
        cols = min(3, len(models))
        rows = math.ceil(len(models) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
        for ax, model in zip(axes.flat, models):
            for c in cells:
                if c["model"] != model or c["train_size"] != n or c["status"] != "ok":
                    continue
                y = truth[(c["suite"], c["task"], c["repeat"])]
                lo, span = np.nanmin(y), np.nanmax(y) - np.nanmin(y)
                if not span > 0:
                    continue
                p = np.asarray([np.nan if v is None else v for v in c["y_pred"]], dtype=float)
                ax.scatter((y - lo) / span, (p - lo) / span, s=4, alpha=0.35, color=colors.get(c["suite"], "gray"))
            ax.plot([0, 1], [0, 1], color="black", lw=0.8)
            ax.set_xlim(-0.05, 1.05)
            ax.set_ylim(-0.25, 1.25)
            ax.set_title(model, fontsize=9)
            ax.set_xlabel("true (scaled)", fontsize=8)
            ax.set_ylabel("predicted (scaled)", fontsize=8)
        for ax in list(axes.flat)[len(models):]:
            ax.axis("off")
        fig.suptitle(f"predicted vs true, {n} training trials (blue: BBOB, orange: HPOBench, green: synthetic)",
                     fontsize=10)
        fig.tight_layout()
        path = Path(out_dir) / f"pred_vs_true_n{n}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


@attrs.frozen
class RegressionReport:
    out_dir: Path
    cells: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    table: str


def configured_tasks(config: RegressionConfig) -> list[RegressionTask]:
    """The tasks of the configured suites, in a fixed order (the same in every process)."""
    tasks: list[RegressionTask] = []
    for suite in config.suites:
        tasks += {"bbob": bbob_tasks, "hpobench": hpobench_tasks, "synthetic": synthetic_tasks}[suite](config)
    return tasks


def _cell_line(task: RegressionTask, cell: dict[str, Any]) -> str:
    if cell["status"] == "ok":
        msg = (f"nMAE {cell['normalized_mae']:.3f} spearman {cell['spearman']:.3f} "
               f"calib {cell['calibration']:.2f} ({cell['seconds']:.1f} s fit+predict)")
    else:
        msg = f"{cell['status']}: {cell.get('error') or cell.get('reason')}"
    return f"{task.suite}/{task.name} r{task.repeat} n={cell['train_size']} {cell['model']}: {msg}"


def task_cells_of(task: RegressionTask, config: RegressionConfig, *, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every (train size, model) cell of one task."""
    out = []
    for n in config.train_sizes:
        for model in config.models:
            cell = run_cell(task, n, model, config)
            out.append(cell)
            log(_cell_line(task, cell))
    return out


def _failed_cell(task: RegressionTask, n: int, model: str, exc: BaseException) -> dict[str, Any]:
    return {"suite": task.suite, "task": task.name, "repeat": task.repeat, "train_size": n, "model": model,
            "status": "failed", "error": f"worker died: {type(exc).__name__}: {exc}"}


_WORKER_TASKS: dict[RegressionConfig, list[RegressionTask]] = {}


def _worker_task_cells(config: RegressionConfig, index: int) -> list[dict[str, Any]]:
    """Worker process: task `index` of the configured tasks (built once per process)."""
    set_torch_threads(config.threads)
    if config not in _WORKER_TASKS:
        _WORKER_TASKS[config] = configured_tasks(config)
    return task_cells_of(_WORKER_TASKS[config][index], config, log=lambda _msg: None)


def run_regression(
    config: RegressionConfig,
    *,
    tasks: Sequence[RegressionTask] | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> RegressionReport:
    """Runs every (task, train size, model) cell and writes results.json, table.md, plots.

    `tasks` defaults to the configured suites; passing them lets callers benchmark other
    studies the same way. results.json is rewritten after each task, so a long run shows
    its progress and keeps what it finished if interrupted.
    """
    validate_config(config)
    configured = tasks is None
    tasks = configured_tasks(config) if configured else list(tasks)
    for t in tasks:
        if len(t.pool) < max(config.train_sizes):
            raise RegressionConfigError(f"task {t.name}: pool of {len(t.pool)} < train size {max(config.train_sizes)}")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []

    def save() -> None:
        write_json_atomic(
            out_dir / "results.json",
            {
                "config": config_json(config),
                "environment": environment_info(),
                "tasks": [
                    {"suite": t.suite, "task": t.name, "repeat": t.repeat, "y_test": t.y_test.tolist(),
                     "prior_datasets": list(t.prior_datasets)} for t in tasks
                ],
                "summary": aggregate(cells),
                "cells": cells,
            },
        )

    def task_log(i: int) -> Callable[[str], None]:
        return lambda msg: log(f"regression: [{i + 1}/{len(tasks)}] {msg}")

    done: dict[int, list[dict[str, Any]]] = {}

    def finished(i: int, task_cells: list[dict[str, Any]]) -> None:
        done[i] = task_cells
        cells[:] = [c for j in sorted(done) for c in done[j]]  # task order, whatever finished first
        save()

    if config.workers > 1 and configured and len(tasks) > 1:
        # Each worker rebuilds the same tasks from the config, which is cheaper and safer
        # than pickling them.
        for i, task_cells, crash in run_spawned(functools.partial(_worker_task_cells, config), range(len(tasks)),
                                                config.workers):
            if crash is not None:  # a dead worker fails its task's cells, not the run
                task_cells = [_failed_cell(tasks[i], n, m, crash) for n in config.train_sizes for m in config.models]
            for cell in task_cells:
                task_log(i)(_cell_line(tasks[i], cell))
            finished(i, task_cells)
    else:
        set_torch_threads(config.threads)
        for i, task in enumerate(tasks):
            finished(i, task_cells_of(task, config, log=task_log(i)))
    save()
    rows = aggregate(cells)
    table = markdown_table(rows, cells) + _prior_datasets_note(tasks, config.models)
    (out_dir / "table.md").write_text(table)
    if config.plot:
        plot_predictions(cells, tasks, out_dir)
    return RegressionReport(out_dir=out_dir, cells=cells, rows=rows, table=table)
