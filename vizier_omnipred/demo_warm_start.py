"""The main job's default story: what a user with past studies gains from a warm start.

1. **History.** `<out>/history.db`, a Vizier SQLite datastore of past studies as a user
   would have them: one random-search study per history dataset of the HPOBench MLP
   tables (default australian, car, segment; 100 seeded random configurations each),
   written through this project's Vizier server and `clients.Study` as completed studies.
   Built on the first run (seconds); reused when it holds exactly those studies, rebuilt
   otherwise (a history holding other studies would be read as history too).
2. **Base checkpoint.** The packaged `checkpoints/hpobench-fold0`: fold 0 of
   `bench fold-pretrain`, pretrained on blood_transfusion, credit_g, phoneme, vehicle
   (and synthetic BBOB studies), never on australian, car, kc1, segment. The shipped
   checkpoint read all eight tables and cannot be the base of an honest HPOBench story.
   A base whose saved pretraining config says it read the new study's dataset is refused.
3. **New study** (default kc1, in neither the base's pretraining nor the history), run as a
   user would: a study with `algorithm='OMNIPRED'` whose metadata names the history
   (`metadata.ns('omnipred')['history']`), through an in-process Vizier server on
   `<out>/demo.db`. On its first Suggest the server reads the history and continues
   pretraining the base on it (`warm_start.py`: the one-off build, cached on disk by
   content, so a second run finds it); the designer then tunes with the transfer recipe
   (level map + decoder-only fine-tune), the first trial being the space's center.
4. **Baselines** on the same study and budget: Vizier's GP bandit and random search,
   driven as designers.
5. A table (best val_acc, regret against the table's best, share of the 30,000 table
   configurations at least as good, the trial that found it, the median trial's value,
   seconds per suggest, warm-start build seconds), `<out>/results.json`, `<out>/convergence.png` and a one-line verdict that
   says whichever wins.

Cost on a 2-core CPU: the history a few seconds (first run), the warm start
`steps x batch` examples at about 200 examples/s per thread (200 x 64: under a minute on
two quiet threads; once), then a few seconds per OmniPred and GP-bandit suggestion. Beside
two benchmark processes the first run took 12 minutes (docs/BENCHMARKS.md, "Main job").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import attrs
import numpy as np

from vizier_omnipred import service
from vizier_omnipred.corpus.hpobench_datasets import HPOBENCH_DATASETS, HPOBENCH_METRIC
from vizier_omnipred.demo import (
    RunResult,
    format_table,
    plot_convergence,
    run_baseline,
    run_gp_bandit,
    run_omnipred_service,
    run_random_search,
    setup_output,
)

BASE_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "hpobench-fold0"
REBUILD_BASE = ("./run.sh bench fold-pretrain --out runs/folds/v3 --fold 0 --threads 1 --trials-per-dataset 6000 "
                "--steps 6400 --compile")
HISTORY_OWNER = "demo-history"


# ----- the history datastore ------------------------------------------------------------


def history_study_id(dataset: str, trials: int, seed: int) -> str:
    """A past study's id: its dataset, size and draw, so a history of other settings differs."""
    return f"hpobench-{dataset}-random{trials}-seed{seed}"


@attrs.frozen
class HistoryDatastore:
    path: Path
    datasets: tuple[str, ...]
    trials_per_study: int
    built: bool  # False: an existing file was reused
    seconds: float

    def summary(self) -> str:
        how = f"built in {self.seconds:.1f} s" if self.built else "reused"
        return (f"{self.path}: {len(self.datasets)} past studies ({', '.join(self.datasets)}; "
                f"{self.trials_per_study} random configurations each), {how}")


def _stored_studies(path: Path) -> dict[str, int] | None:
    """Study resource name -> completed trials in a datastore; None if it cannot be read."""
    from vizier_omnipred.corpus.datastore import studies_from_datastore
    from vizier_omnipred.corpus.format import CorpusError

    try:
        return {record.name: len(record.trials) for record in studies_from_datastore(path)}
    except (CorpusError, OSError):
        return None


