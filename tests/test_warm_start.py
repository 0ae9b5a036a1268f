"""Warm-starting the designer and the OMNIPRED service policy from a user's study history.

Everything is real: history datastores are written by Vizier's own server and clients on
SQLite, the warm start runs `pretraining.pretrain` on a tiny checkpoint (a few steps of a
few examples), and the new study is driven through Vizier's client API.
"""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
from vizier import algorithms as vza
from vizier import pyvizier as vz
from vizier.service import clients
from vizier.service import pyvizier as svz

from conftest import make_problem_2d, make_trials, smooth_2d
from vizier_omnipred import cli, service
from vizier_omnipred.corpus.format import StudyRecord, write_corpus
from vizier_omnipred.designer import OmniPredDesigner
from vizier_omnipred.model import WEIGHTS_FILE
from vizier_omnipred.training import FinetuneConfig
from vizier_omnipred.warm_start import (
    WarmStartConfig,
    WarmStartError,
    load_history,
    warm_start_checkpoint,
)

MIN = vz.ObjectiveMetricGoal.MINIMIZE
MAX = vz.ObjectiveMetricGoal.MAXIMIZE


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_regressor_factory, tmp_path_factory):
    return tiny_regressor_factory(0).save(tmp_path_factory.mktemp("base") / "tiny")


def _study_config(metric: str, goal, algorithm: str = "RANDOM_SEARCH") -> svz.StudyConfig:
    config = svz.StudyConfig(algorithm=algorithm)
    config.search_space.root.add_float_param("x0", -3.0, 3.0)
    config.search_space.root.add_float_param("x1", -3.0, 3.0)
    config.metric_information.append(svz.MetricInformation(metric, goal=goal))
    config.metadata["description"] = "smooth test bowl"
    return config


def _make_datastore(path, studies) -> None:
    """A Vizier SQLite datastore holding `studies`: (study_id, metric, goal, completed trials)."""
    with service.start_server(path):
        for study_id, metric, goal, n in studies:
            study = clients.Study.from_study_config(_study_config(metric, goal), owner="alice", study_id=study_id)
            for trial in study.suggest(count=n):
                p = trial.parameters
                trial.complete(vz.Measurement({metric: smooth_2d(p["x0"], p["x1"])}))


@pytest.fixture(scope="module")
def history_db(tmp_path_factory):
    """Two completed 'loss' studies and one 'accuracy' study, written by Vizier itself."""
    db = tmp_path_factory.mktemp("history") / "history.db"
    _make_datastore(db, [("sweep-a", "loss", MIN, 6), ("sweep-b", "loss", MIN, 5), ("acc", "accuracy", MAX, 3)])
    return db


def _config(tmp_path, **kwargs) -> WarmStartConfig:
    kwargs.setdefault("steps", 3)
    kwargs.setdefault("batch_size", 8)
    return WarmStartConfig(cache_dir=tmp_path / "cache", **kwargs)


def _problem(metric="loss", goal=MIN) -> vz.ProblemStatement:
    problem = make_problem_2d()
    problem.metric_information = vz.MetricsConfig([vz.MetricInformation(metric, goal=goal)])
    return problem


# ----- reading the history ------------------------------------------------------------------
def test_history_keeps_studies_with_the_objective_and_counts_the_others(history_db):
    history = load_history(history_db, _problem())
    report = history.report
    assert [r.name for r in history.records] == ["owners/alice/studies/sweep-a", "owners/alice/studies/sweep-b"]
    assert report.studies_read == 3 and report.kept_studies == 2 and report.kept_trials == 11
    assert report.skipped["other_metric"] == 1 and report.metrics_found == {"accuracy (MAXIMIZE)": 1}
    assert "2 of 3 studies kept (11 trials)" in report.summary()
    # A SQLAlchemy URL reads the same; bounds keep evenly spaced trials and the first studies.
    bounded = load_history(f"sqlite:///{history_db}", _problem(), max_studies=1, max_trials_per_study=3)
    (only,) = bounded.records
    assert [t.id for t in only.trials] == [1, 4, 6] and bounded.report.skipped["over_max_studies"] == 1
    assert bounded.content_sha256 != history.content_sha256
    assert load_history(history_db, _problem()).content_sha256 == history.content_sha256


