"""Listeners inside other network namespaces: how the lab's nodes reach the API server without
any route between namespaces.

A socket belongs to the network namespace of the thread that created it, for its whole life,
wherever it is used afterwards. So for each listener ``<netns path>=<host>:<port>`` the server
creates the socket in a short-lived thread of its own that has entered that netns (``setns``
moves only the calling thread), binds and listens there, and hands it to the event loop, which
serves it exactly as its own port (aiohttp ``SockSite``: same application, same TLS, same client
CA). A client inside a lab node dials ``127.0.0.1:6443`` on the node's own loopback: nothing is
routed through the root namespace, the root's loopback stays out of the node's reach, and pods
(namespaces of their own behind the node) cannot reach a listener on the node's loopback.

The list is a file (``--listen-netns-file``, one listener a line, ``#`` comments) because a lab's
nodes are created after its API server: the server reads it at start (a restarted server opens
every listener again) and again on SIGHUP, opening new lines and closing removed ones. A listener
that cannot be opened (its netns is gone, its port taken) is logged and tried again on the next
SIGHUP; the other listeners keep serving. Whoever writes the file replaces it atomically.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)


class ListenerError(RuntimeError):
    """A listener could not be opened (the message names its netns and address)."""


@dataclass(frozen=True, slots=True)
class NetnsListener:
    """Listen on ``host:port`` inside the network namespace at ``netns`` (``/run/netns/<name>``)."""

    netns: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.netns}={host}:{self.port}"


def parse(text: str) -> list[NetnsListener]:
    """The listeners of a ``--listen-netns-file``; ValueError names the line that is wrong."""
    listeners: list[NetnsListener] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        netns, eq, address = line.rpartition("=")
        host, colon, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            if not (eq and colon and netns.startswith("/")):
                raise ValueError("expected <netns path>=<address>:<port>")
            ipaddress.ip_address(host)
            if not 0 < int(port) < 65536:
                raise ValueError(f"port {port} out of range")
        except ValueError as err:
            raise ValueError(f"line {number}: {line!r}: {err}") from None
        listeners.append(NetnsListener(netns, host, int(port)))
    return listeners


def render(listeners: Iterable[NetnsListener]) -> str:
    """The file's text for ``listeners`` (what :func:`parse` reads back)."""
    return "".join(f"{listener}\n" for listener in listeners)


def open_socket(listener: NetnsListener, backlog: int = 128) -> socket.socket:
    """A listening TCP socket inside the listener's netns. Blocks (the first call imports the
    netlink library): call it from a worker; the switch happens in a thread made for it."""
    # pyroute2 (~0.25 s to import) only once a listener is asked for, not at every start
    from ciliary.datapath.linux import netns  # noqa: PLC0415

    def listen() -> socket.socket:
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listener.host, listener.port))
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    try:
        return netns.call_in(listener.netns, listen)
    except Exception as err:
        raise ListenerError(f"cannot listen on {listener}: {err}") from err


class NetnsSites:
    """The server's listeners in other namespaces, kept equal to the file's list by :meth:`sync`
    (called at start and on SIGHUP, never concurrently: the caller's loop runs one at a time)."""

    def __init__(self, runner: web.AppRunner, path: Path, ssl_context: ssl.SSLContext | None):
        self._runner = runner
        self._path = path
        self._ssl = ssl_context
        self._sites: dict[NetnsListener, web.SockSite] = {}

    @property
    def listeners(self) -> list[NetnsListener]:
        return list(self._sites)

    async def sync(self) -> None:
        try:
            wanted = parse(self._path.read_text())
        except FileNotFoundError:
            wanted = []
        except (OSError, ValueError) as err:
            log.error("%s: %s (listeners left as they are)", self._path, err)
            return
        for gone in [lst for lst in self._sites if lst not in wanted]:
            await self._sites.pop(gone).stop()
            log.info("stopped listening on %s", gone)
        for listener in wanted:
            if listener in self._sites:
                continue
            try:
                sock = await asyncio.to_thread(open_socket, listener)
            except ListenerError as err:
                log.error("%s", err)
                continue
            site = web.SockSite(self._runner, sock, ssl_context=self._ssl, shutdown_timeout=1.0)
            await site.start()
            self._sites[listener] = site
            log.info("serving on %s", listener)
