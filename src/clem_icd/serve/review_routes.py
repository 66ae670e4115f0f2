"""`POST /v1/review/fhir`: a coder's decisions on one note as a FHIR R4 Bundle.

Stateless: the review page sends the decisions it holds and downloads the answer, so that the
FHIR mapping lives in one place (clem_icd.inference.fhir.decision_entries, which the workbench's
export uses too) rather than again in the page's script. No model is needed: it answers while
the model loads. Evidence texts are note text: the handler logs the number of decisions only,
and a malformed body's 422 names the field without its value (the app's handler).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from clem_icd.inference import fhir
from clem_icd.serve.contract import error_responses
from clem_icd.serve.schemas import JsonNumber

log = logging.getLogger("clem_icd.serve")

FHIR_INTEGER_MAX = 2**31 - 1  # FHIR's integer is 32-bit: a larger offset has no valueInteger
# FHIR's code (no leading, trailing or repeated space), in printable ASCII: `\s` means other
# characters to pydantic's, JSON Schema's and the fuzzer's regular expressions.
CODE_PATTERN = r"^[!-~]+( [!-~]+)*$"
SYSTEM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # a short name; unknown ones go into a URN


class ReviewSpan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: Annotated[int, JsonNumber] = Field(ge=0, le=FHIR_INTEGER_MAX,
                                              description="Code point offset in the note's text as coded.")
    end: Annotated[int, JsonNumber] = Field(ge=0, le=FHIR_INTEGER_MAX)
    score: Annotated[float | None, JsonNumber] = Field(default=None, allow_inf_nan=False,
                                                       description="The span's share of the evidence, if any.")
    text: str = Field(min_length=1, description="`text[start:end]` of the note: end - start code points.")


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=64, pattern=CODE_PATTERN, examples=["J18.9"])
    system: str = Field(default="icd10cm", max_length=64, pattern=SYSTEM_PATTERN,
                        description="icd10cm, icd10pcs, icd9cm, icd9pcs or the model's own system name.")
    description: str = Field(default="", description="The code's description (Coding.display when not empty).")
    decision: Literal["accepted", "rejected", "added"] = Field(
        description="accepted or rejected (a suggestion), added (a code the coder found missing).")
    probability: Annotated[float | None, JsonNumber] = Field(
        default=None, ge=0.0, le=1.0, description="The suggestion's probability; null for a rank score or an "
                                                  "added code.")
    score: Annotated[float | None, JsonNumber] = Field(
        default=None, allow_inf_nan=False, description="The suggestion's score (a rank score when there is no "
                                                       "probability); null for an added code.")
    evidence: list[ReviewSpan] = Field(default_factory=list, description="The suggestion's evidence spans.")


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note_id: str = Field(min_length=1, description="The note's id: the resources' subject.")
    decisions: list[ReviewDecision] = Field(description="One per decided code, in the order to export.")


class ReviewBundle(BaseModel):
    """A FHIR R4 Bundle (type collection) of the decisions."""

    resourceType: Literal["Bundle"]
    type: Literal["collection"]
    timestamp: str
    meta: dict = Field(description="The generator tag (clem-icd and its version).")
    entry: list[dict] = Field(description="Per decision, in order: a Condition (verificationStatus confirmed, "
                                          "refuted when rejected) or, for a procedure code, a Procedure "
                                          "(status completed, unknown when rejected); an OperationOutcome "
                                          "naming the place of a decision that cannot be stated (a second "
                                          "decision on one code, a span whose text is not end - start long).")


def review_router(authorized: Callable) -> APIRouter:
    """The review routes, behind the service's bearer-token dependency `authorized`."""
    router = APIRouter(tags=["review"], dependencies=[Depends(authorized)])

    @router.post("/v1/review/fhir", response_model=None,
                 responses={200: {"model": ReviewBundle, "description": "The decisions as a FHIR R4 Bundle."},
                            **error_responses(413, 422)})
    async def review_fhir(body: ReviewRequest) -> dict:
        """A coder's decisions on one note as the FHIR R4 Bundle `predict --format fhir` would
        write for them: the decision (extension review-decision), the probability or rank score
        and the evidence spans as extensions. Stateless; no model needed."""
        log.info("review bundle: %d decision(s)", len(body.decisions))
        return fhir.decision_bundle(body.note_id, [decision.model_dump() for decision in body.decisions],
                                    datetime.now(UTC).isoformat(timespec="seconds"))

    return router
