"""Keeps what lets bpf_lxc look routes up in the main table alone (``BPF_FIB_LOOKUP_DIRECT``)
true to the node's ip rules: the kernel's walk through them, the local table's lookup included,
made a quarter of cil_from_container's cost per packet.

- Native routing: ``ciliary_config``'s DP_F_FIB_MAIN_* bits, for a packet to another node's pod
  (bpf/lib/fib.h). A bit is set only while :func:`ciliary.datapath.linux.fibrules.
  main_lookup_suffices` holds for the family's native routing CIDR (the one bpf_host and
  lib/fib.h read from ``ciliary_nat_config``) with the node's router addresses as its own.
- Tunnel routing: ``ciliary_tunnel_direct``, the tunnel endpoints (other nodes' IPv4 addresses,
  as the node manager wrote them into the ipcache) for which the same proof holds, each as a
  /32 with no address of its own: encap_and_redirect's lookup of the outer packet's next hop
  (bpf/lib/encap.h). An endpoint the node manager writes before its proof takes the full
  lookup until then.

Either way the rules can then change nothing of those lookups, and the lab's API fence, the L7
proxy's fwmark rule and main keep doing what they did. A watch subscribes to rule and
local-table changes before it reads them, and reads again after every such change, so a rule
added later (by an operator, a CNI chained after us) takes the direct lookup away as soon as the
agent's loop has seen it; until then, only packets in flight may take it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Generic, TypeVar

from ciliary.datapath.linux import fibrules
from ciliary.datapath.maps.config import DP_F_FIB_MAIN_V4, DP_F_FIB_MAIN_V6, ConfigMap
from ciliary.datapath.maps.tunnel import TunnelDirectMap

log = logging.getLogger(__name__)

IPNet = IPv4Network | IPv6Network
IPAddr = IPv4Address | IPv6Address
_T = TypeVar("_T")

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


def direct_endpoints(endpoints: Iterable[IPv4Address]) -> set[IPv4Address]:
    """The tunnel endpoints whose route the calling thread's netns's rules leave to the main
    table alone, each as a /32 that is no address of this node (a local route there fails the
    proof). Blocking (netlink dumps)."""
    wanted = set(endpoints)
    if not wanted:
        return set()
    rules = fibrules.read_rules(socket.AF_INET)
    local = list(fibrules.read_local_routes(socket.AF_INET))
    return {
        ep
        for ep in wanted
        if fibrules.main_lookup_suffices(rules, local, IPv4Network(f"{ep}/32"), ())
    }


class _RuleWatch(ABC, Generic[_T]):
    """Writes what :meth:`compute` proves at start, after every change of the rules or the local
    table, and after every :meth:`changed`; what proves nothing on a failed reading and on the
    way out (nobody checks the rules any more: the full lookup)."""

    what = ""

    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._asked = False

    @abstractmethod
    def compute(self) -> _T:
        """Blocking (netlink dumps): runs in a thread."""

    @abstractmethod
    def write(self, value: _T) -> None: ...

    @abstractmethod
    def unproven(self) -> _T: ...

    def changed(self) -> None:
        """What :meth:`compute` reads besides the rules changed: read again."""
        self._asked = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sock = fibrules.open_events()  # before the first reading: no change falls in between
        loop.add_reader(sock.fileno(), self._wake.set)
        try:
            while True:
                self._asked = False
                try:
                    value = await asyncio.to_thread(self.compute)
                except Exception:  # netlink refused the dump: the full lookup until next time
                    log.exception("%s: cannot read the ip rules", self.what)
                    value = self.unproven()
                self.write(value)
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    if fibrules.relevant_events(sock) or self._asked:
                        break
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            self.write(self.unproven())


class FibDirectWatch(_RuleWatch[int]):
    """Native routing: the DP_F_FIB_MAIN_* bits of ``cidrs``."""

    what = "native routing"

    def __init__(self, config: ConfigMap, cidrs: Sequence[IPNet], own: Sequence[IPAddr]) -> None:
        super().__init__()
        self.config = config
        self.cidrs = tuple(cidrs)
        self.own = tuple(own)
        self.flags: int | None = None

    def compute(self) -> int:
        return direct_flags(self.cidrs, self.own)

    def unproven(self) -> int:
        return 0

    def write(self, value: int) -> None:
        if value == self.flags:
            return
        self.config.set_flags(value)
        self.flags = value
        names = [f"IPv{v}" for v, (_, bit) in _FAMILY_BIT.items() if value & bit]
        log.info(
            "native routing: route lookups in the main table alone for %s (ip rules checked)",
            ", ".join(names) or "no family",
        )


class TunnelDirectWatch(_RuleWatch[set[IPv4Address]]):
    """Tunnel routing: ``ciliary_tunnel_direct``, the endpoints ``endpoints()`` names (the node
    manager's, read on the loop) that the rules leave to main; :meth:`changed` after every change
    of them."""

    what = "tunnel routing"

    def __init__(self, direct: TunnelDirectMap, endpoints: Callable[[], set[IPv4Address]]):
        super().__init__()
        self.direct = direct
        self._endpoints = endpoints
        self._pending: set[IPv4Address] = set()
        self.written: set[IPv4Address] | None = None

    def changed(self) -> None:
        """After a node-manager reconcile: read again only if the endpoints changed (most
        reconciles are pods coming and going, which leave the node set as it was)."""
        endpoints = self._endpoints()
        if endpoints == self._pending and self.written is not None:
            return
        self._pending = endpoints
        super().changed()

    def compute(self) -> set[IPv4Address]:
        return direct_endpoints(self._pending)

    def unproven(self) -> set[IPv4Address]:
        return set()

    def write(self, value: set[IPv4Address]) -> None:
        if value == self.written:
            return
        self.direct.replace(value)
        self.written = value
        log.info("tunnel routing: %d tunnel endpoints looked up in the main table alone"
                 " (ip rules checked)", len(value))  # fmt: skip
