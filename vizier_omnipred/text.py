"""Trial <-> input text: how the model sees a point x of a study.

A trial and its study are written as one line of key:value text, in the style of
OmniPred's input serializer (arXiv 2402.14547, section 1 of REFERENCE.md):

    {suggestion:{lr:0.001,optimizer:"adam",layers:3}},{objective:"accuracy",goal:"max",metadata:{dataset:"car",name:"my study"}}

Why the text looks like this:

* **No bounds, no scaling, no parameter types.** OmniPred's point is that a prediction
  for f(2) must not depend on whether x was declared in [1, 5] or [0, 100]: the model
  reads the number as written, so one model can be trained on many studies with
  different (and changing) search spaces. Consequently numeric values outside their
  declared bounds are *not* an error here; the model simply reads the number.
  Likewise a DISCRETE value that is not one of its feasible values is written as is.
* **Names and study text are kept.** The paper found that anonymising parameter names
  and metadata hurts: names and study metadata are what let one model transfer between
  studies. So names are written verbatim, bare when they are simple
  (``[A-Za-z0-9_.\\-/]+``), JSON-quoted otherwise, so that commas, quotes, colons,
  braces and unicode cannot break the grammar and round-trip exactly through
  :meth:`TextCodec.parse`. Every string value is JSON-quoted.
* **Numbers with a few significant digits** (``format(v, '.3g')`` by default, as
  OmniPred): every digit is input tokens (the BPE splits digits one by one), and
  digits far below the resolution at which the objective changes are noise for the
  model. ``g`` keeps the magnitude of log-scaled doubles (``1e-05``) without knowing
  the scale. INTEGER values are written in full (they are usually small, and rounding
  a batch size of 1234 to 1.23e+03 would merge distinct points); DISCRETE values as
  ints when integral, else like doubles.
* **Search-space order**, conditional children right after their parent (depth first,
  the order Vizier's own ``SequentialParameterBuilder`` uses), so the same trial always
  gives the same text. A name that appears in several active subspaces is written once,
  at its first active position (a trial is a flat dict, it only has one value for it).
  Parameters absent from the trial are absent from the text.
* **Only string metadata of the problem**, namespaced keys joined with ``/``, sorted.
  Namespaces whose first component is in ``excluded_metadata_namespaces`` are skipped:
  Vizier's ``PartiallySerializableDesignerPolicy`` stores designer state in the study
  metadata under ``designer_policy_v0`` (and this package stores its own under
  ``omnipred``). That state changes on every suggest; if the model read it, the text of
  an unchanged trial would change over the study and the model would condition on
  bookkeeping instead of the problem. If two entries join to the same key (``a/b`` in
  the root namespace and ``b`` in namespace ``a``), the one from the shallower namespace
  wins. An empty metadata object is left out entirely (``metadata:{}`` would only spend
  tokens), so ``ParsedTrialText.metadata`` is ``{}`` both ways.
* **One line.** JSON escapes control characters; on top of that U+0085, U+2028 and
  U+2029 (which ``str.splitlines`` treats as line breaks) are written as ``\\uXXXX``
  escapes, so the text never contains a line break of any kind.
* **Trial metadata is never read**: it is where designers keep per-trial state.

Speed: :meth:`TextCodec.serialize_many` compiles the study (search-space walk,
objective, metadata text) once, then only formats values: 12-28 us per trial for a flat
10-parameter study (4 linear + 1 log DOUBLE, 2 INTEGER, 1 DISCRETE, 2 CATEGORICAL;
5000 trials, best of 5, on this project's shared 2-core CPU under load averages 2-5,
where a bare ``format(x, '.3g')`` alone takes ~0.8 us). ``serialize`` recompiles
the study on each call (~0.15-0.3 ms there); ``parse`` takes ~70-140 us per text.

Change anything in the written format -> bump ``TEXT_CODEC_VERSION``: checkpoints
record it and a model must only ever see the format it was trained on.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import attrs
from vizier import pyvizier as vz

__all__ = [
    "TEXT_CODEC_VERSION",
    "TrialTextError",
    "ParsedTrialText",
    "TextCodec",
    "TrialText",
    "NUMBER_FEATURES",
    "STUDY_TEXT_LAYOUTS",
    "check_study_text",
    "unit_position",
    "magnitude_position",
    "serialize_trial",
    "parse_trial_text",
    "POLICY_NS",
    "OMNIPRED_NS",
]

TEXT_CODEC_VERSION: int = 2
# How numeric parameter values reach the model besides their digits (see TextCodec).
NUMBER_FEATURES = ("none", "position", "magnitude")
STUDY_TEXT_LAYOUTS = ("inline", "separate")


def check_study_text(layout: str) -> str:
    """`layout` if it is one of `STUDY_TEXT_LAYOUTS` (`TextCodec.study_text`), else a ValueError."""
    if layout not in STUDY_TEXT_LAYOUTS:
        raise ValueError(f"study_text must be one of {STUDY_TEXT_LAYOUTS}, got {layout!r}")
    return layout


# Positions outside the search space extrapolate, within these limits (see unit_position).
POSITION_LIMITS = (-1.0, 2.0)
# Metadata namespaces that carry state, not a description of the study, so the model never
# reads them: where Vizier's designer policies keep their state, and this package's own
# (designer state, predictions, a study's history path).
POLICY_NS = "designer_policy_v0"
OMNIPRED_NS = "omnipred"

_HEAD = "{suggestion:{"
_BARE_NAME = re.compile(r"[A-Za-z0-9_.\-/]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# Characters str.splitlines() breaks on that json.dumps(ensure_ascii=False) leaves raw.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_LINE_BREAKS_RE = re.compile("[\x85\u2028\u2029]")


class TrialTextError(ValueError):
    """A trial cannot be written as text, or a text is not valid trial text.

    ``offset`` is the character position in the text for parse errors, else None.
    """

    def __init__(self, message: str, *, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


@attrs.frozen
class ParsedTrialText:
    """What :meth:`TextCodec.parse` reads back from a text, without a problem.

    Numbers come back as ``int`` or ``float`` by how they are written ('3' -> 3,
    '3.5' / '1e-05' -> float): the text carries no types. Use
    :meth:`TextCodec.parse_parameters` to get values typed by a search space.
    """

    parameters: dict[str, float | int | str]  # in text order
    objective: str | None
    goal: str | None  # 'min' | 'max'
    metadata: dict[str, str]


def _quote(s: str) -> str:
    q = json.dumps(s, ensure_ascii=False)
    if _LINE_BREAKS_RE.search(q):
        q = _LINE_BREAKS_RE.sub(lambda m: _LINE_BREAKS[m.group()], q)
    return q


def _key(name: str) -> str:
    return name if _BARE_NAME.fullmatch(name) else _quote(name)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _some(names: Iterable[str], limit: int = 20) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _raw_values(params: vz.ParameterDict) -> Mapping[str, vz.ParameterValue]:
    """name -> ParameterValue, without copying when possible.

    ``ParameterDict.as_dict()`` costs ~5 us for 10 parameters (one Mapping.get per
    key), a sixth of the per-trial budget; its backing dict is read directly when it
    is there (Vizier 0.1.24), else we fall back to the public API.
    """
    items = getattr(params, "_items", None)
    if type(items) is dict:
        return items
    return dict(params.items())


def _config_kind(pc: vz.ParameterConfig) -> vz.ParameterType:
    t = pc.type
    if t not in (
        vz.ParameterType.DOUBLE,
        vz.ParameterType.INTEGER,
        vz.ParameterType.DISCRETE,
        vz.ParameterType.CATEGORICAL,
    ):
        raise TrialTextError(
            f"parameter {pc.name!r}: type {t.name} cannot be written as text"
        )
    return t


@attrs.frozen
class TrialText:
    """A trial's text and where its numbers are in it.

    ``numbers`` holds one ``(start, end, position)`` per numeric parameter value written:
    the value's characters are ``text[start:end]`` and ``position`` is the scalar that the
    model's number embedding reads at the tokens of those characters (:class:`TextCodec`
    ``number_features``). Empty when the codec writes pure text.
    """

    text: str
    numbers: tuple[tuple[int, int, float], ...] = ()
    # Where the study's text starts (``text[study_start:]``) when the codec's ``study_text`` is
    # "separate": the model encodes it apart from the trial's (``text[:study_start - 1]``, the
    # comma between them dropped). None: one input, as written.
    study_start: int | None = None


def _clamp_position(u: float) -> float:
    lo, hi = POSITION_LIMITS
    return lo if not u >= lo else hi if u > hi else u  # nan -> lo


def unit_position(pc: vz.ParameterConfig) -> Callable[[float], float]:
    """Value -> its position in the search space, scaled as Vizier scales it.

    Bounds map to 0 and 1; LOG parameters are placed on log(x), REVERSE_LOG ones on
    Vizier's mirrored log, INTEGER and DISCRETE ones by their bounds (a DISCRETE
    parameter's are its smallest and largest feasible values). Why positions and not
    the digits alone: the encoder must otherwise assemble a magnitude from digit tokens,
    which a small model learns only after many passes (docs/BENCHMARKS.md, "Numbers as
    numbers").

    A value outside the bounds (a prior study with wider bounds, a trial added by hand)
    extrapolates on the same scale and is clamped to ``POSITION_LIMITS`` = [-1, 2]; a
    value a log scale cannot place (<= 0) takes the lower limit. Never nan, never an
    error: the digits still say what the value is.
    """
    lo, hi = (float(b) for b in pc.bounds)
    scale = pc.scale_type
    if hi <= lo:
        return lambda v: 0.5
    if scale == vz.ScaleType.LOG and lo > 0:
        log_lo, span = math.log(lo), math.log(hi) - math.log(lo)

        def position(v: float) -> float:
            return _clamp_position((math.log(v) - log_lo) / span) if v > 0 else POSITION_LIMITS[0]

    elif scale == vz.ScaleType.REVERSE_LOG and lo > 0:
        log_lo, span = math.log(lo), math.log(hi) - math.log(lo)

        def position(v: float) -> float:
            mirrored = hi + lo - v
            if mirrored <= 0:
                return POSITION_LIMITS[1]
            return _clamp_position(1.0 - (math.log(mirrored) - log_lo) / span)

    else:
        width = hi - lo

        def position(v: float) -> float:
            return _clamp_position((v - lo) / width)

    return position


def magnitude_position(v: float) -> float:
    """A position that needs no bounds: sign and log10-magnitude on a fixed scale.

    Maps -1e10 .. -1e-10, 0, 1e-10 .. 1e10 monotonically onto [0, 1] (0.5 for |v| <= 1e-10),
    so a model trained on studies with other bounds reads the same value the same way.
    It resolves magnitudes well and small linear differences poorly (3 and 4 are 0.003
    apart): measured against ``unit_position`` in docs/BENCHMARKS.md.
    """
    a = abs(v)
    if not a > 1e-10:
        return 0.5
    z = min(1.0, (math.log10(a) + 10.0) / 20.0)
    return 0.5 + 0.5 * (z if v > 0 else -z)


class _Node(NamedTuple):
    """One parameter config, compiled for writing (a tuple: built per serialize call)."""

    name: str
    prefix: str  # 'key:'
    render: Callable[[Any], tuple[str, Any]]  # value -> (text, internal value)
    children: Mapping[Any, tuple["_Node", ...]]  # internal parent value -> subspace
    position: Callable[[Any], float] | None = None  # internal value -> embedding input


@attrs.frozen
class _StudyPlan:
    """A problem compiled once: the walk over its search space and its study text."""

    nodes: tuple[_Node, ...]
    flat: tuple[tuple[str, str, Callable[[Any], tuple[str, Any]], Callable[[Any], float] | None], ...]
    all_names: frozenset[str]
    conditional: bool
    suffix: str  # '}},{objective:...}'


def _walk_configs(
    configs: Iterable[vz.ParameterConfig],
) -> Iterable[vz.ParameterConfig]:
    for pc in configs:
        yield pc
        for _, sub in pc.subspaces():
            yield from _walk_configs(sub.parameters)


@attrs.frozen
class TextCodec:
    """Writes a (problem, trial) as one line of text and reads it back.

    Every field is part of the input format: a checkpoint stores them
    (:meth:`to_config`) with ``TEXT_CODEC_VERSION`` and refuses any other.

    ``number_features`` says how numeric values (DOUBLE, INTEGER, DISCRETE) reach the
    model besides their digits; categorical values are always text only:

    * ``"position"`` (default): the value's position in the search space
      (:func:`unit_position`), which a learned periodic embedding adds at the value's
      tokens. Measured: the same model ranks held-out HPOBench configurations at
      Spearman 0.93 after 600 steps where pure text reaches 0.84.
    * ``"magnitude"``: a position that needs no bounds (:func:`magnitude_position`).
    * ``"none"``: pure text, the OmniPred paper's input (kept for ablations).

    ``max_metadata_value_chars`` caps each metadata value: every trial's input carries the
    study text, so a long constant description would be paid for by every example (an
    HPOBench trial was 85 tokens with its description, 60 without, 1.5x fewer examples/s).

    ``study_text`` says how the study's part of the text (objective, goal, metadata) reaches
    the model; the written text is the same either way:

    * ``"inline"`` (default): one input per trial, study text included (OmniPred's input).
    * ``"separate"``: the trial's parameters and the study's text are two inputs
      (:attr:`TrialText.study_start`); the encoder reads each study's text once per batch
      and the decoder attends to both. A study's text is constant over its trials (about 30
      of an HPOBench trial's 70 tokens), so encoding it once per batch of that study's
      trials saves that share of the encoder's work.
    """

    float_significant_digits: int = attrs.field(default=3)
    excluded_metadata_namespaces: tuple[str, ...] = attrs.field(
        default=(POLICY_NS, OMNIPRED_NS),
        converter=lambda v: (v,) if isinstance(v, str) else tuple(v),
    )
    number_features: str = attrs.field(default="position")
    max_metadata_value_chars: int = attrs.field(default=32)
    study_text: str = attrs.field(default="inline")

    @study_text.validator
    def _check_study_text(self, _, value):
        check_study_text(value)

    @property
    def separates_study_text(self) -> bool:
        return self.study_text == "separate"

    @number_features.validator
    def _check_number_features(self, _, value):
        if value not in NUMBER_FEATURES:
            raise ValueError(f"number_features must be one of {NUMBER_FEATURES}, got {value!r}")

    @max_metadata_value_chars.validator
    def _check_metadata_chars(self, _, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"max_metadata_value_chars must be an int >= 1, got {value!r}")

    @property
    def writes_numbers(self) -> bool:
        """Whether texts come with number positions for the model's number embedding."""
        return self.number_features != "none"

    @float_significant_digits.validator
    def _check_digits(self, _, value):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 17:
            raise ValueError(
                f"float_significant_digits must be an int in [1, 17], got {value!r}"
            )

    @excluded_metadata_namespaces.validator
    def _check_namespaces(self, _, value):
        if not all(isinstance(v, str) for v in value):
            raise ValueError(
                f"excluded_metadata_namespaces must be strings, got {value!r}"
            )

    # ------------------------------------------------------------------ config

    def to_config(self) -> dict:
        config = {
            "text_codec_version": TEXT_CODEC_VERSION,
            "float_significant_digits": self.float_significant_digits,
            "excluded_metadata_namespaces": list(self.excluded_metadata_namespaces),
            "number_features": self.number_features,
            "max_metadata_value_chars": self.max_metadata_value_chars,
        }
        if self.separates_study_text:  # absent means "inline": the configs of earlier checkpoints
            config["study_text"] = self.study_text
        return config

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> "TextCodec":
        """Inverse of :meth:`to_config`; refuses another text format version.

        A model trained on one text format must not be fed another, so a version
        mismatch is an error rather than a silent fallback.
        """
        d = dict(d)
        version = d.pop("text_codec_version", None)
        if version != TEXT_CODEC_VERSION:
            raise ValueError(
                f"text codec config has text_codec_version={version!r}, this code writes"
                f" version {TEXT_CODEC_VERSION}"
            )
        known = {"float_significant_digits", "excluded_metadata_namespaces", "number_features",
                 "max_metadata_value_chars", "study_text"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown text codec config keys: {unknown}")
        return cls(**d)

    # --------------------------------------------------------------- objective

    def objective_metric(
        self, problem: vz.ProblemStatement, metric_name: str | None = None
    ) -> vz.MetricInformation:
        """The one metric the model predicts for this problem.

        Without ``metric_name`` the problem must have exactly one objective metric
        (safety metrics are constraints, not what is being optimised, so they are
        ignored). ``metric_name`` may name any metric of the problem, safety ones
        included, so that a regressor can be trained on a constraint as well.
        """
        metrics = list(problem.metric_information)
        if metric_name is not None:
            for m in metrics:
                if m.name == metric_name:
                    return m
            raise TrialTextError(
                f"metric_name {metric_name!r} is not a metric of the problem; its"
                f" metrics are {[m.name for m in metrics]}"
            )
        objectives = [m for m in metrics if m.type.is_objective]
        if len(objectives) == 1:
            return objectives[0]
        if not objectives:
            raise TrialTextError(
                "the problem has no objective metric (metrics:"
                f" {[m.name for m in metrics]}); the text needs one"
            )
        raise TrialTextError(
            "the problem is multi-objective; pass metric_name= one of"
            f" {[m.name for m in objectives]}"
        )

    # ------------------------------------------------------------------ write

    def _fmt_float(self, v: float) -> str:
        return format(v, f".{self.float_significant_digits}g")

    def _renderer(self, pc: vz.ParameterConfig) -> Callable[[Any], tuple[str, Any]]:
        name = pc.name
        kind = _config_kind(pc)
        fmt = f".{self.float_significant_digits}g"

        def bad(v, what):
            return TrialTextError(
                f"parameter {name!r} ({kind.name}): {what}, got {v!r}"
            )

        def huge(v):
            text = format(v, fmt)
            if math.isinf(float(text)):  # e.g. 1.5e308 with 1 digit -> '2e+308'
                raise bad(v, f"{text} would read back as infinity")
            return text

        # Fast paths test exact types first; the general checks run only when those miss.
        if kind == vz.ParameterType.DOUBLE:

            def render(v):
                tv = type(v)
                if tv is not float:
                    if tv is bool or not isinstance(v, (int, float)):
                        raise bad(v, "expected a number")
                    try:
                        v = float(v)
                    except OverflowError:
                        raise bad(v, "expected a finite number") from None
                if v - v != 0.0:  # nan or inf
                    raise bad(v, "expected a finite number")
                if v > 1e307 or v < -1e307:
                    return huge(v), v
                return format(v, fmt), v

        elif kind == vz.ParameterType.INTEGER:

            def render(v):
                tv = type(v)
                if tv is not int:
                    if tv is bool or not isinstance(v, (int, float)):
                        raise bad(v, "expected an integer")
                    if isinstance(v, float):
                        if not (math.isfinite(v) and v.is_integer()):
                            raise bad(v, "expected an integral value")
                    v = int(v)
                return str(v), v

        elif kind == vz.ParameterType.DISCRETE:

            def render(v):
                tv = type(v)
                if tv is not float:
                    if tv is bool or not isinstance(v, (int, float)):
                        raise bad(v, "expected a number")
                    if isinstance(v, int):
                        return str(int(v)), v
                    v = float(v)
                if v - v != 0.0:
                    raise bad(v, "expected a finite number")
                if v.is_integer():
                    return str(int(v)), v
                return format(v, fmt), v

        else:  # CATEGORICAL
            feasible = frozenset(pc.feasible_values)
            quoted: dict[str, str] = {}  # filled lazily: studies may have many categories

            def render(v):
                q = quoted.get(v) if type(v) is str else None
                if q is None:
                    if isinstance(v, bool):  # Vizier's boolean parameters: 'True' / 'False'
                        v = vz.ParameterValue(v).as_str
                    elif not isinstance(v, str):
                        raise bad(v, "expected a string")
                    if v not in feasible:
                        raise bad(v, f"not one of the feasible values [{_some(feasible)}]")
                    q = quoted[v] = _quote(v)
                return q, v

        return render

    def _compile_nodes(
        self, configs: Sequence[vz.ParameterConfig]
    ) -> tuple[_Node, ...]:
        nodes = []
        for pc in configs:
            children = {}
            for value, sub in pc.subspaces():
                if sub.parameters:
                    children[value] = self._compile_nodes(sub.parameters)
            nodes.append(
                _Node(
                    name=pc.name,
                    prefix=_key(pc.name) + ":",
                    render=self._renderer(pc),
                    children=children,
                    position=self._position_fn(pc),
                )
            )
        return tuple(nodes)

    def _position_fn(self, pc: vz.ParameterConfig) -> Callable[[Any], float] | None:
        if self.number_features == "none" or pc.type == vz.ParameterType.CATEGORICAL:
            return None
        if self.number_features == "magnitude":
            return magnitude_position
        return unit_position(pc)

    def _metadata_items(self, problem: vz.ProblemStatement) -> list[tuple[str, str]]:
        excluded = set(self.excluded_metadata_namespaces)
        entries = []
        for ns, key, value in problem.metadata.all_items():
            if not isinstance(value, str):
                continue  # protos are binary state, not text for the model
            parts = tuple(ns)
            if parts and parts[0] in excluded:
                continue
            entries.append(("/".join(parts + (key,)), len(parts), parts, value))
        entries.sort(key=lambda e: e[:3])
        out, seen = [], set()
        for joined, _, _, value in entries:
            if joined not in seen:
                seen.add(joined)
                out.append((joined, value))
        return out

    def _study_text(
        self, problem: vz.ProblemStatement, metric_name: str | None
    ) -> str:
        metric = self.objective_metric(problem, metric_name)
        goal = "max" if metric.goal.is_maximize else "min"
        text = f'{{objective:{_quote(metric.name)},goal:"{goal}"'
        md = self._metadata_items(problem)
        if md:
            cap = self.max_metadata_value_chars
            text += ",metadata:{" + ",".join(f"{_key(k)}:{_quote(v[:cap])}" for k, v in md) + "}"
        return text + "}"

    def _compile(
        self, problem: vz.ProblemStatement, metric_name: str | None
    ) -> _StudyPlan:
        space = problem.search_space
        nodes = self._compile_nodes(space.parameters)
        all_names = frozenset(pc.name for pc in _walk_configs(space.parameters))
        conditional = any(n.children for n in nodes)
        return _StudyPlan(
            nodes=nodes,
            flat=tuple((n.name, n.prefix, n.render, n.position) for n in nodes),
            all_names=all_names,
            conditional=conditional,
            suffix="}}," + self._study_text(problem, metric_name),
        )

    def _write(self, plan: _StudyPlan, trial: vz.TrialSuggestion, numbers: list | None = None) -> str:
        """The trial's text; with a `numbers` list, appends (start, end, position) of each
        numeric value written (offsets into the returned text)."""
        if not isinstance(trial, vz.TrialSuggestion):
            raise TypeError(
                f"expected a vz.Trial or vz.TrialSuggestion, got {type(trial).__name__}"
            )
        values = _raw_values(trial.parameters)
        parts: list[str] = []
        if plan.conditional:
            written: set[str] = set()
            self._write_conditional(plan.nodes, values, parts, written, numbers)
            used = len(written)
        else:
            used = 0
            get, append = values.get, parts.append
            offset = len(_HEAD)
            for name, prefix, render, position in plan.flat:
                pv = get(name)
                if pv is None:
                    continue
                text, internal = render(pv.value)
                append(prefix + text)
                if numbers is not None and position is not None:
                    start = offset + len(prefix)
                    numbers.append((start, start + len(text), position(internal)))
                offset += len(prefix) + len(text) + 1
                used += 1
        if used != len(values):
            self._raise_unused(plan, values)
        return _HEAD + ",".join(parts) + plan.suffix

    def _write_conditional(self, nodes, values, parts, written, numbers=None) -> None:
        for node in nodes:
            pv = values.get(node.name)
            if pv is None:
                continue
            text, internal = node.render(pv.value)
            if node.name not in written:  # else: written at its first active position
                if numbers is not None and node.position is not None:
                    start = len(_HEAD) + sum(len(p) + 1 for p in parts) + len(node.prefix)
                    numbers.append((start, start + len(text), node.position(internal)))
                parts.append(node.prefix + text)
                written.add(node.name)
            sub = node.children.get(internal)
            if sub:
                self._write_conditional(sub, values, parts, written, numbers)

    def _raise_unused(self, plan: _StudyPlan, values: Mapping[str, Any]) -> None:
        written = set()
        # Recover which names were written from the walk (cheap: error path only).
        self._write_conditional(plan.nodes, values, [], written)
        for name in values:
            if name in written:
                continue
            if name not in plan.all_names:
                raise TrialTextError(
                    f"parameter {name!r} is not in the search space (parameters:"
                    f" {_some(plan.all_names)})"
                )
            raise TrialTextError(
                f"parameter {name!r} is in the search space but inactive: the values"
                " of its parent parameters in this trial do not select it"
            )

    def serialize(
        self,
        problem: vz.ProblemStatement,
        trial: vz.Trial | vz.TrialSuggestion,
        *,
        metric_name: str | None = None,
    ) -> str:
        """The text of one trial of ``problem``.

        Numbers outside their declared bounds (or DISCRETE values outside the feasible
        set) are written as they are, not rejected: the text never involves bounds.
        Compiles the study on every call; for more than one trial use
        :meth:`serialize_many`.

        Raises:
            TrialTextError: a trial parameter not in the search space (or inactive given
                its parents' values), a value of the wrong type (a str for a DOUBLE, nan,
                a non-integral INTEGER), a categorical value that is not feasible, or a
                problem without a single objective metric and no ``metric_name``.
        """
        return self._write(self._compile(problem, metric_name), trial)

    def serialize_many(
        self,
        problem: vz.ProblemStatement,
        trials: Iterable[vz.Trial | vz.TrialSuggestion],
        *,
        metric_name: str | None = None,
    ) -> list[str]:
        """Texts of many trials of one problem; the study is compiled once."""
        plan = self._compile(problem, metric_name)
        return [self._write(plan, t) for t in trials]

    def trial_texts(
        self,
        problem: vz.ProblemStatement,
        trials: Iterable[vz.Trial | vz.TrialSuggestion],
        *,
        metric_name: str | None = None,
    ) -> list[TrialText]:
        """What the model reads of each trial: its text and, unless ``number_features`` is
        "none", the position of each numeric value (:class:`TrialText`). Same errors as
        :meth:`serialize`."""
        plan = self._compile(problem, metric_name)  # no positions compiled when writes_numbers is False
        study_length = len(plan.suffix) - len("}},") if self.separates_study_text else None
        out = []
        for t in trials:
            numbers: list[tuple[int, int, float]] = []
            text = self._write(plan, t, numbers)
            start = None if study_length is None else len(text) - study_length
            out.append(TrialText(text, tuple(numbers), start))
        return out

    # ------------------------------------------------------------------- read

    def parse(self, text: str) -> ParsedTrialText:
        """Reads a text back without the problem: names, raw numbers, strings.

        Accepts exactly the grammar :meth:`serialize` writes (no whitespace), except that
        the study object, and each of its keys, may be absent. Raises TrialTextError
        with the character offset on anything else.
        """
        return _Parser(text).parse()

    def parse_parameters(
        self, problem: vz.ProblemStatement, text: str
    ) -> vz.ParameterDict:
        """Parameters of a text, typed by ``problem``'s search space, in text order.

        DOUBLE -> float, INTEGER -> int, DISCRETE -> float (not snapped to a feasible
        value: the text has only a few significant digits), CATEGORICAL -> str.
        Bounds are not checked, as in :meth:`serialize`.
        """
        parsed = self.parse(text)
        values = parsed.parameters
        configs: dict[str, vz.ParameterConfig] = {}
        self._active_configs(problem.search_space.parameters, values, configs)
        all_names = {pc.name for pc in _walk_configs(problem.search_space.parameters)}
        out = vz.ParameterDict()
        for name, v in values.items():
            pc = configs.get(name)
            if pc is None:
                if name in all_names:
                    raise TrialTextError(
                        f"parameter {name!r} is in the search space but inactive: the"
                        " values of its parent parameters in this text do not select it"
                    )
                raise TrialTextError(
                    f"parameter {name!r} is not in the search space (parameters:"
                    f" {_some(all_names)})"
                )
            out[name] = self._cast(pc, v)
        return out

    def _active_configs(
        self,
        configs: Sequence[vz.ParameterConfig],
        values: Mapping[str, Any],
        out: dict[str, vz.ParameterConfig],
    ) -> None:
        for pc in configs:
            if pc.name not in values:
                continue
            out.setdefault(pc.name, pc)  # the first active position types the value
            subspaces = list(pc.subspaces())
            if not subspaces:
                continue
            v = self._cast(pc, values[pc.name])
            if pc.type == vz.ParameterType.DISCRETE:
                # The text has rounded the value: match children by their written form.
                written = self._fmt_discrete(v)
                match = [s for k, s in subspaces if self._fmt_discrete(k) == written]
            else:
                match = [s for k, s in subspaces if k == v]
            for sub in match:
                self._active_configs(sub.parameters, values, out)

    def _fmt_discrete(self, v: float) -> str:
        return str(int(v)) if float(v).is_integer() else self._fmt_float(v)

    def _cast(self, pc: vz.ParameterConfig, v: Any) -> float | int | str:
        kind = _config_kind(pc)
        if kind == vz.ParameterType.CATEGORICAL:
            if not isinstance(v, str):
                raise TrialTextError(
                    f"parameter {pc.name!r} (CATEGORICAL): expected a string, got {v!r}"
                )
            return v
        if not _is_number(v):
            raise TrialTextError(
                f"parameter {pc.name!r} ({kind.name}): expected a number, got {v!r}"
            )
        if kind == vz.ParameterType.INTEGER:
            if isinstance(v, float) and not v.is_integer():
                raise TrialTextError(
                    f"parameter {pc.name!r} (INTEGER): expected an integral value, got {v!r}"
                )
            return int(v)
        try:
            return float(v)
        except OverflowError:
            raise TrialTextError(
                f"parameter {pc.name!r} ({kind.name}): {v} is too large for a float"
            ) from None


class _Parser:
    """Recursive descent over exactly the grammar TextCodec writes.

        text    := '{' 'suggestion' ':' params '}' [ ',' study ]
        params  := '{' [ key ':' scalar ( ',' key ':' scalar )* ] '}'
        study   := '{' [ skey ':' svalue ( ',' skey ':' svalue )* ] '}'
        skey    := objective (-> string) | goal (-> "min" | "max") | metadata (-> strobj)
        strobj  := '{' [ key ':' string ( ',' key ':' string )* ] '}'
        key     := bare | string            bare := [A-Za-z0-9_.\\-/]+
        scalar  := string | number          string := a JSON string
        number  := -?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?
    """

    def __init__(self, text: str):
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        self.s = text
        self.i = 0

    def error(self, message: str, pos: int | None = None) -> TrialTextError:
        pos = self.i if pos is None else pos
        near = self.s[pos : pos + 20]
        where = f"near {near!r}" if near else "at end of text"
        return TrialTextError(
            f"malformed trial text: {message} at offset {pos} ({where})", offset=pos
        )

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected {ch!r}")
        self.i += 1

    def string(self) -> str:
        if self.peek() != '"':
            raise self.error("expected a quoted string")
        try:
            value, end = json.decoder.scanstring(self.s, self.i + 1, True)
        except json.JSONDecodeError as e:
            raise self.error(f"bad string ({e.msg})", e.pos) from None
        self.i = end
        return value

    def key(self) -> str:
        if self.peek() == '"':
            return self.string()
        m = _BARE_NAME.match(self.s, self.i)
        if not m:
            raise self.error("expected a key")
        self.i = m.end()
        return m.group()

    def number(self) -> int | float:
        m = _NUMBER.match(self.s, self.i)
        if not m:
            raise self.error("expected a number or a quoted string")
        tok = m.group()
        if any(c in tok for c in ".eE"):
            value = float(tok)
            if not math.isfinite(value):
                raise self.error("number out of range")
        else:
            try:
                value = int(tok)
            except ValueError:  # beyond Python's int-from-text digit limit
                raise self.error("number out of range") from None
        self.i = m.end()
        return value

    def scalar(self) -> int | float | str:
        return self.string() if self.peek() == '"' else self.number()

    def obj(self, value_fn: Callable[[str, int], Any]) -> dict[str, Any]:
        self.expect("{")
        out: dict[str, Any] = {}
        if self.peek() == "}":
            self.i += 1
            return out
        while True:
            pos = self.i
            k = self.key()
            if k in out:
                raise self.error(f"duplicate key {k!r}", pos)
            self.expect(":")
            out[k] = value_fn(k, pos)
            c = self.peek()
            if c == ",":
                self.i += 1
            elif c == "}":
                self.i += 1
                return out
            else:
                raise self.error("expected ',' or '}'")

    def study_value(self, k: str, pos: int) -> Any:
        if k == "objective":
            return self.string()
        if k == "goal":
            gpos = self.i
            g = self.string()
            if g not in ("min", "max"):
                raise self.error(f"goal must be 'min' or 'max', got {g!r}", gpos)
            return g
        if k == "metadata":
            return self.obj(lambda *_: self.string())
        raise self.error(f"unknown study key {k!r}", pos)

    def parse(self) -> ParsedTrialText:
        self.expect("{")
        pos = self.i
        if self.key() != "suggestion":
            raise self.error("expected key 'suggestion'", pos)
        self.expect(":")
        params = self.obj(lambda *_: self.scalar())
        self.expect("}")
        study: dict[str, Any] = {}
        if self.i < len(self.s):
            self.expect(",")
            study = self.obj(self.study_value)
        if self.i != len(self.s):
            raise self.error("unexpected text after the end")
        return ParsedTrialText(
            parameters=params,
            objective=study.get("objective"),
            goal=study.get("goal"),
            metadata=study.get("metadata", {}),
        )


_DEFAULT = TextCodec()


def serialize_trial(
    problem: vz.ProblemStatement,
    trial: vz.Trial | vz.TrialSuggestion,
    *,
    metric_name: str | None = None,
) -> str:
    """:meth:`TextCodec.serialize` with the default codec."""
    return _DEFAULT.serialize(problem, trial, metric_name=metric_name)


def parse_trial_text(text: str) -> ParsedTrialText:
    """:meth:`TextCodec.parse` with the default codec."""
    return _DEFAULT.parse(text)
