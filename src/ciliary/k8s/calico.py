"""Calico's IPAM documents, typed once: ``IPPool`` and ``IPAMConfiguration``, and its pod
annotations.

The lab validates these documents when it reads a lab file, and the agent validates them again
when it reads them from the cluster store (a document may have been written by anyone). Each used
to have its own model, and they disagreed: the agent took pool names that are not DNS-1123
subdomains, IPv6 CIDRs with zones, and IPAMConfigurations of any name; the lab refused Calico's
own ``disableBGPExport`` and ``LoadBalancer`` use. Now both read this one model, with Calico's
fields and defaults and the stricter checks, and report problems in the same words.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ciliary.core.yamldoc import show
from ciliary.k8s.calicoselector import Selector, parse_selector, selector_text
from ciliary.k8s.fields import (
    Annotations,
    DNSSubdomain,
    FieldProblemError,
    Labels,
    StrictModel,
)

__all__ = [
    "CALICO_API_VERSION",
    "IPV4_POOLS_ANNOTATION",
    "IPV6_POOLS_ANNOTATION",
    "REQUESTED_IPS_ANNOTATION",
    "EncapsulationMode",
    "IPAMConfiguration",
    "IPAMConfigurationMetadata",
    "IPAMConfigurationSpec",
    "IPPool",
    "IPPoolMetadata",
    "IPPoolSpec",
    "PoolUse",
    "default_ipam_configuration",
]

CALICO_API_VERSION: Final = "projectcalico.org/v3"
REQUESTED_IPS_ANNOTATION = "cni.projectcalico.org/ipAddrs"
"""Calico's pod annotation: a JSON list of the addresses the pod asks for (one per family)."""
IPV4_POOLS_ANNOTATION = "cni.projectcalico.org/ipv4pools"
"""Calico's pod annotation (``pools`` mode): a JSON list of the IPv4 pools to allocate from."""
IPV6_POOLS_ANNOTATION = "cni.projectcalico.org/ipv6pools"
"""Calico's pod annotation (``pools`` mode): a JSON list of the IPv6 pools to allocate from."""


_LINK_LOCAL: dict[int, IPv4Network | IPv6Network] = {
    4: IPv4Network("169.254.0.0/16"),
    6: IPv6Network("fe80::/10"),
}


def _pool_cidr(value: object) -> object:
    expected = "expected an IPv4 or IPv6 CIDR like 10.244.0.0/16 or fd00:10:244::/64"
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got {show(value)}")
    text = value.strip()
    if "/" not in text:
        raise ValueError(f"{expected}, got {show(value)} (no prefix length)")
    if "%" in text:
        raise ValueError(f"{expected}, got {show(value)} (a pool has no zone)")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{expected}, got {show(value)} ({exc})") from None
    link_local = _LINK_LOCAL[network.version]
    if network.overlaps(link_local):
        raise ValueError(
            f"{network} overlaps the IPv{network.version} link-local range {link_local}"
            " (pod addresses cannot be link-local)"
        )
    return network


EncapsulationMode: TypeAlias = Literal["Never", "Always", "CrossSubnet"]
PoolUse: TypeAlias = Literal["Workload", "Tunnel", "LoadBalancer"]
PoolCIDR = Annotated[IPv4Network | IPv6Network, BeforeValidator(_pool_cidr)]
NodeSelector = Annotated[str, AfterValidator(selector_text)]


def _all_uses() -> list[PoolUse]:
    return ["Workload", "Tunnel"]


_BLOCK_SIZES: dict[int, tuple[int, int, int]] = {4: (20, 32, 26), 6: (116, 128, 122)}
"""Per family: the smallest and largest block prefix length Calico accepts, and its default."""


class IPPoolMetadata(StrictModel):
    name: DNSSubdomain
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)


