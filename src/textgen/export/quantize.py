"""Smaller weights for export: int8 with one scale per row (symmetric, round to nearest), or float16.

Both are storage formats: the runtimes turn them back into float32 when they load (ONNX Runtime folds
the dequantizing nodes once; the web page decodes once), so a step computes in float32 as before.
"""

from __future__ import annotations

import numpy as np

WEIGHTS = ("fp32", "fp16", "int8")
MIN_ELEMENTS = 1024  # smaller tensors (biases, tiny matrices) stay float32: they weigh nothing


def quantize_int8(a: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scales, one per index along ``axis`` (one in all when None): a = q * scale."""
    a = np.asarray(a, dtype=np.float32)
    if axis is None:
        peak = np.abs(a).max(keepdims=True).reshape(1)
    else:
        axis %= a.ndim
        peak = np.abs(a).max(axis=tuple(d for d in range(a.ndim) if d != axis))
    scale = (np.maximum(peak, 1e-30) / 127).astype(np.float32)
    shape = [1] * a.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(a / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    shape = [1] * q.ndim
    if axis is not None:
        shape[axis % q.ndim] = -1
    return q.astype(np.float32) * scale.reshape(shape)
