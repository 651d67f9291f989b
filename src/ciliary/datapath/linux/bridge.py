"""A shared L2 segment between namespaces: a Linux bridge and the veths plugged into it.

The lab's network (``lab.underlay``) is one bridge in a namespace of its own and, for each node,
a veth whose one end is the node's ``eth0`` (in the node's namespace, with the node's IPs) and
whose other end is a port of the bridge: the nodes are hosts on one Ethernet, as kind's are on
its docker bridge. Nothing here touches the calling thread's namespace: every step names the
namespace it acts in (netlink opened inside it, ``link.in_netns``), so a caller in the root
namespace never adds a device, address or route there.

IPv6 addresses are added without duplicate address detection and DAD is off on the devices
(the plan makes addresses unique), so they are usable at once rather than seconds later.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface
from typing import Any

from ciliary.datapath.linux.errors import LinkError
from ciliary.datapath.linux.link import (
    IFA_F_NODAD,
    _index,
    _ipr,
    _netlink,
    in_netns,
    write_sysctl,
)

Address = IPv4Interface | IPv6Interface


def _add_addresses(ipr: Any, idx: int, ifname: str, addresses: Sequence[Address]) -> None:
    for address in addresses:
        flags = IFA_F_NODAD if address.version == 6 else 0
        _netlink(
            f"add {address} to {ifname}", ipr.addr, "add",
            index=idx, address=str(address.ip), prefixlen=address.network.prefixlen, flags=flags,
        )  # fmt: skip


def _local_mac() -> str:
    """A random locally administered unicast MAC address."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def create_bridge(netns_path: str, name: str, addresses: Sequence[Address]) -> int:
    """The bridge ``name`` in ``netns_path``, up, holding ``addresses``; its ifindex. The
    namespace must not have it yet (a lab's namespace is new).

    Its MAC address is set when it is made: a bridge without one takes the lowest of its ports'
    and changes it when a port with a lower one is plugged, so a node that had resolved the
    bridge's addresses (the lab's API server listens there) sent to a MAC no longer the
    bridge's until its neighbour entry went stale: its agent's first API requests hung for
    their whole 30 s timeout in about one two-node lab up in six here (lab up 41-55 s instead
    of 10-17 s). A MAC given at creation is kept."""
    with _ipr(netns_path) as ipr:
        if _index(ipr, name) is not None:
            raise LinkError(f"bridge {name} already exists in {netns_path}")
        _netlink(
            f"create bridge {name}", ipr.link, "add", ifname=name, kind="bridge",
            address=_local_mac(),
        )  # fmt: skip
        idx = _index(ipr, name)
        if idx is None:
            raise LinkError(f"bridge {name} vanished right after creation in {netns_path}")
        write_sysctl(f"net/ipv6/conf/{name}/accept_dad", "0")
        _add_addresses(ipr, idx, name, addresses)
        _netlink(f"set {name} up", ipr.link, "set", index=idx, state="up")
        return idx


def plug(
    *,
    bridge_netns: str,
    bridge: str,
    port: str,
    netns_path: str,
    ifname: str,
    addresses: Sequence[Address],
    mtu: int = 1500,
) -> None:
    """A veth from ``netns_path`` to the bridge: ``ifname`` there (up, ``mtu``, ``addresses``
    on-link, no route beyond), ``port`` a port of ``bridge`` in ``bridge_netns`` (up)."""
    with _ipr(bridge_netns) as ipr:
        br = _index(ipr, bridge)
        if br is None:
            raise LinkError(f"bridge {bridge} does not exist in {bridge_netns}")
        fd = os.open(netns_path, os.O_RDONLY)
        try:  # the peer is born in the node's namespace: no moment in any other
            _netlink(
                f"create veth {port} (peer {ifname} in {netns_path})", ipr.link, "add",
                ifname=port, kind="veth", mtu=mtu,
                peer={"ifname": ifname, "net_ns_fd": fd, "mtu": mtu},
            )  # fmt: skip
        finally:
            os.close(fd)
        idx = _index(ipr, port)
        if idx is None:
            raise LinkError(f"veth {port} vanished right after creation in {bridge_netns}")
        _netlink(f"enslave {port} to {bridge}", ipr.link, "set", index=idx, master=br)
        _netlink(f"set {port} up", ipr.link, "set", index=idx, state="up")
    with _ipr(netns_path) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            raise LinkError(f"veth peer {ifname} did not arrive in {netns_path}")
        write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
        _add_addresses(ipr, idx, ifname, addresses)
        _netlink(f"set {ifname} up", ipr.link, "set", index=idx, state="up")


