"""`clem-icd prepare feedback --db URL --out DIR` on SQLite and PostgreSQL: the dataset's labels
are the accepted + added codes of each finished note's latest decision, read here straight from
the tables (not through WorkStore); rejected codes never appear; notes still in the worklist are
left out; purged notes are skipped and counted in one line; the split is seeded and covers the
notes once; the manifest names the database without its password; note text never reaches the
console; and the dataset trains (slow test)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from sqlalchemy import func, select

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.synthetic import COMMON_CODES, synthetic_note
from clem_icd.workbench import db as workdb
from clem_icd.workbench.models import Decision, DecisionCode, Note
from clem_icd.workbench.store import WorkStore
from clem_icd.workbench.users import add_user, authenticate

SECRET = "Mrs Quenby Strale presented with fever"
POOL = list(COMMON_CODES[:8])
PCS = "0BH17EZ"


def url_of(work_db, password: str | None = None) -> str:
    url = work_db.url if password is None else work_db.url.set(password=password)
    return url.render_as_string(hide_password=False)


def build(work_db, n: int = 30, seed: int = 0) -> dict[str, str]:
    """`n` pre-coded notes worked on in every way a coder and an auditor can: coded once, coded
    twice (the latest decision counts), audited as is or corrected, left in review or queued.
    Returns {note id: what became of it}."""
    rng = np.random.default_rng(seed)
    store = WorkStore(work_db)
    ann = authenticate(work_db, add_user(work_db, "ann", "coder"))
    bea = authenticate(work_db, add_user(work_db, "bea", "auditor"))
    fate = {}
    for i in range(n):
        note_id = f"n{i:03d}"
        true = [POOL[j] for j in sorted(rng.choice(len(POOL), size=int(rng.integers(1, 4)), replace=False))]
        text, _ = synthetic_note(true, rng, negated=[])
        suggested = sorted(set(true[:-1]) | {POOL[int(rng.integers(len(POOL)))], PCS})
        model = {"model_name": "m", "model_version": "v1",
                 "codes": [{"code": c, "system": "icd10pcs" if c == PCS else "icd10cm", "score": 0.5}
                           for c in suggested]}
        store.add_notes([{"id": note_id, "text": f"{SECRET}. {text}"}], suggestions={note_id: model})
        if i % 10 == 9:
            fate[note_id] = "pre-coded"
            continue
        accepted = [c for c in suggested if c in true or (c == PCS and i % 3 == 0)]
        decision = {"accepted": accepted, "rejected": [c for c in suggested if c not in accepted],
                    # a code added without a system: told apart by its shape
                    "added": [{"code": c, "system": "" if i % 2 else "icd10cm"} for c in true if c not in suggested]}
        version = store.get_note(note_id)["version"]
        if i % 4 == 1:  # a first decision the coder then changed: only the latest counts
            version = store.save_decision(note_id, ann, version, {"accepted": [], "rejected": suggested,
                                                                  "added": [{"code": "R55", "system": "icd10cm"}]})
        version = store.save_decision(note_id, ann, version, decision)
        if i % 10 == 8:
            fate[note_id] = "in review"
            continue
        version = store.submit(note_id, ann, version)
        fate[note_id] = "coded"
        if i % 3 == 0:
            correction = None
            if i % 6 == 0:  # the auditor rejects everything and adds one code
                correction = {"accepted": [], "rejected": suggested, "added": [{"code": "D64.9", "system": "icd10cm"}]}
            store.audit_note(note_id, bea, version, "approved", correction)
            fate[note_id] = "audited"
    return fate


def final_codes(work_db, statuses=("coded", "audited")) -> dict[str, set[str]]:
    """The independent computation: for each finished note, its latest decision's codes that
    were not rejected."""
    with work_db.read() as session:
        latest = (select(Decision.note_seq, func.max(Decision.id).label("id")).group_by(Decision.note_seq)).subquery()
        notes = session.execute(select(Note.id, latest.c.id).join(latest, latest.c.note_seq == Note.seq)
                                .where(Note.status.in_(statuses))).all()
        out = {}
        for note_id, decision_id in notes:
            out[note_id] = set(session.scalars(select(DecisionCode.code).where(
                DecisionCode.decision_id == decision_id, DecisionCode.verdict != "rejected")))
    return out


def rejected_codes(work_db) -> dict[str, set[str]]:
    with work_db.read() as session:
        latest = (select(Decision.note_seq, func.max(Decision.id).label("id")).group_by(Decision.note_seq)).subquery()
        rows = session.execute(select(Note.id, DecisionCode.code).join(latest, latest.c.note_seq == Note.seq)
                               .join(DecisionCode, DecisionCode.decision_id == latest.c.id)
                               .where(DecisionCode.verdict == "rejected")).all()
    out: dict[str, set[str]] = {}
    for note_id, code in rows:
        out.setdefault(note_id, set()).add(code)
    return out


def documents(folder) -> pl.DataFrame:
    return pl.read_parquet(folder / "documents.parquet")


def test_the_dataset_holds_each_finished_note_with_its_latest_final_codes(run, work_db, tmp_path):
    fate = build(work_db)
    purged = ["n000", "n004"]  # one audited, one coded
    assert [fate[i] for i in purged] == ["audited", "coded"]
    WorkStore(work_db).mark_exported(purged, purge_text=True)
    out = tmp_path / "feedback"
    password = "s3cret-pw" if not work_db.is_sqlite else None  # trust auth: PostgreSQL ignores it
    code, stdout, err = run("prepare", "feedback", "--db", url_of(work_db, password), "--out", out)
    assert code in (0, None), err
    assert SECRET not in stdout + err
    lines = err.splitlines()
    finished = [i for i, f in fate.items() if f in ("coded", "audited")]
    assert lines[0] == (f"skipped 2 of {len(finished)} finished note(s): their text was purged, so there is "
                        "nothing to learn from")

    expected = final_codes(work_db)
    assert set(expected) == set(finished)
    frame = documents(out)
    got = dict(zip(frame["id"].to_list(), frame["codes"].to_list()))
    assert set(got) == set(finished) - set(purged)
    assert frame["id"].to_list() == sorted(got)  # queue order
    for note_id, codes in got.items():
        assert set(codes) == expected[note_id], note_id
        assert not set(codes) & rejected_codes(work_db).get(note_id, set())
        assert len(codes) == len(set(codes))
    assert set(got["n006"]) == {"D64.9"}  # the auditor's correction, not the coder's codes
    texts = dict(zip(frame["id"].to_list(), frame["text"].to_list()))
    assert all(texts[i] == WorkStore(work_db).get_note(i)["text"] for i in got)

    splits = frame["split"].to_list()
    assert set(splits) <= {"train", "val", "test"} and splits.count("train") >= len(splits) * 0.7
    assert splits.count("val") >= 1 and splits.count("test") >= 1

    codes_tsv = pl.read_csv(out / "codes.tsv", separator="\t")
    systems = dict(zip(codes_tsv["code"].to_list(), codes_tsv["system"].to_list()))
    assert systems[PCS] == "icd10pcs" and all(systems[c] == "icd10cm" for c in systems if c != PCS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "feedback"
    database = manifest["database"]
    assert database["revision"] == workdb.head_revision()
    assert database["backend"] == ("sqlite" if work_db.is_sqlite else "postgresql")
    assert database["statuses"] == ["coded", "audited"] and database["exported_at"]
    if password:
        assert password not in (out / "manifest.json").read_text() + err and "***" in database["name"]
    else:
        assert database["name"] == work_db.url.database
    assert manifest["counts"]["notes_finished"] == len(finished)
    assert manifest["counts"]["notes_text_purged"] == 2
    assert manifest["counts"]["documents"] == len(got)
    assert manifest["options"]["seed"] == 42 and "stratification" in manifest["options"]["split_method"]
    assert PreparedDataset.load(out).code_list == codes_tsv["code"].to_list()

    # Preparing is not exporting: nothing was marked, nothing more purged.
    with work_db.read() as session:
        assert session.scalar(select(func.count()).where(Note.exported_at.is_not(None))) == 2


def test_audited_only_and_the_seed(run, work_db, tmp_path):
    fate = build(work_db)
    url = url_of(work_db)
    code, _, err = run("prepare", "feedback", "--db", url, "--out", tmp_path / "a", "--audited-only")
    assert code in (0, None) and "skipped" not in err, err
    frame = documents(tmp_path / "a")
    assert set(frame["id"]) == {i for i, f in fate.items() if f == "audited"}
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["database"]["statuses"] == ["audited"]

    for name, seed in (("s1", "1"), ("s1again", "1"), ("s2", "2")):
        code, _, err = run("prepare", "feedback", "--db", url, "--out", tmp_path / name, "--seed", seed)
        assert code in (0, None), err
    one, again, two = (documents(tmp_path / n) for n in ("s1", "s1again", "s2"))
    assert one["split"].to_list() == again["split"].to_list()
    assert set(one["id"]) == set(two["id"]) and one["split"].to_list() != two["split"].to_list()

    code, _, err = run("prepare", "feedback", "--db", url, "--out", tmp_path / "s1")
    assert code == 2 and "output folder exists" in err
    assert run("prepare", "feedback", "--db", url, "--out", tmp_path / "s1", "--overwrite")[0] in (0, None)


def test_no_notes_to_learn_from_is_one_line(run, work_db, tmp_path):
    url, out = url_of(work_db), tmp_path / "out"
    code, _, err = run("prepare", "feedback", "--db", url, "--out", out)
    assert code == 2 and err.count("\n") == 1
    assert err == f"error: --db {work_db.name}: no finished notes to learn from (none coded or audited with these options)\n"
    fate = build(work_db, n=6)
    finished = [i for i, f in fate.items() if f in ("coded", "audited")]
    WorkStore(work_db).mark_exported(finished, purge_text=True)
    code, _, err = run("prepare", "feedback", "--db", url, "--out", out)
    assert code == 2 and err.count("\n") == 1 and f"all {len(finished)} finished note(s) had their text purged" in err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_a_code_that_is_no_icd_code_names_the_note_not_its_text(run, work_db, tmp_path):
    store = WorkStore(work_db)
    ann = authenticate(work_db, add_user(work_db, "ann", "coder"))
    store.add_notes([{"id": "x1", "text": SECRET}],
                    suggestions={"x1": {"model_name": "m", "model_version": "v1", "codes": []}})
    version = store.save_decision("x1", ann, store.get_note("x1")["version"],
                                  {"added": [{"code": "NOT-A-CODE", "system": ""}]})
    store.submit("x1", ann, version)
    code, _, err = run("prepare", "feedback", "--db", url_of(work_db), "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and SECRET not in err
    assert f"--db {work_db.name}: note 'x1'" in err and "NOT-A-CODE" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_feedback_dataset_trains_from_a_model(run, work_db, tmp_path, trigger_model):
    """The loop of the issue: a model's codes, judged by coders, train the model further."""
    if not work_db.is_sqlite:
        pytest.skip("one database is enough to show it trains; the reading is tested on both")
    from model_fixtures import minilm_path, tiny_bert

    build(work_db, n=40)
    data = tmp_path / "feedback"
    assert run("prepare", "feedback", "--db", url_of(work_db), "--out", data)[0] in (0, None)
    # the recipe must be the trigger model's architecture (tests/trigger_fixture.py)
    values = {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(tiny_bert()),
              "model.head": "laat", "model.max_length": 512, "model.chunk_size": 512, "model.attention_dim": 32,
              "data.batch_size": 8, "data.micro_batch_size": 8, "data.eval_batch_size": 16,
              "optim.warmup_steps": 0, "train.epochs": 1, "train.mixed_precision": "no"}
    tuned = tmp_path / "tuned"
    code, _, err = run("train", "--data", data, "--output", tuned, "--init-from", trigger_model,
                       *[f"{k}={v}" for k, v in values.items()])
    assert code in (0, None), err
    log = [json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 1 and np.isfinite(log[0]["train_loss"])
    config = json.loads((tuned / "config.json").read_text())
    assert set(PreparedDataset.load(data, text=False).code_list) <= set(config["codes"])
