"""What every IPAM mode promises the agent, and the request handling they share.

The agent (endpoint manager, CNI IPAM-plugin API, CNI GC) talks to an ``IPAM`` without knowing
whether addresses come from the node's own CIDR (Cilium's cluster-pool) or from cluster-wide
Calico IP pools carved into node-affine blocks; both honour the same contract, so the contract and
the parts of it that are mode-independent (which families a request wants, which exact addresses
it asks for, what a retried request for an owner returns) live here once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_interface
from typing import Literal, Protocol

from ciliary.core.models import IPAllocation, IPAMAllocateRequest, IPAMListing

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Family = Literal[4, 6]
FAMILIES: tuple[Family, Family] = (4, 6)

ErrorKind = Literal["exhausted", "invalid", "conflict", "not-found", "disabled"]


ROUTER_KIND: Literal["router"] = "router"


def router_owner(node: str) -> str:
    """The owner recorded for a node's router (gateway) address."""
    return f"router/{node}"


class IPAMError(Exception):
    """No address could be given or released; the message is one line naming what is wrong.

    ``kind`` lets the API map it to a status: ``exhausted`` (no free address), ``invalid`` (bad
    request or configuration), ``conflict`` (address in use / owner holds others), ``not-found``
    (unknown pool), ``disabled`` (pool disabled).
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


class IPAM(Protocol):
    """An address allocator of one node. Calls are short and synchronous (no I/O but a local file
    or the cluster store); every allocation is persisted before ``allocate`` returns."""

    @property
    def mode(self) -> Literal["cluster-pool", "pools"]: ...

    @property
    def node(self) -> str: ...

    @property
    def router_v4(self) -> IPv4Address | None:
        """The node's IPv4 gateway for pods (reserved, never handed out), None without IPv4."""

    @property
    def router_v6(self) -> IPv6Address | None: ...

    def allocate(
        self, req: IPAMAllocateRequest, *, pod_annotations: Mapping[str, str] | None = None
    ) -> list[IPAllocation]:
        """Addresses for ``req.owner``, one per wanted family, all or nothing; idempotent."""

    def release(self, owner: str) -> list[IPAllocation]:
        """Free everything ``owner`` holds on this node; [] when it holds nothing."""

    def allocations(self) -> list[IPAllocation]:
        """This node's allocations (routers included)."""

    def owned_by(self, owner: str) -> list[IPAllocation]: ...

    def gc(self, keep: Callable[[IPAllocation], bool]) -> list[IPAllocation]:
        """Release every allocation of this node for which ``keep`` is False (never routers)."""

    def listing(self) -> IPAMListing: ...


def family_of(addr: IPAddress | IPNetwork) -> Family:
    return 4 if addr.version == 4 else 6


def family_name(family: int) -> str:
    return "IPv4" if family == 4 else "IPv6"


def parse_address(text: str) -> IPAddress:
    """An address as a request gives it: bare, or in CIDR form (``10.0.0.5/24``, as CNI's ``ips``
    capability passes it) of which only the address counts."""
    try:
        return ip_interface(text.strip()).ip
    except ValueError as err:
        raise IPAMError(f"requested address {text!r} is not an IP address", "invalid") from err


def annotation_list(annotations: Mapping[str, str], key: str) -> list[str] | None:
    """A Calico pod annotation holding a JSON list of strings; None when absent."""
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise IPAMError(
            f"pod annotation {key} is not valid JSON ({err.msg}): {raw!r}", "invalid"
        ) from err
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IPAMError(f"pod annotation {key} must be a JSON list of strings: {raw!r}", "invalid")
    return value


def wanted_families(
    node: str,
    req: IPAMAllocateRequest,
    requested: Sequence[str],
    available: Iterable[Family],
    what: str,
) -> dict[Family, IPAddress | None]:
    """Family → exact address asked for (None: any) of a request, in family order.

    ``families`` None means every family the node has, as for any pod of a dual-stack node; a
    requested address fixes the address of its family and the other families get any address
    (``requested=["10.0.0.9"]`` on a dual-stack node: that IPv4 address plus any IPv6 address;
    ``families=[4]`` for the IPv4 one alone). ``what`` names what the node lacks when a family
    is unavailable (``"pod CIDR"``, …).
    """
    have = set(available)
    exact: dict[Family, IPAddress] = {}
    for text in requested:
        addr = parse_address(text)
        fam = family_of(addr)
        if fam in exact:
            raise IPAMError(
                f"requested addresses {exact[fam]} and {addr} are both {family_name(fam)}:"
                " at most one address per family",
                "invalid",
            )
        exact[fam] = addr
    if req.families is not None:
        families = set(req.families)
        for fam, addr in exact.items():
            if fam not in families:
                raise IPAMError(
                    f"requested address {addr} is {family_name(fam)} but the request asks only"
                    f" for {', '.join(family_name(f) for f in sorted(families))}",
                    "invalid",
                )
    else:
        families = set(have) | set(exact)
    if not families:
        raise IPAMError(f"node {node} has no {what} in any family", "invalid")
    for fam in sorted(families):
        if fam not in have:
            subject = f"requested address {exact[fam]}" if fam in exact else "the request"
            raise IPAMError(
                f"{subject} needs {family_name(fam)} but node {node} has no {family_name(fam)}"
                f" {what}",
                "invalid",
            )
    return {fam: exact.get(fam) for fam in FAMILIES if fam in families}


def reuse_existing(
    owner: str, held: Mapping[Family, IPAddress], wanted: Mapping[Family, IPAddress | None]
) -> dict[Family, IPAddress | None]:
    """What is still to be allocated for a (possibly retried) request of an owner that already
    holds ``held``: families it holds are satisfied by what it holds (a retried CNI ADD must get
    the same addresses, not leak new ones), unless the request names a different address."""
    todo: dict[Family, IPAddress | None] = {}
    for fam, addr in wanted.items():
        have = held.get(fam)
        if have is None:
            todo[fam] = addr
        elif addr is not None and addr != have:
            raise IPAMError(
                f"owner {owner} already holds {have}; it cannot also get the requested {addr}"
                " (release it first)",
                "conflict",
            )
    return todo


def sort_allocations(allocs: Iterable[IPAllocation]) -> list[IPAllocation]:
    return sorted(allocs, key=lambda a: (a.owner, a.family, a.address))
