"""babelgate's vLLM plugin against the transformers back end (babelgate.guard), on CPU.

Runs only where vLLM is importable (the separate environment from
scripts/setup_vllm_env.sh: `.venv-vllm/bin/python -m pytest tests/test_vllm_plugin.py`);
everywhere else the whole module is skipped. A tiny random Qwen2 (head_dim 32, as vLLM's
CPU attention needs) is saved to a temp dir; a gate is fitted on its own activations.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed in this interpreter (see scripts/setup_vllm_env.sh)"
)
# The engine core runs in this process, so the worker extension shares the test's imports.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch

from babelgate.capture import capture
from babelgate.errors import ArtifactError, BabelgateError
from babelgate.gate import Gate
from babelgate.generation import generation_config
from babelgate.guard import Guard
from babelgate.models import ModelHandle
from babelgate.server.loopback import free_port, wait_until_healthy
from babelgate.testing import save_tiny_vllm_model
from babelgate.vllm_plugin import GuardedLLM, VllmCompatibilityError, engine_kwargs
from babelgate.vllm_plugin.compat import check_vllm_version
from babelgate.vllm_plugin.routing import RequestRoute, plan_step, route_from_extra_args

LAYER = 2
WORDS = [
    "How",
    "do",
    "I",
    "make",
    "a",
    "cake",
    "weather",
    "explain",
    "quantum",
    "physics",
    "Jinsi",
    "ya",
    "kupika",
    "chakula",
    "Habari",
    "leo",
    "Comment",
    "faire",
    "gâteau",
    "Wie",
    "geht",
    "es",
]
BASE_ENGINE: dict[str, Any] = {
    "dtype": "float32",
    "kv_cache_memory_bytes": 64 << 20,
    "max_num_seqs": 8,
}


@dataclass
class Fixture:
    root: Path
    handle: ModelHandle
    gate: Gate


def _texts(seed: int, n: int, lo: int, hi: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tail = " cake cake physics" if i % 2 else " Habari leo"
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + tail)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    root = tmp_path_factory.mktemp("vllm_tiny")
    _, handle = save_tiny_vllm_model(root)
    prompts = _texts(0, 80, 3, 12)
    labels = [i % 2 for i in range(80)]
    langs = [["en", "fr", "sw"][i % 3] for i in range(80)]
    acts = capture(handle, prompts, [LAYER], "last", batch_size=8, cache=False, progress=False)[
        :, 0, :
    ]
    gate = Gate.fit(
        acts,
        labels,
        langs,
        layer=LAYER,
        source_languages=["en", "fr"],
        rank=2,
        model_fingerprint=handle.fingerprint,
    )
    sw = [i for i, code in enumerate(langs) if code == "sw"]
    pos = [i for i in sw if labels[i]][:2]
    neg = [i for i in sw if not labels[i]][:2]
    gate = gate.calibrate("sw", acts[pos], acts[neg]).calibrate_alpha(acts, labels, langs)
    gate.save(root / "bundle")
    return Fixture(root, handle, gate)


def _ids(handle: ModelHandle, texts: list[str]) -> list[list[int]]:
    return [
        handle.tokenizer(t, add_special_tokens=False)["input_ids"] for t in handle.format(texts)
    ]


def _reference(
    fx: Fixture, ids: list[list[int]], langs: list[str | None], n_new: int, *, exact: bool = True
) -> list[tuple[bool, float, list[int]]]:
    """The transformers guard, one prompt per call (no padding), greedy: exactly n_new tokens,
    or (exact=False) stopping at EOS like a served request."""
    guard = Guard(fx.handle, fx.gate)
    cfg, _ = generation_config(fx.handle, max_new_tokens=n_new)
    if exact:
        cfg.min_new_tokens = n_new
    out = []
    for x, lang in zip(ids, langs, strict=True):
        with guard.attached([lang]) as session, torch.no_grad():
            gen = fx.handle.model.generate(  # type: ignore[operator]
                input_ids=torch.tensor([x]),
                attention_mask=torch.ones(1, len(x), dtype=torch.long),
                generation_config=cfg,
            )
        out.append(
            (session.decision.fired[0], session.decision.scores[0], gen[0, len(x) :].tolist())
        )
    return out


def _sampling(n_new: int) -> Any:
    from vllm import SamplingParams

    # min_tokens suppresses EOS like transformers' min_new_tokens, so both emit n_new tokens.
    return SamplingParams(temperature=0.0, max_tokens=n_new, min_tokens=n_new)


@pytest.fixture(scope="module")
def engine(tiny: Fixture) -> Iterator[GuardedLLM]:
    llm = GuardedLLM(
        str(tiny.root / "model"),
        str(tiny.root / "bundle"),
        expected_fingerprint=tiny.handle.fingerprint,
        max_model_len=256,
        **BASE_ENGINE,
    )
    yield llm
    llm.close()


LANGS: list[str | None] = ["en", "sw", "fr", None, "sw", "en", "fr", "am"]


def test_mixed_batch_matches_transformers_guard(tiny: Fixture, engine: GuardedLLM) -> None:
    ids = _ids(tiny.handle, _texts(1, 8, 3, 30))
    ref = _reference(tiny, ids, LANGS, 12)
    got = engine.generate(ids, LANGS, sampling=_sampling(12))
    assert {r[0] for r in ref} == {True, False}, "the batch must mix flagged and unflagged requests"
    for (fired, score, tokens), out in zip(ref, got, strict=True):
        assert out.fired == fired
        assert out.score == pytest.approx(score, abs=1e-3)
        assert out.token_ids == tokens
    # language bookkeeping: calibrated sw, source en/fr, unknown None/am fall back
    by_lang = {o.language: o for o in got}
    assert by_lang["sw"].threshold_source == "calibrated"
    assert by_lang["en"].threshold_source == "source" and not by_lang["en"].language_fallback
    assert by_lang[None].language_fallback and by_lang["am"].language_fallback
    stats = engine.stats()
    assert sum(v["fired"] + v["not_fired"] for v in stats["counts"].values()) >= 8


def test_opted_out_rows_are_bit_identical_to_unguarded_engine(
    tiny: Fixture, engine: GuardedLLM
) -> None:
    ids = _ids(tiny.handle, _texts(2, 8, 3, 20))
    flags = [i % 2 == 0 for i in range(8)]
    mixed = engine.generate(ids, LANGS, sampling=_sampling(10), guarded=flags)
    guarded = engine.generate(ids, LANGS, sampling=_sampling(10))
    engine.unload()
    try:
        plain = engine.llm.generate(
            [{"prompt_token_ids": x} for x in ids], _sampling(10), use_tqdm=False
        )
    finally:
        engine.info = engine.llm.collective_rpc(
            "babelgate_load", kwargs={"bundle": str(tiny.root / "bundle")}
        )[0]
    plain_tokens = [list(p.outputs[0].token_ids) for p in plain]
    for i, out in enumerate(mixed):
        if not flags[i]:
            assert out.token_ids == plain_tokens[i] and out.fired is None
        else:
            assert out.token_ids == guarded[i].token_ids  # guarded rows unaffected by neighbours
    # the guard really changes generations (alpha is large on this model)
    assert any(g.token_ids != p for g, p in zip(guarded, plain_tokens, strict=True))


def test_chunked_prefill_policy(tiny: Fixture) -> None:
    ids = _ids(tiny.handle, _texts(3, 6, 10, 30))
    langs = LANGS[:6]
    ref = _reference(tiny, ids, langs, 8)
    with GuardedLLM(
        str(tiny.root / "model"),
        str(tiny.root / "bundle"),
        max_model_len=256,
        enable_chunked_prefill=True,
        max_num_batched_tokens=16,
        **BASE_ENGINE,
    ) as llm:
        got = llm.generate(ids, langs, sampling=_sampling(8))
    assert any(o.route["chunks_before_decision"] > 0 for o in got), "prefill was not chunked"
    for (fired, _score, tokens), out in zip(ref, got, strict=True):
        assert out.fired == fired  # the gate reads an unmodified residual whatever the chunking
        if fired or out.route["chunks_before_decision"] == 0:
            # exact by construction: nothing before the last prompt token is edited for
            # gate-positive requests. Gate-negative requests whose prompt was split miss
            # ablation on earlier chunks' prompt tokens (documented policy), so no equality
            # is asserted for them.
            assert out.token_ids == tokens


def test_preemption_keeps_frozen_decision(tiny: Fixture) -> None:
    ids = _ids(tiny.handle, _texts(1, 8, 3, 12))
    ref = _reference(tiny, ids, LANGS, 40)
    # 5 KV blocks of 32 tokens: decoding requests outgrow the cache and get preempted/recomputed.
    with GuardedLLM(
        str(tiny.root / "model"),
        str(tiny.root / "bundle"),
        max_model_len=112,
        num_gpu_blocks_override=5,
        block_size=32,
        **BASE_ENGINE,
    ) as llm:
        got = llm.generate(ids, LANGS, sampling=_sampling(40))
    assert any(o.route["recomputed"] > 0 for o in got), "no request was preempted"
    for (fired, _score, tokens), out in zip(ref, got, strict=True):
        assert out.fired == fired
        assert out.token_ids == tokens


def test_bad_engine_settings_and_bundles_are_refused(tiny: Fixture) -> None:
    with pytest.raises(VllmCompatibilityError, match="enforce_eager"):
        engine_kwargs(enforce_eager=False)
    with pytest.raises(VllmCompatibilityError, match="prefix"):
        engine_kwargs(enable_prefix_caching=True)
    with pytest.raises(VllmCompatibilityError, match="speculative"):
        engine_kwargs(speculative_config={"method": "ngram"})
    with pytest.raises(VllmCompatibilityError, match="supports vllm"):
        check_vllm_version("0.6.3")
    with pytest.raises((ArtifactError, BabelgateError)):
        GuardedLLM(
            str(tiny.root / "model"),
            str(tiny.root / "bundle"),
            expected_fingerprint="0" * 32,
            max_model_len=128,
            **BASE_ENGINE,
        )


def test_plan_step_uses_runner_offsets_and_positions() -> None:
    # request a: prompt 5, this step carries its last 2 prompt tokens (positions 3, 4);
    # request b: decided, gate-positive, one decode token at position 9 (prompt 7);
    # request c: prompt 10, first chunk only (positions 0..2).
    a = RequestRoute("a", None, "en", True, 5)
    b = RequestRoute("b", None, "sw", True, 7, fired=True)
    c = RequestRoute("c", None, None, True, 10)
    positions = torch.tensor([3, 4, 9, 0, 1, 2, 0])  # trailing row: padding
    plan = plan_step([a, b, c], [0, 2, 3, 6], positions)
    assert plan.decide_routes == [a] and plan.decide_rows == [1]
    assert c.chunks_before_decision == 1
    a.fired = False
    ablate, add = plan.edit_rows(positions)
    assert ablate.tolist() == [0, 1] and add.tolist() == [2]
    # a recompute of b's last prompt token reuses the frozen decision
    plan2 = plan_step([b], [0, 8], torch.arange(8))
    assert not plan2.decide_routes and b.recomputed == 1
    ablate2, add2 = plan2.edit_rows(torch.arange(8))
    assert ablate2.numel() == 0 and add2.tolist() == [6, 7]
    bad = route_from_extra_args("x", 3, {"babelgate_language": 7, "babelgate": "yes"})
    assert bad.guarded and bad.language is None and bad.error is not None
    assert not route_from_extra_args("y", 3, {"babelgate": "false"}).guarded  # HTTP vllm_xargs
    assert not route_from_extra_args("z", 3, {"babelgate": 0}).guarded


@pytest.mark.slow
def test_packaged_qwen_matches_transformers_guard(tmp_path: Path) -> None:
    """The packaged Qwen2.5-Coder-0.5B: same decisions as the transformers guard and the same
    greedy tokens (float32 on both sides) for a mixed batch in several languages."""
    from babelgate.io import cache_root
    from babelgate.loaders import load_prompts
    from babelgate.models import load_model

    directory = Path(cache_root()) / "models" / "qwen2.5-coder-0.5b"
    if not (directory / "config.json").exists():
        pytest.skip("the packaged qwen2.5-coder-0.5b has no converted copy in the cache")
    handle = load_model("qwen2.5-coder-0.5b", dtype="float32", progress=False)
    train = [p for p in load_prompts("builtin") if p.split == "train"]
    rows = [
        p
        for lang in ("en", "fr", "de", "sw")
        for label in ("harmful", "harmless")
        for p in [q for q in train if q.language == lang and q.label == label][:8]
    ]
    layer = handle.n_layers // 2
    acts = capture(handle, [p.text for p in rows], [layer], "last", cache=False, progress=False)[
        :, 0, :
    ]
    labels = [int(p.label == "harmful") for p in rows]
    langs = [p.language for p in rows]
    gate = Gate.fit(
        acts,
        labels,
        langs,
        layer=layer,
        source_languages=["en", "fr", "de"],
        rank=3,
        model_fingerprint=handle.fingerprint,
    )
    sw = [i for i, code in enumerate(langs) if code == "sw"]
    gate = gate.calibrate(
        "sw", acts[[i for i in sw if labels[i]][:4]], acts[[i for i in sw if not labels[i]][:4]]
    )
    gate = gate.calibrate_alpha(acts, labels, langs)
    gate.save(tmp_path / "bundle")
    test = [
        p
        for p in load_prompts("builtin")
        if p.split == "test" and p.language in ("en", "sw", "fr", "bn")
    ]
    picked = random.Random(0).sample(test, 8)
    ids = _ids(handle, [p.text for p in picked])
    codes: list[str | None] = [p.language for p in picked]
    ref = _reference(Fixture(tmp_path, handle, gate), ids, codes, 16)
    with GuardedLLM(
        str(directory),
        str(tmp_path / "bundle"),
        expected_fingerprint=handle.fingerprint,
        max_model_len=512,
        **BASE_ENGINE,
    ) as llm:
        got = llm.generate(ids, codes, sampling=_sampling(16))
    for (fired, score, tokens), out in zip(ref, got, strict=True):
        assert out.fired == fired
        assert out.score == pytest.approx(score, abs=1e-2)
        assert out.token_ids == tokens


def test_general_plugin_loads_bundle_from_environment(
    tiny: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `vllm serve --worker-extension-cls ...` gets with BABELGATE_VLLM_BUNDLE set: the
    workers load the guard by themselves (register() is what the entry point calls)."""
    import vllm
    from vllm.v1.worker import gpu_worker

    from babelgate.vllm_plugin import EXTENSION, register

    original = gpu_worker.Worker.load_model
    monkeypatch.setenv("BABELGATE_VLLM_BUNDLE", str(tiny.root / "bundle"))
    register()
    try:
        llm = vllm.LLM(
            model=str(tiny.root / "model"),
            worker_extension_cls=EXTENSION,
            enforce_eager=True,
            enable_prefix_caching=False,
            max_model_len=128,
            **BASE_ENGINE,
        )
        ids = _ids(tiny.handle, _texts(4, 2, 3, 8))
        params = _sampling(4).clone()
        params.extra_args = {"babelgate_language": "sw", "babelgate_key": "k0"}
        llm.generate([{"prompt_token_ids": ids[0]}], params, use_tqdm=False)
        routes = llm.collective_rpc("babelgate_decisions", kwargs={"keys": ["k0"]})[0]
        ref = _reference(tiny, ids[:1], ["sw"], 4)
        assert len(routes) == 1 and routes[0]["fired"] == ref[0][0]
        llm.llm_engine.engine_core.shutdown()
    finally:
        gpu_worker.Worker.load_model = original  # type: ignore[method-assign]


