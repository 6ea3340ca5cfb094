"""Body limits against a real uvicorn server and raw sockets: a body that stops or trickles
gets 408 and a closed connection, large bodies beyond the cap get 503 with Retry-After, and an
aborted upload is one log line without a traceback."""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from monitor.api import create_app
from monitor.api.limits import BodyLimits
from monitor.runtime import Runtime
from tests.conftest import open_runtime
from tests.servers import running_app

WAIT_S = 30.0  # bound on waiting for the server; no assertion depends on timing


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@contextmanager
def served(sqlite_url: str, tmp_path: Path, **settings: object
           ) -> Iterator[tuple[str, int, FastAPI]]:
    runtime: Runtime = open_runtime(sqlite_url, tmp_path, **settings)
    app = create_app(runtime)
    try:
        with running_app(app) as base:
            yield "127.0.0.1", int(base.rsplit(":", 1)[1]), app
    finally:
        runtime.close()


def start_upload(host: str, port: int, headers: str, first: bytes) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=WAIT_S)
    sock.sendall(f"POST /v1/inferences HTTP/1.1\r\nHost: {host}\r\n"
                 f"Content-Type: application/json\r\n{headers}\r\n".encode() + first)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_body_that_stops_gets_408_and_the_connection_closed(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    with served(sqlite_url, tmp_path, body_read_timeout_s=0.5) as (host, port, _app):
        sock = start_upload(host, port, "Content-Length: 1000\r\n", b'[{"event_id": ')
        answer = read_until_closed(sock)  # returns only because the server closed it
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"did not arrive within 0.5 s" in answer
        assert httpx.get(f"http://{host}:{port}/healthz").status_code == 200


def test_a_trickling_body_gets_408_though_bytes_keep_coming(sqlite_url: str,
                                                             tmp_path: Path) -> None:
    with served(sqlite_url, tmp_path, body_read_timeout_s=0.5) as (host, port, _app):
        sock = start_upload(host, port, "Content-Length: 100000\r\n", b"[")
        try:
            for _ in range(int(WAIT_S / 0.05)):  # a byte every 50 ms until the server answers
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    break
                sock.sendall(b" ")
            answer = read_until_closed(sock)
        except (ConnectionResetError, BrokenPipeError):
            # A byte sent just after the server's answer and close makes the kernel reset the
            # connection and drop the unread answer: the server did cut the upload off.
            answer = b"HTTP/1.1 408 (reset after the server closed)"
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408 ")


def test_large_bodies_beyond_the_cap_get_503_with_retry_after(sqlite_url: str,
                                                              tmp_path: Path) -> None:
    with served(sqlite_url, tmp_path, large_body_bytes=1024,
                max_concurrent_large_bodies=1) as (host, port, app):
        limits: BodyLimits = app.state.body_limits
        url = f"http://{host}:{port}/v1/inferences"
        body = b"[" + b" " * 4000 + b"]"
        held = start_upload(host, port, "Transfer-Encoding: chunked\r\n", b"10\r\n[" + b" " * 15
                            + b"\r\n")  # chunked, no length: counts as large
        wait_until(lambda: limits.large_in_flight == 1, "the first upload to be counted")
        refused = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"].isdigit()
        small = httpx.post(url, content=b"[]", headers={"Content-Type": "application/json"})
        assert small.status_code != 503  # small bodies are not capped
        held.close()
        wait_until(lambda: limits.large_in_flight == 0, "the first upload to end")
        accepted = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert accepted.status_code != 503


def test_an_aborted_upload_is_one_log_line_without_traceback(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with served(sqlite_url, tmp_path) as (host, port, _app):
        uvicorn_logger = logging.getLogger("uvicorn")  # does not propagate to the root
        uvicorn_logger.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.INFO):
                sock = start_upload(host, port, "Content-Length: 100000\r\n", b"[" * 1000)
                sock.close()
                wait_until(lambda: any("upload aborted" in r.message for r in caplog.records),
                           "the aborted upload's log line")
                httpx.get(f"http://{host}:{port}/healthz")  # the server goes on
        finally:
            uvicorn_logger.removeHandler(caplog.handler)
    aborted = [r for r in caplog.records if "upload aborted" in r.message]
    assert len(aborted) == 1 and aborted[0].levelno == logging.WARNING
    assert "of 100000 bytes (POST /v1/inferences)" in aborted[0].message
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR
            ] == []
