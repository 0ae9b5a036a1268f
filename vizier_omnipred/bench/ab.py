"""A/B benchmark of designers: the OmniPred designer against Vizier's GP bandits and random.

Every (task, repeat) is one optimisation problem that all designers solve with the same
budget, so results are paired: win rates compare two designers on the very same shifted
function. A run is `budget` rounds of suggest(1) -> evaluate -> update, timed per suggest.

Layout of `out_dir` (one file per run, so an interrupted benchmark resumes where it
stopped and runs can be spread over processes or machines):

    {suite}/{task_id}/{designer}/repeat_{r:03d}.json   one run: values, best so far, s/suggest
    summary.json, table.md, convergence_{suite}.png      written from the run files

`--resume` skips runs whose file is complete and `status: ok` for the same job (suite,
task, designer, repeat, budget, seed, and the options the designer reads: OmniPred's
checkpoint, gp_bandit_priors' folds layout and prior trials). Failed runs are retried: a failure is often an
environment problem fixed since, and a designer that fails deterministically fails fast.

Normalized regret (see metrics.py) needs the task's optimum and a typical random value.
Each run file stores the median and best of a fixed random sample of the task (the same
sample for all designers: it is seeded by the task), and the task's known optimum where
there is one (BBOB functions with f(0) = 0, an HPOBench table's best). The summary uses
as optimum the best of: the known optimum, the sample's best, and every designer's best
on that (task, repeat); so regret is never negative, and where no optimum is known it is
measured against the best anybody found.

On HPOBench, `gp_bandit_priors` is the fair rival of OmniPred's held-out checkpoints:
Vizier's GP bandit given, through `set_priors`, random trials of exactly the datasets the
checkpoint for that dataset was pretrained on (a folds layout) or of all other datasets.

Failed runs count as failures in the table and are left out of regret medians and win
rates (a pair needs both runs), so the failures column must be read next to them.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import attrs
import numpy as np
from vizier import pyvizier as vz

from vizier_omnipred.bench import metrics
from vizier_omnipred.bench.baselines import ensure_jax_x64, objective_values, single_metric
from vizier_omnipred.bench.common import (
    config_json,
    environment_info,
    floats,
    fmt,
    pyplot,
    read_json,
    run_spawned,
    set_torch_threads,
    stable_seed,
    write_json_atomic,
)

SUITES: tuple[str, ...] = ("bbob", "hpobench")
# Every designer run next to one of these gets a win rate against it (see `_opponents`).
GP_BASELINES: tuple[str, ...] = ("gp_bandit", "gp_ucb_pe", "gp_bandit_priors")
DEFAULT_DESIGNERS: tuple[str, ...] = ("omnipred", "gp_bandit", "gp_ucb_pe", "random")
DEFAULT_BBOB_DIMS: tuple[int, ...] = (2, 4, 8)
DEFAULT_BBOB_FUNCTIONS: tuple[str, ...] = ("Sphere", "Rastrigin")

# Vizier BBOB functions whose global minimum is f(0) = 0 (so 0 after any shift that keeps
# the origin inside the bounds, which `random_bbob_task` does). Checked numerically in
# tests/test_bench.py; others (LinearSlope, Schwefel, Lunacek, ...) have optima elsewhere.
ZERO_OPTIMUM_BBOB_FUNCTIONS: frozenset[str] = frozenset(
    {
        "Sphere",
        "Ellipsoidal",
        "Rastrigin",
        "BuecheRastrigin",
        "StepEllipsoidal",
        "Discus",
        "BentCigar",
        "SharpRidge",
        "DifferentPowers",
        "Weierstrass",
        "SchaffersF7",
        "SchaffersF7IllConditioned",
        "GriewankRosenbrock",
        "Katsuura",
    }
)


class ABConfigError(ValueError):
    """A benchmark configuration that cannot run (unknown names, budget too small, ...)."""


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class BuiltTask:
    """One concrete optimisation problem. Values are in the metric's own units."""

    problem: vz.ProblemStatement
    experimenter: Any  # vizier.benchmarks.experimenters.Experimenter
    label: str
    dataset: str | None = None  # HPOBench dataset, for per-dataset checkpoints
    known_optimum: float | None = None
    reference_values: np.ndarray | None = None  # a typical spread of values; None: sample


class ABTask(Protocol):
    """A family of problems, one per seed. Must be picklable (it travels to workers)."""

    suite: ClassVar[str]

    @property
    def task_id(self) -> str: ...

    def build(self, seed: int) -> BuiltTask: ...


@attrs.frozen
class BBOBTask:
    """A Vizier BBOB function in `dim` dimensions, with a random shift per seed (corpus.bbob)."""

    suite: ClassVar[str] = "bbob"
    dim: int
    function_name: str

    @property
    def task_id(self) -> str:
        return f"{self.function_name}-{self.dim}d"

    def build(self, seed: int) -> BuiltTask:
        from vizier_omnipred.corpus.bbob import random_bbob_task

        problem, experimenter = random_bbob_task(seed, self.dim, self.function_name)
        known = 0.0 if self.function_name in ZERO_OPTIMUM_BBOB_FUNCTIONS else None
        return BuiltTask(problem, experimenter, label=f"bbob/{self.task_id}", known_optimum=known)


