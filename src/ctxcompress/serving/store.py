"""An on-disk store of compressed contexts: compress a document once, answer many times.

Layout of a store folder::

    index.json            one JSON object: {"format_version": 1, "entries": {id: entry}}
    contexts/<id>.ctx     one safetensors file per context (CompressedContext.save)
    .lock                 advisory lock shared by every process that opens the store

Ids are content addresses: ``sha256(method, base-model fingerprint, compressor fingerprint,
text)``, so the same text compressed by the same compressor is stored once, and a context id
can never be confused with one made by other weights. Every write is atomic (temporary file
+ ``os.replace``): a process killed at any point leaves either the old or the new index and
never a half-written context. With a size cap (``max_bytes``) the least recently used
contexts are evicted; access times are kept in memory and written with the next change (or
``flush()``), so answering does not rewrite the index on every request.

The store is thread-safe, and an ``fcntl`` lock serialises changes made by several processes
(a running server and ``ctxcompress store rm``): each change re-reads the index first.
Nothing is pickled: the index is JSON and the tensors are safetensors.

A disk that refuses a write (full, read-only, I/O error) raises
:class:`~ctxcompress.errors.StorageError` from the change that needed it and leaves the
store as it was; reading keeps working (a read-only store serves what it holds, and access
times that cannot be written are kept in memory and retried).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .. import quantization
from ..atomic import write_text_atomic
from ..context import CompressedContext
from ..errors import (
    ContextNotFoundError,
    CorruptFileError,
    InvalidInputError,
    StorageError,
)
from .ids import is_valid_id
from .locking import locked, storage_errors

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
CONTEXT_DIR = "contexts"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1


class ContextStore:
    """Compressed contexts on disk, addressed by content, with an optional LRU size cap.

    Args:
        root: the store folder (created if missing).
        max_bytes: evict least recently used contexts while the files exceed this many bytes
            (``None``: no cap).
        cache_bytes: bytes of contexts kept loaded in memory (most recently used; 0: none).
        flush_interval: seconds after which recorded access times are written to the index
            even without another change.
        quantize: ``"int8"`` stores new contexts as int8 with float32 scales (~4x smaller
            than float32; :mod:`ctxcompress.quantization`); what the store hands out, from
            its memory cache as from its files, is then always the dequantized context.
            Files written under another setting stay as they are (each records its format).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        max_bytes: int | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
        flush_interval: float = 5.0,
        quantize: str | None = None,
    ) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise InvalidInputError(f"max_bytes must be >= 1 (or None), got {max_bytes}")
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"store {self.root} exists and is not a folder")
        with self._storage_errors("create its folders"):
            (self.root / CONTEXT_DIR).mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.quantize = quantization.check_scheme(quantize)
        """Storage scheme of new files (``"int8"`` or None); each file records its own."""
        self.cache_bytes = cache_bytes
        self.flush_interval = flush_interval
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._index_stamp: tuple[int, int, int] | None = None
        self._pending_access: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._cache: OrderedDict[str, CompressedContext] = OrderedDict()
        self.evictions = 0
        with self._locked():
            try:
                self._refresh(force=True)
            except StorageError as exc:  # a rebuilt index that cannot be written: serve anyway
                log.warning("%s; serving the contexts it holds without writing", exc)

    # ------------------------------------------------------------------ paths and locking
    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def path_of(self, context_id: str) -> Path:
        if not is_valid_id(context_id):
            raise ContextNotFoundError(f"no context with id {context_id!r} (ids are 64 hex chars)")
        return self.root / CONTEXT_DIR / f"{context_id}.ctx"

    def _locked(self):
        """This process's threads and other processes: one change at a time."""
        return locked(self._lock, self.root / LOCK_FILE, self.root)

    def _storage_errors(self, action: str):
        """Raise a disk's refusal (``OSError``) as :class:`StorageError` naming the store."""
        return storage_errors(self.root, action)

    # ------------------------------------------------------------------ the index
    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.index_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self, *, force: bool = False) -> None:
        """Re-read the index if another process changed it (changes, made under the file
        lock, always re-read it: the file's stamp alone can miss a same-size rewrite)."""
        stamp = self._stamp()
        if not force and stamp == self._index_stamp:
            return
        if stamp is None:
            entries: dict[str, dict[str, Any]] = {}
            if force and any((self.root / CONTEXT_DIR).glob("*.ctx")):
                entries = self._rebuild_entries()
                self._entries = entries
                self._write_index()
                return
        else:
            try:
                data = json.loads(self.index_path.read_text(encoding="utf-8"))
                entries = data["entries"]
                if not isinstance(entries, dict) or data.get("format_version", 1) > FORMAT_VERSION:
                    raise ValueError("unsupported index")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                aside = self.index_path.with_name(f"{INDEX_FILE}.corrupt-{int(time.time())}")
                log.warning(
                    "store index %s is unreadable (%s): moved to %s and rebuilt from "
                    "the context files",
                    self.index_path,
                    exc,
                    aside.name,
                )
                with contextlib.suppress(OSError):
                    os.replace(self.index_path, aside)
                self._entries = self._rebuild_entries()
                self._write_index()
                return
        for cid, ts in self._pending_access.items():  # keep access times not yet written
            if cid in entries:
                entries[cid]["last_access"] = max(entries[cid].get("last_access", 0.0), ts)
        self._entries = entries
        self._index_stamp = stamp
        for cid in [c for c in self._cache if c not in entries]:
            del self._cache[cid]

    def _write_index(self) -> None:
        data = {"format_version": FORMAT_VERSION, "entries": self._entries}
        with self._storage_errors("write its index"):
            write_text_atomic(self.index_path, json.dumps(data, indent=1, sort_keys=True))
        self._index_stamp = self._stamp()
        self._pending_access.clear()
        self._last_flush = time.monotonic()

    def _rebuild_entries(self) -> dict[str, dict[str, Any]]:
        """Index entries from the context files' own headers (last access = file mtime)."""
        entries = {}
        for path in sorted((self.root / CONTEXT_DIR).glob("*.ctx")):
            cid = path.stem
            if not is_valid_id(cid):
                continue
            try:
                ctx = CompressedContext.load(path)
            except CorruptFileError:
                continue
            mtime = path.stat().st_mtime
            entries[cid] = self._entry(cid, ctx, path, created=mtime)
        return entries

    @staticmethod
    def _entry(cid: str, ctx: CompressedContext, path: Path, *, created: float) -> dict[str, Any]:
        return {
            "id": cid,
            "method": ctx.method,
            "base_model": ctx.base_model,
            "compressor": ctx.compressor,
            "kind": ctx.kind,
            "original_length": ctx.original_length,
            "compressed_length": ctx.compressed_length,
            "bytes": path.stat().st_size,
            "chars": ctx.meta.get("chars"),
            "ratio": ctx.meta.get("ratio"),  # the one a budget chose, or the compressor's
            "budget": ctx.meta.get("budget"),
            "extendable": "tail_ids" in ctx.meta,
            "created": created,
            "last_access": created,
        }

    # ------------------------------------------------------------------ reading
    def __contains__(self, context_id: object) -> bool:
        if not isinstance(context_id, str):
            return False
        with self._lock:
            self._refresh()
            return context_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._entries)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            self._refresh()
            return sum(int(e["bytes"]) for e in self._entries.values())

    def info(self, context_id: str) -> dict[str, Any]:
        """The index entry of a context (metadata only; does not count as an access)."""
        with self._lock:
            self._refresh()
            entry = self._entries.get(context_id)
            if entry is None:
                raise ContextNotFoundError(f"no context with id {context_id!r} in {self.root}")
            return dict(entry)

    def list(self) -> list[dict[str, Any]]:
        """Every entry, most recently used first."""
        with self._lock:
            self._refresh()
            entries = [dict(e) for e in self._entries.values()]
        return sorted(entries, key=lambda e: (-e["last_access"], e["id"]))

    def get(self, context_id: str) -> CompressedContext:
        """Load a context (from the in-memory cache when it is there); records the access."""
        path = self.path_of(context_id)
        with self._lock:
            self._refresh()
            if context_id not in self._entries:
                raise ContextNotFoundError(f"no context with id {context_id!r} in {self.root}")
            ctx = self._cache.get(context_id)
            if ctx is not None:
                self._cache.move_to_end(context_id)
        if ctx is None:
            try:
                ctx = CompressedContext.load(path)
            except ContextNotFoundError:  # deleted in between
                raise ContextNotFoundError(
                    f"no context with id {context_id!r} in {self.root}"
                ) from None
            with self._lock:
                if context_id in self._entries:
                    self._remember(context_id, ctx)
        self.touch(context_id)
        return ctx

    def touch(self, context_id: str) -> None:
        """Record an access (for LRU eviction); written to the index lazily."""
        with self._lock:
            now = time.time()
            entry = self._entries.get(context_id)
            if entry is None:
                return
            entry["last_access"] = now
            self._pending_access[context_id] = now
            due = time.monotonic() - self._last_flush > self.flush_interval
        if due:
            try:
                self.flush()
            except StorageError as exc:  # answering must not fail because of a timestamp
                self._last_flush = time.monotonic()  # retry after the next interval
                log.warning("%s; access times are kept in memory", exc)

    def flush(self) -> None:
        """Write access times recorded since the last change to the index."""
        with self._locked():
            if not self._pending_access:
                return
            self._refresh(force=True)
            self._write_index()

    def _remember(self, context_id: str, ctx: CompressedContext) -> None:
        if ctx.num_bytes > self.cache_bytes:
            return
        self._cache[context_id] = ctx
        self._cache.move_to_end(context_id)
        total = sum(c.num_bytes for c in self._cache.values())
        while total > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            total -= dropped.num_bytes

    # ------------------------------------------------------------------ writing
    def put(self, context_id: str, ctx: CompressedContext) -> tuple[dict[str, Any], bool]:
        """Store ``ctx`` under ``context_id`` (see :func:`id_for`); returns ``(entry, created)``.

        An id already stored is only touched (``created=False``). With a size cap, least
        recently used contexts are evicted to make room; a context larger than the whole cap
        is refused with ``InvalidInputError``.
        """
        path = self.path_of(context_id)
        with self._locked():
            self._refresh(force=True)
            if context_id in self._entries and path.is_file():
                self._remember(context_id, ctx.as_stored(self.quantize))
                self._entries[context_id]["last_access"] = time.time()
                self._pending_access[context_id] = self._entries[context_id]["last_access"]
                return dict(self._entries[context_id]), False
            needed = ctx.stored_bytes(self.quantize)
            if self.max_bytes is not None and needed > self.max_bytes:
                raise InvalidInputError(
                    f"the compressed context needs about {needed} bytes, more than the "
                    f"store's whole size cap ({self.max_bytes} bytes)"
                )
            with self._storage_errors("write a context"):
                ctx.save(path, quantize=self.quantize)
            entry = self._entry(context_id, ctx, path, created=time.time())
            # The index is written before evicted files are removed: a failure leaves the
            # store exactly as it was (the new file is removed again, nothing evicted).
            before = dict(self._entries)  # entries are replaced, never changed, in here
            self._entries[context_id] = entry
            evicted = self._evict(keep=context_id)
            try:
                self._write_index()
            except StorageError:
                self._entries = before
                path.unlink(missing_ok=True)
                raise
            self._remove_files(evicted)
            self._remember(context_id, ctx.as_stored(self.quantize))
            return dict(entry), True

    def delete(self, context_id: str) -> bool:
        """Remove a context; ``False`` if there was none with this id."""
        if not is_valid_id(context_id):
            return False
        with self._locked():
            self._refresh(force=True)
            path = self.path_of(context_id)
            existed = context_id in self._entries or path.exists()
            if context_id in self._entries:
                entry = self._entries.pop(context_id)
                try:
                    self._write_index()  # first the index, then the file: never a dangling id
                except StorageError:
                    self._entries[context_id] = entry
                    raise
            self._cache.pop(context_id, None)
            self._pending_access.pop(context_id, None)
            with self._storage_errors("delete a context"):
                path.unlink(missing_ok=True)
            return existed

    def _remove_files(self, ids: list[str]) -> None:
        for cid in ids:
            with contextlib.suppress(OSError):  # left over: ``gc`` removes unindexed files
                (self.root / CONTEXT_DIR / f"{cid}.ctx").unlink(missing_ok=True)

    def _evict(self, *, keep: str | None = None) -> list[str]:
        """Drop least recently used entries from the index until the cap holds (never
        ``keep``); the caller removes their files once the index is written."""
        if self.max_bytes is None:
            return []
        evicted = []
        total = sum(int(e["bytes"]) for e in self._entries.values())
        for entry in sorted(self._entries.values(), key=lambda e: (e["last_access"], e["id"])):
            if total <= self.max_bytes:
                break
            if entry["id"] == keep:
                continue
            cid = entry["id"]
            total -= int(entry["bytes"])
            del self._entries[cid]
            self._cache.pop(cid, None)
            self._pending_access.pop(cid, None)
            evicted.append(cid)
            log.info(
                "store: evicted %s (least recently used) to stay under %d bytes",
                cid,
                self.max_bytes,
            )
        self.evictions += len(evicted)
        return evicted

    def gc(self, *, verify: bool = False, max_bytes: int | None = None) -> dict[str, Any]:
        """Repair and trim the store.

        Drops index entries whose file is gone (or, with ``verify``, unreadable), adopts
        context files missing from the index (e.g. after a lost index), deletes leftover
        temporary files and anything else in ``contexts/``, and evicts least recently used
        contexts above ``max_bytes`` (default: the store's own cap). Returns a summary.
        """
        summary: dict[str, Any] = {"dropped": [], "adopted": [], "removed_files": [], "evicted": []}
        with self._locked(), self._storage_errors("repair itself"):
            self._refresh(force=True)
            folder = self.root / CONTEXT_DIR
            for cid in list(self._entries):
                path = folder / f"{cid}.ctx"
                ok = path.is_file()
                if ok and verify:
                    try:
                        CompressedContext.load(path)
                    except CorruptFileError:
                        ok = False
                        path.unlink(missing_ok=True)
                if not ok:
                    del self._entries[cid]
                    self._cache.pop(cid, None)
                    summary["dropped"].append(cid)
            for path in sorted(folder.iterdir()):
                cid = path.stem if path.suffix == ".ctx" else None
                if cid is not None and cid in self._entries:
                    continue
                if cid is not None and is_valid_id(cid) and path.is_file():
                    try:
                        ctx = CompressedContext.load(path)
                    except CorruptFileError:
                        ctx = None
                    if ctx is not None:
                        self._entries[cid] = self._entry(
                            cid, ctx, path, created=path.stat().st_mtime
                        )
                        summary["adopted"].append(cid)
                        continue
                if path.is_file():
                    path.unlink(missing_ok=True)
                    summary["removed_files"].append(path.name)
            for path in self.root.glob(f".{INDEX_FILE}.*"):  # an interrupted index write
                path.unlink(missing_ok=True)
                summary["removed_files"].append(path.name)
            previous = self.max_bytes
            if max_bytes is not None:
                self.max_bytes = max_bytes
            try:
                summary["evicted"] = self._evict()
            finally:
                self.max_bytes = previous
            self._write_index()
            self._remove_files(summary["evicted"])
            summary["contexts"] = len(self._entries)
            summary["bytes"] = sum(int(e["bytes"]) for e in self._entries.values())
        return summary
