"""Tests for vizier_omnipred.text: the trial <-> text codec."""

from __future__ import annotations

import math

import hypothesis
import pytest
from hypothesis import strategies as st
from vizier import pyvizier as vz
from vizier.testing import test_studies

from vizier_omnipred import text as text_lib
from vizier_omnipred.text import (
    TEXT_CODEC_VERSION,
    ParsedTrialText,
    TextCodec,
    TrialTextError,
    parse_trial_text,
    serialize_trial,
)

MAX = vz.ObjectiveMetricGoal.MAXIMIZE
MIN = vz.ObjectiveMetricGoal.MINIMIZE

EXAMPLE = (
    '{suggestion:{lr:0.001,optimizer:"adam",layers:3}},'
    '{objective:"accuracy",goal:"max",metadata:{dataset:"car",name:"my study"}}'
)


def _problem(space=None, metrics=None, metadata=None) -> vz.ProblemStatement:
    if space is None:
        space = vz.SearchSpace()
        space.root.add_float_param("lr", 1e-5, 1.0, scale_type=vz.ScaleType.LOG)
        space.root.add_categorical_param("optimizer", ["adam", "sgd"])
        space.root.add_int_param("layers", 1, 5)
    if metrics is None:
        metrics = [vz.MetricInformation("accuracy", goal=MAX)]
    return vz.ProblemStatement(
        space,
        metric_information=metrics,
        metadata=vz.Metadata(metadata or {}),
    )


def _example_problem() -> vz.ProblemStatement:
    return _problem(metadata={"name": "my study", "dataset": "car"})


EXAMPLE_PARAMS = {"lr": 0.001, "optimizer": "adam", "layers": 3}


# ----------------------------------------------------------------- the format


def test_example_exact():
    problem = _example_problem()
    assert serialize_trial(problem, vz.TrialSuggestion(EXAMPLE_PARAMS)) == EXAMPLE
    assert parse_trial_text(EXAMPLE) == ParsedTrialText(
        parameters={"lr": 0.001, "optimizer": "adam", "layers": 3},
        objective="accuracy",
        goal="max",
        metadata={"dataset": "car", "name": "my study"},
    )


def test_trial_and_suggestion_give_same_text_and_y_is_not_in_text():
    problem = _example_problem()
    suggestion = vz.TrialSuggestion(EXAMPLE_PARAMS)
    trial = vz.Trial(id=7, parameters=EXAMPLE_PARAMS)
    trial.complete(vz.Measurement({"accuracy": 0.987654}))
    trial.metadata["note"] = "trial metadata is never read"
    assert serialize_trial(problem, trial) == EXAMPLE
    assert serialize_trial(problem, suggestion) == EXAMPLE


def test_rejects_non_trial():
    with pytest.raises(TypeError):
        serialize_trial(_example_problem(), EXAMPLE_PARAMS)  # type: ignore[arg-type]


def test_all_parameter_types_including_log_scaled():
    problem = _problem(space=test_studies.flat_space_with_all_types())
    trial = vz.Trial({
            "lineardouble": 1.23456,
            "logdouble": 1e-05,  # out of its [1e-4, 1e2] bounds: written, not an error
            "integer": -2,
            "categorical": "aa",
            "boolean": True,
            "discrete_double": 1.2,
            "discrete_logdouble": 1e-05,
            "discrete_int": 2.0,
        })
    text = serialize_trial(problem, trial)
    assert text == (
        "{suggestion:{lineardouble:1.23,logdouble:1e-05,integer:-2,"
        'categorical:"aa",boolean:"True",discrete_double:1.2,'
        'discrete_logdouble:1e-05,discrete_int:2}},{objective:"accuracy",goal:"max"}'
    )
    parsed = parse_trial_text(text)
    assert parsed.parameters == {
        "lineardouble": 1.23,
        "logdouble": 1e-05,
        "integer": -2,
        "categorical": "aa",
        "boolean": "True",
        "discrete_double": 1.2,
        "discrete_logdouble": 1e-05,
        "discrete_int": 2,
    }
    assert parsed.metadata == {}  # empty metadata is left out of the text

    typed = TextCodec().parse_parameters(problem, text)
    assert list(typed) == list(parsed.parameters)
    expected_types = {
        "lineardouble": float,
        "logdouble": float,
        "integer": int,
        "categorical": str,
        "boolean": str,
        "discrete_double": float,
        "discrete_logdouble": float,
        "discrete_int": float,
    }
    for name, t in expected_types.items():
        assert type(typed.get_value(name)) is t, name
    assert typed.get_value("discrete_int") == 2.0


