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


# -- the parser, generated from the commands table -------------------------------------------------

# Every flag each subcommand took before its parser was generated from the commands table (and the two added since:
# generate --verbose, serve --decode-precision). A flag that disappears breaks someone's scripts.
FLAGS = {
    "train": "--accumulate --attention --batch-size --bidirectional --cell --clip --config --corpus --device "
    "--dropout --embedding-dim --encoding-errors --epochs --eval-batches --eval-every --eval-minutes --eval-sentences "
    "--ffn-mult --heads --hidden-size --kernel-size --no-random-offset --pretokenized --random-offset --val-corpus "
    "--layers --level --log-every --loss --lowercase --lr --max-bad-steps --max-minutes --max-steps --max-tokens "
    "--max-words --min-freq --min-lr --mode --no-bidirectional --no-lowercase --no-records --no-reverse "
    "--no-shared-vocab --no-tensorboard --no-tie-weights --optimizer --out --overwrite --pairs --patience "
    "--plateau-factor --plateau-patience --precision --preset --recipe --record-prefix --records --resume --reverse "
    "--sample-length --sample-prompt --sample-sentences --sample-temperatures --sample-window --save-every "
    "--save-minutes --schedule --seed --seq-len --shared-vocab --shuffle-buffer --task --teacher-forcing "
    "--tensorboard --tie-weights --val-fraction --vocab-size --warmup-steps --weight-decay --window-stride",
    "generate": "--beams --decode-precision --device --frequency-penalty --interactive --json --length-penalty "
    "--max-new-tokens --min-p --no-repeat-ngram --num-samples --presence-penalty --prompt --repetition-penalty --seed "
    "--show-probs --stop --temperature --top-k --top-p --typical-p --verbose",
    "eval": "--batch-size --beams --corpus --device --encoding-errors --json --no-reverse --pairs --reverse",
    "summary": "--preset --vocab-size",
    "presets": "",
    "plot": "--out --report",
    "temperatures": "--device --out --prompt --temperatures --top",
    "translate": "--beams --device --input --json --length-penalty --max-length --max-length-ratio",
    "serve": "--api-key --decode-precision --device --host --max-batch --max-prompt-tokens --max-tokens --port "
    "--stream-interval",
    "export": "--format --out --overwrite --weights",
}
MODEL_FLAGS = (
    "--attention --bidirectional --cell --dropout --embedding-dim --ffn-mult --heads --hidden-size --kernel-size "
    "--layers --no-bidirectional --no-tie-weights --task --tie-weights"
)
# compare: every data and training flag (what the configurations share), not the model's, and its own.
FLAGS["compare"] = " ".join(
    sorted(
        (set(FLAGS["train"].split()) - set(MODEL_FLAGS.split()) - {"--preset", "--out", "--resume", "--overwrite"})
        | {"--cells", "--params", "--configs", "--minutes", "--out", "--resume", "--overwrite"}
    )
)


def test_the_generated_parser_has_every_subcommand_and_flag():
    import argparse

    from textgen.cli import COMMANDS, build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert list(subs) == [c.name for c in COMMANDS] and set(subs) == set(FLAGS)
    for name, flags in FLAGS.items():
        have = {o for a in subs[name]._actions for o in a.option_strings} - {"-h", "--help"}
        assert have == set(flags.split()), name
    devices = [c.name for c in COMMANDS if any("--device" in a.names for a in c.args)]
    assert devices == ["generate", "eval", "temperatures", "translate", "serve"]  # one declaration, five commands


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--hidden-size", "8", "--no-tensorboard", "--sample-temperatures", "0.5", "1"], {"hidden_size": 8}),
        (["train", "--sample-temperatures", "0.5", "1"], {"sample_temperatures": [0.5, 1.0]}),
        (["generate", "RUN", "--stop", "a", "--stop", "b", "--seed", "3"], {"stop": ["a", "b"], "seed": 3}),
        (["generate", "RUN", "--verbose", "--decode-precision", "int8"], {"verbose": True, "decode_precision": "int8"}),
        (["serve", "A", "B", "--decode-precision", "fp32"], {"checkpoints": ["A", "B"], "decode_precision": "fp32"}),
        (["serve", "A"], {"decode_precision": "auto", "device": "auto"}),
        (["eval", "RUN", "--no-reverse", "--corpus", "a", "b"], {"reverse": False, "corpus": ["a", "b"]}),
    ],
)
def test_the_generated_parser_reads_flags_as_before(argv, expected):
    from textgen.cli import build_parser

    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    if argv[0] == "train":  # absent flags stay absent: a preset or a resumed run can tell
        assert not hasattr(args, "lr")


def test_help_does_not_import_torch():
    code = "import sys; from textgen.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    code += "assert 'torch' not in sys.modules, 'torch was imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: textgen" in r.stdout


def test_generate_verbose_says_which_decode_precision_and_why(tiny_run):
    from textgen import load

    params = sum(p.numel() for p in load(tiny_run, "cpu").model.parameters())
    r = run_cli("generate", str(tiny_run), "--max-new-tokens", "5", "--seed", "0", "--device", "cpu", "--verbose")
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"textgen: decode precision fp32: {params:,} parameters are too few for int8 to gain on a CPU\n"
    quiet = run_cli("generate", str(tiny_run), "--max-new-tokens", "5", "--seed", "0", "--device", "cpu")
    asked = run_cli("generate", str(tiny_run), "--max-new-tokens", "5", "--seed", "0", "--device", "cpu", "--verbose",
                    "--decode-precision", "fp32")  # fmt: skip
    assert quiet.stderr == "" and quiet.stdout == r.stdout == asked.stdout
    assert asked.stderr == "textgen: decode precision fp32, as asked\n"
