"""textgen: train recurrent text generators on your own text and sample from them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load", "train"]

if TYPE_CHECKING:
    from textgen.api import load, train


def __getattr__(name: str) -> Any:
    # Import torch only when the API is used, so `textgen --help` stays quick.
    if name in ("load", "train"):
        from textgen import api

        return getattr(api, name)
    raise AttributeError(name)
