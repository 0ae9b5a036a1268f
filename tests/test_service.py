"""The OMNIPRED policy factory inside a real Vizier server on a SQLite file.

Everything is real: Vizier's gRPC server and SQL datastore, `vizier.service.clients`,
the OmniPred designer with a tiny from-scratch model (few seed trials, few candidates,
two-epoch fits so the whole file runs in well under a minute of compute).
"""

from __future__ import annotations

import inspect

import pytest
from vizier import pyvizier as vz
from vizier._src.service import policy_factory as vizier_policy_factory
from vizier.service import clients
from vizier.service import pyvizier as svz

from conftest import smooth_2d
from vizier_omnipred import service
from vizier_omnipred.training import FinetuneConfig


def _config(algorithm: str, *, num_metrics: int = 1) -> svz.StudyConfig:
    config = svz.StudyConfig(algorithm=algorithm)
    config.search_space.root.add_float_param("x0", -3.0, 3.0)
    config.search_space.root.add_float_param("x1", -3.0, 3.0)
    for i in range(num_metrics):
        config.metric_information.append(
            svz.MetricInformation("loss" if i == 0 else f"loss{i}", goal=svz.ObjectiveMetricGoal.MINIMIZE)
        )
    config.metadata["description"] = "smooth test bowl"
    return config


def _run_trials(study: clients.Study, n: int) -> list[clients.Trial]:
    out = []
    for _ in range(n):
        (trial,) = study.suggest(count=1)
        p = trial.parameters
        trial.complete(vz.Measurement({"loss": smooth_2d(p["x0"], p["x1"])}))
        out.append(trial)
    return out


@pytest.fixture
def designer_kwargs(tiny_regressor_factory):
    return {
        "regressor": tiny_regressor_factory(0),
        "num_seed_trials": 2,
        "num_samples": 8,
        "num_candidates": 16,
        "finetune_config": FinetuneConfig(max_epochs=2),
    }


def test_factory_has_vizier_signature():
    ours = inspect.signature(service.OmniPredPolicyFactory.__call__)
    vizier = inspect.signature(vizier_policy_factory.DefaultPolicyFactory.__call__)
    assert list(ours.parameters) == list(vizier.parameters)


def test_omnipred_study_survives_server_restart(tmp_path, designer_kwargs):
    db, work = tmp_path / "vizier.db", tmp_path / "work"
    factory = service.OmniPredPolicyFactory(work_dir=work, designer_kwargs=designer_kwargs)
    with service.start_server(db, policy_factory=factory) as server:
        assert server.endpoint.startswith("localhost:")
        assert clients.environment_variables.server_endpoint == server.endpoint
        study = clients.Study.from_study_config(_config("OMNIPRED"), owner="tests", study_id="bowl")
        first = {t.id: t.materialize() for t in _run_trials(study, 4)}
        name = study.resource_name
        # One designer for the study, then the RAM copy on every later request.
        assert factory.counters["designers_built"] == 1
        assert factory.counters["designers_reused"] == 3
        assert factory.cached_designer(name).num_fits >= 1
    assert clients.environment_variables.server_endpoint != server.endpoint  # reset on stop

    # As after a process restart: a new factory (empty RAM cache) and server, same file.
    factory2 = service.OmniPredPolicyFactory(work_dir=work, designer_kwargs=designer_kwargs)
    with service.start_server(db, policy_factory=factory2):
        study = clients.Study.from_owner_and_id("tests", "bowl")
        assert study.materialize_study_config().algorithm == "OMNIPRED"
        stored = {t.id: t for t in study.trials().get()}
        assert sorted(stored) == sorted(first) == [1, 2, 3, 4]
        for i, before in first.items():
            assert stored[i].status == vz.TrialStatus.COMPLETED
            assert stored[i].parameters == before.parameters
            assert stored[i].final_measurement.metrics["loss"].value == before.final_measurement.metrics["loss"].value
        restored_before_suggest = factory2.counters["designers_restored"]
        more = _run_trials(study, 2)

        assert [t.id for t in more] == [5, 6]
        # Restored from the study's metadata (not rebuilt from zero): one load, then RAM.
        assert restored_before_suggest == 0
        assert factory2.counters["designers_restored"] == 1
        assert factory2.counters["designers_reused"] == 1
        designer = factory2.cached_designer(name)
        # It knows all five trials completed before its last suggest, the four from before the restart included.
        known = {tuple(sorted(t.parameters.as_dict().items())) for t in designer.completed_trials}
        assert {tuple(sorted(t.parameters.as_dict().items())) for t in first.values()} <= known
        assert len(known) == 5
        # The fine-tuned weights came back from work_dir: fits continue, no cold restart.
        assert designer.num_fits >= 3
        all_params = [tuple(sorted(t.parameters.as_dict().items())) for t in study.trials().get()]
        assert len(set(all_params)) == len(all_params) == 6
        md = study.materialize_study_config().metadata
        assert md.ns("designer_policy_v0").ns("designer").ns("omnipred").get("version") is not None
    assert list(work.iterdir()), "fine-tuned weights are kept per study under work_dir"