class IPPoolSpec(StrictModel):
    """The ``spec`` of an IPPool, with Calico's fields and defaults."""

    cidr: PoolCIDR
    block_size: int = Field(default=None, validate_default=True)
    ipip_mode: EncapsulationMode = "Never"
    vxlan_mode: EncapsulationMode = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    node_selector: NodeSelector = "all()"
    allowed_uses: list[PoolUse] = Field(default_factory=_all_uses, min_length=1)
    assignment_mode: Literal["Automatic", "Manual"] = "Automatic"
    disable_bgp_export: bool = Field(default=False, alias="disableBGPExport")

    @field_validator("block_size", mode="before")
    @classmethod
    def _default_block_size(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            return value
        cidr = info.data.get("cidr")
        return _BLOCK_SIZES[cidr.version if isinstance(cidr, IPv6Network) else 4][2]

    @field_validator("block_size")
    @classmethod
    def _check_block_size(cls, value: int, info: ValidationInfo) -> int:
        cidr = info.data.get("cidr")
        if not isinstance(cidr, IPv4Network | IPv6Network):
            return value
        smallest, largest, _ = _BLOCK_SIZES[cidr.version]
        if not smallest <= value <= largest:
            raise ValueError(
                f"expected a block size between {smallest} and {largest} for an"
                f" IPv{cidr.version} pool, got {show(value)}"
            )
        return value

    @field_validator("allowed_uses")
    @classmethod
    def _unique_uses(cls, uses: list[str]) -> list[str]:
        for i, use in enumerate(uses):
            if use in uses[:i]:
                raise FieldProblemError(f"{use} is given twice", i)
        return uses

    @model_validator(mode="after")
    def _check_pool(self) -> IPPoolSpec:
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            raise FieldProblemError(
                f"ipipMode and vxlanMode cannot both be enabled (ipipMode is {self.ipip_mode});"
                " set one of them to Never",
                "vxlanMode",
            )
        if self.cidr.version == 6 and self.ipip_mode != "Never":
            raise FieldProblemError(
                "expected Never for an IPv6 pool (IPIP carries IPv4 only; use vxlanMode), got"
                f" {show(self.ipip_mode)}",
                "ipipMode",
            )
        if self.block_size < self.cidr.prefixlen:
            if "block_size" in self.model_fields_set:
                raise FieldProblemError(
                    f"expected a block size of at least the pool's prefix length"
                    f" {self.cidr.prefixlen} (a block lies inside the pool), got"
                    f" {show(self.block_size)}",
                    "blockSize",
                )
            raise FieldProblemError(
                f"{self.cidr} is smaller than one block (/{self.block_size}, the default"
                f" blockSize for IPv{self.cidr.version}); set blockSize to at least"
                f" {self.cidr.prefixlen}",
                "cidr",
            )
        return self


class IPPool(StrictModel):
    """An ``IPPool`` document (``projectcalico.org/v3``): a range pods take addresses from.

    ``crd.projectcalico.org/v1`` (Calico's CRD storage) is the same document. :meth:`to_calico_json`
    is the document in Calico's JSON shape."""

    api_version: Literal["projectcalico.org/v3", "crd.projectcalico.org/v1"] = CALICO_API_VERSION
    kind: Literal["IPPool"] = "IPPool"
    metadata: IPPoolMetadata
    spec: IPPoolSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def cidr(self) -> IPv4Network | IPv6Network:
        return self.spec.cidr

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.spec.cidr.version

    @property
    def block_size(self) -> int:
        """The prefix length of the pool's blocks (``spec.blockSize``, defaulted per family)."""
        return self.spec.block_size

    @property
    def enabled(self) -> bool:
        return not self.spec.disabled

    @property
    def for_workloads(self) -> bool:
        """Whether pods may take addresses from it (``allowedUses`` has Workload)."""
        return "Workload" in self.spec.allowed_uses

    @property
    def automatic(self) -> bool:
        """Whether pods that name no pool take addresses from it (``assignmentMode``)."""
        return self.spec.assignment_mode == "Automatic"

    @property
    def selector(self) -> Selector:
        """``spec.nodeSelector``, parsed."""
        return parse_selector(self.spec.node_selector)

    def selects(self, node_labels: Mapping[str, str]) -> bool:
        """Whether the pool's ``nodeSelector`` selects a node with these labels."""
        return self.selector.matches(node_labels)

    def describe(self) -> str:
        """``IP pool 'name' (cidr)``, as errors name a pool."""
        return f"IP pool {self.name!r} ({self.cidr})"

    def to_calico_json(self) -> dict[str, Any]:
        """The document as Calico stores it: apiVersion, kind, metadata, spec (defaults filled)."""
        return self.model_dump(by_alias=True, mode="json")


def _ipam_configuration_name(value: str) -> str:
    if value != "default":
        raise ValueError(
            f"expected 'default' (Calico reads one IPAMConfiguration, named default), got"
            f" {show(value)}"
        )
    return value


class IPAMConfigurationMetadata(StrictModel):
    name: Annotated[str, AfterValidator(_ipam_configuration_name)]
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)


class IPAMConfigurationSpec(StrictModel):
    """Calico's IPAM settings: block affinity and how many blocks a node may take."""

    strict_affinity: bool = False
    max_blocks_per_host: int = Field(default=20, ge=0, le=2**31 - 1)
    """0 means unlimited."""
    auto_allocate_blocks: bool = True


class IPAMConfiguration(StrictModel):
    """The ``IPAMConfiguration`` document (``projectcalico.org/v3``), named ``default``.

    Calico's CRD storage names it ``IPAMConfig`` (``crd.projectcalico.org/v1``); both are read.
    Absent, Calico's defaults hold (:func:`default_ipam_configuration`)."""

    api_version: Literal["projectcalico.org/v3", "crd.projectcalico.org/v1"] = CALICO_API_VERSION
    kind: Literal["IPAMConfiguration", "IPAMConfig"] = "IPAMConfiguration"
    metadata: IPAMConfigurationMetadata
    spec: IPAMConfigurationSpec = Field(default_factory=IPAMConfigurationSpec)

    def to_calico_json(self) -> dict[str, Any]:
        """The document as Calico stores it: apiVersion, kind, metadata, spec (defaults filled)."""
        return self.model_dump(by_alias=True, mode="json")


def default_ipam_configuration() -> IPAMConfiguration:
    """The configuration Calico uses when there is no IPAMConfiguration document."""
    return IPAMConfiguration(metadata=IPAMConfigurationMetadata(name="default"))
