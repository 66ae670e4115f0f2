"""What the benchmarks share: where the open data of ../shared/data is, and one clear line (exit
status 2, no traceback) when a file they need is not there.

The data folder is ../shared/data beside the repository (see ../shared/data/README.md);
CLEM_ICD_SHARED_DATA=FOLDER points the benchmarks at another copy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLEM_ICD_SHARED_DATA") or REPO.parent / "shared" / "data")


def fail(message: str) -> None:
    """End the benchmark: `error: MESSAGE` on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require(path: Path | str, name: str | None = None) -> Path:
    """`path` if it exists; else fail with "needs NAME: not found" (and where it was looked for,
    when NAME is not that path)."""
    path = Path(path)
    if not path.exists():
        where = str(path.resolve())
        fail(f"needs {name or path}: not found" + (f" ({where})" if name and name != where else ""))
    return path


def shared_path(relative: str) -> Path:
    """`relative` (e.g. "mimic-iv-demo-2.2") inside ../shared/data, checked with `require`."""
    return require(SHARED_DATA / relative, f"../shared/data/{relative}")


def codiesp_map(gold: Path, ranking: Path, valid: Path, shared: Path = SHARED_DATA.parent) -> float:
    """CodiEsp MAP of a ranking file by the official scorer's definition: the project's copy of
    it, ../shared/tools/codiesp_map.py, run as is (`valid`: the codes a prediction may have)."""
    import subprocess

    out = subprocess.run([sys.executable, str(shared / "tools" / "codiesp_map.py"), str(gold), str(ranking), str(valid)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def write_valid_codes(folder: Path, systems: dict[str, str]) -> dict[str, Path]:
    """valid_D.txt (ICD-10-CM) and valid_P.txt (ICD-10-PCS) in `folder` from code -> system, so
    that CodiEsp-D and -P are scored apart as the two tracks are. {"D": path, "P": path}."""
    paths = {}
    for task, system in (("D", "icd10cm"), ("P", "icd10pcs")):
        paths[task] = Path(folder) / f"valid_{task}.txt"
        paths[task].write_text("\n".join(c.lower() for c, s in systems.items() if s == system) + "\n")
    return paths
