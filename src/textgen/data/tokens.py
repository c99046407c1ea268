"""Encode a corpus once into a token-id memmap beside the run, and split it for validation.

The ids live in ``tokens.bin`` (uint16, or uint32 for vocabularies over 65,535) with
``tokens.json`` describing it; training reads them through ``np.memmap``, so a corpus larger
than memory trains. A later run (or ``--resume``) reuses the file while the sources are unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from textgen.config import DataConfig
from textgen.data.corpus import iter_documents, read_pieces
from textgen.data.tokenizers import (
    AnyTokenizer,
    looks_pretokenized,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
)
from textgen.errors import CorpusError, TextgenError
from textgen.files import atomic_write


@dataclass
class TokenData:
    """All token ids of a corpus, split into a training head and a validation tail."""

    ids: np.ndarray  # (N,) memmap
    split: int
    chars: int  # characters of the whole corpus as the tokenizer saw it
    val_chars: int

    @property
    def train(self) -> np.ndarray:
        return self.ids[: self.split]

    @property
    def val(self) -> np.ndarray:
        return self.ids[self.split :]


def file_sources(paths: list[Path]) -> list[dict[str, object]]:
    """Each file's absolute path, size and modification time: what tells a changed corpus."""
    out = []
    for p in paths:
        st = p.stat()
        out.append({"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _fingerprint(tok: AnyTokenizer) -> str:
    return hashlib.sha256(json.dumps(tokenizer_to_json(tok), sort_keys=True).encode()).hexdigest()


def documents(paths: list[Path], errors: str, records: bool, prefix: str = "") -> Iterator[Iterator[str]]:
    """The corpus's documents as text pieces; with ``records``, each record begins with ``prefix``."""
    for doc in iter_documents(paths, errors, records):
        yield itertools.chain([prefix], doc) if records and prefix else doc


def encode_documents(
    tok: AnyTokenizer, paths: list[Path], records: bool, errors: str = "strict", prefix: str = ""
) -> Iterator[tuple[np.ndarray, int]]:
    """(ids, characters) for each piece of the corpus, each document followed by end-of-text.

    A char tokenizer has no end-of-text token, so its records stay separated by a blank line.
    """
    encode = getattr(tok, "encode_array", None) or (lambda text: np.asarray(tok.encode(text), dtype=np.int64))
    if tok.eot_id is not None:
        end = np.array([tok.eot_id], dtype=np.int64), 0
    else:
        end = (encode("\n\n"), 2) if records else None
    for doc in documents(paths, errors, records, prefix):
        for text in doc:
            if text:
                yield encode(text), len(tok.normalize(text))
        if end is not None:
            yield end


def prepare_tokens(
    cfg: DataConfig,
    paths: list[Path],
    run_dir: Path,
    tokenizer: AnyTokenizer | None = None,
    log: Callable[[str], None] = print,
    readonly: bool = False,
    val_paths: list[Path] | None = None,
) -> tuple[AnyTokenizer, TokenData]:
    """Tokenize ``paths`` into ``run_dir/tokens.bin`` (or reuse it) and split off validation: the
    last ``val_fraction`` of the tokens, or with ``val_paths`` those files, encoded after the corpus.

    Builds the vocabulary (from the training files only) first when no ``tokenizer`` is given.
    ``readonly`` (the processes of a torchrun other than rank 0) only reads what rank 0 wrote with
    the same tokenizer.
    """
    val_paths = list(val_paths or [])
    if not readonly:
        run_dir.mkdir(parents=True, exist_ok=True)
    if all(p.stat().st_size == 0 for p in paths):
        raise CorpusError(f"corpus is empty: {', '.join(map(str, paths))}")
    bin_path, meta_path = run_dir / "tokens.bin", run_dir / "tokens.json"
    built_from = _vocabulary_inputs(cfg, paths)
    if tokenizer is None:
        tokenizer = _reused_vocabulary(meta_path, built_from, log) or _build_vocabulary(cfg, paths, log)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    meta = {
        "sources": file_sources(paths),
        "val_sources": file_sources(val_paths),
        "tokenizer": _fingerprint(tokenizer),
        "records": cfg.records,
        "record_prefix": cfg.record_prefix if cfg.records else "",
        "encoding_errors": cfg.encoding_errors,
        "dtype": np.dtype(dtype).name,
    }
    old = _read_meta(meta_path)
    if (
        old is not None
        and all(old.get(k) == v for k, v in meta.items())
        and bin_path.exists()
        and bin_path.stat().st_size == old["count"] * np.dtype(dtype).itemsize
    ):
        count, chars, train_count = old["count"], old["chars"], old.get("train_count", old["count"])
    elif readonly:
        raise CorpusError(f"{bin_path} does not match the corpus and tokenizer: was the corpus changed meanwhile?")
    else:
        if old is not None:
            log(f"the corpus or its settings changed since {bin_path} was written: encoding it again")
        (train_count, train_chars), (val_count, val_chars_) = _write_ids(
            tokenizer, [paths, val_paths], cfg, bin_path, dtype
        )
        count, chars = train_count + val_count, train_chars + val_chars_
        summary = {"count": count, "chars": chars, "train_count": train_count}
        summary.update(vocabulary_from=built_from, vocabulary=tokenizer_to_json(tokenizer))
        atomic_write(meta_path, json.dumps({**meta, **summary}, indent=2))
    if count == 0:
        raise CorpusError(f"corpus is empty: {', '.join(map(str, paths))}")
    if val_paths and train_count == count:
        raise CorpusError(f"the validation corpus is empty: {', '.join(map(str, val_paths))}")
    ids = np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))
    split = train_count if val_paths else count - int(count * cfg.val_fraction)
    cached = _read_meta(meta_path) or {}
    val_chars = cached.get("val_chars", {}).get(str(split))  # decoding the split is slow for big corpora
    if val_chars is None:
        val_chars = _count_chars(tokenizer, ids[split:]) if split < count else 0
        if readonly:
            return tokenizer, TokenData(ids=ids, split=split, chars=chars, val_chars=val_chars)
        cached.setdefault("val_chars", {})[str(split)] = val_chars
        atomic_write(meta_path, json.dumps(cached, indent=2))
    return tokenizer, TokenData(ids=ids, split=split, chars=chars, val_chars=val_chars)


