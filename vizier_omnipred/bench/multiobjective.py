"""Several metrics A/B: two-objective fronts and safety-constrained studies.

`bench ab --suite multiobjective`: two-objective problems built from Vizier's BBOB
functions (both MINIMIZE, on BBOB's [-5, 5]^d, each function shifted by its own random
offset in [-2, 2]^d per repeat, so the objectives conflict). Each designer gets `budget`
rounds of suggest(1) -> evaluate -> update; the score is the hypervolume of the front of
all its trials, against a reference point fixed per (task, repeat): each objective's
median over 1,000 uniform random points (so the hypervolume measures how far beyond a
typical point the front reaches; points worse than the reference add nothing). Designers:
`omnipred` (`OmniPredDesigner`: hypervolume scalarizations of sampled objective vectors),
`gp_bandit` (Vizier's `VizierGPBandit`, which handles several objectives with random
hypervolume scalarizations of its UCB) and `random` (Vizier's `RandomDesigner`).

`bench ab --suite safety`: one BBOB objective with a safety metric, the distance to a
center (MINIMIZE, threshold `SAFE_RADIUS`), placed so that the objective's optimum lies
outside the safe ball. It counts the unsafe trials each designer spends (and reports the
best safe value): `omnipred` predicts the safety metric and gates picks on it;
`omnipred_unsafe_as_infeasible` is the same designer behind Vizier's
`UnsafeAsInfeasibleDesigner` (the safety metric removed, unsafe trials reported as
infeasible); `gp_bandit_unsafe_as_infeasible` and `random` for scale.

One JSON file per run under `out/{suite}/{task}/{designer}/repeat_{r:03d}.json`;
`--resume` skips finished ones. `summary.json`, `table.md` and one PNG per task (the
fronts of repeat 0) are written from the run files.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from vizier import algorithms as vza
from vizier import pyvizier as vz

from vizier_omnipred.bench.common import environment_info, fmt, pyplot, read_json, set_torch_threads
from vizier_omnipred.bench.common import run_spawned, stable_seed, write_json_atomic
from vizier_omnipred.multimetric import hypervolume_2d, is_safe, pareto_mask, to_maximise

SUITES: tuple[str, ...] = ("multiobjective", "safety")
DEFAULT_DESIGNERS: Mapping[str, tuple[str, ...]] = {
    "multiobjective": ("omnipred", "gp_bandit", "random"),
    "safety": ("omnipred", "omnipred_unsafe_as_infeasible", "random"),
}
DEFAULT_PAIRS: tuple[tuple[str, str, int], ...] = (("Sphere", "Sphere", 2), ("Sphere", "Rastrigin", 3))
SAFE_RADIUS = 2.0
_REFERENCE_SAMPLES = 1000


# ----------------------------------------------------------------------------- tasks
def _bbob(name: str, seed: int) -> Callable[[np.ndarray], float]:
    from vizier._src.benchmarks.experimenters.synthetic import bbob

    return functools.partial(getattr(bbob, name), seed=seed)


def _space(dim: int) -> vz.SearchSpace:
    space = vz.SearchSpace()
    for i in range(dim):
        space.root.add_float_param(f"x{i}", -5.0, 5.0)
    return space


def _x(params: vz.ParameterDict | Mapping[str, Any], dim: int) -> np.ndarray:
    values = params.as_dict() if isinstance(params, vz.ParameterDict) else params
    return np.array([float(values[f"x{i}"]) for i in range(dim)])


@attrs.frozen
class BuiltProblem:
    problem: vz.ProblemStatement
    evaluate: Callable[[np.ndarray], dict[str, float]]
    dim: int
    reference: np.ndarray | None = None  # (2,) in the metrics' own units (MINIMIZE)


@attrs.frozen
class FrontTask:
    """Two BBOB functions, each shifted on its own, as two MINIMIZE objectives."""

    first: str
    second: str
    dim: int

    @property
    def task_id(self) -> str:
        return f"{self.first}+{self.second}-{self.dim}d"

    def build(self, seed: int) -> BuiltProblem:
        rng = np.random.default_rng([seed, self.dim, 7])
        shifts = rng.uniform(-2.0, 2.0, size=(2, self.dim))
        f1 = _bbob(self.first, int(rng.integers(1, 2**31 - 1)))
        f2 = _bbob(self.second, int(rng.integers(1, 2**31 - 1)))

        def evaluate(x: np.ndarray) -> dict[str, float]:
            return {"f1": float(f1(x - shifts[0])), "f2": float(f2(x - shifts[1]))}

        problem = vz.ProblemStatement(
            search_space=_space(self.dim),
            metric_information=[vz.MetricInformation("f1", goal=vz.ObjectiveMetricGoal.MINIMIZE),
                                vz.MetricInformation("f2", goal=vz.ObjectiveMetricGoal.MINIMIZE)],
        )
        problem.metadata["description"] = (
            f"two objectives: shifted BBOB {self.first} (f1) and shifted {self.second} (f2) in {self.dim}-D"
        )
        sample = rng.uniform(-5.0, 5.0, size=(_REFERENCE_SAMPLES, self.dim))
        values = np.array([[m["f1"], m["f2"]] for m in map(evaluate, sample)])
        return BuiltProblem(problem, evaluate, self.dim, reference=np.median(values, axis=0))


@attrs.frozen
class SafetyTask:
    """A shifted BBOB objective; safety metric 'dist' = distance to a center <= SAFE_RADIUS,
    the center placed so that the objective's optimum is 1.5 beyond the safe ball."""

    function: str
    dim: int

    @property
    def task_id(self) -> str:
        return f"{self.function}-safe-{self.dim}d"

    def build(self, seed: int) -> BuiltProblem:
        rng = np.random.default_rng([seed, self.dim, 11])
        optimum = rng.uniform(-2.0, 2.0, size=self.dim)
        direction = rng.normal(size=self.dim)
        direction /= np.linalg.norm(direction)
        center = optimum - direction * (SAFE_RADIUS + 1.5)
        f = _bbob(self.function, int(rng.integers(1, 2**31 - 1)))

        def evaluate(x: np.ndarray) -> dict[str, float]:
            return {"y": float(f(x - optimum)), "dist": float(np.linalg.norm(x - center))}

        problem = vz.ProblemStatement(
            search_space=_space(self.dim),
            metric_information=[
                vz.MetricInformation("y", goal=vz.ObjectiveMetricGoal.MINIMIZE),
                vz.MetricInformation("dist", goal=vz.ObjectiveMetricGoal.MINIMIZE, safety_threshold=SAFE_RADIUS),
            ],
        )
        problem.metadata["description"] = f"shifted BBOB {self.function} in {self.dim}-D, safe within a ball"
        return BuiltProblem(problem, evaluate, self.dim)


