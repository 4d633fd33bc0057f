"""Fault injection (issue 21): kill the server while it writes contexts, fail its disk, kill
training while it steps and while it writes checkpoints — and check that nothing is lost.

- **server kills**: ``ctxcompress serve`` (tiny model) takes a stream of compressions and
  deletions from a client and is SIGKILLed at a random moment, again and again. After each
  kill the store is opened as the restarted server would open it: every indexed context must
  load, every context the client was told was stored must be there, and ``gc(verify=True)``
  must find nothing corrupt to drop. The last restart must list and answer.
- **disk faults**: the store's disk fills up (ENOSPC) or turns read-only (EROFS) while the
  service runs: writes get a JSON 507 / 503 with Retry-After, answering from stored contexts
  keeps working, the store is unchanged, and writes succeed again once the disk recovers.
  On a real small filesystem (a tmpfs mount, when this process may mount one: ``--real-disk``)
  or by a fault-injecting writer (``os.fsync`` / ``tempfile.mkstemp`` fail with that errno).
- **training kills**: ``ctxcompress train`` (tiny model, a checkpoint every few steps) is
  SIGKILLed at random moments and — through a hook in the child — in the middle of checkpoint
  writes (before or after one of its file writes or renames). Every relaunch with the same
  command must resume; the final weights must equal an uninterrupted run's and the metrics log
  must hold every step exactly once.

``tests/test_faults.py`` runs a bounded version in ``make test``; the full run:

    .venv/bin/python benchmarks/faults/run.py --server-kills 20 --training-kills 10 --real-disk \
        --out benchmarks/faults/results/report.json
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from ctxcompress.serving.background import wait_until_healthy

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORDS = ["paris", "report", "anchor", "chunk", "river", "code", "box", "attic", "seven", "blue"]
SERVER_COMMAND = [
    "serve", "--base-model", "tiny", "--method", "sac", "--ratio", "4", "--set", "lora_rank=8",
]  # fmt: skip


def _ctxcompress(*args: str) -> list[str]:
    return [sys.executable, "-m", "ctxcompress", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- server kills


@dataclass
class ServerKillReport:
    kills: int = 0
    contexts_acknowledged: int = 0
    deletes_acknowledged: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, then missing after a kill
    unreadable: list[str] = field(default_factory=list)  # indexed but not loadable
    dropped_by_gc: int = 0  # entries gc(verify=True) found corrupt
    temp_files_left: int = 0  # .<name>.* files interrupted writes left (gc removes them)
    healthy_after: bool = False

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.unreadable
            and self.dropped_by_gc == 0
            and self.healthy_after
            and self.contexts_acknowledged > 0
        )


@contextlib.contextmanager
def running_server(store: Path, port: int) -> Iterator[subprocess.Popen]:
    """``ctxcompress serve`` on the tiny model, ready (``/healthz`` answers); killed on exit."""
    env = {**os.environ, "CTXCOMPRESS_TOKEN": TOKEN}
    args = [*SERVER_COMMAND, "--store", str(store), "--port", str(port), "--log-level", "error"]
    proc = subprocess.Popen(
        _ctxcompress(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


class _Client(threading.Thread):
    """Compresses fresh documents (and now and then deletes one) until the server dies."""

    def __init__(self, url: str, rng: random.Random, tag: str) -> None:
        super().__init__(daemon=True)
        self.url, self.rng, self.tag = url, rng, tag
        self.stored: set[str] = set()  # acknowledged as stored
        self.deleting: set[str] = set()  # a delete was sent: either state is fine
        self.deletes = 0
        self.first_write = threading.Event()

    def run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as http:
            while True:
                n += 1
                try:
                    if self.stored and self.rng.random() < 0.2:
                        cid = self.rng.choice(sorted(self.stored))
                        self.stored.discard(cid)
                        self.deleting.add(cid)
                        if http.delete(f"/v1/contexts/{cid}").status_code == 200:
                            self.deletes += 1
                        continue
                    docs = [
                        f"{self.tag} {n}.{j}: " + " ".join(self.rng.choices(WORDS, k=40))
                        for j in range(self.rng.randint(1, 3))
                    ]
                    response = http.post("/v1/contexts", json={"documents": docs})
                except httpx.TransportError:
                    return  # the server was killed
                if response.status_code in (200, 201):
                    self.stored.update(c["id"] for c in response.json()["contexts"])
                    self.first_write.set()


def check_store(store: Path, must_hold: set[str], report: ServerKillReport) -> None:
    """Open the store as a restarted server would and check every entry (see module doc)."""
    from ctxcompress.errors import CtxCompressError
    from ctxcompress.serving import ContextStore

    opened = ContextStore(store)
    listed = {e["id"] for e in opened.list()}
    report.lost += sorted(must_hold - listed)
    for cid in sorted(listed):
        try:
            opened.get(cid)
        except CtxCompressError:
            report.unreadable.append(cid)
    report.temp_files_left += sum(
        1 for p in [*store.glob(".index.json.*"), *(store / "contexts").glob(".*")]
    )
    report.dropped_by_gc += len(opened.gc(verify=True)["dropped"])


def server_kills(workdir: Path, kills: int, seed: int = 0) -> ServerKillReport:
    """SIGKILL a writing server ``kills`` times (see the module docstring)."""
    rng = random.Random(seed)
    store, port = workdir / "store", _free_port()
    url = f"http://127.0.0.1:{port}"
    report = ServerKillReport()
    must_hold: set[str] = set()
    for k in range(kills):
        with running_server(store, port) as proc:
            client = _Client(url, random.Random(rng.random()), f"kill {k}")
            client.start()
            if not client.first_write.wait(60):
                raise RuntimeError("the server stored nothing within 60 s")
            time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            client.join(60)
        report.kills += 1
        report.contexts_acknowledged += len(client.stored) + len(client.deleting)
        report.deletes_acknowledged += client.deletes
        must_hold = (must_hold | client.stored) - client.deleting
        check_store(store, must_hold, report)
    with running_server(store, port), httpx.Client(base_url=url, headers=AUTH) as http:
        listed = {c["id"] for c in http.get("/v1/contexts?limit=100000").json()["contexts"]}
        answered = True
        if must_hold:
            cid = sorted(must_hold)[0]
            answer = http.post(
                f"/v1/contexts/{cid}/answers", json={"questions": ["What?"], "max_new_tokens": 4}
            )
            answered = answer.status_code == 200
        report.healthy_after = must_hold <= listed and answered
    return report


# --------------------------------------------------------------------------- disk faults


@dataclass
class DiskFaultReport:
    mode: str  # "full" or "read-only"
    disk: str  # "tmpfs" (a real small filesystem) or "injected" (a fault-injecting writer)
    write_status: int = 0
    write_error: str = ""
    retry_after: str | None = None
    answer_status: int = 0
    delete_status: int | None = None
    store_unchanged: bool = False
    write_after_recovery: int = 0
    dropped_by_gc: int = 0

    @property
    def ok(self) -> bool:
        expected = 507 if self.mode == "full" else 503
        return (
            self.write_status == expected
            and self.answer_status == 200
            and self.store_unchanged
            and self.write_after_recovery == 201
            and self.dropped_by_gc == 0
            and (self.mode == "full" or (self.retry_after is not None))
        )


@contextlib.contextmanager
def injected_disk_fault(code: int) -> Iterator[None]:
    """Writes fail with ``code``: ENOSPC at ``fsync`` (where a full disk shows at the latest),
    EROFS when a temporary file is created."""
    real_fsync, real_mkstemp = os.fsync, tempfile.mkstemp

    def failing_fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    def failing_mkstemp(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    if code == errno.ENOSPC:
        os.fsync = failing_fsync
    else:
        tempfile.mkstemp = failing_mkstemp
    try:
        yield
    finally:
        os.fsync, tempfile.mkstemp = real_fsync, real_mkstemp


def _snapshot(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def disk_faults(
    compressor: Any, workdir: Path, *, real_disk: bool = False
) -> list[DiskFaultReport]:
    """The service on a store whose disk fills up, then turns read-only (module docstring)."""
    from ctxcompress.serving import ContextStore
    from ctxcompress.serving.app import create_app
    from ctxcompress.serving.background import serve_in_thread

    reports = []
    for mode in ("full", "read-only"):
        store = workdir / f"disk-{mode}"
        store.mkdir(parents=True)
        mounted = real_disk and _mount_tmpfs(store)
        report = DiskFaultReport(mode=mode, disk="tmpfs" if mounted else "injected")
        app = create_app(compressor, store, token=TOKEN)
        app.state.store.flush_interval = 0.0  # every answer tries to write its access time
        try:
            with serve_in_thread(app) as url, httpx.Client(base_url=url, headers=AUTH) as http:
                made = http.post("/v1/contexts", json={"documents": ["Paris is in France."]})
                cid = made.json()["contexts"][0]["id"]
                before = _snapshot(store)
                fault = _real_fault(store, mode) if mounted else _injected_fault(mode)
                with fault:
                    failed = http.post("/v1/contexts", json={"documents": ["Rome is in Italy."]})
                    report.write_status = failed.status_code
                    report.write_error = failed.json()["error"]["type"]
                    report.retry_after = failed.headers.get("retry-after")
                    answer = http.post(
                        f"/v1/contexts/{cid}/answers",
                        json={"questions": ["Where is Paris?"], "max_new_tokens": 4},
                    )
                    report.answer_status = answer.status_code
                    if mode == "read-only":
                        report.delete_status = http.delete(f"/v1/contexts/{cid}").status_code
                    after = _snapshot(store)
                report.store_unchanged = _same_contexts(before, after)
                again = http.post("/v1/contexts", json={"documents": ["Rome is in Italy."]})
                report.write_after_recovery = again.status_code
            report.dropped_by_gc = len(ContextStore(store).gc(verify=True)["dropped"])
        finally:
            if mounted:
                subprocess.run(["umount", str(store)], check=False)
        reports.append(report)
    return reports


def _same_contexts(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """Same context files and the same index entries (access times may not be written)."""
    files = {k: v for k, v in before.items() if k.startswith("contexts/")}
    if files != {k: v for k, v in after.items() if k.startswith("contexts/")}:
        return False
    ids = [
        set(json.loads(s.get("index.json") or b"{}").get("entries", {})) for s in (before, after)
    ]
    return ids[0] == ids[1]


def _injected_fault(mode: str) -> contextlib.AbstractContextManager:
    return injected_disk_fault(errno.ENOSPC if mode == "full" else errno.EROFS)


def _mount_tmpfs(folder: Path) -> bool:
    """Mount a 2 MiB tmpfs on ``folder`` (root only; ``False`` where not allowed)."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@contextlib.contextmanager
