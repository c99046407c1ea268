"""Property-based tests (hypothesis): tokenizers, logits processors and the CLI's settings, on
generated input.

Every test is derandomized (the same examples on every run, so CI is reproducible), has a bounded
number of examples and no deadline (a loaded CI machine must not make a test flaky).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from textgen.cli import main
from textgen.config import SampleConfig
from textgen.data.tokenizers import (
    REPLACEMENT,
    BPETokenizer,
    CharTokenizer,
    TokenizerError,
    WordTokenizer,
    tokenizer_from_json,
    tokenizer_to_json,
)
from textgen.sampling.processors import apply_processors, processors_for

FUZZ = int(os.environ.get("TEXTGEN_FUZZ", "0"))  # e.g. TEXTGEN_FUZZ=20: 20 times the examples, fresh each run


def props(examples: int) -> Any:
    """Hypothesis settings for this file: fixed examples, no deadline, no example database."""
    return settings(
        max_examples=examples * max(1, FUZZ),
        derandomize=not FUZZ,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


TEXT = st.text(max_size=300)  # any Unicode scalar values (hypothesis leaves out lone surrogates)
# Text dense in what the word tokenizer's spacing rules are about: quotes, punctuation, numbers, marks.
WORDY = st.text(st.sampled_from([*"ab1 .,;:!?'\"-’‘“”()[]{}\n\t…¿¡«»$#%/", "\u0301", "\u200d", "🙂", "é"]), max_size=60)
CORPUS = (
    "Café e\u0301x 🙂 👩\u200d👩\u200d👧 naïve 東京 — “quoted” 'tick' \"straight\" 3.5 1,000\n\ttabs  and  spaces\n"
)


@functools.cache
def bpe(lowercase: bool = False) -> BPETokenizer:
    return BPETokenizer.train([CORPUS * 5, "the theory of the thing " * 50], vocab_size=320, lowercase=lowercase)


def reload(tok: Any) -> Any:
    return tokenizer_from_json(json.loads(json.dumps(tokenizer_to_json(tok))))


# -- tokenizers ---------------------------------------------------------------------------------


@props(200)
@given(TEXT, st.booleans())
def test_char_round_trips_any_text_in_its_vocabulary(text, lowercase):
    tok = CharTokenizer.train([text], lowercase=lowercase)
    ids = tok.encode(text)
    assert tok.decode(ids) == tok.normalize(text) and len(ids) == len(tok.normalize(text))
    assert 0 not in ids and tok.unknown_in(text) == []
    assert reload(tok).encode(text) == ids


@props(200)
@given(TEXT, TEXT)
def test_char_marks_exactly_the_characters_outside_its_vocabulary(vocab, text):
    tok = CharTokenizer.train([vocab])
    ids = tok.encode(text)
    outside = [c not in vocab for c in text]
    assert [i == 0 for i in ids] == outside
    assert tok.unknown_in(text) == list(dict.fromkeys(c for c, out in zip(text, outside) if out))
    assert tok.decode(ids) == "".join(REPLACEMENT if out else c for c, out in zip(text, outside))


@props(200)
@given(TEXT)
def test_bpe_round_trips_any_text_exactly(text):
    tok = bpe()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(1 < i < tok.vocab_size for i in ids)  # byte-level: nothing unknown; "<eot>" typed is text


@props(100)
@given(TEXT)
def test_lowercase_bpe_decodes_to_the_lowercased_text(text):
    tok = bpe(lowercase=True)
    assert tok.decode(tok.encode(text)) == tok.normalize(text)


@props(300)
@given(st.one_of(TEXT, WORDY))
@example("$ \u0300")  # was decoded "$\u0300": the mark joined the "$" into one token
def test_word_spacing_is_canonical_after_one_round_trip(text):
    tok = WordTokenizer.train([text])
    ids = tok.encode(text)
    assert 0 not in ids  # the vocabulary was built from this text
    once = tok.decode(ids)
    assert tok.encode(once) == ids  # the same tokens: only spacing changed...
    assert tok.decode(tok.encode(once)) == once  # ...and that spacing is a fixed point
    assert reload(tok).encode(text) == ids


@props(100)
@given(TEXT, st.sampled_from(["char", "word", "bpe"]))
def test_lone_surrogates_are_refused_with_a_tokenizer_error(text, kind):
    tok = {"char": CharTokenizer.train([CORPUS]), "word": WordTokenizer.train([CORPUS]), "bpe": bpe()}[kind]
    bad = text[: len(text) // 2] + "\udce9" + text[len(text) // 2 :]  # e.g. the byte 0xe9 of a Latin-1 argument
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        tok.encode(bad)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _mutate(value: Any, path: list[Any], new: Any) -> Any:
    """A copy of a JSON value with the item at ``path`` (keys or indices, wrapped around) replaced by
    ``new(old item)``."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return new(value)
    if isinstance(value, dict):
        at = path[0] if isinstance(path[0], int) else len(path[0])
        key = path[0] if path[0] in value else sorted(value)[at % len(value)]
        return {**value, key: _mutate(value[key], path[1:], new)}
    i = path[0] % len(value) if isinstance(path[0], int) else 0
    return [*value[:i], _mutate(value[i], path[1:], new), *value[i + 1 :]]


