"""Shared fixtures. Real open data is read in place from ../shared/data (never copied here)."""

from __future__ import annotations

import os
import shutil
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


# ---------------------------------------------------------------- the workbench's two databases
# Every workbench test that takes `work_db` runs twice: on a SQLite file and on a real PostgreSQL
# server (Debian's package) that pytest-postgresql starts once per session, a fresh database per
# test. Without PostgreSQL installed those runs skip with the reason, except under CI=true.

PG_CTL = Path(__file__).with_name("pg_ctl_as_postgres")


def _postgresql_missing() -> str | None:
    if any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or shutil.which("pg_ctl"):
        return None
    return "PostgreSQL is not installed (apt-get install postgresql)"


try:
    from pytest_postgresql import factories as _pg
except ImportError:  # the dev extra has it; a bare install runs the SQLite half
    _pg = None
else:
    postgresql_server = _pg.postgresql_proc(executable=str(PG_CTL), port=None)
    postgresql_database = _pg.postgresql("postgresql_server")


@pytest.fixture(params=["sqlite", "postgresql"])
def work_db(request, tmp_path):
    """A workbench Database at the code's head revision (clem_icd.workbench.db)."""
    from clem_icd.workbench.db import Database, upgrade

    if request.param == "sqlite":
        url = str(tmp_path / "work.db")
    else:
        missing = _postgresql_missing() or (None if _pg else "pytest-postgresql is not installed")
        if missing:
            if os.environ.get("CI") == "true":
                pytest.fail(f"under CI=true PostgreSQL must be there: {missing}")
            pytest.skip(missing)
        info = request.getfixturevalue("postgresql_database").info
        url = f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}"
    db = Database(url)
    upgrade(db)
    yield db
    db.dispose()
