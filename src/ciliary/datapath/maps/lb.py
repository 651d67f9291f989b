"""The service maps (bpf/lib/lb.h), both families: ``ciliary_lb{4,6}_services`` (a frontend's
slot 0 = the service entry, slots 1..count = backend ids), ``ciliary_lb{4,6}_backends`` and
``ciliary_lb{4,6}_reverse_nat``, in Cilium's shapes, read and written through :class:`LBMaps`
in ``ipaddress`` types.

The agent's service manager (``ciliary.agent.services``) is the only writer and orders the
writes (backends, then slots, then slot 0; stale ones last); this module only encodes them.
Ports and addresses are network byte order in the maps (the C's ``__be16``/``__be32``), host
integers here.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from ciliary.datapath.libbpf import BPF_ANY, BPF_MAP_TYPE_ARRAY, Map, map_create
from ciliary.datapath.maps.endpoints import AF_INET4, AF_INET6, IPAddress, check_map_layout

__all__ = [
    "BE_STATE_ACTIVE",
    "BE_STATE_MAINTENANCE",
    "BE_STATE_QUARANTINED",
    "BE_STATE_TERMINATING",
    "FRONTEND_BITS_MAP",
    "FRONTEND_BITS_WORDS",
    "LB_MAPS",
    "MAGLEV_CONFIG_MAP",
    "MAGLEV_MAPS",
    "SVC_FLAG_AFFINITY",
    "SVC_FLAG_EXTERNAL_IP",
    "SVC_FLAG_EXT_LOCAL_SCOPE",
    "SVC_FLAG_HOSTPORT",
    "SVC_FLAG_INT_LOCAL_SCOPE",
    "SVC_FLAG_LOADBALANCER",
    "SVC_FLAG_NODEPORT",
    "SVC_FLAG_SOURCE_RANGE",
    "SVC_FLAG_WILDCARD",
    "Backend",
    "Frontend",
    "LBMaps",
    "LBState",
    "Lb4AffinityKeyC",
    "Lb4BackendC",
    "Lb4KeyC",
    "Lb4ReverseNatC",
    "Lb6AffinityKeyC",
    "Lb6BackendC",
    "Lb6KeyC",
    "Lb6ReverseNatC",
    "LbAffinityMatchC",
    "LbAffinityValC",
    "LbMaglevConfigC",
    "LbServiceC",
    "LbSrcRangeKeyC",
    "ServiceValue",
    "frontend_bit",
    "slot0_affinity_timeout",
    "slot0_backend_id",
    "slot0_maglev",
]

BE_STATE_ACTIVE = 0
BE_STATE_TERMINATING = 1
BE_STATE_QUARANTINED = 2
BE_STATE_MAINTENANCE = 3
SVC_FLAG_WILDCARD = 0x80
SVC_FLAG_AFFINITY = 0x10
"""``lb_service.flags``: sessionAffinity ClientIP (slot 0's ``backend_id`` = the timeout, s)."""
LB_ALGORITHM_SHIFT = 24
"""Slot 0's ``backend_id``: the affinity timeout below this bit, the algorithm above it."""
LB_AFFINITY_TIMEOUT_MASK = (1 << LB_ALGORITHM_SHIFT) - 1
LB_SELECTION_MAGLEV = 2
"""Slot 0's algorithm (upstream's ``LB_SELECTION_*``): the frontend's Maglev table is looked up
for its new connections (bpf/lib/lb.h); any other value: random, without that lookup."""
"""``lb_service.flags2``: the address's catch-all entry (port 0, protocol 0, no backends)."""
SVC_FLAG_EXTERNAL_IP = 0x01
"""``lb_service.flags`` (upstream's values): a ``spec.externalIPs`` frontend (bpf/lib/nodeport.h
translates the external ones for clients outside the cluster)."""
SVC_FLAG_NODEPORT = 0x02
SVC_FLAG_EXT_LOCAL_SCOPE = 0x04
SVC_FLAG_HOSTPORT = 0x08
"""A container's ``hostPort`` on this node's addresses (``agent.k8s.hostports``)."""
"""``externalTrafficPolicy: Local``: the frontend has only this node's backends."""
SVC_FLAG_LOADBALANCER = 0x20
SVC_FLAG_SOURCE_RANGE = 0x80
"""``lb_service.flags``: the frontend has loadBalancerSourceRanges (``ciliary_lb_source_range``)."""
SVC_FLAG_INT_LOCAL_SCOPE = 0x10
"""``lb_service.flags2``: ``internalTrafficPolicy: Local`` (this node's backends only)."""

AFFINITY_MAPS = {AF_INET4: "ciliary_lb4_affinity", AF_INET6: "ciliary_lb6_affinity"}
AFFINITY_MATCH_MAP = "ciliary_lb_affinity_match"
SOURCE_RANGE_MAP = "ciliary_lb_source_range"
SRC_RANGE_KEY_BITS = 32
"""The bits of ``struct lb_src_range_key`` before the address (rev_nat_id, family, pad)."""
MAGLEV_MAPS = {AF_INET4: "ciliary_lb4_maglev", AF_INET6: "ciliary_lb6_maglev"}
MAGLEV_CONFIG_MAP = "ciliary_lb_maglev_config"
BPF_F_INNER_MAP = 1 << 12
"""An inner map of a map-of-maps whose size may differ from the template's (kernel 5.10)."""

LB_MAPS = {
    AF_INET4: ("ciliary_lb4_services", "ciliary_lb4_backends", "ciliary_lb4_reverse_nat"),
    AF_INET6: ("ciliary_lb6_services", "ciliary_lb6_backends", "ciliary_lb6_reverse_nat"),
}
FRONTEND_BITS_MAP = "ciliary_lb_frontend_bits"
FRONTEND_BITS_WORDS = 1024
"""bpf/lib/lb.h's LB_FRONTEND_BITS_WORDS: 64-bit words, one bit per :func:`frontend_bit`."""


def frontend_bit(address: IPAddress) -> int:
    """bpf/lib/common.h's ``addr_hash`` as lib/lb.h takes it (>> 16): the address's 32-bit words
    as the CPU reads them (little-endian: the datapath targets x86-64), XORed, times 0x9E3779B1
    modulo 2**32, the upper 16 bits. The bit of ``ciliary_lb_frontend_bits`` that says the
    address may be a frontend."""
    raw = address.packed
    word = 0
    for i in range(0, len(raw), 4):
        word ^= int.from_bytes(raw[i : i + 4], "little")
    return ((word * 0x9E3779B1) & 0xFFFFFFFF) >> 16


class Lb4KeyC(ctypes.Structure):
    """Mirror of C ``struct lb4_key`` (bpf/lib/lb.h); address and dport network order."""

    C_NAME = "lb4_key"
    _fields_ = [
        ("address", ctypes.c_uint8 * 4),
        ("dport", ctypes.c_uint16),
        ("backend_slot", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("scope", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class Lb6KeyC(ctypes.Structure):
    """Mirror of C ``struct lb6_key`` (bpf/lib/lb.h)."""

    C_NAME = "lb6_key"
    _fields_ = [
        ("address", ctypes.c_uint8 * 16),
        ("dport", ctypes.c_uint16),
        ("backend_slot", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("scope", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class LbServiceC(ctypes.Structure):
    """Mirror of C ``struct lb_service`` (bpf/lib/lb.h), the value of both service maps."""

    C_NAME = "lb_service"
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("rev_nat_index", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("flags2", ctypes.c_uint8),
        ("qcount", ctypes.c_uint16),
    ]


class Lb4BackendC(ctypes.Structure):
    """Mirror of C ``struct lb4_backend`` (bpf/lib/lb.h)."""

    C_NAME = "lb4_backend"
    _fields_ = [
        ("address", ctypes.c_uint8 * 4),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class Lb6BackendC(ctypes.Structure):
    """Mirror of C ``struct lb6_backend`` (bpf/lib/lb.h)."""

    C_NAME = "lb6_backend"
    _fields_ = [
        ("address", ctypes.c_uint8 * 16),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class Lb4ReverseNatC(ctypes.Structure):
    """Mirror of C ``struct lb4_reverse_nat`` (bpf/lib/lb.h)."""

    C_NAME = "lb4_reverse_nat"
    _fields_ = [
        ("address", ctypes.c_uint8 * 4),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Lb6ReverseNatC(ctypes.Structure):
    """Mirror of C ``struct lb6_reverse_nat`` (bpf/lib/lb.h)."""

    C_NAME = "lb6_reverse_nat"
    _fields_ = [
        ("address", ctypes.c_uint8 * 16),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Lb4AffinityKeyC(ctypes.Structure):
    """Mirror of C ``struct lb4_affinity_key`` (bpf/lib/lb.h)."""

    C_NAME = "lb4_affinity_key"
    _fields_ = [
        ("address", ctypes.c_uint8 * 4),
        ("rev_nat_id", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Lb6AffinityKeyC(ctypes.Structure):
    """Mirror of C ``struct lb6_affinity_key`` (bpf/lib/lb.h)."""

    C_NAME = "lb6_affinity_key"
    _fields_ = [
        ("address", ctypes.c_uint8 * 16),
        ("rev_nat_id", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class LbAffinityValC(ctypes.Structure):
    """Mirror of C ``struct lb_affinity_val`` (bpf/lib/lb.h)."""

    C_NAME = "lb_affinity_val"
    _fields_ = [
        ("last_used_ns", ctypes.c_uint64),
        ("backend_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class LbAffinityMatchC(ctypes.Structure):
    """Mirror of C ``struct lb_affinity_match`` (bpf/lib/lb.h)."""

    C_NAME = "lb_affinity_match"
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("rev_nat_id", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class LbSrcRangeKeyC(ctypes.Structure):
    """Mirror of C ``struct lb_src_range_key`` (bpf/lib/lb.h): an LPM key, IPv4 in addr[0..3]."""

    C_NAME = "lb_src_range_key"
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("rev_nat_id", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 16),
    ]


class LbMaglevConfigC(ctypes.Structure):
    """Mirror of C ``struct lb_maglev_config`` (bpf/lib/lb.h)."""

    C_NAME = "lb_maglev_config"
    _fields_ = [
        ("table_size", ctypes.c_uint32),
        ("seed_v4", ctypes.c_uint32),
        ("seed_v6", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


_KEY = {AF_INET4: Lb4KeyC, AF_INET6: Lb6KeyC}
_AFFINITY_KEY = {AF_INET4: Lb4AffinityKeyC, AF_INET6: Lb6AffinityKeyC}
_BACKEND = {AF_INET4: Lb4BackendC, AF_INET6: Lb6BackendC}
_REVNAT = {AF_INET4: Lb4ReverseNatC, AF_INET6: Lb6ReverseNatC}


def _be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def _from_be16(raw: int) -> int:
    return int.from_bytes(raw.to_bytes(2, sys.byteorder), "big")


def _family(addr: IPAddress) -> int:
    return AF_INET4 if isinstance(addr, IPv4Address) else AF_INET6


def _src_range_key(index: int, cidr: str) -> bytes:
    net = ip_network(cidr, strict=False)
    key = LbSrcRangeKeyC(
        prefixlen=SRC_RANGE_KEY_BITS + net.prefixlen,
        rev_nat_id=index,
        family=AF_INET4 if net.version == 4 else AF_INET6,
    )
    packed = net.network_address.packed
    key.addr[: len(packed)] = list(packed)
    return bytes(key)


def _src_range_text(k: LbSrcRangeKeyC) -> str:
    size = 4 if k.family == AF_INET4 else 16
    addr = ip_address(bytes(k.addr)[:size])
    return str(ip_network(f"{addr}/{k.prefixlen - SRC_RANGE_KEY_BITS}", strict=False))


def _decode(raw: bytes, family: int) -> IPAddress:
    return IPv4Address(bytes(raw)) if family == AF_INET4 else IPv6Address(bytes(raw))


@dataclass(frozen=True)
class Frontend:
    """A service frontend: address, port, IP protocol number; port 0 and protocol 0 is the
    address's wildcard entry."""

    address: IPAddress
    port: int
    proto: int

    @property
    def family(self) -> int:
        return _family(self.address)

    @property
    def sort_key(self) -> tuple[int, bytes, int, int]:
        """IPv4 first, then by address, port, protocol (addresses of two families do not
        compare)."""
        return (self.address.version, self.address.packed, self.port, self.proto)


@dataclass(frozen=True, order=True)
class Backend:
    address: IPAddress
    port: int
    proto: int
    state: int = field(default=BE_STATE_ACTIVE, compare=False)


@dataclass(frozen=True)
class ServiceValue:
    """One slot's value: slot 0 has ``count`` and ``rev_nat_index``, the others ``backend_id``."""

    backend_id: int = 0
    count: int = 0
    rev_nat_index: int = 0
    flags: int = 0
    flags2: int = 0
    qcount: int = 0
    """slot 0: terminating backends kept in slots count+1..count+qcount (never chosen)."""


def slot0_backend_id(affinity_timeout: int, maglev: bool) -> int:
    """Slot 0's ``backend_id``: the affinity timeout (s) and, for a Maglev frontend whose table
    is written, LB_SELECTION_MAGLEV above LB_ALGORITHM_SHIFT."""
    if not 0 <= affinity_timeout <= LB_AFFINITY_TIMEOUT_MASK:
        raise ValueError(f"affinity timeout {affinity_timeout}s does not fit slot 0")
    return affinity_timeout | (LB_SELECTION_MAGLEV << LB_ALGORITHM_SHIFT if maglev else 0)


def slot0_maglev(backend_id: int) -> bool:
    """Whether slot 0's ``backend_id`` marks a Maglev frontend (its table written)."""
    return backend_id >> LB_ALGORITHM_SHIFT == LB_SELECTION_MAGLEV


def slot0_affinity_timeout(backend_id: int) -> int:
    """The affinity timeout (s) of slot 0's ``backend_id``."""
    return backend_id & LB_AFFINITY_TIMEOUT_MASK


@dataclass
class LBState:
    """Everything in the maps, both families."""

    slots: dict[tuple[Frontend, int], ServiceValue] = field(default_factory=dict)
    backends: dict[int, Backend] = field(default_factory=dict)
    rev_nat: dict[int, Frontend] = field(default_factory=dict)
    """rev-NAT index -> the frontend it restores (its protocol is not stored: 0 here)."""
    source_ranges: dict[int, set[str]] = field(default_factory=dict)
    """rev-NAT index -> its loadBalancerSourceRanges entries (CIDR text)."""


class LBMaps:
    """Typed view of the six service maps over :class:`Map` objects it does not own, and the
    keeper of ``ciliary_lb_frontend_bits``: the bit of each address a service entry (slot 0) is
    keyed on, set before the entry is written (a packet to an address whose bit is clear skips
    the service lookups, bpf/lib/lb.h), cleared after the last such entry of every address
    hashing to it is deleted. Built from the services maps' keys on construction (the agent's
    loader, before any program is attached), so a restart finds the bits of the entries it
    kept; one writer per node (the agent), as for the maps themselves."""

    def __init__(self, maps: dict[str, Map]) -> None:
        for family, (svc, be, rn) in LB_MAPS.items():
            check_map_layout(maps[svc], _KEY[family], LbServiceC)
            check_map_layout(maps[be], ctypes.c_uint32, _BACKEND[family])
            check_map_layout(maps[rn], ctypes.c_uint16, _REVNAT[family])
        check_map_layout(maps[FRONTEND_BITS_MAP], ctypes.c_uint32, ctypes.c_uint64)
        self._maps = maps
        # slot 0's keys per address, and the addresses per bit: what may clear a bit
        self._heads: dict[IPAddress, set[bytes]] = {}
        self._bit_addrs: dict[int, set[IPAddress]] = {}
        self._words = [0] * FRONTEND_BITS_WORDS
        for family in LB_MAPS:
            for k_raw in self._map(family, 0).keys():  # noqa: SIM118 - a Map, not a dict
                k = _KEY[family].from_buffer_copy(k_raw)
                if k.backend_slot == 0:
                    self._add_head(_decode(bytes(k.address), family), bytes(k_raw))
        bits = maps[FRONTEND_BITS_MAP]
        bits.update_batch(
            [
                (bytes(ctypes.c_uint32(i)), bytes(ctypes.c_uint64(w)))
                for i, w in enumerate(self._words)
            ]
        )

    def _add_head(self, address: IPAddress, key: bytes) -> bool:
        """Records slot 0's `key` of `address`; True when its bit was clear before."""
        self._heads.setdefault(address, set()).add(key)
        bit = frontend_bit(address)
        self._bit_addrs.setdefault(bit, set()).add(address)
        word, mask = bit >> 6, 1 << (bit & 63)
        was_set = bool(self._words[word] & mask)
        self._words[word] |= mask
        return not was_set

    def _write_word(self, bit: int) -> None:
        word = bit >> 6
        self._maps[FRONTEND_BITS_MAP].update(
            bytes(ctypes.c_uint32(word)), bytes(ctypes.c_uint64(self._words[word])), BPF_ANY
        )

    def _map(self, family: int, which: int) -> Map:
        return self._maps[LB_MAPS[family][which]]

    @staticmethod
    def _slot_key(fe: Frontend, slot: int) -> bytes:
        key = _KEY[fe.family](backend_slot=slot, proto=fe.proto, dport=_be16(fe.port))
        key.address[:] = list(fe.address.packed)
        return bytes(key)

    def upsert_slot(self, fe: Frontend, slot: int, value: ServiceValue) -> None:
        key = self._slot_key(fe, slot)
        if slot == 0 and self._add_head(fe.address, key):
            self._write_word(frontend_bit(fe.address))  # before the entry: never hidden
        raw = LbServiceC(
            backend_id=value.backend_id,
            count=value.count,
            rev_nat_index=value.rev_nat_index,
            flags=value.flags,
            flags2=value.flags2,
            qcount=value.qcount,
        )
        self._map(fe.family, 0).update(key, bytes(raw), BPF_ANY)

    def delete_slot(self, fe: Frontend, slot: int) -> None:
        key = self._slot_key(fe, slot)
        self._map(fe.family, 0).delete(key)
        heads = self._heads.get(fe.address)
        if slot != 0 or heads is None or key not in heads:
            return
        heads.discard(key)
        if heads:
            return
        del self._heads[fe.address]  # the address is no frontend now
        bit = frontend_bit(fe.address)
        addrs = self._bit_addrs[bit]
        addrs.discard(fe.address)
        if not addrs:  # nor any other address of its bit: cleared, after the entry went
            del self._bit_addrs[bit]
            self._words[bit >> 6] &= ~(1 << (bit & 63))
            self._write_word(bit)

    def upsert_backend(self, backend_id: int, backend: Backend) -> None:
        family = _family(backend.address)
        raw = _BACKEND[family](port=_be16(backend.port), proto=backend.proto, flags=backend.state)
        raw.address[:] = list(backend.address.packed)
        key = bytes(ctypes.c_uint32(backend_id))
        self._map(family, 1).update(key, bytes(raw), BPF_ANY)

    def delete_backend(self, backend_id: int, family: int) -> None:
        self._map(family, 1).delete(bytes(ctypes.c_uint32(backend_id)))

    def upsert_rev_nat(self, index: int, fe: Frontend) -> None:
        raw = _REVNAT[fe.family](port=_be16(fe.port))
        raw.address[:] = list(fe.address.packed)
        self._map(fe.family, 2).update(bytes(ctypes.c_uint16(index)), bytes(raw), BPF_ANY)

    def delete_rev_nat(self, index: int, family: int) -> None:
        self._map(family, 2).delete(bytes(ctypes.c_uint16(index)))

    def dump(self) -> LBState:
        state = LBState()
        for family in LB_MAPS:
            for k_raw, v_raw in self._map(family, 0).items():
                k = _KEY[family].from_buffer_copy(k_raw)
                v = LbServiceC.from_buffer_copy(v_raw)
                fe = Frontend(_decode(bytes(k.address), family), _from_be16(k.dport), k.proto)
                state.slots[(fe, int(k.backend_slot))] = ServiceValue(
                    int(v.backend_id),
                    int(v.count),
                    int(v.rev_nat_index),
                    v.flags,
                    v.flags2,
                    int(v.qcount),
                )
            for k_raw, v_raw in self._map(family, 1).items():
                b = _BACKEND[family].from_buffer_copy(v_raw)
                state.backends[int.from_bytes(k_raw, sys.byteorder)] = Backend(
                    _decode(bytes(b.address), family), _from_be16(b.port), b.proto, b.flags
                )
            for k_raw, v_raw in self._map(family, 2).items():
                r = _REVNAT[family].from_buffer_copy(v_raw)
                state.rev_nat[int.from_bytes(k_raw, sys.byteorder)] = Frontend(
                    _decode(bytes(r.address), family), _from_be16(r.port), 0
                )
        for k_raw, _ in self._maps[SOURCE_RANGE_MAP].items():
            k = LbSrcRangeKeyC.from_buffer_copy(k_raw)
            state.source_ranges.setdefault(int(k.rev_nat_id), set()).add(_src_range_text(k))
        return state

    # ---- loadBalancerSourceRanges (the agent writes; bpf/lib/nodeport.h checks) ----

    def upsert_source_range(self, index: int, cidr: str) -> None:
        self._maps[SOURCE_RANGE_MAP].update(_src_range_key(index, cidr), b"\x01", BPF_ANY)

    def delete_source_range(self, index: int, cidr: str) -> None:
        self._maps[SOURCE_RANGE_MAP].delete(_src_range_key(index, cidr))

    # ---- Maglev tables and session affinity (the agent writes; the datapath reads) ----

    def set_maglev_config(self, table_size: int, seed_v4: int, seed_v6: int) -> None:
        raw = LbMaglevConfigC(table_size=table_size, seed_v4=seed_v4, seed_v6=seed_v6)
        self._maps[MAGLEV_CONFIG_MAP].update(bytes(4), bytes(raw), BPF_ANY)

    def upsert_maglev(self, index: int, family: int, table: Sequence[int]) -> None:
        """Frontend ``index``'s table (backend ids): a fresh inner array swapped in at once, so
        a packet reads either the old table or the new one, never half of each."""
        inner = map_create(
            BPF_MAP_TYPE_ARRAY, f"ciliary_mlv{index}", 4, 4, len(table), flags=BPF_F_INNER_MAP
        )
        try:
            inner.update_batch(
                [
                    (i.to_bytes(4, sys.byteorder), backend_id.to_bytes(4, sys.byteorder))
                    for i, backend_id in enumerate(table)
                ]
            )
            self._maps[MAGLEV_MAPS[family]].update(
                bytes(ctypes.c_uint16(index)), inner.fd.to_bytes(4, sys.byteorder), BPF_ANY
            )
        finally:
            inner.close()  # the outer map holds it

    def delete_maglev(self, index: int, family: int) -> None:
        self._maps[MAGLEV_MAPS[family]].delete(bytes(ctypes.c_uint16(index)))

    def maglev_table(self, index: int, family: int) -> list[int] | None:
        """Frontend ``index``'s table as the datapath reads it (None: not a Maglev frontend):
        the outer map's value is the inner array's kernel id."""
        raw = self._maps[MAGLEV_MAPS[family]].lookup(bytes(ctypes.c_uint16(index)))
        if raw is None:
            return None
        with Map.from_id(int.from_bytes(raw, sys.byteorder)) as inner:
            entries = {int.from_bytes(k, sys.byteorder): v for k, v in inner.items()}
        return [int.from_bytes(entries[i], sys.byteorder) for i in sorted(entries)]

    def upsert_affinity_match(self, backend_id: int, index: int) -> None:
        key = LbAffinityMatchC(backend_id=backend_id, rev_nat_id=index)
        self._maps[AFFINITY_MATCH_MAP].update(bytes(key), b"\x00", BPF_ANY)

    def delete_affinity_match(self, backend_id: int, index: int) -> None:
        key = LbAffinityMatchC(backend_id=backend_id, rev_nat_id=index)
        self._maps[AFFINITY_MATCH_MAP].delete(bytes(key))

    def affinity_entries(self) -> list[tuple[IPAddress, int, int, int]]:
        """(client, rev-NAT index, backend id, last used ns) of both families' affinity maps."""
        out: list[tuple[IPAddress, int, int, int]] = []
        for family, name in AFFINITY_MAPS.items():
            for k_raw, v_raw in self._maps[name].items():
                k = _AFFINITY_KEY[family].from_buffer_copy(k_raw)
                v = LbAffinityValC.from_buffer_copy(v_raw)
                out.append(
                    (
                        _decode(bytes(k.address), family),
                        int(k.rev_nat_id),
                        int(v.backend_id),
                        int(v.last_used_ns),
                    )
                )
        return out
