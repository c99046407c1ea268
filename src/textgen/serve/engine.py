"""Continuous batching for one language model: a thread, a queue and the decode core.

Requests to a model are rows of one ``DecodeCore`` (``sampling/core.py``): a new request's prompt
runs once and its rows join at the next tick; a finished one's rows are freed and the last rows
move into the gaps, so the active rows stay packed::

    rows   0    1    2    3    4    5    6    7          a tick: a token for every row from its
         [ A0 | A1 | B0 | C0 |  - |  - |  - |  - ]      scores, then one step for all rows
    admit D (prompt warm-up once, state into the free rows 4 and 5):
         [ A0 | A1 | B0 | C0 | D0 | D1 |  - |  - ]
    B ends: the last row moves into its place:
         [ A0 | A1 | D1 | C0 | D0 |  - |  - |  - ]

The core is the one ``Generation`` uses, so a seeded request gives the text ``textgen generate
--seed`` gives, alone or batched with others. The engine runs the core in its own thread
(PyTorch releases the GIL in its kernels) and hands what each tick produced to the web server's
event loop in one call per tick.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from textgen.config import SampleConfig
from textgen.data.tokenizers import AnyTokenizer
from textgen.errors import TextgenError
from textgen.sampling.core import DecodeCore, Request, Update
from textgen.sampling.text import Sample, prompt_for

log = logging.getLogger("textgen.serve")


class EngineBusy(TextgenError):
    """Too many requests are already waiting for this model."""


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
    """One prompt's request, as the web server sees it: the core's ``Request`` and where its updates go.

    An asyncio consumer iterates ``updates([jobs], ready)``; anyone can wait on ``finished``.
    ``cancel()`` from any thread frees the rows at the next tick.
    """

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop | None, ready: asyncio.Event | None) -> None:
        self.request = request
        self.n = request.n
        self.context = request.prompt.ids
        self.cancelled = False
        self.error: str | None = None
        self.finished = threading.Event()
        self.loop = loop
        self.inbox: list[Update] = []
        self.ended = False
        self.ready = ready  # set on the consumer's loop whenever updates arrive (one event may serve several jobs)

    @property
    def samples(self) -> list[Sample]:
        """Each choice's Sample (text, tokens, finish reason); complete once ``finished`` is set."""
        return self.request.samples

    def cancel(self) -> None:
        self.cancelled = True

    def receive(self, updates: list[Update], ended: bool) -> None:
        """Take one tick's updates (called on the consumer's event loop, or the engine thread without one)."""
        self.inbox.extend(updates)
        self.ended = self.ended or ended
        if self.ready is not None:
            self.ready.set()


async def updates(
    jobs: Sequence[Job], ready: asyncio.Event, interval: float = 0.0
) -> AsyncIterator[list[tuple[int, Update]]]:
    """(job index, update) pairs as they arrive, all that piled up since the last batch, until every job ends.

    The jobs were submitted with this event loop and ``ready``; a slow consumer gets fewer, larger batches.
    ``interval``: once updates arrive, wait this many seconds for more, so that a batch holds several
    ticks' tokens (the event loop's cost per token falls, and with it its share of the engine's CPU).
    """
    while True:
        await ready.wait()
        if interval and not all(job.ended for job in jobs):
            await asyncio.sleep(interval)
        ready.clear()
        ended = all(job.ended for job in jobs)  # before collecting: updates may arrive while the batch is out
        batch = []
        for k, job in enumerate(jobs):
            if job.inbox:
                batch += [(k, u) for u in job.inbox]
                job.inbox = []
        if batch:
            yield batch
        if ended:
            return


class Engine:
    """Decodes all requests for one model together, one token per tick, in a thread of its own."""

    def __init__(
        self,
        model: nn.Module,
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
        self.core = DecodeCore(model, tokenizer, max_rows, precision)
        self.jobs: dict[int, Job] = {}  # id(request) -> its job, while in the core
        self.incoming: deque[Job] = deque()
        self.cond = threading.Condition()
        self.changed = threading.Condition()  # notified after each tick and when a job ends (for waiters)
        self.stats = EngineStats()
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
        if settings.beams != 1:
            raise TextgenError("beam search is not available in the server")
        if settings.num_samples > self.max_rows:
            raise TextgenError(f"n must be at most {self.max_rows} (this server's batch), got {settings.num_samples}")
        request = Request(self.tokenizer, prompt_for(self.tokenizer, prompt), settings, top=logprobs, record=True)
        length = len(request.prompt.ids)
        if max_prompt_tokens is not None and length > max_prompt_tokens:
            raise TextgenError(f"the prompt is {length:,} tokens long; this server takes at most {max_prompt_tokens:,}")
        job = Job(request, loop, ready)
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
                        if id(unlucky.request) not in self.jobs:
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
        new, free = [], self.core.free_rows
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

    def _admit(self, job: Job) -> None:
        """The prompt through the model once; its rows join the next tick (or it ends at once)."""
        finished = self.core.admit(job.request)
        if job.request.rows:
            self.jobs[id(job.request)] = job
            self._count_rows()
        else:
            self._end(job, finished)

    def _tick(self) -> None:
        """Cancelled jobs leave; one tick of the core; updates handed out; ended jobs finished."""
        for job in [j for j in self.jobs.values() if j.cancelled]:  # the flag may be set meanwhile: decide once
            self.core.release(job.request)
            del self.jobs[id(job.request)]
            self._count_rows()
            self._end(job, [], count="cancelled")
        out: list[tuple[Job, list[Update], bool]] = []
        ended: list[tuple[Job, str]] = []
        for request, ups in self.core.tick():
            job = self.jobs[id(request)]
            out.append((job, ups, False))
            if request.error is not None:
                job.error = request.error
                ended.append((job, "failed"))
            elif request.done:
                ended.append((job, "completed"))
        self.stats.ticks += 1
        self.stats.tokens = self.core.generated
        self._publish(out)
        self._count_rows()
        for job, count in ended:
            del self.jobs[id(job.request)]
            self._end(job, [], count=count)
        with self.changed:
            self.changed.notify_all()

    def _count_rows(self) -> None:
        self.stats.active_rows = self.core.n_rows
        self.stats.peak_rows = max(self.stats.peak_rows, self.core.n_rows)

    def _end(self, job: Job, updates: list[Update], count: str = "completed") -> None:
        """Deliver a job's last updates and mark it finished."""
        setattr(self.stats, count, getattr(self.stats, count) + 1)
        self._publish([(job, updates, True)])
        job.finished.set()
        with self.changed:
            self.changed.notify_all()

    def _fail_all(self, message: str) -> None:
        for job in list(self.jobs.values()):
            job.error = message
            if job.request in self.core.requests:
                self.core.release(job.request)
            self._end(job, [], count="failed")
        self.jobs = {}
        self._count_rows()

    def _publish(self, items: Sequence[tuple[Job, list[Update], bool]]) -> None:
        """Hand updates to their consumers: one call per event loop per tick, directly without a loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, list[Update], bool]]] = {}
        for job, ups, ended in items:
            if not ups and not ended:
                continue
            if job.loop is None:
                job.receive(ups, ended)
            else:
                by_loop.setdefault(job.loop, []).append((job, ups, ended))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                for job, _, _ in batch:
                    job.cancelled = True


def _deliver(batch: list[tuple[Job, list[Update], bool]]) -> None:
    for job, ups, ended in batch:
        job.receive(ups, ended)
