"""Envoy's access log into typed L7 HTTP records: what Hubble's L7 flows are made of.

Cilium's Envoy reports every request and response to the agent over a unix socket (its
``cilium.l7policy`` filter, ``pkg/proxy/accesslog``). Stock Envoy's nearest is its file access
logger, so the node's Envoy writes one line per finished request, its fields in a fixed order
(:data:`ciliary.agent.envoyconfig.ACCESS_LOG_FORMAT`), to a **named pipe** the agent holds open:
no file grows on disk, no tail polls, a line arrives as Envoy flushes it (every 100 ms). The
agent opens the pipe read-write before Envoy starts, so Envoy's open never blocks and a restarted
Envoy writes into the same pipe (the agent never sees an end of file while it keeps it open).

The agent reads a line per proxied request, thousands a second under load, so the path is kept
cheap (#15's L7 benchmark): a read's lines are parsed at once (:func:`parse_lines`), each split
on its separator (no JSON decode), and lines alike in every field but their time, latency,
request id and user agent (a pod's requests on a connection) are one group, whose record is
parsed once: the consumer gets an :class:`HTTPAccessBatch` (the agent: one ``L7Batch`` of
Hubble's records, decoded as rows); addresses and chain names are parsed once and remembered
(bounded caches). The pipe's buffer is enlarged and
the reader reads only while its consumer (Hubble's events queue) has room: a burst of lines
(Envoy's buffer after an agent restart, a load the decoder cannot follow for a while) waits in
the pipe instead of overflowing the queue, where L7 flows would be lost; up to three quarters
of the pipe, then the reader reads on (an overload is counted as lost events, as upstream's,
rather than growing Envoy's memory).

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
import fcntl
import logging
import os
import re
import stat
import sys
import termios
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Final, Literal

from ciliary.agent.envoyconfig import ACCESS_LOG_FIELDS, ACCESS_LOG_SEPARATOR
from ciliary.core.flow import L7FlowType, TrafficDirection, Verdict
from ciliary.core.l7record import HTTPRecord, L7Batch, L7Endpoint, L7Record

log = logging.getLogger(__name__)

_CHAIN = re.compile(r"^ep(\d+)-(ingress|egress)-(\d+)$")
_READ_SIZE: Final = 1 << 16
"""A read's bytes (~200 lines): what one turn of the loop parses before others run."""
_HOLD_S: Final = 0.02
"""How long the reader waits while its consumer is full (the lines wait in the pipe)."""
_HOLD_MAX_FILL: Final = 0.75
"""The share of the pipe's buffer the reader lets fill while it waits: beyond it, it reads on
(and the queue counts what it refuses as lost, as upstream's Hubble under overload), so Envoy
never waits for long and its buffer stays bounded."""
_PIPE_SIZE: Final = 1 << 20
"""The pipe's buffer (``F_SETPIPE_SZ``; the kernel's default limit for an unprivileged pipe): a
few thousand lines while the agent is busy or restarting."""
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


_FIELDS: Final = tuple(name for name, _ in ACCESS_LOG_FIELDS)
_SEPARATOR: Final = ACCESS_LOG_SEPARATOR.encode()
(_F_START, _F_CHAIN, _F_SOURCE, _F_DESTINATION, _F_METHOD, _F_PROTOCOL, _F_CODE, _F_DURATION,
 _F_GRPC, _F_DETAILS, _F_FLAGS, _F_AUTHORITY, _F_PATH, _F_REQUEST_ID,
 _F_USER_AGENT) = range(len(_FIELDS))  # fmt: skip
_CACHE_MAX: Final = 4096
"""Entries of each parse cache (addresses, chains) before it starts over: a node's proxied
connections repeat a few thousand (address, port) pairs at most between two clears."""
_addresses: dict[bytes, tuple[IPv4Address | IPv6Address, int]] = {}
_chains: dict[bytes, tuple[int, Literal["ingress", "egress"]]] = {}


