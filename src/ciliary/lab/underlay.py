"""The lab network at run time: the namespace ``cilu-<lab>`` with the bridge ``br0``, and each
node's ``eth0`` on it (``lab.nodenetwork`` says which addresses, ``datapath.linux.bridge`` makes
the devices).

The lab records the network (``LabRecord.network``) and each node's IPs (``NodeRecord``) before
it creates them, as every other resource of the lab, so ``lab down`` after any crash removes the
namespace (the nodes' veths go with their namespaces). Nothing is added to the root namespace:
the lab network is the nodes' only, as a cluster's node network is the machines'. Every agent of
the lab is told its node's IPs, its device and the lab's routing settings (:func:`agent_flags`,
cilium-agent's flag names).

The lab's API server listens on the network's own addresses (:func:`api_addresses`, the
bridge's: as a cluster's nodes reach their API server on their network); each node is fenced
(:func:`fence_api`) so that what it forwards, its pods' packets, never reaches that port there.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from ciliary.datapath.linux import bridge, netns
from ciliary.lab import nodenetwork
from ciliary.lab.schema import LabBody
from ciliary.lab.state import ExternalRecord, LabNetworkRecord, NodeRecord

PREFIX = "cilu-"
WORLD_PREFIX = "cilw-"
BRIDGE = "br0"
NODE_DEVICE = "eth0"
MTU = 1500


def netns_name(lab: str) -> str:
    return f"{PREFIX}{lab}"


def external_netns(lab: str, name: str) -> str:
    """The namespace of a world host (``spec.externals``) of ``lab``."""
    return f"{WORLD_PREFIX}{lab}-{name}"


def lab_of(ns_name: str) -> str | None:
    """The lab whose network namespace ``ns_name`` is (None for another name)."""
    return ns_name[len(PREFIX) :] if ns_name.startswith(PREFIX) and len(ns_name) > 5 else None


def plan(lab: str, spec: LabBody) -> tuple[LabNetworkRecord, dict[str, nodenetwork.NodeAddresses]]:
    """The record of the lab network of ``spec`` and each node's IPs (file order)."""
    net = spec.node_network
    record = LabNetworkRecord(
        netns=netns_name(lab),
        bridge=BRIDGE,
        ipv4=str(net.ipv4),
        ipv6=str(net.ipv6),
        routing_mode=spec.routing_mode,
        auto_direct_node_routes=spec.auto_direct_node_routes,
        ipv4_native_routing_cidr=_text(spec.ipv4_native_routing_cidr),
        ipv6_native_routing_cidr=_text(spec.ipv6_native_routing_cidr),
        tunnel_port=spec.tunnel_port,
        health_check_interval_s=spec.health_check_interval,
    )
    nodes = nodenetwork.node_addresses(net.ipv4, net.ipv6, [n.name for n in spec.nodes])
    return record, nodes


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


def create(record: LabNetworkRecord) -> None:
    """The lab's namespace and its bridge holding the network's own addresses."""
    own = nodenetwork.gateway(IPv4Network(record.ipv4), IPv6Network(record.ipv6))
    path = netns.create(record.netns)
    bridge.create_bridge(str(path), record.bridge, [own.ipv4, own.ipv6])


def api_addresses(record: LabNetworkRecord) -> list[str]:
    """Where the lab's API server listens on the lab network: its own addresses (the bridge's,
    ``.1`` and ``::1``), v4 first."""
    own = nodenetwork.gateway(IPv4Network(record.ipv4), IPv6Network(record.ipv6))
    return [str(own.ipv4.ip), str(own.ipv6.ip)]


def fence_api(record: LabNetworkRecord, nrec: NodeRecord, port: int) -> None:
    """The node forwards nothing of its pods to the API's ``port`` on the lab network (its own
    connections there pass): pods do not reach the control plane, even masqueraded."""
    bridge.fence_forwarded(str(netns.path_of(nrec.netns)), api_addresses(record), port)


