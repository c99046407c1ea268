"""Checkpoint directories: the format, written atomically and read without unpickling anything.

A checkpoint is a directory holding ``model.safetensors`` (weights), ``config.json`` (the run
config as the user gave it, the ``spec`` its set-up derived from the data, the format version and
the package version), ``tokenizer.json`` (a translation model's target side; its source side is
``source_tokenizer.json`` unless the vocabulary is shared) and, for resuming, ``trainer_state.pt``
(tensors and plain values only, loaded with ``weights_only=True``).

It is written into a hidden temporary directory, every file flushed to disk, then swapped in with
renames (``files.atomic_write_dir``), so a crash or a full disk leaves the previous checkpoint whole.
Loading one is inference: training imports this module, never the other way round.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from textgen import __version__
from textgen.config import RunConfig, RunSpec
from textgen.data.tokenizers import AnyTokenizer, TokenizerError, tokenizer_from_json, tokenizer_to_json
from textgen.errors import CheckpointError, ConfigError
from textgen.files import atomic_write_dir
from textgen.kinds import kind_of
from textgen.kinds.base import Kind

FORMAT = "textgen-checkpoint"
# 2 added translation models; 3 keeps what set-up derives from the data (vocabulary sizes, absolute input
# paths) in "spec", out of the user's config. Formats 1 (language models only) and 2 read as before.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
DERIVED_BEFORE_3 = ("vocab_size", "source_vocab_size")  # kept in the model section before format 3
FILES = ("config.json", "model.safetensors", "tokenizer.json")
SOURCE_TOKENIZER = "source_tokenizer.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in eval mode), its config, spec and tokenizers."""

    path: Path
    model: nn.Module
    config: RunConfig
    tokenizer: AnyTokenizer  # a translation model's target side
    info: dict[str, Any]  # step, epoch, val_loss... as saved
    source_tokenizer: AnyTokenizer | None = None  # translation: the source side (the target's when shared)
    spec: RunSpec | None = None  # what set-up derived from the data (None for a model never saved)


def build_model(config: RunConfig, spec: RunSpec) -> nn.Module:
    """A freshly initialised model of the kind and shape ``config`` and ``spec`` describe."""
    return kind_of(config).build_model(spec.model(config.model))


def save_checkpoint(
    path: Path,
    model: nn.Module,
    config: RunConfig,
    spec: RunSpec,
    tokenizer: AnyTokenizer,
    info: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    source_tokenizer: AnyTokenizer | None = None,
) -> None:
    """Write a checkpoint directory atomically; raises CheckpointError if the disk is full.

    ``source_tokenizer`` is a translation model's source side, when it is not ``tokenizer`` itself."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "textgen_version": __version__,
        **config.to_dict(),
        "spec": spec.to_dict(),
        "info": info,
    }

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for name, tok in (("tokenizer.json", tokenizer), (SOURCE_TOKENIZER, source_tokenizer)):
            if tok is not None and (name == "tokenizer.json" or tok is not tokenizer):
                (tmp / name).write_text(json.dumps(tokenizer_to_json(tok), ensure_ascii=False), encoding="utf-8")
        save_model(model, str(tmp / "model.safetensors"))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")

    try:
        atomic_write_dir(path, write)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "the previous checkpoint there is intact" if path.exists() else "nothing was written"
            raise CheckpointError(f"disk full while saving checkpoint {path}; {kept}") from None
        raise CheckpointError(f"could not save checkpoint {path}: {e.strerror or e}") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its best checkpoint, else its latest)."""
    p = Path(path)
    if not p.exists():
        # A crash between the two renames of a save leaves the previous version under .NAME.old.
        old = p.parent / f".{p.name}.old"
        if old.is_dir():
            return old
        raise CheckpointError(f"checkpoint not found: {path}")
    if (p / "config.json").exists() or not p.is_dir() or (p / "model.safetensors").exists():
        return p
    for name in ("best", "latest"):
        if (p / name).exists() or (p / f".{name}.old").is_dir():
            return resolve_checkpoint(p / name)
    raise CheckpointError(f"{path} holds no checkpoint (expected config.json, or best/ or latest/ inside)")