def test_other_algorithms_go_to_vizier_without_loading_a_model(tmp_path):
    # A checkpoint that does not exist: loading it would fail, so passing proves it is never loaded.
    factory = service.OmniPredPolicyFactory(checkpoint=tmp_path / "no-such-checkpoint", work_dir=tmp_path / "w")
    with service.start_server(None, policy_factory=factory):
        for algorithm in ("RANDOM_SEARCH", "QUASI_RANDOM_SEARCH"):
            study = clients.Study.from_study_config(_config(algorithm), owner="tests", study_id=algorithm.lower())
            trials = _run_trials(study, 3)
            assert [t.materialize().status for t in trials] == [vz.TrialStatus.COMPLETED] * 3
    assert factory.counters["checkpoint_loads"] == 0
    assert factory.counters["suggest_requests"] == 0


def test_failed_suggest_raises_in_the_client_and_does_not_wedge_the_study(tmp_path, designer_kwargs):
    factory = service.OmniPredPolicyFactory(work_dir=tmp_path / "w", designer_kwargs=designer_kwargs)
    with service.start_server(tmp_path / "v.db", policy_factory=factory):
        unknown = clients.Study.from_study_config(_config("NOT_AN_ALGORITHM"), owner="tests", study_id="unknown")
        # OMNIPRED refuses a safety metric whose threshold is not a number.
        config = _config("OMNIPRED")
        config.metric_information.append(
            svz.MetricInformation("mem", goal=svz.ObjectiveMetricGoal.MINIMIZE, safety_threshold=float("nan"))
        )
        bad_safety = clients.Study.from_study_config(config, owner="tests", study_id="nan-threshold")
        for study, message in ((unknown, "not registered"), (bad_safety, "safety_threshold")):
            for _ in range(2):  # Vizier alone would leave the operation open: the 2nd call hangs.
                with pytest.raises(RuntimeError, match=message):
                    study.suggest(count=1)


