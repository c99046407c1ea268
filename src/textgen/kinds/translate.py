"""The translation kind: an encoder-decoder over sentence pairs; ``textgen translate``; ``POST /v1/translate``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen.config import CLASSIC_CELLS, RunConfig, RunSpec
from textgen.errors import ConfigError
from textgen.kinds.base import Kind

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI
    from torch import nn

    from textgen.checkpoint import Checkpoint
    from textgen.config import ModelSpec
    from textgen.inference.translator import Translator
    from textgen.serve.routes import Served, ServeOptions
    from textgen.training.setup import Setup


# What the recipe sets for a translation model the user gave no shape (docs/recipe.md has the measurements).
TRANSLATION_RECIPE = dict(
    level="word",
    lowercase=True,
    min_freq=2,
    cell="lstm",
    hidden_size=256,
    embedding_dim=256,
    attention="general",
    batch_size=64,
    lr=2e-3,
    schedule="cosine",
    min_lr=1e-4,
)
TRANSLATION_EVAL_SENTENCES = 1000


class Translation(Kind):
    name = "translate"
    noun = "translation model"
    command = "translate"
    usage = "textgen translate or textgen eval --pairs"
    route = "/v1/translate"
    inputs_field = "pairs"
    eval_usage = "score it on sentence pairs with --pairs"
    has_source = True
    default_run = "translate"
    not_exported = "an encoder-decoder has no single step to export"

    def check(self, config: RunConfig) -> None:
        if config.model.cell not in CLASSIC_CELLS:
            raise ConfigError(
                f"translation models use {', '.join(CLASSIC_CELLS)}; cell {config.model.cell} is for language models"
            )
        if config.data.corpus:
            raise ConfigError("corpus is for language models; a translation model trains on --pairs FILE")
        if config.data.val_corpus:
            raise ConfigError("val_corpus is for language models; a translation model holds out pairs of its --pairs")
        if not config.data.pairs:
            raise ConfigError("a translation model needs --pairs FILE (tab-separated source<TAB>target)")
        if config.train.mode != "shuffled":
            raise ConfigError("mode stateful is for language models; sentence pairs are shuffled")
        if config.train.loss != "every":
            raise ConfigError("loss last is for language models")

    def recipe(
        self, config: RunConfig, explicit: set[str], out: Path, device: torch.device, log: Callable[[str], None]
    ) -> RunConfig:
        """Word-level, lowercased, an LSTM of 256 with general attention, cosine to the budget's end: the
        settings that reached BLEU 32.7 (5 beams) on eng-fra in 20 CPU minutes, where characters reached 15.6."""
        from textgen import recipe

        if not recipe.applies(config, explicit):
            return config
        chosen = {k: v for k, v in TRANSLATION_RECIPE.items() if k not in explicit}
        if "lr" in explicit and "min_lr" not in explicit:
            chosen["min_lr"] = config.train.lr / 20  # the recipe's floor, in proportion to the rate given
        if "precision" not in explicit and recipe.native_bf16(device):
            chosen["precision"] = "bf16"  # 1.26x the pairs per second of fp32 on eng-fra, same loss (docs/recipe.md)
        if config.train.max_minutes:
            if "epochs" not in explicit:
                chosen["epochs"] = 1_000_000  # the minutes end training; the cosine decays by the clock
            if not {"eval_every", "eval_minutes"} & explicit:
                chosen["eval_minutes"] = max(config.train.max_minutes / 5, 0.5)
        if "eval_sentences" not in explicit:
            # Greedy-translating all 12,841 held-out eng-fra pairs takes 51 s each validation; 1,000 take seconds.
            chosen["eval_sentences"] = TRANSLATION_EVAL_SENTENCES
        final = config.updated(chosen)
        n = final.train.eval_sentences
        d, m, t = final.data, final.model, final.train
        log(
            f"recipe: {d.level}s ({'lowercased, ' if d.lowercase else ''}seen at least {d.min_freq} times), "
            f"an {m.cell.upper()} encoder-decoder of {m.hidden_size} with {m.attention} attention, batch "
            f"{t.batch_size}, {t.optimizer} {t.lr:g}"
            + (f" with cosine decay to {t.min_lr:g}" if t.schedule == "cosine" else f", {t.schedule} schedule")
            + f", {t.precision}; "
            f"validations translate {f'{n:,}' if n else 'all'} held-out pairs (textgen eval: all; textgen "
            "translate: 5 beams)"
        )
        return final

    def prepare(
        self,
        config: RunConfig,
        out: Path,
        latest: Path | None,
        device: torch.device,
        log: Callable[[str], None],
        shared: dict[str, Any] | None = None,
    ) -> Setup:
        """Sentence pairs split by source sentence, length-bucketed padded batches, a Seq2Seq, and held-out
        translations with BLEU, chrF and exact match.

        ``shared``: rank 0's tokenizers (under torchrun); the pairs are then encoded in memory, not written."""
        from textgen.checkpoint import load_tokenizers, read_config
        from textgen.data.corpus import resolve_paths
        from textgen.data.pairs import PairBatches, prepare_pairs
        from textgen.data.tokenizers import tokenizer_from_json
        from textgen.sampling.translate import TextTranslator
        from textgen.training.callbacks import PrintTranslations
        from textgen.training.setup import Setup, absolute, build_on, run_inputs
        from textgen.training.tasks import TranslationTask
        from textgen.training.trainer import Callback

        t = config.train
        inputs = run_inputs(self, config, latest)
        paths = resolve_paths(inputs, stdin_spool=out / "stdin.tsv", reuse_spool=latest is not None, what="pairs file")
        tokenizers = None
        if shared is not None:
            target_tok = tokenizer_from_json(shared["target"])
            source = shared["source"]
            tokenizers = (tokenizer_from_json(source) if source else target_tok, target_tok)
        elif latest is not None:
            target_tok, source_tok = load_tokenizers(latest, self, read_config(latest)[1])
            tokenizers = (source_tok or target_tok, target_tok)
        data = prepare_pairs(config.data, paths, out, t.seed, tokenizers, log, write=shared is None)
        spec = RunSpec(
            vocab_size=data.target_tokenizer.vocab_size,
            source_vocab_size=0 if data.shared else data.source_tokenizer.vocab_size,
            inputs=absolute(inputs),
        )
        model = build_on(device, self, spec.model(config.model))
        start, end = model.start_id, model.end_id
        batches = PairBatches(data.train_src, data.train_tgt, t.batch_size, start, end, t.seed)
        heldout = data.heldout
        held_batches = (
            PairBatches(data.heldout_src, data.heldout_tgt, t.batch_size, start, end, shuffle=False)
            if heldout
            else None
        )
        translator = TextTranslator(model, data.source_tokenizer, data.target_tokenizer)
        task = TranslationTask(
            batches,
            teacher_forcing=t.teacher_forcing,
            heldout=held_batches,
            pairs=heldout,
            translator=translator,
            eval_sentences=t.eval_sentences,
        )

        def callbacks(resume_step: int | None) -> list[Callback]:
            shown = heldout[: t.sample_sentences]
            return [PrintTranslations(translator, shown, log, out / "samples.jsonl", resume_step)] if shown else []

        summary = (
            f"{len(data.train_src) + len(heldout):,} pairs ({len(data.train_src):,} train, {len(heldout):,} held out"
            f"{f', {data.dropped:,} filtered out' if data.dropped else ''}), vocabulary "
            + (
                f"{data.target_tokenizer.vocab_size:,} shared"
                if data.shared
                else f"{data.source_tokenizer.vocab_size:,} source, {data.target_tokenizer.vocab_size:,} target"
            )
        )
        source_tok = None if data.shared else data.source_tokenizer
        return Setup(model, task, data.target_tokenizer, source_tok, summary, callbacks, spec)

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from textgen.models.seq2seq import Seq2Seq

        return Seq2Seq(spec)

    def wrap(self, checkpoint: Checkpoint) -> Translator:
        from textgen.inference.translator import Translator

        return Translator(checkpoint)

    def evaluate(self, model: Translator, args: argparse.Namespace) -> tuple[dict[str, float], str]:
        m = model.evaluate(
            args.pairs,
            beams=args.beams,
            reverse=args.reverse,
            encoding_errors=args.encoding_errors,
            batch_size=args.batch_size,
        )
        figures = {"loss": m.loss, "perplexity": m.perplexity, "bits_per_char": m.bits_per_char, **m.extra}
        line = (
            f"loss {m.loss:.4f} nats/token | perplexity {m.perplexity:.2f} | BLEU {m.extra['bleu']:.2f} | "
            f"chrF {m.extra['chrf']:.2f} | exact match {m.extra['exact_match']:.1f}% | "
            f"{m.extra['sentences']:,.0f} pairs"
        )
        return figures, line

    def serve(self, name: str, model: Any, options: ServeOptions) -> Served:
        from textgen.serve.translations import ServedTranslator

        return ServedTranslator(name, model, self)

    def add_route(self, app: FastAPI) -> None:
        from textgen.serve.translations import add_route

        add_route(app, self)


KIND = Translation()
