"""Benchmark scripts that read ../shared/data say so and stop with one line when it is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(script: str, *args: str, shared: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLEM_ICD_SHARED_DATA": str(shared), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=shared.parent)


@pytest.mark.parametrize(("script", "args", "needed"), [
    ("prepare_mimic_iv.py", ["--admissions", "5"], "../shared/data/mimic-iv-demo-2.2"),
    ("codiesp_evidence.py", ["--model", "unused", "--out", "unused.json"],
     "../shared/data/codiesp/dev/devX.tsv"),
])
def test_a_missing_shared_data_folder_is_one_line_and_exit_2(tmp_path, script, args, needed):
    missing = tmp_path / "no-shared-data"
    result = _benchmark(script, *args, shared=missing)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: needs {needed}: not found ({missing / needed.removeprefix('../shared/data/')})"]
    assert not list(tmp_path.iterdir())  # nothing created


def test_benchmarks_that_read_shared_data_say_so_in_their_help(tmp_path):
    for script in ("prepare_mimic_iv.py", "codiesp_evidence.py", "predict_speed.py"):
        result = _benchmark(script, "--help", shared=tmp_path / "no-shared-data")
        assert result.returncode == 0, result.stderr
        assert "../shared/data" in result.stdout, script
