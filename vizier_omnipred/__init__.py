"""vizier-omnipred: a T5 language model as regressor and designer for Open Source Vizier.

Trials are written as text, a T5 encoder-decoder reads the text and writes the objective
value as number tokens; sampling those tokens gives a distribution over y. See
docs/ARCHITECTURE.md for how the modules fit together.

The names below are the documented surface: what README and examples import. Everything
else lives in its step's module (`text`, `numbers`, `model`, `sampling`, `training`, ...)
and may change between versions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Heavy imports (torch, Vizier) are deferred so that `import vizier_omnipred.text`
# stays cheap and framework-free; the TYPE_CHECKING block gives type checkers and IDEs
# the same names.
_LAZY = {
    # the model as a Vizier Predictor, and its fit recipes
    "OmniPredRegressor": "vizier_omnipred.regressor",
    "SHIPPED_CHECKPOINT": "vizier_omnipred.regressor",
    "YSamples": "vizier_omnipred.sampling",
    "FinetuneConfig": "vizier_omnipred.training",
    "FitReport": "vizier_omnipred.training",
    "FitDivergedError": "vizier_omnipred.training",
    "recipe": "vizier_omnipred.training",
    "CheckpointError": "vizier_omnipred.model",
    # the designer
    "OmniPredDesigner": "vizier_omnipred.designer",
    "SearchConfig": "vizier_omnipred.designer",
    "RefitSchedule": "vizier_omnipred.designer",
    "StateVersionError": "vizier_omnipred.designer_state",
    "get_acquisition": "vizier_omnipred.acquisitions",
    # trial <-> text
    "TextCodec": "vizier_omnipred.text",
    "TrialTextError": "vizier_omnipred.text",
    "serialize_trial": "vizier_omnipred.text",
    "FloatTokenizer": "vizier_omnipred.numbers",
    # the OMNIPRED service policy
    "OmniPredPolicyFactory": "vizier_omnipred.service",
    "start_server": "vizier_omnipred.service",
    # warm-start from study history
    "WarmStartConfig": "vizier_omnipred.warm_start",
    "WarmStartError": "vizier_omnipred.warm_start",
    "load_history": "vizier_omnipred.warm_start",
    "warm_start_checkpoint": "vizier_omnipred.warm_start",
}

if TYPE_CHECKING:
    from vizier_omnipred.acquisitions import get_acquisition
    from vizier_omnipred.designer import OmniPredDesigner, RefitSchedule, SearchConfig
    from vizier_omnipred.designer_state import StateVersionError
    from vizier_omnipred.model import CheckpointError
    from vizier_omnipred.numbers import FloatTokenizer
    from vizier_omnipred.regressor import SHIPPED_CHECKPOINT, OmniPredRegressor
    from vizier_omnipred.sampling import YSamples
    from vizier_omnipred.service import OmniPredPolicyFactory, start_server
    from vizier_omnipred.text import TextCodec, TrialTextError, serialize_trial
    from vizier_omnipred.training import FinetuneConfig, FitDivergedError, FitReport, recipe
    from vizier_omnipred.warm_start import WarmStartConfig, WarmStartError, load_history, warm_start_checkpoint

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'vizier_omnipred' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
