"""`clem-icd db`, `clem-icd users` and `clem-icd work`: the workbench's database, its users and
its notes, from the command line (the same rules as the HTTP API: clem_icd.workbench.store).
They need the 'work' extra."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from clem_icd.errors import ClemError

console = Console(stderr=True, soft_wrap=True)
DB = typer.Option(..., "--db", help="The workbench database: a SQLite file path, or a URL such as "
                  "postgresql+psycopg://user@host/dbname.")

db_app = typer.Typer(no_args_is_help=True, help="The workbench database's schema (Alembic migrations).")
users_app = typer.Typer(no_args_is_help=True, help="The workbench's users: coders, auditors and admins.")
work_app = typer.Typer(no_args_is_help=True, help="The workbench's notes: queue them, export the final codes, "
                       "count what the coders made of the suggestions.")


def _workbench():
    try:
        from clem_icd.workbench import db
    except ImportError as exc:
        raise ClemError(f"the workbench needs the 'work' extra: pip install 'clem-icd[work]' ({exc.name} is "
                        "missing)") from None
    return db


# ---------------------------------------------------------------------------- db


@db_app.command("upgrade")
def upgrade(db: str = DB) -> None:
    """Create the schema, or bring it to this version's (safe to run again; back up first)."""
    database = _workbench().Database(db)
    before, now = _workbench().upgrade(database)
    console.print(f"{database.name}: schema at revision {now}" + (f" (was {before})" if before != now
                                                                   else " (already current)"))


@db_app.command("current")
def current(db: str = DB) -> None:
    """Print the schema's revision and this version's."""
    module = _workbench()
    database = module.Database(db)
    typer.echo(f"database {module.current_revision(database) or 'none'}, code {module.head_revision()}")


# ---------------------------------------------------------------------------- users


@users_app.command("add")
def users_add(name: str = typer.Argument(..., help="The user's name (no spaces)."),
              role: str = typer.Option(..., "--role", help="coder, auditor or admin."), db: str = DB) -> None:
    """Make a user and print their token, once: only its hash is stored."""
    from clem_icd.workbench.users import add_user

    token = add_user(_workbench().open_database(db), name, role)
    typer.echo(token)
    console.print(f"user {name} ({role}) added; the token above is shown only now")


@users_app.command("list")
def users_list(db: str = DB) -> None:
    """Name, role, state and creation time of each user (never a token)."""
    from clem_icd.workbench.users import list_users

    for user in list_users(_workbench().open_database(db)):
        state = "disabled" if user["disabled"] else "enabled"
        typer.echo(f"{user['name']}\t{user['role']}\t{state}\t{user['created_at']}")


@users_app.command("disable")
def users_disable(name: str = typer.Argument(...), db: str = DB) -> None:
    """Refuse the user's token from now on (their decisions stay, with their name)."""
    from clem_icd.workbench.users import disable_user

    disable_user(_workbench().open_database(db), name)
    console.print(f"user {name} disabled")


# ---------------------------------------------------------------------------- work


@work_app.command("add")
def work_add(
    inputs: list[str] = typer.Argument(..., metavar="FILE...", help="Notes: JSON Lines, CSV, TSV or Parquet "
                                       "(with --id-field and --text-field), or text files (the id is the name)."),
    db: str = DB,
    id_field: str = typer.Option("id", "--id-field"),
    text_field: str = typer.Option("text", "--text-field"),
    suggestions: Path = typer.Option(None, "--suggestions", help="A `clem-icd predict` output (JSON Lines) for "
                                     "these notes: its codes become their suggestions and they skip pre-coding."),
    model_name: str = typer.Option(None, "--model-name", help="With --suggestions: the model that made them."),
    model_version: str = typer.Option(None, "--model-version", help="With --suggestions: its version."),
) -> None:
    """Queue notes for coding (a note already queued with the same text is left as it is). All or
    nothing: one bad record stops the whole file, naming it."""
    from clem_icd.inference.inputs import read_notes
    from clem_icd.workbench.store import WorkStore

    database = _workbench().open_database(db)
    notes = []
    for record in read_notes(inputs, id_field=id_field, text_field=text_field):
        if record.error:
            raise ClemError(record.error)
        notes.append({"id": record.id, "text": record.text})
    precomputed = _suggestions(suggestions, model_name, model_version, {n["id"] for n in notes}) if suggestions else None
    result = WorkStore(database).add_notes(notes, suggestions=precomputed)
    console.print(f"{len(result['added'])} note(s) queued, {len(result['existing'])} already there"
                  + (f"; {len(precomputed)} with suggestions from {suggestions}" if precomputed else ""))


