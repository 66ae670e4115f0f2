"""The workbench's tables (SQLAlchemy 2 declarative). The schema itself is owned by the Alembic
migrations in migrations/versions; tests check that the two agree.

A note's `seq` is its place in the worklist (keyset pagination follows it); `id` is the caller's
id. `version` grows with every change to the note's work (pre-coding, claim, release, decision,
submit, audit): it is the note's ETag, and a write that names an older one is refused, so no
coder overwrites another's decision unseen. Decisions are kept, never updated: each save adds
one, and the note's codes are those of its latest. The audit log holds ids, codes, statuses and
versions, never note text or a coder's free-text reason.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

STATUSES = ("queued", "pre-coded", "in review", "coded", "audited")
ROLES = ("coder", "auditor", "admin")
VERDICTS = ("accepted", "rejected", "added")


def now() -> datetime:
    return datetime.now(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_one_of("role", ROLES), name="ck_users_role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Note(Base):
    __tablename__ = "notes"
    __table_args__ = (
        CheckConstraint(_one_of("status", STATUSES), name="ck_notes_status"),
        Index("ix_notes_status_seq", "status", "seq"),
        Index("ix_notes_assignee_seq", "assignee_id", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(200), unique=True)
    text: Mapped[str | None] = mapped_column(Text)  # None once purged (--purge-text-after-export)
    text_sha256: Mapped[str] = mapped_column(String(64))  # tells a resent note from a changed one
    text_length: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    precode_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    exported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    text_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Suggestion(Base):
    __tablename__ = "suggestions"
    __table_args__ = (UniqueConstraint("note_seq", "model_name", "model_version", "code",
                                       name="uq_suggestions_note_model_code"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note_seq: Mapped[int] = mapped_column(ForeignKey("notes.seq", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(64))
    rank: Mapped[int] = mapped_column(Integer)  # 0 = best
    code: Mapped[str] = mapped_column(String(32))
    system: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    score: Mapped[float] = mapped_column(Float)
    probability: Mapped[float | None] = mapped_column(Float)
    evidence: Mapped[list] = mapped_column(JSON, default=list)  # [[start, end, score], ...]: offsets only


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (CheckConstraint(_one_of("kind", ("coding", "audit")), name="ck_decisions_kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note_seq: Mapped[int] = mapped_column(ForeignKey("notes.seq", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(8), default="coding")
    principal_code: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    note_version: Mapped[int] = mapped_column(Integer)  # the note's version this decision made
    model_name: Mapped[str | None] = mapped_column(String(200))  # the suggestions it judged
    model_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class DecisionCode(Base):
    __tablename__ = "decision_codes"
    __table_args__ = (CheckConstraint(_one_of("verdict", VERDICTS), name="ck_decision_codes_verdict"),)

    decision_id: Mapped[int] = mapped_column(ForeignKey("decisions.id", ondelete="CASCADE"), primary_key=True)
    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    system: Mapped[str] = mapped_column(String(16), default="")
    verdict: Mapped[str] = mapped_column(String(8))


class AuditEvent(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # None: the service itself
    action: Mapped[str] = mapped_column(String(32))
    note_id: Mapped[str | None] = mapped_column(String(200), index=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


def audit(session, actor, action: str, note_id: str | None, detail: dict) -> None:
    """One line of the append-only audit log (`actor`: who, None for the service itself): ids,
    codes, counts and versions, never note text."""
    session.add(AuditEvent(user_id=actor.id if actor else None, action=action, note_id=note_id, detail=detail))
