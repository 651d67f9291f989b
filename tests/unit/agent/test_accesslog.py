"""Envoy's access log lines into typed records (agent/accesslog.py): fields, verdicts, and the
pipe reader counting what it cannot parse instead of failing."""

from __future__ import annotations

import asyncio
import fcntl
import os
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from ciliary.agent.accesslog import AccessLogReader, HTTPAccess, parse_line, to_l7_records
from ciliary.agent.envoyconfig import ACCESS_LOG_FIELDS, ACCESS_LOG_SEPARATOR
from ciliary.core.flow import L7FlowType, TrafficDirection, Verdict

LINE = {
    "start_time": "1796480301.736302",
    "method": "PUT",
    "path": "/v1/exhaust-port",
    "authority": "deathstar.default.svc.cluster.local",
    "protocol": "HTTP/1.1",
    "code": 403,
    "details": "rbac_access_denied_matched_policy[none]",
    "flags": "-",
    "grpc_status": "-",
    "duration_us": 149,
    "source": "[fd00::3]:41000",
    "destination": "[fd00::2]:80",
    "chain": "ep12-ingress-80",
    "request_id": "-",
    "user_agent": "curl/8",
}


def line(fields: dict[str, object]) -> str:
    """An access log line as Envoy writes it (ACCESS_LOG_FORMAT's fields, in order)."""
    return ACCESS_LOG_SEPARATOR.join(str(fields[name]) for name, _ in ACCESS_LOG_FIELDS) + "\n"


def test_a_denied_request() -> None:
    rec = parse_line(line(LINE))
    assert rec == HTTPAccess(
        time_ns=1_796_480_301_736_302_000,
        endpoint_id=12,
        direction="ingress",
        source=(IPv6Address("fd00::3"), 41000),
        destination=(IPv6Address("fd00::2"), 80),
        method="PUT",
        url="http://deathstar.default.svc.cluster.local/v1/exhaust-port",
        protocol="HTTP/1.1",
        code=403,
        verdict="DROPPED",
        latency_ns=149_000,
        details="rbac_access_denied_matched_policy[none]",
        user_agent="curl/8",
    )


def test_forwarded_error_and_grpc() -> None:
    ok = parse_line(line({**LINE, "code": 503, "details": "upstream_reset", "chain":
                                "ep3-egress-8080", "source": "10.0.0.3:5", "destination":
                                "10.0.0.2:8080"}))  # fmt: skip
    assert (ok.verdict, ok.direction, ok.source) == (
        "FORWARDED",
        "egress",
        (IPv4Address("10.0.0.3"), 5),
    )
    none = parse_line(line({**LINE, "code": 0, "details": "downstream_remote_disconnect"}))
    assert none.verdict == "ERROR"
    grpc = parse_line(line({**LINE, "code": 200, "grpc_status": 7, "protocol": "HTTP/2"}))
    assert (grpc.grpc_status, grpc.verdict) == (7, "DROPPED")


@pytest.mark.parametrize(
    "bad",
    [
        "not a line",
        line(LINE)[:-30],
        line({**LINE, "path": f"/a{ACCESS_LOG_SEPARATOR}b"}),  # a field holding the separator
        line({**LINE, "code": "two hundred"}),
        line({**LINE, "chain": "other"}),
        line({**LINE, "source": "x"}),
        line({**LINE, "method": "-"}),
    ],
)
def test_malformed_lines_name_the_problem(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_line(bad)


def test_the_pipe_reader_parses_lines_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("a regular file left by an earlier run\n")
    got: list[HTTPAccess] = []

    async def run() -> AccessLogReader:
        reader = AccessLogReader(path, lambda b: got.extend(b.records()))
        reader.start()
        reader.start()  # a second start (Envoy's start retried) watches the same pipe once
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # as Envoy: a writer of the pipe
        text = line(LINE).encode()
        os.write(fd, text[:40])
        os.write(fd, text[40:] + b"{broken\n\n" + text)
        os.close(fd)  # a writer gone (Envoy restarting) is no end of the reader
        for _ in range(100):
            if reader.records + reader.malformed >= 3:
                break
            await asyncio.sleep(0.01)
        reader.stop()
        return reader

    reader = asyncio.run(run())
    assert (reader.records, reader.malformed, len(got)) == (2, 1, 2)
    held = [fd for fd in os.listdir("/proc/self/fd")
            if os.path.realpath(f"/proc/self/fd/{fd}") == str(path)]  # fmt: skip
    assert held == []  # stopped: nothing of the pipe stays open
    assert got[0].url.endswith("/v1/exhaust-port")


def test_an_access_is_hubbles_request_and_response() -> None:
    request, response = to_l7_records(parse_line(line(LINE)))
    assert (request.kind, request.verdict, request.direction) == (
        L7FlowType.REQUEST, Verdict.DROPPED, TrafficDirection.INGRESS,
    )  # fmt: skip
    assert request.http is not None and request.http.code == 0
    assert (str(request.source.ip), request.destination.port) == ("fd00::3", 80)
    assert (response.kind, response.verdict, response.latency_ns) == (
        L7FlowType.RESPONSE, Verdict.FORWARDED, 149_000,
    )  # fmt: skip
    assert response.http is not None and response.http.code == 403
    assert (str(response.source.ip), response.destination.port) == ("fd00::2", 41000)
    assert response.time_ns == request.time_ns + 149_000


def test_the_reader_waits_while_its_consumer_is_busy(tmp_path: Path) -> None:
    """While the consumer (Hubble's events queue) is too full, the lines wait in the pipe; they
    all arrive once it has room: none lost."""
    path = tmp_path / "access.log"
    got: list[HTTPAccess] = []
    busy = [True]

    async def run() -> AccessLogReader:
        reader = AccessLogReader(path, lambda b: got.extend(b.records()), lambda: busy[0])
        reader.start()
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, line(LINE).encode() * 50)
        os.close(fd)
        for _ in range(100):  # until the reader has found its consumer busy
            if reader.holds >= 2:
                break
            await asyncio.sleep(0.01)
        assert got == [] and reader.holds >= 2
        busy[0] = False
        for _ in range(100):
            if len(got) == 50:
                break
            await asyncio.sleep(0.01)
        reader.stop()
        return reader

    reader = asyncio.run(run())
    assert (reader.records, reader.malformed, len(got)) == (50, 0, 50)


def test_the_reader_reads_on_when_the_pipe_is_three_quarters_full(tmp_path: Path) -> None:
    """Waiting is bounded: once the pipe holds three quarters of its buffer the reader reads
    on although its consumer is still busy (an overload is then the queue's lost events, as
    upstream's, and Envoy never waits long)."""
    path = tmp_path / "access.log"
    got: list[HTTPAccess] = []
    text = line(LINE).encode()

    async def run() -> AccessLogReader:
        reader = AccessLogReader(path, lambda b: got.extend(b.records()), lambda: True)
        reader.start()
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, text * 10)
        for _ in range(100):
            if reader.holds >= 2:
                break
            await asyncio.sleep(0.01)
        assert got == []  # a little: held
        size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        data = text * (size * 3 // 4 // len(text) + 1)
        while data:  # beyond three quarters of the pipe
            data = data[os.write(fd, data) :]
        os.close(fd)
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        reader.stop()
        return reader

    reader = asyncio.run(run())
    assert got and reader.malformed == 0
