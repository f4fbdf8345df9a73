"""Load test of `babelgate serve`: a server subprocess on 127.0.0.1, driven from this process.

    python benchmarks/serve_load.py [--model tiny | qwen2.5-coder-0.5b] [--requests 200]
        [--concurrency 8] [--max-tokens 16] [--moderation-inputs 1000] [--out results.json]

It starts two server subprocesses, one with dynamic batching and one without, and sends both
the same `--requests` greedy chat requests at `--concurrency` (prompts from the built-in set
in several languages), then `--moderation-inputs` moderation inputs in requests of
`--moderation-per-request` at the same concurrency. The two servers are driven alternately
in `--rounds` slices, so load from other processes on the machine hits both alike. Reported: throughput, p50/p95 latency, error and 5xx counts, the mean
chat batch size from /metrics, and the chat throughput ratio batching / no batching (same run,
same prompts). The gate is a small demo gate fitted once on the built-in set and shared by
both servers. Loopback only; request counts and run time are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from babelgate.server.loopback import free_port, wait_until_healthy

MAX_REQUESTS = 5_000
MAX_INPUTS = 20_000
LANGUAGES = ("en", "sw", "zh", "de", "am", "fr")


# --------------------------------------------------------------------------- server side
def run_server(args: argparse.Namespace) -> None:
    """Subprocess entry: build the engine (tiny random model or a real one) and serve."""
    import torch

    from babelgate.bundle import load_gate
    from babelgate.models import load_model
    from babelgate.server import Engine, ServerConfig, ServerLimits, create_app, serve
    from babelgate.server.demo import fit_demo_gate
    from babelgate.testing import tiny_model

    handle = tiny_model() if args.model == "tiny" else load_model(args.model, progress=False)
    torch.set_num_threads(args.threads)
    bundle = Path(args.gate_dir)
    if (bundle / "gate.json").is_file():
        gate = load_gate(bundle, expected_fingerprint=handle.fingerprint)
    else:
        gate = fit_demo_gate(handle)
        gate.save(bundle)
    engine = Engine(handle, gate, name=args.model)
    limits = ServerLimits(max_concurrency=64, max_queue=256, max_moderation_inputs=256)
    config = ServerConfig(
        limits=limits,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
    )
    # uvicorn re-raises SIGINT after its graceful shutdown; that is a clean exit here.
    with contextlib.suppress(KeyboardInterrupt):
        serve(create_app(engine, config), "127.0.0.1", args.port, log_level="warning")


# --------------------------------------------------------------------------- client side
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def prompts(n: int) -> list[tuple[str, str]]:
    from babelgate.loaders import load_prompts

    pool = load_prompts("builtin", language=list(LANGUAGES)).filter(split="test")
    rows = [(row.text, row.language) for row in pool]
    if not rows:
        raise SystemExit("the built-in prompt set is empty")
    # Interleave languages so every stretch of the run mixes them.
    rows.sort(key=lambda r: (LANGUAGES.index(r[1]), r[0]))
    by_lang = [[r for r in rows if r[1] == lang] for lang in LANGUAGES]
    mixed = [
        group[i] for i in range(max(len(g) for g in by_lang)) for group in by_lang if i < len(group)
    ]
    return [mixed[i % len(mixed)] for i in range(n)]


async def drive(
    url: str, path: str, bodies: list[dict[str, Any]], concurrency: int, deadline: float
) -> tuple[list[float], list[int], float, list[dict[str, Any]]]:
    """Send `bodies` with at most `concurrency` in flight; (latencies, statuses, wall s, json)."""
    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    statuses: list[int] = []
    payloads: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            async with semaphore:
                if time.monotonic() > deadline:
                    statuses.append(-1)  # not sent: out of time
                    return
                start = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        payloads.append(response.json())
                except httpx.HTTPError:
                    statuses.append(0)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - start
    return latencies, statuses, wall, payloads


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
    return total


def summarize(
    latencies: list[float], statuses: list[int], wall: float, units: int
) -> dict[str, Any]:
    ok = sum(1 for s in statuses if s == 200)
    return {
        "sent": len(statuses),
        "ok": ok,
        "errors": len(statuses) - ok,
        "server_5xx": sum(1 for s in statuses if s >= 500),
        "wall_s": round(wall, 3),
        "throughput_per_s": round(units / wall, 3) if wall > 0 else None,
        "p50_s": round(percentile(latencies, 0.50), 4),
        "p95_s": round(percentile(latencies, 0.95), 4),
    }


class ServerProcess:
    """A `--serve` subprocess on a free loopback port."""

    def __init__(self, args: argparse.Namespace, batching: bool, gate_dir: Path) -> None:
        self.batching = batching
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, __file__, "--serve", "--model", args.model, "--port", str(self.port),
            "--gate-dir", str(gate_dir), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
        ]  # fmt: skip
        command += ["--threads", str(args.threads)]
        if not batching:
            command.append("--no-batching")
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def wait_ready(self, deadline: float) -> None:
        try:
            wait_until_healthy(self.proc, self.url, timeout=deadline - time.monotonic())
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(str(exc)) from None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return int(self.proc.returncode)


class Tally:
    """Latencies, statuses, wall time and JSON bodies accumulated over rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.wall = 0.0
        self.payloads: list[dict[str, Any]] = []

    def add(self, result: tuple[list[float], list[int], float, list[dict[str, Any]]]) -> None:
        self.latencies += result[0]
        self.statuses += result[1]
        self.wall += result[2]
        self.payloads += result[3]


