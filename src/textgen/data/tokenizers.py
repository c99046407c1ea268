"""One Tokenizer interface over characters, words and byte-level BPE; each saves as JSON.

Every tokenizer reserves id 0 for the unknown token. Word and BPE tokenizers also have an
end-of-text token (id 1) that ends documents, records and generations. The char and word
tokenizers are a few lines over a dict, and stay hand-written because HF ``tokenizers`` has no
code-point model and its word-level model drops newlines; BPE is HF ``tokenizers``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from textgen.errors import TextgenError

FORMAT = "textgen-tokenizer"
VERSION = 1
UNK = "<unk>"
EOT = "<eot>"
REPLACEMENT = "\ufffd"  # how the char tokenizer writes an unknown character


class TokenizerError(TextgenError):
    """A tokenizer file is malformed, or text cannot be tokenized as asked."""


class Tokenizer(Protocol):
    """What the rest of textgen needs from a tokenizer."""

    kind: str
    vocab_size: int
    unk_id: int
    eot_id: int | None

    def normalize(self, text: str) -> str:
        """The text as the tokenizer sees it (lowercased if asked)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown pieces become ``unk_id``."""

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of ``ids``; with ``skip_special`` the end-of-text token is left out."""

    def token_text(self, i: int) -> str:
        """A printable form of one token, for tables of probabilities."""

    def unknown_in(self, text: str) -> list[str]:
        """The distinct pieces of ``text`` outside the vocabulary, in order of appearance."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description that ``tokenizer_from_json`` reads back."""


def _unique_in_order(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str) -> None:
    """Refuse text holding a lone surrogate: not Unicode text at all (Python reads a command-line
    argument's bytes that are not UTF-8 as such code points, and JSON can spell them)."""
    found = _SURROGATE.search(text)
    if found:
        raise TokenizerError(
            f"text is not valid Unicode: lone surrogate U+{ord(found.group()):04X} at character {found.start()} "
            "(bytes that are not UTF-8?)"
        )


