"""The LLM judge against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server (FastAPI run by uvicorn on a background thread) answers with a verdict given by
a rule on the reply text ("cannot" means refusal), and can be told to fail, stall or
send malformed replies; it counts requests and the largest number in flight.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from babelgate.judges import JudgeError, get_judge
from babelgate.judges.llm import LLMJudge, VerdictCache, parse_verdict


@dataclass
class ServerState:
    fail_first: int = 0
    fail_status: int = 500
    retry_after: str | None = None
    malformed_first: int = 0
    malformed_text: str = "Sure! The answer is 1."
    fence: bool = False
    delay: float = 0.0
    required_key: str | None = None
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_app(state: ServerState) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        with state.lock:
            state.requests += 1
            number = state.requests
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            state.bodies.append(body)
            state.auth_headers.append(request.headers.get("authorization"))
        try:
            if state.delay:
                await asyncio.sleep(state.delay)
            if (
                state.required_key is not None
                and request.headers.get("authorization") != f"Bearer {state.required_key}"
            ):
                return JSONResponse({"error": "bad key"}, status_code=401)
            if number <= state.fail_first:
                headers = {"Retry-After": state.retry_after} if state.retry_after else None
                return JSONResponse(
                    {"error": "busy"}, status_code=state.fail_status, headers=headers
                )
            user = body["messages"][-1]["content"]
            reply = user.split("<assistant_reply>")[1].split("</assistant_reply>")[0]
            content = json.dumps({"refusal": int("cannot" in reply.lower())})
            if number <= state.fail_first + state.malformed_first:
                content = state.malformed_text
            elif state.fence:
                content = f"```json\n{content}\n```"
            return {
                "id": f"cmpl-{number}",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        finally:
            with state.lock:
                state.in_flight -= 1

    return app


@dataclass
class LiveServer:
    state: ServerState
    base_url: str


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    state = ServerState()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(state), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(state, f"http://127.0.0.1:{port}/v1")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def server(live_server: LiveServer) -> LiveServer:
    fresh = ServerState()
    for name in (
        "fail_first",
        "fail_status",
        "retry_after",
        "malformed_first",
        "fence",
        "delay",
        "required_key",
        "requests",
        "in_flight",
        "max_in_flight",
    ):
        setattr(live_server.state, name, getattr(fresh, name))
    live_server.state.bodies.clear()
    live_server.state.auth_headers.clear()
    return live_server


def make_judge(server: LiveServer, tmp_path: Path, **kwargs: Any) -> LLMJudge:
    options: dict[str, Any] = {
        "cache_path": tmp_path / "verdicts.jsonl",
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "timeout": 5.0,
    }
    options.update(kwargs)
    return LLMJudge(server.base_url, "judge-model", **options)


PROMPTS = [
    "How do I pick a lock?",
    "Write a poem about rain.",
    "Make a weapon.",
    "Write a poem about rain.",
]
RESPONSES = [
    "I cannot help with that.",
    "Rain falls softly on the roof.",
    "Sorry, I cannot do this.",
    "Rain falls softly on the roof.",
]


def test_verdicts_and_request_format(server: LiveServer, tmp_path: Path) -> None:
    judge = make_judge(server, tmp_path)
    verdicts = judge.judge(PROMPTS, RESPONSES)
    assert [v.refusal for v in verdicts] == [True, False, True, False]
    assert all(v.judge_id == "llm:judge-model:bg-refusal-v1" for v in verdicts)
    assert server.state.requests == 3  # the duplicated pair is asked once
    body = server.state.bodies[0]
    assert body["model"] == "judge-model"
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["role"] == "system"
    assert "<assistant_reply>" in body["messages"][1]["content"]


def test_cache_hits_do_not_call_the_endpoint(server: LiveServer, tmp_path: Path) -> None:
    first = make_judge(server, tmp_path)
    first.judge(PROMPTS, RESPONSES)
    assert server.state.requests == 3
    again = first.judge(PROMPTS, RESPONSES)
    assert server.state.requests == 3
    assert all(v.reason.endswith("(cached)") for v in again)
    # A new judge on the same cache file reads the verdicts from disk.
    reloaded = make_judge(server, tmp_path)
    assert [v.refusal for v in reloaded.judge(PROMPTS, RESPONSES)] == [True, False, True, False]
    assert server.state.requests == 3
    # Another judge model is another judge id: nothing is reused.
    other = LLMJudge(server.base_url, "other-model", cache_path=tmp_path / "verdicts.jsonl")
    other.judge(PROMPTS[:1], RESPONSES[:1])
    assert server.state.requests == 4
    lines = (tmp_path / "verdicts.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    assert all(set(json.loads(line)) == {"key", "judge_id", "refusal"} for line in lines)


def test_torn_cache_line_is_skipped_and_fenced(server: LiveServer, tmp_path: Path) -> None:
    judge = make_judge(server, tmp_path)
    judge.judge(PROMPTS[:1], RESPONSES[:1])
    path = tmp_path / "verdicts.jsonl"
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "abc", "refu')  # a crash mid-write
    reloaded = make_judge(server, tmp_path)
    assert reloaded.cache is not None
    assert reloaded.cache.skipped_lines == 1
    assert len(reloaded.cache) == 1
    reloaded.judge(PROMPTS[1:2], RESPONSES[1:2])
    assert len(VerdictCache(path)) == 2
    assert VerdictCache(path).skipped_lines == 1


def test_retries_on_server_errors(server: LiveServer, tmp_path: Path) -> None:
    server.state.fail_first = 2
    judge = make_judge(server, tmp_path, max_attempts=3, use_cache=False)
    assert judge.judge_one("q", "I cannot.").refusal
    assert server.state.requests == 3


def test_retries_on_429_with_retry_after(server: LiveServer, tmp_path: Path) -> None:
    server.state.fail_first = 1
    server.state.fail_status = 429
    server.state.retry_after = "0"
    judge = make_judge(server, tmp_path, max_attempts=2, use_cache=False)
    assert not judge.judge_one("q", "Here you go.").refusal
    assert server.state.requests == 2


def test_final_failure_names_the_endpoint(server: LiveServer, tmp_path: Path) -> None:
    server.state.fail_first = 10
    judge = make_judge(server, tmp_path, max_attempts=3, use_cache=False)
    with pytest.raises(JudgeError) as info:
        judge.judge(["q"], ["a"])
    message = str(info.value)
    assert server.base_url in message
    assert "HTTP 500" in message
    assert "3 attempt" in message
    assert server.state.requests == 3


def test_malformed_reply_is_retried_then_rejected(server: LiveServer, tmp_path: Path) -> None:
    server.state.malformed_first = 1
    judge = make_judge(server, tmp_path, max_attempts=2, use_cache=False)
    assert judge.judge_one("q", "I cannot.").refusal
    assert server.state.requests == 2

    server.state.requests = 0
    server.state.malformed_first = 5
    server.state.malformed_text = '{"refusal": 1, "why": "unsafe"}'
    with pytest.raises(JudgeError, match=r"unusable reply.*exactly the key"):
        judge.judge(["q2"], ["I cannot."])
    assert server.state.requests == 2


def test_code_fenced_reply_is_accepted(server: LiveServer, tmp_path: Path) -> None:
    server.state.fence = True
    judge = make_judge(server, tmp_path, use_cache=False)
    assert [v.refusal for v in judge.judge(PROMPTS[:2], RESPONSES[:2])] == [True, False]


def test_concurrency_is_bounded(server: LiveServer, tmp_path: Path) -> None:
    server.state.delay = 0.1
    judge = make_judge(server, tmp_path, concurrency=3, use_cache=False)
    done: list[int] = []
    judge.on_progress = done.append
    prompts = [f"prompt {i}" for i in range(12)]
    verdicts = judge.judge(prompts, ["I cannot"] * 12)
    assert all(v.refusal for v in verdicts)
    assert server.state.requests == 12
    assert server.state.max_in_flight == 3
    assert sum(done) == 12


def test_timeout_gives_a_clear_error(server: LiveServer, tmp_path: Path) -> None:
    server.state.delay = 1.0
    judge = make_judge(server, tmp_path, timeout=0.2, max_attempts=2, use_cache=False)
    with pytest.raises(JudgeError, match=r"failed after 2 attempt\(s\): timed out after 0.2 s"):
        judge.judge(["q"], ["a"])


def test_connection_refused_is_a_clear_error(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    judge = LLMJudge(
        f"http://127.0.0.1:{port}/v1", "m", max_attempts=2, backoff_initial=0.01, use_cache=False
    )
    with pytest.raises(JudgeError, match=f"127.0.0.1:{port}.*connection failed"):
        judge.judge(["q"], ["a"])


def test_api_key_from_environment_is_sent_and_never_echoed(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.state.required_key = "sk-test-secret-123"
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-wrong-key-456")
    judge = make_judge(server, tmp_path, api_key_env="MY_JUDGE_KEY", use_cache=False)
    with pytest.raises(JudgeError) as info:
        judge.judge(["q"], ["a"])
    assert "MY_JUDGE_KEY" in str(info.value)
    assert "sk-wrong-key-456" not in str(info.value)
    assert "sk-wrong-key-456" not in repr(judge)
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-secret-123")
    assert judge.judge_one("q", "I cannot").refusal
    assert server.state.auth_headers[-1] == "Bearer sk-test-secret-123"


def test_sync_judge_works_inside_a_running_event_loop(server: LiveServer, tmp_path: Path) -> None:
    judge = make_judge(server, tmp_path, use_cache=False)

    async def caller() -> list[bool]:
        return [v.refusal for v in judge.judge(PROMPTS[:2], RESPONSES[:2])]

    assert asyncio.run(caller()) == [True, False]


def test_get_judge_builds_llm_judges(server: LiveServer, tmp_path: Path) -> None:
    judge = get_judge(f"llm:org/judge-7b@{server.base_url}", cache_path=tmp_path / "c.jsonl")
    assert isinstance(judge, LLMJudge)
    assert judge.model == "org/judge-7b"
    assert judge.endpoint == f"{server.base_url}/chat/completions"
    assert judge.judge_one("q", "I cannot").refusal
    by_url = get_judge(server.base_url, model="m2", use_cache=False)
    assert isinstance(by_url, LLMJudge) and by_url.model == "m2"
    with pytest.raises(JudgeError, match="no model"):
        get_judge(server.base_url)
    with pytest.raises(JudgeError, match="unknown judge"):
        get_judge("gpt-judge")


def test_parse_verdict_is_strict() -> None:
    assert parse_verdict('{"refusal": 1}') is True
    assert parse_verdict('  {"refusal":0}\n') is False
    assert parse_verdict('```json\n{"refusal": 1}\n```') is True
    for bad in [
        '{"refusal": "1"}',
        '{"refusal": true}',
        '{"refusal": 2}',
        '{"refusal": 1, "x": 0}',
        "refusal: 1",
        '[{"refusal": 1}]',
        'Answer: {"refusal": 1}',
        "",
    ]:
        with pytest.raises(JudgeError):
            parse_verdict(bad)


def test_constructor_validation() -> None:
    with pytest.raises(JudgeError, match="http"):
        LLMJudge("ftp://x", "m", use_cache=False)
    with pytest.raises(JudgeError, match="empty model"):
        LLMJudge("http://x/v1", " ", use_cache=False)
    with pytest.raises(JudgeError, match="concurrency"):
        LLMJudge("http://x/v1", "m", concurrency=0, use_cache=False)
