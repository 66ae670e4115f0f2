"""Richer code descriptions: besides a code's title, the texts a coder reads next to it.

- ICD-10-CM (the tabular list, `icd10cm.py`): the inclusion terms and 'Includes' notes filed
  under the code, and the description of its parent category or subcategory as context. K35.80
  "Unspecified acute appendicitis" adds "Acute appendicitis NOS" and "Acute appendicitis without
  (localized) (generalized) peritonitis", in "Other and unspecified acute appendicitis".
  A code with a 7th character reads the subcategory it extends; a code the list does not have
  (CodiEsp's `S02.0XX`) reads its nearest parent (`S02.0`).
- ICD-10-PCS: the titles already spell out operation, body part, approach, device and qualifier;
  the context adds the axes they leave out, the section and (Medical and Surgical) the body
  system (`icd10pcs.axis_names`): 0DTJ4ZZ is in "Medical and Surgical: Gastrointestinal System".
- Other systems (ICD-9, custom): the plain description only.

Two uses: `rich_description` joins the texts into one short string (label-query
initialisation, `description_text: rich`); `description_texts` lists them, for a matcher that
embeds each text apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from clem_icd.codes import icd10pcs
from clem_icd.codes.icd10cm import (
    category_parent,
    described_item,
    icd10cm_description,
    inclusion_terms,
)
from clem_icd.codes.systems import CodeSystem, normalize_code

# Label-query initialisation reads at most 128 tokens of a rich description (64 of a plain one).
# Clinical English runs at about 3-4 characters per token in BERT- and ModernBERT-style
# tokenizers, so ~384 characters fit; beyond that the tokenizer would cut the end, which is the
# context. Some codes list many terms (E23.0 has 15): the first few carry the common synonyms.
MAX_RICH_TERMS = 4
MAX_RICH_CHARS = 384


@dataclass(frozen=True)
class DescriptionParts:
    """A code's plain description, the further terms that name it, and where it sits (the
    parent category's description, or the PCS section and body system); None when nothing
    adds to the plain text."""

    plain: str
    terms: tuple[str, ...] = ()
    context: str | None = None

    def texts(self) -> list[str]:
        return [self.plain, *self.terms, *([self.context] if self.context else [])]


def _icd10cm_extras(code: str) -> tuple[list[str], str | None]:
    item = described_item(code)
    if item is None:
        return [], None
    terms = inclusion_terms(item)
    if item != code:  # a code's own terms first (none for 7th-character codes so far)
        terms = inclusion_terms(code) + terms
    parent = category_parent(item)
    return terms, icd10cm_description(parent) if parent else None


def _pcs_context(code: str) -> str | None:
    names = icd10pcs.axis_names(code)
    return ": ".join(names) if names else None


def _distinct(plain: str, terms: list[str], context: str | None) -> DescriptionParts:
    """Drop what repeats: a term equal to the plain text or to an earlier term, and a context
    that the plain text already contains (E11.9 "Type 2 diabetes mellitus without complications"
    in E11 "Type 2 diabetes mellitus" adds no word, only tokens)."""
    seen = {plain.lower()}
    kept = []
    for term in terms:
        if term.lower() not in seen:
            seen.add(term.lower())
            kept.append(term)
    if context and (context.lower() in plain.lower() or context.lower() in seen):
        context = None
    return DescriptionParts(plain, tuple(kept), context)


def description_parts(code: str, system: CodeSystem | str, plain: str) -> DescriptionParts:
    """The parts of a code's rich description. `plain` is its plain description (the code
    itself when empty); a code that is not well formed, or of a system other than ICD-10-CM and
    ICD-10-PCS, has only that."""
    plain = " ".join(str(plain or "").split()) or str(code)
    try:
        system = CodeSystem(system)
        code = normalize_code(code, system)
    except ValueError:
        return DescriptionParts(plain)
    if system is CodeSystem.ICD10CM:
        terms, context = _icd10cm_extras(code)
    elif system is CodeSystem.ICD10PCS:
        terms, context = [], _pcs_context(code)
    else:
        return DescriptionParts(plain)
    return _distinct(plain, terms, context)


def description_texts(code: str, system: CodeSystem | str, plain: str, max_terms: int | None = None) -> list[str]:
    """The plain description first, then each further term, then the context: one text each, for
    a matcher that embeds them apart. All terms unless `max_terms` is given."""
    parts = description_parts(code, system, plain)
    if max_terms is not None:
        parts = DescriptionParts(parts.plain, parts.terms[:max_terms], parts.context)
    return parts.texts()


def _join(plain: str, terms: tuple[str, ...], context: str | None) -> str:
    text = "; ".join((plain, *terms))
    return f"{text} (in: {context})" if context else text


def rich_description(code: str, system: CodeSystem | str, plain: str, max_terms: int = MAX_RICH_TERMS,
                     max_chars: int = MAX_RICH_CHARS) -> str:
    """One string: "plain; term; term (in: context)", e.g. "Unspecified acute appendicitis; Acute
    appendicitis NOS; ... (in: Other and unspecified acute appendicitis)". At most `max_terms`
    terms; over `max_chars`, terms are dropped from the end, then the context. The plain text is
    never cut, so a plain text longer than `max_chars` is returned alone."""
    parts = description_parts(code, system, plain)
    terms = parts.terms[:max_terms]
    while terms and len(_join(parts.plain, terms, parts.context)) > max_chars:
        terms = terms[:-1]
    text = _join(parts.plain, terms, parts.context)
    return text if len(text) <= max_chars else parts.plain
