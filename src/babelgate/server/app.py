"""The FastAPI application: `/v1/chat/completions`, `/v1/moderations`, `/v1/models`,
`/health`, `/metrics`.

Request handling order: auth (middleware) → body size → JSON → schema → semantic limits →
language → admission (429) → the batcher's worker thread. Everything before admission runs
on the event loop and never touches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from babelgate._version import __version__
from babelgate.errors import BabelgateError
from babelgate.languages import default_registry
from babelgate.server.batching import Batcher, ShuttingDown
from babelgate.server.engine import (
    ChatJob,
    Delta,
    Event,
    Failed,
    Finished,
    ModerationJob,
    ServingEngine,
    Started,
    Verdict,
)
from babelgate.server.errors import APIError
from babelgate.server.language import LANGUAGE_HEADER, LanguageChoice, LanguageResolver
from babelgate.server.limits import Admission, ServerLimits, read_limited_body
from babelgate.server.metrics import CONTENT_TYPE, ServerMetrics
from babelgate.server.schemas import (
    AssistantMessage,
    BabelgateInfo,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Moderation,
    ModerationRequest,
    ModerationResult,
    Usage,
)
from babelgate.server.schemas import Delta as DeltaModel

log = logging.getLogger("babelgate.server")

CHAT = "/v1/chat/completions"
MODERATIONS = "/v1/moderations"
ENDPOINTS = (CHAT, MODERATIONS, "/v1/models", "/health", "/metrics")
OPEN_PATHS = frozenset({"/health"})
MODERATION_CATEGORY = "harmful"

RequestModel = TypeVar("RequestModel", bound=BaseModel)


@dataclass(frozen=True)
class ServerConfig:
    """Server settings beyond the model: auth, limits and batching."""

    api_key: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    max_batch: int = 8
    max_wait_ms: float = 10.0
    batching: bool = True


class ServerState:
    """Everything the handlers share (one per app)."""

    def __init__(self, engine: ServingEngine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.limits = config.limits
        self.metrics = ServerMetrics()
        self.admission = Admission(
            config.limits.max_concurrency, config.limits.max_queue, self.metrics
        )
        self.batcher = Batcher(
            engine,
            self.metrics,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            enabled=config.batching,
            max_moderation_rows=config.limits.max_moderation_inputs,
        )
        gate = engine.gate
        self.resolver = LanguageResolver(
            default_registry(), [*gate.source_languages, *gate.calibrations]
        )
        self.system_fingerprint = f"bg-{engine.fingerprint[:16]}"

    def check_model(self, name: str | None, required: bool) -> None:
        if name is None:
            if required:
                raise APIError(400, "'model' is required", "missing_required_parameter", "model")
            return
        if name != self.engine.name:
            raise APIError(
                404,
                f"The model {name!r} does not exist on this server; it serves {self.engine.name!r}",
                "model_not_found",
                "model",
            )


# --------------------------------------------------------------------------- middleware
class GuardMiddleware:
    """Outermost ASGI layer: bearer-token auth (all paths but /health), request counts and
    latency per endpoint and status (latency includes a streamed body)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state
        key = state.config.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            if self.expected is not None and path not in OPEN_PATHS and not self._authorized(scope):
                error = APIError(
                    401,
                    "missing or invalid API key (send 'Authorization: Bearer <key>')",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await error.response()(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            metrics = self.state.metrics
            metrics.requests.inc(endpoint=endpoint, status=str(status["code"]))
            metrics.latency.observe(time.perf_counter() - start, endpoint=endpoint)

    def _authorized(self, scope: Scope) -> bool:
        assert self.expected is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                return hmac.compare_digest(value, self.expected)
        return False


# --------------------------------------------------------------------------- helpers
def parse_body(body: bytes, model: type[RequestModel]) -> RequestModel:
    """Validate a JSON body against `model`; every failure is a 400 with the field named."""

    def reject_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(body, parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise APIError(400, f"malformed JSON body: {reason}", "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or None
        where = f" at '{loc}'" if loc else ""
        count = exc.error_count()
        more = f" (and {count - 1} more error{'s' if count > 2 else ''})" if count > 1 else ""
        raise APIError(
            400, f"invalid request{where}: {first['msg']}{more}", "invalid_request", loc
        ) from None


class JobSink:
    """Hands events from the worker thread to the request's coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def emit(self, item: Any) -> None:
        # RuntimeError: the loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self) -> Any:
        return await self.queue.get()


def _info(choice: LanguageChoice, verdict: Verdict) -> BabelgateInfo:
    return BabelgateInfo(
        language=choice.language,
        language_source=choice.source,  # type: ignore[arg-type]
        score=verdict.score,
        threshold=verdict.threshold,
        decision=verdict.decision,  # type: ignore[arg-type]
        threshold_source=verdict.threshold_source,
    )


def _worker_error(error: BaseException) -> APIError:
    if isinstance(error, ShuttingDown):
        return APIError(503, str(error), "server_shutting_down")
    log.error("generation failed: %r", error)
    return APIError(
        500, f"the model failed on this request ({type(error).__name__})", "internal_error"
    )


def _sse(payload: BaseModel | dict[str, Any]) -> str:
    data = (
        payload.model_dump_json(exclude_none=False)
        if isinstance(payload, BaseModel)
        else json.dumps(payload)
    )
    return f"data: {data}\n\n"


# --------------------------------------------------------------------------- app factory
def create_app(engine: ServingEngine, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app serving `engine` with `config`; the worker starts with the app's lifespan."""
    config = config or ServerConfig()
    state = ServerState(engine, config)
    limits = state.limits

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; drain whatever is queued.
            await asyncio.to_thread(state.batcher.stop)

    app = FastAPI(
        title="babelgate",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.babelgate = state

    @app.exception_handler(APIError)
    async def api_error_handler(_request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(_request: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return APIError(exc.status_code, str(exc.detail), code).response()

    @app.exception_handler(Exception)
    async def internal_error_handler(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return APIError(500, "internal server error", "internal_error").response()

    @app.get("/health")
    async def health() -> Response:
        alive = state.batcher.alive
        body = {
            "status": "ok" if alive else "unavailable",
            "model": engine.name,
            "model_fingerprint": engine.fingerprint,
            "gate_layer": engine.gate.layer,
            "calibrated_languages": engine.gate.calibrated_languages,
            "in_flight": state.admission.active,
            "waiting": state.admission.waiting,
            "version": __version__,
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> Response:
        entry = {"id": engine.name, "object": "model", "created": 0, "owned_by": "babelgate"}
        return JSONResponse({"object": "list", "data": [entry]})

    @app.post(CHAT)
    async def chat_completions(request: Request) -> Response:
        body = await read_limited_body(request, limits.max_body_bytes)
        req = parse_body(body, ChatCompletionRequest)
        state.check_model(req.model, required=True)
        job_args, choice = _validate_chat(req, request)
        loop = asyncio.get_running_loop()
        sink = JobSink(loop)
        await state.admission.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.admission.release()

        try:
            job = ChatJob(emit=sink.emit, **job_args)
            state.batcher.submit(job)
        except ShuttingDown as exc:
            release()
            raise _worker_error(exc) from None
        except BaseException:
            release()
            raise
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = _stream_chat(
                state, job, sink, choice, len(job.input_ids), include_usage, release
            )
            return StreamingResponse(
                stream,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=BackgroundTask(release),
            )
        try:
            return await _complete_chat(state, job, sink, choice)
        finally:
            release()

    def _validate_chat(
        req: ChatCompletionRequest, request: Request
    ) -> tuple[dict[str, Any], LanguageChoice]:
        if req.n not in (None, 1):
            raise APIError(400, "only n=1 is supported", "unsupported_parameter", "n")
        if req.tools:
            raise APIError(
                400, "tools are not supported by this server", "unsupported_parameter", "tools"
            )
        if req.logprobs:
            raise APIError(400, "logprobs are not supported", "unsupported_parameter", "logprobs")
        if len(req.messages) > limits.max_messages:
            raise APIError(
                400,
                f"{len(req.messages)} messages exceed the limit of {limits.max_messages}",
                "too_many_messages",
                "messages",
            )
        messages = []
        for i, message in enumerate(req.messages):
            text = message.text()
            if len(text) > limits.max_message_chars:
                raise APIError(
                    400,
                    f"message {i} has {len(text)} characters; the limit is {limits.max_message_chars}",
                    "message_too_long",
                    f"messages.{i}.content",
                )
            role = "system" if message.role == "developer" else message.role
            messages.append({"role": role, "content": text})
        users = [m["content"] for m in messages if m["role"] == "user" and m["content"].strip()]
        if not users:
            raise APIError(
                400,
                "messages must include a user message with non-empty content",
                "empty_messages",
                "messages",
            )
        stop = req.stop_list()
        if len(stop) > limits.max_stop or any(not s for s in stop):
            raise APIError(
                400, f"stop takes up to {limits.max_stop} non-empty strings", "invalid_stop", "stop"
            )
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} exceeds this server's limit of {limits.max_tokens_limit}",
                "max_tokens_exceeded",
                "max_tokens",
            )
        input_ids = engine.prompt_ids(messages)
        if len(input_ids) > limits.max_prompt_tokens:
            raise APIError(
                400,
                f"the conversation has {len(input_ids)} prompt tokens; the limit is "
                f"{limits.max_prompt_tokens}",
                "context_length_exceeded",
                "messages",
            )
        choice = _language(req.metadata, request, users[-1])
        temperature = 1.0 if req.temperature is None else float(req.temperature)
        top_p = 1.0 if req.top_p is None else float(req.top_p)
        args = {
            "input_ids": input_ids,
            "language": choice.gate_language,
            "max_tokens": max_tokens,
            "stop": stop,
            "temperature": temperature,
            "top_p": top_p if temperature > 0 else 1.0,
            "seed": req.seed,
        }
        return args, choice

    def _language(metadata: dict[str, str] | None, request: Request, text: str) -> LanguageChoice:
        if metadata and "language" in metadata:
            return state.resolver.requested(metadata["language"], "metadata.language")
        header = request.headers.get(LANGUAGE_HEADER)
        if header is not None:
            return state.resolver.requested(header, "X-Babelgate-Language header")
        return state.resolver.detect(text)

    @app.post(MODERATIONS)
    async def moderations(request: Request) -> Response:
        body = await read_limited_body(request, limits.max_body_bytes)
        req = parse_body(body, ModerationRequest)
        state.check_model(req.model, required=False)
        texts = req.inputs()
        if not texts:
            raise APIError(
                400, "input must be a string or a non-empty list of strings", "empty_input", "input"
            )
        if len(texts) > limits.max_moderation_inputs:
            raise APIError(
                400,
                f"{len(texts)} inputs exceed the limit of {limits.max_moderation_inputs}",
                "too_many_inputs",
                "input",
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_message_chars:
                raise APIError(
                    400,
                    f"input {i} has {len(text)} characters; the limit is {limits.max_message_chars}",
                    "input_too_long",
                    f"input.{i}",
                )
        for i, n_tokens in enumerate(engine.count_tokens(texts)):
            if n_tokens > limits.max_prompt_tokens:
                raise APIError(
                    400,
                    f"input {i} has {n_tokens} tokens; the limit is {limits.max_prompt_tokens}",
                    "context_length_exceeded",
                    f"input.{i}",
                )
        if (req.metadata is not None and "language" in req.metadata) or request.headers.get(
            LANGUAGE_HEADER
        ) is not None:
            one = _language(req.metadata, request, texts[0])
            choices = [one] * len(texts)
        else:
            choices = [state.resolver.detect(text) for text in texts]
        sink = JobSink(asyncio.get_running_loop())
        job = ModerationJob(texts, [c.gate_language for c in choices], sink.emit)
        async with state.admission.slot():
            try:
                state.batcher.submit(job)
            except ShuttingDown as exc:
                raise _worker_error(exc) from None
            outcome = await sink.get()
        if isinstance(outcome, BaseException):
            if isinstance(outcome, BabelgateError):
                raise APIError(400, str(outcome), "invalid_input") from None
            raise _worker_error(outcome)
        results = []
        for choice, verdict in zip(choices, outcome, strict=True):
            state.metrics.decisions.inc(
                endpoint="moderations",
                language=choice.language,
                language_source=choice.source,
                decision=verdict.decision,
            )
            margin = verdict.score - verdict.threshold
            probability = 1.0 / (1.0 + math.exp(-margin)) if margin > -700 else 0.0
            results.append(
                ModerationResult(
                    flagged=verdict.fired,
                    categories={MODERATION_CATEGORY: verdict.fired},
                    category_scores={MODERATION_CATEGORY: probability},
                    score=verdict.score,
                    threshold=verdict.threshold,
                    language=choice.language,
                    language_source=choice.source,  # type: ignore[arg-type]
                    threshold_source=verdict.threshold_source,
                )
            )
        response = Moderation(id=f"modr-{uuid.uuid4().hex}", model=engine.name, results=results)
        return JSONResponse(response.model_dump())

    app.add_middleware(GuardMiddleware, state=state)
    return app


async def _complete_chat(
    state: ServerState, job: ChatJob, sink: JobSink, choice: LanguageChoice
) -> Response:
    verdict: Verdict | None = None
    while True:
        event: Event = await sink.get()
        if isinstance(event, Started):
            verdict = event.verdict
            state.metrics.decisions.inc(
                endpoint="chat",
                language=choice.language,
                language_source=choice.source,
                decision=verdict.decision,
            )
        elif isinstance(event, Failed):
            raise _worker_error(event.error)
        elif isinstance(event, Finished):
            break
    if verdict is None:
        raise APIError(500, "the model returned no decision", "internal_error")
    prompt_tokens = len(job.input_ids)
    response = ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=state.engine.name,
        choices=[
            Choice(
                index=0,
                message=AssistantMessage(content=event.text),
                finish_reason="length" if event.finish_reason == "length" else "stop",
            )
        ],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=event.completion_tokens,
            total_tokens=prompt_tokens + event.completion_tokens,
        ),
        system_fingerprint=state.system_fingerprint,
        babelgate=_info(choice, verdict),
    )
    return JSONResponse(response.model_dump())


async def _stream_chat(
    state: ServerState,
    job: ChatJob,
    sink: JobSink,
    choice: LanguageChoice,
    prompt_tokens: int,
    include_usage: bool,
    release: Callable[[], None],
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    finished = False

    def chunk(
        delta: DeltaModel, finish: str | None = None, info: BabelgateInfo | None = None
    ) -> str:
        return _sse(
            ChatCompletionChunk(
                id=ident,
                created=created,
                model=state.engine.name,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
                system_fingerprint=state.system_fingerprint,
                babelgate=info,
            )
        )

    info: BabelgateInfo | None = None
    try:
        while True:
            event: Event = await sink.get()
            if isinstance(event, Started):
                info = _info(choice, event.verdict)
                state.metrics.decisions.inc(
                    endpoint="chat",
                    language=choice.language,
                    language_source=choice.source,
                    decision=event.verdict.decision,
                )
                yield chunk(DeltaModel(role="assistant", content=""), info=info)
            elif isinstance(event, Delta):
                yield chunk(DeltaModel(content=event.text))
            elif isinstance(event, Failed):
                finished = True
                yield _sse(_worker_error(event.error).body())
                break
            elif isinstance(event, Finished):
                finished = True
                reason = "length" if event.finish_reason == "length" else "stop"
                yield chunk(DeltaModel(), finish=reason, info=info)
                if include_usage:
                    usage = Usage(
                        prompt_tokens=prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        total_tokens=prompt_tokens + event.completion_tokens,
                    )
                    yield _sse(
                        ChatCompletionChunk(
                            id=ident,
                            created=created,
                            model=state.engine.name,
                            choices=[],
                            system_fingerprint=state.system_fingerprint,
                            usage=usage,
                        )
                    )
                break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            job.cancelled.set()  # the client went away: stop generating for it
        release()
