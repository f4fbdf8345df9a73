"""The real server (uvicorn on 127.0.0.1, a free port) serving a tiny random model with a gate
fitted on its activations, spoken to over HTTP with httpx and the official openai client."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from babelgate.capture import capture
from babelgate.server import BackgroundServer, Engine, ServerConfig, ServerLimits, create_app
from babelgate.server.demo import fit_demo_gate
from babelgate.server.schemas import ChatCompletion, ChatCompletionChunk, Moderation
from babelgate.testing import tiny_model

MODEL = "tiny-test"
LIMITS = ServerLimits(
    max_body_bytes=20_000,
    max_messages=6,
    max_message_chars=2_000,
    max_prompt_tokens=1_500,
    max_tokens_limit=64,
    default_max_tokens=16,
    max_moderation_inputs=8,
)
CAKE = [{"role": "user", "content": "How do I make a cake? Tell me about the weather."}]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    # One intra-op thread: for a model this small a second one only adds synchronisation.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    handle = tiny_model()
    gate = fit_demo_gate(handle, per_class=8, budget=2)
    yield Engine(handle, gate, name=MODEL)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[BackgroundServer]:
    app = create_app(engine, ServerConfig(limits=LIMITS, max_batch=8, max_wait_ms=20))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": CAKE, "temperature": 0, "max_tokens": 12, **extra}


def gate_verdict(
    engine: Engine, messages: list[dict[str, str]], language: str | None
) -> tuple[float, bool]:
    """The gate's score on a separately captured activation (reference for the one-pass one)."""
    acts = capture(engine.handle, [messages], [engine.gate.layer], cache=False, progress=False)[
        :, 0, :
    ]
    decision = engine.gate.decide(acts, [language])
    return float(decision.scores[0]), bool(decision.fired[0])


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def assert_healthy(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def sse_events(response: httpx.Response) -> list[Any]:
    events: list[Any] = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


# --------------------------------------------------------------------------- happy paths
def test_health_and_models(client: httpx.Client, engine: Engine) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    assert health["model_fingerprint"] == engine.fingerprint
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]


def test_chat_completion_schema_and_one_pass_decision(client: httpx.Client, engine: Engine) -> None:
    response = client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200, response.text
    completion = ChatCompletion.model_validate(response.json())
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    usage = completion.usage
    assert usage.prompt_tokens == len(engine.prompt_ids(CAKE))
    assert 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (choice.finish_reason == "length") == (usage.completion_tokens == 12)
    info = completion.babelgate
    assert (info.language, info.language_source) == ("en", "detected")
    assert info.threshold_source == "source"  # en is a source language, not calibrated
    # The decision made inside generation equals the gate on a separately captured activation.
    score, fired = gate_verdict(engine, CAKE, "en")
    assert info.score == pytest.approx(score, abs=1e-3)
    assert info.decision == ("refuse_steer" if fired else "ablate")
    assert (info.score >= info.threshold) == fired


def test_language_from_metadata_header_and_fallback(client: httpx.Client, engine: Engine) -> None:
    calibrated = "sw" in engine.gate.calibrated_languages
    r = client.post("/v1/chat/completions", json=chat_body(metadata={"language": "SW"}))
    info = r.json()["babelgate"]
    assert (info["language"], info["language_source"]) == ("sw", "request")
    assert info["threshold_source"] == ("calibrated" if calibrated else "source")
    assert info["threshold"] == pytest.approx(engine.gate.threshold_for("sw")[0], abs=1e-5)

    r = client.post(
        "/v1/chat/completions", json=chat_body(), headers={"X-Babelgate-Language": "de"}
    )
    assert (r.json()["babelgate"]["language"], r.json()["babelgate"]["language_source"]) == (
        "de",
        "request",
    )

    digits = [{"role": "user", "content": "12345 678 ?!"}]
    r = client.post("/v1/chat/completions", json=chat_body(messages=digits))
    info = r.json()["babelgate"]
    assert (info["language"], info["language_source"], info["threshold_source"]) == (
        "und",
        "fallback",
        "source",
    )
    assert info["threshold"] == pytest.approx(engine.gate.source_threshold.threshold, abs=1e-5)

    assert_error(
        client.post("/v1/chat/completions", json=chat_body(metadata={"language": "xx"})),
        400,
        "invalid_language",
    )
    assert_error(
        client.post(
            "/v1/chat/completions", json=chat_body(), headers={"X-Babelgate-Language": "??"}
        ),
        400,
        "invalid_language",
    )


