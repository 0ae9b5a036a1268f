"""Leave-one-out pretraining on HPOBench: one checkpoint per held-out dataset.

The HPOBench suite of `bench regression` (and `bench ab`) asks, for each of the 8
datasets, for a model that never saw that dataset. This builds them: for each held-out
dataset D it writes a corpus of the *other* seven datasets (a random sample of
`trials_per_dataset` configurations each) and continues pretraining a base checkpoint
(default: the shipped one, pretrained on synthetic BBOB studies only) on that corpus
mixed with fresh synthetic studies, so the model keeps its general prior. The result is
`OUT/D/final`, which `--hpobench-checkpoint-pattern 'OUT/{dataset}/final'` picks up.

Each run is an ordinary `pretrain` run (resumable, its own log and config); a dataset
whose `final` checkpoint exists is skipped, so an interrupted build picks up where it
stopped. The held-out dataset is excluded by construction: its corpus is written here
from the other datasets only, and the corpus summary in `OUT/D/corpus.json` says which.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from vizier_omnipred.corpus.format import CorpusStats, counted, write_corpus
from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS, hpobench_studies
from vizier_omnipred.pretraining import PretrainConfig, pretrain


@attrs.frozen
class LooPretrainConfig:
    """One leave-one-out build: which datasets to hold out and how to pretrain for each."""

    out_dir: str
    datasets: tuple[str, ...] = attrs.field(default=HPOBENCH_DATASETS, converter=tuple)
    init_checkpoint: str | None = None  # None: the shipped checkpoint
    trials_per_dataset: int = 3000
    synthetic_studies: int = 300  # mixed in so the model keeps its general prior
    steps: int = 400
    batch_size: int = 32
    learning_rate: float | None = None
    warmup_steps: int = 40
    shuffle_buffer: int = 16384
    device: str = "cpu"
    num_threads: int = 0
    seed: int = 0

    def __attrs_post_init__(self):
        bad = [d for d in self.datasets if d not in HPOBENCH_DATASETS]
        if bad or not self.datasets:
            raise ValueError(f"unknown HPOBench dataset(s) {bad}; valid: {', '.join(HPOBENCH_DATASETS)}")
        if self.trials_per_dataset < 1:
            raise ValueError(f"trials_per_dataset must be >= 1, got {self.trials_per_dataset}")

    def pretrain_config(self, held_out: str, corpus: Path) -> PretrainConfig:
        from vizier_omnipred.model import load_checkpoint
        from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

        init = self.init_checkpoint or str(SHIPPED_CHECKPOINT)
        preset = load_checkpoint(init).preset.name
        return PretrainConfig(
            out_dir=str(Path(self.out_dir) / held_out),
            corpus=(str(corpus),),
            synthetic_studies=self.synthetic_studies,
            synthetic_seed=self.seed + 1,  # not the shipped checkpoint's studies
            init_checkpoint=init,
            preset=preset,
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            shuffle_buffer=self.shuffle_buffer,
            eval_every=max(1, self.steps // 2),
            checkpoint_every=max(1, self.steps // 4),
            device=self.device,
            num_threads=self.num_threads,
            seed=self.seed,
        )


def write_loo_corpus(held_out: str, path: Path, *, trials_per_dataset: int, seed: int) -> CorpusStats:
    """The other seven datasets' studies (never `held_out`), written atomically to `path`."""
    others = [d for d in HPOBENCH_DATASETS if d != held_out]
    stats = CorpusStats()
    write_corpus(path, counted(hpobench_studies(others, seed=seed, max_trials_per_study=trials_per_dataset), stats))
    return stats


def build_loo_checkpoints(config: LooPretrainConfig, *, progress: bool = True) -> dict[str, Path]:
    """Pretrains (or resumes, or skips if done) one checkpoint per held-out dataset."""
    out = Path(config.out_dir)
    finals: dict[str, Path] = {}
    for held_out in config.datasets:
        run_dir = out / held_out
        final = run_dir / "final"
        if (final / "omnipred.json").is_file():  # checkpoints are written whole or not at all
            print(f"{held_out}: done already ({final})")
            finals[held_out] = final
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        corpus = run_dir / "corpus.jsonl.gz"
        summary = run_dir / "corpus.json"
        if not summary.is_file():
            stats = write_loo_corpus(held_out, corpus, trials_per_dataset=config.trials_per_dataset,
                                     seed=config.seed)
            summary.write_text(json.dumps({
                "held_out": held_out,
                "datasets": [d for d in HPOBENCH_DATASETS if d != held_out],
                "summary": stats.summary(),
            }, indent=2))
        print(f"{held_out}: pretraining on {json.loads(summary.read_text())['summary']}")
        finals[held_out] = pretrain(config.pretrain_config(held_out, corpus), progress=progress)
    return finals
