"""A bounded load test of `clem-icd serve` on loopback, beside `predict` on the same notes.

For batching on and off (one service process each) and without / with `explain=attention`, a
fixed number of one-note requests is sent by 1, 8 and 32 concurrent clients; then the run stops.
Per row: notes/s, latency p50/p95/p99, the mean notes per inference pass (from /metrics), 503
answers, and the service process's peak RSS; and the same notes coded by `predict` (in this
process, same batching rule and token budget) for the throughput ratio service / predict.
Only 127.0.0.1 is ever contacted. On 2 CPU cores the clients share the cores with the service:
compare the ratios in one run, not absolute times.

    python benchmarks/load_service.py --model outputs/demo/model --notes outputs/demo/data/documents.parquet
    python benchmarks/load_service.py --model runs/codiesp/minilm_cross_desc \
        --notes ../shared/data/codiesp/dev/text_files_en
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from _shared import fail, require

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clem_icd.inference.inputs import NoteRecord, read_notes  # noqa: E402
from clem_icd.inference.predictor import PredictOptions  # noqa: E402
from clem_icd.inference.run import code_records  # noqa: E402
from clem_icd.loading import load_model  # noqa: E402
from clem_icd.serve.settings import ServeSettings  # noqa: E402


def load_texts(path: Path, count: int) -> list[str]:
    records = [r for r in read_notes([str(require(path))]) if r.error is None]
    if not records:
        fail(f"{path}: no notes")
    return [records[i % len(records)].text for i in range(count)]


def predict_rate(model_dir: Path, texts: list[str], explain: str | None, budget: int) -> float:
    """Notes/s of `predict`'s own loop (code_records) on the texts, model loaded beforehand,
    batched by the service's token budget."""
    predictor = load_model(model_dir).note_predictor(PredictOptions(explain=explain, max_batch_tokens=budget))
    records = [NoteRecord(str(i), text) for i, text in enumerate(texts)]
    list(code_records(predictor, records[:4]))  # warm-up, as the service's
    started = time.perf_counter()
    list(code_records(predictor, records))
    return len(texts) / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(model_dir: Path, batching: bool, budget: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "clem_icd.cli", "serve", "--model", str(model_dir), "--port", str(port),
               "--log-level", "warning", "--queue-size", "4096", "--timeout", "600",
               "--max-batch-tokens", str(budget), "--batching" if batching else "--no-batching"]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"the service exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    fail("the service was not ready within 300 s")


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    wanted = {"passes": "clem_icd_batch_notes_count", "notes": "clem_icd_batch_notes_sum"}
    values = {}
    for key, name in wanted.items():
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        values[key] = float(match.group(1)) if match else 0.0
    return values


async def load(url: str, texts: list[str], clients: int, explain: str | None) -> tuple[list[float], list[int], float]:
    """Each client sends the next waiting request until none is left: latencies, statuses, wall s."""
    pending = iter(enumerate(texts))
    latencies: list[float] = []
    statuses: list[int] = []

    async def client(http: httpx.AsyncClient) -> None:
        for i, text in pending:
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/code", json={"notes": [{"id": f"n{i}", "text": text}],
                                                               "explain": explain})
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, statuses, time.perf_counter() - started


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--notes", type=Path, required=True, help="Notes (anything `predict` reads).")
    parser.add_argument("--requests", type=int, default=64, help="Requests per row (one note each).")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-tokens", type=int, help="The service's and predict's token budget "
                        "(default: the service's default for the device)")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()
    require(args.model)
    budget = args.max_batch_tokens or ServeSettings(model=args.model).max_batch_tokens
    texts = load_texts(args.notes, args.requests)
    explains = [None, "attention"]

    baseline = {explain: predict_rate(args.model, texts, explain, budget) for explain in explains}
    rows = []
    for batching in (True, False):
        process, url = start_service(args.model, batching, budget)
        try:
            for explain in explains:
                asyncio.run(load(url, texts[:4], 2, explain))  # warm-up of this option set
                for clients in args.clients:
                    before = metrics(url)
                    latencies, statuses, wall = asyncio.run(load(url, texts, clients, explain))
                    after = metrics(url)
                    ok = sum(s == 200 for s in statuses)
                    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
                    passes = after["passes"] - before["passes"]
                    rows.append({"batching": batching, "explain": explain or "none", "clients": clients,
                                 "notes_per_s": ok / wall, "p50_s": p50, "p95_s": p95, "p99_s": p99,
                                 "mean_batch": (after["notes"] - before["notes"]) / passes if passes else 0.0,
                                 "503": sum(s == 503 for s in statuses),
                                 "other_errors": sum(s not in (200, 503) for s in statuses),
                                 "ratio_to_predict": ok / wall / baseline[explain]})
            rss = peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        for row in rows:
            row.setdefault("peak_rss_mb", rss)

    print(f"model {args.model}, {len(texts)} one-note requests per row, --max-batch-tokens {budget}; predict: "
          + ", ".join(f"{rate:.1f} notes/s (explain {e or 'none'})" for e, rate in baseline.items()))
    print("| batching | explain | clients | notes/s | p50 s | p95 s | p99 s | mean batch | 503s | peak RSS MB "
          "| service/predict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['batching'] else 'off'} | {r['explain']} | {r['clients']} | {r['notes_per_s']:.1f} "
              f"| {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['p99_s']:.3f} | {r['mean_batch']:.1f} | {r['503']} "
              f"| {r['peak_rss_mb']:.0f} | {r['ratio_to_predict']:.2f} |")
    if any(r["other_errors"] for r in rows):
        fail(f"{sum(r['other_errors'] for r in rows)} requests failed with a status other than 200 or 503")
    if args.json:
        args.json.write_text(json.dumps({"predict_notes_per_s": baseline, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
