"""Seq2seq translation: pair files, padding, attention, learning, greedy and beam decoding, BLEU, CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_S2S, run_cli
from safetensors.torch import load_file

from textgen import load, train
from textgen.api import build_config
from textgen.config import ModelSpec
from textgen.data.pairs import PairBatches, Ragged, filter_words, pad_batch, read_pairs, split_by_source
from textgen.errors import ConfigError, CorpusError
from textgen.inference.metrics import score_translations
from textgen.models.seq2seq import Seq2Seq
from textgen.sampling.processors import BanTokens
from textgen.sampling.translate import _beams, _greedy, translate_ids
from textgen.training.tasks import scheduled_sampling


def reversal_pairs(path: Path, n: int = 1500, seed: int = 0) -> Path:
    """Distinct random strings over a small alphabet, each paired with its reverse."""
    rng = random.Random(seed)
    lines: dict[str, str] = {}
    while len(lines) < n:
        w = "".join(rng.choice("abcdef") for _ in range(rng.randint(3, 7)))
        lines[w] = w[::-1]
    path.write_text("".join(f"{a}\t{b}\tCC-BY 2.0 (France)\n" for a, b in lines.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reversal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LSTM with dot attention trained for 500 steps to reverse strings of 3-7 letters."""
    d = tmp_path_factory.mktemp("reverse")
    settings = {**TINY_S2S, "hidden_size": 64, "batch_size": 32, "cell": "lstm", "attention": "dot"}
    train(pairs=str(reversal_pairs(d / "rev.tsv")), out=d / "run", max_steps=500, eval_every=250, **settings)
    return d / "run"


def tiny_model(**overrides: object) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = dict(task="translate", vocab_size=11, source_vocab_size=9, hidden_size=12, embedding_dim=6)
    return Seq2Seq(ModelSpec(**{**cfg, **overrides})).eval()


# -- pairs files ----------------------------------------------------------------------------------


