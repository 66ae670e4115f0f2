"""Options that several sub-commands take with one meaning, defined once."""

from __future__ import annotations

import typer

DEVICE = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
PRECISION = typer.Option("auto", "--precision", help="auto (bf16 where the device runs it natively, else "
                         "fp32), fp32, bf16 or fp16.")