def read_config(path: Path) -> tuple[RunConfig, RunSpec, dict[str, Any]]:
    """The run config, spec and info of a checkpoint directory, checking its format version."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint: {', '.join(missing)} missing")
    try:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}/config.json is truncated or not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}/config.json is not a textgen checkpoint config")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        made = meta.get("textgen_version", "an unknown version")
        relation = "newer" if isinstance(version, int) and version > FORMAT_VERSION else "older"
        *first, last = map(str, READABLE_VERSIONS)
        readable = f"{', '.join(first)} and {last}"
        raise CheckpointError(
            f"{path} has checkpoint format {version!r} (written by textgen {made}), {relation} than the "
            f"formats {readable} this textgen {__version__} reads"
        )
    sections = {k: meta.get(k, {}) for k in ("model", "data", "train")}
    if isinstance(sections["train"], dict) and "random_offset" not in sections["train"]:
        sections["train"] = {**sections["train"], "random_offset": False}  # older runs' windows were fixed
    try:
        if version < 3:  # the derived values sat in the config: move them to the spec
            model = sections["model"]
            derived = {k: model.pop(k) for k in DERIVED_BEFORE_3 if k in model} if isinstance(model, dict) else {}
            config = RunConfig.from_dict(sections)
            spec = RunSpec.from_dict({**derived, "inputs": kind_of(config).inputs(config)})
        else:
            config, spec = RunConfig.from_dict(sections), RunSpec.from_dict(meta.get("spec"))
        config.validate()
        spec.validate()
    except ConfigError as e:
        raise CheckpointError(f"{path}/config.json: {e}") from None
    info = meta.get("info", {})
    return config, spec, info if isinstance(info, dict) else {}


def load_tokenizer(path: Path, name: str = "tokenizer.json") -> AnyTokenizer:
    """A tokenizer file of a checkpoint directory, schema-checked."""
    try:
        return tokenizer_from_json(json.loads((path / name).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a complete checkpoint: {name} missing") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}/{name} is truncated or not JSON") from None
    except TokenizerError as e:
        raise CheckpointError(f"{path}/{name}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}/{name}: {e.strerror}") from None


def load_tokenizers(path: Path, kind: Kind, spec: RunSpec) -> tuple[AnyTokenizer, AnyTokenizer | None]:
    """The (target) tokenizer and, for a kind with a source side, the source tokenizer, checked against the spec."""
    tokenizer = load_tokenizer(path)
    source = None
    if kind.has_source:
        source = tokenizer if spec.source_vocab_size == 0 else load_tokenizer(path, SOURCE_TOKENIZER)
    for tok, size, what in (
        (tokenizer, spec.vocab_size, "tokenizer"),
        (source, spec.source_vocab_size, "source tokenizer"),
    ):
        if tok is not None and size and tok.vocab_size != size:
            raise CheckpointError(f"{path}: {what} has {tok.vocab_size} tokens but the model expects {size}")
    return tokenizer, source


def load_weights(model: nn.Module, path: Path) -> None:
    """Fill ``model`` from ``path/model.safetensors``, which must match its shape exactly.

    Call ``model.flatten_parameters()`` once the model is on its device.
    """
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (SafetensorError, OSError, ValueError):
        raise CheckpointError(f"{path}/model.safetensors is truncated or corrupt") from None
    except RuntimeError as e:
        raise CheckpointError(f"{path}/model.safetensors does not fit its config: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}/model.safetensors does not fit its config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"{path}/model.safetensors holds weights that are not finite (nan or inf) in {', '.join(bad[:3])}: "
            "the training diverged, or the file is damaged"
        )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (or a run directory's best one) onto ``device``, in eval mode."""
    path = resolve_checkpoint(path)
    config, spec, info = read_config(path)
    tokenizer, source = load_tokenizers(path, kind_of(config), spec)
    model = _build_checked(config, spec, path)
    load_weights(model, path)
    model.to(device).eval()
    model.flatten_parameters()  # type: ignore[operator]
    return Checkpoint(path, model, config, tokenizer, info, source, spec)


def _build_checked(config: RunConfig, spec: RunSpec, path: Path) -> nn.Module:
    """The model config.json describes, built once it is known to fit the weights file: a damaged or
    crafted config could otherwise make textgen allocate any amount of memory (or fail) first."""
    try:
        with torch.device("meta"):  # shapes only
            params = sum(p.numel() for p in build_model(config, spec).parameters())
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}/config.json describes no model textgen can build ({str(e).splitlines()[0]})"
        ) from None
    size = (path / "model.safetensors").stat().st_size
    if 4 * params > size:  # float32 weights
        raise CheckpointError(
            f"{path}/model.safetensors is truncated or corrupt: {size:,} bytes are too few for the "
            f"{params:,} parameters its config.json describes"
        )
    return build_model(config, spec)


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The optimizer, position and RNG states saved for resuming (tensors and plain values only)."""
    try:
        return torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no trainer_state.pt, so training cannot resume from it") from None
    except Exception as e:  # weights_only refuses pickled objects with an UnpicklingError
        raise CheckpointError(
            f"{path}/trainer_state.pt is corrupt or holds objects that are not "
            f"allowed ({type(e).__name__}); it was not loaded"
        ) from None
