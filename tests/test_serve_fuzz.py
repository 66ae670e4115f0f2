"""schemathesis, as an integrator would run it, against `clem-icd serve` with a small trained
model: every check, a valid token, every operation of `/openapi.json` (a route added later
included: the operations come from the schema, and tests/test_serve_schema.py keeps every route
in it). Fixed seed and example budget: ~15 s of fuzzing on 2 CPU cores."""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from service_harness import ThreadedService

from clem_icd.serve.settings import ServeSettings

TOKEN = "s3cret-token-0123456789abcdef"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED, EXAMPLES = 23, 150


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_service_keeps_its_openapi_contract_under_fuzzing(trigger_model, tmp_path):
    # With the workbench, whose routes take a user's token: an admin whose token is the
    # service's, so that one header opens every operation.
    from clem_icd.workbench.db import Database, upgrade
    from clem_icd.workbench.models import User
    from clem_icd.workbench.users import token_hash

    db = Database(tmp_path / "work.db")
    upgrade(db)
    with db.write() as session:
        session.add(User(name="fuzzer", role="admin", token_hash=token_hash(TOKEN), disabled=False))
    db.dispose()
    settings = ServeSettings(model=trigger_model, token=TOKEN, max_wait_ms=1, db=str(tmp_path / "work.db"))
    with ThreadedService(settings) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
        operations = {f"{method.upper()} {path}" for path, methods in schema["paths"].items() for method in methods}
        report = tmp_path / "junit.xml"
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color", "run",
             f"{url}/openapi.json", "--checks", "all", "--header", f"Authorization: Bearer {TOKEN}",
             "--seed", str(SEED), "--max-examples", str(EXAMPLES), "--workers", "1",
             "--report", "junit", "--report-junit-path", str(report)],
            capture_output=True, text=True, timeout=150, cwd=tmp_path)
        seconds = time.monotonic() - started
    # The output holds generated requests and the service's answers, never a fixture's note text.
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    cases = ET.parse(report).getroot().iter("testcase")
    tested = {case.get("name") for case in cases if case.find("skipped") is None}
    # (Its stateful phase, which chains operations by the links it infers, is one more case.)
    assert operations <= tested, f"schemathesis did not test {sorted(operations - tested)}"
    assert seconds < 120, f"the fuzzing took {seconds:.0f} s"