def test_tensor_parallel_2_workers_decide_identically(
    tiny: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TP=2 on CPU (two worker processes, gloo): every rank routes each request the same way and
    the result equals the transformers guard."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("tensor parallel 2 needs two CPU cores")
    # vLLM's CPU workers bind OpenMP threads per rank; one core each on a 2-core machine.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    ids = _ids(tiny.handle, _texts(5, 4, 3, 20))
    langs: list[str | None] = ["en", "sw", "fr", None]
    ref = _reference(tiny, ids, langs, 8)
    with GuardedLLM(
        str(tiny.root / "model"),
        str(tiny.root / "bundle"),
        max_model_len=128,
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
        **BASE_ENGINE,
    ) as llm:
        got = llm.generate(ids, langs, sampling=_sampling(8))
        per_rank = llm.llm.collective_rpc("babelgate_stats")
    assert len(per_rank) == 2 and per_rank[0]["counts"] == per_rank[1]["counts"]
    for (fired, _score, tokens), out in zip(ref, got, strict=True):
        assert out.fired == fired
        assert out.token_ids == tokens


# --------------------------------------------------------------------------- prefix cache


def test_salted_prefix_cache_keeps_routing_exact(tiny: Fixture) -> None:
    """With prefix caching on and a routing salt per request, a repeated batch (served from
    the cache) and prompts sharing a long prefix in other languages still equal the
    transformers guard; without the salt the engine refuses prefix caching."""
    with pytest.raises(VllmCompatibilityError, match="prefix"):
        engine_kwargs(enable_prefix_caching=True)
    shared = _texts(7, 1, 40, 40)[0]
    texts = [shared + " cake", shared + " Habari", shared + " cake", shared + " leo"]
    ids = _ids(tiny.handle, texts)
    langs: list[str | None] = ["en", "sw", "sw", "fr"]
    ref = _reference(tiny, ids, langs, 6)
    with GuardedLLM(
        str(tiny.root / "model"),
        str(tiny.root / "bundle"),
        max_model_len=256,
        salted_prefix_cache=True,
        **BASE_ENGINE,
    ) as llm:
        assert llm.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        first = llm.generate(ids, langs, sampling=_sampling(6))
        again = llm.generate(ids, langs, sampling=_sampling(6))
    for run in (first, again):
        for (fired, _score, tokens), out in zip(ref, run, strict=True):
            assert out.fired == fired
            assert out.token_ids == tokens


def test_bundle_for_another_model_is_refused_before_engine_start(tiny: Fixture) -> None:
    """The default fingerprint check reads the model directory (no weights loaded)."""
    from babelgate.fingerprint import directory_fingerprint

    assert directory_fingerprint(tiny.root / "model") == tiny.handle.fingerprint
    with pytest.raises(ArtifactError):
        GuardedLLM(
            str(tiny.root / "model"),
            str(tiny.root / "bundle"),
            expected_fingerprint="0" * 32,
            **BASE_ENGINE,
        )


# --------------------------------------------------------------------------- over HTTP


def _stop(proc: Any) -> str:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except Exception:
        proc.kill()
        _, err = proc.communicate()
    return str(err)


def test_babelgate_serve_vllm_backend_over_http(tiny: Fixture) -> None:
    """`babelgate serve --backend vllm`: the same OpenAI endpoints as the transformers back
    end, answers and decisions equal to the transformers guard, moderation verdicts too."""
    import subprocess
    import sys

    import httpx

    from babelgate.server.language import LANGUAGE_HEADER

    port = free_port()
    engine_args = {**BASE_ENGINE, "max_model_len": 256}
    cmd = [sys.executable, "-c", "from babelgate.cli import main; main()", "serve"]
    cmd += [str(tiny.root / "bundle"), "--model", str(tiny.root / "model"), "--backend", "vllm"]
    cmd += ["--port", str(port), "--served-model-name", "tiny", "--vllm-args"]
    cmd += [json.dumps(engine_args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    texts = _texts(8, 6, 3, 14)
    langs: list[str | None] = ["en", "sw", "fr", "sw", "en", "fr"]
    ref = _reference(tiny, _ids(tiny.handle, texts), langs, 8, exact=False)
    assert {r[0] for r in ref} == {True, False}
    try:
        wait_until_healthy(proc, url, timeout=420.0, poll=0.5)
        for text, lang, (fired, score, tokens) in zip(texts, langs, ref, strict=True):
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 8,
                "temperature": 0,
                "metadata": {"language": lang},
            }
            got = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            assert got.status_code == 200, got.text
            data = got.json()
            expected = tiny.handle.tokenizer.decode(tokens, skip_special_tokens=True)
            assert data["choices"][0]["message"]["content"] == expected
            assert data["babelgate"]["decision"] == ("refuse_steer" if fired else "ablate")
            assert data["babelgate"]["score"] == pytest.approx(score, abs=1e-3)
            assert data["babelgate"]["language"] == lang
        bad = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "other", "messages": []}, timeout=30
        )
        assert 400 <= bad.status_code < 500
        moderation = httpx.post(
            f"{url}/v1/moderations",
            json={"input": texts[:4]},
            headers={LANGUAGE_HEADER: "sw"},
            timeout=120,
        )
        assert moderation.status_code == 200, moderation.text
        guard = Guard(tiny.handle, tiny.gate)
        decided = guard.decide(texts[:4], ["sw"] * 4, batch_size=1, progress=False)
        flagged = [r["flagged"] for r in moderation.json()["results"]]
        assert flagged == [bool(o.fired) for o in decided]
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert 'language="sw"' in metrics
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err[-4000:]


