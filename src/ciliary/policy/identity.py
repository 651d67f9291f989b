"""Security identities as the policy engine sees them: a number and the labels it stands for.

Policy selects peers by labels, the datapath matches them by number, and an identity is the bridge:
every allocated label set (a pod's ``k8s:`` labels and namespace), every reserved peer kind (the
host, the world, the other nodes...) and every CIDR the policy names has one. This module holds
Cilium's numbering and labels for them (``pkg/identity/numericidentity.go``,
``pkg/labels/cidr.go``) and what each policy *entity* means over identities
(``pkg/policy/api/entity.go``), so the selector cache can answer "which identities does this peer
select" by looking at labels alone.

Reserved identities (Cilium's numbers, labels as Cilium gives them):

====  =======================================================  ====================================
id    labels                                                   meaning
====  =======================================================  ====================================
1     ``reserved:host``                                        this node (and host-network pods)
2     ``reserved:world``                                       outside the cluster (single stack)
3     ``reserved:unmanaged``                                   endpoints Cilium does not manage
4     ``reserved:health``                                      the health endpoint
5     ``reserved:init``                                        endpoints without labels yet
6     ``reserved:remote-node``                                 every other node
7     ``reserved:kube-apiserver``, ``reserved:remote-node``    the API server
8     ``reserved:ingress``                                     the ingress proxy
9     ``reserved:world-ipv4``, ``reserved:world``              IPv4 outside the cluster
10    ``reserved:world-ipv6``, ``reserved:world``              IPv6 outside the cluster
====  =======================================================  ====================================

The datapath uses 9 and 10 for traffic from unknown addresses (Cilium's dual-stack numbering,
``bpf/lib/ipcache.h``); 2 exists for completeness. Pods get numbers from 256 up; CIDR (and later
FQDN) identities are node-local, ``1 << 24 | n``.

CIDR identities carry ``cidr:<net>`` for the prefix *and every shorter prefix containing it*
(``cidr:10.1.0.0/16`` also has ``cidr:10.0.0.0/8`` ... ``cidr:0.0.0.0/0``), plus ``reserved:world``
and ``reserved:world-ipv4``/``-ipv6``: so a selector on ``cidr:10.0.0.0/8`` selects every CIDR
identity inside 10/8 by a plain label match, as Cilium's ``GetCIDRLabels`` arranges. IPv6 prefixes
are written with ``-`` for ``:`` (``cidr:2001-db8--/32``), as Cilium writes them, because ``:``
separates a label's source from its key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Final

from ciliary.core.flow import MIN_ALLOCATED_IDENTITY, ReservedIdentity
from ciliary.policy.api.model import Entity, Network

__all__ = [
    "CLUSTER_RESERVED_IDS",
    "LABEL_HOST",
    "LABEL_REMOTE_NODE",
    "LABEL_WORLD",
    "LABEL_WORLD_IPV4",
    "LABEL_WORLD_IPV6",
    "LOCAL_IDENTITY_FLAG",
    "RESERVED_IDENTITIES",
    "RESERVED_LABELS",
    "WILDCARD_IDENTITY",
    "Identity",
    "cidr_identity",
    "cidr_label",
    "cidr_labels",
    "entity_selects",
    "is_cluster_identity",
    "is_local_identity",
    "reserved_identity",
]

WILDCARD_IDENTITY: Final = 0
"""Identity 0: "unknown" as a peer, "any peer" as a policy map key."""
LOCAL_IDENTITY_FLAG: Final = 1 << 24
"""Node-local (CIDR, FQDN) identities are ``LOCAL_IDENTITY_FLAG | n`` (Cilium's
``LocalIdentityFlag``)."""

LABEL_HOST: Final = "reserved:host"
LABEL_WORLD: Final = "reserved:world"
LABEL_WORLD_IPV4: Final = "reserved:world-ipv4"
LABEL_WORLD_IPV6: Final = "reserved:world-ipv6"
LABEL_REMOTE_NODE: Final = "reserved:remote-node"


@dataclass(frozen=True, slots=True)
class Identity:
    """A numeric identity and its security labels (Cilium label strings: ``k8s:app=web``,
    ``reserved:host``, ``cidr:10.0.0.0/8``)."""

    id: int
    labels: frozenset[str]

    def __post_init__(self) -> None:
        if not 0 < self.id < 1 << 32:
            raise ValueError(f"identity {self.id} outside 1..2^32-1 (0 is the wildcard)")
        if not isinstance(self.labels, frozenset):
            object.__setattr__(self, "labels", frozenset(self.labels))

    @classmethod
    def of(cls, id: int, labels: Iterable[str]) -> Identity:
        return cls(id, frozenset(labels))

    @property
    def is_reserved(self) -> bool:
        return self.id < MIN_ALLOCATED_IDENTITY

    @property
    def is_local(self) -> bool:
        return is_local_identity(self.id)

    def __str__(self) -> str:
        return f"{self.id} ({', '.join(sorted(self.labels)) or 'no labels'})"


RESERVED_LABELS: Final[dict[int, frozenset[str]]] = {
    ReservedIdentity.HOST: frozenset({LABEL_HOST}),
    ReservedIdentity.WORLD: frozenset({LABEL_WORLD}),
    ReservedIdentity.UNMANAGED: frozenset({"reserved:unmanaged"}),
    ReservedIdentity.HEALTH: frozenset({"reserved:health"}),
    ReservedIdentity.INIT: frozenset({"reserved:init"}),
    ReservedIdentity.REMOTE_NODE: frozenset({LABEL_REMOTE_NODE}),
    ReservedIdentity.KUBE_APISERVER: frozenset({"reserved:kube-apiserver", LABEL_REMOTE_NODE}),
    ReservedIdentity.INGRESS: frozenset({"reserved:ingress"}),
    ReservedIdentity.WORLD_IPV4: frozenset({LABEL_WORLD_IPV4, LABEL_WORLD}),
    ReservedIdentity.WORLD_IPV6: frozenset({LABEL_WORLD_IPV6, LABEL_WORLD}),
}
"""The labels of each reserved identity (``pkg/identity/numericidentity.go``)."""

RESERVED_IDENTITIES: Final[tuple[Identity, ...]] = tuple(
    Identity(int(number), labels) for number, labels in sorted(RESERVED_LABELS.items())
)

CLUSTER_RESERVED_IDS: Final[frozenset[int]] = frozenset(
    {
        ReservedIdentity.HOST,
        ReservedIdentity.UNMANAGED,
        ReservedIdentity.HEALTH,
        ReservedIdentity.INIT,
        ReservedIdentity.REMOTE_NODE,
        ReservedIdentity.KUBE_APISERVER,
        ReservedIdentity.INGRESS,
    }
)
"""Reserved identities inside the ``cluster`` entity (``EntitySelectorMapping[EntityCluster]``)."""

_ENTITY_LABEL: Final[dict[str, str]] = {
    "world": LABEL_WORLD,
    "world-ipv4": LABEL_WORLD_IPV4,
    "world-ipv6": LABEL_WORLD_IPV6,
    "host": LABEL_HOST,
    "remote-node": LABEL_REMOTE_NODE,
    "init": "reserved:init",
    "health": "reserved:health",
    "unmanaged": "reserved:unmanaged",
    "kube-apiserver": "reserved:kube-apiserver",
    "ingress": "reserved:ingress",
}


def reserved_identity(which: int | str) -> Identity:
    """A reserved identity by number (``1``) or name (``host``, ``world-ipv4``)."""
    if isinstance(which, str):
        number = int(ReservedIdentity[which.upper().replace("-", "_")])
    else:
        number = int(which)
    labels = RESERVED_LABELS.get(number)
    if labels is None:
        raise KeyError(f"no reserved identity {which!r}")
    return Identity(number, labels)


def is_local_identity(number: int) -> bool:
    """Whether ``number`` is a node-local (CIDR/FQDN) identity."""
    return bool(number & LOCAL_IDENTITY_FLAG)


def is_cluster_identity(number: int) -> bool:
    """Whether the ``cluster`` entity covers ``number``: the cluster's reserved identities (host,
    remote-node, kube-apiserver, init, health, unmanaged, ingress) and every allocated (pod)
    identity, 256 up to the node-local range."""
    return number in CLUSTER_RESERVED_IDS or MIN_ALLOCATED_IDENTITY <= number < LOCAL_IDENTITY_FLAG


def cidr_label(prefix: Network | str) -> str:
    """The ``cidr:`` label of one prefix (masked): ``cidr:10.0.0.0/8``, ``cidr:2001-db8--/32``."""
    network = ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
    text = str(network)
    if network.version == 6:
        text = text.replace(":", "-")
    return f"cidr:{text}"


def cidr_labels(prefix: Network | str) -> frozenset[str]:
    """The labels of a CIDR identity: ``cidr:`` for the prefix and every supernet down to /0, plus
    ``reserved:world`` and the family's ``reserved:world-ipv4``/``-ipv6``."""
    network: IPv4Network | IPv6Network = (
        ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
    )
    labels = {cidr_label(network.supernet(new_prefix=n)) for n in range(network.prefixlen + 1)}
    labels.add(LABEL_WORLD)
    labels.add(LABEL_WORLD_IPV4 if network.version == 4 else LABEL_WORLD_IPV6)
    return frozenset(labels)


def cidr_identity(n: int, prefix: Network | str) -> Identity:
    """The ``n``-th node-local CIDR identity (``1 << 24 | n``) for ``prefix``."""
    if not 0 < n < LOCAL_IDENTITY_FLAG:
        raise ValueError(f"local identity index {n} outside 1..2^24-1")
    return Identity(LOCAL_IDENTITY_FLAG | n, cidr_labels(prefix))


def entity_selects(entity: Entity, identity: Identity) -> bool:
    """Whether a ``from/toEntities`` entity selects ``identity``.

    ``all`` selects everything (identity 0 in the policy map), ``none`` nothing, ``cluster`` see
    :func:`is_cluster_identity`; every other entity selects the identities carrying its reserved
    label: ``world`` = 2, 9, 10 and every CIDR identity; ``remote-node`` = 6 and 7 (the API server
    carries ``reserved:remote-node`` too, as in Cilium).
    """
    if entity == "all":
        return True
    if entity == "none":
        return False
    if entity == "cluster":
        return is_cluster_identity(identity.id)
    return _ENTITY_LABEL[entity] in identity.labels
