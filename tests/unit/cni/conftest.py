"""A fake agent for the CNI plugins' unit tests: a unix socket that records each HTTP request and
answers with whatever bytes a test scripted, so every answer a real agent (or a broken one) can
give is one line of a test, and no root, netns or BPF is needed."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

Reply = bytes | Callable[[socket.socket], object]


def http(
    status: int = 200, body: Any = None, *, raw: bytes | None = None, chunked: bool = False
) -> bytes:
    """One HTTP/1.1 response: ``body`` as JSON (or ``raw`` bytes), framed by Content-Length or
    (``chunked``) in two chunks."""
    content = raw if raw is not None else json.dumps(body).encode()
    head = f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
    if chunked:
        half = len(content) // 2
        parts = [p for p in (content[:half], content[half:]) if p]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed
    return (head + f"Content-Length: {len(content)}\r\n\r\n").encode() + content


def error(status: int, message: str, kind: str = "error") -> bytes:
    """The agent's ``ErrorResponse``."""
    return http(status, {"error": message, "kind": kind})


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: Any

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class FakeAgent:
    """Serves ``<dir>/<node>/agent.sock``; ``routes[(method, path)]`` is the reply (bytes, or a
    function of the connection); anything else is a 404 ``ErrorResponse``."""

    def __init__(self, root: Path, node: str = "fake-node") -> None:
        self.node = node
        self.run_dir = root
        (root / node).mkdir(parents=True)
        self.socket = root / node / "agent.sock"
        self.routes: dict[tuple[str, str], Reply] = {}
        self.requests: list[Request] = []
        self.stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket))
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def reply(self, method: str, path: str, response: Reply) -> None:
        self.routes[(method, path)] = response

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        request_line, *lines = head.decode().split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += conn.recv(65536)
        request = Request(method, target, headers, json.loads(body) if body else None)
        self.requests.append(request)
        response = self.routes.get((method, request.path))
        if response is None:
            response = error(404, f"no route {method} {request.path}", "not-found")
        if isinstance(response, bytes):
            conn.sendall(response)
        else:
            response(conn)


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    # a short directory of its own: unix socket paths are limited to 108 bytes
    root = Path(tempfile.mkdtemp(prefix="cni-fake-"))
    agent = FakeAgent(root)
    try:
        yield agent
    finally:
        agent.close()
        shutil.rmtree(root, ignore_errors=True)
