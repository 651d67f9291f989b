"""Host-scope IPAM: the node's pod CIDRs (handed out by the lab as Cilium's operator does in
cluster-pool mode), a router address per family, and pod addresses allocated from the rest.

Allocations are not stored separately: the endpoint records are the source of truth and the
allocator is rebuilt from them at start, so an address is in use exactly while an endpoint record
holds it. Exhaustion and out-of-range requests are errors naming the CIDR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address


class IPAMError(Exception):
    """No address could be given (exhausted, outside the range, already in use)."""


@dataclass
class _Range:
    cidr: IPv4Network | IPv6Network
    used: set[IPAddress] = field(default_factory=set)
    next_hint: int = 2

    @property
    def router(self) -> IPAddress:
        return self.cidr.network_address + 1

    def _reserved(self, addr: IPAddress) -> bool:
        if addr in (self.cidr.network_address, self.router):
            return True
        return isinstance(self.cidr, IPv4Network) and addr == self.cidr.broadcast_address

    def allocate(self, requested: IPAddress | None) -> IPAddress:
        if requested is not None:
            if requested not in self.cidr:
                raise IPAMError(
                    f"requested address {requested} is outside the node CIDR {self.cidr}"
                )
            if self._reserved(requested):
                raise IPAMError(f"requested address {requested} is reserved in {self.cidr}")
            if requested in self.used:
                raise IPAMError(f"requested address {requested} is already in use")
            self.used.add(requested)
            return requested
        size = self.cidr.num_addresses
        for step in range(size):
            offset = (self.next_hint + step) % size
            addr = self.cidr.network_address + offset
            if not self._reserved(addr) and addr not in self.used:
                self.used.add(addr)
                self.next_hint = offset + 1
                return addr
        raise IPAMError(f"no free address left in node CIDR {self.cidr}")

    def release(self, addr: IPAddress) -> None:
        self.used.discard(addr)


class HostScopeIPAM:
    def __init__(self, ipv4: IPv4Network | None, ipv6: IPv6Network | None) -> None:
        self.v4 = _Range(ipv4) if ipv4 is not None else None
        self.v6 = _Range(ipv6) if ipv6 is not None else None

    @property
    def router_v4(self) -> IPv4Address | None:
        return self.v4.router if self.v4 else None  # type: ignore[return-value]

    @property
    def router_v6(self) -> IPv6Address | None:
        return self.v6.router if self.v6 else None  # type: ignore[return-value]

    def restore(self, addr: str | None) -> None:
        if addr is None:
            return
        parsed = ip_address(addr)
        rng = self.v4 if isinstance(parsed, IPv4Address) else self.v6
        if rng is not None and parsed in rng.cidr:
            rng.used.add(parsed)

    def allocate(
        self, requested_v4: str | None, requested_v6: str | None
    ) -> tuple[IPv4Address | None, IPv6Address | None]:
        """One address per configured family; all or nothing."""
        req4 = _parse(requested_v4, IPv4Address)
        req6 = _parse(requested_v6, IPv6Address)
        if req4 is not None and self.v4 is None:
            raise IPAMError(f"requested {req4} but this node has no IPv4 pod CIDR")
        if req6 is not None and self.v6 is None:
            raise IPAMError(f"requested {req6} but this node has no IPv6 pod CIDR")
        v4 = self.v4.allocate(req4) if self.v4 else None
        try:
            v6 = self.v6.allocate(req6) if self.v6 else None
        except IPAMError:
            if v4 is not None and self.v4 is not None:
                self.v4.release(v4)
            raise
        return v4, v6  # type: ignore[return-value]

    def release(self, addr: str | None) -> None:
        if addr is None:
            return
        parsed = ip_address(addr)
        rng = self.v4 if isinstance(parsed, IPv4Address) else self.v6
        if rng is not None:
            rng.release(parsed)

    @property
    def allocated(self) -> int:
        return sum(len(r.used) for r in (self.v4, self.v6) if r is not None)


def _parse(value: str | None, kind: type[IPv4Address] | type[IPv6Address]) -> IPAddress | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError as err:
        raise IPAMError(f"requested address {value!r} is not a valid {kind.__name__}") from err
