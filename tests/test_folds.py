"""k-fold held-out-dataset checkpoints: no evaluated dataset is ever in its checkpoint's corpus."""

from __future__ import annotations

import json

import pytest

from vizier_omnipred import model as model_lib
from vizier_omnipred.bench.folds import (
    FoldPretrainConfig,
    build_fold_checkpoints,
    datasets_read_by,
    fold_layout,
)
from vizier_omnipred.bench.regression import hpobench_prior_datasets
from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS


def test_layout_partitions_the_datasets():
    for k in (2, 4, 8):
        folds = fold_layout(k)
        assert len(folds) == k
        assert sorted(d for fold in folds for d in fold) == sorted(HPOBENCH_DATASETS)
    with pytest.raises(ValueError, match="folds must be"):
        fold_layout(1)


def test_each_fold_checkpoint_never_read_the_datasets_it_is_evaluated_on(tmp_path, capsys):
    # data_process: each fold's studies come from a spawned process, through the whole pretraining run
    config = FoldPretrainConfig(out_dir=str(tmp_path / "folds"), folds=2, preset="tiny", trials_per_dataset=4,
                                synthetic_studies=2, steps=2, batch_size=4, warmup_steps=1, num_threads=1,
                                data_process=True)
    assert all(config.pretrain_config(k).data_process for k in (0, 1))
    finals = build_fold_checkpoints(config, progress=False)
    assert set(finals) == {0, 1}
    layout = json.loads((tmp_path / "folds" / "folds.json").read_text())["folds"]
    for fold in layout:
        final = finals[fold["fold"]]
        assert model_lib.load_checkpoint(final).training["steps"] == 2
        read = datasets_read_by(final)
        assert read == set(fold["trained_on"]) and not read & set(fold["held_out"])
        for dataset in fold["held_out"]:  # the per-dataset link leads to the checkpoint that never saw it
            link = tmp_path / "folds" / "by-dataset" / dataset
            assert link.resolve() == final.resolve()
            assert datasets_read_by(link) == read  # the link is followed to the fold's run folder
            # The regression bench's transfer baseline reads the same history as the model.
            pattern = str(tmp_path / "folds" / "by-dataset" / "{dataset}")
            assert set(hpobench_prior_datasets(dataset, pattern)) == set(fold["trained_on"])
            others = set(HPOBENCH_DATASETS) - {dataset}
            assert set(hpobench_prior_datasets(dataset, None)) == others  # no checkpoint: the other seven
            assert set(hpobench_prior_datasets(dataset, str(tmp_path / "missing-{dataset}"))) == others

    capsys.readouterr()
    build_fold_checkpoints(config, progress=False)  # finished folds are skipped, not retrained
    assert capsys.readouterr().out.count("done already") == 2


def test_the_packaged_fold_checkpoints_never_read_the_datasets_they_hold_out():
    # hpobench-fold0 and -fold1 are fold-0/final and fold-1/final of the documented 2-fold build:
    # copied into a --out folder, `bench fold-pretrain` skips them and writes the links.
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

    for j, held_out in enumerate(fold_layout(2)):
        packaged = SHIPPED_CHECKPOINT.parent / f"hpobench-fold{j}"
        read = datasets_read_by(packaged)
        assert read == set(HPOBENCH_DATASETS) - set(held_out)
        assert model_lib.load_checkpoint(packaged).training["steps"] == 6400


def test_a_start_checkpoint_that_read_hpobench_is_refused(tmp_path):
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

    with pytest.raises(ValueError, match="was pretrained on HPOBench"):
        FoldPretrainConfig(out_dir=str(tmp_path), init_checkpoint=str(SHIPPED_CHECKPOINT))
