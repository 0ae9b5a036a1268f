"""A user's own history: studies from a Vizier SQL datastore or a folder of corpus files.

The datastore is read through Vizier's own `SQLDataStore` (its `list_studies`/`list_trials`
and proto converters), so whatever Vizier stores comes out as Vizier would show it. Only
the owner names are listed with SQLAlchemy's table reflection, because the datastore has no
method for that. A file path is opened read-only: exporting never modifies, or creates, the
user's database.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sqla
from vizier import pyvizier as vz
from vizier._src.service import sql_datastore
from vizier.service import pyvizier as svz

from vizier_omnipred.corpus.format import (
    CorpusError,
    CorpusStats,
    CorpusWarning,
    OnError,
    StudyRecord,
    read_corpus,
)

_VIZIER_TABLES = frozenset(["owners", "studies", "trials"])


def _readonly_sqlite_engine(path: Path) -> sqla.engine.Engine:
    """An engine on an existing SQLite file that can neither create nor modify it.

    The file is opened by sqlite3 itself as a percent-encoded `file:` URI with mode=ro:
    passing the path inside a SQLAlchemy URL would break on '?', '#' or '%' in the path,
    and SQLite would then silently create a new, empty database somewhere else.
    """
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    return sqla.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
    )


def _engine(url_or_path: str | os.PathLike[str]) -> sqla.engine.Engine:
    """An engine for a path or URL; refuses what would make SQLite create a new database."""
    text = os.fspath(url_or_path)
    if "://" not in text:
        path = Path(text)
        if not path.is_file():
            raise CorpusError(f"{text}: no such Vizier datastore file")
        return _readonly_sqlite_engine(path)
    try:
        url = sqla.engine.make_url(text)
    except sqla.exc.ArgumentError as e:
        raise CorpusError(f"{text}: not a valid database URL ({e})") from e
    if url.get_backend_name() != "sqlite":
        return sqla.create_engine(url)
    database = url.database or ""
    if database in ("", ":memory:"):
        raise CorpusError(f"{text}: an in-memory SQLite database holds no studies")
    if str(url.query.get("uri", "")).lower() == "true":
        return sqla.create_engine(url, connect_args={"check_same_thread": False})
    path = Path(database)
    if not path.is_file():
        raise CorpusError(f"{database}: no such Vizier datastore file")
    return _readonly_sqlite_engine(path)


def _open_datastore(
    url_or_path: str | os.PathLike[str], label: str
) -> tuple[sqla.engine.Engine, sql_datastore.SQLDataStore]:
    engine = _engine(url_or_path)
    try:
        tables = set(sqla.inspect(engine).get_table_names())
    except sqla.exc.SQLAlchemyError as e:
        engine.dispose()
        # SQLAlchemy's message goes on with the SQL it ran and a link: its first line says it.
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise CorpusError(f"{label}: not a readable database ({reason})") from e
    missing = _VIZIER_TABLES - tables
    if missing:
        engine.dispose()
        raise CorpusError(
            f"{label}: not a Vizier datastore (tables {sorted(missing)} missing; "
            f"found {sorted(tables) or 'none'})"
        )
    try:
        store = sql_datastore.SQLDataStore(engine)
    except sqla.exc.SQLAlchemyError as e:
        engine.dispose()
        raise CorpusError(f"{label}: cannot open as a Vizier datastore ({e})") from e
    return engine, store


def _owner_names(engine: sqla.engine.Engine) -> list[str]:
    owners = sqla.Table("owners", sqla.MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        return sorted(row[0] for row in connection.execute(sqla.select(owners.c.owner_name)))


def studies_from_datastore(
    url_or_path: str | os.PathLike[str], *, stats: CorpusStats | None = None
) -> Iterator[StudyRecord]:
    """Every study of a Vizier SQL datastore with its completed trials (streamed).

    `url_or_path`: a SQLite file (opened read-only) or a SQLAlchemy URL. Records are named
    by the study's resource name (``owners/{owner}/studies/{study_id}``), in owner then
    study order. Completed trials include infeasible ones; active, requested and stopping
    trials are left out, and a study with no completed trial is left out but counted in
    `stats.empty_studies`. A study Vizier cannot convert is skipped with a `CorpusWarning`
    and counted in `stats.skipped_studies`.

    Raises CorpusError when the path does not exist or is not a Vizier datastore.
    """
    label = os.fspath(url_or_path)
    engine, store = _open_datastore(url_or_path, label)
    try:
        for owner in _owner_names(engine):
            try:
                studies = store.list_studies(owner)
            except sql_datastore.NotFoundError:
                continue
            for study in sorted(studies, key=lambda s: s.name):
                try:
                    problem = svz.StudyConfig.from_proto(study.study_spec).to_problem()
                    trials = [
                        svz.TrialConverter.from_proto(t) for t in store.list_trials(study.name)
                    ]
                except Exception as e:  # noqa: BLE001 - one bad study must not stop an export
                    if stats is not None:
                        stats.skipped_studies += 1
                    warnings.warn(
                        f"{label}: skipped study {study.name}: {type(e).__name__}: {e}",
                        CorpusWarning,
                        stacklevel=2,
                    )
                    continue
                completed = sorted(
                    (t for t in trials if t.status == vz.TrialStatus.COMPLETED),
                    key=lambda t: t.id,
                )
                if not completed:
                    if stats is not None:
                        stats.empty_studies += 1
                    continue
                record = StudyRecord(name=study.name, problem=problem, trials=completed)
                if stats is not None:
                    stats.add(record)
                yield record
    finally:
        connection = getattr(store, "_connection", None)  # SQLDataStore keeps one open
        if connection is not None:
            connection.close()
        engine.dispose()


def studies_from_folder(
    path: str | os.PathLike[str],
    *,
    on_error: OnError = "skip",
    stats: CorpusStats | None = None,
) -> Iterator[StudyRecord]:
    """The studies of every corpus file (`*.jsonl`, `*.jsonl.gz`) under `path`, sorted by path.

    Corrupt lines are handled as in `read_corpus`.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: no such folder")
    files = sorted(
        p for pattern in ("*.jsonl", "*.jsonl.gz") for p in folder.rglob(pattern) if p.is_file()
    )
    for file in files:
        yield from read_corpus(file, on_error=on_error, stats=stats)