def test_pairs_files_extra_columns_blank_lines_and_reverse(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272\n\nHi.\tSalut !\n", encoding="utf-8")
    assert [(p.source, p.target) for p in read_pairs([f])] == [("Go.", "Va !"), ("Hi.", "Salut !")]
    assert [(p.source, p.target) for p in read_pairs([f], reverse=True)] == [("Va !", "Go."), ("Salut !", "Hi.")]


def test_lines_without_a_tab_are_counted_and_the_first_is_named(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("Go.\tVa !\nno tab here\nHi.\tSalut !\nnor here\n", encoding="utf-8")
    with pytest.raises(
        CorpusError, match=r"2 line\(s\) of the pairs file have no tab \(first: .*p.tsv line 2: 'no tab here'\)"
    ):
        read_pairs([f])


def test_an_empty_side_is_an_error(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("Go.\tVa !\n\tSalut !\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"1 line\(s\) of the pairs file have an empty side \(first: .*line 2"):
        read_pairs([f])


def test_filters_and_a_corpus_with_nothing_left(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_text("one two three\tun deux trois\na b\tc d\n", encoding="utf-8")
    assert [p.source for p in filter_words(read_pairs([f]), 2)] == ["a b"]
    with pytest.raises(CorpusError, match="no pairs left after filtering: all 2 pairs have a side over 1 words"):
        train(pairs=str(f), out=tmp_path / "run", max_words=1, **TINY_S2S)
    with pytest.raises(CorpusError, match="no pairs left after filtering: 2 read, none within .* max_tokens 2"):
        train(pairs=str(f), out=tmp_path / "run2", max_tokens=2, val_fraction=0.0, **TINY_S2S)


def test_the_held_out_split_is_fixed_by_the_seed_and_keeps_a_source_on_one_side(tmp_path):
    pairs = read_pairs([reversal_pairs(tmp_path / "r.tsv", 300)])
    pairs += [type(p)(p.source, p.target.upper()) for p in pairs[:100]]  # a second translation of 100 sources
    held = split_by_source(pairs, 0.2, seed=7)
    assert np.array_equal(held, split_by_source(pairs, 0.2, seed=7))
    assert not np.array_equal(held, split_by_source(pairs, 0.2, seed=8))
    by_source: dict[str, set[bool]] = {}
    for p, h in zip(pairs, held):
        by_source.setdefault(p.source, set()).add(bool(h))
    assert all(len(sides) == 1 for sides in by_source.values())
    assert 50 <= held.sum() <= 90  # about 20% of 300 sources, with their second translations


def test_batches_are_padded_bucketed_and_a_function_of_seed_and_epoch():
    rng = np.random.default_rng(0)
    sentences = [rng.integers(1, 9, rng.integers(1, 12)) for _ in range(203)]
    src, tgt = Ragged.build(sentences), Ragged.build(sentences[::-1])
    batches = PairBatches(src, tgt, batch_size=16, start_id=20, end_id=21, seed=3, bucket=4)
    assert batches.steps_per_epoch == 13
    seen = np.concatenate([batches.order(0)[i] for i in range(13)])
    assert sorted(seen.tolist()) == list(range(203))  # every pair once per epoch
    again = PairBatches(src, tgt, batch_size=16, start_id=20, end_id=21, seed=3, bucket=4)
    assert all(np.array_equal(a, b) for a, b in zip(batches.order(1), again.order(1)))
    b = batches.batch(0, 0)
    for row, i in enumerate(batches.order(0)[0]):
        n, m = len(src[i]), len(tgt[i])
        assert b.src_len[row] == n and (b.src[row, :n] == src[i]).all() and (b.src[row, n:] == 0).all()
        assert b.tgt_in[row, 0] == 20 and (b.tgt_in[row, 1 : m + 1] == tgt[i]).all()
        assert (
            (b.tgt_out[row, :m] == tgt[i]).all() and b.tgt_out[row, m] == 21 and (b.tgt_out[row, m + 1 :] == -100).all()
        )
    assert all((np.diff(src.lengths[batch]) <= 0).all() for batch in batches.order(0))  # longest first: packs as is
    spread = lambda bs: np.mean([np.ptp(src.lengths[batch]) for batch in bs.order(0)])  # noqa: E731
    unbucketed = PairBatches(src, tgt, batch_size=16, start_id=20, end_id=21, seed=3, bucket=1)
    assert spread(batches) < 0.5 * spread(unbucketed)  # similar source lengths in a batch: little padding


# -- the model ------------------------------------------------------------------------------------


def test_padding_never_counts_in_the_loss():
    # The same two pairs, alone and batched with a much longer pair: each keeps its loss exactly.
    model = tiny_model(attention="general", bidirectional=True)
    pairs = [([1, 2, 3], [4, 5]), ([6, 7], [8, 9, 10, 3]), ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9])]

    def token_losses(batch_pairs):
        b = pad_batch([np.array(s) for s, _ in batch_pairs], [np.array(t) for _, t in batch_pairs], 11, 12)
        src, src_len, tgt_in, tgt_out = b.tensors(torch.device("cpu"))
        logits = model(src, src_len, tgt_in)
        nats = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=-100, reduction="none")
        return [nats[i, : len(t) + 1] for i, (_, t) in enumerate(batch_pairs)], nats, tgt_out

    alone = [token_losses([p])[0][0] for p in pairs[:2]]
    together, nats, tgt_out = token_losses(pairs)
    for a, t in zip(alone, together):
        torch.testing.assert_close(a, t, rtol=1e-5, atol=1e-6)
    assert (nats[tgt_out == -100] == 0).all()


@pytest.mark.parametrize("kind", ["dot", "general", "additive"])
def test_attention_weights_sum_to_one_over_real_source_positions(kind):
    model = tiny_model(attention=kind)
    b = pad_batch([np.array([1, 2, 3, 4, 5]), np.array([6, 7])], [np.array([1, 2]), np.array([3])], 11, 12)
    src, src_len, tgt_in, _ = b.tensors(torch.device("cpu"))
    memory, state = model.encode(src, src_len)
    _, _, weights = model.decode(tgt_in, state, memory, with_attention=True)  # (B, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, tgt_in.shape[1]))
    assert (weights[1, :, 2:] == 0).all() and (weights[1, :, :2] > 0).all()  # the short source's padding gets none


@pytest.mark.parametrize(
    "overrides",
    [
        {"cell": "gru", "attention": "additive", "bidirectional": True, "layers": 2},
        {"cell": "rnn", "attention": "none"},
        {"embedding_dim": 0, "attention": "dot"},  # one-hot inputs, as in the notes
        {"source_vocab_size": 0, "embedding_dim": 12, "tie_weights": True},  # shared vocabulary and embedding
    ],
)
def test_model_variants_run_and_decode_the_same_alone_or_batched(overrides):
    model = tiny_model(**overrides)
    vocab = model.source_inputs if model.cfg.source_vocab_size else 11
    sources = [[1, 2, 3], [4], [5, 6, 7, 8, 1, 2], [3, 3]]
    sources = [[t % vocab for t in s] or [1] for s in sources]
    batched = translate_ids(model, sources, max_length=6, batch_size=4)
    alone = [translate_ids(model, [s], max_length=6)[0] for s in sources]
    assert batched == alone and all(len(t) <= 6 for t in batched)
    beams = translate_ids(model, sources, beams=3, max_length=6)
    assert beams == [translate_ids(model, [s], beams=3, max_length=6)[0] for s in sources]
    assert all(0 not in t and model.start_id not in t and model.end_id not in t for t in batched)
    if overrides.get("source_vocab_size") == 0:
        assert model.src_embedding is model.tgt_embedding and model.head.weight is model.tgt_embedding.weight


def test_teacher_forcing_one_step_at_a_time_equals_the_whole_sequence():
    model = tiny_model(attention="general", cell="lstm")
    b = pad_batch([np.array([1, 2, 3]), np.array([4, 5])], [np.array([1, 2, 3, 4]), np.array([5])], 11, 12)
    src, src_len, tgt_in, _ = b.tensors(torch.device("cpu"))
    torch.testing.assert_close(scheduled_sampling(model, src, src_len, tgt_in, ratio=1.0), model(src, src_len, tgt_in))
    # ratio 0 feeds back the model's own argmax: step t+1's input is step t's best token.
    torch.manual_seed(0)
    free = scheduled_sampling(model, src, src_len, tgt_in, ratio=0.0)
    memory, state = model.encode(src, src_len)
    inputs = torch.cat([tgt_in[:, :1], free.argmax(-1)[:, :-1]], dim=1)
    torch.testing.assert_close(free, model.decode(inputs, state, memory)[0])


# -- learning and decoding --------------------------------------------------------------------------


def test_a_tiny_model_learns_to_reverse_strings_it_never_saw(reversal_run):
    translator = load(reversal_run)
    metrics = translator.evaluate(str(reversal_run / "heldout.tsv"))
    assert metrics.extra["sentences"] == 150
    assert metrics.extra["exact_match"] > 95.0
    assert translator.translate("abcdef") == "fedcba"  # held out or not: 6 letters in a row never repeat in training
    assert (reversal_run / "pairs" / "train.source.ids.npy").exists()


def test_beam_search_with_one_beam_equals_greedy_and_more_beams_find_likelier_outputs(reversal_run):
    model = load(reversal_run).model
    tok = load(reversal_run).source_tokenizer
    sources = [tok.encode(s) for s in ["abc", "fedcbaab", "aaaaaaab", "bcbcbcbcfd", "ffff", "ab"]]
    greedy = translate_ids(model, sources, max_length=12)
    b = pad_batch([np.array(s) for s in sources], [np.zeros(0, np.int64)] * len(sources), 0, 0)
    src, src_len, _, _ = b.tensors(torch.device("cpu"))
    with torch.no_grad():
        memory, state = model.encode(src, src_len)
        ban, limits = BanTokens([0, model.start_id]), [12] * len(sources)
        steppers = [model.stepper(len(sources)) for _ in range(2)]
        for stepper in steppers:
            stepper.start(slice(0, len(sources)), state, memory)
        one = _beams(model, steppers[0], limits, ban, beams=1, length_penalty=0.0)
    assert one == _greedy(model, steppers[1], limits, ban) == greedy
    four = translate_ids(model, sources, beams=4, max_length=12, length_penalty=0.0)
    assert four == [translate_ids(model, [s], beams=4, max_length=12, length_penalty=0.0)[0] for s in sources]

    @torch.no_grad()
    def logprob(source: list[int], target: list[int]) -> float:
        b = pad_batch([np.array(source)], [np.array(target, dtype=np.int64)], model.start_id, model.end_id)
        src, src_len, tgt_in, tgt_out = b.tensors(torch.device("cpu"))
        logits = model(src, src_len, tgt_in)[0]
        logits[:, [0, model.start_id]] = float("-inf")  # as decoding bans them
        return float(logits.log_softmax(-1).gather(1, tgt_out[0][:, None]).sum())

    for source, g, b in zip(sources, greedy, four):
        assert logprob(source, b) >= logprob(source, g) - 1e-5


def test_bleu_chrf_and_exact_match_of_a_perfect_output_are_100():
    refs = ["the cat sat on the mat .", "il fait très froid ce matin ."]
    scores = score_translations(refs, refs)
    assert (scores.bleu, scores.chrf, scores.exact_match, scores.sentences) == pytest.approx((100, 100, 100, 2))
    worse = score_translations(["the cat sat on a mat .", "il fait froid ce matin ."], refs)
    assert worse.bleu < 100 and worse.chrf < 100 and worse.exact_match == 0


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    pairs = str(reversal_pairs(tmp_path / "rev.tsv", 200))
    settings = {**TINY_S2S, "teacher_forcing": 0.7, "dropout": 0.1, "eval_every": 6}
    train(pairs=pairs, out=tmp_path / "a", max_steps=12, **settings)
    train(pairs=pairs, out=tmp_path / "b", max_steps=6, **settings)
    monkeypatch.chdir(tmp_path)  # the same pairs file, named from another directory
    train(pairs="rev.tsv", out=tmp_path / "b", max_steps=12, resume=True, **settings)
    a, b = (
        load_file(str(tmp_path / "a/latest/model.safetensors")),
        load_file(str(tmp_path / "b/latest/model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_translate_preset_follows_the_tutorial():
    cfg, _ = build_config("translate")
    m, d, t = cfg.model, cfg.data, cfg.train
    assert (m.task, m.cell, m.hidden_size, m.embedding_dim, m.attention, m.dropout) == (
        "translate", "gru", 128, 128, "additive", 0.1,
    )  # fmt: skip
    assert (d.level, d.lowercase, d.reverse, t.batch_size, t.optimizer, t.lr) == ("word", True, True, 32, "adam", 1e-3)
    pairs = read_pairs([Path(d.pairs[0])])
    assert len(pairs) == 10922 and pairs[0].source == "I'm 19."  # the file's first column is English


def test_config_refuses_mixed_tasks():
    with pytest.raises(ConfigError, match="pairs are for translation models: add --task translate"):
        build_config(pairs=["x.tsv"])[0].validate()
    with pytest.raises(ConfigError, match="a translation model needs --pairs FILE"):
        build_config(task="translate")[0].validate()
    with pytest.raises(ConfigError, match="mode stateful is for language models"):
        build_config(task="translate", pairs=["x.tsv"], mode="stateful")[0].validate()
    with pytest.raises(ConfigError, match="val_corpus is for language models"):
        build_config(task="translate", pairs=["x.tsv"], val_corpus=["v.txt"])[0].validate()


# -- the command line -------------------------------------------------------------------------------


def test_translate_and_eval_through_the_cli(reversal_run, tmp_path):
    r = run_cli("translate", str(reversal_run), "abcd", "eeef")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["dcba", "feee"]
    j = run_cli("translate", str(reversal_run), "--json", "--beams", "3", stdin="abc\n\ncab\n")
    assert [json.loads(line) for line in j.stdout.splitlines()] == [
        {"source": "abc", "translation": "cba"},
        {"source": "", "translation": ""},
        {"source": "cab", "translation": "bac"},
    ]
    f = tmp_path / "in.txt"
    f.write_text("fab\nxab\n", encoding="utf-8")
    r = run_cli("translate", str(reversal_run), "--input", str(f))
    assert r.stdout.splitlines()[0] == "baf" and "read as unknown: x" in r.stderr
    e = run_cli("eval", str(reversal_run), "--pairs", str(reversal_run / "heldout.tsv"), "--json")
    assert e.returncode == 0, e.stderr
    figures = json.loads(e.stdout)
    assert set(figures) == {"loss", "perplexity", "bits_per_char", "bleu", "chrf", "exact_match", "sentences"}
    assert figures["exact_match"] > 95 and figures["sentences"] == 150


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "RUN"], "holds a translation model, not a language model: use textgen translate"),
        (["eval", "RUN", "--corpus", "RUN/heldout.tsv"], "holds a translation model: score it on sentence pairs"),
        (["translate", "RUN", "abc", "--beams", "0"], "beams must be in [1, 256], got 0"),
        (["translate", "RUN", "abc", "--max-length-ratio", "-1"], "max_length_ratio must be a number in (0, 100]"),
        (["translate", "RUN", "--input", "missing.txt"], "input file not found: missing.txt"),
        (["translate", "RUN", "abc", "--input", "x"], "give sentences as arguments or --input FILE, not both"),
    ],
)
def test_bad_translation_commands_get_one_line(reversal_run, args, message):
    r = run_cli(*[a.replace("RUN", str(reversal_run)) for a in args])
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("Go.\tVa !\nno tab\n", "1 line(s) of the pairs file have no tab (first: "),
        ("Go.\t \n", "have an empty side"),
        ("", "no sentence pairs in"),
        ("a b c\td e f\n", "no pairs left after filtering: all 1 pairs have a side over 2 words"),
    ],
)
def test_bad_pairs_files_through_the_cli(tmp_path, content, message):
    f = tmp_path / "p.tsv"
    f.write_text(content, encoding="utf-8")
    r = run_cli("train", "--task", "translate", "--pairs", str(f), "--out", str(tmp_path / "r"), "--max-words", "2")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_train_translate_through_the_cli_and_a_language_model_refuses_translate(tmp_path, tiny_run):
    pairs = reversal_pairs(tmp_path / "rev.tsv", 200)
    out = tmp_path / "run"
    r = run_cli(
        "train", "--task", "translate", "--pairs", str(pairs), "--out", str(out), "--level", "char",
        "--hidden-size", "16", "--embedding-dim", "8", "--max-steps", "4", "--eval-sentences", "5",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "held-out translations at step 4" in r.stdout and "reference" in r.stdout and "bleu" in r.stdout
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",bleu,chrf,exact_match")
    assert "## Held-out translations" in (out / "report.md").read_text()
    from textgen.report import read_metrics

    last = read_metrics(out / "metrics.csv")[-1]
    assert last["bleu"] is not None and last["chrf"] is not None and (out / "loss.png").stat().st_size > 0
    s = run_cli("summary", str(out))
    assert "encoder (LSTM)" in s.stdout and "attention (General)" in s.stdout
    refused = run_cli("translate", str(tiny_run), "hello")
    assert refused.returncode == 2 and "holds a language model, not a translation model: use textgen generate" in (
        refused.stderr
    )


