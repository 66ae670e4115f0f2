"""Rich code descriptions (clem_icd.codes.rich): checked against the tabular list and the CMS PCS
table themselves, and their use in label-query initialisation (description_text: rich)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import simple_icd_10_cm as cm
import torch
from model_fixtures import minilm_path, tiny_bert

from clem_icd.codes import icd10pcs
from clem_icd.codes.rich import (
    MAX_RICH_CHARS,
    MAX_RICH_TERMS,
    description_parts,
    description_texts,
    rich_description,
)
from clem_icd.errors import ClemError
from clem_icd.model import ICDCoder
from clem_icd.model.config import CoderSettings, ICDCoderConfig

# ------------------------------------------------------------------ ICD-10-CM


def test_k35_80_reads_its_inclusion_terms_and_parent():
    plain = cm.get_description("K35.80")
    texts = description_texts("K35.80", "icd10cm", plain)
    assert texts[0] == plain
    assert "Acute appendicitis NOS" in texts
    assert texts[1:-1] == cm.get_inclusion_term("K35.80")
    assert texts[-1] == cm.get_description(cm.get_parent("K35.80")) == "Other and unspecified acute appendicitis"
    rich = rich_description("K35.80", "icd10cm", plain)
    assert rich.startswith(plain + "; Acute appendicitis NOS")
    assert rich.endswith(" (in: Other and unspecified acute appendicitis)")


def test_a_code_the_list_lacks_reads_its_nearest_parent():
    """CodiEsp writes S02.0XX (no 7th character): S02.0's terms, and S02 as the context."""
    assert not cm.is_valid_item("S02.0XX")
    plain = cm.get_description("S02.0")  # what CodeDictionary describes S02.0XX by
    parts = description_parts("s02.0xx", "icd10cm", plain)
    assert parts.plain == plain
    assert list(parts.terms) == cm.get_inclusion_term("S02.0")
    assert parts.context == cm.get_description("S02") == "Fracture of skull and facial bones"


def test_a_seventh_character_code_reads_the_subcategory_it_extends():
    assert cm.is_extended_subcategory("S02.0XXA") and cm.get_inclusion_term("S02.0XXA") == []
    plain = cm.get_description("S02.0XXA")
    parts = description_parts("S02.0XXA", "icd10cm", plain)
    assert parts.plain == plain
    assert parts.terms == description_parts("S02.0XX", "icd10cm", plain).terms
    assert parts.context == cm.get_description("S02")


def test_a_category_has_no_parent_text():
    """I10's parent is a block (I10-I1A), not a category: no context; its Includes notes are terms."""
    assert cm.is_block(cm.get_parent("I10"))
    plain = cm.get_description("I10")
    parts = description_parts("I10", "icd10cm", plain)
    assert parts.context is None and "(in:" not in rich_description("I10", "icd10cm", plain)
    assert list(parts.terms) == cm.get_includes("I10") and "high blood pressure" in parts.terms


def test_a_parent_text_that_the_plain_text_contains_is_left_out():
    plain = cm.get_description("E11.9")
    assert cm.get_description("E11") in plain
    assert description_texts("E11.9", "icd10cm", plain) == [plain]
    assert rich_description("E11.9", "icd10cm", plain) == plain


def test_repeated_terms_are_dropped():
    plain = "Acute appendicitis NOS"  # a plain text (e.g. from a table) equal to a term
    texts = description_texts("K35.80", "icd10cm", plain)
    assert [t.lower() for t in texts].count("acute appendicitis nos") == 1 and texts[0] == plain


# ------------------------------------------------------------------ ICD-10-PCS


@pytest.mark.parametrize("code", ["0DTJ4ZZ", "0DTJ", "0dtj"])
def test_pcs_code_and_prefix_get_section_and_body_system(code):
    plain = "Resection of Appendix, Percutaneous Endoscopic Approach"
    assert description_texts(code, "icd10pcs", plain) == [plain, "Medical and Surgical: Gastrointestinal System"]
    assert rich_description(code, "icd10pcs", plain) == f"{plain} (in: Medical and Surgical: Gastrointestinal System)"


def test_pcs_outside_medical_and_surgical_gets_the_section_only():
    assert description_texts("bw03", "icd10pcs", "Plain Radiography of Chest") == ["Plain Radiography of Chest", "Imaging"]
    assert description_texts("GZ1ZZZZ", "icd10pcs", "x")[1] == "Mental Health"