def add_routes(netns_path: str, ifname: str, routes: Sequence[tuple[str, str]]) -> None:
    """``ip route replace PREFIX via GATEWAY dev IFNAME`` in ``netns_path`` for each (prefix,
    gateway): a host on the segment reaches networks behind a neighbour on it (as a router or
    BGP would have taught it). Idempotent."""
    with _ipr(netns_path) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            raise LinkError(f"device {ifname} does not exist in {netns_path}")
        for prefix, gateway in routes:
            _netlink(
                f"route {prefix} via {gateway} dev {ifname} in {netns_path}", ipr.route,
                "replace", dst=prefix, gateway=gateway, oif=idx,
            )  # fmt: skip


def accept_local(netns_path: str, ifname: str) -> None:
    """``net.ipv4.conf.IFNAME.accept_local=1`` in ``netns_path`` (rp_filter stays 0 there): the
    kernel's source validation of a packet ``ifname`` receives for the host itself then ends at
    once. Without it, a host with ip rules of its own (a lab node: the L7 proxy's fwmark rule,
    :func:`fence_forwarded`'s) validates every such packet's source with a second FIB lookup
    through all its rules (``__fib_validate_source``); a host without custom rules only checks
    that the source is not one of its own addresses. The one thing given up is that check:
    a packet from the segment claiming the host's own address as source is taken, as
    upstream Cilium has its own devices (cilium_host, cilium_net, the tunnel device) take it."""
    with in_netns(netns_path):
        write_sysctl(f"net/ipv4/conf/{ifname}/accept_local", "1")


FENCE_PRIORITY = 100
"""The rules of :func:`fence_forwarded` (``ip rule`` preferences ``100`` and ``101``): before
``main`` (32766), after ``local`` (0)."""
MAIN_TABLE = 254


def fence_forwarded(netns_path: str, addresses: Sequence[str], port: int) -> None:
    """A host on the segment keeps what it forwards (its guests' packets: a node's pods) from
    TCP ``port`` at each of ``addresses``, while its own connections there are routed as ever:
    ``ip rule add pref 100 iif lo to ADDR lookup main`` (``iif lo``: locally generated) and
    ``ip rule add pref 101 to ADDR ipproto tcp dport PORT prohibit`` (the sender gets ICMP
    administratively prohibited). A rule, not netfilter: routing is what a forwarded packet
    always goes through here, and it is there before any masquerade rewrites its source to the
    host's own address. Idempotent."""
    with _ipr(netns_path) as ipr:
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            bits = 128 if family == socket.AF_INET6 else 32
            common = {"family": family, "dst": address, "dst_len": bits}
            present = {
                (r.get("priority"), r.get("dst"), r.get("FRA_IIFNAME"))
                for r in ipr.get_rules(family=family)
            }
            if (FENCE_PRIORITY, address, "lo") not in present:
                _netlink(
                    f"rule iif lo to {address} lookup main in {netns_path}", ipr.rule, "add",
                    priority=FENCE_PRIORITY, iifname="lo", table=MAIN_TABLE, **common,
                )  # fmt: skip
            if (FENCE_PRIORITY + 1, address, None) not in present:
                _netlink(
                    f"rule to {address} tcp dport {port} prohibit in {netns_path}", ipr.rule,
                    "add", priority=FENCE_PRIORITY + 1, ip_proto=socket.IPPROTO_TCP,
                    dport_range=f"{port}:{port}", action="prohibit", **common,
                )  # fmt: skip


__all__ = ["Address", "accept_local", "add_routes", "create_bridge", "fence_forwarded", "plug"]
