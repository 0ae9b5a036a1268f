"""OmniPred in the Vizier service: a policy factory that adds `OMNIPRED`, and a server.

Vizier's server asks its policy factory for a new policy on *every* Suggest request, while
the factory object itself lives as long as the server. So the expensive parts live here,
in the factory:

* the checkpoint is loaded once, lazily, on the first `OMNIPRED` request (a server that only
  runs `RANDOM_SEARCH` never imports torch weights);
* each study keeps its designer in RAM between requests. The designer's `dump()` is also
  written to the study's metadata by `PartiallySerializableDesignerPolicy` (and fine-tuned
  weights go to a per-study folder under `work_dir`), so the datastore stays the source of
  truth: the RAM copy is reused only while the study's stored designer state is exactly
  what that copy dumped last; otherwise (server restart, another server wrote the study,
  cache eviction) the designer is restored from the metadata with `load()`.

Using it from clients (the algorithm field of `StudySpec` is a free string in Vizier 0.1.24;
`StudyConfig.algorithm` accepts any `str` besides its `Algorithm` enum, which has no
OMNIPRED member, and the server forwards the string untouched to the policy factory)::

    from vizier.service import clients, pyvizier as vz
    from vizier_omnipred import service

    server = service.start_server('runs/study.db')  # OMNIPRED + all of Vizier's algorithms
    config = vz.StudyConfig(algorithm='OMNIPRED')    # the string, not vz.Algorithm.<...>
    config.search_space.root.add_float_param('lr', 1e-4, 1e-1, scale_type=vz.ScaleType.LOG)
    config.metric_information.append(vz.MetricInformation('loss', goal=vz.ObjectiveMetricGoal.MINIMIZE))
    study = clients.Study.from_study_config(config, owner='me', study_id='s1')
    for trial in study.suggest(count=1): ...        # then trial.complete(vz.Measurement(...))
    server.stop()                                    # or: with service.start_server(...) as server:

A server started with Vizier's own `DefaultPolicyFactory` rejects the name with
"Algorithm OMNIPRED is not registered."

Many workers and faults. Vizier's servicer runs one Suggest per study at a time; the factory
adds a lock per study (kept when the RAM designer is evicted), so a study's RAM designer, its
weights folder and the designer state stored in the study always agree. Serve the factory with
`start_server` / `OmniPredVizierServer`, not Vizier's plain `DefaultVizierServer`: in Vizier
0.1.24 a policy that raises, or a server killed mid-Suggest, leaves the Suggest operation open in
the datastore, and the same client's next Suggest then polls it forever. `OmniPredVizierServer`
ends a failed operation with the error and, at start, closes the ones a killed server left open.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import hashlib
import logging
import os
import re
import sqlite3
import tempfile
import threading
import urllib.parse
import zlib
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import attr  # Vizier's server is an `attr.define` class; its subclass must be too.
import attrs
import grpc
from vizier import pythia
from vizier import pyvizier as vz
from vizier._src.algorithms.policies import designer_policy as dp
from vizier._src.service import constants as service_constants
from vizier._src.service import custom_errors
from vizier._src.service import policy_factory as vizier_policy_factory
from vizier._src.service import pythia_service, stubs_util, study_pb2, vizier_service, vizier_service_pb2, vizier_service_pb2_grpc
from vizier._src.service.vizier_server import DefaultVizierServer
from vizier.service import clients

from google.rpc import code_pb2, status_pb2

from vizier_omnipred.text import OMNIPRED_NS, POLICY_NS  # framework-free: no torch here

if TYPE_CHECKING:  # torch-heavy; imported on the first OMNIPRED request only.
    from vizier_omnipred.designer import OmniPredDesigner
    from vizier_omnipred.regressor import OmniPredRegressor
    from vizier_omnipred.warm_start import WarmStartConfig, WarmStartResult

_log = logging.getLogger(__name__)

ALGORITHM = "OMNIPRED"
# A study names its own history here: `config.metadata.ns('omnipred')['history'] = path`.
# The namespace is the package's own, which the model's text never reads.
HISTORY_NS = OMNIPRED_NS
HISTORY_KEY = "history"


# ----- the policy ---------------------------------------------------------------------


@attrs.define
class _StudySlot:
    """What the factory remembers about one study between Suggest requests."""

    lock: threading.Lock = attrs.field(factory=threading.Lock)
    designer: Any = None  # the OmniPredDesigner that produced `fingerprint`
    fingerprint: str | None = None  # of (problem without policy state, designer dump)


def _metadata_fingerprint(md: vz.Metadata, *, skip: str | None = None) -> list[tuple[str, str, bytes | str]]:
    """Items of `md` at and below its current namespace, relative and sorted.

    Values are compared as stored: strings as is, protos by their serialized bytes, so
    a dump compares equal to the same dump read back from the datastore. `skip` leaves
    out one top-level sub-namespace.
    """
    base = tuple(md.current_ns())
    items = []
    for rel in md.subnamespaces():
        if skip is not None and tuple(rel)[:1] == (skip,):
            continue
        for key, value in md.abs_ns(base + tuple(rel)).items():
            items.append((rel.encode(), key, value if isinstance(value, str) else value.SerializeToString()))
    return sorted(items)


def _problem_fingerprint(problem: vz.ProblemStatement) -> list[Any]:
    """The study as the designer sees it: search space, metrics, user metadata.

    The policy's own namespace changes on every request and is left out; a user editing
    the study's metadata (text the model reads) invalidates the RAM copy.
    """
    return [
        repr(problem.search_space),
        repr(list(problem.metric_information)),
        _metadata_fingerprint(problem.metadata, skip=POLICY_NS),
    ]


def _fingerprint(problem: vz.ProblemStatement, designer_md: vz.Metadata) -> str:
    payload = repr((_problem_fingerprint(problem), _metadata_fingerprint(designer_md)))
    return hashlib.sha256(payload.encode()).hexdigest()


class _CachedDesignerPolicy(dp.PartiallySerializableDesignerPolicy):
    """`PartiallySerializableDesignerPolicy` that hands its designer back to the factory.

    Vizier's policy restores the designer with `factory(problem)` + `load(metadata)` on
    every request. Here `_restore_designer` first checks the study's slot: if the stored
    designer state is the one the RAM designer dumped, that designer (with its fine-tuned
    model already in memory) is used as is.
    """

    def __init__(self, problem: vz.ProblemStatement, supporter: pythia.PolicySupporter, designer_factory, *,
                 slot: _StudySlot, seed: int | None, counters: collections.Counter):
        super().__init__(problem, supporter, designer_factory, seed=seed, policy_name="OmniPredDesignerPolicy")
        self._slot = slot
        self._counters = counters
        self._designer_md: vz.Metadata | None = None

    def _restore_designer(self, designer_metadata: vz.Metadata):
        slot = self._slot
        if slot.designer is not None and slot.fingerprint == _fingerprint(self._problem_statement, designer_metadata):
            self._counters["designers_reused"] += 1
            return slot.designer
        slot.designer, slot.fingerprint = None, None
        _log.info("OMNIPRED: restoring the designer from the study's metadata")
        designer = super()._restore_designer(designer_metadata)
        self._counters["designers_restored"] += 1
        return designer

    def dump(self) -> vz.Metadata:
        md = super().dump()
        self._designer_md = md.ns(self._ns_designer)
        return md

    def suggest(self, request: pythia.SuggestRequest) -> pythia.SuggestDecision:
        # Vizier's servicer already serialises Suggest per study (its per-study operation
        # lock, held from reading the study to writing the new trials). The study lock here
        # also covers callers that drive the factory directly from several threads: one
        # request at a time reads and writes the RAM designer and the weights folder.
        with self._slot.lock:
            try:
                decision = super().suggest(request)
            except BaseException:
                # The designer may be half-updated: never reuse it.
                self._slot.designer, self._slot.fingerprint = None, None
                raise
            self._slot.designer = self.designer
            self._slot.fingerprint = _fingerprint(self._problem_statement, self._designer_md)
            return decision


# ----- the factory --------------------------------------------------------------------


def _study_dir_name(study_name: str) -> str:
    """A folder name per study: readable, and unique even where sanitising collides."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", study_name).strip("_.")[:80] or "study"
    return f"{safe}-{zlib.crc32(study_name.encode()):08x}"