def _shares(titles_by_letter: dict[str, list[str]], keywords: list[str]) -> dict[str, float]:
    return {letter: sum(any(k in t for k in keywords) for t in titles) / len(titles)
            for letter, titles in titles_by_letter.items()}


# Words that the titles of a Medical and Surgical body system name (its organs and parts). Upper
# and lower arteries, veins, bones, joints and extremities are told apart by their parts.
BODY_SYSTEM_WORDS = {
    "0": ["brain", "cerebr", "cranial", "spinal", "dura", "menin", "hypothalam", "thalamus", "pons",
          "medulla", "cerebell", "epidural", "subdural", "subarachnoid", "basal ganglia", "olfactory",
          "optic", "oculomotor", "trochlear", "trigeminal", "abducens", "facial nerve", "acoustic",
          "glossopharyngeal", "vagus", "accessory nerve", "hypoglossal"],
    "1": ["nerve", "plexus"],
    "2": ["heart", "atri", "ventric", "valve", "aort", "pulmonary", "coronary", "vena cava", "septum",
          "pericardium", "conduction", "papillary", "chordae", "cardiac"],
    "3": ["subclavian", "axillary", "brachial", "radial", "ulnar", "carotid", "vertebral", "temporal",
          "intracranial", "innominate", "hand artery", "face artery", "thyroid artery", "upper arter",
          "internal mammary"],
    "4": ["aorta", "iliac", "femoral", "popliteal", "tibial", "peroneal", "foot artery", "renal", "mesenteric",
          "celiac", "gastric", "hepatic", "splenic", "colic", "lower arter", "umbilical"],
    "5": ["azygos", "innominate", "subclavian", "axillary", "brachial", "basilic", "cephalic", "hand vein",
          "intracranial", "jugular", "vertebral vein", "face vein", "upper vein"],
    "6": ["inferior vena cava", "splenic", "gastric", "esophageal", "hepatic", "portal", "mesenteric", "colic",
          "renal", "iliac", "hypogastric", "femoral", "saphenous", "foot vein", "lower vein"],
    "7": ["lymphatic", "spleen", "thymus", "bone marrow", "cisterna chyli", "thoracic duct"],
    "8": ["eye", "retin", "lens", "cornea", "sclera", "iris", "lacrimal", "eyelid", "conjunctiva", "choroid",
          "vitreous", "extraocular", "anterior chamber"],
    "9": ["ear", "nasal", "sinus", "nose", "tympanic", "eustachian", "mastoid", "auditory", "ossicle", "cochlea"],
    "B": ["lung", "bronch", "trachea", "pleura", "diaphragm", "carina", "respiratory", "lingula"],
    "C": ["lip", "mouth", "tongue", "palate", "gingiva", "tooth", "teeth", "pharynx", "larynx", "tonsil",
          "adenoid", "uvula", "parotid", "salivary", "epiglottis", "vocal cord", "glottis", "sublingual",
          "submaxillary"],
    "D": ["stomach", "esophag", "intestin", "colon", "duodenum", "jejunum", "ileum", "cecum", "rectum", "anus",
          "anal", "appendix", "omentum", "mesentery", "peritoneum", "gastro", "sigmoid", "sphincter"],
    "F": ["liver", "gallbladder", "hepatic", "pancrea", "bile", "cystic duct", "ampulla", "hepatobiliary"],
    "G": ["thyroid", "pituitary", "pineal", "adrenal", "parathyroid", "glomus", "aortic body", "paraganglion",
          "carotid bod", "endocrine", "coccygeal"],
    "H": ["skin", "breast", "nipple", "nail", "hair"],
    "J": ["subcutaneous tissue"],
    "K": ["muscle"],
    "L": ["tendon"],
    "M": ["bursa", "ligament"],
    "N": ["skull", "bone", "orbit", "maxilla", "mandible", "zygomatic", "nasal"],
    "P": ["rib", "sternum", "vertebra", "clavicle", "scapula", "humer", "radius", "ulna", "carpal", "phalanx",
          "glenoid"],
    "Q": ["pelvic bone", "femur", "femoral", "tibia", "fibula", "patella", "tarsal", "phalanx", "acetabulum",
          "vertebra", "sacrum", "coccyx"],
    "R": ["occipital-cervical", "cervical", "thoracic", "thoracolumbar", "temporomandibular", "sternoclavicular",
          "acromioclavicular", "shoulder", "elbow", "wrist", "carpal", "metacarpo", "finger", "thumb", "upper joint"],
    "S": ["lumbar", "lumbosacral", "sacr", "coccyg", "hip", "knee", "ankle", "tarsal", "metatarsal", "toe",
          "lower joint"],
    "T": ["kidney", "ureter", "bladder", "urethra", "urinary"],
    "U": ["ovar", "fallopian", "uter", "cervix", "vagina", "vulva", "clitoris", "hymen", "endometrium",
          "cul-de-sac", "vestibular gland", "female"],
    "V": ["prostate", "testis", "testes", "scrotum", "penis", "vas deferens", "epididym", "spermatic", "seminal",
          "prepuce", "male", "tunica vaginalis"],
    "W": ["head", "face", "neck", "chest", "abdominal wall", "back", "cavity", "mediastinum", "peritoneal",
          "retroperitoneum", "pelvic", "perineum", "jaw", "tract", "pericardial"],
    "X": ["upper extremity", "shoulder", "axilla", "arm", "elbow", "wrist", "hand", "thumb", "finger", "forequarter"],
    "Y": ["lower extremity", "buttock", "inguinal", "femoral region", "hip", "leg", "knee", "ankle", "foot", "toe",
          "hindquarter"],
}


