"""Schema-driven fuzzing of the HTTP service with schemathesis (issue 21).

Starts the service (uvicorn, loopback) on a compressor, stores a few documents, then for every
operation of its OpenAPI schema sends schemathesis-generated requests — schema-valid ones
(positive) and schema-violating ones (negative), seeded — and checks every response: no 5xx,
status code, content type, headers and body conforming to the documented schema, invalid data
rejected. With a token, every request carries it (and /healthz is checked without). Prints
one line per operation and a summary; exits 1 on any failure. ``tests/test_fuzz.py`` runs a
bounded version of it on the tiny model in ``make test``.

    python benchmarks/fuzz_service.py --examples 200              # tiny model, auth on
    python benchmarks/fuzz_service.py --examples 200 --no-token
    python benchmarks/fuzz_service.py --base-model embedded --examples 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

import ctxcompress as cc
from ctxcompress.serving.app import create_app
from ctxcompress.serving.background import serve_in_thread
from ctxcompress.serving.schemas import ServeLimits

DOCS = [
    "The committee met in Paris in 1987 and wrote a report about context compression.",
    "Anchors collect information from the whole chunk through bidirectional attention.",
]
TOKEN = "fuzz-token"


@dataclass
class FuzzReport:
    """What a fuzzing run sent and found."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    healthy_after: bool = False


def fuzz(compressor: cc.Compressor, *, examples: int, token: str | None) -> FuzzReport:
    """Fuzz a fresh service on ``compressor``; returns a :class:`FuzzReport`."""
    report = FuzzReport()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = ServeLimits(max_new_tokens=8, max_questions=4, max_documents=4)
    with tempfile.TemporaryDirectory() as store:
        app = create_app(compressor, store, token=token, limits=limits)
        schema = schemathesis.openapi.from_dict(app.openapi())
        with serve_in_thread(app) as url:
            stored = httpx.post(f"{url}/v1/contexts", json={"documents": DOCS}, headers=headers)
            ids = [c["id"] for c in stored.json()["contexts"]]
            for result in schema.get_all_operations():
                operation = result.ok()
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    _fuzz_operation(operation, mode, url, headers, examples, ids, report)
            health = httpx.get(f"{url}/healthz")
            answer = httpx.post(
                f"{url}/v1/contexts",
                json={"text": DOCS[0]},
                headers=headers,
            )
            report.healthy_after = health.status_code == 200 and answer.status_code in (200, 201)
            if token:
                refused = httpx.get(f"{url}/v1/contexts")
                if refused.status_code != 401:
                    report.failures.append(f"no token: GET /v1/contexts gave {refused.status_code}")
    return report


def _fuzz_operation(operation, mode, url, headers, examples, ids, report) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), stored=st.sampled_from([None, *ids]))
    def run(case, stored) -> None:
        # Half the time, point the request at a stored context, so that answering and chat
        # run on fuzzed bodies instead of stopping at 404 for a random id. (DELETE is left
        # to random ids: deleting the stored contexts would end that.)
        if stored is not None and operation.method.upper() != "DELETE":
            if "context_id" in (case.path_parameters or {}):
                case.path_parameters["context_id"] = stored
            if isinstance(case.body, dict) and "context_id" in case.body:
                case.body["context_id"] = stored
        # Positive-data acceptance is left out on purpose: the schema cannot say "give
        # 'text' or 'documents', not both" or "a user message", so some schema-valid
        # bodies are rightly refused with 422 (and a message that says why).
        response = case.call_and_validate(
            base_url=url, headers=headers, excluded_checks=[positive_data_acceptance]
        )
        report.requests += 1
        report.by_status[response.status_code] = report.by_status.get(response.status_code, 0) + 1

    try:
        run()
    except Unsatisfiable:
        pass  # an operation without inputs has no negative data
    except BaseException as exc:  # schemathesis raises exception groups of failed checks
        if isinstance(exc, KeyboardInterrupt):
            raise
        report.failures.append(f"{operation.label} ({mode.value}): {str(exc)[:2000]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--examples", type=int, default=100, help="per operation and mode")
    parser.add_argument("--no-token", action="store_true")
    args = parser.parse_args()
    comp = cc.build_compressor("sac", cc.load_base_model(args.base_model), ratio=4, lora_rank=8)
    start = time.perf_counter()
    report = fuzz(comp, examples=args.examples, token=None if args.no_token else TOKEN)
    seconds = time.perf_counter() - start
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.by_status.items()))
    print(f"{report.requests} fuzzed requests in {seconds:.0f} s ({statuses})")
    print(f"server errors (5xx): {sum(v for k, v in report.by_status.items() if k >= 500)}")
    print(f"healthy after: {report.healthy_after}")
    for failure in report.failures:
        print("FAILURE", failure)
    raise SystemExit(1 if report.failures or not report.healthy_after else 0)


if __name__ == "__main__":
    main()
