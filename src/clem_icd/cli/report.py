"""`clem-icd report`: several output folders → one results table (Markdown and CSV)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def report(
    folders: list[Path] = typer.Argument(..., metavar="FOLDER...", help="Output folders: of clem-icd evaluate "
                                         "(metrics.json with results: a row per column), of train --seeds "
                                         "(seeds.json: mean ± sd over the seeds), or of train (metrics.json: "
                                         "its val metrics)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="PREFIX", help="Writes PREFIX.md and PREFIX.csv."),
) -> None:
    """A results table as papers report them: a row per (folder, column), metrics in %, ± the
    sample sd over seeds, the bootstrap 95% interval (low, high) where evaluate --bootstrap gave
    one, and the command (the folder's command.json) that reproduces the row. The Markdown table
    is printed too."""
    from clem_icd.evaluation.results_table import markdown, read_folders, write_results_table

    rows = read_folders(folders)  # every folder is read before anything is written
    md, table = write_results_table(rows, out)
    typer.echo(markdown(rows), nl=False)
    console.print(f"[green]wrote[/] {md}, {table} ({len(rows)} rows)")
