"""Tests for vizier_omnipred.numbers (FloatTokenizer).

Rounding is checked against exact rational arithmetic (fractions.Fraction), not against
floats, so a test cannot pass by sharing the implementation's float error.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from fractions import Fraction

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vizier_omnipred.numbers import (
    INFEASIBLE_TOKEN,
    MISSING_TOKEN,
    FloatTokenizer,
    OutOfRangeWarning,
)

DEFAULT = FloatTokenizer()
CONFIGS = [
    DEFAULT,
    FloatTokenizer(num_digits=3, min_exponent=-5, max_exponent=5),
    FloatTokenizer(num_digits=1, min_exponent=-2, max_exponent=3),
    FloatTokenizer(num_digits=6, min_exponent=-20, max_exponent=15),
    FloatTokenizer(num_digits=2, min_exponent=3, max_exponent=7),  # no <E0>: zero uses <E3>
]
CONFIG_IDS = [f"d{t.num_digits}_e{t.min_exponent}_{t.max_exponent}" for t in CONFIGS]
DIGITS = tuple(f"<{d}>" for d in range(10))

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ----------------------------------------------------------------------------- helpers


def parse(tok: FloatTokenizer, tokens: tuple[str, ...]) -> tuple[int, int, int]:
    """(sign, mantissa, exponent) of a number sequence, independently of decode()."""
    assert len(tokens) == tok.length
    assert tokens[0] in ("<+>", "<->")
    sign = -1 if tokens[0] == "<->" else 1
    mantissa = int("".join(DIGITS.index(t).__str__() for t in tokens[1:-1]))
    assert tokens[-1].startswith("<E") and tokens[-1].endswith(">")
    return sign, mantissa, int(tokens[-1][2:-1])


def encode_recording(tok: FloatTokenizer, y) -> tuple[tuple[str, ...], list]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tokens = tok.encode(y)
    return tokens, [w for w in rec if issubclass(w.category, OutOfRangeWarning)]


def assert_grammatical(tok: FloatTokenizer, tokens: tuple[str, ...]) -> None:
    for i, t in enumerate(tokens):
        assert t in tok.allowed_next(tokens[:i]), (i, tokens)


def check_encode(tok: FloatTokenizer, y: float) -> None:
    """The full contract of encode() for one finite y."""
    tokens, warned = encode_recording(tok, y)
    assert_grammatical(tok, tokens)
    sign, m, e = parse(tok, tokens)
    d, lo, hi = tok.num_digits, tok.min_exponent, tok.max_exponent
    assert lo <= e <= hi and 0 <= m <= 10**d - 1

    fy = Fraction(y)
    if fy == 0:
        assert tokens == DEFAULT_ZERO(tok) and not warned
        assert tok.decode(tokens) == 0.0
        return
    assert sign == (1 if fy > 0 else -1), "sign must survive encoding, clipped or not"
    low_clip = abs(fy) <= Fraction(1, 2) * Fraction(10) ** lo  # rounds to 0 units at min_exponent
    high_clip = abs(fy) >= (10**d - Fraction(1, 2)) * Fraction(10) ** hi  # rounds beyond max
    if low_clip:
        assert len(warned) == 1 and (m, e) == (1, lo), (y, tokens)
    elif high_clip:
        assert len(warned) == 1 and (m, e) == (10**d - 1, hi), (y, tokens)
        assert "max_exponent" in str(warned[0].message)
    else:
        assert not warned, (y, tokens, [str(w.message) for w in warned])
        exact = sign * m * Fraction(10) ** e
        unit = Fraction(10) ** e
        assert abs(exact - fy) <= unit / 2, (y, tokens)
        # Canonical: leading digit non-zero unless pinned at min_exponent (subnormal).
        assert e == lo or m >= 10 ** (d - 1), (y, tokens)
        # decode is the float nearest the exact value, and so within half a unit of y.
        value = tok.decode(tokens)
        assert value == float(exact)
        assert abs(value - y) <= float(unit) / 2 * (1 + 1e-12)


def DEFAULT_ZERO(tok: FloatTokenizer) -> tuple[str, ...]:
    zero_exp = min(max(0, tok.min_exponent), tok.max_exponent)
    return ("<+>",) + ("<0>",) * tok.num_digits + (f"<E{zero_exp}>",)


def spread_floats(tok: FloatTokenizer) -> st.SearchStrategy[float]:
    """Finite floats across (and a little beyond) every exponent of the range."""
    scaled = st.builds(
        lambda mant, k, neg: (-1.0 if neg else 1.0) * mant * 10.0**k,
        st.floats(1.0, 10.0, exclude_max=True),
        st.integers(tok.min_exponent - 3, tok.max_exponent + tok.num_digits + 2),
        st.booleans(),
    )
    # Exact binary ties (n + 1/2) * 10**e, e >= 0, near the carry and the top of the range.
    d = tok.num_digits
    ties = st.builds(
        lambda n, k, neg: (-1.0 if neg else 1.0) * float((10 * n + 5) * 10**k),
        st.sampled_from([10 ** (d - 1), 10**d - 2, 10**d - 1]),
        st.integers(max(0, tok.min_exponent + tok.num_digits - 1), max(0, tok.max_exponent) + 1),
        st.booleans(),
    ).filter(lambda v: abs(v) < 2.0**53)
    anything = st.floats(allow_nan=False, allow_infinity=False)
    return st.one_of(scaled, scaled, ties, anything)


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    "y, expected",
    [
        (123.4, ("<+>", "<1>", "<2>", "<3>", "<4>", "<E-1>")),
        (0.1234, ("<+>", "<1>", "<2>", "<3>", "<4>", "<E-4>")),
        (0, ("<+>", "<0>", "<0>", "<0>", "<0>", "<E0>")),
        (0.0, ("<+>", "<0>", "<0>", "<0>", "<0>", "<E0>")),
        (-0.0, ("<+>", "<0>", "<0>", "<0>", "<0>", "<E0>")),
        (-5, ("<->", "<5>", "<0>", "<0>", "<0>", "<E-3>")),
        (9999.5, ("<+>", "<1>", "<0>", "<0>", "<0>", "<E1>")),  # carry
        (9998.5, ("<+>", "<9>", "<9>", "<9>", "<8>", "<E0>")),  # exact tie -> even
        (0.12345, ("<+>", "<1>", "<2>", "<3>", "<5>", "<E-4>")),  # float is above the tie
        (1.234e-8, ("<+>", "<0>", "<1>", "<2>", "<3>", "<E-10>")),  # subnormal
        (5.5e-11, ("<+>", "<0>", "<0>", "<0>", "<1>", "<E-10>")),
        (9999e10, ("<+>", "<9>", "<9>", "<9>", "<9>", "<E10>")),
        (-1e-10, ("<->", "<0>", "<0>", "<0>", "<1>", "<E-10>")),
        (np.float32(2.0), ("<+>", "<2>", "<0>", "<0>", "<0>", "<E-3>")),
        (np.int64(-7), ("<->", "<7>", "<0>", "<0>", "<0>", "<E-3>")),
    ],
)
def test_examples(y, expected):
    tokens, warned = encode_recording(DEFAULT, y)
    assert tokens == expected
    assert not warned


def test_decode_examples():
    assert DEFAULT.decode(("<+>", "<1>", "<2>", "<3>", "<4>", "<E-1>")) == 123.4
    assert DEFAULT.decode(("<->", "<5>", "<0>", "<0>", "<0>", "<E-3>")) == -5.0
    # Non-canonical but grammatical sequences (a model may sample them) still decode.
    assert DEFAULT.decode(["<+>", "<0>", "<1>", "<2>", "<3>", "<E0>"]) == 123.0
    assert DEFAULT.decode(("<->", "<0>", "<0>", "<0>", "<0>", "<E3>")) == 0.0
    assert math.isnan(DEFAULT.decode(DEFAULT.encode_infeasible()))
    assert math.isnan(DEFAULT.decode(DEFAULT.encode_missing()))


def test_special_sequences():
    assert DEFAULT.encode_infeasible() == (INFEASIBLE_TOKEN,) * 6
    assert DEFAULT.encode_missing() == (MISSING_TOKEN,) * 6


def test_tokens_and_shape():
    t = DEFAULT.tokens
    assert t[:12] == ("<+>", "<->") + DIGITS
    assert t[12] == "<E-10>" and t[22] == "<E0>" and t[32] == "<E10>"
    assert t[33:] == (INFEASIBLE_TOKEN, MISSING_TOKEN)
    assert len(t) == 35 == len(set(t))
    assert DEFAULT.length == 6
    assert FloatTokenizer(num_digits=3, min_exponent=-5, max_exponent=5).tokens[12:] == tuple(
        f"<E{e}>" for e in range(-5, 6)
    ) + (INFEASIBLE_TOKEN, MISSING_TOKEN)
    assert DEFAULT.max_value == 9999e10
    assert DEFAULT.min_positive_value == 1e-10


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("tok", CONFIGS, ids=CONFIG_IDS)
def test_encode_property(tok):
    @PROPERTY_SETTINGS
    @given(spread_floats(tok))
    def run(y):
        check_encode(tok, y)

    run()


@pytest.mark.parametrize("tok", CONFIGS, ids=CONFIG_IDS)
def test_range_ends(tok):
    d, lo, hi = tok.num_digits, tok.min_exponent, tok.max_exponent
    for s in (1.0, -1.0):
        for y in (tok.max_value, tok.min_positive_value, tok.min_positive_value * 10 ** (d - 1)):
            check_encode(tok, s * y)
            tokens, warned = encode_recording(tok, s * y)
            assert not warned
            value = tok.decode(tokens)
            assert math.copysign(1.0, value) == s
            assert math.floor(math.log10(abs(value))) == math.floor(math.log10(y) + 1e-9)
        # Just outside both ends: clipped, sign kept, warned.
        with pytest.warns(OutOfRangeWarning, match="max_exponent"):
            big = tok.decode(tok.encode(s * tok.max_value * 10))
        assert big == s * tok.max_value
        with pytest.warns(OutOfRangeWarning, match="min_exponent"):
            small = tok.decode(tok.encode(s * tok.min_positive_value / 10))
        assert small == s * tok.min_positive_value
        check_encode(tok, s * tok.max_value * 10)
        check_encode(tok, s * tok.min_positive_value / 10)
    assert tok.max_value == float((10**d - 1) * Fraction(10) ** hi)
    assert tok.min_positive_value == float(Fraction(10) ** lo)


def test_clipping_warns_and_never_wraps():
    for y, target in [
        (1e300, DEFAULT.max_value),
        (-1e300, -DEFAULT.max_value),
        (2.0**1023 * 1.9, DEFAULT.max_value),
        (5e-324, DEFAULT.min_positive_value),
        (-3e-15, -DEFAULT.min_positive_value),
        (10**400, DEFAULT.max_value),  # int beyond float64
        (-(10**400), -DEFAULT.max_value),
    ]:
        with pytest.warns(OutOfRangeWarning) as rec:
            value = DEFAULT.decode(DEFAULT.encode(y))
        assert value == target
        msg = str(rec[0].message)
        assert repr(target) in msg and "clipped" in msg
        assert ("max_exponent" if abs(target) > 1 else "min_exponent") in msg
    # Half a unit above the top rounds into range without a warning; the tie does not.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DEFAULT.decode(DEFAULT.encode(9999.49e10)) == DEFAULT.max_value
        assert DEFAULT.decode(DEFAULT.encode(0.51e-10)) == DEFAULT.min_positive_value
    with pytest.warns(OutOfRangeWarning):
        DEFAULT.encode(9999.5e10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=2, max_size=30))
def test_encoding_is_monotone(ys):
    """Rounding and clipping never reorder values: no wrap-around anywhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        decoded = [DEFAULT.decode(DEFAULT.encode(y)) for y in sorted(ys)]
    assert decoded == sorted(decoded)


