"""EndpointSlice (``discovery.k8s.io/v1``) and the policy envelopes.

An EndpointSlice lists the ready addresses behind a Service, each with the node it lives on and
the pod it belongs to. NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy are
typed here only as envelopes (apiVersion, kind, metadata, the raw ``spec``/``specs``): their
bodies are parsed, validated and normalized by :mod:`ciliary.policy.api`, the one parser of
policy rules, which reads :meth:`PolicyEnvelope.to_json` as it reads a document from a file.
An envelope drops unknown top-level fields, as every object model does, so a policy being
*written* is checked by ``policy.api`` on the document as sent, where a typo is an error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ciliary.k8s.core import Protocol
from ciliary.k8s.meta import ObjectModel, TypedObject

__all__ = [
    "CiliumClusterwideNetworkPolicy",
    "CiliumNetworkPolicy",
    "Endpoint",
    "EndpointConditions",
    "EndpointPort",
    "EndpointSlice",
    "NetworkPolicy",
    "ObjectReference",
    "PolicyEnvelope",
]


class EndpointConditions(ObjectModel):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ObjectReference(ObjectModel):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class Endpoint(ObjectModel):
    addresses: list[str] = Field(min_length=1)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    hostname: str | None = None
    node_name: str | None = None
    target_ref: ObjectReference | None = None


class EndpointPort(ObjectModel):
    name: str | None = None
    protocol: Protocol = "TCP"
    port: int | None = Field(default=None, ge=1, le=65535)
    app_protocol: str | None = None


class EndpointSlice(TypedObject):
    api_version: Literal["discovery.k8s.io/v1"] = "discovery.k8s.io/v1"
    kind: Literal["EndpointSlice"] = "EndpointSlice"
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: list[Endpoint] = Field(default_factory=list)
    ports: list[EndpointPort] = Field(default_factory=list)

    @property
    def service_name(self) -> str | None:
        """The Service the slice belongs to (label ``kubernetes.io/service-name``)."""
        return self.metadata.labels.get("kubernetes.io/service-name")

    def ready_addresses(self) -> list[str]:
        """Addresses of endpoints not known to be unready (a nil ``ready`` means ready)."""
        return [
            address
            for endpoint in self.endpoints
            if endpoint.conditions.ready is not False
            for address in endpoint.addresses
        ]


class PolicyEnvelope(TypedObject):
    """A policy object with its rule body left raw for :mod:`ciliary.policy.api`."""

    spec: dict[str, Any] | None = None


class NetworkPolicy(PolicyEnvelope):
    api_version: Literal["networking.k8s.io/v1"] = "networking.k8s.io/v1"
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"


class CiliumNetworkPolicy(PolicyEnvelope):
    """``spec`` (one rule) and/or ``specs`` (several), as Cilium allows."""

    api_version: Literal["cilium.io/v2"] = "cilium.io/v2"
    kind: Literal["CiliumNetworkPolicy"] = "CiliumNetworkPolicy"
    specs: list[dict[str, Any]] | None = None


class CiliumClusterwideNetworkPolicy(PolicyEnvelope):
    api_version: Literal["cilium.io/v2"] = "cilium.io/v2"
    kind: Literal["CiliumClusterwideNetworkPolicy"] = "CiliumClusterwideNetworkPolicy"
    specs: list[dict[str, Any]] | None = None