def _build_vocabulary(cfg: DataConfig, paths: list[Path], log: Callable[[str], None]) -> AnyTokenizer:
    log(f"building a {cfg.level} vocabulary from {len(paths)} file(s)")
    if cfg.records:
        # The blank line is the char tokenizer's record separator, so it belongs in the vocabulary.
        docs = documents(paths, cfg.encoding_errors, True, cfg.record_prefix)
        pieces: Iterator[str] = itertools.chain((t for doc in docs for t in doc), ["\n\n"])
    else:
        pieces = (p.text for p in read_pieces(paths, cfg.encoding_errors))
    spaced = cfg.level == "word" and pretokenized(cfg, paths, log)
    return train_tokenizer(
        cfg.level, pieces, lowercase=cfg.lowercase, min_freq=cfg.min_freq, vocab_size=cfg.vocab_size, spaced=spaced
    )


def _vocabulary_inputs(cfg: DataConfig, paths: list[Path]) -> dict[str, object]:
    """Everything a built vocabulary depends on: the files as they are now and the settings that shape it."""
    keys = (
        "level",
        "lowercase",
        "min_freq",
        "vocab_size",
        "records",
        "record_prefix",
        "pretokenized",
        "encoding_errors",
    )
    return {"sources": file_sources(paths), **{k: getattr(cfg, k) for k in keys}}


def _reused_vocabulary(
    meta_path: Path, built_from: dict[str, object], log: Callable[[str], None]
) -> AnyTokenizer | None:
    """The vocabulary built last time into this run directory from the same files and settings (the recipe
    builds it to count the corpus, then training asks again), or None. JSON, checked as any tokenizer file."""
    old = _read_meta(meta_path)
    if old is None or old.get("vocabulary_from") != built_from:
        return None
    try:
        tokenizer = tokenizer_from_json(old.get("vocabulary"))
    except TextgenError:
        return None
    log(f"reusing the {tokenizer.kind} vocabulary built from the same files ({meta_path})")
    return tokenizer


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_ids(
    tok: AnyTokenizer, groups: list[list[Path]], cfg: DataConfig, bin_path: Path, dtype: type
) -> list[tuple[int, int]]:
    """Stream each group of files, encoded, one after another to ``bin_path`` (atomically); return each
    group's token and character counts."""
    counts = [[0, 0] for _ in groups]

    def write(f: BinaryIO) -> None:
        for paths, total in zip(groups, counts):
            if not paths:
                continue
            for ids, n_chars in encode_documents(tok, paths, cfg.records, cfg.encoding_errors, cfg.record_prefix):
                f.write(ids.astype(dtype).tobytes())
                total[0] += len(ids)
                total[1] += n_chars

    atomic_write(bin_path, write)
    return [(c, n) for c, n in counts]


def pretokenized(cfg: DataConfig, paths: list[Path], log: Callable[[str], None]) -> bool:
    """Whether the word tokenizer keeps space-separated tokens whole: as set, or (auto) when the corpus's
    first megabyte reads as already tokenized text (see ``looks_pretokenized``)."""
    if cfg.pretokenized != "auto":
        return cfg.pretokenized == "yes"
    sample, size = [], 0
    for piece in read_pieces(paths, cfg.encoding_errors):
        sample.append(piece.text)
        size += len(piece.text)
        if size >= 1 << 20:
            break
    found = looks_pretokenized("".join(sample))
    if found:
        log("the text looks already tokenized (tokens between spaces): each is kept whole (--pretokenized no: not)")
    return found


def _count_chars(tok: AnyTokenizer, ids: np.ndarray, chunk: int = 1 << 20) -> int:
    """Characters of the text that ``ids`` decode to, without the end-of-text tokens."""
    if tok.kind == "char":
        return len(ids)
    return sum(len(tok.decode(ids[i : i + chunk].tolist(), skip_special=True)) for i in range(0, len(ids), chunk))