def _address(text: bytes, what: str) -> tuple[IPv4Address | IPv6Address, int]:
    found = _addresses.get(text)
    if found is not None:
        return found
    host, sep, port = text.rpartition(b":")
    if not sep:
        raise ValueError(f"{what}: expected 'address:port', got {text!r}")
    found = (ip_address(host.strip(b"[]").decode()), int(port))
    if len(_addresses) >= _CACHE_MAX:
        _addresses.clear()
    _addresses[text] = found
    return found


def _chain(text: bytes) -> tuple[int, Literal["ingress", "egress"]]:
    cached = _chains.get(text)
    if cached is not None:
        return cached
    chain = _CHAIN.match(text.decode(errors="replace"))
    if chain is None:
        raise ValueError(f"chain: expected 'ep<id>-<direction>-<port>', got {text!r}")
    found: tuple[int, Literal["ingress", "egress"]] = (
        int(chain.group(1)),
        "ingress" if chain.group(2) == "ingress" else "egress",
    )
    if len(_chains) >= _CACHE_MAX:
        _chains.clear()
    _chains[text] = found
    return found


def _text(value: bytes) -> str | None:
    return None if value == b"-" else value.decode(errors="replace")


def _start_ns(text: bytes) -> int:
    """The start-time field (``seconds.fraction``) in ns."""
    seconds, _, fraction = text.partition(b".")
    return int(seconds) * 1_000_000_000 + int((fraction + b"000000000")[:9])


def _duration_ns(text: bytes) -> int:
    """The duration field (µs, ``-`` when none) in ns."""
    return 0 if text == b"-" else int(text) * 1000


def _field_count_error(got: int) -> ValueError:
    return ValueError(f"expected {len(_FIELDS)} fields ({', '.join(_FIELDS)}), got {got}")


def parse_line(line: str | bytes) -> HTTPAccess:
    """One access log line (:data:`ciliary.agent.envoyconfig.ACCESS_LOG_FORMAT`, its newline
    optional) as a record; ValueError naming the field when it is none."""
    raw = line.encode() if isinstance(line, str) else line
    fields = raw.rstrip(b"\n").split(_SEPARATOR)
    if len(fields) != len(_FIELDS):
        raise _field_count_error(len(fields))
    endpoint_id, direction = _chain(fields[_F_CHAIN])
    method = fields[_F_METHOD]
    if method == b"-":
        raise ValueError("method: missing")
    code_text = fields[_F_CODE]
    code = 0 if code_text == b"-" else int(code_text)
    details = fields[_F_DETAILS]
    if details.startswith(b"rbac_access_denied"):
        verdict: Literal["FORWARDED", "DROPPED", "ERROR"] = "DROPPED"
    elif code == 0:
        verdict = "ERROR"
    else:
        verdict = "FORWARDED"
    grpc = fields[_F_GRPC]
    authority, path = fields[_F_AUTHORITY], fields[_F_PATH]
    return HTTPAccess(
        time_ns=_start_ns(fields[_F_START]),
        endpoint_id=endpoint_id,
        direction=direction,
        source=_address(fields[_F_SOURCE], "source"),
        destination=_address(fields[_F_DESTINATION], "destination"),
        method=method.decode(errors="replace"),
        url="http://"
        + ("" if authority == b"-" else authority.decode(errors="replace"))
        + ("" if path == b"-" else path.decode(errors="replace")),
        protocol=_text(fields[_F_PROTOCOL]) or "",
        code=code,
        verdict=verdict,
        latency_ns=_duration_ns(fields[_F_DURATION]),
        grpc_status=None if grpc in (b"-", b"") else int(grpc),
        details="" if details == b"-" else details.decode(errors="replace"),
        user_agent=_text(fields[_F_USER_AGENT]),
        request_id=_text(fields[_F_REQUEST_ID]),
    )


