"""Faults (issue 21): a full or read-only disk under the store, SIGKILL of a writing server and
of training (at random moments and inside checkpoint writes) — bounded runs of
``benchmarks/faults/run.py``, plus the store's and the trainer's recovery rules one by one."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from benchmarks.faults import run as faults

import ctxcompress as cc
from ctxcompress.errors import StorageError
from ctxcompress.serving import ContextStore, id_for
from ctxcompress.serving.api_errors import from_library_error
from ctxcompress.training import checkpoint as ckpt


@pytest.fixture(scope="module")
def comp():
    return cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4, lora_rank=8)


def _can_mount(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    if not faults._mount_tmpfs(probe):
        return False
    subprocess.run(["umount", str(probe)], check=False)
    return True


@pytest.mark.parametrize("real_disk", [False, True], ids=["injected", "tmpfs"])
def test_full_or_read_only_disk_gives_json_errors_and_changes_nothing(comp, tmp_path, real_disk):
    if real_disk and not _can_mount(tmp_path):
        pytest.skip("mounting a tmpfs needs root; the injected-fault variant covers the rest")
    reports = faults.disk_faults(comp, tmp_path / "disk", real_disk=real_disk)
    assert [r.mode for r in reports] == ["full", "read-only"]
    full, read_only = reports
    assert (full.write_status, full.write_error) == (507, "insufficient_storage"), full
    assert (read_only.write_status, read_only.write_error) == (503, "store_unavailable")
    assert read_only.retry_after == "30" and read_only.delete_status == 503
    for report in reports:
        assert report.disk == ("tmpfs" if real_disk else "injected")
        assert report.answer_status == 200, report  # stored contexts still answer
        assert report.store_unchanged and report.dropped_by_gc == 0, report
        assert report.write_after_recovery == 201, report
        assert report.ok


def test_a_failed_index_write_leaves_the_store_as_it_was(comp, tmp_path, monkeypatch):
    """put: the context file is written, then the index write fails — the new file goes
    again and nothing that had to be evicted for it is lost."""
    docs = ["Paris is in France.", "Rome is in Italy.", "Madrid is in Spain."]
    contexts = [comp.compress(d) for d in docs]
    ids = [id_for(comp, d) for d in docs]
    probe = ContextStore(tmp_path / "probe")
    probe.put(ids[0], contexts[0])
    one = probe.info(ids[0])["bytes"]
    store = ContextStore(tmp_path / "s", max_bytes=2 * one + one // 2)  # room for two
    store.put(ids[0], contexts[0])
    store.put(ids[1], contexts[1])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("ctxcompress.serving.store.write_text_atomic", full)
    with pytest.raises(StorageError, match="could not write its index.*free space") as caught:
        store.put(ids[2], contexts[2])  # would evict ids[0]
    assert caught.value.disk_full and caught.value.errno == errno.ENOSPC
    err = from_library_error(caught.value)
    assert (err.status, err.kind) == (507, "insufficient_storage")
    with pytest.raises(StorageError, match="could not write its index"):
        store.delete(ids[1])
    monkeypatch.undo()
    reopened = ContextStore(tmp_path / "s")
    assert sorted(e["id"] for e in reopened.list()) == sorted(ids[:2])
    files = sorted(p.stem for p in (tmp_path / "s" / "contexts").iterdir())
    assert files == sorted(ids[:2])
    for cid, ctx in zip(ids[:2], contexts, strict=False):
        assert torch.equal(reopened.get(cid).keys, ctx.keys)
    assert reopened.gc(verify=True)["dropped"] == []


def test_a_read_only_store_opens_and_serves_what_it_holds(comp, tmp_path, monkeypatch):
    store = ContextStore(tmp_path / "s", flush_interval=0.0)
    ctx = comp.compress("Paris is in France.")
    cid = id_for(comp, "Paris is in France.")
    store.put(cid, ctx)
    (tmp_path / "s" / ".lock").unlink()  # a read-only copy without a lock file
    real_open = open

    def read_only_open(path, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    monkeypatch.setattr(
        "tempfile.mkstemp",
        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")),
    )
    opened = ContextStore(tmp_path / "s", flush_interval=0.0)
    assert [e["id"] for e in opened.list()] == [cid]
    assert torch.equal(opened.get(cid).keys, ctx.keys)  # the access time cannot be written
    with pytest.raises(StorageError, match="make .* writable") as caught:
        opened.put(id_for(comp, "x"), comp.compress("x"))
    assert not caught.value.disk_full
    assert (from_library_error(caught.value).status, caught.value.errno) == (503, errno.EROFS)


def test_sigkilled_server_loses_no_acknowledged_context(tmp_path):
    report = faults.server_kills(tmp_path, kills=3, seed=1)
    assert report.kills == 3 and report.contexts_acknowledged > 0
    assert report.lost == [] and report.unreadable == [] and report.dropped_by_gc == 0
    assert report.healthy_after and report.ok


def test_sigkilled_training_resumes_to_the_uninterrupted_weights(tmp_path):
    report = faults.training_kills(tmp_path, kills=4, seed=2, steps=100)
    assert report.failed_resumes == []
    assert report.kills == 4 and report.kills_in_checkpoint_writes == 2, report
    assert report.weights_equal, report.max_weight_difference
    assert report.logged_steps_exactly_once and report.ok


def test_trim_log_drops_torn_lines_and_steps_to_redo(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    with log.open("a") as f:
        f.write('{"step": 6, "lo')  # killed mid-line
    assert [r["step"] for r in ckpt.read_log(log)] == [1, 2, 3, 4, 5]
    ckpt.trim_log(log, 4)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    stamp = log.stat().st_mtime_ns
    ckpt.trim_log(log, 10)  # nothing to drop: not rewritten
    assert log.stat().st_mtime_ns == stamp
    ckpt.trim_log(tmp_path / "missing.jsonl", 3)  # no log yet: nothing to do


def test_checkpoint_removal_cut_short_never_looks_like_a_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        folder = ckpt.checkpoint_dir(tmp_path, step)
        folder.mkdir(parents=True)
        (folder / ckpt.STATE_FILE).write_text("{}")
        (folder / "optimizer.safetensors").write_bytes(b"x" * 10)
    (root / ".tmp-step-000008").mkdir()  # an interrupted write

    def killed_rmtree(path, ignore_errors=False):  # the removal dies after the rename
        if os.path.exists(path):
            raise KeyboardInterrupt

    monkeypatch.setattr("ctxcompress.training.checkpoint.shutil.rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ckpt.discard(ckpt.checkpoint_dir(tmp_path, 2))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    monkeypatch.undo()
    ckpt.prune(tmp_path, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-000006"]
