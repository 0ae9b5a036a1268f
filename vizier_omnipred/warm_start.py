"""Warm-start from a user's study history: continued pretraining on their past studies.

A user who has run Vizier studies before has the best possible prior for a new one: their
own search spaces, metric and metadata. `warm_start_checkpoint` turns that history into a
checkpoint once, and `OmniPredDesigner(history=...)` / the `OMNIPRED` service policy start
from it; the designer's usual fine-tune then tunes the new study.

The steps:

1. `load_history`: studies from a Vizier SQL datastore (SQLite file or SQLAlchemy URL), a
   corpus file (`.jsonl`, `.jsonl.gz`) or a folder of corpus files. A study is kept when
   one of its objectives has the name and goal of one of the new study's objectives; the
   others are skipped and counted by reason (`HistoryReport.skipped`), and so is a study
   that fails to parse: one bad study never stops a warm start. A study with several
   matching objectives becomes one record per objective (pretraining trains one metric per
   study). Cost is bounded here: at most `max_trials_per_study` trials of a study (evenly
   spaced over its trials, so the early exploration and the late exploitation both stay)
   and at most `max_studies` studies (the first ones in the source's order).
2. The cache key: SHA-256 of the kept studies' serialized content, the base checkpoint's
   weights and tokenizer, and the training settings. The same history, base and settings
   find the same cache entry (no training); a history that gained a study, another base or
   other settings build a new one.
3. `pretraining.pretrain` from the base checkpoint on the kept studies (plus optional
   synthetic ones), in the cache entry's `run/` folder: a build that is interrupted resumes
   from its last checkpoint on the next call. A marker file written after the final
   checkpoint says the entry is complete; the process holds a file lock on the entry while
   it builds, so two processes (two servers) asking for the same entry build it once.

Cost: `steps * batch_size` training examples, ~200 examples/s per CPU thread for the `small`
preset (docs/BENCHMARKS.md), so the default 200 steps of 64 take about 1 minute on one
thread; reading and tokenizing the history once is extra and small next to that.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from vizier import pyvizier as vz

from vizier_omnipred.cli_args import torch_device, torch_threads
from vizier_omnipred.corpus.format import (
    CorpusError,
    CorpusStats,
    CorpusWarning,
    StudyRecord,
    check_corpus_file,
    read_corpus,
    record_to_json,
    write_corpus,
)
from vizier_omnipred.designer_state import default_cache_root, file_fingerprint
from vizier_omnipred.text import TextCodec

_log = logging.getLogger(__name__)

__all__ = [
    "EXAMPLES_PER_SECOND_PER_THREAD",
    "History",
    "HistoryReport",
    "SKIP_REASONS",
    "WarmStartConfig",
    "WarmStartError",
    "WarmStartResult",
    "estimated_seconds",
    "load_history",
    "warm_start_checkpoint",
]

# Bump when what a cache entry holds, or how it is trained, changes: old entries are then
# not reused (they stay on disk until the user clears the cache).
WARM_START_VERSION = 1
CACHE_SUBDIR = "warm-start"
CORPUS_FILE = "history.jsonl.gz"
DONE_FILE = "warm_start.json"
RUN_DIR = "run"
# Training examples per second per CPU thread, `small` preset (docs/BENCHMARKS.md: 220-250
# on a quiet machine, less beside other jobs): what the cost estimate divides by.
EXAMPLES_PER_SECOND_PER_THREAD = 200.0
# Why a history study was not kept (the keys of `HistoryReport.skipped`).
SKIP_REASONS = ("other_metric", "other_goal", "unparseable", "empty", "over_max_studies")
_SQLITE_HEADER = b"SQLite format 3\x00"
_MAX_NOTES = 5


class WarmStartError(ValueError):
    """The history cannot warm-start the new study (names the source and what is wrong)."""


# ----- configuration --------------------------------------------------------------------
def _positive_or_none(instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 or None, got {value}")


@attrs.frozen
class WarmStartConfig:
    """How a history becomes a checkpoint; every field but the last four is in the cache key.

    The cost is `steps * batch_size` examples (see the module docstring); `steps` is the
    knob. `max_trials_per_study` and `max_studies` bound what is read, tokenized and kept in
    memory, and how much each study weighs in the mix.
    """

    steps: int = attrs.field(default=200, validator=attrs.validators.ge(1))
    batch_size: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    # Trials kept per history study, evenly spaced over its trials (None: all).
    max_trials_per_study: int | None = attrs.field(default=1000, validator=_positive_or_none)
    # Studies kept, the first ones in the source's order (None: all).
    max_studies: int | None = attrs.field(default=200, validator=_positive_or_none)
    # None: a tenth of the base preset's pretraining rate. At the full rate, 200 steps over
    # 300 history trials pulled a held-out dataset's zero-shot Spearman from 0.90 to 0.70;
    # at a tenth with `replay_trials`, 0.88 (docs/BENCHMARKS.md, "Warm start settings").
    learning_rate: float | None = attrs.field(default=None)
    # Synthetic BBOB studies mixed in: keep the base's general prior when the history is
    # small, at the cost of part of each batch.
    synthetic_studies: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    # Rehearsal: configurations of each HPOBench table the base checkpoint was pretrained on
    # (read from its saved pretraining config) mixed in, so the base does not forget what it
    # knew while it learns a small history (0: off). See `replayed_datasets`.
    replay_trials: int = attrs.field(default=300, validator=attrs.validators.ge(0))
    seed: int = 0
    # The training steps' forward pass (`PretrainConfig.precision`): "bfloat16" autocast trains
    # about 1.25x faster eagerly on a CPU with bfloat16 instructions, to other weights than float32.
    precision: str = attrs.field(default="float32")
    # Not in the cache key: they change where and how fast, not what is trained.
    num_threads: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # 0: torch's default
    device: str = "cpu"
    cache_dir: str | os.PathLike[str] | None = None  # None: $VIZIER_OMNIPRED_CACHE/warm-start
    checkpoint_every: int = attrs.field(default=100, validator=attrs.validators.ge(1))

    @precision.validator
    def _check_precision(self, attribute: attrs.Attribute, value: str) -> None:
        from vizier_omnipred.training import check_precision

        check_precision(value)

    @learning_rate.validator
    def _check_lr(self, attribute: attrs.Attribute, value: float | None) -> None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"learning_rate must be a positive number or None, got {value}")

    @property
    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        return default_cache_root() / CACHE_SUBDIR

    def key_fields(self) -> dict[str, Any]:
        return {"steps": self.steps, "batch_size": self.batch_size, "max_trials_per_study": self.max_trials_per_study,
                "max_studies": self.max_studies, "learning_rate": self.learning_rate,
                "synthetic_studies": self.synthetic_studies, "seed": self.seed,
                **({"replay_trials": self.replay_trials} if self.replay_trials else {}),
                **({"precision": self.precision} if self.precision != "float32" else {})}


def estimated_seconds(config: WarmStartConfig, threads: int | None = None) -> float:
    """Training time of a build at the measured rate of the `small` preset on CPU threads."""
    if threads is None:
        threads = config.num_threads
    if not threads:
        import torch

        threads = torch.get_num_threads()
    return config.steps * config.batch_size / (EXAMPLES_PER_SECOND_PER_THREAD * max(1, threads))


# ----- reading the history --------------------------------------------------------------
@attrs.frozen
class HistoryReport:
    """What was read from a history and what was kept (for logs, the CLI and tests).

    `skipped` counts studies by reason (`SKIP_REASONS`); `metrics_found` counts, over the
    studies skipped for their objective, each (metric name, goal) they have, so a message
    can say what the history holds; `notes` are the first messages about unparseable ones.
    """

    source: str
    objectives: tuple[tuple[str, str], ...]  # the new study's (name, goal)
    studies_read: int  # every study seen, parsed or not
    kept_studies: int
    kept_trials: int
    skipped: Mapping[str, int]
    metrics_found: Mapping[str, int]  # "name (GOAL)" -> studies
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items() if n)
        return (f"{self.source}: {self.kept_studies} of {self.studies_read} studies kept "
                f"({self.kept_trials} trials) for {_objectives_text(self.objectives)}"
                + (f"; skipped: {skipped}" if skipped else ""))

    def to_json(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["objectives"] = [list(o) for o in self.objectives]
        d["skipped"], d["metrics_found"], d["notes"] = dict(self.skipped), dict(self.metrics_found), list(self.notes)
        return d


@attrs.frozen
class History:
    """The kept studies (one objective each, trials bounded) and the report on reading them.

    `content_sha256`: over the kept studies' corpus JSON (keys sorted), in order: what the
    cache key takes from the history.
    """

    records: tuple[StudyRecord, ...]
    report: HistoryReport
    content_sha256: str


def _record_line(record: StudyRecord) -> bytes:
    text = json.dumps(record_to_json(record), ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      allow_nan=False)
    return text.encode("utf-8") + b"\n"


def _goal_name(goal: vz.ObjectiveMetricGoal) -> str:
    return "MAXIMIZE" if goal == vz.ObjectiveMetricGoal.MAXIMIZE else "MINIMIZE"


def _objectives_text(objectives: Sequence[tuple[str, str]]) -> str:
    return " or ".join(f"{name!r} ({goal})" for name, goal in objectives)


def _label(source: str | os.PathLike[str]) -> str:
    text = os.fspath(source)
    if "://" in text:
        try:  # never print a database password
            import sqlalchemy as sqla

            return sqla.engine.make_url(text).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - an unparsable URL is reported by the reader
            return text
    return text


def _studies(source: str | os.PathLike[str], label: str, stats: CorpusStats) -> Iterator[StudyRecord]:
    """Every study of the source (a CorpusError names what it is not)."""
    from vizier_omnipred.corpus.datastore import studies_from_datastore, studies_from_folder

    text = os.fspath(source)
    if "://" in text:
        yield from studies_from_datastore(text, stats=stats)
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise WarmStartError(
            f"{label}: no such history (expected a Vizier SQLite datastore, a SQLAlchemy URL, a corpus file "
            ".jsonl/.jsonl.gz or a folder of corpus files)"
        )
    if path.is_dir():
        if not any(path.rglob("*.jsonl")) and not any(path.rglob("*.jsonl.gz")):
            raise WarmStartError(f"{label}: a folder without corpus files (*.jsonl, *.jsonl.gz)")
        yield from studies_from_folder(path, stats=stats)
        return
    with open(path, "rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if header == _SQLITE_HEADER:
        yield from studies_from_datastore(path, stats=stats)
        return
    if not header:
        raise WarmStartError(f"{label}: an empty file, not a Vizier datastore or a corpus")
    try:
        check_corpus_file(path)
    except CorpusError as e:
        raise WarmStartError(f"{label}: neither a Vizier SQLite datastore nor a study corpus ({e})") from e
    yield from read_corpus(path, stats=stats)


def _usable(trial: vz.Trial, metric: str) -> bool:
    """A trial pretraining learns from: infeasible, or a finite value of the metric."""
    if trial.infeasible:
        return True
    value = trial.final_measurement.metrics.get(metric) if trial.final_measurement else None
    return value is not None and math.isfinite(value.value)


def _spaced(items: Sequence[Any], limit: int | None) -> list[Any]:
    """At most `limit` of `items`, evenly spaced, first and last included."""
    if limit is None or len(items) <= limit:
        return list(items)
    if limit == 1:
        return [items[0]]
    return [items[int(i * (len(items) - 1) / (limit - 1) + 0.5)] for i in range(limit)]


def _study_metadata(metadata: vz.Metadata, excluded: Sequence[str]) -> vz.Metadata:
    """The study's metadata without designer state (which the model never reads, and which
    for a study run by OMNIPRED holds every trial again)."""
    out = vz.Metadata()
    for ns, key, value in metadata.all_items():
        if not (len(ns) and ns[0] in excluded):
            out.abs_ns(ns)[key] = value
    return out


def _one_metric(record: StudyRecord, metric: vz.MetricInformation, name: str, limit: int | None,
                codec: TextCodec) -> StudyRecord:
    problem = vz.ProblemStatement(search_space=record.problem.search_space, metric_information=[metric],
                                  metadata=_study_metadata(record.problem.metadata,
                                                           codec.excluded_metadata_namespaces))
    trials = _spaced([t for t in record.trials if _usable(t, metric.name)], limit)
    return StudyRecord(name=name, problem=problem, trials=trials)


def load_history(
    source: str | os.PathLike[str],
    problem: vz.ProblemStatement,
    *,
    max_studies: int | None = None,
    max_trials_per_study: int | None = None,
) -> History:
    """The studies of `source` that can warm-start `problem`, and a report on the rest.

    `source`: a Vizier SQLite datastore file, a SQLAlchemy URL of one, a corpus file
    (`.jsonl`, `.jsonl.gz`) or a folder of corpus files. A study is kept when one of its
    objectives has the name and goal of one of `problem`'s objectives (only those metrics
    are kept); skipped, and counted in the report, are studies with other objectives
    ('other_metric', or 'other_goal' when the name matches but the goal does not), those
    that fail to parse ('unparseable'), those without a usable trial for the metric
    ('empty'), and those beyond `max_studies` ('over_max_studies').

    Raises `WarmStartError` when the source does not exist or is neither a datastore nor a
    corpus, holds no study, or holds none with the new study's objective (the message says
    which metrics and goals it found).
    """
    label = _label(source)
    codec = TextCodec()
    wanted = {m.name: m.goal for m in problem.metric_information if m.type.is_objective}
    objectives = tuple((name, _goal_name(goal)) for name, goal in wanted.items())
    if not wanted:
        raise WarmStartError("the new study has no objective metric to match history studies by")
    stats = CorpusStats()
    reasons: Counter[str] = Counter({r: 0 for r in SKIP_REASONS})
    found: Counter[str] = Counter()
    kept: list[StudyRecord] = []
    digest = hashlib.sha256()
    studies_kept = trials_kept = 0
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorpusWarning)
        try:
            for record in _studies(source, label, stats):
                metrics = [m for m in record.problem.metric_information if m.type.is_objective]
                matching = [m for m in metrics if wanted.get(m.name) == m.goal]
                if not matching:
                    reason = "other_goal" if any(m.name in wanted for m in metrics) else "other_metric"
                    reasons[reason] += 1
                    found.update({f"{m.name} ({_goal_name(m.goal)})" for m in metrics} or {"no objective"})
                    continue
                if max_studies is not None and studies_kept >= max_studies:
                    reasons["over_max_studies"] += 1
                    continue
                parts = [_one_metric(record, m, record.name if len(matching) == 1 else f"{record.name}#{m.name}",
                                     max_trials_per_study, codec) for m in matching]
                parts = [p for p in parts if p.trials]
                if not parts:
                    reasons["empty"] += 1
                    continue
                try:  # refuse here what pretraining would silently drop (text the codec cannot write)
                    lines = [_record_line(part) for part in parts]
                    for part in parts:
                        codec.serialize_many(part.problem, list(part.trials))
                except (ValueError, TypeError, CorpusError) as e:
                    reasons["unparseable"] += 1
                    notes.append(f"{record.name}: {type(e).__name__}: {e}")
                    continue
                for line in lines:
                    digest.update(line)
                kept.extend(parts)
                studies_kept += 1
                trials_kept += sum(len(p.trials) for p in parts)
        except CorpusError as e:
            raise WarmStartError(str(e)) from e
    for w in caught:
        if issubclass(w.category, CorpusWarning):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    reasons["unparseable"] += stats.skipped_studies + stats.skipped_lines
    reasons["empty"] += stats.empty_studies
    studies_read = studies_kept + sum(reasons.values())
    report = HistoryReport(source=label, objectives=objectives, studies_read=studies_read,
                           kept_studies=studies_kept, kept_trials=trials_kept, skipped=dict(reasons),
                           metrics_found=dict(sorted(found.items())), notes=tuple(notes[:_MAX_NOTES]))
    if not kept:
        raise WarmStartError(_nothing_kept_message(report))
    return History(records=tuple(kept), report=report, content_sha256=digest.hexdigest())


def _nothing_kept_message(report: HistoryReport) -> str:
    skipped = report.skipped
    if report.studies_read == 0:
        return f"{report.source}: the history holds no studies"
    if skipped["other_metric"] + skipped["other_goal"] == 0:
        detail = ", ".join(f"{n} {r}" for r, n in skipped.items() if n)
        note = f" (first: {report.notes[0]})" if report.notes else ""
        return (f"{report.source}: no usable study in the history ({detail}; 'empty': no completed trial with a "
                f"value of the metric){note}")
    found = ", ".join(f"{name} in {n} {'study' if n == 1 else 'studies'}" for name, n in report.metrics_found.items())
    return (f"{report.source}: no history study has the new study's objective {_objectives_text(report.objectives)} "
            f"(same metric name and goal); found {found}")


# ----- building the checkpoint ----------------------------------------------------------
@attrs.frozen
class WarmStartResult:
    """A warm-started checkpoint: where it is, what it was built from, and whether it was
    already in the cache (no training in this call)."""

    path: Path
    key: str
    report: HistoryReport
    cached: bool


def _base_identity(base: Path) -> str:
    from vizier_omnipred import model as model_lib

    missing = [n for n in (model_lib.WEIGHTS_FILE, model_lib.TOKENIZER_FILE) if not (base / n).is_file()]
    if not base.is_dir() or missing:
        raise model_lib.CheckpointError(
            f"{base}: not a checkpoint directory" + (f" (missing {', '.join(missing)})" if base.is_dir() else ""))
    return file_fingerprint(base / model_lib.WEIGHTS_FILE) + file_fingerprint(base / model_lib.TOKENIZER_FILE)


def _resolve_base(checkpoint: str | os.PathLike[str] | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint).expanduser().resolve()
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

    if not Path(SHIPPED_CHECKPOINT).is_dir():
        raise WarmStartError(f"no base checkpoint to warm-start from: the shipped checkpoint {SHIPPED_CHECKPOINT} "
                             "is not there; pass checkpoint=")
    return Path(SHIPPED_CHECKPOINT)


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on a cache entry across processes (and threads: one fd each)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds of one entry are not serialised
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _cached(entry: Path) -> Path | None:
    """The entry's final checkpoint if its build completed and its weights are intact."""
    from vizier_omnipred import model as model_lib

    try:
        done = json.loads((entry / DONE_FILE).read_text())
        final = entry / RUN_DIR / "final"
        if file_fingerprint(final / model_lib.WEIGHTS_FILE) == done["weights_sha256"]:
            return final
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def warm_start_checkpoint(
    source: str | os.PathLike[str],
    problem: vz.ProblemStatement,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    config: WarmStartConfig = WarmStartConfig(),
    progress: bool = True,
) -> WarmStartResult:
    """A checkpoint continued-pretrained on the studies of `source` that match `problem`.

    `checkpoint`: the base (None: the shipped checkpoint). Reads the history
    (`load_history`, bounded by the config), then returns the cache entry for (history
    content, base, config) if it is complete; otherwise writes the kept studies to the
    entry's corpus file and runs `pretraining.pretrain` from the base on it (resuming an
    interrupted build). `progress`: a line on stderr with what was kept and the estimated
    cost, then pretraining's progress bar.

    Raises `WarmStartError` for a history that cannot warm-start the study,
    `CheckpointError` for a missing or damaged base.
    """
    history = load_history(source, problem, max_studies=config.max_studies,
                           max_trials_per_study=config.max_trials_per_study)
    base = _resolve_base(checkpoint)
    key_payload = {"version": WARM_START_VERSION, "history": history.content_sha256, "base": _base_identity(base),
                   "config": config.key_fields()}
    key = hashlib.sha256(json.dumps(key_payload, sort_keys=True).encode()).hexdigest()
    report = history.report
    root = config.cache_root
    entry = root / key[:24]
    found = _cached(entry)
    if found is not None:
        _say(f"warm-start: {report.summary()}; using the cached checkpoint {found}", progress)
        return WarmStartResult(path=found, key=key, report=report, cached=True)
    root.mkdir(parents=True, exist_ok=True)
    with _entry_lock(root / f"{key[:24]}.lock"):
        found = _cached(entry)  # another process may have built it while this one waited
        if found is not None:
            _say(f"warm-start: {report.summary()}; using the checkpoint {found} built meanwhile", progress)
            return WarmStartResult(path=found, key=key, report=report, cached=True)
        final = _build(entry, history, base, key_payload, config, progress)
    return WarmStartResult(path=final, key=key, report=report, cached=False)


