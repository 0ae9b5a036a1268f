"""Corpus format, sources and command line, on real Vizier objects and real data."""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import math
import os
import re
import shutil
import sqlite3

import numpy as np
import pytest
from vizier import pyvizier as vz
from vizier.testing import test_studies

from vizier_omnipred.corpus import bbob as bbob_corpus
from vizier_omnipred.corpus import cli as corpus_cli
from vizier_omnipred.corpus.bbob import BBOB_FUNCTIONS, random_bbob_task, synthetic_bbob_studies
from vizier_omnipred.corpus.datastore import studies_from_datastore, studies_from_folder
from vizier_omnipred.corpus.format import (
    CorpusError,
    CorpusStats,
    CorpusWarning,
    StudyRecord,
    in_validation_split,
    read_corpus,
    split_train_validation,
    summarize_corpus,
    write_corpus,
)
from vizier_omnipred.corpus.hpobench import (
    HPOBENCH_DATASETS,
    HPOBenchExperimenter,
    hpobench_problem,
    hpobench_studies,
    hpobench_table,
)

# ------------------------------------------------------------------ helpers


def _trial(tid, params, metrics=None, infeasible=None):
    trial = vz.Trial(id=tid, parameters=params)
    trial.complete(vz.Measurement(metrics=metrics or {}), infeasibility_reason=infeasible)
    return trial


def _conditional_record() -> StudyRecord:
    problem = vz.ProblemStatement(
        search_space=test_studies.conditional_automl_space(),
        metric_information=test_studies.metrics_all_constrained(),
    )
    problem.metadata["description"] = 'modèle «DNN», "quoted", commas, colons: 学习'
    problem.metadata.ns("team").ns("sub")["owner"] = "zoë"
    deep = {
        "model_type": "dnn",
        "learning_rate": 0.01,
        "optimizer_type": "adam",
        "use_special_logic": "True",
        "special_logic_parameter": 2.5,
    }
    trials = [
        _trial(1, deep, {"auc": 0.8, "crossentropy": math.nan, "gt2": 3.0, "lt2": 1.0}),
        _trial(2, {"model_type": "linear", "learning_rate": 0.5}, infeasible="out of memory"),
        _trial(3, {"model_type": "dnn", "learning_rate": 0.001, "optimizer_type": "evolution"},
               {"auc": 0.7}),  # other metrics missing
    ]  # fmt: skip
    trials[0].metadata["note"] = "ünïcödé"
    return StudyRecord(name="conditional-é", problem=problem, trials=trials)


def _unicode_record() -> StudyRecord:
    problem = vz.ProblemStatement()
    root = problem.search_space.root
    root.add_float_param("学习率", 1e-5, 1.0, scale_type=vz.ScaleType.LOG)
    root.add_int_param("größe", 1, 10)
    root.add_categorical_param('a,b:"c"', ["π", "x y", "{}"])
    root.add_discrete_param("bits", [8, 16, 32])
    problem.metric_information.append(
        vz.MetricInformation("précision", goal=vz.ObjectiveMetricGoal.MAXIMIZE)
    )
    trials = [
        _trial(k + 1, {"学习率": 10.0 ** -k, "größe": k + 1, 'a,b:"c"': c, "bits": b}, {"précision": y})
        for k, (c, b, y) in enumerate([("π", 8, 0.5), ("x y", 16, -math.inf), ("{}", 32, 1e30)])
    ]  # fmt: skip
    return StudyRecord(name="unicode ✓", problem=problem, trials=trials)


def _metric_values(trial):
    if trial.final_measurement is None:  # Vizier's service completes infeasible trials so
        return {}
    return {k: m.value for k, m in trial.final_measurement.metrics.items()}


def _assert_same_record(a: StudyRecord, b: StudyRecord) -> None:
    assert a.name == b.name
    assert a.problem == b.problem
    assert len(a.trials) == len(b.trials)
    for ta, tb in zip(a.trials, b.trials):
        assert ta.id == tb.id
        assert ta.parameters == tb.parameters
        assert ta.infeasible == tb.infeasible
        assert ta.infeasibility_reason == tb.infeasibility_reason
        assert ta.status == tb.status
        assert ta.metadata == tb.metadata
        va, vb = _metric_values(ta), _metric_values(tb)
        assert va.keys() == vb.keys()
        for key in va:
            assert va[key] == vb[key] or (math.isnan(va[key]) and math.isnan(vb[key]))


