"""Everything done to the work, one database transaction per call: enqueue notes, list the
worklist, read a note, claim, release, save a decision, submit for audit, audit, pre-code, export
and count. The HTTP routes and the CLI both call these, so the rules live in one place.

Concurrency. Each change to a note's work checks and raises its `version` in one conditional
UPDATE (`... WHERE seq = ? AND version = ?`): of two writers holding the same version, one wins
and the other is told its copy is stale (412), on SQLite and PostgreSQL alike, with no lock held
between a coder's read and their save. Pre-coding stores a note's suggestions only while it is
still queued, in the same transaction that marks it pre-coded: a note is never coded twice, and
one whose pass was cut short (a crash) is still queued and is coded after a restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clem_icd.workbench.errors import Conflict, Forbidden, Invalid, NotFound, Stale
from clem_icd.workbench.models import (
    STATUSES,
    AuditEvent,
    Decision,
    DecisionCode,
    Note,
    Suggestion,
    User,
    audit,
    now,
)
from clem_icd.workbench.users import AUDITING, CODING, Actor

MAX_ID = 200
MAX_CODE = 32
PRECODE_ATTEMPTS = 3  # a note whose pass failed this often waits for an operator (work requeue)


def etag(version: int) -> str:
    return f'"v{version}"'


def parse_etag(value: str | None) -> int | None:
    """The version an If-Match names; None for a value that names none we made."""
    if value is None:
        return None
    value = value.strip().removeprefix("W/")
    if value.startswith('"v') and value.endswith('"') and value[2:-1].isdigit():
        return int(value[2:-1])
    return None


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class WorkStore:
    def __init__(self, db):
        self.db = db

    # ------------------------------------------------------------------ enqueue

    def add_notes(self, notes: list[dict], actor: Actor | None = None,
                  suggestions: dict[str, dict] | None = None) -> dict:
        """Queue notes ({id, text, meta}); a note sent again (same id, same text) is the note that
        is there, a different text under a known id is refused. `suggestions`: precomputed ones by
        note id ({model_name, model_version, codes}); those notes are pre-coded at once.
        Returns {"added": [...ids], "existing": [...ids]}."""
        rows = [self._checked(i, note) for i, note in enumerate(notes)]
        try:
            return self._insert(rows, actor, suggestions or {})
        except IntegrityError:
            # Another writer (PostgreSQL: transactions run side by side) added one of these ids
            # between our look-up and our insert: once more, and they are seen as existing.
            return self._insert(rows, actor, suggestions or {})

    @staticmethod
    def _checked(i: int, note: dict) -> dict:
        note_id, text = note.get("id"), note.get("text")
        if not isinstance(note_id, str) or not 1 <= len(note_id) <= MAX_ID:
            raise Invalid(f"notes.{i}.id: a string of 1 to {MAX_ID} characters")
        if "/" in note_id:  # the id is a segment of the note's URL
            raise Invalid(f"notes.{i}.id: may not contain '/'")
        if not isinstance(text, str) or not text.strip():
            raise Invalid(f"notes.{i}.text: empty note")
        meta = note.get("meta") or {}
        if not isinstance(meta, dict):
            raise Invalid(f"notes.{i}.meta: an object")
        return {"id": note_id, "text": text, "meta": meta, "sha": text_digest(text), "place": f"notes.{i}"}

    def _insert(self, rows: list[dict], actor: Actor | None, suggestions: dict[str, dict]) -> dict:
        added, existing, seen = [], [], {}
        with self.db.write() as session:
            known = {}
            ids = [row["id"] for row in rows]
            for start in range(0, len(ids), 500):
                for note_id, sha in session.execute(select(Note.id, Note.text_sha256)
                                                    .where(Note.id.in_(ids[start:start + 500]))):
                    known[note_id] = sha
            for row in rows:
                sha = known.get(row["id"], seen.get(row["id"]))
                if sha is not None:
                    if sha != row["sha"]:
                        raise Conflict(f"{row['place']}: note {row['id']} is queued already with another "
                                       "text; give the new text another id")
                    existing.append(row["id"])
                    continue
                seen[row["id"]] = row["sha"]
                note = Note(id=row["id"], text=row["text"], text_sha256=row["sha"], text_length=len(row["text"]),
                            meta=row["meta"], status="queued", version=1)
                session.add(note)
                session.flush()
                audit(session, actor, "enqueued", note.id, {"characters": note.text_length})
                added.append(row["id"])
                if note.id in suggestions:
                    self._precoded(session, note, suggestions[note.id])
        return {"added": added, "existing": existing}

    # ------------------------------------------------------------------ pre-coding

    def queued(self, limit: int) -> list[tuple[int, str, str]]:
        """(seq, id, text) of the oldest queued notes that have not failed too often."""
        with self.db.read() as session:
            rows = session.execute(select(Note.seq, Note.id, Note.text)
                                   .where(Note.status == "queued", Note.precode_failures < PRECODE_ATTEMPTS)
                                   .order_by(Note.seq).limit(limit)).all()
        return [tuple(row) for row in rows]

    def store_suggestions(self, seq: int, model: dict) -> bool:
        """A pre-coded note's suggestions ({model_name, model_version, codes: predict's code
        records}), only if it is still queued. False when it was not (coded already)."""
        with self.db.write() as session:
            note = session.get(Note, seq)
            if note is None or note.status != "queued":
                return False
            return self._precoded(session, note, model)

    def _precoded(self, session: Session, note: Note, model: dict) -> bool:
        moved = session.execute(update(Note).where(Note.seq == note.seq, Note.status == "queued")
                                .values(status="pre-coded", version=Note.version + 1, updated_at=now()))
        if moved.rowcount != 1:
            return False
        for rank, code in enumerate(model["codes"]):
            evidence = [[int(s["start"]), int(s["end"]), float(s["score"])] for s in code.get("evidence") or []]
            session.add(Suggestion(note_seq=note.seq, model_name=model["model_name"],
                                   model_version=model["model_version"], rank=rank, code=code["code"],
                                   system=code.get("system", ""), description=code.get("description", ""),
                                   score=float(code["score"]), probability=code.get("probability"),
                                   evidence=evidence))
        audit(session, None, "pre-coded", note.id, {"model": model["model_name"], "model_version":
                                                    model["model_version"], "suggestions": len(model["codes"])})
        session.expire(note)
        return True

    def precode_failed(self, seqs: list[int]) -> None:
        with self.db.write() as session:
            session.execute(update(Note).where(Note.seq.in_(seqs), Note.status == "queued")
                            .values(precode_failures=Note.precode_failures + 1))

    def requeue_failed(self) -> int:
        """Queued notes that failed pre-coding too often get another chance (`work requeue`)."""
        with self.db.write() as session:
            return session.execute(update(Note).where(Note.status == "queued", Note.precode_failures > 0)
                                   .values(precode_failures=0)).rowcount

    # ------------------------------------------------------------------ reading

    def list_notes(self, *, status: str | None = None, assignee: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> dict:
        """The worklist in queue order, a page at a time: {"notes": [...], "next_cursor": str|None}.
        The cursor is the last note's place; a page is the same whatever was added after it."""
        if status is not None and status not in STATUSES:
            raise Invalid(f"status: one of {', '.join(STATUSES)}")
        after = _cursor(cursor)
        with self.db.read() as session:
            query = (select(Note, User.name).outerjoin(User, Note.assignee_id == User.id)
                     .where(Note.seq > after).order_by(Note.seq).limit(limit + 1))
            if status is not None:
                query = query.where(Note.status == status)
            if assignee is not None:
                query = query.where(User.name == assignee)
            rows = session.execute(query).all()
        page = rows[:limit]
        notes = [_summary(note, name) for note, name in page]
        return {"notes": notes, "next_cursor": str(page[-1][0].seq) if len(rows) > limit else None}

    def get_note(self, note_id: str) -> dict:
        """The note, its suggestions and its latest decision; `version` is its ETag."""
        with self.db.read() as session:
            note, assignee = self._note(session, note_id)
            suggestions = session.scalars(select(Suggestion).where(Suggestion.note_seq == note.seq)
                                          .order_by(Suggestion.model_name, Suggestion.model_version,
                                                    Suggestion.rank)).all()
            return {**_summary(note, assignee), "text": note.text,
                    "suggestions": [_suggestion(s, note.text) for s in suggestions],
                    "decision": _latest_decision(session, note.seq)}

    def history(self, note_id: str) -> list[dict]:
        """Every audit line of a note, oldest first, with who and when."""
        with self.db.read() as session:
            self._note(session, note_id)
            rows = session.execute(select(AuditEvent, User.name).outerjoin(User, AuditEvent.user_id == User.id)
                                   .where(AuditEvent.note_id == note_id).order_by(AuditEvent.id)).all()
        return [{"at": _time(event.at), "user": name, "action": event.action, "detail": event.detail}
                for event, name in rows]

    @staticmethod
    def _note(session: Session, note_id: str) -> tuple[Note, str | None]:
        row = session.execute(select(Note, User.name).outerjoin(User, Note.assignee_id == User.id)
                              .where(Note.id == note_id)).first()
        if row is None:
            raise NotFound(f"no note {note_id}")
        return row[0], row[1]

    # ------------------------------------------------------------------ coding

    def claim(self, note_id: str, actor: Actor) -> int:
        """Take a pre-coded note into review; the note's new version. Claiming one's own claim
        again changes nothing."""
        _require(actor, CODING, "claim a note")
        with self.db.write() as session:
            note, assignee = self._note(session, note_id)
            if note.status == "in review" and note.assignee_id == actor.id:
                return note.version
            if note.status == "in review":
                raise Conflict(f"note {note_id} is in review by {assignee}")
            if note.status != "pre-coded":
                raise Conflict(f"note {note_id} is {note.status}; only a pre-coded note can be claimed")
            version = self._bump(session, note, note.version, status="in review", assignee_id=actor.id)
            audit(session, actor, "claimed", note_id, {"version": version})
            return version

    def release(self, note_id: str, actor: Actor) -> int:
        """Give a claimed note back to the worklist (its coder, or an admin)."""
        _require(actor, CODING, "release a note")
        with self.db.write() as session:
            note, assignee = self._note(session, note_id)
            if note.status != "in review":
                raise Conflict(f"note {note_id} is {note.status}, not in review")
            if note.assignee_id != actor.id and actor.role != "admin":
                raise Conflict(f"note {note_id} is in review by {assignee}; only they or an admin can release it")
            version = self._bump(session, note, note.version, status="pre-coded", assignee_id=None)
            audit(session, actor, "released", note_id, {"version": version})
            return version

    def save_decision(self, note_id: str, actor: Actor, expected: int, decision: dict) -> int:
        """A coder's decision on a pre-coded or claimed note: accepted and rejected suggestions,
        added codes, the principal code and an optional reason. Saving claims an unclaimed note."""
        _require(actor, CODING, "code a note")
        with self.db.write() as session:
            note, assignee = self._note(session, note_id)
            _fresh(note, expected)
            if note.status not in ("pre-coded", "in review"):
                raise Conflict(f"note {note_id} is {note.status}; it can no longer be coded")
            if note.assignee_id not in (None, actor.id):
                raise Conflict(f"note {note_id} is in review by {assignee}")
            version = self._bump(session, note, expected, status="in review", assignee_id=actor.id)
            summary = self._decide(session, note, actor, decision, version, "coding")
            audit(session, actor, "decision saved", note_id, {"version": version, **summary})
            return version

    def submit(self, note_id: str, actor: Actor, expected: int) -> int:
        """The coder is done: the note goes to audit (status coded)."""
        _require(actor, CODING, "submit a note")
        with self.db.write() as session:
            note, assignee = self._note(session, note_id)
            _fresh(note, expected)
            if note.status != "in review" or note.assignee_id != actor.id:
                raise Conflict(f"note {note_id} is {note.status}" + (f" by {assignee}" if assignee else "")
                               + "; only its coder can submit a note in review")
            if _latest_decision(session, note.seq) is None:
                raise Conflict(f"note {note_id} has no decision to submit; save one first")
            version = self._bump(session, note, expected, status="coded")
            audit(session, actor, "submitted", note_id, {"version": version})
            return version

    def audit_note(self, note_id: str, actor: Actor, expected: int, outcome: str,
                   decision: dict | None = None) -> int:
        """An auditor's verdict on a coded note: `approved` (audited; with `decision`, the
        auditor's corrections become the note's codes) or `returned` (back to its coder)."""
        _require(actor, AUDITING, "audit a note")
        if outcome not in ("approved", "returned"):
            raise Invalid("outcome: approved or returned")
        with self.db.write() as session:
            note, _ = self._note(session, note_id)
            _fresh(note, expected)
            if note.status != "coded":
                raise Conflict(f"note {note_id} is {note.status}; only a coded note can be audited")
            if outcome == "returned":
                version = self._bump(session, note, expected, status="in review")
                detail = {"version": version, "outcome": outcome}
            else:
                version = self._bump(session, note, expected, status="audited")
                detail = {"version": version, "outcome": outcome}
                if decision is not None:
                    detail.update(self._decide(session, note, actor, decision, version, "audit"))
            audit(session, actor, "audited", note_id, detail)
            return version

    @staticmethod
    def _bump(session: Session, note: Note, expected: int, **values) -> int:
        moved = session.execute(update(Note).where(Note.seq == note.seq, Note.version == expected)
                                .values(version=expected + 1, updated_at=now(), **values))
        if moved.rowcount != 1:  # another transaction changed it after we read it
            raise Stale(f"note {note.id} has changed since version {expected}; reload it")
        session.expire(note)
        return expected + 1

    def _decide(self, session: Session, note: Note, actor: Actor, decision: dict, version: int,
                kind: str) -> dict:
        suggested = {}
        rows = session.execute(select(Suggestion.code, Suggestion.system, Suggestion.model_name,
                                      Suggestion.model_version).where(Suggestion.note_seq == note.seq)
                               .order_by(Suggestion.id.desc())).all()
        for code, system, model_name, model_version in rows:
            suggested[code] = (system, model_name, model_version)
        verdicts = _verdicts(decision, suggested)
        principal = decision.get("principal_code")
        final = {code for code, (verdict, _) in verdicts.items() if verdict != "rejected"}
        if principal is not None and principal not in final:
            raise Invalid("principal_code: must be one of the accepted or added codes")
        reason = decision.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
            raise Invalid("reason: a string of at most 2000 characters")
        model = next(iter(suggested.values()), ("", None, None))
        row = Decision(note_seq=note.seq, user_id=actor.id, kind=kind, principal_code=principal,
                       reason=reason or None, note_version=version, model_name=model[1], model_version=model[2])
        session.add(row)
        session.flush()
        for code, (verdict, system) in verdicts.items():
            session.add(DecisionCode(decision_id=row.id, code=code, system=system, verdict=verdict))
        counts = {verdict: sorted(c for c, (v, _) in verdicts.items() if v == verdict)
                  for verdict in ("accepted", "rejected", "added")}
        return {**counts, "principal_code": principal}

    # ------------------------------------------------------------------ export and statistics

    def export(self, statuses: tuple[str, ...] = ("coded", "audited"), mark: bool = True,
               purge_text: bool = False) -> Iterator[dict]:
        """The final codes of each finished note, with who coded and audited it, in queue order.
        `mark` (and `purge_text`): see `mark_exported`, done for each chunk once it is read."""
        with self.db.read() as session:
            seqs = session.scalars(select(Note.seq).where(Note.status.in_(statuses)).order_by(Note.seq)).all()
        for start in range(0, len(seqs), 200):
            with self.db.read() as session:
                records = [self._final(session, seq) for seq in seqs[start:start + 200]]
            yield from records
            if mark or purge_text:
                self.mark_exported([record["id"] for record in records], purge_text=purge_text)

    def mark_exported(self, note_ids: list[str], purge_text: bool = False) -> None:
        """Record the export time; with `purge_text`, drop the notes' text too (retention): their
        codes, decisions and audit lines stay."""
        for start in range(0, len(note_ids), 500):
            chunk = note_ids[start:start + 500]
            values = {"exported_at": now()}
            if purge_text:
                values.update(text=None, text_purged_at=now())
            with self.db.write() as session:
                session.execute(update(Note).where(Note.id.in_(chunk)).values(**values))
                if purge_text:
                    for note_id in chunk:
                        audit(session, None, "text purged", note_id, {})

    def _final(self, session: Session, seq: int) -> dict:
        note = session.get(Note, seq)
        rows = session.execute(select(Decision, User.name).join(User, Decision.user_id == User.id)
                               .where(Decision.note_seq == seq).order_by(Decision.id.desc())).all()
        latest, latest_by = rows[0]
        coding = next(((d, name) for d, name in rows if d.kind == "coding"), (None, None))
        audited = next(((d, name) for d, name in rows if d.kind == "audit"), (None, None))
        codes = session.execute(select(DecisionCode).where(DecisionCode.decision_id == latest.id,
                                                           DecisionCode.verdict != "rejected")
                                .order_by(DecisionCode.code)).scalars().all()
        auditor = None
        if note.status == "audited":
            auditor = session.scalar(select(User.name).join(AuditEvent, AuditEvent.user_id == User.id)
                                     .where(AuditEvent.note_id == note.id, AuditEvent.action == "audited")
                                     .order_by(AuditEvent.id.desc()).limit(1))
        suggested = {s.code: s for s in session.scalars(select(Suggestion).where(Suggestion.note_seq == seq))}
        return {"id": note.id, "status": note.status, "meta": note.meta,
                "codes": [_final_code(c, latest.principal_code, suggested.get(c.code)) for c in codes],
                "principal_code": latest.principal_code,
                "coded_by": coding[1], "coded_at": _time(coding[0].created_at) if coding[0] else None,
                "audited_by": auditor, "corrected_by_auditor": audited[0] is not None,
                "model_name": latest.model_name, "model_version": latest.model_version,
                "decided_by": latest_by}

    def stats(self) -> dict:
        """What the coders made of the model's suggestions, from each note's latest decision:
        per model version and per code, accepted (true alarms), rejected (false alarms) and
        added (the model's misses), and the acceptance rate accepted / (accepted + rejected)."""
        with self.db.read() as session:
            latest = (select(func.max(Decision.id).label("id")).group_by(Decision.note_seq)).subquery()
            rows = session.execute(select(Decision.model_name, Decision.model_version, DecisionCode.code,
                                          DecisionCode.verdict)
                                   .join(latest, Decision.id == latest.c.id)
                                   .join(DecisionCode, DecisionCode.decision_id == Decision.id)).all()
            notes = dict(session.execute(select(Note.status, func.count()).group_by(Note.status)).all())
        models: dict[tuple, dict] = {}
        codes: dict[str, dict] = {}
        for model_name, model_version, code, verdict in rows:
            key = (model_name or "", model_version or "")
            for table, name in ((models, key), (codes, code)):
                entry = table.setdefault(name, {"accepted": 0, "rejected": 0, "added": 0})
                entry[verdict] += 1
        return {"notes": {status: notes.get(status, 0) for status in STATUSES},
                "models": [{"model_name": k[0], "model_version": k[1], **_rate(v)} for k, v in sorted(models.items())],
                "codes": [{"code": k, **_rate(v)} for k, v in sorted(codes.items())]}


