"""The language-model kind: next-token prediction over one text; ``textgen generate``; ``POST /v1/completions``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen.config import RunConfig, RunSpec
from textgen.errors import ConfigError, TextgenError
from textgen.kinds.base import Kind

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI
    from torch import nn

    from textgen.checkpoint import Checkpoint
    from textgen.config import ModelSpec
    from textgen.inference.generator import TextGenerator
    from textgen.serve.routes import Served, ServeOptions
    from textgen.training.setup import Setup


class LanguageModel(Kind):
    name = "lm"
    noun = "language model"
    command = "generate"
    usage = "textgen generate"
    route = "/v1/completions"
    inputs_field = "corpus"
    eval_usage = "score it on text with --corpus"
    has_source = False
    default_run = "tinyshakespeare"  # the bundled corpus it trains on when given none

    def check(self, config: RunConfig) -> None:
        if config.data.pairs:
            raise ConfigError("pairs are for translation models: add --task translate (or --preset translate)")

    def recipe(
        self, config: RunConfig, explicit: set[str], out: Path, device: torch.device, log: Callable[[str], None]
    ) -> RunConfig:
        """The recipe's model and training for this corpus and budget (``textgen.recipe``), when it applies."""
        from textgen import recipe
        from textgen.data.corpus import resolve_paths
        from textgen.data.tokens import prepare_tokens, pretokenized

        if not recipe.applies(config, explicit):
            return config
        if "-" in config.data.corpus:
            log("recipe: off for text from stdin (it is read once); the plain defaults apply")
            return config
        paths = resolve_paths(config.data.corpus)
        spaced = ("level" not in explicit or config.data.level == "word") and pretokenized(
            config.data, paths, lambda message: None
        )
        if spaced and "level" not in explicit:
            # its words are the units its makers chose (and <unk> stands for the rare ones): model those
            log("recipe: the text is already tokenized (words between spaces): training on its words")
            config = config.updated({"level": "word"})
        if config.data.level == "word" and "min_freq" not in explicit:
            size = sum(p.stat().st_size for p in paths)
            # already tokenized text has its own unknown token; rare words of raw text cost softmax and teach little
            config = config.updated({"min_freq": 1 if spaced else 2 if size < (2 << 20) else 3})
        val_paths = resolve_paths(config.data.val_corpus, what="validation corpus") if config.data.val_corpus else []
        tokenizer, data = prepare_tokens(config.data, paths, out, log=log, val_paths=val_paths)
        return recipe.apply(config, explicit, data.split, tokenizer.vocab_size, device, log)

    def prepare(
        self,
        config: RunConfig,
        out: Path,
        latest: Path | None,
        device: torch.device,
        log: Callable[[str], None],
        shared: dict[str, Any] | None = None,
    ) -> Setup:
        """Tokens of the corpus in a memmap, stateful streams or shuffled windows, the model, samples.

        ``shared``: rank 0's tokenizer (under torchrun), whose tokens.bin is then read, never written."""
        from textgen.checkpoint import load_tokenizer
        from textgen.data.batches import ShuffledWindows, StatefulStreams
        from textgen.data.corpus import resolve_paths
        from textgen.data.tokenizers import AnyTokenizer, tokenizer_from_json
        from textgen.data.tokens import prepare_tokens
        from textgen.sampling.text import encode_prompt
        from textgen.training.callbacks import PrintSamples
        from textgen.training.setup import Setup, absolute, build_on, run_inputs
        from textgen.training.tasks import LanguageModelTask
        from textgen.training.trainer import Callback

        t = config.train
        inputs = run_inputs(self, config, latest)
        paths = resolve_paths(inputs, stdin_spool=out / "stdin.txt", reuse_spool=latest is not None)
        if shared is not None:
            given: AnyTokenizer | None = tokenizer_from_json(shared["target"])
        else:
            given = load_tokenizer(latest) if latest else None
        val_paths = resolve_paths(config.data.val_corpus, what="validation corpus") if config.data.val_corpus else []
        tokenizer, data = prepare_tokens(
            config.data, paths, out, given, log=log, readonly=shared is not None, val_paths=val_paths
        )
        if t.sample_length and t.sample_temperatures:
            try:
                encode_prompt(tokenizer, t.sample_prompt)
            except TextgenError as e:
                raise ConfigError(f"--sample-prompt: {e}") from None
        spec = RunSpec(vocab_size=tokenizer.vocab_size, inputs=absolute(inputs))
        model = build_on(device, self, spec.model(config.model))
        if t.mode == "stateful":
            batches: StatefulStreams | ShuffledWindows = StatefulStreams(data.train, t.batch_size, t.seq_len)
        else:
            batches = ShuffledWindows(
                data.train,
                t.batch_size,
                t.seq_len,
                t.shuffle_buffer,
                t.window_stride,
                t.seed,
                random_offset=t.random_offset,
            )
        task = LanguageModelTask(
            batches,
            loss=t.loss,
            val_ids=data.val,
            val_streams=t.batch_size,
            seq_len=t.seq_len,
            eval_batches=t.eval_batches,
            val_chars_per_token=data.val_chars / len(data.val) if len(data.val) else 1.0,
        )

        def callbacks(resume_step: int | None) -> list[Callback]:
            return [
                PrintSamples(
                    model,
                    tokenizer,
                    t.sample_temperatures,
                    t.sample_length,
                    t.sample_prompt,
                    t.seed,
                    log,
                    path=out / "samples.jsonl",
                    window=t.sample_window,
                    train_ids=data.train,
                    resume_step=resume_step,
                )
            ]

        summary = (
            f"{len(data.ids):,} tokens ({data.split:,} train, {len(data.val):,} validation), "
            f"vocabulary {tokenizer.vocab_size:,}"
        )
        return Setup(model, task, tokenizer, None, summary, callbacks, spec)

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from textgen.models.registry import language_model

        return language_model(spec)

    def wrap(self, checkpoint: Checkpoint) -> TextGenerator:
        from textgen.inference.generator import TextGenerator

        return TextGenerator(checkpoint)

    def evaluate(self, model: TextGenerator, args: argparse.Namespace) -> tuple[dict[str, float], str]:
        r = model.evaluate(args.corpus, encoding_errors=args.encoding_errors, batch_size=args.batch_size)
        d = r.to_dict()
        figures = {k: d[k] for k in ("loss", "perplexity", "bits_per_char", "tokens", "unknown_tokens")}
        line = (
            f"loss {r.loss:.4f} nats/token | perplexity {r.perplexity:.2f} | {r.bits_per_char:.4f} bits/char | "
            f"{r.tokens:,} tokens ({r.unknown_tokens:,} unknown) | {r.characters:,} characters"
        )
        return figures, line

    def serve(self, name: str, model: Any, options: ServeOptions) -> Served:
        from textgen.serve.completions import serve_language_model

        return serve_language_model(name, model, self, options)

    def add_route(self, app: FastAPI) -> None:
        from textgen.serve.completions import add_route

        add_route(app, self)


KIND = LanguageModel()
