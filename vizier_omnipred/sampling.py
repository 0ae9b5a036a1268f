"""Constrained sampling of y: many samples per input for the price of one encoder pass.

A y sequence is only `1 + digits + 1` tokens, so the cost of sampling is dominated by the
encoder and by cross-attention over the encoder output. The loop here therefore:

1. runs the encoder once per input (never once per sample) and computes the
   cross-attention keys/values once per input,
2. decodes each distinct prefix once: the first step runs once per input, and a prefix's
   share of the S samples is split among next tokens by a multinomial draw, so a confident
   model decodes a handful of rows per input instead of S (exactly ancestral sampling),
3. keeps decoder keys/values cached, reindexing the cache rows as prefixes branch.

Every step masks the logits to what the number grammar allows next (sign or
`<INFEASIBLE>`, then digits, then an exponent; `<INFEASIBLE>` continues as itself), so
every sample is a well-formed number or an explicit infeasible mark.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from vizier_omnipred.vocab import PAD_ID, Vocabulary

if TYPE_CHECKING:
    from vizier_omnipred.model import OmniPredT5


# What sampling one input of L tokens costs, in tokens: L while the encoder's dense layers
# dominate, then attention's L^2 takes over (forward only, so later than in a training step's
# `training.input_cost`). Measured with `small`, 16 samples, one CPU thread: 0.10 ms a token up
# to ~200 tokens, 0.15 at 730 tokens, 0.23 at 1,500.
SAMPLING_ATTENTION_LENGTH = 1024


def sampling_cost(length: int) -> float:
    """Cost of sampling one input of `length` tokens (see SAMPLING_ATTENTION_LENGTH)."""
    return length * (1.0 + length / SAMPLING_ATTENTION_LENGTH)


@attrs.frozen(eq=False)
class YSamples:
    """S samples of y for each of N inputs, in the objective's own units.

    `values[i, s]` is nan exactly where `infeasible[i, s]` is True: an infeasible sample is
    reported as such, never turned into a number.
    """

    values: np.ndarray  # (N, S) float64
    infeasible: np.ndarray  # (N, S) bool

    @property
    def num_inputs(self) -> int:
        return self.values.shape[0]

    @property
    def num_samples(self) -> int:
        return self.values.shape[1]

    @property
    def infeasible_probability(self) -> np.ndarray:
        return self.infeasible.mean(axis=1)

    def quantiles(self, qs) -> np.ndarray:
        """(len(qs), N) quantiles over the feasible samples; nan where all are infeasible."""
        qs = np.asarray(qs, dtype=float)
        out = np.full((qs.size, self.num_inputs), np.nan)
        for i in range(self.num_inputs):
            row = self.values[i][~self.infeasible[i]]
            if row.size:
                out[:, i] = np.quantile(row, qs)
        return out


def pad_batch(sequences: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads id lists into (ids, attention_mask) tensors."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def pad_values(
    values: Sequence[Sequence[float] | None], width: int, device: torch.device
) -> torch.Tensor | None:
    """Per-token number positions as a (B, width) tensor, nan-padded; None if no row has any."""
    if all(v is None for v in values):
        return None
    out = torch.full((len(values), width), float("nan"), dtype=torch.float32)
    for i, row in enumerate(values):
        if row is not None:
            out[i, : len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out.to(device)


@attrs.frozen(eq=False)
class EncoderInputs:
    """A batch of model inputs on the device, as `OmniPredT5.encode` reads them.

    With study texts encoded apart (`TextCodec.study_text`), each distinct study text of
    the batch is one row of `study_ids`, encoded once however many trials read it.
    """

    input_ids: torch.Tensor  # (B, L) the trials' ids (with their study text when inline)
    attention_mask: torch.Tensor  # (B, L)
    input_values: torch.Tensor | None = None  # (B, L) number positions, nan: none at that token
    study_ids: torch.Tensor | None = None  # (S, Ls) the batch's distinct study texts
    study_mask: torch.Tensor | None = None  # (S, Ls)
    study_index: torch.Tensor | None = None  # (B,) row b reads study_ids[study_index[b]]

    @classmethod
    def collate(
        cls,
        input_ids: Sequence[Sequence[int]],
        device: torch.device,
        input_values: Sequence[Sequence[float] | None] | None = None,
        study_starts: Sequence[int | None] | None = None,
    ) -> "EncoderInputs":
        """Pads inputs (as `Vocabulary.encode_trial_texts` gives them) into tensors; a row
        with a study start is split there and its study text shared with equal ones."""
        values = list(input_values) if input_values is not None else [None] * len(input_ids)
        starts = list(study_starts) if study_starts is not None else [None] * len(input_ids)
        if len(values) != len(input_ids) or len(starts) != len(input_ids):
            raise ValueError(f"{len(input_ids)} inputs but {len(values)} value rows and {len(starts)} study starts")
        split = [s is not None for s in starts]
        if any(split) and not all(split):
            raise ValueError("a batch mixes inputs with and without a separate study text")
        if not all(split):
            ids, mask = pad_batch([list(r) for r in input_ids], device)
            return cls(ids, mask, pad_values(values, ids.shape[1], device))
        trials, studies, index, rows = [], {}, [], []
        for r, v, s in zip(input_ids, values, starts):
            trials.append(list(r[:s]))
            rows.append(None if v is None else v[:s])
            index.append(studies.setdefault(tuple(r[s:]), len(studies)))
        ids, mask = pad_batch(trials, device)
        study_ids, study_mask = pad_batch([list(k) for k in studies], device)
        return cls(ids, mask, pad_values(rows, ids.shape[1], device), study_ids, study_mask,
                   torch.as_tensor(index, dtype=torch.long, device=device))

    def model_kwargs(self) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of `OmniPredT5.forward` and `OmniPredT5.encode`."""
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask, input_values=self.input_values,
                    study_ids=self.study_ids, study_mask=self.study_mask, study_index=self.study_index)


