"""The workbench API under /v1/work: the worklist, a note with its suggestions and decision, the
coder's and auditor's actions, export, statistics and users. The rules are the store's
(clem_icd.workbench.store); this module maps them to HTTP.

- Every request names its user by a bearer token (`clem-icd users add`); the role decides what
  it may do (403).
- Reading a note gives its ETag; a write to it needs that ETag in If-Match (428 without, 412
  when someone changed the note since): a second coder never overwrites the first unseen.
- Handlers are plain functions, so FastAPI runs them in its thread pool: the database calls
  block, the event loop does not.
- Logs carry counts and statuses, never note text or ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clem_icd.serve.contract import error_responses
from clem_icd.serve.work_schemas import (
    STATUS,
    AuditBody,
    DecisionBody,
    Enqueue,
    Enqueued,
    History,
    NewUser,
    UserToken,
    UserView,
    VersionAnswer,
    Worklist,
    WorkNoteView,
    WorkStats,
)
from clem_icd.workbench import users
from clem_icd.workbench.errors import WorkError
from clem_icd.workbench.export import export_pieces
from clem_icd.workbench.store import WorkStore, etag, parse_etag

log = logging.getLogger("clem_icd.serve")
NOTE_ID = Path(..., min_length=1, max_length=200, description="The note's id.")
IF_MATCH = Header(None, alias="If-Match", description="The note's ETag as read (GET /v1/work/notes/{id}).")
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv", "fhir": "application/fhir+json"}


def work_router(store: WorkStore, on_enqueued: Callable[[], None]) -> APIRouter:
    router = APIRouter(prefix="/v1/work", tags=["workbench"])
    bearer = HTTPBearer(auto_error=False, description="A user's token (clem-icd users add).")

    def actor(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> users.Actor:
        found = users.authenticate(store.db, credentials.credentials) if credentials is not None else None
        if found is None:
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        return found

    def doing(action: Callable):
        """The store's errors as their HTTP status, with their one line."""
        try:
            return action()
        except WorkError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    def expected(if_match: str | None) -> int:
        if if_match is None:
            raise HTTPException(428, "If-Match: required (the note's ETag as read)")
        version = parse_etag(if_match)
        if version is None:
            raise HTTPException(412, "If-Match: not an ETag of this service (\"v<version>\")")
        return version

    def answered(note_id: str, version: int, response: Response) -> dict:
        response.headers["ETag"] = etag(version)
        note = doing(lambda: store.get_note(note_id))
        return {"id": note_id, "version": version, "status": note["status"]}

    written = error_responses(403, 404, 409, 412, 422, 428)

    @router.post("/notes", response_model=Enqueued, responses=error_responses(409, 413, 422))
    def enqueue(body: Enqueue, user: users.Actor = Depends(actor)) -> dict:
        """Queue notes for pre-coding (idempotent by id: a note sent again with the same text is
        the note that is there; another text under a known id is a 409 and nothing is queued)."""
        result = doing(lambda: store.add_notes([note.model_dump() for note in body.notes], user))
        log.info("enqueued %d note(s), %d already there", len(result["added"]), len(result["existing"]))
        if result["added"]:
            on_enqueued()
        return result

    @router.get("/notes", response_model=Worklist, responses=error_responses(422))
    def worklist(status: STATUS | None = Query(None, description="Only notes in this state."),
                 assignee: str | None = Query(None, max_length=100, description="A user's name, or `me`."),
                 limit: int = Query(50, ge=1, le=500),
                 cursor: str | None = Query(None, pattern=r"^[0-9]{1,18}$",
                                            description="next_cursor of the page before."),
                 user: users.Actor = Depends(actor)) -> dict:
        """The worklist in queue order, a page at a time (keyset: a page stays the same however
        many notes are added meanwhile)."""
        name = user.name if assignee == "me" else assignee
        return doing(lambda: store.list_notes(status=status, assignee=name, limit=limit, cursor=cursor))

    @router.get("/notes/{note_id}", response_model=WorkNoteView, responses=error_responses(404, 422),
                response_model_exclude_none=False)
    def read_note(response: Response, note_id: str = NOTE_ID, user: users.Actor = Depends(actor)) -> dict:
        """The note, its suggestions with evidence, and its latest decision; the ETag header is
        what a write to it must send in If-Match."""
        note = doing(lambda: store.get_note(note_id))
        response.headers["ETag"] = etag(note["version"])
        return note

    @router.get("/notes/{note_id}/history", response_model=History, responses=error_responses(404, 422))
    def history(note_id: str = NOTE_ID, user: users.Actor = Depends(actor)) -> dict:
        """Every change to the note's work: who, what, when (never its text)."""
        return {"id": note_id, "history": doing(lambda: store.history(note_id))}

    @router.post("/notes/{note_id}/claim", response_model=VersionAnswer, responses=error_responses(403, 404, 409, 422))
    def claim(response: Response, note_id: str = NOTE_ID, user: users.Actor = Depends(actor)) -> dict:
        """Take a pre-coded note into review (claiming one's own claim again changes nothing)."""
        return answered(note_id, doing(lambda: store.claim(note_id, user)), response)

    @router.post("/notes/{note_id}/release", response_model=VersionAnswer,
                 responses=error_responses(403, 404, 409, 422))
    def release(response: Response, note_id: str = NOTE_ID, user: users.Actor = Depends(actor)) -> dict:
        """Give a claimed note back to the worklist (its coder, or an admin)."""
        return answered(note_id, doing(lambda: store.release(note_id, user)), response)

    @router.put("/notes/{note_id}/decision", response_model=VersionAnswer, responses=written)
    def decide(body: DecisionBody, response: Response, note_id: str = NOTE_ID, if_match: str | None = IF_MATCH,
               user: users.Actor = Depends(actor)) -> dict:
        """Save a decision (it claims an unclaimed note). Needs If-Match."""
        version = expected(if_match)
        decision = body.model_dump()
        return answered(note_id, doing(lambda: store.save_decision(note_id, user, version, decision)), response)

    @router.post("/notes/{note_id}/submit", response_model=VersionAnswer, responses=written)
    def submit(response: Response, note_id: str = NOTE_ID, if_match: str | None = IF_MATCH,
               user: users.Actor = Depends(actor)) -> dict:
        """The coder is done: the note goes to audit (status coded). Needs If-Match."""
        version = expected(if_match)
        return answered(note_id, doing(lambda: store.submit(note_id, user, version)), response)

    @router.post("/notes/{note_id}/audit", response_model=VersionAnswer, responses=written)
    def audit(body: AuditBody, response: Response, note_id: str = NOTE_ID, if_match: str | None = IF_MATCH,
              user: users.Actor = Depends(actor)) -> dict:
        """An auditor approves a coded note (optionally with corrections) or returns it to its
        coder. Needs If-Match."""
        version = expected(if_match)
        decision = body.decision.model_dump() if body.decision is not None else None
        return answered(note_id, doing(lambda: store.audit_note(note_id, user, version, body.outcome, decision)),
                        response)

    @router.get("/export", response_class=StreamingResponse, responses={
        200: {"description": "jsonl: a record per note; csv: a row per final code; fhir: a FHIR R4 Bundle.",
              "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                          "text/csv": {"schema": {"type": "string"}},
                          "application/fhir+json": {"schema": {"type": "object"}}}},
        **error_responses(403, 422)})
    def export(format: str = Query("jsonl", pattern="^(jsonl|csv|fhir)$"),
               audited_only: bool = Query(False, description="Only audited notes (default: coded and audited)."),
               user: users.Actor = Depends(actor)) -> StreamingResponse:
        """The final codes of the finished notes with who coded and audited each, streamed
        (auditors and admins)."""
        if not user.may(users.AUDITING):
            raise HTTPException(403, f"a {user.role} may not export")
        statuses = ("audited",) if audited_only else ("coded", "audited")
        pieces = export_pieces(store.export(statuses, mark=False), format)
        return StreamingResponse(pieces, media_type=MEDIA[format],
                                 headers={"Content-Disposition": f'attachment; filename="codes.{format}"'})

    @router.get("/stats", response_model=WorkStats)
    def stats(user: users.Actor = Depends(actor)) -> dict:
        """What coders made of the suggestions: per model version and per code, accepted,
        rejected and added codes and the acceptance rate (each note's latest decision)."""
        return store.stats()

    @router.get("/users", response_model=list[UserView], responses=error_responses(403))
    def list_users(user: users.Actor = Depends(actor)) -> list[dict]:
        """The users (admins)."""
        _admin(user)
        return users.list_users(store.db)

    @router.post("/users", response_model=UserToken, status_code=201, responses=error_responses(403, 409, 422))
    def add_user(body: NewUser, user: users.Actor = Depends(actor)) -> dict:
        """Make a user (admins); the answer holds their token, the only time it is shown."""
        _admin(user)
        token = doing(lambda: users.add_user(store.db, body.name, body.role))
        return {"name": body.name, "role": body.role, "token": token}

    @router.post("/users/{name}/disable", response_model=UserView, responses=error_responses(403, 404, 409, 422))
    def disable_user(name: str = Path(..., max_length=100), user: users.Actor = Depends(actor)) -> dict:
        """Refuse the user's token from now on (admins)."""
        _admin(user)
        if name == user.name:  # the last admin could lock everyone out
            raise HTTPException(409, "an admin may not disable themselves; another admin can")
        doing(lambda: users.disable_user(store.db, name))
        return next(u for u in users.list_users(store.db) if u["name"] == name)

    return router


def _admin(user: users.Actor) -> None:
    if not user.may(users.ADMINISTERING):
        article = "an" if user.role[0] in "aeiou" else "a"
        raise HTTPException(403, f"{article} {user.role} may not manage users")
