"""Training end to end: memorising, learning, exact resume, checkpoints and their failures."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from conftest import POEM, TINY
from safetensors.torch import load_file

from textgen import load, train
from textgen.api import build_config
from textgen.checkpoint import load_checkpoint, load_trainer_state, read_config
from textgen.errors import CheckpointError, ConfigError, CorpusError


def weights(run: Path, which: str = "latest") -> dict[str, torch.Tensor]:
    return load_file(str(run / which / "model.safetensors"))


def test_tiny_model_memorises_a_short_text_and_reproduces_it_greedily(tmp_path):
    text = "the quick brown fox jumps over the lazy dog; textgen remembers it all.\n"
    (tmp_path / "t.txt").write_text(text)
    train(
        str(tmp_path / "t.txt"),
        tmp_path / "run",
        mode="stateful",
        batch_size=1,
        seq_len=24,
        epochs=150,
        hidden_size=64,
        embedding_dim=16,
        lr=1e-2,
        val_fraction=0.0,
        sample_length=0,
    )
    gen = load(tmp_path / "run")
    assert gen.generate(text[:6], max_new_tokens=len(text) - 6, temperature=0) == text[6:]


def test_loss_falls_on_the_bundled_corpus_within_a_few_dozen_steps(tmp_path):
    result = train(None, tmp_path / "run", max_steps=40, eval_every=40, eval_batches=20, **TINY)
    assert result.step == 40
    assert result.val_loss < math.log(66) - 1.0  # from ln(vocabulary) = 4.19 nats to under 3.19


@pytest.mark.parametrize("mode", ["shuffled", "stateful"])
def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, poem_file, mode):
    kw = dict(mode=mode, layers=2, dropout=0.2, eval_every=4, **{**TINY, "batch_size": 4})
    whole = train(str(poem_file), tmp_path / "whole", max_steps=23, **kw)
    train(str(poem_file), tmp_path / "split", max_steps=9, **kw)  # stops mid-epoch (epochs of ~8 steps)
    state = load_trainer_state(tmp_path / "split" / "latest")
    assert state["position"]["step"] == 9 and state["position"]["batch"] > 0
    resumed = train(str(poem_file), tmp_path / "split", max_steps=23, resume=True, **kw)
    assert resumed.step == whole.step == 23
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_directory_layout_and_best_checkpoint(tiny_run):
    for which in ("best", "latest"):
        assert {p.name for p in (tiny_run / which).iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert (tiny_run / "latest" / "trainer_state.pt").exists()
    meta = json.loads((tiny_run / "best" / "config.json").read_text())
    assert meta["format_version"] == 3 and meta["model"]["hidden_size"] == 32
    assert (
        "vocab_size" not in meta["model"]
        and meta["spec"]["vocab_size"] == load_checkpoint(tiny_run).tokenizer.vocab_size
    )
    assert (
        all(Path(p).is_absolute() for p in meta["spec"]["inputs"]) and meta["spec"]["inputs"] == meta["data"]["corpus"]
    )
    assert load_checkpoint(tiny_run).path.name == "best"  # a run directory loads its best checkpoint
    assert not any(p.name.startswith(".") for p in tiny_run.iterdir())  # no temporary directories left


def test_existing_run_is_not_overwritten_without_asking(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    with pytest.raises(ConfigError, match="already holds a run: use --resume"):
        train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    train(str(poem_file), tmp_path / "run", max_steps=3, overwrite=True, **TINY)
    assert load_trainer_state(tmp_path / "run" / "latest")["position"]["step"] == 3


def test_resume_with_a_changed_model_shape_is_refused(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    with pytest.raises(ConfigError, match="trained with hidden_size = 32, not 64"):
        train(str(poem_file), tmp_path / "run", resume=True, **{**TINY, "hidden_size": 64})


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, poem_file, capsys):
    (tmp_path / "new").mkdir()  # e.g. a run that crashed before its first checkpoint
    result = train(str(poem_file), tmp_path / "new", max_steps=2, resume=True, **TINY)
    assert result.step == 2 and "starting from the beginning" in capsys.readouterr().out


def test_corpus_shorter_than_one_sequence(tmp_path):
    (tmp_path / "s.txt").write_text("too short")
    with pytest.raises(CorpusError, match="corpus too short"):
        train(str(tmp_path / "s.txt"), tmp_path / "run", **TINY)


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src / "best", dst)
    return dst


def test_truncated_weights_are_reported(tiny_run, tmp_path):
    ckpt = copy_run(tiny_run, tmp_path / "c")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("version, word", [(99, "newer"), (0, "older")])
def test_other_checkpoint_format_versions_are_named(tiny_run, tmp_path, version, word):
    ckpt = copy_run(tiny_run, tmp_path / "c")
    meta = json.loads((ckpt / "config.json").read_text())
    meta["format_version"] = version
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"checkpoint format {version} .*, {word} than the formats 1, 2 and 3"):
        load_checkpoint(ckpt)


def before_format_3(meta: dict, version: int = 2) -> dict:
    """config.json as textgen wrote it before format 3: the vocabulary sizes in the model section, the
    corpus saved absolute in the data section, no spec."""
    spec = meta.pop("spec")
    sizes = {"vocab_size": spec["vocab_size"], "source_vocab_size": spec["source_vocab_size"]}
    meta["model"] = {**sizes, **meta["model"]}
    meta["data"]["pairs" if meta["model"]["task"] == "translate" else "corpus"] = spec["inputs"]
    meta["format_version"] = version
    return meta


def test_a_format_1_language_model_still_loads(tiny_run, tmp_path):
    # Format 2 added translation models; a format-1 checkpoint has no task or attention settings.
    ckpt = copy_run(tiny_run, tmp_path / "c")
    meta = before_format_3(json.loads((ckpt / "config.json").read_text()), version=1)
    for key in ("task", "source_vocab_size", "attention", "bidirectional"):
        del meta["model"][key]
    (ckpt / "config.json").write_text(json.dumps(meta))
    loaded = load_checkpoint(ckpt)
    assert loaded.config.model.task == "lm" and loaded.spec.vocab_size == loaded.tokenizer.vocab_size


def test_a_format_2_run_resumes_from_another_directory_and_saves_format_3(tmp_path, poem_file, monkeypatch):
    # As the previous version wrote it: the vocabulary size in the model section, the corpus made absolute.
    run = tmp_path / "run"
    train(str(poem_file), run, max_steps=3, **TINY)
    for which in ("latest", "best"):
        path = run / which / "config.json"
        path.write_text(json.dumps(before_format_3(json.loads(path.read_text()))))
    assert json.loads((run / "latest" / "config.json").read_text())["model"]["vocab_size"] > 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train(out=run, max_steps=6, resume=True, **TINY).step == 6
    meta = json.loads((run / "latest" / "config.json").read_text())
    assert meta["format_version"] == 3 and "vocab_size" not in meta["model"]
    assert meta["spec"]["inputs"] == [str(poem_file)] and meta["data"]["corpus"] == [str(poem_file)]


def test_a_relative_corpus_is_saved_as_given_and_the_run_resumes_from_anywhere(tmp_path, monkeypatch):
    # The config keeps what the user typed; the spec keeps the file it named, as an absolute path.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "poem.txt").write_text(POEM * 30, encoding="utf-8")
    monkeypatch.chdir(tmp_path / "a")
    train("poem.txt", tmp_path / "run", max_steps=3, **TINY)
    meta = json.loads((tmp_path / "run" / "latest" / "config.json").read_text())
    assert meta["data"]["corpus"] == ["poem.txt"]
    assert meta["spec"]["inputs"] == [str(tmp_path / "a" / "poem.txt")]
    monkeypatch.chdir(tmp_path)
    assert train(out=tmp_path / "run", max_steps=5, resume=True, **TINY).step == 5
    with pytest.raises(ConfigError, match="trained with corpus = "):  # another file of the same name
        (tmp_path / "poem.txt").write_text(POEM, encoding="utf-8")
        train("poem.txt", tmp_path / "run", max_steps=7, resume=True, **TINY)


def test_missing_and_truncated_config(tiny_run, tmp_path):
    ckpt = copy_run(tiny_run, tmp_path / "c")
    (ckpt / "config.json").write_text('{"format": "textgen-checkp')
    with pytest.raises(CheckpointError, match="config.json is truncated or not JSON"):
        load_checkpoint(ckpt)
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint: tokenizer.json missing"):
        load_checkpoint(ckpt)


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "PWNED",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_payload_in_trainer_state_is_refused_not_run(tiny_run, tmp_path):
    ckpt = tmp_path / "c"
    import shutil

    shutil.copytree(tiny_run / "latest", ckpt)
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps({"optimizer": Payload()}))
    marker = Path(__file__).parent / "PWNED"
    with pytest.raises(CheckpointError, match="not allowed"):
        load_trainer_state(ckpt)
    assert not marker.exists()


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_run, tmp_path, monkeypatch):
    import errno

    from textgen import checkpoint

    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_run, run)
    before = weights(run)
    ckpt = load_checkpoint(run / "latest")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_model", full)
    with pytest.raises(CheckpointError, match="disk full .* the previous checkpoint there is intact"):
        checkpoint.save_checkpoint(run / "latest", ckpt.model, ckpt.config, ckpt.spec, ckpt.tokenizer, {})
    after = weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.name.startswith(".") for p in run.iterdir())


def test_eval_reports_nats_perplexity_and_bits_per_char(tiny_run, tmp_path):
    (tmp_path / "e.txt").write_text(POEM + "zzz ☃")
    r = load(tiny_run).evaluate(str(tmp_path / "e.txt"))
    assert r.tokens == len(POEM + "zzz ☃") - 1 and r.characters == r.tokens
    assert r.unknown_tokens == 4  # "zzz" and the snowman are not in the poem
    assert math.isclose(r.perplexity, math.exp(r.loss))
    assert math.isclose(r.bits_per_char, r.loss / math.log(2))  # one character per token


def test_resume_takes_the_new_learning_rate_and_refuses_a_new_data_layout(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    train(str(poem_file), tmp_path / "run", max_steps=4, resume=True, **{**TINY, "lr": 0.5})
    groups = load_trainer_state(tmp_path / "run" / "latest")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.5]
    for key, value in [("batch_size", 4), ("optimizer", "sgd"), ("mode", "stateful")]:
        with pytest.raises(ConfigError, match=f"trained with {key} = "):
            train(str(poem_file), tmp_path / "run", max_steps=6, resume=True, **{**TINY, key: value})


def test_resume_of_a_bpe_run_with_its_own_vocab_size(tmp_path, poem_file):
    kw = dict(level="bpe", vocab_size=300, **TINY)
    train(str(poem_file), tmp_path / "run", max_steps=2, **kw)
    assert train(str(poem_file), tmp_path / "run", max_steps=3, resume=True, **kw).step == 3


def test_resume_of_a_stdin_run_reuses_its_copy_of_stdin(tmp_path, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((POEM * 30).encode())))
    train("-", tmp_path / "run", max_steps=2, **TINY)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))  # nothing on stdin this time
    assert train("-", tmp_path / "run", max_steps=3, resume=True, **TINY).step == 3
    assert (tmp_path / "run" / "stdin.txt").read_text() == POEM * 30


def test_overwrite_with_a_mistyped_corpus_keeps_the_old_run(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    with pytest.raises(CorpusError, match="corpus not found"):
        train(str(tmp_path / "typo.txt"), tmp_path / "run", overwrite=True, **TINY)
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(CorpusError, match="corpus too short"):
        train(str(tmp_path / "short.txt"), tmp_path / "run", overwrite=True, **TINY)
    assert (tmp_path / "run" / "latest" / "model.safetensors").exists()


def test_resume_from_a_damaged_latest_checkpoint_is_an_error_not_a_restart(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    (tmp_path / "run" / "latest" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint: config.json missing"):
        train(str(poem_file), tmp_path / "run", max_steps=3, resume=True, **TINY)


def test_api_sampling_settings_are_checked_by_name(tiny_run):
    gen = load(tiny_run)
    with pytest.raises(ConfigError, match="unknown sample setting"):
        gen.generate("Shall", temprature=0.5)
    with pytest.raises(ConfigError, match="sample.top_k must be int"):
        gen.generate("Shall", top_k="3")
    text = gen.generate("Shall", max_new_tokens=12, temperature=0)
    assert len(text) == 12 and "".join(gen.stream("Shall", max_new_tokens=12, temperature=0)) == text


def test_a_failed_first_run_does_not_block_its_directory(tmp_path, poem_file):
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(CorpusError, match="corpus too short"):
        train(str(tmp_path / "short.txt"), tmp_path / "run", **TINY)
    assert (tmp_path / "run" / "tokens.bin").exists()  # a cache, not a run
    assert train(str(poem_file), tmp_path / "run", max_steps=2, **TINY).step == 2


def test_resume_needs_an_existing_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="--resume: there is no run directory"):
        train(None, tmp_path / "typo", resume=True, **TINY)


def test_resume_from_another_working_directory(tmp_path, poem_file, monkeypatch):
    monkeypatch.chdir(poem_file.parent)
    train(poem_file.name, tmp_path / "run", max_steps=2, **TINY)  # a relative corpus path
    monkeypatch.chdir("/")
    assert train(None, tmp_path / "run", max_steps=3, resume=True).step == 3


def test_a_bad_sample_prompt_is_refused_before_training(tmp_path, poem_file):
    with pytest.raises(ConfigError, match="--sample-prompt: .*'Q', 'z', '~'"):
        train(str(poem_file), tmp_path / "run", **{**TINY, "sample_length": 10, "sample_prompt": "Qz~"})
    assert not (tmp_path / "run" / "latest").exists()


def test_resuming_a_finished_run_says_what_to_raise(tmp_path, poem_file, capsys):
    train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    train(None, tmp_path / "run", resume=True)
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_out_of_range_seeds_are_refused(tmp_path, poem_file, tiny_run, seed):
    with pytest.raises(ConfigError, match="seed must be between 0 and 2\\*\\*63 - 1"):
        train(str(poem_file), tmp_path / "run", seed=seed, **TINY)
    with pytest.raises(ConfigError, match="seed must be between"):
        load(tiny_run).generate("Shall", seed=seed)


def test_an_incomplete_best_checkpoint_is_an_error_not_a_fallback(tiny_run, tmp_path):
    import shutil

    shutil.copytree(tiny_run, tmp_path / "run")
    (tmp_path / "run" / "best" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="best is not a complete checkpoint: config.json missing"):
        load_checkpoint(tmp_path / "run")


def test_eval_minutes_validates_once_that_much_training_time_has_passed(poem_file, tmp_path):
    import csv

    def validations(run: Path) -> list[int]:
        with (run / "metrics.csv").open(newline="", encoding="utf-8") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r["val_loss"]]

    # A tiny interval has always passed by the next step: every step validates. Without it, only the end does.
    train(str(poem_file), tmp_path / "often", max_steps=6, eval_minutes=1e-9, log_every=0, **TINY)
    train(str(poem_file), tmp_path / "never", max_steps=6, log_every=0, **TINY)
    assert validations(tmp_path / "often") == [1, 2, 3, 4, 5, 6]
    assert validations(tmp_path / "never") == [6]


def test_a_validation_corpus_is_scored_instead_of_the_corpus_tail(poem_file, tmp_path):
    from textgen.data.tokens import prepare_tokens

    held = tmp_path / "held.txt"
    held.write_text("Thou art more lovely and more temperate:\n" * 5, encoding="utf-8")
    cfg, _ = build_config(val_corpus=[str(held)])
    tok, data = prepare_tokens(cfg.data, [poem_file], tmp_path / "run", log=lambda m: None, val_paths=[held])
    assert tok.decode(data.train.tolist()) == poem_file.read_text(encoding="utf-8")  # all of it trains
    assert tok.decode(data.val.tolist()) == held.read_text(encoding="utf-8")
    assert data.val_chars == len(held.read_text(encoding="utf-8"))
    train(str(poem_file), tmp_path / "t", max_steps=3, val_corpus=[str(held)], **TINY)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(CorpusError, match="validation corpus is empty"):
        train(str(poem_file), tmp_path / "e", max_steps=3, val_corpus=[str(empty)], **TINY)


def test_already_tokenized_word_text_is_detected_and_runs_before_the_random_offset_resume_as_they_were(tmp_path):
    wiki = tmp_path / "wiki.txt"
    line = " the <unk> of the river , a tributary @-@ like stream , runs north . \n"
    wiki.write_text(line * 300, encoding="utf-8")
    run = tmp_path / "w"
    train(str(wiki), run, level="word", max_steps=2, **TINY)
    words = json.loads((run / "best" / "tokenizer.json").read_text(encoding="utf-8"))
    assert words["spaced"] is True and "@-@" in words["words"]
    # A checkpoint written before random_offset existed had fixed windows: it reads back that way.
    config = json.loads((run / "latest" / "config.json").read_text(encoding="utf-8"))
    del config["train"]["random_offset"]
    (run / "latest" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert read_config(run / "latest")[0].train.random_offset is False
    assert build_config(preset="shakespeare")[0].train.random_offset is False  # the tutorial's windows
    assert build_config()[0].train.random_offset is True