@pytest.mark.parametrize(
    "value, written",
    [
        (3.0, "3"),
        (-0.5, "-0.5"),
        (12345.678, "1.23e+04"),
        (1e-05, "1e-05"),
        (0.000123456, "0.000123"),
        (100.0, "100"),
        (1000.0, "1e+03"),
        (7, "7"),  # an int given for a DOUBLE
    ],
)
def test_double_formatting_and_integral_double_parses(value, written):
    space = vz.SearchSpace()
    space.root.add_float_param("x", -1.0, 1.0)
    problem = _problem(space=space)
    text = serialize_trial(problem, vz.Trial({"x": value}))
    assert text.startswith("{suggestion:{x:" + written + "}}")
    raw = parse_trial_text(text).parameters["x"]
    assert raw == float(format(value, ".3g"))
    assert type(raw) is (int if written.lstrip("-").isdigit() else float)
    typed = TextCodec().parse_parameters(problem, text).get_value("x")
    assert type(typed) is float and typed == float(written)


def test_double_rounding_to_infinity_is_an_error():
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 1.0)
    problem = _problem(space=space)
    codec = TextCodec(float_significant_digits=1)
    with pytest.raises(TrialTextError, match="'x'.*infinity"):
        codec.serialize(problem, vz.Trial({"x": -1.5e308}))
    assert codec.serialize(problem, vz.Trial({"x": 1.2e308})).startswith(
        "{suggestion:{x:1e+308}}"
    )


def test_float_significant_digits():
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 10.0)
    problem = _problem(space=space)
    trial = vz.Trial({"x": math.pi})
    assert TextCodec(float_significant_digits=6).serialize(problem, trial).startswith(
        "{suggestion:{x:3.14159}}"
    )
    assert TextCodec(float_significant_digits=1).serialize(problem, trial).startswith(
        "{suggestion:{x:3}}"
    )
    with pytest.raises(ValueError):
        TextCodec(float_significant_digits=0)


def test_integer_given_as_float_and_integer_not_rounded():
    space = vz.SearchSpace()
    space.root.add_int_param("n", 0, 10**9)
    problem = _problem(space=space)
    assert serialize_trial(problem, vz.Trial({"n": 123456789.0})).startswith(
        "{suggestion:{n:123456789}}"
    )


def test_missing_parameters_are_absent():
    text = serialize_trial(_example_problem(), vz.Trial({"layers": 2}))
    assert text.startswith("{suggestion:{layers:2}},")
    text = serialize_trial(_example_problem(), vz.Trial())
    assert text.startswith("{suggestion:{}},")
    assert parse_trial_text(text).parameters == {}


# ---------------------------------------------------------------- conditional


def _conditional_problem() -> vz.ProblemStatement:
    return _problem(space=test_studies.conditional_automl_space())


def test_conditional_parents_then_active_children():
    problem = _conditional_problem()
    # Search-space order given in a scrambled trial order: the text is in space order.
    trial = vz.Trial({
            "special_logic_parameter": 2.5,
            "use_special_logic": "True",
            "learning_rate": 0.3,
            "optimizer_type": "adam",
            "model_type": "dnn",
        })
    text = serialize_trial(problem, trial)
    # learning_rate is declared both under model_type=dnn and under
    # optimizer_type=adam; a trial has one value for it, written once, first.
    assert text == (
        '{suggestion:{model_type:"dnn",learning_rate:0.3,optimizer_type:"adam",'
        'use_special_logic:"True",special_logic_parameter:2.5}},'
        '{objective:"accuracy",goal:"max"}'
    )
    typed = TextCodec().parse_parameters(problem, text)
    assert typed.as_dict() == {
        "model_type": "dnn",
        "learning_rate": 0.3,
        "optimizer_type": "adam",
        "use_special_logic": "True",
        "special_logic_parameter": 2.5,
    }


