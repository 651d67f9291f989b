"""The pod workloads on loopback: servers in subprocesses (signals, exit codes), clients in-process.

Every wait is bounded; failure paths (refused, timed out, closed mid-stream, wrong status, wrong
echo) are checked as carefully as success, since tests of policy rely on clients failing right.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ciliary.workload import common, ping
from ciliary.workload.main import main

pytestmark = pytest.mark.timeout(60)

LOCALHOSTS = ["127.0.0.1", "::1"]


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _have_ipv6_loopback(), reason="no IPv6 loopback")


def hosts() -> list[Any]:
    return ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)]


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Server:
    """A workload running as a subprocess, with its stdout read line by line, bounded in time."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "error", "-m", "ciliary.workload.main", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            bufsize=0,
        )
        self.lines: list[str] = []
        self._buffer = b""

    def read_line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no output line in {timeout}s; got so far {self.lines}"
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"workload exited early: {self.finish()}"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        self.lines.append(line.decode())
        return self.lines[-1]

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.read_line(max(deadline - time.monotonic(), 0.01)))
            if match:
                return match

    def port(self, proto: str = "tcp") -> int:
        return int(self.wait_for(rf"listening on {proto} \S+:(\d+)$").group(1))

    def finish(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
        """Send ``sig``, wait (bounded) and return (exit status, rest of stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, (self._buffer + out).decode(), err.decode()


@contextlib.contextmanager
def server(*args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    srv = Server(*args, env=env)
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
        srv.proc.communicate()


def run(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:  # in-process client
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def closed_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def thread_server(
    handler: Callable[[socket.socket], None], host: str = "127.0.0.1"
) -> Iterator[int]:
    """A one-connection TCP server in a thread, running ``handler`` on the accepted socket."""
    listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else 2)
    listener.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                handler(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(timeout=15)
        listener.close()


# ---- the entry point ----------------------------------------------------------------------------


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "WORKLOAD" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("pause", "http-server", "http-get", "echo-server", "tcp-echo", "udp-echo"):
        assert name in out
    assert "tcp-stream" in out and "ping" in out
    assert main(["tcp-echo", "127.0.0.1", "notaport"]) == 2


def test_python_dash_m_runs_a_client() -> None:
    port = closed_port()
    proc = subprocess.run(
        [sys.executable, "-m", "ciliary.workload.main", "tcp-echo", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"tcp-echo: 127.0.0.1 port {port}: connection refused\n"


def test_format_address() -> None:
    assert common.format_address(("::ffff:10.1.2.3", 80, 0, 0)) == "10.1.2.3:80"
    assert common.format_address(("fd00::1", 80, 0, 0)) == "[fd00::1]:80"
    assert common.format_address(("10.0.0.1", 5)) == "10.0.0.1:5"
    assert common.strip_brackets("[::1]") == "::1"


# ---- pause --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pause_exits_0_on_signal(sig: signal.Signals) -> None:
    with server("pause") as srv:
        srv.wait_for("pause: waiting for SIGTERM or SIGINT")
        time.sleep(0.2)
        assert srv.proc.poll() is None
        status, out, err = srv.finish(sig)
    assert (status, err) == (0, "")
    assert f"{sig.name} received, stopping" in out


# ---- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", hosts())
def test_http_server_and_get(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with server("http-server", "--port", "0", env={"HOSTNAME": "web-1"}) as srv:
        port = srv.port()
        base = f"http://{url_host(host)}:{port}"
        status, out, err = run(capsys, "http-get", f"{base}/hello", "--count", "2")
        assert (status, err) == (0, "")
        assert re.fullmatch(r"(HTTP 200 \d+ bytes in \d+\.\d ms\n){2}", out)

        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"GET /some/path?x=1 HTTP/1.0\r\n\r\n")
            local = conn.getsockname()
            response = b""
            while chunk := conn.recv(65536):
                response += chunk
        head, _, raw_body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"Content-Type: application/json" in head
        body = json.loads(raw_body)
        assert body == {
            "pod": "web-1",
            "path": "/some/path?x=1",
            "client": common.format_address(local),
        }
        assert body["client"].startswith(f"{url_host(host)}:")
        for method in (b"POST", b"PUT"):  # L7 policy examples' methods: the body is ignored
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(method + b" /v1/x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
                response = b""
                while chunk := conn.recv(65536):
                    response += chunk
            head, _, raw_body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200 OK\r\n"), response
            assert json.loads(raw_body)["path"] == "/v1/x"

        status, out, err = run(capsys, "http-get", f"{base}/status/503")
        assert status == 1
        assert re.fullmatch(r"HTTP 503 \d+ bytes in \d+\.\d ms\n", out)
        assert err == f"http-get: {base}/status/503: expected a 2xx status, got 503\n"
        status, out, err = run(capsys, "http-get", f"{base}/status/404", "--expect-status", "404")
        assert (status, err) == (0, "")
        assert out.startswith("HTTP 404 ")
        status, out, err = run(capsys, "http-get", f"{base}/", "--expect-status", "201")
        assert err == f"http-get: {base}/: expected status 201, got 200\n"

        srv.wait_for(rf"http GET /hello from {re.escape(url_host(host))}:\d+ 200$")
        status, rest, err = srv.finish()
    assert (status, err) == (0, "")
    assert "GET /status/503" in rest
    assert "SIGTERM received, stopping" in rest


def test_http_get_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    status, out, err = run(capsys, "http-get", f"http://127.0.0.1:{port}/")
    assert (status, out) == (1, "")
    assert err == f"http-get: http://127.0.0.1:{port}/: connection refused\n"


def test_http_get_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    # the kernel completes the handshake but nobody ever answers
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        start = time.monotonic()
        status, _, err = run(capsys, "http-get", f"http://127.0.0.1:{port}/", "--timeout", "0.3")
        assert time.monotonic() - start < 3
    assert status == 1
    assert err == f"http-get: http://127.0.0.1:{port}/: timed out after 0.3s\n"


def test_http_get_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "http-get", "nothttp://x/")
    assert status == 1
    assert err.startswith("http-get: nothttp://x/: ")


def test_http_server_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        status, _, err = run(capsys, "http-server", "--port", str(port), "--bind", "127.0.0.1")
    assert status == 1
    assert err == f"http-server: cannot listen on port {port}: address already in use\n"


def test_bind_address_limits_the_family(capsys: pytest.CaptureFixture[str]) -> None:
    with server("http-server", "--port", "0", "--bind", "127.0.0.1") as srv:
        port = srv.port()
        assert run(capsys, "http-get", f"http://127.0.0.1:{port}/")[0] == 0
        if _have_ipv6_loopback():
            status, _, err = run(capsys, "http-get", f"http://[::1]:{port}/")
            assert (status, err) == (1, f"http-get: http://[::1]:{port}/: connection refused\n")
        assert srv.finish()[0] == 0


# ---- echo ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", hosts())
def test_echo_server_and_clients(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with server("echo-server", "--tcp-port", "0", "--udp-port", "0") as srv:
        tcp, udp = srv.port("tcp"), srv.port("udp")
        status, out, err = run(capsys, "tcp-echo", host, str(tcp), "--count", "3")
        assert (status, err) == (0, "")
        assert re.fullmatch(r"ok 3/3 rtt_ms=\d+\.\d{3}\n", out)
        status, out, err = run(capsys, "tcp-echo", f"[{host}]", str(tcp), "--message", "x" * 9000)
        assert (status, err) == (0, "")
        status, out, err = run(capsys, "udp-echo", host, str(udp), "--count", "2")
        assert (status, err) == (0, "")
        assert re.fullmatch(r"ok 2/2 rtt_ms=\d+\.\d{3}\n", out)
        srv.wait_for(rf"tcp-echo connection from {re.escape(url_host(host))}:\d+$")
        srv.wait_for(rf"udp-echo \d+ bytes from {re.escape(url_host(host))}:\d+$")
        status, _, err = srv.finish(signal.SIGINT)
    assert (status, err) == (0, "")


def test_echo_server_needs_a_port(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "echo-server")
    assert (status, err) == (1, "echo-server: give --tcp-port, --udp-port or both\n")


def test_echo_server_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        argv = ["echo-server", "--tcp-port", "0", "--udp-port", str(port), "--bind", "127.0.0.1"]
        status, _, err = run(capsys, *argv)
    assert status == 1
    assert err == f"echo-server: cannot listen on udp port {port}: address already in use\n"


def test_echo_server_stops_with_connections_open() -> None:
    with server("echo-server", "--tcp-port", "0") as srv:
        port = srv.port()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"ping\n")
            assert conn.recv(10) == b"ping\n"
            start = time.monotonic()
            status, _, err = srv.finish()
            assert time.monotonic() - start < 5
            assert conn.recv(10) == b""  # the server closed it on the way out
    assert (status, err) == (0, "")


def test_tcp_echo_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    status, out, err = run(capsys, "tcp-echo", "127.0.0.1", str(port), "--count", "2")
    assert (status, out) == (1, "")
    assert err == f"tcp-echo: 127.0.0.1 port {port} (attempt 1/2): connection refused\n"


def test_udp_echo_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port(kind=socket.SOCK_DGRAM)
    status, _, err = run(capsys, "udp-echo", "127.0.0.1", str(port))
    assert status == 1
    assert err == f"udp-echo: 127.0.0.1 port {port}: connection refused\n"


def test_udp_echo_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", 0))
        port = mute.getsockname()[1]
        status, _, err = run(capsys, "udp-echo", "127.0.0.1", str(port), "--timeout", "0.2")
    assert status == 1
    assert err == f"udp-echo: 127.0.0.1 port {port}: timed out after 0.2s\n"


def test_tcp_echo_detects_a_wrong_echo(capsys: pytest.CaptureFixture[str]) -> None:
    def liar(conn: socket.socket) -> None:
        data = conn.recv(100)
        conn.sendall(data.upper())

    with thread_server(liar) as port:
        status, _, err = run(capsys, "tcp-echo", "127.0.0.1", str(port), "--message", "abc")
    assert status == 1
    assert err == f"tcp-echo: 127.0.0.1 port {port}: the echo differs: sent b'abc', got b'ABC'\n"


def test_tcp_echo_detects_a_short_echo(capsys: pytest.CaptureFixture[str]) -> None:
    def short(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"ab")

    with thread_server(short) as port:
        status, _, err = run(capsys, "tcp-echo", "127.0.0.1", str(port), "--message", "abc")
    assert status == 1
    assert err.endswith("connection closed after 2 of 3 bytes\n")


# ---- tcp-stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", hosts())
def test_tcp_stream_keeps_one_connection(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with server("echo-server", "--tcp-port", "0") as srv:
        port = srv.port()
        start = time.monotonic()
        status, out, err = run(
            capsys, "tcp-stream", host, str(port), "--duration", "0.6", "--interval", "0.05"
        )
        elapsed = time.monotonic() - start
        assert (status, err) == (0, "")
        assert 0.6 <= elapsed < 3
        first, last = out.splitlines()
        assert first.startswith("connected ")
        count = int(re.fullmatch(r"ok (\d+) messages over 0.6s on one connection", last)[1])  # type: ignore[index]
        assert 8 <= count <= 14
        status, rest, err = srv.finish()
    assert (status, err) == (0, "")
    log = [*srv.lines, *rest.splitlines()]
    assert len([line for line in log if "tcp-echo connection from" in line]) == 1


def test_tcp_stream_fails_when_the_server_closes(capsys: pytest.CaptureFixture[str]) -> None:
    def three_then_close(conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with reader:
            for _ in range(3):
                conn.sendall(reader.readline())

    with thread_server(three_then_close) as port:
        status, out, err = run(
            capsys, "tcp-stream", "127.0.0.1", str(port), "--duration", "5", "--interval", "0.02"
        )
    assert status == 1
    assert out.startswith("connected ")
    assert re.fullmatch(
        r"tcp-stream: message 4 at \d+\.\d\ds: (connection closed by the server|"
        r"connection reset by peer|connection closed by peer \(broken pipe\))\n",
        err,
    )


def test_tcp_stream_fails_when_echoes_stop(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()

    def one_then_silence(conn: socket.socket) -> None:
        conn.sendall(conn.recv(100))
        stop.wait(5)

    with thread_server(one_then_silence) as port:
        start = time.monotonic()
        status, _, err = run(
            capsys,
            "tcp-stream",
            "127.0.0.1",
            str(port),
            "--duration",
            "5",
            "--interval",
            "0.05",
            "--timeout",
            "0.3",
        )
        stop.set()
    assert time.monotonic() - start < 3
    assert status == 1
    assert re.fullmatch(r"tcp-stream: message 2 at \d+\.\d\ds: timed out after 0.3s\n", err)


def test_tcp_stream_detects_a_wrong_echo(capsys: pytest.CaptureFixture[str]) -> None:
    def corrupt(conn: socket.socket) -> None:
        conn.sendall(conn.recv(100).replace(b"1", b"7"))

    with thread_server(corrupt) as port:
        status, _, err = run(capsys, "tcp-stream", "127.0.0.1", str(port), "--duration", "1")
    assert status == 1
    assert err.startswith("tcp-stream: message 1 at ")
    assert (
        "the echo differs: sent b'ciliary tcp-stream 1\\n', got b'ciliary tcp-stream 7\\n'" in err
    )


def test_tcp_stream_refused(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    status, out, err = run(capsys, "tcp-stream", "127.0.0.1", str(port), "--duration", "1")
    assert (status, out) == (1, "")
    assert err == f"tcp-stream: 127.0.0.1 port {port}: connection refused\n"


# ---- ping ---------------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")


@needs_root
@pytest.mark.parametrize("host", hosts())
def test_ping_loopback(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "ping", host, "-c", "3", "-i", "0.05", "-W", "1")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"PING {host}")
    for seq in (1, 2, 3):
        assert re.fullmatch(
            rf"64 bytes from {re.escape(host)}: icmp_seq={seq} ttl=\d+ time=\d+\.\d{{3}} ms",
            lines[seq],
        )
    assert lines[5] == f"--- {host} ping statistics ---"
    assert lines[6].startswith("3 packets transmitted, 3 received, 0% packet loss, time ")
    assert lines[7].startswith("rtt min/avg/max/mdev = ")


@needs_root
def test_ping_without_replies(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ping, "_receive", lambda sock, ipv6, ident: None)  # replies get lost
    status, out, err = run(capsys, "ping", "127.0.0.1", "-c", "2", "-i", "0.01", "-W", "0.1")
    assert status == 1
    assert "no answer yet for icmp_seq=1" in out
    assert "2 packets transmitted, 0 received, 100% packet loss" in out
    assert err == "ping: 0/2 replies from 127.0.0.1 (127.0.0.1)\n"
    status, _, _ = run(capsys, "ping", "127.0.0.1", "-c", "1", "-W", "0.1", "--allow-loss")
    assert status == 1  # --allow-loss still needs one reply


@needs_root
def test_ping_allow_loss(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ping._receive
    seen: list[int] = []

    def lose_the_second(sock: socket.socket, ipv6: bool, ident: int) -> ping.Answer | None:
        answer = real(sock, ipv6, ident)
        if answer is not None and answer.seq == 2 and answer.error is None:
            seen.append(2)
            return None
        return answer

    monkeypatch.setattr(ping, "_receive", lose_the_second)
    args = ["ping", "127.0.0.1", "-c", "3", "-i", "0.01", "-W", "0.2"]
    status, out, err = run(capsys, *args)
    assert status == 1 and "3 packets transmitted, 2 received, 33% packet loss" in out
    assert err == "ping: 2/3 replies from 127.0.0.1 (127.0.0.1)\n"
    status, out, err = run(capsys, *args, "--allow-loss")
    assert (status, err) == (0, "")


def test_ping_bad_host(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "ping", "no-such-host.invalid", "-c", "1")
    assert status == 1
    assert err.startswith("ping: no-such-host.invalid: cannot resolve the name")


def test_icmp_parsing() -> None:
    ident, payload = 0x1234, b"x" * 56
    request = ping.echo_request(False, ident, 7, payload)
    assert ping.checksum(request) == 0  # a correct checksum sums to zero
    reply = bytes([0, 0]) + request[2:]
    answer = ping.parse_icmp(reply, "10.0.0.1", 64, False, ident)
    assert answer == ping.Answer("10.0.0.1", 7, 64, 64, payload=payload)
    assert ping.parse_icmp(reply, "10.0.0.1", 64, False, ident + 1) is None
    assert ping.parse_icmp(request, "10.0.0.1", 64, False, ident) is None  # our own request
    # host unreachable, quoting our request behind a 20-byte IPv4 header
    quoted_ip = bytes([0x45]) + bytes(8) + bytes([1]) + bytes(10)
    error = bytes([3, 1, 0, 0, 0, 0, 0, 0]) + quoted_ip + request[:8]
    answer = ping.parse_icmp(error, "10.0.0.254", 63, False, ident)
    assert answer is not None and answer.error == "Destination Host Unreachable"
    assert answer.seq == 7
    # ICMPv6 administratively prohibited, quoting our request behind an IPv6 header
    request6 = ping.echo_request(True, ident, 9, payload)
    quoted_ip6 = bytes(6) + bytes([58]) + bytes(33)
    error6 = bytes([1, 1, 0, 0, 0, 0, 0, 0]) + quoted_ip6 + request6[:8]
    answer = ping.parse_icmp(error6, "fd00::1", None, True, ident)
    assert answer is not None
    assert answer.error == "Destination unreachable: Administratively prohibited"
    assert ping.parse_icmp(b"\x81\x00", "fd00::1", None, True, ident) is None
