"""Sentence pairs for seq2seq: read tab-separated files, filter, split, encode, and batch with padding.

A pairs file has one ``source<TAB>target`` pair per line (further columns, such as Tatoeba's
attribution, are ignored; blank lines are skipped). The held-out split is drawn by source
sentence from the seed, so every translation of one sentence lands on the same side and no test
sentence is seen in training; it is written beside the run as ``heldout.tsv`` (its columns in the
order of the pairs files, so it can be scored as they would be). Token ids are kept
in numpy memmaps (``pairs/*.npy``), one flat array per side with sentence offsets.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textgen.config import DataConfig
from textgen.data.batches import to_device
from textgen.data.corpus import read_pieces
from textgen.data.tokenizers import AnyTokenizer, train_tokenizer
from textgen.data.tokens import file_sources
from textgen.errors import CorpusError
from textgen.files import atomic_write

PAD_TARGET = -100  # cross_entropy's ignore_index: padding never counts in the loss


@dataclass
class Pair:
    source: str
    target: str


def iter_lines(paths: Sequence[Path], errors: str = "strict") -> Iterator[tuple[Path, int, str]]:
    """(file, line number, line without its newline) for every line of ``paths``, read in bounded pieces.

    Lines end at ``\n`` (a ``\r`` before it is dropped) and nowhere else: other Unicode line breaks
    (U+2028, form feeds...) are text inside a line, as a tab-separated file means them. A byte-order
    mark at the start of a file (as some editors write) is not text."""
    for path in paths:
        number = 0
        for piece in read_pieces([path], errors):
            text = piece.text.removeprefix("\ufeff") if number == 0 else piece.text
            lines = text.split("\n")
            if lines[-1] == "":  # the piece ends with a newline
                lines.pop()
            for line in lines:
                number += 1
                yield path, number, line.removesuffix("\r")


def read_pairs(paths: Sequence[Path], errors: str = "strict", reverse: bool = False) -> list[Pair]:
    """Every pair in ``paths`` (swapped with ``reverse``); lines without a tab or with an empty side are an
    error that counts them and names the first."""
    pairs: list[Pair] = []
    no_tab: list[tuple[Path, int, str]] = []
    empty: list[tuple[Path, int, str]] = []
    for path, number, line in iter_lines(paths, errors):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            no_tab.append((path, number, line))
            continue
        source, target = cols[0].strip(), cols[1].strip()
        if not source or not target:
            empty.append((path, number, line))
            continue
        pairs.append(Pair(target, source) if reverse else Pair(source, target))
    for bad, what in ((no_tab, "have no tab"), (empty, "have an empty side")):
        if bad:
            path, number, line = bad[0]
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise CorpusError(
                f"{len(bad):,} line(s) of the pairs file {what} (first: {path} line {number}: {shown!r}); "
                "each line must be source<TAB>target"
            )
    if not pairs:
        raise CorpusError(f"no sentence pairs in {', '.join(map(str, paths))}")
    return pairs


def filter_words(pairs: list[Pair], max_words: int) -> list[Pair]:
    """Pairs whose sides both have at most ``max_words`` whitespace-separated words (0 keeps all)."""
    if not max_words:
        return pairs
    return [p for p in pairs if len(p.source.split()) <= max_words and len(p.target.split()) <= max_words]


def split_by_source(pairs: list[Pair], fraction: float, seed: int, lowercase: bool = False) -> np.ndarray:
    """A boolean mask of held-out pairs: about ``fraction`` of the distinct source sentences, drawn from
    ``seed``, with all of their pairs. Sources that read the same to the model (the same words, with
    ``lowercase`` in any case) are one sentence."""
    if fraction <= 0:
        return np.zeros(len(pairs), dtype=bool)
    keys = [" ".join((p.source.lower() if lowercase else p.source).split()) for p in pairs]
    _, group = np.unique(np.array(keys, dtype=object), return_inverse=True)
    groups = int(group.max()) + 1
    chosen = np.random.default_rng([seed, 0x5EED]).permutation(groups)[: max(1, round(fraction * groups))]
    held = np.zeros(groups, dtype=bool)
    held[chosen] = True
    mask = held[group]
    if mask.all():
        raise CorpusError(f"val_fraction {fraction} leaves no pairs to train on ({groups:,} distinct source sentences)")
    return mask


class Ragged:
    """Sentences of token ids stored flat: sentence i is ``ids[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self.ids, self.offsets = ids, offsets
        self.lengths = np.diff(offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def build(cls, sentences: Iterable[Sequence[int]], dtype: type = np.uint32) -> Ragged:
        arrays = [np.asarray(s, dtype=dtype) for s in sentences]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        return cls(np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype), offsets)

    def save(self, folder: Path, name: str) -> Ragged:
        """Write ``name.ids.npy`` and ``name.offsets.npy`` and return them as read-only memmaps."""
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for part, array in (("ids", self.ids), ("offsets", self.offsets)):
            path = folder / f"{name}.{part}.npy"
            atomic_write(path, lambda f, array=array: np.save(f, array))
            out.append(np.load(path, mmap_mode="r", allow_pickle=False))
        return Ragged(*out)


@dataclass
class PairData:
    """Encoded pairs: the training and held-out sentences of each side, and the tokenizers."""

    source_tokenizer: AnyTokenizer
    target_tokenizer: AnyTokenizer
    train_src: Ragged
    train_tgt: Ragged
    heldout: list[Pair]
    heldout_src: Ragged
    heldout_tgt: Ragged
    dropped: int  # pairs removed by the filters

    @property
    def shared(self) -> bool:
        return self.source_tokenizer is self.target_tokenizer


def prepare_pairs(
    cfg: DataConfig,
    paths: Sequence[Path],
    run_dir: Path,
    seed: int,
    tokenizers: tuple[AnyTokenizer, AnyTokenizer] | None = None,
    log: Callable[[str], None] = print,
    write: bool = True,
) -> PairData:
    """Read, filter and split the pairs, build the vocabularies from the training side (unless
    ``tokenizers`` (source, target) are given, as on resume), and encode both splits: into memmaps
    under ``run_dir`` and ``heldout.tsv``, or with ``write`` False (the processes of a torchrun
    other than rank 0) in memory only."""
    pairs = read_pairs(paths, cfg.encoding_errors, cfg.reverse)
    read = len(pairs)
    pairs = filter_words(pairs, cfg.max_words)
    if not pairs:
        raise CorpusError(f"no pairs left after filtering: all {read:,} pairs have a side over {cfg.max_words} words")
    held = split_by_source(pairs, cfg.val_fraction, seed, cfg.lowercase)
    train = [p for p, h in zip(pairs, held) if not h]
    heldout = [p for p, h in zip(pairs, held) if h]
    if tokenizers is None:
        log(f"building {cfg.level} vocabularies from {len(train):,} training pairs")
        build = lambda texts: train_tokenizer(  # noqa: E731
            cfg.level, texts, lowercase=cfg.lowercase, min_freq=cfg.min_freq, vocab_size=cfg.vocab_size
        )
        if cfg.shared_vocab:
            source_tok = target_tok = build(itertools.chain((p.source for p in train), (p.target for p in train)))
        else:
            source_tok, target_tok = build(p.source for p in train), build(p.target for p in train)
    else:
        source_tok, target_tok = tokenizers

    def encode(group: list[Pair]) -> tuple[list[list[int]], list[list[int]], list[Pair]]:
        src = [source_tok.encode(p.source) for p in group]
        tgt = [target_tok.encode(p.target) for p in group]
        limit = cfg.max_tokens
        keep = [
            i for i in range(len(group)) if src[i] and tgt[i] and (not limit or max(len(src[i]), len(tgt[i])) <= limit)
        ]
        return [src[i] for i in keep], [tgt[i] for i in keep], [group[i] for i in keep]

    train_src, train_tgt, train = encode(train)
    held_src, held_tgt, heldout = encode(heldout)
    if not train:
        raise CorpusError(
            f"no pairs left after filtering: {read:,} read, none within max_words {cfg.max_words} and "
            f"max_tokens {cfg.max_tokens}"
        )
    folder = run_dir / "pairs"
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_tsv(run_dir / "heldout.tsv", heldout, swap=cfg.reverse)  # the columns as in the pairs files
        folder.mkdir(exist_ok=True)
        sources, record = file_sources(list(paths)), folder / "sources.json"
        if tokenizers is not None and record.exists() and json.loads(record.read_text()) != sources:
            log("note: the pairs files changed since this run began: its held-out split and batches differ now")
        atomic_write(record, json.dumps(sources, indent=2))

    def store(sentences: list[list[int]], name: str) -> Ragged:
        ragged = Ragged.build(sentences)
        return ragged.save(folder, name) if write else ragged

    return PairData(
        source_tok,
        target_tok,
        store(train_src, "train.source"),
        store(train_tgt, "train.target"),
        heldout,
        store(held_src, "heldout.source"),
        store(held_tgt, "heldout.target"),
        dropped=read - len(train) - len(heldout),
    )


def write_tsv(path: Path, pairs: Sequence[Pair], swap: bool = False) -> None:
    """Write pairs as ``source<TAB>target`` lines (``target<TAB>source`` with ``swap``), atomically."""
    rows = ((p.target, p.source) if swap else (p.source, p.target) for p in pairs)
    atomic_write(path, "".join(f"{a}\t{b}\n" for a, b in rows))


@dataclass
class PairBatch:
    """One padded batch: sources (B, S) with their lengths, decoder inputs and targets (B, T).

    Decoder inputs are the start token then the target; targets are the target then the end
    token; padding is 0 in the inputs and -100 (ignored by the loss) in the targets.
    """

    src: np.ndarray
    src_len: np.ndarray
    tgt_in: np.ndarray
    tgt_out: np.ndarray

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD_TARGET).sum())

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(src, src_len, tgt_in, tgt_out); the lengths stay on the CPU, where packing reads them."""
        src, tgt_in, tgt_out = (to_device(a, device) for a in (self.src, self.tgt_in, self.tgt_out))
        return src, torch.from_numpy(self.src_len), tgt_in, tgt_out

    def share(self, index: int, count: int) -> PairBatch:
        """Share ``index`` of ``count`` near-equal shares of the rows, trimmed to its own longest sentences.

        A share left without rows (in a short last batch) holds one row whose targets are all
        padding: it adds nothing to the loss or the gradients, yet its process still takes part."""
        if count == 1:
            return self
        rows = np.array_split(np.arange(len(self.src)), count)[index]
        empty = len(rows) == 0
        if empty:
            rows = np.arange(1)
        s = int(self.src_len[rows].max())
        t = int((self.tgt_out[rows] != PAD_TARGET).sum(1).max())
        tgt_out = self.tgt_out[rows, :t]
        if empty:
            tgt_out = np.full_like(tgt_out, PAD_TARGET)
        return PairBatch(self.src[rows, :s], self.src_len[rows], self.tgt_in[rows, :t], tgt_out)


def pad_batch(src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], start_id: int, end_id: int) -> PairBatch:
    """Pad a list of (source, target) id arrays into a PairBatch."""
    b = len(src)
    src_len = np.array([len(s) for s in src], dtype=np.int64)
    tgt_len = np.array([len(t) for t in tgt], dtype=np.int64) + 1
    x = np.zeros((b, int(src_len.max())), dtype=np.int64)
    y_in = np.zeros((b, int(tgt_len.max())), dtype=np.int64)
    y_out = np.full((b, int(tgt_len.max())), PAD_TARGET, dtype=np.int64)
    for i, (s, t) in enumerate(zip(src, tgt)):
        x[i, : len(s)] = s
        y_in[i, 0] = start_id
        y_in[i, 1 : len(t) + 1] = t
        y_out[i, : len(t)] = t
        y_out[i, len(t)] = end_id
    return PairBatch(x, src_len, y_in, y_out)


class PairBatches:
    """Batches of B pairs of similar lengths, in an order that depends only on (seed, epoch).

    Each epoch shuffles the pairs, cuts them into chunks of ``bucket`` batches, sorts each chunk by
    source then target length, longest first, and cuts it into batches, then shuffles the batches:
    little padding, a new mix every epoch, and every batch (and every share of one) already in the
    order the encoder packs it. With ``shuffle=False`` (held-out data) the order is fixed: by length.
    """

    stateful = False

    def __init__(
        self,
        src: Ragged,
        tgt: Ragged,
        batch_size: int,
        start_id: int,
        end_id: int,
        seed: int = 0,
        bucket: int = 50,
        shuffle: bool = True,
    ) -> None:
        if len(src) < 1:
            raise CorpusError("no sentence pairs to make batches of")
        self.src, self.tgt, self.batch_size = src, tgt, batch_size
        self.start_id, self.end_id, self.seed, self.bucket, self.shuffle = start_id, end_id, seed, bucket, shuffle
        self.steps_per_epoch = -(-len(src) // batch_size)
        self._order: tuple[int, list[np.ndarray]] | None = None

    def order(self, epoch: int) -> list[np.ndarray]:
        """The pair indices of each batch of ``epoch``."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._draw(epoch))
        return self._order[1]

    def _draw(self, epoch: int) -> list[np.ndarray]:
        n, b = len(self.src), self.batch_size
        if not self.shuffle:
            by_length = np.lexsort((self.tgt.lengths, self.src.lengths))[::-1]
            return [by_length[i : i + b] for i in range(0, n, b)]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n)
        batches: list[np.ndarray] = []
        for c in range(0, n, b * self.bucket):
            chunk = perm[c : c + b * self.bucket]
            chunk = chunk[np.lexsort((self.tgt.lengths[chunk], self.src.lengths[chunk]))[::-1]]
            batches += [chunk[i : i + b] for i in range(0, len(chunk), b)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, epoch: int, step: int) -> PairBatch:
        picks = self.order(epoch)[step]
        return pad_batch([self.src[i] for i in picks], [self.tgt[i] for i in picks], self.start_id, self.end_id)
