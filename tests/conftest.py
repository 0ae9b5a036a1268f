"""Shared fixtures: real Vizier problems and real (tiny) models; nothing is mocked."""

from __future__ import annotations

import os

import pytest
import torch

# Tests are sized for 2-core CI machines; with other load, 2 torch threads ran far slower than 1.
torch.set_num_threads(int(os.environ.get("OMNIPRED_TEST_THREADS", "1")))


def smooth_2d(x0: float, x1: float) -> float:
    """A smooth bowl with a tilt, values spanning roughly 1..60."""
    return 1.0 + (x0 - 0.5) ** 2 + 2.0 * (x1 + 1.0) ** 2 + 0.5 * x0


def make_problem_2d(bound: float = 3.0):
    from vizier import pyvizier as vz

    problem = vz.ProblemStatement()
    problem.search_space.root.add_float_param("x0", -bound, bound)
    problem.search_space.root.add_float_param("x1", -bound, bound)
    problem.metric_information.append(vz.MetricInformation("loss", goal=vz.ObjectiveMetricGoal.MINIMIZE))
    problem.metadata["description"] = "smooth test bowl"
    return problem


@pytest.fixture
def problem_2d():
    return make_problem_2d()


def make_trials(points, fn=smooth_2d, metric="loss", start_id=1):
    from vizier import pyvizier as vz

    trials = []
    for i, (a, b) in enumerate(points):
        t = vz.Trial(parameters={"x0": float(a), "x1": float(b)}, id=start_id + i)
        t.complete(vz.Measurement(metrics={metric: fn(a, b)}))
        trials.append(t)
    return trials


@pytest.fixture(scope="session")
def tiny_regressor_factory():
    """Builds fresh tiny from-scratch regressors; the BPE is trained once per session."""
    from vizier_omnipred.regressor import OmniPredRegressor

    base = OmniPredRegressor.from_scratch("tiny", seed=0)

    def make(seed: int = 0) -> OmniPredRegressor:
        return OmniPredRegressor.from_scratch("tiny", vocab=base.vocab, seed=seed)

    return make


@pytest.fixture(scope="module")
def base(tiny_regressor_factory):
    """One tiny from-scratch regressor per test module, the base of the designers `make` builds."""
    return tiny_regressor_factory(seed=0)


@pytest.fixture
def make(base, tmp_path):
    """Builds an OmniPredDesigner sized for tests (few samples and candidates, two seed trials,
    a two-epoch fine-tune); keyword arguments override any of it."""
    from vizier_omnipred.designer import OmniPredDesigner
    from vizier_omnipred.training import FinetuneConfig

    def _make(problem, **kwargs):
        kwargs.setdefault("seed", 0)
        kwargs.setdefault("regressor", base)
        kwargs.setdefault("num_samples", 8)
        kwargs.setdefault("num_candidates", 24)
        kwargs.setdefault("num_seed_trials", 2)
        kwargs.setdefault("finetune_config", FinetuneConfig(max_epochs=2, batch_size=32))
        kwargs.setdefault("work_dir", tmp_path / "work")
        return OmniPredDesigner(problem, **kwargs)

    return _make


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures(...)`): on a shared
    2-core machine, 2 torch threads under load were 40x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