def test_conditional_inactive_children_absent():
    problem = _conditional_problem()
    text = serialize_trial(
        problem, vz.Trial({"model_type": "linear", "learning_rate": 0.5})
    )
    assert text.startswith('{suggestion:{model_type:"linear",learning_rate:0.5}},')
    text = serialize_trial(
        problem,
        vz.Trial({
                "model_type": "dnn",
                "learning_rate": 0.01,
                "optimizer_type": "evolution",
            }),
    )
    assert text.startswith(
        '{suggestion:{model_type:"dnn",learning_rate:0.01,optimizer_type:"evolution"}},'
    )
    # A bool parent given as a Python bool selects the 'True' subspace too.
    text = serialize_trial(
        problem,
        vz.Trial({
                "model_type": "dnn",
                "optimizer_type": "adam",
                "use_special_logic": True,
                "special_logic_parameter": 1.5,
            }),
    )
    assert "special_logic_parameter:1.5" in text


def test_conditional_inactive_parameter_is_an_error():
    problem = _conditional_problem()
    trial = vz.Trial({"model_type": "linear", "optimizer_type": "adam"})
    with pytest.raises(TrialTextError, match="'optimizer_type'.*inactive"):
        serialize_trial(problem, trial)
    with pytest.raises(TrialTextError, match="'optimizer_type'.*inactive"):
        TextCodec().parse_parameters(
            problem, '{suggestion:{model_type:"linear",optimizer_type:"adam"}}'
        )


def test_conditional_on_integer_and_discrete_parents():
    space = vz.SearchSpace()
    n = space.root.add_int_param("n", 1, 3)
    n.select_values([2]).add_float_param("child_of_n", 0.0, 1.0)
    d = space.root.add_discrete_param("d", [0.123456, 0.5])
    d.select_values([0.123456]).add_categorical_param("child_of_d", ["a", "b"])
    problem = _problem(space=space)
    trial = vz.Trial({"n": 2, "child_of_n": 0.25, "d": 0.123456, "child_of_d": "b"})
    text = serialize_trial(problem, trial)
    assert text.startswith(
        '{suggestion:{n:2,child_of_n:0.25,d:0.123,child_of_d:"b"}},'
    )
    # The discrete parent was rounded in the text; its child is still found.
    typed = TextCodec().parse_parameters(problem, text)
    assert typed.as_dict() == {
        "n": 2,
        "child_of_n": 0.25,
        "d": 0.123,
        "child_of_d": "b",
    }
    with pytest.raises(TrialTextError, match="'child_of_n'.*inactive"):
        serialize_trial(problem, vz.Trial({"n": 3, "child_of_n": 0.25}))


# ------------------------------------------------------------ bounds invariance


def test_text_does_not_depend_on_bounds_scale_or_feasible_set():
    def space(lo, hi, scale, layers_hi, choices, discrete):
        s = vz.SearchSpace()
        s.root.add_float_param("lr", lo, hi, scale_type=scale)
        s.root.add_categorical_param("optimizer", choices)
        s.root.add_int_param("layers", 1, layers_hi)
        s.root.add_discrete_param("d", discrete)
        return s

    trial = vz.Trial({"lr": 2.0, "optimizer": "adam", "layers": 3, "d": 0.5})
    texts = {
        serialize_trial(_problem(space=space(*args)), trial)
        for args in [
            (1.0, 5.0, vz.ScaleType.LINEAR, 5, ["adam", "sgd"], [0.5, 1.0]),
            (0.0, 100.0, vz.ScaleType.LINEAR, 50, ["adam"], [0.1, 0.5]),
            (1e-3, 1e3, vz.ScaleType.LOG, 3, ["sgd", "adam", "rmsprop"], [0.5]),
            # Out of bounds: read as a number, not an error.
            (10.0, 20.0, vz.ScaleType.LINEAR, 2, ["adam", "x"], [0.25, 1.0]),
        ]
    }
    assert texts == {
        '{suggestion:{lr:2,optimizer:"adam",layers:3,d:0.5}},'
        '{objective:"accuracy",goal:"max"}'
    }


