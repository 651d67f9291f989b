"""What every workload shares: log lines, failure lines, addresses, sockets and stopping on signals.

Servers must bind dual-stack like a pod's server would (one ``[::]`` socket serving IPv4 and IPv6),
log one flushed line per event so the pod's log shows traffic as it happens, and stop cleanly on
SIGTERM or SIGINT (exit 0: the lab stops pods that way). Clients fail with one line on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

_print_lock = threading.Lock()


def log(message: str) -> None:
    """One timestamped line on stdout, flushed at once (pod logs are files read while written)."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    with _print_lock:
        print(f"{stamp} {message}", flush=True)


def say(message: str) -> None:
    """One line of a client's result on stdout, flushed."""
    with _print_lock:
        print(message, flush=True)


def fail(prog: str, reason: str) -> int:
    """Report a client's failure on stderr as one line and return the exit status 1."""
    with _print_lock:
        print(f"{prog}: {' '.join(reason.split())}", file=sys.stderr, flush=True)
    return 1


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """A short reason for a network error: "connection refused", "timed out after 2s", ..."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s" if timeout is not None else "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, BrokenPipeError):
        return "connection closed by peer (broken pipe)"
    if isinstance(exc, OSError):
        if exc.errno == errno.EHOSTUNREACH:
            return "no route to host"
        if exc.errno == errno.ENETUNREACH:
            return "network is unreachable"
        if exc.errno == errno.EPERM:
            return "operation not permitted (dropped locally)"
        if exc.strerror:
            return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def format_address(sockaddr: Any) -> str:
    """``ip:port`` of a socket address, IPv6 in brackets, IPv4-mapped IPv6 shown as IPv4."""
    host, port = str(sockaddr[0]), int(sockaddr[1])
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return f"{host}:{port}"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"{address.ipv4_mapped}:{port}"
    return f"[{host}]:{port}" if address.version == 6 else f"{host}:{port}"


def strip_brackets(host: str) -> str:
    """Accept ``[fd00::1]`` for a host as well as ``fd00::1``."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def listen_address(bind: str | None) -> tuple[socket.AddressFamily, str, bool]:
    """(family, address, dual_stack) a server binds: ``[::]`` dual-stack unless ``bind`` is given.

    Falls back to ``0.0.0.0`` when the kernel has no IPv6 at all. Raises ValueError for a ``bind``
    that is not an IP address.
    """
    if bind is None:
        if socket.has_ipv6:
            try:
                socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
            except OSError:
                pass
            else:
                return socket.AF_INET6, "::", True
        return socket.AF_INET, "0.0.0.0", False
    try:
        address = ipaddress.ip_address(strip_brackets(bind))
    except ValueError:
        raise ValueError(f"--bind: expected an IP address, got {bind!r}") from None
    if address.version == 6:
        return socket.AF_INET6, str(address), False
    return socket.AF_INET, str(address), False


def prepare_listener(sock: socket.socket, dual_stack: bool) -> None:
    """Socket options every server sets before bind() (SO_REUSEADDR for TCP only: on UDP it
    would let two servers share a port silently)."""
    if sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)


class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threaded TCP server on a dual-stack (or ``--bind``) socket that closes cleanly.

    Open connections are tracked so that closing the server shuts them down (a handler blocked
    in recv() returns) and the handler threads can be joined: stopping never hangs or leaks.
    """

    daemon_threads = True
    block_on_close = True
    allow_reuse_address = True

    def __init__(
        self,
        bind: str | None,
        port: int,
        handler: type[socketserver.BaseRequestHandler],
    ) -> None:
        family, address, self.dual_stack = listen_address(bind)
        self.address_family = family
        self._active: set[socket.socket] = set()
        self._active_lock = threading.Lock()
        super().__init__((address, port), handler)

    def server_bind(self) -> None:
        prepare_listener(self.socket, self.dual_stack)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            self._active.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._active_lock:
            self._active.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self._active_lock:
            active = list(self._active)
        for conn in active:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        log(f"error serving {format_address(client_address)}: {describe_error(exc or Exception())}")


class UDPServer(socketserver.UDPServer):
    """A UDP server on a dual-stack (or ``--bind``) socket; datagrams are handled in turn."""

    max_packet_size = 65535

    def __init__(
        self,
        bind: str | None,
        port: int,
        handler: type[socketserver.BaseRequestHandler],
    ) -> None:
        family, address, self.dual_stack = listen_address(bind)
        self.address_family = family
        super().__init__((address, port), handler)

    def server_bind(self) -> None:
        prepare_listener(self.socket, self.dual_stack)
        super().server_bind()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        log(f"error serving {format_address(client_address)}: {describe_error(exc or Exception())}")


class ServerService:
    """A socketserver as a :class:`Service`."""

    def __init__(self, name: str, server: socketserver.BaseServer) -> None:
        self.name = name
        self.server = server

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Service(Protocol):
    """A server loop: ``serve_forever()`` runs in a thread until ``shutdown()`` (another thread)."""

    name: str

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...


def serve_until_signal(services: Sequence[Service], prog: str, ready: Sequence[str] = ()) -> int:
    """Run ``services`` until SIGTERM or SIGINT, then shut them down and return 0.

    The ``ready`` lines are logged once the signals are blocked and the services run: a pod
    that printed them can be stopped with SIGTERM and will exit 0.

    The stop signals are blocked in this thread before the service threads start (they inherit
    the mask) and collected with ``sigtimedwait``, so no handler runs at an awkward moment. If a
    service thread dies, the others are shut down and 1 is returned.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    # A signal whose disposition is "ignore" is discarded even while blocked, and a process
    # started in the background by a shell inherits SIGINT ignored: make both deliverable.
    old_handlers: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            old_handlers[sig] = signal.signal(sig, signal.SIG_DFL)
    failed: list[str] = []

    def run(service: Service) -> None:
        try:
            service.serve_forever()
        except Exception as exc:
            failed.append(f"{service.name}: {describe_error(exc)}")

    threads = [
        threading.Thread(target=run, args=(s,), name=f"{prog}-{s.name}", daemon=True)
        for s in services
    ]
    try:
        for thread in threads:
            thread.start()
        for line in ready:
            log(line)
        received: signal.Signals | None = None
        while received is None and all(t.is_alive() for t in threads):
            info = signal.sigtimedwait(STOP_SIGNALS, 0.5)
            if info is not None:
                received = signal.Signals(info.si_signo)
        if received is not None:
            log(f"{prog}: {received.name} received, stopping")
    finally:
        for service in services:
            with contextlib.suppress(OSError):
                service.shutdown()
        for thread in threads:
            thread.join(timeout=5)
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass  # drop a second stop signal rather than die of it once unblocked
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if failed or received is None:
        return fail(prog, failed[0] if failed else "a server stopped unexpectedly")
    return 0
