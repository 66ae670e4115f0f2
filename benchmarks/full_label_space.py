"""A full-label-space dry run on CPU: the whole MIMIC-IV ICD-10 label space (7,942 codes) on notes
of 8,192 tokens, through the real `clem-icd train` and `clem-icd evaluate` under `accelerate
launch` with several CPU processes, on a tiny ModernBERT (3 layers x 32: the one
benchmarks/gpu_train.py --smoke uses) and the shipped recipe's LAAT head (attention_dim 512).

The encoder is tiny so that the run fits a small machine; the head, the labels, the note lengths,
the token-budget batching, the gathers across processes and the evaluation are those of a real
MIMIC-IV run. What it measures: peak memory per process (training, evaluate), seconds per
optimizer step, evaluate notes/s. It also shows that training and evaluate work under several
processes at that size.

    python benchmarks/full_label_space.py                  # 8 steps of 4 notes, evaluate 1,000 notes
    python benchmarks/full_label_space.py --steps 2 --eval-notes 40 --tokens 1024   # a quick check

Steps:
  1. the data: benchmarks/gpu_train.py --make-data-only (synthetic notes filling --tokens tokens;
     their codes, taken in turn from the ICD-10-CM list, cover all --codes codes). The notes
     evaluate reads are the test split: training scores its val split at the end of the epoch,
     so val stays small (--val-notes) and the evaluated notes are not scored twice.
  2. `accelerate launch --multi_gpu --num_processes N -m clem_icd.cli train` with
     ACCELERATE_USE_CPU=true (Accelerate's multi-process launcher on CPU: torchrun, gloo), one
     optimizer step = --batch-size notes, as many per forward pass as fit 2 x --tokens tokens,
     train.log_every=1: steps.jsonl has every step's seconds and peak memory.
  3. `accelerate launch ... -m clem_icd.cli evaluate --split test --baseline none --device cpu`.

Each launched process runs under this file's --worker mode, which runs the CLI in the same
interpreter and records the process's peak RSS (getrusage: its own high-water mark, children
such as the token cache's tokenizer processes not included) to a file per rank. Threads: one
per process (OMP_NUM_THREADS=1), so that N processes share N cores without oversubscribing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import runpy
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

from gpu_train import RECIPE, TINY_MODERNBERT, TOKENIZER  # noqa: E402


def worker(rss_dir: Path, module: str, argv: list[str]) -> None:
    """Run `python -m module argv` here, then write this process's peak RSS and wall seconds to
    rss_dir/rank<RANK>.json (also when the CLI exits with an error: the record says its status)."""
    started, status = time.perf_counter(), 0
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    except BaseException:
        status = 1
        raise
    finally:
        rank = int(os.environ.get("RANK", "0"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        rss_dir.mkdir(parents=True, exist_ok=True)
        (rss_dir / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "peak_rss_gib": peak / 2**30, "seconds": time.perf_counter() - started,
             "status": status}))


def launcher(processes: int, port: int) -> list[str]:
    if processes == 1:
        return [sys.executable]
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    # --multi_gpu with ACCELERATE_USE_CPU: `--cpu --num_processes 2` would start one process.
    return [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


def timed(command: list[str], env: dict, log: Path) -> float:
    """Run `command`, its output to `log` (and the tail to stderr on failure); wall seconds."""
    print(f"$ {' '.join(f'{k}={v}' for k, v in env.items() if k in SHOWN_ENV)} {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env})
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"error: exit status {result.returncode} after {seconds:.0f} s (log: {log})")
    return seconds


SHOWN_ENV = ("ACCELERATE_USE_CPU", "OMP_NUM_THREADS")


def per_rank(folder: Path, processes: int) -> list[dict]:
    rows = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(processes)
            if (folder / f"rank{rank}.json").is_file()]
    if len(rows) != processes:
        raise SystemExit(f"error: {folder}: {len(rows)} of {processes} processes recorded their memory")
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # inside accelerate launch: --worker RSS_DIR -m MODULE ARGS...
        rss_dir, flag, module, *rest = sys.argv[2:]
        assert flag == "-m", sys.argv
        worker(Path(rss_dir), module, rest)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=7942)
    parser.add_argument("--tokens", type=int, default=8192, help="model.max_length; every note fills it")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (train notes = steps x batch size)")
    parser.add_argument("--batch-size", type=int, default=4, help="data.batch_size: notes per optimizer step")
    parser.add_argument("--val-notes", type=int, default=16, help="scored by training at the end of its epoch")
    parser.add_argument("--eval-notes", type=int, default=1000, help="notes evaluate scores (the test split)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=29541, help="the launcher's main process port")
    parser.add_argument("--workdir", type=Path, help="keep data, model and logs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory(prefix="full-label-space-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        data, model, evaluation = work / "data", work / "model", work / "eval"
        for folder in (model, evaluation, work / "rss"):
            shutil.rmtree(folder, ignore_errors=True)  # a rerun in the same --workdir starts clean
        this = str(Path(__file__).resolve())

        data_seconds = 0.0
        if not (data / "documents.parquet").is_file():
            data_seconds = timed([sys.executable, str(BENCHMARKS / "gpu_train.py"), "--make-data-only",
                                  "--data", str(data), "--codes", str(args.codes), "--tokens", str(args.tokens),
                                  "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                  "--val-notes", str(args.val_notes), "--test-notes", str(args.eval_notes)],
                                 env, work / "data.log")

        overrides = [f"model.encoder={TOKENIZER}", f"model.encoder_config={json.dumps(TINY_MODERNBERT)}",
                     f"model.max_length={args.tokens}", f"model.chunk_size={args.tokens}",
                     f"data.batch_size={args.batch_size}", f"data.max_batch_tokens={2 * args.tokens}",
                     "train.epochs=1", "train.mixed_precision=no", "train.log_every=1", "train.checkpoint_every=0",
                     "optim.warmup_steps=0"]
        train_seconds = timed([*launcher(args.processes, args.port), this, "--worker", str(work / "rss" / "train"),
                               "-m", "clem_icd.cli", "train", "--config", RECIPE, "--data", str(data),
                               "--output", str(model), *overrides], env, work / "train.log")
        eval_seconds = timed([*launcher(args.processes, args.port), this, "--worker", str(work / "rss" / "evaluate"),
                              "-m", "clem_icd.cli", "evaluate", "--model", str(model), "--data", str(data),
                              "--split", "test", "--out", str(evaluation), "--device", "cpu", "--baseline", "none"],
                             env, work / "evaluate.log")

        steps = [json.loads(line) for line in (model / "steps.jsonl").read_text().splitlines() if line.strip()]
        config = json.loads((model / "config.json").read_text())
        scored = json.loads((evaluation / "model_metrics.json").read_text())
        train_rss, eval_rss = per_rank(work / "rss" / "train", args.processes), per_rank(work / "rss" / "evaluate",
                                                                                        args.processes)
        later = [s["seconds"] for s in steps[1:]] or [steps[0]["seconds"]]
        figures = {
            "processes": args.processes, "codes": len(config["codes"]), "max_length": args.tokens,
            "encoder": TINY_MODERNBERT, "attention_dim": config.get("attention_dim"),
            "batch_size": args.batch_size, "max_batch_tokens": 2 * args.tokens,
            "data_seconds": data_seconds, "train_wall_seconds": train_seconds, "evaluate_wall_seconds": eval_seconds,
            "steps": [{k: s[k] for k in ("step", "seconds", "notes", "tokens", "tokens_per_second", "peak_memory_gib")}
                      for s in steps],
            "first_step_seconds": steps[0]["seconds"], "median_step_seconds": statistics.median(later),
            "train_peak_rss_gib": [r["peak_rss_gib"] for r in train_rss],
            "evaluate_notes": scored["documents"], "evaluate_codes": scored["codes"],
            "evaluate_scoring_seconds": scored["seconds"], "evaluate_notes_per_s": scored["documents_per_second"],
            "evaluate_peak_rss_gib": [r["peak_rss_gib"] for r in eval_rss],
        }
    print(f"# {args.processes} CPU processes x 1 thread; tiny ModernBERT (3 x 32), LAAT head (attention_dim "
          f"{figures['attention_dim']}) over {figures['codes']:,} codes; notes of {args.tokens:,} tokens")
    print(f"data built in {data_seconds:.0f} s; train {len(steps)} steps in {train_seconds:.0f} s wall; "
          f"evaluate {scored['documents']:,} notes in {eval_seconds:.0f} s wall")
    print("| step | seconds | notes | tokens/s | peak memory GiB (max over processes) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for s in steps:
        print(f"| {s['step']} | {s['seconds']:.1f} | {s['notes']} | {s['tokens_per_second']:,.0f} | "
              f"{s['peak_memory_gib']:.2f} |")
    print(f"seconds per optimizer step: first {figures['first_step_seconds']:.1f}, "
          f"median of the others {figures['median_step_seconds']:.1f}")
    print("peak RSS per process, GiB: train " + " / ".join(f"{g:.2f}" for g in figures["train_peak_rss_gib"])
          + "; evaluate " + " / ".join(f"{g:.2f}" for g in figures["evaluate_peak_rss_gib"]))
    print(f"evaluate: {figures['evaluate_notes_per_s']:.2f} notes/s (scoring, {scored['seconds']:.0f} s for "
          f"{scored['documents']:,} notes over {scored['codes']:,} codes of the split)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