@pytest.mark.parametrize("y", [math.nan, math.inf, -math.inf, np.float64("nan"), np.inf])
def test_non_finite_raises(y):
    with pytest.raises(ValueError, match="finite"):
        DEFAULT.encode(y)


def test_non_number_raises():
    with pytest.raises(TypeError):
        DEFAULT.encode("1.5")


@pytest.mark.parametrize(
    "tokens",
    [
        ("<+>", "<1>", "<2>", "<3>", "<E0>"),  # too short
        ("<+>", "<1>", "<2>", "<3>", "<4>", "<E0>", "<E0>"),  # too long
        ("<1>", "<1>", "<2>", "<3>", "<4>", "<E0>"),  # no sign
        ("<+>", "<1>", "<->", "<3>", "<4>", "<E0>"),  # sign among digits
        ("<+>", "<1>", "<2>", "<3>", "<4>", "<5>"),  # no exponent
        ("<+>", "<1>", "<2>", "<3>", "<4>", "<E11>"),  # exponent out of range
        ("<+>", "<1>", "<2>", "<3>", "<4>", INFEASIBLE_TOKEN),
        (INFEASIBLE_TOKEN,) * 5 + ("<E0>",),
        (MISSING_TOKEN,) * 5 + (INFEASIBLE_TOKEN,),
    ],
)
def test_decode_malformed_raises(tokens):
    with pytest.raises(ValueError):
        DEFAULT.decode(tokens)


