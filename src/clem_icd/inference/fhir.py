"""Predictions as FHIR R4: a Bundle (type collection) of Condition resources for diagnosis codes
and Procedure resources for procedure codes, one per predicted code of each note.

- Coding system URIs: ICD-10-CM http://hl7.org/fhir/sid/icd-10-cm, ICD-10-PCS
  http://www.cms.gov/Medicare/Coding/ICD10, ICD-9-CM http://hl7.org/fhir/sid/icd-9-cm.
- A machine suggestion, not a confirmed diagnosis: Condition.verificationStatus = provisional,
  Procedure.status = unknown.
- subject: a logical reference by identifier to the note (system NOTE_SYSTEM, value = note id);
  map it to your Patient when you import the bundle.
- The model's score is an extension (valueDecimal) named for what it is: PROBABILITY_URL when
  the record has a probability (the coder, the TF-IDF baseline, mean fusion), RANK_SCORE_URL
  when it has only a rank score (rrf fusion), which a FHIR consumer must not read as a
  probability. Each evidence span is a complex extension (EVIDENCE_URL: start, end, score,
  text) - on Condition.evidence, whose detail references the note, and on the Procedure itself
  (R4 Procedure has no evidence).
- A note that could not be coded becomes an OperationOutcome naming its id.

A coder's decisions on one note (`decision_entries`, `decision_bundle`; the review page's FHIR
export and the workbench's) map the same way, the decision being what the resource states:
accepted and added codes are Condition.verificationStatus confirmed / Procedure.status
completed, rejected ones refuted / unknown; DECISION_URL (valueCode accepted, rejected or added)
says which, the probability or rank-score extension is there when the code was suggested (an
added code has neither), and an evidence span without a score has no score part.
"""

from __future__ import annotations

import uuid

from clem_icd.version import __version__

PROFILE_BASE = "https://github.com/clem-icd/clem-icd/fhir/StructureDefinition"
PROBABILITY_URL = f"{PROFILE_BASE}/probability"
RANK_SCORE_URL = f"{PROFILE_BASE}/rank-score"
EVIDENCE_URL = f"{PROFILE_BASE}/evidence-span"
DECISION_URL = f"{PROFILE_BASE}/review-decision"
DECISIONS = ("accepted", "rejected", "added")
VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
NOTE_SYSTEM = "urn:clem-icd:note-id"
SYSTEM_URIS = {
    "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd10pcs": "http://www.cms.gov/Medicare/Coding/ICD10",
    "icd9cm": "http://hl7.org/fhir/sid/icd-9-cm",
    "icd9pcs": "http://hl7.org/fhir/sid/icd-9-cm",  # volume 3 shares the ICD-9-CM URI
}
PROCEDURE_SYSTEMS = {"icd10pcs", "icd9pcs"}
_NAMESPACE = uuid.UUID("6f1c3a52-8f0e-4f8b-9d55-3d3c5b0e1a77")  # stable fullUrls for the same note/code


def _note_reference(note_id: str) -> dict:
    return {"identifier": {"system": NOTE_SYSTEM, "value": note_id}, "display": f"note {note_id}"}


def _evidence_extension(span: dict) -> dict:
    # A model's span always has a score; a span a coder's tool sends may not (FHIR has no null).
    score = [] if span.get("score") is None else [{"url": "score", "valueDecimal": float(span["score"])}]
    return {"url": EVIDENCE_URL, "extension": [
        {"url": "start", "valueInteger": int(span["start"])},
        {"url": "end", "valueInteger": int(span["end"])},
        *score,
        {"url": "text", "valueString": span["text"]},
    ]}


def score_extension(code: dict) -> dict:
    """The probability extension when the code record has one, else its rank score's."""
    if code.get("probability") is not None:
        return {"url": PROBABILITY_URL, "valueDecimal": round(float(code["probability"]), 6)}
    return {"url": RANK_SCORE_URL, "valueDecimal": round(float(code["score"]), 6)}


def code_resource(note_id: str, code: dict) -> dict:
    system = code.get("system") or "icd10cm"
    coding = {"system": SYSTEM_URIS.get(system, f"urn:clem-icd:code-system:{system}"), "code": code["code"]}
    if code.get("description"):
        coding["display"] = code["description"]
    common = {
        "extension": [score_extension(code)],
        "code": {"coding": [coding]},
        "subject": _note_reference(note_id),
    }
    spans = code.get("evidence") or []
    if system in PROCEDURE_SYSTEMS:
        resource = {"resourceType": "Procedure", "status": "unknown", **common}
        resource["extension"] += [_evidence_extension(span) for span in spans]
        return resource
    resource = {
        "resourceType": "Condition",
        "verificationStatus": {"coding": [{
            "system": VERIFICATION_SYSTEM, "code": "provisional"}]},
        **common,
    }
    if spans:
        resource["evidence"] = [{"extension": [_evidence_extension(span)], "detail": [_note_reference(note_id)]}
                                for span in spans]
    return resource


