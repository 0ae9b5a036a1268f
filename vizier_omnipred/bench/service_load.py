"""Many workers against one Vizier server: correctness checks and Suggest latency under load.

What a Vizier user does: start one server on a SQLite file, point N workers (threads in
one process, or separate processes) at a study, and have each loop "suggest one trial,
evaluate it, complete it". This module runs exactly that, on loopback, with the project's
server (`service.start_server`), for `OMNIPRED` and for Vizier's own `VizierGPBandit`
(`GAUSSIAN_PROCESS_BANDIT`, through the same factory's fallback) under the same load,
and checks afterwards, from the datastore:

* every trial of every study is COMPLETED, and each worker completed exactly the trials it
  was given (no trial lost, none completed twice, none handed to two workers);
* no two trials of a study share their parameters;
* no worker raised or ran past its deadline.

Latency is what a worker waits for `suggest(count=1)`, queueing included: Vizier's
servicer runs one Suggest per study at a time (its per-study operation lock), so with W
workers on one study a request waits for up to W - 1 others. `bench service-load` prints
the percentiles per algorithm; `tests/test_service_load.py` runs the checks with a tiny
model.

A worker process is `python -m vizier_omnipred.bench.service_load ENDPOINT STUDY CLIENT N
DEADLINE`; it prints one JSON line (its `WorkerResult`).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np

OWNER = "load"


def objective(x0: float, x1: float) -> float:
    """The workers' cheap evaluation: a tilted bowl on [-3, 3]^2 (values about 1..60)."""
    return 1.0 + (x0 - 0.5) ** 2 + 2.0 * (x1 + 1.0) ** 2 + 0.5 * x0


def study_config(algorithm: str):
    from vizier.service import pyvizier as svz

    config = svz.StudyConfig(algorithm=algorithm)
    config.search_space.root.add_float_param("x0", -3.0, 3.0)
    config.search_space.root.add_float_param("x1", -3.0, 3.0)
    config.metric_information.append(svz.MetricInformation("loss", goal=svz.ObjectiveMetricGoal.MINIMIZE))
    config.metadata["description"] = "service load test bowl"
    return config


@attrs.define
class WorkerResult:
    """What one worker did: the trials it completed and how long each Suggest took."""

    client_id: str
    completed: list[int] = attrs.field(factory=list)
    latencies: list[float] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    timed_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkerResult":
        return cls(**data)


def run_worker(endpoint: str, study_name: str, client_id: str, num_trials: int, deadline: float) -> WorkerResult:
    """Suggest-evaluate-complete `num_trials` times as client `client_id`; never raises.

    A Suggest that fails is recorded and retried with the same client id (Vizier then
    hands back the trial it may already have assigned), until the deadline (epoch seconds).
    """
    from vizier import pyvizier as vz
    from vizier.service import clients

    result = WorkerResult(client_id)
    clients.environment_variables.server_endpoint = endpoint
    try:
        study = clients.Study.from_resource_name(study_name)
    except Exception as e:  # noqa: BLE001 - a worker reports, the caller judges
        result.errors.append(f"open study: {type(e).__name__}: {e}")
        return result
    while len(result.completed) < num_trials:
        if time.time() > deadline:
            result.timed_out = True
            break
        start = time.perf_counter()
        try:
            (trial,) = study.suggest(count=1, client_id=client_id)
        except Exception as e:  # noqa: BLE001
            result.errors.append(f"suggest: {type(e).__name__}: {e}"[:500])
            time.sleep(0.2)
            continue
        result.latencies.append(time.perf_counter() - start)
        p = trial.parameters
        try:
            trial.complete(vz.Measurement({"loss": objective(float(p["x0"]), float(p["x1"]))}))
        except Exception as e:  # noqa: BLE001
            result.errors.append(f"complete trial {trial.id}: {type(e).__name__}: {e}"[:500])
            continue
        result.completed.append(int(trial.id))
    return result


