"""The cycle counter (benchmarks/import_cycles.py) finds import cycles where there are some, and
only those. The layers contract itself is checked by `lint-imports` in CI, not by a test that reads
its output."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
