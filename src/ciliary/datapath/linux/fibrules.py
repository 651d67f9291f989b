"""Whether the node's ip rules route a pod's packet to another node's pod as the main table
alone would, so that bpf_lxc may look the route up there directly (``BPF_FIB_LOOKUP_DIRECT``,
bpf/lib/fib.h) instead of through every rule; and the netlink events after which the answer
must be read again.

Why: a lab node has five ip rules (local, the L7 proxy's fwmark rule, the two of the lab's API
fence, main), and the kernel walks them for every lookup, the local table's included: a quarter
of cil_from_container's time per packet in native routing. The walk must stay where it can
change the answer (the fence keeps pods from the API server's port), so the direct lookup is
taken only for what this module proves cannot be changed by it.

The proof, for destinations in ``cidr`` (the native routing CIDR of the family) that the ipcache
gives to another node, and the lookups bpf_fib_lookup makes for bpf_lxc (mark 0): every rule
the kernel consults before the main table's (the dump lists rules in the order it walks them)

- looks up the local table, whose routes inside ``cidr`` are all this node's own addresses
  (``own``: the ipcache holds them as host entries, so bpf_lxc never takes them for another
  node's), or
- looks up main without suppressing its answer (then main answers, as the direct lookup), or
- never matches there: not inverted, and a fwmark selector whose value under its mask is not 0,
  or a destination prefix disjoint from ``cidr`` (selectors are all required, so one that
  cannot match is enough, whatever else the rule has);

and the main table's own rule suppresses nothing. When the main table has no route, both
lookups end in the stack's routing (bpf_lxc hands the packet over), so the rules after main
never matter. Anything this module does not recognise is taken to possibly match: no direct
lookup.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from ciliary.datapath.linux.link import _ipr

__all__ = [
    "Rule",
    "main_lookup_suffices",
    "open_events",
    "read_local_routes",
    "read_rules",
    "relevant_events",
    "rule_of",
]

IPNet = IPv4Network | IPv6Network
IPAddr = IPv4Address | IPv6Address

RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
FR_ACT_TO_TBL = 1
FIB_RULE_INVERT = 0x2
NO_SUPPRESS = 0xFFFFFFFF  # FRA_SUPPRESS_PREFIXLEN when the rule has none (-1)


@dataclass(frozen=True)
class Rule:
    """What of an ip rule decides whether it can change bpf_lxc's lookups."""

    priority: int
    table: int
    action: int
    inverted: bool
    selects_all: bool
    """No selector (and not inverted): it matches every lookup."""
    suppresses: bool
    """FRA_SUPPRESS_PREFIXLEN or FRA_SUPPRESS_IFGROUP: a match of its table may be ignored."""
    dst: IPNet | None
    mark: int | None
    """The fwmark it asks for, under its mask; None: no fwmark selector."""


_NOT_SELECTORS = frozenset(
    {"FRA_TABLE", "FRA_PRIORITY", "FRA_PROTOCOL", "FRA_SUPPRESS_PREFIXLEN", "FRA_SUPPRESS_IFGROUP"}
)
"""The attributes of a rule that do not narrow what it matches (anything else may, an attribute
pyroute2 does not know included)."""


def rule_of(msg: Any) -> Rule:
    """A pyroute2 RTM_NEWRULE message's :class:`Rule`."""
    table = msg.get_attr("FRA_TABLE")
    dst = msg.get_attr("FRA_DST")
    mark = msg.get_attr("FRA_FWMARK")
    mask = msg.get_attr("FRA_FWMASK")
    suppress_len = msg.get_attr("FRA_SUPPRESS_PREFIXLEN")
    inverted = bool(int(msg["flags"]) & FIB_RULE_INVERT)
    narrowed = (
        int(msg["dst_len"]) > 0
        or int(msg["src_len"]) > 0
        or int(msg["tos"]) != 0
        or any(name not in _NOT_SELECTORS for name, _ in msg["attrs"])
    )
    return Rule(
        priority=int(msg.get_attr("FRA_PRIORITY") or 0),
        table=int(table if table is not None else msg["table"]),
        action=int(msg["action"]),
        inverted=inverted,
        selects_all=not narrowed and not inverted,
        suppresses=(suppress_len is not None and int(suppress_len) != NO_SUPPRESS)
        or msg.get_attr("FRA_SUPPRESS_IFGROUP") is not None,
        dst=(
            ip_network(f"{dst}/{int(msg['dst_len'])}", strict=False)
            if dst is not None and int(msg["dst_len"]) > 0
            else None
        ),
        mark=int(mark) & (int(mask) if mask is not None else 0xFFFFFFFF)
        if mark is not None
        else None,
    )