def _run_process_workers(endpoint: str, jobs: Sequence[tuple[str, str, int]], deadline: float) -> list[WorkerResult]:
    """One OS process per (study, client, trials) job; their results read from stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        (client, subprocess.Popen(
            [sys.executable, "-m", "vizier_omnipred.bench.service_load", endpoint, study, client, str(n), repr(deadline)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
        for study, client, n in jobs
    ]
    results = []
    for client, proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time() + 30.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            results.append(WorkerResult(client, errors=["worker process hung"], timed_out=True))
            continue
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            results.append(WorkerResult(client, errors=[f"worker process exit {proc.returncode}: {err[-500:]}"]))
        else:
            results.append(WorkerResult.from_json(json.loads(lines[-1])))
    return results


@attrs.frozen
class LoadConfig:
    """One load run: `studies` studies of `algorithm`, each with its own workers.

    Each study gets `thread_workers` threads in this process and `process_workers` OS
    processes, each completing `trials_per_worker` trials. `timeout_s` bounds the whole
    run: a worker still busy then counts as hung.
    """

    algorithm: str = "OMNIPRED"
    studies: int = 1
    thread_workers: int = 16
    process_workers: int = 0
    trials_per_worker: int = 2
    timeout_s: float = 600.0

    def __attrs_post_init__(self):
        if self.studies < 1 or self.trials_per_worker < 1 or self.thread_workers + self.process_workers < 1:
            raise ValueError("need at least one study, one worker and one trial per worker")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")

    @property
    def workers_per_study(self) -> int:
        return self.thread_workers + self.process_workers


@attrs.define
class LoadReport:
    """Latencies and the checks of one run; `problems` empty means every check passed."""

    config: LoadConfig
    workers: list[WorkerResult]
    study_names: list[str]
    wall_s: float
    problems: list[str] = attrs.field(factory=list)
    counters: dict[str, int] = attrs.field(factory=dict)

    @property
    def latencies(self) -> np.ndarray:
        return np.array([x for w in self.workers for x in w.latencies], dtype=float)

    def percentile(self, q: float) -> float:
        lat = self.latencies
        return float(np.percentile(lat, q)) if lat.size else math.nan

    @property
    def trials(self) -> int:
        return sum(len(w.completed) for w in self.workers)


def check_studies(study_names: Sequence[str], workers: Sequence[WorkerResult]) -> list[str]:
    """What went wrong, read back from the datastore (through Vizier's client): [] if nothing."""
    from vizier import pyvizier as vz
    from vizier.service import clients

    problems = []
    for w in workers:
        if w.errors:
            problems.append(f"worker {w.client_id}: {len(w.errors)} error(s), first: {w.errors[0]}")
        if w.timed_out:
            problems.append(f"worker {w.client_id}: ran past the deadline")
    for name in study_names:
        study = clients.Study.from_resource_name(name)
        trials = list(study.trials().get())
        prefix = name.rsplit("/", 1)[-1]
        completed_by = {}
        for w in workers:
            if w.client_id.startswith(prefix + ":"):
                for trial_id in w.completed:
                    if trial_id in completed_by:
                        problems.append(f"{name}: trial {trial_id} completed by {completed_by[trial_id]} and {w.client_id}")
                    completed_by[trial_id] = w.client_id
        ids = sorted(t.id for t in trials)
        if ids != list(range(1, len(ids) + 1)):
            problems.append(f"{name}: trial ids are not 1..{len(ids)}: {ids}")
        not_done = [t.id for t in trials if t.status != vz.TrialStatus.COMPLETED]
        if not_done:
            problems.append(f"{name}: trials {not_done} not completed")
        if sorted(completed_by) != ids:
            problems.append(f"{name}: the datastore has trials {ids}, the workers completed {sorted(completed_by)}")
        params = [tuple(sorted(t.parameters.as_dict().items())) for t in trials]
        if len(set(params)) != len(params):
            problems.append(f"{name}: {len(params) - len(set(params))} trial(s) repeat another's parameters")
    return problems


def run_load(config: LoadConfig, endpoint: str, *, study_prefix: str = "s") -> LoadReport:
    """Creates the studies on the server at `endpoint`, runs all workers, checks the result.

    The server must already run (on loopback); it may be another process.
    """
    from vizier.service import clients

    clients.environment_variables.server_endpoint = endpoint
    names = []
    for i in range(config.studies):
        study = clients.Study.from_study_config(study_config(config.algorithm), owner=OWNER,
                                                study_id=f"{study_prefix}{i}")
        names.append(study.resource_name)
    start = time.time()
    deadline = start + config.timeout_s
    thread_jobs = [(n, f"{n.rsplit('/', 1)[-1]}:t{j}") for n in names for j in range(config.thread_workers)]
    process_jobs = [(n, f"{n.rsplit('/', 1)[-1]}:p{j}", config.trials_per_worker)
                    for n in names for j in range(config.process_workers)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(thread_jobs) + 1)) as pool:
        procs = pool.submit(_run_process_workers, endpoint, process_jobs, deadline) if process_jobs else None
        futures = [pool.submit(run_worker, endpoint, n, c, config.trials_per_worker, deadline) for n, c in thread_jobs]
        workers = [f.result() for f in futures] + (procs.result() if procs is not None else [])
    wall = time.time() - start
    report = LoadReport(config=config, workers=workers, study_names=names, wall_s=wall)
    report.problems = check_studies(names, workers)
    return report


def markdown(reports: Sequence[LoadReport]) -> str:
    """The latency table: one row per run."""
    lines = [
        "| algorithm | studies x workers (threads+processes) | trials | p50 s | p90 s | p99 s | max s | trials/s | problems |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        c = r.config
        lines.append(
            f"| {c.algorithm} | {c.studies} x {c.workers_per_study} ({c.thread_workers}+{c.process_workers}) "
            f"| {r.trials} | {r.percentile(50):.2f} | {r.percentile(90):.2f} | {r.percentile(99):.2f} "
            f"| {float(np.max(r.latencies)) if r.latencies.size else math.nan:.2f} "
            f"| {r.trials / max(r.wall_s, 1e-9):.2f} | {len(r.problems)} |"
        )
    return "\n".join(lines)


def run_benchmark(
    algorithms: Sequence[str],
    configs: Sequence[LoadConfig],
    make_factory: Callable[[str], Any],
    database_dir: str,
) -> list[LoadReport]:
    """Each (algorithm, config) on a fresh server and SQLite file under `database_dir`."""
    from vizier_omnipred import service

    reports = []
    for algorithm in algorithms:
        for k, config in enumerate(configs):
            config = attrs.evolve(config, algorithm=algorithm)
            db = os.path.join(database_dir, f"{algorithm.lower()}-{k}.db")
            factory = make_factory(db)
            with service.start_server(db, policy_factory=factory) as server:
                report = run_load(config, server.endpoint)
                report.counters = dict(getattr(factory, "counters", {}))
            reports.append(report)
            print(markdown([report]).splitlines()[-1], flush=True)
            for problem in report.problems[:10]:
                print(f"  problem: {problem}", flush=True)
    return reports


def _worker_main(argv: list[str]) -> int:
    endpoint, study, client, n, deadline = argv
    result = run_worker(endpoint, study, client, int(n), float(deadline))
    print(json.dumps(result.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