def _suggestions(path: Path, model_name: str | None, model_version: str | None, ids: set[str]) -> dict:
    if not model_name or not model_version:
        raise ClemError("--suggestions needs --model-name and --model-version (what made them)")
    found = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClemError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            note_id, codes = record["id"], record["codes"]
            for code in codes:
                code["code"], float(code["score"])  # noqa: B018 - present and numeric
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ClemError(f"{path}:{number}: not a `clem-icd predict` record (id, codes with code and score)") from None
        if note_id not in ids:
            raise ClemError(f"{path}:{number}: note {note_id} is not among the notes given")
        found[note_id] = {"model_name": model_name, "model_version": model_version, "codes": codes}
    return found


@work_app.command("export")
def work_export(
    db: str = DB,
    out: Path = typer.Option(..., "--out", "-o", help="The file to write (atomically)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (a record per note), csv (a row per code) or fhir "
                            "(a FHIR R4 Bundle)."),
    audited_only: bool = typer.Option(False, "--audited-only", help="Only audited notes (default: coded and "
                                      "audited)."),
    purge_text: bool = typer.Option(False, "--purge-text-after-export", help="Then delete the exported notes' "
                                    "text (codes, decisions and the audit log stay)."),
) -> None:
    """The final codes of the finished notes, with who coded and audited each."""
    from clem_icd.atomic import write_text_atomic
    from clem_icd.workbench.export import FORMATS, export_pieces
    from clem_icd.workbench.store import WorkStore

    if fmt not in FORMATS:
        raise ClemError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    store = WorkStore(_workbench().open_database(db))
    statuses = ("audited",) if audited_only else ("coded", "audited")
    counted = []

    def records():
        # Marked exported (and purged) only once the file is in place: see below.
        for record in store.export(statuses, mark=False):
            counted.append(record["id"])
            yield record

    write_text_atomic(export_pieces(records(), fmt), out)
    store.mark_exported(counted, purge_text=purge_text)
    console.print(f"wrote {out}: {len(counted)} note(s)" + ("; their text purged" if purge_text else ""))


@work_app.command("stats")
def work_stats(db: str = DB, as_json: bool = typer.Option(False, "--json", help="As JSON.")) -> None:
    """Notes per status, and per model version and per code what the coders accepted, rejected
    and added (the model's misses), from each note's latest decision."""
    from clem_icd.workbench.store import WorkStore

    stats = WorkStore(_workbench().open_database(db)).stats()
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    typer.echo("  ".join(f"{status}: {count}" for status, count in stats["notes"].items()))
    for model in stats["models"]:
        rate = "n/a" if model["acceptance_rate"] is None else f"{model['acceptance_rate']:.1%}"
        typer.echo(f"{model['model_name']} {model['model_version']}: accepted {model['accepted']}, rejected "
                   f"{model['rejected']}, added {model['added']}, acceptance {rate}")
    for code in stats["codes"]:
        typer.echo(f"  {code['code']}\taccepted {code['accepted']}\trejected {code['rejected']}\tadded {code['added']}")


@work_app.command("requeue")
def work_requeue(db: str = DB) -> None:
    """Give queued notes whose pre-coding failed repeatedly another chance."""
    from clem_icd.workbench.store import WorkStore

    count = WorkStore(_workbench().open_database(db)).requeue_failed()
    console.print(f"{count} note(s) requeued")
