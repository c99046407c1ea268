"""Beam search for language models: keep the ``beams`` most likely continuations at every step.

A hypothesis ends at the end-of-text token or after ``max_new_tokens``; finished hypotheses are
ranked by ``sum(log p) / length ** length_penalty`` (above 1 favours longer texts, below 1
shorter). The hidden state of each beam is carried and reordered, never recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from textgen.models.lm import State
from textgen.sampling.processors import LogitsProcessor, apply_processors


@dataclass
class Hypothesis:
    tokens: list[int]
    logprob: float
    ended: bool  # reached end-of-text

    def score(self, length_penalty: float) -> float:
        return self.logprob / max(1, len(self.tokens)) ** length_penalty


def _select(state: State, index: torch.Tensor) -> State:
    """Reorder the beam dimension (dim 1) of a hidden state."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)


@torch.no_grad()
def beam_search(
    model: nn.Module,
    context: Sequence[int],
    *,
    beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    eot_id: int | None = None,
    processors: Sequence[LogitsProcessor] = (),
    skip: int = 0,
) -> list[Hypothesis]:
    """The best hypotheses, best first (``beams`` of them when that many were found).

    ``processors`` reshape the scores before the log-softmax (bans and penalties; temperature and
    truncation do not change which continuation is most likely); they do not see the first ``skip``
    context tokens (an artificial start token).
    """
    device = next(model.parameters()).device
    prompt = torch.tensor([list(context)], device=device)  # (1, P)
    logits, state = model(prompt)
    last = logits[:, -1]  # (k, V) with k = 1 live beam at first
    live_tokens = torch.zeros((1, 0), dtype=torch.long, device=device)
    live_scores = torch.zeros(1, device=device, dtype=torch.float64)
    finished: list[Hypothesis] = []
    for step in range(max_new_tokens):
        history = torch.cat([prompt[:, skip:].expand(len(live_tokens), -1), live_tokens], dim=1)
        logp = apply_processors(processors, history, last.float()).log_softmax(-1).double()  # (k, V)
        vocab = logp.shape[-1]
        total = (live_scores[:, None] + logp).flatten()  # (k * V,)
        best, flat = total.topk(min(2 * beams, total.numel()))
        keep_rows, keep_tokens, keep_scores = [], [], []
        for score, index in zip(best.tolist(), flat.tolist()):
            if score == float("-inf"):
                break
            row, token = divmod(index, vocab)
            tokens = live_tokens[row].tolist() + [token]
            if token == eot_id:
                finished.append(Hypothesis(tokens[:-1], score, True))
            else:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(score)
            if len(keep_rows) == beams:
                break
        rows = torch.tensor(keep_rows, device=device, dtype=torch.long)
        new = torch.tensor(keep_tokens, device=device, dtype=torch.long)
        live_tokens = torch.cat([live_tokens.index_select(0, rows), new[:, None]], dim=1)
        live_scores = torch.tensor(keep_scores, device=device, dtype=torch.float64)
        if not keep_rows or _done(finished, keep_scores, beams, length_penalty, step + 1, max_new_tokens):
            break
        if step + 1 < max_new_tokens:
            logits, state = model(new[:, None], _select(state, rows))
            last = logits[:, -1]
    # Live beams compete too (when the search stopped early they cannot win, so this is harmless).
    finished += [Hypothesis(t, s, False) for t, s in zip(live_tokens.tolist(), live_scores.tolist())]
    return sorted(finished, key=lambda h: h.score(length_penalty), reverse=True)[:beams]


def _done(
    finished: list[Hypothesis], live: list[float], beams: int, length_penalty: float, length: int, max_length: int
) -> bool:
    """Stop once ``beams`` hypotheses have ended and no live beam can still beat the worst of them.

    A live beam's log probability only falls as it grows, and it is negative; divided by
    length ** penalty, it is best at the longest length for a positive penalty, else now.
    """
    if len(finished) < beams or not live:
        return len(finished) >= beams
    worst = sorted(h.score(length_penalty) for h in finished)[-beams]
    reach = max_length if length_penalty > 0 else length
    return max(live) / reach**length_penalty <= worst
