"""Prometheus text-format metrics (exposition format 0.0.4), written by hand: counters,
gauges and cumulative histograms with labels, safe to update from any thread."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = [*labels, extra] if extra is not None else list(labels)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class _Metric:
    name: str
    help: str
    kind: str
    label_names: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple((name, str(labels[name])) for name in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


@dataclass
class _Scalar(_Metric):
    """One float per label set: the shared state and exposition of counters and gauges."""

    values: dict[Labels, float] = field(default_factory=dict)

    def _add(self, amount: float, labels: dict[str, str]) -> None:
        key = self._key(labels)
        with self.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        with self.lock:
            return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self.lock:
            items = sorted(self.values.items())
        return [*self.header(), *(f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items)]


@dataclass
class Counter(_Scalar):
    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._add(amount, labels)


@dataclass
class Gauge(_Scalar):
    def set(self, value: float, **labels: str) -> None:
        with self.lock:
            self.values[self._key(labels)] = value

    def add(self, amount: float, **labels: str) -> None:
        self._add(amount, labels)


@dataclass
class Histogram(_Metric):
    buckets: Sequence[float] = LATENCY_BUCKETS
    # per label set: (per-bucket counts (non-cumulative, last = +Inf), sum, count)
    values: dict[Labels, tuple[list[int], float, int]] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(list(self.buckets), value)
        with self.lock:
            counts, total, n = self.values.get(key, ([0] * (len(self.buckets) + 1), 0.0, 0))
            counts[index] += 1
            self.values[key] = (counts, total + value, n + 1)

    def count(self, **labels: str) -> int:
        with self.lock:
            entry = self.values.get(self._key(labels))
        return entry[2] if entry else 0

    def render(self) -> list[str]:
        with self.lock:
            items = sorted((k, (list(c), s, n)) for k, (c, s, n) in self.values.items())
        lines = self.header()
        for key, (counts, total, n) in items:
            running = 0
            for bound, count in zip([*self.buckets, math.inf], counts, strict=True):
                running += count
                le = ("le", _fmt_value(float(bound)))
                lines.append(f"{self.name}_bucket{_fmt_labels(key, le)} {running}")
            lines.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(total)}")
            lines.append(f"{self.name}_count{_fmt_labels(key)} {n}")
        return lines


class ServerMetrics:
    """Every metric the server exports. Names carry the `babelgate_` prefix."""

    def __init__(self) -> None:
        self.requests = Counter(
            "babelgate_requests_total",
            "HTTP requests by endpoint and status code.",
            "counter",
            ("endpoint", "status"),
        )
        self.latency = Histogram(
            "babelgate_request_duration_seconds",
            "Request latency from arrival to the last byte of the response body.",
            "histogram",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
        )
        self.decisions = Counter(
            "babelgate_gate_decisions_total",
            "Gate decisions by endpoint, language, how the language was chosen and decision.",
            "counter",
            ("endpoint", "language", "language_source", "decision"),
        )
        self.batch_size = Histogram(
            "babelgate_batch_size",
            "Rows per model call (chat: requests generated together; moderation: inputs).",
            "histogram",
            ("kind",),
            buckets=BATCH_BUCKETS,
        )
        self.tokens = Counter(
            "babelgate_completion_tokens_total",
            "Completion tokens generated.",
            "counter",
            (),
        )
        self.in_flight = Gauge(
            "babelgate_requests_in_flight",
            "Admitted requests being served (holding a concurrency slot).",
            "gauge",
            (),
        )
        self.waiting = Gauge(
            "babelgate_requests_waiting",
            "Requests waiting for a concurrency slot.",
            "gauge",
            (),
        )
        self.rejected = Counter(
            "babelgate_rejected_total",
            "Requests rejected before reaching the model, by reason.",
            "counter",
            ("reason",),
        )

        self.in_flight.set(0)
        self.waiting.set(0)
        self.tokens.inc(0)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.decisions,
            self.batch_size,
            self.tokens,
            self.in_flight,
            self.waiting,
            self.rejected,
        ):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