# ----------------------------------------------------------------- objective


def test_multi_objective_requires_metric_name():
    metrics = [
        vz.MetricInformation("gain", goal=MAX),
        vz.MetricInformation("loss", goal=MIN),
    ]
    problem = _problem(metrics=metrics)
    trial = vz.Trial(EXAMPLE_PARAMS)
    with pytest.raises(TrialTextError, match="multi-objective.*'gain', 'loss'"):
        serialize_trial(problem, trial)
    text = serialize_trial(problem, trial, metric_name="loss")
    assert text.endswith(',{objective:"loss",goal:"min"}')
    assert TextCodec().serialize_many(problem, [trial], metric_name="gain")[0].endswith(
        ',{objective:"gain",goal:"max"}'
    )
    with pytest.raises(TrialTextError, match="'nope'.*'gain', 'loss'"):
        serialize_trial(problem, trial, metric_name="nope")
    assert TextCodec().objective_metric(problem, "loss").name == "loss"


def test_safety_metrics_are_ignored():
    problem = _problem(metrics=test_studies.metrics_all_unconstrained()[:1] + [
            vz.MetricInformation("lt2", goal=MIN, safety_threshold=2.0)
        ])
    assert TextCodec().objective_metric(problem).name == "gain"
    # Naming a safety metric explicitly is allowed (a regressor may model it).
    assert serialize_trial(problem, vz.Trial(EXAMPLE_PARAMS), metric_name="lt2").endswith(
        '{objective:"lt2",goal:"min"}'
    )


def test_no_objective_metric_is_an_error():
    problem = _problem(metrics=[])
    with pytest.raises(TrialTextError, match="no objective metric"):
        serialize_trial(problem, vz.Trial(EXAMPLE_PARAMS))


# ------------------------------------------------------------------ metadata


def test_metadata_namespaces_sorted_and_excluded():
    problem = _problem()
    md = problem.metadata
    md["zeta"] = "last"
    md["alpha"] = "first"
    md.ns("user").ns("sub")["k"] = "nested"
    md.ns("designer_policy_v0")["state"] = "SECRET1"
    md.ns("designer_policy_v0").ns("deeper")["state"] = "SECRET2"
    md.ns("omnipred")["cache"] = "SECRET3"
    md.ns("other").ns("designer_policy_v0")["k"] = "kept: only the first component counts"
    text = serialize_trial(problem, vz.Trial(EXAMPLE_PARAMS))
    assert "SECRET" not in text
    assert text.endswith(
        ',metadata:{alpha:"first",other/designer_policy_v0/k:"kept: only the first'
        ' component c",user/sub/k:"nested",zeta:"last"}}'  # values capped at 32 characters
    )
    # A codec with other exclusions.
    codec = TextCodec(excluded_metadata_namespaces=("user", "other"))
    parsed = codec.parse(codec.serialize(problem, vz.Trial(EXAMPLE_PARAMS)))
    assert parsed.metadata == {
        "alpha": "first",
        "designer_policy_v0/deeper/state": "SECRET2",
        "designer_policy_v0/state": "SECRET1",
        "omnipred/cache": "SECRET3",
        "zeta": "last",
    }


def test_metadata_non_string_values_skipped_and_collisions_keep_shallowest():
    from google.protobuf import any_pb2

    problem = _problem()
    problem.metadata["proto"] = any_pb2.Any(type_url="x/y", value=b"\x00\x01")
    problem.metadata["a/b"] = "root"
    problem.metadata.ns("a")["b"] = "namespaced"
    parsed = parse_trial_text(serialize_trial(problem, vz.Trial(EXAMPLE_PARAMS)))
    assert parsed.metadata == {"a/b": "root"}


