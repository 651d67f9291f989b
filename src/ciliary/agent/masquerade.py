"""BPF masquerade on the node's native devices (cilium-agent's ``--enable-bpf-masquerade``): pod
→ world traffic leaves ``--devices`` with the node IP as source (bpf/bpf_host.c, lib/nat.h).

Set up once at start, after the datapath is loaded: the config entry first (the node IPs of the
masqueraded families, the native routing CIDRs never masqueraded), then each device's programs,
attached with atomic replace. The NAT state lives in pinned LRU maps that a restart reuses, so
the connections masqueraded before an agent restart keep their mapping: the old programs
translate until the new ones replace them, both reading the same maps.

A family is masqueraded when its ``--enable-ipvX-masquerade`` is on and the node has an address
of it (``--ipv4-node`` / ``--ipv6-node``); ``--enable-bpf-masquerade=false`` (upstream's iptables
masquerade, which ciliary does not implement) or no ``--devices`` masquerades nothing, and the
programs masquerade nothing. The devices' programs stay attached in every case: they are also the
kube-proxy replacement's NodePort path (bpf/lib/nodeport.h: external frontends, SNAT to the node's
address, which the config always carries for that) and, in native routing mode, deliver packets
from the network straight to local endpoints (BPF host routing, bpf/lib/fib.h).
"""

from __future__ import annotations

import logging
import time

from ciliary.agent.config import NetworkConfig
from ciliary.core.flow import IP_PROTOCOLS
from ciliary.core.models import NATEntry
from ciliary.datapath.linux import link as links
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.nat import NAT_DIR_OUT

log = logging.getLogger(__name__)


class MasqueradeError(RuntimeError):
    """A device masquerade must attach to is missing (permanent: the flags name it)."""


def setup_masquerade(datapath: NodeDatapath, net: NetworkConfig) -> list[str]:
    """Configure and attach (or remove) the BPF masquerade; returns the devices it runs on.
    Blocking (netlink): call it from a thread."""
    v4 = net.ipv4_node if net.enable_ipv4_masquerade else None
    v6 = net.ipv6_node if net.enable_ipv6_masquerade else None
    active = net.enable_bpf_masquerade and bool(net.devices) and (v4 or v6) is not None
    indexes = []
    for dev in net.devices:
        ifindex = links.link_index(dev)
        if ifindex is None:
            if active:
                raise MasqueradeError(f"--devices: device {dev!r} not found in the node's netns")
            continue
        indexes.append(ifindex)
    # the node's addresses always (NodePort SNAT needs them); the masquerade's only when active
    datapath.nat_config.set(
        v4 if active else None,
        v6 if active else None,
        net.ipv4_native_routing_cidr if active else None,
        net.ipv6_native_routing_cidr if active else None,
        nodeport_v4=net.ipv4_node,
        nodeport_v6=net.ipv6_node,
    )
    for ifindex in indexes:  # masquerade, NodePort, and BPF host routing in native mode
        datapath.attach_host(ifindex)
    if not active:
        if net.devices and (net.enable_ipv4_masquerade or net.enable_ipv6_masquerade):
            log.info("masquerade: not in BPF (no node IP of a masqueraded family, or disabled)")
        return []
    log.info("masquerade: BPF on %s to %s", ",".join(net.devices), [str(a) for a in (v4, v6) if a])
    return list(net.devices)


def nat_entries(datapath: NodeDatapath) -> list[NATEntry]:
    """The NAT state of both families, for the API."""
    now = time.monotonic_ns()
    return [
        NATEntry(
            family="IPv4" if rec.family == 2 else "IPv6",
            protocol=IP_PROTOCOLS.get(rec.proto, str(rec.proto)),
            direction="OUT" if rec.direction == NAT_DIR_OUT else "IN",
            src=str(rec.src),
            dst=str(rec.dst),
            sport=rec.sport,
            dport=rec.dport,
            to=str(rec.to),
            to_port=rec.to_port,
            age_s=round((now - rec.created_ns) / 1e9, 3),
        )
        for rec in datapath.nat_entries()
    ]
