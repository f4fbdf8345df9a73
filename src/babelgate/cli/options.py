"""Option types shared by several commands (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

AlphaOption = Annotated[
    float | None, typer.Option("--alpha", help="steering strength (overrides the bundle's)")
]
LambdaOption = Annotated[
    float | None, typer.Option("--lambda", help="alpha = lambda * alpha_base of the bundle")
]
DtypeOption = Annotated[
    str | None, typer.Option("--dtype", help="float32, bfloat16, float16 (default: auto)")
]
ObjectiveOption = Annotated[
    str,
    typer.Option(
        "--objective",
        help="threshold rule: balanced_f1 (paper), f1, or class_means (midpoint of class means)",
    ),
]