def ensure_history(path: Path, datasets: Sequence[str], trials_per_study: int, seed: int) -> HistoryDatastore:
    """The history datastore at `path`: reused if it holds exactly the wanted past studies
    (completed, `trials_per_study` trials each), else (re)built through the Vizier service."""
    from vizier import pyvizier as vz
    from vizier.service import clients
    from vizier.service import pyvizier as svz

    from vizier_omnipred.corpus.hpobench import hpobench_problem, hpobench_studies

    datasets = tuple(datasets)
    wanted = {f"owners/{HISTORY_OWNER}/studies/{history_study_id(d, trials_per_study, seed)}": trials_per_study
              for d in datasets}
    start = time.perf_counter()
    if path.exists():
        found = _stored_studies(path)
        if found == wanted:
            return HistoryDatastore(path, datasets, trials_per_study, built=False, seconds=0.0)
        mine = f"owners/{HISTORY_OWNER}/"
        if found is None or any(not name.startswith(mine) for name in found):
            # Not a history this demo wrote: never delete a user's file.
            raise ValueError(f"{path} exists and is not this demo's history datastore (" + (
                "not a readable Vizier datastore" if found is None else "it holds other owners' studies")
                + "); move it away or choose another --out")
        held = ", ".join(sorted(name.rsplit("/", 1)[-1] for name in found)) or "no completed study"
        print(f"history: {path} holds {held}, not the {len(wanted)} wanted studies; rebuilding it", flush=True)
        path.unlink()
        Path(f"{path}-journal").unlink(missing_ok=True)
    print(f"history: writing {len(datasets)} past studies of {trials_per_study} trials to {path} "
          "through the Vizier service (first run only)", flush=True)
    with service.start_server(path):
        for dataset in datasets:
            config = svz.StudyConfig.from_problem(hpobench_problem(dataset))
            config.algorithm = "RANDOM_SEARCH"  # as if the user had run random search on it
            study = clients.Study.from_study_config(
                config, owner=HISTORY_OWNER, study_id=history_study_id(dataset, trials_per_study, seed))
            (record,) = hpobench_studies([dataset], seed=seed, max_trials_per_study=trials_per_study)
            for past in record.trials:
                trial = vz.Trial(parameters=past.parameters, final_measurement=past.final_measurement,
                                 creation_time=past.creation_time, completion_time=past.completion_time)
                study.add_trial(trial)
            study.set_state(vz.StudyState.COMPLETED)
    return HistoryDatastore(path, datasets, trials_per_study, built=True, seconds=time.perf_counter() - start)


# ----- the base checkpoint --------------------------------------------------------------


@attrs.frozen
class BaseCheck:
    path: Path
    has_pretrain_config: bool
    datasets_read: tuple[str, ...]
    notes: tuple[str, ...]

    def summary(self) -> str:
        read = ", ".join(self.datasets_read) or "none"
        known = f"pretrained on HPOBench {read}" if self.has_pretrain_config else "no saved pretraining config"
        return f"{self.path} ({known})"


def check_base(path: Path, dataset: str, history: Sequence[str]) -> BaseCheck:
    """The base checkpoint, refused (ValueError naming the fix) when it is missing or its saved
    pretraining config says it read the new study's dataset."""
    from vizier_omnipred.bench.folds import datasets_read_by
    from vizier_omnipred.pretraining import saved_pretrain_config

    if not (path / "omnipred.json").is_file():
        raise ValueError(
            f"{path}: no base checkpoint there. Build the held-out-dataset checkpoint with `{REBUILD_BASE}` "
            f"(about 32 minutes on one thread) and pass --checkpoint runs/folds/v3/fold-0/final, or copy that "
            f"folder and its pretrain_config.json to {BASE_CHECKPOINT}"
        )
    has_config = saved_pretrain_config(path) is not None
    read = datasets_read_by(path)
    if dataset in read:
        unseen = [d for d in HPOBENCH_DATASETS if d not in read and d not in history]
        raise ValueError(
            f"base checkpoint {path} was pretrained on HPOBench {dataset}, the new study's dataset: the "
            f"demo would show it remembering that table, not transferring. Use a base that never read it "
            f"(the packaged {BASE_CHECKPOINT.name} never read australian, car, kc1, segment; rebuild it with "
            f"`{REBUILD_BASE}`) or choose --dataset among {unseen or 'the datasets it never read'}"
        )
    notes = []
    if not has_config:
        notes.append("the base has no saved pretraining config: which HPOBench tables it read is unknown")
    if read & set(history):
        notes.append(f"the base already read {', '.join(sorted(read & set(history)))} of the history in "
                     "pretraining: the warm start adds little about those")
    return BaseCheck(path=path, has_pretrain_config=has_config, datasets_read=tuple(sorted(read)),
                     notes=tuple(notes))


# ----- the OMNIPRED runs ----------------------------------------------------------------


@attrs.define
class TimedPolicyFactory(service.OmniPredPolicyFactory):
    """The OMNIPRED policy factory, recording each warm-start lookup and its seconds: the
    first (in the study's first Suggest) builds the checkpoint or finds it in the cache."""

    warm_starts: list = attrs.field(factory=list, init=False)

    def warm_started(self, source, problem, checkpoint=None, config=None):
        start = time.perf_counter()
        found = super().warm_started(source, problem, checkpoint, config)
        self.warm_starts.append((found[0], time.perf_counter() - start))
        return found


