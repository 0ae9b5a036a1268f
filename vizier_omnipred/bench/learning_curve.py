"""`bench learning-curve`: how fast a model from scratch learns one study's y(x).

The question behind it: does the model learn how y depends on x within what a CPU can
spend, and how does the input representation of numbers change that? One HPOBench
dataset is split into training and held-out configurations; for each variant (the text
codec's `number_features` x a model preset) a model is trained from scratch with the
pretraining schedule (warm-up, cosine), and at the given steps it is scored on the
held-out configurations: Spearman and normalized MAE of the median of its samples, the
NLL of the first y digit (the x-blind model's is printed for scale), examples/s and the
CPU-seconds spent training. A random forest on the same training configurations is the
reference row. Everything runs in one process, one variant after the other, so the
ratios between rows hold on a shared, noisy machine.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np

from vizier_omnipred.bench.common import config_json, jsonable, set_torch_threads, write_json_atomic
from vizier_omnipred.text import NUMBER_FEATURES, check_study_text


@attrs.frozen
class CurveConfig:
    """One learning-curve run. Fields mirror the command's options."""

    dataset: str = "kc1"
    num_train: int = 2400
    num_test: int = 1000
    number_features: tuple[str, ...] = ("none", "position")
    presets: tuple[str, ...] = ("small",)
    precisions: tuple[str, ...] = ("float32",)  # the training steps' forward pass (training.PRECISIONS)
    study_texts: tuple[str, ...] = ("inline",)  # the codec's study_text layouts (text.STUDY_TEXT_LAYOUTS)
    steps: tuple[int, ...] = (200, 400, 600)  # evaluation points; training runs to the last
    batch_size: int = 32
    learning_rate: float | None = None  # None: the preset's
    warmup_steps: int = 40
    num_samples: int = 32
    seeds: tuple[int, ...] = (0,)
    threads: int = 1
    rf: bool = True
    out_dir: Path = Path("runs/bench/learning-curve")

    def __attrs_post_init__(self):
        from vizier_omnipred.model import get_preset

        bad = [f for f in self.number_features if f not in NUMBER_FEATURES]
        if bad:
            raise ValueError(f"unknown number_features {bad}; valid: {NUMBER_FEATURES}")
        from vizier_omnipred.training import check_precision

        for p in self.presets:
            get_preset(p)
        for p in self.precisions:
            check_precision(p)
        for s in self.study_texts:
            check_study_text(s)
        if not self.steps or any(s < 1 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must be increasing positive integers, got {self.steps}")
        if self.num_train < 10 or self.num_test < 10:
            raise ValueError("num_train and num_test must be >= 10")


@attrs.frozen
class CurvePoint:
    variant: str
    seed: int
    step: int
    spearman: float
    nmae: float
    nll_d1: float
    examples_per_second: float
    train_cpu_seconds: float
    input_tokens: float


def _split(config: CurveConfig):
    from vizier_omnipred.corpus.hpobench import hpobench_studies

    record = next(hpobench_studies([config.dataset], seed=0,
                                   max_trials_per_study=config.num_train + config.num_test))
    trials = list(record.trials)
    if len(trials) < config.num_train + config.num_test:
        raise ValueError(f"{config.dataset} has only {len(trials)} configurations")
    return record.problem, trials[: config.num_train], trials[config.num_train:]


def _y(problem, trials) -> np.ndarray:
    name = problem.metric_information.item().name
    return np.array([t.final_measurement.metrics[name].value for t in trials])


def x_blind_d1_nll(problem, train, test) -> float:
    """NLL of the first mantissa digit under `bench token-loss`'s x-blind count model of the
    training split's y tokens: what a model that ignores x can reach on that position."""
    from vizier_omnipred.bench.token_loss import marginal_token_nll
    from vizier_omnipred.numbers import FloatTokenizer, OutOfRangeWarning

    ft = FloatTokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        train_tokens = [ft.encode(v) for v in _y(problem, train)]
        test_tokens = [ft.encode(v) for v in _y(problem, test)]
    return float(marginal_token_nll(train_tokens, test_tokens, ft)[:, 1].mean())


def run_variant(config: CurveConfig, problem, train, test, number_features: str, preset: str,
                seed: int, log=print, precision: str = "float32", study_text: str = "inline") -> list[CurvePoint]:
    import torch

    from vizier_omnipred import model as model_lib
    from vizier_omnipred.bench.metrics import normalized_mae, spearman
    from vizier_omnipred.regressor import OmniPredRegressor
    from vizier_omnipred.text import TextCodec
    from vizier_omnipred.training import Batch, make_examples, model_token_nll, train_step, warmup_cosine

    variant = (f"{number_features}/{preset}" + ("" if precision == "float32" else f"/{precision}")
               + ("" if study_text == "inline" else f"/study text {study_text}"))
    codec = TextCodec(number_features=number_features, study_text=study_text)
    # The representation as pretraining builds it (thousands of configurations, as here), not the
    # smoother embedding `from_scratch` gives a model for one small study (on these 2,400 kc1
    # configurations that one is behind at 200 steps and level from 400: docs/BENCHMARKS.md,
    # "A smoother number embedding from scratch").
    reg = OmniPredRegressor.from_scratch(preset, codec=codec, seed=seed, num_samples=config.num_samples,
                                         tokenizer_texts=codec.serialize_many(problem, train),
                                         number_embedding=model_lib.PRETRAINING_NUMBER_EMBEDDING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_ex, _ = make_examples(reg.vocab, codec, problem, train)
        test_ex, _ = make_examples(reg.vocab, codec, problem, test)
    reg.set_problem(problem)
    model, device = reg.checkpoint.model, reg.device
    masks = reg.masks
    y_test = _y(problem, test)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = config.learning_rate or reg.checkpoint.preset.learning_rate
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps[-1], 0.1))
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(train_ex)), 0
    cpu, wall, points = 0.0, 0.0, []
    tokens = float(np.mean([encoded_tokens(e, config.batch_size) for e in train_ex]))
    model.train()
    for step in range(1, config.steps[-1] + 1):
        if pos + config.batch_size > len(order):
            order, pos = rng.permutation(len(train_ex)), 0
        batch_examples = [train_ex[i] for i in order[pos: pos + config.batch_size]]
        pos += config.batch_size
        c0, w0 = time.process_time(), time.perf_counter()
        train_step(model, Batch.collate(batch_examples, device), optimizer, masks, params, 1.0, precision)
        scheduler.step()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        if step in config.steps:
            samples = reg.sample(test, seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred = samples.quantiles([0.5])[0]
            pred = np.where(np.isfinite(pred), pred, np.nanmedian(pred) if np.isfinite(pred).any() else 0.0)
            nll = model_token_nll(model, test_ex, masks, device)
            point = CurvePoint(variant=variant, seed=seed, step=step, spearman=spearman(y_test, pred),
                               nmae=normalized_mae(y_test, pred), nll_d1=float(nll[:, 1].mean()),
                               examples_per_second=step * config.batch_size / max(wall, 1e-9),
                               train_cpu_seconds=cpu, input_tokens=tokens)
            points.append(point)
            log(f"[{variant} seed {seed}] step {step}: Spearman {point.spearman:.3f} nMAE {point.nmae:.4f} "
                f"d1 {point.nll_d1:.3f} ex/s {point.examples_per_second:.0f} cpu {cpu:.0f}s")
            model.train()
    return points


def encoded_tokens(example, batch_size: int) -> float:
    """Input tokens the encoder reads per example: all of them inline; with the study text
    apart, the trial's plus the study's shared by the batch (one study per batch here)."""
    if example.study_start is None:
        return float(len(example.input_ids))
    return example.study_start + (len(example.input_ids) - example.study_start) / batch_size


def rf_reference(problem, train, test, sizes: Sequence[int], seed: int = 0) -> dict[int, tuple[float, float]]:
    from vizier_omnipred.bench.baselines import classic_model
    from vizier_omnipred.bench.metrics import normalized_mae, spearman

    y = _y(problem, test)
    out = {}
    for n in sizes:
        model = classic_model("rf", seed)
        model.fit(problem, train[:n])
        pred = model.predict(test).mean
        out[n] = (spearman(y, pred), normalized_mae(y, pred))
    return out


def format_table(config: CurveConfig, points: Sequence[CurvePoint], rf: dict, x_blind: float) -> str:
    steps = config.steps
    lines = [
        f"learning curve on HPOBench {config.dataset}: {config.num_train} training / {config.num_test} held-out "
        f"configurations, batch {config.batch_size}, {config.threads} thread(s), median of {config.num_samples} "
        f"samples; mean over seeds {list(config.seeds)}",
        "",
        "| variant | input tokens | train ex/s | Spearman @ " + " / ".join(map(str, steps))
        + f" | nMAE @{steps[-1]} | d1 nats @{steps[-1]} | CPU-s to {steps[-1]} |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = list(dict.fromkeys(p.variant for p in points))
    for v in variants:
        rows = [p for p in points if p.variant == v]

        def mean(field, step):
            return float(np.mean([getattr(p, field) for p in rows if p.step == step]))

        last = steps[-1]
        lines.append(
            f"| {v} | {mean('input_tokens', last):.1f} | {mean('examples_per_second', last):.0f} | "
            + " / ".join(f"{mean('spearman', s):.3f}" for s in steps)
            + f" | {mean('nmae', last):.4f} | {mean('nll_d1', last):.3f} | {mean('train_cpu_seconds', last):.0f} |"
        )
    lines.append(f"| x-blind count model (bench token-loss) | | | | | {x_blind:.3f} | |")
    for n, (rho, nmae) in rf.items():
        lines.append(f"| random forest on {n} configurations | | | {rho:.3f} | {nmae:.4f} | | |")
    return "\n".join(lines)


def run_learning_curve(config: CurveConfig, log=print) -> str:
    set_torch_threads(config.threads)
    problem, train, test = _split(config)
    points: list[CurvePoint] = []
    for preset in config.presets:
        for features in config.number_features:
            for precision in config.precisions:
                for study_text in config.study_texts:
                    for seed in config.seeds:
                        points += run_variant(config, problem, train, test, features, preset, seed, log=log,
                                              precision=precision, study_text=study_text)
    x_blind = x_blind_d1_nll(problem, train, test)
    rf = rf_reference(problem, train, test, sorted({config.num_train, 30, 10}, reverse=True)) if config.rf else {}
    table = format_table(config, points, rf, x_blind)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "learning_curve.json", jsonable({
        "config": config_json(config),
        "points": [attrs.asdict(p) for p in points],
        "random_forest": {str(n): {"spearman": r, "nmae": m} for n, (r, m) in rf.items()},
        "x_blind_nll_d1": x_blind,
    }))
    (out / "table.md").write_text(table + "\n")
    return table
