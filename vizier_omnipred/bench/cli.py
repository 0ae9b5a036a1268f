"""`vizier-omnipred bench {regression,ab,speed,service-load,token-loss,fold-pretrain,...}`.

Argument parsing only builds typed configs (RegressionConfig, ABConfig, SpeedConfig); the
work is in the modules, so everything here can be done from Python the same way.
Heavy imports (Vizier designers, torch, scikit-learn) happen when a command runs, not when
the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vizier_omnipred.cli_args import positive_int, torch_device, torch_threads


def _csv(text: str) -> tuple[str, ...]:
    from vizier_omnipred.bench.common import parse_csv

    return parse_csv(text)


def _int_csv(text: str) -> tuple[int, ...]:
    from vizier_omnipred.bench.common import parse_int_csv

    try:
        return parse_int_csv(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_regression(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench import regression as reg

    suites = reg.SUITES if args.suite == "all" else (args.suite,)
    config = reg.RegressionConfig(
        suites=suites,
        train_sizes=args.train_sizes,
        test_size=args.test_size,
        models=args.models or reg.MODELS,
        repeats=args.repeats,
        bbob_dims=args.dims,
        bbob_functions=args.functions or reg.DEFAULT_BBOB_FUNCTIONS,
        hpobench_datasets=args.datasets or None,
        synthetic_studies=args.synthetic_studies,
        synthetic_sparse_fraction=args.synthetic_sparse_fraction,
        omnipred=reg.OmniPredOptions(
            preset=args.preset,
            device=args.device,
            num_samples=args.num_samples,
            pretrained_checkpoint=args.pretrained_checkpoint,
            hpobench_checkpoint_pattern=args.hpobench_checkpoint_pattern,
            prior_trials=args.prior_trials,
            warmstart_epochs=args.warmstart_epochs,
            train_encoder={"auto": None, "yes": True, "no": False}[args.train_encoder],
            level_map={"auto": None, "yes": True, "no": False}[args.level_map],
            range_map={"auto": None, "yes": True, "no": False}[args.range_map],
            finetune_steps=args.finetune_steps,
            rank_frame=args.rank_frame,
            ensemble_size=args.omnipred_ensemble,
            precision=args.precision,
        ),
        out_dir=args.out,
        plot=args.plot,
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
    )
    try:
        report = reg.run_regression(config)
    except reg.RegressionConfigError as e:
        print(f"bench regression: {e}", file=sys.stderr)
        return 2
    print(report.table)
    print(f"results in {report.out_dir}")
    return _exit_status(sum(c["status"] == "failed" for c in report.cells), "cell(s)")


def _exit_status(failed: int, what: str) -> int:
    """1 when anything failed (after every result and table is written: the others still count),
    so that a script or CI running a benchmark notices; the table says which and why."""
    if failed:
        print(f"{failed} {what} failed (exit status 1); see the table's notes and the run files", file=sys.stderr)
        return 1
    return 0


def _cmd_several_metrics(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench import multiobjective as mo

    pairs = mo.DEFAULT_PAIRS
    if args.pairs:
        pairs = tuple((a, b, int(d)) for a, b, d in (p.split(":") for p in args.pairs))
    config = mo.Config(
        suite=args.suite,
        designers=tuple(args.designers) if args.designers else None,
        budget=args.budget,
        repeats=args.repeats,
        pairs=pairs,
        safety_functions=args.functions or ("Sphere",),
        safety_dims=args.dims or (2,),
        out_dir=args.out,
        resume=args.resume,
        workers=args.workers,
        seed=args.seed,
        plot=not args.no_plot,
        options=mo.Options(checkpoint=args.omnipred_checkpoint, device=args.device, threads=args.threads),
    )
    try:
        summary, table = mo.run(config)
    except ValueError as e:
        print(f"bench ab: {e}", file=sys.stderr)
        return 2
    print(table)
    return _exit_status(summary["failed_runs"], "run(s)")


def _cmd_ab(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench import ab

    if args.suite in ("multiobjective", "safety"):
        return _cmd_several_metrics(args)

    config = ab.ABConfig(
        suite=args.suite,
        designers=args.designers or ab.DEFAULT_DESIGNERS,
        budget=args.budget,
        repeats=args.repeats,
        workers=args.workers,
        ray_address=args.ray_address,
        out_dir=args.out,
        resume=args.resume,
        bbob_dims=args.dims or (2, 4, 8),
        bbob_functions=args.functions or ab.DEFAULT_BBOB_FUNCTIONS,
        hpobench_datasets=args.datasets or None,
        options=ab.DesignerOptions(
            omnipred_checkpoint=args.omnipred_checkpoint,
            omnipred_seed_trials=args.omnipred_seed_trials,
            omnipred_recipe=args.omnipred_recipe,
            num_samples=args.num_samples,
            omnipred_ensemble=args.omnipred_ensemble,
            omnipred_temperature=args.omnipred_temperature,
            omnipred_ucb_quantile=args.omnipred_ucb_quantile,
            device=args.device,
            prior_datasets=None if args.prior_datasets is None else str(args.prior_datasets),
            **({} if args.prior_trials is None else {"prior_trials": args.prior_trials}),
        ),
        seed=args.seed,
        reference_samples=args.reference_samples,
        plot=not args.no_plot,
        threads=args.threads,
    )
    try:
        report = ab.run_ab(config)
    except ab.ABConfigError as e:
        print(f"bench ab: {e}", file=sys.stderr)
        return 2
    print(report.table)
    print(f"{report.ran} run(s) done ({report.failed} failed), {report.skipped} skipped as finished; results in {report.out_dir}")
    return _exit_status(report.failed, "run(s)")


def _cmd_speed(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench import speed

    config = speed.SpeedConfig(
        trial_counts=args.trial_counts,
        suggests_per_count=args.suggests_per_count,
        designers=args.designers,
        dim=args.dim,
        function_name=args.function,
        checkpoint=args.checkpoint,
        device=args.device,
        num_samples=args.num_samples,
        sample_candidates=args.candidates,
        finetune_trials=args.finetune_trials,
        threads=args.threads,
        tracemalloc=args.tracemalloc,
        train_steps=args.train_steps,
        compile_training=not args.no_compile,
        bfloat16_training=not args.no_bfloat16,
        separate_study_text=not args.no_separate_study_text,
        pipeline_steps=args.pipeline_steps,
        out_dir=args.out,
        seed=args.seed,
    )
    try:
        result = speed.run_speed(config)
    except ValueError as e:
        print(f"bench speed: {e}", file=sys.stderr)
        return 2
    print(speed.markdown(result))
    print(f"results in {config.out_dir}")
    return 0


def _layouts(text: str) -> tuple[tuple[int, int], ...]:
    """'1x16,4x4' -> ((1, 16), (4, 4)): studies x workers per study."""
    try:
        out = tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split(","))
    except ValueError:
        out = ()
    if not out or any(len(p) != 2 or min(p) < 1 for p in out):
        raise argparse.ArgumentTypeError(f"expected STUDIESxWORKERS[,...] such as 1x16,4x4, got {text!r}")
    return out  # type: ignore[return-value]


def _cmd_service_load(args: argparse.Namespace) -> int:
    import tempfile

    from vizier_omnipred import service
    from vizier_omnipred.bench import service_load as sl
    from vizier_omnipred.bench.common import jsonable, set_torch_threads, write_json_atomic

    set_torch_threads(args.threads)
    regressor = None
    designer_kwargs = None
    if args.tiny:
        from vizier_omnipred.regressor import OmniPredRegressor
        from vizier_omnipred.training import FinetuneConfig

        regressor = OmniPredRegressor.from_scratch("tiny", seed=0)
        designer_kwargs = {"num_seed_trials": 2, "num_samples": 8, "num_candidates": 16,
                           "finetune_config": FinetuneConfig(max_epochs=2)}

    def make_factory(db: str):
        kwargs = dict(designer_kwargs or {})
        if regressor is not None:
            kwargs["regressor"] = regressor
        return service.OmniPredPolicyFactory(checkpoint=args.checkpoint, work_dir=service.default_work_dir(db),
                                             designer_kwargs=kwargs or None)

    configs = [
        sl.LoadConfig(studies=studies, thread_workers=workers - min(args.process_workers, workers),
                      process_workers=min(args.process_workers, workers), trials_per_worker=args.trials_per_worker,
                      timeout_s=args.timeout)
        for studies, workers in args.layouts
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out, prefix="db-") as db_dir:
        reports = sl.run_benchmark(args.algorithms, configs, make_factory, db_dir)
    print(sl.markdown(reports))
    write_json_atomic(args.out / "service_load.json", jsonable([
        {"config": {"algorithm": r.config.algorithm, "studies": r.config.studies,
                    "thread_workers": r.config.thread_workers, "process_workers": r.config.process_workers,
                    "trials_per_worker": r.config.trials_per_worker},
         "latencies_s": r.latencies, "wall_s": r.wall_s, "problems": r.problems, "counters": r.counters}
        for r in reports
    ]))
    problems = sum(len(r.problems) for r in reports)
    print(f"{problems} problem(s); results in {args.out / 'service_load.json'}")
    return 1 if problems else 0


def _cmd_fold_pretrain(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench import folds

    try:
        config = folds.FoldPretrainConfig(
            out_dir=str(args.out),
            folds=args.folds,
            init_checkpoint=args.init_from,
            preset=args.preset,
            trials_per_dataset=args.trials_per_dataset,
            synthetic_studies=args.synthetic_studies,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            device=args.device,
            num_threads=args.threads or 0,
            compile=args.compile,
            precision=args.precision,
            study_text=args.study_text,
            data_process=args.data_process,
            seed=args.seed,
        )
        if args.fold is not None and not 0 <= args.fold < args.folds:
            raise ValueError(f"--fold must be in [0, {args.folds - 1}]")
    except ValueError as e:
        print(f"bench fold-pretrain: {e}", file=sys.stderr)
        return 2
    finals = folds.build_fold_checkpoints(config, only=args.fold, progress=not args.no_progress)
    for j, path in finals.items():
        print(f"fold {j} (held out: {', '.join(config.layout[j])}): {path}")
    print(f"use: --hpobench-checkpoint-pattern '{args.out}/by-dataset/{{dataset}}'")
    return 0


def _cmd_token_loss(args: argparse.Namespace) -> int:
    import itertools
    import json

    from vizier_omnipred.bench import token_loss
    from vizier_omnipred.bench.common import set_torch_threads
    from vizier_omnipred.corpus.format import read_corpus
    from vizier_omnipred.corpus.hpobench import hpobench_studies
    from vizier_omnipred.model import CheckpointError, load_checkpoint

    set_torch_threads(args.threads)
    if not args.corpus and not args.hpobench:
        print("bench token-loss: give --corpus files and/or --hpobench datasets", file=sys.stderr)
        return 2
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        studies = itertools.chain(
            *(read_corpus(path) for path in args.corpus),
            hpobench_studies(args.hpobench, seed=args.seed) if args.hpobench else (),
        )
        rows = token_loss.compare_token_loss(checkpoint, studies, num_scored=args.num_scored, seed=args.seed,
                                             device=args.device)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"bench token-loss: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"bench token-loss: no study has the {2 * args.num_scored} usable trials needed "
              "(lower --num-scored)", file=sys.stderr)
        return 2
    table = token_loss.format_table(rows, checkpoint.vocab.float_tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "token_loss.json").write_text(json.dumps(
        {"checkpoint": str(args.checkpoint), "num_scored": args.num_scored, "seed": args.seed,
         "studies": [r.to_dict() for r in rows]}, indent=2))
    (args.out / "table.md").write_text(table + "\n")
    print(table)
    print(f"results in {args.out}")
    return 0


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench import learning_curve as lc

    try:
        config = lc.CurveConfig(
            dataset=args.dataset, num_train=args.num_train, num_test=args.num_test,
            number_features=args.number_features, presets=args.presets, precisions=args.precisions,
            study_texts=args.study_texts, steps=args.steps, batch_size=args.batch_size,
            learning_rate=args.learning_rate, num_samples=args.num_samples,
            seeds=args.seeds, threads=args.threads, rf=not args.no_rf, out_dir=args.out,
        )
    except ValueError as e:
        print(f"bench learning-curve: {e}", file=sys.stderr)
        return 2
    table = lc.run_learning_curve(config, log=lambda line: print(line, flush=True))
    print(table)
    print(f"results in {args.out}")
    return 0


def _cmd_scratch_fit(args: argparse.Namespace) -> int:
    from vizier_omnipred.bench import scratch_fit as sf

    try:
        config = sf.ScratchFitConfig(
            tasks=args.tasks, num_train=args.num_train, num_test=args.num_test,
            budgets=sf.parse_budgets(args.budgets), preset=args.preset, number_features=args.number_features,
            study_text=args.study_text, number_max_frequency=args.number_max_frequency,
            seeds=args.seeds, threads=args.threads, checkpoint=args.checkpoint, skip_scratch=args.skip_scratch,
            out_dir=args.out,
        )
        table = sf.run_scratch_fit(config, log=lambda line: print(line, flush=True))
    except ValueError as e:
        print(f"bench scratch-fit: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"results in {args.out}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from vizier_omnipred.text import STUDY_TEXT_LAYOUTS
    from vizier_omnipred.training import PRECISIONS  # as `pretrain`, whose parser imports it already

    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: regression accuracy, designer A/B, speed",
        description="Benchmarks of the OmniPred regressor and designer against classic and Vizier baselines.",
    )
    bench.set_defaults(func=lambda _args: (bench.print_help(), 2)[1])
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")

    # ----- regression --------------------------------------------------------------------
    r = sub.add_parser(
        "regression",
        help="prediction accuracy on held-out trials (nMAE, rank correlation, calibration)",
        description=(
            "Fits each model on n trials of a study and predicts held-out trials. HPOBench is "
            "leave-one-out: pretrained OmniPred cells need --hpobench-checkpoint-pattern with "
            "'{dataset}' (a checkpoint pretrained without that dataset) and are skipped without it. "
            "A failed cell is reported and the others go on; the exit status is then 1."
        ),
    )
    r.add_argument("--suite", choices=("bbob", "hpobench", "synthetic", "all"), default="all",
                   help="synthetic: new studies of the synthetic pretraining family (a seed no pretraining here uses)")
    r.add_argument("--train-sizes", type=_int_csv, default=(10, 30, 100), help="comma list (default 10,30,100)")
    r.add_argument("--test-size", type=int, default=200)
    r.add_argument("--models", type=_csv, default=None,
                   help="comma list of gp,rf,gbt,mlp,vizier-gp,transfer,omnipred-scratch,"
                        "omnipred-pretrained,omnipred-finetuned,omnipred-warmstart (default: all)")
    r.add_argument("--repeats", type=int, default=1)
    r.add_argument("--dims", type=_int_csv, default=(2, 4, 8), help="BBOB dimensions (default 2,4,8)")
    r.add_argument("--functions", type=_csv, default=None,
                   help="BBOB functions (default Sphere,Ellipsoidal,Rastrigin,RosenbrockRotated)")
    r.add_argument("--datasets", type=_csv, default=None, help="HPOBench datasets (default: all 8)")
    r.add_argument("--synthetic-studies", type=int, default=8, help="studies of the synthetic suite per repeat")
    r.add_argument("--synthetic-sparse-fraction", type=float, default=0.0,
                   help="fraction of the synthetic suite's studies where only some parameters matter")
    r.add_argument("--pretrained-checkpoint", default=None,
                   help="checkpoint for omnipred-pretrained/-finetuned on BBOB (default: the shipped one)")
    r.add_argument("--hpobench-checkpoint-pattern", default=None,
                   help="per held-out dataset checkpoint, e.g. 'ckpts/loo-{dataset}'")
    r.add_argument("--prior-trials", type=int, default=32,
                   help="omnipred-warmstart: trials of each other HPOBench dataset used as prior studies")
    r.add_argument("--warmstart-epochs", type=int, default=10, help="omnipred-warmstart fine-tuning epochs")
    r.add_argument("--level-map", choices=("auto", "yes", "no"), default="auto",
                   help="fine-tuned cells: map the zero-shot medians onto the study's values first "
                        "(FinetuneConfig.level_map; auto: the recipe's)")
    r.add_argument("--range-map", choices=("auto", "yes", "no"), default="auto",
                   help="fine-tuned and scratch cells: write the study's values on one decade of the float tokens "
                        "(FinetuneConfig.range_map; auto: the recipe's, on in the full recipe)")
    r.add_argument("--finetune-steps", type=int, default=None,
                   help="fine-tuned cells: optimizer steps (FinetuneConfig.max_steps; 0: the level map alone)")
    r.add_argument("--rank-frame", action="store_true",
                   help="fine-tuned and scratch cells: the range frame over the values' normal scores "
                        "(FinetuneConfig.rank_frame)")
    r.add_argument("--train-encoder", choices=("auto", "yes", "no"), default="auto",
                   help="fine-tuning a checkpoint also updates its encoder (auto: FinetuneConfig's default, "
                        "the full recipe: it does)")
    r.add_argument("--preset", default="small", help="model preset of omnipred-scratch")
    r.add_argument("--num-samples", type=int, default=64, help="OmniPred samples per test point")
    r.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the OmniPred fits' training steps (FinetuneConfig.precision)")
    r.add_argument("--omnipred-ensemble", type=int, default=1,
                   help="OmniPredRegressor ensemble_size of the OmniPred models (members fitted alike, samples shared)")
    r.add_argument("--device", type=torch_device, default="cpu")
    r.add_argument("--threads", type=torch_threads, default=None, help="torch threads (default: torch's)")
    r.add_argument("--out", type=Path, default=Path("runs/bench/regression"))
    r.add_argument("--plot", action="store_true", help="write pred_vs_true_n{n}.png")
    r.add_argument("--workers", type=int, default=1, help="run tasks in this many processes")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_cmd_regression)

    # ----- ab ----------------------------------------------------------------------------
    a = sub.add_parser(
        "ab",
        help="designer A/B: normalized regret, win rates vs GP bandits, s/suggest",
        description=(
            "Runs designers on shifted BBOB functions or HPOBench tables. One JSON file per run; "
            "--resume skips finished runs. Runs go to --workers local processes (spawn) or to "
            "a Ray cluster with --ray-address (needs `pip install ray`). A failed run is recorded and "
            "retried by --resume; the others go on, and the exit status is then 1."
        ),
    )
    a.add_argument("--suite", choices=("bbob", "hpobench", "multiobjective", "safety"), default="bbob",
                   help="multiobjective: two-objective BBOB fronts (hypervolume); safety: unsafe trials spent")
    a.add_argument("--pairs", type=_csv, default=None,
                   help="multiobjective: BBOB pairs as f1:f2:dim, comma separated (default Sphere:Sphere:2,Sphere:Rastrigin:3)")
    a.add_argument("--designers", type=_csv, default=None,
                   help="comma list of designers: omnipred, gp_bandit, gp_ucb_pe, random, omnipred_no_trust_region "
                        "(the trust-region ablation), gp_bandit_priors (HPOBench: the GP bandit with the "
                        "other datasets' trials as priors)")
    a.add_argument("--budget", type=int, default=30, help="trials per run")
    a.add_argument("--repeats", type=int, default=5, help="repeats per task (new random shift each)")
    a.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    a.add_argument("--ray-address", default=None, help="run repeats as Ray tasks on this cluster ('auto', host:port)")
    a.add_argument("--out", type=Path, default=Path("runs/bench/ab"))
    a.add_argument("--resume", action="store_true", help="skip runs already finished in --out")
    a.add_argument("--dims", type=_int_csv, default=None, help="BBOB dimensions (default 2,4,8; safety: 2)")
    a.add_argument("--functions", type=_csv, default=None, help="BBOB functions (default Sphere,Rastrigin)")
    a.add_argument("--datasets", type=_csv, default=None, help="HPOBench datasets (default: all 8)")
    a.add_argument("--omnipred-checkpoint", default=None,
                   help="OmniPredDesigner checkpoint; may contain '{dataset}' for leave-one-out on HPOBench")
    a.add_argument("--omnipred-recipe", choices=("full", "full-raw", "full-rank", "transfer", "level"), default=None,
                   help="the OmniPred designer's fit recipe (training.RECIPES; default: the designer's)")
    a.add_argument("--num-samples", type=int, default=64, help="OmniPred y samples per candidate")
    a.add_argument("--omnipred-ensemble", type=int, default=1,
                   help="the OmniPred designer's ensemble_size (models fine-tuned on the study, samples shared)")
    a.add_argument("--omnipred-temperature", type=float, default=None,
                   help="the OmniPred designer's sampling temperature (default: the designer's)")
    a.add_argument("--omnipred-ucb-quantile", type=float, default=None, metavar="Q",
                   help="the OmniPred designer's acquisition: the Q-quantile of its samples "
                        "(acquisitions.UpperQuantile; default: the designer's)")
    a.add_argument("--omnipred-seed-trials", type=int, default=None,
                   help="quasi-random trials before OmniPred's model is used (default: the designer's)")
    a.add_argument("--prior-datasets", type=Path, default=None, metavar="FOLDS_JSON",
                   help="gp_bandit_priors: folds layout (folds.json of `bench fold-pretrain`); the priors of "
                        "dataset D are the datasets its fold's checkpoint trained on (default: the other 7)")
    a.add_argument("--prior-trials", type=int, default=None,
                   help="gp_bandit_priors: random configurations per prior dataset (default 100)")
    a.add_argument("--device", type=torch_device, default="cpu")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--reference-samples", type=int, default=1000,
                   help="random points per task for the regret normalisation (BBOB)")
    a.add_argument("--no-plot", action="store_true")
    a.add_argument("--threads", type=torch_threads, default=None, help="torch threads per run (default: torch's)")
    a.set_defaults(func=_cmd_ab)

    # ----- speed -------------------------------------------------------------------------
    s = sub.add_parser(
        "speed",
        help="suggest latency OmniPred vs GP bandit, sampling throughput, fine-tune cost, memory",
    )
    s.add_argument("--trial-counts", type=_int_csv, default=(10, 50, 200))
    s.add_argument("--suggests-per-count", type=int, default=3,
                   help="timed suggestions per trial count, one new trial before each (median reported)")
    s.add_argument("--designers", type=_csv, default=("omnipred", "gp_bandit"))
    s.add_argument("--dim", type=int, default=4)
    s.add_argument("--function", default="Sphere")
    s.add_argument("--checkpoint", default=None, help="OmniPred checkpoint (default: the shipped one)")
    s.add_argument("--device", type=torch_device, default="cpu")
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument("--candidates", type=int, default=64, help="inputs for the sampling throughput")
    s.add_argument("--finetune-trials", type=int, default=100)
    s.add_argument("--threads", type=torch_threads, default=None, help="torch threads (default: torch's)")
    s.add_argument("--tracemalloc", action="store_true", help="also record Python-heap peaks (slows timings)")
    s.add_argument("--train-steps", type=int, default=30,
                   help="training steps timed per side (this version vs before numbers as numbers); 0 skips")
    s.add_argument("--no-compile", action="store_true", help="skip the torch.compile side of the training throughput")
    s.add_argument("--no-bfloat16", action="store_true",
                   help="skip the bfloat16-autocast sides of the training throughput")
    s.add_argument("--no-separate-study-text", action="store_true",
                   help="skip the training-throughput sides that encode the study text once per batch")
    s.add_argument("--pipeline-steps", type=int, default=90,
                   help="pretraining-loop steps timed per side (batches ungrouped vs grouped by length); 0 skips")
    s.add_argument("--out", type=Path, default=Path("runs/bench/speed"))
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_speed)

    # ----- service-load ------------------------------------------------------------------
    sl = sub.add_parser(
        "service-load",
        help="Suggest latency with many workers on one server: OMNIPRED vs the GP bandit, plus checks",
        description=(
            "Starts the project's Vizier server on a SQLite file (loopback), creates STUDIES studies per "
            "layout, and runs WORKERS clients per study (threads, and --process-workers OS processes), each "
            "completing --trials-per-worker trials. Prints Suggest latency percentiles (queueing included) "
            "and checks the datastore afterwards: every trial completed exactly once, no repeated "
            "parameters, no worker errors or hangs. Exit status 1 if a check failed."
        ),
    )
    sl.add_argument("--algorithms", type=_csv, default=("OMNIPRED", "GAUSSIAN_PROCESS_BANDIT"))
    sl.add_argument("--layouts", type=_layouts, default=((1, 16), (4, 4)),
                    help="STUDIESxWORKERS per run, comma-separated (default 1x16,4x4)")
    sl.add_argument("--process-workers", type=int, default=4, help="of each study's workers, how many are processes")
    sl.add_argument("--trials-per-worker", type=int, default=1)
    sl.add_argument("--checkpoint", default=None, help="OmniPred checkpoint (default: the shipped one)")
    sl.add_argument("--tiny", action="store_true", help="a tiny untrained model and a cheap designer (smoke run)")
    sl.add_argument("--timeout", type=float, default=900.0, help="seconds per run before a worker counts as hung")
    sl.add_argument("--threads", type=torch_threads, default=1, help="torch threads in the server")
    sl.add_argument("--out", type=Path, default=Path("runs/bench/service-load"))
    sl.set_defaults(func=_cmd_service_load)

    # ----- token-loss --------------------------------------------------------------------
    t = sub.add_parser(
        "token-loss",
        help="per-digit y loss of a checkpoint against an x-blind per-study marginal",
        description=(
            "Scores random trials of each study with the checkpoint and with a count model of the "
            "study's y tokens fitted on its other trials (blind to the parameters). A checkpoint that "
            "only beats the marginal by little has learned each study's spread of y, not how y depends on x."
        ),
    )
    t.add_argument("--checkpoint", required=True)
    t.add_argument("--corpus", type=Path, action="append", default=[], help="corpus file (repeatable)")
    t.add_argument("--hpobench", type=_csv, default=(), help="HPOBench datasets to score, e.g. a held-out one")
    t.add_argument("--num-scored", type=positive_int, default=300, help="trials scored per study")
    t.add_argument("--device", type=torch_device, default="cpu")
    t.add_argument("--threads", type=torch_threads, default=None, help="torch threads (default: torch's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=Path("runs/bench/token-loss"))
    t.set_defaults(func=_cmd_token_loss)

    # ----- learning-curve ----------------------------------------------------------------
    c = sub.add_parser(
        "learning-curve",
        help="from scratch on one HPOBench dataset: held-out accuracy per step and CPU-second, per input representation",
    )
    c.add_argument("--dataset", default="kc1")
    c.add_argument("--num-train", type=int, default=2400)
    c.add_argument("--num-test", type=int, default=1000)
    c.add_argument("--number-features", type=_csv, default=("none", "position"),
                   help="comma list of the codec's number_features: none, position, magnitude")
    c.add_argument("--presets", type=_csv, default=("small",))
    c.add_argument("--precisions", type=_csv, default=("float32",),
                   help="comma list of the training steps' forward pass: float32, bfloat16 (autocast)")
    c.add_argument("--study-texts", type=_csv, default=("inline",),
                   help="comma list of the codec's study_text layouts: inline, separate (encoded once per batch)")
    c.add_argument("--steps", type=_int_csv, default=(200, 400, 600), help="evaluation steps (default 200,400,600)")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--learning-rate", type=float, default=None)
    c.add_argument("--num-samples", type=int, default=32)
    c.add_argument("--seeds", type=_int_csv, default=(0,))
    c.add_argument("--threads", type=torch_threads, default=1)
    c.add_argument("--no-rf", action="store_true", help="skip the random-forest reference rows")
    c.add_argument("--out", type=Path, default=Path("runs/bench/learning-curve"))
    c.set_defaults(func=_cmd_learning_curve)

    # ----- scratch-fit -------------------------------------------------------------------
    f = sub.add_parser(
        "scratch-fit",
        help="OmniPredRegressor.from_scratch().fit() on small studies of several task families vs a random forest",
    )
    f.add_argument("--tasks", type=_csv, default=("smooth3", "bbob-Sphere-4", "bbob-Rastrigin-2", "hpobench-kc1"),
                   help="comma list: smooth3, bbob-<Function>-<dim>, hpobench-<dataset>")
    f.add_argument("--num-train", type=int, default=150)
    f.add_argument("--num-test", type=int, default=100)
    f.add_argument("--budgets", type=_csv, default=("default",),
                   help="comma list of step budgets (FinetuneConfig.max_steps); 'default': the regressor's recipe")
    f.add_argument("--preset", default="small")
    f.add_argument("--number-features", default="position")
    f.add_argument("--study-text", choices=STUDY_TEXT_LAYOUTS, default="inline",
                   help="the models' TextCodec.study_text: inline, or separate (encoded once per batch)")
    f.add_argument("--number-max-frequency", type=float, default=None,
                   help="the models' number embedding's highest frequency, in cycles over a parameter's range "
                        "(default: model.SCRATCH_NUMBER_EMBEDDING's, 8; pretrained models use 64)")
    f.add_argument("--seeds", type=_int_csv, default=(0,))
    f.add_argument("--threads", type=torch_threads, default=1)
    f.add_argument("--checkpoint", default=None,
                   help="also fine-tune this checkpoint on the same trials ('shipped': the packaged one)")
    f.add_argument("--skip-scratch", action="store_true", help="only the random forest and --checkpoint rows")
    f.add_argument("--out", type=Path, default=Path("runs/bench/scratch-fit"))
    f.set_defaults(func=_cmd_scratch_fit)

    # ----- fold-pretrain ----------------------------------------------------------------
    fo = sub.add_parser(
        "fold-pretrain",
        help="HPOBench held-out-dataset checkpoints: k folds over datasets, one pretraining each",
        description=(
            "Deals the 8 HPOBench datasets into K folds; the checkpoint of fold j is pretrained (from a "
            "fresh model) on the datasets outside fold j plus synthetic BBOB studies, and is used only "
            "for fold j's datasets. Writes OUT/fold-j/final, OUT/folds.json and OUT/by-dataset/<dataset> "
            "links. Resumable; finished folds are skipped. --folds 8 is leave-one-out. Run one process "
            "per fold (--fold j) to use several cores."
        ),
    )
    fo.add_argument("--out", type=Path, default=Path("runs/folds"))
    fo.add_argument("--folds", type=int, default=2, help="number of folds (8: leave-one-out)")
    fo.add_argument("--fold", type=int, default=None, help="build only this fold (default: all, in turn)")
    fo.add_argument("--init-from", default=None,
                    help="start from this checkpoint (refused if it has read any HPOBench dataset)")
    fo.add_argument("--preset", default="small")
    fo.add_argument("--trials-per-dataset", type=int, default=6000, help="configurations per training dataset")
    fo.add_argument("--synthetic-studies", type=int, default=200, help="synthetic BBOB studies mixed in")
    fo.add_argument("--steps", type=int, default=6400)
    fo.add_argument("--batch-size", type=int, default=64)
    fo.add_argument("--learning-rate", type=float, default=None)
    fo.add_argument("--device", type=torch_device, default="cpu")
    fo.add_argument("--threads", type=torch_threads, default=None, help="torch threads (default: torch's)")
    fo.add_argument("--compile", action="store_true", help="train through torch.compile (see `pretrain --compile`)")
    fo.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="the training steps' forward pass (see `pretrain --precision`)")
    fo.add_argument("--study-text", choices=STUDY_TEXT_LAYOUTS, default="inline",
                    help="how the folds' models read the study text (see `pretrain --study-text`)")
    fo.add_argument("--data-process", action="store_true",
                    help="make each fold's first pass in a second process (see `pretrain --data-process`); for a "
                         "fold built alone on a 2-core machine")
    fo.add_argument("--seed", type=int, default=0)
    fo.add_argument("--no-progress", action="store_true")
    fo.set_defaults(func=_cmd_fold_pretrain)
