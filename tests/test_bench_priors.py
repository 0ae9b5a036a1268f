"""`bench ab`'s gp_bandit_priors: Vizier's GP bandit given other HPOBench datasets' trials
through `set_priors`, with the same held-out rule as OmniPred's fold checkpoints.

Real Vizier and real HPOBench tables; nothing is mocked. The GP's JAX compilation is slow,
so a single test suggests end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import attrs
import pytest
from vizier import algorithms as vza

from vizier_omnipred.bench import ab
from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS, HPOBENCH_METRIC


@attrs.frozen
class NoDatasetTask:
    """A task of the hpobench suite without a dataset (a custom problem)."""

    suite: ClassVar[str] = "hpobench"

    @property
    def task_id(self) -> str:
        return "sphere-2d"

    def build(self, seed: int) -> ab.BuiltTask:
        from vizier._src.benchmarks.experimenters.synthetic import bbob
        from vizier.benchmarks.experimenters import NumpyExperimenter

        exptr = NumpyExperimenter(bbob.Sphere, bbob.DefaultBBOBProblemStatement(2))
        return ab.BuiltTask(exptr.problem_statement(), exptr, label="test/sphere-2d", known_optimum=0.0)


def _write_folds(path: Path, folds: list[tuple[list[str], list[str]]]) -> str:
    """A layout as `bench fold-pretrain` writes it: {"folds": [{fold, held_out, trained_on}]}."""
    layout = {"folds": [{"fold": j, "held_out": held, "trained_on": trained, "checkpoint": f"fold-{j}/final"}
                        for j, (held, trained) in enumerate(folds)]}
    path.write_text(json.dumps(layout))
    return str(path)


def _two_folds(tmp_path: Path) -> str:
    ordered = sorted(HPOBENCH_DATASETS)
    first, second = list(ordered[0::2]), list(ordered[1::2])
    return _write_folds(tmp_path / "folds.json", [(first, second), (second, first)])


def test_priors_never_include_the_dataset_and_follow_the_folds(tmp_path):
    for dataset in HPOBENCH_DATASETS:  # no layout: the other seven
        priors = ab.prior_datasets_for(dataset)
        assert dataset not in priors and len(priors) == 7 and set(priors) < set(HPOBENCH_DATASETS)
    folds = _two_folds(tmp_path)
    layout = json.loads(Path(folds).read_text())["folds"]
    for fold in layout:
        for dataset in fold["held_out"]:  # a layout: exactly that fold's trained_on, in its order
            assert ab.prior_datasets_for(dataset, folds) == tuple(fold["trained_on"])
            assert dataset not in ab.prior_datasets_for(dataset, folds)

    # the settings a run records, and the designer's validation on a built task
    task = ab.HPOBenchTask("kc1").build(seed=0)
    settings = ab.DESIGNERS["gp_bandit_priors"].settings(ab.DesignerOptions(prior_datasets=folds, prior_trials=7), task)
    assert settings["prior_trials"] == 7 and "kc1" not in settings["prior_datasets"]
    assert settings["prior_datasets"] == next(f["trained_on"] for f in layout if "kc1" in f["held_out"])


def test_priors_layout_errors_are_clear(tmp_path):
    with pytest.raises(ab.ABConfigError, match="no such file"):
        ab.prior_datasets_for("kc1", str(tmp_path / "missing.json"))
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ab.ABConfigError, match="not a readable folds layout"):
        ab.prior_datasets_for("kc1", str(tmp_path / "junk.json"))
    uncovered = _write_folds(tmp_path / "uncovered.json", [(["car"], ["segment"])])
    with pytest.raises(ab.ABConfigError, match="no fold hold.* 'kc1'"):
        ab.prior_datasets_for("kc1", uncovered)
    twice = _write_folds(tmp_path / "twice.json", [(["kc1"], ["car"]), (["kc1"], ["segment"])])
    with pytest.raises(ab.ABConfigError, match="2 folds hold.* 'kc1'"):
        ab.prior_datasets_for("kc1", twice)
    leaky = _write_folds(tmp_path / "leaky.json", [(["kc1"], ["car", "kc1"])])
    with pytest.raises(ab.ABConfigError, match="both holds out and trains on 'kc1'"):
        ab.prior_datasets_for("kc1", leaky)
    task = ab.HPOBenchTask("kc1").build(seed=0)
    with pytest.raises(ab.ABConfigError, match="prior-trials must be >= 1"):
        ab.DESIGNERS["gp_bandit_priors"].settings(ab.DesignerOptions(prior_trials=0), task)


def test_priors_are_seeded_random_trials_with_the_problem_metric():
    problem = ab.HPOBenchTask("kc1").build(seed=0).problem
    studies = ab.hpobench_prior_studies(problem, ("car", "segment"), trials=4, seed=11)
    assert len(studies) == 2 and all(isinstance(s, vza.CompletedTrials) for s in studies)
    assert all(len(s.trials) == 4 for s in studies)
    for study in studies:
        for trial in study.trials:
            assert set(trial.final_measurement.metrics) == {HPOBENCH_METRIC}
            assert problem.search_space.contains(trial.parameters)  # same space as the target
    again = ab.hpobench_prior_studies(problem, ("car", "segment"), trials=4, seed=11)
    other = ab.hpobench_prior_studies(problem, ("car", "segment"), trials=4, seed=12)

    def params(ss):
        return [[t.parameters.as_dict() for t in s.trials] for s in ss]

    assert params(again) == params(studies) and params(other) != params(studies)


def test_priors_designer_only_runs_where_there_are_related_studies(tmp_path):
    config = ab.ABConfig(suite="bbob", designers=("gp_bandit_priors", "random"), out_dir=tmp_path, plot=False)
    with pytest.raises(ab.ABConfigError, match="gp_bandit_priors runs only on suite.* hpobench, not bbob"):
        ab.validate_config(config)
    with pytest.raises(ab.ABConfigError, match="gp_bandit_priors runs only on suite"):
        ab.run_ab(config, log=lambda m: None)
    # a task without a dataset, even in the hpobench suite, is refused before anything runs
    with pytest.raises(ab.ABConfigError, match="needs an HPOBench task"):
        ab.run_ab(ab.ABConfig(suite="hpobench", designers=("gp_bandit_priors",), budget=3, out_dir=tmp_path,
                              plot=False), tasks=[NoDatasetTask()], log=lambda m: None)
    # a folds layout that does not hold the dataset out: refused at validation too
    uncovered = _write_folds(tmp_path / "uncovered.json", [(["car"], ["segment"])])
    with pytest.raises(ab.ABConfigError, match="no fold"):
        ab.run_ab(ab.ABConfig(suite="hpobench", designers=("gp_bandit_priors",), budget=3, out_dir=tmp_path,
                              hpobench_datasets=("kc1",), options=ab.DesignerOptions(prior_datasets=uncovered),
                              plot=False), log=lambda m: None)
    assert not list(tmp_path.glob("**/repeat_*.json"))


def test_omnipred_is_refused_a_checkpoint_that_read_the_tasks_dataset(tmp_path):
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

    kc1 = ab.HPOBenchTask("kc1").build(seed=0)
    # The shipped checkpoint was pretrained on all eight tables: an A/B on kc1 would measure memory.
    with pytest.raises(ab.ABConfigError, match="pretrained on HPOBench kc1"):
        ab.DESIGNERS["omnipred"].settings(ab.DesignerOptions(), kc1)
    with pytest.raises(ab.ABConfigError, match="pretrained on HPOBench kc1"):
        ab.run_ab(ab.ABConfig(suite="hpobench", designers=("omnipred",), budget=3, out_dir=tmp_path,
                              hpobench_datasets=("kc1",), plot=False), log=lambda m: None)
    assert not list(tmp_path.glob("**/repeat_*.json"))
    # The packaged fold-0 checkpoint never read kc1; through a '{dataset}' link, as fold-pretrain
    # writes them, the check follows the link.
    fold0 = SHIPPED_CHECKPOINT.parent / "hpobench-fold0"
    (tmp_path / "by-dataset").mkdir()
    (tmp_path / "by-dataset" / "kc1").symlink_to(fold0, target_is_directory=True)
    pattern = str(tmp_path / "by-dataset" / "{dataset}")
    settings = ab.DESIGNERS["omnipred_no_trust_region"].settings(ab.DesignerOptions(omnipred_checkpoint=pattern), kc1)
    assert settings == {"checkpoint": str(tmp_path / "by-dataset" / "kc1")}
    (tmp_path / "by-dataset" / "credit_g").symlink_to(fold0, target_is_directory=True)  # fold 0 read credit_g
    with pytest.raises(ab.ABConfigError, match="pretrained on HPOBench credit_g"):
        ab.DESIGNERS["omnipred"].settings(ab.DesignerOptions(omnipred_checkpoint=pattern),
                                          ab.HPOBenchTask("credit_g").build(seed=0))


def test_priors_options_key_only_the_designers_that_read_them():
    base = ab.DesignerOptions(omnipred_checkpoint="runs/folds/v2/by-dataset/{dataset}")
    with_priors = ab.DesignerOptions(omnipred_checkpoint=base.omnipred_checkpoint,
                                     prior_datasets="runs/folds/v2/folds.json", prior_trials=50)
    omni, priors = ab.DESIGNERS["omnipred"].option_fields, ab.DESIGNERS["gp_bandit_priors"].option_fields
    # OmniPred's runs keep their key (and --resume) when GP priors are configured, and the
    # other way round; the OmniPred token is the one earlier releases wrote.
    assert with_priors.resume_token_for(omni) == base.resume_token_for(omni) == base.resume_token
    other_checkpoint = ab.DesignerOptions(omnipred_checkpoint="elsewhere/{dataset}",
                                          prior_datasets=with_priors.prior_datasets, prior_trials=50)
    assert other_checkpoint.resume_token_for(priors) == with_priors.resume_token_for(priors)
    assert ab.DesignerOptions(prior_trials=51).resume_token_for(priors) != ab.DesignerOptions(
        prior_trials=50).resume_token_for(priors)
    assert ab.DesignerOptions().resume_token_for(omni) == "6e8d94a9"


def test_omnipred_gets_a_win_rate_against_the_priors_gp():
    def record(designer: str, repeat: int, final: float) -> dict:
        return {"suite": "hpobench", "task": "kc1", "repeat": repeat, "designer": designer, "status": "ok",
                "goal": "MAXIMIZE", "known_optimum": 1.0, "reference_best": 0.9, "reference_median": 0.5,
                "best_so_far": [0.5, final], "suggest_seconds": [0.1, 0.1], "seed_trials": 1}

    designers = ("omnipred", "gp_bandit", "gp_bandit_priors", "random")
    finals = {"omnipred": [0.8, 0.9, 0.7], "gp_bandit": [0.85, 0.85, 0.85], "gp_bandit_priors": [0.9, 0.95, 0.6],
              "random": [0.6, 0.6, 0.6]}
    records = [record(d, r, v) for d, vs in finals.items() for r, v in enumerate(vs)]
    summary = ab.summarize(records, designers, budget=2)
    per = summary["suites"]["hpobench"]["designers"]
    assert set(per["omnipred"]["win_rates"]) == {"gp_bandit", "gp_bandit_priors"}
    assert set(per["random"]["win_rates"]) == {"gp_bandit", "gp_bandit_priors"}
    assert set(per["gp_bandit"]["win_rates"]) == {"gp_bandit_priors"}  # does the history help the GP?
    w = per["omnipred"]["win_rates"]["gp_bandit_priors"]
    assert (w["wins"], w["losses"]) == (1, 2) and 0.0 < w["sign_test_p"] <= 1.0
    table = ab.markdown_table(summary)
    assert "| win vs gp_bandit | win vs gp_bandit_priors |" in table
    assert "p=1.000 (1-2-0)" in table


def test_priors_gp_builds_and_suggests_on_hpobench(tmp_path):
    """End to end with one small prior study (JAX compiles the GP once; ~30 s on 2 cores)."""
    folds = _write_folds(tmp_path / "folds.json", [(["kc1"], ["car"])])
    options = ab.DesignerOptions(prior_datasets=folds, prior_trials=5)
    built = ab.HPOBenchTask("kc1").build(seed=0)
    designer = ab.DESIGNERS["gp_bandit_priors"].make(built.problem, seed=3, options=options, task=built)
    assert designer._prior_gp is not None  # noqa: SLF001 - set_priors trained the prior GP

    config = ab.ABConfig(suite="hpobench", designers=("gp_bandit_priors",), hpobench_datasets=("kc1",), budget=2,
                         repeats=1, out_dir=tmp_path / "out", options=options, plot=False)
    report = ab.run_ab(config, log=lambda m: None)
    assert (report.ran, report.failed) == (1, 0), report.summary["failures"]
    (path,) = (tmp_path / "out").glob("hpobench/kc1/gp_bandit_priors/repeat_000.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and len(rec["values"]) == 2 and rec["seed_trials"] == 1
    assert rec["designer_settings"] == {"prior_datasets": ["car"], "prior_trials": 5, "folds": folds}
    assert rec["setup_seconds"] > 0 and 0.0 < rec["values"][1] <= 1.0  # the GP's pick, looked up in kc1's table
    assert report.summary["suites"]["hpobench"]["designers"]["gp_bandit_priors"]["median_setup_seconds"] > 0


def test_cli_priors_flags(tmp_path):
    import argparse

    from vizier_omnipred.bench.cli import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "ab", "--suite", "hpobench", "--designers", "gp_bandit_priors,random",
                              "--prior-datasets", "runs/folds/v2/folds.json", "--prior-trials", "5"])
    assert args.prior_datasets == Path("runs/folds/v2/folds.json") and args.prior_trials == 5
    # on BBOB the designer is a clear error with exit status 2, before anything runs
    args = parser.parse_args(["bench", "ab", "--suite", "bbob", "--designers", "gp_bandit_priors,random",
                              "--out", str(tmp_path / "never")])
    assert args.func(args) == 2 and not (tmp_path / "never").exists()
    assert ab.DesignerOptions().prior_trials == 100  # the default the --prior-trials help names
