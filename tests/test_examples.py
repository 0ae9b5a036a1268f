"""Every example and the demo run end to end, each in its own process, in their fast modes.

They use a tiny untrained model (`--tiny` / OMNIPRED_EXAMPLES_TINY=1), so this checks the
plumbing users copy from (imports, argument handling, Vizier wiring, outputs), not the
quality of the suggestions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "service_study.py": ["--trials", "3"],
    "designer_loop.py": ["--rounds", "2"],
    "predict_with_uncertainty.py": [],
    "custom_acquisition.py": ["--trials", "3"],
    "multi_objective.py": ["--rounds", "2"],
}


def _run(args: list[str], cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIPRED_EXAMPLES_TINY": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           **env_vars}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_every_example_is_listed_short_and_documented():
    found = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert found == set(EXAMPLES)
    for name in found:
        text = (ROOT / "examples" / name).read_text()
        assert len(text.splitlines()) < 60, name
        assert text.startswith('"""'), f"{name} needs a docstring saying what it shows"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path):
    proc = _run([str(ROOT / "examples" / name), *EXAMPLES[name]], cwd=tmp_path)
    assert proc.stdout.strip()


def test_bbob_demo_runs_and_writes_its_outputs(tmp_path):
    out = tmp_path / "demo"
    proc = _run(["-m", "vizier_omnipred.cli", "demo", "--story", "bbob", "--tiny", "--trials", "3", "--no-baseline",
                 "--out", str(out)], cwd=tmp_path)
    assert "OmniPred (service)" in proc.stdout and "s/suggest" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    (omnipred,) = results["results"]
    assert omnipred["trials"] == 3 and len(omnipred["values"]) == 3
    assert (out / "convergence.png").stat().st_size > 0
    assert (out / "demo.db").exists()


def test_warm_start_demo_builds_its_history_once_and_writes_its_outputs(tmp_path, tiny_regressor_factory):
    """The main job's default story, tiny: a history datastore of 2 past studies, a tiny base
    checkpoint (no pretraining config), 2 warm-start steps, 3 trials each; the second run
    reuses the history datastore and finds the warm start in the cache."""
    base = tiny_regressor_factory(0).save(tmp_path / "base")
    out = tmp_path / "demo"
    args = ["-m", "vizier_omnipred.cli", "demo", "--tiny", "--trials", "3", "--no-baseline", "--checkpoint",
            str(base), "--history", "car,segment", "--history-trials", "10", "--out", str(out)]
    cache = str(tmp_path / "cache")  # the warm-start cache, not the user's
    first = _run(args, cwd=tmp_path, VIZIER_OMNIPRED_CACHE=cache, OMP_NUM_THREADS="1")
    assert "writing 2 past studies of 10 trials" in first.stdout, first.stdout[-3000:]
    assert "OmniPred warm-started" in first.stdout and "random search" in first.stdout
    assert "verdict: after 3 trials" in first.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["story"] == "warm-start" and results["dataset"] == "kc1"
    assert results["history"]["built"] and results["history"]["datasets"] == ["car", "segment"]
    assert results["warm_start"]["cached"] is False
    assert results["base_checkpoint"]["has_pretrain_config"] is False
    by_name = {r["name"]: r for r in results["results"]}
    assert set(by_name) == {"OmniPred warm-started", "random search"}
    assert all(r["trials"] == 3 and len(r["values"]) == 3 and r["regret"] >= 0 for r in by_name.values())
    assert (out / "convergence.png").stat().st_size > 0

    second = _run(args, cwd=tmp_path, VIZIER_OMNIPRED_CACHE=cache, OMP_NUM_THREADS="1")
    assert "writing" not in second.stdout and "reused" in second.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["history"]["built"] is False and results["warm_start"]["cached"] is True


def test_warm_start_demo_refuses_a_base_that_read_the_new_study(tmp_path):
    """The shipped checkpoint read all 8 HPOBench tables: it cannot be the base for kc1."""
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT

    proc = subprocess.run([sys.executable, "-m", "vizier_omnipred.cli", "demo", "--checkpoint", str(SHIPPED_CHECKPOINT),
                           "--out", str(tmp_path / "demo")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "was pretrained on HPOBench kc1" in proc.stderr
    assert not (tmp_path / "demo" / "history.db").exists()


def test_warm_start_demo_never_deletes_a_history_file_it_did_not_write(tmp_path):
    from vizier_omnipred.demo_warm_start import ensure_history

    path = tmp_path / "history.db"
    path.write_text("someone's notes\n")
    with pytest.raises(ValueError, match="not this demo's history datastore"):
        ensure_history(path, ["car"], 3, seed=0)
    assert path.read_text() == "someone's notes\n"