def test_bad_histories_get_clear_messages(history_db, tmp_path):
    with pytest.raises(WarmStartError, match="no such history"):
        load_history(tmp_path / "missing.db", _problem())
    assert not (tmp_path / "missing.db").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("my experiments\n")
    with pytest.raises(WarmStartError, match="neither a Vizier SQLite datastore nor a study corpus"):
        load_history(notes, _problem())
    empty = tmp_path / "empty.db"
    _make_datastore(empty, [])
    with pytest.raises(WarmStartError, match="holds no studies"):
        load_history(empty, _problem())
    with pytest.raises(WarmStartError, match=r"objective 'val_acc' \(MAXIMIZE\).*found accuracy \(MAXIMIZE\) in 1 "
                                             r"study, loss \(MINIMIZE\) in 2 studies"):
        load_history(history_db, _problem("val_acc", MAX))
    with pytest.raises(WarmStartError, match=r"objective 'loss' \(MAXIMIZE\) \(same metric name and goal\)") as e:
        load_history(history_db, _problem("loss", MAX))
    assert "loss (MINIMIZE) in 2 studies" in str(e.value)


def test_an_unparseable_study_is_skipped_and_counted(tmp_path):
    good = [StudyRecord(f"s{i}", _problem(), make_trials([(0.1 * i, 0.2), (0.3, -0.4 * i)])) for i in range(2)]
    # Valid JSON and a valid Vizier study, but a trial the text codec cannot write (a
    # parameter outside the search space): pretraining would drop it without a word.
    stray = vz.Trial(parameters={"x0": 0.1, "x1": 0.2, "x9": 1.0}, id=1)
    stray.complete(vz.Measurement({"loss": 1.0}))
    corpus = tmp_path / "history.jsonl"
    write_corpus(corpus, [*good, StudyRecord("stray", _problem(), [stray])])
    lines = corpus.read_bytes().splitlines(keepends=True)
    corpus.write_bytes(lines[0] + b'{"format": "vizier-omnipred-study", "version": 1, "name": "broken"}\n'
                       + b"\x00\xff not json\n" + lines[1] + lines[2])
    history = load_history(corpus, _problem())
    assert [r.name for r in history.records] == ["s0", "s1"]
    assert history.report.skipped["unparseable"] == 3 and history.report.studies_read == 5
    assert any("history.jsonl:2" in note for note in history.report.notes)
    assert any(note.startswith("stray:") and "x9" in note for note in history.report.notes)
    # A folder of corpus files reads the same; a history of nothing but bad lines is an error.
    folder = tmp_path / "folder"
    folder.mkdir()
    with gzip.open(folder / "part.jsonl.gz", "wb") as f:
        f.write(corpus.read_bytes())
    assert len(load_history(folder, _problem()).records) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"{not json\n" * 3)
    with pytest.raises(WarmStartError, match="neither a Vizier SQLite datastore nor a study corpus"):
        load_history(bad, _problem())


