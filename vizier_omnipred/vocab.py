"""One id space for the model: input text tokens followed by the number tokens of y.

Input side: a byte-level BPE trained by this project with the `tokenizers` library on
its own trial text (never downloaded). Why BPE and not raw bytes: parameter names,
punctuation runs like `}},{` and metadata words merge into single tokens, which makes
the encoder input about 2-3x shorter than bytes (encoder cost is linear in it on CPU),
while digits are split one per token so numbers keep a regular, learnable structure
and any unicode string still encodes (byte fallback: no unknown tokens, ever).
Measured lengths are in docs/ARCHITECTURE.md.

Output side: the `FloatTokenizer` tokens are appended after the input vocabulary, so a
single `T5Config.vocab_size` covers both and the decoder can only be steered onto them by
the constrained-decoding masks (see sampling.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Sequence

import attrs
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from vizier_omnipred.numbers import FloatTokenizer
from vizier_omnipred.text import TrialText

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID = 0
EOS_ID = 1
TOKENIZER_FILE = "tokenizer.json"


def train_input_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> tokenizers.Tokenizer:
    """Trains the input BPE on trial text: digits one per token, bytes as fallback."""
    tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id(PAD_TOKEN) != PAD_ID or tok.token_to_id(EOS_TOKEN) != EOS_ID:
        raise AssertionError("special tokens must take ids 0 and 1")  # trainer contract
    return tok


@attrs.frozen
class EncodedTrial:
    """A trial's input ids and number positions (nan where a token carries no number; None:
    no numbers at all); with `study_start`, `ids[study_start:]` are its study's text, which
    the model encodes apart from the trial's `ids[:study_start]` (`TextCodec.study_text`)."""

    ids: list[int]
    values: list[float] | None = None
    study_start: int | None = None


@attrs.define(frozen=True, eq=False)
class Vocabulary:
    """Input BPE ids in [0, input_size), then one id per `FloatTokenizer` token."""

    input_tokenizer: tokenizers.Tokenizer
    float_tokenizer: FloatTokenizer

    @property
    def input_size(self) -> int:
        return self.input_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def y_offset(self) -> int:
        return self.input_size

    @property
    def size(self) -> int:
        return self.input_size + len(self.float_tokenizer.tokens)

    def encode_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, `</s>` appended (T5's encoder convention)."""
        encodings = self.input_tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [enc.ids + [EOS_ID] for enc in encodings]

    def encode_trial_texts(self, trial_texts: Sequence[TrialText]) -> list[EncodedTrial]:
        """What the model reads of each trial text (:class:`EncodedTrial`): ids as
        `encode_inputs`, and per token the position of the numeric value whose characters it
        covers (nan where none, `</s>` included).

        values is None for a text without numbers, so a pure-text codec costs nothing here.
        Digits are single tokens and a BPE token never spans two values (a value always
        ends at a digit, followed by `,` or `}`), so each token gets at most one position.
        A text whose study part is encoded apart (`TrialText.study_start`) becomes the
        trial's ids, `</s>`, then the study's ids, `</s>`: the two are tokenized apart, so
        no token straddles them.
        """
        parts = [t.text if t.study_start is None else t.text[: t.study_start - 1] for t in trial_texts]
        study_parts = [None if t.study_start is None else t.text[t.study_start:] for t in trial_texts]
        encodings = self.input_tokenizer.encode_batch(parts, add_special_tokens=False)
        # The trials of one study share its text: each distinct one is tokenized once.
        studies = list(dict.fromkeys(s for s in study_parts if s is not None))
        study_ids = dict(zip(studies, self.encode_inputs(studies))) if studies else {}
        out: list[EncodedTrial] = []
        nan = float("nan")
        for trial_text, enc, study_part in zip(trial_texts, encodings, study_parts):
            ids = enc.ids + [EOS_ID]
            study_start = None
            if study_part is not None:
                study_start = len(ids)
                ids = ids + study_ids[study_part]
            if not trial_text.numbers:
                out.append(EncodedTrial(ids, None, study_start))
                continue
            values = [nan] * len(ids)
            spans = trial_text.numbers  # in text order, all in the trial's part
            j = 0
            for k, (a, b) in enumerate(enc.offsets):
                while j < len(spans) and spans[j][1] <= a:
                    j += 1
                if j < len(spans) and a < spans[j][1] and b > spans[j][0]:
                    values[k] = spans[j][2]
            out.append(EncodedTrial(ids, values, study_start))
        return out

    def y_ids(self, y_tokens: Sequence[str]) -> list[int]:
        index = self._y_index
        return [self.y_offset + index[t] for t in y_tokens]

    @functools.cached_property
    def _y_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.float_tokenizer.tokens)}

    def allowed_y_masks(self) -> tuple[np.ndarray, np.ndarray]:
        """Grammar of y as boolean masks over the whole vocabulary.

        Returns `(first, rest)`: `first[v]` allows token v at position 0; `rest[c, p, v]`
        allows v at position p (p >= 1) when the sequence began with the c-th token allowed
        at position 0. The float grammar only branches on the first token (sign or
        `<INFEASIBLE>`), so these two tables drive both the training loss and sampling.
        """
        ft = self.float_tokenizer
        index = self._y_index
        first_tokens = ft.allowed_next(())
        first = np.zeros(self.size, dtype=bool)
        first[[self.y_offset + index[t] for t in first_tokens]] = True
        rest = np.zeros((len(first_tokens), ft.length, self.size), dtype=bool)
        for c, head in enumerate(first_tokens):
            prefix: list[str] = [head]
            for p in range(1, ft.length):
                allowed = ft.allowed_next(tuple(prefix))
                rest[c, p, [self.y_offset + index[t] for t in allowed]] = True
                prefix.append(allowed[0])
        return first, rest

    def first_token_class(self, first_ids: np.ndarray) -> np.ndarray:
        """Maps first y ids to their row in `allowed_y_masks()[1]`."""
        index = self._y_index
        lookup = np.full(self.size, -1, dtype=np.int64)
        for c, t in enumerate(self.float_tokenizer.allowed_next(())):
            lookup[self.y_offset + index[t]] = c
        classes = lookup[np.asarray(first_ids)]
        if (classes < 0).any():
            raise ValueError("y sequence starts with a token the grammar does not allow first")
        return classes

    def save(self, directory: str | os.PathLike[str]) -> None:
        self.input_tokenizer.save(os.path.join(directory, TOKENIZER_FILE))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], float_tokenizer: FloatTokenizer) -> "Vocabulary":
        path = os.path.join(directory, TOKENIZER_FILE)
        tok = tokenizers.Tokenizer.from_file(path)
        return cls(tok, float_tokenizer)


def tokenizer_fingerprint(tok: tokenizers.Tokenizer) -> str:
    """A short stable hash of the tokenizer, to detect a tokenizer/model mismatch."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]

