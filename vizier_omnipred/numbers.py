"""Objective values <-> number tokens, OmniPred's digit-by-digit layout.

A value is written as `<sign><d_1>...<d_D><E{e}>` and means
`sign x (d_1...d_D as an integer) x 10**e`. With the defaults (4 digits, exponents
-10..10): 123.4 -> `<+><1><2><3><4><E-1>`, -5 -> `<-><5><0><0><0><E-3>`.

Why this layout (the OmniPred paper found it the best of the layouts it tried):

* Every sequence has the same length and every position draws from its own small,
  fixed set of tokens. The decoder therefore runs a fixed number of steps, a batch of
  samples never needs padding, and constrained decoding is a per-position mask
  (`allowed_next`) instead of a parser.
* The mantissa is written most significant digit first, so the first digits sampled
  decide the value coarsely and later ones refine it; the cross-entropy on an early digit
  is a loss on a large error.
* The exponent token carries the scale, so one model can read y values of studies whose
  objectives live on very different scales.

Encoding is lossy on purpose (D significant digits) and bounded (a finite exponent
range). Values outside the range are clipped, never wrapped, and clipping warns
(`OutOfRangeWarning`): a clipped training target silently teaches the model a wrong
value, so the person choosing the range must hear about it.

Trials without a usable value have their own sequences of the same length:
all-`<INFEASIBLE>` (the model may predict infeasibility, so it is sampleable) and
all-`<MISSING>` (for data files only; the grammar never allows it, so it is never
sampled).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

__all__ = [
    "INFEASIBLE_TOKEN",
    "MISSING_TOKEN",
    "FloatTokenizer",
    "OutOfRangeWarning",
]

INFEASIBLE_TOKEN = "<INFEASIBLE>"
MISSING_TOKEN = "<MISSING>"
_SIGN_TOKENS = ("<+>", "<->")
_DIGIT_TOKENS = tuple(f"<{d}>" for d in range(10))

# Mantissas are held exactly in float64 (2**53 ~ 9.007e15) and int64: 15 digits is the most
# for which decoding stays exact. Real use is 3-6 digits.
_MAX_NUM_DIGITS = 15
# Decoding divides by 10**-e; 10**308 is the largest finite power of ten in float64.
_MAX_ABS_POWER = 308

_CONFIG_KEYS = ("num_digits", "min_exponent", "max_exponent")


class OutOfRangeWarning(UserWarning):
    """A value was clipped to the range a `FloatTokenizer` can represent."""


def _check_int(name: str, value: Any) -> None:
    # bool is an int subclass, and a float such as 4.0 would later format as '<E4.0>'.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"FloatTokenizer.{name} must be an int, got {value!r} ({type(value).__name__})"
        )


@attrs.frozen
class FloatTokenizer:
    """Fixed-length sign / mantissa / exponent tokens for one float (OmniPred's DigitByDigit).

    Rounding: encode rounds the *exact* binary value of the float to the nearest
    representable number, ties to even (so 0.12345, which as a float is slightly above
    0.12345, becomes 1235e-4, and 9999.5 carries to 1000e1). The mantissa is normalised
    to a non-zero leading digit, which keeps the most precision, except below
    `10**(min_exponent + num_digits - 1)` where the exponent is pinned at `min_exponent`
    and the mantissa gets leading zeros (like IEEE subnormals), trading precision for
    range instead of jumping to zero.

    Warnings: each clipped value warns with its own message (value, clip target, the
    setting that would fit it), so Python's once-per-location filter does not collapse
    them; code that encodes a whole corpus should catch `OutOfRangeWarning` and count or
    summarise instead of printing every one.

    Zero: the one canonical zero is `<+>` with all-`<0>` digits and the exponent closest
    to 0 in range (`<E0>` with the defaults); -0.0 encodes as that same zero (the sign of
    zero means nothing for an objective value). `decode` accepts any sequence the grammar
    allows, canonical or not (a sampled `<-><0><0><0><0><E3>` is -0.0).
    """

    num_digits: int = 4
    min_exponent: int = -10
    max_exponent: int = 10

    # Lookup tables, derived from the three fields above; not part of equality or repr.
    _tokens: tuple[str, ...] = attrs.field(init=False, repr=False, eq=False)
    _exp_tokens: tuple[str, ...] = attrs.field(init=False, repr=False, eq=False)
    _digit_value: dict[str, int] = attrs.field(init=False, repr=False, eq=False)
    _exp_value: dict[str, int] = attrs.field(init=False, repr=False, eq=False)
    _zero: tuple[str, ...] = attrs.field(init=False, repr=False, eq=False)
    _pow10: tuple[float, ...] = attrs.field(init=False, repr=False, eq=False)
    _fmt: str = attrs.field(init=False, repr=False, eq=False)
    _max_value: float = attrs.field(init=False, repr=False, eq=False)
    _min_positive: float = attrs.field(init=False, repr=False, eq=False)
    _first_allowed: tuple[str, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        for name in _CONFIG_KEYS:
            _check_int(name, getattr(self, name))
        d, lo, hi = self.num_digits, self.min_exponent, self.max_exponent
        if not 1 <= d <= _MAX_NUM_DIGITS:
            raise ValueError(
                f"FloatTokenizer.num_digits must be in [1, {_MAX_NUM_DIGITS}] (mantissas must "
                f"be exact in float64), got {d}"
            )
        if lo > hi:
            raise ValueError(
                f"FloatTokenizer.min_exponent ({lo}) must be <= max_exponent ({hi})"
            )
        if lo < -_MAX_ABS_POWER or hi > _MAX_ABS_POWER:
            raise ValueError(
                f"FloatTokenizer exponents must lie in [-{_MAX_ABS_POWER}, {_MAX_ABS_POWER}] "
                f"(float64 range), got [{lo}, {hi}]"
            )
        pow10 = tuple(float(f"1e{k}") for k in range(max(abs(lo), abs(hi)) + 1))
        max_value = self._compose(False, 10**d - 1, hi, pow10)
        if not math.isfinite(max_value):
            raise ValueError(
                f"FloatTokenizer(num_digits={d}, max_exponent={hi}) can write "
                f"{'9' * d}e{hi}, which overflows float64; lower max_exponent or num_digits"
            )
        exp_tokens = tuple(f"<E{e}>" for e in range(lo, hi + 1))
        tokens = _SIGN_TOKENS + _DIGIT_TOKENS + exp_tokens + (INFEASIBLE_TOKEN, MISSING_TOKEN)
        zero_exp = min(max(0, lo), hi)
        s = object.__setattr__
        s(self, "_tokens", tokens)
        s(self, "_exp_tokens", exp_tokens)
        s(self, "_digit_value", {t: i for i, t in enumerate(_DIGIT_TOKENS)})
        s(self, "_exp_value", {t: lo + i for i, t in enumerate(exp_tokens)})
        s(self, "_zero", ("<+>",) + ("<0>",) * d + (f"<E{zero_exp}>",))
        s(self, "_pow10", pow10)
        s(self, "_fmt", f".{d - 1}e")
        s(self, "_max_value", max_value)
        s(self, "_min_positive", self._compose(False, 1, lo, pow10))
        s(self, "_first_allowed", _SIGN_TOKENS + (INFEASIBLE_TOKEN,))

    # ----------------------------------------------------------------------------- shape

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens, in the fixed order that token indices (and vocabularies) rely on."""
        return self._tokens

    def token_exponent(self, token: str) -> int | None:
        """The power of ten an exponent token stands for; None for any other token."""
        return self._exp_value.get(token)

    @property
    def length(self) -> int:
        """Tokens per value: sign, `num_digits` digits, exponent."""
        return self.num_digits + 2

    @property
    def max_value(self) -> float:
        """Largest magnitude that can be written: `(10**num_digits - 1) * 10**max_exponent`."""
        return self._max_value

    @property
    def min_positive_value(self) -> float:
        """Smallest non-zero magnitude that can be written: `10**min_exponent` (mantissa 0...01)."""
        return self._min_positive

    # ---------------------------------------------------------------------------- encode

    def encode(self, y: float) -> tuple[str, ...]:
        """Tokens of the representable number nearest to `y` (see the class docstring).

        Raises ValueError for nan and +-inf: whether such a trial is excluded or marked
        infeasible is the caller's decision, not the number format's. Warns with
        `OutOfRangeWarning` and clips when |y| is out of range.
        """
        if isinstance(y, (str, bytes)):
            raise TypeError(f"FloatTokenizer.encode needs a number, got {y!r}")
        try:
            yf = float(y)
        except OverflowError:  # a Python int beyond float64: finite, and far above range.
            n = len(str(abs(y)))
            shown = f"{'-' if y < 0 else ''}~1e{n - 1} (an int)"
            return self._clip_high(y < 0, shown, n - self.num_digits)
        if not math.isfinite(yf):
            raise ValueError(
                f"FloatTokenizer.encode got {yf!r}: only finite values have number tokens; "
                "drop the trial or use encode_infeasible()/encode_missing()"
            )
        if yf == 0.0:
            return self._zero
        neg = yf < 0.0
        a = -yf if neg else yf
        # CPython's float formatting rounds the exact binary value, ties to even, and
        # handles the carry (9999.5 -> '1.000e+04'): the rounding this format needs, in C.
        mant, _, exp_str = format(a, self._fmt).partition("e")
        e = int(exp_str) - (self.num_digits - 1)
        if e > self.max_exponent:
            return self._clip_high(neg, yf, e)
        if e < self.min_exponent:
            return self._encode_subnormal(neg, a, yf)
        digit_tokens = _DIGIT_TOKENS
        return (
            ("<->" if neg else "<+>",)
            + tuple(digit_tokens[ord(c) - 48] for c in mant if c != ".")
            + (self._exp_tokens[e - self.min_exponent],)
        )

    def _encode_subnormal(self, neg: bool, a: float, y: float) -> tuple[str, ...]:
        # Round a / 10**min_exponent to an integer exactly: a float is p / q with q a power
        # of two, so integer arithmetic gives the exact quotient and remainder.
        p, q = a.as_integer_ratio()
        lo = self.min_exponent
        num, den = (p * 10**-lo, q) if lo < 0 else (p, q * 10**lo)
        m, r = divmod(num, den)
        if 2 * r > den or (2 * r == den and m % 2 == 1):
            m += 1
        if m == 0:
            target = -self._min_positive if neg else self._min_positive
            warnings.warn(
                f"FloatTokenizer: {y!r} is below half the smallest representable magnitude "
                f"{self._min_positive!r} (min_exponent={lo}); clipped to {target!r}, not "
                f"rounded to zero. To represent it, use min_exponent <= "
                f"{math.floor(math.log10(a))} (or rescale the objective).",
                OutOfRangeWarning,
                stacklevel=3,
            )
            m = 1
        digits = str(m).zfill(self.num_digits)
        return (
            ("<->" if neg else "<+>",)
            + tuple(_DIGIT_TOKENS[ord(c) - 48] for c in digits)
            + (self._exp_tokens[0],)
        )

    def _clip_high(self, neg: bool, y: float | str, needed_exponent: int) -> tuple[str, ...]:
        target = -self._max_value if neg else self._max_value
        warnings.warn(
            f"FloatTokenizer: {y} is beyond the largest representable magnitude "
            f"{self._max_value!r} (num_digits={self.num_digits}, "
            f"max_exponent={self.max_exponent}); clipped to {target!r}. To represent it, use "
            f"max_exponent >= {needed_exponent} (or rescale the objective).",
            OutOfRangeWarning,
            stacklevel=3,
        )
        return (
            ("<->" if neg else "<+>",)
            + (_DIGIT_TOKENS[9],) * self.num_digits
            + (self._exp_tokens[-1],)
        )

    def encode_infeasible(self) -> tuple[str, ...]:
        """Target for an infeasible trial; same length as a number so batches stay uniform."""
        return (INFEASIBLE_TOKEN,) * self.length

    def encode_missing(self) -> tuple[str, ...]:
        """Placeholder for a trial whose metric is missing (data files only, never sampled)."""
        return (MISSING_TOKEN,) * self.length

    # ---------------------------------------------------------------------------- decode

    @staticmethod
    def _compose(neg: bool, m: int, e: int, pow10: Sequence[float]) -> float:
        # Multiplying or dividing an exact mantissa by an exact power of ten (10**k is exact
        # in float64 up to k = 22) is one correctly rounded operation, so for |e| <= 22 the
        # result is the float nearest to m * 10**e. decode_indices does the same operations
        # in numpy, so both decoders agree bit for bit.
        v = m * pow10[e] if e >= 0 else m / pow10[-e]
        return -v if neg else v

    def decode(self, tokens: Sequence[str]) -> float:
        """The value of a token sequence; nan for an all-infeasible or all-missing sequence.

        Raises ValueError for anything the grammar does not produce (wrong length, a token
        in the wrong position, infeasible/missing mixed with other tokens): a malformed
        sequence here is a bug upstream and must not turn into a plausible number.
        """
        toks = tuple(tokens)
        if len(toks) != self.length:
            raise ValueError(
                f"FloatTokenizer.decode needs {self.length} tokens, got {len(toks)}: {toks!r}"
            )
        head = toks[0]
        if head == INFEASIBLE_TOKEN or head == MISSING_TOKEN:
            if all(t == head for t in toks):
                return math.nan
            raise ValueError(f"malformed number tokens (mixed {head} and others): {toks!r}")
        if head == "<+>":
            neg = False
        elif head == "<->":
            neg = True
        else:
            raise ValueError(f"malformed number tokens (position 0 is not a sign): {toks!r}")
        m = 0
        digit_value = self._digit_value
        for t in toks[1:-1]:
            d = digit_value.get(t)
            if d is None:
                raise ValueError(f"malformed number tokens ({t!r} is not a digit): {toks!r}")
            m = 10 * m + d
        e = self._exp_value.get(toks[-1])
        if e is None:
            raise ValueError(
                f"malformed number tokens ({toks[-1]!r} is not an exponent in "
                f"[{self.min_exponent}, {self.max_exponent}]): {toks!r}"
            )
        return self._compose(neg, m, e, self._pow10)

    def decode_indices(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised `decode` of sampled token indices (indices into `tokens`).

        `idx` has shape `(..., length)`; returns `(values, infeasible)`, float64 and bool,
        of shape `(...)`. Sampling produces thousands of sequences per suggestion, so this
        never loops over rows in Python.

        Rows are not rejected one by one (a batch must not fail because of one sample):
        an all-`<INFEASIBLE>` row gives (nan, True); any other row `decode` would reject,
        including all-`<MISSING>` rows, gives (nan, False). Constrained decoding never
        produces those. An index outside `[0, len(tokens))` raises ValueError, since it
        means ids of another vocabulary (e.g. model ids not yet offset) were passed.
        """
        idx = np.asarray(idx)
        if idx.ndim == 0 or idx.shape[-1] != self.length:
            raise ValueError(
                f"decode_indices needs shape (..., {self.length}), got {idx.shape}"
            )
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"decode_indices needs integer indices, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        n_tokens = len(self._tokens)
        if idx.size and (idx.min() < 0 or idx.max() >= n_tokens):
            raise ValueError(
                f"decode_indices: indices must lie in [0, {n_tokens}) (indices into "
                f"FloatTokenizer.tokens), got range [{idx.min()}, {idx.max()}]"
            )
        first_digit = len(_SIGN_TOKENS)
        first_exp = first_digit + 10
        infeasible_index = first_exp + len(self._exp_tokens)

        sign = idx[..., 0]
        digits = idx[..., 1:-1] - first_digit
        exp_i = idx[..., -1] - first_exp
        valid = (
            (sign < first_digit)
            & np.all((digits >= 0) & (digits < 10), axis=-1)
            & (exp_i >= 0)
            & (exp_i < len(self._exp_tokens))
        )
        infeasible = np.all(idx == infeasible_index, axis=-1)

        place = 10 ** np.arange(self.num_digits - 1, -1, -1, dtype=np.int64)
        m = (np.clip(digits, 0, 9) * place).sum(axis=-1).astype(np.float64)
        e = np.clip(exp_i, 0, len(self._exp_tokens) - 1) + self.min_exponent
        pow10 = np.asarray(self._pow10, dtype=np.float64)
        with np.errstate(over="ignore"):
            v = np.where(e >= 0, m * pow10[np.maximum(e, 0)], m / pow10[np.maximum(-e, 0)])
        v = np.where(sign == 1, -v, v)
        values = np.where(valid, v, np.nan)
        return values, infeasible

    # --------------------------------------------------------------------------- grammar

    def allowed_next(self, prefix: Sequence[str]) -> tuple[str, ...]:
        """Tokens the grammar allows after `prefix`, for constrained decoding.

        Position 0: a sign or `<INFEASIBLE>`; after `<INFEASIBLE>` only `<INFEASIBLE>`;
        after a sign, digits, then one exponent. `<MISSING>` is never allowed: a model
        must not learn to answer "no data". Raises ValueError for a prefix that is already
        complete or that the grammar itself would not have produced.
        """
        prefix = tuple(prefix)
        n = len(prefix)
        if n >= self.length:
            raise ValueError(
                f"allowed_next: prefix of {n} tokens, but a number has only {self.length}: "
                f"{prefix!r}"
            )
        if n == 0:
            return self._first_allowed
        head = prefix[0]
        if head == INFEASIBLE_TOKEN:
            if any(t != INFEASIBLE_TOKEN for t in prefix):
                raise ValueError(f"allowed_next: malformed prefix {prefix!r}")
            return (INFEASIBLE_TOKEN,)
        if head not in _SIGN_TOKENS or any(t not in self._digit_value for t in prefix[1:]):
            raise ValueError(f"allowed_next: malformed prefix {prefix!r}")
        if n <= self.num_digits:
            return _DIGIT_TOKENS
        return self._exp_tokens

    # ---------------------------------------------------------------------------- config

    def to_config(self) -> dict[str, int]:
        """JSON-ready settings; checkpoints store them so decoding matches training."""
        return {k: getattr(self, k) for k in _CONFIG_KEYS}

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> FloatTokenizer:
        """Inverse of `to_config`; strict, since a silently defaulted setting would make a
        checkpoint decode its own outputs wrongly."""
        keys = set(d)
        missing = [k for k in _CONFIG_KEYS if k not in keys]
        unknown = sorted(keys - set(_CONFIG_KEYS))
        if missing or unknown:
            raise ValueError(
                f"FloatTokenizer config must have exactly the keys {list(_CONFIG_KEYS)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return cls(**{k: d[k] for k in _CONFIG_KEYS})
