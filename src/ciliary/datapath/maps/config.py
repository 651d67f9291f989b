"""``ciliary_config[0]`` (bpf/lib/config.h): the runtime knobs the agent sets at start.

The map is an array, so its single entry always exists: until the agent writes it, the datapath
reads zeroes (no aggregation, no report interval).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from ciliary.datapath.libbpf import BPF_ANY, Map
from ciliary.datapath.maps.endpoints import check_map_layout

__all__ = [
    "DP_F_FIB_MAIN_V4",
    "DP_F_FIB_MAIN_V6",
    "MONITOR_AGG_MEDIUM",
    "MONITOR_AGG_NONE",
    "ROUTING_MODE_NATIVE",
    "ROUTING_MODE_TUNNEL",
    "ConfigMap",
    "DPConfig",
    "DPConfigC",
]

MONITOR_AGG_NONE = 0
MONITOR_AGG_MEDIUM = 2
ROUTING_MODE_NATIVE = 0
"""bpf_lxc hands traffic for other nodes to the stack (also what an unwritten entry means)."""
ROUTING_MODE_TUNNEL = 1
"""bpf_lxc encapsulates traffic for prefixes with an ipcache tunnel endpoint into the device
``tunnel_ifindex``."""

DP_F_FIB_MAIN_V4 = 0x1
"""``flags``: the node's ip rules route IPv4 packets to other nodes' pods in the native routing CIDR
as the main table alone does, so bpf_lxc may look their route up there directly (bpf/lib/fib.h;
kept current by agent/fibdirect.py)."""
DP_F_FIB_MAIN_V6 = 0x2
"""The same for IPv6."""

_KEY = bytes(ctypes.sizeof(ctypes.c_uint32))  # index 0


class DPConfigC(ctypes.Structure):
    """Mirror of C ``struct dp_config`` (bpf/lib/common.h)."""

    C_NAME = "dp_config"
    _fields_ = [
        ("aggregation_interval_ns", ctypes.c_uint64),
        ("monitor_aggregation", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("tunnel_port", ctypes.c_uint16),
        ("routing_mode", ctypes.c_uint32),
        ("tunnel_ifindex", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class DPConfig:
    monitor_aggregation: int
    aggregation_interval_ns: int
    flags: int
    routing_mode: int = ROUTING_MODE_NATIVE
    tunnel_ifindex: int = 0
    tunnel_port: int = 0


class ConfigMap:
    """Typed view of ciliary_config over a :class:`Map` it does not own."""

    def __init__(self, bpf_map: Map) -> None:
        check_map_layout(bpf_map, ctypes.c_uint32, DPConfigC)
        self.map = bpf_map

    def set(
        self,
        monitor_aggregation: int,
        aggregation_interval_ns: int,
        flags: int = 0,
        *,
        routing_mode: int = ROUTING_MODE_NATIVE,
        tunnel_ifindex: int = 0,
        tunnel_port: int = 0,
    ) -> None:
        """Writes the whole entry at once: the running programs never see half of it.
        ``tunnel_port``: the tunnel device's UDP port, by which bpf_host knows the outer
        packets other nodes send (0: not said, every packet takes bpf_host's full path)."""
        if routing_mode == ROUTING_MODE_TUNNEL and tunnel_ifindex <= 0:
            raise ValueError("tunnel routing needs the tunnel device's ifindex")
        if not 0 <= tunnel_port <= 0xFFFF:
            raise ValueError(f"tunnel port {tunnel_port} is not a UDP port")
        if not 0 <= flags <= 0xFFFF:
            raise ValueError(f"flags {flags:#x} do not fit the entry's 16 bits")
        value = DPConfigC(
            aggregation_interval_ns=aggregation_interval_ns,
            monitor_aggregation=monitor_aggregation,
            flags=flags,
            routing_mode=routing_mode,
            tunnel_ifindex=tunnel_ifindex,
            tunnel_port=tunnel_port,
        )
        self.map.update(_KEY, bytes(value), BPF_ANY)

    def set_flags(self, flags: int) -> None:
        """Replaces the entry's ``flags`` (DP_F_*), the rest as it is: one writer (the agent's
        loop), so the read and the write see no other change in between."""
        if not 0 <= flags <= 0xFFFF:
            raise ValueError(f"flags {flags:#x} do not fit the entry's 16 bits")
        raw = self.map.lookup(_KEY)
        value = DPConfigC.from_buffer_copy(raw) if raw is not None else DPConfigC()
        value.flags = flags
        self.map.update(_KEY, bytes(value), BPF_ANY)

    def get(self) -> DPConfig:
        raw = self.map.lookup(_KEY)
        value = DPConfigC.from_buffer_copy(raw) if raw is not None else DPConfigC()
        return DPConfig(
            monitor_aggregation=int(value.monitor_aggregation),
            aggregation_interval_ns=int(value.aggregation_interval_ns),
            flags=int(value.flags),
            routing_mode=int(value.routing_mode),
            tunnel_ifindex=int(value.tunnel_ifindex),
            tunnel_port=int(value.tunnel_port),
        )
