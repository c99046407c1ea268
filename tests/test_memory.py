"""Memory: training reads a corpus through its memmap (the ids are never all in memory), and
streaming generation takes the same memory for N tokens as for 10 N."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from textgen.api import TextGenerator
from textgen.checkpoint import Checkpoint
from textgen.config import ModelSpec, RunConfig
from textgen.data.tokenizers import CharTokenizer
from textgen.models.lm import RecurrentLM

TRAIN = [
    "--max-steps", "2", "--eval-batches", "1", "--val-fraction", "0.01", "--sample-length", "0", "--no-tensorboard",
    "--hidden-size", "16", "--embedding-dim", "8", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
]  # fmt: skip


def write_corpus(path: Path, chars: int) -> None:
    """Random lines of 30 characters, written without ever holding them as Python text."""
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz .,;'", dtype=np.uint8)
    with open(path, "wb") as f:
        for start in range(0, chars, 1 << 22):
            n = min(1 << 22, chars - start)
            block = alphabet[rng.integers(0, len(alphabet), n)]
            block[30::31] = ord("\n")
            f.write(block.tobytes())


def peak_rss_mb(argv: list[str], log: Path) -> float:
    """Run ``textgen ARGV`` in a subprocess; its own peak resident memory (wait4's rusage), in MB."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "textgen", *argv], stdout=out, stderr=out, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
    assert proc.returncode == 0, log.read_text()[-2000:]
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def test_training_reads_the_corpus_through_the_memmap(tmp_path):
    # 9 million tokens: as int64 ids they would take 69 MB. The run reads them from a uint16 memmap
    # (17 MB on disk, of which training touches a few pages), so its peak memory exceeds that of a
    # run on a corpus 6 times smaller (but as large as the pieces the corpus is read in) by far less
    # than an int64 copy of the difference would add.
    small, big = 1_500_000, 9_000_000
    write_corpus(tmp_path / "small.txt", small)
    write_corpus(tmp_path / "big.txt", big)
    base = peak_rss_mb(
        ["train", "--corpus", str(tmp_path / "small.txt"), "--out", str(tmp_path / "s"), *TRAIN], tmp_path / "s.log"
    )
    peak = peak_rss_mb(
        ["train", "--corpus", str(tmp_path / "big.txt"), "--out", str(tmp_path / "b"), *TRAIN], tmp_path / "b.log"
    )
    assert (tmp_path / "b" / "tokens.bin").stat().st_size == 2 * big  # uint16 ids: the vocabulary is tiny
    grown, int64_ids = peak - base, 8 * (big - small) / 2**20
    print(f"\npeak RSS {base:.0f} MB for {small:,} tokens, {peak:.0f} MB for {big:,} tokens ({grown:+.1f} MB); "
          f"int64 ids of the difference: {int64_ids:.0f} MB")  # fmt: skip
    assert grown < int64_ids / 8  # under one byte per extra token (was 24 bytes a window)


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in this process (views counted once)."""
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":  # (type(): no lazy module wakes)
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def stream_memory(gen: TextGenerator, tokens: int, **settings: object) -> tuple[int, int]:
    """(Python heap peak above the start, bytes of live tensors near the end) while streaming
    ``tokens`` tokens, each piece dropped as a caller printing them would."""
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    tensors = -1
    for i, _ in enumerate(gen.stream("ab", max_new_tokens=tokens, seed=0, **settings)):
        if i == tokens - 2:
            tensors = live_tensor_bytes()
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    return peak, tensors


def test_streaming_memory_does_not_grow_with_the_output(tmp_path):
    tok = CharTokenizer(list("abcdefgh \n"))
    torch.manual_seed(0)
    model = RecurrentLM(ModelSpec(vocab_size=tok.vocab_size, hidden_size=16, embedding_dim=8)).eval()
    gen = TextGenerator(Checkpoint(tmp_path, model, RunConfig(), tok, {}))
    n = 1000
    heap_n, tensors_n = stream_memory(gen, n)
    heap_10n, tensors_10n = stream_memory(gen, 10 * n)
    print(f"\nstreaming {n:,} / {10 * n:,} tokens: Python heap peak {heap_n:,} / {heap_10n:,} bytes, "
          f"live tensors {tensors_n:,} / {tensors_10n:,} bytes")  # fmt: skip
    assert tensors_n == tensors_10n  # nothing sized by the output (no token buffer without penalties)
    assert heap_10n - heap_n < 2048  # nothing kept per token (was 8 bytes a token or more)


def test_evaluation_reads_the_corpus_through_a_memmap(tmp_path, monkeypatch):
    # As training does: the ids go to a file as they are encoded, then are scored through a memmap.
    # (They were all kept as int64 arrays, then concatenated: 16 bytes a token at the peak.)
    from textgen.data import corpus
    from textgen.inference.scoring import evaluate_files

    monkeypatch.setattr(corpus, "CHUNK_BYTES", 1 << 15)  # read in small pieces: their buffers are small (32 B a char)
    n = 2_000_000
    write_corpus(tmp_path / "c.txt", n)
    tok = CharTokenizer(sorted(set("abcdefghijklmnopqrstuvwxyz .,;'\n")))
    torch.manual_seed(0)
    model = RecurrentLM(ModelSpec(vocab_size=tok.vocab_size, hidden_size=8, embedding_dim=4)).eval()
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    result = evaluate_files(model, tok, [tmp_path / "c.txt"], batch_size=64, seq_len=256)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    print(f"\nevaluating {n:,} tokens: Python heap (numpy included) peak {peak / 2**20:.1f} MB")
    assert result.tokens == n - 1 and result.unknown_tokens == 0
    assert peak < n  # under a byte per token