@attrs.frozen
class HPOBenchTask:
    """An HPOBench dataset's MLP tuning table as an experimenter (corpus.hpobench).

    The full table is both the reference distribution and the known optimum (its best
    mean value); if the experimenter returns noisy per-seed values above it, the summary
    takes the better one.
    """

    suite: ClassVar[str] = "hpobench"
    dataset: str

    @property
    def task_id(self) -> str:
        return self.dataset

    def build(self, seed: int) -> BuiltTask:
        from vizier_omnipred.corpus.hpobench import HPOBenchExperimenter, hpobench_table

        del seed  # the table is fixed; repeats differ by the designers' seeds
        experimenter = HPOBenchExperimenter(self.dataset)
        problem = experimenter.problem_statement()
        _, values = hpobench_table(self.dataset)
        values = np.asarray(values, dtype=float)
        maximize = single_metric(problem).goal == vz.ObjectiveMetricGoal.MAXIMIZE
        finite = values[np.isfinite(values)]
        known = None
        if finite.size:
            known = float(finite.max() if maximize else finite.min())
        return BuiltTask(
            problem,
            experimenter,
            label=f"hpobench/{self.dataset}",
            dataset=self.dataset,
            known_optimum=known,
            reference_values=values,
        )


# ---------------------------------------------------------------------------------------------
# Designers
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class DesignerOptions:
    """Settings only some designers read; picklable, sent to every worker."""

    omnipred_checkpoint: str | None = None  # a path, or a pattern with '{dataset}'; None: shipped
    omnipred_seed_trials: int | None = None  # None: OmniPredDesigner's default for the problem
    device: str = "cpu"
    omnipred_recipe: str | None = None  # training.RECIPES name of the designer's fits; None: its default
    num_samples: int = 64  # OmniPredDesigner's y samples per candidate
    # gp_bandit_priors: a folds layout (folds.json of `bench fold-pretrain`); the priors of
    # dataset D are the `trained_on` datasets of the fold holding D out. None: the other 7.
    prior_datasets: str | None = None
    prior_trials: int = 100  # gp_bandit_priors: random configurations per prior dataset
    omnipred_ensemble: int = 1  # OmniPredDesigner's ensemble_size
    omnipred_temperature: float | None = None  # OmniPredDesigner's temperature; None: its default
    omnipred_ucb_quantile: float | None = None  # UpperQuantile(q) as OmniPred's acquisition; None: its default

    # The fields the resume key has always covered; see `resume_token`.
    _KEYED_SINCE_V1: ClassVar[tuple[str, ...]] = ("omnipred_checkpoint", "omnipred_seed_trials", "device")

    @property
    def resume_token(self) -> str:
        """Part of a run's resume key: equal exactly when the options are.

        A checksum of the options as first released, plus any later field that is set away
        from its default. Adding a field with a default therefore leaves the keys of
        existing runs, and `--resume` of their directories, intact.
        """
        text = "DesignerOptions(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._KEYED_SINCE_V1) + ")"
        later = [f"{f.name}={getattr(self, f.name)!r}" for f in attrs.fields(type(self))
                 if f.name not in self._KEYED_SINCE_V1 and getattr(self, f.name) != f.default]
        if later:
            text += "+" + ",".join(later)
        return f"{zlib.crc32(text.encode()):08x}"

    def resume_token_for(self, fields: Sequence[str] | None) -> str:
        """`resume_token` of these options with every field outside `fields` at its default
        (None: all fields), so that a designer's runs are keyed only by the options it reads:
        a new OmniPred checkpoint does not invalidate the GP's runs, nor GP priors OmniPred's."""
        if fields is None:
            return self.resume_token
        unknown = set(fields) - set(attrs.fields_dict(type(self)))
        if unknown:
            raise ValueError(f"unknown DesignerOptions field(s) {sorted(unknown)}")
        reset = {f.name: f.default for f in attrs.fields(type(self)) if f.name not in fields}
        return attrs.evolve(self, **reset).resume_token

    def checkpoint_for(self, dataset: str | None) -> str | None:
        if self.omnipred_checkpoint is None or "{dataset}" not in self.omnipred_checkpoint:
            return self.omnipred_checkpoint
        if dataset is None:
            raise ValueError(
                f"checkpoint pattern {self.omnipred_checkpoint!r} needs a dataset, but this task has none"
            )
        return self.omnipred_checkpoint.format(dataset=dataset)


@attrs.frozen
class DesignerSpec:
    """How to build a designer by name.

    `make(problem, *, seed, options, task)` returns a fresh vza.Designer;
    `seed_trials(options, problem)` is the number of trials it proposes before its model is
    used (None: unknown). Both must be module-level functions so that specs pickle into
    worker processes.
    """

    name: str
    make: Callable[..., Any]
    seed_trials: Callable[[DesignerOptions, vz.ProblemStatement], int | None]
    description: str = ""
    reads_options: bool = False  # DesignerOptions change its results (part of the resume key)
    compare_to: tuple[str, ...] = ()  # designers it also gets win rates against (an ablation's original)
    # The DesignerOptions fields it reads (None: all); only these enter its resume key.
    option_fields: tuple[str, ...] | None = None
    suites: tuple[str, ...] = SUITES  # where it can run; checked by validate_config
    # `settings(options, task) -> dict`: what it will use on this built task (recorded in the
    # run file); raises ABConfigError where it cannot run. None: nothing to record or check.
    settings: Callable[[DesignerOptions, BuiltTask], dict[str, Any]] | None = None


def _attrs_default(cls: type, *names: str) -> int | None:
    """Default of the first attrs field among `names`, read from the class, so our checks
    follow Vizier's own defaults instead of copying them."""
    try:
        fields = attrs.fields_dict(cls)
    except (TypeError, attrs.exceptions.NotAnAttrsClassError):
        return None
    for name in names:
        f = fields.get(name) or fields.get(name.lstrip("_"))
        if f is not None and isinstance(f.default, int):
            return int(f.default)
    return None


def _make_random(problem: vz.ProblemStatement, *, seed: int, options: DesignerOptions, task: BuiltTask):
    from vizier._src.algorithms.designers.random import RandomDesigner

    return RandomDesigner.from_problem(problem, seed=seed)


def _random_seed_trials(options: DesignerOptions, problem: vz.ProblemStatement) -> int:
    return 0