_DIRECTIONS: Final = {"ingress": TrafficDirection.INGRESS, "egress": TrafficDirection.EGRESS}
_VERDICTS: Final = {v: Verdict[v] for v in ("FORWARDED", "DROPPED", "ERROR")}
_REQUEST, _RESPONSE = L7FlowType.REQUEST, L7FlowType.RESPONSE
_FORWARDED, _ERROR = Verdict.FORWARDED, Verdict.ERROR


def to_l7_records(rec: HTTPAccess) -> tuple[L7Record, L7Record]:
    """The request and the response of one access as Hubble's L7 records (upstream's two
    flows: ``http-request`` with the verdict, ``http-response`` with the code and latency;
    the response from the server to the client)."""
    client = L7Endpoint(rec.source[0], rec.source[1])
    server = L7Endpoint(rec.destination[0], rec.destination[1])
    direction = _DIRECTIONS[rec.direction]
    request = L7Record(
        time_ns=rec.time_ns,
        kind=_REQUEST,
        verdict=_VERDICTS[rec.verdict],
        direction=direction,
        source=client,
        destination=server,
        transport=6,
        http=HTTPRecord(rec.method, rec.url, rec.protocol),
    )
    response = L7Record(
        time_ns=rec.time_ns + rec.latency_ns,
        kind=_RESPONSE,
        verdict=_FORWARDED if rec.code else _ERROR,
        direction=direction,
        source=server,
        destination=client,
        transport=6,
        http=HTTPRecord(rec.method, rec.url, rec.protocol, rec.code),
        latency_ns=rec.latency_ns,
    )
    return request, response


_KEY_FIELDS: Final = (_F_CHAIN, _F_DESTINATION, _F_METHOD, _F_PROTOCOL, _F_CODE, _F_GRPC,
                      _F_DETAILS, _F_AUTHORITY, _F_PATH)  # fmt: skip
"""With the client's address (the source but its port), the fields a request's record is made
of but its time, latency, client port, request id and user agent: lines alike in these make one
group of a batch (one record parsed, its flows templated)."""


@dataclass(frozen=True, slots=True)
class HTTPAccessBatch:
    """The valid lines of one read of the pipe, grouped: ``accesses[g]`` is group ``g``'s
    first line as a record; per line its group, start time, latency, client (source) port,
    request id and user agent (the fields lines of a group differ in). :meth:`records` gives
    each line's :class:`HTTPAccess`, as :func:`parse_line` would."""

    accesses: list[HTTPAccess]
    group: list[int]
    time_ns: list[int]
    latency_ns: list[int]
    source_ports: list[int]
    request_ids: list[bytes]
    user_agents: list[bytes]

    def __len__(self) -> int:
        return len(self.group)

    def records(self) -> Iterator[HTTPAccess]:
        for g, time_ns, latency_ns, port, request_id, user_agent in zip(
            self.group, self.time_ns, self.latency_ns, self.source_ports, self.request_ids,
            self.user_agents, strict=True,
        ):  # fmt: skip
            access = self.accesses[g]
            yield replace(
                access, time_ns=time_ns, latency_ns=latency_ns, source=(access.source[0], port),
                request_id=_text(request_id), user_agent=_text(user_agent),
            )  # fmt: skip


