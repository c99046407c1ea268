"""Batches of (input, target) token ids: stateful streams, shuffled windows, evaluation streams.

Both training layouts are pure functions of (epoch, step) and the seed, so a resumed run draws
exactly the batches an uninterrupted one would. Batches are numpy arrays on the host;
``to_device`` moves them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from textgen.errors import CorpusError


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host ids onto ``device``; to a GPU through pinned memory with an asynchronous copy, so the host
    queues the step and goes on to the next batch instead of waiting for the copy."""
    t = torch.from_numpy(a)
    if device.type != "cuda":
        return t.to(device)
    return t.contiguous().pin_memory().to(device, non_blocking=True)


class StatefulStreams:
    """B contiguous streams read T tokens at a time; row b of batch k+1 continues row b of batch k.

    The training ids are cut into B equal streams (the tail that does not fill them is dropped)::

        ids:     a b c d e f g h i j k l m n o p q r s t u v w x      (B = 4, T = 2)
        streams: a b c d e f          batch 0   batch 1
                 g h i j k l          x: a b    x: c d    y is x shifted by one token:
                 m n o p q r             g h       i j    y: b c | d e ...
                 s t u v w x             m n       o p
                                         s t       u v

    The model carries its hidden state from batch k to k+1 (detached: truncated BPTT). The last
    batch of an epoch is shorter when T does not divide the stream, so no target is left out.
    """

    stateful = True

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int) -> None:
        length = len(ids) // batch_size
        self.steps_per_epoch = -(-(length - 1) // seq_len)  # ceil: a shorter last chunk
        if length - 1 < seq_len:
            raise CorpusError(
                f"corpus too short: {len(ids):,} training tokens make {batch_size} streams of {length:,}, "
                f"fewer than one sequence of {seq_len}+1; lower --batch-size or --seq-len"
            )
        self.streams = ids[: batch_size * length].reshape(batch_size, length)  # (B, L) view
        self.seq_len = seq_len

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        t = step * self.seq_len
        chunk = np.asarray(self.streams[:, t : t + self.seq_len + 1], dtype=np.int64)  # (B, T+1)
        return chunk[:, :-1], chunk[:, 1:]


def shuffle_buffer_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of ``buffer`` slots yields items 0..n-1 in.

    Like ``tf.data.Dataset.shuffle``: fill the buffer in order, then repeatedly emit a random slot
    and refill it with the next item; once the input is exhausted the buffer drains.
    """
    buf = list(range(min(buffer, n)))
    nxt = len(buf)
    out = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)  # 4 bytes a window where that suffices
    for lo in range(0, n, 1 << 20):  # the draws a chunk at a time: the same numbers as rng.random(n)
        chunk = []
        for d in rng.random(min(1 << 20, n - lo)).tolist():
            j = int(d * len(buf))
            chunk.append(buf[j])
            if nxt < n:
                buf[j] = nxt
                nxt += 1
            else:
                buf[j] = buf[-1]
                buf.pop()
        out[lo : lo + len(chunk)] = chunk
    return out


class ShuffledWindows:
    """Windows of T+1 tokens, every ``stride`` tokens, drawn through a shuffle buffer; B per batch.

    Each window gives an input (its first T tokens) and a target (its last T); the state starts
    from zero for every batch. A new order is drawn each epoch from (seed, epoch). With
    ``random_offset`` every epoch also starts its windows at a fresh offset in [0, stride), drawn
    from (seed, epoch): a small corpus is then not cut at the same boundaries every epoch (the
    tutorials' fixed windows are ``random_offset=False``)::

        epoch 0, offset 0:  |a b c d|e f g h|i j k l|m n o p|q
        epoch 1, offset 2:  a b|c d e f|g h i j|k l m n|o p q

    Every epoch has the same number of windows (those that fit at the largest offset).
    """

    stateful = False

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        buffer: int = 10000,
        stride: int = 0,
        seed: int = 0,
        random_offset: bool = False,
    ) -> None:
        self.stride = stride = stride or seq_len + 1
        self.random_offset = random_offset and stride > 1
        last = stride - 1 if self.random_offset else 0  # the largest offset: every epoch has this many windows
        self.windows = len(range(last, len(ids) - seq_len, stride))  # window w starts at offset + w * stride
        self.steps_per_epoch = self.windows // batch_size
        if self.steps_per_epoch < 1:
            raise CorpusError(
                f"corpus too short: {len(ids):,} training tokens give {self.windows:,} windows of "
                f"{seq_len}+1, fewer than one batch of {batch_size}; lower --batch-size or --seq-len"
            )
        self.ids, self.batch_size, self.seq_len = ids, batch_size, seq_len
        self.buffer, self.seed = buffer, seed
        self._order: tuple[int, np.ndarray] | None = None
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def offset(self, epoch: int) -> int:
        """Where epoch ``epoch``'s first window starts."""
        if not self.random_offset:
            return 0
        return int(np.random.default_rng([self.seed, epoch, 1]).integers(self.stride))

    def starts(self, epoch: int = 0) -> np.ndarray:
        """Where each window of ``epoch`` starts (made on demand: never kept, it would be 8 bytes a window)."""
        return self.offset(epoch) + np.arange(self.windows, dtype=np.int64) * self.stride

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, shuffle_buffer_order(self.windows, self.buffer, rng))
        return self._order[1]

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self.order(epoch)[step * self.batch_size : (step + 1) * self.batch_size]
        index = self.offset(epoch) + picks.astype(np.int64)[:, None] * self.stride + self._offsets  # (B, T+1)
        chunk = np.asarray(self.ids[index], dtype=np.int64)
        return chunk[:, :-1], chunk[:, 1:]


def eval_chunks(ids: np.ndarray, streams: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every next-token prediction in ``ids`` once, as B streams read T tokens at a time.

    Stream b covers its share of the targets and starts one token earlier for its first input,
    so all len(ids) - 1 targets are scored. Yields (x, y, mask) of shape (B, T); mask marks real
    positions (the last chunk of a shorter stream is padded).
    """
    n = len(ids)
    if n < 2:
        return
    streams = max(1, min(streams, (n - 1) // max(1, seq_len) or 1))
    per = -(-(n - 1) // streams)  # targets per stream, rounded up
    bounds = [(b * per, min(n - 1, (b + 1) * per)) for b in range(streams)]  # input index ranges
    for t in range(0, per, seq_len):
        x = np.zeros((streams, seq_len), dtype=np.int64)
        y = np.zeros((streams, seq_len), dtype=np.int64)
        mask = np.zeros((streams, seq_len), dtype=bool)
        for b, (lo, hi) in enumerate(bounds):
            a, z = lo + t, min(hi, lo + t + seq_len)
            if a >= z:
                continue
            seg = np.asarray(ids[a : z + 1], dtype=np.int64)
            x[b, : z - a], y[b, : z - a], mask[b, : z - a] = seg[:-1], seg[1:], True
        yield x, y, mask
