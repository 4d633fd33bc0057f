"""Throughput and latency of ``ctxcompress serve`` with and without dynamic batching.

For each ``--max-batch`` value a real server is started (``python -m ctxcompress serve`` on a
free loopback port), a few documents are compressed through ``POST /v1/contexts``, and
``--clients`` concurrent clients each send ``--requests`` questions one after another
(``POST /v1/contexts/{id}/answers``, one question per request, random stored context).
Reports requests/s over the timed phase, p50/p95 request latency, generated tokens/s and
the mean batch size the server ran (from ``/metrics``); prints a Markdown table and writes
JSON.

    python benchmarks/serving/bench.py --base-model tiny --set lora_rank=8 \\
        --clients 16 --requests 8 --out docs/benchmarks/serving_tiny.json
    python benchmarks/serving/bench.py --base-model embedded --clients 16 --requests 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the benchmarks package
from benchmarks.serving.texts import DOCUMENT, QUESTIONS

from ctxcompress.serving.background import wait_until_healthy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    args: argparse.Namespace, store: Path, port: int, max_batch: int, max_queue: int | None = None
):
    """``ctxcompress serve`` as ``args`` say, on loopback; returns ``(process, url)`` once
    ``/healthz`` answers. ``max_queue`` defaults to room for every client twice."""
    command = [
        sys.executable, "-m", "ctxcompress", "serve",
        "--base-model", args.base_model, "--method", args.method, "--ratio", str(args.ratio),
        "--store", str(store), "--port", str(port), "--log-level", "warning",
        "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
        "--max-queue", str(max_queue or max(256, args.clients * 2)),
    ]  # fmt: skip
    for option in args.set or []:
        command += ["--set", option]
    env = {k: v for k, v in os.environ.items() if k != "CTXCOMPRESS_TOKEN"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, args.start_timeout)
    except RuntimeError as exc:
        proc.kill()
        raise SystemExit(str(exc)) from None
    return proc, url


def batch_totals(metrics: str) -> tuple[float, float]:
    """(questions, model calls) answered so far, from the server's /metrics."""
    values = []
    for name in ("sum", "count"):
        pattern = rf'^ctxcompress_batch_size_{name}\{{kind="answer"\}} (\S+)$'
        found = re.search(pattern, metrics, re.M)
        values.append(float(found.group(1)) if found else 0.0)
    return values[0], values[1]


async def load(url: str, ids: list[str], args: argparse.Namespace) -> dict:
    latencies: list[float] = []
    tokens = 0
    failures = 0
    rng = random.Random(args.seed)
    plan = [
        [(rng.choice(ids), rng.choice(QUESTIONS)) for _ in range(args.requests)]
        for _ in range(args.clients)
    ]

    async def client(client_plan, http: httpx.AsyncClient) -> None:
        nonlocal tokens, failures
        for cid, question in client_plan:
            start = time.perf_counter()
            r = await http.post(
                f"/v1/contexts/{cid}/answers",
                json={"question": question, "max_new_tokens": args.max_new_tokens},
            )
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                failures += 1
                continue
            tokens += sum(a["tokens"] for a in r.json()["answers"])

    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        # warm-up (not timed): one request per context
        for cid in ids:
            await http.post(f"/v1/contexts/{cid}/answers", json={"question": QUESTIONS[0]})
        before = (await http.get("/metrics")).text
        start = time.perf_counter()
        await asyncio.gather(*(client(p, http) for p in plan))
        wall = time.perf_counter() - start
        after = (await http.get("/metrics")).text
    (q0, c0), (q1, c1) = batch_totals(before), batch_totals(after)
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "mean_batch": round((q1 - q0) / (c1 - c0), 2) if c1 > c0 else None,
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"`{args.base_model}` / `{args.method}` ratio {args.ratio}, {args.clients} concurrent "
        f"clients x {args.requests} requests, max_new_tokens {args.max_new_tokens}, "
        f"max_wait_ms {args.max_wait_ms}",
        "",
        "| max_batch | requests/s | p50 latency (ms) | p95 latency (ms) | tokens/s "
        "| mean batch | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['max_batch']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} "
            f"| {r['tokens_per_s']} | {r['mean_batch']} | {r['failures']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny", help="tiny, embedded, a folder or id")
    parser.add_argument("--method", default="sac")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--set", action="append", help="method option key=value (repeat)")
    parser.add_argument("--batches", default="1,16", help="max_batch values to compare")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--doc-repeat", type=int, default=3, help="document length multiplier")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()

    docs = [f"Document {i}. " + DOCUMENT * args.doc_repeat for i in range(args.documents)]
    rows = []
    for max_batch in (int(b) for b in args.batches.split(",")):
        with TemporaryDirectory() as store:
            proc, url = start_server(args, Path(store), free_port(), max_batch)
            try:
                made = httpx.post(f"{url}/v1/contexts", json={"documents": docs}, timeout=600)
                made.raise_for_status()
                ids = [c["id"] for c in made.json()["contexts"]]
                result = asyncio.run(load(url, ids, args))
            finally:
                proc.kill()
                proc.wait(30)
        rows.append({"max_batch": max_batch, **result})
        print(f"max_batch={max_batch}: {result}", file=sys.stderr)

    table = markdown(rows, args)
    print(table)
    if args.out is not None:
        import torch

        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
            },
            "date": time.strftime("%Y-%m-%d"),
            "results": rows,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")
        print(f"written: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
