"""vizier-omnipred: a T5 language model as regressor and designer for Open Source Vizier.

Trials are written as text, a T5 encoder-decoder reads the text and writes the objective
value as number tokens; sampling those tokens gives a distribution over y. See
docs/ARCHITECTURE.md for how the modules fit together.
"""

from typing import Any

__version__ = "0.1.0"

# Heavy imports (torch, Vizier) are deferred so that `import vizier_omnipred.text`
# stays cheap and framework-free.
_LAZY = {
    "OmniPredRegressor": "vizier_omnipred.regressor",
    "YSamples": "vizier_omnipred.sampling",
    "FitReport": "vizier_omnipred.training",
    "OmniPredDesigner": "vizier_omnipred.designer",
    "FloatTokenizer": "vizier_omnipred.numbers",
    "TextCodec": "vizier_omnipred.text",
    "serialize_trial": "vizier_omnipred.text",
    "OmniPredPolicyFactory": "vizier_omnipred.service",
    "start_server": "vizier_omnipred.service",
    "WarmStartConfig": "vizier_omnipred.warm_start",
    "WarmStartError": "vizier_omnipred.warm_start",
    "load_history": "vizier_omnipred.warm_start",
    "warm_start_checkpoint": "vizier_omnipred.warm_start",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vizier_omnipred' has no attribute {name!r}")
