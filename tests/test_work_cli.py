"""`clem-icd db`, `users` and `work` as a user runs them, on SQLite and PostgreSQL: the schema
is the migrations' and agrees with the models, a database behind them is refused in one line
naming the command, tokens are printed once and stored hashed, files are queued all or nothing,
and the exports (JSON Lines, CSV, FHIR R4 checked by fhirclient) carry each note's final codes."""

from __future__ import annotations

import csv
import json

import pytest
from sqlalchemy import select

from clem_icd.workbench import db as workdb
from clem_icd.workbench.models import Base, User
from clem_icd.workbench.store import WorkStore
from clem_icd.workbench.users import authenticate, token_hash

SECRET = "Mrs Quenby Strale presented with fever and productive cough"


def url_of(work_db) -> str:
    return work_db.url.render_as_string(hide_password=False)


def test_the_migrations_make_exactly_the_models_schema(work_db):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with work_db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                       Base.metadata)
    assert differences == []


def test_a_database_without_or_behind_the_schema_is_refused_naming_the_command(run, tmp_path):
    path = tmp_path / "w.db"
    code, _, err = run("users", "list", "--db", path)
    assert code == 2 and err.strip() == f"error: --db {path}: no workbench schema yet; run: clem-icd db upgrade --db {path}"
    code, _, err = run("db", "upgrade", "--db", path)
    assert code == 0 and f"schema at revision {workdb.head_revision()} (was None)" in err
    code, _, err = run("db", "upgrade", "--db", path)
    assert code == 0 and "already current" in err
    database = workdb.Database(path)
    with database.engine.begin() as connection:  # as if made by an older clem-icd
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    code, _, err = run("work", "stats", "--db", path)
    assert code == 2 and "newer than this clem-icd knows" in err
    code, _, err = run("db", "current", "--db", tmp_path / "missing" / "w.db")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err


def test_users_get_a_token_once_and_only_its_hash_is_kept(run, work_db):
    url = url_of(work_db)
    code, token, err = run("users", "add", "ann", "--role", "coder", "--db", url)
    token = token.strip()
    assert code == 0 and len(token) >= 40 and "shown only now" in err
    assert authenticate(work_db, token).name == "ann"
    with work_db.read() as session:
        assert session.scalar(select(User.token_hash)) == token_hash(token) != token
    code, out, _ = run("users", "list", "--db", url)
    assert out.split("\t")[:3] == ["ann", "coder", "enabled"] and token not in out
    assert run("users", "add", "ann", "--role", "coder", "--db", url)[2] == "error: user ann exists already\n"
    assert "--role must be one of coder, auditor, admin" in run("users", "add", "bo", "--role", "boss", "--db", url)[2]
    assert run("users", "disable", "ann", "--db", url)[0] == 0
    assert authenticate(work_db, token) is None


def test_work_add_is_all_or_nothing_and_imports_predict_suggestions(run, work_db, tmp_path):
    url = url_of(work_db)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"id": f"n{i}", "text": f"{SECRET} {i}"}) + "\n" for i in range(3))
                     + json.dumps({"id": "n3", "text": " "}) + "\n")
    code, _, err = run("work", "add", notes, "--db", url)
    assert code == 2 and "empty note" in err and SECRET not in err
    assert WorkStore(work_db).list_notes()["notes"] == []
    notes.write_text("".join(json.dumps({"id": f"n{i}", "text": f"{SECRET} {i}"}) + "\n" for i in range(3)))
    predicted = tmp_path / "pred.jsonl"
    predicted.write_text(json.dumps({"id": "n1", "codes": [{"code": "J18.9", "system": "icd10cm", "score": 0.8,
                                                            "probability": 0.8, "description": "Pneumonia"}]}) + "\n")
    code, _, err = run("work", "add", notes, "--suggestions", predicted, "--db", url)
    assert code == 2 and "--model-name and --model-version" in err
    code, _, err = run("work", "add", notes, "--suggestions", predicted, "--model-name", "m", "--model-version", "v1",
                       "--db", url)
    assert code == 0 and "3 note(s) queued, 0 already there; 1 with suggestions" in err
    statuses = {n["id"]: n["status"] for n in WorkStore(work_db).list_notes()["notes"]}
    assert statuses == {"n0": "queued", "n1": "pre-coded", "n2": "queued"}
    assert "0 note(s) queued, 3 already there" in run("work", "add", notes, "--db", url)[2]
    predicted.write_text(json.dumps({"id": "zz", "codes": []}) + "\n")
    code, _, err = run("work", "add", notes, "--suggestions", predicted, "--model-name", "m", "--model-version", "v1",
                       "--db", url)
    assert code == 2 and err.strip() == f"error: {predicted}:1: note zz is not among the notes given"


