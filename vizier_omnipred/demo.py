"""`vizier-omnipred demo`: the project's main job, end to end on a real benchmark.

1. An in-process Vizier server on a SQLite file (`<out>/demo.db`) whose policy factory
   knows `OMNIPRED`; a study with `algorithm='OMNIPRED'` on a shifted, rotated BBOB function
   (default 4-D Rastrigin), driven through `vizier.service.clients.Study` exactly as a user
   would: suggest -> evaluate -> complete, `--trials` times.
2. The same budget for Vizier's GP bandit (`VizierGPBandit`) on the same function, driven
   directly as a designer: the reference an OmniPred designer has to be compared with.
   Its trial count is padded to multiples of 10 (Vizier's `PaddingSchedule`), which keeps
   JAX from recompiling the GP at every trial: same model, a few times faster on a CPU.
3. A table (best value, trials, seconds per suggest), `<out>/results.json` and
   `<out>/convergence.png` (best-so-far curves of both).

The OmniPred run's seconds per suggest include the service round trip (gRPC + SQLite,
milliseconds); the GP's do not. Both runs see the same function and the same budget.
Each run's study gets a fresh id, so the SQLite file keeps the history of every demo run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

_log = logging.getLogger(__name__)


@attrs.define
class RunResult:
    """One optimizer's run: objective values in trial order and time per suggest."""

    name: str
    values: list[float] = attrs.field(factory=list)
    suggest_seconds: list[float] = attrs.field(factory=list)
    seconds: float = 0.0
    note: str = ""

    def best_so_far(self, goal_is_min: bool = True) -> np.ndarray:
        v = np.array([x if math.isfinite(x) else (np.inf if goal_is_min else -np.inf) for x in self.values])
        return np.minimum.accumulate(v) if goal_is_min else np.maximum.accumulate(v)

    def summary(self, goal_is_min: bool = True) -> dict[str, Any]:
        best = self.best_so_far(goal_is_min)
        return {
            "name": self.name,
            "best": float(best[-1]) if len(best) else None,
            "trials": len(self.values),
            "seconds_per_suggest": float(np.mean(self.suggest_seconds)) if self.suggest_seconds else None,
            "seconds": self.seconds,
            "values": self.values,
            "note": self.note,
        }


# ----- the benchmark ------------------------------------------------------------------


def make_task(seed: int, dim: int, function_name: str):
    """(problem, experimenter): a shifted BBOB function, MINIMIZE `bbob_eval`.

    Uses the corpus's `random_bbob_task` (shift + rotation seeded, study text naming the
    function); Vizier's own BBOB + `ShiftingExperimenter` if that module is unavailable.
    """
    try:
        from vizier_omnipred.corpus.bbob import random_bbob_task
    except ImportError:
        random_bbob_task = None
    if random_bbob_task is not None:
        return random_bbob_task(seed, dim, function_name)
    import functools

    from vizier._src.benchmarks.experimenters.synthetic import bbob
    from vizier.benchmarks.experimenters import NumpyExperimenter, ShiftingExperimenter

    rng = np.random.default_rng(seed)
    problem = bbob.DefaultBBOBProblemStatement(dim)
    problem.metadata["description"] = f"shifted BBOB {function_name} in {dim}-D"
    impl = functools.partial(getattr(bbob, function_name), seed=int(rng.integers(1, 2**31 - 1)))
    experimenter = ShiftingExperimenter(NumpyExperimenter(impl, problem), shift=rng.uniform(-2, 2, size=dim))
    return experimenter.problem_statement(), experimenter


def evaluate(experimenter, parameters, metric: str) -> float:
    """The experimenter's value for one parameter assignment (nan if it gave none)."""
    from vizier import pyvizier as vz

    trial = vz.Trial(parameters=dict(parameters))
    experimenter.evaluate([trial])
    m = trial.final_measurement
    return float(m.metrics[metric].value) if m is not None and metric in m.metrics else math.nan


# ----- the two runs -------------------------------------------------------------------


