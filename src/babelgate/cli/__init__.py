"""The `babelgate` command line. Each sub-module registers its commands on `app`;
`main` turns a `BabelgateError` into one clear message and exit code 2."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from babelgate.errors import BabelgateError

app = typer.Typer(
    name="babelgate",
    help="Find and repair the multilingual safety failure of chat language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

# Command modules, each exposing `register(app)`; order is the order of --help.
_COMMAND_MODULES = (
    "run",
    "models",
    "data",
    "extract",
    "gate",
    "diagnose",
    "generate",
    "evaluate",
    "report",
    "serve",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"babelgate.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"babelgate.cli.{name}":
                continue
            raise
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        app(args=argv, standalone_mode=False)
    except BabelgateError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # usage errors arrive here in non-standalone mode
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        raise


def _is_usage_error(exc: Exception) -> bool:
    """Click's exceptions, from click itself or from the copy newer typer versions vendor
    (a different class, so `isinstance(exc, click.ClickException)` misses it)."""
    import click

    if isinstance(exc, click.ClickException):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "ClickException" in names and callable(getattr(exc, "show", None))
