"""``tcp-echo`` and ``udp-echo``: send bytes to an echo server and check the same bytes come back.

Each attempt is a new connection (TCP) or a new socket (UDP), so each one is a new flow through
policy and connection tracking. The reply must equal what was sent; the round-trip time is the
time from sending to having the whole echo (connection setup excluded).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

from ciliary.workload.common import describe_error, fail, say, strip_brackets


class EchoError(Exception):
    """One attempt failed; ``str()`` is the reason."""


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, proto in (("tcp-echo", "TCP"), ("udp-echo", "UDP")):
        parser = sub.add_parser(name, help=f"send to a {proto} echo server, check the echo")
        parser.add_argument("host", help="address or name of the echo server")
        parser.add_argument("port", type=int)
        parser.add_argument("--message", help="bytes to send (default: a numbered line)")
        parser.add_argument("--count", type=int, default=1, help="attempts (1)")
        parser.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt (2)")
        parser.set_defaults(run=run_tcp if proto == "TCP" else run_udp, prog=name)


def _payload(args: argparse.Namespace, attempt: int) -> bytes:
    if args.message is not None:
        return str(args.message).encode()
    return f"ciliary {args.prog} {attempt}\n".encode()


def _tcp_attempt(host: str, port: int, payload: bytes, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            start = time.monotonic()
            sock.sendall(payload)
            received = bytearray()
            while len(received) < len(payload):
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    raise EchoError(
                        f"connection closed after {len(received)} of {len(payload)} bytes"
                    )
                received += chunk
            rtt = time.monotonic() - start
    except OSError as exc:
        raise EchoError(describe_error(exc, timeout)) from None
    if bytes(received) != payload:
        raise EchoError(f"the echo differs: sent {payload[:40]!r}, got {bytes(received[:40])!r}")
    return rtt


def _udp_attempt(host: str, port: int, payload: bytes, timeout: float) -> float:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)  # replies from elsewhere are not ours; ICMP errors are seen
            start = time.monotonic()
            sock.send(payload)
            reply = sock.recv(65536)
            rtt = time.monotonic() - start
    except OSError as exc:
        raise EchoError(describe_error(exc, timeout)) from None
    if reply != payload:
        raise EchoError(f"the echo differs: sent {payload[:40]!r}, got {reply[:40]!r}")
    return rtt


def _run_attempts(args: argparse.Namespace, tcp: bool) -> int:
    if args.count < 1 or args.timeout <= 0:
        return fail(args.prog, "--count must be at least 1 and --timeout positive")
    if args.message == "":
        return fail(args.prog, "--message must not be empty")
    host = strip_brackets(args.host)
    rtts: list[float] = []
    for attempt in range(1, args.count + 1):
        payload = _payload(args, attempt)
        try:
            if tcp:
                rtts.append(_tcp_attempt(host, args.port, payload, args.timeout))
            else:
                rtts.append(_udp_attempt(host, args.port, payload, args.timeout))
        except EchoError as exc:
            where = f"{args.host} port {args.port}"
            if args.count > 1:
                where += f" (attempt {attempt}/{args.count})"
            return fail(args.prog, f"{where}: {exc}")
    median_ms = statistics.median(rtts) * 1000
    say(f"ok {len(rtts)}/{args.count} rtt_ms={median_ms:.3f}")
    return 0


def run_tcp(args: argparse.Namespace) -> int:
    return _run_attempts(args, tcp=True)


def run_udp(args: argparse.Namespace) -> int:
    return _run_attempts(args, tcp=False)