def plug_node(record: LabNetworkRecord, nrec: NodeRecord) -> None:
    """The node's ``eth0`` (its IPs, on-link) and its port on the bridge (named after it);
    ``accept_local`` on it, so that what it receives for the node itself (every VXLAN packet in
    tunnel mode) skips the second, rule-by-rule FIB lookup the node's ip rules would otherwise
    cost its source validation (``bridge.accept_local``)."""
    _plug(record, nrec.name, nrec.netns, nrec.node_ipv4, nrec.node_ipv6)
    bridge.accept_local(str(netns.path_of(nrec.netns)), NODE_DEVICE)


def plug_external(record: LabNetworkRecord, ext: ExternalRecord) -> None:
    """A world host's ``eth0`` and its port on the bridge (named after it), as a node's."""
    _plug(record, ext.name, ext.netns, ext.ipv4, ext.ipv6)


def _plug(
    record: LabNetworkRecord, name: str, ns_name: str, ipv4: str | None, ipv6: str | None
) -> None:
    addresses: list[bridge.Address] = []
    if ipv4 is not None:
        addresses.append(IPv4Interface(f"{ipv4}/{IPv4Network(record.ipv4).prefixlen}"))
    if ipv6 is not None:
        addresses.append(IPv6Interface(f"{ipv6}/{IPv6Network(record.ipv6).prefixlen}"))
    bridge.plug(
        bridge_netns=str(netns.path_of(record.netns)),
        bridge=record.bridge,
        port=name,  # node and host names fit an interface name (schema.NODE_NAME_MAX)
        netns_path=str(netns.path_of(ns_name)),
        ifname=NODE_DEVICE,
        addresses=addresses,
        mtu=MTU,
    )


def route_world(
    record: LabNetworkRecord, externals: Sequence[ExternalRecord], nodes: Sequence[NodeRecord]
) -> None:
    """In native routing mode, each world host's route to every node's pod CIDRs via that
    node's IP (v4 via v4, v6 via v6), as a real network's router or BGP peering would give it:
    the world reaches pods directly and their replies find their way back. None in tunnel mode:
    there pods are reachable from the world only through services."""
    if record.routing_mode != "native":
        return
    routes: list[tuple[str, str]] = []
    for nrec in nodes:
        for cidr, via in ((nrec.ipv4_cidr, nrec.node_ipv4), (nrec.ipv6_cidr, nrec.node_ipv6)):
            if cidr is not None and via is not None:
                routes.append((cidr, via))
    for ext in externals:
        bridge.add_routes(str(netns.path_of(ext.netns)), NODE_DEVICE, routes)


def remove(lab: str) -> bool:
    """Remove the lab's network namespace (and with it the bridge and its ports)."""
    return netns.remove(netns_name(lab))


def agent_flags(record: LabNetworkRecord, nrec: NodeRecord) -> list[str]:
    """cilium-agent's flags for the node's place on the lab network, the lab's routing and how
    often the agents probe each other's health over it."""
    flags: list[str] = []
    if nrec.node_ipv4 is not None:
        flags += ["--ipv4-node", nrec.node_ipv4]
    if nrec.node_ipv6 is not None:
        flags += ["--ipv6-node", nrec.node_ipv6]
    flags += ["--devices", NODE_DEVICE, "--routing-mode", record.routing_mode]
    if record.routing_mode == "tunnel":
        flags += ["--tunnel-port", str(record.tunnel_port)]
    elif record.auto_direct_node_routes:
        flags += ["--auto-direct-node-routes"]
    if record.ipv4_native_routing_cidr is not None:
        flags += ["--ipv4-native-routing-cidr", record.ipv4_native_routing_cidr]
    if record.ipv6_native_routing_cidr is not None:
        flags += ["--ipv6-native-routing-cidr", record.ipv6_native_routing_cidr]
    return [*flags, "--cluster-health-interval", f"{record.health_check_interval_s:g}"]


__all__ = [
    "BRIDGE",
    "MTU",
    "NODE_DEVICE",
    "PREFIX",
    "WORLD_PREFIX",
    "agent_flags",
    "api_addresses",
    "create",
    "external_netns",
    "fence_api",
    "lab_of",
    "netns_name",
    "plan",
    "plug_external",
    "plug_node",
    "remove",
    "route_world",
]
