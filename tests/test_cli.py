"""The command line through a subprocess: the whole workflow, Ctrl-C, and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import POEM, run_cli

TINY_FLAGS = ["--hidden-size", "32", "--embedding-dim", "16", "--batch-size", "8", "--seq-len", "16"]


def test_train_generate_eval_summary_through_the_cli(tmp_path, poem_file):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  cell: gru\nlr: 0.01\nsample_temperatures: [0.2, 1.0]\nsample_length: 40\n")
    r = run_cli(
        "train",
        "--corpus",
        str(poem_file),
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--max-steps",
        "20",
        "--eval-every",
        "10",
        *TINY_FLAGS,
    )
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout and "bits/char" in r.stdout
    assert "temperature 0.2" in r.stdout and "temperature 1.0" in r.stdout and "temperature 0.5" not in r.stdout
    assert json.loads((out / "best" / "config.json").read_text())["model"]["cell"] == "gru"  # from the YAML

    g = run_cli("generate", str(out), "--prompt", "Shall", "--max-new-tokens", "30", "--seed", "3")
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("Shall") and len(g.stdout) == len("Shall") + 30 + 1
    assert (
        g.stdout == run_cli("generate", str(out), "--prompt", "Shall", "--max-new-tokens", "30", "--seed", "3").stdout
    )  # seeded: the same text again
    many = run_cli(
        "generate", str(out / "latest"), "--num-samples", "3", "--max-new-tokens", "10", "--temperature", "0"
    )
    assert many.stdout.count("--- sample") == 3

    e = run_cli("eval", str(out), "--corpus", "-", "--json", stdin=POEM * 30)
    assert e.returncode == 0, e.stderr
    result = json.loads(e.stdout)
    assert set(result) == {"loss", "perplexity", "bits_per_char", "tokens", "unknown_tokens"}
    assert result["tokens"] == len(POEM * 30) - 1 and result["unknown_tokens"] == 0

    s = run_cli("summary", str(out))
    assert "gru_0 (GRU)" in s.stdout and "Total params:" in s.stdout


def test_generate_json_probabilities_stops_and_interactive(tiny_run):
    r = run_cli(
        "generate",
        str(tiny_run),
        "--prompt",
        "Shall",
        "--max-new-tokens",
        "25",
        "--seed",
        "4",
        "--num-samples",
        "3",
        "--json",
        "--show-probs",
        "2",
        "--top-p",
        "0.9",
        "--stop",
        "\\n",
    )
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["sample"] for o in objs] == [0, 1, 2]
    for o in objs:
        assert o["finish_reason"] in ("stop", "length") and "\n" not in o["text"]
        assert len(o["probs"]) == len(o["tokens"]) == len(o["token_ids"])
        assert all(len(p["top"]) == 2 and 0 < p["prob"] <= 1 for p in o["probs"])
        if o["finish_reason"] == "stop":
            assert o["tokens"][-1] == "\n"
    table = run_cli(
        "generate",
        str(tiny_run),
        "--prompt",
        "Shall",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--show-probs",
        "3",
    )
    assert "--- probabilities ---" in table.stdout and len(table.stdout.splitlines()) == 1 + 1 + 5
    i = run_cli(
        "generate",
        str(tiny_run),
        "--interactive",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        stdin="Shall\nThou ☃\nRough\n",
    )
    assert i.returncode == 0
    assert [line[:5] for line in i.stdout.splitlines()] == ["Shall", "Rough"]  # the bad prompt is skipped
    assert "outside the model's vocabulary: '☃'" in i.stderr


def test_summary_of_the_shakespeare_preset_and_the_presets_list():
    s = run_cli("summary", "--preset", "shakespeare")
    assert "5,251,072" in s.stdout and "Total params: 5,334,337" in s.stdout and "5,330,241" in s.stdout
    assert "shakespeare" in run_cli("presets").stdout


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, poem_file):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "textgen",
            "train",
            "--corpus",
            str(poem_file),
            "--out",
            str(out),
            "--epochs",
            "1000",
            "--eval-every",
            "1",
            "--eval-batches",
            "1",
            "--sample-length",
            "0",
            *TINY_FLAGS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:  # the first validation line is printed from inside the training loop
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout
    r = run_cli(
        "train",
        "--corpus",
        str(poem_file),
        "--out",
        str(out),
        "--resume",
        "--epochs",
        "1000",
        "--max-steps",
        "3",
        "--sample-length",
        "0",
        *TINY_FLAGS,
    )
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--corpus", "NOPE.txt"], "corpus not found: NOPE.txt"),
        (["train", "--corpus", "{empty}"], "corpus is empty"),
        (["train", "--corpus", "{short}"], "corpus too short"),
        (["train", "--corpus", "{latin1}"], "latin1.txt is not UTF-8: byte 0xe9 at offset 3"),
        (["train", "--corpus", "{poem}", "--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
        (["train", "--corpus", "{poem}", "--config", "{badyaml}"], "unknown setting 'hiden_size'"),
        (["generate", "{run}", "--prompt", "Shall ☃ €"], "outside the model's vocabulary: '☃', '€'"),
        (["generate", "{run}", "--prompt", "Sh\udce9"], "not valid Unicode: lone surrogate U+DCE9 at character 2"),
        (["generate", "{run}", "--top-k", "many"], "argument --top-k: invalid int value: 'many'"),
        (["generate", "{run}", "--beams", "2", "--length-penalty", "1e308"], "length_penalty must be in [-10, 10]"),
        (["summary", "--preset", "shakespeare", "--vocab-size", str(2**40)], "vocab_size must be in [0, 4294967296]"),
        (["generate", "{run}", "--temperature", "-0.5"], "temperature must be a finite number >= 0, got -0.5"),
        (["generate", "{run}", "--top-k", "-1"], "top_k must be an integer >= 0, got -1"),
        (["generate", "{run}", "--num-samples", "0"], "num_samples must be in [1, 4096], got 0"),
        (["generate", "{run}", "--top-p", "0"], "top_p must be a number in (0, 1], got 0.0"),
        (["generate", "{run}", "--min-p", "2"], "min_p must be a number in [0, 1], got 2.0"),
        (["generate", "{run}", "--repetition-penalty", "-1"], "repetition_penalty must be a number in (0, inf)"),
        (["generate", "{run}", "--show-probs", "-1"], "--show-probs must be 0 or more"),
        (["generate", "NO_SUCH_DIR"], "checkpoint not found: NO_SUCH_DIR"),
        (["generate", "{truncated}"], "model.safetensors is truncated or corrupt"),
        (["generate", "{future}"], "checkpoint format 4"),
        (["eval", "{run}", "--corpus", "{latin1}"], "is not UTF-8"),
        (["summary"], "give either a checkpoint or --preset NAME"),
        (["train", "--corpus", "{poem}", "--config", "."], "cannot read config file ."),
        (["train", "--corpus", "{poem}", "--out", "{poem}"], "is a file, not a directory"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--out", "{run}", "--resume", "--cell", "gru"], "trained with cell = 'lstm', not 'gru'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, tiny_run, args, message):
    import shutil

    files = {"empty": "", "short": "tiny", "poem": POEM * 30}
    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_text(text)
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9".encode("latin-1"))
    (tmp_path / "bad.yaml").write_text("hiden_size: 3\n")
    shutil.copytree(tiny_run / "best", tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.copytree(tiny_run / "best", tmp_path / "future")
    meta = json.loads((tmp_path / "future" / "config.json").read_text())
    (tmp_path / "future" / "config.json").write_text(json.dumps({**meta, "format_version": 4}))
    subs = {
        "run": str(tiny_run),
        "badyaml": str(tmp_path / "bad.yaml"),
        "truncated": str(tmp_path / "truncated"),
        "future": str(tmp_path / "future"),
        **{n: str(tmp_path / f"{n}.txt") for n in [*files, "latin1"]},
    }
    argv = [a.format(**subs) for a in args]
    if argv[0] == "train":
        argv += ([] if "--out" in argv else ["--out", str(tmp_path / "out")]) + TINY_FLAGS
    r = run_cli(*argv, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("textgen: error: ")