def test_the_server_translates_with_a_real_model(reversal_run):
    from fastapi.testclient import TestClient

    from textgen.serve.app import create_app

    model = load(reversal_run, "cpu")
    with TestClient(create_app({"rev": model})) as client:
        r = client.post("/v1/translate", json={"model": "rev", "input": ["abcd", "eeef"], "beams": 3})
        assert r.status_code == 200, r.text
        assert r.json()["translations"] == model.translate(["abcd", "eeef"], beams=3) == ["dcba", "feee"]
        one = client.post("/v1/translate", json={"input": "fab"})  # the only translation model
        assert one.json()["translations"] == ["baf"]
        wrong = client.post("/v1/completions", json={"model": "rev", "prompt": "abc"})
        assert wrong.status_code == 400 and "/v1/translate" in wrong.json()["error"]["message"]
        unnamed = client.post("/v1/completions", json={"prompt": "abc"})
        assert "this server has no language models; its models answer at /v1/translate" in unnamed.text
        chat = client.post("/v1/chat/completions", json={})
        assert chat.status_code == 404 and "POST /v1/completions (not chat)" in chat.text
        stream = client.post("/v1/translate", json={"input": "abc", "stream": True})
        assert stream.status_code == 400 and "stream: unknown parameter" in stream.text and "mean" not in stream.text


