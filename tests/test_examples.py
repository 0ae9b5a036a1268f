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


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIPRED_EXAMPLES_TINY": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
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


def test_demo_runs_and_writes_its_outputs(tmp_path):
    out = tmp_path / "demo"
    proc = _run(["-m", "vizier_omnipred.cli", "demo", "--tiny", "--trials", "3", "--no-baseline",
                 "--out", str(out)], cwd=tmp_path)
    assert "OmniPred (service)" in proc.stdout and "s/suggest" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    (omnipred,) = results["results"]
    assert omnipred["trials"] == 3 and len(omnipred["values"]) == 3
    assert (out / "convergence.png").stat().st_size > 0
    assert (out / "demo.db").exists()
