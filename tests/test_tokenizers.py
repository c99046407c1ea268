"""Tokenizers: exact round trips (emoji, combining marks), unknowns, special tokens, JSON."""

from __future__ import annotations

import json

import pytest

from textgen.data.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    TokenizerError,
    WordTokenizer,
    looks_pretokenized,
    tokenizer_from_json,
    tokenizer_to_json,
)

HARD = "Café e\u0301x 🙂 👩\u200d👩\u200d👧 naïve 東京 — “quoted”\n\ttabs  and  spaces\n"


def reload(tok):
    return tokenizer_from_json(json.loads(json.dumps(tokenizer_to_json(tok))))


def test_char_round_trip_with_emoji_and_combining_marks():
    tok = CharTokenizer.train([HARD])
    ids = tok.encode(HARD)
    assert len(ids) == len(HARD)  # one token per code point
    assert tok.decode(ids) == HARD
    assert 0 not in ids
    assert reload(tok).encode(HARD) == ids


def test_char_unknowns_map_to_id_zero_and_are_named():
    tok = CharTokenizer.train(["abc"])
    assert tok.vocab_size == 4
    assert tok.encode("abz€") == [1, 2, 0, 0]
    assert tok.unknown_in("zabz€") == ["z", "€"]
    assert tok.decode([1, 0]) == "a\ufffd"


def test_char_lowercase():
    tok = CharTokenizer.train(["AbC"], lowercase=True)
    assert tok.chars == ["a", "b", "c"]
    assert tok.decode(tok.encode("CAB")) == "cab"
    assert reload(tok).lowercase


def test_word_split_keeps_marks_apostrophes_and_newlines():
    assert WordTokenizer(["<unk>", "<eot>"]).split("It's e\u0301x,\n🙂 👩\u200d👧!") == [
        "It's",
        "e\u0301x",
        ",",
        "\n",
        "🙂",
        "👩\u200d👧",
        "!",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! It's 3 o'clock (sharp).\nNew line: 🙂 café e\u0301x 👩\u200d👩\u200d👧.",
        "Recipe for cake\n2 cups flour, 1 egg.\nMix well; bake (slowly).",
        '"Hello," she said. "It\'s 3.5 km, 1,000 m at 10:30; add 1/2 cup." A well-known e-mail.',
        "He said 'hi' and left.",
    ],
)
def test_word_round_trip_for_canonically_spaced_text(text):
    tok = WordTokenizer.train([text])
    assert tok.decode(tok.encode(text)) == text
    assert reload(tok).encode(text) == tok.encode(text)


def test_word_normalises_spacing_and_is_then_stable():
    tok = WordTokenizer.train(["a  b ,c"])
    once = tok.decode(tok.encode("a  b ,c"))
    assert once == "a b, c"
    assert tok.decode(tok.encode(once)) == once


def test_word_min_freq_unknown_and_end_of_text():
    tok = WordTokenizer.train(["the cat the dog the end"], min_freq=2)
    assert tok.words[:3] == ["<unk>", "<eot>", "the"]
    assert tok.encode("the cat") == [2, 0]
    assert tok.unknown_in("the cat sat") == ["cat", "sat"]
    assert tok.decode([2, 1, 2], skip_special=True) == "the the"
    assert tok.eot_id == 1


def test_word_lowercase():
    tok = WordTokenizer.train(["The THE the"], lowercase=True)
    assert tok.words == ["<unk>", "<eot>", "the"]


def test_bpe_round_trips_any_text_exactly_and_honours_vocab_size():
    corpus = [HARD * 5, "the theory of the thing " * 50]
    tok = BPETokenizer.train(corpus, vocab_size=300)
    assert tok.vocab_size == 300
    for text in (HARD, "unseen: ☃ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", ""):
        assert tok.decode(tok.encode(text)) == text
    assert 0 not in tok.encode("unseen: ☃")  # byte-level: nothing is unknown
    assert len(tok.encode("the theory")) < len("the theory")  # merges were learned
    assert reload(tok).encode(HARD) == tok.encode(HARD)