# -------------------------------------------------------------------------- designers
@attrs.frozen
class Options:
    checkpoint: str | None = None  # OmniPred checkpoint; None: the shipped one
    device: str = "cpu"
    threads: int | None = None


def _omnipred(problem: vz.ProblemStatement, seed: int, options: Options):
    from vizier_omnipred.designer import OmniPredDesigner

    return OmniPredDesigner(problem, seed=seed, checkpoint=options.checkpoint, device=options.device)


def _gp_bandit(problem: vz.ProblemStatement, seed: int, options: Options):
    from vizier_omnipred.bench.baselines import ensure_jax_x64

    ensure_jax_x64()
    from vizier._src.algorithms.designers import gp_bandit

    # Not padded (unlike `baselines.padded_gp_bandit` in the single-objective A/B): Vizier
    # 0.1.24 fits several objectives with a multitask GP whose log_prob does not mask padded
    # trials yet (it warns so), which would handicap the baseline.
    return gp_bandit.VizierGPBandit.from_problem(problem, seed=seed)


def _random(problem: vz.ProblemStatement, seed: int, options: Options):
    from vizier._src.algorithms.designers.random import RandomDesigner

    return RandomDesigner.from_problem(problem, seed=seed)


def _unsafe_as_infeasible(inner: Callable[..., Any]) -> Callable[..., Any]:
    def make(problem: vz.ProblemStatement, seed: int, options: Options):
        from vizier._src.algorithms.designers.unsafe_as_infeasible_designer import UnsafeAsInfeasibleDesigner

        return UnsafeAsInfeasibleDesigner(problem, lambda p, seed=None: inner(p, seed, options), seed=seed)

    return make


