"""Load test of ``ctxcompress serve`` with locust (issue 21), batching off and on, plus overload.

For each ``--max-batch`` value a real server is started on loopback, a few documents are
compressed, and ``locust`` (headless, ``benchmarks/serving/locustfile.py``) runs ``--users``
concurrent users for ``--seconds``: questions against the stored contexts and now and then a
new compression. Reported per run: requests/s, p50/p95/p99 latency, failures (must be 0),
the mean batch the server ran and its peak resident memory (``VmHWM``).

Overload: a server with a small queue (``--overload-queue``) gets ``--overload-requests``
questions at once; every one must be either answered (200, with an answer) or refused with
503 + ``Retry-After`` — nothing else, nothing lost — and the server must be healthy after.

    .venv/bin/pip install -e ".[load]"     # locust: not a dependency of ctxcompress
    .venv/bin/python benchmarks/serving/load.py --base-model embedded --users 50 \\
        --seconds 120 --out docs/benchmarks/load_embedded.json
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.serving.bench import batch_totals, free_port, start_server
from benchmarks.serving.texts import DOCUMENT, QUESTIONS

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (Linux ``VmHWM``), MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def store_documents(url: str, n: int) -> list[str]:
    docs = [f"Document {i}. {DOCUMENT}" for i in range(n)]
    made = httpx.post(f"{url}/v1/contexts", json={"documents": docs}, timeout=600)
    made.raise_for_status()
    return [c["id"] for c in made.json()["contexts"]]


def locust_stats(prefix: Path) -> dict[str, dict[str, float]]:
    """Rows of locust's ``<prefix>_stats.csv`` by name: answer, compress, Aggregated."""
    rows = {}
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "requests_per_s": round(float(row["Requests/s"]), 2),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
                "max_ms": round(float(row["Max Response Time"]), 1),
            }
    return rows


def run_locust(args: argparse.Namespace, max_batch: int, work: Path) -> dict:
    proc, url = start_server(args, work / f"store-{max_batch}", free_port(), max_batch)
    try:
        ids = store_documents(url, args.documents)
        for cid in ids:  # warm-up, not measured
            httpx.post(f"{url}/v1/contexts/{cid}/answers", json={"question": "Who?"}, timeout=600)
        before = httpx.get(f"{url}/metrics").text
        prefix = work / f"locust-{max_batch}"
        env = {
            **os.environ,
            "CTXCOMPRESS_LOAD_IDS": ",".join(ids),
            "CTXCOMPRESS_LOAD_MAX_NEW_TOKENS": str(args.max_new_tokens),
        }
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.seconds}s",
            "--stop-timeout", "120", "--host", url, "--csv", str(prefix), "--only-summary",
            "--loglevel", "WARNING",
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        after = httpx.get(f"{url}/metrics").text
        healthy = httpx.get(f"{url}/healthz").status_code == 200
        peak = peak_rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait(30)
    stats = locust_stats(prefix)
    if "Aggregated" not in stats:
        raise SystemExit(f"locust wrote no statistics:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    (q0, c0), (q1, c1) = batch_totals(before), batch_totals(after)
    return {
        "max_batch": max_batch,
        **stats["Aggregated"],
        "answer": stats.get("answer"),
        "compress": stats.get("compress"),
        "mean_batch": round((q1 - q0) / (c1 - c0), 2) if c1 > c0 else None,
        "server_peak_rss_mib": peak,
        "healthy_after": healthy,
        "locust_exit_code": done.returncode,
    }


async def _burst(url: str, cid: str, n: int, max_new_tokens: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        body = {"question": QUESTIONS[0], "max_new_tokens": max_new_tokens}
        return await asyncio.gather(
            *(http.post(f"/v1/contexts/{cid}/answers", json=body) for _ in range(n))
        )


def overload(args: argparse.Namespace, work: Path) -> dict:
    proc, url = start_server(args, work / "store-overload", free_port(), 16, args.overload_queue)
    try:
        cid = store_documents(url, 1)[0]
        responses = asyncio.run(_burst(url, cid, args.overload_requests, args.max_new_tokens))
        healthy = httpx.get(f"{url}/healthz").status_code == 200
        after = httpx.post(f"{url}/v1/contexts/{cid}/answers", json={"question": "Who?"})
    finally:
        proc.kill()
        proc.wait(30)
    statuses = [r.status_code for r in responses]
    answered = sum(1 for r in responses if r.status_code == 200 and r.json()["answers"])
    refused = [r for r in responses if r.status_code == 503]
    return {
        "requests": len(responses),
        "queue": args.overload_queue,
        "answered": answered,
        "refused_503": len(refused),
        "refused_with_retry_after": sum(1 for r in refused if r.headers.get("retry-after")),
        "other_statuses": sorted({s for s in statuses if s not in (200, 503)}),
        "lost": len(responses) - answered - len(refused),
        "healthy_after": healthy and after.status_code == 200,
    }


def markdown(result: dict) -> str:
    lines = [
        "| max_batch | requests | failures | requests/s | p50 (ms) | p95 (ms) | p99 (ms) "
        "| mean batch | server peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['max_batch']} | {r['requests']} | {r['failures']} | {r['requests_per_s']} "
            f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']} "
            f"| {r['server_peak_rss_mib']} |"
        )
    o = result["overload"]
    lines.append(
        f"\nOverload (queue {o['queue']}, {o['requests']} questions at once): {o['answered']} "
        f"answered, {o['refused_503']} refused with 503 ({o['refused_with_retry_after']} with "
        f"Retry-After), other statuses {o['other_statuses'] or 'none'}, {o['lost']} lost; "
        f"healthy after: {o['healthy_after']}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default="embedded")
    parser.add_argument("--method", default="sac")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--set", action="append", help="method option key=value")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--overload-queue", type=int, default=8)
    parser.add_argument("--overload-requests", type=int, default=64)
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.clients = args.users  # start_server sizes the queue by it
    with TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.strftime("%Y-%m-%d %H:%M")
        runs = [run_locust(args, b, work) for b in args.max_batches]
        result = {
            "started": started,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "runs": runs,
            "overload": overload(args, work),
        }
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    failed = any(r["failures"] or not r["healthy_after"] for r in runs)
    o = result["overload"]
    if failed or o["lost"] or o["other_statuses"] or not o["healthy_after"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