def like(old: Any) -> st.SearchStrategy[Any]:
    """Any JSON value, or (more often) one of the same type as ``old``: mistakes that look right."""
    if isinstance(old, bool):
        same: st.SearchStrategy[Any] = st.booleans()
    elif isinstance(old, int):
        same = st.integers() | st.sampled_from([-1, 0, 1, 2**31, 2**64])
    elif isinstance(old, float):
        same = st.floats()
    elif isinstance(old, str):
        same = st.text(max_size=20) | st.sampled_from(["<unk>", "<eot>", "", "ab", "aa"])
    elif isinstance(old, list):
        same = st.lists(st.text(max_size=4) | st.integers(-2, 400), max_size=6) | st.just(old[::-1]) | st.just(old * 2)
    elif isinstance(old, dict):
        same = st.just({k: v for k, v in list(old.items())[1:]}) | st.dictionaries(
            st.text(max_size=6), JSON, max_size=3
        )
    else:
        same = JSON
    return st.one_of(same, same, JSON)


KEYS = ["chars", "words", "min_freq", "lowercase", "kind", "version", "hf", "model", "vocab", "merges", "decoder"]
GOOD = {"char": lambda: CharTokenizer.train([CORPUS]), "word": lambda: WordTokenizer.train([CORPUS]), "bpe": bpe}


@props(300)
@given(
    st.sampled_from(sorted(GOOD)),
    st.lists(st.one_of(st.integers(0, 50), st.sampled_from(KEYS)), max_size=5),
    st.data(),
)
def test_malformed_tokenizer_files_give_a_tokenizer_error_or_a_working_tokenizer(kind, path, data):
    d = _mutate(tokenizer_to_json(GOOD[kind]()), path, lambda old: data.draw(like(old)))
    try:
        tok = tokenizer_from_json(d)
    except TokenizerError:
        event("refused")
        return
    event("loaded")
    ids = tok.encode(CORPUS)  # what loads must work
    assert all(0 <= i < tok.vocab_size for i in ids)
    tok.decode(ids)


# -- logits processors --------------------------------------------------------------------------

BIG = float(torch.finfo(torch.float32).max)  # float32's largest finite value