def progress(kind: str, srv: ServerProcess, tally: Tally) -> None:
    """Partial results on stderr, so an interrupted run still says something."""
    ok = sum(1 for s in tally.statuses if s == 200)
    label = "batching" if srv.batching else "no batching"
    print(
        f"[{label}] {kind}: {ok}/{len(tally.statuses)} ok in {tally.wall:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def chunks(items: list[Any], n: int) -> list[list[Any]]:
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def measure(
    args: argparse.Namespace, servers: list[ServerProcess], deadline: float
) -> list[dict[str, Any]]:
    """Drive both servers with the same requests, alternating in `--rounds` slices so that
    changing machine load hits both modes alike."""
    chat_bodies = [
        {"model": args.model, "messages": [{"role": "user", "content": text}], "max_tokens": args.max_tokens,
         "temperature": 0}
        for text, _ in prompts(args.requests)
    ]  # fmt: skip
    texts = [text for text, _ in prompts(args.moderation_inputs)]
    per = args.moderation_per_request
    mod_bodies = [{"input": texts[i : i + per]} for i in range(0, len(texts), per)]
    warm = [
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "temperature": 0,
        }
    ]
    chat = {srv.port: Tally() for srv in servers}
    moderation = {srv.port: Tally() for srv in servers}
    for srv in servers:  # warm-up, not measured: first calls pay one-off costs
        asyncio.run(drive(srv.url, "/v1/chat/completions", warm * 2, 2, deadline))
        asyncio.run(drive(srv.url, "/v1/moderations", mod_bodies[:1], 1, deadline))
    for part in chunks(chat_bodies, args.rounds):
        for srv in servers:
            chat[srv.port].add(
                asyncio.run(
                    drive(srv.url, "/v1/chat/completions", part, args.concurrency, deadline)
                )
            )
    for part in chunks(mod_bodies, args.rounds):
        for srv in servers:
            moderation[srv.port].add(
                asyncio.run(drive(srv.url, "/v1/moderations", part, args.concurrency, deadline))
            )
    results = []
    for srv in servers:
        c, m = chat[srv.port], moderation[srv.port]
        chat_summary = summarize(
            c.latencies, c.statuses, c.wall, sum(1 for s in c.statuses if s == 200)
        )
        tokens = sum(p["usage"]["completion_tokens"] for p in c.payloads)
        chat_summary["completion_tokens_per_s"] = round(tokens / c.wall, 2) if c.wall > 0 else None
        chat_summary["fired"] = sum(
            1 for p in c.payloads if p["babelgate"]["decision"] == "refuse_steer"
        )
        scored = sum(len(p["results"]) for p in m.payloads)
        mod_summary = summarize(m.latencies, m.statuses, m.wall, scored)
        mod_summary["inputs_scored"] = scored
        mod_summary["flagged"] = sum(1 for p in m.payloads for r in p["results"] if r["flagged"])
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
        count = metric_sum(metrics, "babelgate_batch_size_count", kind="chat")
        total = metric_sum(metrics, "babelgate_batch_size_sum", kind="chat")
        chat_summary["mean_batch_size"] = round(total / count, 2) if count else None
        server_5xx = sum(
            metric_sum(metrics, "babelgate_requests_total", status=str(code))
            for code in range(500, 600)
        )
        results.append(
            {
                "batching": srv.batching,
                "chat": chat_summary,
                "moderation": mod_summary,
                "server_5xx_metrics": server_5xx,
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="tiny", help="'tiny' (random, in-process) or a model spec"
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--moderation-inputs", type=int, default=1000)
    parser.add_argument("--moderation-per-request", type=int, default=20)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads per server (default: 1 for tiny, where a second thread only adds "
        "synchronisation, else the number of cores)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices per mode")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, help="seconds for the whole run"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    # server subprocess options
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--gate-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--no-batching", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1:
        args.threads = 1 if args.model == "tiny" else os.cpu_count() or 1
    if args.serve:
        run_server(args)
        return
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.moderation_inputs <= MAX_INPUTS:
        raise SystemExit(
            f"--requests must be in [1, {MAX_REQUESTS}] and --moderation-inputs in [1, {MAX_INPUTS}]"
        )
    if not 1 <= args.concurrency <= 64 or not 1 <= args.moderation_per_request <= 256:
        raise SystemExit("--concurrency must be in [1, 64], --moderation-per-request in [1, 256]")
    deadline = time.monotonic() + args.time_limit
    # `timeout`/`kill` send SIGTERM: exit through the finally blocks so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="babelgate-load-") as tmp:
        gate_dir = Path(tmp) / "gate"
        # The first server fits and saves the demo gate; the second loads it.
        servers = [ServerProcess(args, True, gate_dir)]
        try:
            servers[0].wait_ready(deadline)
            servers.append(ServerProcess(args, False, gate_dir))
            servers[1].wait_ready(deadline)
            results = measure(args, servers, deadline)
        finally:
            exit_codes = [srv.stop() for srv in servers]
    batched, sequential = results[0]["chat"], results[1]["chat"]
    ratio = None
    if batched["throughput_per_s"] and sequential["throughput_per_s"]:
        ratio = round(batched["throughput_per_s"] / sequential["throughput_per_s"], 2)
    report = {
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "moderation_inputs": args.moderation_inputs,
        "moderation_per_request": args.moderation_per_request,
        "threads_per_server": args.threads,
        "modes": results,
        "chat_throughput_ratio_batching_vs_none": ratio,
        "rounds": args.rounds,
        "zero_5xx": all(
            m["chat"]["server_5xx"] == 0
            and m["moderation"]["server_5xx"] == 0
            and m["server_5xx_metrics"] == 0
            for m in results
        ),
        "server_exit_codes": exit_codes,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    for mode in results:
        chat, mod = mode["chat"], mode["moderation"]
        label = "batching" if mode["batching"] else "no batching"
        print(
            f"{label:>12}: chat {chat['throughput_per_s']} req/s ({chat['completion_tokens_per_s']} tok/s), "
            f"p50 {chat['p50_s']} s, p95 {chat['p95_s']} s, errors {chat['errors']}, mean batch "
            f"{chat['mean_batch_size']} | moderation {mod['throughput_per_s']} inputs/s, p50 {mod['p50_s']} s, "
            f"errors {mod['errors']}"
        )
    print(f"chat throughput ratio (batching / none): {ratio}")


if __name__ == "__main__":
    main()
