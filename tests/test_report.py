"""Run reports: loss curve, report.md, temperature reweighting, and the plot/temperatures commands."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from matplotlib.image import imread

from textgen.checkpoint import save_checkpoint
from textgen.config import ModelConfig, ModelSpec, RunConfig, RunSpec
from textgen.data.tokenizers import CharTokenizer
from textgen.errors import ConfigError, TextgenError
from textgen.models.lm import RecurrentLM
from textgen.report import (
    entropy_bits,
    md_cell,
    next_token_distribution,
    plot_losses,
    plot_temperatures,
    read_metrics,
    reweight,
    token_label,
    write_report,
)
from textgen.sampling.text import encode_prompt

HEADER = "step,epoch,tokens,train_loss,val_loss,bits_per_char,lr,tokens_per_s,elapsed_s"
METRICS = [
    "10,0.25,1280,3.9,,,0.01,5000,0.3",
    "20,0.5,2560,3.1,,,0.01,5000,0.5",
    "20,0.5,2560,,3.0,4.328,0.01,,0.6",  # a validation-only row
    "30,0.75,3840,2.6,,,0.01,5000,0.8",
    "40,1.0,5120,2.3,2.4,3.4624,0.01,5000,1.0",
]
TEMPS = (0.2, 0.5, 1.0)
CHARS = "\n !',.:;?ADIRSTabcdefghiklmnoprstuvwyz"


def tiny_model(vocab: int) -> RecurrentLM:
    return RecurrentLM(ModelSpec(vocab_size=vocab, hidden_size=8, embedding_dim=4)).eval()


def write_run(d: Path, metrics: bool = True, samples: bool = True, config: bool = True) -> Path:
    """A synthetic run directory in the formats the trainer writes."""
    d.mkdir(parents=True, exist_ok=True)
    if metrics:
        (d / "metrics.csv").write_text("\n".join([HEADER, *METRICS]) + "\n", encoding="utf-8")
    if samples:
        lines = [
            {"step": step, "epoch": epoch, "temperature": t, "prompt": "Sh", "text": f"s{step} t{t} a|b\nc"}
            for step, epoch in ((20, 0.5), (40, 1.0))
            for t in TEMPS
        ]
        (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    if config:
        tok = CharTokenizer(list(CHARS))
        cfg = RunConfig(model=ModelConfig(hidden_size=8, embedding_dim=4))
        spec = RunSpec(vocab_size=tok.vocab_size)
        save_checkpoint(d / "latest", tiny_model(tok.vocab_size), cfg, spec, tok, {"step": 40, "epoch": 1.0})
    return d


def read_png(path: Path):
    assert path.is_file() and path.stat().st_size > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.01  # something was drawn
    return image


def test_plot_losses_writes_a_png_next_to_the_metrics_or_at_out(tmp_path):
    run = write_run(tmp_path / "run", samples=False, config=False)
    assert plot_losses(run) == run / "loss.png"
    read_png(run / "loss.png")
    out = tmp_path / "figs" / "curve.png"
    assert plot_losses(run, out) == out
    read_png(out)
    assert not list(run.glob(".*.tmp")) and not list(out.parent.glob(".*.tmp"))  # written atomically


def test_plot_losses_refuses_missing_or_empty_metrics(tmp_path):
    with pytest.raises(TextgenError, match="run directory not found"):
        plot_losses(tmp_path / "nope")
    with pytest.raises(TextgenError, match="metrics.csv not found"):
        plot_losses(tmp_path)
    (tmp_path / "metrics.csv").write_text(HEADER + "\n")
    with pytest.raises(TextgenError, match="no rows"):
        plot_losses(tmp_path)
    assert not (tmp_path / "loss.png").exists()


def test_read_metrics_parses_empty_cells_and_drops_only_a_torn_last_line(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("\n".join([HEADER, *METRICS, "50,1.25,64"]) + "\n")
    rows = read_metrics(p)
    assert len(rows) == len(METRICS)
    assert rows[0]["val_loss"] is None and rows[2]["train_loss"] is None and rows[2]["val_loss"] == 3.0
    assert rows[-1] == {
        "step": 40,
        "epoch": 1.0,
        "tokens": 5120,
        "train_loss": 2.3,
        "val_loss": 2.4,
        "bits_per_char": 3.4624,
    }
    p.write_text("\n".join([HEADER, METRICS[0], "20,x,1,2,,,,,", METRICS[1]]) + "\n")
    with pytest.raises(TextgenError, match="line 3"):
        read_metrics(p)
    p.write_text("a,b\n1,2\n")
    with pytest.raises(TextgenError, match="no step, epoch, tokens"):
        read_metrics(p)


def samples_table(report: str) -> list[list[str]]:
    """The cells of the markdown table under '## Samples' (header first, separator dropped)."""
    section = report.split("## Samples", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [re.split(r"(?<!\\)\|", r)[1:-1] for r in rows if not r.startswith("| ---")]


def test_write_report_has_config_metrics_curve_and_samples_by_step_and_temperature(tmp_path):
    run = write_run(tmp_path / "run")
    path = write_report(run)
    assert path == run / "report.md"
    report = path.read_text(encoding="utf-8")
    assert report.startswith("# Training report: run\n")
    # config, from latest/config.json, section by section
    assert 'model:\n  cell: "lstm"' in report and "  hidden_size: 8\n" in report
    assert f"spec:\n  vocab_size: {len(CHARS) + 1}\n" in report  # what the data decided, apart from the settings
    assert "\ndata:\n" in report and "\ntrain:\n" in report and "format_version: 3" in report
    # latest metrics and the curve
    assert "| steps | 40 |" in report and "| tokens seen | 5,120 |" in report
    assert "| validation loss (step 40) | 2.4000 nats |" in report and "| bits per character | 3.4624 |" in report
    assert f"| perplexity | {math.exp(2.4):.2f} |" in report and "| best validation loss | 2.4000 nats |" in report
    assert "![loss](loss.png)" in report
    read_png(run / "loss.png")
    # samples: one column per temperature, one row per step, text escaped for a table cell
    table = samples_table(report)
    assert [c.strip() for c in table[0]] == ["step (epoch)", "T = 0.2", "T = 0.5", "T = 1"]
    assert [r[0].strip() for r in table[1:]] == ["20 (0.50)", "40 (1.00)"]
    assert table[2][2].strip() == r"s40 t0.5 a\|b<br>c"
    assert "the prompt 'Sh'" in report
    assert not list(run.glob(".*.tmp"))


def test_write_report_says_what_is_missing(tmp_path):
    report = write_report(tmp_path).read_text()
    assert "No checkpoint yet" in report and "metrics.csv not found" in report and "No samples yet" in report
    assert "![loss]" not in report and not (tmp_path / "loss.png").exists()
    run = write_run(tmp_path / "run", config=False)
    (run / "samples.jsonl").write_text('{"step": 1, "epoch": 0.1, "temperature": 0.5, "prompt": "", "text": "x"}\n{"st')
    report = write_report(run).read_text()
    assert "1 line(s) of `samples.jsonl` could not be read" in report and len(samples_table(report)) == 2
    with pytest.raises(TextgenError, match="run directory not found"):
        write_report(tmp_path / "nope")


def test_write_report_on_a_trained_run(tiny_run):
    report = write_report(tiny_run).read_text()
    assert "  hidden_size: 32\n" in report and "## Samples" in report


def test_md_cell_escapes_table_breakers_and_html():
    assert md_cell("a|b\nc<unk>*d") == r"a\|b<br>c&lt;unk&gt;\*d"


def test_reweight_is_the_tutorial_formula_and_entropy_falls_with_temperature(tmp_path):
    torch.manual_seed(0)
    probs = torch.rand(40).pow(3).softmax(-1)
    for t in (0.2, 0.5, 1.0, 1.5, 3.0):
        expected = probs.double() ** (1 / t)
        torch.testing.assert_close(reweight(probs, t), expected / expected.sum(), atol=1e-6, rtol=0)
    greedy = reweight(probs, 0)
    assert greedy.sum() == 1 and greedy[probs.argmax()] == 1
    assert entropy_bits(torch.full((8,), 1 / 8)) == pytest.approx(3.0)
    tok = CharTokenizer(list(CHARS))
    temps = [0, 0.2, 0.5, 1.0, 1.5]
    entropies = plot_temperatures(
        probs[: tok.vocab_size] / probs[: tok.vocab_size].sum(), tok, temps, tmp_path / "t.png"
    )
    assert entropies[0] == 0 and all(a < b for a, b in zip(entropies, entropies[1:]))
    read_png(tmp_path / "t.png")


def test_plot_temperatures_refuses_bad_arguments(tmp_path):
    tok, probs = CharTokenizer(list("ab")), torch.tensor([0.2, 0.3, 0.5])
    with pytest.raises(ConfigError, match="-0.5"):
        plot_temperatures(probs, tok, [1.0, -0.5], tmp_path / "t.png")
    with pytest.raises(ConfigError, match="at least one"):
        plot_temperatures(probs, tok, [], tmp_path / "t.png")
    with pytest.raises(ConfigError, match="top"):
        plot_temperatures(probs, tok, [1.0], tmp_path / "t.png", top=0)
    with pytest.raises(TextgenError, match=r"\.xyz"):
        plot_temperatures(probs, tok, [1.0], tmp_path / "t.xyz")
    assert not list(tmp_path.iterdir())


def test_token_labels_show_whitespace_as_repr():
    assert [token_label(t) for t in ("\n", " ", " the", "a", "$", "\t")] == [
        "'\\n'",
        "' '",
        "' the'",
        "a",
        "$",
        "'\\t'",
    ]


def test_next_token_distribution_is_the_last_position_softmax():
    tok = CharTokenizer(list(CHARS))
    model = tiny_model(tok.vocab_size).train()
    probs = next_token_distribution(model, tok, "Shall I")
    assert model.training  # mode restored
    with torch.no_grad():
        logits, _ = model.eval()(torch.tensor([encode_prompt(tok, "Shall I")]))
    torch.testing.assert_close(probs, logits[0, -1].softmax(-1))
    assert probs.shape == (tok.vocab_size,) and probs.sum().item() == pytest.approx(1.0)
    with pytest.raises(TextgenError, match="outside the model's vocabulary"):
        next_token_distribution(model, tok, "Zebra")


def test_plot_command_writes_the_curve_and_the_report(tmp_path):
    run = write_run(tmp_path / "run")
    r = run_cli("plot", str(run))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(run / "loss.png")
    read_png(run / "loss.png")
    r = run_cli("plot", str(run), "--out", str(tmp_path / "c.png"), "--report")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(tmp_path / "c.png"), str(run / "report.md")]
    assert "![loss](loss.png)" in (run / "report.md").read_text()


def test_temperatures_command_prints_entropies_and_writes_the_figure(tiny_run, tmp_path):
    from textgen import load

    r = run_cli(
        "temperatures", str(tiny_run), "--prompt", "Shall I", "--temperatures", "0", "0.5", "1", "2", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "temperatures.png"
    read_png(tmp_path / "temperatures.png")
    found = [re.match(r"T=(\S+)\s+entropy\s+([\d.]+) bits\s+'", line) for line in lines[:-1]]
    assert all(found) and [float(m[1]) for m in found] == [0, 0.5, 1, 2]
    printed = [float(m[2]) for m in found]
    assert printed[0] == 0 and all(a < b for a, b in zip(printed, printed[1:]))
    gen = load(tiny_run, "cpu")
    at_1 = entropy_bits(next_token_distribution(gen.model, gen.tokenizer, "Shall I"))
    assert printed[2] == pytest.approx(at_1, abs=1e-3)


def test_temperatures_command_takes_a_checkpoint_dir_top_and_out(tiny_run, tmp_path):
    out = tmp_path / "figs" / "t.png"
    r = run_cli("temperatures", str(tiny_run / "best"), "--prompt", "", "--top", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 5 and r.stdout.splitlines()[-1] == str(out)
    read_png(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plot", "{tmp}/nope"], "run directory not found"),
        (["plot", "{tmp}"], "metrics.csv not found"),
        (["temperatures", "{tmp}/nope", "--prompt", "a"], "checkpoint not found"),
        (
            ["temperatures", "{run}", "--prompt", "a", "--temperatures", "1", "-0.5"],
            "temperatures must be a finite number >= 0, got -0.5",
        ),
        (["temperatures", "{run}", "--prompt", "a", "--top", "0"], "--top must be at least 1"),
        (["temperatures", "{run}", "--prompt", "Zürich"], "outside the model's vocabulary: 'Z', 'ü'"),
    ],
)
def test_report_commands_refuse_bad_input_in_one_line(tiny_run, tmp_path, args, message):
    r = run_cli(*[a.format(tmp=tmp_path, run=tiny_run) for a in args], cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("textgen: error: ") and message in r.stderr and r.stderr.count("\n") == 1
    assert r.stdout == "" and not (tmp_path / "temperatures.png").exists()