# ----- building the checkpoint --------------------------------------------------------------
def test_second_call_is_a_cache_hit_and_an_interrupted_build_resumes(history_db, tiny_checkpoint, tmp_path):
    config = _config(tmp_path)
    first = warm_start_checkpoint(history_db, _problem(), checkpoint=tiny_checkpoint, config=config, progress=False)
    assert not first.cached and (first.path / WEIGHTS_FILE).is_file()
    assert first.report.kept_studies == 2
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}
    second = warm_start_checkpoint(history_db, _problem(), checkpoint=tiny_checkpoint, config=config, progress=False)
    assert second.cached and second.path == first.path and second.key == first.key
    assert {p.name: p.stat().st_mtime_ns for p in second.path.iterdir()} == mtimes  # nothing retrained or rewritten
    # Settings outside the key (threads, device, checkpoint cadence) find the same entry.
    assert warm_start_checkpoint(history_db, _problem(), checkpoint=tiny_checkpoint, progress=False,
                                 config=_config(tmp_path, num_threads=1, checkpoint_every=1)).cached
    # A build killed after its last checkpoint (before 'final' and the done marker): the next
    # call resumes from that checkpoint instead of starting over; here nothing is left to train.
    entry = first.path.parent.parent
    (entry / "warm_start.json").unlink()
    shutil.rmtree(first.path)
    last = entry / "run" / "last" / WEIGHTS_FILE
    last_mtime = last.stat().st_mtime_ns
    again = warm_start_checkpoint(history_db, _problem(), checkpoint=tiny_checkpoint, config=config, progress=False)
    assert not again.cached and again.path == first.path
    assert last.stat().st_mtime_ns == last_mtime  # no step trained again
    assert (again.path / WEIGHTS_FILE).read_bytes() == last.read_bytes()
    assert warm_start_checkpoint(history_db, _problem(), checkpoint=tiny_checkpoint, config=config,
                                 progress=False).cached


def test_designer_warm_started_from_a_datastore_suggests_valid_trials(history_db, tiny_checkpoint, tmp_path):
    problem = _problem()
    designer = OmniPredDesigner(
        problem, seed=0, history=history_db, checkpoint=tiny_checkpoint, warm_start=_config(tmp_path),
        num_seed_trials=1, num_samples=8, num_candidates=16, finetune_config=FinetuneConfig(max_epochs=2),
        work_dir=tmp_path / "work",
    )
    assert designer.warm_start.report.kept_studies == 2
    assert designer.regressor.pretrained  # the warm-started checkpoint, not the untrained base
    trials = []
    for i in range(3):
        (suggestion,) = designer.suggest(1)
        problem.search_space.assert_contains(suggestion.parameters)
        trial = suggestion.to_trial(i + 1)
        trial.complete(vz.Measurement({"loss": smooth_2d(trial.parameters["x0"].value, trial.parameters["x1"].value)}))
        trials.append(trial)
        designer.update(vza.CompletedTrials([trial]), vza.ActiveTrials([]))
    assert designer.num_fits >= 1
    # dump records the warm-started base (not its weights); a restored designer knows it.
    md = designer.dump()
    assert str(designer.warm_start.path) in md.ns("omnipred")["state"]
    restored = OmniPredDesigner(problem, seed=0, checkpoint=tiny_checkpoint, num_samples=8, num_candidates=16,
                                work_dir=tmp_path / "work")
    shutil.rmtree(tmp_path / "work")  # the fine-tuned weights are gone: refit from the study's warm base
    restored.load(md)
    assert restored.regressor.pretrained and len(restored.completed_trials) == 3
    with pytest.raises(ValueError, match="pass checkpoint="):
        OmniPredDesigner(problem, history=history_db, regressor=designer.regressor)
    with pytest.raises(WarmStartError, match="found accuracy"):
        OmniPredDesigner(_problem("val_acc", MAX), history=history_db, checkpoint=tiny_checkpoint,
                         warm_start=_config(tmp_path))


