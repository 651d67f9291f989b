"""Typed views of the datapath's maps and ctypes mirrors of the structs they hold.

Each module mirrors the C structs of one map of ``bpf/lib/common.h`` (class attribute
``C_NAME`` names the C twin, ``C_OBJECT`` the object holding it when not ``bpf_lxc.o``;
``_fields_`` in the C order with the C types) and wraps a :class:`~ciliary.datapath.libbpf.Map`
with an API in ``ipaddress`` types. :data:`ALL_MIRRORS` is what tests/bpf/test_btf_layout.py
checks against the compiled objects' BTF, so a struct changed on one side only fails the suite
instead of corrupting maps.
"""

from __future__ import annotations

import ctypes

from ciliary.datapath.maps.config import ConfigMap, DPConfig, DPConfigC
from ciliary.datapath.maps.conntrack import CTEntryC, CTKeyC, CTMap, CTRecord
from ciliary.datapath.maps.endpoints import (
    EP_F_READY,
    EndpointInfoC,
    EndpointKeyC,
    EndpointMap,
    EndpointRecord,
)
from ciliary.datapath.maps.events import (
    EventsLostMap,
    RawTraceEvent,
    TraceEventC,
    TraceSockNotifyC,
    decode_trace_event,
)
from ciliary.datapath.maps.ipcache import IPCacheInfoC, IPCacheKeyC, IPCacheMap, IPCacheRecord
from ciliary.datapath.maps.lb import (
    Lb4AffinityKeyC,
    Lb4BackendC,
    Lb4KeyC,
    Lb4ReverseNatC,
    Lb6AffinityKeyC,
    Lb6BackendC,
    Lb6KeyC,
    Lb6ReverseNatC,
    LbAffinityMatchC,
    LbAffinityValC,
    LbMaglevConfigC,
    LbServiceC,
    LbSrcRangeKeyC,
)
from ciliary.datapath.maps.nat import NATConfigC, NATEntryC, NATKeyC
from ciliary.datapath.maps.policy import PolicyEntryC, PolicyKeyC

__all__ = [
    "ALL_MIRRORS",
    "EP_F_READY",
    "CTEntryC",
    "CTKeyC",
    "CTMap",
    "CTRecord",
    "ConfigMap",
    "DPConfig",
    "DPConfigC",
    "EndpointInfoC",
    "EndpointKeyC",
    "EndpointMap",
    "EndpointRecord",
    "EventsLostMap",
    "IPCacheInfoC",
    "IPCacheKeyC",
    "IPCacheMap",
    "IPCacheRecord",
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
    "NATConfigC",
    "NATEntryC",
    "NATKeyC",
    "PolicyEntryC",
    "PolicyKeyC",
    "RawTraceEvent",
    "TraceEventC",
    "TraceSockNotifyC",
    "decode_trace_event",
]

ALL_MIRRORS: list[type[ctypes.Structure]] = [
    EndpointKeyC,
    EndpointInfoC,
    IPCacheKeyC,
    IPCacheInfoC,
    CTKeyC,
    CTEntryC,
    DPConfigC,
    TraceEventC,
    TraceSockNotifyC,
    PolicyKeyC,
    PolicyEntryC,
    NATKeyC,
    NATEntryC,
    NATConfigC,
    Lb4KeyC,
    Lb6KeyC,
    LbServiceC,
    Lb4BackendC,
    Lb6BackendC,
    Lb4ReverseNatC,
    Lb6ReverseNatC,
    Lb4AffinityKeyC,
    Lb6AffinityKeyC,
    LbAffinityValC,
    LbAffinityMatchC,
    LbSrcRangeKeyC,
    LbMaglevConfigC,
]
