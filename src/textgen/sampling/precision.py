"""``decode_precision auto``: the fastest decode precision whose logits stay close to fp32 on this model.

The candidates are fixed by the device, so every front end makes the same choice for the same
model: on a CPU, int8 weights where PyTorch's quantized kernels exist and the model is large
enough to gain (below ``INT8_MIN_PARAMS`` the step is bound by per-call overhead, not by reading
weights); on CUDA, bf16. A candidate is kept only if, on a short probe at load (random tokens fed
to both steppers), its next-token distribution stays within ``TOLERANCE`` total variation of
fp32's at every step; otherwise decoding stays fp32.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from textgen.models.protocol import PRECISIONS, eval_mode, int8_available

AUTO = "auto"
CHOICES = (AUTO, *PRECISIONS)
INT8_MIN_PARAMS = 1_000_000  # parameters (see benchmarks/bench.py: int8 gains from about this size)
TOLERANCE = 0.02  # largest total variation distance from fp32's next-token distribution in the probe
PROBE_ROWS, PROBE_PROMPT, PROBE_STEPS = 4, 8, 32

_chosen: weakref.WeakKeyDictionary[nn.Module, tuple[int, str, str]] = weakref.WeakKeyDictionary()


def choose_precision(model: nn.Module, requested: str = AUTO) -> tuple[str, str]:
    """The precision to decode ``model`` in, and why (one line). Anything but ``auto`` is taken as asked."""
    if requested != AUTO:
        return requested, f"{requested}, as asked"
    version = sum(p._version for p in model.parameters())  # the choice is redone if the weights change
    cached = _chosen.get(model)
    if cached is not None and cached[0] == version:
        return cached[1], cached[2]
    precision, why = _choose(model)
    _chosen[model] = (version, precision, why)
    return precision, why


def _candidates(model: nn.Module, device: torch.device) -> tuple[list[str], str]:
    if device.type == "cuda":
        return ["bf16"], ""
    params = sum(p.numel() for p in model.parameters())
    if params < INT8_MIN_PARAMS:
        return [], f"fp32: {params:,} parameters are too few for int8 to gain on a CPU"
    if not int8_available():
        return [], "fp32: this PyTorch has no quantized CPU kernels for int8"
    return ["int8"], ""


@torch.no_grad()
def _choose(model: nn.Module) -> tuple[str, str]:
    device = next(model.parameters()).device
    candidates, why = _candidates(model, device)
    if not candidates:
        return "fp32", why
    with eval_mode(model):
        generator = torch.Generator(device="cpu").manual_seed(0)
        prompt_logits, state = model(torch.zeros((1, 1), dtype=torch.long, device=device))
        vocab = prompt_logits.shape[-1]
        ids = torch.randint(1, max(2, vocab), (PROBE_ROWS, PROBE_PROMPT + PROBE_STEPS), generator=generator)
        ids = ids.to(device)
        _, state = model(ids[:, :PROBE_PROMPT])
        steppers = {p: model.stepper(PROBE_ROWS, p) for p in ("fp32", *candidates)}  # type: ignore[operator]
        for stepper in steppers.values():
            stepper.write(slice(0, PROBE_ROWS), state)
        worst = dict.fromkeys(candidates, 0.0)
        for t in range(PROBE_PROMPT, PROBE_PROMPT + PROBE_STEPS):
            exact = steppers["fp32"].step(ids[:, t]).float().softmax(-1)
            for p in candidates:
                tv = 0.5 * (steppers[p].step(ids[:, t]).float().softmax(-1) - exact).abs().sum(-1).max().item()
                worst[p] = max(worst[p], tv)
    for p in candidates:
        if worst[p] <= TOLERANCE:
            return p, f"{p}: its next-token distributions stay within {worst[p]:.4f} (total variation) of fp32's"
    p = candidates[0]
    return "fp32", f"fp32: {p} moved the next-token distribution by {worst[p]:.4f}, above {TOLERANCE}"