def error_resource(note_id: str | None, error: str) -> dict:
    label = f"note {note_id}" if note_id is not None else "a record without id"
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid", "diagnostics": f"{label}: {error}"}]}


def bundle_entries(record: dict) -> list[dict]:
    """Bundle entries for one output record ({id, codes, ...} or {id, error})."""
    note_id = record.get("id")
    if "error" in record:
        resources = [error_resource(note_id, record["error"])]
        keys = [f"error:{note_id}:{record['error']}"]
    else:
        resources = [code_resource(note_id, code) for code in record["codes"]]
        keys = [f"{note_id}:{code['code']}" for code in record["codes"]]
    return [{"fullUrl": f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}", "resource": resource}
            for key, resource in zip(keys, resources)]


def bundle_header(timestamp: str) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "timestamp": timestamp,
            "meta": {"tag": [{"system": "urn:clem-icd:generator", "code": f"clem-icd-{__version__}"}]}}


def _decision_problem(index: int, decision: dict, earlier: set[tuple[str, str]]) -> str | None:
    """Why decision `index` cannot be stated (its place and what is wrong, never its text), or None.
    `earlier`: (system, code) of the decisions before it, which this one is added to."""
    system = decision.get("system") or "icd10cm"
    key = (system, decision["code"])
    duplicate = key in earlier
    earlier.add(key)
    if decision.get("decision") not in DECISIONS:
        return f"decisions.{index}.decision: one of {', '.join(DECISIONS)}"
    if duplicate:
        # A second statement on one code of one note repeats or contradicts the first, which stands:
        # reported, not merged, so that a consumer sees the conflict.
        return f"decisions.{index}: {system} {decision['code']} has an earlier decision"
    for j, span in enumerate(decision.get("evidence") or []):
        # The text is note[start:end]: its code points are end - start, which the server can check
        # without the note.
        if len(span["text"]) != int(span["end"]) - int(span["start"]):
            return (f"decisions.{index}.evidence.{j}: the text has {len(span['text'])} characters, "
                    f"end - start is {int(span['end']) - int(span['start'])}")
    return None


def decision_resource(note_id: str, decision: dict) -> dict:
    """The Condition or Procedure stating one coder decision (see the module's docstring)."""
    system = decision.get("system") or "icd10cm"
    coding = {"system": SYSTEM_URIS.get(system, f"urn:clem-icd:code-system:{system}"), "code": decision["code"]}
    if decision.get("description"):
        coding["display"] = decision["description"]
    rejected = decision["decision"] == "rejected"
    extension = [{"url": DECISION_URL, "valueCode": decision["decision"]}]
    if decision.get("probability") is not None or decision.get("score") is not None:
        extension.append(score_extension(decision))
    spans = decision.get("evidence") or []
    common = {"code": {"coding": [coding]}, "subject": _note_reference(note_id)}
    if system in PROCEDURE_SYSTEMS:
        return {"resourceType": "Procedure", "status": "unknown" if rejected else "completed",
                "extension": extension + [_evidence_extension(span) for span in spans], **common}
    resource = {
        "resourceType": "Condition", "extension": extension,
        "verificationStatus": {"coding": [{"system": VERIFICATION_SYSTEM,
                                           "code": "refuted" if rejected else "confirmed"}]},
        **common,
    }
    if spans:
        resource["evidence"] = [{"extension": [_evidence_extension(span)], "detail": [_note_reference(note_id)]}
                                for span in spans]
    return resource


def decision_entries(note_id: str, decisions: list[dict]) -> list[dict]:
    """Bundle entries for a coder's decisions on one note, in their order: each decision
    ({code, system, description, decision: accepted|rejected|added, probability, score,
    evidence: [{start, end, score, text}]}) as its Condition or Procedure, or, when it cannot be
    stated (`_decision_problem`), as an OperationOutcome naming its place. The fullUrl is the same
    for the same note, system and code in every export, and differs from the suggestion's
    (`bundle_entries`), which a decision does not replace."""
    entries, earlier = [], set()
    for index, decision in enumerate(decisions):
        problem = _decision_problem(index, decision, earlier)
        if problem is None:
            key = f"decision:{note_id}:{decision.get('system') or 'icd10cm'}:{decision['code']}"
            resource = decision_resource(note_id, decision)
        else:
            key = f"decision-error:{note_id}:{index}"
            resource = error_resource(note_id, problem)
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}", "resource": resource})
    return entries


def decision_bundle(note_id: str, decisions: list[dict], timestamp: str) -> dict:
    """The Bundle of `decision_entries`, with the generator tag of `bundle_header`."""
    return {**bundle_header(timestamp), "entry": decision_entries(note_id, decisions)}