class CharTokenizer:
    """Unicode code points; id 0 is the unknown character, then the corpus' characters sorted."""

    kind = "char"
    eot_id = None
    unk_id = 0

    def __init__(self, chars: Sequence[str], lowercase: bool = False) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("char tokenizer: vocabulary must be distinct single characters")
        self.chars = list(chars)
        self.lowercase = lowercase
        self.vocab_size = len(self.chars) + 1
        self._index = {c: i + 1 for i, c in enumerate(self.chars)}
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._table = np.zeros(int(codes.max(initial=0)) + 2, dtype=np.int64)  # code point -> id
        self._table[codes] = np.arange(1, len(codes) + 1)
        self._decode = [REPLACEMENT, *self.chars]

    @classmethod
    def train(cls, pieces: Iterable[str], lowercase: bool = False) -> CharTokenizer:
        seen: set[str] = set()
        for text in pieces:
            seen.update(text.lower() if lowercase else text)
        return cls(sorted(seen), lowercase)

    def normalize(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encoding through a code-point lookup table."""
        try:
            raw = self.normalize(text).encode("utf-32-le")
        except UnicodeEncodeError:
            check_text(text)
            raise
        codes = np.frombuffer(raw, dtype=np.uint32).astype(np.int64)
        codes[codes >= len(self._table)] = len(self._table) - 1  # past the table: unknown (last slot is 0)
        return self._table[codes]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return "".join(self._decode[i] for i in ids)

    def token_text(self, i: int) -> str:
        return "<unk>" if i == 0 else self.chars[i - 1]

    def unknown_in(self, text: str) -> list[str]:
        return _unique_in_order(c for c in self.normalize(text) if c not in self._index)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "lowercase": self.lowercase, "chars": "".join(self.chars)}


# Numbers keep their inner separators (3.5, 1,000, 10:30, 1/2); words keep combining marks, inner
# apostrophes and hyphens (don't, well-known); every other non-space character is a token of its
# own, with its marks and any zero-width-joined emoji; each newline is a token.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f\ufe00-\ufe0f\U0001f3fb-\U0001f3ff"
_NUMBER = r"\d+(?:[.,:/]\d+)+"
_WORD = rf"(?:\w[{_MARKS}]*)+(?:['’-](?:\w[{_MARKS}]*)+)*"
_OTHER = rf"[^\w\s][{_MARKS}]*(?:\u200d[^\w\s][{_MARKS}]*)*"
_TOKEN = re.compile(rf"\n|{_NUMBER}|{_WORD}|{_OTHER}")
_NO_SPACE_BEFORE = set(".,;:!?)]}%…»”’") | {"\n"}
_NO_SPACE_AFTER = set("([{¿¡«“$#") | {"\n"}
_QUOTES = {'"', "'"}  # straight quotes open and close in turn
_JOINS_PREVIOUS = re.compile(rf"[{_MARKS}\u200d]")  # a token starting so would merge into one before it


_SPACED_TOKEN = re.compile(r"\n|[^\s]+")


class WordTokenizer:
    """Words, punctuation marks and newlines; spaces are implied and restored by simple rules.

    Decoding puts one space between tokens except before closing punctuation and after opening
    punctuation, so ``decode(encode(t)) == t`` for text spaced that way and other spacing is
    normalised.

    ``spaced``: the text is already tokenized (WikiText, Penn Treebank: tokens between spaces,
    markup such as ``<unk>`` or ``@-@``): every run of non-space characters is one token, kept whole,
    and decoding puts one space between tokens (none next to a newline). A corpus's own ``<unk>``
    is then this tokenizer's unknown token.
    """

    kind = "word"
    unk_id = 0
    eot_id = 1

    def __init__(self, words: Sequence[str], lowercase: bool = False, min_freq: int = 1, spaced: bool = False) -> None:
        if list(words[:2]) != [UNK, EOT] or len(set(words)) != len(words):
            raise TokenizerError("word tokenizer: vocabulary must start with <unk>, <eot> and be distinct")
        self.words = list(words)
        self.lowercase = lowercase
        self.min_freq = min_freq
        self.spaced = spaced
        self.vocab_size = len(self.words)
        self._index = {w: i for i, w in enumerate(self.words)}

    def split(self, text: str) -> list[str]:
        return (_SPACED_TOKEN if self.spaced else _TOKEN).findall(text)

    @classmethod
    def train(
        cls, pieces: Iterable[str], lowercase: bool = False, min_freq: int = 1, spaced: bool = False
    ) -> WordTokenizer:
        counts: Counter[str] = Counter()
        find = (_SPACED_TOKEN if spaced else _TOKEN).findall
        for text in pieces:
            counts.update(find(text.lower() if lowercase else text))
        words = sorted(
            (w for w, n in counts.items() if n >= min_freq and w not in (UNK, EOT)), key=lambda w: (-counts[w], w)
        )
        return cls([UNK, EOT, *words], lowercase, min_freq, spaced)

    def normalize(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def encode(self, text: str) -> list[int]:
        check_text(text)
        get = self._index.get
        return [get(w, 0) for w in self.split(self.normalize(text))]

    def open_quotes(self, ids: Sequence[int], start: frozenset[str] = frozenset()) -> frozenset[str]:
        """The straight quotes left open after ``ids`` (each quote mark opens and closes in turn)."""
        state = set(start)
        for i in ids:
            if self.words[i] in _QUOTES:
                state ^= {self.words[i]}
        return frozenset(state)

    def decode(self, ids: Sequence[int], skip_special: bool = False, quotes: frozenset[str] = frozenset()) -> str:
        """Words joined by the spacing rules; ``quotes`` are the quotes already open before ``ids``."""
        if self.spaced:
            words = [self.words[i] for i in ids if not (skip_special and i == self.eot_id)]
            return " ".join(words).replace(" \n ", "\n").replace(" \n", "\n").replace("\n ", "\n")
        out: list[str] = []
        prev = "\n"
        open_quotes = set(quotes)  # straight quotes seen an odd number of times
        for i in ids:
            if skip_special and i == self.eot_id:
                continue
            w = self.words[i]
            closing = w in _QUOTES and w in open_quotes
            attach = w[0] in _NO_SPACE_BEFORE or closing or prev[-1] in _NO_SPACE_AFTER or prev in open_quotes
            attach = attach and not _JOINS_PREVIOUS.match(w)  # (a lone mark, as in "( \u0301")
            if out and not attach:
                out.append(" ")
            out.append(w)
            if w in _QUOTES:
                open_quotes ^= {w}
            prev = w
        return "".join(out)

    def token_text(self, i: int) -> str:
        return self.words[i]

    def unknown_in(self, text: str) -> list[str]:
        return _unique_in_order(w for w in self.split(self.normalize(text)) if w not in self._index)

    def to_json(self) -> dict[str, Any]:
        d = {"kind": self.kind, "lowercase": self.lowercase, "min_freq": self.min_freq, "words": self.words}
        return {**d, "spaced": True} if self.spaced else d


class BPETokenizer:
    """Byte-level BPE trained with HF ``tokenizers``: any text round-trips exactly."""

    kind = "bpe"
    unk_id = 0
    eot_id = 1

    def __init__(self, hf: Any, lowercase: bool = False) -> None:
        if hf.token_to_id(UNK) != 0 or hf.token_to_id(EOT) != 1:
            raise TokenizerError("bpe tokenizer: <unk> and <eot> must be ids 0 and 1")
        hf.encode_special_tokens = True  # "<eot>" typed in a text is text, not the token
        self.hf = hf
        self.lowercase = lowercase
        self.vocab_size = hf.get_vocab_size()

    @staticmethod
    def pipeline(model: Any, lowercase: bool) -> Any:
        """An HF tokenizer around a BPE ``model``, with textgen's fixed normalizer, byte-level
        pre-tokenizer and decoder (the same for training and for loading)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, normalizers, pre_tokenizers

        hf = HFTokenizer(model)
        if lowercase:
            hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        return hf

    @classmethod
    def train(cls, pieces: Iterable[str], vocab_size: int, lowercase: bool = False) -> BPETokenizer:
        from tokenizers import models, pre_tokenizers, trainers

        hf = cls.pipeline(models.BPE(unk_token=UNK), lowercase)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[UNK, EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(pieces, trainer)
        return cls(hf, lowercase)

    def normalize(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def encode(self, text: str) -> list[int]:
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        except TypeError:  # the library's error for a lone surrogate
            check_text(text)
            raise

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, i: int) -> str:
        return self.hf.decode([i], skip_special_tokens=False)

    def unknown_in(self, text: str) -> list[str]:
        return []  # every byte is in the vocabulary

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "lowercase": self.lowercase, "hf": json.loads(self.hf.to_str())}


AnyTokenizer = CharTokenizer | WordTokenizer | BPETokenizer


def train_tokenizer(
    level: str,
    pieces: Iterable[str],
    *,
    lowercase: bool = False,
    min_freq: int = 1,
    vocab_size: int = 2000,
    spaced: bool = False,
) -> AnyTokenizer:
    """Build the vocabulary of ``level`` from an iterable of text pieces (``spaced``: see WordTokenizer)."""
    if level == "char":
        return CharTokenizer.train(pieces, lowercase)
    if level == "word":
        return WordTokenizer.train(pieces, lowercase, min_freq, spaced)
    if level == "bpe":
        return BPETokenizer.train(pieces, vocab_size, lowercase)
    raise TokenizerError(f"unknown tokenizer level {level!r}")


def tokenizer_to_json(tok: AnyTokenizer) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, **tok.to_json()}