def _make_gp_bandit(problem: vz.ProblemStatement, *, seed: int, options: DesignerOptions, task: BuiltTask):
    from vizier_omnipred.bench.baselines import padded_gp_bandit

    return padded_gp_bandit(problem, seed=seed)


def _gp_bandit_seed_trials(options: DesignerOptions, problem: vz.ProblemStatement) -> int | None:
    from vizier._src.algorithms.designers import gp_bandit

    return _attrs_default(gp_bandit.VizierGPBandit, "_num_seed_trials")


def _make_gp_ucb_pe(problem: vz.ProblemStatement, *, seed: int, options: DesignerOptions, task: BuiltTask):
    ensure_jax_x64()
    import jax
    from vizier._src.algorithms.designers import gp_ucb_pe

    return gp_ucb_pe.VizierGPUCBPEBandit(problem, rng=jax.random.PRNGKey(seed))


def _gp_ucb_pe_seed_trials(options: DesignerOptions, problem: vz.ProblemStatement) -> int | None:
    from vizier._src.algorithms.designers import gp_ucb_pe

    return _attrs_default(gp_ucb_pe.VizierGPUCBPEBandit, "_num_seed_trials")


def prior_datasets_for(dataset: str, folds_json: str | None = None) -> tuple[str, ...]:
    """The HPOBench datasets whose history a transfer-learning rival may read on `dataset`.

    The same held-out rule as OmniPred's fold checkpoints: with a folds layout
    (`bench fold-pretrain`'s folds.json), the `trained_on` datasets of the one fold that
    holds `dataset` out; without one, the other seven. Never `dataset` itself.
    """
    from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS

    if dataset not in HPOBENCH_DATASETS:
        raise ABConfigError(f"{dataset!r} is not an HPOBench dataset; valid: {', '.join(HPOBENCH_DATASETS)}")
    if folds_json is None:
        return tuple(d for d in HPOBENCH_DATASETS if d != dataset)
    if not Path(folds_json).is_file():
        raise ABConfigError(f"--prior-datasets {folds_json}: no such file (the folds.json of `bench fold-pretrain`)")
    layout = read_json(Path(folds_json))
    folds = layout.get("folds") if isinstance(layout, dict) else None
    if not isinstance(folds, list):
        raise ABConfigError(f"--prior-datasets {folds_json}: not a readable folds layout "
                            "(a JSON object with a 'folds' list, as `bench fold-pretrain` writes)")
    holding = [f for f in folds if isinstance(f, dict) and dataset in (f.get("held_out") or ())]
    if len(holding) != 1:
        where = "no fold" if not holding else f"{len(holding)} folds"
        raise ABConfigError(f"--prior-datasets {folds_json}: {where} hold(s) out {dataset!r}; "
                            "each dataset benchmarked must be held out by exactly one fold")
    fold = holding[0]
    priors = tuple(fold.get("trained_on") or ())
    bad = [d for d in priors if d not in HPOBENCH_DATASETS]
    if bad:
        raise ABConfigError(f"--prior-datasets {folds_json}: fold {fold.get('fold')} trains on unknown dataset(s) {bad}")
    if dataset in priors:
        raise ABConfigError(f"--prior-datasets {folds_json}: fold {fold.get('fold')} both holds out and "
                            f"trains on {dataset!r}")
    if not priors:
        raise ABConfigError(f"--prior-datasets {folds_json}: fold {fold.get('fold')} trains on no dataset")
    return priors


def _omnipred_settings(options: DesignerOptions, task: BuiltTask) -> dict[str, Any]:
    """The checkpoint OmniPred starts from on `task`. One pretrained on the task's own HPOBench
    dataset (the shipped one read all eight) is refused: that A/B would measure what the model
    memorised, not transfer, against a GP that starts from nothing."""
    checkpoint = options.checkpoint_for(task.dataset)
    if task.dataset is not None:
        from vizier_omnipred.bench.folds import datasets_read_by
        from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

        path = checkpoint or str(SHIPPED_CHECKPOINT)
        if task.dataset in datasets_read_by(path):
            raise ABConfigError(
                f"OmniPred's checkpoint {path} was pretrained on HPOBench {task.dataset}: an A/B on it "
                "measures memory, not transfer. Pass --omnipred-checkpoint with checkpoints that never "
                "read the dataset, e.g. 'runs/folds/v3/by-dataset/{dataset}' (bench fold-pretrain)"
            )
    return {"checkpoint": checkpoint}


def _gp_bandit_priors_settings(options: DesignerOptions, task: BuiltTask) -> dict[str, Any]:
    if task.dataset is None:
        raise ABConfigError(
            f"gp_bandit_priors needs an HPOBench task (its priors are the other datasets' tables); "
            f"{task.label} has no dataset"
        )
    if options.prior_trials < 1:
        raise ABConfigError(f"--prior-trials must be >= 1, got {options.prior_trials}")
    return {
        "prior_datasets": list(prior_datasets_for(task.dataset, options.prior_datasets)),
        "prior_trials": options.prior_trials,
        "folds": options.prior_datasets,
    }


def hpobench_prior_studies(
    problem: vz.ProblemStatement, datasets: Sequence[str], *, trials: int, seed: int
) -> list[Any]:
    """One vza.CompletedTrials per dataset: `trials` configurations drawn uniformly from its
    table (seeded), valued with the problem's objective metric (seed mean)."""
    from vizier import algorithms as vza

    from vizier_omnipred.corpus.hpobench import hpobench_studies

    metric = single_metric(problem).name
    return [
        vza.CompletedTrials(list(study.trials))
        for study in hpobench_studies(datasets, seed=seed, max_trials_per_study=trials, metric=metric)
    ]