def _corpus_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vizier-omnipred")
    corpus_cli.add_cli(parser.add_subparsers(dest="command"))
    return parser


def _run_cli(argv: list[str]) -> int:
    args = _corpus_parser().parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------ format


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_round_trip_conditional_nan_infeasible_unicode(tmp_path, suffix):
    records = [_conditional_record(), _unicode_record()]
    path = tmp_path / f"corpus{suffix}"
    assert write_corpus(path, records) == 2

    stats = CorpusStats()
    back = list(read_corpus(path, stats=stats))
    assert len(back) == 2
    for a, b in zip(records, back):
        _assert_same_record(a, b)
    # The nested conditional child and the metric ranges are what Vizier's converter drops.
    logic = back[0].problem.search_space.get("model_type")
    assert back[0].problem.metric_information == records[0].problem.metric_information
    assert "use_special_logic" in str(logic)
    assert stats.studies == 2 and stats.trials == 6
    assert stats.infeasible_trials == 1
    assert stats.nan_values == 2  # NaN crossentropy and -inf précision
    assert stats.missing_values == 3  # trial 3 reports auc only
    assert stats.skipped_lines == 0

    # Readable without this package: plain (gzip +) JSON with the documented envelope.
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert first["format"] == "vizier-omnipred-study" and first["version"] == 1
    assert first["name"] == "conditional-é"
    assert first["trials"][0]["final_measurement"]["metrics"][1]["value"] == "NaN"
    assert first["trials"][1]["state"] == "INFEASIBLE"


def test_fast_json_codec_matches_protobuf():
    from google.protobuf import json_format
    from vizier._src.service import study_pb2
    from vizier.service import pyvizier as svz

    from vizier_omnipred.corpus import format as fmt

    trials = list(_conditional_record().trials) + list(_unicode_record().trials)
    trials[0].measurements.append(vz.Measurement(metrics={"auc": 0.5}, steps=7, elapsed_secs=3))
    for trial in trials:
        proto = svz.TrialConverter.to_proto(trial)
        general = json_format.MessageToDict(proto, preserving_proto_field_name=True)
        assert json.dumps(fmt._trial_json_fast(proto)) == json.dumps(general)
        assert fmt._trial_proto_fast(general) == json_format.ParseDict(general, study_pb2.Trial())


def test_truncated_and_corrupt_lines_are_skipped_with_warning(tmp_path):
    records = list(synthetic_bbob_studies(1, 3, trials_per_study=(5, 8), dims=(2, 3)))
    path = tmp_path / "corpus.jsonl"
    write_corpus(path, records)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the last line is cut off mid-way

    stats = CorpusStats()
    with pytest.warns(CorpusWarning, match=r"corpus\.jsonl:3: .*cut off"):
        back = list(read_corpus(path, stats=stats))
    assert [r.name for r in back] == [r.name for r in records[:2]]
    assert stats.skipped_lines == 1 and stats.studies == 2
    assert summarize_corpus(path).skipped_lines == 1
    with pytest.raises(CorpusError, match=r"corpus\.jsonl:3"):
        list(read_corpus(path, on_error="raise"))

    # A corrupt line in the middle costs that line only.
    lines = data.split(b"\n")
    path.write_bytes(b"\n".join([lines[0], b'{"format": "something else"}', b"\xff\xfe", *lines[1:]]))
    with pytest.warns(CorpusWarning) as caught:
        back = list(read_corpus(path))
    assert [r.name for r in back] == [r.name for r in records]
    assert {re.search(r"corpus\.jsonl:(\d+):", str(w.message))[1] for w in caught} == {"2", "3"}

    # A truncated gzip stream gives back every study before the cut.
    gz = tmp_path / "corpus.jsonl.gz"
    write_corpus(gz, records)
    gz.write_bytes(gz.read_bytes()[:-30])
    with pytest.warns(CorpusWarning, match=r"corpus\.jsonl\.gz:3: .*truncated"):
        back = list(read_corpus(gz))
    assert [r.name for r in back] == [r.name for r in records[:2]]


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    records = list(synthetic_bbob_studies(2, 2, trials_per_study=(3, 4)))
    write_corpus(path, records)
    before = path.read_bytes()

    def failing():
        yield records[0]
        raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="disk full"):
        write_corpus(path, failing())
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["corpus.jsonl.gz"]  # no temporary file left
    # Same records, same bytes (gzip header without time stamp).
    write_corpus(path, records)
    assert path.read_bytes() == before


