"""Pretraining data: studies stream in, shuffled batches of examples come out.

Sources (corpus files, the installed HPOBench tables, synthetic BBOB studies) are read one
study from each in turn (`iter_studies`), turned into examples (`study_examples`), cached
packed after the first pass (`PackedStudy`) and mixed across studies by a shuffle buffer
(`training_batches`), because a batch from one study teaches little about reading its text.
Validation studies and the input tokenizer's training texts come from the same stream.
`pretraining.py` is the loop that consumes it.
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

from vizier_omnipred import model as model_lib
from vizier_omnipred.corpus.format import in_validation_split
from vizier_omnipred.level_map import LevelMap
from vizier_omnipred.numbers import FloatTokenizer, OutOfRangeWarning
from vizier_omnipred.text import TextCodec, TrialTextError
from vizier_omnipred.training import Batch, Example, make_examples, trials_range_frame
from vizier_omnipred.vocab import Vocabulary, train_input_tokenizer

if TYPE_CHECKING:
    from vizier_omnipred.pretraining import PretrainConfig

__all__ = ["PackedStudy", "build_vocab", "iter_framed_studies", "iter_studies", "study_examples", "study_range_frame",
           "training_batches", "validation_studies"]


def iter_studies(config: PretrainConfig):
    """All studies of the run: one from each source in turn (corpus files, then synthetic)."""
    return (record for record, _ in iter_framed_studies(config))


def iter_framed_studies(config: PretrainConfig):
    """(study, whether its values are written in its range frame), one from each source in turn.

    Interleaving the sources, rather than reading them one after another, lets the shuffle
    buffer mix them from the first step, so a run shorter than an epoch still sees all.
    """
    from vizier_omnipred.corpus.bbob import synthetic_bbob_studies
    from vizier_omnipred.corpus.format import read_corpus

    sources = [((r, False) for r in read_corpus(path)) for path in config.corpus]
    if config.hpobench_datasets:
        from vizier_omnipred.corpus.hpobench import hpobench_studies

        sources.append((r, False) for r in hpobench_studies(config.hpobench_datasets, seed=config.seed,
                                                             max_trials_per_study=config.hpobench_trials))
    if config.synthetic_studies > 0:
        framed = config.synthetic_range_frame
        studies = synthetic_bbob_studies(config.synthetic_seed, config.synthetic_studies,
                                         sparse_fraction=config.synthetic_sparse_fraction)
        sources.append((r, framed) for r in studies)
    while sources:
        for source in list(sources):
            item = next(source, None)
            if item is None:
                sources.remove(source)
            else:
                yield item


def study_examples(vocab: Vocabulary, codec: TextCodec, record, *, range_frame: bool = False,
                   ) -> tuple[list[Example], int]:
    """Examples of one study, and how many of its trials were unusable; bad studies skip.

    range_frame: values written in the study's range frame (`level_map.fit_range_map` of all
    its finite values of the objective), as a full-recipe fine-tune writes a new study's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutOfRangeWarning)
            frame = study_range_frame(codec, record) if range_frame else None
            examples, summary = make_examples(vocab, codec, record.problem, list(record.trials), level_map=frame)
    except (TrialTextError, ValueError):
        return [], len(record.trials)
    return examples, summary.num_excluded


def study_range_frame(codec: TextCodec, record) -> LevelMap:
    """The range frame of a whole study's objective values (`level_map.fit_range_map`)."""
    metric = codec.objective_metric(record.problem).name
    return trials_range_frame(record.trials, metric)


@attrs.frozen(eq=False)
class PackedStudy:
    """One study's examples in flat arrays: 4 bytes a token (8 with its number position),
    where a list of Python ints costs about 36, so a pass over a large corpus fits in memory."""

    input_ids: np.ndarray  # every example's input ids, concatenated (int32)
    offsets: np.ndarray  # example i is input_ids[offsets[i]:offsets[i + 1]]
    y_ids: np.ndarray  # (num_examples, y length)
    input_values: np.ndarray | None = None  # float32, aligned with input_ids; None: pure text
    study_starts: np.ndarray | None = None  # int32, one per example (`Example.study_start`); None: inline

    @classmethod
    def pack(cls, examples: list[Example]) -> "PackedStudy":
        lengths = [len(e.input_ids) for e in examples]
        flat = [i for e in examples for i in e.input_ids]
        y_length = len(examples[0].y_ids) if examples else 0
        values = None
        if any(e.input_values is not None for e in examples):
            values = np.asarray([v for e in examples for v in (e.input_values or [math.nan] * len(e.input_ids))],
                                dtype=np.float32)
        starts = None
        if examples and examples[0].study_start is not None:
            starts = np.asarray([e.study_start for e in examples], dtype=np.int32)
        return cls(np.asarray(flat, dtype=np.int32), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   np.asarray([e.y_ids for e in examples], dtype=np.int32).reshape(len(examples), y_length),
                   values, starts)

    def unpack(self) -> list[Example]:
        ids, ys, off = self.input_ids.tolist(), self.y_ids.tolist(), self.offsets.tolist()
        values = self.input_values.tolist() if self.input_values is not None else None
        starts = self.study_starts.tolist() if self.study_starts is not None else None
        return [Example(tuple(ids[off[i]:off[i + 1]]), tuple(ys[i]),
                        None if values is None else tuple(values[off[i]:off[i + 1]]),
                        None if starts is None else starts[i])
                for i in range(len(ys))]

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.input_values, self.study_starts) if a is not None)
        return self.input_ids.nbytes + self.offsets.nbytes + self.y_ids.nbytes + extra


