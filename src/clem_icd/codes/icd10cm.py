"""The ICD-10-CM tabular list, from the `simple-icd-10-cm` package (the current CMS release).

This module sits below both `systems` (which needs it to tell CM from PCS for a few ambiguous
strings) and `dictionary` (descriptions), so that imports run one way:
`icd10cm` <- `systems` <- `dictionary`. It imports nothing from this package.
"""

from __future__ import annotations

from functools import lru_cache


def tabular_list():
    """The `simple_icd_10_cm` module. Imported on first use: it parses the whole tabular list
    (~2 s) at import."""
    import simple_icd_10_cm

    return simple_icd_10_cm


@lru_cache(maxsize=None)
def is_known_icd10cm(code: str) -> bool:
    """Whether `code` (canonical spelling, e.g. 'E78.5') is a code or category of the list."""
    return tabular_list().is_valid_item(code)


def icd10cm_description(code: str) -> str | None:
    """The tabular-list description of `code`, or None when the list does not have it."""
    return tabular_list().get_description(code) if is_known_icd10cm(code) else None


@lru_cache(maxsize=None)
def nearest_icd10cm_parent(code: str) -> str | None:
    """The nearest ancestor of a code that the list does not have: drop characters from the end
    until what is left is in the list, but never below the 3-character category.

    This is for codes written without their 7th character, as CodiEsp does (`S02.0XX` for
    `S02.0XXA` / `S02.0XXB` / ...): `S02.0XX` -> `S02.0` "Fracture of vault of skull",
    `W19.XXX` -> `W19` "Unspecified fall", `T81.4XX` -> `T81.4`. The parent is chosen over a
    child because the children only add the encounter ("..., initial encounter for closed
    fracture"), which the truncated code does not say, and the parent's description reads as
    what the code means. It also gives retired codes their nearest current ancestor. Returns
    None when even the category is unknown."""
    stem = code.replace(".", "")
    for length in range(len(stem) - 1, 2, -1):
        candidate = stem[:3] + "." + stem[3:length] if length > 3 else stem[:3]
        if is_known_icd10cm(candidate):
            return candidate
    return None


def described_item(code: str) -> str | None:
    """The item of the list whose inclusion terms and parent describe `code`: the code itself;
    for a code with a 7th character (`S02.0XXA`) the subcategory it extends (`S02.0`), since the
    7th character only adds the encounter and the terms sit on the subcategory; for a code the
    list does not have, its nearest parent (`nearest_icd10cm_parent`). None when the category
    is unknown too."""
    if not is_known_icd10cm(code):
        return nearest_icd10cm_parent(code)
    cm = tabular_list()
    while cm.is_extended_subcategory(code):
        code = cm.get_parent(code)
    return code


def inclusion_terms(code: str) -> list[str]:
    """What the list files under `code` itself: its inclusion terms ('Acute appendicitis NOS'
    under K35.80), then its 'Includes' notes ('high blood pressure' under I10). Notes of
    ancestors are left out: they describe the whole category, not this code. [] when unknown."""
    if not is_known_icd10cm(code):
        return []
    cm = tabular_list()
    return [term.strip() for term in cm.get_inclusion_term(code) + cm.get_includes(code) if term.strip()]


def category_parent(code: str) -> str | None:
    """The parent of `code` when it is a category or subcategory (K35.80 -> K35.8); None for a
    category, whose parent is a block (I10 -> I10-I1A), or an unknown code."""
    if not is_known_icd10cm(code):
        return None
    cm = tabular_list()
    parent = cm.get_parent(code)
    return parent if parent and cm.is_category_or_subcategory(parent) else None