@st.composite
def scores(draw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(history ids (B, t), logits (B, V)): finite logits of any size, with ties and -inf entries,
    at least one finite entry per row."""
    b, v = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    value = st.one_of(
        st.floats(-BIG, BIG, width=32),
        st.sampled_from([0.0, 1.0, -1.0, BIG, -BIG, 1e-30]),
        st.just(-math.inf),
    )
    rows = [draw(st.lists(value, min_size=v, max_size=v)) for _ in range(b)]
    for row in rows:
        if all(math.isinf(x) for x in row):
            row[draw(st.integers(0, v - 1))] = draw(st.floats(-BIG, BIG, width=32))
    t = draw(st.integers(0, 8))
    ids = torch.tensor(draw(st.lists(st.lists(st.integers(0, v - 1), min_size=t, max_size=t), min_size=b, max_size=b)))
    return ids.reshape(b, t), torch.tensor(rows, dtype=torch.float32)


SETTINGS = st.builds(
    SampleConfig,
    temperature=st.one_of(st.just(0.0), st.floats(5e-324, 100), st.sampled_from([1e-60, 1e-30, 0.7, 1.0])),
    top_k=st.integers(0, 15),
    top_p=st.one_of(st.just(1.0), st.floats(1e-9, 1.0, exclude_min=True)),
    min_p=st.floats(0.0, 1.0),
    typical_p=st.one_of(st.just(1.0), st.floats(1e-9, 1.0, exclude_min=True)),
    repetition_penalty=st.one_of(st.just(1.0), st.floats(1e-3, 1e3)),
    frequency_penalty=st.floats(-2.0, 2.0),
    presence_penalty=st.floats(-2.0, 2.0),
    no_repeat_ngram=st.integers(0, 4),
)


@props(400)
@given(scores(), SETTINGS, st.lists(st.integers(0, 11), max_size=3), st.integers(0, 2**32))
# Regressions: the penalty pushed -1.7e38 past float32 to -inf (nothing left to draw); a temperature
# below float32's smallest number made the top score 0 / 0 = nan; a ban took a row's only finite token.
@example((torch.zeros(1, 1, dtype=torch.long), torch.tensor([[-1.7e38]])), SampleConfig(repetition_penalty=2.0), [], 0)
@example((torch.zeros(1, 0, dtype=torch.long), torch.tensor([[0.0, -1.0]])), SampleConfig(temperature=1e-46), [], 0)
@example((torch.zeros(1, 0, dtype=torch.long), torch.tensor([[-math.inf, 2.0, -math.inf]])), SampleConfig(), [1], 0)
def test_the_processor_chain_always_leaves_a_drawable_token(scored, cfg, banned, seed):
    ids, logits = scored
    before = logits.clone()
    out = apply_processors(processors_for(cfg, banned=banned), ids, logits)
    assert torch.equal(logits, before)  # the input is never modified
    assert not out.isnan().any() and (out < math.inf).all()
    assert out.isfinite().any(-1).all()  # every row keeps a token
    probs = out.softmax(-1)
    assert probs.isfinite().all() and torch.allclose(probs.sum(-1), torch.ones(len(probs)))
    drawn = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    assert ((drawn >= 0) & (drawn < logits.shape[-1])).all()
    assert out.gather(1, drawn[:, None]).isfinite().all()  # only a kept token is ever drawn


@props(200)
@given(scores(), st.integers(0, 2**32))
def test_temperature_zero_is_the_argmax(scored, seed):
    ids, logits = scored
    probs = apply_processors(processors_for(SampleConfig(temperature=0)), ids, logits).softmax(-1)
    drawn = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    assert torch.equal(drawn, logits.argmax(-1))


BAD_SETTINGS = {
    "temperature": st.one_of(st.floats(max_value=0, exclude_max=True), st.sampled_from([math.inf, math.nan])),
    "top_k": st.one_of(st.integers(max_value=-1), st.floats(allow_nan=True), st.just(True)),
    "top_p": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(math.nan)),
    "min_p": st.one_of(st.floats(max_value=0.0, exclude_max=True), st.floats(min_value=1.0, exclude_min=True)),
    "typical_p": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True)),
    "repetition_penalty": st.one_of(st.floats(max_value=0.0), st.sampled_from([math.inf, math.nan])),
    "frequency_penalty": st.one_of(
        st.floats(min_value=2.0, exclude_min=True), st.floats(max_value=-2.0, exclude_max=True)
    ),
    "presence_penalty": st.one_of(st.floats(min_value=2.0, exclude_min=True), st.just(math.nan)),
    "no_repeat_ngram": st.one_of(st.integers(max_value=-1), st.just(2.5)),
}


@props(300)
@given(st.sampled_from(sorted(BAD_SETTINGS)).flatmap(lambda name: st.tuples(st.just(name), BAD_SETTINGS[name])))
def test_an_invalid_setting_raises_a_value_error_naming_it(bad):
    name, value = bad
    with pytest.raises(ValueError, match=name):
        processors_for(SampleConfig(**{name: value}))


# -- the command line's settings ----------------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.integers().map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "1e-320", "-0", "0x10", "1_000", " 3", "", "٣"]),
    st.text(max_size=8),
)
TRAIN_NUMBERS = [
    "layers", "hidden-size", "embedding-dim", "dropout", "min-freq", "vocab-size", "val-fraction",
    "batch-size", "seq-len", "shuffle-buffer", "window-stride", "epochs", "max-steps", "max-minutes", "lr",
    "warmup-steps", "min-lr", "plateau-factor", "plateau-patience", "patience", "weight-decay", "clip",
    "seed", "eval-every", "eval-batches", "save-every", "sample-temperatures", "sample-length",
    "sample-window", "log-every",
]  # fmt: skip
GENERATE_NUMBERS = [
    "max-new-tokens", "temperature", "top-k", "top-p", "min-p", "typical-p", "repetition-penalty",
    "frequency-penalty", "presence-penalty", "no-repeat-ngram", "beams", "length-penalty", "seed",
    "num-samples", "show-probs",
]  # fmt: skip


def run_main(argv: list[str], capsys: Any) -> tuple[int, str]:
    """``textgen ARGV`` in this process: its exit code and stderr (argparse exits by SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textgen"), err
    assert "Traceback" not in err


@props(300)
@given(st.lists(st.tuples(st.sampled_from(TRAIN_NUMBERS), NUMBER_TEXT), min_size=1, max_size=3))
# Regressions: accepted, then failed after an epoch of training (a traceback, or exit 2 only then).
@example([("sample-temperatures", "inf")])
@example([("sample-length", "1000001")])
def test_train_number_flags_are_accepted_or_refused_in_one_line(tmp_path, capsys, flags):
    # The corpus does not exist: settings that pass validation end there, before anything trains.
    argv = ["train", "--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "run")]
    for name, value in flags:
        argv.append(f"--{name}={value}")
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err)
    event("accepted" if "corpus not found" in err else "refused")
    if "corpus not found" in err:  # accepted: every value must also be usable where it is used
        from textgen.api import build_config

        cfg, _ = build_config(corpus=["x"], **{n.replace("-", "_"): _parsed(n, v) for n, v in flags})
        for t in cfg.train.sample_temperatures:
            processors_for(SampleConfig(temperature=t, max_new_tokens=cfg.train.sample_length))
        SampleConfig(max_new_tokens=cfg.train.sample_length).validate()


def _parsed(name: str, value: str) -> Any:
    """The value argparse made of a flag (the types the config fields declare)."""
    from textgen.cli import build_parser

    if name == "sample-temperatures":
        return [float(value)]
    args = build_parser().parse_args(["train", f"--{name}={value}"])
    return getattr(args, name.replace("-", "_"))


@props(300)
@given(st.lists(st.tuples(st.sampled_from(GENERATE_NUMBERS), NUMBER_TEXT), min_size=1, max_size=3))
@example([("length-penalty", "1e308")])  # accepted, then beam search overflowed: a traceback
@example([("top-k", "abc")])  # argparse printed its whole usage: many lines
def test_generate_number_flags_are_accepted_or_refused_in_one_line(tmp_path, capsys, flags):
    argv = ["generate", str(tmp_path / "no-such-checkpoint")]
    for name, value in flags:
        argv.append(f"--{name}={value}")
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err)
    event("accepted" if "checkpoint not found" in err else "refused")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("sample-temperatures", "inf", "sample_temperatures must be a finite number >= 0, got inf"),
        ("sample-length", "1000001", "sample_length must be in [0, 1000000], got 1000001"),
        ("weight-decay", "inf", "weight_decay must be a finite number, got inf"),
        ("window-stride", str(10**20), "window_stride must be below 2**63"),
        ("embedding-dim", str(10**18), "embedding_dim must be 0 (one-hot) or up to 1048576"),
        ("hidden-size", str(2**62), "hidden_size must be in [1, 1048576]"),
        ("layers", str(10**11), "layers must be in [1, 1024]"),
    ],
)
def test_settings_that_used_to_fail_late_are_refused_before_training(tmp_path, capsys, flag, value, message):
    # Each was accepted, then crashed with a traceback (numpy or torch sizes overflowing, or sampling
    # after the first epoch), or built 10**11 layers for ever.
    corpus = tmp_path / "c.txt"
    corpus.write_text("Shall I compare thee to a summer's day?\n" * 40)
    argv = ["train", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--max-steps", "1", f"--{flag}={value}"]
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err)
    assert message in err and not (tmp_path / "run" / "latest").exists()