@attrs.frozen(eq=False)
class GrammarMasks:
    """Additive logit masks (0 or -inf) of the y grammar, on the model's device."""

    first: torch.Tensor  # (V,)
    rest: torch.Tensor  # (C, L, V): C first-token classes, position p >= 1
    first_class: torch.Tensor  # (V,) long: class of an allowed first id, -1 otherwise

    @classmethod
    def build(cls, vocab: Vocabulary, device: torch.device) -> "GrammarMasks":
        first, rest = vocab.allowed_y_masks()
        first_class = torch.full((vocab.size,), -1, dtype=torch.long)
        allowed_first = np.flatnonzero(first)
        first_class[torch.as_tensor(allowed_first)] = torch.as_tensor(vocab.first_token_class(allowed_first))

        def additive(m: np.ndarray) -> torch.Tensor:
            t = torch.zeros(m.shape, dtype=torch.float32)
            t[~torch.as_tensor(m)] = float("-inf")
            return t.to(device)

        return cls(first=additive(first), rest=additive(rest), first_class=first_class.to(device))

    def capped(self, vocab: Vocabulary, max_exponent: int) -> "GrammarMasks":
        """These masks with every exponent above `max_exponent` disallowed.

        The exponent is the last y token, so a cap bounds a sampled magnitude below
        `10**(num_digits + max_exponent)` whatever digits came before it. The regressor caps
        at a decade above a study's largest observed value: a few stray samples at absurd
        exponents (a fine-tuned model puts a few percent of its mass there) would otherwise
        decide a Monte Carlo mean, expected improvement or a Thompson draw.
        """
        ft = vocab.float_tokenizer
        max_exponent = max(max_exponent, ft.min_exponent)  # at least one exponent stays allowed
        above = [vocab.y_offset + i for i, t in enumerate(ft.tokens)
                 if (e := ft.token_exponent(t)) is not None and e > max_exponent]
        rest = self.rest.clone()
        rest[:, ft.length - 1, above] = float("-inf")
        return attrs.evolve(self, rest=rest)


@torch.no_grad()
def sample_y(
    model: OmniPredT5,
    vocab: Vocabulary,
    input_ids: list[list[int]],
    num_samples: int,
    **kwargs,
) -> YSamples:
    """Draws `num_samples` y values for each input id sequence (see `sample_y_indices`)."""
    indices = sample_y_indices(model, vocab, input_ids, num_samples, **kwargs)
    values, infeasible = vocab.float_tokenizer.decode_indices(indices)
    return YSamples(values=values, infeasible=infeasible)


