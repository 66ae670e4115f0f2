"""Shared fixtures. Real open data is read in place from ../shared/data (never copied here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _require(path: Path) -> Path:
    if path.exists():
        return path
    reason = f"{path} is absent (the open data lives in ../shared/data beside the repository)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"under CI=true the shared data must be present: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skips with a reason when absent, fails under CI=true."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def mimic_iv_demo(shared_data) -> Path:
    return _require(shared_data / "mimic-iv-demo-2.2")


@pytest.fixture(scope="session")
def codiesp_dir(shared_data) -> Path:
    return _require(shared_data / "codiesp")


@pytest.fixture(scope="session")
def splits_dir(shared_data) -> Path:
    return _require(shared_data / "splits")


def run_cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `clem-icd ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-c", "from clem_icd.cli import main; main()", "--quiet", *map(str, args)],
        capture_output=True, text=True, input=input, timeout=600,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def run(capsys, monkeypatch):
    """`clem-icd ARGS` through the real entry point `main()`, in this process →
    (exit status, stdout, stderr). Cheaper than `cli` (a fresh interpreter costs 0.5-2 s), so
    used for the many bad-input cases; each suite keeps one case through `cli`."""
    from clem_icd.cli import main

    def _run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["clem-icd", "--quiet", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return _run


@pytest.fixture(scope="session")
def trigger_model(tmp_path_factory) -> Path:
    """A trained coder folder whose codes have planted trigger phrases (tests/trigger_fixture.py)."""
    from trigger_fixture import train_trigger_model

    return train_trigger_model(tmp_path_factory.mktemp("trigger"))
