"""Continuous batching for one language model: every request in flight advances one token per tick.

A recurrent model's state for one sequence is a fixed-size row (h, and c for an LSTM), so
requests can join and leave a running batch at any step::

    rows   0    1    2    3    4    5    6    7          a tick: sample a token for every row from
         [ A0 | A1 | B0 | C0 |  - |  - |  - |  - ]      its logits, then one FastStep for all rows
    admit D (prompt warm-up once, state copied into the free rows 4 and 5):
         [ A0 | A1 | B0 | C0 | D0 | D1 |  - |  - ]
    B ends: the last row moves into its place, so active rows stay packed at the front:
         [ A0 | A1 | D1 | C0 | D0 |  - |  - |  - ]

The step runs on the smallest power-of-two batch that holds the active rows, so one request alone
costs what it costs without the server. Sampling reuses the generation engine: each request's
SampleConfig gives its logits processors (requests with equal settings and no penalties are
processed together; penalties need each request's own history), each choice is a SampleStream,
and a seeded request draws all its rows in one ``torch.multinomial`` call with its own generator,
as ``Generation`` does, so it gives the same text alone, batched with others, or from
``textgen generate --seed``.

The engine runs in its own thread (PyTorch releases the GIL in its kernels) and hands what each
tick produced to the web server's event loop in one call per tick.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import torch

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer
from textgen.errors import TextgenError
from textgen.models.lm import RecurrentLM
from textgen.models.step import FastStep
from textgen.sampling.decode import SampleStream, encode_prompt
from textgen.sampling.processors import LogitsProcessor, apply_processors, processors_for

log = logging.getLogger("textgen.serve")


class EngineBusy(TextgenError):
    """Too many requests are already waiting for this model."""


@dataclass
class TokenInfo:
    """A drawn token's text, log-probability and the most likely tokens at its step (their logprobs)."""

    text: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass
class Update:
    """What one choice produced in one tick: visible text, drawn tokens, and a finish reason at its end."""

    index: int
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None  # "eos", "stop" or "length" (the choice's last update)


@dataclass
class EngineStats:
    """Counters for /health and the tests."""

    active_rows: int = 0
    waiting: int = 0
    peak_rows: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    tokens: int = 0
    ticks: int = 0


class Job:
    """One prompt's request: ``n`` choices decoded as ``n`` rows of the engine's batch.

    An asyncio consumer iterates ``updates([jobs], ready)``; anyone can wait on ``finished``.
    ``cancel()`` from any thread frees the rows at the next tick.
    """

    def __init__(
        self,
        tokenizer: AnyTokenizer,
        context: list[int],
        skip: int,
        settings: SampleConfig,
        logprobs: int | None,
        loop: asyncio.AbstractEventLoop | None,
        ready: asyncio.Event | None,
    ) -> None:
        self.context, self.skip, self.settings, self.logprobs = context, skip, settings, logprobs
        self.n = settings.num_samples
        self.streams = [SampleStream(tokenizer, context, settings.stop) for _ in range(self.n)]
        self.generator: torch.Generator | None = None  # made on the engine's device when seeded
        self.rows: list[int] = []
        self.steps = 0
        self.history: torch.Tensor | None = None  # (n, P + max_tokens) tokens so far, when penalties need them
        self.chain: list[LogitsProcessor] = []  # this job's own processors, when penalties need its history
        self.cancelled = False
        self.error: str | None = None
        self.finished = threading.Event()
        self.loop = loop
        self.inbox: list[Update] = []
        self.ended = False
        self.ready = ready  # set on the consumer's loop whenever updates arrive (one event may serve several jobs)

    @property
    def samples(self) -> list:
        """Each choice's Sample (text, tokens, finish reason); complete once ``finished`` is set."""
        return [s.sample for s in self.streams]

    def cancel(self) -> None:
        self.cancelled = True

    def receive(self, updates: list[Update], ended: bool) -> None:
        """Take one tick's updates (called on the consumer's event loop, or the engine thread without one)."""
        self.inbox.extend(updates)
        self.ended = self.ended or ended
        if self.ready is not None:
            self.ready.set()


