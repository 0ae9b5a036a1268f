"""`vizier-omnipred export` and `vizier-omnipred build-corpus`.

export        a Vizier SQL datastore (the user's history) -> a corpus file
build-corpus  synthetic BBOB + HPOBench studies -> a corpus file for pretraining;
              `--exclude` leaves datasets out for leave-one-out transfer experiments
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from collections.abc import Iterator

from vizier_omnipred.corpus.format import (
    CorpusError,
    CorpusStats,
    StudyRecord,
    counted,
    write_corpus,
)
from vizier_omnipred.corpus.hpobench_datasets import HPOBENCH_DATASETS

def _range(text: str) -> tuple[int, int]:
    """'20,120' or '50' -> an inclusive (low, high) range."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected N or LOW,HIGH, got {text!r}") from e
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"expected N or LOW,HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return parts[0], parts[1]


def _export(args: argparse.Namespace) -> int:
    from vizier_omnipred.corpus.datastore import studies_from_datastore

    stats = CorpusStats()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            write_corpus(args.out, studies_from_datastore(args.datastore, stats=stats))
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {stats.summary()} [{time.perf_counter() - start:.1f} s]")
    return 0


def _build(args: argparse.Namespace) -> int:
    if args.synthetic <= 0 and not args.hpobench:
        print("error: nothing to build: give --synthetic N and/or --hpobench", file=sys.stderr)
        return 2
    if not 0.0 <= args.sparse_fraction <= 1.0:
        print(f"error: --sparse-fraction must be in [0, 1], not {args.sparse_fraction}", file=sys.stderr)
        return 2
    sources: list[Iterator[StudyRecord]] = []
    if args.synthetic > 0:
        from vizier_omnipred.corpus.bbob import synthetic_bbob_studies

        sources.append(
            synthetic_bbob_studies(
                args.seed,
                args.synthetic,
                trials_per_study=args.trials_per_study,
                dims=args.dims,
                sparse_fraction=args.sparse_fraction,
            )
        )
    if args.hpobench:
        from vizier_omnipred.corpus.hpobench import hpobench_studies

        excluded = set(args.exclude or ())
        datasets = [d for d in HPOBENCH_DATASETS if d not in excluded]
        sources.append(
            hpobench_studies(
                datasets, seed=args.seed, max_trials_per_study=args.hpobench_max_trials
            )
        )
    stats = CorpusStats()
    start = time.perf_counter()
    try:
        write_corpus(args.out, counted(itertools.chain(*sources), stats))
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(
        f"{args.out}: {stats.summary()} "
        f"[{elapsed:.1f} s, {stats.studies / max(elapsed, 1e-9):.1f} studies/s]"
    )
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a Vizier SQL datastore to a corpus file",
        description=(
            "Write every study of a Vizier SQL datastore (SQLite file, opened read-only, or "
            "SQLAlchemy URL) with its completed trials to a JSON-lines corpus."
        ),
    )
    export.add_argument("datastore", help="SQLite file of a Vizier server, or a SQLAlchemy URL")
    export.add_argument("out", help="output corpus, OUT.jsonl or OUT.jsonl.gz")
    export.set_defaults(func=_export)

    build = subparsers.add_parser(
        "build-corpus",
        help="build a pretraining corpus from synthetic BBOB and HPOBench studies",
        description="Write synthetic BBOB studies and/or the HPOBench studies to a corpus.",
    )
    build.add_argument("out", help="output corpus, OUT.jsonl or OUT.jsonl.gz")
    build.add_argument(
        "--synthetic", type=int, default=0, metavar="N", help="number of synthetic BBOB studies"
    )
    build.add_argument("--hpobench", action="store_true", help="add the 8 HPOBench studies")
    build.add_argument(
        "--exclude",
        action="append",
        choices=HPOBENCH_DATASETS,
        metavar="DATASET",
        help="leave this HPOBench dataset out (repeatable; for leave-one-out)",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the synthetic studies")
    build.add_argument(
        "--trials-per-study",
        type=_range,
        default=(20, 120),
        metavar="LOW,HIGH",
        help="trials per synthetic study (default 20,120)",
    )
    build.add_argument(
        "--dims", type=_range, default=(1, 8), metavar="LOW,HIGH", help="synthetic dimensions"
    )
    build.add_argument(
        "--sparse-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of synthetic studies in which only some parameters matter (default 0)",
    )
    build.add_argument(
        "--hpobench-max-trials",
        type=int,
        default=None,
        metavar="N",
        help="random subset of N configurations per HPOBench study (default: all 30000)",
    )
    build.set_defaults(func=_build)