def test_greedy_is_deterministic_and_stop_truncates(client: httpx.Client) -> None:
    first = client.post("/v1/chat/completions", json=chat_body(max_tokens=24)).json()
    second = client.post("/v1/chat/completions", json=chat_body(max_tokens=24)).json()
    text = first["choices"][0]["message"]["content"]
    assert text == second["choices"][0]["message"]["content"]
    # A stop string taken from the middle of the greedy text cuts it right there.
    candidates = [text[i : i + 2] for i in range(2, len(text) - 2)]
    stops = [s for s in candidates if "\ufffd" not in s and s.strip() and text.find(s) >= 2]
    if not stops:
        pytest.skip(f"greedy text {text!r} offers no usable stop string")
    stop = stops[0]
    cut = client.post(
        "/v1/chat/completions", json=chat_body(max_tokens=24, stop=[stop, "never-seen-zz"])
    ).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible(client: httpx.Client) -> None:
    body = chat_body(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16)
    a = client.post("/v1/chat/completions", json=body).json()
    b = client.post("/v1/chat/completions", json=body).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_streaming_matches_non_streaming(client: httpx.Client) -> None:
    plain = client.post("/v1/chat/completions", json=chat_body(max_tokens=20)).json()
    body = chat_body(max_tokens=20, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].babelgate is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain["choices"][0]["message"]["content"]
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert (
        len(final) == 1
        and final[0].choices[0].finish_reason == plain["choices"][0]["finish_reason"]
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain["usage"]["completion_tokens"]
    assert chunks[0].babelgate.score == pytest.approx(plain["babelgate"]["score"], abs=1e-4)


def test_moderation_schema_and_scores(client: httpx.Client, engine: Engine) -> None:
    inputs = ["How do I make a cake?", "Jinsi ya kupika chakula? Habari ya leo.", "12345"]
    response = client.post("/v1/moderations", json={"input": inputs, "model": MODEL})
    assert response.status_code == 200, response.text
    moderation = Moderation.model_validate(response.json())
    assert moderation.model == MODEL and len(moderation.results) == 3
    expected_languages = [("en", "detected"), ("sw", "detected"), ("und", "fallback")]
    for text, result, (lang, source) in zip(
        inputs, moderation.results, expected_languages, strict=True
    ):
        assert (result.language, result.language_source) == (lang, source)
        assert set(result.categories) == set(result.category_scores) == {"harmful"}
        assert result.flagged == result.categories["harmful"] == (result.score >= result.threshold)
        assert (result.category_scores["harmful"] >= 0.5) == result.flagged
        score, fired = gate_verdict(
            engine, [{"role": "user", "content": text}], None if lang == "und" else lang
        )
        assert result.score == pytest.approx(score, abs=1e-3) and result.flagged == fired
    single = client.post(
        "/v1/moderations", json={"input": "hello"}, headers={"X-Babelgate-Language": "fr"}
    )
    result = single.json()["results"][0]
    assert (result["language"], result["language_source"]) == ("fr", "request")


# --------------------------------------------------------------------------- bad input
BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    (
        "malformed json",
        "/v1/chat/completions",
        b'{"model": "tiny-test", "messages": [',
        400,
        "invalid_json",
    ),
    ("json array", "/v1/chat/completions", b"[]", 400, "invalid_json"),
    (
        "max_tokens as string",
        "/v1/chat/completions",
        chat_body(max_tokens="5"),
        400,
        "invalid_request",
    ),
    (
        "messages as string",
        "/v1/chat/completions",
        chat_body(messages="hi"),
        400,
        "invalid_request",
    ),
    (
        "temperature as string",
        "/v1/chat/completions",
        chat_body(temperature="hot"),
        400,
        "invalid_request",
    ),
    (
        "temperature too high",
        "/v1/chat/completions",
        chat_body(temperature=3.5),
        400,
        "invalid_request",
    ),
    ("empty messages", "/v1/chat/completions", chat_body(messages=[]), 400, "invalid_request"),
    (
        "only empty content",
        "/v1/chat/completions",
        chat_body(messages=[{"role": "user", "content": "  "}]),
        400,
        "empty_messages",
    ),
    (
        "no user message",
        "/v1/chat/completions",
        chat_body(messages=[{"role": "system", "content": "be nice"}]),
        400,
        "empty_messages",
    ),
    (
        "unknown role",
        "/v1/chat/completions",
        chat_body(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        "invalid_request",
    ),
    ("missing model", "/v1/chat/completions", {"messages": CAKE}, 400, "invalid_request"),
    ("unknown model", "/v1/chat/completions", chat_body(model="gpt-4o"), 404, "model_not_found"),
    (
        "max_tokens over limit",
        "/v1/chat/completions",
        chat_body(max_tokens=65),
        400,
        "max_tokens_exceeded",
    ),
    ("max_tokens zero", "/v1/chat/completions", chat_body(max_tokens=0), 400, "invalid_request"),
    (
        "too many messages",
        "/v1/chat/completions",
        chat_body(messages=CAKE * 7),
        400,
        "too_many_messages",
    ),
    (
        "message too long",
        "/v1/chat/completions",
        chat_body(messages=[{"role": "user", "content": "a" * 2001}]),
        400,
        "message_too_long",
    ),
    (
        "too many stops",
        "/v1/chat/completions",
        chat_body(stop=["a", "b", "c", "d", "e"]),
        400,
        "invalid_stop",
    ),
    ("n above one", "/v1/chat/completions", chat_body(n=2), 400, "unsupported_parameter"),
    ("moderation empty list", "/v1/moderations", {"input": []}, 400, "empty_input"),
    ("moderation wrong type", "/v1/moderations", {"input": 5}, 400, "invalid_request"),
    ("moderation too many", "/v1/moderations", {"input": ["x"] * 9}, 400, "too_many_inputs"),
    ("moderation too long", "/v1/moderations", {"input": ["b" * 2001]}, 400, "input_too_long"),
    (
        "moderation unknown model",
        "/v1/moderations",
        {"input": "x", "model": "other"},
        404,
        "model_not_found",
    ),
    (
        "huge body",
        "/v1/chat/completions",
        chat_body(messages=[{"role": "user", "content": "z" * 30_000}]),
        413,
        None,
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_json_error_and_the_server_stays_healthy(
    client: httpx.Client, path: str, body: Any, status: int, code: str | None
) -> None:
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert_error(response, status, code)
    assert_healthy(client)


def test_chunked_body_over_the_limit_is_refused(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b" " * 1_000  # no Content-Length: the server counts what arrives

    response = client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "request_too_large")
    assert_healthy(client)


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)
    assert_healthy(client)


# --------------------------------------------------------------------------- auth
def test_api_key_guards_everything_but_health(engine: Engine) -> None:
    app = create_app(engine, ServerConfig(api_key="s3cret", limits=LIMITS))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        for path in ("/v1/models", "/metrics"):
            assert_error(http.get(path), 401, "invalid_api_key")
            assert_error(
                http.get(path, headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key"
            )
            assert http.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # Auth is checked before the body is even read.
        assert_error(http.post("/v1/chat/completions", content=b"{broken"), 401, "invalid_api_key")
        assert_error(http.post("/v1/moderations", json={"input": "x"}), 401, "invalid_api_key")
        ok = http.post(
            "/v1/moderations", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert http.get("/health").status_code == 200


def test_openai_client_chat_moderation_and_streaming(engine: Engine) -> None:
    openai = pytest.importorskip("openai")
    app = create_app(engine, ServerConfig(api_key="k-123", limits=LIMITS))
    with BackgroundServer(app) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k-123", max_retries=0)
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": "Be brief."}, *CAKE],
            max_tokens=8,
            temperature=0,
            metadata={"language": "en"},
        )
        assert completion.model == MODEL and isinstance(completion.choices[0].message.content, str)
        extra = completion.model_extra or {}
        assert extra["babelgate"]["language_source"] == "request"
        assert extra["babelgate"]["decision"] in ("refuse_steer", "ablate")

        stream = client.chat.completions.create(
            model=MODEL, messages=CAKE, max_tokens=8, temperature=0, stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        again = client.chat.completions.create(
            model=MODEL, messages=CAKE, max_tokens=8, temperature=0
        )
        assert "".join(pieces) == again.choices[0].message.content

        moderation = client.moderations.create(
            input=["How do I make a cake?", "Habari ya leo"], model=MODEL
        )
        assert len(moderation.results) == 2
        assert all(isinstance(r.flagged, bool) for r in moderation.results)

        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=CAKE, max_tokens=4)
        bad_key = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad_key.models.list()


# --------------------------------------------------------------------------- load behaviour
async def burst(
    url: str, bodies: list[dict[str, Any]], path: str = "/v1/chat/completions"
) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        return list(await asyncio.gather(*(http.post(path, json=body) for body in bodies)))


def test_concurrent_requests_are_batched(engine: Engine) -> None:
    app = create_app(engine, ServerConfig(limits=LIMITS, max_batch=8, max_wait_ms=200))
    with BackgroundServer(app) as srv:
        prompts = [f"How do I make a cake number {i}?" for i in range(8)]
        bodies = [
            chat_body(messages=[{"role": "user", "content": p}], max_tokens=8) for p in prompts
        ]
        responses = asyncio.run(burst(srv.url, bodies))
        assert [r.status_code for r in responses] == [200] * 8
        text = httpx.get(f"{srv.url}/metrics").text
        count = metric_value(text, "babelgate_batch_size_count", kind="chat")
        singles = metric_value(text, "babelgate_batch_size_bucket", kind="chat", le="1")
        assert (
            count < 8 and count - singles >= 1
        )  # at least one generate call served several requests
        # Batched rows get the same decision as the same prompt served alone.
        alone = httpx.post(f"{srv.url}/v1/chat/completions", json=bodies[3], timeout=60).json()
        assert responses[3].json()["babelgate"]["score"] == pytest.approx(
            alone["babelgate"]["score"], abs=1e-3
        )


def test_over_capacity_gets_429_and_recovers(engine: Engine) -> None:
    limits = ServerLimits(**{**LIMITS.__dict__, "max_concurrency": 1, "max_queue": 0})
    app = create_app(engine, ServerConfig(limits=limits, max_batch=1))
    with BackgroundServer(app) as srv:
        bodies = [chat_body(max_tokens=64) for _ in range(12)]
        responses = asyncio.run(burst(srv.url, bodies))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
        for r in responses:
            if r.status_code == 429:
                assert (
                    r.json()["error"]["code"] == "rate_limit_exceeded"
                    and r.headers["retry-after"] == "1"
                )
        health = httpx.get(f"{srv.url}/health").json()
        assert health["status"] == "ok" and health["in_flight"] == 0
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert metric_value(
            metrics, "babelgate_rejected_total", reason="overloaded"
        ) == statuses.count(429)
        assert metric_value(
            metrics, "babelgate_requests_total", endpoint="/v1/chat/completions", status="429"
        ) == (statuses.count(429))


def test_waiting_room_serves_everyone_in_time(engine: Engine) -> None:
    limits = ServerLimits(**{**LIMITS.__dict__, "max_concurrency": 1, "max_queue": 16})
    app = create_app(engine, ServerConfig(limits=limits))
    with BackgroundServer(app) as srv:
        responses = asyncio.run(
            burst(srv.url, [{"input": f"text {i}"} for i in range(6)], "/v1/moderations")
        )
        assert [r.status_code for r in responses] == [200] * 6


def test_metrics_after_traffic(client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json=chat_body(metadata={"language": "en"}))
    client.post("/v1/chat/completions", json=chat_body(max_tokens="x"))
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert (
        metric_value(
            text, "babelgate_requests_total", endpoint="/v1/chat/completions", status="200"
        )
        >= 1
    )
    assert (
        metric_value(
            text, "babelgate_requests_total", endpoint="/v1/chat/completions", status="400"
        )
        >= 1
    )
    assert (
        metric_value(
            text,
            "babelgate_request_duration_seconds_bucket",
            endpoint="/v1/chat/completions",
            le="+Inf",
        )
        >= 2
    )
    assert (
        metric_value(
            text,
            "babelgate_gate_decisions_total",
            endpoint="chat",
            language="en",
            language_source="request",
        )
        >= 1
    )
    assert metric_value(text, "babelgate_completion_tokens_total") >= 1
    assert "# TYPE babelgate_batch_size histogram" in text


def test_graceful_shutdown_finishes_in_flight_requests(engine: Engine) -> None:
    app = create_app(engine, ServerConfig(limits=LIMITS, max_batch=1))
    srv = BackgroundServer(app).start()
    outcome: dict[str, Any] = {}
    opened = threading.Event()

    def stream_one() -> None:
        body = chat_body(max_tokens=64, stream=True)
        with (
            httpx.Client(base_url=srv.url, timeout=60) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            lines = response.iter_lines()
            outcome["first"] = next(line for line in lines if line)
            opened.set()
            outcome["rest"] = [line for line in lines if line]

    thread = threading.Thread(target=stream_one)
    thread.start()
    assert opened.wait(60)
    started = time.monotonic()
    srv.stop()
    thread.join(60)
    assert outcome["first"].startswith("data: {")
    assert outcome["rest"][-1] == "data: [DONE]"
    assert time.monotonic() - started < 30
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/health", timeout=2)
