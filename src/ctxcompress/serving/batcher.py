"""Dynamic batching: one worker thread owns the model; requests queue up and are answered in
batches.

Concurrent requests are neither serialised one by one nor run in parallel threads on one
model (which would fight over the CPU/GPU and the adapter switch). Every job goes into one
bounded queue; the worker takes the first job, then keeps draining the queue until it holds
``max_batch`` jobs or ``max_wait_ms`` have passed, and answers all the questions that share
``max_new_tokens`` and stop strings with **one** ``Compressor.answer`` call on their joined
plans (one context per question; a context shared by several questions is expanded, not
copied). Questions arrive already planned (tokenized and checked by ``Compressor.plan`` on
the request thread), so the worker only decodes. Compression jobs drained together become
one ``Compressor.compress_ids`` call (documents arrive tokenized). When the queue is full,
:meth:`Batcher.submit` raises :class:`QueueFullError` at once (the service answers 503 with
``Retry-After``) instead of letting latency grow without bound.

If a batched call fails on bad input, its jobs are retried one by one so that only the faulty
request gets the error.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import CtxCompressError
from ..generation import Generation
from ..methods import AnswerPlan, Compressor

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The batcher's queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatcherStoppedError(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class Answer:
    """The result of one question: the answer text, the number of generated tokens and why
    it ended (OpenAI's vocabulary: ``"stop"`` — EOS or a stop string — or ``"length"``)."""

    text: str
    tokens: int
    finish_reason: str

    @classmethod
    def of(cls, generation: Generation) -> Answer:
        reason = "length" if generation.finish_reason == "length" else "stop"
        return cls(generation.text, len(generation.token_ids), reason)


@dataclass
class AnswerJob:
    """One planned question (a one-row :class:`~ctxcompress.methods.AnswerPlan`)."""

    plan: AnswerPlan
    stop: tuple[str, ...]
    on_token: Callable[[int], None] | None = None
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[Any, ...]:
        return ("answer", self.plan.max_new_tokens, self.stop)


@dataclass
class CompressJob:
    token_ids: list[list[int]]
    budget: int | None = None
    keep_tail: bool = False
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[Any, ...]:
        return ("compress", self.budget, self.keep_tail)


@dataclass
class CallJob:
    """Any other work with the compressor (e.g. growing a context), run alone on the model
    thread: ``fn()``'s result or exception goes to the future."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[Any, ...]:
        return ("call", id(self))


Job = AnswerJob | CompressJob | CallJob


class Batcher:
    """The worker thread and its bounded queue.

    Args:
        compressor: the model; only the worker thread touches it while the batcher runs.
        max_batch: most questions (or documents) per model call.
        max_wait_ms: how long the worker waits for more jobs after the first one.
        max_queue: most jobs waiting; beyond it :meth:`submit` raises :class:`QueueFullError`.
        record: how many recent batch sizes to keep in :attr:`batch_sizes`.
    """

    def __init__(
        self,
        compressor: Compressor,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        record: int = 10_000,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.compressor = compressor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self.busy = 0
        """Jobs the worker is running now."""
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=record)
        """Sizes of recent answer batches (questions per ``answer`` call)."""
        self.on_batch: Callable[[str, int, float], None] | None = None
        """Called after each model call with (kind, size, seconds); used for metrics."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name="ctxcompress-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the jobs already queued, then stop the worker."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue (not counting those being run)."""
        return len(self._queue)

    # ------------------------------------------------------------------ submitting
    def submit(self, jobs: Sequence[Job]) -> list[Future]:
        """Queue jobs (all or none); returns their futures."""
        with self._cond:
            if not self._running:
                raise BatcherStoppedError("the model worker is not running")
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFullError(
                    f"the request queue is full ({len(self._queue)} waiting, limit "
                    f"{self.max_queue}); retry shortly",
                    retry_after=max(1, round(len(self._queue) * 0.05)),
                )
            self._queue.extend(jobs)
            self._cond.notify()
        return [job.future for job in jobs]

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the model thread (see :class:`CallJob`)."""
        return self.submit([CallJob(fn)])[0]

    def compress(
        self,
        token_ids: Sequence[Sequence[int]],
        budget: int | None = None,
        keep_tail: bool = False,
    ) -> Future:
        """Queue tokenized documents (``Compressor.context_ids``, as the request thread
        checked them) to compress, within a token ``budget`` if given; the future resolves
        to a list of contexts."""
        return self.submit([CompressJob([list(ids) for ids in token_ids], budget, keep_tail)])[0]

    # ------------------------------------------------------------------ the worker
    def _take(self) -> list[Job]:
        """Block for a first job, then gather more until max_batch or max_wait."""
        with self._cond:
            while not self._queue:
                if not self._running:
                    return []
                self._cond.wait(0.5)
            jobs = [self._queue.popleft()]
            deadline = time.monotonic() + self.max_wait
            while len(jobs) < self.max_batch:
                if self._queue:
                    jobs.append(self._queue.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or not self._running:
                    break
                self._cond.wait(left)
            self.busy = len(jobs)
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            groups: dict[tuple[Any, ...], list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                try:
                    if key[0] == "compress":
                        self._run_compress(group)  # type: ignore[arg-type]
                    elif key[0] == "call":
                        self._run_call(group[0])  # type: ignore[arg-type]
                    else:
                        self._run_answers(group)  # type: ignore[arg-type]
                except BaseException as exc:  # never let the worker die
                    log.exception("model worker failed on a batch")
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(exc)
            with self._cond:
                self.busy = 0

    def _report(self, kind: str, size: int, seconds: float) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(kind, size, seconds)
            except Exception:  # metrics must never break answering
                log.exception("on_batch callback failed")

    def _run_answers(self, jobs: list[AnswerJob]) -> None:
        def on_token(row: int, token: int) -> None:
            callback = jobs[row].on_token
            if callback is not None:
                try:
                    callback(token)
                except Exception:
                    log.exception("on_token callback failed")

        start = time.perf_counter()
        try:
            generations = self.compressor.answer(
                AnswerPlan.join([job.plan for job in jobs]),
                stop=list(jobs[0].stop),
                batch_size=len(jobs),
                on_token=on_token,
            )
        except CtxCompressError as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:  # isolate the faulty request(s)
                self._run_answers([job])
            return
        self.batch_sizes.append(len(jobs))
        self._report("answer", len(jobs), time.perf_counter() - start)
        for job, generation in zip(jobs, generations, strict=True):
            job.future.set_result(Answer.of(generation))

    def _run_call(self, job: CallJob) -> None:
        try:
            result = job.fn()
        except CtxCompressError as exc:  # the request's fault: its error, no stack trace
            job.future.set_exception(exc)
            return
        job.future.set_result(result)

    def _run_compress(self, jobs: list[CompressJob]) -> None:
        rows = [ids for job in jobs for ids in job.token_ids]
        start = time.perf_counter()
        try:
            contexts = self.compressor.compress_ids(  # one key: one budget and tail setting
                rows, budget=jobs[0].budget, keep_tail=jobs[0].keep_tail
            )
        except CtxCompressError as exc:
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:
                self._run_compress([job])
            return
        self._report("compress", len(rows), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            job.future.set_result(contexts[offset : offset + len(job.token_ids)])
            offset += len(job.token_ids)