# -- the trainer state a resumed run reads ------------------------------------------------------


def tiny_trainer(stateful: bool) -> Any:
    """A Trainer over 6 steps an epoch of a 9-token model, and its model."""
    import numpy as np

    from textgen.config import ModelSpec, TrainConfig
    from textgen.data.batches import ShuffledWindows, StatefulStreams
    from textgen.models.lm import RecurrentLM
    from textgen.training.tasks import LanguageModelTask
    from textgen.training.trainer import Trainer

    torch.manual_seed(0)
    model = RecurrentLM(ModelSpec(vocab_size=9, hidden_size=8, embedding_dim=4))
    ids = np.arange(62) % 9
    batches = StatefulStreams(ids, 2, 5) if stateful else ShuffledWindows(ids, 2, 4, buffer=8)
    task = LanguageModelTask(batches, seq_len=5)
    cfg = TrainConfig(batch_size=2, seq_len=5, epochs=1, mode="stateful" if stateful else "shuffled")
    trainer = Trainer(model, task, cfg, device=torch.device("cpu"), log=lambda s: None)
    return trainer, model


def like_state(old: Any) -> st.SearchStrategy[Any]:
    """A replacement for a value of a trainer state: a tensor of another shape or type, a number out
    of range, or any JSON value."""
    tensors = st.builds(
        lambda shape, dtype: torch.zeros(shape, dtype=dtype),
        st.lists(st.integers(0, 3), max_size=3),
        st.sampled_from([torch.float32, torch.int64, torch.uint8, torch.bool]),
    )
    numbers = st.integers(-5, 10**20) | st.floats() | st.sampled_from([-1, 0, 7, 10**6])
    if torch.is_tensor(old):
        return st.one_of(tensors, st.just(old * math.nan), JSON)
    return st.one_of(numbers, tensors, JSON) if isinstance(old, (int, float)) else st.one_of(like(old), tensors)


