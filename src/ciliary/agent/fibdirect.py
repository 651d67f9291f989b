"""Keeps ``ciliary_config``'s DP_F_FIB_MAIN_* bits true to the node's ip rules, in native routing:
a set bit lets bpf_lxc look the route of a packet to another node's pod up in the main table
alone (``BPF_FIB_LOOKUP_DIRECT``, bpf/lib/fib.h), which the kernel's walk through the node's
rules, the local table's lookup included, made a quarter of its cost per packet.

A bit is set only while :func:`ciliary.datapath.linux.fibrules.main_lookup_suffices` holds for
the family's native routing CIDR (the one bpf_host and lib/fib.h read from ``ciliary_nat_config``)
with the node's router addresses as its own: the rules can then change nothing of those lookups,
and the lab's API fence, the L7 proxy's fwmark rule and main keep doing what they did. The
watch subscribes to rule and local-table changes before it reads them, and reads again after
every such change, so a rule added later (by an operator, a CNI chained after us) clears the bit
as soon as the agent's loop has seen it; until then, only packets in flight may take the direct
lookup.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ciliary.datapath.linux import fibrules
from ciliary.datapath.maps.config import DP_F_FIB_MAIN_V4, DP_F_FIB_MAIN_V6, ConfigMap

log = logging.getLogger(__name__)

IPNet = IPv4Network | IPv6Network
IPAddr = IPv4Address | IPv6Address

_FAMILY_BIT = {4: (socket.AF_INET, DP_F_FIB_MAIN_V4), 6: (socket.AF_INET6, DP_F_FIB_MAIN_V6)}


def direct_flags(cidrs: Sequence[IPNet], own: Sequence[IPAddr]) -> int:
    """The DP_F_FIB_MAIN_* bits the calling thread's netns's rules allow for ``cidrs`` (one per
    family at most). Blocking (netlink dumps)."""
    flags = 0
    for cidr in cidrs:
        family, bit = _FAMILY_BIT[cidr.version]
        rules = fibrules.read_rules(family)
        local = fibrules.read_local_routes(family)
        mine = [a for a in own if a.version == cidr.version]
        if fibrules.main_lookup_suffices(rules, local, cidr, mine):
            flags |= bit
    return flags


class FibDirectWatch:
    """Writes the bits at start and whenever the rules or the local table change."""

    def __init__(self, config: ConfigMap, cidrs: Sequence[IPNet], own: Sequence[IPAddr]) -> None:
        self.config = config
        self.cidrs = tuple(cidrs)
        self.own = tuple(own)
        self.flags: int | None = None

    def _write(self, flags: int) -> None:
        if flags == self.flags:
            return
        self.config.set_flags(flags)
        self.flags = flags
        names = [f"IPv{v}" for v, (_, bit) in _FAMILY_BIT.items() if flags & bit]
        log.info(
            "native routing: route lookups in the main table alone for %s (ip rules checked)",
            ", ".join(names) or "no family",
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sock = fibrules.open_events()  # before the first reading: no change falls in between
        wake = asyncio.Event()
        loop.add_reader(sock.fileno(), wake.set)
        try:
            while True:
                try:
                    flags = await asyncio.to_thread(direct_flags, self.cidrs, self.own)
                except Exception:  # netlink refused the dump: the full lookup until next time
                    log.exception("native routing: cannot read the ip rules")
                    flags = 0
                self._write(flags)
                while True:
                    await wake.wait()
                    wake.clear()
                    if fibrules.relevant_events(sock):
                        break
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            self.config.set_flags(0)  # nobody checks the rules any more: the full lookup
