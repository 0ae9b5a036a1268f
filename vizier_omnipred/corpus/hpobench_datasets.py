"""The HPOBench tables' names and main metric, without loading the benchmark or Vizier's
benchmarks package (`corpus.hpobench` imports both): what a command line or a pretraining
recipe needs to name them."""

from __future__ import annotations

HPOBENCH_DATASETS: tuple[str, ...] = (
    "australian",
    "blood_transfusion",
    "car",
    "credit_g",
    "kc1",
    "phoneme",
    "segment",
    "vehicle",
)
HPOBENCH_METRIC = "val_acc"