def test_service_study_warm_started_from_a_datastore(history_db, tiny_checkpoint, tmp_path):
    factory = service.OmniPredPolicyFactory(
        checkpoint=tiny_checkpoint, work_dir=tmp_path / "work", warm_start=_config(tmp_path),
        designer_kwargs={"num_seed_trials": 1, "num_samples": 8, "num_candidates": 16,
                         "finetune_config": FinetuneConfig(max_epochs=2)},
    )
    with service.start_server(tmp_path / "new.db", policy_factory=factory):
        config = _study_config("loss", MIN, algorithm="OMNIPRED")
        config.metadata.ns("omnipred")["history"] = str(history_db)
        study = clients.Study.from_study_config(config, owner="me", study_id="new")
        for _ in range(3):
            (trial,) = study.suggest(count=1)
            p = trial.parameters
            assert -3.0 <= p["x0"] <= 3.0 and -3.0 <= p["x1"] <= 3.0
            trial.complete(vz.Measurement({"loss": smooth_2d(p["x0"], p["x1"])}))
        assert [t.status for t in study.trials().get()] == [vz.TrialStatus.COMPLETED] * 3
        designer = factory.cached_designer(study.resource_name)
        assert designer.warm_start.report.kept_studies == 2 and designer.num_fits >= 1
        # A second study with the same history and objective shares the build (RAM, then disk).
        other = clients.Study.from_study_config(config, owner="me", study_id="other")
        (trial,) = other.suggest(count=1)
        assert factory.counters["warm_starts_built"] + factory.counters["warm_starts_cached"] == 1
        # A study whose objective the history does not have fails with the reason, in the client.
        wrong = _study_config("val_acc", MAX, algorithm="OMNIPRED")
        wrong.metadata.ns("omnipred")["history"] = str(history_db)
        study = clients.Study.from_study_config(wrong, owner="me", study_id="wrong")
        with pytest.raises(RuntimeError, match=r"no history study has the new study.*found accuracy \(MAXIMIZE\)"):
            study.suggest(count=1)


def test_cli_builds_then_reports_the_cached_checkpoint(history_db, tiny_checkpoint, tmp_path, capsys):
    args = ["warm-start", "--history", str(history_db), "--metric", "loss:min", "--checkpoint", str(tiny_checkpoint),
            "--steps", "2", "--batch-size", "8", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert cli.main(args) == 0
    assert "(built)" in capsys.readouterr().out
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "(cached)" in out and "2 of 3 studies kept" in out
    assert cli.main(["warm-start", "--history", str(tmp_path / "nope"), "--metric", "loss:min"]) == 2
    assert "no such history" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / "cache")


def test_replay_rehearses_the_tables_the_base_was_pretrained_on(history_db, tiny_checkpoint, tmp_path):
    import json

    from vizier_omnipred.warm_start import replayed_datasets

    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoint, base)
    assert replayed_datasets(base) == ()  # no saved pretraining config: nothing to rehearse
    (base / "pretrain_config.json").write_text(json.dumps({"hpobench_datasets": ["kc1"]}))
    assert replayed_datasets(base) == ("kc1",)
    plain = warm_start_checkpoint(history_db, _problem(), checkpoint=base, config=_config(tmp_path, replay_trials=0),
                                  progress=False)
    rehearsed = warm_start_checkpoint(history_db, _problem(), checkpoint=base, progress=False,
                                      config=_config(tmp_path, replay_trials=4))
    assert rehearsed.key != plain.key  # a different training mix is a different cache entry
    saved = json.loads((rehearsed.path.parent / "pretrain_config.json").read_text())
    assert saved["hpobench_datasets"] == ["kc1"] and saved["hpobench_trials"] == 4
    assert json.loads((plain.path.parent / "pretrain_config.json").read_text())["hpobench_datasets"] == []


def test_a_bfloat16_build_is_its_own_cache_entry_and_float32_keys_are_unchanged(history_db, tiny_checkpoint,
                                                                                tmp_path):
    """bfloat16 steps give other weights: a float32 entry must not be served for them, nor the
    other way round, and entries built before the setting existed keep their keys."""
    import json

    plain = _config(tmp_path)
    assert "precision" not in plain.key_fields()
    bf16 = warm_start_checkpoint(history_db, _problem(), checkpoint=tiny_checkpoint, progress=False,
                                 config=_config(tmp_path, precision="bfloat16"))
    assert not bf16.cached
    assert json.loads((bf16.path.parent / "pretrain_config.json").read_text())["precision"] == "bfloat16"
    first = warm_start_checkpoint(history_db, _problem(), checkpoint=tiny_checkpoint, config=plain, progress=False)
    assert not first.cached and first.key != bf16.key
    with pytest.raises(ValueError, match="precision must be one of"):
        _config(tmp_path, precision="float16")
