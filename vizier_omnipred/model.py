"""The T5 encoder-decoder, its size presets, and checkpoints on disk.

A checkpoint is a plain directory that `transformers` can read on its own
(`config.json` + `model.safetensors` from `save_pretrained`) plus what turns text into
ids and ids into numbers: `tokenizer.json` (the input BPE) and `omnipred.json` (codec
versions and settings, the float tokenizer, the preset, and how the model was trained).
Loading checks every piece against the others and against this code's codec versions,
so a mismatched or damaged checkpoint fails at load time with the file named, not
twenty trials later inside torch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import math

import attrs
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes
from transformers import T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from vizier_omnipred.numbers import FloatTokenizer
from vizier_omnipred.text import TEXT_CODEC_VERSION, TextCodec
from vizier_omnipred.vocab import EOS_ID, PAD_ID, TOKENIZER_FILE, Vocabulary, tokenizer_fingerprint


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device a model runs on (None: the CPU), checked before any weight moves:
    an unknown name or a GPU this machine does not have is a ValueError that says so,
    not a RuntimeError from the first tensor sent there."""
    try:
        resolved = torch.device(device or "cpu")
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown torch device {str(device)!r}: use cpu, cuda or cuda:N") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but torch sees no CUDA device")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} requested but torch sees {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return resolved


CHECKPOINT_FORMAT = "vizier-omnipred-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
META_FILE = "omnipred.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Checkpoints are small local files saved and loaded often (every designer refit): the
# per-shard progress bars of transformers would only flood the user's terminal.
hf_logging.disable_progress_bar()

REQUIRED_FILES = (META_FILE, CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
# Tensors that save_pretrained leaves out because they alias `shared.weight`.
_TIED_KEYS = frozenset({"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"})


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, damaged, or incompatible with this code."""


@attrs.frozen
class ModelPreset:
    """Sizes of the T5 and the learning rate it is pretrained with.

    `learning_rate` is the pretraining rate; fine-tuning a pretrained checkpoint uses a
    tenth of it (OmniPred's fine-tuning recipe), training from scratch uses it as is.
    """

    name: str
    d_model: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    d_ff: int
    d_kv: int
    input_vocab_size: int
    dropout: float = 0.0
    learning_rate: float = 1e-3
    # T5's feed-forward: "gated-silu" trains 1.4x faster per example on a CPU than T5 v1.1's
    # "gated-gelu" (its tanh approximation costs more than the matmuls it gates), measured
    # with `bench speed`.
    feed_forward: str = "gated-silu"

    @property
    def description(self) -> str:
        return (
            f"{self.name}: d_model {self.d_model}, {self.num_layers}+{self.num_decoder_layers} layers, "
            f"{self.num_heads} heads, d_ff {self.d_ff}, input vocab {self.input_vocab_size}"
        )


PRESETS: dict[str, ModelPreset] = {
    # For tests: trains in seconds on one core.
    "tiny": ModelPreset("tiny", d_model=64, num_layers=2, num_decoder_layers=1, num_heads=2,
                        d_ff=128, d_kv=32, input_vocab_size=512, learning_rate=2e-3),
    # The CPU default (~0.6M parameters): pretrains on one CPU core within an hour. Two encoder
    # layers with d_ff 256 learn HPOBench kc1 from scratch as well per step as three with d_ff
    # 512 and cost half the CPU-seconds (`bench learning-curve`, docs/BENCHMARKS.md).
    "small": ModelPreset("small", d_model=128, num_layers=2, num_decoder_layers=1, num_heads=4,
                         d_ff=256, d_kv=32, input_vocab_size=1024, learning_rate=1e-3),
    # For a GPU: ~10M parameters.
    "base": ModelPreset("base", d_model=256, num_layers=6, num_decoder_layers=2, num_heads=8,
                        d_ff=1024, d_kv=32, input_vocab_size=2048, learning_rate=5e-4),
}


def get_preset(name_or_preset: str | ModelPreset) -> ModelPreset:
    if isinstance(name_or_preset, ModelPreset):
        return name_or_preset
    try:
        return PRESETS[name_or_preset]
    except KeyError:
        raise ValueError(f"unknown model preset {name_or_preset!r}; valid: {sorted(PRESETS)}") from None


class NumberEmbedding(torch.nn.Module):
    """Periodic features of a number's position, projected to the model's width.

    [sin(2 pi f_k u), cos(2 pi f_k u)]_k and u itself, with fixed frequencies f_k
    geometric from `min_frequency` to `max_frequency`, then a learned linear map
    (Gorishniy et al., NeurIPS 2022, periodic embeddings of numerical features). Low
    frequencies say where in the range a value lies, high ones resolve neighbours; a
    linear map of these features can express any smooth bump in u, which digit tokens
    let a small encoder learn only after many passes. The frequencies are computed, not
    stored: a checkpoint's weights are just the projection.
    """

    def __init__(self, d_model: int, num_frequencies: int, min_frequency: float, max_frequency: float):
        super().__init__()
        self.num_frequencies = num_frequencies
        self.min_frequency = min_frequency
        self.max_frequency = max_frequency
        self.proj = torch.nn.Linear(2 * num_frequencies + 1, d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values (B, L), nan where a token carries no number -> (B, L, d_model), 0 there."""
        has = ~torch.isnan(values)
        u = torch.where(has, values, torch.zeros_like(values))
        freqs = torch.logspace(math.log10(self.min_frequency), math.log10(self.max_frequency),
                               self.num_frequencies, device=values.device, dtype=u.dtype)
        angle = (2 * math.pi) * u[..., None] * freqs  # (B, L, F)
        features = torch.cat([torch.sin(angle), torch.cos(angle), u[..., None]], dim=-1)
        return self.proj(features) * has[..., None].to(features.dtype)


class OmniPredT5(T5ForConditionalGeneration):
    """A T5 whose encoder also reads numbers as numbers.

    The input is the trial's text tokens, as in OmniPred; on top, every token of a
    numeric parameter value gets `NumberEmbedding(position)` added to its token
    embedding (`input_values`: one position per token, nan elsewhere). The number
    embedding lives in the same `model.safetensors` as every other weight; its settings
    are in `config.json` (`number_embedding_*`; 0 frequencies: pure text, no embedding).
    """

    def __init__(self, config: T5Config):
        super().__init__(config)
        frequencies = int(getattr(config, "number_embedding_frequencies", 0) or 0)
        self.number_embedding = None
        if frequencies > 0:
            self.number_embedding = NumberEmbedding(
                config.d_model, frequencies,
                float(config.number_embedding_min_frequency), float(config.number_embedding_max_frequency),
            )

    @property
    def reads_numbers(self) -> bool:
        return self.number_embedding is not None

    def embed_inputs(self, input_ids: torch.Tensor, input_values: torch.Tensor | None) -> torch.Tensor:
        embeds = self.shared(input_ids)
        if self.number_embedding is not None and input_values is not None:
            embeds = embeds + self.number_embedding(input_values.to(embeds.dtype))
        return embeds

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, input_values=None,
                study_ids=None, study_mask=None, study_index=None, **kwargs):
        if study_ids is not None and input_ids is not None:
            hidden, attention_mask = self.encode(input_ids, attention_mask, input_values, study_ids, study_mask,
                                                 study_index)
            kwargs["encoder_outputs"] = (hidden,)
            input_ids = None
        elif input_values is not None and input_ids is not None and self.number_embedding is not None:
            kwargs["inputs_embeds"] = self.embed_inputs(input_ids, input_values)
            input_ids = None
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               decoder_input_ids=decoder_input_ids, **kwargs)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               input_values: torch.Tensor | None = None, study_ids: torch.Tensor | None = None,
               study_mask: torch.Tensor | None = None, study_index: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, L, d_model) of a batch and the mask the decoder attends with:
        what sampling computes once per input.

        With study texts apart (`study_ids`, see `sampling.EncoderInputs`), each distinct study
        text is encoded once and appended to the output of every trial that reads it, so the
        decoder attends to (B, L + Ls) positions: the trial's, then its study's.
        """
        encoder = self.get_encoder()
        embeds = self.embed_inputs(input_ids, input_values)
        hidden = encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        if study_ids is None:
            return hidden, attention_mask
        if study_mask is None or study_index is None:
            raise ValueError("study_ids needs study_mask and study_index")
        study = encoder(inputs_embeds=self.shared(study_ids), attention_mask=study_mask).last_hidden_state
        # (S, Ls, D) -> (B, Ls, D): each trial row gets its study's encoding
        hidden = torch.cat([hidden, study[study_index]], dim=1)
        return hidden, torch.cat([attention_mask, study_mask[study_index]], dim=1)


@attrs.frozen
class NumberEmbeddingConfig:
    """The fixed frequencies of a new model's `NumberEmbedding` (cycles over a parameter's range).

    The highest frequency sets how finely the model can tell two values apart, and so how
    easily it can memorise a study instead of learning a smooth function of it.
    """

    frequencies: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    min_frequency: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    max_frequency: float = attrs.field(default=64.0)

    @max_frequency.validator
    def _check_max(self, _, value):
        if not value >= self.min_frequency:
            raise ValueError(f"max_frequency must be >= min_frequency ({self.min_frequency}), got {value}")

    def t5_config(self) -> dict[str, Any]:
        return dict(number_embedding_frequencies=self.frequencies, number_embedding_min_frequency=self.min_frequency,
                    number_embedding_max_frequency=self.max_frequency)


# New pretrained models (`pretrain`): up to 64 cycles, measured on HPOBench (docs/BENCHMARKS.md);
# a model learns from thousands of studies what to make of the fine ones.
PRETRAINING_NUMBER_EMBEDDING = NumberEmbeddingConfig()
# A model trained from scratch on one small study (`OmniPredRegressor.from_scratch`): up to 8
# cycles. With 64 it fits 150 trials by telling them apart rather than by a smooth function of
# them: held-out Spearman with 8 against 64, smooth3 0.868 against 0.827 over four seeds, higher on
# 4-D Sphere and 2-D Rastrigin, level on kc1; 8 the best of 4, 8, 16 and 64 over the four families
# together (docs/BENCHMARKS.md, "A smoother number embedding from scratch").
SCRATCH_NUMBER_EMBEDDING = NumberEmbeddingConfig(max_frequency=8.0)


def build_model(
    preset: ModelPreset,
    vocab_size: int,
    *,
    reads_numbers: bool = True,
    number_embedding: NumberEmbeddingConfig = PRETRAINING_NUMBER_EMBEDDING,
) -> OmniPredT5:
    """A freshly initialised model (trained from scratch: no pretrained weights anywhere).

    reads_numbers: with a number embedding (codecs whose `number_features` is not "none"),
    of `number_embedding`'s frequencies.
    """
    numbers = number_embedding.t5_config() if reads_numbers else dict(number_embedding_frequencies=0)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=preset.d_model,
        d_kv=preset.d_kv,
        d_ff=preset.d_ff,
        num_layers=preset.num_layers,
        num_decoder_layers=preset.num_decoder_layers,
        num_heads=preset.num_heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=preset.dropout,
        feed_forward_proj=preset.feed_forward,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
        tie_word_embeddings=True,
        use_cache=True,
        **numbers,
    )
    return OmniPredT5(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@attrs.define
class Checkpoint:
    model: OmniPredT5
    vocab: Vocabulary
    codec: TextCodec
    preset: ModelPreset
    training: dict[str, Any]


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: OmniPredT5,
    vocab: Vocabulary,
    codec: TextCodec,
    preset: ModelPreset,
    training: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Writes a checkpoint atomically: a crash or a full disk leaves any old one intact.

    Files go to a temporary sibling directory which then replaces `directory`.
    `extra_files` (e.g. the pretraining optimizer state) travel in the same atomic unit.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_save(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        vocab.save(tmp)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "text_codec": {"version": TEXT_CODEC_VERSION, "config": codec.to_config()},
            "float_tokenizer": vocab.float_tokenizer.to_config(),
            "vocab": {
                "input_size": vocab.input_size,
                "size": vocab.size,
                "tokenizer_sha": tokenizer_fingerprint(vocab.input_tokenizer),
            },
            "preset": attrs.asdict(preset),
            "training": training or {},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        for name in (META_FILE, CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, *(extra_files or {})):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        old = None
        if target.exists():
            old = _previous_copy(target)
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# An ensemble's members after the first (`OmniPredRegressor(ensemble_size=K)`): member i's weights
# travel in the checkpoint as `member_{i}.safetensors` next to the first member's WEIGHTS_FILE.
def member_file(index: int) -> str:
    return f"member_{index}.safetensors"


def member_weights(model: OmniPredT5) -> bytes:
    """A member's weights as safetensors bytes (tied copies of the shared embedding left out)."""
    return safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in _TIED_KEYS})


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _check_finite(model: torch.nn.Module, path: Path) -> None:
    """Refuses weights holding nan or inf: such a model samples garbage (torch's multinomial
    fails on nan logits deep inside sampling), and no fit recovers from them."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name!r} holds nan or inf values (a damaged or diverged checkpoint)")


def load_member(directory: str | os.PathLike[str], index: int, like: OmniPredT5) -> OmniPredT5:
    """Member `index` of a saved ensemble: a copy of `like` (the first member) with its weights."""
    path = Path(directory) / member_file(index)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ensemble member file (the checkpoint records more members)")
    try:
        weights = load_safetensors(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise CheckpointError(f"{path}: cannot load ensemble member weights ({e})") from e
    member = copy.deepcopy(like)
    info = member.load_state_dict(weights, strict=False)
    missing = [k for k in info.missing_keys if k not in _TIED_KEYS]
    if missing or info.unexpected_keys:
        raise CheckpointError(f"{path}: member weights do not match the model (missing {missing[:5]}, "
                              f"unexpected {list(info.unexpected_keys)[:5]})")
    _check_finite(member, path)
    member.eval()
    return member


def _previous_copy(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def restore_interrupted_save(directory: str | os.PathLike[str]) -> bool:
    """Puts back the previous checkpoint if a save was killed between its two renames.

    `save_checkpoint` moves the old checkpoint aside, then moves the new one in; a SIGKILL
    between the two leaves no `directory`, only `.NAME.old`. Returns True if it restored
    it. Resuming a run calls this, so such a kill costs the steps since the previous
    checkpoint, not the whole run.
    """
    target = Path(directory)
    previous = _previous_copy(target)
    if target.exists() or not previous.is_dir():
        return False
    os.replace(previous, target)
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint file ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_training_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """How a checkpoint was trained (steps, rates, corpus), without loading its weights."""
    meta = _read_json(Path(directory) / META_FILE)
    training = meta.get("training", {})
    if not isinstance(training, dict):
        raise CheckpointError(f"{Path(directory) / META_FILE}: 'training' must be a JSON object")
    return training


# T5Config fields that size the network: a wrong type there fails deep inside torch.
_CONFIG_INT_FIELDS = ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                      "relative_attention_num_buckets", "relative_attention_max_distance", "number_embedding_frequencies")


def _check_model_config(path: Path, config: dict[str, Any]) -> None:
    """Refuses a `config.json` that transformers would choke on, naming that file.

    Without this, a damaged config surfaces as an error about the weights file (or a
    TypeError from inside a torch layer), which sends the user to the wrong file.
    """
    for key in _CONFIG_INT_FIELDS:
        value = config.get(key)
        if key in config and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise CheckpointError(f"{path}: {key!r} must be a non-negative integer, got {value!r}")
    try:
        T5Config(**config)
    except Exception as e:  # noqa: BLE001 - transformers validates with many exception types
        raise CheckpointError(f"{path}: not a valid T5 model config ({type(e).__name__}: {e})") from e


def load_checkpoint(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Checkpoint:
    """Loads and cross-checks a checkpoint; every failure names the offending file."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint directory does not exist")
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name}: missing checkpoint file")

    meta = _read_json(root / META_FILE)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{root / META_FILE}: not a vizier-omnipred checkpoint")
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{root / META_FILE}: checkpoint format version {meta.get('format_version')} "
            f"but this code reads version {CHECKPOINT_FORMAT_VERSION}"
        )
    for key in ("text_codec", "float_tokenizer", "vocab", "preset", "training"):
        if not isinstance(meta.get(key, {}), dict):
            raise CheckpointError(f"{root / META_FILE}: {key!r} must be a JSON object, got {type(meta[key]).__name__}")
    text_version = meta.get("text_codec", {}).get("version")
    if text_version != TEXT_CODEC_VERSION:
        raise CheckpointError(
            f"{root / META_FILE}: trained with text codec version {text_version}, this code writes "
            f"version {TEXT_CODEC_VERSION}; the model would read trials in a format it never saw. "
            "Retrain or fine-tune a checkpoint built with this version."
        )
    try:
        codec = TextCodec.from_config(meta["text_codec"]["config"])
        float_tokenizer = FloatTokenizer.from_config(meta["float_tokenizer"])
        preset = ModelPreset(**meta["preset"])
    except Exception as e:  # noqa: BLE001 - any failure to read these settings means a bad file
        raise CheckpointError(f"{root / META_FILE}: invalid codec or preset settings ({type(e).__name__}: {e})") from e

    try:
        vocab = Vocabulary.load(root, float_tokenizer)
    except Exception as e:  # tokenizers raises its own exception types
        raise CheckpointError(f"{root / TOKENIZER_FILE}: cannot load input tokenizer ({e})") from e
    expected = meta.get("vocab", {})
    if tokenizer_fingerprint(vocab.input_tokenizer) != expected.get("tokenizer_sha"):
        raise CheckpointError(f"{root / TOKENIZER_FILE}: tokenizer does not match the one the model was trained with")
    if vocab.size != expected.get("size"):
        raise CheckpointError(
            f"{root / META_FILE}: vocabulary size {vocab.size} (tokenizer + float tokens) differs from "
            f"the recorded {expected.get('size')}"
        )

    config = _read_json(root / CONFIG_FILE)
    if config.get("vocab_size") != vocab.size:
        raise CheckpointError(
            f"{root / CONFIG_FILE}: model vocab_size {config.get('vocab_size')} does not match the "
            f"tokenizers' {vocab.size}"
        )
    _check_model_config(root / CONFIG_FILE, config)
    if config.get("architectures") != ["OmniPredT5"]:
        raise CheckpointError(
            f"{root / CONFIG_FILE}: architectures {config.get('architectures')!r}, expected ['OmniPredT5'] "
            "(a checkpoint from before numbers were read as numbers: retrain it)"
        )
    reads_numbers = int(config.get("number_embedding_frequencies", 0) or 0) > 0
    if reads_numbers != codec.writes_numbers:
        raise CheckpointError(
            f"{root / CONFIG_FILE}: the model {'has' if reads_numbers else 'has no'} number embedding but its "
            f"text codec writes number_features={codec.number_features!r}"
        )
    try:
        with _quiet_transformers():  # its load report of a mismatch: ours below names it in one line
            model, info = OmniPredT5.from_pretrained(
                root, local_files_only=True, output_loading_info=True
            )
    except Exception as e:  # safetensors/transformers raise many types for damaged files
        raise CheckpointError(f"{root / WEIGHTS_FILE}: cannot load model weights ({e})") from e
    # transformers would silently initialise absent tensors at random: refuse instead.
    missing = [k for k in info.get("missing_keys", ()) if k not in _TIED_KEYS]
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(
            f"{root / WEIGHTS_FILE}: weights do not match the model config "
            f"(missing {missing[:5]}, mismatched {list(info.get('mismatched_keys', ()))[:5]})"
        )
    _check_finite(model, root / WEIGHTS_FILE)
    model.to(device)
    model.eval()
    return Checkpoint(model=model, vocab=vocab, codec=codec, preset=preset, training=meta.get("training", {}))