def check_temperature(value: float) -> float:
    """`value` as a float when it is a finite number > 0; else ValueError (a nan or infinite
    temperature would turn every logit into nan or flatten it, not fail)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if isinstance(value, (bool, str)) or not 0 < t < float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {value!r}")
    return t


@torch.no_grad()
def sample_y_indices(
    model: OmniPredT5,
    vocab: Vocabulary,
    input_ids: list[list[int]],
    num_samples: int,
    *,
    temperature: float = 1.0,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    max_rows: int = 8192,
    masks: GrammarMasks | None = None,
    input_values: Sequence[Sequence[float] | None] | None = None,
    study_starts: Sequence[int | None] | None = None,
) -> np.ndarray:
    """(N, S, length) sampled token indices into `vocab.float_tokenizer.tokens`.

    `input_values` are the per-token number positions of each input and `study_starts`
    where its study text starts (as `Vocabulary.encode_trial_texts` returns them), for a
    model that reads numbers and one that encodes study texts apart.

    `max_rows` bounds N*S per chunk: the decoder cache holds up to
    `rows x input_length x d_model` floats per layer, so inputs are processed in chunks
    of `max_rows // num_samples`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    temperature = check_temperature(temperature)
    device = torch.device(device)
    if masks is None:
        masks = GrammarMasks.build(vocab, device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
    was_training = model.training
    model.eval()
    length = vocab.float_tokenizer.length
    chunk = max(1, max_rows // num_samples)
    out = np.empty((len(input_ids), num_samples, length), dtype=np.int64)
    try:
        for start in range(0, len(input_ids), chunk):
            stop = start + chunk
            inputs = EncoderInputs.collate(
                input_ids[start:stop], device, None if input_values is None else input_values[start:stop],
                None if study_starts is None else study_starts[start:stop])
            out[start : start + inputs.input_ids.shape[0]] = _sample_chunk(
                model, inputs, num_samples, temperature, generator, masks, length, vocab.y_offset,
            ).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _y_logits(model: OmniPredT5, hidden: torch.Tensor, y_offset: int) -> torch.Tensor:
    """Decoder output -> logits of the y tokens only (what `lm_head` gives for that slice).

    Only the ~35 number tokens can ever be emitted, so projecting onto the whole input
    vocabulary (~1000 BPE tokens) at every step would be wasted work.
    """
    if getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings):
        hidden = hidden * (model.config.d_model**-0.5)
    weight = model.lm_head.weight[y_offset:]
    return torch.nn.functional.linear(hidden, weight).float()


def _decode_step(model, ids, encoded, attention, cache) -> torch.Tensor:
    out = model.get_decoder()(
        input_ids=ids,
        encoder_hidden_states=encoded,
        encoder_attention_mask=attention,
        past_key_values=cache,
        use_cache=True,
    )
    return out.last_hidden_state[:, -1]


def _sample_chunk(
    model: OmniPredT5,
    inputs: EncoderInputs,
    num_samples: int,
    temperature: float,
    generator: torch.Generator | None,
    masks: GrammarMasks,
    length: int,
    y_offset: int,
) -> torch.Tensor:
    """Returns (n, S, length) indices into the float tokenizer's tokens.

    Samples are drawn as a tree: every distinct prefix is decoded once and its share of the
    S samples is split among next tokens by a multinomial draw (exactly ancestral
    sampling). A confident model has a handful of distinct prefixes per input, so the
    decoder runs on far fewer than n*S rows; at worst it runs on n*S, as naive sampling.
    """
    n = inputs.input_ids.shape[0]
    device = inputs.input_ids.device
    encoded, attention = model.encode(**inputs.model_kwargs())
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    width, dim = encoded.shape[1], encoded.shape[2]
    # One row per distinct prefix: its input, its sample count, its tokens so far.
    row_input = torch.arange(n, device=device)
    row_count = torch.full((n,), num_samples, dtype=torch.long, device=device)
    prefix = torch.empty((n, 0), dtype=torch.long, device=device)
    classes = None
    last = torch.full((n, 1), PAD_ID, dtype=torch.long, device=device)
    arange_s = torch.arange(num_samples, device=device)
    for position in range(length):
        if position == 0:
            hidden = _decode_step(model, last, encoded, attention, cache)
            mask = masks.first[y_offset:]
        else:
            rows = row_input.shape[0]
            # cross-attention keys/values are cached: only the shape of the encoder output is read
            view = encoded[:1, :1].expand(rows, width, dim)
            hidden = _decode_step(model, last, view, attention[row_input], cache)
            mask = masks.rest[classes, position, y_offset:]
        logits = _y_logits(model, hidden, y_offset) / temperature + mask
        probs = torch.softmax(logits, dim=-1)
        if bool(torch.isnan(probs).any()):  # else multinomial fails with a message about negative entries
            raise FloatingPointError("the model's y-token probabilities are nan: its weights are damaged "
                                     "(nan or inf); reload the checkpoint or refit with a lower learning rate")
        draws = torch.multinomial(probs, num_samples, replacement=True, generator=generator)  # (rows, S)
        used = arange_s[None, :] < row_count[:, None]  # each row keeps only its own count of draws
        vocab_y = probs.shape[-1]
        keys = (torch.arange(draws.shape[0], device=device)[:, None] * vocab_y + draws)[used]
        keys, counts = torch.unique(keys, sorted=True, return_counts=True)
        parent, token = keys // vocab_y, keys % vocab_y
        if position < length - 1:  # the last step's cache is never read: skip the copy
            cache.batch_select_indices(parent)
        row_input, row_count = row_input[parent], counts
        prefix = torch.cat([prefix[parent], token[:, None]], dim=1)
        classes = masks.first_class[prefix[:, 0] + y_offset]
        last = (token + y_offset)[:, None]
    # Rows are sorted by input (parents are visited in order): expand counts to samples and
    # shuffle within each input so that sample k is a fair draw (Thompson uses sample 0).
    samples = prefix.repeat_interleave(row_count, dim=0).reshape(n, num_samples, length)
    noise = torch.rand((n, num_samples), generator=generator, device=device)
    order = torch.argsort(noise, dim=1)
    return torch.gather(samples, 1, order[:, :, None].expand(-1, -1, length))
