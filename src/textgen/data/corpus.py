"""Find the corpus files, and read them as UTF-8 text in bounded pieces.

A corpus is read piece by piece (never whole), so one larger than memory can be tokenized into a
memmap. Bytes that are not UTF-8 stop the read with the file and byte offset, unless the user
asked for ``replace``.
"""

from __future__ import annotations

import codecs
import glob
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from textgen.errors import CorpusError
from textgen.files import atomic_write

CHUNK_BYTES = 1 << 20
MAX_CARRY = 8 << 20  # a "line" longer than this is cut at whitespace


def bundled_corpus(name: str) -> Path:
    """A corpus shipped in the package (attributions in corpora/SOURCES.md)."""
    return Path(str(resources.files("textgen") / "corpora" / name))


def default_corpus() -> Path:
    """The bundled Tiny Shakespeare text (public domain)."""
    return bundled_corpus("tinyshakespeare.txt")


def resolve_paths(
    specs: list[str], stdin_spool: Path | None = None, reuse_spool: bool = False, what: str = "corpus"
) -> list[Path]:
    """Expand files, folders (recursively, sorted) and globs; ``-`` spools stdin to a file.

    Stdin is copied to ``stdin_spool`` because the corpus is read twice (vocabulary, then ids);
    with ``reuse_spool`` (a resumed run) an existing copy is used and stdin is not read.
    """
    if not specs:
        return [default_corpus()]
    paths: list[Path] = []
    for spec in specs:
        if spec == "-":
            if stdin_spool is None:
                raise CorpusError("reading the corpus from stdin ('-') needs a place to keep a copy")
            if not (reuse_spool and stdin_spool.is_file()):
                atomic_write(stdin_spool, lambda f: shutil.copyfileobj(sys.stdin.buffer, f))
            paths.append(stdin_spool)
            continue
        p = Path(spec).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            if not found:
                raise CorpusError(f"{what} folder has no files: {spec}")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(spec):
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file())
            if not found:
                raise CorpusError(f"no files match {spec}")
            paths.extend(found)
        elif p.exists():
            raise CorpusError(f"{what} path is not a regular file or folder: {spec}")
        else:
            raise CorpusError(f"{what} not found: {spec}")
    return paths


@dataclass
class TextPiece:
    """A run of text that ends at a line boundary (or the end of its file)."""

    text: str
    path: Path
    end_of_file: bool


def read_pieces(paths: list[Path], errors: str = "strict") -> Iterator[TextPiece]:
    """Yield each file's text in pieces of about a megabyte that end at a newline."""
    for path in paths:
        yield from _read_file(path, errors)


def _read_file(path: Path, errors: str) -> Iterator[TextPiece]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the error check
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror}") from None
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    with f:
        offset = 0  # bytes of the file read so far
        carry = ""  # text after the last newline, held for the next piece
        while True:
            chunk = f.read(CHUNK_BYTES)
            try:
                text = carry + decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                # e.object is the decoder's held-back bytes followed by this chunk.
                at = offset - (len(e.object) - len(chunk)) + e.start
                cut_off = "; the file ends inside it" if not chunk else ""
                raise CorpusError(
                    f"{path} is not UTF-8: byte 0x{e.object[e.start]:02x} at offset {at}{cut_off} "
                    "(use --encoding-errors replace to read it anyway)"
                ) from None
            offset += len(chunk)
            if not chunk:
                yield TextPiece(text, path, True)
                return
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) > MAX_CARRY:
                cut = max(text.rfind(" "), len(text) // 2) + 1
            carry = text[cut:]
            if cut:
                yield TextPiece(text[:cut], path, False)


def iter_documents(paths: list[Path], errors: str, records: bool) -> Iterator[Iterator[str]]:
    """Yield one document at a time, each an iterator of text pieces; consume each in turn.

    A document is a file, or with ``records`` a block of lines between blank lines. The caller
    appends the end-of-text token (if its tokenizer has one) after each document.
    """
    if not records:
        for path in paths:
            yield (piece.text for piece in _read_file(path, errors))
        return
    record: list[str] = []
    for piece in read_pieces(paths, errors):
        for line in piece.text.splitlines(keepends=True):
            if line.strip():
                record.append(line)
            elif record:
                yield iter(["".join(record).rstrip("\n")])
                record = []
        if piece.end_of_file and record:
            yield iter(["".join(record).rstrip("\n")])
            record = []
