"""Hostile files: every reader gets a clear error naming the file, or a counted skip.

Property-based (hypothesis): corpus lines of random bytes, valid studies with fields
deleted or replaced by JSON of the wrong type, lines longer than the limit, plain and
gzip; a checkpoint's `config.json` and `omnipred.json` fuzzed the same way; SQLite files
of another schema; a pickle planted in a pretraining run folder. Readers are the real ones
(real torch, real transformers, real Vizier datastore), on real files.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import shutil
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vizier_omnipred import model as model_lib
from vizier_omnipred import service
from vizier_omnipred.cli import main
from vizier_omnipred.corpus.bbob import synthetic_bbob_studies
from vizier_omnipred.corpus.format import (
    CorpusError,
    CorpusStats,
    CorpusWarning,
    check_corpus_file,
    read_corpus,
    record_from_json,
    record_to_json,
    write_corpus,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def records():
    return list(synthetic_bbob_studies(3, 2, trials_per_study=(3, 4), dims=(1, 2)))


def _paths(obj, prefix=()):
    """Every (path to a value) inside a JSON object, for mutation."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, obj, max_depth: int = 99):
    """`obj` with one value deleted or replaced by arbitrary JSON (wrong type, wrong shape)."""
    obj = copy.deepcopy(obj)
    paths = [p for p in _paths(obj) if 0 < len(p) <= max_depth]
    path = draw(st.sampled_from(paths))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON)
    return obj


def _read_all(path, **kwargs):
    stats = CorpusStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = list(read_corpus(path, stats=stats, **kwargs))
    return out, stats, [w for w in caught if issubclass(w.category, CorpusWarning)]


# ----- corpus lines ---------------------------------------------------------------------


@FAST
@given(junk=st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=4),
       gz=st.booleans())
def test_random_byte_lines_are_skipped_and_counted(tmp_path_factory, records, junk, gz):
    good = [json.dumps(record_to_json(r)).encode() for r in records]
    lines = [good[0], *junk, good[1]]
    path = tmp_path_factory.mktemp("c") / ("c.jsonl.gz" if gz else "c.jsonl")
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    out, stats, caught = _read_all(path)
    bad = [j for j in junk if j.strip()]
    # Random bytes that happen to be a whole study cannot occur at this size; all are skipped.
    assert [r.name for r in out] == [r.name for r in records]
    assert stats.skipped_lines == len(bad) == len(caught)
    assert all(str(path) in str(w.message) for w in caught)
    if bad:
        first_bad = 2 + next(i for i, j in enumerate(junk) if j.strip())
        with pytest.raises(CorpusError, match=f"{path}:{first_bad}:"):
            list(read_corpus(path, on_error="raise"))


@FAST
@given(data=st.data())
def test_wrong_types_and_missing_fields_give_a_record_or_a_corpus_error(records, data):
    obj = data.draw(mutated(record_to_json(records[0])))
    try:
        record = record_from_json(obj)
    except CorpusError as e:
        assert str(e)  # a message, raised as the reader's own error (never KeyError, AttributeError...)
    else:
        assert record.name


@FAST
@given(data=st.data())
def test_a_mutated_line_in_a_file_is_read_or_skipped_with_its_line_number(tmp_path_factory, records, data):
    obj = data.draw(mutated(record_to_json(records[0])))
    path = tmp_path_factory.mktemp("c") / "c.jsonl"
    path.write_text(json.dumps(obj) + "\n" + json.dumps(record_to_json(records[1])) + "\n")
    out, stats, caught = _read_all(path)
    assert out[-1].name == records[1].name
    assert len(out) + stats.skipped_lines == 2
    assert all(f"{path}:1:" in str(w.message) for w in caught)


