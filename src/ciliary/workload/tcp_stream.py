"""``tcp-stream``: keep ONE TCP connection busy for a while and fail at the first hiccup.

This is how the lab proves that established connections survive the agent being killed (-9) and
restarted: the datapath keeps forwarding from its pinned maps meanwhile, so every numbered line
sent over the connection must come back intact and in time. A reset, a close, a read that times
out or an echo that differs ends the run with exit 1 and says which message failed when.
"""

from __future__ import annotations

import argparse
import socket
import time

from ciliary.workload.common import describe_error, fail, format_address, say, strip_brackets

_PROG = "tcp-stream"


class StreamBrokenError(Exception):
    """The connection failed; ``str()`` is why."""


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "tcp-stream", help="exchange numbered lines with an echo server over one TCP connection"
    )
    parser.add_argument("host", help="address or name of the echo server")
    parser.add_argument("port", type=int)
    parser.add_argument("--duration", type=float, required=True, help="seconds to keep going")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between lines (0.1)")
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to connect, and to wait for each echo"
    )
    parser.set_defaults(run=run)


def _exchange(sock: socket.socket, line: bytes, pending: bytearray, timeout: float) -> None:
    """Send ``line`` and wait (at most ``timeout``) until the same bytes came back."""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(line)
        while len(pending) < len(line):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise StreamBrokenError("connection closed by the server")
            pending += chunk
    except OSError as exc:
        raise StreamBrokenError(describe_error(exc, timeout)) from None
    echo = bytes(pending[: len(line)])
    del pending[: len(line)]
    if echo != line:
        raise StreamBrokenError(f"the echo differs: sent {line!r}, got {echo!r}")


def run(args: argparse.Namespace) -> int:
    if args.duration < 0 or args.interval < 0 or args.timeout <= 0:
        return fail(_PROG, "--duration and --interval must not be negative, --timeout positive")
    host = strip_brackets(args.host)
    try:
        sock = socket.create_connection((host, args.port), timeout=args.timeout)
    except OSError as exc:
        return fail(_PROG, f"{args.host} port {args.port}: {describe_error(exc, args.timeout)}")
    with sock:
        say(
            f"connected {format_address(sock.getsockname())}"
            f" -> {format_address(sock.getpeername())}"
        )
        start = time.monotonic()
        end = start + args.duration
        pending = bytearray()
        sent = 0
        next_send = start  # when the message being sent was due; the last one is due at `end`
        while True:
            sent += 1
            line = f"ciliary tcp-stream {sent}\n".encode()
            try:
                _exchange(sock, line, pending, args.timeout)
            except StreamBrokenError as exc:
                at = time.monotonic() - start
                return fail(_PROG, f"message {sent} at {at:.2f}s: {exc}")
            if next_send >= end:
                break
            next_send = min(max(next_send + args.interval, time.monotonic()), end)
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    say(f"ok {sent} messages over {args.duration:g}s on one connection")
    return 0
