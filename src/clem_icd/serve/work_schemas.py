"""Bodies and answers of the workbench API (/v1/work), as pydantic models: FastAPI checks the
requests and the OpenAPI document shows them all."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

# "Holds a character other than whitespace", with Python's whitespace (str.isspace, which the
# store's empty-note check uses) spelled out: `\s` means other characters to pydantic's, JSON
# Schema's and the fuzzer's regular expressions. A pattern matches anywhere in the value.
PYTHON_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
NOT_BLANK = f"[^{PYTHON_WHITESPACE}]"  # none of them is special inside a class
STATUS = Literal["queued", "pre-coded", "in review", "coded", "audited"]
CODE = Field(min_length=1, max_length=32, examples=["J18.9"])


class WorkNote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^/]+$",
                    description="The note's id (a path segment of the note's URL: no '/'). Sending a note "
                                "again with the same id and text changes nothing.")
    text: str = Field(pattern=NOT_BLANK, description="The note's text (not only whitespace).")
    meta: dict = Field(default_factory=dict, description="Anything the worklist should show, such as "
                                                         "encounter_date.", examples=[{"encounter_date": "2026-11-30"}])


class Enqueue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notes: list[WorkNote] = Field(min_length=1, max_length=1000)


class Enqueued(BaseModel):
    added: list[str] = Field(description="Ids of notes queued now.")
    existing: list[str] = Field(description="Ids that were there already (same text): left as they are.")


class NoteSummary(BaseModel):
    id: str
    status: STATUS
    assignee: str | None = Field(description="Who has claimed it (in review) or coded it.")
    version: int = Field(description="Grows with every change; the note's ETag is \"v<version>\".")
    meta: dict
    characters: int
    text_purged: bool = Field(description="The text was deleted after export (retention).")
    created_at: str
    updated_at: str


class Worklist(BaseModel):
    notes: list[NoteSummary]
    next_cursor: str | None = Field(description="Give as `cursor` for the next page; null on the last.")


class AddedCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = CODE
    system: str = Field(default="icd10cm", max_length=16)


class DecisionBody(BaseModel):
    """A coder's decision: every suggestion accepted or rejected (those not named stay undecided),
    codes the model missed, the principal code and an optional reason."""

    model_config = ConfigDict(extra="forbid")

    accepted: list[str] = Field(default_factory=list, description="Suggested codes the coder confirms.")
    rejected: list[str] = Field(default_factory=list, description="Suggested codes the coder refutes.")
    added: list[AddedCode] = Field(default_factory=list, description="Codes the model did not suggest.")
    principal_code: str | None = Field(default=None, max_length=32, description="One of the accepted or added "
                                                                                "codes.")
    reason: str | None = Field(default=None, max_length=2000, description="Free text: stored, never logged or "
                                                                          "audited.")


class AuditBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["approved", "returned"] = Field(description="approved: audited; returned: back to its coder.")
    decision: DecisionBody | None = Field(
        default=None, description="With approved: the auditor's corrections, which become the note's codes.")


class EvidenceSpan(BaseModel):
    start: int
    end: int
    score: float
    text: str | SkipJsonSchema[None] = Field(default=None, description="Absent once the text is purged.")


class WorkSuggestion(BaseModel):
    code: str
    system: str
    description: str
    score: float
    probability: float | SkipJsonSchema[None] = None
    model_name: str
    model_version: str
    evidence: list[EvidenceSpan]


class DecisionView(BaseModel):
    accepted: list[str]
    rejected: list[str]
    added: list[AddedCode]
    principal_code: str | None
    reason: str | None
    kind: Literal["coding", "audit"]
    by: str
    at: str
    version: int


class WorkNoteView(NoteSummary):
    text: str | None = Field(description="null once purged.")
    suggestions: list[WorkSuggestion] = Field(description="Best first, per model.")
    decision: DecisionView | None = Field(description="The latest decision; null before the first.")


class VersionAnswer(BaseModel):
    id: str
    version: int
    status: STATUS


class HistoryLine(BaseModel):
    at: str
    user: str | None = Field(description="null: the service itself (pre-coding, retention).")
    action: str
    detail: dict


class History(BaseModel):
    id: str
    history: list[HistoryLine]


class Rates(BaseModel):
    accepted: int
    rejected: int
    added: int = Field(description="Codes coders added: the model's misses.")
    acceptance_rate: float | None = Field(description="accepted / (accepted + rejected); null with none judged.")


class ModelRates(Rates):
    model_name: str
    model_version: str


class CodeRates(Rates):
    code: str


class WorkStats(BaseModel):
    notes: dict[str, int] = Field(description="Notes per status.")
    models: list[ModelRates]
    codes: list[CodeRates]


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^\S+$")
    role: Literal["coder", "auditor", "admin"]


class UserToken(BaseModel):
    name: str
    role: str
    token: str = Field(description="Shown only now: the service keeps its hash.")


class UserView(BaseModel):
    name: str
    role: str
    disabled: bool
    created_at: str
