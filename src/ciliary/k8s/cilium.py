"""Cilium's state objects (``cilium.io/v2``): CiliumNode, CiliumIdentity, CiliumEndpoint, and
the per-node status agents write into each CiliumNetworkPolicy/CiliumClusterwideNetworkPolicy.

These are how Cilium agents tell each other, and the operator, what they own: a node its pod
CIDRs and addresses (CiliumNode), the cluster the label set behind an identity number
(CiliumIdentity, named by the number), and every endpoint its identity, addresses and node
(CiliumEndpoint). Field names are upstream's (``pkg/k8s/apis/cilium.io/v2``), some of them with
dashes (``security-labels``, ``named-ports``), which the aliases here keep.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ciliary.k8s.meta import ObjectModel, TypedObject

__all__ = [
    "AddressPair",
    "CiliumEndpoint",
    "CiliumIdentity",
    "CiliumNode",
    "CiliumNodeSpec",
    "EndpointIdentity",
    "EndpointNetworking",
    "EndpointPolicy",
    "EndpointStatus",
    "HealthAddressingSpec",
    "NamedPort",
    "NodeAddress",
    "NodeIPAMSpec",
    "PolicyDirection",
    "PolicyNodeStatus",
]


class NodeAddress(ObjectModel):
    type: Literal["InternalIP", "ExternalIP", "CiliumInternalIP"]
    ip: str


class NodeIPAMSpec(ObjectModel):
    pod_cidrs: list[str] = Field(default_factory=list, alias="podCIDRs")


class HealthAddressingSpec(ObjectModel):
    """The node's health endpoint addresses (upstream's ``spec.health``)."""

    ipv4: str | None = None
    ipv6: str | None = None


class CiliumNodeSpec(ObjectModel):
    addresses: list[NodeAddress] = Field(default_factory=list)
    health: HealthAddressingSpec | None = None
    ipam: NodeIPAMSpec = Field(default_factory=NodeIPAMSpec)


class CiliumNode(TypedObject):
    """One per node, named like the node."""

    api_version: Literal["cilium.io/v2"] = "cilium.io/v2"
    kind: Literal["CiliumNode"] = "CiliumNode"
    spec: CiliumNodeSpec = Field(default_factory=CiliumNodeSpec)


class CiliumIdentity(TypedObject):
    """A security identity: named by its number, ``security-labels`` maps ``source:key`` to value
    (``k8s:app: web``) — the label set whose pods share the identity."""

    api_version: Literal["cilium.io/v2"] = "cilium.io/v2"
    kind: Literal["CiliumIdentity"] = "CiliumIdentity"
    security_labels: dict[str, str] = Field(default_factory=dict, alias="security-labels")

    @property
    def number(self) -> int:
        return int(self.metadata.name)


class EndpointIdentity(ObjectModel):
    id: int
    labels: list[str] = Field(default_factory=list)


class AddressPair(ObjectModel):
    ipv4: str | None = None
    ipv6: str | None = None


class EndpointNetworking(ObjectModel):
    addressing: list[AddressPair] = Field(default_factory=list)
    node: str | None = None


class NamedPort(ObjectModel):
    name: str
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP", "ANY"] = "TCP"


class PolicyDirection(ObjectModel):
    enforcing: bool = False


class EndpointPolicy(ObjectModel):
    """Whether policy is enforced per direction (upstream's ``EndpointPolicyStatus``)."""

    ingress: PolicyDirection = Field(default_factory=PolicyDirection)
    egress: PolicyDirection = Field(default_factory=PolicyDirection)


class EndpointStatus(ObjectModel):
    id: int | None = None
    identity: EndpointIdentity | None = None
    networking: EndpointNetworking | None = None
    state: str | None = None
    policy: EndpointPolicy | None = None
    named_ports: list[NamedPort] = Field(default_factory=list, alias="named-ports")


class CiliumEndpoint(TypedObject):
    """One per pod endpoint, named and namespaced like the pod; all of it is ``status``."""

    api_version: Literal["cilium.io/v2"] = "cilium.io/v2"
    kind: Literal["CiliumEndpoint"] = "CiliumEndpoint"
    status: EndpointStatus = Field(default_factory=EndpointStatus)


class PolicyNodeStatus(ObjectModel):
    """One node's entry in a Cilium policy's ``status.nodes`` (upstream's
    ``CiliumNetworkPolicyNodeStatus``): ``ok`` once parsed and in the node's repository (else
    ``error`` says why, and the policy is not enforced there); ``enforcing`` once the endpoints
    present have been regenerated with it; ``localPolicyRevision`` the node's repository revision
    that first held it; ``annotations`` the policy's annotations that version carried."""

    ok: bool = False
    error: str | None = None
    last_updated: str | None = None
    local_policy_revision: int | None = None
    enforcing: bool = False
    annotations: dict[str, str] | None = None