def parse_lines(lines: list[bytes], bad: Callable[[bytes, Exception], None]) -> HTTPAccessBatch:
    """Access log lines (without newlines; blank ones skipped) as a batch; each line that is
    no valid record goes to ``bad`` (with the error :func:`parse_line` raises for it).

    Per line only the split, the key and the per-line numbers; a group's record is parsed
    once (:func:`parse_line` of its first line: the key holds every field it validates but
    the per-line ones, checked here, so a key that failed fails for every line that has it)."""
    out = HTTPAccessBatch([], [], [], [], [], [], [])
    index: dict[tuple[bytes, ...], int] = {}
    failed: dict[tuple[bytes, ...], Exception] = {}
    n_fields = len(_FIELDS)
    for line in lines:
        if not line.strip():
            continue
        fields = line.split(_SEPARATOR)
        if len(fields) != n_fields:
            bad(line, _field_count_error(len(fields)))
            continue
        try:
            time_ns = _start_ns(fields[_F_START])
            latency_ns = _duration_ns(fields[_F_DURATION])
            if time_ns < 0 or latency_ns < 0:
                raise ValueError(f"start time {fields[_F_START]!r} or duration "
                                 f"{fields[_F_DURATION]!r} is negative")  # fmt: skip
            client, sep, port_text = fields[_F_SOURCE].rpartition(b":")
            port = int(port_text)
            if not sep or not 0 <= port <= 0xFFFF:
                raise ValueError(f"source: expected 'address:port', got {fields[_F_SOURCE]!r}")
        except ValueError as err:
            bad(line, err)
            continue
        key = (client, *[fields[i] for i in _KEY_FIELDS])
        g = index.get(key)
        if g is None:
            if key in failed:
                bad(line, failed[key])
                continue
            try:
                access = parse_line(line)
            except (ValueError, TypeError) as error:
                failed[key] = error
                bad(line, error)
                continue
            g = index[key] = len(out.accesses)
            out.accesses.append(access)
        out.group.append(g)
        out.time_ns.append(time_ns)
        out.latency_ns.append(latency_ns)
        out.source_ports.append(port)
        out.request_ids.append(fields[_F_REQUEST_ID])
        out.user_agents.append(fields[_F_USER_AGENT])
    return out


def to_l7_batch(batch: HTTPAccessBatch) -> L7Batch:
    """The batch as Hubble's L7 records: each group's request and response
    (:func:`to_l7_records` of its first line), the lines' times, latencies and client ports."""
    return L7Batch(
        pairs=tuple(to_l7_records(access) for access in batch.accesses),
        group=tuple(batch.group),
        time_ns=tuple(batch.time_ns),
        latency_ns=tuple(batch.latency_ns),
        client_port=tuple(batch.source_ports),
    )


class AccessLogReader:
    """The agent's end of Envoy's access log pipe: the complete lines of each read, parsed as
    one :class:`HTTPAccessBatch`, to ``on_batch`` on the agent's loop."""

    def __init__(
        self,
        path: Path,
        on_batch: Callable[[HTTPAccessBatch], None],
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.path = path
        self.on_batch = on_batch
        self.busy = busy
        """Whether the records' consumer is too full for another read's lines (each makes two
        events): the reader then waits, the lines wait in the pipe. None: never."""
        self.records = 0
        self.malformed = 0
        self.holds = 0
        """How often the reader waited for its consumer."""
        self._fd: int | None = None
        self._buffer = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: asyncio.TimerHandle | None = None
        self._hold_max = 0

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
        with contextlib.suppress(OSError):  # a smaller buffer works, only less smoothly
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._hold_max = int(fcntl.fcntl(self._fd, fcntl.F_GETPIPE_SZ) * _HOLD_MAX_FILL)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def stop(self) -> None:
        if self._fd is None:
            return
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None

    def _resume(self) -> None:
        self._held = None
        if self._fd is not None and self._loop is not None:
            self._loop.add_reader(self._fd, self._readable)

    def _pending(self) -> int:
        """Bytes waiting in the pipe (FIONREAD)."""
        assert self._fd is not None
        raw = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(raw, sys.byteorder)

    def _readable(self) -> None:
        assert self._fd is not None
        if (
            self.busy is not None
            and self._loop is not None
            and self.busy()
            and self._pending() < self._hold_max
        ):
            self.holds += 1
            self._loop.remove_reader(self._fd)
            self._held = self._loop.call_later(_HOLD_S, self._resume)
            return
        try:
            chunk = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > _MAX_LINE:
            self.malformed += 1
            self._buffer = b""
        batch = parse_lines(lines, self._bad)
        if not batch:
            return
        self.records += len(batch)
        try:
            self.on_batch(batch)
        except Exception:
            log.exception("envoy access log: record handler failed")

    def _bad(self, line: bytes, err: Exception) -> None:
        self.malformed += 1
        log.warning("envoy access log: line not understood (%s): %.200r", err, line)
