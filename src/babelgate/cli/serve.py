"""`babelgate serve BUNDLE`: the guarded model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from babelgate.cli.options import AlphaOption, DtypeOption, LambdaOption
from babelgate.errors import ArtifactError, DataError

if TYPE_CHECKING:
    from babelgate.gate import Gate
    from babelgate.server.engine import ServingEngine

API_KEY_ENV = "BABELGATE_API_KEY"
# gate.json keys a bundle writer may use to record the model it was fitted on.
_MODEL_KEYS = ("model_spec", "model", "model_name")


def bundle_model_spec(bundle: Path) -> str | None:
    """The model spec recorded in a bundle's gate.json, if any."""
    try:
        meta = json.loads((bundle / "gate.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in _MODEL_KEYS:
        value = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return str(value["name"])
    return None


BACKENDS = ("transformers", "vllm")


def _check_fingerprint(bundle: Path, fitted: str, spec: str, actual: str) -> None:
    if fitted != actual:
        raise ArtifactError(
            f"gate bundle {bundle} was fitted for model fingerprint {fitted!r}, but model "
            f"'{spec}' has fingerprint {actual!r}; pass --model with the model the gate was "
            "fitted on"
        )


def _vllm_engine(
    bundle: Path,
    gate: Gate,
    spec: str,
    served_model_name: str | None,
    alpha: float | None,
    lam: float | None,
    dtype: str | None,
    vllm_args: str | None,
) -> ServingEngine:
    """The vLLM back end: the model directory is checked against the bundle from its files
    (no second copy of the weights is loaded), then vLLM loads it."""
    from babelgate.fingerprint import directory_fingerprint
    from babelgate.models import locate_model

    try:
        extra = json.loads(vllm_args) if vllm_args else {}
    except ValueError as exc:
        raise DataError(f"--vllm-args is not valid JSON: {exc}") from None
    if not isinstance(extra, dict):
        raise DataError("--vllm-args must be a JSON object")
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise DataError(
            "--backend vllm needs vLLM in this environment; create one with "
            "scripts/setup_vllm_env.sh and run .venv-vllm/bin/babelgate"
        )
    from babelgate.vllm_plugin.serving import VllmEngine

    location = locate_model(spec)
    if location.kind not in ("packaged", "hf_dir"):
        raise DataError(
            f"--backend vllm needs a packaged alias or a local model directory, not {spec!r}"
        )
    fingerprint = directory_fingerprint(location.path, location.weights_sha)
    _check_fingerprint(bundle, gate.model_fingerprint, spec, fingerprint)
    if dtype is not None:
        extra.setdefault("dtype", dtype)
    return VllmEngine(
        location.path,
        str(bundle),
        gate,
        name=served_model_name or spec,
        fingerprint=fingerprint,
        alpha=alpha,
        lam=lam,
        **extra,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    bundle: Annotated[
        Path, typer.Argument(help="gate bundle directory (gate.json + gate.safetensors)")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="model spec (default: the model recorded in the bundle, else the packaged default)",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="address to bind (loopback by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
            show_default=False,
        ),
    ] = None,
    served_model_name: Annotated[
        str | None,
        typer.Option(
            "--served-model-name", help="model name clients send (default: the model spec)"
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="most chat requests per generate call")
    ] = 8,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0.0, help="longest wait for batch companions")
    ] = 10.0,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", min=1, help="requests served at once")
    ] = 32,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=0, help="requests waiting for a slot before 429")
    ] = 64,
    max_tokens_limit: Annotated[
        int, typer.Option("--max-tokens-limit", min=1, help="largest max_tokens accepted")
    ] = 1024,
    max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", min=1)] = 4096,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024)] = 1_000_000,
    no_batching: Annotated[
        bool, typer.Option("--no-batching", help="run every request alone")
    ] = False,
    alpha: AlphaOption = None,
    lam: LambdaOption = None,
    dtype: DtypeOption = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="transformers (default) or vllm (needs the vLLM environment)"
        ),
    ] = "transformers",
    vllm_args: Annotated[
        str | None,
        typer.Option(
            "--vllm-args",
            help="extra vllm.LLM arguments as a JSON object, e.g. '{\"max_model_len\": 4096}'",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Serve POST /v1/chat/completions (guarded), POST /v1/moderations, GET /health, GET /metrics."""
    from babelgate.bundle import load_gate
    from babelgate.models import load_model
    from babelgate.packaged import DEFAULT_MODEL
    from babelgate.server import Engine, ServerConfig, ServerLimits, create_app
    from babelgate.server.runner import serve as run_server

    console = Console(stderr=True)
    if alpha is not None and lam is not None:
        raise DataError("give either --alpha or --lambda, not both")
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    # Integrity first (tampered / truncated / wrong version), the model match after loading it.
    if backend not in BACKENDS:
        raise DataError(f"unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if vllm_args is not None and backend != "vllm":
        raise DataError("--vllm-args needs --backend vllm")
    gate = load_gate(bundle)
    spec = model or bundle_model_spec(bundle) or DEFAULT_MODEL
    engine: ServingEngine
    if backend == "vllm":
        engine = _vllm_engine(bundle, gate, spec, served_model_name, alpha, lam, dtype, vllm_args)
    else:
        handle = load_model(spec, dtype=dtype)
        _check_fingerprint(bundle, gate.model_fingerprint, spec, handle.fingerprint)
        engine = Engine(handle, gate, name=served_model_name or spec, alpha=alpha, lam=lam)
    limits = ServerLimits(
        max_body_bytes=max_body_bytes,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        default_max_tokens=min(256, max_tokens_limit),
        max_concurrency=max_concurrency,
        max_queue=max_queue,
    )
    config = ServerConfig(
        api_key=key,
        limits=limits,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        batching=not no_batching,
    )
    if not _is_loopback(host) and key is None:
        console.print(
            f"[yellow]warning:[/] binding {host} without an API key: anyone who can reach this port can use the model",
            highlight=False,
        )
    console.print(
        f"serving '{engine.name}' (gate layer {gate.layer}, calibrated: "
        f"{', '.join(gate.calibrated_languages) or 'none'}) on http://{host}:{port}"
        f"{' with API key' if key else ''}",
        highlight=False,
    )
    run_server(create_app(engine, config), host, port, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
