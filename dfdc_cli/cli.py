"""The `deepfake` executable: one Typer app, one module per subcommand under ``commands/``.

Subcommand modules import torch and friends lazily inside their functions, so that ``--help`` and
``--version`` stay instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from dfdc_cli import __version__
from dfdc_cli.commands import evaluate, extract, index, models, report, scan, train, tubes
from dfdc_cli.errors import UserError
from dfdc_cli.paths import ENV_CACHE, ENV_DATA
from dfdc_cli.ui import err_console, reflow_app

app = typer.Typer(
    name="deepfake",
    help="Detect deepfake videos with face tubes and a 3D-CNN ensemble (DFDC 'Medics' method).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepfake {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help=f"Data folder (tubes, models, runs). Env: {ENV_DATA}.", show_default=False
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help=f"Cache folder (scan's tubes and scores). Env: {ENV_CACHE}.", show_default=False
    ),
) -> None:
    if data_dir is not None:
        os.environ[ENV_DATA] = str(data_dir)
    if cache_dir is not None:
        os.environ[ENV_CACHE] = str(cache_dir)


for _module in (extract, train, evaluate, scan, report, models, tubes, index):
    _module.register(app)
reflow_app(app)  # after every command is registered


def main() -> None:
    from dfdc_cli.lifecycle import Interrupted, graceful_signals, signal_name

    try:
        with graceful_signals():
            app()
    except UserError as exc:
        from rich.markup import escape

        # escaped: a message may hold brackets (a path, `pip install "deepfake[ray]"`)
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2)
    except Interrupted as exc:
        what = str(exc) or "finished work is saved; run the same command to resume."
        err_console.print(f"[red]interrupted[/red] ({signal_name(exc.signum)}): {what}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code)