@contextlib.contextmanager
def _progress(total: int, desc: str):
    """A tqdm bar; log lines (designer fits, ...) are printed above it, not through it."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, desc=desc, unit="trial", dynamic_ncols=True) as bar:
        yield bar


def run_omnipred_service(problem, experimenter, *, trials: int, db_path: Path, factory, study_id: str) -> RunResult:
    """OMNIPRED through a Vizier server and `clients.Study`, as a user would run it."""
    from vizier import pyvizier as vz
    from vizier.service import clients
    from vizier.service import pyvizier as svz

    from vizier_omnipred import service

    metric = problem.metric_information.item().name
    result = RunResult("OmniPred (service)")
    start = time.perf_counter()
    with service.start_server(db_path, policy_factory=factory) as server:
        config = svz.StudyConfig.from_problem(problem)
        config.algorithm = service.ALGORITHM
        study = clients.Study.from_study_config(config, owner="demo", study_id=study_id)
        _log.info("study %s on %s (server %s)", study.resource_name, db_path, server.endpoint)
        best = math.inf
        with _progress(trials, "OmniPred") as bar:
            for _ in range(trials):
                t0 = time.perf_counter()
                (trial,) = study.suggest(count=1)
                result.suggest_seconds.append(time.perf_counter() - t0)
                y = evaluate(experimenter, trial.parameters, metric)
                if math.isfinite(y):
                    trial.complete(vz.Measurement({metric: y}))
                    best = min(best, y)
                else:
                    trial.complete(vz.Measurement(), infeasibility_reason="no value")
                result.values.append(y)
                bar.set_postfix(best=f"{best:.4g}", last=f"{y:.4g}", s_per_suggest=f"{result.suggest_seconds[-1]:.1f}")
                bar.update()
    result.seconds = time.perf_counter() - start
    result.note = f"study {study_id} in {db_path}"
    return result


def run_gp_bandit(problem, experimenter, *, trials: int, seed: int) -> RunResult:
    """Vizier's GP bandit as a designer (no service), on the same function and budget."""
    import jax

    jax.config.update("jax_enable_x64", True)  # what Vizier's Pythia service sets
    from vizier import algorithms as vza
    from vizier import pyvizier as vz
    from vizier._src.algorithms.designers import gp_bandit

    metric = problem.metric_information.item().name
    from vizier.pyvizier.converters import padding

    # Padding the trial count to multiples of 10 is Vizier's own knob against re-JIT-compiling
    # the GP at every new trial; here it cut the GP's seconds per suggest about 3-4x.
    designer = gp_bandit.VizierGPBandit.from_problem(
        problem, seed=seed, padding_schedule=padding.PaddingSchedule(num_trials=padding.PaddingType.MULTIPLES_OF_10)
    )
    result = RunResult("Vizier GP bandit")
    start = time.perf_counter()
    best = math.inf
    with _progress(trials, "GP bandit") as bar:
        for i in range(trials):
            t0 = time.perf_counter()
            (suggestion,) = designer.suggest(1)
            result.suggest_seconds.append(time.perf_counter() - t0)
            y = evaluate(experimenter, suggestion.parameters, metric)
            trial = suggestion.to_trial(i + 1)
            if math.isfinite(y):
                trial.complete(vz.Measurement({metric: y}))
            else:
                trial.complete(vz.Measurement(), infeasibility_reason="no value")
            designer.update(vza.CompletedTrials([trial]), vza.ActiveTrials())
            best = min(best, y) if math.isfinite(y) else best
            result.values.append(y)
            bar.set_postfix(best=f"{best:.4g}", last=f"{y:.4g}", s_per_suggest=f"{result.suggest_seconds[-1]:.1f}")
            bar.update()
    result.seconds = time.perf_counter() - start
    return result


# ----- reporting ----------------------------------------------------------------------


def format_table(results: list[RunResult]) -> str:
    rows = [("method", "best value", "trials", "s/suggest", "total s")]
    for r in results:
        s = r.summary()
        rows.append((r.name, f"{s['best']:.4g}", str(s["trials"]),
                     f"{s['seconds_per_suggest']:.2f}", f"{r.seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_convergence(results: list[RunResult], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    curves = [r.best_so_far() for r in results]
    positive = all(np.all(c[np.isfinite(c)] > 0) for c in curves)
    for r, c in zip(results, curves):
        ax.plot(np.arange(1, len(c) + 1), c, drawstyle="steps-post", marker="o", markersize=3, label=r.name)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("best objective so far (lower is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----- the command --------------------------------------------------------------------


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


def run(args: argparse.Namespace) -> int:
    from vizier_omnipred import service

    # This package's INFO lines (checkpoint, fits, server) but only Vizier's warnings: its
    # GP logs whole model reprs at INFO through the root logger.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vizier_omnipred").setLevel(logging.INFO)
    # transformers' own bars (per checkpoint save/load) would break the trial progress bar.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:  # checked now, not after minutes of optimisation
        import matplotlib  # noqa: F401
    except ImportError:
        matplotlib = None
        _log.warning("matplotlib is not installed (pip install 'vizier-omnipred[bench]'): no convergence.png")
    problem, experimenter = make_task(args.seed, args.dim, args.function)
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
    results = [
        run_omnipred_service(problem, experimenter, trials=args.trials, db_path=out / "demo.db",
                             factory=factory, study_id=study_id)
    ]
    status = 0
    if not args.no_baseline:
        try:
            results.append(run_gp_bandit(problem, experimenter, trials=args.trials, seed=args.seed))
        except Exception:  # keep the OmniPred results; say loudly that the baseline is missing
            _log.exception("the GP-bandit baseline failed; reporting OmniPred alone")
            status = 1

    print()
    print(format_table(results))
    png = plot_convergence(results, out / "convergence.png", title) if matplotlib is not None else None
    summary = {"task": title, "model": model, "results": [r.summary() for r in results]}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\nconvergence plot: {png}\nresults: {out / 'results.json'}\nVizier database: {out / 'demo.db'}")
    return status


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="OmniPred designer in a Vizier service study vs Vizier's GP bandit on a BBOB function",
        description=(
            "Runs a Vizier study with algorithm OMNIPRED (in-process Vizier server on a SQLite file, "
            "driven through vizier.service.clients) on a shifted BBOB function, then Vizier's GP bandit "
            "with the same budget; prints best value, trials and seconds per suggest for each, and writes "
            "<out>/convergence.png and <out>/results.json."
        ),
    )
    p.add_argument("--trials", type=_positive_int, default=30, help="trials per optimizer (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seeds the function's shift/rotation and both optimizers")
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped one)")
    p.add_argument("--out", default="runs/demo", help="output folder: demo.db, work/, convergence.png, results.json")
    p.add_argument("--no-baseline", action="store_true", help="skip the GP-bandit run")
    p.add_argument("--function", default="Rastrigin", help="Vizier BBOB function name (default Rastrigin)")
    p.add_argument("--dim", type=int, default=4, help="dimension (default 4)")
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny untrained model, few samples")
    p.set_defaults(func=run)
