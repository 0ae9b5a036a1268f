"""The designer's persistent state: records of completed trials, a typed `DesignerState`
with its JSON form, the study key and where fine-tuned weights are cached.

Vizier's `PartiallySerializableDesignerPolicy` keeps `dump()` in the study's metadata
and hands a restored designer only the *new* trials, so the state holds the completed
trials themselves (compact JSON), the keys of earlier suggestions, counters, and where
the fine-tuned weights are (a checkpoint directory plus a SHA-256 fingerprint of its
weights file). Decoding is all-or-nothing: `DesignerState.from_json` raises before the
designer changes anything (Vizier's Eagle `load` replaces its rng before decoding can
still fail; this does not).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from vizier import pyvizier as vz
from vizier.interfaces import serializable

from vizier_omnipred.model import WEIGHTS_FILE, member_file
from vizier_omnipred.search_space import py_value
from vizier_omnipred.text import OMNIPRED_NS, POLICY_NS

__all__ = [
    "BaseState",
    "CACHE_ENV",
    "DesignerState",
    "POLICY_NS",
    "Record",
    "STATE_NS",
    "STATE_VERSION",
    "StateVersionError",
    "WEIGHTS_DIR",
    "WeightsState",
    "default_cache_root",
    "file_fingerprint",
    "id_order",
    "problem_key",
    "weights_fingerprint",
]

STATE_VERSION = 2
# Version 1 (one metric per record, before several metrics) is still read.
READABLE_VERSIONS = (1, 2)
STATE_NS = OMNIPRED_NS  # the TextCodec skips this namespace: the model never reads designer state
CACHE_ENV = "VIZIER_OMNIPRED_CACHE"
WEIGHTS_DIR = "weights"
_EXCLUDED_FROM_KEY = (POLICY_NS, STATE_NS)


class StateVersionError(serializable.HarmlessDecodeError):
    """Designer metadata written by another version of the state format.

    A `HarmlessDecodeError` (the designer is left untouched): called directly, `load`
    raises it with both versions named; under Vizier's `PartiallySerializableDesignerPolicy`
    the policy catches it, logs it, and restarts the designer on all of the study's
    trials, which is the right recovery for a server that was upgraded mid-study.
    """


# ----------------------------------------------------------------------- records
@attrs.frozen
class Record:
    """A completed trial as the designer keeps it (enough to refit and to dedupe).

    `metrics` holds the finite values it reported for the problem's metrics (none if
    it is infeasible); a metric it did not report, or reported as NaN/inf, is absent.
    """

    params: dict[str, float | int | str]
    metrics: Mapping[str, float]
    infeasible: bool

    @property
    def usable(self) -> bool:
        """Something to train on: infeasibility, or at least one metric value."""
        return self.infeasible or bool(self.metrics)

    def value(self, metric_name: str) -> float | None:
        return None if self.infeasible else self.metrics.get(metric_name)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"p": self.params}
        if self.infeasible:
            d["infeasible"] = True
        elif self.metrics:
            d["m"] = dict(self.metrics)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], primary_metric: str | None = None) -> "Record":
        """Reads state version 2 ('m': {metric: value}) and version 1 ('y': the value of
        the designer's one metric, `primary_metric`)."""
        params = d["p"]
        if not isinstance(params, dict):
            raise TypeError("trial parameters must be a JSON object")
        metrics = d.get("m")
        if metrics is None:
            y = d.get("y")
            metrics = {} if y is None or primary_metric is None else {primary_metric: y}
        if not isinstance(metrics, dict):
            raise TypeError("trial metrics must be a JSON object")
        return cls(params={k: py_value(v) for k, v in params.items()},
                   metrics={str(k): float(v) for k, v in metrics.items()},
                   infeasible=bool(d.get("infeasible", False)))

    def to_trial(self, trial_id: int = 0) -> vz.Trial:
        trial = vz.Trial(parameters=self.params, id=trial_id)
        if self.infeasible:
            trial.complete(vz.Measurement(), infeasibility_reason="infeasible")
        else:
            trial.complete(vz.Measurement(metrics=dict(self.metrics)))
        return trial


def id_order(trial_id: str) -> tuple[int, Any]:
    """Sort key of trial ids: numeric ids in numeric order, then the others ('anon-<n>')."""
    return (0, int(trial_id)) if trial_id.isdigit() else (1, trial_id)


# ------------------------------------------------------------------------ state
@attrs.frozen
class WeightsState:
    """Where the fine-tuned weights are and which trials they were fitted on."""

    path: str
    fingerprint: str | None
    trials: tuple[str, ...]
    fits: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "trials": list(self.trials), "fits": self.fits}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "WeightsState":
        return cls(path=str(d["path"]), fingerprint=d.get("fingerprint"),
                   trials=tuple(str(i) for i in d["trials"]), fits=int(d.get("fits", 1)))


@attrs.frozen
class BaseState:
    """The warm-started checkpoint a study's model descends from (history warm start):
    its folder and its cache key, so a restored designer refits from the same weights."""

    path: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "BaseState":
        return cls(path=str(d["path"]), key=str(d["key"]))


