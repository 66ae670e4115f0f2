"""The command line that reproduces a sub-command's output folder, spelt from its parsed options.

It is spelt from the parsed values (the command's typer.Context) rather than copied from
sys.argv: sys.argv is not the command when the CLI is called from Python (tests, notebooks), and
a command that made several folders (train --seeds) must be rewritten per folder. Options left at
their default are left out; positional arguments come last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import typer

from clem_icd.run_record import write_command_record

PROGRAM = "clem-icd"


def command_line(ctx: typer.Context, *, values: Mapping | None = None, drop: Iterable[str] = (),
                 append: Iterable[str] = ()) -> list[str]:
    """[clem-icd, sub-command, options..., arguments..., *append] of the invocation `ctx`, with
    the parameters in `values` (by parameter name) replaced and those in `drop` left out."""
    given = {**ctx.params, **(values or {})}
    dropped = set(drop)
    options, arguments = [], []
    for param in ctx.command.params:
        if param.name in dropped or param.name not in given:
            continue
        value = given[param.name]
        if param.param_type_name == "argument":
            arguments += [str(v) for v in _listed(value)]
        elif param.param_type_name == "option":
            options += _spelt(param, value)
    return [PROGRAM, ctx.info_name, *options, *arguments, *append]


def _listed(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _spelt(param, value) -> list[str]:
    if value is None or value == param.default or value in ((), []):
        return []
    long = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
    if param.is_flag and isinstance(value, bool):
        if value:
            return [long]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    out = []
    for item in _listed(value):
        out += [long, str(item)]
    return out


def record_command(folder: Path | str, ctx: typer.Context, *, values: Mapping | None = None,
                   drop: Iterable[str] = (), append: Iterable[str] = (), **extra) -> Path:
    """FOLDER/command.json for the invocation `ctx` (see command_line); `extra` keys beside."""
    return write_command_record(folder, command_line(ctx, values=values, drop=drop, append=append), **extra)
