"""Benchmarks of the OmniPred regressor and designer (`vizier-omnipred bench ...`).

- `metrics`: normalized MAE, Spearman/Kendall, 80% calibration, normalized regret, paired
  win rates with sign test and bootstrap interval.
- `features`: search-space-aware numeric features for the classic regressors.
- `baselines`: scikit-learn GP / random forest / quantile boosted trees / MLP ensemble,
  Vizier's GP bandit as a predictor (sign flip for MINIMIZE undone), and the HPOBench
  transfer baseline (other datasets' mean table, rescaled per study).
- `regression`: `bench regression`: accuracy on held-out trials (BBOB, HPOBench
  leave-one-out).
- `ab`: `bench ab`: designer A/B runs, one resumable JSON file per run, local process
  pool or Ray.
- `speed`: `bench speed`: suggest latency vs the GP bandit, sampling throughput, fine-tune
  cost, memory.

Modules import Vizier designers, torch, scikit-learn and the OmniPred model lazily, so
the parser and the pure parts stay cheap to import.
"""