@attrs.define
class OmniPredPolicyFactory(pythia.PolicyFactory):
    """Vizier policy factory: `OMNIPRED` -> the OmniPred designer, other names -> Vizier's.

    Args:
      checkpoint: checkpoint directory; None means the package's shipped checkpoint (and,
        until one ships, whatever the designer falls back to).
      device: torch device for the model ('cpu', 'cuda').
      work_dir: where each study's designer keeps its fine-tuned weights (one subfolder
        per study). Set it for a server whose studies must survive a restart with their
        fine-tuned state; None uses a temporary folder that lives as long as the process.
      designer_kwargs: extra keyword arguments for `OmniPredDesigner` (acquisition,
        num_samples, num_seed_trials, ...). A `regressor` here replaces the checkpoint.
      seed: base seed; each study's designer gets a seed derived from it and the study name
        (a `seed` in designer_kwargs instead gives every study that same seed).
      max_cached_studies: studies whose designers stay in RAM (least recently used go;
        they are restored from metadata on their next request).
      fallback: the factory for every other algorithm name.
      history: the server's default history to warm-start every `OMNIPRED` study from (a
        Vizier datastore path or URL, a corpus file or folder; see `warm_start.py`). The
        base model is `checkpoint` (None: shipped) continued-pretrained on the history's
        studies with the study's objective; built once per (history, checkpoint,
        objective) and this process, cached on disk, and shared by the studies.
      warm_start: `WarmStartConfig` for those builds (None: its defaults).
      study_history: let a study name its own history in its metadata
        (`config.metadata.ns('omnipred')['history'] = '/abs/path/history.db'`), which
        replaces `history` for that study. The server then reads whatever path or database
        URL a client names, with the server's permissions: turn it off for a server that
        untrusted clients can reach.
    """

    checkpoint: str | os.PathLike[str] | None = None
    device: str = "cpu"
    work_dir: str | os.PathLike[str] | None = None
    designer_kwargs: Mapping[str, Any] | None = None
    seed: int = 0
    max_cached_studies: int = 16
    fallback: pythia.PolicyFactory = attrs.field(factory=vizier_policy_factory.DefaultPolicyFactory)
    history: str | os.PathLike[str] | None = None
    warm_start: "WarmStartConfig | None" = None
    study_history: bool = True

    # What happened so far ('checkpoint_loads', 'designers_built', 'designers_restored',
    # 'designers_reused', 'suggest_requests'): for logs, monitoring and tests.
    counters: collections.Counter = attrs.field(factory=collections.Counter, init=False)
    _regressor: Any = attrs.field(default=None, init=False)
    _load_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _slots_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _slots: collections.OrderedDict = attrs.field(factory=collections.OrderedDict, init=False)
    # One lock per study name, never evicted with the slots: a study whose designer left the
    # cache while one of its requests still ran must not get a second, independent lock.
    _study_locks: dict = attrs.field(factory=dict, init=False)
    _tmp_dir: Any = attrs.field(default=None, init=False)
    # (history, base checkpoint, config, objectives) -> (WarmStartResult, its loaded regressor).
    _warm_started: dict = attrs.field(factory=dict, init=False)
    _warm_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def __call__(
        self,
        problem_statement: vz.ProblemStatement,
        algorithm: str,
        policy_supporter: pythia.PolicySupporter,
        study_name: str,
    ) -> pythia.Policy:
        if algorithm != ALGORITHM:
            return self.fallback(problem_statement, algorithm, policy_supporter, study_name)
        self.counters["suggest_requests"] += 1
        return _CachedDesignerPolicy(
            problem_statement,
            policy_supporter,
            functools.partial(self._make_designer, study_name),
            slot=self._slot(study_name),
            seed=self._study_seed(study_name),
            counters=self.counters,
        )

    # -- what the policy calls -----------------------------------------------------------
    def _make_designer(self, study_name: str, problem: vz.ProblemStatement, seed: int | None = None) -> "OmniPredDesigner":
        """A designer factory in Vizier's convention: `factory(problem, seed=...)`.

        Vizier calls it with a seed for a new study and without one when it restores a
        designer from metadata (`load()` then overwrites the state, seed included).
        """
        from vizier_omnipred.designer import OmniPredDesigner

        kwargs = dict(self.designer_kwargs or {})
        kwargs.pop("seed", None)  # already in `seed` (see `_study_seed`)
        kwargs.setdefault("device", self.device)
        kwargs.setdefault("work_dir", str(self.study_work_dir(study_name)))
        source = self.history_for(problem)
        kwargs.pop("history", None)
        config = kwargs.pop("warm_start", None) or self.warm_start
        if source is not None:
            if kwargs.get("regressor") is not None:
                raise ValueError("a history warm start continues pretraining from a checkpoint directory: set "
                                 "OmniPredPolicyFactory(checkpoint=...) instead of designer_kwargs['regressor']")
            base = kwargs.pop("checkpoint", None) or self.checkpoint
            kwargs["history"], kwargs["regressor"] = self.warm_started(source, problem, base, config)
        elif kwargs.get("regressor") is None and "checkpoint" not in kwargs:
            kwargs["regressor"] = self.regressor()
        if kwargs.get("regressor") is None:
            kwargs.pop("regressor", None)
        self.counters["designers_built"] += 1
        return OmniPredDesigner(problem, seed=self._study_seed(study_name) if seed is None else seed, **kwargs)

    # -- shared state ----------------------------------------------------------------------
    def regressor(self) -> "OmniPredRegressor | None":
        """The base model, loaded on first use and shared (designers deep-copy it).

        None when no checkpoint is given and none ships with the package: the designer
        then builds its own fallback model.
        """
        with self._load_lock:
            if self._regressor is None:
                from vizier_omnipred.regressor import SHIPPED_CHECKPOINT, OmniPredRegressor

                path = self.checkpoint
                if path is None and SHIPPED_CHECKPOINT.is_dir():
                    path = SHIPPED_CHECKPOINT
                if path is None:
                    if not self.counters["fallback_warnings"]:
                        _log.warning("OMNIPRED: no checkpoint given and none shipped in %s; the designer uses "
                                     "its untrained from-scratch fallback", SHIPPED_CHECKPOINT)
                    self.counters["fallback_warnings"] += 1
                    return None
                _log.info("OMNIPRED: loading checkpoint %s on %s", path, self.device)
                self._regressor = OmniPredRegressor.from_pretrained(path, device=self.device)
                self.counters["checkpoint_loads"] += 1
            return self._regressor

    def history_for(self, problem: vz.ProblemStatement) -> str | None:
        """The history a study warm-starts from: its own (metadata), else the server's."""
        if self.study_history:
            value = problem.metadata.ns(HISTORY_NS).get(HISTORY_KEY)
            if value is not None:
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"study metadata {HISTORY_NS}/{HISTORY_KEY} must be a path or URL string")
                return value.strip()
        return None if self.history is None else os.fspath(self.history)

    def warm_started(
        self,
        source: str | os.PathLike[str],
        problem: vz.ProblemStatement,
        checkpoint: str | os.PathLike[str] | None = None,
        config: "WarmStartConfig | None" = None,
    ) -> "tuple[WarmStartResult, OmniPredRegressor]":
        """The warm-started checkpoint for `source` and the study's objective, and its model.

        Read and built (or found in the disk cache) on first use in this process, then kept:
        a history that changes while the server runs is read again after a restart. One
        build at a time; studies asking for the same one wait for it.
        """
        from vizier_omnipred.regressor import OmniPredRegressor
        from vizier_omnipred.warm_start import WarmStartConfig, warm_start_checkpoint

        config = config or WarmStartConfig()
        objectives = tuple((m.name, m.goal.name) for m in problem.metric_information if m.type.is_objective)
        key = (os.fspath(source), None if checkpoint is None else os.fspath(checkpoint), config, objectives)
        with self._warm_lock:
            if key not in self._warm_started:
                result = warm_start_checkpoint(source, problem, checkpoint=checkpoint, config=config)
                self._warm_started[key] = (result, OmniPredRegressor.from_pretrained(result.path, device=self.device))
                self.counters["warm_starts_cached" if result.cached else "warm_starts_built"] += 1
            return self._warm_started[key]

    def study_work_dir(self, study_name: str) -> Path:
        if self.work_dir is not None:
            root = Path(self.work_dir)
        else:
            with self._load_lock:
                if self._tmp_dir is None:
                    self._tmp_dir = tempfile.TemporaryDirectory(prefix="omnipred-service-")
                    _log.warning("OMNIPRED: no work_dir set; fine-tuned weights go to %s and are lost "
                                 "when the process ends", self._tmp_dir.name)
            root = Path(self._tmp_dir.name)
        path = root / _study_dir_name(study_name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _study_seed(self, study_name: str) -> int:
        if (self.designer_kwargs or {}).get("seed") is not None:
            return int(self.designer_kwargs["seed"])
        return zlib.crc32(f"{self.seed}:{study_name}".encode()) & 0x7FFFFFFF

    def _slot(self, study_name: str) -> _StudySlot:
        with self._slots_lock:
            lock = self._study_locks.setdefault(study_name, threading.Lock())
            slot = self._slots.pop(study_name, None) or _StudySlot(lock=lock)
            self._slots[study_name] = slot
            while len(self._slots) > self.max_cached_studies:
                self._slots.popitem(last=False)
            return slot

    def cached_designer(self, study_name: str) -> "OmniPredDesigner | None":
        """The designer held in RAM for a study (resource name), e.g. to `predict` with it;
        None if the study has none here (never asked for, evicted, or its last request failed)."""
        with self._slots_lock:
            slot = self._slots.get(study_name)
        return None if slot is None else slot.designer

    def forget(self, study_name: str | None = None) -> None:
        """Drops the RAM copy of one study's designer (all studies if None)."""
        with self._slots_lock:
            if study_name is None:
                self._slots.clear()
            else:
                self._slots.pop(study_name, None)


# ----- the server ---------------------------------------------------------------------


def _is_short_delivery(error: BaseException) -> bool:
    """Whether `error` is Vizier's servicer popping from the policy's too-short list of new
    trials (raised in `VizierServicer.SuggestTrials` itself, not inside a policy)."""
    if not isinstance(error, IndexError):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    return code is not None and code.co_name == "SuggestTrials" and code.co_filename == vizier_service.__file__


class _GuardedVizierServicer(vizier_service.VizierServicer):
    """A `VizierServicer` whose failed Suggest operations end as errors.

    In Vizier 0.1.24 an in-process Pythia policy that raises leaves the study's suggestion
    operation "not done" in the datastore; every later Suggest of that client then returns
    that operation and the client polls it forever. Here the operation is closed with the
    error, so the client raises `RuntimeError` with the designer's message and the next
    Suggest starts afresh.

    A policy may return fewer suggestions than asked for (Vizier's Designer contract; the
    OmniPred designer does when a finite search space has fewer untried points left). Vizier
    0.1.24's servicer then fails with "pop from empty list" after it has written the trials it
    did get as ACTIVE. Here the operation answers with the client's ACTIVE trials instead,
    fewer than asked for; with none at all it ends with an error that says why.
    """

    def SuggestTrials(self, request, context=None):  # noqa: N802 (gRPC name)
        try:
            return super().SuggestTrials(request, context)
        except Exception as e:  # Pythia raises anything; the operation must not stay open.
            try:
                open_ops = self.datastore.list_suggestion_operations(
                    request.parent, request.client_id, lambda op: not op.done
                )
            except custom_errors.NotFoundError:
                open_ops = []
            if not open_ops:
                raise
            if _is_short_delivery(e):
                return self._close_short(request, open_ops)
            _log.exception("Suggest for %s failed", request.parent)
            for op in open_ops:
                self._close_with_error(op, f"{type(e).__name__}: {e}")
            return open_ops[-1]

    def _close_with_error(self, op, message: str) -> None:
        op.done = True
        op.error.CopyFrom(status_pb2.Status(code=code_pb2.Code.INTERNAL, message=message))
        self.datastore.update_suggestion_operation(op)

    def _close_short(self, request, open_ops):
        """The operations of a Suggest the policy under-delivered: the client's ACTIVE trials."""
        held = [t for t in self.datastore.list_trials(request.parent)
                if t.state == study_pb2.Trial.State.ACTIVE and t.client_id == request.client_id]
        if not held:
            _log.warning("Suggest for %s: the policy returned no suggestion", request.parent)
            for op in open_ops:
                self._close_with_error(
                    op, "the policy returned no suggestion: the search space has no untried point left "
                        "(a finite space, every point already suggested)")
            return open_ops[-1]
        _log.warning("Suggest for %s: %d of %d suggestions (the policy returned fewer: the search space "
                     "has no more untried points)", request.parent, len(held), request.suggestion_count)
        response = vizier_service_pb2.SuggestTrialsResponse(trials=held[: request.suggestion_count])
        response.start_time.GetCurrentTime()
        for op in open_ops:
            op.done = True
            op.response.value = response.SerializeToString()
            self.datastore.update_suggestion_operation(op)
        return open_ops[-1]


class DatastoreError(ValueError):
    """The database file given to the server is not a Vizier datastore (names the file)."""


_SQLITE_HEADER = b"SQLite format 3\x00"
# Tables Vizier 0.1.24's SQLDataStore creates; a database holding other tables is someone else's.
_VIZIER_TABLES = frozenset({"owners", "studies", "trials", "suggestion_operations", "early_stopping_operations"})


def check_sqlite_datastore(path: str | os.PathLike[str]) -> None:
    """Refuses an existing file that is not a SQLite Vizier datastore, before Vizier opens it.

    Vizier's `SQLDataStore` creates its tables in whatever SQLite file it is given: pointed
    at another application's database it would add five tables to it, and at a file that is
    not SQLite it fails deep inside SQLAlchemy. A missing or empty file is fine (a new
    datastore); so is a SQLite file with no tables or with Vizier's tables.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise DatastoreError(f"{path}: not a file (expected a SQLite Vizier datastore)")
    with open(path, "rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if not header:
        return
    if header != _SQLITE_HEADER:
        raise DatastoreError(f"{path}: not a SQLite database (expected a Vizier datastore or a new file)")
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as e:
        raise DatastoreError(f"{path}: damaged SQLite database ({e})") from e
    if tables and not {"owners", "studies", "trials"} <= tables:
        raise DatastoreError(
            f"{path}: a SQLite database of another schema (tables {sorted(tables)[:8]}), not a Vizier "
            f"datastore; Vizier would add its tables {sorted(_VIZIER_TABLES)} to it"
        )


def close_abandoned_operations(servicer: vizier_service.VizierServicer, database_url: str) -> int:
    """Ends the suggestion operations a previous server process left open; returns how many.

    Vizier stores a Suggest operation as "not done" before it asks the policy, and marks it
    done after the new trials are written. A server killed in between (here: while the
    designer fine-tunes) leaves it open in the datastore, and Vizier answers every later
    Suggest of that client with the open operation: the client would poll forever. At
    start no operation of this process can be running, so every open one was abandoned:
    it is closed with an error (ABORTED), and the client's next Suggest starts a new one.
    The operation never wrote trials, or wrote them as ACTIVE for its client, who gets
    them back on that next Suggest: no trial is lost or suggested twice.
    """
    import sqlalchemy as sqla
    from google.longrunning import operations_pb2

    engine = sqla.create_engine(database_url)
    try:
        if "suggestion_operations" not in sqla.inspect(engine).get_table_names():
            return 0
        table = sqla.Table("suggestion_operations", sqla.MetaData(), autoload_with=engine)
        with engine.connect() as connection:
            rows = connection.execute(sqla.select(table.c.serialized_op)).fetchall()
    finally:
        engine.dispose()
    closed = 0
    for (serialized,) in rows:
        op = operations_pb2.Operation.FromString(serialized)
        if op.done:
            continue
        op.done = True
        op.error.CopyFrom(status_pb2.Status(
            code=code_pb2.Code.ABORTED,
            message="the server stopped while computing this suggestion; ask again (no trial was lost)",
        ))
        servicer.datastore.update_suggestion_operation(op)
        closed += 1
    if closed:
        _log.warning("closed %d suggestion operation(s) left open by a server that stopped mid-request", closed)
    return closed


@attr.define
class OmniPredVizierServer(DefaultVizierServer):
    """Vizier's in-process server (Vizier + Pythia servicers), plus what it lacks:

    * `stop()` / `with` support: the gRPC server stops and the SQL connection closes, so a
      new server (as after a process restart) can open the same SQLite file;
    * `port=0` binds a free port chosen by the OS (no pick-then-bind race);
    * failed Suggest operations end as errors instead of hanging the client (see
      `_GuardedVizierServicer`), and so do those a killed server left open
      (`close_abandoned_operations`, at start);
    * a SQLite file of another schema, or not SQLite at all, is refused with
      `DatastoreError` instead of being modified (`check_sqlite_datastore`).
    """

    def __attrs_post_init__(self):
        # Mirrors DefaultVizierServer.__attrs_post_init__, with the guarded servicer and
        # the port the OS actually bound.
        url = self._database_url
        sqlite_file = bool(url) and url.startswith("sqlite:///") and not url.endswith(":memory:")
        if sqlite_file:
            check_sqlite_datastore(url[len("sqlite:///"):])
        self._servicer = _GuardedVizierServicer(
            database_url=self._database_url,
            early_stop_recycle_period=self._early_stop_recycle_period,
        )
        # Before serving, nothing of this process is in flight. Only for a SQLite file, which
        # one server owns; a database server may be shared by servers that are still running.
        if sqlite_file:
            close_abandoned_operations(self._servicer, url)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=30))
        vizier_service_pb2_grpc.add_VizierServiceServicer_to_server(self._servicer, self._server)
        bound = self._server.add_insecure_port(f"{self._host}:{self._port}")
        if not bound:
            raise RuntimeError(f"could not bind the Vizier server to {self._host}:{self._port}")
        self._port = bound
        self._server.start()
        self.stub = stubs_util.create_vizier_server_stub(self.endpoint)
        self._servicer.default_pythia_service = pythia_service.PythiaServicer(
            self._servicer, policy_factory=self._policy_factory
        )

    @property
    def policy_factory(self) -> pythia.PolicyFactory:
        return self._policy_factory

    @property
    def database_url(self) -> str | None:
        return self._database_url

    def stop(self, grace: float | None = 1.0) -> None:
        """Stops serving and closes the database; idempotent."""
        self._server.stop(grace).wait()
        store = self._servicer.datastore
        connection, engine = getattr(store, "_connection", None), getattr(store, "_engine", None)
        if connection is not None:
            connection.close()
        if engine is not None:
            engine.dispose()
        if clients.environment_variables.server_endpoint == self.endpoint:
            clients.environment_variables.server_endpoint = service_constants.NO_ENDPOINT

    def __enter__(self) -> "OmniPredVizierServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def database_url(database_path_or_url: str | os.PathLike[str] | None) -> str | None:
    """'sqlite:///abs/path' for a file path (parent folders created); URLs pass through.

    None means Vizier's in-RAM datastore (nothing persists).
    """
    if database_path_or_url is None:
        return None
    text = os.fspath(database_path_or_url)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def default_work_dir(database_path_or_url: str | os.PathLike[str] | None) -> Path | None:
    """Next to a SQLite file: '<file>.omnipred/' (so the study state and the fine-tuned
    weights move together); None for other databases."""
    url = database_url(database_path_or_url)
    if url is None or not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return None
    db = Path(url[len("sqlite:///"):])
    return db.with_name(db.name + ".omnipred")


def start_server(
    database_path_or_url: str | os.PathLike[str] | None,
    *,
    policy_factory: pythia.PolicyFactory | None = None,
    host: str = "localhost",
    port: int = 0,
    set_client_endpoint: bool = True,
    early_stop_recycle_period: datetime.timedelta = datetime.timedelta(seconds=0.1),
) -> OmniPredVizierServer:
    """Starts an in-process Vizier server that knows `OMNIPRED`, on a SQL datastore.

    Args:
      database_path_or_url: a SQLite file path (created if missing), an SQLAlchemy URL,
        or None for RAM only.
      policy_factory: default `OmniPredPolicyFactory(work_dir=default_work_dir(db))`.
      host: interface to bind; keep the loopback default unless the server must be
        reachable from other machines (the gRPC port is unauthenticated, unencrypted).
      port: 0 lets the OS choose a free port.
      set_client_endpoint: point `vizier.service.clients` at this server, so
        `clients.Study` talks to it (reset on `stop()`).

    Use as `with start_server(path) as server: ...` or call `server.stop()`.
    """
    if policy_factory is None:
        policy_factory = OmniPredPolicyFactory(work_dir=default_work_dir(database_path_or_url))
    server = OmniPredVizierServer(
        host,
        database_url=database_url(database_path_or_url),
        policy_factory=policy_factory,
        port=port,
        early_stop_recycle_period=early_stop_recycle_period,
    )
    if set_client_endpoint:
        clients.environment_variables.server_endpoint = server.endpoint
    _log.info("Vizier server at %s, database %s", server.endpoint, server.database_url)
    return server
