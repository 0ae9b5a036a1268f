"""`vizier-omnipred demo`: the project's main job, end to end on real benchmarks.

Two stories (`--story`):

* `warm-start` (the default; `demo_warm_start.py`): what a user with a history of past
  studies gains. A Vizier SQLite datastore of past HPOBench studies (built on first run),
  a new related study run with `algorithm='OMNIPRED'` warm-started from that history, and
  the same study with Vizier's GP bandit and with random search.
* `bbob`: an `OMNIPRED` study on a shifted, rotated BBOB function (default 4-D Rastrigin)
  through the in-process Vizier server, against Vizier's GP bandit with the same budget.

Both drive the OmniPred study through `vizier.service.clients.Study` exactly as a user
would (suggest -> evaluate -> complete) and the baselines directly as designers; both print
a table and write `<out>/results.json` and `<out>/convergence.png` (best-so-far curves).
This module holds what they share: the run record, the two loops, the table and the plot.

The GP bandit's trial count is padded to multiples of 10 (Vizier's `PaddingSchedule`),
which keeps JAX from recompiling the GP at every trial: same model, a few times faster on
a CPU. The OmniPred run's seconds per suggest include the service round trip (gRPC +
SQLite, milliseconds); the designers' do not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import numpy as np

from vizier_omnipred.cli_args import non_negative_int, positive_int, torch_device, torch_threads

_log = logging.getLogger(__name__)

STORIES = ("warm-start", "bbob")


@attrs.define
class RunResult:
    """One optimizer's run: objective values in trial order and time per suggest."""

    name: str
    goal_is_min: bool = True
    values: list[float] = attrs.field(factory=list)
    suggest_seconds: list[float] = attrs.field(factory=list)
    seconds: float = 0.0
    note: str = ""

    def best_so_far(self) -> np.ndarray:
        worst = np.inf if self.goal_is_min else -np.inf
        v = np.array([x if math.isfinite(x) else worst for x in self.values], dtype=float)
        return np.minimum.accumulate(v) if self.goal_is_min else np.maximum.accumulate(v)

    @property
    def best(self) -> float:
        curve = self.best_so_far()
        return float(curve[-1]) if len(curve) else math.nan

    @property
    def trial_of_best(self) -> int | None:
        """The first trial (1-based) that reached the run's best value."""
        curve = self.best_so_far()
        if not len(curve) or not math.isfinite(curve[-1]):
            return None
        return int(np.flatnonzero(curve == curve[-1])[0]) + 1

    @property
    def seconds_per_suggest(self) -> float:
        return float(np.mean(self.suggest_seconds)) if self.suggest_seconds else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "best": self.best if len(self.values) else None,
            "trial_of_best": self.trial_of_best,
            "trials": len(self.values),
            "seconds_per_suggest": self.seconds_per_suggest if self.suggest_seconds else None,
            "seconds": self.seconds,
            "values": self.values,
            "note": self.note,
        }


def evaluate(experimenter, parameters, metric: str) -> float:
    """The experimenter's value for one parameter assignment (nan if it gave none)."""
    from vizier import pyvizier as vz

    trial = vz.Trial(parameters=dict(parameters))
    experimenter.evaluate([trial])
    m = trial.final_measurement
    return float(m.metrics[metric].value) if m is not None and metric in m.metrics else math.nan


