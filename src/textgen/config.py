"""Dataclass configs for the model, the data, training and sampling, saved beside the weights.

Each field declares once, in its metadata, its one-line ``help`` (the CLI's ``--help``: the flags,
the YAML keys and the saved ``config.json`` share names, ``hidden_size`` is ``--hidden-size``), its
``choices`` and its bounds. ``validate()`` checks every field against them, then the config's own
cross-field ``rules()``. Configs are frozen: a changed config is a new one (``RunConfig.updated``,
``dataclasses.replace``).

What set-up derives from the data is kept apart from what the user asked for, as nanoGPT keeps its
``model_args``: a ``RunSpec`` (vocabulary sizes, the input files as absolute paths) is saved beside
the config in every checkpoint, and a model is built from a ``ModelSpec``, its settings plus its
vocabulary sizes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textgen.errors import ConfigError, did_you_mean
from textgen.kinds import KIND_NAMES, get_kind

CLASSIC_CELLS = ("lstm", "gru", "rnn")  # nn.LSTM / nn.GRU / nn.RNN; the only cells of translation models
CELLS = (*CLASSIC_CELLS, "mingru", "minlstm", "mlstm", "conv")  # models/registry.py: each one's class
LEVELS = ("char", "word", "bpe")
MODES = ("shuffled", "stateful")
LOSSES = ("every", "last")
SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
DECODE_PRECISIONS = ("auto", "fp32", "bf16", "int8")
ATTENTIONS = ("none", "dot", "general", "additive")
MAX_NEW_TOKENS = 1_000_000  # per generated sample, and per sample printed during training
TRANSLATION_BEAMS = 5  # textgen translate's default: on eng-fra 5 beams gave 33.7 BLEU, greedy 29.6
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20  # hidden and embedding sizes: far past any memory, yet no size computation overflows
MAX_VOCAB = 1 << 32  # token ids are stored as uint32 at most
MAX_SEED = 2**63 - 1


def _f(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    say: str | None = None,
    check: Callable[[Any, str], Any] | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with its one-line help and what its values may be: ``choices``, bounds
    (``min``/``max`` inclusive, ``above``/``below`` exclusive; ``say`` words the range instead) or a
    ``check(value, name)`` of its own. A list field's bounds apply to each item."""
    meta = {"help": help, **kw}
    given = {"choices": choices, "min": min, "max": max, "above": above, "below": below, "say": say, "check": check}
    meta.update({k: v for k, v in given.items() if v is not None})
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A sampling temperature is a finite number >= 0 (0 is greedy): the one check of it, wherever it is given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


class Settings:
    """A frozen dataclass of settings, checked field by field against its metadata, then by its rules."""

    def validate(self) -> None:
        """Every field against its declared choices and bounds (each section of a nested config in
        turn), then the cross-field ``rules()``; the first problem is a ConfigError naming the field."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Settings):
                value.validate()
                continue
            for item in value if isinstance(value, list) else [value]:
                _check_value(f.name, f.metadata, item)
        self.rules()

    def rules(self) -> None:
        """The checks that involve several fields (none unless a config has some)."""


def _check_value(name: str, meta: Any, value: Any) -> None:
    if value is None:  # an optional setting left unset
        return
    if "check" in meta:
        meta["check"](value, name)
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if not _within(value, meta):
        raise ConfigError(f"{name} must be {_range(meta)}, got {value}")
    if isinstance(value, float) and not math.isfinite(value):  # no inf or nan reaches training
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:  # numpy's and torch's int64
        raise ConfigError(f"{name} must be below 2**63, got {value}")


def _within(value: Any, meta: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    return (
        ("min" not in meta or value >= meta["min"])
        and ("max" not in meta or value <= meta["max"])
        and ("above" not in meta or value > meta["above"])
        and ("below" not in meta or value < meta["below"])
    )


def _range(meta: Any) -> str:
    """A field's bounds in words: ``in [0, 1)``, ``1 or more``, ``above 0`` (or its own ``say``)."""
    if "say" in meta:
        return meta["say"]
    low, high = meta.get("min", meta.get("above")), meta.get("max", meta.get("below"))
    if high is None:
        return f"above {low}" if "above" in meta else f"{low} or more"
    return f"in {'(' if 'above' in meta else '['}{low}, {high}{')' if 'below' in meta else ']'}"


