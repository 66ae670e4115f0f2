"""The workbench's rules, on SQLite and on PostgreSQL alike (the `work_db` fixture runs each test
on both): enqueueing is idempotent, the worklist pages by keyset, a stale version never overwrites
a newer decision, roles are enforced, pre-coding stores a note's suggestions once, and the audit
log carries no note text."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from clem_icd.workbench import users
from clem_icd.workbench.errors import Conflict, Forbidden, Invalid, NotFound, Stale
from clem_icd.workbench.models import AuditEvent, Decision, Note, Suggestion
from clem_icd.workbench.store import WorkStore

SECRET = "Patient Zebediah Quux, 71, admitted with left lower lobe pneumonia"  # a marker never logged


def actor(db, name, role):
    token = users.add_user(db, name, role)
    return users.authenticate(db, token)


def suggestions(*codes):
    return {"model_name": "m", "model_version": "abc123",
            "codes": [{"code": c, "system": "icd10cm", "description": f"d {c}", "score": 0.9 - 0.1 * i,
                       "probability": 0.9 - 0.1 * i, "evidence": [{"start": 0, "end": 7, "score": 1.0, "text": "Patient"}]}
                      for i, c in enumerate(codes)]}


@pytest.fixture
def store(work_db):
    return WorkStore(work_db)


def precoded(store, note_id="n1", codes=("J18.9", "I10")):
    store.add_notes([{"id": note_id, "text": f"{SECRET} {note_id}"}], suggestions={note_id: suggestions(*codes)})
    return store.get_note(note_id)["version"]


def test_enqueue_is_idempotent_by_id_and_refuses_another_text_under_a_known_id(store, work_db):
    assert store.add_notes([{"id": "a", "text": "one"}, {"id": "b", "text": "two"}]) == {"added": ["a", "b"], "existing": []}
    assert store.add_notes([{"id": "b", "text": "two"}, {"id": "c", "text": "three"}, {"id": "c", "text": "three"}]) \
        == {"added": ["c"], "existing": ["b", "c"]}
    with pytest.raises(Conflict, match=r"notes\.1: note a is queued already with another text"):
        store.add_notes([{"id": "d", "text": "four"}, {"id": "a", "text": "changed"}])
    with work_db.read() as session:  # the refused batch left nothing behind (d neither)
        assert sorted(session.scalars(select(Note.id))) == ["a", "b", "c"]
    with pytest.raises(Invalid, match=r"notes\.0\.text: empty note"):
        store.add_notes([{"id": "e", "text": "  \n"}])


def test_concurrent_enqueues_of_the_same_notes_make_one_row_each(store, work_db):
    notes = [{"id": f"n{i}", "text": f"note {i}"} for i in range(40)]
    results, errors = [], []

    def send():
        try:
            results.append(store.add_notes(notes))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(len(r["added"]) for r in results) == 40
    with work_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Note)) == 40


def test_the_worklist_pages_by_keyset_and_filters(store, work_db):
    store.add_notes([{"id": f"n{i:02d}", "text": f"t{i}"} for i in range(7)])
    coder = actor(work_db, "ann", "coder")
    precoded(store, "p1")
    store.claim("p1", coder)
    seen, cursor = [], None
    while True:
        page = store.list_notes(limit=3, cursor=cursor)
        seen += [n["id"] for n in page["notes"]]
        store.add_notes([{"id": f"late{len(seen)}", "text": "x"}])  # later notes join the end, not the page
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:8] == [f"n{i:02d}" for i in range(7)] + ["p1"]
    assert len(seen) == len(set(seen))
    assert [n["id"] for n in store.list_notes(status="in review")["notes"]] == ["p1"]
    assert [n["id"] for n in store.list_notes(assignee="ann")["notes"]] == ["p1"]
    assert store.list_notes(status="queued", limit=2)["next_cursor"] is not None
    with pytest.raises(Invalid, match="status"):
        store.list_notes(status="done")


def test_a_stale_version_never_overwrites_a_newer_decision(store, work_db):
    version = precoded(store)
    ann, bob = actor(work_db, "ann", "coder"), actor(work_db, "bob", "coder")
    v2 = store.save_decision("n1", ann, version, {"accepted": ["J18.9"], "rejected": ["I10"], "principal_code": "J18.9"})
    assert v2 == version + 1
    with pytest.raises(Stale, match=f"since version {version}"):  # bob read the same version
        store.save_decision("n1", bob, version, {"rejected": ["J18.9"]})
    with pytest.raises(Conflict, match="in review by ann"):  # with the fresh version: ann has it
        store.save_decision("n1", bob, v2, {"rejected": ["J18.9"]})
    decision = store.get_note("n1")["decision"]
    assert (decision["by"], decision["accepted"], decision["rejected"]) == ("ann", ["J18.9"], ["I10"])


def test_racing_saves_with_one_version_let_exactly_one_win(store, work_db):
    version = precoded(store)
    coders = [actor(work_db, f"c{i}", "coder") for i in range(4)]
    outcomes = []

    def save(coder):
        try:
            store.save_decision("n1", coder, version, {"accepted": ["J18.9"]})
            outcomes.append("won")
        except (Stale, Conflict):
            outcomes.append("refused")

    threads = [threading.Thread(target=save, args=(c,)) for c in coders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]
    with work_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Decision)) == 1


def test_decisions_are_checked_against_the_suggestions(store, work_db):
    version = precoded(store)
    ann = actor(work_db, "ann", "coder")
    cases = [({"accepted": ["E11.9"]}, r"accepted\.0: E11\.9 is not among the note's suggestions"),
             ({"added": [{"code": "I10", "system": "icd10cm"}]}, r"added\.0: I10 is a suggestion"),
             ({"accepted": ["I10"], "rejected": ["I10"]}, r"rejected\.0: I10 is also accepted"),
             ({"accepted": ["I10"], "principal_code": "J18.9"}, "principal_code"),
             ({"accepted": [""]}, r"accepted\.0: a code of 1 to 32")]
    for decision, message in cases:
        with pytest.raises(Invalid, match=message):
            store.save_decision("n1", ann, version, decision)
    assert store.get_note("n1")["version"] == version  # nothing refused changed the note


def test_the_life_of_a_note_and_its_roles(store, work_db):
    version = precoded(store)
    ann, audrey, root = actor(work_db, "ann", "coder"), actor(work_db, "audrey", "auditor"), actor(work_db, "root", "admin")
    with pytest.raises(Forbidden, match="an auditor may not claim"):
        store.claim("n1", audrey)
    with pytest.raises(Conflict, match="no decision to submit"):
        store.submit("n1", ann, store.claim("n1", ann))
    version = store.get_note("n1")["version"]
    version = store.save_decision("n1", ann, version, {"accepted": ["J18.9"], "rejected": ["I10"],
                                                       "added": [{"code": "E11.9", "system": "icd10cm"}],
                                                       "principal_code": "J18.9", "reason": "reviewed"})
    with pytest.raises(Forbidden, match="a coder may not audit"):
        store.audit_note("n1", ann, version, "approved")
    version = store.submit("n1", ann, version)
    with pytest.raises(Conflict, match="can no longer be coded"):
        store.save_decision("n1", ann, version, {"accepted": ["I10"]})
    version = store.audit_note("n1", audrey, version, "returned")
    assert store.get_note("n1")["status"] == "in review"
    version = store.submit("n1", ann, version)
    store.audit_note("n1", audrey, version, "approved", {"accepted": ["J18.9", "I10"], "principal_code": "J18.9"})
    note = store.get_note("n1")
    assert (note["status"], note["decision"]["kind"], note["decision"]["by"]) == ("audited", "audit", "audrey")
    [record] = store.export()
    assert [c["code"] for c in record["codes"]] == ["I10", "J18.9"]
    assert (record["coded_by"], record["audited_by"], record["corrected_by_auditor"]) == ("ann", "audrey", True)
    actions = [event["action"] for event in store.history("n1")]
    assert actions == ["enqueued", "pre-coded", "claimed", "decision saved", "submitted", "audited",
                       "submitted", "audited"]
    assert [e["user"] for e in store.history("n1")][2:] == ["ann", "ann", "ann", "audrey", "ann", "audrey"]
    # An admin may release another's claim; nobody else may.
    precoded(store, "n2")
    store.claim("n2", ann)
    with pytest.raises(Conflict, match="only they or an admin"):
        store.release("n2", actor(work_db, "bob", "coder"))
    store.release("n2", root)
    assert store.get_note("n2")["status"] == "pre-coded"
    with pytest.raises(NotFound, match="no note nope"):
        store.get_note("nope")


def test_pre_coding_stores_a_notes_suggestions_once(store, work_db):
    store.add_notes([{"id": "q1", "text": "text one"}, {"id": "q2", "text": "text two"}])
    queued = store.queued(10)
    assert [row[1] for row in queued] == ["q1", "q2"]
    seq = queued[0][0]
    assert store.store_suggestions(seq, suggestions("J18.9"))
    assert not store.store_suggestions(seq, suggestions("J18.9", "I10"))  # a second pass is dropped
    with work_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Suggestion).where(Suggestion.note_seq == seq)) == 1
    assert [row[1] for row in store.queued(10)] == ["q2"]
    store.precode_failed([queued[1][0]] * 1)
    store.precode_failed([queued[1][0]])
    store.precode_failed([queued[1][0]])
    assert store.queued(10) == []  # failed three times: left for an operator
    assert store.requeue_failed() == 1 and [row[1] for row in store.queued(10)] == ["q2"]


def test_stats_count_each_notes_latest_decision(store, work_db):
    ann = actor(work_db, "ann", "coder")
    for note_id in ("a", "b"):
        version = precoded(store, note_id, ("J18.9", "I10"))
        version = store.save_decision(note_id, ann, version, {"accepted": ["J18.9"], "rejected": ["I10"]})
    # b is decided again: only its latest decision counts
    store.save_decision("b", ann, version, {"accepted": ["J18.9", "I10"], "added": [{"code": "E11.9"}]})
    stats = store.stats()
    [model] = stats["models"]
    assert (model["accepted"], model["rejected"], model["added"]) == (3, 1, 1)
    assert model["acceptance_rate"] == pytest.approx(3 / 4)
    by_code = {c["code"]: c for c in stats["codes"]}
    assert (by_code["I10"]["accepted"], by_code["I10"]["rejected"]) == (1, 1)
    assert by_code["E11.9"]["added"] == 1 and by_code["E11.9"]["acceptance_rate"] is None
    assert stats["notes"]["in review"] == 2


def test_export_can_purge_the_text_and_the_audit_log_never_holds_it(store, work_db):
    ann = actor(work_db, "ann", "coder")
    version = precoded(store)
    version = store.save_decision("n1", ann, version, {"accepted": ["J18.9"], "reason": "ok"})
    store.submit("n1", ann, version)
    [record] = list(store.export(purge_text=True))
    assert record["codes"] == [{"code": "J18.9", "system": "icd10cm", "verdict": "accepted", "principal": False,
                                "description": "d J18.9", "score": pytest.approx(0.9), "probability": pytest.approx(0.9)}]
    note = store.get_note("n1")
    assert note["text"] is None and note["text_purged"]
    assert all("text" not in span for s in note["suggestions"] for span in s["evidence"])
    with work_db.read() as session:
        details = [str(e.detail) for e in session.scalars(select(AuditEvent))]
    assert details and not any("Zebediah" in d or "Patient" in d for d in details)