# ----- the loops ------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(total: int, desc: str):
    """A tqdm bar; log lines (designer fits, ...) are printed above it, not through it."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, desc=desc, unit="trial", dynamic_ncols=True) as bar:
        yield bar


def _measurement(metric: str, y: float):
    """(measurement, infeasibility reason) for a value: a non-finite one is infeasible."""
    from vizier import pyvizier as vz

    return (vz.Measurement({metric: y}), None) if math.isfinite(y) else (vz.Measurement(), "no value")


def _show(bar, result: RunResult) -> None:
    bar.set_postfix(best=f"{result.best:.4g}", last=f"{result.values[-1]:.4g}",
                    s_per_suggest=f"{result.suggest_seconds[-1]:.1f}")
    bar.update()


def run_omnipred_service(config, experimenter, *, trials: int, db_path: Path, factory, study_id: str,
                         name: str = "OmniPred (service)", first_note: str | None = None) -> RunResult:
    """A study with `config` (algorithm OMNIPRED) through a Vizier server on `db_path` and
    `clients.Study`, as a user would run it: suggest -> evaluate -> complete, `trials` times.

    `first_note`: printed before the first suggestion, which then runs before the progress
    bar (for a first suggestion that does a one-off job with its own output, such as a
    warm-start build).
    """
    from vizier.service import clients

    from vizier_omnipred import service

    metric = config.metric_information.item()
    result = RunResult(name, goal_is_min=metric.goal.is_minimize)
    start = time.perf_counter()

    def one_trial(study) -> None:
        t0 = time.perf_counter()
        (trial,) = study.suggest(count=1)
        result.suggest_seconds.append(time.perf_counter() - t0)
        y = evaluate(experimenter, trial.parameters, metric.name)
        measurement, infeasible = _measurement(metric.name, y)
        trial.complete(measurement, infeasible_reason=infeasible)  # the client's keyword (vz.Trial's differs)
        result.values.append(y)

    with service.start_server(db_path, policy_factory=factory) as server:
        study = clients.Study.from_study_config(config, owner="demo", study_id=study_id)
        _log.info("study %s on %s (server %s)", study.resource_name, db_path, server.endpoint)
        done = 0
        if first_note is not None:
            print(first_note, flush=True)
            one_trial(study)
            done = 1
            print(f"{name}: first suggestion after {result.suggest_seconds[0]:.0f} s; value {result.values[0]:.4g}",
                  flush=True)
        with _progress(trials, name) as bar:
            bar.update(done)
            for _ in range(trials - done):
                one_trial(study)
                _show(bar, result)
    result.seconds = time.perf_counter() - start
    result.note = f"study {study_id} in {db_path}"
    return result


def run_designer(name: str, designer, problem, experimenter, *, trials: int) -> RunResult:
    """A Vizier designer (no service) on the experimenter: suggest -> evaluate -> update."""
    from vizier import algorithms as vza

    metric = problem.metric_information.item()
    result = RunResult(name, goal_is_min=metric.goal.is_minimize)
    start = time.perf_counter()
    with _progress(trials, name) as bar:
        for i in range(trials):
            t0 = time.perf_counter()
            (suggestion,) = designer.suggest(1)
            result.suggest_seconds.append(time.perf_counter() - t0)
            y = evaluate(experimenter, suggestion.parameters, metric.name)
            measurement, infeasible = _measurement(metric.name, y)
            trial = suggestion.to_trial(i + 1)
            trial.complete(measurement, infeasibility_reason=infeasible)
            designer.update(vza.CompletedTrials([trial]), vza.ActiveTrials())
            result.values.append(y)
            _show(bar, result)
    result.seconds = time.perf_counter() - start
    return result


def run_gp_bandit(problem, experimenter, *, trials: int, seed: int) -> RunResult:
    """Vizier's GP bandit as a designer, on the same function and budget."""
    from vizier_omnipred.bench.baselines import padded_gp_bandit

    designer = padded_gp_bandit(problem, seed=seed)
    return run_designer("Vizier GP bandit", designer, problem, experimenter, trials=trials)


def run_random_search(problem, experimenter, *, trials: int, seed: int) -> RunResult:
    """Vizier's random designer: the floor every model-based optimizer has to clear."""
    from vizier._src.algorithms.designers.random import RandomDesigner

    designer = RandomDesigner.from_problem(problem, seed=seed)
    return run_designer("random search", designer, problem, experimenter, trials=trials)


def run_baseline(run: Callable[[], RunResult], name: str) -> RunResult | None:
    """A baseline's result, or None (logged loudly) when it fails: the other results stay."""
    try:
        return run()
    except Exception:  # noqa: BLE001 - keep what ran; say loudly what is missing
        _log.exception("the %s baseline failed; it is missing from the results", name)
        return None


