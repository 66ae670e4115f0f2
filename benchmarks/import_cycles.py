"""Import cycles between the modules of clem_icd: strongly connected components of the import
graph that grimp (import-linter's engine) builds, function-level imports included.

    python benchmarks/import_cycles.py [SRC_DIR]

SRC_DIR (default: this checkout's src/) lets one measure another checkout, e.g. an older commit
unpacked with `git archive`. The layers contract in pyproject.toml (`lint-imports`, run by CI)
keeps the count at zero; this script is how the count before that contract was measured.
"""

from __future__ import annotations

import sys
from pathlib import Path


def import_cycles(graph) -> list[list[str]]:
    """Tarjan's algorithm over grimp's graph; components of more than one module."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


def main() -> None:
    import grimp

    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src").resolve()
    sys.path.insert(0, str(src))  # before the installed (editable) package
    graph = grimp.build_graph("clem_icd")
    cycles = import_cycles(graph)
    imports = sum(len(graph.find_modules_directly_imported_by(m)) for m in graph.modules)
    print(f"{src}: {len(graph.modules)} modules, {imports} internal imports, {len(cycles)} import cycle(s)")
    for cycle in cycles:
        print("  cycle:", " <-> ".join(cycle))


if __name__ == "__main__":
    main()
