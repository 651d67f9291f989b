"""``ciliary_ipcache`` (bpf/lib/ipcache.h): longest-prefix match of an address to its identity.

The LPM key's ``prefixlen`` counts every bit after itself that must match: the family byte and
its three pad bytes (32 bits, always matched, so IPv4 and IPv6 never mix) plus the prefix bits.

Revision contract: the programs answer from a per-CPU cache of the trie's answers, each valid at
the ipcache revision (``ciliary_ipcache_rev``) it was filled at. Every write here (an entry added,
changed or deleted) is followed by a raise of the revision: a writer without the revision
(:class:`IPCacheMap` built without one) is a reader's view, and its writes would reach the
programs only for addresses no CPU has cached.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from pathlib import Path

from ciliary.datapath.libbpf import BPF_ANY, Map
from ciliary.datapath.maps.endpoints import IPAddress, check_map_layout, decode_addr, encode_addr
from ciliary.datapath.maps.revision import Revision, raise_revision

__all__ = [
    "IPCACHE_F_REMOTE",
    "IPCACHE_MAP",
    "IPCACHE_REVISION_MAP",
    "IPCacheInfoC",
    "IPCacheKeyC",
    "IPCacheMap",
    "IPCacheRecord",
    "IPNetwork",
]

IPNetwork = IPv4Network | IPv6Network

IPCACHE_MAP = "ciliary_ipcache"
IPCACHE_REVISION_MAP = "ciliary_ipcache_rev"

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
    """Typed view of ciliary_ipcache over a :class:`Map` it does not own; ``revision``: raised
    after each write (the revision contract above)."""

    def __init__(self, bpf_map: Map, revision: Revision | None = None) -> None:
        check_map_layout(bpf_map, IPCacheKeyC, IPCacheInfoC)
        self.map = bpf_map
        self._revision = revision
        self._owned: tuple[Map, ...] = ()

    @classmethod
    def from_pin(cls, pin_dir: Path) -> IPCacheMap:
        """The node's pinned ipcache in ``pin_dir``, opened by another process than the agent's
        (benchmarks, tests), raising the revision pinned next to it; close with :meth:`close`."""
        ipcache = Map.from_pin(pin_dir / IPCACHE_MAP)
        try:
            revision = Map.from_pin(pin_dir / IPCACHE_REVISION_MAP)
        except BaseException:
            ipcache.close()
            raise
        view = cls(ipcache, Revision(revision))
        view._owned = (ipcache, revision)
        return view

    def close(self) -> None:
        """Closes the maps :meth:`from_pin` opened (nothing for a view over others' maps)."""
        for m in self._owned:
            m.close()
        self._owned = ()

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
        raise_revision(self._revision)

    def delete(self, prefix: IPNetwork) -> bool:
        """Removes exactly ``prefix`` (not what it covers); False when absent."""
        found = self.map.delete(_prefix_key(prefix))
        raise_revision(self._revision)
        return found

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
