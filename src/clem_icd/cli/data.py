"""`clem-icd data ...`: look at prepared datasets."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect prepared datasets.", no_args_is_help=True)
