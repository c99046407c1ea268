"""Corpus reading, UTF-8 errors with offsets, the token memmap, and batch layouts."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from textgen.config import DataConfig
from textgen.data import corpus
from textgen.data.batches import ShuffledWindows, StatefulStreams, eval_chunks, shuffle_buffer_order
from textgen.data.corpus import read_pieces, resolve_paths
from textgen.data.tokens import prepare_tokens
from textgen.errors import CorpusError


def test_resolve_files_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.txt", "a/2.txt", "b.txt", "c.md"):
        (tmp_path / name).write_text(name)
    (tmp_path / "a" / ".hidden").write_text("x")
    got = resolve_paths([str(tmp_path / "a"), str(tmp_path / "*.txt"), str(tmp_path / "c.md")])
    assert [p.name for p in got] == ["1.txt", "2.txt", "b.txt", "c.md"]
    with pytest.raises(CorpusError, match="corpus not found: .*missing.txt"):
        resolve_paths([str(tmp_path / "missing.txt")])
    with pytest.raises(CorpusError, match="no files match"):
        resolve_paths([str(tmp_path / "*.none")])


def test_default_corpus_is_bundled_tiny_shakespeare():
    (path,) = resolve_paths([])
    assert path.name == "tinyshakespeare.txt" and path.stat().st_size == 1115394


def test_non_utf8_names_file_and_byte_offset(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("héllo\n".encode() + b"ok \xff more")
    with pytest.raises(CorpusError, match=r"bad.txt is not UTF-8: byte 0xff at offset 10"):
        list(read_pieces([p]))
    text = "".join(piece.text for piece in read_pieces([p], errors="replace"))
    assert text == "héllo\nok \ufffd more"


def test_multibyte_character_split_across_chunks_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 3)
    text = "aé€🙂\nb東京\n" * 3
    p = tmp_path / "u.txt"
    p.write_text(text, encoding="utf-8")
    pieces = list(read_pieces([p]))
    assert "".join(x.text for x in pieces) == text
    assert all(x.text.endswith("\n") for x in pieces[:-1])
    p.write_bytes(text.encode()[:-2])  # cut inside the last character of the file
    with pytest.raises(CorpusError, match="byte 0xe4 at offset 53; the file ends inside it"):
        list(read_pieces([p]))


def test_replace_mode_keeps_characters_split_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 8)
    p = tmp_path / "mixed.txt"
    p.write_bytes(b"a\xffbcdef\xc3\xa9gh\n")  # a bad byte, then an é across the 8-byte boundary
    assert "".join(x.text for x in read_pieces([p], errors="replace")) == "a\ufffdbcdef\u00e9gh\n"
    with pytest.raises(CorpusError, match="byte 0xff at offset 1 "):
        list(read_pieces([p]))


def test_prepare_tokens_writes_a_memmap_split_90_10_and_reuses_it(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("abcdefghij" * 100)
    tok, data = prepare_tokens(DataConfig(), [src], tmp_path / "run", log=lambda s: None)
    assert isinstance(data.ids, np.memmap) and data.ids.dtype == np.uint16
    assert len(data.ids) == 1000 and data.split == 900 and len(data.val) == 100
    assert tok.decode(data.ids[:10].tolist()) == "abcdefghij"
    stamp = (tmp_path / "run" / "tokens.bin").stat().st_mtime_ns
    prepare_tokens(DataConfig(), [src], tmp_path / "run", tok, log=lambda s: None)
    assert (tmp_path / "run" / "tokens.bin").stat().st_mtime_ns == stamp  # reused, not rewritten
    src.write_text("abcdefghij" * 50)
    _, data = prepare_tokens(DataConfig(), [src], tmp_path / "run", tok, log=lambda s: None)
    assert len(data.ids) == 500  # the source changed: re-encoded


def test_a_vocabulary_is_built_once_per_run_directory_while_its_files_and_settings_stay(tmp_path, monkeypatch):
    """The recipe builds the vocabulary to count the corpus and training asks again: the second call reuses it."""
    from textgen.data import tokens

    src = tmp_path / "c.txt"
    src.write_text("the cat sat on the mat with the hat\n" * 200)
    built = []
    real = tokens.train_tokenizer
    monkeypatch.setattr(tokens, "train_tokenizer", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    cfg, said = DataConfig(level="bpe", vocab_size=300), []
    tok, data = prepare_tokens(cfg, [src], tmp_path / "run", log=said.append)
    again, same = prepare_tokens(cfg, [src], tmp_path / "run", log=said.append)
    assert built == ["bpe"] and "reusing the bpe vocabulary" in said[-1]
    assert again.encode("the cat") == tok.encode("the cat") and np.array_equal(same.ids, data.ids)
    prepare_tokens(DataConfig(level="bpe", vocab_size=290), [src], tmp_path / "run", log=said.append)
    assert built == ["bpe", "bpe"]  # another setting: built again
    src.write_text("a dog\n" * 300)
    retrained, _ = prepare_tokens(DataConfig(level="bpe", vocab_size=290), [src], tmp_path / "run", log=said.append)
    assert built == ["bpe"] * 3 and retrained.decode(retrained.encode("a dog")) == "a dog"  # the file changed


def test_records_end_with_end_of_text(tmp_path):
    src = tmp_path / "r.txt"
    src.write_text("pie\napple\n\n\ncake\nflour\n\n")
    cfg = DataConfig(level="word", records=True, val_fraction=0.0)
    tok, data = prepare_tokens(cfg, [src], tmp_path / "run", log=lambda s: None)
    words = [tok.token_text(i) for i in data.ids]
    assert words == ["pie", "\n", "apple", "<eot>", "cake", "\n", "flour", "<eot>"]


def test_char_records_stay_separated_by_a_blank_line(tmp_path):
    src = tmp_path / "r.txt"
    src.write_text("pie\n\n\n\ncake\n")
    tok, data = prepare_tokens(DataConfig(records=True, val_fraction=0.0), [src], tmp_path / "run", log=print)
    assert tok.decode(data.ids.tolist()) == "pie\n\ncake\n\n"


def test_stdin_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from stdin " * 20)))
    (path,) = resolve_paths(["-"], tmp_path / "run" / "stdin.txt")
    tok, data = prepare_tokens(DataConfig(), [path], tmp_path / "run", log=lambda s: None)
    assert len(data.ids) == 220 and path == tmp_path / "run" / "stdin.txt"


def test_empty_corpus_is_refused(tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(CorpusError, match="corpus is empty"):
        prepare_tokens(DataConfig(), [tmp_path / "e.txt"], tmp_path / "run", log=lambda s: None)


def test_stateful_batch_k_plus_1_continues_batch_k_in_every_row():
    ids = np.arange(1000)
    s = StatefulStreams(ids, batch_size=4, seq_len=7)
    assert s.steps_per_epoch == 36  # 249 targets per stream: 35 chunks of 7 and one of 4
    xs, ys = zip(*(s.batch(0, k) for k in range(s.steps_per_epoch)))
    assert xs[-1].shape == (4, 4)
    rows = np.concatenate(xs, axis=1)  # (B, 249)
    for b in range(4):
        assert np.array_equal(rows[b], np.arange(b * 250, b * 250 + 249))  # contiguous, nothing left out
    for x, y in zip(xs, ys):
        assert np.array_equal(y, x + 1)  # next-token targets
    for k in range(len(xs) - 1):
        assert np.array_equal(xs[k + 1][:, 0], ys[k][:, -1])  # batch k+1 picks up where k stopped


def test_shuffled_windows_cover_each_window_once_per_epoch_in_a_seeded_order():
    ids = np.arange(1010)
    w = ShuffledWindows(ids, batch_size=5, seq_len=9, buffer=4, seed=3)
    assert len(w.starts()) == 101 and w.steps_per_epoch == 20
    firsts = []
    for k in range(w.steps_per_epoch):
        x, y = w.batch(0, k)
        assert x.shape == (5, 9) and np.array_equal(y, x + 1)
        assert np.all(x[:, 0] % 10 == 0)  # windows of 10 tokens start every 10
        firsts += list(x[:, 0] // 10)
    assert len(set(firsts)) == 100  # every window at most once (the last one is dropped with the remainder)
    again = ShuffledWindows(ids, batch_size=5, seq_len=9, buffer=4, seed=3)
    assert np.array_equal(again.order(0), w.order(0))
    assert not np.array_equal(w.order(0), w.order(1))


def test_shuffle_buffer_semantics():
    rng = np.random.default_rng(0)
    assert np.array_equal(shuffle_buffer_order(50, 1, rng), np.arange(50))  # a buffer of one does not shuffle
    order = shuffle_buffer_order(1000, 10, rng)
    assert sorted(order) == list(range(1000))
    # Item i enters the buffer only after i - 10 items have left it.
    assert all(pos >= item - 10 + 1 or item < 10 for pos, item in enumerate(order))
    # A buffer as large as the data gives a uniform permutation: chi-square on the first position.
    firsts = np.bincount([shuffle_buffer_order(5, 100, rng)[0] for _ in range(5000)], minlength=5)
    chi2 = ((firsts - 1000) ** 2 / 1000).sum()
    assert chi2 < 18.47  # 99.9% point of chi-square with 4 degrees of freedom


@pytest.mark.parametrize("n, streams, seq_len", [(2, 4, 5), (100, 4, 7), (101, 3, 10), (57, 8, 100)])
def test_eval_chunks_score_every_target_exactly_once(n, streams, seq_len):
    ids = np.arange(n)
    seen = []
    for x, y, mask in eval_chunks(ids, streams, seq_len):
        assert np.array_equal(y[mask], x[mask] + 1)
        seen += list(y[mask])
    assert sorted(seen) == list(range(1, n))


def test_too_short_corpus_names_the_sizes():
    with pytest.raises(CorpusError, match="fewer than one batch of 64"):
        ShuffledWindows(np.arange(500), batch_size=64, seq_len=100)
    with pytest.raises(CorpusError, match="fewer than one sequence of 100"):
        StatefulStreams(np.arange(500), batch_size=8, seq_len=100)


def test_shuffled_windows_start_at_a_fresh_offset_each_epoch():
    ids = np.arange(1000, dtype=np.int64)  # each token is its own position
    w = ShuffledWindows(ids, batch_size=4, seq_len=9, stride=10, seed=3, random_offset=True)
    fixed = ShuffledWindows(ids, batch_size=4, seq_len=9, stride=10, seed=3)
    assert (w.windows, fixed.windows) == (99, 100)  # random offsets: the windows that fit at the largest (9)
    offsets = []
    for epoch in range(8):
        starts = np.concatenate([w.batch(epoch, s)[0][:, 0] for s in range(w.steps_per_epoch)])
        assert len(set((starts % 10).tolist())) == 1  # one offset for the whole epoch
        offsets.append(int(starts[0] % 10))
        x, y = w.batch(epoch, 0)
        assert (y == x + 1).all() and (np.diff(x, axis=1) == 1).all()  # windows of contiguous tokens
        assert (x[:, -1] + 1 < 1000).all()
        assert (w.batch(epoch, 3)[0] == w.batch(epoch, 3)[0]).all()  # a pure function of (epoch, step)
    assert len(set(offsets)) > 3  # epochs are cut at different boundaries
    assert all(fixed.batch(e, 0)[0][0, 0] % 10 == 0 for e in range(8))  # fixed windows: the tutorials'