def test_split_is_deterministic_by_name_hash():
    names = [f"study-{i}" for i in range(2000)]
    train, val = split_train_validation(names, 0.1)
    rtrain, rval = split_train_validation(list(reversed(names)), 0.1)
    assert (rtrain[::-1], rval[::-1]) == (train, val)  # membership does not depend on order
    assert set(train) | set(val) == set(names) and not set(train) & set(val)
    assert 140 < len(val) < 260
    assert split_train_validation(names, 0.1) == (train, val)
    assert split_train_validation(names, 0.1, salt="other")[1] != val
    # Pinned: the split must not change between processes, machines or releases.
    assert in_validation_split("owners/alice/studies/resnet", 0.1)  # hash 0.082
    assert not in_validation_split("hpobench-car", 0.45)  # hash 0.454
    assert in_validation_split("hpobench-car", 0.46)
    records = [StudyRecord(name=n, problem=vz.ProblemStatement(), trials=()) for n in names[:50]]
    rtrain, rval = split_train_validation(records, 0.3)
    assert [r.name for r in rval] == split_train_validation(names[:50], 0.3)[1]


# ------------------------------------------------------------------ BBOB


def test_bbob_functions_are_all_of_vizier():
    from vizier._src.benchmarks.experimenters.synthetic import bbob

    in_module = {
        name
        for name, fn in inspect.getmembers(bbob, inspect.isfunction)
        if list(inspect.signature(fn).parameters) == ["arr", "seed"]
    }
    assert set(BBOB_FUNCTIONS) == in_module and len(BBOB_FUNCTIONS) == 24


def test_synthetic_studies_reproducible_by_seed():
    kwargs = dict(trials_per_study=(5, 12), dims=(1, 5))
    a = list(synthetic_bbob_studies(7, 5, **kwargs))
    b = list(synthetic_bbob_studies(7, 5, **kwargs))
    assert a == b
    assert list(synthetic_bbob_studies(7, 3, **kwargs)) == a[:3]  # independent of num_studies
    c = list(synthetic_bbob_studies(8, 5, **kwargs))
    assert [r.problem for r in c] != [r.problem for r in a]
    assert len({r.name for r in a + c}) == 10


def test_sparse_studies_have_parameters_that_do_not_matter():
    from vizier_omnipred.corpus import bbob as bbob_corpus

    kwargs = dict(trials_per_study=(5, 8), dims=(2, 6))
    dense = list(synthetic_bbob_studies(3, 24, **kwargs))
    assert dense == list(synthetic_bbob_studies(3, 24, sparse_fraction=0.0, **kwargs))  # as before the option
    sparse = list(synthetic_bbob_studies(3, 24, sparse_fraction=1.0, **kwargs))
    # Only the weights differ: the same spaces and parameter values, other objective values.
    assert [r.problem for r in sparse] == [r.problem for r in dense]
    assert [[t.parameters for t in r.trials] for r in sparse] == [[t.parameters for t in r.trials] for r in dense]
    changed = sum(
        any(a.final_measurement.metrics != b.final_measurement.metrics for a, b in zip(r.trials, q.trials))
        for r, q in zip(sparse, dense)
    )
    assert changed >= 12
    with pytest.raises(ValueError, match="sparse_fraction"):
        next(synthetic_bbob_studies(0, 1, sparse_fraction=1.5))

    rng = np.random.default_rng(0)
    for function_name in ("Sphere", "RosenbrockRotated", "Rastrigin"):
        for dim in (2, 5, 8):
            weights = bbob_corpus._draw_relevance(rng, dim, function_name)
            active = np.flatnonzero(weights)
            assert bbob_corpus.min_dimension(function_name) <= len(active) <= dim
            assert weights.max() == 1.0 and np.all(weights[active] >= 0.1)
    # A parameter of weight 0 does not move y; one of weight 1 does.
    study = bbob_corpus._draw_study(np.random.default_rng(1), "Sphere", (4, 4))
    study = bbob_corpus._with_weights(study, np.array([1.0, 0.0, 0.0, 0.0]))
    point = {c.config.name: c.value_from_unit(0.3) for c in study.coordinates}
    for k, c in enumerate(study.coordinates):
        moved = dict(point, **{c.config.name: c.value_from_unit(0.9)})
        assert (study.objective(moved) == study.objective(point)) == (k > 0)