def test_vllm_serve_with_the_plugin_guards_requests_over_http(tiny: Fixture) -> None:
    """Plain `vllm serve` with the worker extension and BABELGATE_VLLM_BUNDLE: the language
    arrives per request as `vllm_xargs`, and the generated tokens equal the transformers
    guard's (which differ from the unguarded model's for some of these prompts)."""
    import subprocess
    import sys

    import httpx

    from babelgate.vllm_plugin import BUNDLE_ENV, EXTENSION

    port = free_port()
    env = {**os.environ, BUNDLE_ENV: str(tiny.root / "bundle")}
    # `vllm serve` itself fails in vllm-cpu 0.32.0 (its CLI looks up the distribution "vllm",
    # which the CPU build names "vllm-cpu"); the API server module is the same server.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    cmd += [str(tiny.root / "model")]
    cmd += ["--worker-extension-cls", EXTENSION, "--enforce-eager", "--no-enable-prefix-caching"]
    cmd += ["--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "8"]
    cmd += ["--kv-cache-memory-bytes", str(64 << 20), "--served-model-name", "tiny"]
    cmd += ["--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    ids = _ids(tiny.handle, _texts(9, 6, 3, 14))
    langs: list[str | None] = ["en", "sw", "fr", "sw", "en", "fr"]
    ref = _reference(tiny, ids, langs, 8, exact=False)
    cfg, _ = generation_config(tiny.handle, max_new_tokens=8)
    plain = []
    for x in ids:
        with torch.no_grad():
            gen = tiny.handle.model.generate(  # type: ignore[operator]
                input_ids=torch.tensor([x]),
                attention_mask=torch.ones(1, len(x), dtype=torch.long),
                generation_config=cfg,
            )
        plain.append(gen[0, len(x) :].tolist())
    assert any(r[2] != p for r, p in zip(ref, plain, strict=True)), "guard must change something"
    try:
        wait_until_healthy(proc, url, timeout=420.0, poll=0.5)
        for x, lang, (_fired, _score, tokens) in zip(ids, langs, ref, strict=True):
            body = {
                "model": "tiny",
                "prompt": x,
                "max_tokens": 8,
                "temperature": 0,
                "return_token_ids": True,
                "vllm_xargs": {"babelgate_language": lang},
            }
            got = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
            assert got.status_code == 200, got.text
            choice = got.json()["choices"][0]
            if choice.get("token_ids") is not None:
                assert choice["token_ids"] == tokens
            else:
                text = tiny.handle.tokenizer.decode(tokens, skip_special_tokens=True)
                assert choice["text"] == text
    finally:
        _stop(proc)