# ---------------------------------------------------------------------------- helpers


def _require(actor: Actor, permission: str, what: str) -> None:
    if not actor.may(permission):
        article = "an" if actor.role[0] in "aeiou" else "a"
        raise Forbidden(f"{article} {actor.role} may not {what}")


def _fresh(note: Note, expected: int) -> None:
    if note.version != expected:
        raise Stale(f"note {note.id} has changed since version {expected} (it is at version {note.version}); "
                    "reload it")


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise Invalid("cursor: the next_cursor of a previous page")
    return int(cursor)


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _summary(note: Note, assignee: str | None) -> dict:
    return {"id": note.id, "status": note.status, "assignee": assignee, "version": note.version,
            "meta": note.meta, "characters": note.text_length, "text_purged": note.text is None,
            "created_at": _time(note.created_at), "updated_at": _time(note.updated_at)}


def _suggestion(row: Suggestion, text: str | None) -> dict:
    evidence = [{"start": s, "end": e, "score": score, **({"text": text[s:e]} if text is not None else {})}
                for s, e, score in row.evidence]
    out = {"code": row.code, "system": row.system, "description": row.description, "score": row.score,
           "model_name": row.model_name, "model_version": row.model_version, "evidence": evidence}
    if row.probability is not None:
        out["probability"] = row.probability
    return out


