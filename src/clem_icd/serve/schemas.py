"""The request bodies of the service, as pydantic models: FastAPI checks them (a malformed body
is a 422 naming the field) and they make the OpenAPI document."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="The note's id; results carry it back. Unique within a request.")
    text: str = Field(description="The note's text. Evidence offsets count its code points (Python string "
                                  "offsets), exactly as sent.")


class CodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notes: list[Note] = Field(description="Notes to code; results come back in this order.")
    top_k: int | None = Field(default=None, ge=1, description="At most this many codes per note (best first).")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="Report codes with a score above "
                                    "this (default: the threshold tuned when the model was trained). The score "
                                    "is the model's probability, or its rank score when /v1/model says "
                                    "score_kind 'rank score' (a model fused by reciprocal rank).")
    explain: Literal["attention", "attingrad", "inputxgrad"] | None = Field(
        default=None, description="Evidence spans per code: attention (free), attingrad or inputxgrad (one "
                                  "backward pass per code).")
    format: Literal["json", "fhir"] = Field(default="json", description="json: the objects `clem-icd predict` "
                                            "writes; fhir: the FHIR R4 Bundle of `predict --format fhir`.")
