"""The one decode core: rows of state, the processor chain, sampling, stop strings, the token history,
per-token probabilities and finish reasons.

Every front end decodes language models through it: ``Generation`` (the CLI and the Python API)
admits one request of N rows and ticks until it ends; the server's engine (``serve/engine.py``)
admits requests as rows free up and ticks while any is running::

    admit(request)   the prompt runs once through the model's forward (or its last pass is reused, for
                     the same prompt ids); its state goes into N free rows
    tick()           for every request: scores -> its processors -> softmax -> one draw for its rows
                     (its own seeded generator, or the core's) -> text, stops, finish reasons;
                     ended requests free their rows (the last rows move into the gaps, so the
                     active rows stay packed); then one ``Stepper.step`` for all remaining rows

A seeded request draws all its rows in one call of ``draw`` with its own generator, on the scores
of its own rows, so it gives the same text alone, batched with others, from the CLI,
the API or the server. Requests with the same settings and no processor that reads the tokens so
far share one pass of the processors (and, when unseeded, one draw).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer
from textgen.errors import ConfigError
from textgen.models.protocol import STEPPERS, ReferenceStepper, State, Stepper
from textgen.sampling.processors import LogitsProcessor, apply_processors, processors_for, reads_history
from textgen.sampling.text import Prompt, Sample, SampleStream, TokenChoice

NOT_FINITE = "the model's scores are not finite (nan or inf): its weights overflow"
PROMPT_CACHE = 16  # prompts whose forward pass a core keeps, most recently used


@dataclass
class Update:
    """What one sample of a request produced in one tick: visible text, the drawn token with its
    probabilities (when asked for), and a finish reason at its end."""

    index: int
    text: str = ""
    tokens: list[TokenChoice] = field(default_factory=list)
    finish_reason: str | None = None  # "eos", "stop" or "length" (the sample's last update)


class TokenHistory:
    """A request's prompt and generated tokens, as the processors that read them need (penalties,
    n-gram bans), in a buffer that doubles as it fills."""

    def __init__(self, context: Sequence[int], n: int, device: torch.device) -> None:
        try:
            self.buffer = torch.tensor([list(context)], device=device).repeat(n, 1)  # (B, P)
        except (RuntimeError, MemoryError):
            raise ConfigError(f"{n} samples of a {len(context):,}-token prompt do not fit in memory") from None
        self.length = len(context)

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token per sample, (B,)."""
        if self.length == self.buffer.shape[1]:
            try:
                grown = self.buffer.new_empty((self.buffer.shape[0], max(64, 2 * self.length)))
            except (RuntimeError, MemoryError):
                raise ConfigError(
                    f"{self.buffer.shape[0]} samples of {self.length:,} tokens do not fit in memory"
                ) from None
            grown[:, : self.length] = self.buffer
            self.buffer = grown
        self.buffer[:, self.length] = tokens
        self.length += 1

    def ids(self) -> torch.Tensor:
        return self.buffer[:, : self.length]  # (B, t)


class Request:
    """One prompt's ``num_samples`` samples, decoded as that many rows of the core.

    ``top``: None records no probabilities; K >= 0 records each drawn token's probability and the K
    most likely tokens (``show_probs``, the server's ``logprobs``). With ``record=False`` (streaming,
    where the caller keeps the pieces) the samples keep only their finish reasons, so memory stays
    flat however long the output. A bad setting raises a ValueError naming it, here.
    """

    def __init__(
        self,
        tokenizer: AnyTokenizer,
        prompt: Prompt,
        settings: SampleConfig,
        *,
        top: int | None = None,
        record: bool = True,
    ) -> None:
        settings.validate()
        self.prompt, self.settings, self.top = prompt, settings, top
        self.chain: list[LogitsProcessor] = processors_for(settings, banned=[tokenizer.unk_id])
        # Requests whose processors read no history and have equal settings share one pass (see tick).
        self.key: tuple | None = None if reads_history(self.chain) else _processor_key(settings)
        self.n = settings.num_samples
        record = record or top is not None
        self.streams = [SampleStream(tokenizer, prompt.ids, settings.stop, record) for _ in range(self.n)]
        self.eot_id = tokenizer.eot_id
        self.generator: np.random.Generator | None = None  # made at admission when seeded
        self.history: TokenHistory | None = None
        self.rows: list[int] = []
        self.steps = 0
        self.error: str | None = None

    @property
    def samples(self) -> list[Sample]:
        """Each sample's text, tokens, probabilities and finish reason (complete once it has ended)."""
        return [s.sample for s in self.streams]

    @property
    def done(self) -> bool:
        return self.error is not None or all(s.done for s in self.streams)

    def finish_all(self) -> list[Update]:
        """End every sample now (no tokens were asked for): what their decoders still hold."""
        return [Update(i, s.finish(), finish_reason=s.sample.finish_reason) for i, s in enumerate(self.streams)]


