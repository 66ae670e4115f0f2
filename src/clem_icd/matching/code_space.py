"""Every code of ICD-10-CM and ICD-10-PCS, with the texts that describe it: the label space of
the description matcher.

- ICD-10-CM: every code and category of the tabular list (simple-icd-10-cm), chapters and
  blocks left out. Codes with a 7th character (S02.0XXA, S02.0XXD, ...) differ only in the
  encounter, which no description of the note's content can tell apart; they are represented by
  the code without its 7th character (S02.0XX, as CodiEsp and many coders write it, described by
  its parent), one entry instead of three to ten near-duplicates in the ranking.
- ICD-10-PCS: every full code of the CMS table, and every 4-character prefix (section, body
  system, operation, body part; CodiEsp codes procedures this way when the note does not say
  the approach or device), described by what the codes under it share.
Each code's texts: its description, then its inclusion terms (clem_icd.codes.rich); the parent
category's text is left out, as it would give every sibling the parent's score.
"""

from __future__ import annotations

from dataclasses import dataclass

from clem_icd.codes import icd10pcs
from clem_icd.codes.dictionary import CodeDictionary
from clem_icd.codes.icd10cm import tabular_list
from clem_icd.codes.rich import description_parts
from clem_icd.codes.systems import CodeSystem
from clem_icd.errors import ClemError

SPACE_SYSTEMS = (CodeSystem.ICD10CM.value, CodeSystem.ICD10PCS.value)
MAX_TERMS = 8  # inclusion terms per code; a few codes list 15+, the first carry the common names
PCS_PREFIX = 4


@dataclass(frozen=True)
class SpaceCode:
    code: str
    system: str
    description: str
    texts: tuple[str, ...]  # description first, then inclusion terms


def code_family(code: str, system: str) -> str:
    """The group of codes a code belongs to: its 3-character category for ICD-10-CM (K35.80 ->
    K35), its section, body system and root operation for ICD-10-PCS (0DTJ4ZZ -> 0DT); the code
    itself for other systems. A coder that believes a note holds a family's trained code makes
    an untrained sibling plausible (most of CodiEsp's unseen dev codes have a trained sibling)."""
    if system in SPACE_SYSTEMS:
        return f"{system}:{code.replace('.', '')[:3].upper()}"
    return f"{system}:{code}"


def icd10cm_codes() -> list[str]:
    """The tabular list's codes and categories, 7th-character codes folded into their stem."""
    cm = tabular_list()
    codes, seen = [], set()
    for code in cm.get_all_codes(True):
        if cm.is_chapter_or_block(code):
            continue
        if len(code.replace(".", "")) == 7 and cm.is_extended_subcategory(code):
            code = code[:-1]  # S02.0XXA -> S02.0XX
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def icd10pcs_codes() -> list[str]:
    """Every full code of the CMS table and every 4-character prefix of one."""
    full = sorted(icd10pcs.package_titles())
    prefixes = sorted({code[:PCS_PREFIX] for code in full})
    return prefixes + full


def code_space(systems: list[str] | tuple[str, ...] = SPACE_SYSTEMS,
               dictionary: CodeDictionary | None = None) -> list[SpaceCode]:
    """The codes of `systems` (icd10cm, icd10pcs) with their description and texts."""
    unknown = sorted(set(systems) - set(SPACE_SYSTEMS))
    if unknown or not systems:
        raise ClemError(f"code systems for the full label space: {', '.join(SPACE_SYSTEMS)} "
                        f"(got {', '.join(unknown) or 'none'})")
    pairs = []
    for name in systems:
        system = CodeSystem(name)
        pairs += [(code, system.value) for code in (icd10cm_codes() if system is CodeSystem.ICD10CM else icd10pcs_codes())]
    return describe_codes(pairs, dictionary)


def describe_codes(pairs: list[tuple[str, str]], dictionary: CodeDictionary | None = None,
                   descriptions: dict[str, str] | None = None) -> list[SpaceCode]:
    """(code, system) pairs with their texts. `descriptions` (code -> text, e.g. a dataset's
    codes.tsv) come first; the code lists describe the rest, and a code nothing describes is
    its own text."""
    dictionary = dictionary or CodeDictionary()
    descriptions = descriptions or {}
    out = []
    for code, system in pairs:
        try:
            plain = descriptions.get(code) or dictionary.describe(code, CodeSystem(system)) or code
        except ValueError:  # a system the dictionary does not know (custom codes)
            plain = descriptions.get(code) or code
        parts = description_parts(code, system, plain)
        out.append(SpaceCode(code, system, parts.plain, (parts.plain, *parts.terms[:MAX_TERMS])))
    return out