def test_the_server_bounds_translation_work(reversal_run):
    from fastapi.testclient import TestClient

    from textgen.serve.app import create_app

    model = load(reversal_run, "cpu")
    with TestClient(create_app({"rev": model}, max_tokens=3, max_prompt_tokens=8)) as client:
        short = client.post("/v1/translate", json={"input": "abcdef"})  # 6 letters, but at most 3 tokens out
        assert short.status_code == 200 and short.json()["translations"] == ["fed"]
        long = client.post("/v1/translate", json={"input": ["ab", "abcdefabc"]})
        assert long.status_code == 400 and "input[1]: 9 tokens; this server takes at most 8" in long.text


def test_length_limits_relative_and_absolute(reversal_run):
    translator = load(reversal_run)
    assert translator.translate("abcdef", max_length=4) == "fedc"  # an absolute cap
    assert translator.translate("abcdef", max_length=100) == "fedcba"  # the cap is not a target
    assert translator.translate("abcdef", max_length_ratio=0.5) == "fedcba"  # 3 tokens + 10 of slack


def test_eval_reverse_and_stdin_lines(reversal_run, tmp_path):
    swapped = tmp_path / "swapped.tsv"
    rows = (reversal_run / "heldout.tsv").read_text(encoding="utf-8").splitlines()
    swapped.write_text("".join(f"{b}\t{a}\n" for a, b in (r.split("\t") for r in rows)), encoding="utf-8")
    plain = run_cli("eval", str(reversal_run), "--pairs", str(reversal_run / "heldout.tsv"), "--json")
    reversed_ = run_cli("eval", str(reversal_run), "--pairs", str(swapped), "--reverse", "--json")
    assert json.loads(plain.stdout) == json.loads(reversed_.stdout)  # the same pairs, to the last digit of the loss
    ignored = run_cli("eval", str(reversal_run), "--pairs", str(swapped), "--no-reverse", "--json")
    assert json.loads(ignored.stdout)["loss"] != json.loads(plain.stdout)["loss"]  # other pairs (reversal is its own
    # inverse, so the scores hardly move: the loss tells them apart)
    bad = subprocess.run(
        [sys.executable, "-m", "textgen", "translate", str(reversal_run)], input=b"abc\ncaf\xe9\n", capture_output=True
    )
    assert bad.returncode == 2 and b"stdin line 2 is not UTF-8: byte 0xe9 at column 3" in bad.stderr
    assert b"Traceback" not in bad.stderr
    f = tmp_path / "odd.txt"
    f.write_text("ab\u2028c\r\nfed\n", encoding="utf-8")  # a Unicode line separator is not a line end
    out = run_cli("translate", str(reversal_run), "--input", str(f))
    assert len(out.stdout.splitlines()) == 2 and out.stdout.splitlines()[1] == "def"


def test_pairs_lines_end_only_at_newlines_and_the_split_ignores_case(tmp_path):
    f = tmp_path / "p.tsv"
    f.write_bytes("\ufeffa\u2028b\tc\r\nd\te\n".encode())  # with a byte-order mark, as some editors write
    assert [(p.source, p.target) for p in read_pairs([f])] == [("a\u2028b", "c"), ("d", "e")]
    pairs = read_pairs([reversal_pairs(tmp_path / "r.tsv", 300)])
    pairs += [type(p)(p.source.upper(), p.target) for p in pairs]  # "abc" and "ABC" read the same lowercased
    held = split_by_source(pairs, 0.2, seed=7, lowercase=True)
    assert np.array_equal(held[:300], held[300:])
    assert not np.array_equal(split_by_source(pairs, 0.2, seed=7)[:300], split_by_source(pairs, 0.2, seed=7)[300:])
