"""Service ClusterIPs and NodePorts, allocated as kube-apiserver allocates them.

kube-apiserver hands every Service of a ClusterIP-bearing type one address per IP family from
``--service-cluster-ip-range`` and every port of a NodePort/LoadBalancer Service a node port from
``--service-node-port-range`` (pkg/registry/core/service: ``ipallocator``, ``portallocator``,
``storage/alloc.go``). This module is that allocation, with one difference in how it is kept.

**Where the truth is.** Upstream keeps a bitmap per range in etcd and repairs it against the
Services periodically. Here each allocated address or port is a key of its own in etcd,
``/registry/ipaddresses/<ip>`` (an ``IPAddress`` naming its Service, as upstream's newer
``MultiCIDRServiceAllocator`` keeps them) and ``/registry/servicenodeports/<port>``, written in
the *same etcd transaction* as the Service that holds it (:class:`ciliary.apiserver.storage.
Storage` with :meth:`ServiceAllocator.claims`): a create or update that adds a key compares
``create_revision == 0`` for it, a delete (or an update that drops it) deletes it. So two
Services can never hold the same address, whatever the number of API server processes or their
restarts, and nothing leaks when a write fails: the keys are what the stored Services hold.

**The in-memory view** (:attr:`ServiceAllocator.used`, read from those keys before the first
Service write, then kept from the transactions that succeed, :meth:`ServiceAllocator.committed`)
only chooses candidates. A choice made by an ongoing write is *reserved* until that write ends
(:meth:`ServiceAllocator.session`), so concurrent creates in this process never pick the same
address; a key etcd says is taken anyway (another process, a stale view) fails that write's
transaction and the caller retries with a new choice (an address the client asked for is 422).

Choices follow upstream's: a random address of the range's upper band first (the lower band,
``min(max(16, size/16), 256)`` addresses, is left for addresses clients ask for), then the
lower band; the first address (network + 1) is never chosen, it is the ``kubernetes`` Service's.
A full range is 500 ``failed to allocate a serviceIP: range is full``; an asked-for address
outside it is 422 naming ``spec.clusterIPs``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from ciliary.k8s.resources import ResourceType

IP_PREFIX = "/registry/ipaddresses/"
PORT_PREFIX = "/registry/servicenodeports/"
DEFAULT_SERVICE_CIDR = "10.0.0.0/24"  # kube-apiserver's default --service-cluster-ip-range
DEFAULT_NODE_PORTS = "30000-32767"  # kube-apiserver's default --service-node-port-range
IPV6_MIN_PREFIX = 108  # kube-apiserver refuses larger IPv6 service ranges

Network = IPv4Network | IPv6Network
Obj = dict[str, Any]


class AllocationError(Exception):
    """A requested address or port cannot be had (the message is upstream's)."""


class NotInRangeError(AllocationError):
    pass


class AllocatedError(AllocationError):
    pass


class RangeFullError(AllocationError):
    pass


def family_of(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def ip_key(ip: str) -> str:
    return IP_PREFIX + ipaddress.ip_address(ip).compressed


def port_key(port: int) -> str:
    return f"{PORT_PREFIX}{port}"


def parse_service_cidrs(text: str) -> list[Network]:
    """``--service-cluster-ip-range``: one or two CIDRs, comma-separated, at most one per
    family (the first is the primary family); ValueError naming the problem otherwise."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"--service-cluster-ip-range {text!r}: expected one or two CIDRs")
    nets: list[Network] = []
    for part in parts:
        try:
            net = ipaddress.ip_network(part)
        except ValueError as err:
            raise ValueError(f"--service-cluster-ip-range {part!r}: {err}") from None
        if net.version == 6 and net.prefixlen < IPV6_MIN_PREFIX:
            raise ValueError(
                f"--service-cluster-ip-range {part!r}: too large; for 128-bit addresses the"
                f" mask must be >= {IPV6_MIN_PREFIX}"
            )
        if net.num_addresses < 4:
            raise ValueError(f"--service-cluster-ip-range {part!r}: too small")
        nets.append(net)
    if len(nets) == 2 and nets[0].version == nets[1].version:
        raise ValueError(
            f"--service-cluster-ip-range {text!r}: at most one CIDR per IP family (dual-stack)"
        )
    return nets


def parse_port_range(text: str) -> tuple[int, int]:
    """``--service-node-port-range`` ``A-B`` (inclusive), as kube-apiserver's."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"--service-node-port-range {text!r}: expected A-B") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"--service-node-port-range {text!r}: expected 1 <= A <= B <= 65535")
    return first, last


@dataclass(frozen=True)
class IPRange:
    """One family's service range: the addresses ``base .. base + size - 1`` (the network
    address and, for IPv4, the broadcast address are never handed out)."""

    network: Network

    @property
    def family(self) -> str:
        return "IPv6" if self.network.version == 6 else "IPv4"

    @property
    def base(self) -> int:
        return int(self.network.network_address) + 1

    @property
    def size(self) -> int:
        return self.network.num_addresses - (2 if self.network.version == 4 else 1)

    @property
    def first(self) -> str:
        """network + 1: the ``kubernetes`` Service's address."""
        return str(ipaddress.ip_address(self.base))

    def offset(self, ip: str) -> int | None:
        """The address's offset in the range, None outside it."""
        addr = ipaddress.ip_address(ip)
        off = int(addr) - self.base
        return off if addr.version == self.network.version and 0 <= off < self.size else None

    def address(self, offset: int) -> str:
        return str(ipaddress.ip_address(self.base + offset))

    def band(self) -> int:
        """Size of the lower band left for static (asked-for) addresses, as upstream's."""
        return min(max(16, self.size // 16), 256)

    def not_in_range(self, ip: str) -> NotInRangeError:
        return NotInRangeError(
            f"the provided IP ({ip}) is not in the valid range. The range of valid IPs is"
            f" {self.network}"
        )


@dataclass
class ServiceAllocator:
    """The cluster's service ranges and what of them is taken (see the module's docstring)."""

    cidrs: list[Network]
    node_ports: tuple[int, int] = (30000, 32767)
    used: set[str] = field(default_factory=set)  # claim keys of the stored Services
    reserved: set[str] = field(default_factory=set)  # keys chosen by ongoing writes
    loaded: bool = False
    rng: random.Random = field(default_factory=random.Random)

    @property
    def ranges(self) -> dict[str, IPRange]:
        return {r.family: r for r in (IPRange(n) for n in self.cidrs)}

    @property
    def primary_family(self) -> str:
        return IPRange(self.cidrs[0]).family

    # ---------------------------------------------------------------- the view of etcd

    def load(self, keys: Iterable[str]) -> None:
        """The claim keys found in etcd (before the first Service write)."""
        self.used = set(keys)
        self.loaded = True

    def committed(self, added: Iterable[str], removed: Iterable[str]) -> None:
        """A transaction that added and removed these claim keys succeeded."""
        self.used.difference_update(removed)
        self.used.update(added)

    def taken(self, key: str) -> None:
        """etcd says ``key`` is held (our view was stale)."""
        self.used.add(key)

    def is_free(self, key: str) -> bool:
        return key not in self.used and key not in self.reserved

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """The choices of one write, reserved until it ends (committed or not)."""
        session = Session(self)
        try:
            yield session
        finally:
            self.reserved.difference_update(session.held)

    # ---------------------------------------------------------------- claims of an object

    def claims_of(self, rt: ResourceType, obj: Obj) -> dict[str, bytes]:
        """:class:`ciliary.apiserver.storage.Claims`: a core Service's claims, nothing else's."""
        return self.claims(obj) if rt.group == "" and rt.kind == "Service" else {}

    def claims(self, svc: Obj) -> dict[str, bytes]:
        """The claim keys a stored Service holds, with their values: its cluster IPs, node ports
        and health check node port. Whether or not they are inside today's ranges (which a
        restart with other flags may change): what a Service holds it releases when it goes."""
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        out: dict[str, bytes] = {}
        owner = {
            "group": "",
            "resource": "services",
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
        }
        if spec.get("type") != "ExternalName":
            for ip in spec.get("clusterIPs") or []:
                if not isinstance(ip, str) or ip in ("", "None"):
                    continue
                try:
                    name = ipaddress.ip_address(ip).compressed
                except ValueError:
                    continue
                doc = {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "IPAddress",
                    "metadata": {"name": name},
                    "spec": {"parentRef": owner},
                }
                out[ip_key(ip)] = json.dumps(doc, separators=(",", ":")).encode()
        ports = [p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict)]
        ports.append(spec.get("healthCheckNodePort"))
        for port in ports:
            if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
                out[port_key(port)] = json.dumps(owner, separators=(",", ":")).encode()
        return out


class Session:
    """Choices of one write (create or update of one Service)."""

    def __init__(self, alloc: ServiceAllocator) -> None:
        self.alloc = alloc
        self.picked: set[str] = set()  # keys chosen here rather than asked for
        self.held: set[str] = set()  # every key reserved here (chosen or asked for)

    def _reserve(self, key: str, *, picked: bool = True) -> None:
        if picked:
            self.picked.add(key)
        self.held.add(key)
        self.alloc.reserved.add(key)

    def pick_ip(self, family: str) -> str:
        """A free address of the family's range (RangeFullError when there is none)."""
        r = self.alloc.ranges[family]
        band = r.band() if r.size > r.band() else 0
        # upper band first, then the lower band; offset 0 (network + 1) never
        for lo, hi in ((max(band, 1), r.size), (1, band)):
            if hi <= lo:
                continue
            start = self.alloc.rng.randrange(lo, hi)
            for step in range(hi - lo):
                ip = r.address(lo + (start - lo + step) % (hi - lo))
                key = ip_key(ip)
                if self.alloc.is_free(key):
                    self._reserve(key)
                    return ip
        raise RangeFullError("range is full")

    def take_ip(self, ip: str) -> None:
        """An address a client asked for: in its family's range and free."""
        r = self.alloc.ranges[family_of(ip)]
        if r.offset(ip) is None:
            raise r.not_in_range(ip)
        if not self.alloc.is_free(ip_key(ip)):
            raise AllocatedError("provided IP is already allocated")
        self._reserve(ip_key(ip), picked=False)

    def pick_port(self) -> int:
        low, high = self.alloc.node_ports
        size = high - low + 1
        start = self.alloc.rng.randrange(size)
        for i in range(size):
            port = low + (start + i) % size
            if self.alloc.is_free(port_key(port)):
                self._reserve(port_key(port))
                return port
        raise RangeFullError("range is full")

    def take_port(self, port: int) -> None:
        low, high = self.alloc.node_ports
        if not low <= port <= high:
            raise NotInRangeError(
                f"provided port is not in the valid range. The range of valid ports is {low}-{high}"
            )
        if not self.alloc.is_free(port_key(port)):
            raise AllocatedError("provided port is already allocated")
        self._reserve(port_key(port), picked=False)