# ----- reporting ------------------------------------------------------------------------


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """A text table: first row the header, first column left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_convergence(results: Sequence[RunResult], path: Path, title: str, *, ylabel: str | None = None,
                     reference: tuple[float, str] | None = None) -> Path:
    """Best-so-far curves of the runs; `reference`: (value, label) drawn as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    goal_is_min = results[0].goal_is_min
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    curves = [r.best_so_far() for r in results]
    for r, c in zip(results, curves):
        ax.plot(np.arange(1, len(c) + 1), c, drawstyle="steps-post", marker="o", markersize=3, label=r.name)
    if reference is not None:
        ax.axhline(reference[0], color="gray", linestyle="--", linewidth=1, label=reference[1])
    if goal_is_min and all(np.all(c[np.isfinite(c)] > 0) for c in curves):
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel or f"best objective so far ({'lower' if goal_is_min else 'higher'} is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def setup_output(out: Path) -> bool:
    """Logging, quiet transformers bars, the output folder; whether matplotlib is there."""
    # This package's INFO lines (checkpoint, fits, server) but only Vizier's warnings: its
    # GP logs whole model reprs at INFO through the root logger.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vizier_omnipred").setLevel(logging.INFO)
    # transformers' own bars (per checkpoint save/load) would break the trial progress bar.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    try:  # checked now, not after minutes of optimisation
        import matplotlib  # noqa: F401
    except ImportError:
        _log.warning("matplotlib is not installed (pip install 'vizier-omnipred[bench]'): no convergence.png")
        return False
    return True


# ----- the BBOB story -------------------------------------------------------------------


def describe_model(factory) -> str:
    """Which model the OMNIPRED designer will use, loading it now (not in the first suggest)."""
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

    designer_kwargs = factory.designer_kwargs or {}
    if designer_kwargs.get("regressor") is not None:
        reg = designer_kwargs["regressor"]
        return f"a given regressor ({reg.checkpoint.preset.description})"
    reg = factory.regressor()
    if reg is None:
        return (f"NO checkpoint (none given, none shipped at {SHIPPED_CHECKPOINT}): the designer trains a "
                "from-scratch model on this study alone; expect it to be weak")
    steps = reg.checkpoint.training.get("steps")
    where = factory.checkpoint or SHIPPED_CHECKPOINT
    trained = f"pretrained {steps} steps" if steps else "NOT pretrained"
    return f"checkpoint {where} ({reg.checkpoint.preset.description}; {trained})"


def tiny_designer_kwargs(seed: int) -> dict[str, Any]:
    """For smoke tests: a tiny from-scratch model, few samples and seed trials."""
    from vizier_omnipred.regressor import OmniPredRegressor

    return {
        "regressor": OmniPredRegressor.from_scratch("tiny", seed=seed),
        "num_samples": 16,
        "num_seed_trials": 2,
    }


def run_bbob(args: argparse.Namespace) -> int:
    from vizier.service import pyvizier as svz

    from vizier_omnipred import service
    from vizier_omnipred.corpus.bbob import random_bbob_task

    out = Path(args.out)
    can_plot = setup_output(out)
    # a shifted, rotated BBOB function, MINIMIZE `bbob_eval`
    problem, experimenter = random_bbob_task(args.seed, args.dim, args.function)
    title = f"shifted BBOB {args.function}, {args.dim}-D, seed {args.seed}"
    print(f"task: {title} ({problem.metric_information.item().name}, minimize)")

    # The designer's seed is --seed (not derived from the study id, which has a timestamp).
    designer_kwargs = {"seed": args.seed, **(tiny_designer_kwargs(args.seed) if args.tiny else {})}
    factory = service.OmniPredPolicyFactory(
        checkpoint=args.checkpoint,
        device=args.device,
        work_dir=out / "work",
        designer_kwargs=designer_kwargs,
        seed=args.seed,
    )
    model = describe_model(factory)
    print(f"OmniPred model: {model}")
    study_id = f"{args.function.lower()}-{args.dim}d-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = svz.StudyConfig.from_problem(problem)
    config.algorithm = service.ALGORITHM
    results = [run_omnipred_service(config, experimenter, trials=args.trials, db_path=out / "demo.db",
                                    factory=factory, study_id=study_id)]
    status = 0
    if not args.no_baseline:
        gp = run_baseline(lambda: run_gp_bandit(problem, experimenter, trials=args.trials, seed=args.seed),
                          "GP-bandit")
        status = 1 if gp is None else 0
        results += [gp] if gp is not None else []

    rows = [("method", "best value", "trials", "s/suggest", "total s")]
    rows += [(r.name, f"{r.best:.4g}", str(len(r.values)), f"{r.seconds_per_suggest:.2f}", f"{r.seconds:.0f}")
             for r in results]
    print()
    print(format_table(rows))
    png = plot_convergence(results, out / "convergence.png", title) if can_plot else None
    summary = {"story": "bbob", "task": title, "model": model, "results": [r.summary() for r in results]}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nconvergence plot: {png}\nresults: {out / 'results.json'}\nVizier database: {out / 'demo.db'}")
    return status