def test_synthetic_studies_cover_all_functions_and_look_real():
    records = [
        r
        for seed in (0, 1)
        for r in synthetic_bbob_studies(seed, 24, trials_per_study=(3, 6), dims=(1, 6))
    ]
    for seed_records in (records[:24], records[24:]):
        assert {r.problem.metadata["bbob_function"] for r in seed_records} == set(BBOB_FUNCTIONS)
    types, scales, goals, names = set(), set(), set(), set()
    for r in records:
        assert r.problem.metadata["description"].split(": ")[1].startswith("synthetic BBOB, ")
        (metric,) = r.problem.metric_information
        goals.add(metric.goal)
        for pc in r.problem.search_space.parameters:
            types.add(pc.type)
            scales.add(pc.scale_type)
            names.add(pc.name)
        assert 3 <= len(r.trials) <= 6
        for t in r.trials:
            assert t.status == vz.TrialStatus.COMPLETED
            r.problem.search_space.assert_contains(t.parameters)
            if not t.infeasible:
                assert math.isfinite(t.final_measurement.metrics[metric.name].value)
    assert types >= {vz.ParameterType.DOUBLE, vz.ParameterType.INTEGER,
                     vz.ParameterType.DISCRETE, vz.ParameterType.CATEGORICAL}  # fmt: skip
    assert vz.ScaleType.LOG in scales and len(goals) == 2
    assert "x0" in names and len(names) > 15


def test_cached_rotations_change_no_value():
    from vizier._src.benchmarks.experimenters.synthetic import bbob

    x = np.linspace(-4, 4, 6)
    for name in ("Rastrigin", "Lunacek", "Gallagher21Me"):
        plain = bbob_corpus.bbob_function(name, rotation_seed=123)(x)
        with bbob_corpus._cached_rotations():
            cached = [bbob_corpus.bbob_function(name, rotation_seed=123)(x) for _ in range(2)]
        assert cached == [plain, plain]
    assert bbob._R is bbob_corpus._original_rotation


def test_maximize_studies_negate_the_function():
    # Drawn studies keep the function's optimum: MAXIMIZE y = offset - scale * f.
    rng = np.random.default_rng(0)
    study = bbob_corpus._draw_study(rng, "Sphere", (3, 3))
    fn = bbob_corpus.bbob_function("Sphere", rotation_seed=study.rotation_seed)
    trials = bbob_corpus._trials(study, rng, 30)
    ys = [t.final_measurement.metrics[study.metric_name].value for t in trials if not t.infeasible]
    fs = [fn(np.array([c.z(t.parameters[c.config.name].value) for c in study.coordinates]))
          for t in trials if not t.infeasible]  # fmt: skip
    sign = -1 if study.goal == vz.ObjectiveMetricGoal.MAXIMIZE else 1
    np.testing.assert_allclose(ys, study.y_offset + sign * study.y_scale * np.array(fs))


def test_random_bbob_task_is_a_reproducible_vizier_experimenter():
    problem, experimenter = random_bbob_task(3, 4, "Rastrigin")
    assert problem.metadata["bbob_function"] == "Rastrigin"
    assert [p.name for p in problem.search_space.parameters] == ["x0", "x1", "x2", "x3"]
    trials = [vz.Trial(parameters={f"x{i}": 0.1 * i for i in range(4)}) for _ in range(2)]
    experimenter.evaluate(trials)
    values = [t.final_measurement.metrics["bbob_eval"].value for t in trials]
    assert math.isfinite(values[0]) and values[0] == values[1]
    _, again = random_bbob_task(3, 4, "Rastrigin")
    other = [vz.Trial(parameters={f"x{i}": 0.1 * i for i in range(4)})]
    again.evaluate(other)
    assert other[0].final_measurement.metrics["bbob_eval"].value == values[0]
    p2, _ = random_bbob_task(4, 1)
    assert p2.metadata["bbob_function"] in BBOB_FUNCTIONS


