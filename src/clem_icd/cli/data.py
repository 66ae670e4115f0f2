"""`clem-icd data ...`: look at prepared datasets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from clem_icd.atomic import write_json_atomic

app = typer.Typer(help="Inspect prepared datasets.", no_args_is_help=True)

SHOWN_UNSEEN = 20  # codes listed in the table; --json has them all


@app.command("stats")
def stats(
    folder: Path = typer.Argument(..., metavar="DIR", help="A prepared dataset folder."),
    tokenizer: str = typer.Option(None, "--tokenizer", metavar="NAME_OR_PATH",
                                  help="Hugging Face tokenizer (name or local folder) for token "
                                       "lengths (no special tokens, no truncation)."),
    json_file: Path = typer.Option(None, "--json", metavar="FILE",
                                   help="Also write the statistics as JSON (written atomically)."),
) -> None:
    """Documents, codes, labels per document, lengths and unseen/rare codes, per split and overall.
    Prints numbers and codes only, never note text."""
    from clem_icd.data.stats import dataset_stats  # keeps `clem-icd --help` fast

    result = dataset_stats(folder, tokenizer=tokenizer)
    render(result, Console())
    if json_file is not None:
        write_json_atomic(result, json_file)


def render(result: dict, console: Console) -> None:
    columns = {**result["splits"], "all": result["all"]}
    table = Table(title=f"Dataset statistics: {result['dataset']}", title_justify="left")
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right")

    def row(label: str, get) -> None:
        table.add_row(label, *(_fmt(get(block)) for block in columns.values()))

    row("documents", lambda b: b["documents"])
    row("documents without codes", lambda b: b["documents_without_codes"])
    row("distinct codes", lambda b: b["codes"]["total"])
    systems = sorted({s for b in columns.values() for s in b["codes"]["by_system"]})
    for system in systems:
        row(f"  {system}", lambda b, s=system: b["codes"]["by_system"].get(s, 0))
    row("codes not in train", lambda b: b.get("codes_not_in_train", {}).get("count"))
    table.add_section()
    for key in ("mean", "median", "min", "max"):
        row(f"labels/doc {key}", lambda b, k=key: b["labels_per_document"][k])
    for unit in ("words", "tokens"):
        if unit not in result["all"]:
            continue
        table.add_section()
        for key in result["all"][unit]:
            row(f"{unit} {key}", lambda b, u=unit, k=key: b[u][k])
    console.print(table)

    rare = result["rare_codes"]
    freq = Table(title=f"Training documents per code ({rare['codes']:,} codes)",
                 title_justify="left")
    for name, justify in (("", "left"), ("codes", "right"), ("share", "right")):
        freq.add_column(name, justify=justify)
    for key, value in rare.items():
        if key != "codes":
            share = "–" if value["share"] is None else f"{value['share']:.1%}"
            freq.add_row(key.replace("_", " "), f"{value['count']:,}", share)
    console.print(freq)

    unseen = {name: b["codes_not_in_train"] for name, b in columns.items()
              if "codes_not_in_train" in b}
    if any(u["count"] for u in unseen.values()):
        table = Table(title="Codes not in train", title_justify="left")
        table.add_column("split")
        table.add_column("count", justify="right")
        table.add_column(f"codes (first {SHOWN_UNSEEN})")
        for name, u in unseen.items():
            more = f" … (+{u['count'] - SHOWN_UNSEEN:,})" if u["count"] > SHOWN_UNSEEN else ""
            table.add_row(name, f"{u['count']:,}", ", ".join(u["codes"][:SHOWN_UNSEEN]) + more)
        console.print(table)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"