DESIGNERS: Mapping[str, Callable[..., Any]] = {
    "omnipred": _omnipred,
    "gp_bandit": _gp_bandit,
    "random": _random,
    "omnipred_unsafe_as_infeasible": _unsafe_as_infeasible(_omnipred),
    "gp_bandit_unsafe_as_infeasible": _unsafe_as_infeasible(_gp_bandit),
}


# -------------------------------------------------------------------------------- runs
@attrs.frozen
class Job:
    suite: str
    task: FrontTask | SafetyTask
    designer: str
    repeat: int
    budget: int
    seed: int
    options: Options

    @property
    def task_seed(self) -> int:
        return stable_seed("several-metrics", self.suite, self.task.task_id, self.repeat, self.seed)

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.task.task_id}/{self.designer}/r{self.repeat}/b{self.budget}/s{self.task_seed}/{self.options.checkpoint}"

    @property
    def relpath(self) -> Path:
        return Path(self.suite) / self.task.task_id / self.designer / f"repeat_{self.repeat:03d}.json"


def run_job(job: Job) -> dict[str, Any]:
    """One designer on one (task, repeat): `budget` rounds of suggest(1), evaluate, update."""
    set_torch_threads(job.options.threads)
    built = job.task.build(job.task_seed)
    record: dict[str, Any] = {"job_key": job.key, "suite": job.suite, "task": job.task.task_id,
                              "designer": job.designer, "repeat": job.repeat, "budget": job.budget}
    try:
        designer = DESIGNERS[job.designer](built.problem, stable_seed(job.key, "designer") % (2**31), job.options)
        trials, seconds = [], []
        for i in range(job.budget):
            start = time.perf_counter()
            suggestions = designer.suggest(1)
            seconds.append(time.perf_counter() - start)
            if not suggestions:
                break
            trial = suggestions[0].to_trial(i + 1)
            trial.complete(vz.Measurement(metrics=built.evaluate(_x(trial.parameters, built.dim))))
            trials.append(trial)
            designer.update(vza.CompletedTrials([trial]), vza.ActiveTrials())
    except Exception as e:  # a failed run is a result too (counted, not fatal)
        record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        return record
    record.update(
        status="ok",
        params=[[float(v) for v in _x(t.parameters, built.dim)] for t in trials],
        metrics=[{k: m.value for k, m in t.final_measurement.metrics.items()} for t in trials],
        seconds_per_suggest=float(np.mean(seconds)) if seconds else None,
    )
    metrics = record["metrics"]
    if job.suite == "multiobjective":
        y = np.array([[m["f1"], m["f2"]] for m in metrics])
        goals = [mi.goal for mi in built.problem.metric_information]
        record["reference"] = built.reference.tolist()
        record["hypervolume"] = hypervolume_2d(to_maximise(y, goals), to_maximise(built.reference, goals))
    else:
        safety = [m for m in built.problem.metric_information if m.type == vz.MetricType.SAFETY]
        safe = [is_safe(m, safety) for m in metrics]
        record["num_unsafe"] = int(len(safe) - sum(safe))
        safe_values = [m["y"] for m, ok in zip(metrics, safe) if ok]
        record["best_safe"] = float(min(safe_values)) if safe_values else None
    return record


def _run_one(job: Job) -> dict[str, Any]:
    try:
        return run_job(job)
    except Exception as e:  # crash outside the designer (building the task): record it
        return _error_record(job, e)


def _error_record(job: Job, error: BaseException) -> dict[str, Any]:
    """A run that produced no record of its own: it raised outside the designer, or its
    worker process died."""
    return {"job_key": job.key, "suite": job.suite, "task": job.task.task_id, "designer": job.designer,
            "repeat": job.repeat, "status": "error", "error": f"{type(error).__name__}: {error}"}


