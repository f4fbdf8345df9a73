"""Request limits: body size, message counts and lengths, token budget, and admission
(a concurrency limit with a bounded waiting room; beyond it → 429)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.requests import Request

from babelgate.server.errors import APIError
from babelgate.server.metrics import ServerMetrics


@dataclass(frozen=True)
class ServerLimits:
    """Per-server limits. A request over any of them is answered with 4xx before the model runs."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_message_chars: int = 32_000
    max_prompt_tokens: int = 4_096
    max_tokens_limit: int = 1_024
    default_max_tokens: int = 256
    max_stop: int = 4
    max_moderation_inputs: int = 256
    max_concurrency: int = 32
    max_queue: int = 64

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_messages",
            "max_message_chars",
            "max_prompt_tokens",
            "max_tokens_limit",
            "default_max_tokens",
            "max_moderation_inputs",
            "max_concurrency",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_queue < 0 or self.max_stop < 0:
            raise ValueError("max_queue and max_stop must be >= 0")


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) a declared or actual size above `limit` bytes without
    reading more than limit + one chunk."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "invalid Content-Length header", "invalid_header") from None
        if size > limit:
            raise APIError(
                413,
                f"request body of {size} bytes exceeds the limit of {limit} bytes",
                "request_too_large",
            )
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise APIError(
                413,
                f"request body exceeds the limit of {limit} bytes",
                "request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


class Admission:
    """At most `max_concurrency` requests are served at once; up to `max_queue` more wait for
    a slot in arrival order; any further request is rejected at once with 429.

    Lives on the event loop; not thread-safe (only coroutines touch it).
    """

    def __init__(self, max_concurrency: int, max_queue: int, metrics: ServerMetrics) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.metrics = metrics
        self.active = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _update(self) -> None:
        self.metrics.in_flight.set(self.active)
        self.metrics.waiting.set(len(self._waiters))

    async def acquire(self) -> None:
        if self.active < self.max_concurrency and not self._waiters:
            self.active += 1
            self._update()
            return
        if len(self._waiters) >= self.max_queue:
            self.metrics.rejected.inc(reason="overloaded")
            raise APIError(
                429,
                f"server is at capacity ({self.max_concurrency} requests in progress, "
                f"{len(self._waiters)} waiting); retry later",
                "rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._update()
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self._release_slot()
            self._update()
            raise
        self._update()

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; active is unchanged
                return
        self.active -= 1

    def release(self) -> None:
        self._release_slot()
        self._update()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
