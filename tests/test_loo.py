"""Leave-one-out pretraining on HPOBench: the held-out dataset never reaches the corpus."""

from __future__ import annotations

import json

from vizier_omnipred import model as model_lib
from vizier_omnipred.bench.loo import LooPretrainConfig, build_loo_checkpoints
from vizier_omnipred.corpus.format import read_corpus
from vizier_omnipred.corpus.hpobench import HPOBENCH_DATASETS

import pytest


def test_loo_build_excludes_the_held_out_dataset_and_resumes(tmp_path, tiny_regressor_factory, capsys):
    init = tiny_regressor_factory().save(tmp_path / "init")
    config = LooPretrainConfig(out_dir=str(tmp_path / "loo"), datasets=("kc1",), init_checkpoint=str(init),
                               trials_per_dataset=6, synthetic_studies=2, steps=2, batch_size=4, num_threads=1)
    finals = build_loo_checkpoints(config, progress=False)
    run = tmp_path / "loo" / "kc1"
    assert finals == {"kc1": run / "final"}
    names = [r.name for r in read_corpus(run / "corpus.jsonl.gz")]
    assert sorted(names) == sorted(f"hpobench-{d}" for d in HPOBENCH_DATASETS if d != "kc1")
    assert json.loads((run / "corpus.json").read_text())["held_out"] == "kc1"
    ckpt = model_lib.load_checkpoint(run / "final")
    assert ckpt.training["steps"] == 2 and ckpt.preset.name == "tiny"
    saved = json.loads((run / "pretrain_config.json").read_text())
    assert saved["init_checkpoint"] == str(init) and saved["corpus"] == [str(run / "corpus.jsonl.gz")]

    capsys.readouterr()
    build_loo_checkpoints(config, progress=False)  # finished datasets are skipped, not retrained
    assert "done already" in capsys.readouterr().out


def test_loo_config_rejects_unknown_datasets(tmp_path):
    with pytest.raises(ValueError, match="unknown HPOBench dataset"):
        LooPretrainConfig(out_dir=str(tmp_path), datasets=("iris",))
