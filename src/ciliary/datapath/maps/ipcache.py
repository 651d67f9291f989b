"""``ciliary_ipcache`` (bpf/lib/ipcache.h): longest-prefix match of an address to its identity.

The LPM key's ``prefixlen`` counts every bit after itself that must match: the family byte and
its three pad bytes (32 bits, always matched, so IPv4 and IPv6 never mix) plus the prefix bits.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

from ciliary.datapath.libbpf import BPF_ANY, Map
from ciliary.datapath.maps.endpoints import IPAddress, check_map_layout, decode_addr, encode_addr

__all__ = [
    "IPCACHE_F_REMOTE",
    "IPCacheInfoC",
    "IPCacheKeyC",
    "IPCacheMap",
    "IPCacheRecord",
    "IPNetwork",
]

IPNetwork = IPv4Network | IPv6Network

IPCACHE_F_REMOTE = 0x1
"""``ipcache_info.flags`` bit (bpf/lib/common.h): written by the node manager from the cluster
(remote pods, remote nodes, their pod CIDRs; also this node's own node IPs as host); it prunes
only entries with this bit (local endpoints and CIDR identities are owned by others)."""

_FAMILY_PAD_BITS = 32


class IPCacheKeyC(ctypes.Structure):
    """Mirror of C ``struct ipcache_key`` (bpf/lib/common.h)."""

    C_NAME = "ipcache_key"
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("addr", ctypes.c_uint8 * 16),
    ]


class IPCacheInfoC(ctypes.Structure):
    """Mirror of C ``struct ipcache_info`` (bpf/lib/common.h). ``tunnel_ep`` holds the IPv4
    address in network byte order (its memory bytes are the address bytes)."""

    C_NAME = "ipcache_info"
    _fields_ = [
        ("sec_id", ctypes.c_uint32),
        ("tunnel_ep", ctypes.c_uint32),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


@dataclass(frozen=True)
class IPCacheRecord:
    prefix: IPNetwork
    sec_id: int
    tunnel_endpoint: IPv4Address | None
    flags: int


def _key(addr: IPAddress, bits: int) -> bytes:
    raw, family = encode_addr(addr)
    key = IPCacheKeyC(prefixlen=_FAMILY_PAD_BITS + bits, family=family)
    key.addr[:] = raw
    return bytes(key)


def _prefix_key(prefix: IPNetwork) -> bytes:
    return _key(prefix.network_address, prefix.prefixlen)


class IPCacheMap:
    """Typed view of ciliary_ipcache over a :class:`Map` it does not own."""

    def __init__(self, bpf_map: Map) -> None:
        check_map_layout(bpf_map, IPCacheKeyC, IPCacheInfoC)
        self.map = bpf_map

    def upsert(
        self,
        prefix: IPNetwork,
        sec_id: int,
        tunnel_endpoint: IPv4Address | None = None,
        *,
        flags: int = 0,
    ) -> None:
        value = IPCacheInfoC(sec_id=sec_id, flags=flags)
        if tunnel_endpoint is not None:
            value.tunnel_ep = int.from_bytes(tunnel_endpoint.packed, sys.byteorder)
        self.map.update(_prefix_key(prefix), bytes(value), BPF_ANY)

    def delete(self, prefix: IPNetwork) -> bool:
        """Removes exactly ``prefix`` (not what it covers); False when absent."""
        return self.map.delete(_prefix_key(prefix))

    def lookup(self, addr: IPAddress) -> int | None:
        """The identity of the longest prefix covering ``addr`` (what the datapath sees), or
        None when no prefix covers it (the datapath then uses world)."""
        raw = self.map.lookup(_key(addr, addr.max_prefixlen))
        return None if raw is None else int(IPCacheInfoC.from_buffer_copy(raw).sec_id)

    def items(self) -> list[IPCacheRecord]:
        return [_record(k, v) for k, v in self.map.items()]


def _record(key_raw: bytes, value_raw: bytes) -> IPCacheRecord:
    key = IPCacheKeyC.from_buffer_copy(key_raw)
    value = IPCacheInfoC.from_buffer_copy(value_raw)
    network = decode_addr(bytes(key.addr), int(key.family))
    tunnel = int(value.tunnel_ep)
    return IPCacheRecord(
        prefix=ip_network((network, int(key.prefixlen) - _FAMILY_PAD_BITS)),
        sec_id=int(value.sec_id),
        tunnel_endpoint=IPv4Address(tunnel.to_bytes(4, sys.byteorder)) if tunnel else None,
        flags=int(value.flags),
    )
