"""Benchmark scripts that read ../shared/data say so and stop with one line when it is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(script: str, *args: str, shared: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLEM_ICD_SHARED_DATA": str(shared), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=shared.parent)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "needed"), [
    ("prepare_mimic_iv.py", ["--admissions", "5"], "../shared/data/mimic-iv-demo-2.2"),
    ("codiesp_evidence.py", ["--model", "unused", "--out", "unused.json"],
     "../shared/data/codiesp/dev/devX.tsv"),
    ("unseen_codes.py", ["--model", "unused", "--data", "unused"], "../shared/data/codiesp/dev/devD.tsv"),
    ("length_buckets.py", ["--model", "a=unused", "--data", "unused"], "../shared/data/codiesp/dev/devD.tsv"),
])
def test_a_missing_shared_data_folder_is_one_line_and_exit_2(tmp_path, script, args, needed):
    missing = tmp_path / "no-shared-data"
    result = _benchmark(script, *args, shared=missing)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: needs {needed}: not found ({missing / needed.removeprefix('../shared/data/')})"]
    assert not list(tmp_path.iterdir())  # nothing created


@pytest.mark.slow
def test_benchmarks_that_read_shared_data_say_so_in_their_help(tmp_path):
    for script in ("prepare_mimic_iv.py", "codiesp_evidence.py", "predict_speed.py", "unseen_codes.py",
                   "length_buckets.py"):
        result = _benchmark(script, "--help", shared=tmp_path / "no-shared-data")
        assert result.returncode == 0, result.stderr
        assert "../shared/data" in result.stdout, script


@pytest.mark.slow
def test_long_context_benchmark_runs_and_its_fast_paths_equal_stock(tmp_path):
    """benchmarks/long_context.py end to end on a one-layer encoder and a mixed batch: every
    system runs, every ModernBERT row equals stock (states and logits), one JSON row each."""
    import json

    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "long_context.py"), "--lengths",
                             "--mixed-notes", "2", "--layers", "1", "--codes", "20", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"].split()[0], r["system"]) for r in rows] == [
        ("mixed", "today"), ("mixed", "stock"), ("mixed", "ours"), ("mixed", "blockwise"), ("mixed", "roberta")]
    for row in rows:
        assert row["seconds"] > 0 and row["tokens"] > 0
        if row["system"] in ("today", "ours", "blockwise"):
            assert row["diff_hidden"] < 1e-5 and row["diff_logits"] < 1e-5, row


@pytest.mark.slow
def test_service_load_test_runs_bounded_and_reports_every_row(tmp_path, trigger_model):
    from trigger_fixture import trigger_note

    rng = np.random.default_rng(0)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"id": f"n{i}", "text": trigger_note(rng)[1]}) + "\n" for i in range(4)))
    result = _benchmark("load_service.py", "--model", str(trigger_model), "--notes", str(notes), "--requests", "6",
                        "--clients", "1", "3", "--json", str(tmp_path / "rows.json"), shared=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(r["batching"], r["explain"], r["clients"]) for r in rows] == [
        (batching, explain, clients) for batching in (True, False) for explain in ("none", "attention")
        for clients in (1, 3)]
    assert all(r["503"] == 0 and r["other_errors"] == 0 and r["notes_per_s"] > 0 for r in rows)
    assert all(r["mean_batch"] == 1.0 for r in rows if not r["batching"] or r["clients"] == 1)
    assert all(r["p50_s"] <= r["p95_s"] <= r["p99_s"] for r in rows)
    assert result.stdout.count("\n| on |") == 4 and result.stdout.count("\n| off |") == 4


@pytest.mark.slow
@pytest.mark.shared_data
def test_mimic_scale_benchmark_runs_small_and_pandas_agrees_with_prepare(mimic_iv_demo, tmp_path):
    """benchmarks/mimic_scale.py end to end on a tiny corpus: prepare and the pandas version of
    the same rules write the same documents, every step prints its figures, nothing is left."""
    import re

    result = _benchmark("mimic_scale.py", "--notes", "300", "--note-chars", "500", "--workers", "1",
                        "--workdir", str(tmp_path), shared=mimic_iv_demo.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"^agreement: ok \(\d+ documents", out, re.M), out
    for step in ("generate corpus", "clem-icd prepare mimic-iv", "pandas, same rules"):
        assert re.search(rf"^\| {re.escape(step)} \| [\d,.]+ \| [\d,]+ \| [\d,]+ notes/s \|", out, re.M), step
    assert re.search(r"^pandas / clem-icd prepare: wall [\d.]+x, peak RSS [\d.]+x$", out, re.M), out
    assert "under the 4,096 MB limit" in out
    tokenized = re.search(r"^\| clem-icd tokenize \(MiniLM, 512\) \| [\d,.]+ \| [\d,]+ \| [\d,]+ tokens/s", out, re.M)
    assert tokenized or re.search(r"^tokenize: skipped \(", out, re.M), out
    assert not list(tmp_path.iterdir())  # the temporary corpus is removed


@pytest.mark.slow
def test_codiesp_report_row_reads_the_run_files(tmp_path):
    """One row per run of codiesp_runs.sh: the tuned column's metrics, both CodiEsp MAPs, the
    median of the epochs' training seconds, how many epochs ran and the total wall minutes."""
    run = tmp_path / "whole"
    (run / "eval_dev").mkdir(parents=True)
    metrics = {"f1_micro": 0.4512, "f1_macro": 0.1234, "map": 0.4478, "precision@8": 0.5, "auc_micro": 0.9}
    (run / "eval_dev" / "metrics.json").write_text(json.dumps(
        {"split": "val", "results": {"model @ 0.27": metrics, "model @ 0.50": {k: 0.0 for k in metrics}}}))
    (run / "metrics.json").write_text(json.dumps({"best_epoch": 9}))
    epochs = [610.0, 500.0, 530.0, 520.0]  # the first epoch also loads and tokenises
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "train_seconds": s}) + "\n"
                                               for i, s in enumerate(epochs)))
    (tmp_path / "codiesp_map.jsonl").write_text(
        json.dumps({"recipe": "whole", "task": "D", "codiesp_map": 0.4561, "wall_seconds": 2000}) + "\n"
        + json.dumps({"recipe": "whole", "task": "P", "codiesp_map": 0.4702, "wall_seconds": 2400}) + "\n")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "codiesp_report.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[2]
    median = sorted(epochs)[len(epochs) // 2]  # 530
    assert row == (f"| whole | 0.27 | 45.1 | 12.3 | 44.8 | 50.0 | 90.0 | 0.456 | 0.470 | 9 | 4 | {median:.0f} | 40 |")


@pytest.mark.slow
def test_gpu_script_smoke_runs_every_stage_on_cpu(tmp_path):
    """benchmarks/gpu.sh --smoke: the GPU run's four stages on CPU with a tiny model (long
    context against stock, a short training, evaluate of its model, two launched processes),
    each recorded ok in stages.tsv, their figures in summary.txt: the device script cannot rot
    unseen between the rare runs on a GPU."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--smoke"], capture_output=True, text=True,
                            timeout=400, env=env, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()]
    assert [(name, status) for name, status, _ in stages] == [
        ("long_context", "ok"), ("train", "ok"), ("evaluate", "ok"), ("fsdp", "ok")]
    assert {row["system"] for row in json.loads((out / "long_context.json").read_text())["rows"]} == {
        "stock-sdpa", "packed"}
    assert json.loads((out / "evaluate" / "model_metrics.json").read_text())["documents_per_second"] > 0
    two = json.loads((out / "fsdp_train.json").read_text())
    assert two["steps"] == 3 and two["device"] == "cpu x 2"
    assert (out / "fsdp.txt").read_text().count("\nsteps: ") == 1  # the main process reports, alone
    summary = (out / "summary.txt").read_text()
    assert "notes/s" in summary and "fsdp_train: cpu" in summary, summary