# --------------------------------------------------------------- determinism


def test_determinism_independent_of_insertion_order():
    p1 = _problem(metadata={"a": "1", "b": "2"})
    p2 = _problem(metadata={"b": "2", "a": "1"})
    t1 = vz.Trial({"lr": 0.01, "optimizer": "sgd", "layers": 2})
    t2 = vz.Trial({"layers": 2, "optimizer": "sgd", "lr": 0.01})
    texts = {serialize_trial(p, t) for p in (p1, p2) for t in (t1, t2) for _ in range(3)}
    assert len(texts) == 1


def test_serialize_many_matches_serialize():
    problem = _example_problem()
    trials = [
        vz.Trial({"lr": 10.0 ** -k, "optimizer": o, "layers": k})
        for k in range(1, 5)
        for o in ("adam", "sgd")
    ]
    codec = TextCodec()
    assert codec.serialize_many(problem, trials) == [
        codec.serialize(problem, t) for t in trials
    ]
    assert codec.serialize_many(problem, []) == []


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lr": 0.1, "momentum": 0.9}, "'momentum' is not in the search space"),
        ({"lr": "fast"}, "'lr' \\(DOUBLE\\): expected a number"),
        ({"lr": float("nan")}, "'lr' \\(DOUBLE\\): expected a finite number"),
        ({"lr": float("inf")}, "'lr' \\(DOUBLE\\): expected a finite number"),
        ({"lr": True}, "'lr' \\(DOUBLE\\): expected a number"),
        ({"layers": 2.5}, "'layers' \\(INTEGER\\): expected an integral value"),
        ({"layers": "2"}, "'layers' \\(INTEGER\\): expected an integer"),
        ({"optimizer": "adamw"}, "'optimizer' \\(CATEGORICAL\\): not one of the feasible"),
        ({"optimizer": 1}, "'optimizer' \\(CATEGORICAL\\): expected a string"),
    ],
)
def test_serialize_errors_name_the_parameter(params, match):
    with pytest.raises(TrialTextError, match=match):
        serialize_trial(_example_problem(), vz.Trial(params))
    with pytest.raises(TrialTextError, match=match):
        TextCodec().serialize_many(_example_problem(), [vz.Trial(EXAMPLE_PARAMS), vz.Trial(params)])


def test_trial_text_error_is_value_error():
    assert issubclass(TrialTextError, ValueError)


@pytest.mark.parametrize(
    "text, offset",
    [
        ("", 0),
        ("{suggestion:{a:1}}x", 18),
        ("{suggestion:{a:1}}", None),  # valid: the study part is optional
        ("{suggest:{a:1}}", 1),
        ("{suggestion:{a 1}}", 14),
        ("{suggestion:{a:1,a:2}}", 17),
        ('{suggestion:{a:"x}}', 15),
        ("{suggestion:{a:01}}", 16),
        ("{suggestion:{a:nan}}", 15),
        ("{suggestion:{a:1e999}}", 15),
        ("{suggestion:{a:1" + "0" * 5000 + "}}", 15),
        ("{suggestion:{a:{b:1}}}", 15),
        ('{suggestion:{a:1}},{goal:"up"}', 25),
        ('{suggestion:{a:1}},{colour:"red"}', 20),
        ("{suggestion:{a:1}},{metadata:{k:1}}", 32),
        ('{suggestion:{a:1}},{objective:"y"}}', 34),
        ('{suggestion:{a:1}} ,{objective:"y"}', 18),
        ("{suggestion:{,}}", 13),
        ('{suggestion:{"a\nb":1}}', 15),
    ],
)
def test_malformed_text_errors_give_offset(text, offset):
    if offset is None:
        parse_trial_text(text)
        return
    with pytest.raises(TrialTextError, match=f"offset {offset}\\b") as e:
        parse_trial_text(text)
    assert e.value.offset == offset