async def updates(jobs: Sequence[Job], ready: asyncio.Event) -> AsyncIterator[list[tuple[int, Update]]]:
    """(job index, update) pairs as they arrive, all that piled up since the last batch, until every job ends.

    The jobs were submitted with this event loop and ``ready``; a slow consumer gets fewer, larger batches.
    """
    while True:
        await ready.wait()
        ready.clear()
        batch = []
        for k, job in enumerate(jobs):
            if job.inbox:
                batch += [(k, u) for u in job.inbox]
                job.inbox = []
        if batch:
            yield batch
        if all(job.ended for job in jobs):
            return


def _buckets(max_rows: int) -> list[int]:
    """Batch sizes the step is built for: powers of two below ``max_rows``, then ``max_rows``."""
    sizes = [1 << i for i in range(max_rows.bit_length()) if 1 << i < max_rows]
    return [*sizes, max_rows]


class Engine:
    """Decodes all requests for one model together, one token per tick, in a thread of its own."""

    def __init__(
        self,
        model: RecurrentLM,
        tokenizer: AnyTokenizer,
        *,
        max_rows: int = 64,
        max_waiting: int = 256,
        precision: str = "fp32",
    ) -> None:
        if max_rows < 1 or max_waiting < 0:
            raise ValueError(f"max_rows must be at least 1 and max_waiting 0 or more, got {max_rows}, {max_waiting}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_rows, self.max_waiting, self.precision = max_rows, max_waiting, precision
        self.device = model.head.weight.device
        self.sizes = _buckets(max_rows)
        self.steps: dict[int, FastStep] = {}  # batch size -> its step, built when first needed
        self.fast = self._step_for(1)
        self.feed = torch.zeros(max_rows, dtype=torch.long, device=self.device)  # each row's last token
        self.owner: list[tuple[Job, int] | None] = [None] * max_rows  # row -> (job, choice)
        self.n_rows = 0
        self.jobs: list[Job] = []
        self.incoming: deque[Job] = deque()
        self.cond = threading.Condition()
        self.changed = threading.Condition()  # notified after each tick and when a job ends (for waiters)
        self.stats = EngineStats()
        self.chains: dict[tuple, list[LogitsProcessor]] = {}
        self.rng = torch.Generator(device=self.device)
        self.rng.seed()
        self.stopping = False
        self.thread: threading.Thread | None = None

    # ----- the consumer's side (any thread) -----

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="textgen-engine", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        """End the thread; jobs still running or waiting end with an error."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def submit(
        self,
        prompt: str,
        settings: SampleConfig,
        logprobs: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        ready: asyncio.Event | None = None,
        max_prompt_tokens: int | None = None,
    ) -> Job:
        """Queue a prompt; a bad prompt or setting raises TextgenError or ValueError here, not later.

        With ``loop`` (and ``ready``, set there when updates arrive) the updates are delivered on
        that event loop; without, in the engine thread (wait on ``job.finished``).
        """
        settings.validate()
        processors_for(settings)  # a ValueError naming a bad setting
        if settings.beams != 1:
            raise TextgenError("beam search is not available in the server")
        if settings.num_samples > self.max_rows:
            raise TextgenError(f"n must be at most {self.max_rows} (this server's batch), got {settings.num_samples}")
        context = encode_prompt(self.tokenizer, prompt)
        if max_prompt_tokens is not None and len(context) > max_prompt_tokens:
            raise TextgenError(
                f"the prompt is {len(context):,} tokens long; this server takes at most {max_prompt_tokens:,}"
            )
        skip = 0 if len(context) > 1 or self.tokenizer.encode(prompt) else 1  # an artificial start token is no text
        job = Job(self.tokenizer, context, skip, settings, logprobs, loop, ready)
        with self.cond:
            if self.stopping:
                raise EngineBusy("the server is shutting down")
            if len(self.incoming) >= self.max_waiting:
                raise EngineBusy(f"{len(self.incoming)} requests are already waiting for this model; try again soon")
            self.incoming.append(job)
            self.stats.waiting = len(self.incoming)
            self.cond.notify()
        return job

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds (checked after each tick); False if it still fails after ``timeout`` s."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    # ----- the engine thread -----

    def _run(self) -> None:
        torch.set_grad_enabled(False)  # per thread
        while True:
            with self.cond:
                while not self.jobs and not self.incoming and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    break
                new = self._take_admissible()
            for i, job in enumerate(new):
                try:
                    self._admit(job)
                except Exception as e:  # out of memory in the warm-up, say: fail this job and the ones after it
                    log.exception("admitting a request failed")
                    for unlucky in new[i:]:
                        if unlucky not in self.jobs:
                            unlucky.error = f"decoding failed: {type(e).__name__}: {e}"
                            self._end(unlucky, [], count="failed")
                    break
            try:
                if self.jobs:
                    self._tick()
            except Exception as e:  # a bug or out of memory: fail what is running, keep serving
                log.exception("decoding failed")
                self._fail_all(f"decoding failed: {type(e).__name__}: {e}")
        self._fail_all("the server is shutting down")
        with self.cond:
            waiting, self.incoming = list(self.incoming), deque()
        for job in waiting:
            job.error = "the server is shutting down"
            self._end(job, [], count="failed")

    def _take_admissible(self) -> list[Job]:
        """Waiting jobs, first come first served, that fit in the free rows (cancelled ones are dropped)."""
        new, free = [], self.max_rows - self.n_rows
        while self.incoming:
            job = self.incoming[0]
            if job.cancelled:
                self.incoming.popleft()
                self._end(job, [], count="cancelled")
                continue
            if job.n > free:
                break
            self.incoming.popleft()
            new.append(job)
            free -= job.n
        self.stats.waiting = len(self.incoming)
        return new

    def _step_for(self, size: int) -> FastStep:
        if size not in self.steps:
            self.steps[size] = FastStep(self.model, size, precision=self.precision)
        return self.steps[size]

    def _resize(self, rows: int, copy_logits: bool) -> None:
        """Move the active rows to the step of the smallest batch size that holds ``rows`` rows."""
        size = next(s for s in self.sizes if s >= rows)
        old = self.fast
        if size == old.logits.shape[0]:
            return
        new = self._step_for(size)
        n = self.n_rows
        for src, dst in zip(old.h + old.c, new.h + new.c):
            dst[:n].copy_(src[:n])
        if copy_logits:
            new.logits[:n].copy_(old.logits[:n])
        self.fast = new

    def _admit(self, job: Job) -> None:
        """Run the prompt through the model once and copy its state into ``job.n`` free rows."""
        cfg = job.settings
        if cfg.seed is not None:
            job.generator = torch.Generator(device=self.device)
            job.generator.manual_seed(cfg.seed)
        if cfg.max_new_tokens == 0:
            self._end(
                job, [Update(i, s.finish(), finish_reason=s.sample.finish_reason) for i, s in enumerate(job.streams)]
            )
            return
        ids = torch.tensor([job.context], device=self.device)  # (1, P)
        logits, state = self.model(ids)  # prompt warm-up in one pass
        if _penalised(cfg):
            p = len(job.context)
            job.history = torch.empty((job.n, p + cfg.max_new_tokens), dtype=torch.long, device=self.device)
            job.history[:, :p] = ids
            job.chain = processors_for(cfg, banned=[self.tokenizer.unk_id])
        first, n = self.n_rows, job.n
        if first + n > self.fast.logits.shape[0]:
            self._resize(first + n, copy_logits=True)
        h, c = state if isinstance(state, tuple) else (state, None)
        for layer in range(len(self.fast.h)):
            self.fast.h[layer][first : first + n].copy_(h[layer, 0].expand(n, -1))
            if c is not None:
                self.fast.c[layer][first : first + n].copy_(c[layer, 0].expand(n, -1))
        self.fast.logits[first : first + n].copy_(logits[0, -1].expand(n, -1))
        job.rows = list(range(first, first + n))
        for i, row in enumerate(job.rows):
            self.owner[row] = (job, i)
        self.n_rows += n
        self.jobs.append(job)
        self.stats.active_rows = self.n_rows
        self.stats.peak_rows = max(self.stats.peak_rows, self.n_rows)

    def _chain(self, cfg: SampleConfig) -> list[LogitsProcessor]:
        key = _processor_key(cfg)
        if key not in self.chains:
            self.chains[key] = processors_for(cfg, banned=[self.tokenizer.unk_id])
        return self.chains[key]

    def _tick(self) -> None:
        """Draw one token for every active row, hand out the text, free ended jobs, then step the rest."""
        cancelled = {id(job) for job in self.jobs if job.cancelled}  # the flag may be set meanwhile: decide once
        drawn, failed = self._sample([job for job in self.jobs if id(job) not in cancelled])
        out: list[tuple[Job, list[Update], bool]] = []
        ended: list[tuple[Job, str]] = []
        rows: list[int] = []
        feed: list[int] = []
        for job in self.jobs:
            if id(job) in cancelled or id(job) in failed:
                job.error = failed.get(id(job))
                ended.append((job, "failed" if job.error else "cancelled"))
                continue
            tokens, probs = drawn[id(job)]
            out.append((job, self._accept(job, tokens, probs), False))
            rows += job.rows
            feed += tokens  # every row steps on its token, ended choices too (as in Generation)
            if all(s.done for s in job.streams):
                ended.append((job, "completed"))
        if rows:
            self.feed[torch.tensor(rows, device=self.device)] = torch.tensor(feed, device=self.device)
        self.stats.ticks += 1
        self._publish(out)
        for job, count in ended:
            self._free(job)
            self._end(job, [], count=count)
        with self.changed:
            self.changed.notify_all()
        if self.n_rows:
            if self.n_rows <= self.fast.logits.shape[0] // 4:
                self._resize(self.n_rows, copy_logits=False)
            self.fast.step(self.feed[: self.fast.logits.shape[0]])

    def _sample(self, jobs: list[Job]) -> tuple[dict[int, tuple[list[int], torch.Tensor | None]], dict[int, str]]:
        """Each job's drawn tokens (and probabilities, for logprobs), by ``id(job)``; and the jobs that failed.

        Jobs with equal settings and no penalties share one pass of the processors (and unseeded ones one
        draw); a job with penalties is processed with its own history. A failure (say, scores that overflow)
        ends only the jobs it touched.
        """
        logits = self.fast.logits
        drawn: dict[int, tuple[list[int], torch.Tensor | None]] = {}
        failed: dict[int, str] = {}
        shared: dict[tuple, list[Job]] = {}
        for job in jobs:
            if job.history is None:
                shared.setdefault(_processor_key(job.settings), []).append(job)
                continue
            try:
                ids = job.history[:, job.skip : len(job.context) + job.steps]
                probs = apply_processors(job.chain, ids, logits[job.rows].float()).softmax(-1)
                drawn[id(job)] = self._draw(job, probs)
            except RuntimeError as e:
                failed[id(job)] = f"sampling failed: {e}"
        empty = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        for group in shared.values():
            group.sort(key=lambda j: j.generator is not None)  # unseeded first: one draw for all of them
            try:
                index = torch.tensor([r for j in group for r in j.rows], device=self.device)
                probs = apply_processors(self._chain(group[0].settings), empty, logits[index].float()).softmax(-1)
                unseeded = sum(j.n for j in group if j.generator is None)
                common = torch.multinomial(probs[:unseeded], 1, generator=self.rng)[:, 0].tolist() if unseeded else []
                start = 0
                for job in group:
                    part = probs[start : start + job.n]
                    if job.generator is None:
                        drawn[id(job)] = (common[start : start + job.n], part if job.logprobs is not None else None)
                    else:
                        drawn[id(job)] = self._draw(job, part)
                    start += job.n
            except RuntimeError as e:
                failed.update((id(job), f"sampling failed: {e}") for job in group)
        return drawn, failed

    def _draw(self, job: Job, probs: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
        """Sample ``job``'s rows in one call with its own generator, as Generation does."""
        tokens = torch.multinomial(probs, 1, generator=job.generator or self.rng)[:, 0].tolist()
        return tokens, probs if job.logprobs is not None else None

    def _accept(self, job: Job, tokens: list[int], probs: torch.Tensor | None) -> list[Update]:
        """Feed each choice its drawn token; the updates to send, the rows' next input set."""
        tok, cfg = self.tokenizer, job.settings
        infos: list[TokenInfo | None] = [None] * job.n
        if probs is not None:
            infos = _token_infos(tok, probs, tokens, job.logprobs or 0)
        updates = []
        job.steps += 1
        last = job.steps >= cfg.max_new_tokens
        for i, (stream, t) in enumerate(zip(job.streams, tokens)):
            if stream.done:
                continue
            text = stream.push(t)
            if t != tok.eot_id:
                self.stats.tokens += 1
            if last and not stream.done:
                text += stream.finish()  # finish_reason stays "length" unless a stop string completes
            update = Update(i, text, finish_reason=stream.sample.finish_reason if stream.done else None)
            info = infos[i]
            if info is not None and t != tok.eot_id:
                info.text = stream.piece
                update.tokens.append(info)
            if update.text or update.tokens or update.finish_reason:
                updates.append(update)
        if job.history is not None and not last:
            job.history[:, len(job.context) + job.steps - 1] = torch.tensor(tokens, device=self.device)
        return updates

    def _free(self, job: Job) -> None:
        """Give ``job``'s rows back, moving rows from the end into the gaps so the active ones stay packed."""
        fast = self.fast
        for row in sorted(job.rows, reverse=True):
            last = self.n_rows - 1
            if row != last:
                moved = self.owner[last]
                assert moved is not None
                for buf in fast.h + fast.c:
                    buf[row].copy_(buf[last])
                self.feed[row] = self.feed[last]
                moved[0].rows[moved[1]] = row
                self.owner[row] = moved
            self.owner[last] = None
            self.n_rows -= 1
        job.rows = []
        self.jobs.remove(job)
        self.stats.active_rows = self.n_rows

    def _end(self, job: Job, updates: list[Update], count: str = "completed") -> None:
        """Deliver a job's last updates and mark it finished."""
        setattr(self.stats, count, getattr(self.stats, count) + 1)
        self._publish([(job, updates, True)])
        job.finished.set()
        with self.changed:
            self.changed.notify_all()

    def _fail_all(self, message: str) -> None:
        for job in list(self.jobs):
            job.error = message
            self._free(job)
            self._end(job, [], count="failed")
        self.n_rows = 0
        self.owner = [None] * self.max_rows
        self.stats.active_rows = 0

    def _publish(self, items: Sequence[tuple[Job, list[Update], bool]]) -> None:
        """Hand updates to their consumers: one call per event loop per tick, directly without a loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, list[Update], bool]]] = {}
        for job, updates, ended in items:
            if not updates and not ended:
                continue
            if job.loop is None:
                job.receive(updates, ended)
            else:
                by_loop.setdefault(job.loop, []).append((job, updates, ended))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                for job, _, _ in batch:
                    job.cancelled = True


def _deliver(batch: list[tuple[Job, list[Update], bool]]) -> None:
    for job, updates, ended in batch:
        job.receive(updates, ended)


def _penalised(cfg: SampleConfig) -> bool:
    """Whether any processor needs the tokens so far (so the job cannot share its processors)."""
    penalties = (cfg.repetition_penalty - 1, cfg.frequency_penalty, cfg.presence_penalty, cfg.no_repeat_ngram)
    return any(x != 0 for x in penalties)


def _processor_key(cfg: SampleConfig) -> tuple:
    return (cfg.temperature, cfg.top_k, cfg.top_p, cfg.typical_p, cfg.min_p)


def _token_infos(tok: AnyTokenizer, probs: torch.Tensor, tokens: list[int], k: int) -> list[TokenInfo | None]:
    """Each row's drawn-token logprob and its ``k`` most likely tokens (those with any probability)."""
    chosen = probs.gather(1, torch.tensor(tokens, device=probs.device)[:, None])[:, 0].tolist()
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1) if k else (None, None)
    out: list[TokenInfo | None] = []
    for b, p in enumerate(chosen):
        top = []
        if top_p is not None and top_i is not None:
            top = [(tok.token_text(i), math.log(q)) for i, q in zip(top_i[b].tolist(), top_p[b].tolist()) if q > 0]
        out.append(TokenInfo("", math.log(max(p, 1e-45)), top))  # a drawn token always has some probability
    return out
