"""One-way imports: the import-linter layers contract holds, and the cycle counter used to
measure the change finds cycles where there are some."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layers_contract_is_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is not installed (it is in the dev extra)")
    result = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def test_cycle_counter_finds_cycles_and_only_them():
    import grimp

    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "benchmarks" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"),
                               ("p.d", "p.e"), ("p.e", "p.d"), ("p.f", "p.a")]:
        graph.add_import(importer=importer, imported=imported)
    assert sorted(module.import_cycles(graph)) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]
    graph.remove_import(importer="p.c", imported="p.a")
    assert module.import_cycles(graph) == [["p.d", "p.e"]]
