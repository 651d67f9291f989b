"""``ciliary_lxc`` (bpf/lib/endpoints.h): the node's local endpoints by address.

Also the home of the two encodings every map struct of ``bpf/lib/common.h`` shares, reused by the
sibling modules: an address as ``__u8 addr[16]`` + ``__u8 family`` (IPv4 in the first four bytes,
the rest zero; family 2 / 10 as in the C) and a MAC as ``__u8 mac[6]``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import numpy as np
import numpy.typing as npt

from ciliary.datapath.libbpf import BPF_ANY, Map

__all__ = [
    "AF_INET4",
    "AF_INET6",
    "EP_F_READY",
    "EndpointInfoC",
    "EndpointKeyC",
    "EndpointMap",
    "EndpointRecord",
    "IPAddress",
    "check_map_layout",
    "decode_addr",
    "encode_addr",
    "format_mac",
    "parse_mac",
]

AF_INET4 = 2
AF_INET6 = 10

EP_F_READY = 0x1

IPAddress = IPv4Address | IPv6Address


def encode_addr(addr: IPAddress) -> tuple[bytes, int]:
    """(16 address bytes, family) as common.h stores an address."""
    if isinstance(addr, IPv4Address):
        return addr.packed + bytes(12), AF_INET4
    return addr.packed, AF_INET6


def packed_addresses(addrs: Iterable[IPAddress]) -> npt.NDArray[np.void]:
    """``addrs`` as :func:`encode_addr` stores them, one 16-byte item each, sorted and without
    repeats: what a column of records' addresses is looked up in with ``np.searchsorted``
    (``agent.flowrows``: is a row's address a Service frontend's)."""
    raw = b"".join(sorted({encode_addr(a)[0] for a in addrs}))
    return np.sort(np.frombuffer(raw, dtype="V16"))


def decode_addr(raw: bytes, family: int) -> IPAddress:
    """The address of a common.h ``addr[16]`` + ``family`` pair."""
    if family == AF_INET4:
        return IPv4Address(bytes(raw[:4]))
    if family == AF_INET6:
        return IPv6Address(bytes(raw[:16]))
    raise ValueError(f"unknown address family {family}")


def parse_mac(mac: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` (or ``-`` separated) to its 6 bytes."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"invalid MAC address {mac!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {mac!r}") from None


def format_mac(raw: bytes) -> str:
    """6 bytes as lowercase ``"aa:bb:cc:dd:ee:ff"``."""
    return bytes(raw[:6]).hex(":")


_Mirror = (
    type[ctypes.Structure] | type[ctypes.c_uint16] | type[ctypes.c_uint32] | type[ctypes.c_uint64]
)


def check_map_layout(bpf_map: Map, key: _Mirror, value: _Mirror) -> None:
    """Refuses a map whose key/value sizes are not those of the mirrors (wrong map or stale
    object), before any bytes are misread."""
    info = bpf_map.info
    want = (ctypes.sizeof(key), ctypes.sizeof(value))
    if (info.key_size, info.value_size) != want:
        raise ValueError(
            f"map {info.name!r} has key/value {info.key_size}/{info.value_size} bytes, "
            f"{key.__name__}/{value.__name__} are {want[0]}/{want[1]}"
        )


class EndpointKeyC(ctypes.Structure):
    """Mirror of C ``struct endpoint_key`` (bpf/lib/common.h)."""

    C_NAME = "endpoint_key"
    _fields_ = [
        ("addr", ctypes.c_uint8 * 16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class EndpointInfoC(ctypes.Structure):
    """Mirror of C ``struct endpoint_info`` (bpf/lib/common.h)."""

    C_NAME = "endpoint_info"
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("sec_id", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("mac", ctypes.c_uint8 * 6),
        ("node_mac", ctypes.c_uint8 * 6),
    ]


@dataclass(frozen=True)
class EndpointRecord:
    """One ciliary_lxc entry. ``ifindex`` is the node-side lxc device, ``mac`` the pod's eth0,
    ``node_mac`` the lxc device (the pod's gateway)."""

    addr: IPAddress
    ifindex: int
    sec_id: int
    ep_id: int
    flags: int
    mac: str
    node_mac: str

    @property
    def ready(self) -> bool:
        return bool(self.flags & EP_F_READY)


def _key(addr: IPAddress) -> bytes:
    raw, family = encode_addr(addr)
    key = EndpointKeyC(family=family)
    key.addr[:] = raw
    return bytes(key)


class EndpointMap:
    """Typed view of ciliary_lxc over a :class:`Map` it does not own."""

    def __init__(self, bpf_map: Map) -> None:
        check_map_layout(bpf_map, EndpointKeyC, EndpointInfoC)
        self.map = bpf_map

    def upsert(
        self,
        addr: IPAddress,
        *,
        ifindex: int,
        sec_id: int,
        ep_id: int,
        flags: int,
        mac: str,
        node_mac: str,
    ) -> None:
        value = EndpointInfoC(ifindex=ifindex, sec_id=sec_id, ep_id=ep_id, flags=flags)
        value.mac[:] = parse_mac(mac)
        value.node_mac[:] = parse_mac(node_mac)
        self.map.update(_key(addr), bytes(value), BPF_ANY)

    def delete(self, addr: IPAddress) -> bool:
        return self.map.delete(_key(addr))

    def get(self, addr: IPAddress) -> EndpointRecord | None:
        key = _key(addr)
        raw = self.map.lookup(key)
        return None if raw is None else _record(key, raw)

    def items(self) -> list[EndpointRecord]:
        return [_record(k, v) for k, v in self.map.items()]


def _record(key_raw: bytes, value_raw: bytes) -> EndpointRecord:
    key = EndpointKeyC.from_buffer_copy(key_raw)
    value = EndpointInfoC.from_buffer_copy(value_raw)
    return EndpointRecord(
        addr=decode_addr(bytes(key.addr), int(key.family)),
        ifindex=int(value.ifindex),
        sec_id=int(value.sec_id),
        ep_id=int(value.ep_id),
        flags=int(value.flags),
        mac=format_mac(bytes(value.mac)),
        node_mac=format_mac(bytes(value.node_mac)),
    )
