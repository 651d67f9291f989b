"""The L7 proxies' listener selection: ``bpf_sk_lookup.o`` on the node's network namespace and
its socket map.

``lib/proxy.h`` hands a redirected connection's packets to the proxy's socket at tc ingress,
except when the socket of the tuple is the proxy's TIME_WAIT socket of an earlier connection:
such a SYN goes up unassigned, and the kernel's TIME_WAIT handling looks for a listener of the
packet's destination (the pod's address and port), where the sk_lookup program names the
proxy's listener from ``ciliary_proxy_socks`` (``bpf_sk_lookup.c`` says why). That map holds
sockets, not numbers: the agent puts the proxies' listening sockets in
(:mod:`ciliary.agent.proxysockets`), keyed by (port, family); the kernel drops a socket from it
when the socket closes.

Attachment as socket-LB's (:mod:`.socketlb`): a BPF link pinned under ``<pin dir>/sklookup/``,
so the program stays attached while the agent is down and a restarted agent replaces the
program inside the link; a link of another (or a gone) namespace is replaced. Removing the pin
detaches.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path
from typing import Final

from ciliary.datapath.libbpf import (
    BPF_SK_LOOKUP,
    BPFError,
    BPFObject,
    Map,
    link_netns_ino,
    pin_link,
    prog_from_pin,
)

__all__ = [
    "OBJECT",
    "PROGRAM",
    "SOCKETS_MAP",
    "ProxySocketMap",
    "attach",
    "attached_netns",
    "detach",
]

OBJECT: Final = "bpf_sk_lookup.o"
PROGRAM: Final = "cil_sk_lookup"
SOCKETS_MAP: Final = "ciliary_proxy_socks"
LINK_DIR: Final = "sklookup"
NETNS: Final = Path("/proc/self/ns/net")

_KEY: Final = struct.Struct("=HBx")  # struct proxy_sock_key: port (host order), family, pad


def attach(obj: BPFObject, pin_dir: Path, netns: Path = NETNS) -> None:
    """Attach the loaded ``obj``'s program to the network namespace ``netns`` (the agent's
    own): the program of a pinned link on that namespace is replaced, another pinned link is
    replaced by a new one."""
    links = pin_dir / LINK_DIR
    links.mkdir(parents=True, exist_ok=True)
    ns_fd = os.open(netns, os.O_RDONLY)
    try:
        pin_link(links / PROGRAM, obj.program_fd(PROGRAM), ns_fd, BPF_SK_LOOKUP,
                 attached_to=link_netns_ino, want=os.stat(netns).st_ino)  # fmt: skip
    finally:
        os.close(ns_fd)


def attached_netns(pin_dir: Path) -> int | None:
    """The inode number of the namespace the pinned link is attached to (0: it is gone), or
    None without a link."""
    pin = pin_dir / LINK_DIR / PROGRAM
    try:
        fd = prog_from_pin(pin)
    except (BPFError, FileNotFoundError):
        return None
    try:
        return link_netns_ino(fd) or 0
    finally:
        os.close(fd)


def detach(pin_dir: Path) -> bool:
    """Remove the link's pin, which detaches the program; True when there was one."""
    links = pin_dir / LINK_DIR
    found = False
    with contextlib.suppress(FileNotFoundError):
        (links / PROGRAM).unlink()
        found = True
    with contextlib.suppress(OSError):
        links.rmdir()
    return found


class ProxySocketMap:
    """``ciliary_proxy_socks``: the proxies' listening sockets by (port, family). One writer:
    :class:`ciliary.agent.proxysockets.ProxySockets`."""

    def __init__(self, m: Map) -> None:
        self.map = m

    @staticmethod
    def key(port: int, family: socket.AddressFamily) -> bytes:
        return _KEY.pack(port, int(family))

    def put(self, port: int, family: socket.AddressFamily, sock_fd: int) -> None:
        """The socket of ``sock_fd`` (a TCP listener) serves ``port`` from now on; the map
        holds it (``sock_fd`` may be closed)."""
        self.map.update_socket(self.key(port, family), sock_fd)

    def cookies(self) -> dict[tuple[int, int], int]:
        """(port, family) -> the socket cookie of its socket (what a lookup of a socket map
        answers user space)."""
        out: dict[tuple[int, int], int] = {}
        for k, v in self.map.items():
            port, family = _KEY.unpack(k)
            out[port, family] = int.from_bytes(v, "little")
        return out

    def remove(self, port: int, family: socket.AddressFamily) -> bool:
        return self.map.delete(self.key(port, family))
