"""Find the corpus files, and read them as UTF-8 text in bounded pieces.

A corpus is read piece by piece (never whole), so one larger than memory can be tokenized into a
memmap. Bytes that are not UTF-8 stop the read with the file and byte offset, unless the user
asked for ``replace``.
"""

from __future__ import annotations

import glob
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from textgen.errors import CorpusError

CHUNK_BYTES = 1 << 20
MAX_CARRY = 8 << 20  # a "line" longer than this is cut at whitespace


def default_corpus() -> Path:
    """The bundled Tiny Shakespeare text (public domain; see DATA_SOURCES.md)."""
    return Path(str(resources.files("textgen") / "corpora" / "tinyshakespeare.txt"))


def bundled_corpus(name: str) -> Path:
    return Path(str(resources.files("textgen") / "corpora" / name))


def resolve_paths(specs: list[str], stdin_spool: Path | None = None) -> list[Path]:
    """Expand files, folders (recursively, sorted) and globs; ``-`` spools stdin to a file.

    Stdin is copied to ``stdin_spool`` because the corpus is read twice (vocabulary, then ids).
    """
    if not specs:
        return [default_corpus()]
    paths: list[Path] = []
    for spec in specs:
        if spec == "-":
            if stdin_spool is None:
                raise CorpusError("reading the corpus from stdin ('-') needs a run directory")
            stdin_spool.parent.mkdir(parents=True, exist_ok=True)
            with open(stdin_spool, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f)
            paths.append(stdin_spool)
            continue
        p = Path(spec).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            if not found:
                raise CorpusError(f"corpus folder has no files: {spec}")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(spec):
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file())
            if not found:
                raise CorpusError(f"no files match {spec}")
            paths.extend(found)
        elif p.exists():
            raise CorpusError(f"corpus path is not a regular file or folder: {spec}")
        else:
            raise CorpusError(f"corpus not found: {spec}")
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
    with f:
        offset = 0  # bytes of the file decoded so far
        pending = b""  # bytes of an incomplete UTF-8 sequence at the end of the last chunk
        carry = ""  # text after the last newline, held for the next piece
        while True:
            chunk = f.read(CHUNK_BYTES)
            data = pending + chunk
            if not chunk:
                text = data.decode("utf-8", errors="replace") if data else ""
                if data and errors == "strict":
                    raise CorpusError(
                        f"{path} is not UTF-8: byte 0x{data[0]:02x} at offset {offset} starts a character "
                        "that the file cuts off (use --encoding-errors replace to read it anyway)"
                    )
                yield TextPiece(carry + text, path, True)
                return
            text, used = _decode(data, errors, path, offset, final=False)
            pending = data[used:]
            offset += used
            text = carry + text
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) > MAX_CARRY:
                cut = max(text.rfind(" "), len(text) // 2) + 1
            carry = text[cut:]
            if cut:
                yield TextPiece(text[:cut], path, False)


def _decode(data: bytes, errors: str, path: Path, offset: int, final: bool) -> tuple[str, int]:
    """Decode as much of ``data`` as is complete; return the text and the bytes consumed."""
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError as e:
        # A sequence cut by the chunk boundary is not an error: keep it for the next chunk.
        if not final and e.reason == "unexpected end of data" and e.end == len(data) and len(data) - e.start < 4:
            head, _ = _decode(data[: e.start], errors, path, offset, final=True)
            return head, e.start
        if errors == "strict":
            raise CorpusError(
                f"{path} is not UTF-8: byte 0x{data[e.start]:02x} at offset {offset + e.start} "
                "(use --encoding-errors replace to read it anyway)"
            ) from None
        return data.decode("utf-8", errors="replace"), len(data)


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