def _make_gp_bandit_priors(problem: vz.ProblemStatement, *, seed: int, options: DesignerOptions,
                           task: BuiltTask):
    """VizierGPBandit with Vizier's transfer learning: one prior GP per prior dataset, stacked
    in the order given, and the study's own GP fitted on the residuals. The priors are a
    fresh random draw per seed (so per repeat)."""
    designer = _make_gp_bandit(problem, seed=seed, options=options, task=task)
    settings = _gp_bandit_priors_settings(options, task)
    designer.set_priors(
        hpobench_prior_studies(problem, settings["prior_datasets"], trials=options.prior_trials, seed=seed)
    )
    return designer


def _make_omnipred(problem: vz.ProblemStatement, *, seed: int, options: DesignerOptions, task: BuiltTask):
    from vizier_omnipred.designer import OmniPredDesigner

    from vizier_omnipred.training import recipe

    return OmniPredDesigner(
        problem,
        seed=seed,
        checkpoint=options.checkpoint_for(task.dataset),
        num_seed_trials=options.omnipred_seed_trials,
        device=options.device,
        finetune_config=None if options.omnipred_recipe is None else recipe(options.omnipred_recipe),
        num_samples=options.num_samples,
        ensemble_size=options.omnipred_ensemble,
        temperature=options.omnipred_temperature,
        acquisition=_omnipred_acquisition(options),
    )


def _omnipred_acquisition(options: DesignerOptions):
    """UCB at `omnipred_ucb_quantile`; None: the designer's own default."""
    if options.omnipred_ucb_quantile is None:
        return None
    from vizier_omnipred.acquisitions import UpperQuantile

    return UpperQuantile(q=options.omnipred_ucb_quantile)


def _make_omnipred_no_trust_region(problem: vz.ProblemStatement, *, seed: int, options: DesignerOptions,
                                   task: BuiltTask):
    """The ablation of the designer's trust region: candidates anywhere in the search space."""
    designer = _make_omnipred(problem, seed=seed, options=options, task=task)
    designer.search = attrs.evolve(designer.search, trust_region=False)
    return designer


def _omnipred_seed_trials(options: DesignerOptions, problem: vz.ProblemStatement) -> int | None:
    """The explicit setting, else the designer's own default for this problem."""
    if options.omnipred_seed_trials is not None:
        return options.omnipred_seed_trials
    from vizier_omnipred.designer import default_num_seed_trials

    return default_num_seed_trials(problem)


# The options OmniPred reads; a new OmniPred option must be added here to enter its key.
_OMNIPRED_OPTIONS: tuple[str, ...] = ("omnipred_checkpoint", "omnipred_seed_trials", "device", "omnipred_recipe",
                                       "num_samples", "omnipred_ensemble", "omnipred_temperature",
                                       "omnipred_ucb_quantile")

DESIGNERS: Mapping[str, DesignerSpec] = {
    spec.name: spec
    for spec in (
        DesignerSpec(
            "omnipred", _make_omnipred, _omnipred_seed_trials, "OmniPredDesigner (this package)", reads_options=True,
            option_fields=_OMNIPRED_OPTIONS, settings=_omnipred_settings,
        ),
        DesignerSpec(
            "omnipred_no_trust_region", _make_omnipred_no_trust_region, _omnipred_seed_trials,
            "OmniPredDesigner with SearchConfig(trust_region=False) (ablation)", reads_options=True,
            compare_to=("omnipred",), option_fields=_OMNIPRED_OPTIONS, settings=_omnipred_settings,
        ),
        DesignerSpec("gp_bandit", _make_gp_bandit, _gp_bandit_seed_trials, "Vizier VizierGPBandit"),
        DesignerSpec(
            "gp_bandit_priors", _make_gp_bandit_priors, _gp_bandit_seed_trials,
            "Vizier VizierGPBandit with set_priors: random trials of the HPOBench datasets OmniPred's "
            "checkpoint may have read (HPOBench only)",
            reads_options=True, option_fields=("prior_datasets", "prior_trials"), suites=("hpobench",),
            settings=_gp_bandit_priors_settings,
        ),
        DesignerSpec("gp_ucb_pe", _make_gp_ucb_pe, _gp_ucb_pe_seed_trials, "Vizier VizierGPUCBPEBandit"),
        DesignerSpec("random", _make_random, _random_seed_trials, "Vizier RandomDesigner"),
    )
}


# ---------------------------------------------------------------------------------------------
# Configuration and jobs
# ---------------------------------------------------------------------------------------------


def _tuple(x: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if x is None else tuple(x)


@attrs.frozen
class ABConfig:
    suite: str = "bbob"
    designers: tuple[str, ...] = attrs.field(default=DEFAULT_DESIGNERS, converter=tuple)
    budget: int = 30
    repeats: int = 5
    workers: int = 1
    ray_address: str | None = None
    out_dir: Path = attrs.field(default=Path("runs/bench/ab"), converter=Path)
    resume: bool = False
    bbob_dims: tuple[int, ...] = attrs.field(default=DEFAULT_BBOB_DIMS, converter=tuple)
    bbob_functions: tuple[str, ...] = attrs.field(default=DEFAULT_BBOB_FUNCTIONS, converter=tuple)
    hpobench_datasets: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple)
    options: DesignerOptions = attrs.field(factory=DesignerOptions)
    seed: int = 0
    reference_samples: int = 1000
    plot: bool = True
    threads: int | None = None  # torch threads per run (None: torch's default); 1 with --workers on few cores