def test_parse_parameters_errors():
    problem = _example_problem()
    codec = TextCodec()
    with pytest.raises(TrialTextError, match="'momentum' is not in the search space"):
        codec.parse_parameters(problem, "{suggestion:{momentum:0.9}}")
    with pytest.raises(TrialTextError, match="'optimizer' \\(CATEGORICAL\\): expected a string"):
        codec.parse_parameters(problem, "{suggestion:{optimizer:3}}")
    with pytest.raises(TrialTextError, match="'lr' \\(DOUBLE\\): expected a number"):
        codec.parse_parameters(problem, '{suggestion:{lr:"x"}}')
    with pytest.raises(TrialTextError, match="'layers' \\(INTEGER\\): expected an integral"):
        codec.parse_parameters(problem, "{suggestion:{layers:2.5}}")
    assert codec.parse_parameters(problem, "{suggestion:{layers:2e+00}}").get_value("layers") == 2


# ------------------------------------------------------------------- config


def test_config_round_trip_and_version_check():
    codec = TextCodec(float_significant_digits=4, excluded_metadata_namespaces=["x"])
    assert codec.excluded_metadata_namespaces == ("x",)
    config = codec.to_config()
    assert config["text_codec_version"] == TEXT_CODEC_VERSION
    assert TextCodec.from_config(config) == codec
    with pytest.raises(ValueError, match="text_codec_version"):
        TextCodec.from_config({**config, "text_codec_version": TEXT_CODEC_VERSION + 1})
    with pytest.raises(ValueError, match="unknown"):
        TextCodec.from_config({**config, "extra": 1})
    assert TextCodec.from_config({"text_codec_version": TEXT_CODEC_VERSION}) == TextCodec()


# ------------------------------------------------------------ odd names/values


def test_odd_names_quoted_and_one_line():
    space = vz.SearchSpace()
    name = 'a "b", c:{d}\\ e\nf \u00e9\u2028'
    space.root.add_categorical_param(name, ["x,y", '"}', "line\u2029\x85break"])
    space.root.add_float_param("simple-name/with.dots_1", 0.0, 1.0)
    problem = _problem(
        space=space,
        metrics=[vz.MetricInformation('acc "top-1"', goal=MAX)],
        metadata={"key with space": "v\r\nw"},
    )
    trial = vz.Trial({name: "line\u2029\x85break", "simple-name/with.dots_1": 0.5})
    text = serialize_trial(problem, trial)
    assert text.startswith(
        '{suggestion:{"a \\"b\\", c:{d}\\\\ e\\nf \u00e9\\u2028":"line\\u2029\\u0085break",'
        "simple-name/with.dots_1:0.5}}"
    )
    assert len(text.splitlines()) == 1
    parsed = parse_trial_text(text)
    assert parsed.parameters == {name: "line\u2029\x85break", "simple-name/with.dots_1": 0.5}
    assert parsed.objective == 'acc "top-1"'
    assert parsed.metadata == {"key with space": "v\r\nw"}
    assert TextCodec().parse_parameters(problem, text).as_dict() == parsed.parameters