def tokenizer_from_json(d: Any) -> AnyTokenizer:
    """Read a tokenizer description, checking its schema (it may come from anyone)."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise TokenizerError("not a textgen tokenizer file")
    if d.get("version") != VERSION:
        raise TokenizerError(f"tokenizer format version {d.get('version')!r} is not supported (expected {VERSION})")
    kind, lowercase = d.get("kind"), d.get("lowercase", False)
    if not isinstance(lowercase, bool):
        raise TokenizerError("tokenizer file: 'lowercase' must be true or false")
    if kind == "char":
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise TokenizerError("tokenizer file: 'chars' must be a string")
        return CharTokenizer(list(chars), lowercase)
    if kind == "word":
        words, min_freq, spaced = d.get("words"), d.get("min_freq", 1), d.get("spaced", False)
        if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
            raise TokenizerError("tokenizer file: 'words' must be a list of non-empty strings")
        if not isinstance(min_freq, int):
            raise TokenizerError("tokenizer file: 'min_freq' must be an integer")
        if not isinstance(spaced, bool):
            raise TokenizerError("tokenizer file: 'spaced' must be true or false")
        return WordTokenizer(words, lowercase, min_freq, spaced)
    if kind == "bpe":
        return _bpe_from_json(d.get("hf"), lowercase)
    raise TokenizerError(f"tokenizer file: unknown kind {kind!r}")


def _bad_bpe(why: str) -> TokenizerError:
    return TokenizerError(f"tokenizer file: invalid BPE tokenizer ({why})")


def _bpe_from_json(hf_json: Any, lowercase: bool) -> BPETokenizer:
    """Rebuild a BPE tokenizer from the vocabulary and merges of its HF description only.

    The rest of an HF tokenizer file (normalizers, truncation, padding, post-processors...) is
    configuration that a crafted file could use to crash the library (a panic, or an allocation
    that aborts the process) or to change tokens silently; textgen's pipeline is fixed, so those
    parts are ignored.
    """
    from tokenizers import AddedToken, models

    model = hf_json.get("model") if isinstance(hf_json, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise _bad_bpe("'hf' must describe an HF BPE model")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise _bad_bpe("the vocabulary must map tokens to integer ids")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise _bad_bpe("the vocabulary's ids must be 0, 1, 2... each once")
    if vocab.get(UNK) != 0 or vocab.get(EOT) != 1:
        raise TokenizerError("bpe tokenizer: <unk> and <eot> must be ids 0 and 1")
    if not isinstance(merges, list):
        raise _bad_bpe("the merges must be a list")
    pairs = []
    for m in merges:  # ["a", "b"], or "a b" in files from older versions of the library
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t in vocab for t in pair)):
            raise _bad_bpe(f"merge {str(m)[:40]!r} is not two tokens of the vocabulary")
        pairs.append(tuple(pair))
    try:
        hf = BPETokenizer.pipeline(models.BPE(vocab=vocab, merges=pairs, unk_token=UNK), lowercase)
    except Exception as e:  # the library raises plain Exceptions for an inconsistent model
        raise _bad_bpe(str(e).splitlines()[0]) from None
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, EOT)])
    return BPETokenizer(hf, lowercase)


_PUNCTUATION = re.compile(r"[,.;:!?()\"]")
_MARKUP = re.compile(r"(?:^|\s)(?:<unk>|<UNK>|@-@|@,@|@\.@)(?=\s|$)")


def looks_pretokenized(sample: str) -> bool:
    """Whether ``sample`` reads as already tokenized text: markup tokens such as ``<unk>`` or ``@-@``
    standing between spaces, or nearly every punctuation mark standing alone between spaces (as in
    WikiText and the Penn Treebank, and unlike ordinary prose, where marks cling to the word before)."""
    if len(_MARKUP.findall(sample)) >= 3:
        return True
    marks = [m.start() for m in _PUNCTUATION.finditer(sample)]
    if len(marks) < 20:
        return False
    alone = sum(
        1 for i in marks if (i == 0 or sample[i - 1].isspace()) and (i + 1 == len(sample) or sample[i + 1].isspace())
    )
    return alone >= 0.9 * len(marks)