# ----- the warm-start story's settings ---------------------------------------------------
# Here rather than in `demo_warm_start`, which drives the Vizier service: building the command
# line (every subcommand's, `pretrain` too) then needs no server, gRPC stack or datastore.
DEFAULT_DATASET = "kc1"
DEFAULT_HISTORY = ("australian", "car", "segment")
HISTORY_TRIALS = 100
# The one-off warm-start build: 200 steps of 64 examples, about a minute on two quiet threads.
WARM_START_STEPS = 200
WARM_START_BATCH = 64


def add_warm_start_arguments(group: argparse._ArgumentGroup) -> None:
    from vizier_omnipred.corpus.hpobench_datasets import HPOBENCH_DATASETS

    group.add_argument("--dataset", default=DEFAULT_DATASET, choices=HPOBENCH_DATASETS,
                       help=f"the new study's HPOBench dataset (default {DEFAULT_DATASET})")
    group.add_argument("--history", default=",".join(DEFAULT_HISTORY),
                       help=f"comma-separated HPOBench datasets of the past studies (default "
                            f"{','.join(DEFAULT_HISTORY)})")
    group.add_argument("--history-trials", type=positive_int, default=HISTORY_TRIALS,
                       help=f"trials per past study (default {HISTORY_TRIALS})")
    group.add_argument("--warm-start-steps", type=positive_int, default=WARM_START_STEPS,
                       help=f"continued-pretraining steps of the warm start (default {WARM_START_STEPS})")
    group.add_argument("--warm-start-batch-size", type=positive_int, default=WARM_START_BATCH,
                       help=f"examples per warm-start step (default {WARM_START_BATCH})")
    group.add_argument("--also-cold", action="store_true",
                       help="also run OMNIPRED from the base checkpoint without the history (a few minutes more)")


# ----- the command ----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench.common import set_torch_threads

    set_torch_threads(args.threads)
    if args.story == "bbob":
        return run_bbob(args)
    from vizier_omnipred import demo_warm_start

    return demo_warm_start.run(args)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: OmniPred warm-started from past studies vs Vizier's GP bandit on a new study",
        description=(
            "Default story (warm-start): builds a Vizier SQLite datastore of past studies on HPOBench MLP "
            "tables (<out>/history.db, first run only), then runs a new study on another HPOBench dataset "
            "with algorithm OMNIPRED warm-started from that history (in-process Vizier server, driven "
            "through vizier.service.clients), the same study with Vizier's GP bandit and with random "
            "search, and prints best value found, regret against the table's best, seconds per suggest "
            "and the one-off warm-start cost. --story bbob runs the OMNIPRED designer against the GP "
            "bandit on a shifted BBOB function instead. Both write <out>/convergence.png and "
            "<out>/results.json."
        ),
    )
    p.add_argument("--story", choices=STORIES, default="warm-start",
                   help="warm-start (default): past studies -> warm start -> new study; bbob: a BBOB function")
    p.add_argument("--trials", type=positive_int, default=30, help="trials per optimizer (default 30)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the task (history draws, BBOB shift/rotation) and every optimizer")
    p.add_argument("--device", type=torch_device, default="cpu", help="torch device for the model (cpu, cuda)")
    p.add_argument("--threads", type=torch_threads, default=0,
                   help="torch threads for the warm start and the model (default 0: torch's, one per core). On a "
                        "machine where another job holds a core, 1 (see README, main job)")
    p.add_argument("--checkpoint", default=None,
                   help="the OmniPred model: for warm-start the base checkpoint (default: the packaged "
                        "hpobench-fold0, which never read kc1); for bbob the model (default: the shipped one)")
    p.add_argument("--out", default="runs/demo",
                   help="output folder: history.db, demo.db, work/, convergence.png, results.json")
    p.add_argument("--no-baseline", action="store_true", help="skip the GP-bandit run")
    p.add_argument("--tiny", action="store_true", help="smoke test: few samples and candidates, a tiny warm start "
                   "(warm-start story), a tiny untrained model (bbob)")
    add_warm_start_arguments(p.add_argument_group("warm-start story"))
    bbob = p.add_argument_group("bbob story")
    bbob.add_argument("--function", default="Rastrigin", help="Vizier BBOB function name (default Rastrigin)")
    bbob.add_argument("--dim", type=int, default=4, help="dimension (default 4)")
    p.set_defaults(func=run)