@dataclass(frozen=True)
class ModelConfig(Settings):
    """Shape of a RecurrentLM (embedding or one-hot -> stacked recurrent layers -> logits) or of a
    Seq2Seq encoder-decoder (``task: translate``), which adds the encoder and attention fields."""

    cell: str = _f("lstm", "recurrent cell", choices=CELLS)
    layers: int = _f(1, "number of stacked recurrent layers", min=1, max=MAX_LAYERS)
    hidden_size: int = _f(256, "units per recurrent layer", min=1, max=MAX_WIDTH)
    embedding_dim: int = _f(
        64,
        "embedding size; 0 feeds one-hot vectors instead",
        min=0,
        max=MAX_WIDTH,
        say=f"0 (one-hot) or up to {MAX_WIDTH}",
    )
    dropout: float = _f(0.0, "dropout on the embedding, between layers and before the output", min=0, below=1)
    tie_weights: bool = _f(False, "share the embedding and output matrices (needs embedding_dim = hidden_size)")
    task: str = _f(
        "lm",
        "lm: a language model of one text; translate: an encoder-decoder over sentence pairs",
        choices=KIND_NAMES,
    )
    attention: str = _f(
        "general",
        "translate: attention over the encoder outputs (Luong dot or general, Bahdanau additive) or none",
        choices=ATTENTIONS,
    )
    bidirectional: bool = _f(False, "translate: read the source in both directions (the two directions are summed)")
    # -- block cells (mingru, minlstm, mlstm, conv): residual blocks of norm -> mixer -> feed-forward ------------
    ffn_mult: int = _f(
        4, "block cells: feed-forward width as a multiple of hidden_size; 0 leaves it out", min=0, max=64
    )
    heads: int = _f(4, "mlstm: heads of the matrix memory (hidden_size must be a multiple of it)", min=1, max=MAX_WIDTH)
    kernel_size: int = _f(
        3, "conv: taps of each causal convolution; dilations 1, 2, 4, ..., 128 by layer, repeating", min=2, max=64
    )
    # -- end of the block cells' settings ------------------------------------------------------------------------

    def rules(self) -> None:
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            raise ConfigError(
                f"tie_weights needs embedding_dim == hidden_size, got {self.embedding_dim} and {self.hidden_size}"
            )
        if self.cell == "mlstm" and self.hidden_size % self.heads:
            raise ConfigError(f"mlstm: hidden_size {self.hidden_size} must be a multiple of heads {self.heads}")


@dataclass(frozen=True)
class Vocabularies(Settings):
    """The vocabulary sizes a run's tokenizers decided: derived from the data, never set by hand."""

    vocab_size: int = _f(0, "vocabulary size (a translation model's target side)", min=0, max=MAX_VOCAB)
    source_vocab_size: int = _f(
        0, "translation: the source side's vocabulary size; 0: the target's (shared)", min=0, max=MAX_VOCAB
    )


@dataclass(frozen=True)
class ModelSpec(ModelConfig, Vocabularies):
    """What a model is built from: its settings and its vocabulary sizes."""