def test_a_bbob_dimension_past_the_bound_is_refused_before_building_its_rotation():
    # A d x d rotation at d = 100,000 would take 80 GB before anything else failed.
    from vizier_omnipred.corpus.bbob import MAX_DIMENSION, synthetic_bbob_studies

    for dim in (0, MAX_DIMENSION + 1, 100_000):
        with pytest.raises(ValueError, match="BBOB dimension"):
            random_bbob_task(0, dim, "Sphere")
    with pytest.raises(ValueError, match="BBOB dimension"):
        next(synthetic_bbob_studies(0, 1, dims=(2, 100_000)))
    with pytest.raises(ValueError, match="unknown BBOB function 'Nope'; valid: .*Rastrigin"):
        random_bbob_task(0, 2, "Nope")


# ------------------------------------------------------------------ HPOBench


def test_hpobench_problems_and_tables():
    from vizier_omnipred.corpus import hpobench

    assert len(HPOBENCH_DATASETS) == 8
    for dataset in HPOBENCH_DATASETS:
        problem = hpobench_problem(dataset)
        assert [p.name for p in problem.search_space.parameters] == [
            "alpha", "batch_size", "depth", "learning_rate_init", "width",
        ]  # fmt: skip
        (metric,) = problem.metric_information
        assert (metric.name, metric.goal) == ("val_acc", vz.ObjectiveMetricGoal.MAXIMIZE)
        assert problem.metadata["dataset"] == dataset
        _, values = hpobench._table_arrays(dataset, "val_acc")
        assert values.shape == (30000,) and np.isfinite(values).all()
        assert 0.0 <= values.min() < values.max() <= 1.0

    params, values = hpobench_table("car")
    assert len(params) == 30000 and values.shape == (30000,)
    problem = hpobench_problem("car")
    experimenter = HPOBenchExperimenter("car")
    rows = np.random.default_rng(0).choice(30000, 25, replace=False)
    trials = [vz.Trial(parameters=params[i]) for i in rows]
    for t in trials:
        problem.search_space.assert_contains(t.parameters)
    experimenter.evaluate(trials)
    np.testing.assert_allclose([t.final_measurement.metrics["val_acc"].value for t in trials],
                               values[rows])  # fmt: skip
    # Off-grid values snap to the nearest grid point (log scale for log grids).
    near = dict(params[rows[0]].as_dict(), alpha=params[rows[0]]["alpha"].value * 1.2)
    assert experimenter.lookup(vz.ParameterDict(near)) == values[rows[0]]


def test_hpobench_studies_round_trip(tmp_path):
    records = list(hpobench_studies(["kc1", "segment"], seed=1, max_trials_per_study=40))
    assert [r.name for r in records] == ["hpobench-kc1", "hpobench-segment"]
    assert all(len(r.trials) == 40 for r in records)
    again = list(hpobench_studies(["kc1"], seed=1, max_trials_per_study=40))
    assert again[0] == records[0]
    write_corpus(tmp_path / "h.jsonl.gz", records)
    for a, b in zip(records, read_corpus(tmp_path / "h.jsonl.gz")):
        _assert_same_record(a, b)
    with pytest.raises(ValueError, match="unknown HPOBench dataset"):
        list(hpobench_studies(["mnist"]))


# ------------------------------------------------------------------ datastore and CLI


