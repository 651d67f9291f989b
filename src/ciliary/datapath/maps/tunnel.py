"""``ciliary_tunnel_direct`` (bpf/lib/encap.h): the tunnel endpoints whose route bpf_lxc may look
up in the main table alone.

encap_and_redirect finds the next hop of every encapsulated packet with ``bpf_fib_lookup``; the
walk through the node's ip rules, the local table's lookup included, is most of that lookup's
cost. An endpoint in this set is looked up with ``BPF_FIB_LOOKUP_DIRECT``; agent/fibdirect.py
adds an endpoint only after proving that the rules cannot change its route, and removes it as
soon as they might. An endpoint not in the set (the start, a new node before its proof) takes the
full lookup, which is always right.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from ciliary.datapath.libbpf import BPF_ANY, Map

__all__ = ["TUNNEL_DIRECT_MAP", "TunnelDirectMap"]

TUNNEL_DIRECT_MAP = "ciliary_tunnel_direct"
_PRESENT = b"\x01"


class TunnelDirectMap:
    """The set, keyed by the endpoint's IPv4 address in network order (as the ipcache's
    ``tunnel_ep``)."""

    def __init__(self, m: Map) -> None:
        self._map = m

    def endpoints(self) -> set[IPv4Address]:
        keys = self._map.keys()
        return {IPv4Address(key) for key in keys}

    def replace(self, endpoints: set[IPv4Address]) -> None:
        """Makes the set ``endpoints``: removals first, so that nothing unproven is ever in it."""
        for gone in self.endpoints() - endpoints:
            self._map.delete(gone.packed)
        for ep in endpoints:
            self._map.update(ep.packed, _PRESENT, BPF_ANY)
