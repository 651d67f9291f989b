"""The BPF masquerade's maps (bpf/lib/nat.h): ``ciliary_nat_config[0]``, what to masquerade to
(the node addresses, the native routing CIDRs), and the NAT state ``ciliary_snat_v4_external`` /
``ciliary_snat_v6_external`` (upstream's names with our prefix), listed by ``ciliary bpf nat
list`` as ``cilium-dbg bpf nat list`` does.

The datapath alone creates NAT entries (two per connection: OUT keyed by the pod's tuple, IN by
the reply's); the LRU evicts them. The agent writes only the config entry, whole.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ciliary.datapath.libbpf import BPF_ANY, Map
from ciliary.datapath.maps.endpoints import (
    AF_INET4,
    AF_INET6,
    IPAddress,
    check_map_layout,
    decode_addr,
)

__all__ = [
    "NAT_CONFIG_MAP",
    "NAT_DIR_IN",
    "NAT_DIR_OUT",
    "NAT_MAPS",
    "NAT_PORT_MAX",
    "NAT_PORT_MIN",
    "NATConfigC",
    "NATConfigMap",
    "NATEntryC",
    "NATKeyC",
    "NATRecord",
    "nat_records",
]

NAT_MAPS = {AF_INET4: "ciliary_snat_v4_external", AF_INET6: "ciliary_snat_v6_external"}
NAT_CONFIG_MAP = "ciliary_nat_config"
NAT_PORT_MIN = 32768
"""Upstream's NODEPORT_PORT_MIN_NAT: NAT ports are allocated from here to :data:`NAT_PORT_MAX`."""
NAT_PORT_MAX = 65535
NAT_DIR_OUT = 0
NAT_DIR_IN = 1
NAT_F_IPV4 = 0x1
NAT_F_IPV6 = 0x2
NAT_F_NATIVE_V4 = 0x4
NAT_F_NATIVE_V6 = 0x8
NAT_F_NODE_V4 = 0x10
"""The node address is set for NodePort SNAT (bpf/lib/nodeport.h), masqueraded or not."""
NAT_F_NODE_V6 = 0x20


class NATKeyC(ctypes.Structure):
    """Mirror of C ``struct nat_key`` (bpf/lib/nat.h); ports in host order."""

    C_NAME = "nat_key"
    C_OBJECT = "bpf_host.o"
    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class NATEntryC(ctypes.Structure):
    """Mirror of C ``struct nat_entry`` (bpf/lib/nat.h)."""

    C_NAME = "nat_entry"
    C_OBJECT = "bpf_host.o"
    _fields_ = [
        ("created_ns", ctypes.c_uint64),
        ("to_addr", ctypes.c_uint8 * 16),
        ("to_port", ctypes.c_uint16),
        ("rev_nat_index", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


class NATConfigC(ctypes.Structure):
    """Mirror of C ``struct nat_config`` (bpf/lib/nat.h)."""

    C_NAME = "nat_config"
    C_OBJECT = "bpf_host.o"
    _fields_ = [
        ("node_ipv4", ctypes.c_uint8 * 4),
        ("native_cidr_v4", ctypes.c_uint8 * 4),
        ("node_ipv6", ctypes.c_uint8 * 16),
        ("native_cidr_v6", ctypes.c_uint8 * 16),
        ("native_plen_v4", ctypes.c_uint8),
        ("native_plen_v6", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


_KEY = bytes(ctypes.sizeof(ctypes.c_uint32))


class NATConfigMap:
    """Typed view of ciliary_nat_config over a :class:`Map` it does not own."""

    def __init__(self, bpf_map: Map) -> None:
        check_map_layout(bpf_map, ctypes.c_uint32, NATConfigC)
        self.map = bpf_map

    def set(
        self,
        node_ipv4: IPv4Address | None,
        node_ipv6: IPv6Address | None,
        native_v4: IPv4Network | None = None,
        native_v6: IPv6Network | None = None,
        *,
        nodeport_v4: IPv4Address | None = None,
        nodeport_v6: IPv6Address | None = None,
    ) -> None:
        """Masquerade the families with a node address (None: that family untouched); never
        to the native routing CIDRs. ``nodeport_v4/v6``: the node's addresses NodePort traffic
        forwarded to another node is SNATed to (a masqueraded family's node address is one too).
        One write: the programs never see half a config."""
        c = NATConfigC()
        if node_ipv4 is not None:
            c.flags |= NAT_F_IPV4
            c.node_ipv4[:] = list(node_ipv4.packed)
        if node_ipv6 is not None:
            c.flags |= NAT_F_IPV6
            c.node_ipv6[:] = list(node_ipv6.packed)
        if node_ipv4 is not None and nodeport_v4 not in (None, node_ipv4):
            raise ValueError(f"NodePort address {nodeport_v4} is not the masquerade's {node_ipv4}")
        if node_ipv6 is not None and nodeport_v6 not in (None, node_ipv6):
            raise ValueError(f"NodePort address {nodeport_v6} is not the masquerade's {node_ipv6}")
        v4 = nodeport_v4 or node_ipv4
        v6 = nodeport_v6 or node_ipv6
        if v4 is not None:
            c.flags |= NAT_F_NODE_V4
            c.node_ipv4[:] = list(v4.packed)
        if v6 is not None:
            c.flags |= NAT_F_NODE_V6
            c.node_ipv6[:] = list(v6.packed)
        if native_v4 is not None:
            c.flags |= NAT_F_NATIVE_V4
            c.native_cidr_v4[:] = list(native_v4.network_address.packed)
            c.native_plen_v4 = native_v4.prefixlen
        if native_v6 is not None:
            c.flags |= NAT_F_NATIVE_V6
            c.native_cidr_v6[:] = list(native_v6.network_address.packed)
            c.native_plen_v6 = native_v6.prefixlen
        self.map.update(_KEY, bytes(c), BPF_ANY)

    def clear(self) -> None:
        """Masquerade nothing (the programs pass every packet untouched)."""
        self.map.update(_KEY, bytes(NATConfigC()), BPF_ANY)

    def flags(self) -> int:
        raw = self.map.lookup(_KEY)
        return int(NATConfigC.from_buffer_copy(raw).flags) if raw is not None else 0


@dataclass(frozen=True)
class NATRecord:
    """One NAT map entry: ``OUT`` src:sport -> dst:dport is given the source ``to``:to_port,
    ``IN`` (the reply as it arrives) the destination ``to``:to_port."""

    family: int
    proto: int
    direction: int
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    to: IPAddress
    to_port: int
    created_ns: int


def nat_records(bpf_map: Map, family: int) -> list[NATRecord]:
    """Every entry of one family's NAT map."""
    check_map_layout(bpf_map, NATKeyC, NATEntryC)
    out = []
    for k_raw, v_raw in bpf_map.items():
        k = NATKeyC.from_buffer_copy(k_raw)
        v = NATEntryC.from_buffer_copy(v_raw)
        out.append(
            NATRecord(
                family=family,
                proto=int(k.proto),
                direction=int(k.dir),
                src=decode_addr(bytes(k.saddr), family),
                dst=decode_addr(bytes(k.daddr), family),
                sport=int(k.sport),
                dport=int(k.dport),
                to=decode_addr(bytes(v.to_addr), family),
                to_port=int(v.to_port),
                created_ns=int(v.created_ns),
            )
        )
    return out
