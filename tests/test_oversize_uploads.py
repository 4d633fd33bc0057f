"""Issue 41, part 1: an oversize upload reads as a 413 with its JSON error in every common
client — Python's standard library, httpx and curl — on each endpoint that takes a body,
instead of a broken pipe; the keep-alive connection stays usable after a drained body; and the
drain is capped, so an endless body cannot hold a worker. Real uvicorn servers on loopback."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import ctxcompress as cc  # noqa: E402
from ctxcompress.serving.app import create_app  # noqa: E402
from ctxcompress.serving.background import serve_in_thread  # noqa: E402
from ctxcompress.serving.schemas import ServeLimits  # noqa: E402

LIMIT = 64_000
DRAIN_CAP = 8_000_000
OVERSIZE = 3_000_000  # 47x the limit, inside the drain cap
ENDPOINTS = ["/v1/contexts", "/v1/contexts/{id}/answers", "/v1/chat/completions"]
DOCUMENT = "The committee met in Paris in 1987 and wrote a report about context compression."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny SAC behind the body limit; yields (base url, id of a stored context)."""
    comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4, lora_rank=8)
    limits = ServeLimits(
        max_body_bytes=LIMIT, max_drain_bytes=DRAIN_CAP, drain_seconds=5.0, max_new_tokens=8
    )
    app = create_app(comp, tmp_path_factory.mktemp("store"), limits=limits)
    with serve_in_thread(app) as url:
        made = httpx.post(f"{url}/v1/contexts", json={"text": DOCUMENT}, timeout=60)
        assert made.status_code in (200, 201), made.text
        yield url, made.json()["contexts"][0]["id"]


def oversize_body(size: int = OVERSIZE) -> bytes:
    return json.dumps({"documents": ["word " * (size // 5)]}).encode()


def path_of(endpoint: str, context_id: str) -> str:
    return endpoint.replace("{id}", context_id)


def assert_413(status: int, body: bytes) -> None:
    assert status == 413
    error = json.loads(body)["error"]
    assert error["type"] == "payload_too_large" and str(LIMIT) in error["message"]


def normal_request(endpoint: str, context_id: str) -> tuple[str, dict]:
    if endpoint == "/v1/contexts":
        return endpoint, {"text": DOCUMENT}
    if endpoint == "/v1/chat/completions":
        return endpoint, {
            "context_id": context_id,
            "messages": [{"role": "user", "content": "Where did they meet?"}],
            "max_tokens": 4,
        }
    return path_of(endpoint, context_id), {"question": "Where did they meet?", "max_new_tokens": 4}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_standard_library_client_reads_the_413(server, endpoint):
    """The issue's reproduction: urllib with a body many times the limit."""
    url, context_id = server
    request = urllib.request.Request(
        url + path_of(endpoint, context_id),
        data=oversize_body(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert_413(refused.value.code, refused.value.read())


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_keep_alive_connection_still_serves_after_a_413(server, endpoint):
    url, context_id = server
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    conn.request("POST", path_of(endpoint, context_id), body=oversize_body(), headers=headers)
    response = conn.getresponse()
    assert_413(response.status, response.read())
    assert response.getheader("Connection") != "close"
    path, body = normal_request(endpoint, context_id)
    conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)  # same socket
    again = conn.getresponse()
    assert again.status in (200, 201), again.read()
    json.loads(again.read())
    conn.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_httpx_reads_the_413_and_its_client_keeps_working(server, endpoint):
    url, context_id = server
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            path_of(endpoint, context_id),
            content=oversize_body(),
            headers={"Content-Type": "application/json"},
        )
        assert_413(response.status_code, response.content)
        path, body = normal_request(endpoint, context_id)
        assert client.post(path, json=body).status_code in (200, 201)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("expect", [True, False], ids=["expect-100", "no-expect"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_curl_reads_the_413(server, endpoint, expect, tmp_path):
    """curl sends ``Expect: 100-continue`` for large bodies: it gets the 413 before sending."""
    url, context_id = server
    body = tmp_path / "body.json"
    body.write_bytes(oversize_body())
    command = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"]
    command += ["-H", "Content-Type: application/json", "--data-binary", f"@{body}"]
    if not expect:
        command += ["-H", "Expect:"]
    done = subprocess.run(
        [*command, url + path_of(endpoint, context_id)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    payload, _, status = done.stdout.rpartition(b"\n")
    assert_413(int(status), payload)


def test_a_body_beyond_the_drain_cap_is_refused_without_reading_it_all(server):
    """Past the cap the 413 goes out with Connection: close; an endless chunked body is cut
    off within the drain time; the server answers the next client at once."""
    url, _ = server
    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.putrequest("POST", "/v1/contexts")
    conn.putheader("Content-Length", str(10 * DRAIN_CAP))
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    response = conn.getresponse()  # nothing sent: a declared size over the cap is enough
    assert_413(response.status, response.read())
    assert response.getheader("Connection") == "close"
    conn.close()

    def endless():
        while True:
            yield b"x" * 65536

    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    started = time.monotonic()
    try:
        conn.request("POST", "/v1/contexts", body=endless(), encode_chunked=True)
        response = conn.getresponse()
        assert_413(response.status, response.read())
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading at the cap and closed: what matters is it stopped
    finally:
        conn.close()
    assert time.monotonic() - started < 20
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_drain_limits_are_validated():
    with pytest.raises(cc.InvalidInputError, match="max_drain_bytes"):
        ServeLimits(max_drain_bytes=-1)