def test_each_body_system_letter_matches_the_titles_under_it():
    """Every Medical and Surgical body system that the table has is named, and each name's
    organs are what the titles under its letter speak of (nearly all of them), clearly more
    than the titles under any other letter."""
    by_letter = defaultdict(list)
    for code, title in icd10pcs.package_titles().items():
        if code[0] == icd10pcs.MEDICAL_SURGICAL:
            by_letter[code[1]].append(title.lower())
    assert set(by_letter) == set(icd10pcs.MEDICAL_SURGICAL_BODY_SYSTEMS) == set(BODY_SYSTEM_WORDS)
    for letter, words in BODY_SYSTEM_WORDS.items():
        shares = _shares(by_letter, words)
        own = shares.pop(letter)
        assert own >= 0.95, (letter, icd10pcs.MEDICAL_SURGICAL_BODY_SYSTEMS[letter], own)
        assert max(shares.values()) <= own - 0.3, (letter, max(shares, key=shares.get))


SECTION_WORDS = {
    "1": ["products of conception"],
    "2": ["change", "compression", "dressing", "immobilization", "packing", "removal", "traction"],
    "3": ["introduction", "transfusion", "irrigation"],
    "4": ["measurement", "monitoring"],
    "5": ["assistance", "performance", "restoration", "extracorporeal", "ventilation"],
    "6": ["therapy", "pheresis", "perfusion", "decompression", "hyperthermia", "hypothermia", "phototherapy",
          "atmospheric control", "shock wave"],
    "7": ["osteopathic"],
    "8": ["acupuncture", "robotic", "computer assisted", "collection", "suture removal", "in vitro",
          "near infrared", "yoga", "therapeutic massage", "examination", "fluorescence guided"],
    "9": ["chiropractic"],
    "B": ["radiography", "fluoroscopy", "tomography", "magnetic resonance", "ultrasonography", "imaging"],
    "C": ["nuclear medicine", "positron emission"],
    "D": ["radiation", "brachytherapy", "radiosurgery", "hyperthermia", "plaque", "isotope"],
    "F": ["assessment", "treatment", "fitting", "caregiver training", "evaluation", "hearing", "vestibular"],
    "G": ["psycholog", "psychotherapy", "counseling", "crisis", "electroconvulsive", "biofeedback", "hypnosis",
          "narcosynthesis", "light therapy", "medication management", "intervention", "family"],
    "H": ["substance abuse"],
    "X": ["new technology"],
}


def test_each_section_letter_matches_the_titles_under_it():
    """The 17 sections are the first characters the table has; the titles under each (but
    Medical and Surgical, checked per body system above) name its kind of procedure."""
    by_letter = defaultdict(list)
    for code, title in icd10pcs.package_titles().items():
        by_letter[code[0]].append(title.lower())
    assert set(by_letter) == set(icd10pcs.SECTIONS) and len(icd10pcs.SECTIONS) == 17
    for letter, words in SECTION_WORDS.items():
        own = _shares({letter: by_letter[letter]}, words)[letter]
        assert own >= 0.95, (letter, icd10pcs.SECTIONS[letter], own)


# ------------------------------------------------------------------ general


@pytest.mark.parametrize("code,system", [("401.9", "icd9cm"), ("X1", "custom"), ("not a code", "icd10cm"),
                                         ("K35.80", "")])
def test_other_systems_and_malformed_codes_keep_the_plain_text(code, system):
    assert description_texts(code, system, "Some description") == ["Some description"]
    assert rich_description(code, system, "Some description") == "Some description"