def designer_kwargs(seed: int, tiny: bool) -> dict[str, Any]:
    """The OmniPred designer's settings: one seed trial (the space's center, as the GP
    bandit's first), then the transfer recipe on the warm-started model."""
    from vizier_omnipred.training import recipe

    kwargs: dict[str, Any] = {
        "seed": seed,
        "num_seed_trials": 1,
        # The transfer recipe (training.recipe("transfer")): the level map puts the model's
        # predictions on the study's level, then the decoder-only fine-tune keeps the ranking
        # it brought from pretraining and the history.
        "finetune_config": recipe("transfer"),
    }
    if tiny:
        kwargs.update(num_samples=16, num_candidates=32)
    return kwargs


def _study_config(dataset: str, history: Path | None):
    from vizier.service import pyvizier as svz

    from vizier_omnipred.corpus.hpobench import hpobench_problem

    config = svz.StudyConfig.from_problem(hpobench_problem(dataset))
    config.algorithm = service.ALGORITHM
    if history is not None:
        config.metadata.ns(service.HISTORY_NS)[service.HISTORY_KEY] = str(history.resolve())
    return config


def run_warm_started(args: argparse.Namespace, base: Path, history: Path, experimenter,
                     stamp: str) -> tuple[RunResult, dict[str, Any]]:
    """The OMNIPRED study warm-started from the history; (result, what the warm start did)."""
    from vizier_omnipred.warm_start import EXAMPLES_PER_SECOND_PER_THREAD, WarmStartConfig, estimated_seconds

    out = Path(args.out)
    warm = WarmStartConfig(steps=2 if args.tiny else args.warm_start_steps,
                           batch_size=8 if args.tiny else args.warm_start_batch_size,
                           seed=args.seed, device=args.device)
    factory = TimedPolicyFactory(checkpoint=base, device=args.device, work_dir=out / "work",
                                 designer_kwargs=designer_kwargs(args.seed, args.tiny), seed=args.seed,
                                 warm_start=warm)
    note = (f"OmniPred warm-started: the first Suggest reads the history and continues pretraining the base on it "
            f"({warm.steps} steps of {warm.batch_size}, about {estimated_seconds(warm):.0f} s at "
            f"{EXAMPLES_PER_SECOND_PER_THREAD:.0f} examples/s per thread; once, then cached under {warm.cache_root})")
    result = run_omnipred_service(_study_config(args.dataset, history), experimenter, trials=args.trials,
                                  db_path=out / "demo.db", factory=factory,
                                  study_id=f"{args.dataset}-warm-seed{args.seed}-{stamp}",
                                  name="OmniPred warm-started", first_note=note)
    built, seconds = factory.warm_starts[0]
    # The first suggestion's time without the one-off build: what each later study pays.
    result.suggest_seconds[0] = max(0.0, result.suggest_seconds[0] - seconds)
    info = {"seconds": seconds, "cached": built.cached, "checkpoint": str(built.path), "key": built.key,
            "history": built.report.summary(), "config": attrs.asdict(warm, value_serializer=_jsonable)}
    return result, info


def run_cold(args: argparse.Namespace, base: Path, experimenter, stamp: str) -> RunResult:
    """The same OMNIPRED study from the base alone, no history: what the warm start adds."""
    out = Path(args.out)
    factory = service.OmniPredPolicyFactory(checkpoint=base, device=args.device, work_dir=out / "work",
                                            designer_kwargs=designer_kwargs(args.seed, args.tiny), seed=args.seed)
    return run_omnipred_service(_study_config(args.dataset, None), experimenter, trials=args.trials,
                                db_path=out / "demo.db", factory=factory,
                                study_id=f"{args.dataset}-cold-seed{args.seed}-{stamp}",
                                name="OmniPred, base only")


def _jsonable(instance, attribute, value):
    return os.fspath(value) if isinstance(value, Path) else value


# ----- reporting ------------------------------------------------------------------------


def verdict(results: Sequence[RunResult], table_best: float, trials: int) -> str:
    """One honest line: each method's best, regret and when it got there; who won."""
    parts = []
    for r in results:
        when = f"trial {r.trial_of_best}" if r.trial_of_best else "no value"
        parts.append(f"{r.name} {r.best:.4f} (regret {table_best - r.best:.4f}, best at {when})")
    best = max(r.best for r in results)
    winners = [r.name for r in results if r.best >= best - 1e-12]
    if len(winners) == len(results):
        outcome = "all tie"
    elif len(winners) > 1:
        outcome = "tie between " + " and ".join(winners)
    else:
        outcome = f"{winners[0]} wins"
    earliest = ""
    if len(winners) > 1:
        first = min((r for r in results if r.name in winners), key=lambda r: r.trial_of_best or math.inf)
        earliest = f", {first.name} got there first"
    return (f"after {trials} trials: " + "; ".join(parts) + f". {outcome}{earliest} "
            "(one study, one seed: the A/B suites rank designers)")


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _table_rows(results: Sequence[RunResult], table_values: np.ndarray, warm_seconds: float) -> list[tuple[str, ...]]:
    table_best = float(np.max(table_values))
    rows = [("method", f"best {HPOBENCH_METRIC}", "regret", "top % of table", "best at", "median trial",
             "trials", "s/suggest", "warm-start s", "total s")]
    for r in results:
        top = 100.0 * float(np.mean(table_values >= r.best))
        rows.append((r.name, f"{r.best:.4f}", f"{table_best - r.best:.4f}", f"{top:.2f}",
                     str(r.trial_of_best or "-"), f"{_median(r.values):.4f}", str(len(r.values)),
                     f"{r.seconds_per_suggest:.2f}",
                     f"{warm_seconds:.0f}" if r.name == "OmniPred warm-started" else "-", f"{r.seconds:.0f}"))
    return rows


