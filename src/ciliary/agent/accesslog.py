"""Envoy's access log into typed L7 HTTP records: what Hubble's L7 flows are made of.

Cilium's Envoy reports every request and response to the agent over a unix socket (its
``cilium.l7policy`` filter, ``pkg/proxy/accesslog``). Stock Envoy's nearest is its file access
logger, so the node's Envoy writes one JSON line per finished request
(:data:`ciliary.agent.envoyconfig.ACCESS_LOG_FORMAT`) to a **named pipe** the agent holds open:
no file grows on disk, no tail polls, a line arrives as Envoy flushes it (every 100 ms). The
agent opens the pipe read-write before Envoy starts, so Envoy's open never blocks and a restarted
Envoy writes into the same pipe (the agent never sees an end of file while it keeps it open).

Each line becomes an :class:`HTTPAccess`: the request as the pod sent it (method, absolute URL,
protocol, headers Hubble shows), the verdict (``DROPPED`` when RBAC denied it, ``ERROR`` when no
response came, else ``FORWARDED``), the response code and the latency, the pod's side and its
peer's original address, and the endpoint and direction of the filter chain that served it
(the chain's name says them, :func:`ciliary.agent.envoypolicy.chain_name`). A line that is no
valid record is counted and logged, never raised: a proxy's log must not stop the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, Final, Literal

from ciliary.core.flow import L7FlowType, TrafficDirection, Verdict
from ciliary.core.l7record import HTTPRecord, L7Endpoint, L7Record

log = logging.getLogger(__name__)

_CHAIN = re.compile(r"^ep(\d+)-(ingress|egress)-(\d+)$")
_READ_SIZE: Final = 1 << 16
_MAX_LINE: Final = 1 << 20
"""A longer line (a runaway header) is dropped whole."""


@dataclass(frozen=True, slots=True)
class HTTPAccess:
    """One request Envoy decided and what came of it (one access log line)."""

    time_ns: int
    """When the request's first byte arrived (wall clock)."""
    endpoint_id: int
    direction: Literal["ingress", "egress"]
    source: tuple[IPv4Address | IPv6Address, int]
    """The client as the pod network sees it (ingress: the peer; egress: the local pod)."""
    destination: tuple[IPv4Address | IPv6Address, int]
    """The original destination (ingress: the local pod; egress: the peer)."""
    method: str
    url: str
    """Absolute, as Hubble prints it: ``http://<authority><path>``."""
    protocol: str
    code: int
    """The response's status code; 0 when none was sent."""
    verdict: Literal["FORWARDED", "DROPPED", "ERROR"]
    latency_ns: int
    """From the request's first byte to the response's last."""
    grpc_status: int | None = None
    details: str = ""
    """Envoy's response code details (``rbac_access_denied_matched_policy[none]``,
    ``via_upstream``…)."""
    user_agent: str | None = None
    request_id: str | None = None


def _address(text: object, what: str) -> tuple[IPv4Address | IPv6Address, int]:
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected 'address:port', got {text!r}")
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"{what}: expected 'address:port', got {text!r}")
    return ip_address(host.strip("[]")), int(port)


def _text(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return None if value in (None, "-") else str(value)


def parse_line(line: str | bytes) -> HTTPAccess:
    """One access log line as a record; ValueError naming the field when it is none."""
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    chain = _CHAIN.match(str(doc.get("chain", "")))
    if chain is None:
        raise ValueError(f"chain: expected 'ep<id>-<direction>-<port>', got {doc.get('chain')!r}")
    method = _text(doc, "method")
    if method is None:
        raise ValueError("method: missing")
    code = int(doc.get("code") or 0)
    details = _text(doc, "details") or ""
    if details.startswith("rbac_access_denied"):
        verdict: Literal["FORWARDED", "DROPPED", "ERROR"] = "DROPPED"
    elif code == 0:
        verdict = "ERROR"
    else:
        verdict = "FORWARDED"
    started = str(doc.get("start_time", "0"))
    seconds, _, fraction = started.partition(".")
    time_ns = int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
    grpc = doc.get("grpc_status")
    return HTTPAccess(
        time_ns=time_ns,
        endpoint_id=int(chain.group(1)),
        direction="ingress" if chain.group(2) == "ingress" else "egress",
        source=_address(doc.get("source"), "source"),
        destination=_address(doc.get("destination"), "destination"),
        method=method,
        url=f"http://{_text(doc, 'authority') or ''}{_text(doc, 'path') or ''}",
        protocol=_text(doc, "protocol") or "",
        code=code,
        verdict=verdict,
        latency_ns=int(doc.get("duration_us") or 0) * 1000,
        grpc_status=None if grpc in (None, "-", "") else int(grpc),
        details=details,
        user_agent=_text(doc, "user_agent"),
        request_id=_text(doc, "request_id"),
    )


def to_l7_records(rec: HTTPAccess) -> tuple[L7Record, L7Record]:
    """The request and the response of one access as Hubble's L7 records (upstream's two
    flows: ``http-request`` with the verdict, ``http-response`` with the code and latency;
    the response from the server to the client)."""
    client = L7Endpoint(rec.source[0], rec.source[1])
    server = L7Endpoint(rec.destination[0], rec.destination[1])
    direction = TrafficDirection.INGRESS if rec.direction == "ingress" else TrafficDirection.EGRESS
    request = L7Record(
        time_ns=rec.time_ns,
        kind=L7FlowType.REQUEST,
        verdict=Verdict[rec.verdict],
        direction=direction,
        source=client,
        destination=server,
        transport=6,
        http=HTTPRecord(rec.method, rec.url, rec.protocol),
    )
    response = L7Record(
        time_ns=rec.time_ns + rec.latency_ns,
        kind=L7FlowType.RESPONSE,
        verdict=Verdict.FORWARDED if rec.code else Verdict.ERROR,
        direction=direction,
        source=server,
        destination=client,
        transport=6,
        http=HTTPRecord(rec.method, rec.url, rec.protocol, rec.code),
        latency_ns=rec.latency_ns,
    )
    return request, response


class AccessLogReader:
    """The agent's end of Envoy's access log pipe: every complete line, parsed, to
    ``on_record`` on the agent's loop."""

    def __init__(self, path: Path, on_record: Callable[[HTTPAccess], None]) -> None:
        self.path = path
        self.on_record = on_record
        self.records = 0
        self.malformed = 0
        self._fd: int | None = None
        self._buffer = b""
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Make the pipe (replacing anything else at the path) and watch it (once)."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(self.path.lstat().st_mode):
                self.path.unlink()
        if not self.path.exists():
            os.mkfifo(self.path, 0o600)
        # read-write: the open never waits for a writer, and Envoy's restarts are no EOF
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def stop(self) -> None:
        if self._fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            chunk = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > _MAX_LINE:
            self.malformed += 1
            self._buffer = b""
        for line in lines:
            if line.strip():
                self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            record = parse_line(line)
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            self.malformed += 1
            log.warning("envoy access log: line not understood (%s): %.200r", err, line)
            return
        self.records += 1
        try:
            self.on_record(record)
        except Exception:
            log.exception("envoy access log: record handler failed")