def _latest_decision(session: Session, seq: int) -> dict | None:
    row = session.execute(select(Decision, User.name).join(User, Decision.user_id == User.id)
                          .where(Decision.note_seq == seq).order_by(Decision.id.desc()).limit(1)).first()
    if row is None:
        return None
    decision, name = row
    codes = session.scalars(select(DecisionCode).where(DecisionCode.decision_id == decision.id)
                            .order_by(DecisionCode.code)).all()
    by = {verdict: [c.code for c in codes if c.verdict == verdict] for verdict in ("accepted", "rejected")}
    return {**by, "added": [{"code": c.code, "system": c.system} for c in codes if c.verdict == "added"],
            "principal_code": decision.principal_code, "reason": decision.reason, "kind": decision.kind,
            "by": name, "at": _time(decision.created_at), "version": decision.note_version}


def _verdicts(decision: dict, suggested: dict[str, tuple]) -> dict[str, tuple[str, str]]:
    """{code: (verdict, system)}: accepted and rejected codes must be suggestions, added ones not;
    no code twice."""
    verdicts: dict[str, tuple[str, str]] = {}
    for verdict in ("accepted", "rejected", "added"):
        for i, entry in enumerate(decision.get(verdict) or []):
            code, system = (entry.get("code"), entry.get("system", "")) if isinstance(entry, dict) else (entry, None)
            place = f"{verdict}.{i}"
            if not isinstance(code, str) or not 1 <= len(code) <= MAX_CODE:
                raise Invalid(f"{place}: a code of 1 to {MAX_CODE} characters")
            if code in verdicts:
                raise Invalid(f"{place}: {code} is also {verdicts[code][0]}")
            if verdict == "added":
                if code in suggested:
                    raise Invalid(f"{place}: {code} is a suggestion; accept it instead")
                verdicts[code] = (verdict, system or "")
            else:
                if code not in suggested:
                    raise Invalid(f"{place}: {code} is not among the note's suggestions")
                verdicts[code] = (verdict, suggested[code][0])
    return verdicts


def _final_code(code: DecisionCode, principal: str | None, suggestion: Suggestion | None) -> dict:
    out = {"code": code.code, "system": code.system, "verdict": code.verdict, "principal": code.code == principal}
    if suggestion is not None:  # what the model said of it; an added code has nothing
        out.update(description=suggestion.description, score=suggestion.score, probability=suggestion.probability)
    return out


def _rate(counts: dict) -> dict:
    judged = counts["accepted"] + counts["rejected"]
    return {**counts, "acceptance_rate": counts["accepted"] / judged if judged else None}