def coded_notes(work_db):
    from clem_icd.workbench.users import add_user

    store = WorkStore(work_db)
    ann = authenticate(work_db, add_user(work_db, "ann", "coder"))
    model = {"model_name": "m", "model_version": "v1",
             "codes": [{"code": "J18.9", "system": "icd10cm", "score": 0.8, "probability": 0.8, "description": "Pneumonia"},
                       {"code": "0BH17EZ", "system": "icd10pcs", "score": 0.6, "probability": 0.6}]}
    for note_id in ("a", "b"):
        store.add_notes([{"id": note_id, "text": f"{SECRET} {note_id}"}], suggestions={note_id: model})
        version = store.save_decision(note_id, ann, store.get_note(note_id)["version"],
                                      {"accepted": ["J18.9", "0BH17EZ"] if note_id == "a" else ["J18.9"],
                                       "rejected": [] if note_id == "a" else ["0BH17EZ"],
                                       "added": [{"code": "E11.9", "system": "icd10cm"}], "principal_code": "J18.9"})
        store.submit(note_id, ann, version)
    return store


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "fhir"])
def test_export_writes_the_final_codes(run, work_db, tmp_path, fmt):
    coded_notes(work_db)
    out = tmp_path / f"final.{fmt}"
    code, _, err = run("work", "export", "--db", url_of(work_db), "--format", fmt, "--out", out)
    assert code == 0 and "2 note(s)" in err
    text = out.read_text()
    assert SECRET not in text
    expected = {"a": {"J18.9", "0BH17EZ", "E11.9"}, "b": {"J18.9", "E11.9"}}  # rejected codes are not final
    if fmt == "jsonl":
        records = [json.loads(line) for line in text.splitlines()]
        assert {r["id"]: {c["code"] for c in r["codes"]} for r in records} == expected
        assert all(r["coded_by"] == "ann" and r["principal_code"] == "J18.9" for r in records)
    elif fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        found = {}
        for row in rows:
            found.setdefault(row["id"], set()).add(row["code"])
        assert found == expected
        assert {row["principal"] for row in rows if row["code"] == "J18.9"} == {"true"}
    else:
        from fhirclient.models import bundle as fhirclient

        bundle = json.loads(text)
        fhirclient.Bundle(bundle)  # strict R4 parse
        found = {}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            note = resource["subject"]["identifier"]["value"]
            found.setdefault(note, set()).add(resource["code"]["coding"][0]["code"])
        assert found == expected
        kinds = {e["resource"]["code"]["coding"][0]["code"]: e["resource"]["resourceType"] for e in bundle["entry"]}
        assert kinds["0BH17EZ"] == "Procedure" and kinds["J18.9"] == "Condition"


def test_export_can_purge_exported_text(run, work_db, tmp_path):
    store = coded_notes(work_db)
    code, _, err = run("work", "export", "--db", url_of(work_db), "--out", tmp_path / "x.jsonl",
                       "--purge-text-after-export")
    assert code == 0 and "their text purged" in err
    assert store.get_note("a")["text"] is None
    assert [e["action"] for e in store.history("a")][-1] == "text purged"
    code, out, _ = run("work", "stats", "--db", url_of(work_db), "--json")
    stats = json.loads(out)
    assert stats["notes"]["coded"] == 2
    assert stats["models"][0]["accepted"] == 3 and stats["models"][0]["rejected"] == 1
