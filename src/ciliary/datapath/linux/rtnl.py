"""rtnetlink requests written by hand and sent to the kernel as one batch.

Why: a pod's side of its veth needs a dozen requests (links up, addresses, routes, neighbours).
Through pyroute2 each is a request object, an encoder pass and a round trip through its own
event loop: ~1 ms of CPU apiece on a loaded 2-core node, on every CNI ADD's path. The messages
themselves are a few fixed structs (``rtnetlink(7)``), so they are packed here with ``struct``
and written in one ``send``: the kernel runs them in order and acknowledges each (``NLM_F_ACK``),
an error naming the request it belongs to. Only what :mod:`ciliary.datapath.linux.link` needs:
link up, address, route and neighbour creation. The socket is opened in the calling thread's
network namespace (see ``link.in_netns``).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ciliary.datapath.linux.errors import LinkError

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWNEIGH = 28
IFF_UP = 0x1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
NDA_DST = 1
NDA_LLADDR = 2
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
"""A route an administrator made (what pyroute2 marks its routes with: ``proto static``)."""
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTATTR = struct.Struct("=HH")
_ERROR = struct.Struct("=i")

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Request:
    """One message: what it does (for errors), its type, flags beyond REQUEST|ACK, its body."""

    what: str
    kind: int
    flags: int
    body: bytes


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _family(addr: Address) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def link_up(what: str, index: int) -> Request:
    """``ip link set <index> up``."""
    return Request(
        what, RTM_NEWLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    )


def address(what: str, index: int, addr: Address, prefixlen: int, flags: int = 0) -> Request:
    """``ip addr add <addr>/<prefixlen> dev <index>`` (``flags``: IFA_F_*, e.g. NODAD)."""
    body = _IFADDRMSG.pack(_family(addr), prefixlen, flags, RT_SCOPE_UNIVERSE, index)
    body += _attr(IFA_LOCAL, addr.packed) + _attr(IFA_ADDRESS, addr.packed)
    return Request(what, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def route(
    what: str,
    dst: Address,
    dst_len: int,
    *,
    oif: int | None = None,
    gateway: Address | None = None,
    scope: int = RT_SCOPE_UNIVERSE,
) -> Request:
    """``ip route add <dst>/<dst_len> [via <gateway>] [dev <oif>] [scope <scope>]``."""
    body = _RTMSG.pack(
        _family(dst), dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0
    )
    if dst_len:
        body += _attr(RTA_DST, dst.packed)
    if gateway is not None:
        body += _attr(RTA_GATEWAY, gateway.packed)
    if oif is not None:
        body += _attr(RTA_OIF, struct.pack("=i", oif))
    return Request(what, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def neighbour(what: str, index: int, dst: Address, lladdr: bytes, state: int) -> Request:
    """``ip neigh add <dst> lladdr <lladdr> dev <index> nud <state>``."""
    body = _NDMSG.pack(_family(dst), index, state, 0, 0)
    body += _attr(NDA_DST, dst.packed) + _attr(NDA_LLADDR, lladdr)
    return Request(what, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_EXCL, body)


def run(requests: list[Request]) -> None:
    """Send every request in one datagram, in order, and wait for each one's acknowledgement.
    The kernel carries on after a failed request; the first failure is raised (LinkError naming
    its request) once all are answered."""
    if not requests:
        return
    parts = []
    for seq, req in enumerate(requests, start=1):
        length = _HEADER.size + len(req.body)
        flags = NLM_F_REQUEST | NLM_F_ACK | req.flags
        parts.append(_HEADER.pack(length, req.kind, flags, seq, 0) + req.body)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.send(b"".join(parts))
        failures: dict[int, int] = {}
        pending = set(range(1, len(requests) + 1))
        while pending:
            data = sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise LinkError(f"netlink: a malformed answer ({length} bytes)")
                if kind == NLMSG_ERROR and seq in pending:
                    (code,) = _ERROR.unpack_from(data, offset + _HEADER.size)
                    pending.discard(seq)
                    if code:
                        failures[seq] = -code
                offset += (length + 3) & ~3
    finally:
        sock.close()
    if failures:
        seq = min(failures)
        raise LinkError(f"{requests[seq - 1].what}: {os.strerror(failures[seq])}")
