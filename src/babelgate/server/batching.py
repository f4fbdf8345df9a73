"""Dynamic batching: one worker thread owns the model and serves a queue of jobs.

A chat job that reaches the head of the queue waits at most `max_wait_ms` for up to
`max_batch - 1` companions with the same sampling settings (`ChatJob.batch_key`); jobs that
do not fit are kept, in order, for the next round. Under load the queue fills while a batch
runs, so the next batch forms without waiting and throughput grows with concurrency.
Moderation jobs already in the queue are merged into one scoring call (up to
`max_moderation_rows` texts). With batching disabled every job runs alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

from babelgate.server.engine import ChatJob, Failed, ModerationJob, ServingEngine
from babelgate.server.metrics import ServerMetrics

log = logging.getLogger("babelgate.server")

Job = ChatJob | ModerationJob


class ShuttingDown(RuntimeError):
    """The batcher no longer accepts jobs."""


class Batcher:
    def __init__(
        self,
        engine: ServingEngine,
        metrics: ServerMetrics,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        enabled: bool = True,
        max_moderation_rows: int = 256,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_moderation_rows < 1:
            raise ValueError("max_batch and max_moderation_rows must be >= 1, max_wait_ms >= 0")
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch if enabled else 1
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self.max_moderation_rows = max_moderation_rows
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: deque[Job] = deque()
        self._accepting = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="babelgate-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop accepting jobs, finish every job already queued, then end the worker."""
        self._accepting = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> None:
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        self._queue.put(job)

    # ----------------------------------------------------------------- worker
    def _next(self, timeout: float | None) -> Job | None:
        if self._held:
            return self._held.popleft()
        try:
            if timeout is None:
                return self._queue.get_nowait()
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _run(self) -> None:
        while True:
            job = self._next(timeout=0.05)
            if job is None:
                if self._stop.is_set() and self._queue.empty() and not self._held:
                    return
                continue
            try:
                if isinstance(job, ChatJob):
                    self._serve_chat(job)
                else:
                    self._serve_moderation(job)
            except Exception:  # a bug must not kill the worker; the jobs were already told
                log.exception("model worker error")

    def _collect_chat(self, first: ChatJob) -> list[ChatJob]:
        batch = [first]
        if self.max_batch == 1:
            return batch
        key = first.batch_key()
        # Compatible jobs held back from earlier rounds come first (arrival order).
        kept: deque[Job] = deque()
        while self._held and len(batch) < self.max_batch:
            job = self._held.popleft()
            if isinstance(job, ChatJob) and job.batch_key() == key:
                batch.append(job)
            else:
                kept.append(job)
        kept.extend(self._held)
        self._held = kept
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else self._queue.get(timeout=remaining)
                )
            except queue.Empty:
                break
            if isinstance(job, ChatJob) and job.batch_key() == key:
                batch.append(job)
            else:
                self._held.append(job)
        return batch

    def _serve_chat(self, first: ChatJob) -> None:
        batch = self._collect_chat(first)
        live = [job for job in batch if not job.cancelled.is_set()]
        for job in batch:
            if job.cancelled.is_set():  # the client left while queued: no model work for it
                job.emit(Failed(ShuttingDown("request cancelled")))
        if live:
            self.engine.run_chat(live, self.metrics)

    def _serve_moderation(self, first: ModerationJob) -> None:
        batch = [first]
        rows = len(first.texts)
        if self.enabled:
            # Merge moderation jobs that are already waiting; never wait for more.
            while rows < self.max_moderation_rows:
                job = self._next(timeout=None)
                if job is None:
                    break
                if (
                    isinstance(job, ModerationJob)
                    and rows + len(job.texts) <= self.max_moderation_rows
                ):
                    batch.append(job)
                    rows += len(job.texts)
                else:
                    self._held.appendleft(job)
                    break
        self.engine.run_moderation(batch, self.metrics)