def test_an_empty_plain_text_is_the_code():
    assert description_texts("K35.80", "icd10cm", "")[0] == "K35.80"


def test_caps_hold():
    """E23.0 lists 15 inclusion terms: the rich text keeps the first few and stays short;
    description_texts keeps them all unless asked."""
    plain = cm.get_description("E23.0")
    assert len(cm.get_inclusion_term("E23.0")) > MAX_RICH_TERMS
    rich = rich_description("E23.0", "icd10cm", plain)
    terms = cm.get_inclusion_term("E23.0")
    assert rich.startswith(plain + "; " + "; ".join(terms[:MAX_RICH_TERMS]) + " (in: ")
    assert terms[MAX_RICH_TERMS] not in rich and len(rich) <= MAX_RICH_CHARS
    assert len(description_texts("E23.0", "icd10cm", plain)) == 1 + len(terms) + 1
    assert len(description_texts("E23.0", "icd10cm", plain, max_terms=2)) == 1 + 2 + 1
    # Over max_chars: terms go first, then the context; the plain text is never cut.
    short = rich_description("K35.80", "icd10cm", "Unspecified acute appendicitis", max_chars=110)
    assert short == "Unspecified acute appendicitis; Acute appendicitis NOS (in: Other and unspecified acute appendicitis)"
    assert rich_description("K35.80", "icd10cm", "Unspecified acute appendicitis", max_chars=80) == \
        "Unspecified acute appendicitis (in: Other and unspecified acute appendicitis)"
    assert rich_description("K35.80", "icd10cm", "Unspecified acute appendicitis", max_chars=40) == \
        "Unspecified acute appendicitis"
    long_plain = "word " * 100
    assert rich_description("K35.80", "icd10cm", long_plain) == long_plain.strip()


def test_caps_hold_across_the_list():
    for code in ["K43.6", "Y38.2", "E23.0", "V00.811S", "S52.521A", "A00.0", "Z99.89"]:
        plain = cm.get_description(code)
        rich = rich_description(code, "icd10cm", plain)
        assert rich.startswith(plain) and len(rich) <= max(MAX_RICH_CHARS, len(plain))
        assert rich.count("; ") <= MAX_RICH_TERMS + plain.count("; ")


# ------------------------------------------------------------------ the coder


def test_settings_reject_an_unknown_description_text():
    with pytest.raises(ClemError, match="description_text must be one of plain, rich, got 'fancy'"):
        CoderSettings(description_text="fancy")
    assert CoderSettings().description_text == "plain"


def test_a_saved_config_without_the_field_reads_as_plain(tmp_path):
    """Coders saved before the option existed keep their plain initialisation."""
    config = ICDCoderConfig(codes=["I10"])
    data = {k: v for k, v in json.loads(json.dumps(config.__dict__)).items() if k != "description_text"}
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert ICDCoderConfig.load(tmp_path / "config.json").description_text == "plain"


CODES = ["K35.80", "I10", "S02.0XX", "0DTJ4ZZ", "BW03"]
SYSTEMS = ["icd10cm", "icd10cm", "icd10cm", "icd10pcs", "icd10pcs"]
DESCRIPTIONS = ["Unspecified acute appendicitis", "Essential (primary) hypertension", "Fracture of vault of skull",
                "Resection of Appendix, Percutaneous Endoscopic Approach", "Plain Radiography of Chest"]


def _queries(description_text: str, code_systems: list[str] = SYSTEMS) -> torch.Tensor:
    torch.manual_seed(0)
    coder = ICDCoder.from_encoder(str(minilm_path()), CODES, encoder_config=tiny_bert(), descriptions=DESCRIPTIONS,
                                  code_systems=code_systems, max_length=256, chunk_size=256,
                                  label_query_init="description", description_text=description_text)
    return coder.head.second.weight.detach().clone()


def test_rich_init_differs_from_plain_and_is_deterministic():
    plain, rich, again = _queries("plain"), _queries("rich"), _queries("rich")
    torch.testing.assert_close(rich, again, rtol=0, atol=0)
    assert not torch.allclose(rich, plain)
    # every code here has a richer text, so every query moves
    assert all(not torch.allclose(rich[j], plain[j]) for j in range(len(CODES)))


def test_rich_init_without_code_systems_reads_the_plain_text():
    torch.testing.assert_close(_queries("rich", code_systems=[]), _queries("plain", code_systems=[]), rtol=0, atol=0)
