"""Dataclass configs for the model, the data and training, saved beside the weights.

Each field carries a one-line ``help`` that becomes the CLI's ``--help`` text, so the flags, the
YAML keys and the saved ``config.json`` are all the same names (``hidden_size`` is
``--hidden-size``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textgen.errors import ConfigError

CELLS = ("lstm", "gru", "rnn")
LEVELS = ("char", "word", "bpe")
MODES = ("shuffled", "stateful")
LOSSES = ("every", "last")
SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
TASKS = ("lm", "translate")
ATTENTIONS = ("none", "dot", "general", "additive")
MAX_NEW_TOKENS = 1_000_000  # per generated sample, and per sample printed during training
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20  # hidden and embedding sizes: far past any memory, yet no size computation overflows
MAX_VOCAB = 1 << 32  # token ids are stored as uint32 at most


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its one-line help text."""
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    """Shape of a RecurrentLM (embedding or one-hot -> stacked recurrent layers -> logits) or of a
    Seq2Seq encoder-decoder (``task: translate``), which adds the encoder and attention fields."""

    vocab_size: int = _f(0, "vocabulary size (set from the tokenizer; the target side for translate)", cli=False)
    cell: str = _f("lstm", "recurrent cell", choices=CELLS)
    layers: int = _f(1, "number of stacked recurrent layers")
    hidden_size: int = _f(256, "units per recurrent layer")
    embedding_dim: int = _f(64, "embedding size; 0 feeds one-hot vectors instead")
    dropout: float = _f(0.0, "dropout on the embedding, between layers and before the output")
    tie_weights: bool = _f(False, "share the embedding and output matrices (needs embedding_dim = hidden_size)")
    task: str = _f(
        "lm", "lm: a language model of one text; translate: an encoder-decoder over sentence pairs", choices=TASKS
    )
    source_vocab_size: int = _f(
        0, "translate: source vocabulary size (set from its tokenizer; 0: the target's, shared)", cli=False
    )
    attention: str = _f(
        "general",
        "translate: attention over the encoder outputs (Luong dot or general, Bahdanau additive) or none",
        choices=ATTENTIONS,
    )
    bidirectional: bool = _f(False, "translate: read the source in both directions (the two directions are summed)")

    def validate(self) -> None:
        _check(self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        _check(self.cell in CELLS, f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        _check(
            self.attention in ATTENTIONS, f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}"
        )
        _check(1 <= self.layers <= MAX_LAYERS, f"layers must be in [1, {MAX_LAYERS}], got {self.layers}")
        _check(1 <= self.hidden_size <= MAX_WIDTH, f"hidden_size must be in [1, {MAX_WIDTH}], got {self.hidden_size}")
        _check(
            0 <= self.embedding_dim <= MAX_WIDTH,
            f"embedding_dim must be 0 (one-hot) or up to {MAX_WIDTH}, got {self.embedding_dim}",
        )
        _check(0 <= self.vocab_size <= MAX_VOCAB, f"vocab_size must be in [0, {MAX_VOCAB}], got {self.vocab_size}")
        _check(
            0 <= self.source_vocab_size <= MAX_VOCAB,
            f"source_vocab_size must be in [0, {MAX_VOCAB}], got {self.source_vocab_size}",
        )
        _check_numbers(self)
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights:
            _check(
                self.embedding_dim == self.hidden_size,
                f"tie_weights needs embedding_dim == hidden_size, got {self.embedding_dim} and {self.hidden_size}",
            )


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token ids."""

    corpus: list[str] = _f([], "files, folders or globs to train on ('-' for stdin); default: Tiny Shakespeare")
    level: str = _f("char", "tokenizer: characters, words and punctuation, or byte-level BPE", choices=LEVELS)
    lowercase: bool = _f(False, "lowercase the text before tokenizing")
    min_freq: int = _f(1, "word level: words seen fewer times become the unknown token")
    vocab_size: int = _f(2000, "bpe level: vocabulary size to train")
    records: bool = _f(False, "blank lines separate records; each record ends with the end-of-text token")
    record_prefix: str = _f("", "records: text put before each record (the recipes preset uses 'recipe for ')")
    val_fraction: float = _f(0.1, "fraction of tokens at the end of the corpus held out for validation")
    encoding_errors: str = _f("strict", "what to do with bytes that are not UTF-8", choices=("strict", "replace"))
    pairs: list[str] = _f([], "translate: tab-separated files of source<TAB>target lines (extra columns ignored)")
    reverse: bool = _f(False, "translate: swap the columns (translate the second into the first)")
    max_words: int = _f(0, "translate: keep pairs whose sides have at most this many words; 0 keeps all")
    max_tokens: int = _f(0, "translate: keep pairs whose sides have at most this many tokens; 0 keeps all")
    shared_vocab: bool = _f(False, "translate: one vocabulary (and embedding) for both sides")

    def validate(self) -> None:
        _check(self.level in LEVELS, f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        _check(self.max_words >= 0, f"max_words must be 0 or more, got {self.max_words}")
        _check(self.max_tokens >= 0, f"max_tokens must be 0 or more, got {self.max_tokens}")
        _check(self.min_freq >= 1, f"min_freq must be at least 1, got {self.min_freq}")
        _check(16 <= self.vocab_size <= MAX_VOCAB, f"vocab_size must be in [16, {MAX_VOCAB}], got {self.vocab_size}")
        _check(0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check(
            self.encoding_errors in ("strict", "replace"),
            f"encoding_errors must be strict or replace, got {self.encoding_errors!r}",
        )
        _check_numbers(self)


@dataclass
class TrainConfig:
    """How to train: batching, optimisation, stopping, evaluation and samples."""

    mode: str = _f(
        "shuffled", "stateful: contiguous streams with carried state; shuffled: random windows", choices=MODES
    )
    batch_size: int = _f(
        64, "sequences per optimizer step, all processes and micro-batches together (streams in stateful mode)"
    )
    seq_len: int = _f(100, "time steps per sequence (the truncated-BPTT length)")
    shuffle_buffer: int = _f(10000, "shuffled mode: windows held in the shuffle buffer")
    window_stride: int = _f(0, "shuffled mode: tokens between window starts; 0 means seq_len + 1 (no overlap)")
    loss: str = _f(
        "every", "every: predict the next token at every step; last: only after the whole window", choices=LOSSES
    )
    epochs: int = _f(10, "passes over the training split")
    max_steps: int = _f(0, "stop after this many optimizer steps; 0 means no limit")
    max_minutes: float = _f(0.0, "stop (and save) after this many minutes of this invocation; 0 means no limit")
    lr: float = _f(2e-3, "learning rate")
    optimizer: str = _f("adam", "optimizer", choices=OPTIMIZERS)
    schedule: str = _f(
        "constant", "learning rate: constant, cosine decay to min_lr, or divided on a plateau", choices=SCHEDULES
    )
    warmup_steps: int = _f(0, "raise the learning rate linearly from 0 over this many steps (any schedule)")
    min_lr: float = _f(0.0, "cosine: the learning rate at the last step")
    plateau_factor: float = _f(0.25, "plateau: multiply the learning rate by this when validation stops improving")
    plateau_patience: int = _f(0, "plateau: validations without improvement before the rate is cut")
    patience: int = _f(0, "stop early after this many validations without improvement; 0 never stops early")
    weight_decay: float = _f(0.0, "weight decay")
    clip: float = _f(5.0, "clip the gradient norm to this value; 0 turns clipping off")
    seed: int = _f(1234, "random seed for initialisation, data order and dropout")
    device: str = _f(
        "auto", "where to train; under torchrun, auto and cuda mean each process's own GPU", choices=DEVICES
    )
    precision: str = _f(
        "fp32",
        "arithmetic of the forward pass: fp32, bf16 autocast, or fp16 autocast with a gradient scaler (CUDA only)",
        choices=PRECISIONS,
    )
    accumulate: int = _f(
        1, "run each batch as N micro-batches of batch_size / N rows, adding their gradients (same model, less memory)"
    )
    max_bad_steps: int = _f(
        5, "stop after this many steps in a row were skipped for a non-finite loss or gradient (the weights stay good)"
    )
    eval_every: int = _f(0, "validate every N steps as well as at the end of each epoch; 0: epochs only")
    eval_batches: int = _f(0, "batches per validation; 0 means the whole validation split")
    save_every: int = _f(0, "also save the latest checkpoint every N steps; 0: at validations and exit only")
    save_minutes: float = _f(
        5.0, "also save the latest checkpoint after this many minutes of training since the last save; 0: off"
    )
    sample_temperatures: list[float] = _f([0.2, 0.5, 1.0], "temperatures for the samples printed each epoch")
    sample_length: int = _f(200, "tokens per sample printed during training; 0 turns samples off")
    sample_prompt: str = _f("", "prompt for the samples printed during training")
    sample_window: int = _f(0, "start each epoch's samples from a random window of N training tokens instead (Keras)")
    log_every: int = _f(50, "write a metrics.csv row (and TensorBoard point) every N steps, and at each validation")
    tensorboard: bool = _f(True, "also write TensorBoard events to RUN/tensorboard (when tensorboard is installed)")
    teacher_forcing: float = _f(
        1.0, "translate: chance of feeding the true previous token to the decoder (below 1: scheduled sampling)"
    )
    eval_sentences: int = _f(0, "translate: held-out pairs translated for BLEU, chrF and exact match; 0: all")
    sample_sentences: int = _f(5, "translate: held-out pairs shown with their reference after each epoch")

    def validate(self) -> None:
        _check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _check(0.0 <= self.teacher_forcing <= 1.0, f"teacher_forcing must be in [0, 1], got {self.teacher_forcing}")
        for name in ("batch_size", "seq_len", "shuffle_buffer", "epochs", "accumulate", "max_bad_steps"):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "max_steps",
            "max_minutes",
            "window_stride",
            "warmup_steps",
            "min_lr",
            "plateau_patience",
            "patience",
            "sample_window",
            "log_every",
            "eval_every",
            "eval_batches",
            "save_every",
            "save_minutes",
            "sample_length",
            "weight_decay",
            "clip",
            "eval_sentences",
            "sample_sentences",
        ):
            _check(getattr(self, name) >= 0, f"{name} must be 0 or more, got {getattr(self, name)}")
        _check(self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(0 <= self.seed < 2**63, f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        _check(
            self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
        )
        _check(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(
            self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
        )
        _check(
            self.batch_size % self.accumulate == 0,
            f"batch_size {self.batch_size} must be a multiple of accumulate {self.accumulate}: "
            "each micro-batch gets batch_size / accumulate rows",
        )
        _check(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check(0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        _check(self.min_lr <= self.lr, f"min_lr must not exceed lr, got {self.min_lr} > {self.lr}")
        for t in self.sample_temperatures:
            _check(math.isfinite(t) and t >= 0, f"sample temperatures must be finite numbers >= 0, got {t}")
        _check(
            self.sample_length <= MAX_NEW_TOKENS,
            f"sample_length must be in [0, {MAX_NEW_TOKENS}], got {self.sample_length}",
        )
        _check_numbers(self)


@dataclass
class SampleConfig:
    """How to sample: the generation engine's settings, shared by the API, the CLI and training samples."""

    max_new_tokens: int = _f(200, "tokens to generate")
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
    beams: int = _f(1, "beam search with this many beams (1 samples instead); returns the best num_samples")
    length_penalty: float = _f(1.0, "beam search ranks by log p / length ** this (above 1 favours longer texts)")
    seed: int | None = _f(None, "seed for reproducible samples (same seed, same text, same device)", type=int)
    num_samples: int = _f(1, "independent samples, decoded together as one batch")
    decode_precision: str = _f(
        "auto",
        "auto: the fastest that stays within a tolerance of fp32 on this model (int8 on a CPU for large models, "
        "bf16 on CUDA); fp32 gives the model's exact logits; bf16 reads half the weight bytes per step, int8 (CPU) "
        "a quarter",
        choices=("auto", "fp32", "bf16", "int8"),
    )

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SampleConfig:
        """Build from keyword settings, refusing unknown names and wrong types."""
        return _build(cls, settings, "sample")

    def validate(self) -> None:
        _check(
            0 <= self.max_new_tokens <= MAX_NEW_TOKENS,
            f"max_new_tokens must be in [0, {MAX_NEW_TOKENS}], got {self.max_new_tokens}",
        )
        _check(1 <= self.num_samples <= 4096, f"num_samples must be in [1, 4096], got {self.num_samples}")
        _check(1 <= self.beams <= 256, f"beams must be in [1, 256], got {self.beams}")
        _check(
            self.beams == 1 or self.num_samples <= self.beams,
            f"num_samples ({self.num_samples}) cannot exceed beams ({self.beams}) in beam search",
        )
        # |penalty| <= 10 keeps length ** penalty within a float for any length up to MAX_NEW_TOKENS.
        _check(-10 <= self.length_penalty <= 10, f"length_penalty must be in [-10, 10], got {self.length_penalty}")
        _check(
            self.decode_precision in ("auto", "fp32", "bf16", "int8"),
            f"decode_precision must be auto, fp32, bf16 or int8, got {self.decode_precision!r}",
        )
        if self.seed is not None:
            _check(0 <= self.seed < 2**63, f"seed must be between 0 and 2**63 - 1, got {self.seed}")


@dataclass
class RunConfig:
    """Everything that defines a training run; saved as config.json in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.model.task == "translate":
            _check(not self.data.corpus, "corpus is for language models; a translation model trains on --pairs FILE")
            _check(bool(self.data.pairs), "a translation model needs --pairs FILE (tab-separated source<TAB>target)")
            _check(self.train.mode == "shuffled", "mode stateful is for language models; sentence pairs are shuffled")
            _check(self.train.loss == "every", "loss last is for language models")
        else:
            _check(
                not self.data.pairs, "pairs are for translation models: add --task translate (or --preset translate)"
            )

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
        """A copy with flat ``field: value`` overrides routed to the section that owns each field."""
        d = self.to_dict()
        for key, value in flat.items():
            section = FIELD_SECTION.get(key)
            if section is None:
                raise ConfigError(f"unknown setting {key!r}{_did_you_mean(key, FIELD_SECTION)}")
            d[section][key] = value
        return RunConfig.from_dict(d)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# Field names are unique across sections except vocab_size (the model's is derived, never set).
FIELD_SECTION: dict[str, str] = {
    f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata.get("cli", True)
}


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_numbers(config: Any) -> None:
    """Every float setting finite, every integer one within int64: no inf or nan reaches training,
    and no count overflows numpy's or torch's integers."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float):
            _check(math.isfinite(value), f"{f.name} must be a finite number, got {value}")
        elif isinstance(value, int) and not isinstance(value, bool):
            _check(abs(value) < 2**63, f"{f.name} must be below 2**63, got {value}")


def _build(cls: type, values: Any, section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {section} setting {unknown[0]!r}{_did_you_mean(unknown[0], fields)}")
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
                raise ConfigError(f"config file {p}: unknown setting {name!r}{_did_you_mean(name, FIELD_SECTION)}")
            if key in SECTIONS and FIELD_SECTION[name] != key:
                raise ConfigError(f"config file {p}: {name} belongs under {FIELD_SECTION[name]}:, not {key}:")
            if name in flat:
                raise ConfigError(f"config file {p}: {name} is set twice")
            flat[name] = v
    return flat
