"""A synthetic corpus of coded notes, for tests, demos and smoke runs without protected data.

THE NOTES ARE SYNTHETIC. They are composed, not written by clinicians and not taken from any
patient: each one mentions a few ICD-10-CM codes through their official descriptions or
inclusion terms (from the `simple-icd-10-cm` package, the CMS tabular list), set in clinical-style
sentence templates, together with negated mentions of other codes ("denies ...", "no evidence
of ...", which are not labels) and distractor sentences (vitals, medications, labs, social
history) that carry no code. The labels are exactly the codes mentioned positively, and the
character span of every positive mention is known, so evidence extraction can be scored too.

Code frequencies follow a Zipf-like law over a fixed list of common inpatient codes, so some
codes are rare; note lengths vary from a few sentences to about 1,000 words. Everything is
drawn from one seeded generator: the same seed gives the same documents, byte for byte.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from clem_icd.codes import CodeDictionary, CodeSystem
from clem_icd.codes.icd10cm import tabular_list
from clem_icd.data.dataset import DatasetWriter
from clem_icd.errors import ClemError

# Common inpatient ICD-10-CM codes (all billable), roughly most frequent first. The first
# `n_codes` of them make up a synthetic dataset's label set.
COMMON_CODES = (
    "I10", "E11.9", "J18.9", "N17.9", "I50.9", "E78.5", "J44.1", "K21.9", "N39.0", "I48.91",
    "E87.1", "D64.9", "E03.9", "I25.10", "N18.9", "A41.9", "J96.01", "E86.0", "F17.210",
    "G47.33", "E66.9", "I21.4", "I63.9", "K92.2", "E87.6", "F41.9", "F32.9", "M81.0", "J45.909",
    "K57.30", "K85.90", "K80.20", "I26.99", "I82.409", "L03.115", "E11.65", "E11.22", "E10.10",
    "F10.20", "F03.90", "G40.909", "R56.9", "R07.9", "R55", "I95.9", "D69.6", "E83.42", "N40.0",
    "C34.90", "C50.919", "I35.0", "I11.0", "J90", "J81.0", "K59.00", "R11.2", "M54.50",
    "M17.11", "U07.1", "E55.9", "G93.41", "R41.82", "B96.20", "Z66",
)
MIN_CODES = 8  # room for up to 6 positive and 2 negated codes in one note
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SYNTHETIC_STATEMENT = (
    "Synthetic notes: composed from ICD-10-CM descriptions and inclusion terms "
    "(simple-icd-10-cm) in sentence templates, with negated mentions of other codes and "
    "distractor sentences. No real patient data."
)

POSITIVE_TEMPLATES = (
    "History of present illness: patient presents with {}.",
    "Admitted with {}.",
    "Past medical history is significant for {}.",
    "Assessment: {}.",
    "Discharge diagnosis: {}.",
    "Findings during this admission are consistent with {}.",
    "Known history of {}, followed by primary care.",
    "The patient was treated for {} during this stay.",
    "Problem list includes {}.",
)
NEGATED_TEMPLATES = (
    "Patient denies {}.",
    "No evidence of {}.",
    "Negative for {}.",
    "Workup ruled out {}.",
    "There is no history of {}.",
)
MEDICATIONS = ("metoprolol", "lisinopril", "atorvastatin", "aspirin", "furosemide", "pantoprazole",
               "heparin", "acetaminophen", "amlodipine", "sertraline", "levetiracetam", "insulin")
DISTRACTOR_TEMPLATES = (
    lambda r: (f"Vital signs: temperature {r.uniform(36.0, 38.9):.1f} C, heart rate "
               f"{r.integers(55, 125)}, blood pressure {r.integers(95, 175)}/{r.integers(50, 100)}, "
               f"respiratory rate {r.integers(12, 28)}, oxygen saturation {r.integers(88, 100)}% "
               "on room air."),
    lambda r: (f"Medications on admission include {r.choice(MEDICATIONS)} "
               f"{r.choice((5, 10, 20, 40, 81, 500))} mg {r.choice(('daily', 'twice daily', 'at bedtime'))}."),
    lambda r: (f"Social history: lives {r.choice(('alone', 'with spouse', 'with family'))}, "
               f"{r.choice(('retired', 'works in an office', 'works in construction'))}."),
    lambda r: (f"Labs notable for sodium {r.integers(128, 146)}, potassium {r.uniform(3.0, 5.5):.1f}, "
               f"creatinine {r.uniform(0.6, 3.0):.1f} and white count {r.uniform(4.0, 18.0):.1f}."),
    lambda r: "Physical exam: alert and oriented, abdomen soft, extremities warm and well perfused.",
    lambda r: f"Seen by physical therapy on hospital day {r.integers(1, 8)}, ambulating with a walker.",
    lambda r: (f"Plan: continue home medications and follow up in clinic in {r.integers(1, 6)} "
               "weeks."),
    lambda r: f"Nursing notes: tolerating diet, pain controlled, slept {r.integers(3, 9)} hours.",
    lambda r: (f"Started on {r.choice(MEDICATIONS)} and monitored on telemetry for "
               f"{r.integers(2, 5)} days."),
    lambda r: "Family meeting held; the patient and family agree with the plan of care.",
    lambda r: f"Chest radiograph obtained on day {r.integers(1, 5)}; compared with prior imaging.",
    lambda r: "Discharged home in stable condition with written instructions.",
)


def _as_mention(term: str) -> str | None:
    """A tabular-list term as it would be written in a note: 'NOS' dropped, a capital first
    letter lowered unless the word is an acronym ('COPD')."""
    if term.endswith(" NOS"):
        term = term[: -len(" NOS")]
    if len(term) < 5:  # 'Fit' and the like are not recognisable mentions
        return None
    if term[:2].isupper():
        return term
    return term[0].lower() + term[1:]


@lru_cache(maxsize=None)
def code_phrases(code: str) -> tuple[str, ...]:
    """The phrases a synthetic note may use for `code`: its description and inclusion terms."""
    icd = tabular_list()
    if not icd.is_valid_item(code):
        raise ClemError(f"'{code}' is not an ICD-10-CM code known to simple-icd-10-cm")
    terms = [icd.get_description(code), *icd.get_inclusion_term(code)]
    phrases = dict.fromkeys(p for p in map(_as_mention, terms) if p)  # ordered, no duplicates
    return tuple(phrases)


def _distractor_count(rng: np.random.Generator) -> int:
    # Log-normal: most notes have a handful of filler sentences, a few have ~80 (~1,000 words).
    return int(min(80, rng.lognormal(mean=2.3, sigma=0.9)))


def synthetic_note(codes: list[str], rng: np.random.Generator, *,
                   negated: list[str] | None = None) -> tuple[str, list[tuple[int, int, str]]]:
    """Compose one note that mentions each of `codes` positively.

    `negated` codes are mentioned under a negation; by default 1-2 codes of `COMMON_CODES`
    that are not in `codes`. Returns the text and (start, end, code) for every positive
    mention, so that `text[start:end]` is the planted phrase."""
    if negated is None:
        pool = [c for c in COMMON_CODES if c not in codes]
        negated = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(1, 3)), replace=False)]
    overlap = set(codes) & set(negated)
    if overlap:
        raise ValueError(f"codes both positive and negated: {sorted(overlap)}")

    # (template, phrase, code or None) for mentions; (sentence, None, None) for fillers.
    pieces: list[tuple[str, str | None, str | None]] = []
    for code in codes:
        phrases = code_phrases(code)
        pieces.append((str(rng.choice(POSITIVE_TEMPLATES)), phrases[rng.integers(len(phrases))], code))
    for code in negated:
        phrases = code_phrases(code)
        pieces.append((str(rng.choice(NEGATED_TEMPLATES)), phrases[rng.integers(len(phrases))], None))
    for _ in range(_distractor_count(rng)):
        template = DISTRACTOR_TEMPLATES[rng.integers(len(DISTRACTOR_TEMPLATES))]
        pieces.append((template(rng), None, None))
    order = rng.permutation(len(pieces))

    intro = (f"{rng.integers(25, 95)}-year-old {rng.choice(('man', 'woman'))} "
             "seen on the medicine service.")
    text, spans = intro, []
    for position, index in enumerate(order):
        template, phrase, code = pieces[index]
        # Paragraph breaks every few sentences, so notes look like sections.
        text += "\n\n" if position % 4 == 3 else " "
        if phrase is None:
            text += template
            continue
        before, after = template.split("{}")
        start = len(text) + len(before)
        text += before + phrase + after
        if code is not None:
            spans.append((start, start + len(phrase), code))
    return text + "\n", sorted(spans)


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _zipf_weights(n: int, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _split_names(n: int, rng: np.random.Generator) -> list[str]:
    """70/15/15 by count, assigned to documents in a random (seeded) order."""
    n_train = round(n * SPLIT_FRACTIONS["train"])
    n_val = round(n * SPLIT_FRACTIONS["val"])
    names = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    return names[rng.permutation(n)].tolist()


def make_synthetic_dataset(out: Path, *, n_documents: int = 600, n_codes: int = 40, seed: int = 0,
                           overwrite: bool = False) -> dict:
    """Write a prepared dataset of `n_documents` synthetic notes over the first `n_codes`
    codes of `COMMON_CODES`; returns the manifest."""
    if not MIN_CODES <= n_codes <= len(COMMON_CODES):
        raise ClemError(f"n_codes must be between {MIN_CODES} and {len(COMMON_CODES)}, got {n_codes}")
    if n_documents < 1:
        raise ClemError(f"n_documents must be at least 1, got {n_documents}")
    codes = list(COMMON_CODES[:n_codes])
    weights = _zipf_weights(n_codes)
    rng = np.random.default_rng(seed)

    ids, texts, labels = [], [], []
    for number in range(n_documents):
        k = int(rng.integers(2, 7))
        positive = [codes[i] for i in sorted(rng.choice(n_codes, size=k, replace=False, p=weights))]
        others = [c for c in codes if c not in positive]
        # Negated codes are drawn uniformly, so rare codes are also seen negated.
        negated = [others[i] for i in rng.choice(len(others), size=int(rng.integers(1, 3)), replace=False)]
        text, _ = synthetic_note(positive, rng, negated=negated)
        ids.append(f"synthetic-{number:06d}")
        texts.append(text)
        labels.append(positive)
    splits = _split_names(n_documents, rng)

    with DatasetWriter(Path(out), overwrite=overwrite) as writer:
        writer.write(ids, texts, labels, splits)
        return writer.finish(
            code_systems={c: CodeSystem.ICD10CM for c in codes},
            dictionary=CodeDictionary(),
            manifest={
                "source": "synthetic",
                "description": SYNTHETIC_STATEMENT,
                "options": {"n_documents": n_documents, "n_codes": n_codes, "seed": seed,
                            "split_fractions": SPLIT_FRACTIONS, "code_frequency": "zipf, exponent 1"},
                "versions": {"simple-icd-10-cm": _package_version("simple-icd-10-cm")},
                "inputs": [],
            },
        )
