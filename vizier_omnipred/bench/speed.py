"""Speed benchmark: what one suggestion costs with OmniPred versus Vizier's GP bandit.

Measured in one process on one shifted BBOB task:

1. `suggest(1)` latency of each designer at 10, 50, 200 completed trials. The designer
   gets the new trials through `update` and is timed on the suggest right after, which is
   the cost a user sees (the GP refits its hyperparameters then; OmniPred may fine-tune).
   At each count it is timed `suggests_per_count` times, one new trial arriving before
   each (at n, n+1, ...), and the median is reported: one suggestion on a shared machine
   is one draw of its load. The designers take turns (both at n, then both at n+1), so a
   change of load over the run hits both sides of the ratio. The ratio of the medians
   per trial count is the headline number.
2. OmniPred sampling throughput: sampled y values per second for a batch of candidates,
   and the model FLOP/s that implies, next to torch's own float32 matmul FLOP/s on this
   machine (so "the sampler reaches x% of what the hardware does on a big matmul").
   Model FLOPs are estimated from parameter counts: 2 x params x tokens for the encoder
   (once per input) and the decoder + output layer (per sampled token), plus the
   cross-attention reads; attention within the short decoder is ignored. It is an estimate
   for orientation, not a profile.
3. Fine-tuning seconds per 100 trials (fit on `finetune_trials` trials, scaled).
4. Training throughput: examples/s of pretraining-style steps (batch 32) on HPOBench
   trials, for the input and model of this version next to those before numbers were read
   as numbers (pure text with the long study description, 3 encoder layers with d_ff 512
   and gated-GELU); this version eager and compiled, each in float32 and in bfloat16 autocast
   (`bfloat16_training`), and with the study text encoded once per batch
   (`separate_study_text`: `TextCodec(study_text="separate")`). All run in rounds, taking
   turns, so load changes hit each.
5. Pretraining throughput: examples/s of the pretraining loop, its data pipeline included
   (reading, generating and tokenizing studies, then batching), on a small mix of the shipped
   recipe's sources (synthetic BBOB studies and the 8 HPOBench tables), with batches drawn
   one at a time against grouped by input length (`PretrainConfig.length_grouping`), and
   grouped in bfloat16 autocast (`bfloat16_training`), and grouped with the study texts encoded
   apart (`separate_study_text`, in bfloat16 too), all compiled when `compile_training`,
   taking turns; with the share of padding tokens.
6. Peak memory: the process's peak resident set (getrusage ru_maxrss, monotone, read after
   each phase) and, with `tracemalloc=True`, the Python-heap peak per phase (tracemalloc does
   not see torch/JAX buffers, and slows Python code, so it is off by default: timings taken
   with it on are marked).

Each part records its own error and the others go on, so the GP side is measured even
while the OmniPred modules are missing.
"""

from __future__ import annotations

import resource
import sys
import time
import traceback
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np

from vizier_omnipred.bench.ab import DESIGNERS, BuiltTask, DesignerOptions
from vizier_omnipred.bench.baselines import ensure_jax_x64
from vizier_omnipred.bench.common import config_json, environment_info, fmt, set_torch_threads, stable_seed, write_json_atomic


@attrs.frozen
class SpeedConfig:
    trial_counts: tuple[int, ...] = attrs.field(default=(10, 50, 200), converter=tuple)
    suggests_per_count: int = 3  # timed suggestions per trial count (median reported)
    designers: tuple[str, ...] = attrs.field(default=("omnipred", "gp_bandit"), converter=tuple)
    dim: int = 4
    function_name: str = "Sphere"
    checkpoint: str | None = None  # None: the shipped checkpoint
    device: str = "cpu"
    num_samples: int = 64
    sample_candidates: int = 64
    finetune_trials: int = 100
    matmul_size: int = 1024
    threads: int | None = None  # torch.set_num_threads; None: leave torch's default
    tracemalloc: bool = False
    train_steps: int = 30  # per side, in 3 rounds; 0 skips the training throughput
    compile_training: bool = True  # also time training through torch.compile (training.TrainStepper)
    bfloat16_training: bool = True  # also time training steps in bfloat16 autocast (training.mixed_precision)
    separate_study_text: bool = True  # also time the input with its study text apart (TextCodec.study_text)
    pipeline_steps: int = 90  # pretraining-loop steps per side, in 3 rounds; 0 skips that part
    out_dir: Path = attrs.field(default=Path("runs/bench/speed"), converter=Path)
    seed: int = 0


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 2**20


