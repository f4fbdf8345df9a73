"""`babelgate generate BUNDLE`: guarded generation from the command line, with each prompt's
gate decision (language, score, threshold and its source, fired)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from babelgate.cli.options import AlphaOption, DtypeOption, LambdaOption
from babelgate.errors import DataError

_TEXT_SUFFIXES = {".txt"}


def _read_prompts(prompts: list[str], path: Path | None) -> tuple[list[str], list[str | None]]:
    """Texts and per-row languages from --prompt values and/or a prompts file (.txt: one prompt
    per line; .jsonl/.json/.csv/.tsv: rows with a text and optional language)."""
    texts: list[str] = list(prompts)
    langs: list[str | None] = [None] * len(texts)
    if path is not None:
        if not path.is_file():
            raise DataError(f"prompts file not found: {path}")
        if path.suffix.lower() in _TEXT_SUFFIXES:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            file_texts = [line for line in lines if line]
            texts += file_texts
            langs += [None] * len(file_texts)
        else:
            from babelgate.loaders import load_prompts

            rows = list(load_prompts(path))
            texts += [row.text for row in rows]
            langs += [row.language for row in rows]
    if not texts:
        raise DataError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    if any(not t.strip() for t in texts):
        raise DataError("empty prompt text")
    return texts, langs


def _resolve_languages(
    texts: list[str], file_langs: list[str | None], lang: str
) -> list[str | None]:
    from babelgate.languages import default_registry

    if lang != "auto":
        code = default_registry().get(lang).code
        return [code] * len(texts)
    from babelgate.langid import UNDETERMINED, detect_language

    out: list[str | None] = []
    for text, known in zip(texts, file_langs, strict=True):
        if known is not None:
            out.append(known)
            continue
        found = detect_language(text).code
        out.append(None if found == UNDETERMINED else found)
    return out


def generate(
    bundle: Annotated[
        Path, typer.Argument(help="gate bundle directory (gate.json + gate.safetensors)")
    ],
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="a prompt (repeatable)")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="prompts file (.txt, .jsonl, .csv)")
    ] = None,
    lang: Annotated[
        str, typer.Option("--lang", help="language code of every prompt, or 'auto' to identify")
    ] = "auto",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="model spec (packaged alias, directory, .gguf, hub id); "
            "default: the model recorded in the bundle",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    alpha: AlphaOption = None,
    lam: LambdaOption = None,
    dtype: DtypeOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write completions as JSONL")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Generate with the gate routing each prompt: refusal steering when it fires, ablation otherwise."""
    from babelgate.bundle import load_gate
    from babelgate.guard import Guard
    from babelgate.io import write_jsonl_atomic
    from babelgate.models import load_model
    from babelgate.packaged import DEFAULT_MODEL

    texts, file_langs = _read_prompts(list(prompt or []), prompts)
    languages = _resolve_languages(texts, file_langs, lang)
    if alpha is not None and lam is not None:
        raise DataError("give either --alpha or --lambda, not both")
    recorded = load_gate(bundle)  # verifies the bundle before the model is loaded
    handle = load_model(
        model or recorded.model_spec or DEFAULT_MODEL, dtype=dtype, progress=progress
    )
    gate = load_gate(bundle, expected_fingerprint=handle.fingerprint)
    guard = Guard(handle, gate, alpha=alpha, lam=lam)
    records = guard.generate(
        texts, languages, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    console = Console()
    for rec in records:
        verdict = "[bold red]fired[/]" if rec.fired else "[green]not fired[/]"
        note = (
            " [yellow](language unknown or uncalibrated: source threshold)[/]"
            if rec.language_fallback
            else ""
        )
        console.print(
            f"[bold]{rec.language or 'und'}[/] {verdict} score={rec.score:.3f} "
            f"threshold={rec.threshold:.3f} ({rec.threshold_source}){note}",
            highlight=False,
        )
        console.print(f"prompt: {rec.prompt}", style="dim", highlight=False, markup=False)
        console.print(rec.completion, highlight=False, markup=False)
        console.print()
    if out is not None:
        meta: dict[str, Any] = {
            "__meta__": {
                "bundle": str(bundle),
                "model": handle.describe(),
                "guard": guard.describe(),
                "max_new_tokens": max_new_tokens,
                "decoding": "greedy",
            }
        }
        write_jsonl_atomic(out, [meta, *(r.to_dict() for r in records)])
        console.print(f"wrote {len(records)} completions to {out}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
