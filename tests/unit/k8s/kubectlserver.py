"""A loopback HTTP server answering from the pure k8s modules, for tests with the real kubectl.

It serves only what a test hands it (discovery, OpenAPI, fixed JSON bodies per path), so a test
proves that kubectl v1.32 accepts the documents our modules build; it is no API server.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[str, str, str], tuple[int, str, bytes] | None]  # (path, query, accept)


@contextmanager
def serve(route: Route) -> Iterator[str]:
    """Serves ``route`` on 127.0.0.1 (a free port); yields the base URL; logs requests."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            answer = route(path, query, self.headers.get("Accept", ""))
            if answer is None:
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": "NotFound",
                    "code": 404,
                    "message": "the server could not find the requested resource",
                }
                answer = (404, "application/json", json.dumps(status).encode())
            code, content_type, body = answer
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="kubectl-test-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def kubectl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs the machine's kubectl against ``url`` with a private HOME and cache (no config)."""
    with tempfile.TemporaryDirectory(prefix="ciliary-kubectl-") as home:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": home,
            "KUBECONFIG": os.path.join(home, "config"),
        }
        return subprocess.run(
            ["kubectl", f"--server={url}", f"--cache-dir={home}/cache", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