def read_rules(family: int) -> list[Rule]:
    """The calling thread's netns's rules of ``family``, in the order the kernel walks them."""
    with _ipr() as ipr:
        return [rule_of(m) for m in ipr.get_rules(family=family)]


def read_local_routes(family: int) -> list[IPNet]:
    """The prefixes of the local table's routes (local, broadcast, anycast) of ``family``."""
    with _ipr() as ipr:
        routes = ipr.get_routes(family=family, table=RT_TABLE_LOCAL)
        zero = "0.0.0.0" if family == socket.AF_INET else "::"
        return [
            ip_network(f"{r.get_attr('RTA_DST') or zero}/{int(r['dst_len'])}", strict=False)
            for r in routes
            if (r.get_attr("RTA_TABLE") or r["table"]) == RT_TABLE_LOCAL
        ]


def _never_matches(rule: Rule, cidr: IPNet) -> bool:
    if rule.inverted:
        return False
    if rule.mark is not None and rule.mark != 0:
        return True  # bpf_fib_lookup without BPF_FIB_LOOKUP_MARK asks with mark 0
    return rule.dst is not None and rule.dst.version == cidr.version and not rule.dst.overlaps(cidr)


def main_lookup_suffices(
    rules: Sequence[Rule], local_routes: Iterable[IPNet], cidr: IPNet, own: Iterable[IPAddr]
) -> bool:
    """True when the main table alone routes what bpf_lxc asks for a destination in ``cidr``
    as ``rules`` would (see the module docstring); ``local_routes``: the local table's
    prefixes, ``own``: this node's addresses the ipcache holds as host entries."""
    mine = {ip_network(a) for a in own}
    local_ok = all(
        p in mine for p in local_routes if p.version == cidr.version and p.overlaps(cidr)
    )
    for rule in rules:
        looks_up = rule.action == FR_ACT_TO_TBL and not rule.suppresses
        if looks_up and rule.table == RT_TABLE_MAIN:
            if rule.selects_all:
                return True  # every lookup still walking gets main's answer here
            continue  # what it matches gets main's answer, the rest walks on
        if looks_up and rule.table == RT_TABLE_LOCAL and local_ok:
            continue
        if not _never_matches(rule, cidr):
            return False
    return False  # no rule looks up main for every lookup


# ---- change notifications ----------------------------------------------------------------------

NETLINK_ROUTE = 0
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_IPV6_RULE = 19
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWRULE, RTM_DELRULE = 32, 33
NLMSG_OVERRUN = 4
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_RTMSG_TABLE = 4  # struct rtmsg: family, dst_len, src_len, tos, table, ...


def open_events() -> socket.socket:
    """A non-blocking rtnetlink socket in the calling thread's netns that receives every rule
    change and every route change (both families): rules and the local table (an address added
    or removed changes it) decide :func:`main_lookup_suffices`. Open it before reading the
    rules, so that no change falls between the reading and the first event."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    groups = 0
    for group in (RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE):
        groups |= 1 << (group - 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, groups))
    sock.setblocking(False)
    return sock


def relevant_events(sock: socket.socket) -> bool:
    """Reads what ``sock`` has; True when a rule changed, a route of the local table did, or
    the kernel dropped notifications (a full buffer: the state must be read again anyway).
    Route changes of other tables (a pod's route, every CNI ADD) are not."""
    seen = False
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return seen
        except OSError:  # ENOBUFS: notifications were lost
            seen = True
            continue
        off = 0
        while off + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, off)
            if length < _HEADER.size:
                break
            if kind in (RTM_NEWRULE, RTM_DELRULE, NLMSG_OVERRUN):
                seen = True
            elif kind in (RTM_NEWROUTE, RTM_DELROUTE):
                table = data[off + _HEADER.size + _RTMSG_TABLE]
                seen = seen or table == RT_TABLE_LOCAL
            off += (length + 3) & ~3