# --------------------------------------------------------------------------- summary
def summarize(records: Sequence[Mapping[str, Any]], designers: Sequence[str]) -> dict[str, Any]:
    """Per task and designer: medians; multiobjective: hypervolume and its ratio to the
    GP bandit (median of the per-repeat ratios); safety: unsafe trials and best safe value."""
    out: dict[str, Any] = {}
    for task in sorted({r["task"] for r in records}):
        rows = [r for r in records if r["task"] == task]
        per: dict[str, Any] = {}
        for d in designers:
            runs = [r for r in rows if r["designer"] == d and r.get("status") == "ok"]
            entry: dict[str, Any] = {"runs": len(runs), "failed": sum(1 for r in rows if r["designer"] == d
                                                                       and r.get("status") != "ok")}
            if runs:
                entry["seconds_per_suggest"] = float(np.median([r["seconds_per_suggest"] for r in runs]))
            if runs and "hypervolume" in runs[0]:
                hv = [r["hypervolume"] for r in runs]
                entry["hypervolume_median"] = float(np.median(hv))
                entry["hypervolume"] = hv
                gp = {r["repeat"]: r["hypervolume"] for r in rows if r["designer"] == "gp_bandit" and r.get("status") == "ok"}
                ratios = [r["hypervolume"] / gp[r["repeat"]] for r in runs if gp.get(r["repeat"])]
                if ratios and d != "gp_bandit":
                    entry["ratio_to_gp_bandit_median"] = float(np.median(ratios))
                    entry["wins_vs_gp_bandit"] = f"{sum(x > 1 for x in ratios)}/{len(ratios)}"
            if runs and "num_unsafe" in runs[0]:
                entry["num_unsafe"] = [r["num_unsafe"] for r in runs]
                entry["num_unsafe_median"] = float(np.median(entry["num_unsafe"]))
                best = [r["best_safe"] for r in runs if r["best_safe"] is not None]
                entry["best_safe_median"] = float(np.median(best)) if best else None
            per[d] = entry
        out[task] = per
    return out


def markdown_table(summary: Mapping[str, Any], budget: int) -> str:
    lines = []
    for task, per in summary.items():
        lines.append(f"### {task} ({budget} trials)")
        if any("hypervolume_median" in e for e in per.values()):
            lines += ["| designer | runs | hypervolume (median) | per repeat | HV / GP bandit (median) | wins vs GP | s/suggest |",
                      "|---|---|---|---|---|---|---|"]
            for d, e in per.items():
                lines.append(
                    f"| {d} | {e['runs']}{' (' + str(e['failed']) + ' failed)' if e['failed'] else ''} | "
                    f"{fmt(e.get('hypervolume_median'))} | {', '.join(fmt(x) for x in e.get('hypervolume', []))} | "
                    f"{fmt(e.get('ratio_to_gp_bandit_median'))} | {e.get('wins_vs_gp_bandit', '-')} | "
                    f"{fmt(e.get('seconds_per_suggest'))} |")
        else:
            lines += ["| designer | runs | unsafe trials (median) | per repeat | best safe y (median) | s/suggest |",
                      "|---|---|---|---|---|---|"]
            for d, e in per.items():
                lines.append(
                    f"| {d} | {e['runs']}{' (' + str(e['failed']) + ' failed)' if e['failed'] else ''} | "
                    f"{fmt(e.get('num_unsafe_median'))} | {', '.join(str(x) for x in e.get('num_unsafe', []))} | "
                    f"{fmt(e.get('best_safe_median'))} | {fmt(e.get('seconds_per_suggest'))} |")
        lines.append("")
    return "\n".join(lines)


