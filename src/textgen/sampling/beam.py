"""Beam search: keep the ``beams`` most likely continuations at every step, for one problem or many at once.

A hypothesis ends at the end-of-text token or at its problem's length limit; finished hypotheses
are ranked by ``sum(log p) / length ** length_penalty`` (above 1 favours longer texts, below 1
shorter). Beams are rows of a model's ``Stepper`` (``models/protocol.py``): each step scores
every row with one ``step``, and the surviving beams are picked with ``take``, so a beam's state
is carried and reordered, never recomputed.

``search`` is the general form: N independent problems (a language model's one prompt, or a batch
of sentences for a translation model), each with ``beams`` slots laid out as rows ``n * beams + j``
of one stepper, so every step is one call for all of them. ``beam_search`` is a language model's
single prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from textgen.models.protocol import Stepper
from textgen.sampling.processors import LogitsProcessor, apply_processors, reads_history

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    tokens: list[int]
    logprob: float
    ended: bool  # reached end-of-text

    def score(self, length_penalty: float) -> float:
        return self.logprob / max(1, len(self.tokens)) ** length_penalty


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
    precision: str = "fp32",
) -> list[Hypothesis]:
    """The best continuations of a language model's ``context``, best first (``beams`` of them when that
    many were found).

    ``processors`` reshape the scores before the log-softmax (bans and penalties; temperature and
    truncation do not change which continuation is most likely); they do not see the first ``skip``
    context tokens (an artificial start token).
    """
    device = next(model.parameters()).device
    prompt = torch.tensor([list(context)], device=device)  # (1, P)
    logits, state = model(prompt)
    stepper = model.stepper(beams, precision)  # type: ignore[operator]
    stepper.write(slice(0, 1), state)
    found = search(
        stepper,
        logits[:, -1],
        beams=beams,
        max_new_tokens=[max_new_tokens],
        length_penalty=length_penalty,
        eot_id=eot_id,
        processors=processors,
        prefix=prompt[:, skip:],
    )
    return found[0]


@torch.no_grad()
def search(
    stepper: Stepper,
    last: torch.Tensor,
    *,
    beams: int,
    max_new_tokens: Sequence[int],
    length_penalty: float = 1.0,
    eot_id: int | None = None,
    processors: Sequence[LogitsProcessor] = (),
    prefix: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Beam search for N problems at once; each problem's best hypotheses, best first.

    ``last``: (N, V) scores of each problem's first new token; ``stepper``: rows 0..N-1 hold each
    problem's state, and it has room for N * beams rows; ``max_new_tokens``: each problem's limit;
    ``prefix``: (N, P) tokens the processors see before the new ones.
    """
    n, k, device = last.shape[0], beams, last.device
    rows_of = torch.arange(n, device=device).repeat_interleave(k)  # (N*k,) each slot's problem
    stepper.take(rows_of)
    last = last.index_select(0, rows_of)
    prefix = (prefix if prefix is not None else torch.zeros((n, 0), dtype=torch.long, device=device))[rows_of]
    history = prefix if reads_history(processors) else None  # (N*k, P + t): only when a processor reads it
    scores = torch.full((n, k), NEG_INF, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # one live slot per problem at first, so no continuation is found twice
    back: list[tuple[list[int], list[int]]] = []  # each step's (row it continues, token) for every row
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    done = [limit <= 0 for limit in max_new_tokens]
    for p in range(n):
        if done[p]:  # no new token allowed: the empty continuation
            finished[p].append(Hypothesis([], 0.0, False))

    def path(row: int) -> list[int]:
        """The tokens of ``row`` so far, read back through the steps."""
        out = []
        for parents, tokens in reversed(back):
            out.append(tokens[row])
            row = parents[row]
        return out[::-1]

    for t in range(max(max_new_tokens, default=0)):
        logp = apply_processors(processors, history if history is not None else prefix, last.float())
        logp = logp.log_softmax(-1)  # (N*k, V)
        vocab = logp.shape[-1]
        # Candidates are ranked in float32 (one pass over N*k*V scores); the kept sums are float64.
        total = (scores.float().view(-1, 1) + logp).view(n, k * vocab)
        _, flat = total.topk(min(2 * k, k * vocab), dim=1)  # (N, 2k)
        slots = torch.div(flat, vocab, rounding_mode="floor")
        rows_picked = torch.arange(n, device=device)[:, None] * k + slots
        best = scores.view(-1)[rows_picked] + logp[rows_picked, flat % vocab].double()  # (N, 2k)
        keep_rows = [p * k for p in range(n) for _ in range(k)]  # empty slots: their problem's first row, -inf
        keep_tokens = [0] * (n * k)
        keep_scores = torch.full((n, k), NEG_INF, dtype=torch.float64)
        for p, (candidates, indices) in enumerate(zip(best.tolist(), flat.tolist())):
            if done[p]:
                continue
            kept = 0
            for score, index in zip(candidates, indices):
                if score == NEG_INF:
                    break
                slot, token = divmod(index, vocab)
                row = p * k + slot
                if token == eot_id:
                    finished[p].append(Hypothesis(path(row), score, True))
                else:
                    keep_rows[p * k + kept], keep_tokens[p * k + kept], keep_scores[p, kept] = row, token, score
                    kept += 1
                if kept == k:
                    break
            live = keep_scores[p, :kept].tolist()
            if not kept or _done(finished[p], live, k, length_penalty, t + 1, max_new_tokens[p]):
                done[p] = True
                finished[p] += [  # live beams compete too (when stopped early they cannot win: harmless)
                    Hypothesis(path(keep_rows[p * k + j]) + [keep_tokens[p * k + j]], s, False)
                    for j, s in enumerate(live)
                ]
                keep_scores[p] = NEG_INF  # the problem's slots go idle
        back.append((keep_rows, keep_tokens))
        rows = torch.tensor(keep_rows, device=device)
        new = torch.tensor(keep_tokens, device=device)
        if history is not None:
            history = torch.cat([history.index_select(0, rows), new[:, None]], dim=1)
        scores = keep_scores.to(device)
        if all(done):
            break
        stepper.take(rows)
        last = stepper.step(new)  # (N*k, V)
    return [sorted(f, key=lambda h: h.score(length_penalty), reverse=True)[:k] for f in finished]


def _done(
    finished: list[Hypothesis], live: list[float], beams: int, length_penalty: float, length: int, max_length: int
) -> bool:
    """Stop once ``beams`` hypotheses have ended and no live beam can still beat the worst of them, or at
    the length limit.

    A live beam's log probability only falls as it grows, and it is negative; divided by
    length ** penalty, it is best at the longest length for a positive penalty, else now.
    """
    if length >= max_length:
        return True
    if len(finished) < beams or not live:
        return len(finished) >= beams
    worst = sorted(h.score(length_penalty) for h in finished)[-beams]
    reach = max_length if length_penalty > 0 else length
    return max(live) / reach**length_penalty <= worst
