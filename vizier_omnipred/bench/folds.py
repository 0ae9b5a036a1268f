"""Held-out-dataset checkpoints for HPOBench: k folds over datasets, one pretraining each.

Transfer is only measured honestly on a dataset the model never read. Leave-one-out
needs one pretraining per dataset (8); k folds need k: the datasets are dealt into k
folds, and the checkpoint of fold j is pretrained on every dataset *outside* fold j
(plus synthetic BBOB studies, for the general prior over smooth functions), then
evaluated only on fold j's datasets. k=8 is leave-one-out.

Each fold is an ordinary `pretrain` run (`OUT/fold-j/`: resumable, its own log and
saved config), from a fresh model by default. An `init_checkpoint` that has read a
held-out dataset is refused: the shipped checkpoint, pretrained on all 8 tables, cannot
start a fold. `OUT/folds.json` records the layout, and `OUT/by-dataset/<dataset>` links
each dataset to the checkpoint that never saw it, so every bench takes the pattern
`--hpobench-checkpoint-pattern 'OUT/by-dataset/{dataset}'`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs

from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS
from vizier_omnipred.pretraining import PretrainConfig, pretrain, saved_pretrain_config
from vizier_omnipred.text import check_study_text
from vizier_omnipred.training import check_precision


def fold_layout(k: int, datasets: tuple[str, ...] = HPOBENCH_DATASETS) -> tuple[tuple[str, ...], ...]:
    """The datasets dealt round-robin into k folds (sorted first, so the layout is fixed)."""
    if not 2 <= k <= len(datasets):
        raise ValueError(f"folds must be in [2, {len(datasets)}], got {k}")
    ordered = tuple(sorted(datasets))
    return tuple(ordered[j::k] for j in range(k))


def datasets_read_by(checkpoint: str | os.PathLike[str]) -> set[str]:
    """HPOBench datasets a checkpoint was pretrained on, from its saved pretraining config
    (the run's own and, recursively, its init checkpoint's): its `hpobench_datasets`, and
    any corpus file whose name or studies say `hpobench-<dataset>`.

    A checkpoint without a saved config (built elsewhere) reads as having seen nothing;
    callers that must be sure check that the config exists (as the demo does).
    """
    from vizier_omnipred.corpus.format import read_corpus

    seen: set[str] = set()
    saved = saved_pretrain_config(checkpoint)
    if saved is None:
        return seen
    seen.update(saved.get("hpobench_datasets") or ())
    for corpus in saved.get("corpus") or ():
        if Path(corpus).is_file():
            seen.update(r.name.removeprefix("hpobench-") for r in read_corpus(corpus)
                        if r.name.startswith("hpobench-"))
    if saved.get("init_checkpoint"):
        seen |= datasets_read_by(saved["init_checkpoint"])
    return seen & set(HPOBENCH_DATASETS)


@attrs.frozen
class FoldPretrainConfig:
    """One k-fold build: the layout and the pretraining recipe every fold shares.

    The defaults give each fold's real studies about 11 passes: 4 datasets x 6,000
    configurations (a fifth of each table) and 200 synthetic studies (about 37k examples a
    pass), 6,400 steps of 64 (about 33 minutes a fold on one thread of this project's
    2-core machines, compiled). Against 1,500 configurations and 3,200 steps, the held-out
    datasets' zero-shot Spearman went from 0.88 to 0.93 (docs/BENCHMARKS.md; the two
    changes were made together, so which one mattered is not separated).
    """

    out_dir: str
    folds: int = 2
    init_checkpoint: str | None = None  # None: a fresh model of `preset`
    preset: str = "small"
    trials_per_dataset: int = 6000
    synthetic_studies: int = 200
    steps: int = 6400
    batch_size: int = 64
    learning_rate: float | None = None
    warmup_steps: int = 200
    device: str = "cpu"
    num_threads: int = 0
    compile: bool = False  # PretrainConfig.compile
    precision: str = "float32"  # PretrainConfig.precision
    study_text: str = "inline"  # PretrainConfig.study_text
    data_process: bool = False  # PretrainConfig.data_process: same batches, the data made on another core
    seed: int = 0

    def __attrs_post_init__(self):
        fold_layout(self.folds)  # validates k
        check_precision(self.precision)
        check_study_text(self.study_text)
        if self.trials_per_dataset < 1:
            raise ValueError(f"trials_per_dataset must be >= 1, got {self.trials_per_dataset}")
        if self.init_checkpoint is not None:
            leaked = datasets_read_by(self.init_checkpoint)
            if leaked:
                raise ValueError(
                    f"init checkpoint {self.init_checkpoint} was pretrained on HPOBench {sorted(leaked)}: "
                    "a fold started from it would be evaluated on data it has read. Start from a fresh "
                    "model (no init checkpoint) or one pretrained on synthetic studies only."
                )

    @property
    def layout(self) -> tuple[tuple[str, ...], ...]:
        return fold_layout(self.folds)

    def pretrain_config(self, fold: int) -> PretrainConfig:
        held_out = set(self.layout[fold])
        return PretrainConfig(
            out_dir=str(Path(self.out_dir) / f"fold-{fold}"),
            hpobench_datasets=tuple(d for d in HPOBENCH_DATASETS if d not in held_out),
            hpobench_trials=self.trials_per_dataset,
            synthetic_studies=self.synthetic_studies,
            synthetic_seed=self.seed + 1,  # not the shipped checkpoint's studies
            init_checkpoint=self.init_checkpoint,
            preset=self.preset,
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            eval_every=max(1, self.steps // 4),
            checkpoint_every=max(1, self.steps // 8),
            device=self.device,
            num_threads=self.num_threads,
            compile=self.compile,
            precision=self.precision,
            study_text=self.study_text,
            data_process=self.data_process,
            # The batches the v3 fold checkpoints were built with (issue 13's figures): HPOBench
            # tables share one search space and fall in one length bucket, so grouping would save
            # no padding and only draw another random order.
            length_grouping=1,
            seed=self.seed,
        )


def write_layout(config: FoldPretrainConfig) -> Path:
    """`OUT/folds.json` (which fold holds out which datasets, and what each trains on) and the
    `OUT/by-dataset/<dataset>` links to the checkpoint that never saw that dataset."""
    out = Path(config.out_dir)
    links = out / "by-dataset"
    links.mkdir(parents=True, exist_ok=True)
    layout = []
    for j, held_out in enumerate(config.layout):
        pretrain_config = config.pretrain_config(j)
        layout.append({"fold": j, "held_out": list(held_out),
                       "trained_on": list(pretrain_config.hpobench_datasets),
                       "checkpoint": f"fold-{j}/final"})
        for dataset in held_out:
            link = links / dataset
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path("..") / f"fold-{j}" / "final", target_is_directory=True)
    path = out / "folds.json"
    path.write_text(json.dumps({"folds": layout, "config": attrs.asdict(config)}, indent=2))
    return path


def build_fold_checkpoints(config: FoldPretrainConfig, *, only: int | None = None,
                           progress: bool = True) -> dict[int, Path]:
    """Pretrains (or resumes, or skips when finished) each fold's checkpoint.

    `only` builds one fold, so that two folds can run as two processes on two cores.
    """
    write_layout(config)
    finals: dict[int, Path] = {}
    for j, held_out in enumerate(config.layout):
        if only is not None and j != only:
            continue
        final = Path(config.out_dir) / f"fold-{j}" / "final"
        if (final / "omnipred.json").is_file():  # checkpoints are written whole or not at all
            print(f"fold {j} (held out: {', '.join(held_out)}): done already ({final})")
            finals[j] = final
            continue
        pretrain_config = config.pretrain_config(j)
        print(f"fold {j}: held out {', '.join(held_out)}; pretraining on "
              f"{', '.join(pretrain_config.hpobench_datasets)} + {config.synthetic_studies} synthetic studies")
        finals[j] = pretrain(pretrain_config, progress=progress)
    return finals