@dataclass(frozen=True)
class RunSpec(Vocabularies):
    """What a run's set-up derived from its data, saved beside its config (``config.json``'s ``spec``)."""

    inputs: list[str] = _f([], "the corpus or pairs files as absolute paths, so a resumed run finds them from anywhere")

    def model(self, config: ModelConfig) -> ModelSpec:
        """The spec of the model ``config`` describes, with these vocabulary sizes."""
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return ModelSpec(**settings, vocab_size=self.vocab_size, source_vocab_size=self.source_vocab_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> RunSpec:
        return _build(cls, d, "spec")


@dataclass(frozen=True)
class DataConfig(Settings):
    """Where the text comes from and how it becomes token ids."""

    corpus: list[str] = _f([], "files, folders or globs to train on ('-' for stdin); default: Tiny Shakespeare")
    level: str = _f("char", "tokenizer: characters, words and punctuation, or byte-level BPE", choices=LEVELS)
    lowercase: bool = _f(False, "lowercase the text before tokenizing")
    min_freq: int = _f(1, "word level: words seen fewer times become the unknown token", min=1)
    vocab_size: int = _f(2000, "bpe level: vocabulary size to train", min=16, max=MAX_VOCAB)
    records: bool = _f(False, "blank lines separate records; each record ends with the end-of-text token")
    record_prefix: str = _f("", "records: text put before each record (the recipes preset uses 'recipe for ')")
    val_fraction: float = _f(0.1, "fraction of tokens at the end of the corpus held out for validation", min=0, below=1)
    val_corpus: list[str] = _f([], "files to validate on, instead of the corpus's last val_fraction")
    pretokenized: str = _f(
        "auto",
        "word level: the text is already tokenized (tokens between spaces, markup such as <unk> kept whole); "
        "auto: detected from the text",
        choices=("auto", "yes", "no"),
    )
    encoding_errors: str = _f("strict", "what to do with bytes that are not UTF-8", choices=("strict", "replace"))
    pairs: list[str] = _f([], "translate: tab-separated files of source<TAB>target lines (extra columns ignored)")
    reverse: bool = _f(False, "translate: swap the columns (translate the second into the first)")
    max_words: int = _f(0, "translate: keep pairs whose sides have at most this many words; 0 keeps all", min=0)
    max_tokens: int = _f(0, "translate: keep pairs whose sides have at most this many tokens; 0 keeps all", min=0)
    shared_vocab: bool = _f(False, "translate: one vocabulary (and embedding) for both sides")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """How to train: batching, optimisation, stopping, evaluation and samples."""

    recipe: str = _f(
        "auto",
        "auto: when no part of the model's shape is set, choose it and its training for the corpus and the budget "
        "(--max-minutes); off: the plain defaults",
        choices=("auto", "off"),
    )
    mode: str = _f(
        "shuffled", "stateful: contiguous streams with carried state; shuffled: random windows", choices=MODES
    )
    batch_size: int = _f(
        64,
        "sequences per optimizer step, all processes and micro-batches together (streams in stateful mode)",
        min=1,
    )
    seq_len: int = _f(100, "time steps per sequence (the truncated-BPTT length)", min=1)
    shuffle_buffer: int = _f(10000, "shuffled mode: windows held in the shuffle buffer", min=1)
    window_stride: int = _f(0, "shuffled mode: tokens between window starts; 0 means seq_len + 1 (no overlap)", min=0)
    random_offset: bool = _f(
        True, "shuffled mode: start each epoch's windows at a fresh random offset (tutorial presets keep them fixed)"
    )
    loss: str = _f(
        "every", "every: predict the next token at every step; last: only after the whole window", choices=LOSSES
    )
    epochs: int = _f(10, "passes over the training split", min=1)
    max_steps: int = _f(0, "stop after this many optimizer steps; 0 means no limit", min=0)
    max_minutes: float = _f(0.0, "stop (and save) after this many minutes of this invocation; 0 means no limit", min=0)
    lr: float = _f(2e-3, "learning rate", above=0)
    optimizer: str = _f("adam", "optimizer", choices=OPTIMIZERS)
    schedule: str = _f(
        "constant", "learning rate: constant, cosine decay to min_lr, or divided on a plateau", choices=SCHEDULES
    )
    warmup_steps: int = _f(0, "raise the learning rate linearly from 0 over this many steps (any schedule)", min=0)
    min_lr: float = _f(0.0, "cosine: the learning rate at the last step", min=0)
    plateau_factor: float = _f(
        0.25, "plateau: multiply the learning rate by this when validation stops improving", above=0, below=1
    )
    plateau_patience: int = _f(0, "plateau: validations without improvement before the rate is cut", min=0)
    patience: int = _f(0, "stop early after this many validations without improvement; 0 never stops early", min=0)
    weight_decay: float = _f(0.0, "weight decay", min=0)
    clip: float = _f(5.0, "clip the gradient norm to this value; 0 turns clipping off", min=0)
    seed: int = _f(
        1234,
        "random seed for initialisation, data order and dropout",
        min=0,
        max=MAX_SEED,
        say="between 0 and 2**63 - 1",
    )
    device: str = _f(
        "auto", "where to train; under torchrun, auto and cuda mean each process's own GPU", choices=DEVICES
    )
    precision: str = _f(
        "fp32",
        "arithmetic of the forward pass: fp32, bf16 autocast, or fp16 autocast with a gradient scaler (CUDA only)",
        choices=PRECISIONS,
    )
    accumulate: int = _f(
        1,
        "run each batch as N micro-batches of batch_size / N rows, adding their gradients (same model, less memory)",
        min=1,
    )
    max_bad_steps: int = _f(
        5,
        "stop after this many steps in a row were skipped for a non-finite loss or gradient (the weights stay good)",
        min=1,
    )
    eval_every: int = _f(0, "validate every N steps as well as at the end of each epoch; 0: epochs only", min=0)
    eval_minutes: float = _f(
        0.0, "also validate after this many minutes of training since the last validation; 0: off", min=0
    )
    eval_batches: int = _f(0, "batches per validation; 0 means the whole validation split", min=0)
    save_every: int = _f(0, "also save the latest checkpoint every N steps; 0: at validations and exit only", min=0)
    save_minutes: float = _f(
        5.0, "also save the latest checkpoint after this many minutes of training since the last save; 0: off", min=0
    )
    sample_temperatures: list[float] = _f(
        [0.2, 0.5, 1.0], "temperatures for the samples printed each epoch", check=check_temperature
    )
    sample_length: int = _f(
        200, "tokens per sample printed during training; 0 turns samples off", min=0, max=MAX_NEW_TOKENS
    )
    sample_prompt: str = _f("", "prompt for the samples printed during training")
    sample_window: int = _f(
        0, "start each epoch's samples from a random window of N training tokens instead (Keras)", min=0
    )
    log_every: int = _f(
        50, "write a metrics.csv row (and TensorBoard point) every N steps, and at each validation", min=0
    )
    tensorboard: bool = _f(True, "also write TensorBoard events to RUN/tensorboard (when tensorboard is installed)")
    teacher_forcing: float = _f(
        1.0,
        "translate: chance of feeding the true previous token to the decoder (below 1: scheduled sampling)",
        min=0,
        max=1,
    )
    eval_sentences: int = _f(0, "translate: held-out pairs translated for BLEU, chrF and exact match; 0: all", min=0)
    sample_sentences: int = _f(5, "translate: held-out pairs shown with their reference after each epoch", min=0)

    def rules(self) -> None:
        if self.batch_size % self.accumulate:
            raise ConfigError(
                f"batch_size {self.batch_size} must be a multiple of accumulate {self.accumulate}: "
                "each micro-batch gets batch_size / accumulate rows"
            )
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr must not exceed lr, got {self.min_lr} > {self.lr}")


@dataclass(frozen=True)
class SampleConfig(Settings):
    """How to sample: the generation engine's settings, shared by the API, the CLI and training samples.

    The processors' own settings (temperature, top_k...) are checked by the processors, when built."""

    max_new_tokens: int = _f(200, "tokens to generate", min=0, max=MAX_NEW_TOKENS)
    temperature: float = _f(1.0, "divide the logits by T (0 is greedy; below 1 safer, above 1 wilder)")
    top_k: int = _f(0, "sample only from the k most likely tokens; 0 keeps all")
    top_p: float = _f(1.0, "nucleus: sample from the most likely tokens that together reach p; 1 keeps all")
    min_p: float = _f(0.0, "drop tokens less likely than min_p times the most likely one; 0 keeps all")
    typical_p: float = _f(1.0, "locally typical sampling mass; 1 keeps all")
    repetition_penalty: float = _f(1.0, "divide scores of tokens already present by this (CTRL); 1 is off")
    frequency_penalty: float = _f(0.0, "subtract this times a token's count so far (-2 to 2)")
    presence_penalty: float = _f(0.0, "subtract this from every token present so far (-2 to 2)")
    no_repeat_ngram: int = _f(0, "never repeat an n-gram of this size; 0 is off")
    stop: list[str] = _f(
        [], "stop at this text (repeatable; left out of the output; \\n, \\t understood)", action="append"
    )
    beams: int = _f(
        1, "beam search with this many beams (1 samples instead); returns the best num_samples", min=1, max=256
    )
    # |penalty| <= 10 keeps length ** penalty within a float for any length up to MAX_NEW_TOKENS.
    length_penalty: float = _f(
        1.0, "beam search ranks by log p / length ** this (above 1 favours longer texts)", min=-10, max=10
    )
    seed: int | None = _f(
        None,
        "seed for reproducible samples (same seed, same text, same device)",
        type=int,
        min=0,
        max=MAX_SEED,
        say="between 0 and 2**63 - 1",
    )
    num_samples: int = _f(1, "independent samples, decoded together as one batch", min=1, max=4096)
    decode_precision: str = _f(
        "auto",
        "auto: the fastest that stays within a tolerance of fp32 on this model (int8 on a CPU for large models, "
        "bf16 on CUDA); fp32 gives the model's exact logits; bf16 reads half the weight bytes per step, int8 (CPU) "
        "a quarter",
        choices=DECODE_PRECISIONS,
    )

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SampleConfig:
        """Build from keyword settings, refusing unknown names and wrong types."""
        return _build(cls, settings, "sample")

    def rules(self) -> None:
        if self.beams > 1 and self.num_samples > self.beams:
            raise ConfigError(f"num_samples ({self.num_samples}) cannot exceed beams ({self.beams}) in beam search")


@dataclass(frozen=True)
class RunConfig(Settings):
    """Everything that defines a training run, as the user gave it; saved as config.json in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def rules(self) -> None:
        get_kind(self.model.task).check(self)  # what the task kind asks of the other settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from nested dicts, refusing unknown keys and wrong types with a clear message."""
        if not isinstance(d, dict):
            raise ConfigError("config must be a mapping")
        unknown = set(d) - {"model", "data", "train"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        return cls(**{name: _build(sub, d.get(name, {}), name) for name, sub in SECTIONS.items()})

    def updated(self, flat: dict[str, Any]) -> RunConfig:
        """A new config with flat ``field: value`` overrides routed to the section that owns each field."""
        d = self.to_dict()
        for key, value in flat.items():
            section = FIELD_SECTION.get(key)
            if section is None:
                raise ConfigError(f"unknown setting {key!r}{did_you_mean(key, FIELD_SECTION)}")
            d[section][key] = value
        return RunConfig.from_dict(d)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
FIELD_SECTION: dict[str, str] = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def _build(cls: type, values: Any, section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {section} setting {unknown[0]!r}{did_you_mean(unknown[0], fields)}")
    out = {}
    for name, value in values.items():
        default = fields[name].default
        if default is dataclasses.MISSING:
            default = fields[name].default_factory()  # type: ignore[misc]
        if default is None:  # optional: None, or a value of the field's declared type
            if value is None:
                out[name] = None
                continue
            default = fields[name].metadata["type"]()
        out[name] = _coerce(value, default, f"{section}.{name}")
    return cls(**out)


def _coerce(value: Any, default: Any, name: str) -> Any:
    """Check ``value`` against the type of the field's default (ints may stand for floats)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, (list, tuple)):
            item = default[0] if default else ""
            return [_coerce(v, item, name) for v in value]
        if isinstance(value, str) and isinstance(default, list) and not default:
            return [value]
    raise ConfigError(f"{name} must be {type(default).__name__}, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file of settings: flat (``hidden_size: 512``) or in sections."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        items = value.items() if key in SECTIONS and isinstance(value, dict) else [(key, value)]
        for name, v in items:
            name = str(name).replace("-", "_")
            if name not in FIELD_SECTION:
                raise ConfigError(f"config file {p}: unknown setting {name!r}{did_you_mean(name, FIELD_SECTION)}")
            if key in SECTIONS and FIELD_SECTION[name] != key:
                raise ConfigError(f"config file {p}: {name} belongs under {FIELD_SECTION[name]}:, not {key}:")
            if name in flat:
                raise ConfigError(f"config file {p}: {name} is set twice")
            flat[name] = v
    return flat