def _build(entry: Path, history: History, base: Path, key_payload: dict[str, Any], config: WarmStartConfig,
           progress: bool) -> Path:
    import torch

    from vizier_omnipred import model as model_lib
    from vizier_omnipred import pretraining

    entry.mkdir(parents=True, exist_ok=True)
    corpus = entry / CORPUS_FILE
    if not corpus.is_file():
        write_corpus(corpus, history.records)
    preset = model_lib.load_checkpoint(base).preset.name
    steps = config.steps
    replay = replayed_datasets(base) if config.replay_trials else ()
    pretrain_config = pretraining.PretrainConfig(
        out_dir=str(entry / RUN_DIR), corpus=(str(corpus),), synthetic_studies=config.synthetic_studies,
        hpobench_datasets=replay, hpobench_trials=config.replay_trials or 1,
        init_checkpoint=str(base), preset=preset, steps=steps, batch_size=config.batch_size,
        learning_rate=config.learning_rate or model_lib.get_preset(preset).learning_rate / 10, warmup_steps=min(100, max(1, steps // 10)),
        # Every history study trains: a held-out study would be a lost study, and the
        # designer's own fine-tune validates on the new study.
        validation_fraction=0.0, eval_every=steps, checkpoint_every=min(config.checkpoint_every, steps),
        device=config.device, num_threads=config.num_threads, seed=config.seed, precision=config.precision,
        # Batches drawn one at a time, as before length grouping. A history of one search space
        # falls in one length bucket, so grouping would save no padding and only draw another
        # random order; that order alone moved the main job's result (one build, one seed:
        # docs/BENCHMARKS.md, "Main job"), so the documented builds stay reproducible.
        length_grouping=1,
    )
    run = entry / RUN_DIR
    if (run / pretraining.CONFIG_FILE).is_file():
        try:
            pretraining.check_resumable(pretrain_config, run)
        except ValueError as e:  # e.g. the cache folder moved: the corpus path differs
            _log.warning("warm-start: cannot resume the build in %s (%s); starting it again", run, e)
            shutil.rmtree(run)
    report = history.report
    threads = config.num_threads or torch.get_num_threads()
    seconds = estimated_seconds(config, threads)
    cost = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    resuming = " (resuming an interrupted build)" if (run / "last").is_dir() else ""
    _say(f"warm-start: {report.summary()}; training {steps} steps of {config.batch_size} examples from {base} "
         f"on {threads} thread(s): about {cost} at {EXAMPLES_PER_SECOND_PER_THREAD:.0f} examples/s "
         f"per thread (small preset){resuming}; cache entry {entry}", progress)
    previous_threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        final = pretraining.pretrain(pretrain_config, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)  # pretrain sets the process-wide count
    done = {"key": key_payload, "report": report.to_json(), "base": str(base),
            "weights_sha256": file_fingerprint(final / model_lib.WEIGHTS_FILE),
            "seconds": round(time.perf_counter() - start, 1)}
    tmp = entry / f".{DONE_FILE}.tmp"
    tmp.write_text(json.dumps(done, indent=2, sort_keys=True))
    os.replace(tmp, entry / DONE_FILE)
    _say(f"warm-start: built {final} in {done['seconds']:.0f} s", progress)
    return final


def replayed_datasets(base: str | os.PathLike[str]) -> tuple[str, ...]:
    """The HPOBench datasets the base checkpoint's saved pretraining config names (its own run
    only): what a warm start rehearses. A base without a saved config has nothing to replay."""
    from vizier_omnipred.pretraining import saved_pretrain_config

    saved = saved_pretrain_config(base)
    return tuple((saved or {}).get("hpobench_datasets") or ())


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
    else:
        _log.info(message)


# ----- command line ---------------------------------------------------------------------
def add_cli(subparsers) -> None:
    from vizier_omnipred.training import PRECISIONS

    p = subparsers.add_parser(
        "warm-start",
        help="build (or find in the cache) a checkpoint continued-pretrained on your study history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--history", required=True,
                   help="Vizier SQLite datastore, SQLAlchemy URL, corpus file or folder of corpus files")
    p.add_argument("--metric", required=True, action="append", metavar="NAME:GOAL",
                   help="the new study's objective, e.g. loss:min or accuracy:max (repeat for several)")
    p.add_argument("--checkpoint", default=None, help="base checkpoint (default: the shipped one)")
    defaults = WarmStartConfig()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-trials-per-study", type=int, default=defaults.max_trials_per_study)
    p.add_argument("--max-studies", type=int, default=defaults.max_studies)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--synthetic-studies", type=int, default=0)
    p.add_argument("--num-threads", type=torch_threads, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="the training steps' forward pass (see `pretrain --precision`); part of the cache key")
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--cache-dir", default=None, help="default: $VIZIER_OMNIPRED_CACHE/warm-start")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_cli)


def _problem_from_metrics(specs: Sequence[str]) -> vz.ProblemStatement:
    goals = {"min": vz.ObjectiveMetricGoal.MINIMIZE, "minimize": vz.ObjectiveMetricGoal.MINIMIZE,
             "max": vz.ObjectiveMetricGoal.MAXIMIZE, "maximize": vz.ObjectiveMetricGoal.MAXIMIZE}
    problem = vz.ProblemStatement()
    for spec in specs:
        name, _, goal = spec.rpartition(":")
        if not name or goal.lower() not in goals:
            raise ValueError(f"--metric {spec!r}: expected NAME:min or NAME:max")
        problem.metric_information.append(vz.MetricInformation(name, goal=goals[goal.lower()]))
    return problem


def _run_cli(args) -> int:
    config = WarmStartConfig(steps=args.steps, batch_size=args.batch_size,
                             max_trials_per_study=args.max_trials_per_study, max_studies=args.max_studies,
                             learning_rate=args.learning_rate, synthetic_studies=args.synthetic_studies,
                             num_threads=args.num_threads, device=args.device, cache_dir=args.cache_dir,
                             precision=args.precision)
    result = warm_start_checkpoint(args.history, _problem_from_metrics(args.metric), checkpoint=args.checkpoint,
                                   config=config, progress=not args.no_progress)
    print(result.report.summary())
    print(f"checkpoint: {result.path} ({'cached' if result.cached else 'built'})")
    return 0
