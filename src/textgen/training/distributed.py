"""Several processes, one model: PyTorch's DistributedDataParallel, set up from torchrun's environment.

``torchrun --nproc-per-node N -m textgen train ...`` starts N copies of textgen and tells each its
place in the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, and where to meet). A plain
``textgen train`` has none of those and runs alone: every helper here is then a no-op.

How the work is shared (the trainer does it; this module holds the pieces):

- every process draws the same global batch (batches are pure functions of (epoch, step)) and
  keeps its own share of the rows: ``shard index = rank * accumulate + micro-batch``, out of
  ``world * accumulate`` equal shares, so the same settings train the same model on any number
  of processes;
- DistributedDataParallel averages the gradients across processes during the backward pass;
- only rank 0 prints, validates, samples and writes files; the others wait for it where its
  result matters (the validation loss, which moves the learning rate and early stopping).

Nothing crosses between processes as a pickle: tokenizers travel as JSON bytes, states as tensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from textgen.errors import ConfigError
from textgen.inference.device import pick_device

# Long enough for rank 0 to validate (or write a checkpoint) while the others wait at a collective.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The world torchrun describes in ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; alone without them."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        rank, local, size = (int(env[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    except (KeyError, ValueError):
        raise ConfigError(
            "WORLD_SIZE is set but RANK and LOCAL_RANK are missing or not numbers: launch with torchrun"
        ) from None
    if not (0 <= rank < size and 0 <= local <= rank):
        raise ConfigError(f"inconsistent torchrun environment: RANK {rank}, LOCAL_RANK {local}, WORLD_SIZE {size}")
    return World(rank, local, size)


def device_for(name: str, world: World) -> torch.device:
    """``auto``: the process's own GPU (``cuda:LOCAL_RANK``) when CUDA is present, else the CPU."""
    return pick_device(name, world.local_rank if world.distributed else None)


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the other processes (NCCL between GPUs, gloo between CPUs) and always leave on exit.

    Leaving on errors and Ctrl-C too matters: a process that dies inside a collective would
    otherwise keep the others waiting until the timeout (torchrun also stops them when one fails).
    """
    if not world.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # device_id binds NCCL to this GPU at once (and reports a broken NCCL set-up here, not later).
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def _comm_device(device: torch.device) -> torch.device:
    """Where tensors must be for a collective: NCCL only moves GPU tensors."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_json(world: World, value: Any, device: torch.device) -> Any:
    """Rank 0's ``value`` (JSON-serialisable) on every rank; others pass anything (ignored)."""
    if not world.distributed:
        return value
    where = _comm_device(device)
    data = json.dumps(value).encode() if world.main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=where)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=where)
    if world.main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().numpy()).decode()) if not world.main else value


def agree(world: World, flags: torch.Tensor) -> torch.Tensor:
    """Each entry's maximum over all ranks (a flag any rank raises is raised everywhere), in place."""
    if world.distributed:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def sum_over_ranks(world: World, value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over all ranks, in place."""
    if world.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_floats(world: World, values: list[float], device: torch.device) -> list[float]:
    """Rank 0's numbers on every rank (the others pass as many placeholders)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(device))
    dist.broadcast(t, 0)
    return t.tolist()


def gather_states(world: World, state: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """Every rank's ``state`` (nested dicts and lists of tensors, the same layout and shapes on every
    rank), as a list indexed by rank, on the CPU; collective: every rank must call it."""
    leaves: list[torch.Tensor] = []
    _flatten(state, leaves)
    if not world.distributed:
        return [state]
    where = _comm_device(device)
    gathered: list[list[torch.Tensor]] = [[] for _ in range(world.size)]
    for leaf in leaves:
        local = leaf.detach().to(where).contiguous()
        parts = [torch.empty_like(local) for _ in range(world.size)]
        dist.all_gather(parts, local)
        for r, part in enumerate(parts):
            gathered[r].append(part.cpu())
    return [_unflatten(state, iter(g)) for g in gathered]


def _flatten(node: Any, out: list[torch.Tensor]) -> None:
    if isinstance(node, torch.Tensor):
        out.append(node)
    elif isinstance(node, dict):
        for key in sorted(node):
            _flatten(node[key], out)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _flatten(item, out)
    else:
        raise TypeError(f"only tensors, dicts and lists can be gathered, not {type(node).__name__}")


def _unflatten(template: Any, leaves: Iterator[torch.Tensor]) -> Any:
    if isinstance(template, torch.Tensor):
        return next(leaves)
    if isinstance(template, dict):
        return {key: _unflatten(template[key], leaves) for key in sorted(template)}
    return [_unflatten(item, leaves) for item in template]