def test_bpe_end_of_text_typed_in_text_is_plain_text():
    tok = BPETokenizer.train(["hello world " * 20], vocab_size=280)
    assert tok.eot_id == 1 and tok.unk_id == 0
    assert 1 not in tok.encode("hello <eot> world")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({}, "not a textgen tokenizer"),
        ({"format": "textgen-tokenizer", "version": 9, "kind": "char", "chars": "ab"}, "version 9"),
        ({"format": "textgen-tokenizer", "version": 1, "kind": "char", "chars": 5}, "'chars' must be a string"),
        ({"format": "textgen-tokenizer", "version": 1, "kind": "char", "chars": "aa"}, "distinct"),
        ({"format": "textgen-tokenizer", "version": 1, "kind": "word", "words": ["a"]}, "must start with <unk>"),
        ({"format": "textgen-tokenizer", "version": 1, "kind": "bpe", "hf": {"x": 1}}, "invalid BPE"),
        ({"format": "textgen-tokenizer", "version": 1, "kind": "morse"}, "unknown kind"),
    ],
)
def test_malformed_tokenizer_files_are_refused(bad, message):
    with pytest.raises(TokenizerError, match=message):
        tokenizer_from_json(bad)


def test_a_bpe_file_supplies_its_vocabulary_and_merges_and_nothing_else():
    # HF tokenizer files can also configure padding, truncation, dropout...: a crafted file changed
    # the tokens silently, made the library panic (a truncation stride past its length) or abort
    # the whole process (padding to 2**40 tokens). Only the vocabulary and merges are read now.
    tok = BPETokenizer.train([HARD * 5, "the theory of the thing " * 50], vocab_size=300)
    d = tokenizer_to_json(tok)
    hf = d["hf"]
    hf["padding"] = {"strategy": {"Fixed": 50}, "direction": "Right", "pad_to_multiple_of": None}
    hf["padding"].update(pad_id=0, pad_type_id=0, pad_token="<unk>")
    hf["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    hf["model"]["dropout"] = 0.9
    hf["normalizer"] = {"type": "Replace", "pattern": {"String": "t"}, "content": "x"}
    assert tokenizer_from_json(d).encode(HARD + "the theory") == tok.encode(HARD + "the theory")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["vocab"].update({"zz": 5000}), "ids must be 0, 1, 2... each once"),
        (lambda m: m["vocab"].update({"zz": "5"}), "map tokens to integer ids"),
        (lambda m: m["merges"].append(["zz", "q"]), "merge .* is not two tokens of the vocabulary"),
        (lambda m: m["merges"].append("t h e"), "is not two tokens"),
        (lambda m: m.update(type="WordPiece"), "must describe an HF BPE model"),
    ],
)
def test_inconsistent_bpe_vocabularies_are_refused(change, message):
    d = tokenizer_to_json(BPETokenizer.train(["hello world " * 20], vocab_size=280))
    change(d["hf"]["model"])
    with pytest.raises(TokenizerError, match=message):
        tokenizer_from_json(d)


WIKI = (
    " = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場 ) , commonly "
    "referred to as Valkyria Chronicles III outside Japan , is a tactical role @-@ playing video game . It sold "
    '102 @,@ 779 units , the <unk> said , and critics \' praise was " high " .\n'
)


def test_already_tokenized_text_keeps_its_tokens_whole():
    tok = WordTokenizer.train([WIKI], spaced=True)
    words = [tok.token_text(i) for i in tok.encode("a tactical role @-@ playing <unk> game")]
    assert words == ["a", "tactical", "role", "@-@", "playing", "<unk>", "game"]  # the corpus <unk> is id 0
    assert tok.encode("<unk>") == [tok.unk_id]
    text = "Valkyria Chronicles III , is a tactical role @-@ playing video game .\nIt sold 102 @,@ 779 units ."
    assert tok.decode(tok.encode(text)) == text  # tokens between single spaces, none next to a newline
    again = tokenizer_from_json(json.loads(json.dumps(tokenizer_to_json(tok))))
    assert again.spaced and again.encode(WIKI) == tok.encode(WIKI)
    assert "spaced" not in tokenizer_to_json(WordTokenizer.train([WIKI]))  # ordinary word files are unchanged


def test_already_tokenized_text_is_recognised_and_prose_is_not():
    prose = 'It was, as he said, a long day. "Well?" she asked; nobody answered (not even Tom). ' * 5
    code = "def f(a, b):\n    return g(a, b) + h(c, d)  # (x, y)\n" * 10
    assert looks_pretokenized(WIKI * 3)
    assert looks_pretokenized("the cat , it said ; and the dog . ( yes ) , no ! " * 5)  # Penn Treebank style
    assert not looks_pretokenized(prose) and not looks_pretokenized(code) and not looks_pretokenized("")
