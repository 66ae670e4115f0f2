"""The service's request bodies and answers, as pydantic models: FastAPI checks the requests (a
malformed body is a 422 naming the field), and all of them make the OpenAPI document. The answers
are documented, not filtered through the models: the fuzz test (tests/test_serve_fuzz.py) checks
that what the service sends matches them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError


def _json_number(value):
    # The schema says integer or number: pydantic's lax mode would read `true` as 1 and "5" as 5,
    # strict mode would refuse 5.0, which JSON Schema counts as an integer. JSON numbers only, then.
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


JsonNumber = BeforeValidator(_json_number)


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="The note's id; results carry it back. Unique within a request.")
    text: str = Field(description="The note's text. Evidence offsets count its code points (Python string "
                                  "offsets), exactly as sent.")


class CodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notes: list[Note] = Field(description="Notes to code; results come back in this order.")
    top_k: Annotated[int | None, JsonNumber] = Field(default=None, ge=1, description="At most this many codes per note (best first).")
    threshold: Annotated[float | None, JsonNumber] = Field(default=None, ge=0.0, le=1.0, description="Report codes with a score above "
                                    "this (default: the threshold tuned when the model was trained). The score "
                                    "is the model's probability, or its rank score when /v1/model says "
                                    "score_kind 'rank score' (a model fused by reciprocal rank).")
    explain: Literal["attention", "attingrad", "inputxgrad"] | None = Field(
        default=None, description="Evidence spans per code: attention (free), attingrad or inputxgrad (one "
                                  "backward pass per code).")
    format: Literal["json", "fhir"] = Field(default="json", description="json: the objects `clem-icd predict` "
                                            "writes; fhir: the FHIR R4 Bundle of `predict --format fhir`.")


# ---------------------------------------------------------------------------- answers


class ErrorItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loc: list[str] = Field(description="Where: `body`, `query` or `header`, then the field's path (list "
                                       "positions as digits).", examples=[["body", "notes", "0", "text"]])
    msg: str = Field(description="What is wrong with it.", examples=["Field required"])
    type: str = Field(description="The kind of problem (pydantic's error type).", examples=["missing"])


class ErrorResponse(BaseModel):
    """Every error answer of the service, whatever its status."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"detail": "missing or wrong bearer token"},
                     {"detail": "body.notes.0.text: Field required",
                      "errors": [{"loc": ["body", "notes", "0", "text"], "msg": "Field required", "type": "missing"}]}]})

    detail: str = Field(description="What went wrong, in one line. It never quotes a value that was sent "
                                    "(which may be note text); a malformed request's detail is the first "
                                    "problem's place and message.")
    # Absent rather than null when there is nothing to list: SkipJsonSchema keeps null out of the schema.
    errors: list[ErrorItem] | SkipJsonSchema[None] = Field(
        default=None, description="Only on a 422 for a malformed request: every problem found.")


class Liveness(BaseModel):
    status: Literal["live"]


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "draining"] = Field(
        description="ready (200); loading, failed or draining (503).")


class CodeEntry(BaseModel):
    code: str = Field(examples=["J18.9"])
    system: str = Field(description="icd10cm or icd10pcs (or the model's own system name).", examples=["icd10cm"])
    description: str = Field(examples=["Pneumonia, unspecified organism"])


class CodeSearch(BaseModel):
    codes: list[CodeEntry] = Field(description="Best first: the code itself, codes starting with the query, "
                                               "then codes whose description matches every query word.")


class ModelCard(BaseModel):
    name: str = Field(description="The model folder's name.")
    encoder: str = Field(description="The encoder's name (`tfidf` for the baseline).")
    head: str
    max_length: int | None = Field(description="Tokens read per note (null for TF-IDF).")
    chunk_size: int | None
    codes: int = Field(description="How many codes the model knows.")
    threshold: float
    score_kind: Literal["probability", "rank score"]
    version: str
    explain_methods: list[str] = Field(description="The values `explain` may take; empty for TF-IDF.")
    metrics: dict = Field(description="The training metrics (metrics.json); empty when there are none.")
    max_chars: int = Field(description="Characters per note at most (--max-chars).")
    max_notes: int = Field(description="Notes per request at most (--max-notes).")


class Span(BaseModel):
    start: int = Field(description="Code point offset in the note's text as sent.")
    end: int
    score: float
    text: str = Field(description="`text[start:end]` of the note.")


class CodedCode(BaseModel):
    code: str
    system: str
    description: str
    score: float = Field(description="What the threshold compares.")
    probability: float | SkipJsonSchema[None] = Field(
        default=None, description="Equal to `score`; absent when the scores are rank scores.")
    evidence: list[Span] | SkipJsonSchema[None] = Field(default=None, description="Only with `explain`.")


class CodedNote(BaseModel):
    id: str
    codes: list[CodedCode] = Field(description="Best first.")
    truncated: bool = Field(description="The note was longer than the model reads (max_length tokens).")


class NoteError(BaseModel):
    id: str
    error: str = Field(description="Why this note was not coded, naming its place: `notes.3: empty note`.",
                       examples=["notes.3: empty note"])


class CodingModel(BaseModel):
    name: str
    codes: int
    threshold: float
    score_kind: Literal["probability", "rank score"]
    explain: str | None
    version: str


class CodeAnswer(BaseModel):
    """`format: json`: one result per note, in request order, as `clem-icd predict` writes them."""

    model: CodingModel
    results: list[CodedNote | NoteError]


class FhirBundle(BaseModel):
    """`format: fhir`: the FHIR R4 Bundle `clem-icd predict --format fhir` writes."""

    resourceType: Literal["Bundle"]
    type: Literal["collection"]
    timestamp: str
    entry: list[dict] = Field(description="A Condition or Procedure per code, an OperationOutcome per note "
                                          "that could not be coded.")
