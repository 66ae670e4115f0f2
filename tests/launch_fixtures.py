"""The environment of a test's multi-process CPU run (torchrun / accelerate launch as a subprocess)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_worker_env() -> dict:
    """This environment for worker processes on CPU: gloo (ACCELERATE_USE_CPU), one thread each
    (2 processes on 2 cores), offline, this checkout's src and tests importable, and no launcher
    variables of an enclosing run (a worker would otherwise join the wrong group)."""
    tests = Path(__file__).parent
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tests.parent / "src"), str(tests),
                                                       os.environ.get("PYTHONPATH")]))}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env
