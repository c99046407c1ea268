"""The ``textgen`` command: thin subcommands over the Python API, generated from one table.

``COMMANDS`` lists each subcommand with its function and arguments; ``build_parser`` turns it into
argparse subparsers. Training and sampling flags are generated from the config dataclasses, so
``--help``, YAML keys and ``config.json`` share names and one-line docs. Bad input ends with one
line on stderr and exit code 2; Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from textgen import __version__
from textgen.config import DEVICES, SECTIONS, TRANSLATION_BEAMS, SampleConfig
from textgen.errors import TextgenError
from textgen.kinds import all_kinds, get_kind


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other bad input (its subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"textgen: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Arg:
    """One argument of a subcommand: its names and ``add_argument``'s keywords."""

    names: tuple[str, ...]
    options: dict[str, Any]


def arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: its function, its one-line help, its arguments and the config sections that become flags.

    ``rest``: the list argument that also takes positional words given after a flag (translate RUN --beams 5 "...")."""

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    args: tuple[Arg, ...] = ()
    description: str | None = None
    settings: dict[str, type] = field(default_factory=dict)
    rest: str | None = None


def _config_flag(group: Any, f: dataclasses.Field[Any], default: Any = argparse.SUPPRESS) -> None:
    """The flag of one config field: its help and choices from the field's metadata, its type from its default.

    Absent flags stay absent (``SUPPRESS``), so presets and resumes can tell what was given."""
    meta = f.metadata
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    kw: dict[str, Any] = {"dest": f.name, "default": default, "help": f"{meta['help']} (default: {value!r})"}
    if "choices" in meta:
        kw["choices"] = meta["choices"]
    if isinstance(value, bool):
        kw["action"] = argparse.BooleanOptionalAction
    elif isinstance(value, list) and meta.get("action") == "append":
        kw.update(action="append", type=str)
    elif isinstance(value, list):
        kw.update(nargs="+", type=type(value[0]) if value else str)
    else:
        kw["type"] = meta.get("type", type(value))
    group.add_argument("--" + f.name.replace("_", "-"), **kw)


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def build_parser() -> argparse.ArgumentParser:
    """The ``textgen`` parser, a subparser per entry of ``COMMANDS``."""
    p = _Parser(prog="textgen", description="Train recurrent text generators and sample from them.")
    p.add_argument("--version", action="version", version=f"textgen {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        s = sub.add_parser(command.name, help=command.help, description=command.description)
        for a in command.args:
            s.add_argument(*a.names, **a.options)
        for section, cls in command.settings.items():
            group = s.add_argument_group(f"{section} settings")
            for f in dataclasses.fields(cls):
                _config_flag(group, f)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from textgen.api import build_config, default_out
    from textgen.training.run import run_training

    settings = {k: v for cls in SECTIONS.values() for k, v in _given(args, cls).items()}
    cfg, explicit = build_config(args.preset, args.config, **settings)
    out = args.out or default_out(cfg)
    result = run_training(cfg, out, resume=args.resume, overwrite=args.overwrite, explicit=explicit)
    if result.reason == "interrupted":
        return 130
    best = f", best validation loss {result.best_val:.4f} nats" if result.best_val is not None else ""
    if _rank() == 0:
        print(f"done: {result.step:,} steps{best}; checkpoints in {out}/best and {out}/latest")
    return 0


def _rank() -> int:
    """This process's rank under torchrun (0 when alone): only rank 0 reports, other ranks name themselves."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _prog() -> str:
    rank = _rank()
    return f"textgen (rank {rank})" if rank else "textgen"