STATE_KEYS = ["optimizer", "state", "param_groups", "position", "step", "epoch", "batch", "best_val", "lr_scale",
              "rng", "torch", "hidden", "last_eval_step", "exp_avg", "exp_avg_sq", "betas", "params",
              "world_size"]  # fmt: skip


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # (a tensor where torch expects a list)
@props(120)
@given(
    st.booleans(),
    st.lists(st.one_of(st.integers(0, 20), st.sampled_from(STATE_KEYS)), min_size=1, max_size=4),
    st.data(),
)
def test_a_damaged_trainer_state_is_refused_or_resumes(tmp_path, stateful, path, data):
    from textgen.errors import CheckpointError, ConfigError
    from textgen.training.run import restore_trainer

    trainer, _ = tiny_trainer(stateful)
    trainer._step()
    state = _mutate(trainer.state_dict(), path, lambda old: data.draw(like_state(old)))
    torch.save(state, tmp_path / "trainer_state.pt")
    trainer, model = tiny_trainer(stateful)
    try:
        restore_trainer(trainer, model, tmp_path)
    except CheckpointError as e:
        event("refused")
        assert "trainer_state.pt" in str(e)
        return
    except ConfigError as e:  # a state from another number of processes: the user's setting, named
        event("refused: world size")
        assert str(e).startswith("--resume: the run was trained by")
        return
    event("resumed")
    trainer.fit()  # what loads must train
    f"{trainer.pos.step:,} {trainer.pos.epoch:,}"
    torch.save(trainer.state_dict(), tmp_path / "again.pt")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s.pop("optimizer"), "KeyError: 'optimizer'"),
        (lambda s: s["position"].update(step="abc"), "position step = 'abc'"),  # was a traceback when logged
        (lambda s: s["position"].update(lr_scale=3e40), "lr_scale"),  # overflowed in the first step
        (lambda s: s["position"].update(batch=-3), "position batch = -3"),
        (lambda s: next(iter(s["optimizer"]["state"].values())).update(exp_avg=None), "'exp_avg' does not fit"),
        (lambda s: next(iter(s["optimizer"]["state"].values())).update(exp_avg=torch.zeros(())), "'exp_avg'"),
        (lambda s: s.update(hidden=[torch.zeros(1, 3, 8)]), "hidden state does not fit"),
    ],
)
def test_a_trainer_state_that_does_not_fit_is_refused_before_training(tmp_path, damage, message):
    # Each of these loaded, then failed with a traceback some steps into training (or at once).
    from textgen.errors import CheckpointError
    from textgen.training.run import restore_trainer

    trainer, _ = tiny_trainer(stateful=True)
    trainer._step()
    state = trainer.state_dict()
    damage(state)
    torch.save(state, tmp_path / "trainer_state.pt")
    trainer, model = tiny_trainer(stateful=True)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        restore_trainer(trainer, model, tmp_path)