@pytest.mark.parametrize("gz", [False, True])
def test_huge_lines_are_skipped_counted_and_the_rest_is_read(tmp_path, records, gz):
    limit = 4096
    huge = b'{"format": "vizier-omnipred-study", "name": "' + b"x" * (5 * limit) + b'"}'
    good = [json.dumps(record_to_json(r)).encode() for r in records]
    assert all(len(g) < limit for g in good)
    data = b"\n".join([good[0], huge, b"y" * (3 * limit), good[1]]) + b"\n"
    path = tmp_path / ("c.jsonl.gz" if gz else "c.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    out, stats, caught = _read_all(path, max_line_bytes=limit)
    assert [r.name for r in out] == [r.name for r in records]
    assert stats.skipped_lines == 2
    assert f"{path}:2: line longer than {limit} bytes" in str(caught[0].message)


def test_a_file_that_is_not_a_corpus_is_named_with_what_it_is_not(tmp_path, records):
    cases = {
        "table.csv": (b"a,b\n1,2\n", "line 1 is not JSON"),
        "weights.bin": (bytes(range(128, 256)) * 4, "not UTF-8"),
        "other.jsonl": (b'{"hello": "world"}\n', "line 1: not a 'vizier-omnipred-study' object"),
        "empty.jsonl": (b"", "empty corpus file"),
        "cut.jsonl.gz": (gzip.compress(b"x" * 1000)[:15], "not a readable corpus"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorpusError, match=message) as info:
            check_corpus_file(path)
        assert str(path) in str(info.value)
    good = tmp_path / "good.jsonl"
    write_corpus(good, records)
    check_corpus_file(good)
    with pytest.raises(CorpusError, match="is a directory"):
        check_corpus_file(tmp_path)


def test_cli_pretrain_on_a_non_corpus_prints_one_line_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("these are my notes\n")
    argv = ["pretrain", "--out", str(tmp_path / "run"), "--corpus", str(bad), "--preset", "tiny", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{bad}: not a 'vizier-omnipred-study' corpus: line 1 is not JSON" in err
    with pytest.raises(CorpusError):  # --debug: the exception itself, for a traceback
        main(["--debug", *argv])
    with pytest.raises(CorpusError):
        main([*argv, "--debug"])
    assert not (tmp_path / "run").exists()  # refused before any work


# ----- checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_regressor_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    tiny_regressor_factory(0).save(path)
    return path


def _fuzz_checkpoint_file(tmp_path_factory, checkpoint, name, data, max_depth: int = 99):
    original = json.loads((checkpoint / name).read_text())
    obj = data.draw(mutated(original, max_depth))
    ckpt = tmp_path_factory.mktemp("fuzzed") / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    (ckpt / name).write_text(json.dumps(obj))
    try:
        model_lib.load_checkpoint(ckpt)
    except model_lib.CheckpointError as e:
        assert str(ckpt) in str(e)  # names the checkpoint's file
        return str(e)
    return None


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_omnipred_json_loads_or_raises_checkpoint_error(tmp_path_factory, checkpoint, data):
    _fuzz_checkpoint_file(tmp_path_factory, checkpoint, model_lib.META_FILE, data)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_config_json_loads_or_raises_checkpoint_error(tmp_path_factory, checkpoint, data):
    _fuzz_checkpoint_file(tmp_path_factory, checkpoint, model_lib.CONFIG_FILE, data)


@pytest.mark.parametrize("name", [model_lib.META_FILE, model_lib.CONFIG_FILE])
@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"[1, 2, 3]", b"[" * 100_000, b""])
def test_unreadable_checkpoint_json_names_the_file(tmp_path, checkpoint, name, content):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    (ckpt / name).write_bytes(content)
    with pytest.raises(model_lib.CheckpointError, match=str(ckpt / name)):
        model_lib.load_checkpoint(ckpt)


def test_a_damaged_model_config_names_config_json(tmp_path, checkpoint):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    config = json.loads((ckpt / model_lib.CONFIG_FILE).read_text())
    config["d_model"] = "sixty-four"
    (ckpt / model_lib.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(model_lib.CheckpointError, match=f"{ckpt / model_lib.CONFIG_FILE}: 'd_model'"):
        model_lib.load_checkpoint(ckpt)


# ----- databases ------------------------------------------------------------------------


def test_server_refuses_a_sqlite_file_of_another_schema_and_leaves_it_alone(tmp_path):
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    before = other.read_bytes()
    with pytest.raises(service.DatastoreError, match=f"{other}: a SQLite database of another schema"):
        service.start_server(other)
    assert other.read_bytes() == before
    text = tmp_path / "notes.db"
    text.write_text("not sqlite\n")
    with pytest.raises(service.DatastoreError, match=f"{text}: not a SQLite database"):
        service.start_server(text)
    with service.start_server(tmp_path / "new.db"):  # a new file is fine, and so is reopening it
        pass
    with service.start_server(tmp_path / "new.db"):
        pass


def test_cli_export_of_another_schema_prints_one_line_and_exits_2(tmp_path, capsys):
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE users (id INTEGER)")
    assert main(["export", str(other), str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Vizier datastore" in err and str(other) in err


# ----- no code from data ----------------------------------------------------------------


class _Payload:
    """Unpickling this would run `open(marker, 'w')`: it creates a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_in_a_run_folder_is_refused(tmp_path, capsys):
    from vizier_omnipred.pretraining import STATE_FILE, PretrainConfig, load_trainer_state, pretrain

    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, synthetic_bbob_studies(5, 6, trials_per_study=(5, 8), dims=(1, 2)))
    out = tmp_path / "run"
    config = dict(out_dir=str(out), corpus=(str(corpus),), preset="tiny", steps=2, batch_size=4,
                  shuffle_buffer=8, warmup_steps=1, eval_every=1000, checkpoint_every=1)
    pretrain(PretrainConfig(**config), progress=False)
    state_file = out / "last" / STATE_FILE
    assert load_trainer_state(state_file)["step"] == 2  # a genuine state loads

    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    genuine = torch.load(state_file, weights_only=True)
    torch.save({**genuine, "extra": _Payload(marker)}, buf)
    state_file.write_bytes(buf.getvalue())
    with pytest.raises(model_lib.CheckpointError, match=f"{state_file}: refused") as info:
        pretrain(PretrainConfig(**{**config, "steps": 4}), progress=False)
    assert "GLOBAL" in str(info.value)  # names what the pickle tried to import
    assert not marker.exists()
    argv = ["pretrain", "--out", str(out), "--corpus", str(corpus), "--preset", "tiny", "--steps", "4",
            "--batch-size", "4", "--shuffle-buffer", "8", "--warmup-steps", "1", "--eval-every", "1000",
            "--checkpoint-every", "1", "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    assert "refused to load trainer state" in capsys.readouterr().err
    assert not marker.exists()
    assert os.listdir(out / "last")  # the run folder is left as it was


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_tokenizer_json_loads_or_raises_checkpoint_error(tmp_path_factory, checkpoint, data):
    from vizier_omnipred.vocab import TOKENIZER_FILE

    # Its structure, not each of its hundreds of merges: values at most 3 levels deep.
    _fuzz_checkpoint_file(tmp_path_factory, checkpoint, TOKENIZER_FILE, data, max_depth=3)