_names = st.text(min_size=1, max_size=12)
_values = st.text(max_size=12)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    names=st.lists(_names, min_size=1, max_size=4, unique=True),
    data=st.data(),
    metric=st.text(max_size=10),
    metadata=st.dictionaries(_values, _values, max_size=3),
    ns=st.lists(_names, min_size=1, max_size=2),
    ns_value=_values,
)
def test_round_trip_arbitrary_text(names, data, metric, metadata, ns, ns_value):
    space = vz.SearchSpace()
    params = {}
    for i, name in enumerate(names):
        if i % 2 == 0:
            choices = data.draw(st.lists(_values, min_size=1, max_size=3, unique=True))
            space.root.add_categorical_param(name, choices)
            params[name] = data.draw(st.sampled_from(sorted(choices)))
        else:
            space.root.add_float_param(name, 0.0, 1.0)
            params[name] = data.draw(st.floats(min_value=-1e300, max_value=1e300))
    md = vz.Metadata(metadata)
    sub = md
    for component in ns:
        sub = sub.ns(component)
    sub["k"] = ns_value
    problem = vz.ProblemStatement(
        space,
        metric_information=[vz.MetricInformation(metric, goal=MIN)],
        metadata=md,
    )
    text = serialize_trial(problem, vz.Trial(params))
    assert len(text.splitlines()) == 1
    parsed = parse_trial_text(text)
    assert list(parsed.parameters) == names
    for name, value in params.items():
        if isinstance(value, str):
            assert parsed.parameters[name] == value
        else:
            assert parsed.parameters[name] == float(format(value, ".3g"))
    assert parsed.objective == metric
    assert parsed.goal == "min"
    expected_md = dict(metadata)
    if ns[0] not in TextCodec().excluded_metadata_namespaces:
        expected_md.setdefault("/".join(ns + ["k"]), ns_value)
    assert parsed.metadata == expected_md
    assert list(parsed.metadata) == sorted(parsed.metadata)
    typed = TextCodec().parse_parameters(problem, text)
    assert list(typed) == names


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    x=st.floats(allow_nan=False, allow_infinity=False),
    n=st.integers(min_value=-(10**18), max_value=10**18),
    digits=st.integers(min_value=1, max_value=17),
)
def test_round_trip_numbers(x, n, digits):
    space = vz.SearchSpace()
    space.root.add_float_param("x", 0.0, 1.0)
    space.root.add_int_param("n", 0, 1)
    space.root.add_discrete_param("d", [0.5, 1.0])
    codec = TextCodec(float_significant_digits=digits)
    problem = _problem(space=space)
    trial = vz.Trial({"x": x, "n": n, "d": x})
    if math.isinf(float(format(x, f".{digits}g"))):  # 1.5e308 with 1 digit: '2e+308'
        with pytest.raises(TrialTextError, match="infinity"):
            codec.serialize(problem, trial)
        return
    text = codec.serialize(problem, trial)
    parsed = codec.parse(text).parameters
    assert parsed["x"] == float(format(x, f".{digits}g"))
    assert parsed["n"] == n and type(parsed["n"]) is int
    assert parsed["d"] == (x if x.is_integer() else float(format(x, f".{digits}g")))
    typed = codec.parse_parameters(problem, text)
    assert typed.get_value("n") == n


def test_module_exports():
    assert set(text_lib.__all__) >= {
        "TEXT_CODEC_VERSION",
        "TrialTextError",
        "ParsedTrialText",
        "TextCodec",
        "serialize_trial",
        "parse_trial_text",
    }


# ------------------------------------------------------------ numbers as numbers


def _spans_problem() -> vz.ProblemStatement:
    space = vz.SearchSpace()
    space.root.add_float_param("lr", 1e-4, 1.0, scale_type=vz.ScaleType.LOG)
    space.root.add_float_param("dropout", 0.0, 0.5)
    space.root.add_categorical_param("opt", ["adam", "sgd"])
    space.root.add_int_param("layers", 1, 9)
    space.root.add_discrete_param("batch", [16, 32, 64, 128], scale_type=vz.ScaleType.LOG)
    space.root.add_float_param("decay", 0.1, 1.0, scale_type=vz.ScaleType.REVERSE_LOG)
    return _problem(space)


def test_trial_texts_locate_every_numeric_value_and_its_position():
    problem = _spans_problem()
    trial = vz.Trial({"lr": 0.01, "dropout": 0.25, "opt": "sgd", "layers": 5, "batch": 32, "decay": 0.1})
    (tt,) = TextCodec().trial_texts(problem, [trial])
    assert tt.text == TextCodec().serialize(problem, trial)
    written = {tt.text[a:b]: u for a, b, u in tt.numbers}
    # categorical values are text only; every number is found by its characters
    assert set(written) == {"0.01", "0.25", "5", "32", "0.1"} and len(tt.numbers) == 5
    assert written["0.01"] == pytest.approx(0.5)  # log scale: 1e-2 is halfway between 1e-4 and 1
    assert written["0.25"] == pytest.approx(0.5)
    assert written["5"] == pytest.approx(0.5)
    assert written["32"] == pytest.approx(1 / 3)  # log2 16..128
    positions = [u for _, _, u in tt.numbers]
    assert positions[-1] == pytest.approx(0.0)  # REVERSE_LOG lower bound -> 0