# -------------------------------------------------------------------------- grammar


def test_allowed_next_grammar():
    tok = DEFAULT
    assert tok.allowed_next(()) == ("<+>", "<->", INFEASIBLE_TOKEN)
    for sign in ("<+>", "<->"):
        prefix = (sign,)
        for _ in range(tok.num_digits):
            assert tok.allowed_next(prefix) == DIGITS
            prefix += ("<7>",)
        assert tok.allowed_next(prefix) == tuple(f"<E{e}>" for e in range(-10, 11))
        with pytest.raises(ValueError):
            tok.allowed_next(prefix + ("<E0>",))
    prefix = (INFEASIBLE_TOKEN,)
    for _ in range(tok.length - 1):
        assert tok.allowed_next(prefix) == (INFEASIBLE_TOKEN,)
        prefix += (INFEASIBLE_TOKEN,)
    with pytest.raises(ValueError):
        tok.allowed_next(prefix)


@pytest.mark.parametrize("tok", CONFIGS, ids=CONFIG_IDS)
def test_missing_never_allowed_and_walks_decode(tok):
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq: tuple[str, ...] = ()
        while len(seq) < tok.length:
            allowed = tok.allowed_next(seq)
            assert MISSING_TOKEN not in allowed
            assert set(allowed) <= set(tok.tokens)
            seq += (allowed[rng.integers(len(allowed))],)
        value = tok.decode(seq)
        assert math.isnan(value) == (seq[0] == INFEASIBLE_TOKEN)