def _error(e: BaseException) -> dict[str, str]:
    return {"error": f"{type(e).__name__}: {e}", "traceback": "".join(traceback.format_exception(e))}


class _Phase:
    """Times a block and records peak RSS after it (and the tracemalloc peak if enabled)."""

    def __init__(self, record: dict[str, Any], use_tracemalloc: bool):
        self.record, self.use_tracemalloc = record, use_tracemalloc

    def __enter__(self) -> "_Phase":
        if self.use_tracemalloc:
            tracemalloc.start()
            tracemalloc.reset_peak()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.record["phase_seconds"] = time.perf_counter() - self.t0
        self.record["peak_rss_mib"] = peak_rss_mib()
        if self.use_tracemalloc:
            self.record["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()


def torch_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """float32 FLOP/s of torch.mm on an n x n problem, best of `repeats` (after a warm-up)."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def estimate_sampling_flops(model: Any, input_lengths: list[int], num_samples: int, output_length: int) -> float | None:
    """Approximate FLOPs of sampling `num_samples` values for each input (see module doc).

    Works for a transformers T5ForConditionalGeneration-like model (encoder, decoder,
    lm_head, config.d_model / num_decoder_layers); None for anything else.
    """
    try:
        enc = model.encoder
        dec = model.decoder
        cfg = model.config
        shared = model.get_input_embeddings().weight.numel()
        enc_params = sum(p.numel() for p in enc.parameters()) - shared
        dec_params = sum(p.numel() for p in dec.parameters()) - shared
        head_params = model.lm_head.weight.numel() if getattr(model, "lm_head", None) is not None else shared
        d_model = int(cfg.d_model)
        n_dec_layers = int(getattr(cfg, "num_decoder_layers", None) or cfg.num_layers)
    except AttributeError:
        return None
    total = 0.0
    for length in input_lengths:
        total += 2.0 * enc_params * length
        per_token = 2.0 * (dec_params + head_params) + 4.0 * d_model * length * n_dec_layers
        total += per_token * output_length * num_samples
    return total


def _bbob_task(config: SpeedConfig) -> BuiltTask:
    from vizier_omnipred.corpus.bbob import random_bbob_task

    problem, experimenter = random_bbob_task(stable_seed("speed", config.seed), config.dim, config.function_name)
    return BuiltTask(problem, experimenter, label=f"bbob/{config.function_name}-{config.dim}d")


def _random_trials(task: BuiltTask, n: int, seed: int) -> list[Any]:
    from vizier._src.algorithms.designers.random import RandomDesigner

    sampler = RandomDesigner(task.problem.search_space, seed=seed % (2**31))
    trials = [s.to_trial(i + 1) for i, s in enumerate(sampler.suggest(n))]
    task.experimenter.evaluate(trials)
    return trials


def suggest_latency(config: SpeedConfig, task: BuiltTask, trials: list[Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Per designer: seconds of suggest(1) right after new trials arrive, around each trial count.

    `seconds[n]` is the median of the `suggests_per_count` timings taken at n, n+1, ...
    completed trials (`all_seconds[n]` keeps them). A designer that fails is recorded with
    its error and dropped; the others go on.
    """
    from vizier import algorithms as vza

    ensure_jax_x64()
    options = DesignerOptions(omnipred_checkpoint=config.checkpoint, device=config.device)
    out: dict[str, Any] = {name: {"seconds": {}, "all_seconds": {}} for name in config.designers}
    designers: dict[str, Any] = {}
    fed: dict[str, int] = {}

    def fail(name: str, e: BaseException) -> None:
        out[name].update(_error(e))
        designers.pop(name, None)
        log(f"speed: {name} failed: {out[name]['error']}")

    for name in config.designers:
        try:
            designers[name] = DESIGNERS[name].make(task.problem, seed=config.seed, options=options, task=task)
            fed[name] = 0
        except Exception as e:  # noqa: BLE001 - record and measure the others
            fail(name, e)
    for n in sorted(config.trial_counts):
        for j in range(config.suggests_per_count):
            for name in list(designers):
                try:
                    designers[name].update(vza.CompletedTrials(trials[fed[name] : n + j]), vza.ActiveTrials())
                    fed[name] = n + j
                    t0 = time.perf_counter()
                    designers[name].suggest(1)
                    seconds = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    fail(name, e)
                    continue
                out[name]["all_seconds"].setdefault(str(n), []).append(seconds)
                log(f"speed: {name} suggest(1) after {n + j} trials: {seconds:.2f} s")
        for name in designers:
            out[name]["seconds"][str(n)] = float(np.median(out[name]["all_seconds"][str(n)]))
    return out


def _load_regressor(config: SpeedConfig) -> tuple[Any, str]:
    """The checkpoint's regressor, or, when no checkpoint is given and none is shipped, a
    from-scratch 'small' one: timings depend on the architecture, not on the weights."""
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT, OmniPredRegressor

    if config.checkpoint is None and not Path(SHIPPED_CHECKPOINT).is_dir():
        return (
            OmniPredRegressor.from_scratch("small", device=config.device, seed=config.seed),
            "from_scratch('small'): no checkpoint given and none shipped (same architecture, untrained)",
        )
    return (
        OmniPredRegressor.from_pretrained(config.checkpoint, device=config.device),
        str(config.checkpoint or SHIPPED_CHECKPOINT),
    )


def sampling_throughput(config: SpeedConfig, task: BuiltTask, trials: list[Any]) -> dict[str, Any]:
    from vizier import pyvizier as vz

    record: dict[str, Any] = {}
    with _Phase(record, config.tracemalloc):
        reg, record["model"] = _load_regressor(config)
        candidates = [vz.TrialSuggestion(parameters=t.parameters) for t in trials[: config.sample_candidates]]
        reg.sample(candidates[:2], num_samples=4, problem=task.problem)  # warm-up
        t0 = time.perf_counter()
        ys = reg.sample(candidates, num_samples=config.num_samples, problem=task.problem)
        seconds = time.perf_counter() - t0
    n_values = int(np.asarray(ys.values).size)
    record.update(
        candidates=len(candidates),
        num_samples=config.num_samples,
        seconds=seconds,
        values_per_second=n_values / seconds,
    )
    try:
        lengths = [len(ids) for ids in reg.input_ids(candidates, task.problem)]
        float_tok = getattr(reg.vocab, "float_tokenizer", None)
        out_len = int(getattr(float_tok, "length", 6))
        flops = estimate_sampling_flops(reg.checkpoint.model, lengths, config.num_samples, out_len)
        record["mean_input_tokens"] = float(np.mean(lengths))
        record["output_tokens"] = out_len
        if flops is not None:
            record["estimated_flops"] = flops
            record["implied_flops_per_second"] = flops / seconds
    except Exception as e:  # noqa: BLE001 - the estimate is optional
        record["flops_estimate_error"] = f"{type(e).__name__}: {e}"
    return record


def finetune_speed(config: SpeedConfig, task: BuiltTask, trials: list[Any]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    with _Phase(record, config.tracemalloc):
        reg, record["model"] = _load_regressor(config)
        n = min(config.finetune_trials, len(trials))
        t0 = time.perf_counter()
        report = reg.fit(task.problem, trials[:n])
        seconds = time.perf_counter() - t0
    record.update(trials=n, seconds=seconds, seconds_per_100_trials=seconds * 100.0 / n)
    if attrs.has(type(report)):
        record["fit_report"] = {
            k: v for k, v in attrs.asdict(report).items() if isinstance(v, (int, float, str, bool)) or v is None
        }
    return record


# The `small` model and input before numbers were read as numbers (main at b166dfc).
_BEFORE_PRESET = dict(num_layers=3, d_ff=512, feed_forward="gated-gelu")


# The sides of `training_throughput` after "now" (eager, float32, study text inline), as the table names them.
_TRAINING_SIDES = {
    "now_compiled": "through torch.compile",
    "now_bfloat16": "in bfloat16 autocast",
    "now_compiled_bfloat16": "through torch.compile in bfloat16 autocast",
    "now_separate": "with the study text encoded once per batch",
    "now_compiled_bfloat16_separate": "through torch.compile in bfloat16 autocast, study text once per batch",
}


def _fresh_compiler() -> None:
    """Forgets earlier compiled graphs and lifts dynamo's recompile limit, for this benchmark only.

    Dynamo keeps its compiled graphs per function (`OmniPredT5.forward`), not per model: each
    compiled side of a part is another model and adds a graph or two (inductor specialises on
    batch x length above or below 4,096 tokens), and past `recompile_limit` (8) every later
    call runs eagerly without a word, so the last sides would be timed uncompiled.
    """
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def training_throughput(config: SpeedConfig, *, rounds: int = 3, batch_size: int = 32) -> dict[str, Any]:
    """Examples/s of training steps: this version's `small` eager and compiled, each in float32
    and in bfloat16 autocast, and the one before (see module doc). A compiled side's one-off
    compile is timed apart (`compile_seconds`), outside its examples/s."""
    import random as random_lib

    import torch

    from vizier_omnipred import model as model_lib
    from vizier_omnipred.corpus.hpobench import hpobench_studies
    from vizier_omnipred.regressor import OmniPredRegressor
    from vizier_omnipred.bench.learning_curve import encoded_tokens
    from vizier_omnipred.text import TextCodec
    from vizier_omnipred.training import Batch, TrainStepper, make_examples

    if config.compile_training:
        _fresh_compiler()

    record = next(hpobench_studies(["kc1"], seed=config.seed, max_trials_per_study=600))
    trials = list(record.trials)
    small = model_lib.get_preset("small")
    sides = {
        "before": (TextCodec(number_features="none", max_metadata_value_chars=10**6),
                   attrs.evolve(small, name="small-before", **_BEFORE_PRESET), False, "float32"),
        "now": (TextCodec(), small, False, "float32"),
    }
    if config.compile_training:
        sides["now_compiled"] = (TextCodec(), small, True, "float32")
    if config.bfloat16_training:
        sides["now_bfloat16"] = (TextCodec(), small, False, "bfloat16")
        if config.compile_training:
            sides["now_compiled_bfloat16"] = (TextCodec(), small, True, "bfloat16")
    if config.separate_study_text:
        separate = TextCodec(study_text="separate")
        sides["now_separate"] = (separate, small, False, "float32")
        if config.bfloat16_training and config.compile_training:
            sides["now_compiled_bfloat16_separate"] = (separate, small, True, "bfloat16")
    state = {}
    for name, (codec, preset, compiled, precision) in sides.items():
        reg = OmniPredRegressor.from_scratch(preset, codec=codec, seed=config.seed,
                                             tokenizer_texts=codec.serialize_many(record.problem, trials))
        examples, _ = make_examples(reg.vocab, codec, record.problem, trials)
        model = reg.checkpoint.model
        model.train()
        params = list(model.parameters())
        state[name] = dict(reg=reg, examples=examples, params=params,
                           step=TrainStepper(model, compile=compiled, precision=precision),
                           optimizer=torch.optim.AdamW(params, lr=1e-3), seconds=0.0, steps=0, compile_seconds=0.0,
                           tokens=float(np.mean([encoded_tokens(e, batch_size) for e in examples])))
    rng = random_lib.Random(config.seed)
    per_round = max(1, config.train_steps // rounds)
    for k in range(rounds):
        for name, st in state.items():
            batches = [Batch.collate(rng.sample(st["examples"], batch_size), st["reg"].device)
                       for _ in range(per_round + 1)]
            t0 = time.perf_counter()
            st["step"](batches[0], st["optimizer"], st["reg"].masks, st["params"], 1.0)  # warm-up (compiles)
            if k == 0:
                st["compile_seconds"] = time.perf_counter() - t0 if st["step"].compiled else 0.0
            t0 = time.perf_counter()
            for b in batches[1:]:
                st["step"](b, st["optimizer"], st["reg"].masks, st["params"], 1.0)
            st["seconds"] += time.perf_counter() - t0
            st["steps"] += per_round
    out: dict[str, Any] = {
        name: {"examples_per_second": st["steps"] * batch_size / st["seconds"], "input_tokens": st["tokens"],
               "parameters": model_lib.count_parameters(st["reg"].checkpoint.model), "steps": st["steps"],
               "compiled": st["step"].compiled, "compile_seconds": st["compile_seconds"]}
        for name, st in state.items()}
    out["ratio"] = out["now"]["examples_per_second"] / out["before"]["examples_per_second"]
    for name in _TRAINING_SIDES:
        if name in out:
            out["ratio" + name.removeprefix("now")] = out[name]["examples_per_second"] / out["before"]["examples_per_second"]
    out["batch_size"] = batch_size
    return out


# Part 5's side with the study texts encoded apart (batches drawn as the grouped sides' are: drawing
# them from a few studies each, `PretrainConfig.studies_per_batch`, saves more and learns less).
_SEPARATE_PIPELINE = "grouped by length, study text separate"


def pretraining_throughput(config: SpeedConfig, *, rounds: int = 3, batch_size: int = 64) -> dict[str, Any]:
    """Examples/s of the pretraining loop with its data pipeline, ungrouped against grouped.

    Each side gets its own fresh `small` model and its own endless batch stream over the same
    studies; a side's time covers taking the next batch (the first pass generates and
    tokenizes studies, as a real run's first pass does) and the training step. Compiling is
    done on warm-up steps outside the timed rounds.
    """
    import tempfile

    import torch

    from vizier_omnipred import model as model_lib
    from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS
    from vizier_omnipred.pretraining import PretrainConfig
    from vizier_omnipred.pretraining_data import build_vocab, training_batches
    from vizier_omnipred.sampling import GrammarMasks
    from vizier_omnipred.text import TextCodec
    from vizier_omnipred.training import TrainStepper

    codec = TextCodec()
    device = model_lib.resolve_device(config.device)
    if config.compile_training:
        _fresh_compiler()
    with tempfile.TemporaryDirectory() as tmp:
        # The shipped recipe's sources at a tenth of their size (1,500 studies and 3,000
        # configurations per table there), so the timed steps stay within the first pass.
        base = PretrainConfig(out_dir=tmp, synthetic_studies=150, synthetic_seed=config.seed,
                              hpobench_datasets=tuple(HPOBENCH_DATASETS), hpobench_trials=300,
                              batch_size=batch_size, shuffle_buffer=2048, tokenizer_studies=100, seed=config.seed)
        vocab = build_vocab(base, codec)
        masks = GrammarMasks.build(vocab, device)
        state = {}
        sides = [("drawn one at a time", dict(length_grouping=1), "float32"),
                 ("grouped by length", {}, "float32")]
        if config.bfloat16_training:
            sides.append(("grouped by length, bfloat16", {}, "bfloat16"))
        if config.separate_study_text:
            sides.append((_SEPARATE_PIPELINE, dict(study_text="separate"),
                          "bfloat16" if config.bfloat16_training else "float32"))
        for name, changes, precision in sides:
            torch.manual_seed(config.seed)
            model = model_lib.build_model(model_lib.get_preset("small"), vocab.size,
                                          reads_numbers=codec.writes_numbers).to(device)
            model.train()
            params = list(model.parameters())
            run = attrs.evolve(base, **changes)
            state[name] = dict(batches=training_batches(run, vocab, run.codec, device, rank=0, world_size=1,
                                                        seed=config.seed),
                               step=TrainStepper(model, compile=config.compile_training, precision=precision),
                               params=params,
                               optimizer=torch.optim.AdamW(params, lr=1e-3), seconds=0.0, examples=0,
                               tokens=0, padded=0, grouping=run.length_grouping)
        # Warm-up outside the timed rounds: the compile, and the recompile that the first batch of
        # another shape class costs (inductor specialises on batch x length above or below 4,096
        # tokens), once per run: one grouped draw of batches holds the buffer's short and long inputs.
        for st in state.values():
            for _ in range(base.length_grouping):
                st["step"](next(st["batches"]), st["optimizer"], masks, st["params"], 1.0)
        per_round = max(1, config.pipeline_steps // rounds)
        for _ in range(rounds):
            for st in state.values():
                t0 = time.perf_counter()
                for _ in range(per_round):
                    batch = next(st["batches"])
                    st["step"](batch, st["optimizer"], masks, st["params"], 1.0)
                    st["examples"] += batch.labels.shape[0]
                    for mask in (batch.inputs.attention_mask, batch.inputs.study_mask):
                        if mask is not None:  # the study texts encoded apart count once each
                            st["tokens"] += int(mask.sum())
                            st["padded"] += mask.numel()
                st["seconds"] += time.perf_counter() - t0
        for st in state.values():
            st["batches"].close()
    out: dict[str, Any] = {
        name: {"examples_per_second": st["examples"] / st["seconds"], "length_grouping": st["grouping"],
               "input_tokens": st["tokens"] / st["examples"], "padding_share": 1 - st["tokens"] / st["padded"],
               "compiled": st["step"].compiled}
        for name, st in state.items()}
    out["ratio"] = out["grouped by length"]["examples_per_second"] / out["drawn one at a time"]["examples_per_second"]
    if config.bfloat16_training:
        out["ratio_bfloat16"] = (out["grouped by length, bfloat16"]["examples_per_second"]
                                 / out["grouped by length"]["examples_per_second"])
    if config.separate_study_text:
        out["ratio_separate"] = (out[_SEPARATE_PIPELINE]["examples_per_second"]
                                 / out["grouped by length, bfloat16" if config.bfloat16_training
                                       else "grouped by length"]["examples_per_second"])
    out["batch_size"] = batch_size
    out["steps"] = per_round * rounds
    return out


def markdown(result: dict[str, Any]) -> str:
    lat = result["suggest"]
    counts = [str(n) for n in result["config"]["trial_counts"]]
    k = result["config"].get("suggests_per_count", 1)
    lines = [f"Median of {k} suggest(1) timings per trial count (at n, n+1, ... completed trials), designers taking turns.", "",
             "| designer | " + " | ".join(f"s/suggest @{n}" for n in counts) + " |",
             "|---|" + "---|" * len(counts)]
    for name, rec in lat.items():
        cells = [fmt(rec["seconds"].get(n), 2) for n in counts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + (f" error: {rec['error']}" if "error" in rec else ""))
    if "omnipred" in lat and "gp_bandit" in lat:
        ratios = []
        for n in counts:
            a, b = lat["omnipred"]["seconds"].get(n), lat["gp_bandit"]["seconds"].get(n)
            ratios.append(fmt(a / b, 2) if a is not None and b else "-")
        lines.append("| ratio omnipred/gp_bandit (medians) | " + " | ".join(ratios) + " |")
    s = result.get("sampling", {})
    lines.append("")
    if "values_per_second" in s:
        lines.append(f"- sampling: {s['values_per_second']:.0f} y values/s ({s['candidates']} inputs x {s['num_samples']} samples in {s['seconds']:.2f} s)")
        if "implied_flops_per_second" in s:
            lines.append(f"- implied model throughput {s['implied_flops_per_second'] / 1e9:.2f} GFLOP/s (estimate)")
    elif "error" in s:
        lines.append(f"- sampling: {s['error']}")
    lines.append(f"- torch float32 matmul: {result['torch_matmul_flops_per_second'] / 1e9:.2f} GFLOP/s")
    f = result.get("finetune", {})
    if "seconds_per_100_trials" in f:
        lines.append(f"- fine-tune: {f['seconds_per_100_trials']:.1f} s per 100 trials")
    elif "error" in f:
        lines.append(f"- fine-tune: {f['error']}")
    t = result.get("training", {})
    if "ratio" in t:
        lines.append(
            f"- training (HPOBench kc1, batch {t['batch_size']}): {t['now']['examples_per_second']:.0f} examples/s now "
            f"({t['now']['input_tokens']:.0f} input tokens, {t['now']['parameters'] / 1e6:.2f}M parameters) vs "
            f"{t['before']['examples_per_second']:.0f} before ({t['before']['input_tokens']:.0f} tokens, "
            f"{t['before']['parameters'] / 1e6:.2f}M): {t['ratio']:.2f}x")
        for name, what in _TRAINING_SIDES.items():
            c = t.get(name)
            if c is None:
                continue
            suffix = ""
            if "compiled" in name:
                suffix = (f"; compiled in {c['compile_seconds']:.0f} s, not counted" if c["compiled"]
                          else "; the compile failed here, so it ran eagerly")
            lines.append(f"- training {what}: {c['examples_per_second']:.0f} examples/s, {c['input_tokens']:.0f} "
                         f"tokens encoded per example "
                         f"({t['ratio' + name.removeprefix('now')]:.2f}x before{suffix})")
    elif "error" in t:
        lines.append(f"- training: {t['error']}")
    p = result.get("pretraining", {})
    if "ratio" in p:
        lines.append(f"- pretraining loop with its data pipeline (synthetic BBOB + HPOBench, batch {p['batch_size']}, "
                     f"{p['steps']} steps a side):")
        for name in ("drawn one at a time", "grouped by length", "grouped by length, bfloat16", _SEPARATE_PIPELINE):
            if name not in p:
                continue
            r = p[name]
            lines.append(f"  - batches {name}: {r['examples_per_second']:.0f} examples/s, "
                         f"{r['input_tokens']:.0f} tokens encoded per example, "
                         f"{r['padding_share']:.0%} of the encoder's tokens padding"
                         + ("" if r["compiled"] else " (eager)"))
        lines.append(f"  - ratio grouped / one at a time: {p['ratio']:.2f}x")
        if "ratio_bfloat16" in p:
            lines.append(f"  - ratio bfloat16 / float32, grouped: {p['ratio_bfloat16']:.2f}x")
        if "ratio_separate" in p:
            lines.append(f"  - ratio {_SEPARATE_PIPELINE} / grouped by length (same precision): "
                         f"{p['ratio_separate']:.2f}x")
    elif "error" in p:
        lines.append(f"- pretraining loop: {p['error']}")
    lines.append(f"- peak RSS: {result['peak_rss_mib']:.0f} MiB")
    if result["config"]["tracemalloc"]:
        lines.append("- tracemalloc was on: timings include its overhead")
    return "\n".join(lines) + "\n"


def run_speed(
    config: SpeedConfig, *, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)
) -> dict[str, Any]:
    unknown = [d for d in config.designers if d not in DESIGNERS]
    if unknown:
        raise ValueError(f"unknown designer(s) {unknown}; valid: {', '.join(sorted(DESIGNERS))}")
    counts = sorted(config.trial_counts)
    if not counts or counts[0] < 1:
        raise ValueError(f"trial counts must be positive, got {config.trial_counts}")
    if config.suggests_per_count < 1:
        raise ValueError(f"suggests_per_count must be >= 1, got {config.suggests_per_count}")
    if any(b - a < config.suggests_per_count for a, b in zip(counts, counts[1:])):
        raise ValueError(
            f"trial counts {tuple(counts)} must be at least suggests_per_count={config.suggests_per_count} apart: "
            "each count is timed at n, n+1, ..., n+suggests_per_count-1 trials"
        )
    set_torch_threads(config.threads)
    task = _bbob_task(config)
    n_trials = max(max(counts) + config.suggests_per_count - 1, config.finetune_trials, config.sample_candidates)
    trials = _random_trials(task, n_trials, stable_seed("speed-trials", config.seed))
    result: dict[str, Any] = {
        "config": config_json(config),
        "environment": environment_info(),
        "task": task.label,
    }
    phase: dict[str, Any] = {}
    with _Phase(phase, config.tracemalloc):
        result["suggest"] = suggest_latency(config, task, trials, log)
    result["suggest_phase"] = phase
    try:
        result["sampling"] = sampling_throughput(config, task, trials)
    except Exception as e:  # noqa: BLE001
        result["sampling"] = _error(e)
    result["torch_matmul_flops_per_second"] = torch_matmul_flops(config.matmul_size)
    try:
        result["finetune"] = finetune_speed(config, task, trials)
    except Exception as e:  # noqa: BLE001
        result["finetune"] = _error(e)
    if config.train_steps > 0:
        try:
            result["training"] = training_throughput(config)
        except Exception as e:  # noqa: BLE001
            result["training"] = _error(e)
    if config.pipeline_steps > 0:
        try:
            result["pretraining"] = pretraining_throughput(config)
        except Exception as e:  # noqa: BLE001
            result["pretraining"] = _error(e)
    result["peak_rss_mib"] = peak_rss_mib()
    try:
        import torch

        result["environment"]["torch"] = torch.__version__
        result["environment"]["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    config.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config.out_dir / "speed.json", result)
    (config.out_dir / "speed.md").write_text(markdown(result))
    return result
