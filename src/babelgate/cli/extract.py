"""`babelgate extract`: residual-stream activations of a prompt set at chosen layers, saved as
safetensors with a JSON sidecar describing every row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from babelgate.cli.run import split_list
from babelgate.errors import DataError
from babelgate.packaged import DEFAULT_MODEL


def parse_layers(spec: str) -> list[int] | str:
    """'all', or comma-separated ints (negative counts from the end), or ranges like 4-12."""
    text = spec.strip().lower()
    if text == "all":
        return "all"
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise DataError(f"bad layer list {spec!r}: use e.g. 8,12 or 4-12 or all") from None
    if not out:
        raise DataError(f"bad layer list {spec!r}: no layers")
    return out


def extract(
    data: Annotated[list[str], typer.Option("--data", "-d", help="prompt source (repeatable)")],
    layers: Annotated[str, typer.Option("--layers", help="e.g. 8,12 or 4-12 or all")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output .safetensors file")],
    model: Annotated[str, typer.Option("--model", "-m")] = DEFAULT_MODEL,
    position: Annotated[str, typer.Option("--position", help="last or mean")] = "last",
    languages: Annotated[list[str] | None, typer.Option("--languages", "-l")] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="train, val or test (default: all)")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Capture activations (prompts × layers × hidden) into OUT, with row facts in OUT.json."""
    from safetensors.torch import save_file

    from babelgate.capture import capture, resolve_layers
    from babelgate.io import atomic_path, write_json_atomic
    from babelgate.pipeline import load_run_prompts, resolve_model

    if position not in ("last", "mean"):
        raise DataError(f"--position must be 'last' or 'mean', got {position!r}")
    if out.suffix != ".safetensors":
        raise DataError(f"--out must end in .safetensors, got {out}")
    wanted = parse_layers(layers)
    prompts = load_run_prompts(split_list(data) or ["builtin"], split_list(languages))
    if split is not None:
        prompts = prompts.filter(split=split)
    if not len(prompts):
        raise DataError("no prompts selected")
    handle = resolve_model(model, progress=not no_progress)
    layer_list = resolve_layers(handle, wanted)
    acts = capture(
        handle,
        prompts.texts(),
        layer_list,
        position,  # type: ignore[arg-type]
        batch_size=batch_size,
        progress=not no_progress,
    )
    sidecar = out.with_suffix(".json")
    meta = {
        "model": handle.name,
        "model_fingerprint": handle.fingerprint,
        "layers": layer_list,
        "position": position,
        "shape": list(acts.shape),
        "data": split_list(data),
        "data_digest": prompts.digest(),
        "rows": [
            {"language": p.language, "label": p.label, "split": p.split, "source_id": p.source_id}
            for p in prompts
        ],
    }
    with atomic_path(out) as tmp:
        save_file(
            {"activations": acts.contiguous()},
            str(tmp),
            metadata={"layers": json.dumps(layer_list), "position": position},
        )
    write_json_atomic(sidecar, meta)
    Console().print(f"wrote {out} {list(acts.shape)} and {sidecar.name}")


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