@pytest.fixture
def vizier_sqlite_datastore(tmp_path, monkeypatch):
    """A real Vizier server on a SQLite file, filled through Vizier's client API."""
    from vizier._src.service import vizier_server
    from vizier.service import clients
    from vizier.service import pyvizier as svz

    db = tmp_path / "vizier.db"
    server = vizier_server.DefaultVizierServer(database_url=f"sqlite:///{db}")
    monkeypatch.setattr(clients.environment_variables, "server_endpoint", server.endpoint)
    try:
        flat = svz.StudyConfig(
            search_space=test_studies.flat_space_with_all_types(),
            metric_information=[vz.MetricInformation("loss", goal=vz.ObjectiveMetricGoal.MINIMIZE)],
            algorithm="RANDOM_SEARCH",
        )  # fmt: skip
        flat.metadata["description"] = "a real user's sweep"
        study = clients.Study.from_study_config(flat, owner="alice", study_id="sweep")
        params = {"lineardouble": -0.5, "logdouble": 0.1, "integer": 0, "categorical": "a",
                  "boolean": "True", "discrete_double": 1.0, "discrete_logdouble": 1e-5,
                  "discrete_int": 1}  # fmt: skip
        for k in range(4):
            study.request(vz.TrialSuggestion(parameters=dict(params, integer=k - 2)))
        # suggest() hands out the requested trials, now ACTIVE.
        suggestions = sorted(study.suggest(count=4), key=lambda t: t.id)
        assert [t.id for t in suggestions] == [1, 2, 3, 4]
        suggestions[0].complete(vz.Measurement(metrics={"loss": 1.25}))
        suggestions[1].complete(infeasible_reason="diverged")
        suggestions[2].complete(vz.Measurement(metrics={"loss": math.nan}))
        # suggestions[3] stays requested (active): not part of the corpus.

        conditional = svz.StudyConfig(
            search_space=test_studies.conditional_automl_space(),
            metric_information=[vz.MetricInformation("auc", goal=vz.ObjectiveMetricGoal.MAXIMIZE)],
        )  # fmt: skip
        study2 = clients.Study.from_study_config(conditional, owner="bob", study_id="automl")
        study2.request(vz.TrialSuggestion(parameters={"model_type": "linear", "learning_rate": 0.2}))
        (active,) = study2.suggest(count=1)
        active.complete(vz.Measurement(metrics={"auc": 0.75}))
        empty = clients.Study.from_study_config(flat, owner="bob", study_id="fresh")
        empty.request(vz.TrialSuggestion(parameters=params))
        yield db
    finally:
        server._server.stop(None)


def test_export_datastore_and_read_back(vizier_sqlite_datastore, tmp_path):
    db = vizier_sqlite_datastore
    mtime = os.stat(db).st_mtime_ns
    stats = CorpusStats()
    records = list(studies_from_datastore(db, stats=stats))
    assert [r.name for r in records] == ["owners/alice/studies/sweep", "owners/bob/studies/automl"]
    sweep, automl = records
    assert [t.id for t in sweep.trials] == [1, 2, 3]
    assert sweep.trials[0].final_measurement.metrics["loss"].value == 1.25
    assert sweep.trials[1].infeasible and sweep.trials[1].infeasibility_reason == "diverged"
    assert sweep.problem.metadata["description"] == "a real user's sweep"
    assert sweep.problem.search_space == test_studies.flat_space_with_all_types()
    assert automl.trials[0].parameters["model_type"].value == "linear"
    assert stats.studies == 2 and stats.empty_studies == 1 and stats.infeasible_trials == 1
    assert math.isnan(sweep.trials[2].final_measurement.metrics["loss"].value)
    assert stats.nan_values == 1 and stats.missing_values == 0
    assert os.stat(db).st_mtime_ns == mtime  # opened read-only

    out = tmp_path / "export.jsonl.gz"
    assert _run_cli(["export", str(db), str(out)]) == 0
    back = list(read_corpus(out))
    for a, b in zip(records, back, strict=True):
        _assert_same_record(a, b)
    assert len(list(studies_from_datastore(f"sqlite:///{db}"))) == 2  # a URL works too
    # Characters that mean something in URLs must not send SQLite to another (new) file.
    odd = tmp_path / "odd #?% dir"
    odd.mkdir()
    shutil.copy(db, odd / "my data.db")
    assert len(list(studies_from_datastore(odd / "my data.db"))) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(["export.jsonl.gz", "odd #?% dir", "vizier.db"])