@attrs.frozen
class DesignerState:
    """Everything `OmniPredDesigner.dump` writes (JSON keys as in state version 1; version
    2 changed only the records: 'm' {metric: value} instead of 'y')."""

    problem_key: str
    token: str | None
    seed: int
    num_suggest_calls: int
    num_seed_suggested: int
    anonymous: int  # trials reported without an id got 'anon-<n>'
    suggested: tuple[str, ...]  # keys (text hashes) of every suggestion made
    trials: Mapping[str, Record]
    weights: WeightsState | None
    # Warm start: the base checkpoint built from the user's history (absent otherwise, and
    # ignored by readers that predate it: the state version does not change).
    base: BaseState | None = None

    def to_json(self) -> str:
        state = {
            "version": STATE_VERSION,
            "problem_key": self.problem_key,
            "token": self.token,
            "seed": self.seed,
            "num_suggest_calls": self.num_suggest_calls,
            "num_seed_suggested": self.num_seed_suggested,
            "anonymous": self.anonymous,
            "suggested": list(self.suggested),
            "trials": {i: r.to_json() for i, r in self.trials.items()},
            "weights": None if self.weights is None else self.weights.to_json(),
        }
        if self.base is not None:
            state["base"] = self.base.to_json()
        return json.dumps(state, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_metadata(cls, ns: vz.Metadata, primary_metric: str | None = None) -> "DesignerState":
        """Decodes the state namespace; raises `HarmlessDecodeError` (no state, damaged)
        or `StateVersionError` (another version wrote it). `primary_metric` names the
        metric of a version-1 state's records."""
        version = ns.get("version")
        if version is None:
            raise serializable.HarmlessDecodeError(
                f"no OmniPredDesigner state in the metadata (namespace {STATE_NS!r} has no 'version')"
            )
        if version not in [str(v) for v in READABLE_VERSIONS]:
            raise StateVersionError(
                f"OmniPredDesigner state version {version!r} in the metadata, but this vizier-omnipred reads "
                f"version {' or '.join(str(v) for v in READABLE_VERSIONS)}; the state was written by another version of the package. Start a "
                "new designer on the study's trials (Vizier's designer policies do this automatically)."
            )
        try:
            return cls.from_json(ns["state"], primary_metric)
        except serializable.DecodeError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise serializable.HarmlessDecodeError(f"damaged OmniPredDesigner state: {e!r}") from e

    @classmethod
    def from_json(cls, text: str, primary_metric: str | None = None) -> "DesignerState":
        state = json.loads(text)
        if state.get("version") not in READABLE_VERSIONS:
            raise StateVersionError(
                f"OmniPredDesigner state says version {state.get('version')!r}, this code reads {READABLE_VERSIONS}"
            )
        weights = state.get("weights")
        return cls(
            problem_key=str(state["problem_key"]),
            token=state.get("token"),
            seed=int(state["seed"]),
            num_suggest_calls=int(state["num_suggest_calls"]),
            num_seed_suggested=int(state["num_seed_suggested"]),
            anonymous=int(state.get("anonymous", 0)),
            suggested=tuple(str(k) for k in state["suggested"]),
            trials={str(i): Record.from_json(d, primary_metric) for i, d in state["trials"].items()},
            weights=WeightsState.from_json(weights) if weights else None,
            base=BaseState.from_json(state["base"]) if state.get("base") else None,
        )


# --------------------------------------------------------------------- study key
def default_cache_root() -> Path:
    """Where fine-tuned weights live by default: $VIZIER_OMNIPRED_CACHE or ~/.cache/vizier-omnipred."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "vizier-omnipred"


def _space_json(configs: Sequence[vz.ParameterConfig]) -> list:
    out = []
    for pc in configs:
        entry: dict[str, Any] = {"name": pc.name, "type": pc.type.name, "scale": pc.scale_type.name if pc.scale_type else None}
        if pc.type in (vz.ParameterType.DOUBLE, vz.ParameterType.INTEGER):
            entry["bounds"] = [py_value(b) for b in pc.bounds]
        else:
            entry["values"] = [py_value(v) for v in pc.feasible_values]
        children = sorted(((str(k), _space_json(sub.parameters)) for k, sub in pc.subspaces() if sub.parameters))
        if children:
            entry["children"] = children
        out.append(entry)
    return out


def problem_key(problem: vz.ProblemStatement) -> str:
    """A deterministic 16-hex-digit key of a problem, blind to designer state.

    It covers the search space (with bounds and scaling), the metrics and the problem
    metadata, except the namespaces where Vizier's policies and this package keep their
    state ('designer_policy_v0', 'omnipred'), which change on every suggest.
    """
    metadata = []
    for ns, key, value in problem.metadata.all_items():
        if len(ns) and ns[0] in _EXCLUDED_FROM_KEY:
            continue
        if not isinstance(value, str):
            serialize = getattr(value, "SerializeToString", None)
            value = hashlib.sha256(serialize(deterministic=True)).hexdigest() if serialize else repr(value)
        metadata.append([ns.encode(), key, value])
    canonical = {
        "space": _space_json(problem.search_space.parameters),
        "metrics": [
            [m.name, m.goal.name, _finite_or_none(m.safety_threshold)] for m in problem.metric_information
        ],
        "metadata": sorted(metadata),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def file_fingerprint(path: Path) -> str:
    """SHA-256 of a file (the weights): a restored designer loads only weights that match."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(directory: str | os.PathLike[str]) -> str:
    """`file_fingerprint` of a checkpoint's weights file; with ensemble members, the SHA-256 of
    every weights file's fingerprint in order (so a one-model checkpoint keeps the fingerprint
    designer states recorded before ensembles)."""
    root = Path(directory)
    files = [root / WEIGHTS_FILE]
    while (root / member_file(len(files))).is_file():
        files.append(root / member_file(len(files)))
    digests = [file_fingerprint(path) for path in files]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
