"""CodiEsp preparation: the real corpus in ../shared/data/codiesp, read in place, and small
constructed folders for every kind of bad input."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from clem_icd.data.codiesp import prepare_codiesp
from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.split import stratified_split

SPLITS = {"train": "train", "dev": "val"}


# ---------------------------------------------------------------- helpers




def tsv_codes(path: Path) -> dict[str, set[str]]:
    """id → upper-cased codes of an official tsv file, read independently of the module."""
    codes: dict[str, set[str]] = defaultdict(set)
    with open(path, newline="", encoding="utf-8") as handle:
        for doc_id, code in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            codes[doc_id].add(code.upper())
    return codes


def expected_codes(codiesp_dir: Path, tasks: str = "DP") -> dict[str, set[str]]:
    expected: dict[str, set[str]] = defaultdict(set)
    for folder in SPLITS:
        for task in tasks:
            for doc_id, codes in tsv_codes(codiesp_dir / folder / f"{folder}{task}.tsv").items():
                expected[doc_id] |= codes
    return expected


@pytest.fixture(scope="module")
def prepared(codiesp_dir, tmp_path_factory):
    """The real corpus prepared three ways: English D+P, Spanish D+P, English D only."""
    root = tmp_path_factory.mktemp("codiesp")
    out = {}
    for name, language, tasks in (("en", "en", "D,P"), ("es", "es", "D,P"), ("en_d", "en", "D")):
        prepare_codiesp(codiesp_dir, root / name, language=language, tasks=tasks)
        out[name] = PreparedDataset.load(root / name)
    return out


# ---------------------------------------------------------------- the real corpus


@pytest.mark.shared_data
def test_document_counts(prepared):
    for dataset in prepared.values():
        assert dataset.documents["split"].value_counts().sort("split").rows() == [("train", 500), ("val", 250)]
        assert dataset.manifest["counts"]["by_split"] == {"train": 500, "val": 250, "test": 0}
        assert dataset.manifest["source"] == "codiesp"


@pytest.mark.shared_data
def test_codes_equal_the_tsv_files(prepared, codiesp_dir):
    expected = expected_codes(codiesp_dir)
    documents = prepared["en"].documents
    for doc_id, codes in zip(documents["id"], documents["codes"]):
        # CM codes in the tsv are already dotted; upper case is their canonical form.
        assert set(codes) == expected.get(doc_id, set()), doc_id
        assert len(codes) == len(set(codes))
    assert set(prepared["en"].code_list) == set().union(*expected.values())


@pytest.mark.shared_data
def test_procedure_codes_come_first(prepared, codiesp_dir):
    procedures = expected_codes(codiesp_dir, "P")
    for doc_id, codes in zip(prepared["en"].documents["id"], prepared["en"].documents["codes"]):
        n = len(procedures.get(doc_id, ()))
        assert set(codes[:n]) == procedures.get(doc_id, set()), doc_id


@pytest.mark.shared_data
def test_texts_are_the_files_in_the_chosen_language(prepared, codiesp_dir):
    english = dict(prepared["en"].documents.select("id", "text").iter_rows())
    spanish = dict(prepared["es"].documents.select("id", "text").iter_rows())
    assert english.keys() == spanish.keys()
    for folder in SPLITS:
        for doc_id in sorted(p.stem for p in (codiesp_dir / folder / "text_files").glob("*.txt"))[:40]:
            assert english[doc_id] == (codiesp_dir / folder / "text_files_en" / f"{doc_id}.txt").read_text("utf-8")
            assert spanish[doc_id] == (codiesp_dir / folder / "text_files" / f"{doc_id}.txt").read_text("utf-8")
            assert english[doc_id] != spanish[doc_id]
    assert prepared["es"].manifest["options"]["language"] == "es"


@pytest.mark.shared_data
def test_task_d_gives_only_cm_codes(prepared, codiesp_dir):
    dataset = prepared["en_d"]
    assert set(dataset.codes["system"]) == {"icd10cm"}
    expected = expected_codes(codiesp_dir, "D")
    for doc_id, codes in zip(dataset.documents["id"], dataset.documents["codes"]):
        assert set(codes) == expected.get(doc_id, set())
    assert dataset.manifest["options"]["tasks"] == ["D"]


@pytest.mark.shared_data
def test_manifest_records_inputs(prepared, codiesp_dir):
    manifest = prepared["en"].manifest
    paths = [Path(record["path"]) for record in manifest["inputs"]]
    for folder in SPLITS:
        for task in "DP":
            assert (codiesp_dir / folder / f"{folder}{task}.tsv").resolve() in paths
        assert (codiesp_dir / folder / "text_files_en").resolve() in paths
    assert all(len(record["sha256"]) == 64 for record in manifest["inputs"])
    assert manifest["counts"]["text_files"] == {"train": 500, "val": 250}
    systems = dict(prepared["en"].codes.select("code", "system").iter_rows())
    assert systems["R52"] == "icd10cm" and systems["BW03ZZZ"] == "icd10pcs"


@pytest.mark.shared_data
def test_every_code_has_a_description_without_flags(prepared, codiesp_dir):
    """Every D and P code of the real corpus is described out of the box: full CM codes by the
    tabular list, CM codes without their 7th character by their parent, full PCS codes by the
    CMS table, PCS prefixes by what their codes share, retired PCS codes by their prefix."""
    import simple_icd_10_cm as cm

    for name in ("en", "es", "en_d"):
        codes = prepared[name].codes
        missing = codes.filter(pl.col("description").fill_null("").str.strip_chars() == "")
        assert missing.height == 0, (name, missing["code"].to_list()[:10])
    codes = prepared["en"].codes
    assert set(codes["code"]) == set().union(*expected_codes(codiesp_dir).values())
    descriptions = dict(codes.select("code", "description").iter_rows())
    assert descriptions["S02.0XX"] == cm.get_description("S02.0") == "Fracture of vault of skull"
    assert descriptions["BW20"] == "Computerized Tomography (CT Scan) of Abdomen"
    assert descriptions["R52"] == "Pain, unspecified"
    rules = prepared["en"].manifest["descriptions"]
    assert set(rules) == {"icd10cm", "icd10pcs"} and "none" not in rules["icd10cm"] | rules["icd10pcs"]
    assert rules["icd10cm"]["icd10cm_parent"] == 76 and rules["icd10pcs"]["icd10pcs_prefix"] == 437
    assert sum(rules["icd10cm"].values()) + sum(rules["icd10pcs"].values()) == codes.height
    assert prepared["en"].manifest["code_check"]["unchecked_systems"] == []


@pytest.mark.shared_data
def test_val_from_train_holds_out_a_stratified_share_of_train_and_makes_dev_the_test_split(
        prepared, codiesp_dir, tmp_path):
    prepare_codiesp(codiesp_dir, tmp_path / "a", val_from_train=0.2, seed=3)
    inner = PreparedDataset.load(tmp_path / "a")
    plain = prepared["en"].documents
    split_of = dict(inner.documents.select("id", "split").iter_rows())
    # dev is the test split, note for note; train's notes are train or val, nothing else moves
    assert {i for i, s in split_of.items() if s == "test"} == set(plain.filter(pl.col("split") == "val")["id"])
    train_ids = set(plain.filter(pl.col("split") == "train")["id"])
    assert {i for i, s in split_of.items() if s in ("train", "val")} == train_ids
    held = [i for i in train_ids if split_of[i] == "val"]
    assert 0.15 * 500 <= len(held) <= 0.25 * 500  # iterstrat's sizes are close, not exact
    # texts and codes are those of the plain preparation
    assert inner.documents.select("id", "text", "codes").sort("id").equals(plain.select("id", "text", "codes").sort("id"))
    assert inner.manifest["options"]["val_from_train"] == 0.2
    assert inner.manifest["counts"]["by_split"] == {"train": 500 - len(held), "val": len(held), "test": 250}
    # deterministic for a seed, another seed holds out other notes
    prepare_codiesp(codiesp_dir, tmp_path / "b", val_from_train=0.2, seed=3)
    prepare_codiesp(codiesp_dir, tmp_path / "c", val_from_train=0.2, seed=4)
    again = dict(PreparedDataset.load(tmp_path / "b").documents.select("id", "split").iter_rows())
    other = dict(PreparedDataset.load(tmp_path / "c").documents.select("id", "split").iter_rows())
    assert again == split_of and other != split_of
    # the held-out share is the stratified splitter's (its quality: test_split.py) on train by id
    train = plain.filter(pl.col("split") == "train").sort("id")
    expected = stratified_split(train["codes"].to_list(), 3, (0.8, 0.2, 0.0))
    assert [split_of[i] for i in train["id"]] == expected


@pytest.mark.shared_data
def test_cli_with_pcs_table(cli, codiesp_dir, mimic_iv_demo, tmp_path):
    """The real command in a fresh interpreter, with PCS descriptions from the demo table."""
    out = tmp_path / "codiesp"
    result = cli("prepare", "codiesp", "--codiesp-dir", codiesp_dir, "--out", out, "--language", "es",
                 "--pcs-table", mimic_iv_demo / "hosp" / "d_icd_procedures.csv.gz")
    assert result.returncode == 0, result.stderr
    assert "750 documents (train 500 / val 250" in " ".join(result.stderr.split())  # rich wraps lines
    codes = PreparedDataset.load(out).codes
    descriptions = dict(codes.select("code", "description").iter_rows())
    assert descriptions["BW03ZZZ"]  # a full PCS code described by the table
    assert descriptions["R52"] == "Pain, unspecified"
    # The table takes precedence: the retired 3E0T3CZ gets its own title from it.
    assert descriptions["3E0T3CZ"].startswith("Introduction of Regional Anesthetic")
    assert all(descriptions.values())


# ---------------------------------------------------------------- constructed folders


def make_corpus(root: Path, splits=("train", "dev"), *, texts=None, d_rows=None, p_rows=None) -> Path:
    """A tiny CodiEsp-layout folder. `texts` maps file name → bytes (used for both languages)."""
    texts = texts if texts is not None else {"doc-1.txt": b"First case.\n", "doc-2.txt": b"Second case.\n",
                                             "doc-3.txt": b"Third case, no codes.\n"}
    d_rows = d_rows if d_rows is not None else b"doc-1\tr52\ndoc-1\ta23.9\ndoc-2\tn44.8\ndoc-1\tr52\n"
    p_rows = p_rows if p_rows is not None else b"doc-1\tbw03zzz\ndoc-2\tbn20\n"
    for split in splits:
        folder = root / split
        for language, prefix in (("text_files", b"ES "), ("text_files_en", b"")):
            (folder / language).mkdir(parents=True)
            for name, data in texts.items():
                (folder / language / f"{split}-{name}").write_bytes(prefix + data if data.strip() else data)
        prefix = split.encode() + b"-"
        for task, rows in (("D", d_rows), ("P", p_rows)):
            lines = [prefix + line if line else line for line in rows.split(b"\n")]
            (folder / f"{split}{task}.tsv").write_bytes(b"\n".join(lines))
    return root


def test_small_corpus(tmp_path, run):
    corpus = make_corpus(tmp_path / "codiesp")
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out")
    assert code == 0, err
    dataset = PreparedDataset.load(tmp_path / "out")
    rows = {r[0]: r[1:] for r in dataset.documents.select("id", "text", "codes", "split").iter_rows()}
    assert rows["train-doc-1"] == ("First case.\n", ["BW03ZZZ", "R52", "A23.9"], "train")
    assert rows["dev-doc-2"] == ("Second case.\n", ["BN20", "N44.8"], "val")
    assert rows["dev-doc-3"] == ("Third case, no codes.\n", [], "val")  # kept without codes
    counts = dataset.manifest["counts"]
    assert counts["documents_without_codes"] == 2
    assert counts["duplicate_code_rows"] == {"train": 1, "val": 1}
    assert dataset.manifest["options"] == {"language": "en", "tasks": ["P", "D"],
                                           "target_order": "P codes, then D codes"}
    # Descriptions without any flag: a full PCS code, a PCS prefix, CM codes.
    descriptions = dict(dataset.codes.select("code", "description").iter_rows())
    assert descriptions == {"BW03ZZZ": "Plain Radiography of Chest", "BN20": "Computerized Tomography (CT Scan) of Skull",
                            "R52": "Pain, unspecified", "A23.9": "Brucellosis, unspecified",
                            "N44.8": "Other noninflammatory disorders of the testis"}


def test_only_a_test_folder_and_spanish_p_only(tmp_path, run):
    corpus = make_corpus(tmp_path / "codiesp", splits=("test",))
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out",
                       "--language", "es", "--tasks", "P")
    assert code == 0, err
    documents = PreparedDataset.load(tmp_path / "out").documents
    assert set(documents["split"]) == {"test"}
    rows = {r[0]: r[1:] for r in documents.select("id", "text", "codes").iter_rows()}
    assert rows["test-doc-1"] == ("ES First case.\n", ["BW03ZZZ"])


def test_text_with_byte_order_mark(tmp_path, run):
    corpus = make_corpus(tmp_path / "codiesp", texts={"doc-1.txt": b"\xef\xbb\xbfCase.", "doc-2.txt": b"B"})
    assert run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out")[0] == 0
    texts = dict(PreparedDataset.load(tmp_path / "out").documents.select("id", "text").iter_rows())
    assert texts["train-doc-1"] == "Case."


BAD = {
    # name: (make_corpus arguments, file named in the message, words in the message)
    "tsv id without text file": (dict(d_rows=b"doc-1\tr52\ndoc-9\tr52\n"), "trainD.tsv", ["row 2", "doc-9"]),
    "non-UTF-8 text": (dict(texts={"doc-1.txt": b"ok\n", "doc-2.txt": b"line one\nbad \xff\n"}),
                       "train-doc-2.txt", ["line 2", "UTF-8"]),
    "empty text": (dict(texts={"doc-1.txt": b"ok", "doc-2.txt": b" \n\t\n"}), "train-doc-2.txt", ["empty"]),
    "one field": (dict(p_rows=b"doc-1\tbw03zzz\ndoc-2\n"), "trainP.tsv", ["row 2", "1 tab-separated"]),
    "three fields": (dict(d_rows=b"doc-1\tr52\textra\n"), "trainD.tsv", ["row 1", "3 tab-separated"]),
    "bad code": (dict(d_rows=b"doc-1\tr52\ndoc-2\tn4$.8\n"), "trainD.tsv", ["row 2", "n4$.8"]),
    "PCS code in the D file": (dict(d_rows=b"doc-1\tbw03zzz\n"), "trainD.tsv", ["row 1", "icd10cm"]),
    "non-UTF-8 tsv": (dict(d_rows=b"doc-1\tr52\ndoc-2\tr\xe952\n"), "trainD.tsv", ["line 2", "UTF-8"]),
}


def assert_one_line_error(code: int, err: str, names: list[str]) -> None:
    assert code == 2  # ClemError: a user error, no traceback
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, tmp_path, run):
    arguments, file_name, words = BAD[case]
    corpus = make_corpus(tmp_path / "codiesp", **arguments)
    out = tmp_path / "out"
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", out)
    assert_one_line_error(code, err, [file_name, *words])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codiesp"]  # no output, no temp folder


def test_no_split_folder(tmp_path, run):
    (tmp_path / "codiesp" / "background").mkdir(parents=True)
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", tmp_path / "codiesp", "--out", tmp_path / "out")
    assert_one_line_error(code, err, [str(tmp_path / "codiesp"), "no train, dev or test folder"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arguments, words", [
    (["--language", "fr"], ["--language"]),
    (["--tasks", "X"], ["--tasks"]),
    (["--pcs-table", "/nonexistent/d_icd_procedures.csv"], ["/nonexistent/d_icd_procedures.csv"]),
    (["--val-from-train", "1"], ["--val-from-train", "[0, 1)"]),
    (["--val-from-train", "-0.1"], ["--val-from-train"]),
])
def test_bad_options(arguments, words, tmp_path, run):
    corpus = make_corpus(tmp_path / "codiesp")
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out", *arguments)
    assert_one_line_error(code, err, words)
    assert not (tmp_path / "out").exists()


def test_missing_language_folder_and_tsv(tmp_path, run):
    corpus = make_corpus(tmp_path / "codiesp")
    (corpus / "dev" / "devP.tsv").unlink()
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out")
    assert_one_line_error(code, err, ["devP.tsv", "not found"])
    for path in (corpus / "dev" / "text_files_en").iterdir():
        path.unlink()
    (corpus / "dev" / "text_files_en").rmdir()
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out", "--tasks", "D")
    assert_one_line_error(code, err, ["text_files_en", "not found"])
    assert not (tmp_path / "out").exists()


def test_val_from_train_needs_train_and_refuses_dev_and_test_together(tmp_path, run):
    only_dev = make_corpus(tmp_path / "dev_only", splits=("dev",))
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", only_dev, "--out", tmp_path / "out", "--val-from-train", "0.5")
    assert_one_line_error(code, err, [str(only_dev), "train/"])
    all_three = make_corpus(tmp_path / "all", splits=("train", "dev", "test"))
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", all_three, "--out", tmp_path / "out", "--val-from-train", "0.5")
    assert_one_line_error(code, err, [str(all_three), "test/"])
    assert not (tmp_path / "out").exists()


def test_bad_input_in_a_fresh_interpreter(cli, tmp_path):
    """The same contract through a real process: exit status 2, one line on stderr."""
    corpus = make_corpus(tmp_path / "codiesp", d_rows=b"doc-1\tr52\ndoc-7\tr52\n")
    result = cli("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out")
    assert_one_line_error(result.returncode, result.stderr, ["trainD.tsv", "row 2", "doc-7"])
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_same_id_in_two_splits(tmp_path, run):
    corpus = make_corpus(tmp_path / "codiesp")
    (corpus / "dev" / "text_files_en" / "dev-doc-1.txt").rename(corpus / "dev" / "text_files_en" / "train-doc-1.txt")
    for task in "DP":
        (corpus / "dev" / f"dev{task}.tsv").write_text("")
    code, _, err = run("prepare", "codiesp", "--codiesp-dir", corpus, "--out", tmp_path / "out")
    assert_one_line_error(code, err, ["dev/text_files_en/train-doc-1.txt", "train/text_files_en"])
    assert not (tmp_path / "out").exists()