def test_multi_objective_study_with_a_safety_metric_survives_a_restart(tmp_path, designer_kwargs):
    """Two objectives and a safety metric, OMNIPRED end to end on SQLite, across a restart."""
    config = _config("OMNIPRED", num_metrics=2)  # loss, loss1: both MINIMIZE
    config.metric_information.append(
        svz.MetricInformation("mem", goal=svz.ObjectiveMetricGoal.MINIMIZE, safety_threshold=4.0)
    )

    def run(study, n):
        out = []
        for _ in range(n):
            (trial,) = study.suggest(count=1)
            x0, x1 = trial.parameters["x0"], trial.parameters["x1"]
            trial.complete(vz.Measurement({"loss": smooth_2d(x0, x1), "loss1": (x0 - 1.0) ** 2 + x1**2,
                                           "mem": abs(x0) + abs(x1)}))
            out.append(trial)
        return out

    db, work = tmp_path / "mo.db", tmp_path / "work"
    factory = service.OmniPredPolicyFactory(work_dir=work, designer_kwargs=designer_kwargs)
    with service.start_server(db, policy_factory=factory):
        study = clients.Study.from_study_config(config, owner="tests", study_id="front")
        run(study, 4)
        designer = factory.cached_designer(study.resource_name)
        assert designer.multi_objective and [m.name for m in designer.safety_metrics] == ["mem"]
        assert designer.num_fits >= 1
    factory2 = service.OmniPredPolicyFactory(work_dir=work, designer_kwargs=designer_kwargs)
    with service.start_server(db, policy_factory=factory2):
        study = clients.Study.from_owner_and_id("tests", "front")
        more = run(study, 2)
        assert [t.id for t in more] == [5, 6]
        assert factory2.counters["designers_restored"] == 1
        designer = factory2.cached_designer(study.resource_name)
        assert len(designer.completed_trials) == 5
        assert {"loss", "loss1", "mem"} <= set(designer.completed_trials[0].final_measurement.metrics)
        # Every trial teaches the safety metric; an unsafe one also as infeasible.
        assert designer.regressor.last_fit_metrics["mem"].num_used >= 5
        md = more[-1].materialize().metadata.ns("omnipred")
        assert md["source"] == "model" and "safe_probability" in md and "predicted_medians" in md
        all_params = [tuple(sorted(t.parameters.as_dict().items())) for t in study.trials().get()]
        assert len(set(all_params)) == len(all_params) == 6


def test_a_finite_space_that_runs_out_returns_what_is_left_then_says_so(tmp_path, designer_kwargs):
    """Vizier 0.1.24's servicer fails on a policy that returns fewer suggestions than asked
    for ("pop from empty list"); the server answers with the trials there are, then with a
    clear error once every point has been suggested."""
    config = svz.StudyConfig(algorithm="OMNIPRED")
    config.search_space.root.add_categorical_param("c", ["a", "b"])
    config.metric_information.append(svz.MetricInformation("loss", goal=svz.ObjectiveMetricGoal.MINIMIZE))
    factory = service.OmniPredPolicyFactory(work_dir=tmp_path / "work", designer_kwargs=designer_kwargs)
    with service.start_server(tmp_path / "vizier.db", policy_factory=factory):
        study = clients.Study.from_study_config(config, owner="tests", study_id="two-points")
        trials = list(study.suggest(count=3))
        assert sorted(t.parameters["c"] for t in trials) == ["a", "b"]
        for t in trials:
            t.complete(vz.Measurement({"loss": 1.0 if t.parameters["c"] == "a" else 2.0}))
        with pytest.raises(RuntimeError, match="no untried point left"):
            study.suggest(count=1)
        assert len(list(study.trials())) == 2  # nothing lost, nothing half-written


def test_an_index_error_inside_the_policy_is_its_own_failure(tmp_path, designer_kwargs, monkeypatch):
    """Only Vizier's own "pop from empty list" is read as a short delivery; an IndexError the
    designer raises ends the Suggest with the designer's message."""
    from vizier_omnipred.designer import OmniPredDesigner

    def broken(self, count=None):
        raise IndexError("designer bug")

    monkeypatch.setattr(OmniPredDesigner, "suggest", broken)
    factory = service.OmniPredPolicyFactory(work_dir=tmp_path / "w", designer_kwargs=designer_kwargs)
    with service.start_server(tmp_path / "v.db", policy_factory=factory):
        study = clients.Study.from_study_config(_config("OMNIPRED"), owner="tests", study_id="bug")
        with pytest.raises(RuntimeError, match="designer bug"):
            study.suggest(count=1)
        assert list(study.trials()) == []