# ----- the command ----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench.common import parse_csv, write_json_atomic
    from vizier_omnipred.corpus.hpobench import HPOBenchExperimenter, hpobench_table

    wall = time.perf_counter()
    out = Path(args.out)
    history_sets = parse_csv(args.history)
    unknown = [d for d in (args.dataset, *history_sets) if d not in HPOBENCH_DATASETS]
    if unknown or not history_sets:
        raise ValueError(f"--dataset and --history take HPOBench datasets ({', '.join(HPOBENCH_DATASETS)}); "
                         f"got {unknown or 'no history'}")
    if args.dataset in history_sets:
        raise ValueError(f"--dataset {args.dataset} is in --history: the new study must be one the history "
                         "does not hold")
    base = Path(args.checkpoint) if args.checkpoint else BASE_CHECKPOINT
    checked = check_base(base, args.dataset, history_sets)  # before minutes of work
    can_plot = setup_output(out)

    print(f"base checkpoint: {checked.summary()}")
    for note in checked.notes:
        print(f"  note: {note}")
    history = ensure_history(out / "history.db", history_sets, args.history_trials, args.seed)
    print(f"history: {history.summary()}")
    _, table_values = hpobench_table(args.dataset)
    table_best = float(np.max(table_values))
    experimenter = HPOBenchExperimenter(args.dataset)
    print(f"new study: HPOBench {args.dataset} ({HPOBENCH_METRIC}, maximize; best of its 30,000 configurations "
          f"{table_best:.4f}), {args.trials} trials per method, seed {args.seed}")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    warm_result, warm_info = run_warm_started(args, base, history.path, experimenter, stamp)
    results = [warm_result]
    if args.also_cold:
        results.append(run_cold(args, base, experimenter, stamp))
    problem = experimenter.problem_statement()
    status = 0
    if not args.no_baseline:
        gp = run_baseline(lambda: run_gp_bandit(problem, experimenter, trials=args.trials, seed=args.seed),
                          "GP-bandit")
        status = 1 if gp is None else status
        results += [gp] if gp is not None else []
    rnd = run_baseline(lambda: run_random_search(problem, experimenter, trials=args.trials, seed=args.seed),
                       "random-search")
    results += [rnd] if rnd is not None else []

    print()
    print(format_table(_table_rows(results, table_values, warm_info["seconds"])))
    how = "found in the cache" if warm_info["cached"] else "built"
    print(f"warm start: {how} in {warm_info['seconds']:.0f} s (once per history and base; its time is not in "
          "OmniPred's s/suggest, and is in its total)")
    line = verdict(results, table_best, args.trials)
    print(f"\nverdict: {line}")
    title = f"HPOBench {args.dataset}: warm start from {', '.join(history_sets)} (seed {args.seed})"
    png = (plot_convergence(results, out / "convergence.png", title, ylabel=f"best {HPOBENCH_METRIC} so far",
                            reference=(table_best, "table's best")) if can_plot else None)
    summary = {
        "story": "warm-start",
        "dataset": args.dataset,
        "table_best": table_best,
        "history": {"path": str(history.path), "datasets": list(history.datasets),
                    "trials_per_study": history.trials_per_study, "built": history.built,
                    "seconds": history.seconds},
        "base_checkpoint": {"path": str(base), "has_pretrain_config": checked.has_pretrain_config,
                            "hpobench_datasets_read": list(checked.datasets_read), "notes": list(checked.notes)},
        "warm_start": warm_info,
        "results": [{**r.summary(), "regret": table_best - r.best, "median": _median(r.values),
                     "top_share_of_table": float(np.mean(table_values >= r.best))} for r in results],
        "verdict": line,
        "wall_seconds": time.perf_counter() - wall,
    }
    write_json_atomic(out / "results.json", summary)
    print(f"\nconvergence plot: {png}\nresults: {out / 'results.json'}\nnew study's database: {out / 'demo.db'}\n"
          f"history database: {history.path}\nwall time: {summary['wall_seconds']:.0f} s")
    return status