@attrs.frozen
class ABJob:
    suite: str
    task: Any  # ABTask
    designer: str
    repeat: int
    budget: int
    base_seed: int
    options: DesignerOptions
    reference_samples: int
    reads_options: bool = False
    threads: int | None = None  # how the run is executed, not what it computes: not in `key`
    option_fields: tuple[str, ...] | None = None  # the options `reads_options` covers (None: all)

    @property
    def task_seed(self) -> int:
        """Same for all designers of a (task, repeat): they face the same shifted function."""
        return stable_seed("ab", self.suite, self.task.task_id, self.repeat, self.base_seed)

    @property
    def key(self) -> str:
        """Identity of the run for --resume: a file with another key is not reused."""
        key = f"{self.suite}/{self.task.task_id}/{self.designer}/r{self.repeat}/b{self.budget}/s{self.task_seed}"
        if self.reads_options:  # e.g. another OmniPred checkpoint is another experiment
            key += f"/o{self.options.resume_token_for(self.option_fields)}"
        return key

    @property
    def relpath(self) -> Path:
        return Path(self.suite) / self.task.task_id / self.designer / f"repeat_{self.repeat:03d}.json"


def validate_config(config: ABConfig, registry: Mapping[str, DesignerSpec] = DESIGNERS) -> None:
    """Raises ABConfigError with a message a user can act on; runs nothing."""
    if config.suite not in SUITES:
        raise ABConfigError(f"unknown suite {config.suite!r}; valid: {', '.join(SUITES)}")
    if not config.designers:
        raise ABConfigError("no designers given")
    unknown = [d for d in config.designers if d not in registry]
    if unknown:
        raise ABConfigError(f"unknown designer(s) {', '.join(unknown)}; valid: {', '.join(sorted(registry))}")
    if len(set(config.designers)) != len(config.designers):
        raise ABConfigError(f"designer listed twice: {config.designers}")
    if config.budget < 1:
        raise ABConfigError(f"budget must be >= 1, got {config.budget}")
    if config.repeats < 1:
        raise ABConfigError(f"repeats must be >= 1, got {config.repeats}")
    if config.workers < 1:
        raise ABConfigError(f"workers must be >= 1, got {config.workers}")
    if config.options.omnipred_ensemble < 1:
        raise ABConfigError(f"--omnipred-ensemble must be >= 1, got {config.options.omnipred_ensemble}")
    temperature = config.options.omnipred_temperature
    if temperature is not None and not 0 < temperature < float("inf"):
        raise ABConfigError(f"--omnipred-temperature must be a finite number > 0, got {temperature}")
    try:  # the acquisition's own check of its quantile, before any run starts
        _omnipred_acquisition(config.options)
    except ValueError as error:
        raise ABConfigError(f"--omnipred-ucb-quantile: {error}") from None
    for name in config.designers:
        if config.suite not in registry[name].suites:
            raise ABConfigError(
                f"{name} runs only on suite(s) {', '.join(registry[name].suites)}, not {config.suite}"
                + (": its priors are the other HPOBench datasets, and BBOB tasks have no related studies"
                   if name == "gp_bandit_priors" else "")
            )


def validate_tasks(config: ABConfig, tasks: Sequence[Any], registry: Mapping[str, DesignerSpec] = DESIGNERS) -> None:
    """Every designer must be able to run on every task (its spec's `settings` check, e.g.
    gp_bandit_priors needs an HPOBench dataset held out by the folds layout), and must get
    past its seeding phase, else the benchmark would compare quasi-random seeds. Builds each
    task once (cheap) to see its problem."""
    for task in tasks:
        built = task.build(stable_seed("ab-validate", task.task_id))
        problem = built.problem
        for name in config.designers:
            if registry[name].settings is not None:
                registry[name].settings(config.options, built)
            seeding = registry[name].seed_trials(config.options, problem)
            if seeding is not None and config.budget <= seeding:
                raise ABConfigError(
                    f"budget {config.budget} is not larger than {name}'s seeding phase on "
                    f"{config.suite}/{task.task_id} ({seeding} trials): it would never use its model; "
                    f"use --budget {seeding + 1} or more"
                )


def default_tasks(config: ABConfig) -> list[Any]:
    """The suite's tasks (validated here, not in validate_config: custom task lists need
    no corpus module)."""
    if config.suite == "bbob":
        from vizier_omnipred.corpus.bbob import BBOB_FUNCTIONS, MAX_DIMENSION, min_dimension

        if not config.bbob_dims or min(config.bbob_dims) < 1 or max(config.bbob_dims) > MAX_DIMENSION:
            raise ABConfigError(f"BBOB dims must be in [1, {MAX_DIMENSION}], got {config.bbob_dims}")

        bad = [f for f in config.bbob_functions if f not in BBOB_FUNCTIONS]
        if bad:
            raise ABConfigError(f"unknown BBOB function(s) {bad}; valid: {', '.join(BBOB_FUNCTIONS)}")
        for f in config.bbob_functions:
            if min_dimension(f) > min(config.bbob_dims):
                raise ABConfigError(f"{f} needs dim >= {min_dimension(f)}, dims are {config.bbob_dims}")
        return [BBOBTask(dim=d, function_name=f) for f in config.bbob_functions for d in config.bbob_dims]
    from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS

    datasets = config.hpobench_datasets or tuple(HPOBENCH_DATASETS)
    bad = [d for d in datasets if d not in HPOBENCH_DATASETS]
    if bad:
        raise ABConfigError(f"unknown HPOBench dataset(s) {bad}; valid: {', '.join(HPOBENCH_DATASETS)}")
    return [HPOBenchTask(dataset=d) for d in datasets]


def plan_jobs(
    config: ABConfig, tasks: Sequence[Any], registry: Mapping[str, DesignerSpec] = DESIGNERS
) -> list[ABJob]:
    """Repeat-major order, so early results already pair every designer on some tasks."""
    return [
        ABJob(
            suite=config.suite,
            task=task,
            designer=designer,
            repeat=repeat,
            budget=config.budget,
            base_seed=config.seed,
            options=config.options,
            reference_samples=config.reference_samples,
            reads_options=registry[designer].reads_options,
            threads=config.threads,
            option_fields=registry[designer].option_fields,
        )
        for repeat in range(config.repeats)
        for task in tasks
        for designer in config.designers
    ]