class DecodeCore:
    """Rows of decode state for one language model, and the requests that own them (see the module)."""

    def __init__(
        self, model: nn.Module, tokenizer: AnyTokenizer, capacity: int, precision: str = "fp32", fast: bool = True
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.capacity = capacity
        self.stepper: Stepper = (
            STEPPERS.borrow(model, capacity, precision) if fast else ReferenceStepper(model, capacity, self.device)  # type: ignore[arg-type]
        )
        self.scores: torch.Tensor | None = None  # (capacity, V): each row's next-token scores, made at the first prompt
        self.feed = torch.zeros(capacity, dtype=torch.long, device=self.device)  # each row's last drawn token
        self.owner: list[tuple[Request, int] | None] = [None] * capacity  # row -> (request, sample)
        self.requests: list[Request] = []
        self.n_rows = 0
        self.generated = 0  # tokens drawn (end-of-text not counted)
        self.model_calls = 0
        self.rng = np.random.default_rng()  # unseeded requests' draws
        self.chains: dict[tuple, list[LogitsProcessor]] = {}
        self.no_history = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.prompts: dict[tuple[int, ...], tuple[torch.Tensor, State]] = {}  # prompt ids -> (scores, state)

    def close(self) -> None:
        """Give the stepper back for the next decode of this model (its rows' contents are forgotten)."""
        STEPPERS.give_back(self.stepper)

    @property
    def free_rows(self) -> int:
        return self.capacity - self.n_rows

    @torch.no_grad()
    def admit(self, request: Request) -> list[Update]:
        """Run the prompt through the model once and give its state to ``request.n`` free rows.

        A request that asks for no tokens ends at once: its last updates are returned and it takes no rows."""
        if request.n > self.free_rows:
            raise ValueError(f"{request.n} rows asked for, {self.free_rows} free")
        if request.settings.seed is not None:
            request.generator = np.random.default_rng(request.settings.seed)
        if request.settings.max_new_tokens == 0:
            return request.finish_all()
        last, state = self._prompt(request.prompt.ids)
        if self.scores is None:
            self.scores = torch.zeros(self.capacity, last.shape[-1], device=self.device)
        first, n = self.n_rows, request.n
        self.stepper.write(slice(first, first + n), state)
        self.scores[first : first + n] = last
        if request.key is None:
            request.history = TokenHistory(request.prompt.ids, n, self.device)
        request.rows = list(range(first, first + n))
        for i, row in enumerate(request.rows):
            self.owner[row] = (request, i)
        self.n_rows += n
        self.requests.append(request)
        return []

    def _prompt(self, ids: list[int]) -> tuple[torch.Tensor, State]:
        """The prompt's next-token scores (V,) and state, from one pass of the model's forward, or from the
        last ``PROMPT_CACHE`` prompts' passes when the same ids come again (a server's many requests with
        one prompt, the playground's): the very tensors that pass made, so the text is the same."""
        key = tuple(ids)
        hit = self.prompts.pop(key, None)
        if hit is None:
            logits, state = self.model(torch.tensor([ids], device=self.device))  # (1, P, V)
            self.model_calls += 1
            hit = logits[0, -1].clone(), tuple(t.clone() for t in state)  # not views that keep (1, P, V) alive
        self.prompts[key] = hit  # the most recently used last
        if len(self.prompts) > PROMPT_CACHE:
            del self.prompts[next(iter(self.prompts))]
        return hit

    def release(self, request: Request) -> None:
        """Give ``request``'s rows back, moving rows from the end into the gaps so the active ones stay packed."""
        for row in sorted(request.rows, reverse=True):
            last = self.n_rows - 1
            if row != last:
                moved = self.owner[last]
                assert moved is not None
                self.stepper.copy(last, row)
                self.feed[row] = self.feed[last]
                if self.scores is not None:
                    self.scores[row] = self.scores[last]
                moved[0].rows[moved[1]] = row
                self.owner[row] = moved
            self.owner[last] = None
            self.n_rows -= 1
        request.rows = []
        self.requests.remove(request)

    def tick(self) -> list[tuple[Request, list[Update]]]:
        """Draw one token for every row, hand out the text, free ended requests, then step the rest.

        Returns each request's updates; a request that ended (``done``, or ``error`` set) has left the core.
        Call it under ``torch.no_grad()`` (as ``Generation`` and the engine's thread do)."""
        n = self.n_rows
        probs = self._draw()  # the tokens go straight into self.feed[:n]
        drawn = self.feed[:n].tolist()
        out: list[tuple[Request, list[Update]]] = []
        for request in self.requests:
            if request.error is not None:
                out.append((request, []))
                continue
            tokens = [drawn[row] for row in request.rows]
            out.append((request, self._accept(request, tokens, probs.get(id(request)))))
        for request, _ in out:
            if request.done:
                self.release(request)
        if self.n_rows:  # every remaining row steps on its token, ended samples of running requests too
            assert self.scores is not None
            self.scores[: self.n_rows] = self.stepper.step(self.feed[: self.n_rows])
            self.model_calls += 1
        return out

    def _draw(self) -> dict[int, torch.Tensor]:
        """Draw every row's next token into ``self.feed``; returns the probabilities of the requests that
        record them, by ``id(request)``. A failure (scores that overflow) sets the error of only the
        requests it touched.

        Requests with equal settings and no processor that reads the history share one pass of the
        processors; the unseeded ones among them share one draw from the core's generator, and each
        seeded one draws its rows with its own."""
        assert self.scores is not None or not self.requests
        scores = self.scores
        recorded: dict[int, torch.Tensor] = {}
        shared: dict[tuple, list[Request]] = {}
        for request in self.requests:
            if request.key is not None:
                shared.setdefault(request.key, []).append(request)
                continue
            assert request.history is not None and scores is not None
            probs = None
            try:
                ids = request.history.ids()[:, request.prompt.skip :]
                probs = apply_processors(request.chain, ids, scores[request.rows].float()).softmax(-1)
                self._put(request.rows, draw(probs, request.generator or self.rng))
            except RuntimeError as e:
                request.error = _sampling_error(e, probs)
                continue
            if request.top is not None:
                recorded[id(request)] = probs
        for key, group in shared.items():
            group.sort(key=lambda r: r.generator is not None)  # unseeded first: one draw for all of them
            probs = None
            try:
                chain = self.chains.setdefault(key, group[0].chain)
                rows = [row for r in group for row in r.rows]
                picked = _pick(scores, rows).float()  # type: ignore[arg-type]
                probs = apply_processors(chain, self.no_history, picked).softmax(-1)
                unseeded = sum(r.n for r in group if r.generator is None)
                if unseeded:
                    self._put(rows[:unseeded], draw(probs[:unseeded], self.rng))
                start = 0
                for request in group:
                    part = probs[start : start + request.n]
                    if request.generator is not None:
                        self._put(request.rows, draw(part, request.generator))
                    if request.top is not None:
                        recorded[id(request)] = part
                    start += request.n
            except RuntimeError as e:
                for request in group:
                    request.error = _sampling_error(e, probs)
        return recorded

    def _put(self, rows: list[int], drawn: np.ndarray) -> None:
        """Set the rows' next inputs (a slice copy when the rows are contiguous, as they mostly are)."""
        tokens = torch.from_numpy(drawn).to(self.device)
        first = rows[0]
        if rows == list(range(first, first + len(rows))):
            self.feed[first : first + len(rows)] = tokens
        else:
            self.feed[torch.tensor(rows, device=self.device)] = tokens

    def _accept(self, request: Request, tokens: list[int], probs: torch.Tensor | None) -> list[Update]:
        """Feed each sample its drawn token; the updates to hand out."""
        choices: list[TokenChoice | None] = [None] * request.n
        if probs is not None and request.top is not None:
            choices = _choices(probs, tokens, request.top)
        request.steps += 1
        last = request.steps >= request.settings.max_new_tokens
        updates = []
        for i, (stream, token) in enumerate(zip(request.streams, tokens)):
            if stream.done:
                continue
            text = stream.push(token)
            if token != request.eot_id:
                self.generated += 1
            if last and not stream.done:
                text += stream.finish()  # finish_reason stays "length" unless a stop string completes
            update = Update(i, text, finish_reason=stream.sample.finish_reason if stream.done else None)
            choice = choices[i]
            if choice is not None and token != request.eot_id:
                choice.text = stream.piece
                update.tokens.append(choice)
                if stream.record:
                    stream.sample.choices.append(choice)
            if update.text or update.tokens or update.finish_reason:
                updates.append(update)
        if request.history is not None and not last:
            request.history.append(torch.tensor(tokens, device=self.device))
        return updates


def draw(probs: torch.Tensor, generator: np.random.Generator) -> np.ndarray:
    """One token per row of ``probs`` (n, V) by inverse transform sampling: a uniform number per row
    (numpy's generator: on the host, where the tokens are wanted) is placed in the row's cumulative
    distribution. In float64, so rounding never picks a token of probability 0; scores that were
    not finite raise a RuntimeError, as ``torch.multinomial`` does."""
    cdf = np.cumsum(probs.detach().cpu().numpy(), axis=1, dtype=np.float64)  # (n, V)
    total = cdf[:, -1]  # (n,)
    if not (np.isfinite(total).all() and (total > 0).all()):
        raise RuntimeError("probability tensor contains inf, nan or element < 0")
    u = generator.random(len(cdf)) * total  # (n,) in [0, total)
    return np.minimum((cdf <= u[:, None]).sum(1), cdf.shape[1] - 1)  # (n,) the first token whose cdf exceeds u


def _pick(scores: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Those rows of the scores: a view when they are 0..k-1 in order."""
    return scores[: len(rows)] if rows == list(range(len(rows))) else scores[rows]


def _processor_key(cfg: SampleConfig) -> tuple:
    return (cfg.temperature, cfg.top_k, cfg.top_p, cfg.typical_p, cfg.min_p)


def _choices(probs: torch.Tensor, tokens: list[int], k: int) -> list[TokenChoice | None]:
    """Each row's drawn-token probability and its ``k`` most likely tokens (those with any probability)."""
    chosen = probs.gather(1, torch.tensor(tokens, device=probs.device)[:, None])[:, 0].tolist()
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1) if k else (None, None)
    out: list[TokenChoice | None] = []
    for b, (t, p) in enumerate(zip(tokens, chosen)):
        top = []
        if top_p is not None and top_i is not None:
            top = [(i, q) for i, q in zip(top_i[b].tolist(), top_p[b].tolist()) if q > 0]
        out.append(TokenChoice(t, p, top))
    return out


def _sampling_error(e: RuntimeError, probs: torch.Tensor | None) -> str:
    if probs is not None and not bool(probs.isfinite().all()):
        return NOT_FINITE
    return f"sampling failed: {e}"
