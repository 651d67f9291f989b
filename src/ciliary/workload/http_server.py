"""``http-server``: an HTTP server that says which pod answered and whom it saw.

Policy and load-balancing checks need a server whose answer proves where a request went and
where it came from: every GET (POST and PUT too, their body ignored) returns 200 and ``{"pod",
"path", "client"}`` as JSON (``client`` is the source address as the pod saw it, after any NAT),
and ``/status/NNN`` answers with status NNN, for clients that check status handling. One log
line per request.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

from ciliary.workload.common import (
    ServerService,
    TCPServer,
    describe_error,
    fail,
    format_address,
    log,
    serve_until_signal,
)

_STATUS_PATH = re.compile(r"/status/(\d{3})")
_NO_BODY = {204, 304}


def pod_name() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()


class _Handler(BaseHTTPRequestHandler):
    server_version = "ciliary-workload"
    protocol_version = "HTTP/1.0"  # one request per connection: nothing idles on shutdown
    timeout = 10  # a client that connects and says nothing

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def do_POST(self) -> None:
        """As GET, the request's body read and ignored (L7 policy examples send POST/PUT)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(min(length, 1 << 20))
        self._respond(send_body=True)

    def do_PUT(self) -> None:
        self.do_POST()

    def _respond(self, *, send_body: bool) -> None:
        status = 200
        match = _STATUS_PATH.fullmatch(self.path.partition("?")[0])
        payload: dict[str, Any] = {
            "pod": pod_name(),
            "path": self.path,
            "client": format_address(self.client_address),
        }
        if match:
            status = int(match.group(1))
            if not 200 <= status <= 599:
                payload["error"] = f"/status/NNN takes 200-599, got {status}"
                status = 400
        body = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status not in _NO_BODY:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and status not in _NO_BODY:
            self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log(f"http {self.command} {self.path} from {format_address(self.client_address)} {code}")

    def log_message(self, format: str, *args: Any) -> None:
        log(f"http from {format_address(self.client_address)}: {format % args}")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("http-server", help="serve JSON naming the pod, path and client")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    parser.add_argument("--bind", help="address to listen on (default: [::], dual-stack)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        server = TCPServer(args.bind, args.port, _Handler)
    except (OSError, ValueError, OverflowError) as exc:
        return fail("http-server", f"cannot listen on port {args.port}: {describe_error(exc)}")
    where = format_address(server.server_address)
    return serve_until_signal(
        [ServerService("http", server)],
        "http-server",
        ready=[f"http-server: listening on tcp {where}"],
    )
