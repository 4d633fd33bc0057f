"""Run a service app in a background thread, or wait for one started as a process (for
tests, notebooks and benchmarks)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of ``host`` in a daemon thread; yields its
    base URL (``http://host:port``) once it accepts requests, and stops it on exit."""
    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ctxcompress-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``<url>/healthz`` until it answers 200 (a ``ctxcompress serve`` process ready);
    ``RuntimeError`` with the process's last output if it exits first, or after ``timeout``."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            stream = proc.stdout or proc.stderr
            output = stream.read().decode(errors="replace")[-3000:] if stream else ""
            raise RuntimeError(f"the server exited with code {proc.returncode}:\n{output}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer {url}/healthz within {timeout:.0f} s")
        time.sleep(0.1)
