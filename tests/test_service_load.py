"""Many workers on one Vizier server over SQLite: nothing lost, repeated or stuck.

Real gRPC server on loopback, real SQL datastore, real Vizier clients in threads and in
separate OS processes, the OmniPred designer with a tiny from-scratch model. Bounded: 32
trials per test, a deadline on every worker (a hang fails the test instead of stalling it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vizier.service import clients

from vizier_omnipred import service
from vizier_omnipred.bench import service_load
from vizier_omnipred.designer_state import file_fingerprint as _file_fingerprint
from vizier_omnipred.training import FinetuneConfig


@pytest.fixture
def factory(tmp_path, tiny_regressor_factory):
    kwargs = {
        "regressor": tiny_regressor_factory(0),
        "num_seed_trials": 2,
        "num_samples": 8,
        "num_candidates": 16,
        "finetune_config": FinetuneConfig(max_epochs=2),
    }
    return service.OmniPredPolicyFactory(work_dir=tmp_path / "work", designer_kwargs=kwargs)


def _stored_weights(study_name: str) -> dict:
    md = clients.Study.from_resource_name(study_name).materialize_study_config().metadata
    state = md.ns("designer_policy_v0").ns("designer").ns("omnipred").get("state")
    return json.loads(state)["weights"]


def _assert_consistent(report: service_load.LoadReport, factory: service.OmniPredPolicyFactory) -> None:
    assert report.problems == [], report.problems
    config = report.config
    assert report.trials == config.studies * config.workers_per_study * config.trials_per_worker
    # One designer per study, then the RAM copy on every later request: concurrent
    # requests never found it out of date with the datastore.
    assert factory.counters["designers_built"] == config.studies
    assert factory.counters.get("designers_restored", 0) == 0
    assert factory.counters["designers_reused"] == report.trials - config.studies
    for name in report.study_names:
        weights = _stored_weights(name)
        # The weights folder holds exactly what the study's stored state points to.
        assert _file_fingerprint(Path(weights["path"]) / "model.safetensors") == weights["fingerprint"]
        assert factory.cached_designer(name).num_fits >= 1


def test_sixteen_workers_threads_and_processes_on_one_study(tmp_path, factory):
    config = service_load.LoadConfig(studies=1, thread_workers=8, process_workers=8, trials_per_worker=2,
                                     timeout_s=240)
    with service.start_server(tmp_path / "v.db", policy_factory=factory) as server:
        assert server.endpoint.startswith("localhost:")
        report = service_load.run_load(config, server.endpoint)
        _assert_consistent(report, factory)
    assert {w.client_id.split(":")[1][0] for w in report.workers} == {"t", "p"}


def test_four_studies_served_at_once(tmp_path, factory):
    config = service_load.LoadConfig(studies=4, thread_workers=4, trials_per_worker=2, timeout_s=240)
    with service.start_server(tmp_path / "v.db", policy_factory=factory) as server:
        report = service_load.run_load(config, server.endpoint)
        _assert_consistent(report, factory)
    # Each study has its own weights folder.
    assert len(list((tmp_path / "work").iterdir())) == 4


def test_bench_service_load_command_prints_the_latency_table(tmp_path, capsys):
    from vizier_omnipred.cli import main

    argv = ["bench", "service-load", "--tiny", "--layouts", "1x2", "--process-workers", "1",
            "--algorithms", "OMNIPRED,RANDOM_SEARCH", "--timeout", "120", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| algorithm | studies x workers (threads+processes) | trials | p50 s |" in out
    assert "| OMNIPRED | 1 x 2 (1+1) | 2 |" in out and "| RANDOM_SEARCH | 1 x 2 (1+1) | 2 |" in out
    results = json.loads((tmp_path / "service_load.json").read_text())
    assert [len(r["latencies_s"]) for r in results] == [2, 2]
    assert all(r["problems"] == [] for r in results)
