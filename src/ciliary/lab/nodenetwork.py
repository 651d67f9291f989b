"""The lab network (the "underlay") as a lab file declares it, and its address plan.

Nodes of a real cluster share a network: each has an IP on it, and that is what Cilium's
tunnels, direct routes and masquerade use. A lab's nodes are network namespaces, so the lab
makes that network too (``lab.underlay``: a bridge in a namespace of its own, one veth per node)
and this module says what it is, with no I/O, so that the lab file's checks (``lab.schema``:
the Lab's ``spec.nodeNetwork`` and routing fields) and the runtime agree: kind's default
subnets, Cilium's defaults, and the address plan: the lab network's own address is the first of
each subnet (on the bridge), node *i* (file order) gets the next ones, ``.2, .3, …`` and
``::2, ::3, …``; the world's hosts (the Lab's ``spec.externals``) take theirs from the top down
unless they name them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Literal, TypeAlias

from ciliary.core.defaults import TUNNEL_PORT

DEFAULT_IPV4: IPv4Network = IPv4Network("172.18.0.0/24")
DEFAULT_IPV6: IPv6Network = IPv6Network("fc00:f853:ccd:e793::/64")
"""kind's network: what a Cilium user's lab usually runs on."""
DEFAULT_TUNNEL_PORT = TUNNEL_PORT
FIRST_NODE = 2
"""Node *i* gets the subnet's address ``FIRST_NODE + i``; ``1`` is the lab network's own."""

RoutingMode: TypeAlias = Literal["tunnel", "native"]


@dataclasses.dataclass(frozen=True)
class NodeAddresses:
    """A node's IPs on the lab network, with the subnet's prefix (as on its ``eth0``)."""

    ipv4: IPv4Interface
    ipv6: IPv6Interface


def capacity(net: IPv4Network | IPv6Network) -> int:
    """How many nodes ``net`` holds: after the network's own address (and IPv4's network and
    broadcast addresses; IPv6's first is the subnet-router anycast address)."""
    reserved = FIRST_NODE + (1 if net.version == 4 else 0)
    return max(0, net.num_addresses - reserved)


def usable(net: IPv4Network | IPv6Network) -> str | None:
    """Why ``net`` cannot be the lab network (its addresses cannot be on an interface)."""
    if net.is_loopback or net.is_link_local or net.is_multicast or net.is_unspecified:
        return f"{net} cannot be on an interface (loopback, link-local, multicast or unspecified)"
    return None


def gateway(ipv4: IPv4Network, ipv6: IPv6Network) -> NodeAddresses:
    """The lab network's own addresses (on its bridge): the first of each subnet."""
    return _nth(ipv4, ipv6, 1)


def node_addresses(
    ipv4: IPv4Network, ipv6: IPv6Network, nodes: Sequence[str]
) -> dict[str, NodeAddresses]:
    """Each node's IPs, by name: node *i* (file order) has the subnet's ``FIRST_NODE + i``."""
    return {name: _nth(ipv4, ipv6, FIRST_NODE + i) for i, name in enumerate(nodes)}


def external_addresses(
    ipv4: IPv4Network,
    ipv6: IPv6Network,
    externals: Sequence[tuple[str, Sequence[IPv4Address | IPv6Address]]],
) -> dict[str, NodeAddresses]:
    """Each world host's IPs, by name: the ones it asks for, else from the top of each subnet
    down (host *i* of the list: IPv4's broadcast address - 1 - *i*, IPv6's last - 1 - *i*),
    away from the nodes, which count up."""
    out: dict[str, NodeAddresses] = {}
    for i, (name, requested) in enumerate(externals):
        v4 = next((a for a in requested if isinstance(a, IPv4Address)), None)
        v6 = next((a for a in requested if isinstance(a, IPv6Address)), None)
        v4 = v4 or IPv4Address(int(ipv4.broadcast_address) - 1 - i)
        v6 = v6 or IPv6Address(int(ipv6.broadcast_address) - 1 - i)
        out[name] = NodeAddresses(
            IPv4Interface((v4, ipv4.prefixlen)), IPv6Interface((v6, ipv6.prefixlen))
        )
    return out


def _nth(ipv4: IPv4Network, ipv6: IPv6Network, n: int) -> NodeAddresses:
    v4 = IPv4Address(int(ipv4.network_address) + n)
    v6 = IPv6Address(int(ipv6.network_address) + n)
    return NodeAddresses(IPv4Interface((v4, ipv4.prefixlen)), IPv6Interface((v6, ipv6.prefixlen)))


__all__ = [
    "DEFAULT_IPV4",
    "DEFAULT_IPV6",
    "DEFAULT_TUNNEL_PORT",
    "FIRST_NODE",
    "NodeAddresses",
    "RoutingMode",
    "capacity",
    "external_addresses",
    "gateway",
    "node_addresses",
    "usable",
]