def _rank_study_examples(config: PretrainConfig, vocab: Vocabulary, codec: TextCodec, *, rank: int,
                         world_size: int) -> Iterator[list[Example]]:
    """Examples of each training study of this rank (its share, validation studies left out)."""
    any_study = False
    for i, (record, framed) in enumerate(iter_framed_studies(config)):
        if i % world_size != rank or in_validation_split(record.name, config.validation_fraction):
            continue
        any_study = True
        yield study_examples(vocab, codec, record, range_frame=framed)[0]
    if not any_study:
        raise ValueError("no training studies: the corpus is empty or entirely in the validation split")


_QUEUE_STUDIES = 64  # packed studies the data process may run ahead of training
_LENGTH_BUCKET = 16  # input tokens: lengths within one bucket count as equal when batches are grouped


def _produce_studies(config: PretrainConfig, vocab: Vocabulary, codec: TextCodec, rank: int, world_size: int,
                     queue) -> None:
    """The data process: this rank's studies, packed, in order; then `None`, or the error."""
    try:
        for examples in _rank_study_examples(config, vocab, codec, rank=rank, world_size=world_size):
            queue.put(PackedStudy.pack(examples))
        queue.put(None)
    except BaseException as e:  # noqa: BLE001 - handed to the training process, which raises it
        queue.put(RuntimeError(f"pretraining data process failed: {type(e).__name__}: {e}"))


def _studies_from_process(config: PretrainConfig, vocab: Vocabulary, codec: TextCodec, *, rank: int,
                          world_size: int) -> Iterator[PackedStudy]:
    """`_rank_study_examples`, packed, made by a second process while this one trains.

    Reading, generating and tokenizing studies is Python work (synthetic BBOB studies are
    evaluated one trial at a time) that otherwise takes turns with the training steps on the
    same thread; on a machine with a core to spare, a spawned process does it ahead of the
    training loop (1.2x the examples/s of the shipped recipe's first pass, docs/BENCHMARKS.md).
    It makes the same studies in the same order, so batches do not change.
    """
    import multiprocessing
    import queue as queue_lib

    context = multiprocessing.get_context("spawn")  # a fork of a process that has run torch can hang
    studies = context.Queue(maxsize=_QUEUE_STUDIES)
    process = context.Process(target=_produce_studies, args=(config, vocab, codec, rank, world_size, studies),
                              name="omnipred-pretraining-data", daemon=True)
    process.start()
    try:
        while True:
            try:
                item = studies.get(timeout=5.0)
            except queue_lib.Empty:
                if not process.is_alive():
                    raise RuntimeError(f"pretraining data process died (exit code {process.exitcode}) "
                                       "before it had made every study") from None
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if process.is_alive():
            process.terminate()
        process.join(timeout=10)
        studies.close()


def training_batches(
    config: PretrainConfig, vocab: Vocabulary, codec: TextCodec, device: torch.device,
    *, rank: int, world_size: int, seed: int,
) -> Iterator[Batch]:
    """Endless shuffled batches over the training studies (this rank's share).

    With `config.data_process` the first pass is made in a second process
    (`_studies_from_process`).

    The first pass reads, generates and tokenizes every study; that is most of a CPU's time
    per example (reading a corpus and making synthetic studies cost more than the BPE), and
    on a GPU it would starve the model on every pass. So the first pass also keeps each
    study's examples, packed (`PackedStudy`), and later passes replay them, unless they do not
    fit in `config.example_cache_mb`: then every pass reads the sources again. Both paths
    give the same batches: the studies and their order are the same on every pass.
    """
    rng = random.Random(seed)
    buffer: list[Example] = []
    # With `studies_per_batch`, the buffer is kept by study (`_pop_study_batch`) instead.
    grouped = config.studies_per_batch > 0
    by_study: list[list[Example]] = []
    held = 0
    cache: list[PackedStudy] | None = [] if config.example_cache_mb > 0 else None
    cached_bytes, budget = 0, int(config.example_cache_mb * 2**20)
    replay = False
    while True:
        if replay:
            source = ((p, p.unpack()) for p in cache)
        elif config.data_process:
            source = ((p, p.unpack()) for p in _studies_from_process(config, vocab, codec, rank=rank,
                                                                     world_size=world_size))
        else:
            source = ((None, e) for e in _rank_study_examples(config, vocab, codec, rank=rank,
                                                              world_size=world_size))
        num_examples = 0
        for packed, examples in source:
            num_examples += len(examples)
            if not replay and cache is not None:
                packed = packed if packed is not None else PackedStudy.pack(examples)
                cached_bytes += packed.nbytes
                if cached_bytes <= budget:
                    cache.append(packed)
                else:
                    cache = None
            if grouped:
                if examples:
                    by_study.append(list(examples))
                    held += len(examples)
                while held >= config.shuffle_buffer:
                    held -= config.batch_size
                    yield _pop_study_batch(by_study, config.batch_size, config.studies_per_batch, rng, device)
                continue
            buffer.extend(examples)
            while len(buffer) >= config.shuffle_buffer:
                yield from _pop_batches(buffer, config.batch_size, config.length_grouping, rng, device)
        if num_examples == 0:
            raise ValueError("no usable trials in the training studies (every trial was unusable)")
        replay = cache is not None
        while grouped and held >= config.batch_size:
            held -= config.batch_size
            yield _pop_study_batch(by_study, config.batch_size, config.studies_per_batch, rng, device)
        while len(buffer) >= config.batch_size:
            yield from _pop_batches(buffer, config.batch_size, config.length_grouping, rng, device)


