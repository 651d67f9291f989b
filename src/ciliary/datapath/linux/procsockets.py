"""Another process's listening sockets: which descriptors hold them, and a duplicate of one.

The sk_lookup program can only select a socket from a socket map, so the agent must hold the
L7 proxy's (Envoy's) listening sockets for an instant to put them there
(:mod:`ciliary.agent.proxysockets`). A process's sockets are found by their inodes: the TCP
table of its network namespace (``/proc/<pid>/net/tcp{,6}``: state, local port, inode) and its
descriptor table (``/proc/<pid>/fd``: ``socket:[inode]``); ``pidfd_getfd(2)`` (Linux 5.6, no
libc wrapper in Python 3.11) duplicates one into this process (root, or ptrace rights).
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["Listener", "listeners", "listening_inodes", "socket_cookie", "take_fd"]

_SYS_PIDFD_GETFD: Final = 438
_SO_COOKIE: Final = 57
_TCP_LISTEN: Final = "0A"

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class Listener:
    """A listening socket of a process: its port, family and the descriptor that holds it."""

    port: int
    family: socket.AddressFamily
    inode: int
    fd: int


def listening_inodes(pid: int, ports: Iterable[int]) -> dict[int, tuple[int, socket.AddressFamily]]:
    """Inode -> (port, family) of the TCP sockets listening on ``ports`` in ``pid``'s network
    namespace (``/proc/<pid>/net/tcp{,6}``)."""
    wanted = set(ports)
    out: dict[int, tuple[int, socket.AddressFamily]] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in wanted:
                out[int(fields[9])] = (port, family)
    return out


def listeners(pid: int, ports: Iterable[int]) -> list[Listener]:
    """The process's listening sockets on ``ports``, by the descriptors that hold them (a
    socket held twice is listed once)."""
    inodes = listening_inodes(pid, ports)
    found: dict[int, Listener] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return []
    for name in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if not target.startswith("socket:["):
            continue
        inode = int(target[8:-1])
        if inode in inodes and inode not in found:
            port, family = inodes[inode]
            found[inode] = Listener(port, family, inode, int(name))
    return sorted(found.values(), key=lambda lst: (lst.port, lst.family, lst.inode))


def take_fd(pidfd: int, fd: int) -> int:
    """A duplicate in this process of descriptor ``fd`` of the process of ``pidfd``
    (``pidfd_getfd(2)``)."""
    ret = int(_LIBC.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pidfd_getfd(fd {fd}): {os.strerror(err)}")
    return ret


def socket_cookie(fd: int) -> int:
    """The kernel's cookie of the socket of ``fd`` (what the socket map answers for it)."""
    raw = socket.socket(fileno=os.dup(fd))
    try:
        return int.from_bytes(raw.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8), "little")
    finally:
        raw.close()
