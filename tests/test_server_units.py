"""Server building blocks without a model: row decoding, metrics text, admission, body parsing."""

from __future__ import annotations

import asyncio
import re

import pytest

from babelgate.server.app import parse_body
from babelgate.server.decoding import FINISH_LENGTH, FINISH_STOP, RowDecoder
from babelgate.server.errors import APIError
from babelgate.server.limits import Admission
from babelgate.server.metrics import ServerMetrics
from babelgate.server.schemas import ChatCompletionRequest, ModerationRequest

# A toy vocabulary: each id decodes to one fixed string (id 0 is end-of-sequence).
VOCAB = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!", 6: " END", 7: "\ufffd"}


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def run(row: RowDecoder, ids: list[int]) -> list[str]:
    deltas = []
    for token in ids:
        row.push(token)
        if (delta := row.take_delta()) != "":
            deltas.append(delta)
        if row.done:
            break
    row.finish()
    if (delta := row.take_delta()) != "":
        deltas.append(delta)
    return deltas


def test_row_decoder_deltas_join_to_the_text_and_respect_max_tokens() -> None:
    row = RowDecoder(decode, max_tokens=4, eos_ids=frozenset({0}))
    deltas = run(row, [1, 2, 3, 4, 5, 5])
    assert "".join(deltas) == "Hello world" == row.text
    assert row.finish_reason == FINISH_LENGTH and len(row.tokens) == 4


def test_row_decoder_stops_at_eos_without_counting_it() -> None:
    row = RowDecoder(decode, max_tokens=10, eos_ids=frozenset({0}))
    assert "".join(run(row, [1, 2, 0, 3])) == "Hello"
    assert row.finish_reason == FINISH_STOP and row.tokens == [1, 2]


def test_row_decoder_stop_string_spanning_tokens_is_never_emitted() -> None:
    row = RowDecoder(decode, max_tokens=10, stop=("lo wo",), eos_ids=frozenset({0}))
    deltas = run(row, [1, 2, 3, 4])
    assert "".join(deltas) == "Hel" == row.text
    assert row.finish_reason == FINISH_STOP
    # Without the stop string the same ids stream further.
    free = RowDecoder(decode, max_tokens=10, eos_ids=frozenset({0}))
    assert "".join(run(free, [1, 2, 3, 4])) == "Hello world"


def test_row_decoder_holds_back_an_incomplete_character() -> None:
    row = RowDecoder(decode, max_tokens=10)
    row.push(1)
    row.push(7)
    assert row.take_delta() == "Hel"  # the trailing U+FFFD may still become a character
    row.push(2)
    assert row.take_delta() == "\ufffdlo"


def test_row_decoder_cancel_finishes_the_row() -> None:
    row = RowDecoder(decode, max_tokens=10)
    row.push(1)
    row.cancel()
    row.push(2)
    assert row.finish_reason == "cancelled" and row.tokens == [1]


def test_metrics_render_prometheus_text() -> None:
    metrics = ServerMetrics()
    metrics.requests.inc(endpoint="/v1/moderations", status="200")
    metrics.requests.inc(endpoint="/v1/moderations", status="200")
    metrics.latency.observe(0.02, endpoint="/v1/moderations")
    metrics.latency.observe(3.0, endpoint="/v1/moderations")
    metrics.batch_size.observe(3, kind="chat")
    metrics.decisions.inc(
        endpoint="chat", language='q"x', language_source="detected", decision="ablate"
    )
    text = metrics.render()
    assert 'babelgate_requests_total{endpoint="/v1/moderations",status="200"} 2' in text
    assert "# TYPE babelgate_request_duration_seconds histogram" in text
    buckets = dict(
        re.findall(
            r'babelgate_request_duration_seconds_bucket\{endpoint="/v1/moderations",le="([^"]+)"\} (\d+)',
            text,
        )
    )
    assert buckets["0.01"] == "0" and buckets["0.025"] == "1" and buckets["2.5"] == "1"
    assert buckets["5"] == "2" and buckets["+Inf"] == "2"
    assert 'babelgate_batch_size_bucket{kind="chat",le="2"} 0' in text
    assert 'babelgate_batch_size_bucket{kind="chat",le="3"} 1' in text
    assert 'language="q\\"x"' in text  # label values are escaped
    assert "babelgate_requests_in_flight 0" in text
    for line in text.splitlines():
        assert line.startswith("#") or re.match(
            r"^[a-z_]+(\{.*\})? [0-9.e+-]+$|^.* \+?Inf$", line
        ), line


def test_admission_limits_concurrency_and_queue() -> None:
    async def scenario() -> tuple[int, int, list[str]]:
        admission = Admission(max_concurrency=2, max_queue=1, metrics=ServerMetrics())
        order: list[str] = []
        await admission.acquire()
        await admission.acquire()

        async def third() -> None:
            await admission.acquire()
            order.append("third admitted")

        task = asyncio.create_task(third())
        await asyncio.sleep(0)
        with pytest.raises(APIError) as info:
            await admission.acquire()  # two active, one waiting: the room is full
        order.append(f"rejected {info.value.status}")
        admission.release()
        await task
        active, waiting = admission.active, admission.waiting
        admission.release()
        admission.release()
        return active, waiting, order

    active, waiting, order = asyncio.run(scenario())
    assert order == ["rejected 429", "third admitted"]
    assert (active, waiting) == (2, 0)


def test_admission_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> int:
        admission = Admission(max_concurrency=1, max_queue=4, metrics=ServerMetrics())
        await admission.acquire()
        task = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        admission.release()
        return admission.active + admission.waiting

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}',
            "max_tokens",
        ),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"role": "robot", "content": "hi"}]}', "role"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
            "NaN",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            "stream",
        ),
        (b"\xff\xfe", "malformed JSON"),
    ],
)
def test_parse_body_rejects_with_a_named_reason(body: bytes, needle: str) -> None:
    with pytest.raises(APIError) as info:
        parse_body(body, ChatCompletionRequest)
    assert info.value.status == 400
    assert needle in info.value.message
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_parse_body_accepts_openai_shapes() -> None:
    req = parse_body(
        b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},'
        b' {"type": "text", "text": "b"}]}], "stop": "x", "temperature": 0, "user": "u", "frequency_penalty": 0}',
        ChatCompletionRequest,
    )
    assert req.messages[0].text() == "a\nb" and req.stop_list() == ["x"] and req.temperature == 0.0
    assert parse_body(b'{"input": ["a", "b"]}', ModerationRequest).inputs() == ["a", "b"]