def _pop_batches(buffer: list[Example], size: int, group: int, rng: random.Random,
                 device: torch.device) -> Iterator[Batch]:
    """Up to `group` batches of `size` examples drawn at random from `buffer`, grouped by length.

    A batch is padded to its longest input, and studies of different dimensions and text
    lengths mix in the buffer: drawn one batch at a time, a third of the encoder's tokens on
    the synthetic BBOB corpus were padding. Drawing `group` batches at once, sorting the draw
    by input length and cutting it into batches keeps each batch a random mix of studies
    while it pads to similar lengths; the batches then come out in random order, so that
    the model does not see short inputs, then long ones.
    """
    count = min(group, len(buffer) // size)
    picked = []
    for _ in range(size * count):
        j = rng.randrange(len(buffer))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        picked.append(buffer.pop())
    # Coarse: lengths within one bucket keep their random order (the sort is stable), so a batch
    # still mixes studies of similar length. Sorted exactly, batches split along the studies'
    # text lengths (one dataset's name and digits) and, in one 1,000-step run, learned less.
    if count > 1:  # one batch pads the same in any order: keep its draw as drawn
        picked.sort(key=lambda e: len(e.input_ids) // _LENGTH_BUCKET)
    order = list(range(count))
    rng.shuffle(order)
    for k in order:
        yield Batch.collate(picked[k * size:(k + 1) * size], device)


def _pop_study_batch(by_study: list[list[Example]], size: int, studies: int, rng: random.Random,
                     device: torch.device) -> Batch:
    """One batch of `size` examples from `studies` studies of the buffer (fewer if it holds fewer).

    Each study is picked with probability proportional to the examples it has left (as a
    random example's study would be) and gives an equal share of the batch, at random among
    its examples; a study with too few left gives all it has and the next pick fills in. A
    batch then holds a few study texts, which a model that encodes them apart
    (`TextCodec.study_text`) encodes once each, where examples drawn one by one from a
    buffer of hundreds of studies would bring one study text each.
    """
    picked: list[Example] = []
    share = -(-size // studies)  # ceil: `studies` shares cover the batch
    while len(picked) < size and by_study:
        r = rng.randrange(sum(len(examples) for examples in by_study))
        k = 0
        while r >= len(by_study[k]):
            r -= len(by_study[k])
            k += 1
        examples = by_study[k]
        for _ in range(min(share, size - len(picked), len(examples))):
            j = rng.randrange(len(examples))
            examples[j], examples[-1] = examples[-1], examples[j]
            picked.append(examples.pop())
        if not examples:
            by_study[k] = by_study[-1]
            by_study.pop()
    return Batch.collate(picked, device)


def validation_studies(config: PretrainConfig) -> list[tuple[Any, bool]]:
    """The first `eval_studies` studies of the validation split, each with its frame flag
    (`iter_framed_studies`)."""
    out = []
    for record, framed in iter_framed_studies(config):
        if in_validation_split(record.name, config.validation_fraction):
            out.append((record, framed))
            if len(out) >= config.eval_studies:
                break
    return out


def build_vocab(config: PretrainConfig, codec: TextCodec) -> Vocabulary:
    preset = model_lib.get_preset(config.preset)
    texts: list[str] = []
    for record in itertools.islice(iter_studies(config), config.tokenizer_studies):
        try:
            texts += codec.serialize_many(record.problem, list(record.trials))
        except (TrialTextError, ValueError):
            continue
    return Vocabulary(train_input_tokenizer(texts, preset.input_vocab_size), FloatTokenizer())