def test_positions_of_values_outside_the_bounds_extrapolate_and_are_clamped():
    problem = _spans_problem()
    position = text_lib.unit_position(problem.search_space.get("dropout"))
    assert position(0.75) == pytest.approx(1.5)
    assert position(1e9) == text_lib.POSITION_LIMITS[1]
    assert position(-1e9) == text_lib.POSITION_LIMITS[0]
    log_position = text_lib.unit_position(problem.search_space.get("lr"))
    assert log_position(0.0) == text_lib.POSITION_LIMITS[0]  # a log scale cannot place 0
    assert log_position(-3.0) == text_lib.POSITION_LIMITS[0]
    trial = vz.Trial({"lr": 5.0, "dropout": -0.1, "opt": "adam", "layers": 40, "batch": 1000, "decay": 3.0})
    (tt,) = TextCodec().trial_texts(problem, [trial])
    assert all(math.isfinite(u) and -1.0 <= u <= 2.0 for _, _, u in tt.numbers)


def test_magnitude_positions_need_no_bounds_and_are_monotone():
    values = [-1e12, -1e3, -1.0, -1e-6, 0.0, 1e-6, 1.0, 1e3, 1e12]
    positions = [text_lib.magnitude_position(v) for v in values]
    assert positions == sorted(positions) and positions[0] == 0.0 and positions[-1] == 1.0
    assert text_lib.magnitude_position(0.0) == 0.5
    problem = _spans_problem()
    trial = vz.Trial({"lr": 0.01, "dropout": 0.25, "opt": "sgd", "layers": 5, "batch": 32, "decay": 0.5})
    (tt,) = TextCodec(number_features="magnitude").trial_texts(problem, [trial])
    assert [u for _, _, u in tt.numbers][0] == text_lib.magnitude_position(0.01)


def test_pure_text_codec_writes_no_positions():
    problem = _spans_problem()
    trial = vz.Trial({"lr": 0.01, "dropout": 0.25, "opt": "sgd", "layers": 5, "batch": 32, "decay": 0.5})
    codec = TextCodec(number_features="none")
    (tt,) = codec.trial_texts(problem, [trial])
    assert tt.numbers == () and tt.text == codec.serialize(problem, trial)
    with pytest.raises(ValueError, match="number_features"):
        TextCodec(number_features="digits")


def test_conditional_spans_point_at_the_active_values():
    space = vz.SearchSpace()
    model = space.root.add_categorical_param("model", ["linear", "dnn"])
    model.select_values(["dnn"]).add_float_param("lr", 1e-4, 1e-1, scale_type=vz.ScaleType.LOG)
    model.select_values(["dnn"]).add_int_param("units", 8, 512)
    model.select_values(["linear"]).add_float_param("l2", 0.0, 1.0)
    problem = _problem(space)
    trials = [vz.Trial({"model": "dnn", "lr": 0.001, "units": 64}), vz.Trial({"model": "linear", "l2": 0.5})]
    dnn, linear = TextCodec().trial_texts(problem, trials)
    assert [dnn.text[a:b] for a, b, _ in dnn.numbers] == ["0.001", "64"]
    assert [linear.text[a:b] for a, b, _ in linear.numbers] == ["0.5"]
    assert linear.numbers[0][2] == pytest.approx(0.5)


def test_long_metadata_values_are_capped():
    problem = _problem(metadata={"description": "x" * 500, "dataset": "kc1"})
    trial = vz.Trial({"lr": 0.01, "optimizer": "adam", "layers": 2})
    text = TextCodec().serialize(problem, trial)
    assert '"' + "x" * 32 + '"' in text and "x" * 33 not in text and 'dataset:"kc1"' in text
    assert "x" * 100 in TextCodec(max_metadata_value_chars=100).serialize(problem, trial)