def test_datastore_errors(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(CorpusError, match="no such Vizier datastore"):
        list(studies_from_datastore(missing))
    with pytest.raises(CorpusError, match="no such Vizier datastore"):
        list(studies_from_datastore(f"sqlite:///{missing}"))
    assert not missing.exists()  # SQLite did not create it

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
    with pytest.raises(CorpusError, match="not a Vizier datastore"):
        list(studies_from_datastore(other))
    with sqlite3.connect(other) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}  # nothing was added to the user's file

    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 100)
    with pytest.raises(CorpusError):
        list(studies_from_datastore(text))
    assert _run_cli(["export", str(missing), str(tmp_path / "x.jsonl")]) == 2


def test_studies_from_folder(tmp_path):
    records = list(synthetic_bbob_studies(5, 3, trials_per_study=(3, 4)))
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_corpus(tmp_path / "a" / "one.jsonl", records[:1])
    write_corpus(tmp_path / "a" / "b" / "two.jsonl.gz", records[1:])
    (tmp_path / "a" / "readme.txt").write_text("ignored")
    stats = CorpusStats()
    back = list(studies_from_folder(tmp_path / "a", stats=stats))
    assert sorted(r.name for r in back) == sorted(r.name for r in records)
    assert stats.studies == 3
    with pytest.raises(CorpusError, match="no such folder"):
        list(studies_from_folder(tmp_path / "nope"))


def test_build_corpus_cli(tmp_path, capsys):
    out = tmp_path / "pretrain.jsonl.gz"
    keep = "vehicle"
    excluded = [arg for d in HPOBENCH_DATASETS if d != keep for arg in ("--exclude", d)]
    argv = ["build-corpus", "--synthetic", "3", "--hpobench", *excluded, "--seed", "4",
            "--trials-per-study", "4,6", "--hpobench-max-trials", "30", str(out)]  # fmt: skip
    assert _run_cli(argv) == 0
    assert "4 studies" in capsys.readouterr().out
    names = [r.name for r in read_corpus(out)]
    assert names[:3] == [r.name for r in synthetic_bbob_studies(4, 3)]
    assert names[3:] == [f"hpobench-{keep}"]
    with pytest.raises(SystemExit):
        _corpus_parser().parse_args(["build-corpus", "--exclude", "mnist", str(out)])
    sparse = tmp_path / "sparse.jsonl"
    assert _run_cli(["build-corpus", "--synthetic", "3", "--seed", "4", "--sparse-fraction", "1", str(sparse)]) == 0
    assert list(read_corpus(sparse)) == list(synthetic_bbob_studies(4, 3, sparse_fraction=1.0))
    capsys.readouterr()
    assert _run_cli(["build-corpus", "--synthetic", "3", "--sparse-fraction", "2", str(sparse)]) == 2
    assert "--sparse-fraction must be in [0, 1]" in capsys.readouterr().err


def test_fine_tune_from_an_exported_datastore(vizier_sqlite_datastore, tmp_path, tiny_regressor_factory):
    """A user's Vizier history, exported, warm-starts the model on a new study."""
    from vizier_omnipred.training import FinetuneConfig

    out = tmp_path / "history.jsonl"
    assert _run_cli(["export", str(vizier_sqlite_datastore), str(out)]) == 0
    history = list(read_corpus(out))
    problem = vz.ProblemStatement(
        search_space=test_studies.flat_space_with_all_types(),
        metric_information=[vz.MetricInformation("loss", goal=vz.ObjectiveMetricGoal.MINIMIZE)],
    )
    problem.metadata["description"] = "the new study"
    new = vz.Trial(parameters=dict(history[0].trials[0].parameters), id=1)
    new.complete(vz.Measurement(metrics={"loss": 2.0}))
    reg = tiny_regressor_factory()
    report = reg.fit(problem, [new], prior_studies=history, config=FinetuneConfig(max_epochs=2))
    # history: sweep has 1 finite + 1 infeasible (used) and 1 NaN (excluded); automl has 1 finite
    assert report.num_prior_examples == 3 and report.num_train_examples == 1
    assert reg.predict([vz.TrialSuggestion(new.parameters)]).mean.shape == (1,)
