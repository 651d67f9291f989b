"""The documents as users write them: the shape of each policy kind, field by field.

These models mirror the CRDs (``cilium.io/v2`` ``CiliumNetworkPolicy`` and
``CiliumClusterwideNetworkPolicy``, generated from Cilium's ``pkg/policy/api``) and the
``networking.k8s.io/v1`` ``NetworkPolicy`` type, and check only what a schema can: which fields
exist (an unknown field is an error, as with ``kubectl apply``'s strict field validation), their
types (booleans are booleans, lists are lists) and enumerations. Everything that needs to look at
values together (selectors, CIDRs, ports, the rules Cilium's ``Validate`` enforces) is done while
translating to the normalized model, in :mod:`ciliary.policy.api.translate`.

Two Kubernetes habits are kept: a field set to ``null`` is the same as a field left out (the API
server prunes nulls before validating), and ``metadata`` accepts every ``ObjectMeta`` field, using
only name, namespace, labels and annotations.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from ciliary.policy.api.errors import show

__all__ = [
    "CiliumPolicyDocument",
    "CiliumRule",
    "EgressDenyRule",
    "EgressRule",
    "IngressDenyRule",
    "IngressRule",
    "LabelSelector",
    "Metadata",
    "NetworkPolicyDocument",
    "NetworkPolicyPeer",
    "NetworkPolicyPort",
    "PortRule",
]


def _int_or_string(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a number or a string, got {show(value)}")
    return value


IntOrString = Annotated[int | str, BeforeValidator(_int_or_string)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        alias_generator=to_camel,
        populate_by_name=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # The API server prunes null values of non-nullable fields before validation.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


# --------------------------------------------------------------------------------------------
# Shared


class Requirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(_Model):
    """A Kubernetes ``LabelSelector`` (Cilium's ``EndpointSelector`` has the same shape)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[Requirement] = Field(default_factory=list)


class Metadata(_Model):
    """``ObjectMeta``: name, namespace, labels and annotations are used, the rest ignored."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generate_name: Any = None
    self_link: Any = None
    uid: Any = None
    resource_version: Any = None
    generation: Any = None
    creation_timestamp: Any = None
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: Any = None
    owner_references: Any = None
    finalizers: Any = None
    managed_fields: Any = None


# --------------------------------------------------------------------------------------------
# Cilium (pkg/policy/api)


class Secret(_Model):
    name: str
    namespace: str | None = None


class TLSContext(_Model):
    secret: Secret
    trusted_ca: str | None = Field(default=None, alias="trustedCA")
    certificate: str | None = None
    private_key: str | None = None


class EnvoyConfig(_Model):
    kind: Literal["CiliumEnvoyConfig", "CiliumClusterwideEnvoyConfig"] | None = None
    name: str


class Listener(_Model):
    envoy_config: EnvoyConfig
    name: str
    priority: int | None = None


class HeaderMatch(_Model):
    mismatch: Literal["LOG", "ADD", "DELETE", "REPLACE"] | None = None
    name: str
    secret: Secret | None = None
    value: str | None = None


class HTTPRule(_Model):
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: list[str] = Field(default_factory=list)
    header_matches: list[HeaderMatch] = Field(default_factory=list)


class KafkaRule(_Model):
    role: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    client_id: str | None = Field(default=None, alias="clientID")
    topic: str | None = None


class FQDNSelector(_Model):
    """``toFQDNs`` entries and DNS L7 rules (``PortRuleDNS`` is an ``FQDNSelector``)."""

    match_name: str | None = None
    match_pattern: str | None = None


class L7Rules(_Model):
    http: list[HTTPRule] | None = None
    kafka: list[KafkaRule] | None = None
    dns: list[FQDNSelector] | None = None
    l7proto: str | None = Field(default=None, alias="l7proto")
    l7: list[dict[str, str]] | None = Field(default=None, alias="l7")


class PortProtocol(_Model):
    port: IntOrString | None = None
    end_port: int | None = None
    protocol: Literal["TCP", "UDP", "SCTP", "ANY"] | None = None


class PortRule(_Model):
    ports: list[PortProtocol] = Field(default_factory=list)
    rules: L7Rules | None = None
    terminating_tls: TLSContext | None = Field(default=None, alias="terminatingTLS")
    originating_tls: TLSContext | None = Field(default=None, alias="originatingTLS")
    server_names: list[str] = Field(default_factory=list)
    listener: Listener | None = None


class PortDenyRule(_Model):
    ports: list[PortProtocol] = Field(default_factory=list)


class ICMPField(_Model):
    family: Literal["IPv4", "IPv6"] = "IPv4"
    type: IntOrString


class ICMPRule(_Model):
    fields: list[ICMPField] = Field(default_factory=list)


class CIDRRule(_Model):
    cidr: str | None = None
    cidr_group_ref: str | None = None
    cidr_group_selector: LabelSelector | None = None
    except_: list[str] = Field(default_factory=list, alias="except")


class K8sService(_Model):
    service_name: str | None = None
    namespace: str | None = None


class K8sServiceSelector(_Model):
    selector: LabelSelector
    namespace: str | None = None


class Service(_Model):
    k8s_service: K8sService | None = Field(default=None, alias="k8sService")
    k8s_service_selector: K8sServiceSelector | None = Field(
        default=None, alias="k8sServiceSelector"
    )


class AWSGroup(_Model):
    labels: dict[str, str] = Field(default_factory=dict)
    security_groups_ids: list[str] = Field(default_factory=list)
    security_groups_names: list[str] = Field(default_factory=list)
    region: str | None = None


class Groups(_Model):
    aws: AWSGroup | None = None


class Authentication(_Model):
    mode: Literal["disabled", "required", "test-always-fail"]


class _IngressCommon(_Model):
    from_endpoints: list[LabelSelector] = Field(default_factory=list)
    from_requires: list[LabelSelector] = Field(default_factory=list)
    from_cidr: list[str] = Field(default_factory=list, alias="fromCIDR")
    from_cidr_set: list[CIDRRule] = Field(default_factory=list, alias="fromCIDRSet")
    from_entities: list[str] = Field(default_factory=list)
    from_nodes: list[LabelSelector] = Field(default_factory=list)
    from_groups: list[Groups] = Field(default_factory=list)
    icmps: list[ICMPRule] = Field(default_factory=list)


class IngressRule(_IngressCommon):
    to_ports: list[PortRule] = Field(default_factory=list)
    authentication: Authentication | None = None


class IngressDenyRule(_IngressCommon):
    to_ports: list[PortDenyRule] = Field(default_factory=list)


class _EgressCommon(_Model):
    to_endpoints: list[LabelSelector] = Field(default_factory=list)
    to_requires: list[LabelSelector] = Field(default_factory=list)
    to_cidr: list[str] = Field(default_factory=list, alias="toCIDR")
    to_cidr_set: list[CIDRRule] = Field(default_factory=list, alias="toCIDRSet")
    to_entities: list[str] = Field(default_factory=list)
    to_services: list[Service] = Field(default_factory=list)
    to_nodes: list[LabelSelector] = Field(default_factory=list)
    to_groups: list[Groups] = Field(default_factory=list)
    icmps: list[ICMPRule] = Field(default_factory=list)


class EgressRule(_EgressCommon):
    to_ports: list[PortRule] = Field(default_factory=list)
    to_fqdns: list[FQDNSelector] = Field(default_factory=list, alias="toFQDNs")
    authentication: Authentication | None = None


class EgressDenyRule(_EgressCommon):
    to_ports: list[PortDenyRule] = Field(default_factory=list)


class DefaultDeny(_Model):
    ingress: bool | None = None
    egress: bool | None = None


class RuleLabel(_Model):
    key: str
    value: str = ""
    source: str = ""


class Log(_Model):
    value: str | None = None


class CiliumRule(_Model):
    """A ``spec``/``specs`` entry (Cilium's ``api.Rule``)."""

    endpoint_selector: LabelSelector | None = None
    node_selector: LabelSelector | None = None
    ingress: list[IngressRule] = Field(default_factory=list)
    ingress_deny: list[IngressDenyRule] = Field(default_factory=list)
    egress: list[EgressRule] = Field(default_factory=list)
    egress_deny: list[EgressDenyRule] = Field(default_factory=list)
    labels: list[RuleLabel] = Field(default_factory=list)
    description: str = ""
    enable_default_deny: DefaultDeny = Field(default_factory=DefaultDeny)
    log: Log | None = None


class CiliumPolicyDocument(_Model):
    """A ``CiliumNetworkPolicy`` or ``CiliumClusterwideNetworkPolicy`` document."""

    api_version: str
    kind: str
    metadata: Metadata
    spec: CiliumRule | None = None
    specs: list[CiliumRule] | None = None
    status: Any = None


# --------------------------------------------------------------------------------------------
# Kubernetes (networking.k8s.io/v1)


class IPBlock(_Model):
    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")


class NetworkPolicyPeer(_Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


class NetworkPolicyPort(_Model):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: IntOrString | None = None
    end_port: int | None = None


class NetworkPolicyIngressRule(_Model):
    from_: list[NetworkPolicyPeer] = Field(default_factory=list, alias="from")
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicyEgressRule(_Model):
    to: list[NetworkPolicyPeer] = Field(default_factory=list)
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicySpec(_Model):
    pod_selector: LabelSelector
    policy_types: list[Literal["Ingress", "Egress"]] | None = None
    ingress: list[NetworkPolicyIngressRule] = Field(default_factory=list)
    egress: list[NetworkPolicyEgressRule] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _null_pod_selector(cls, data: Any) -> Any:
        # A null podSelector decodes to the empty selector in Kubernetes (a struct, not a
        # pointer); _drop_nulls would turn it into a missing field.
        if isinstance(data, dict) and "podSelector" in data and data["podSelector"] is None:
            return {**data, "podSelector": {}}
        return data


class NetworkPolicyDocument(_Model):
    api_version: str
    kind: str
    metadata: Metadata
    spec: NetworkPolicySpec
    status: Any = None
