"""The `clem-icd` command. Sub-commands live in one module per concern."""

from __future__ import annotations

import os
import sys

# Library chatter (weight-loading reports, hub progress bars) is not for our users' terminals.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import typer

from clem_icd.cli import data as data_cli
from clem_icd.cli import evaluate_evidence as evaluate_evidence_cli
from clem_icd.cli import fuse as fuse_cli
from clem_icd.cli import match as match_cli
from clem_icd.cli import model as model_cli
from clem_icd.cli import predict as predict_cli
from clem_icd.cli import prepare as prepare_cli
from clem_icd.cli import report as report_cli
from clem_icd.cli import serve as serve_cli
from clem_icd.cli import work as work_cli
from clem_icd.errors import ClemError
from clem_icd.progress import set_enabled
from clem_icd.version import __version__

app = typer.Typer(
    name="clem-icd",
    help="Automated ICD-10 coding of clinical notes (PLM-ICD with long-context encoders).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(prepare_cli.app, name="prepare")
app.add_typer(data_cli.app, name="data")
app.command("train")(model_cli.train)
app.command("tokenize")(model_cli.tokenize)
app.command("evaluate")(model_cli.evaluate)
app.command("fuse")(fuse_cli.fuse)
app.command("match")(match_cli.match)
app.command("predict")(predict_cli.predict)
app.command("evaluate-evidence")(evaluate_evidence_cli.evaluate_evidence)
app.command("report")(report_cli.report)
app.command("serve")(serve_cli.serve)
app.add_typer(work_cli.db_app, name="db")
app.add_typer(work_cli.users_app, name="users")
app.add_typer(work_cli.work_app, name="work")
app.command("demo")(model_cli.demo)
app.command("recipes")(model_cli.recipes)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clem-icd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    set_enabled(not quiet)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2; unexpected errors
    print only their type (their message could quote note text) unless CLEM_ICD_DEBUG=1."""
    try:
        app(args=model_cli.bare_resume(sys.argv[1:]))
    except ClemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("CLEM_ICD_DEBUG") == "1":
            raise
        print(f"internal error: {exc.__class__.__name__} (set CLEM_ICD_DEBUG=1 for details; "
              "they may include note text)", file=sys.stderr)
        sys.exit(1)