@pytest.mark.parametrize(
    "prefix",
    [
        (MISSING_TOKEN,),
        ("<3>",),
        ("<+>", "<E0>"),
        (INFEASIBLE_TOKEN, "<1>"),
        ("<+>", "<1>", INFEASIBLE_TOKEN),
    ],
)
def test_allowed_next_rejects_malformed_prefix(prefix):
    with pytest.raises(ValueError):
        DEFAULT.allowed_next(prefix)


# ------------------------------------------------------------------- decode_indices


def random_rows(tok: FloatTokenizer, rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Grammatical, infeasible, missing and arbitrary (mostly malformed) index rows."""
    n_tok, n_exp, L = len(tok.tokens), len(tok.tokens) - 14, tok.length
    rows = np.empty(shape + (L,), dtype=np.int64)
    rows[..., 0] = rng.integers(0, 2, shape)
    rows[..., 1:-1] = rng.integers(2, 12, shape + (tok.num_digits,))
    rows[..., -1] = rng.integers(12, 12 + n_exp, shape)
    kind = rng.integers(0, 6, shape)
    rows[kind == 1] = n_tok - 2  # infeasible
    rows[kind == 2] = n_tok - 1  # missing
    arbitrary = rng.integers(0, n_tok, shape + (L,))
    rows[kind == 3] = arbitrary[kind == 3]
    one_off = rows.copy()  # a grammatical row with one token replaced at random
    pos = rng.integers(0, L, shape)
    np.put_along_axis(one_off, pos[..., None], rng.integers(0, n_tok, shape)[..., None], axis=-1)
    rows[kind == 4] = one_off[kind == 4]
    return rows


@pytest.mark.parametrize("tok", CONFIGS, ids=CONFIG_IDS)
def test_decode_indices_matches_decode(tok):
    rng = np.random.default_rng(1)
    idx = random_rows(tok, rng, (3, 80))
    values, infeasible = tok.decode_indices(idx)
    assert values.shape == infeasible.shape == (3, 80)
    assert values.dtype == np.float64 and infeasible.dtype == bool
    seen = set()
    for i in np.ndindex(3, 80):
        tokens = [tok.tokens[j] for j in idx[i]]
        is_inf = all(t == INFEASIBLE_TOKEN for t in tokens)
        assert infeasible[i] == is_inf
        try:
            expected = tok.decode(tokens)
        except ValueError:
            assert math.isnan(values[i]) and not infeasible[i]
            seen.add("malformed")
            continue
        if math.isnan(expected):
            assert math.isnan(values[i])
            seen.add("infeasible" if is_inf else "missing")
        else:
            # Same float operations as decode: equal bit for bit, signed zeros included.
            assert values[i] == expected
            assert math.copysign(1, values[i]) == math.copysign(1, expected)
            seen.add("number")
    assert seen == {"malformed", "infeasible", "missing", "number"}


def test_decode_indices_shapes_and_errors():
    tok = DEFAULT
    index = {t: i for i, t in enumerate(tok.tokens)}
    row = np.array([index[t] for t in tok.encode(-123.4)])
    values, infeasible = tok.decode_indices(row)
    assert values.shape == () and float(values) == -123.4 and not infeasible
    values, infeasible = tok.decode_indices(np.zeros((0, 6), dtype=np.int32))
    assert values.shape == infeasible.shape == (0,)
    values, _ = tok.decode_indices([row.tolist(), row.tolist()])  # lists are fine
    assert values.tolist() == [-123.4, -123.4]
    with pytest.raises(ValueError, match="shape"):
        tok.decode_indices(np.zeros((2, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="indices"):
        tok.decode_indices(np.full((2, 6), len(tok.tokens)))
    with pytest.raises(ValueError, match="indices"):
        tok.decode_indices(np.full((2, 6), -1))
    with pytest.raises(ValueError, match="integer"):
        tok.decode_indices(np.zeros((2, 6)))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("tok", CONFIGS, ids=CONFIG_IDS)
def test_config_round_trip(tok):
    config = tok.to_config()
    restored = FloatTokenizer.from_config(json.loads(json.dumps(config)))
    assert restored == tok and hash(restored) == hash(tok)
    assert restored.tokens == tok.tokens
    y = tok.max_value / 3
    assert pickle.loads(pickle.dumps(tok)).encode(y) == tok.encode(y)
    assert attrs.evolve(tok, num_digits=tok.num_digits + 1).length == tok.length + 1


def test_from_config_is_strict():
    with pytest.raises(ValueError, match="missing"):
        FloatTokenizer.from_config({"num_digits": 4, "min_exponent": -10})
    with pytest.raises(ValueError, match="unknown"):
        FloatTokenizer.from_config({**DEFAULT.to_config(), "base": 10})


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(num_digits=0), ValueError),
        (dict(num_digits=16), ValueError),
        (dict(min_exponent=3, max_exponent=2), ValueError),
        (dict(min_exponent=-400), ValueError),
        (dict(max_exponent=400), ValueError),
        (dict(num_digits=4, max_exponent=306), ValueError),  # 9999e306 overflows float64
        (dict(num_digits=4.0), TypeError),
        (dict(max_exponent=True), TypeError),
        (dict(min_exponent="-10"), TypeError),
    ],
)
def test_invalid_config(kwargs, error):
    with pytest.raises(error):
        FloatTokenizer(**kwargs)


@pytest.mark.parametrize(
    "y, digits, warns",
    [
        (1500, ("<0>", "<2>"), False),  # tie 1.5 units -> even
        (2500, ("<0>", "<2>"), False),  # tie 2.5 units -> even
        (2501, ("<0>", "<3>"), False),
        (9500, ("<1>", "<0>"), False),  # tie 9.5 units -> 10, carries out of the leading zero
        (500, ("<0>", "<1>"), True),  # tie 0.5 units -> 0 -> clipped up, warned
        (501, ("<0>", "<1>"), False),
    ],
)
def test_subnormal_ties(y, digits, warns):
    # Exact binary ties at min_exponent only exist when min_exponent >= 0.
    tok = FloatTokenizer(num_digits=2, min_exponent=3, max_exponent=7)
    for s, sign in ((1, "<+>"), (-1, "<->")):
        tokens, warned = encode_recording(tok, float(s * y))
        assert tokens == (sign,) + digits + ("<E3>",)
        assert bool(warned) == warns


def test_single_exponent_config():
    tok = FloatTokenizer(num_digits=2, min_exponent=0, max_exponent=0)
    assert tok.encode(42) == ("<+>", "<4>", "<2>", "<E0>")
    assert tok.encode(4.4) == ("<+>", "<0>", "<4>", "<E0>")
    with pytest.warns(OutOfRangeWarning):
        assert tok.encode(100) == ("<+>", "<9>", "<9>", "<E0>")