def is_finished(record: Mapping[str, Any] | None, job: ABJob) -> bool:
    return bool(record) and record.get("status") == "ok" and record.get("job_key") == job.key


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def _reference_values(built: BuiltTask, job: ABJob) -> np.ndarray:
    """Objective values of a fixed random sample of the task (seeded by the task, not the
    designer), unless the task brings its own (a full table)."""
    if built.reference_values is not None:
        return np.asarray(built.reference_values, dtype=float)
    from vizier._src.algorithms.designers.random import RandomDesigner

    sampler = RandomDesigner(built.problem.search_space, seed=job.task_seed % (2**31))
    trials = [s.to_trial(i + 1) for i, s in enumerate(sampler.suggest(job.reference_samples))]
    built.experimenter.evaluate(trials)
    return objective_values(built.problem, trials)


def _failure(record: dict[str, Any], phase: str, exc: BaseException) -> dict[str, Any]:
    record.update(
        status="failed",
        failed_phase=phase,
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
    )
    return record


def run_job(job: ABJob, spec: DesignerSpec) -> dict[str, Any]:
    """Runs one designer on one (task, repeat); never raises: failures are in the record.

    A failing designer leaves its partial trajectory in the record (values so far), so a
    crash at trial 25 of 30 is visible as such.
    """
    from vizier import algorithms as vza

    ensure_jax_x64()  # before any Vizier GP code, also in spawned workers
    set_torch_threads(job.threads)
    start = time.time()
    record: dict[str, Any] = {
        "job_key": job.key,
        "suite": job.suite,
        "task": job.task.task_id,
        "designer": job.designer,
        "repeat": job.repeat,
        "budget": job.budget,
        "task_seed": job.task_seed,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "values": [],
        "best_so_far": [],
        "suggest_seconds": [],
        "error": None,
    }
    try:
        built = job.task.build(job.task_seed)
        metric = single_metric(built.problem)
        maximize = metric.goal == vz.ObjectiveMetricGoal.MAXIMIZE
        reference = _reference_values(built, job)
    except Exception as e:  # noqa: BLE001 - the task, not the designer, failed; still recorded
        return _failure(record, "task", e)
    finite_ref = reference[np.isfinite(reference)]
    try:
        seeding = spec.seed_trials(job.options, built.problem)
    except Exception:  # noqa: BLE001 - informative only; an import error shows up below
        seeding = None
    record.update(
        seed_trials=seeding,
        task_label=built.label,
        metric=metric.name,
        goal="MAXIMIZE" if maximize else "MINIMIZE",
        known_optimum=built.known_optimum,
        reference_median=float(np.median(finite_ref)) if finite_ref.size else None,
        reference_best=(float(finite_ref.max() if maximize else finite_ref.min()) if finite_ref.size else None),
        reference_size=int(reference.size),
    )
    values: list[float] = []
    seconds: list[float] = []
    try:
        if spec.settings is not None:
            record["designer_settings"] = spec.settings(job.options, built)
        t0 = time.perf_counter()
        designer = spec.make(built.problem, seed=job.task_seed % (2**31), options=job.options, task=built)
        # building the designer: loading a checkpoint, training prior GPs; not in suggest_seconds
        record["setup_seconds"] = time.perf_counter() - t0
        for i in range(job.budget):
            t0 = time.perf_counter()
            suggestions = designer.suggest(1)
            seconds.append(time.perf_counter() - t0)
            if not suggestions:
                raise RuntimeError(f"suggest(1) returned no suggestion at trial {i + 1}")
            trial = suggestions[0].to_trial(i + 1)
            built.experimenter.evaluate([trial])
            values.append(float(objective_values(built.problem, [trial])[0]))
            designer.update(vza.CompletedTrials([trial]), vza.ActiveTrials())
        record["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a designer failure is a result, not a crash
        _failure(record, "designer", e)
    losses = metrics.to_loss(np.asarray(values, dtype=float), maximize)
    best = metrics.best_so_far(losses)
    record.update(
        values=values,
        best_so_far=(-best if maximize else best).tolist(),
        suggest_seconds=seconds,
        num_completed=len(values),
        wall_seconds=time.time() - start,
    )
    return record


# ---------------------------------------------------------------------------------------------
# Execution: in process, process pool (spawn), or Ray
# ---------------------------------------------------------------------------------------------

ResultCallback = Callable[[ABJob, dict[str, Any]], None]


def _crash_record(job: ABJob, exc: BaseException) -> dict[str, Any]:
    """A worker that died (killed, out of memory) produced no record; make one."""
    record = {"job_key": job.key, "suite": job.suite, "task": job.task.task_id, "designer": job.designer,
              "repeat": job.repeat, "budget": job.budget, "values": [], "best_so_far": [],
              "suggest_seconds": []}
    return _failure(record, "worker", exc)


def _execute_sequential(jobs: Sequence[ABJob], registry: Mapping[str, DesignerSpec], on_result: ResultCallback) -> None:
    for job in jobs:
        on_result(job, run_job(job, registry[job.designer]))


def _execute_pool(
    jobs: Sequence[ABJob], registry: Mapping[str, DesignerSpec], workers: int, on_result: ResultCallback
) -> None:
    pairs = [(job, registry[job.designer]) for job in jobs]
    for (job, _), result, crash in run_spawned(_run_pair, pairs, workers):
        on_result(job, _crash_record(job, crash) if crash is not None else result)


def _run_pair(pair: tuple[ABJob, DesignerSpec]) -> dict[str, Any]:
    return run_job(*pair)


def _execute_ray(
    jobs: Sequence[ABJob], registry: Mapping[str, DesignerSpec], address: str, on_result: ResultCallback
) -> None:
    """One Ray task per run; results come back to this process, which writes the files (a
    worker on another node could not write to our out_dir). The cluster's workers need this
    package and its dependencies installed."""
    try:
        import ray
    except ImportError:
        raise ABConfigError(
            "--ray-address needs Ray, which is not installed: pip install 'vizier-omnipred[ray]' "
            "(or pip install ray), or use --workers N for local processes"
        ) from None
    ray.init(address=address, ignore_reinit_error=True)
    remote_run = ray.remote(num_cpus=1)(run_job)
    pending = {remote_run.remote(job, registry[job.designer]): job for job in jobs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done[0])
        try:
            result = ray.get(done[0])
        except Exception as e:  # noqa: BLE001 - a lost worker / node
            result = _crash_record(job, e)
        on_result(job, result)


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def _regret_curves(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Normalized-regret curves of one (task, repeat), keyed by designer (ok runs only)."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return {}
    maximize = ok[0].get("goal") == "MAXIMIZE"

    def loss(x: Any) -> float:
        return math.nan if x is None else float(metrics.to_loss(float(x), maximize))

    candidates = [loss(ok[0].get("known_optimum")), loss(ok[0].get("reference_best"))]
    curves_loss = {r["designer"]: metrics.to_loss(floats(r["best_so_far"]), maximize) for r in ok}
    for c in curves_loss.values():
        if np.isfinite(c).any():
            candidates.append(float(np.nanmin(c)))
    finite = [c for c in candidates if math.isfinite(c)]
    reference = loss(ok[0].get("reference_median"))
    if not finite or not math.isfinite(reference):
        return {}
    optimum = min(finite)
    return {d: metrics.normalized_regret(c, optimum, reference) for d, c in curves_loss.items()}


def _opponents(designer: str, designers: Sequence[str]) -> list[str]:
    """Whom `designer`'s win rates are against: the GP bandits run, and its spec's `compare_to`."""
    spec = DESIGNERS.get(designer)
    wanted = [*GP_BASELINES, *(spec.compare_to if spec else ())]
    return [o for o in dict.fromkeys(wanted) if o in designers and o != designer]


def summarize(records: Sequence[Mapping[str, Any]], designers: Sequence[str], budget: int) -> dict[str, Any]:
    """Per suite and designer: runs, final regret quantiles, s/suggest, win rates vs GP bandits
    (and an ablation vs its original), and median/IQR regret curves. `records` are run files
    (any mix of suites)."""
    by_group: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for r in records:
        by_group.setdefault((r["suite"], r["task"], int(r["repeat"])), []).append(r)
    suites: dict[str, Any] = {}
    failures = []
    for suite in sorted({k[0] for k in by_group}):
        groups = sorted(k for k in by_group if k[0] == suite)
        final: dict[str, list[float]] = {d: [] for d in designers}  # aligned with `groups`
        curves: dict[str, list[np.ndarray]] = {d: [] for d in designers}
        seconds: dict[str, list[float]] = {d: [] for d in designers}
        model_seconds: dict[str, list[float]] = {d: [] for d in designers}
        setup_seconds: dict[str, list[float]] = {d: [] for d in designers}
        counts = {d: {"ok": 0, "failed": 0} for d in designers}
        for key in groups:
            group = by_group[key]
            regret = _regret_curves(group)
            for d in designers:
                final[d].append(float(regret[d][-1]) if d in regret and len(regret[d]) else math.nan)
                if d in regret and len(regret[d]) == budget:
                    curves[d].append(regret[d])
            for r in group:
                d = r["designer"]
                if d not in counts:
                    continue
                if r.get("status") == "ok":
                    counts[d]["ok"] += 1
                    secs = [float(x) for x in r.get("suggest_seconds", [])]
                    seconds[d].extend(secs)
                    model_seconds[d].extend(secs[int(r.get("seed_trials") or 0):])
                    if r.get("setup_seconds") is not None:  # run files before it have none
                        setup_seconds[d].append(float(r["setup_seconds"]))
                else:
                    counts[d]["failed"] += 1
                    failures.append(
                        {k: r.get(k) for k in ("suite", "task", "designer", "repeat", "failed_phase", "error")}
                        | {"completed_trials": len(r.get("values", []))}
                    )
        per_designer = {}
        for d in designers:
            f = np.asarray(final[d], dtype=float)
            fin = f[~np.isnan(f)]
            stack = np.stack(curves[d]) if curves[d] else np.zeros((0, budget))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns before a feasible trial
                q = np.nanquantile(stack, [0.25, 0.5, 0.75], axis=0) if len(stack) else np.full((3, budget), np.nan)
            entry: dict[str, Any] = {
                "runs_ok": counts[d]["ok"],
                "runs_failed": counts[d]["failed"],
                "median_final_regret": float(np.median(fin)) if fin.size else None,
                "q25_final_regret": float(np.quantile(fin, 0.25)) if fin.size else None,
                "q75_final_regret": float(np.quantile(fin, 0.75)) if fin.size else None,
                "median_seconds_per_suggest": float(np.median(seconds[d])) if seconds[d] else None,
                "mean_seconds_per_suggest": float(np.mean(seconds[d])) if seconds[d] else None,
                # after the seeding phase: the cost of suggestions that use the model
                "median_seconds_per_model_suggest": (
                    float(np.median(model_seconds[d])) if model_seconds[d] else None
                ),
                # building the designer, once per run (a checkpoint's load, prior GPs' training)
                "median_setup_seconds": float(np.median(setup_seconds[d])) if setup_seconds[d] else None,
                "curve_q25": q[0].tolist(),
                "curve_median": q[1].tolist(),
                "curve_q75": q[2].tolist(),
                "win_rates": {},
            }
            for other in _opponents(d, designers):
                entry["win_rates"][other] = metrics.win_rate(final[d], final[other]).to_dict()
            per_designer[d] = entry
        suites[suite] = {"num_problems": len(groups), "designers": per_designer}
    return {"budget": budget, "designers": list(designers), "suites": suites, "failures": failures}


def markdown_table(summary: Mapping[str, Any]) -> str:
    designers = summary["designers"]
    gps = list(dict.fromkeys([*(g for g in GP_BASELINES if g in designers),
                              *(o for d in designers for o in _opponents(d, designers))]))
    lines = [
        f"Budget {summary['budget']} trials. Regret: normalized (0 = optimum, 1 = median random point), "
        "at the budget, over (task, repeat) pairs. Win rate: share of pairs with lower regret "
        "(ties 1/2) [95% bootstrap CI], p = two-sided sign test. Failed runs are excluded from "
        "regret and win rates.",
        "",
    ]
    for suite, s in summary["suites"].items():
        lines.append(f"### {suite} ({s['num_problems']} problems)")
        lines.append("")
        header = ["designer", "ok/failed", "median regret", "IQR", "median s/suggest (after seeding)", "mean s/suggest"]
        header += [f"win vs {g}" for g in gps]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for d in designers:
            e = s["designers"][d]
            row = [
                d,
                f"{e['runs_ok']}/{e['runs_failed']}",
                fmt(e["median_final_regret"]),
                f"{fmt(e['q25_final_regret'])}-{fmt(e['q75_final_regret'])}",
                fmt(e["median_seconds_per_model_suggest"], 3),
                fmt(e["mean_seconds_per_suggest"], 3),
            ]
            for g in gps:
                w = e["win_rates"].get(g)
                if w is None:
                    row.append("-")
                else:
                    row.append(
                        f"{fmt(w['rate'], 2)} [{fmt(w['ci_low'], 2)}, {fmt(w['ci_high'], 2)}] "
                        f"p={fmt(w['sign_test_p'], 3)} ({w['wins']}-{w['losses']}-{w['ties']})"
                    )
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if summary["failures"]:
        lines.append(f"{len(summary['failures'])} failed run(s); first errors:")
        for f in summary["failures"][:10]:
            lines.append(f"- {f['suite']}/{f['task']}/{f['designer']} repeat {f['repeat']}: {f['error']}")
        lines.append("")
    return "\n".join(lines)


def plot_convergence(summary: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Median normalized regret per trial with the interquartile band, one PNG per suite."""
    plt = pyplot()
    paths = []
    for suite, s in summary["suites"].items():
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        x = np.arange(1, summary["budget"] + 1)
        for d in summary["designers"]:
            e = s["designers"][d]
            med = floats(e["curve_median"])
            if not np.isfinite(med).any():
                continue
            (line,) = ax.plot(x, med, label=f"{d} (n={e['runs_ok']})")
            ax.fill_between(x, floats(e["curve_q25"]), floats(e["curve_q75"]), color=line.get_color(), alpha=0.2)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("trial")
        ax.set_ylabel("normalized regret (median, IQR)")
        ax.set_title(f"{suite}: best-so-far regret")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = Path(out_dir) / f"convergence_{suite}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class ABReport:
    out_dir: Path
    ran: int
    skipped: int
    failed: int
    summary: dict[str, Any]
    table: str


def run_ab(
    config: ABConfig,
    *,
    registry: Mapping[str, DesignerSpec] = DESIGNERS,
    tasks: Sequence[Any] | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> ABReport:
    """Runs (or resumes) the benchmark and writes run files, summary.json, table.md, plots.

    `registry` and `tasks` default to the designers above and the suite's tasks; they are
    parameters so that other designers or problems can be benchmarked the same way.
    """
    validate_config(config, registry)
    if config.ray_address and config.workers > 1:
        log("ab: --ray-address given: runs go to Ray, --workers is ignored")
    tasks = list(tasks) if tasks is not None else default_tasks(config)
    validate_tasks(config, tasks, registry)
    jobs = plan_jobs(config, tasks, registry)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    todo, skipped = [], 0
    for job in jobs:
        if config.resume and is_finished(read_json(out_dir / job.relpath), job):
            skipped += 1
        else:
            todo.append(job)
    log(f"ab: {len(jobs)} runs planned, {skipped} already done, {len(todo)} to run")
    ran = failed = 0

    def on_result(job: ABJob, record: dict[str, Any]) -> None:
        nonlocal ran, failed
        ran += 1
        write_json_atomic(out_dir / job.relpath, record)
        if record.get("status") != "ok":
            failed += 1
            log(f"ab: [{ran}/{len(todo)}] {job.key}: FAILED {record.get('error')}")
        else:
            secs = record.get("suggest_seconds") or [0.0]
            after_seeding = secs[record.get("seed_trials") or 0:] or secs  # the seeds' suggestions cost ~0
            log(f"ab: [{ran}/{len(todo)}] {job.key}: best {record['best_so_far'][-1]!r}, "
                f"{np.median(after_seeding):.3f} s/suggest after seeding")

    if todo:
        if config.ray_address:
            _execute_ray(todo, registry, config.ray_address, on_result)
        elif config.workers > 1:
            _execute_pool(todo, registry, config.workers, on_result)
        else:
            _execute_sequential(todo, registry, on_result)

    records = [r for job in jobs if (r := read_json(out_dir / job.relpath)) is not None and r.get("job_key") == job.key]
    summary = summarize(records, config.designers, config.budget)
    summary["config"] = config_json(config)
    summary["environment"] = environment_info()
    write_json_atomic(out_dir / "summary.json", summary)
    table = markdown_table(summary)
    (out_dir / "table.md").write_text(table)
    if config.plot and summary["suites"]:
        plot_convergence(summary, out_dir)
    return ABReport(out_dir=out_dir, ran=ran, skipped=skipped, failed=failed, summary=summary, table=table)