def _real_fault(store: Path, mode: str) -> Iterator[None]:
    """Fill the tmpfs (leaving a few KiB) or remount it read-only, and undo it after."""
    if mode == "full":
        filler = store / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        try:
            yield
        finally:
            filler.unlink()
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(store)], check=True)


# --------------------------------------------------------------------------- training kills


@dataclass
class TrainingKillReport:
    kills_asked: int = 0
    kills: int = 0
    kills_in_checkpoint_writes: int = 0
    launches: int = 0
    failed_resumes: list[str] = field(default_factory=list)
    weights_equal: bool = False
    max_weight_difference: float = float("nan")
    logged_steps_exactly_once: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.kills == self.kills_asked
            and not self.failed_resumes
            and self.weights_equal
            and self.logged_steps_exactly_once
        )


def _training_config(workdir: Path, name: str, steps: int) -> Path:
    data = workdir / "qa.jsonl"
    if not data.is_file():
        records = [
            {
                "context": f"The secret code of box {i} is {w}. It was stored in the attic.",
                "question": f"What is the code of box {i}?",
                "answers": [w],
            }
            for i, w in enumerate(["ruby", "amber", "cobalt", "jade"])
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "method": "sac",
        "base_model": "tiny",
        "method_options": {"ratio": 2, "lora_rank": 8, "lora_alpha": 16},
        "data": [{"source": f"jsonl:{data}"}],
        "train": {
            "steps": steps,
            "batch_size": 4,
            "micro_batch_size": 2,
            "lr": 1e-2,
            "warmup_steps": 2,
            "log_every": 1,
            "save_every": 2,
            "keep_checkpoints": 2,
        },
        "output_dir": str(workdir / name),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train_command(config: Path, die_at_write: int | None = None) -> list[str]:
    if die_at_write is None:
        return _ctxcompress("train", "-c", str(config))
    return [sys.executable, __file__, "_train-and-die", str(config), str(die_at_write)]


def _train_and_die(config: str, at_write: int) -> None:
    """(child) ``ctxcompress train -c config``, SIGKILLed at its ``at_write``-th file write or
    rename inside a checkpoint save (odd: before the operation, even: after it)."""
    import safetensors.torch

    import ctxcompress.methods.persistence as persistence
    import ctxcompress.training.trainer as trainer_module
    from ctxcompress.cli import app

    inside, count = [False], [0]

    def deadly(fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if inside[0]:
                count[0] += 1
                if count[0] == at_write and at_write % 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            result = fn(*args, **kwargs)
            if inside[0] and count[0] == at_write:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return wrapped

    original_save = trainer_module.Trainer.save_checkpoint

    def save_checkpoint(self: Any) -> Any:
        inside[0] = True
        try:
            return original_save(self)
        finally:
            inside[0] = False

    trainer_module.Trainer.save_checkpoint = save_checkpoint
    trainer_module.save_file = deadly(trainer_module.save_file)
    persistence.save_file = deadly(safetensors.torch.save_file)
    os.replace = deadly(os.replace)
    os.fsync = deadly(os.fsync)
    app(["train", "-c", config], standalone_mode=True)


def _wait_for_progress(out: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Until the run logs a step (``False`` if it exits first)."""
    metrics, start = out / "metrics.jsonl", time.monotonic()
    before = metrics.stat().st_size if metrics.is_file() else 0
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            return False
        if metrics.is_file() and metrics.stat().st_size > before:
            return True
        time.sleep(0.05)
    raise RuntimeError("training made no progress within 120 s")


def _final_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(folder.rglob("*.safetensors"))
    return {f"{p.relative_to(folder)}:{k}": v for p in files for k, v in load_file(p).items()}


def training_kills(
    workdir: Path, kills: int, seed: int = 0, steps: int = 200
) -> TrainingKillReport:
    """SIGKILL training ``kills`` times, half in checkpoint writes (module docstring)."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    report = TrainingKillReport(kills_asked=kills)
    reference = _training_config(workdir, "reference", steps)
    subprocess.run(_train_command(reference), check=True, capture_output=True)
    config = _training_config(workdir, "killed", steps)
    out = workdir / "killed"
    while report.kills < kills:
        in_checkpoint = report.kills % 2 == 1
        die_at = rng.randint(1, 16) if in_checkpoint else None
        proc = subprocess.Popen(
            _train_command(config, die_at), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        report.launches += 1
        if die_at is None and _wait_for_progress(out, proc):
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(300)
        stderr = proc.stderr.read().decode(errors="replace")
        if rc == -signal.SIGKILL:
            report.kills += 1
            report.kills_in_checkpoint_writes += int(in_checkpoint)
        elif rc != 0:
            report.failed_resumes.append(f"launch {report.launches}: rc {rc}: {stderr[-1500:]}")
            break
        elif (out / "compressor").is_dir():
            break  # finished before the kill came: fewer kills than asked (reported)
    final = subprocess.run(_train_command(config), capture_output=True, check=False)
    report.launches += 1
    if final.returncode != 0:
        report.failed_resumes.append(f"final launch: {final.stderr.decode()[-1500:]}")
        return report
    a = _final_weights(workdir / "reference" / "compressor")
    b = _final_weights(out / "compressor")
    if a.keys() == b.keys() and a:
        report.max_weight_difference = max(float((a[k] - b[k]).abs().max()) for k in a)
        report.weights_equal = report.max_weight_difference <= 1e-6
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    report.logged_steps_exactly_once = logged == list(range(1, steps + 1))
    return report


# --------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "_train-and-die":
        _train_and_die(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-kills", type=int, default=20)
    parser.add_argument("--training-kills", type=int, default=10)
    parser.add_argument("--real-disk", action="store_true", help="tmpfs mounts (root only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args()

    import ctxcompress as cc

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4, lora_rank=8)
        disk = disk_faults(comp, work / "disk", real_disk=args.real_disk)
        results["disk"] = [{**asdict(r), "ok": r.ok} for r in disk]
        server = server_kills(work / "server", args.server_kills, args.seed)
        results["server"] = {**asdict(server), "ok": server.ok}
        training = training_kills(work / "training", args.training_kills, args.seed)
        results["training"] = {**asdict(training), "ok": training.ok}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    ok = all(r["ok"] for r in results["disk"]) and server.ok and training.ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