def cmd_generate(args: argparse.Namespace) -> int:
    from textgen.sampling.precision import choose_precision
    from textgen.sampling.processors import processors_for

    settings = SampleConfig.from_settings(_given(args, SampleConfig))
    settings = dataclasses.replace(settings, stop=[_unescape(s) for s in settings.stop])
    settings.validate()
    if args.show_probs < 0 or (args.show_probs and settings.beams > 1):
        raise TextgenError(f"--show-probs must be 0 or more, and is not available with --beams; got {args.show_probs}")
    try:
        processors_for(settings)
    except ValueError as e:
        raise TextgenError(str(e)) from None
    gen = _load_for(args.checkpoint, args.device, "generate")
    if args.verbose:  # chosen once per model (and remembered): what every Generation below decodes in
        _, why = choose_precision(gen.model, settings.decode_precision)
        print(f"textgen: decode precision {why}", file=sys.stderr)
    if not args.interactive:
        _generate_once(gen, args.prompt, settings, args)
        return 0
    ask = sys.stdin.isatty()
    while True:
        if ask:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        try:
            _generate_once(gen, line.rstrip("\n"), settings, args)
        except TextgenError as e:  # a bad prompt: say so and read the next one
            print(f"textgen: error: {e}", file=sys.stderr)


def _unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` typed in a flag, as the characters they stand for."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _generate_once(gen: Any, prompt: str, settings: SampleConfig, args: argparse.Namespace) -> None:
    """Print the samples for one prompt: streamed text, a JSON object per sample, or both with probabilities."""
    from textgen.sampling.decode import Generation

    unknown = gen.tokenizer.unknown_in(prompt)
    if unknown and gen.tokenizer.kind == "word":
        print(f"note: not in the vocabulary, read as <unk>: {', '.join(unknown[:10])}", file=sys.stderr)
    streamed = settings.num_samples == 1 and not args.json  # printed as it comes: nothing to keep
    run = Generation(
        gen.model, gen.tokenizer, prompt, dataclasses.replace(settings), args.show_probs, record=not streamed
    )
    out = sys.stdout
    if args.json:
        for _ in run:
            pass
        for i, s in enumerate(run.samples):
            obj: dict[str, Any] = {
                "sample": i,
                "prompt": prompt,
                "text": s.text,
                "tokens": [gen.tokenizer.token_text(t) for t in s.tokens],
                "token_ids": s.tokens,
                "finish_reason": s.finish_reason,
            }
            if args.show_probs:
                obj["probs"] = [
                    {
                        "token": gen.tokenizer.token_text(c.token),
                        "prob": c.prob,
                        "top": [[gen.tokenizer.token_text(t), p] for t, p in c.top],
                    }
                    for c in s.choices
                ]
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()
        return
    if settings.num_samples == 1:
        out.write(prompt)
        for _, piece in run:
            out.write(piece)
            out.flush()
        out.write("\n")
    else:
        for _ in run:
            pass
        for i, s in enumerate(run.samples):
            out.write(f"--- sample {i + 1} ({s.finish_reason}) ---\n{prompt}{s.text}\n")
    if args.show_probs:
        for i, s in enumerate(run.samples):
            out.write(f"--- probabilities{f' of sample {i + 1}' if settings.num_samples > 1 else ''} ---\n")
            for c in s.choices:
                alternatives = "  ".join(f"{gen.tokenizer.token_text(t)!r} {p:.3f}" for t, p in c.top)
                out.write(f"{gen.tokenizer.token_text(c.token)!r:<14} {c.prob:.3f}   {alternatives}\n")
    out.flush()


def _load_for(checkpoint: str, device: str, command: str) -> Any:
    """Load a checkpoint of the kind that ``command`` (generate, translate) runs; another kind is one line
    naming the command that fits it."""
    from textgen.api import load

    model = load(checkpoint, device)
    kind = get_kind(model.kind)
    if kind.command != command:
        wanted = next(k for k in all_kinds() if k.command == command)
        raise TextgenError(f"{checkpoint} holds {kind.title}, not {wanted.title}: use {kind.usage}")
    return model


def cmd_eval(args: argparse.Namespace) -> int:
    from textgen.api import load

    if args.batch_size < 1:
        raise TextgenError("--batch-size must be at least 1")
    if bool(args.corpus) == bool(args.pairs):
        raise TextgenError("give --corpus FILE (a language model) or --pairs FILE (a translation model)")
    model = load(args.checkpoint, args.device)
    kind = get_kind(model.kind)
    if not getattr(args, kind.inputs_field):  # the other kind's input
        raise TextgenError(f"{args.checkpoint} holds {kind.title}: {kind.eval_usage}")
    figures, line = kind.evaluate(model, args)
    print(json.dumps(figures) if args.json else line)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from textgen.api import check_translation_settings

    check_translation_settings(args.beams, args.length_penalty, args.max_length, args.max_length_ratio)
    if args.sentences and args.input:
        raise TextgenError("give sentences as arguments or --input FILE, not both")
    model = _load_for(args.checkpoint, args.device, "translate")
    settings = {
        "beams": args.beams,
        "length_penalty": args.length_penalty,
        "max_length": args.max_length,
        "max_length_ratio": args.max_length_ratio,
    }
    out = sys.stdout
    for chunk in _sentence_chunks(args):
        unknown = list(dict.fromkeys(u for text in chunk for u in model.text.unknown_in(text)))
        if unknown:
            print(f"note: not in the source vocabulary, read as unknown: {', '.join(unknown[:10])}", file=sys.stderr)
        for source, translation in zip(chunk, model.translate(chunk, **settings)):
            if args.json:
                out.write(json.dumps({"source": source, "translation": translation}, ensure_ascii=False) + "\n")
            else:
                out.write(translation + "\n")
        out.flush()
    return 0


def _sentence_chunks(args: argparse.Namespace, size: int = 256) -> Any:
    """The sentences to translate, a chunk at a time: the arguments, or the lines of --input or stdin."""
    if args.sentences:
        yield list(args.sentences)
        return
    if args.input and args.input != "-":
        from textgen.data.corpus import resolve_paths
        from textgen.data.pairs import iter_lines

        lines: Any = (line for _, _, line in iter_lines(resolve_paths([args.input], what="input file")))
        typed = False
    else:
        lines = _stdin_lines()
        typed = sys.stdin.isatty()  # someone typing: answer each line at once
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size or typed:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _stdin_lines() -> Any:
    """Standard input's lines (ending at ``\\n`` only, without it or a ``\\r`` before it), each checked as UTF-8."""
    for number, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TextgenError(
                f"stdin line {number} is not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start}"
            ) from None
        yield line.removesuffix("\n").removesuffix("\r")


def cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from textgen.api import build_config
    from textgen.checkpoint import load_checkpoint
    from textgen.config import RunSpec
    from textgen.kinds import kind_of
    from textgen.models.summary import format_summary
    from textgen.presets import get_preset

    if bool(args.checkpoint) == bool(args.preset):
        raise TextgenError("give either a checkpoint or --preset NAME")
    if args.preset:
        preset = get_preset(args.preset)
        cfg, _ = build_config(args.preset)
        if args.vocab_size is not None and args.vocab_size < 1:
            raise TextgenError(f"--vocab-size must be at least 1, got {args.vocab_size}")
        vocab_size = args.vocab_size or preset.vocab_size
        if vocab_size < 1:
            raise TextgenError(f"preset {args.preset} has no fixed vocabulary; give --vocab-size")
        kind = kind_of(cfg)
        source_vocab_size = preset.source_vocab_size if kind.has_source else 0
        spec = RunSpec(vocab_size=vocab_size, source_vocab_size=source_vocab_size).model(cfg.model)
        spec.validate()
        with torch.device("meta"):  # shapes and counts only: no memory, whatever the size
            model = kind.build_model(spec)
        title = f"{args.preset} (vocabulary {vocab_size})"
    else:
        ckpt = load_checkpoint(args.checkpoint)
        model, title, cfg = ckpt.model, str(ckpt.path), ckpt.config
    print(format_summary(model, cfg.train.batch_size, title))
    if cfg.train.loss == "last":
        print("Loss: on the last step of each window only (Keras' return_sequences=False)")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from textgen.presets import PRESETS

    for p in PRESETS.values():
        print(f"{p.name:<13} {p.description}  [{p.tutorial}]")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from textgen.report import plot_losses, write_report

    print(plot_losses(args.run_dir, args.out))
    if args.report:
        print(write_report(args.run_dir))
    return 0


def cmd_temperatures(args: argparse.Namespace) -> int:
    from textgen.report import check_temperatures, next_token_distribution, plot_temperatures, reweight

    check_temperatures(args.temperatures)
    if args.top < 1:
        raise TextgenError(f"--top must be at least 1, got {args.top}")
    gen = _load_for(args.checkpoint, args.device, "generate")  # torch: only once the arguments are known to be good
    tok = gen.tokenizer
    unknown = tok.unknown_in(args.prompt)
    if unknown and tok.kind == "word":
        print(f"note: not in the vocabulary, read as <unk>: {', '.join(unknown[:10])}", file=sys.stderr)
    probs = next_token_distribution(gen.model, tok, args.prompt)
    shown = args.prompt[-40:]
    where = gen.checkpoint.path
    title = f"{where.parent.name}/{where.name}: next token after {'...' if len(args.prompt) > 40 else ''}{shown!r}"
    entropies = plot_temperatures(probs, tok, args.temperatures, args.out, args.top, title)
    for t, h in zip(args.temperatures, entropies):
        p, i = reweight(probs, t).topk(min(5, len(probs)))
        best = "  ".join(f"{tok.token_text(j)!r} {q:.3f}" for j, q in zip(i.tolist(), p.tolist()))
        print(f"T={t:<5g} entropy {h:6.3f} bits   {best}")
    print(args.out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import socket

    if not re.fullmatch(r"\d{1,5}", args.port) or int(args.port) > 65535:
        raise TextgenError(f"--port must be a number from 0 to 65535, got {args.port!r}")
    for flag in ("max_tokens", "max_prompt_tokens", "max_batch"):
        if getattr(args, flag) < 1:
            raise TextgenError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not 0 <= args.stream_interval <= 10:
        raise TextgenError(f"--stream-interval must be from 0 to 10 seconds, got {args.stream_interval:g}")
    named = _model_names(args.checkpoints)
    key = args.api_key or os.environ.get("TEXTGEN_API_KEY") or None
    try:  # bind first: a busy port fails at once, not after loading the models
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.create_server((args.host, int(args.port)), family=family)
    except OSError as e:
        if isinstance(e, socket.gaierror) or (e.errno or 0) < 0:  # the name did not resolve
            raise TextgenError(f"--host {args.host!r} is not a known address") from None
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise TextgenError(f"cannot listen on {args.host} port {args.port}: {reason}") from None
    try:
        from textgen.api import load

        models = {name: load(path, args.device) for name, path in named.items()}
        import uvicorn

        from textgen.serve.app import create_app

        app = create_app(
            models,
            api_key=key,
            max_tokens=args.max_tokens,
            max_prompt_tokens=args.max_prompt_tokens,
            max_batch=args.max_batch,
            decode_precision=args.decode_precision,
            stream_interval=args.stream_interval,
        )
        host, port = sock.getsockname()[:2]
        where = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        print(f"textgen: serving {', '.join(models)} at {where}/ (playground) and {where}/v1 (API)", flush=True)
        if not key and host not in ("127.0.0.1", "::1", "localhost"):
            print("textgen: warning: no --api-key, and this address may be reachable from other machines", flush=True)
        try:
            config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down cleanly on Ctrl-C, then raises it again
            print("textgen: stopped", file=sys.stderr)
    finally:
        sock.close()
    return 0


def _model_names(specs: Sequence[str]) -> dict[str, str]:
    """Model id -> checkpoint path: NAME=DIR, else the directory's name (its run's, for best/ or latest/)."""
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).exists() or not re.fullmatch(r"[\w.-]+", name):
            p = Path(spec).resolve()
            name, path = (p.parent.name if p.name in ("best", "latest") else p.name) or "model", spec
        if name in named:
            raise TextgenError(f"two checkpoints would both be called {name!r}: name them with NAME=DIR")
        named[name] = path
    return named


def cmd_export(args: argparse.Namespace) -> int:
    from textgen.export import export

    out = export(args.checkpoint, args.format, args.out, overwrite=args.overwrite, weights=args.weights)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    print(f"{out} ({size / 1e6:.2f} MB)")
    return 0


# ---------------------------------------------------------------- the commands table

CHECKPOINT = arg("checkpoint", help="checkpoint directory, or a run directory (its best checkpoint)")
DEVICE = arg(
    "--device",
    default="auto",
    choices=DEVICES,
    help="where to run the model; auto uses CUDA when present (default: auto)",
)


def _json(what: str) -> Arg:
    return arg("--json", action="store_true", help=f"print one JSON object{what}")


def _decode_precision() -> Arg:
    """serve's --decode-precision: generate's flag (SampleConfig.decode_precision), with its default given."""
    f = next(f for f in dataclasses.fields(SampleConfig) if f.name == "decode_precision")
    return arg(
        "--decode-precision",
        default=f.default,
        choices=f.metadata["choices"],
        help=f"{f.metadata['help']}; chosen once per model at start, shown at /health (default: {f.default})",
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from textgen import lab
    from textgen.config import load_config_file

    common = {**(load_config_file(args.config) if args.config else {})}
    common.update({k: v for cls in SECTIONS.values() for k, v in _given(args, cls).items()})
    common.setdefault("eval_minutes", args.minutes / 10)  # a loss curve of about ten points per configuration
    common.setdefault("sample_length", 0)
    outcomes, finished = lab.compare(
        args.out,
        cells=args.cells or [],
        configs=args.configs or [],
        params=args.params,
        minutes=args.minutes,
        common=common,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(f"report: {args.out / 'report.md'}")
    for o in sorted(outcomes, key=lambda o: o.val_loss if o.val_loss is not None else float("inf")):
        loss = f"{o.val_loss:.4f} nats/token" if o.val_loss is not None else "no validation"
        print(f"{o.name:<12} {o.parameters:>12,} parameters  {loss}")
    return 0 if finished else 130


COMMANDS: tuple[Command, ...] = (
    Command(
        "train",
        cmd_train,
        "train a language model on text files, or a translation model on sentence pairs",
        (
            arg("--out", type=Path, help="run directory (default: runs/<corpus name>)"),
            arg("--preset", help="start from a named tutorial configuration (see `textgen presets`)"),
            arg("--config", type=Path, help="YAML or JSON file of settings (flags override it)"),
            arg("--resume", action="store_true", help="continue the run in --out from its latest checkpoint"),
            arg("--overwrite", action="store_true", help="replace the run already in --out"),
        ),
        description="Train a char-, word- or BPE-level recurrent language model (--corpus), or an encoder-decoder "
        "translation model (--task translate --pairs FILE).",
        settings=SECTIONS,
    ),
    Command(
        "generate",
        cmd_generate,
        "sample text from a checkpoint",
        (
            CHECKPOINT,
            arg("--prompt", default="", help="text to continue (default: start of a document)"),
            arg("--interactive", action="store_true", help="read prompts line by line from stdin"),
            _json(" per sample"),
            arg(
                "--show-probs",
                type=int,
                default=0,
                metavar="K",
                help="for each token, show its probability and the K most likely tokens",
            ),
            arg("--verbose", action="store_true", help="say on stderr which decode precision was chosen, and why"),
            DEVICE,
        ),
        settings={"sampling": SampleConfig},
    ),
    Command(
        "eval",
        cmd_eval,
        "loss, perplexity and bits per character on a corpus; BLEU, chrF and exact match on pairs",
        (
            CHECKPOINT,
            arg("--corpus", nargs="+", help="language model: files, folders or globs ('-' for stdin)"),
            arg("--pairs", nargs="+", help="translation model: tab-separated pair files ('-' for stdin)"),
            arg(
                "--beams",
                type=int,
                default=1,
                help="translation model: beam search with this many beams (default: 1, greedy)",
            ),
            arg(
                "--reverse",
                action=argparse.BooleanOptionalAction,
                help="translation model: swap the pair columns (default: as the model was trained)",
            ),
            _json(""),
            arg(
                "--encoding-errors",
                default="strict",
                choices=("strict", "replace"),
                help="strict: refuse bytes that are not UTF-8; replace: read them as U+FFFD (default: strict)",
            ),
            arg("--batch-size", type=int, default=32, help="parallel streams (default: 32)"),
            DEVICE,
        ),
        description="Score a language model on text (--corpus), or a translation model on sentence pairs (--pairs).",
    ),
    Command(
        "summary",
        cmd_summary,
        "layer table with output shapes and parameter counts",
        (
            arg("checkpoint", nargs="?", help="checkpoint or run directory"),
            arg("--preset", help="summarise a preset's architecture instead"),
            arg("--vocab-size", type=int, help="vocabulary size for --preset (default: the tutorial's)"),
        ),
    ),
    Command("presets", cmd_presets, "list the tutorial presets"),
    Command(
        "plot",
        cmd_plot,
        "draw a run's loss curve (and write its report)",
        (
            arg("run_dir", type=Path, metavar="RUN_DIR", help="run directory (holding metrics.csv)"),
            arg("--out", type=Path, metavar="FILE", help="image file (default: RUN_DIR/loss.png)"),
            arg("--report", action="store_true", help="also write RUN_DIR/report.md: config, metrics, samples"),
        ),
    ),
    Command(
        "temperatures",
        cmd_temperatures,
        "figure of the next-token distribution reweighted at several temperatures",
        (
            CHECKPOINT,
            arg("--prompt", default="", metavar="TEXT", help="text before the token (default: start of a document)"),
            arg(
                "--temperatures",
                nargs="+",
                type=float,
                default=[0.2, 0.5, 1.0, 1.5],
                metavar="T",
                help="temperatures to reweight by, 0 meaning greedy (default: 0.2 0.5 1.0 1.5)",
            ),
            arg("--top", type=int, default=20, metavar="K", help="tokens shown, most likely first (default: 20)"),
            arg(
                "--out",
                type=Path,
                default=Path("temperatures.png"),
                metavar="FILE",
                help="(default: ./temperatures.png)",
            ),
            DEVICE,
        ),
        description="Draw the model's next-token distribution after a prompt as each temperature reweights it.",
    ),
    Command(
        "translate",
        cmd_translate,
        "translate sentences with a translation model",
        (
            CHECKPOINT,
            arg("sentences", nargs="*", metavar="SENTENCE", help="sentences to translate (default: read lines)"),
            arg("--input", metavar="FILE", help="translate each line of FILE ('-' for stdin)"),
            arg(
                "--beams",
                type=int,
                default=TRANSLATION_BEAMS,
                help=f"beam search with this many beams; 1 is greedy (default: {TRANSLATION_BEAMS}: "
                "on eng-fra 5 beams gave 33.7 BLEU where greedy gave 29.6)",
            ),
            arg(
                "--length-penalty",
                type=float,
                default=1.0,
                help="beam search ranks translations by log p / length ** this (default: 1.0)",
            ),
            arg("--max-length", type=int, help="most tokens per translation (default: relative to the source)"),
            arg(
                "--max-length-ratio",
                type=float,
                default=2.0,
                help="most tokens per translation as a multiple of the source's tokens, plus 10 (default: 2.0)",
            ),
            _json(" per sentence"),
            DEVICE,
        ),
        description="Translate the sentences given as arguments, or each line of --input FILE or of stdin.",
        rest="sentences",
    ),
    Command(
        "serve",
        cmd_serve,
        "serve checkpoints over HTTP: an OpenAI-style API and a playground page",
        (
            arg(
                "checkpoints",
                nargs="+",
                metavar="CKPT",
                help="checkpoint or run directories; NAME=DIR gives a model its id (default: the directory's name)",
            ),
            arg("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"),
            arg("--port", default="8000", metavar="PORT", help="port to listen on; 0 picks a free one (default: 8000)"),
            arg(
                "--api-key",
                metavar="KEY",
                help="require the header Authorization: Bearer KEY on the /v1 routes "
                "(default: $TEXTGEN_API_KEY, else none)",
            ),
            arg(
                "--max-tokens",
                type=int,
                default=2048,
                metavar="N",
                help="largest max_tokens a request may ask for (default: 2048)",
            ),
            arg(
                "--max-prompt-tokens",
                type=int,
                default=4096,
                metavar="N",
                help="longest prompt, in tokens (default: 4096)",
            ),
            arg(
                "--max-batch",
                type=int,
                default=64,
                metavar="N",
                help="sequences decoded together per model (default: 64)",
            ),
            arg(
                "--stream-interval",
                type=float,
                default=0.02,
                metavar="SECONDS",
                help="a streamed reply sends what this many seconds of decoding made in one chunk: fewer, larger "
                "chunks leave more of the CPU to decoding; 0 sends every token as it comes (default: 0.02)",
            ),
            _decode_precision(),
            DEVICE,
        ),
        description="Serve checkpoints over HTTP: POST /v1/completions (OpenAI's completions API, streaming "
        "included), GET /v1/models, POST /v1/translate, GET /health, and a playground page at /.",
    ),
    Command(
        "compare",
        cmd_compare,
        "train several models on the same text for the same minutes each, and compare them",
        (
            arg("--cells", nargs="+", metavar="CELL", help="cells to compare, each sized to --params parameters"),
            arg(
                "--params",
                type=int,
                default=1_000_000,
                help="parameter budget of each --cells model (default: 1000000)",
            ),
            arg("--configs", nargs="+", metavar="FILE", help="settings files (YAML or JSON), one configuration each"),
            arg("--minutes", type=float, default=5.0, help="wall-clock minutes of training each (default: 5)"),
            arg(
                "--out", type=Path, default=Path("runs/compare"), help="the comparison's folder (default: runs/compare)"
            ),
            arg("--config", type=Path, help="YAML or JSON file of settings common to every configuration"),
            arg("--resume", action="store_true", help="continue an interrupted comparison in --out"),
            arg("--overwrite", action="store_true", help="replace the comparison already in --out"),
        ),
        description="Train each configuration (a --cells entry sized to --params, or a settings file) on the same "
        "corpus, split and seed for the same minutes, one after another, and write OUT/report.md with a table "
        "(parameters, steps, tokens/s, validation loss and bits per character, generation speed, a sample) and "
        "figures of validation loss against time and against tokens. Other flags set what every configuration "
        "shares (the corpus, the level, the precision...).",
        settings={"data": SECTIONS["data"], "train": SECTIONS["train"]},
    ),
    Command(
        "export",
        cmd_export,
        "write a language model as ONNX graphs, or as one web page that generates text in the browser",
        (
            CHECKPOINT,
            arg("--format", required=True, metavar="FORMAT", help="onnx or html"),
            arg("--out", required=True, type=Path, metavar="PATH", help="the folder (onnx) or file (html) to write"),
            arg("--overwrite", action="store_true", help="replace PATH if it exists"),
            arg(
                "--weights",
                metavar="TYPE",
                help="how the weights are stored: fp32, fp16 or int8 (one scale per row) (default: fp32 for onnx, "
                "int8 for html)",
            ),
        ),
        description="Export a checkpoint's language model: --format onnx writes a folder (step.onnx, prompt.onnx, "
        "tokenizer.json, config.json) for ONNX Runtime and other runtimes; --format html writes one self-contained "
        "page (weights embedded) that generates text in the browser with no server.",
    ),
)
BY_NAME = {c.name: c for c in COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = BY_NAME[args.command]
    if extras and command.rest and not any(e.startswith("-") and e != "-" for e in extras):
        setattr(args, command.rest, [*getattr(args, command.rest), *extras])  # words after a flag
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return command.run(args)
    except TextgenError as e:
        print(f"{_prog()}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_prog()}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `textgen generate ... | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # the file system refused: a path that is a folder, no permission, a full disk
        where = f": {e.filename}" if e.filename else ""
        print(f"{_prog()}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