def plot_fronts(records: Sequence[Mapping[str, Any]], out_dir: Path, repeat: int = 0) -> list[Path]:
    """Per two-objective task: every designer's trials of one repeat and its front."""
    plt = pyplot()
    paths = []
    for task in sorted({r["task"] for r in records if "hypervolume" in r}):
        fig, ax = plt.subplots(figsize=(6, 5))
        reference = None
        for r in records:
            if r["task"] != task or r.get("status") != "ok" or r["repeat"] != repeat:
                continue
            y = np.array([[m["f1"], m["f2"]] for m in r["metrics"]])
            reference = r["reference"]
            front = y[pareto_mask(-y)]
            front = front[np.argsort(front[:, 0])]
            points = ax.scatter(y[:, 0], y[:, 1], s=10, alpha=0.35)
            color = points.get_facecolor()[0][:3]
            # The front's staircase, closed at the reference point: the area it bounds is the hypervolume.
            stairs = np.vstack([[front[0, 0], max(reference[1], front[0, 1])], front,
                                [max(reference[0], front[-1, 0]), front[-1, 1]]])
            ax.step(stairs[:, 0], stairs[:, 1], where="post", color=color,
                    label=f"{r['designer']} (HV {r['hypervolume']:.3g})")
            ax.scatter(front[:, 0], front[:, 1], s=24, color=color, edgecolor="black", linewidths=0.5)
        if reference is not None:
            ax.axvline(reference[0], color="grey", lw=0.5)
            ax.axhline(reference[1], color="grey", lw=0.5)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0.0)
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel("f1 (minimize)")
        ax.set_ylabel("f2 (minimize)")
        ax.set_title(f"{task}, repeat {repeat}: trials and fronts")
        ax.legend(fontsize=8)
        path = Path(out_dir) / f"front_{task}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------- main
@attrs.frozen
class Config:
    suite: str = "multiobjective"
    designers: tuple[str, ...] | None = None
    budget: int = 30
    repeats: int = 5
    pairs: tuple[tuple[str, str, int], ...] = DEFAULT_PAIRS
    safety_functions: tuple[str, ...] = ("Sphere",)
    safety_dims: tuple[int, ...] = (2,)
    out_dir: Path = Path("runs/bench/ab")
    resume: bool = False
    workers: int = 1
    seed: int = 0
    plot: bool = True
    options: Options = Options()


def plan(config: Config) -> list[Job]:
    if config.suite not in SUITES:
        raise ValueError(f"unknown suite {config.suite!r}; valid: {SUITES}")
    designers = config.designers or DEFAULT_DESIGNERS[config.suite]
    unknown = [d for d in designers if d not in DESIGNERS]
    if unknown:
        raise ValueError(f"unknown designers {unknown}; valid: {sorted(DESIGNERS)}")
    if config.suite == "multiobjective":
        tasks: list[Any] = [FrontTask(a, b, d) for a, b, d in config.pairs]
    else:
        tasks = [SafetyTask(f, d) for f in config.safety_functions for d in config.safety_dims]
    return [Job(config.suite, t, d, r, config.budget, config.seed, config.options)
            for t in tasks for r in range(config.repeats) for d in designers]


def run(config: Config) -> tuple[dict[str, Any], str]:
    out = Path(config.out_dir)
    jobs = plan(config)
    todo = []
    for job in jobs:
        done = read_json(out / job.relpath) if config.resume else None
        if not (done and done.get("status") == "ok" and done.get("job_key") == job.key):
            todo.append(job)

    def save(job: Job, record: dict[str, Any]) -> None:
        write_json_atomic(out / job.relpath, record)
        print(f"{job.relpath}: {record.get('status')} "
              f"{record.get('hypervolume', record.get('num_unsafe', record.get('error', '')))}", flush=True)

    if config.workers > 1:
        for job, record, crash in run_spawned(_run_one, todo, config.workers):
            save(job, _error_record(job, crash) if crash is not None else record)
    else:
        for j in todo:
            save(j, _run_one(j))
    records = [r for r in (read_json(out / j.relpath) for j in jobs) if r]
    designers = list(config.designers or DEFAULT_DESIGNERS[config.suite])
    summary = {"suite": config.suite, "budget": config.budget, "repeats": config.repeats,
               "tasks": summarize(records, designers), "environment": environment_info(),
               "checkpoint": config.options.checkpoint,
               "failed_runs": sum(r.get("status") != "ok" for r in records)}
    table = markdown_table(summary["tasks"], config.budget)
    suite_dir = out / config.suite
    suite_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(suite_dir / "summary.json", summary)
    (suite_dir / "table.md").write_text(table)
    if config.plot and config.suite == "multiobjective":
        plot_fronts(records, suite_dir)
    return summary, table