# -- checkpoint files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A checkpoint directory of a tiny char model."""
    from textgen.checkpoint import save_checkpoint
    from textgen.config import ModelConfig, RunConfig, RunSpec
    from textgen.models.lm import RecurrentLM

    tok = CharTokenizer.train([CORPUS])
    cfg = RunConfig(model=ModelConfig(hidden_size=8, embedding_dim=4, layers=2))
    spec = RunSpec(vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("props") / "ckpt"
    save_checkpoint(path, RecurrentLM(spec.model(cfg.model)), cfg, spec, tok, {"step": 1})
    return path


def copy_checkpoint(src: Any, dst: Any) -> Any:
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def loads_and_generates(path: Any) -> bool:
    """True if the checkpoint loads and samples; False for a CheckpointError; anything else fails the test."""
    from textgen.api import TextGenerator
    from textgen.checkpoint import load_checkpoint
    from textgen.errors import CheckpointError

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        event("refused")
        return False
    event("loaded")
    TextGenerator(ckpt).generate("Caf", max_new_tokens=5, seed=0)
    return True


CONFIG_KEYS = ["model", "data", "train", "info", "format", "format_version", "vocab_size", "hidden_size",
               "embedding_dim", "layers", "cell", "dropout", "tie_weights", "level", "lowercase"]  # fmt: skip


@props(150)
@given(st.lists(st.one_of(st.integers(0, 30), st.sampled_from(CONFIG_KEYS)), max_size=3), st.data())
def test_a_damaged_checkpoint_config_is_refused_or_loads(tmp_path, checkpoint, path, data):
    ckpt = copy_checkpoint(checkpoint, tmp_path / "c")
    meta = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(_mutate(meta, path, lambda old: data.draw(like(old)))))
    loads_and_generates(ckpt)


@props(150)
@given(
    st.lists(st.tuples(st.integers(0, 400) | st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.just(0) | st.integers(0, 2000),
)
def test_damaged_weight_files_are_refused_or_load(tmp_path, checkpoint, changes, cut):
    # Bytes changed in the safetensors header (its first 8 bytes give its length, then JSON) or in the
    # weights, and the file perhaps cut short.
    ckpt = copy_checkpoint(checkpoint, tmp_path / "c")
    weights = ckpt / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    for at, value in changes:
        raw[at % len(raw)] = value
    weights.write_bytes(bytes(raw[: len(raw) - cut]))
    loads_and_generates(ckpt)


def test_weights_that_are_not_finite_are_refused_when_loading(tmp_path, checkpoint):
    # They loaded, then sampling died in torch.multinomial with a traceback.
    from safetensors.torch import load_file, save_file

    from textgen.checkpoint import load_checkpoint
    from textgen.errors import CheckpointError

    ckpt = copy_checkpoint(checkpoint, tmp_path / "c")
    weights = load_file(str(ckpt / "model.safetensors"))
    weights["head.bias"][3] = math.nan
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match="not finite .* in head.bias: the training diverged, or the file is damaged"
    ):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("penalty", [1e308, -1e308, math.inf, math.nan])
def test_translation_length_penalties_that_overflow_beam_scores_are_refused(penalty):
    # 1e308 passed (it is finite), then length ** penalty overflowed in the beam ranking: a traceback.
    from textgen.api import check_translation_settings
    from textgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"length_penalty must be in \[-10, 10\]"):
        check_translation_settings(2, penalty, None, 2.0)


OTHER_NUMBERS = {
    "translate": ["beams", "length-penalty", "max-length", "max-length-ratio"],
    "eval": ["batch-size", "beams"],
    "temperatures": ["temperatures", "top"],
}


@props(200)
@given(
    st.sampled_from(sorted(OTHER_NUMBERS)).flatmap(
        lambda cmd: st.tuples(
            st.just(cmd), st.lists(st.tuples(st.sampled_from(OTHER_NUMBERS[cmd]), NUMBER_TEXT), min_size=1, max_size=2)
        )
    )
)
def test_other_commands_number_flags_are_accepted_or_refused_in_one_line(tmp_path, capsys, command_flags):
    command, flags = command_flags
    argv = [command, str(tmp_path / "no-such-checkpoint"), *(f"--{name}={value}" for name, value in flags)]
    if command == "eval":
        argv += ["--corpus", str(tmp_path / "missing.txt")]
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err)
    event("accepted" if "checkpoint not found" in err else "refused")
