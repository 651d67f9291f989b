"""The lab file: a Kubernetes-style multi-document YAML file, parsed and checked before any change.

A lab is described the way a cluster is: one ``Lab`` document (``ciliary.io/v1alpha1``) naming the
nodes and the pod address pools, then ``Namespace`` and ``Pod`` documents (``v1``) with the fields
Kubernetes gives them. Building a lab creates namespaces, veths and BPF state, so every mistake must
be caught here, before anything is created, and reported so that it can be fixed without guessing:
each problem is one line naming the file, the document, the dotted path of the field and what was
expected (``lab.yaml: document 2 (Pod shop/web): spec.containers[0].comand: unknown field``).
A container's ``image`` is optional here, unlike in the API: the lab runs a container's
``command``, and gives a container without an image the placeholder ``ciliary.io/lab-process``
(``kubeapi.LAB_PROCESS_IMAGE``) when it applies the file. The Lab's ``spec.images`` maps an
image to the command (and args) the lab's kubelet role runs for a container with that image and
no command (``{image: redis:7, command: [redis-server], args: [--port, "6379"]}``), also for the
file's own Pods; every container of a file's Pod has a command or a mapped image, checked when
the whole file is (the mapping is in the Lab document), as the kubelet role would refuse any
other (``ImageWithoutCommand``).

Unknown fields are errors (every model forbids extras), values have Kubernetes' types and syntax
(names are DNS-1123 labels, label keys and values follow the label rules), and the checks that span
documents (duplicates, undeclared namespaces or nodes, requested addresses outside the node's pod
CIDR) run after every document has been read. Policy documents are not understood here: their kinds
are registered as *deferred* and kept as raw mappings for the policy layer to parse.

IPAM has two modes. In ``cluster-pool`` mode (the default) node pod CIDRs are derived the way
Cilium's operator does, deterministically: node *i* (file order) gets the *i*-th subnet of the
configured mask size of the first pool CIDR. In ``pools`` mode addresses come from Calico-style
``IPPool`` documents (``projectcalico.org/v3``), carved into blocks that nodes take on demand, with
an optional ``IPAMConfiguration`` (both typed in :mod:`ciliary.k8s.calico`, which the agent reads
them with too); a pool's ``nodeSelector`` (a Calico selector, :mod:`ciliary.k8s.calicoselector`)
picks the nodes, by their ``labels``, that allocate from it automatically.
There are no node CIDRs in that mode, so pod address requests are checked against the pools.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from ciliary.core.yamldoc import YAMLDocumentError, load_documents
from ciliary.core.yamldoc import show as _show
from ciliary.k8s import core
from ciliary.k8s.calico import (
    CALICO_API_VERSION,
    IPV4_POOLS_ANNOTATION,
    IPV6_POOLS_ANNOTATION,
    REQUESTED_IPS_ANNOTATION,
    IPAMConfiguration,
    IPAMConfigurationMetadata,
    IPAMConfigurationSpec,
    IPPool,
    IPPoolMetadata,
    IPPoolSpec,
    default_ipam_configuration,
)
from ciliary.k8s.fields import (
    Annotations,
    FieldProblemError,
    Labels,
    ObjectName,
    StrictModel,
    dns_label,
    error_message,
    format_path,
)
from ciliary.lab import nodenetwork

__all__ = [
    "CALICO_API_VERSION",
    "CORE_API_VERSION",
    "DEFAULT_SCENARIO",
    "DEFERRED_KINDS",
    "IMPLICIT_NAMESPACES",
    "IPV4_POOLS_ANNOTATION",
    "IPV6_POOLS_ANNOTATION",
    "LAB_API_VERSION",
    "REQUESTED_IPS_ANNOTATION",
    "Container",
    "ContainerPort",
    "CrashLoopBackOffSpec",
    "EnvVar",
    "ExternalSpec",
    "IPAMConfiguration",
    "IPAMConfigurationMetadata",
    "IPAMConfigurationSpec",
    "IPAMMode",
    "IPAMSpec",
    "IPPool",
    "IPPoolMetadata",
    "IPPoolSpec",
    "KubeletSpec",
    "LabBody",
    "LabFile",
    "LabFileError",
    "LabMetadata",
    "LabSpec",
    "Namespace",
    "NamespaceMetadata",
    "NodeCIDRs",
    "NodeNetworkSpec",
    "NodeSpec",
    "PodBody",
    "PodMetadata",
    "PodSpec",
    "RawDocument",
    "load_default",
    "load_lab_file",
    "node_cidrs",
    "parse_documents",
    "parse_lab_text",
    "register_deferred_kind",
    "with_running_pods",
]

LAB_API_VERSION: Final = "ciliary.io/v1alpha1"
CORE_API_VERSION: Final = "v1"
IMPLICIT_NAMESPACES: tuple[str, ...] = ("default", "kube-system")
"""Namespaces that exist in every lab without a Namespace document, as in every cluster."""

LAB_NAME_MAX = 20  # the lab name prefixes network namespace names
NODE_NAME_MAX = 15  # node names become interface names (IFNAMSIZ - 1)

IPAddress: TypeAlias = IPv4Address | IPv6Address

DEFERRED_KINDS: dict[str, frozenset[str]] = {
    "CiliumNetworkPolicy": frozenset({"cilium.io/v2"}),
    "CiliumClusterwideNetworkPolicy": frozenset({"cilium.io/v2"}),
    "NetworkPolicy": frozenset({"networking.k8s.io/v1"}),
}
"""Kinds this module accepts without understanding them, by kind, with their apiVersions.

Documents of these kinds are kept as :class:`RawDocument` in :attr:`LabFile.other_documents` for
the layer that owns them (policy) to parse; any other unknown kind is an error."""


API_KINDS: dict[str, str] = {
    "Service": "v1",
    "ConfigMap": "v1",
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "EndpointSlice": "discovery.k8s.io/v1",
}
"""Kubernetes kinds a lab file may hold that the lab hands to its API server as they are, as
``kubectl apply -f`` does: the API server validates them (its refusal names the document's field
and fails the whole ``lab up``/``lab apply``), the controllers make their pods, Services get
their cluster IPs. This module checks only kind, apiVersion, ``metadata.name`` and that the
namespace exists; they are :attr:`LabFile.api_documents`."""


def register_deferred_kind(kind: str, *api_versions: str) -> None:
    """Accept documents of ``kind`` (with one of ``api_versions``) as raw, deferred documents."""
    if not api_versions:
        raise ValueError(f"register_deferred_kind({kind!r}): give at least one apiVersion")
    DEFERRED_KINDS[kind] = DEFERRED_KINDS.get(kind, frozenset()) | frozenset(api_versions)


# --------------------------------------------------------------------------------------------
# Errors


def _one_line(text: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


class LabFileError(Exception):
    """A lab file that cannot be used. ``str()`` is the first problem, on one line.

    ``problems`` holds every problem found (one line each, the first equal to ``str(self)``), so a
    front end can show them all at once.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        lines = [problems] if isinstance(problems, str) else list(problems)
        if not lines:
            raise ValueError("LabFileError needs at least one problem")
        self.problems: list[str] = [_one_line(p) for p in lines]
        super().__init__(self.problems[0])

    def __str__(self) -> str:
        return self.problems[0]


# --------------------------------------------------------------------------------------------
# Value syntax (Kubernetes' rules)


def _network(family: int) -> Callable[[object], object]:
    cls: type[IPv4Network | IPv6Network] = IPv4Network if family == 4 else IPv6Network
    example = "10.200.0.0/16" if family == 4 else "fd00:10:200::/104"

    def parse(value: object) -> object:
        if not isinstance(value, str):
            raise ValueError(f"expected an IPv{family} CIDR like {example}, got {_show(value)}")
        try:
            return cls(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(
                f"expected an IPv{family} CIDR like {example}, got {_show(value)} ({exc})"
            ) from None

    return parse


LabName = Annotated[str, AfterValidator(dns_label(LAB_NAME_MAX))]
NodeName = Annotated[str, AfterValidator(dns_label(NODE_NAME_MAX))]
V4Network = Annotated[IPv4Network, BeforeValidator(_network(4))]
V6Network = Annotated[IPv6Network, BeforeValidator(_network(6))]


def _parse_requested_ips(value: str) -> list[IPAddress]:
    """Parse the requested-IPs annotation: a JSON list of at most one address per family."""
    expected = 'expected a JSON list of addresses like ["10.200.0.50", "fd00:10:200::32"]'
    try:
        items = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError(f"{expected}, got {_show(value)} (not JSON)") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{expected}, got {_show(value)}")
    addresses: list[IPAddress] = []
    for item in items:
        try:
            address = ipaddress.ip_address(item.strip())
        except ValueError:
            raise ValueError(f"{expected}: {_show(item)} is not an IP address") from None
        if isinstance(address, IPv6Address) and address.scope_id:
            raise ValueError(f"{expected}: {_show(item)} has a zone, pod addresses have none")
        if any(a.version == address.version for a in addresses):
            raise ValueError(
                f"{expected}: more than one IPv{address.version} address (a pod has one per family)"
            )
        addresses.append(address)
    return addresses


_POOLS_EXPECTED = 'expected a JSON list of IP pool names like ["pool-a", "pool-b"]'


def _parse_pool_names(value: str) -> list[str]:
    """Parse an ``ipv4pools``/``ipv6pools`` annotation: a JSON list of pool names."""
    try:
        items = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError(f"{_POOLS_EXPECTED}, got {_show(value)} (not JSON)") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{_POOLS_EXPECTED}, got {_show(value)}")
    return list(items)


# --------------------------------------------------------------------------------------------
# Models


class NodeSpec(StrictModel):
    """One node of the lab (a network namespace on this machine).

    ``labels`` are the node's Kubernetes labels; in ``pools`` mode IP pools select nodes by them
    (``nodeSelector``), and the lab gives them to the node's agent."""

    name: NodeName
    labels: Labels = Field(default_factory=dict)


IPAMMode: TypeAlias = Literal["cluster-pool", "pools"]


class IPAMSpec(StrictModel):
    """How pod addresses are allocated.

    ``cluster-pool`` (the default), with Cilium's option names: each node gets a pod CIDR cut
    from the pool; an empty pool list disables that family. ``pools``: addresses come from the
    file's ``IPPool`` documents (:attr:`LabFile.ip_pools`); the ``clusterPool*`` options must not
    be given, and the model holds empty cluster pools (no node CIDRs, see :func:`node_cidrs`).
    """

    mode: IPAMMode = "cluster-pool"
    cluster_pool_ipv4_pod_cidr_list: list[V4Network] = Field(
        default_factory=lambda: [IPv4Network("10.200.0.0/16")], alias="clusterPoolIPv4PodCIDRList"
    )
    cluster_pool_ipv4_mask_size: int = Field(default=24, alias="clusterPoolIPv4MaskSize")
    cluster_pool_ipv6_pod_cidr_list: list[V6Network] = Field(
        default_factory=lambda: [IPv6Network("fd00:10:200::/104")],
        alias="clusterPoolIPv6PodCIDRList",
    )
    cluster_pool_ipv6_mask_size: int = Field(default=120, alias="clusterPoolIPv6MaskSize")

    @field_validator("cluster_pool_ipv4_mask_size")
    @classmethod
    def _check_v4_mask(cls, value: int, info: ValidationInfo) -> int:
        return _check_mask(value, info.data.get("cluster_pool_ipv4_pod_cidr_list"), 4)

    @field_validator("cluster_pool_ipv6_mask_size")
    @classmethod
    def _check_v6_mask(cls, value: int, info: ValidationInfo) -> int:
        return _check_mask(value, info.data.get("cluster_pool_ipv6_pod_cidr_list"), 6)

    @model_validator(mode="before")
    @classmethod
    def _no_cluster_pool_in_pools_mode(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("mode") != "pools":
            return data
        for name, info in cls.model_fields.items():
            for key in (info.alias, name):
                if name != "mode" and key in data:
                    raise FieldProblemError(
                        "only valid with mode cluster-pool (in mode pools, addresses come from"
                        " IPPool documents)",
                        str(key),
                    )
        return {**data, "clusterPoolIPv4PodCIDRList": [], "clusterPoolIPv6PodCIDRList": []}

    @model_serializer(mode="wrap")
    def _dump_without_cluster_pool_in_pools_mode(
        self, handler: SerializerFunctionWrapHandler
    ) -> Any:
        data = handler(self)
        if self.mode == "pools" and isinstance(data, dict):
            for name, info in type(self).model_fields.items():
                if name != "mode":
                    data.pop(name, None)
                    data.pop(info.alias, None)
        return data

    @model_validator(mode="after")
    def _one_family(self) -> IPAMSpec:
        if self.mode != "cluster-pool":
            return self
        if not self.cluster_pool_ipv4_pod_cidr_list and not self.cluster_pool_ipv6_pod_cidr_list:
            raise ValueError(
                "expected at least one of clusterPoolIPv4PodCIDRList and"
                " clusterPoolIPv6PodCIDRList to be non-empty"
            )
        return self

    @property
    def ipv4_pool(self) -> IPv4Network | None:
        """The pool node IPv4 CIDRs are cut from (the first of the list), None if disabled."""
        pools = self.cluster_pool_ipv4_pod_cidr_list
        return pools[0] if pools else None

    @property
    def ipv6_pool(self) -> IPv6Network | None:
        pools = self.cluster_pool_ipv6_pod_cidr_list
        return pools[0] if pools else None

    def capacity(self) -> int:
        """How many nodes the pools can give a pod CIDR to (the smaller of the families).

        Only for ``cluster-pool`` mode: in ``pools`` mode nodes take blocks on demand and
        :class:`ValueError` is raised."""
        if self.mode != "cluster-pool":
            raise ValueError("capacity(): mode pools has no node CIDRs (nodes take blocks)")
        sizes = []
        if self.ipv4_pool is not None:
            sizes.append(1 << (self.cluster_pool_ipv4_mask_size - self.ipv4_pool.prefixlen))
        if self.ipv6_pool is not None:
            sizes.append(1 << (self.cluster_pool_ipv6_mask_size - self.ipv6_pool.prefixlen))
        return min(sizes)


def _check_mask(value: int, pools: object, family: int) -> int:
    bits, largest = (32, 30) if family == 4 else (128, 126)
    smallest = 1
    if isinstance(pools, list) and pools:
        smallest = max(p.prefixlen for p in pools if isinstance(p, (IPv4Network, IPv6Network)))
    if not smallest <= value <= largest:
        why = f"the pool prefix is /{smallest}" if smallest > 1 else f"{bits}-bit addresses"
        raise ValueError(
            f"expected a mask size between {smallest} and {largest} ({why}; a node CIDR needs room"
            f" for the network and router addresses and a pod), got {_show(value)}"
        )
    return value


class LabMetadata(StrictModel):
    name: LabName


_HUBBLE_METRIC_NAMES = frozenset(
    {"dns", "drop", "tcp", "flow", "port-distribution", "icmp", "policy", "flows-to-world",
     "http", "httpV2", "kafka"}
)  # fmt: skip


_DEFAULT_HUBBLE_METRICS = ("dns", "drop", "tcp", "flow", "port-distribution", "icmp", "policy")


def _hubble_metric(text: str) -> str:
    name = text.split(":", 1)[0]
    if name not in _HUBBLE_METRIC_NAMES:
        raise ValueError(
            f"unknown Hubble metric {name!r} (expected one of "
            f"{', '.join(sorted(_HUBBLE_METRIC_NAMES))}, optionally with ':option=value;...')"
        )
    return text


def _capacity(value: int) -> int:
    if not 1 <= value <= 65535 or (value + 1) & value:
        raise ValueError(f"{value} is not 2^n-1 between 1 and 65535 (e.g. 4095, 8191, 65535)")
    return value


def _listen_address(text: str) -> str:
    if text == "":
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:4245, :4245)")
    if host not in ("", "localhost") and not host.startswith("127.") and host != "[::1]":
        raise ValueError(f"{text!r}: the relay listens on loopback only (127.0.0.1, [::1])")
    return text


class HubbleRelaySpec(StrictModel):
    """The lab's Hubble Relay (one per lab, in the root netns)."""

    enabled: bool = True
    listen_address: Annotated[str, AfterValidator(_listen_address)] = ""
    """``""``: a root-only unix socket in the lab's directory; a loopback ``host:port`` (port 0:
    a free one) serves TLS and requires client certificates (the lab's CA issues them)."""


class HubbleExportSpec(StrictModel):
    """Flow export to JSON lines on each node (upstream's ``hubble-export-file-*``)."""

    enabled: bool = False
    max_size_mb: int = Field(default=10, ge=1)
    max_backups: int = Field(default=5, ge=0)


class HubbleSpec(StrictModel):
    """Hubble on every node of the lab, with the metrics a Helm install usually enables."""

    enabled: bool = True
    event_buffer_capacity: Annotated[int, AfterValidator(_capacity)] = 4095
    metrics: list[Annotated[str, AfterValidator(_hubble_metric)]] = Field(
        default_factory=lambda: [*_DEFAULT_HUBBLE_METRICS]
    )
    relay: HubbleRelaySpec = Field(default_factory=HubbleRelaySpec)
    export: HubbleExportSpec = Field(default_factory=HubbleExportSpec)


class SocketLBSpec(StrictModel):
    """Socket-LB (Helm's ``socketLB.enabled``, the agent's ``--bpf-lb-sock``): each node's agent
    translates its pods' connect()/sendmsg() to a Service in the socket (bpf_sock.c on the
    node's cgroup) instead of per packet at tc. On by default, as Cilium's with
    kubeProxyReplacement; ``enabled: false`` leaves Services to the tc-level load balancer
    (per-packet DNAT, which labs testing that path pin)."""

    enabled: bool = True


class ImageCommand(StrictModel):
    """What the lab runs for ``image`` (``spec.images[]``): a container with that image and no
    ``command`` gets this ``command`` (and these ``args`` when it has none), as the image's
    entrypoint would run in Kubernetes; the lab has no images to read one from."""

    image: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    args: list[str] = Field(default_factory=list)


def _lab_network(net: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    why = nodenetwork.usable(net)
    if why is not None:
        raise ValueError(f"expected a subnet for the nodes' interfaces: {why}")
    return net


class NodeNetworkSpec(StrictModel):
    """The Lab's ``spec.nodeNetwork``: the lab network's subnets (``lab.nodenetwork``), kind's
    by default; its first address is the network's own, the nodes' follow in file order."""

    ipv4: Annotated[V4Network, AfterValidator(_lab_network)] = nodenetwork.DEFAULT_IPV4
    ipv6: Annotated[V6Network, AfterValidator(_lab_network)] = nodenetwork.DEFAULT_IPV6


def _host_address(value: object) -> object:
    expected = "expected an IP address like 172.18.0.100 or fc00:f853:ccd:e793::100"
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got {_show(value)}")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{expected}, got {_show(value)}") from None


HostAddress = Annotated[IPv4Address | IPv6Address, BeforeValidator(_host_address)]


class ExternalSpec(StrictModel):
    """A host of the world outside the cluster (``spec.externals[]``): a network namespace on
    the lab network with its addresses (at most one per family; by default from the top of
    ``nodeNetwork``) and an optional command (``command`` + ``args``) running in it, such as a
    server for pods to reach. Its name is its port's on the bridge, so it differs from every
    node's."""

    name: NodeName
    addresses: list[HostAddress] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)

    @field_validator("addresses")
    @classmethod
    def _one_per_family(cls, addresses: list[IPAddress]) -> list[IPAddress]:
        for i, address in enumerate(addresses):
            if any(a.version == address.version for a in addresses[:i]):
                raise FieldProblemError(
                    f"a second IPv{address.version} address (a host has one per family)", i
                )
        return addresses

    def argv(self) -> list[str]:
        return [*self.command, *self.args]


class DNSAnswer(StrictModel):
    """One answer the agents' DNS cache starts with: ``fqdn`` resolved to ``ips`` for ``ttl``
    seconds from ``lab up`` (toFQDNs rules select those IPs)."""

    fqdn: str = Field(min_length=1, max_length=255)
    ips: list[IPv4Address | IPv6Address] = Field(min_length=1)
    ttl: int = Field(default=3600, ge=0)

    @field_validator("ips", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> Any:
        if isinstance(value, list):  # strict mode takes no strings for addresses: parse them
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(ipaddress.ip_address(v) if isinstance(v, str) else v)
                except ValueError:
                    raise FieldProblemError(f"expected an IP address, got {_show(v)}", i) from None
            return out
        return value


class DNSProxySpec(StrictModel):
    """Helm's ``dnsProxy``: ``preCache`` (upstream a file path, ``--tofqdns-pre-cache``; here the
    answers themselves, so a lab file stays one file), ``minTtl`` (``--tofqdns-min-ttl``),
    ``idleConnectionGracePeriod`` (``--tofqdns-idle-connection-grace-period``; seconds here,
    upstream a duration) and ``maxDeferredConnectionDeletes``
    (``--tofqdns-max-deferred-connection-deletes``): how expired answers' IPs are kept while
    connections use them."""

    pre_cache: list[DNSAnswer] = Field(default_factory=list)
    min_ttl: int = Field(default=0, ge=0)
    idle_connection_grace_period: float = Field(default=0.0, ge=0, le=3600)
    max_deferred_connection_deletes: int = Field(default=10000, ge=0)


class CrashLoopBackOffSpec(StrictModel):
    """KubeletConfiguration's ``crashLoopBackOff`` (Kubernetes' KubeletCrashLoopBackOffMax):
    ``maxContainerRestartPeriod``, 1 to 300 s (seconds here, upstream a duration), caps the
    restart back-off, which still starts at 10 s and doubles; one shorter than 10 s is also the
    first delay, so every restart waits it. The lab's kubelet role (pods' containers) and its
    supervisor (the agents, etcd, the API server and the cluster processes) both keep it."""

    max_container_restart_period: float = Field(default=300.0, ge=1, le=300)


class KubeletSpec(StrictModel):
    """The lab's kubelet configuration: the KubeletConfiguration fields the lab honours."""

    crash_loop_back_off: CrashLoopBackOffSpec = Field(default_factory=CrashLoopBackOffSpec)


class LabBody(StrictModel):
    """The ``spec`` of the Lab document. The lab network and the routing between nodes use
    Cilium's Helm names: ``routingMode`` (``tunnel``: VXLAN on ``tunnelPort``; ``native``: pod
    CIDRs routed on the lab network, which has no router but the nodes, so it needs
    ``autoDirectNodeRoutes``), ``ipv4NativeRoutingCIDR``/``ipv6NativeRoutingCIDR``."""

    ipam: IPAMSpec = Field(default_factory=IPAMSpec)
    monitor_aggregation: Literal["none", "medium"] = "medium"
    hubble: HubbleSpec = Field(default_factory=HubbleSpec)
    socket_lb: SocketLBSpec = Field(default_factory=SocketLBSpec, alias="socketLB")
    dns_proxy: DNSProxySpec = Field(default_factory=DNSProxySpec)
    images: list[ImageCommand] = Field(default_factory=list)
    nodes: list[NodeSpec] = Field(min_length=1)
    node_network: NodeNetworkSpec = Field(default_factory=NodeNetworkSpec)
    routing_mode: nodenetwork.RoutingMode = "tunnel"
    auto_direct_node_routes: bool = False
    ipv4_native_routing_cidr: V4Network | None = Field(default=None, alias="ipv4NativeRoutingCIDR")
    ipv6_native_routing_cidr: V6Network | None = Field(default=None, alias="ipv6NativeRoutingCIDR")
    tunnel_port: int = Field(default=nodenetwork.DEFAULT_TUNNEL_PORT, ge=1, le=65535)
    externals: list[ExternalSpec] = Field(default_factory=list)
    health_check_interval: float = Field(default=60.0, gt=0, le=3600)
    """Seconds between two rounds of the agents' cluster health probes (ciliary's; upstream
    probes every 60 s): a short one lets a lab see a node become unreachable at once."""
    conntrack_gc_interval: float = Field(default=30.0, gt=0, le=3600, alias="conntrackGCInterval")
    """Helm's ``conntrackGCInterval`` (``--conntrack-gc-interval``; seconds here): a short one
    lets a lab see an expired DNS answer's IP leave soon after its last connection closed."""
    kubelet: KubeletSpec = Field(default_factory=KubeletSpec)

    @field_validator("images")
    @classmethod
    def _check_images(cls, images: list[ImageCommand]) -> list[ImageCommand]:
        first: dict[str, int] = {}
        for i, entry in enumerate(images):
            if entry.image in first:
                raise FieldProblemError(
                    f"duplicate image {entry.image!r} (also spec.images[{first[entry.image]}])",
                    i,
                    "image",
                )
            first[entry.image] = i
        return images

    @field_validator("nodes")
    @classmethod
    def _check_nodes(cls, nodes: list[NodeSpec], info: ValidationInfo) -> list[NodeSpec]:
        first: dict[str, int] = {}
        for i, node in enumerate(nodes):
            if node.name in first:
                raise FieldProblemError(
                    f"duplicate node name {node.name!r} (also spec.nodes[{first[node.name]}])",
                    i,
                    "name",
                )
            first[node.name] = i
        ipam = info.data.get("ipam")
        if (
            isinstance(ipam, IPAMSpec)
            and ipam.mode == "cluster-pool"
            and len(nodes) > ipam.capacity()
        ):
            pools = []
            if ipam.ipv4_pool is not None:
                pools.append(f"{ipam.ipv4_pool} in /{ipam.cluster_pool_ipv4_mask_size} subnets")
            if ipam.ipv6_pool is not None:
                pools.append(f"{ipam.ipv6_pool} in /{ipam.cluster_pool_ipv6_mask_size} subnets")
            raise ValueError(
                f"{len(nodes)} nodes do not fit in the pod CIDR pool ({' and '.join(pools)}"
                f" holds {ipam.capacity()} nodes)"
            )
        return nodes

    @model_validator(mode="after")
    def _check_network(self) -> LabBody:
        """The lab network holds the nodes and is not the pods'; native routing has a router."""
        if self.routing_mode == "native" and not self.auto_direct_node_routes:
            raise FieldProblemError(
                "expected true with routingMode native: the lab network has no router but the"
                " nodes, so each node must route the others' pod CIDRs via their node IPs",
                "autoDirectNodeRoutes",
            )
        if self.routing_mode == "tunnel" and self.auto_direct_node_routes:
            raise FieldProblemError(
                "only valid with routingMode native (in tunnel mode pod traffic between nodes"
                " goes through the tunnel, as in Cilium)",
                "autoDirectNodeRoutes",
            )
        net = self.node_network
        hosts = len(self.nodes) + len(self.externals)
        for family, subnet in (("ipv4", net.ipv4), ("ipv6", net.ipv6)):
            room = nodenetwork.capacity(subnet)
            if hosts > room:
                world = f" and {len(self.externals)} externals" if self.externals else ""
                raise FieldProblemError(
                    f"{len(self.nodes)} nodes{world} do not fit in {subnet}: it has room for"
                    f" {room} (its first address is the lab network's own)",
                    "nodeNetwork",
                    family,
                )
        self._check_externals()
        pools: list[tuple[str, IPv4Network | IPv6Network, Sequence[IPv4Network | IPv6Network]]]
        pools = [
            ("ipv4", net.ipv4, self.ipam.cluster_pool_ipv4_pod_cidr_list),
            ("ipv6", net.ipv6, self.ipam.cluster_pool_ipv6_pod_cidr_list),
        ]
        for family, subnet, cidrs in pools:
            field = f"clusterPoolIP{family[2:]}PodCIDRList"
            for i, cidr in enumerate(cidrs):
                if _overlap(subnet, cidr):
                    raise FieldProblemError(
                        f"{subnet} overlaps the pod CIDR pool spec.ipam.{field}[{i}] ({cidr}):"
                        " node and pod addresses must differ",
                        "nodeNetwork",
                        family,
                    )
        return self

    def _check_externals(self) -> None:
        """World hosts: names apart from the nodes' and each other's, addresses on the lab
        network apart from its own, the nodes' and each other's."""
        net = self.node_network
        names = {n.name: f"node spec.nodes[{i}]" for i, n in enumerate(self.nodes)}
        for i, ext in enumerate(self.externals):
            if ext.name in names:
                raise FieldProblemError(
                    f"duplicate name {ext.name!r} (also {names[ext.name]}; a host's name is its"
                    " port on the lab network's bridge)",
                    "externals",
                    i,
                    "name",
                )
            names[ext.name] = f"spec.externals[{i}]"
        plan = nodenetwork.external_addresses(
            net.ipv4, net.ipv6, [(e.name, e.addresses) for e in self.externals]
        )
        taken = {
            a.ip: f"node {n}"
            for n, addrs in nodenetwork.node_addresses(
                net.ipv4, net.ipv6, [n.name for n in self.nodes]
            ).items()
            for a in (addrs.ipv4, addrs.ipv6)
        }
        own = nodenetwork.gateway(net.ipv4, net.ipv6)
        taken[own.ipv4.ip] = taken[own.ipv6.ip] = "the lab network's own address"
        for i, ext in enumerate(self.externals):
            for address in (plan[ext.name].ipv4, plan[ext.name].ipv6):
                asked = address.ip in ext.addresses
                where: tuple[str | int, ...] = ("externals", i, "addresses")
                if asked:
                    where += (ext.addresses.index(address.ip),)
                subnet = net.ipv4 if address.version == 4 else net.ipv6
                if address.ip not in subnet or address.ip in (
                    subnet.network_address,
                    subnet.broadcast_address if address.version == 4 else None,
                ):
                    raise FieldProblemError(
                        f"{address.ip} is not a host address of spec.nodeNetwork.ipv"
                        f"{address.version} ({subnet}): a world host is on the lab network",
                        *where,
                    )
                if address.ip in taken:
                    raise FieldProblemError(
                        f"{address.ip} is {taken[address.ip]}"
                        + ("" if asked else " (the default from the top of the subnet)"),
                        *where,
                    )
                taken[address.ip] = f"also spec.externals[{i}] ({ext.name})"


class LabSpec(StrictModel):
    """The ``Lab`` document: the lab's name, its nodes and how pod addresses are allocated."""

    api_version: Literal["ciliary.io/v1alpha1"] = LAB_API_VERSION
    kind: Literal["Lab"] = "Lab"
    metadata: LabMetadata
    spec: LabBody

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def nodes(self) -> list[NodeSpec]:
        return self.spec.nodes

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.spec.nodes]

    @property
    def ipam(self) -> IPAMSpec:
        return self.spec.ipam


class NamespaceMetadata(StrictModel):
    name: ObjectName
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)


class Namespace(StrictModel):
    """A ``Namespace`` document; its labels select pods in policies (``namespaceSelector``)."""

    api_version: Literal["v1"] = CORE_API_VERSION
    kind: Literal["Namespace"] = "Namespace"
    metadata: NamespaceMetadata

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels


class EnvVar(core.EnvVar, StrictModel):
    """``core.EnvVar``, strict: a lab file's unknown field is a typo."""


class ContainerPort(core.ContainerPort, StrictModel):
    """``core.ContainerPort``, strict."""


class Container(core.Container, StrictModel):
    """``core.Container``, strict: a command line run in the pod's network namespace, as its
    ``securityContext`` user, in its ``workingDir``, under the pod's ``resources.limits``
    (``lab.podsandbox``)."""

    env: Sequence[EnvVar] = Field(default_factory=list)
    ports: Sequence[ContainerPort] = Field(default_factory=list)


class Volume(core.Volume, StrictModel):
    """``core.Volume``, strict: of the sources a lab pod can mount, ``emptyDir``
    (``lab.podsandbox``); another source is an unknown field here."""


class PodMetadata(StrictModel):
    name: ObjectName
    namespace: ObjectName = "default"
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)

    @field_validator("annotations")
    @classmethod
    def _check_requested_ips(cls, annotations: dict[str, str]) -> dict[str, str]:
        value = annotations.get(REQUESTED_IPS_ANNOTATION)
        if value is not None:
            try:
                _parse_requested_ips(value)
            except ValueError as exc:
                raise FieldProblemError(str(exc), REQUESTED_IPS_ANNOTATION) from None
        for key in (IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION):
            value = annotations.get(key)
            if value is not None:
                try:
                    _parse_pool_names(value)
                except ValueError as exc:
                    raise FieldProblemError(str(exc), key) from None
        return annotations


class PodBody(StrictModel):
    """The ``spec`` of a Pod document (Kubernetes' ``PodSpec``)."""

    node_name: NodeName | None = None
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    termination_grace_period_seconds: int = Field(default=30, ge=0, le=2**63 - 1)
    security_context: core.PodSecurityContext | None = None
    containers: list[Container] = Field(min_length=1)
    volumes: list[Volume] = Field(default_factory=list)
    host_network: bool = False
    """Run in the node's network namespace: no sandbox, no CNI, the node's IPs (kubelet's)."""

    @field_validator("containers")
    @classmethod
    def _check_containers(cls, containers: list[Container]) -> list[Container]:
        first: dict[str, int] = {}
        for i, container in enumerate(containers):
            if container.name in first:
                raise FieldProblemError(
                    f"duplicate container name {container.name!r}"
                    f" (also spec.containers[{first[container.name]}])",
                    i,
                    "name",
                )
            first[container.name] = i
        for i, container in enumerate(containers):
            if not container.argv() and not container.image:
                raise FieldProblemError(
                    "expected a command (command or args), e.g. command: [ciliary, workload,"
                    " pause], or an image that the Lab's spec.images maps to one",
                    i,
                    "command",
                )
        return containers


class PodSpec(StrictModel):
    """A ``Pod`` document. In a :class:`LabFile` its namespace and node are resolved."""

    api_version: Literal["v1"] = CORE_API_VERSION
    kind: Literal["Pod"] = "Pod"
    metadata: PodMetadata
    spec: PodBody

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> str:
        """``namespace/name``, unique in a lab."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels

    @property
    def annotations(self) -> dict[str, str]:
        return self.metadata.annotations

    @property
    def containers(self) -> list[Container]:
        return self.spec.containers

    @property
    def node_name(self) -> str:
        """The node the pod runs on. Always set for pods of a :class:`LabFile`."""
        if self.spec.node_name is None:
            raise RuntimeError(f"pod {self.key} has not been assigned a node")
        return self.spec.node_name

    def with_node(self, node_name: str) -> PodSpec:
        return self.model_copy(
            update={"spec": self.spec.model_copy(update={"node_name": node_name})}
        )

    def requested_ips(self) -> list[IPAddress]:
        """Addresses asked for with the ``cni.projectcalico.org/ipAddrs`` annotation."""
        value = self.metadata.annotations.get(REQUESTED_IPS_ANNOTATION)
        return [] if value is None else _parse_requested_ips(value)

    def requested_pools(self, version: int) -> list[str] | None:
        """The IPv``version`` pools named by ``cni.projectcalico.org/ipv{4,6}pools``, in order;
        None without the annotation (``pools`` mode: the pod takes from the automatic pools)."""
        key = IPV4_POOLS_ANNOTATION if version == 4 else IPV6_POOLS_ANNOTATION
        value = self.metadata.annotations.get(key)
        return None if value is None else _parse_pool_names(value)

    def argv(self) -> list[str]:
        """The command line to run in the pod: the first container with a command."""
        for container in self.spec.containers:
            if container.argv():
                return container.argv()
        raise RuntimeError(f"pod {self.key} has no container with a command")

    def main_container(self) -> Container:
        """The container whose command :meth:`argv` runs."""
        for container in self.spec.containers:
            if container.argv():
                return container
        raise RuntimeError(f"pod {self.key} has no container with a command")

    def env(self) -> dict[str, str]:
        """The environment :meth:`argv` runs with (its container's ``env``, later entries win)."""
        return {var.name: var.value for var in self.main_container().env}

    def working_dir(self) -> str | None:
        """The directory :meth:`argv` runs in (its container's ``workingDir``), if given."""
        return self.main_container().working_dir

    def named_ports(self) -> dict[str, ContainerPort]:
        """Declared ports by name, across containers (the first declaration of a name wins)."""
        ports: dict[str, ContainerPort] = {}
        for container in self.spec.containers:
            for port in container.ports:
                if port.name is not None:
                    ports.setdefault(port.name, port)
        return ports


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """A document of a deferred kind (a policy), kept as read for the layer that understands it."""

    filename: str
    index: int  # 1-based position in the file
    api_version: str
    kind: str
    name: str | None
    namespace: str | None
    body: dict[str, Any]

    @property
    def where(self) -> str:
        """``FILE: document N (Kind ns/name)``, the prefix of a one-line error about it."""
        return _where(self.filename, self.index, _describe(self.body))


@dataclasses.dataclass(frozen=True)
class LabFile:
    """A checked lab file: the lab, namespaces, pods (namespace and node resolved), and the rest.

    ``ip_pools`` and ``ipam_config`` are the file's IPPool documents (file order) and its
    IPAMConfiguration (Calico's defaults when it has none); in ``cluster-pool`` mode there are no
    pools. In a :class:`LabFile` of documents added to a running lab they are the running lab's.
    """

    lab: LabSpec
    namespaces: list[Namespace]
    pods: list[PodSpec]
    other_documents: list[RawDocument]
    """The policy documents (:data:`DEFERRED_KINDS`), for the policy layer."""
    filename: str = "<lab>"
    ip_pools: list[IPPool] = dataclasses.field(default_factory=list)
    ipam_config: IPAMConfiguration = dataclasses.field(default_factory=default_ipam_configuration)
    api_documents: list[RawDocument] = dataclasses.field(default_factory=list)
    """Documents of :data:`API_KINDS` (Services, Deployments…), for the API server as they are."""

    @property
    def ipam_mode(self) -> IPAMMode:
        """``cluster-pool`` (node CIDRs, :func:`node_cidrs`) or ``pools`` (:attr:`ip_pools`)."""
        return self.lab.ipam.mode

    def ip_pool(self, name: str) -> IPPool:
        """The IP pool ``name``."""
        for pool in self.ip_pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def namespace_names(self) -> list[str]:
        """Declared namespaces, then the implicit ones that were not declared."""
        names = [ns.name for ns in self.namespaces]
        return names + [n for n in IMPLICIT_NAMESPACES if n not in names]

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of a namespace (empty for an undeclared implicit one)."""
        for ns in self.namespaces:
            if ns.name == name:
                return ns.labels
        if name in IMPLICIT_NAMESPACES:
            return {}
        raise KeyError(name)

    def pod(self, key: str) -> PodSpec:
        """The pod ``namespace/name``."""
        for pod in self.pods:
            if pod.key == key:
                return pod
        raise KeyError(key)

    def pods_on(self, node_name: str) -> list[PodSpec]:
        return [p for p in self.pods if p.node_name == node_name]


# --------------------------------------------------------------------------------------------
# Node CIDRs


@dataclasses.dataclass(frozen=True)
class NodeCIDRs:
    """A node's pod CIDRs and router (gateway) addresses, per family (None when disabled)."""

    ipv4: IPv4Network | None
    ipv6: IPv6Network | None
    ipv4_router: IPv4Address | None
    ipv6_router: IPv6Address | None


def node_cidrs(lab: LabSpec | LabFile) -> dict[str, NodeCIDRs]:
    """Each node's pod CIDRs, as Cilium's operator allocates them in cluster-pool mode.

    Node *i* (0-based, file order) gets the *i*-th subnet of ``clusterPoolIPv{4,6}MaskSize`` of the
    first CIDR of each pool; its router address is the first host address of that subnet. In
    ``pools`` mode nodes have no CIDR: every node is present with all four values None.
    """
    spec = lab.lab if isinstance(lab, LabFile) else lab
    ipam = spec.ipam
    result: dict[str, NodeCIDRs] = {}
    for i, node in enumerate(spec.nodes):
        v4 = v6 = None
        if ipam.ipv4_pool is not None:
            mask = ipam.cluster_pool_ipv4_mask_size
            start = int(ipam.ipv4_pool.network_address) + (i << (32 - mask))
            v4 = IPv4Network((start, mask))
        if ipam.ipv6_pool is not None:
            mask = ipam.cluster_pool_ipv6_mask_size
            start = int(ipam.ipv6_pool.network_address) + (i << (128 - mask))
            v6 = IPv6Network((start, mask))
        result[node.name] = NodeCIDRs(
            ipv4=v4,
            ipv6=v6,
            ipv4_router=None if v4 is None else v4.network_address + 1,
            ipv6_router=None if v6 is None else v6.network_address + 1,
        )
    return result


def with_running_pods(
    base: LabFile,
    pods: Iterable[tuple[str, str, str | None, str | None]],
    *,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> LabFile:
    """``base`` as the lab runs now, to check documents applied to it (``parse_documents``).

    ``pods`` are the running pods as ``(namespace, name, ipv4, ipv6)`` with the addresses they
    actually have: the result's pods are exactly these, each the file's pod when the file has it,
    else a stand-in for a pod applied later (placed on the node whose CIDR holds its address; on
    the first node in ``pools`` mode, where nodes have no CIDR), and
    their requested addresses are replaced by the running ones, so that a new pod cannot ask for an
    address already in use. ``namespaces`` (name -> labels) adds namespaces applied later.
    """
    by_key = {pod.key: pod for pod in base.pods}
    cidrs = node_cidrs(base.lab)
    running: list[PodSpec] = []
    for namespace, name, *addresses in pods:
        ips: list[str] = []
        for text in addresses:
            if text:
                with contextlib.suppress(ValueError):
                    ips.append(str(ipaddress.ip_interface(text).ip))
        pod = by_key.get(f"{namespace}/{name}")
        if pod is None:
            node = next(
                (
                    n
                    for n, c in cidrs.items()
                    if any(
                        ipaddress.ip_address(ip) in net
                        for ip in ips
                        for net in (c.ipv4, c.ipv6)
                        if net is not None
                    )
                ),
                base.lab.node_names[0],
            )
            pod = PodSpec.model_validate(
                {
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "nodeName": node,
                        "containers": [{"name": "running", "command": ["<running>"]}],
                    },
                },
                strict=False,
            )
        annotations = {k: v for k, v in pod.annotations.items() if k != REQUESTED_IPS_ANNOTATION}
        if ips:
            annotations[REQUESTED_IPS_ANNOTATION] = json.dumps(ips)
        metadata = pod.metadata.model_copy(update={"annotations": annotations})
        running.append(pod.model_copy(update={"metadata": metadata}))
    declared = list(base.namespaces)
    known = {ns.name for ns in declared}
    for ns_name, labels in (namespaces or {}).items():
        if ns_name not in known:
            known.add(ns_name)
            declared.append(
                Namespace.model_validate({"metadata": {"name": ns_name, "labels": dict(labels)}})
            )
    return dataclasses.replace(base, namespaces=declared, pods=running)


# --------------------------------------------------------------------------------------------
# Reading YAML


def _load_yaml(text: str, filename: str) -> list[tuple[int, object]]:
    """The documents of a YAML stream as (1-based index, value), empty documents left out."""
    try:
        return load_documents(text, filename)
    except YAMLDocumentError as err:
        raise LabFileError(str(err)) from None


# --------------------------------------------------------------------------------------------
# Documents

_KnownDocument: TypeAlias = LabSpec | Namespace | PodSpec | IPPool | IPAMConfiguration
_KNOWN_KINDS: dict[str, tuple[str, type[_KnownDocument]]] = {
    "Lab": (LAB_API_VERSION, LabSpec),
    "Namespace": (CORE_API_VERSION, Namespace),
    "Pod": (CORE_API_VERSION, PodSpec),
    "IPPool": (CALICO_API_VERSION, IPPool),
    "IPAMConfiguration": (CALICO_API_VERSION, IPAMConfiguration),
}

_NAME_LIKE = re.compile(r"[\w.\-/]{1,80}")


def _name_text(value: str) -> str:
    return value if _NAME_LIKE.fullmatch(value) else _show(value)


def _describe(doc: dict[Any, Any]) -> str | None:
    """``Pod shop/web``-like description of a raw document, from whatever it has."""
    kind = doc.get("kind")
    if not isinstance(kind, str):
        return None
    kind = _name_text(kind)
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    name = _name_text(name) if isinstance(name, str) else None
    if name is None:
        return kind
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    if isinstance(namespace, str):
        name = f"{_name_text(namespace)}/{name}"
    elif (
        kind == "Pod"
        or kind in API_KINDS
        or (kind in DEFERRED_KINDS and kind != "CiliumClusterwideNetworkPolicy")
    ):
        name = f"default/{name}"
    return f"{kind} {name}"


def _where(filename: str, index: int, description: str | None) -> str:
    return f"{filename}: document {index}" + (f" ({description})" if description else "")


@dataclasses.dataclass(frozen=True)
class _Doc:
    index: int
    where: str
    value: _KnownDocument | RawDocument


def _parse_document(doc: object, filename: str, index: int) -> _Doc:
    """Validate one document on its own; raise LabFileError with all its problems."""
    if not isinstance(doc, dict):
        raise LabFileError(
            f"{_where(filename, index, None)}: expected a mapping (an object with apiVersion,"
            f" kind, metadata), got {_show(doc)}"
        )
    where = _where(filename, index, _describe(doc))
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if kind is None:
        raise LabFileError(f"{where}: kind: required field is missing")
    if not isinstance(kind, str):
        raise LabFileError(f"{where}: kind: expected a string, got {_show(kind)}")
    if kind in _KNOWN_KINDS:
        api_versions = frozenset({_KNOWN_KINDS[kind][0]})
    elif kind in DEFERRED_KINDS:
        api_versions = DEFERRED_KINDS[kind]
    elif kind in API_KINDS:
        api_versions = frozenset({API_KINDS[kind]})
    else:
        known = ", ".join([*_KNOWN_KINDS, *sorted(DEFERRED_KINDS), *sorted(API_KINDS)])
        raise LabFileError(f"{where}: kind: unknown kind {_show(kind)} (expected one of {known})")
    wanted = " or ".join(repr(v) for v in sorted(api_versions))
    if api_version is None:
        raise LabFileError(f"{where}: apiVersion: required field is missing (expected {wanted})")
    if not isinstance(api_version, str) or api_version not in api_versions:
        raise LabFileError(
            f"{where}: apiVersion: expected {wanted} for kind {kind}, got {_show(api_version)}"
        )
    if kind in DEFERRED_KINDS or kind in API_KINDS:
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict):
            raise LabFileError(f"{where}: metadata: expected a mapping, got {_show(metadata)}")
        name = metadata.get("name")
        namespace = metadata.get("namespace")
        if not isinstance(name, str):
            raise LabFileError(f"{where}: metadata.name: expected a string, got {_show(name)}")
        if namespace is not None and not isinstance(namespace, str):
            raise LabFileError(
                f"{where}: metadata.namespace: expected a string, got {_show(namespace)}"
            )
        raw = RawDocument(filename, index, str(api_version), kind, name, namespace, doc)
        return _Doc(index, where, raw)
    model = _KNOWN_KINDS[kind][1]
    try:
        value = model.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, message = error_message(err)
            path = format_path(loc)
            problems.append(f"{where}: {path}: {message}" if path else f"{where}: {message}")
        raise LabFileError(problems) from None
    return _Doc(index, where, value)


_IPS_PATH = format_path(["metadata", "annotations", REQUESTED_IPS_ANNOTATION])


def parse_documents(
    text: str, filename: str, *, require_lab: bool, base: LabFile | None = None
) -> LabFile:
    """Parse and check a lab file, or (``require_lab=False``) documents to add to a lab.

    With ``require_lab`` the text must hold exactly one Lab document. Without it (``lab apply``)
    the documents are checked against ``base``, the running lab: its nodes, namespaces, pods,
    requested addresses and IP pools count for duplicates, ``nodeName`` and address checks, and
    the returned :class:`LabFile` holds ``base.lab``, ``base.ip_pools``, ``base.ipam_config`` and
    only the new documents (IPPool and IPAMConfiguration documents cannot be added). Round-robin
    node assignment continues after the base's pods. Raises :class:`LabFileError`.
    """
    docs = _load_yaml(text, filename)
    if not docs:
        what = "a Lab document" if require_lab or base is None else "documents to add to the lab"
        raise LabFileError(f"{filename}: the file has no documents (expected {what})")
    problems: list[str] = []
    parsed: list[_Doc] = []
    for index, doc in docs:
        try:
            parsed.append(_parse_document(doc, filename, index))
        except LabFileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise LabFileError(problems)

    lab_docs = [d for d in parsed if isinstance(d.value, LabSpec)]
    if len(lab_docs) > 1:
        raise LabFileError(
            f"{lab_docs[1].where}: a second Lab document (the first is document"
            f" {lab_docs[0].index}); a file describes one lab"
        )
    if lab_docs and base is not None:
        raise LabFileError(
            f"{lab_docs[0].where}: a Lab document cannot be added to the running lab"
            f" {base.lab.name!r}; only Namespace, Pod and policy documents can"
        )
    if lab_docs:
        assert isinstance(lab_docs[0].value, LabSpec)
        lab = lab_docs[0].value
    elif base is not None and not require_lab:
        lab = base.lab
    else:
        raise LabFileError(
            f"{filename}: no Lab document (apiVersion: {LAB_API_VERSION}, kind: Lab) in the file"
        )
    checked = _check_together(lab, lab_docs[0] if lab_docs else None, parsed, base)
    return LabFile(
        lab=lab,
        namespaces=checked.namespaces,
        pods=checked.pods,
        other_documents=[
            d.value
            for d in parsed
            if isinstance(d.value, RawDocument) and d.value.kind in DEFERRED_KINDS
        ],
        api_documents=[
            d.value
            for d in parsed
            if isinstance(d.value, RawDocument) and d.value.kind in API_KINDS
        ],
        filename=filename,
        ip_pools=checked.ip_pools,
        ipam_config=checked.ipam_config,
    )


@dataclasses.dataclass(frozen=True)
class _Checked:
    namespaces: list[Namespace]
    pods: list[PodSpec]
    ip_pools: list[IPPool]
    ipam_config: IPAMConfiguration


def _check_together(
    lab: LabSpec, lab_doc: _Doc | None, parsed: list[_Doc], base: LabFile | None
) -> _Checked:
    """The checks that span documents; returns namespaces, pods with nodes assigned, pools."""
    problems: list[tuple[int, str]] = []

    def problem(doc: _Doc, path: str, message: str) -> None:
        problems.append(
            (doc.index, f"{doc.where}: {path}: {message}" if path else f"{doc.where}: {message}")
        )

    declared: dict[str, str] = {}
    if base is not None:
        for ns in base.namespaces:
            declared[ns.name] = "it already exists in the lab"
    namespaces: list[Namespace] = []
    for doc in parsed:
        if isinstance(doc.value, Namespace):
            name = doc.value.name
            if name in declared:
                problem(doc, "metadata.name", f"duplicate namespace {name!r} ({declared[name]})")
                continue
            declared[name] = f"also declared in document {doc.index}"
            namespaces.append(doc.value)

    pools_mode = lab.ipam.mode == "pools"
    ip_pools, ipam_config = _check_pools(lab, lab_doc, parsed, base, problem)
    node_labels = {node.name: node.labels for node in lab.nodes}
    node_names = lab.node_names
    cidrs = node_cidrs(lab)
    pod_owner: dict[str, str] = {}
    ip_owner: dict[IPAddress, str] = {}
    round_robin = 0
    if base is not None:
        for pod in base.pods:
            pod_owner[pod.key] = "it already exists in the lab"
            for ip in pod.requested_ips():
                ip_owner[ip] = f"pod {pod.key}, already in the lab"
        round_robin = len(base.pods)

    def check_namespace(doc: _Doc, namespace: str) -> None:
        if namespace not in declared and namespace not in IMPLICIT_NAMESPACES:
            problem(
                doc,
                "metadata.namespace",
                f"namespace {namespace!r} is not declared (add a Namespace document; only"
                f" {' and '.join(IMPLICIT_NAMESPACES)} exist without one)",
            )

    for doc in parsed:
        if isinstance(doc.value, RawDocument) and doc.value.kind in API_KINDS:
            check_namespace(doc, doc.value.namespace or "default")

    pods: list[PodSpec] = []
    mapped_images = {entry.image for entry in lab.spec.images}
    for doc in parsed:
        if not isinstance(doc.value, PodSpec):
            continue
        pod = doc.value
        if pod.key in pod_owner:
            problem(doc, "metadata.name", f"duplicate pod {pod.key} ({pod_owner[pod.key]})")
            continue
        pod_owner[pod.key] = f"also in document {doc.index}"
        for i, container in enumerate(pod.spec.containers):
            if not container.argv() and container.image not in mapped_images:
                problem(
                    doc,
                    f"spec.containers[{i}].image",
                    f"{container.image!r} has no command here: the lab runs no images, so give"
                    " the container a command or map the image in the Lab's spec.images"
                    " ({image, command, args})",
                )
        check_namespace(doc, pod.namespace)
        assigned = pod.spec.node_name is None
        if assigned:
            node = node_names[round_robin % len(node_names)]
            round_robin += 1
            pod = pod.with_node(node)
        elif pod.node_name not in node_names:
            problem(
                doc,
                "spec.nodeName",
                f"node {pod.node_name!r} is not a node of lab {lab.name!r}"
                f" (nodes: {', '.join(node_names)})",
            )
            pods.append(pod)
            continue
        if pools_mode:
            for path, complaint in _pool_annotation_problems(pod, ip_pools, node_labels, assigned):
                problem(doc, path, complaint)
        else:
            for key in (IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION):
                if key in pod.annotations:
                    problem(
                        doc,
                        format_path(["metadata", "annotations", key]),
                        f"only valid with spec.ipam.mode: pools (lab {lab.name!r} uses"
                        " cluster-pool)",
                    )
        for ip in pod.requested_ips():
            message: str | None
            if pools_mode:
                message = _check_pool_ip(ip, pod, ip_pools, node_labels[pod.node_name], assigned)
            else:
                message = _check_requested_ip(ip, pod.node_name, cidrs[pod.node_name], assigned)
            if message is None and ip in ip_owner:
                message = f"{ip} is also requested by {ip_owner[ip]}"
            if message is not None:
                problem(doc, _IPS_PATH, message)
            ip_owner.setdefault(ip, f"pod {pod.key} (document {doc.index})")
        pods.append(pod)
    if problems:
        problems.sort(key=lambda p: p[0])
        raise LabFileError([p[1] for p in problems])
    return _Checked(namespaces, pods, ip_pools, ipam_config)


def _check_pools(
    lab: LabSpec,
    lab_doc: _Doc | None,
    parsed: list[_Doc],
    base: LabFile | None,
    problem: Callable[[_Doc, str, str], None],
) -> tuple[list[IPPool], IPAMConfiguration]:
    """The IPPool and IPAMConfiguration documents against the lab and each other."""
    if base is not None:
        for doc in parsed:
            if isinstance(doc.value, IPPool | IPAMConfiguration):
                problem(
                    doc,
                    "",
                    f"an {doc.value.kind} cannot be added to the running lab {base.lab.name!r};"
                    " only Namespace, Pod and policy documents can",
                )
        return list(base.ip_pools), base.ipam_config
    if lab.ipam.mode != "pools":
        for doc in parsed:
            if isinstance(doc.value, IPPool | IPAMConfiguration):
                problem(
                    doc,
                    "",
                    f"{doc.value.kind} documents need spec.ipam.mode: pools (lab {lab.name!r}"
                    " uses cluster-pool)",
                )
        return [], default_ipam_configuration()
    ipam_config: IPAMConfiguration | None = None
    config_index = 0
    pool_docs: dict[str, _Doc] = {}
    pools: list[IPPool] = []
    for doc in parsed:
        if isinstance(doc.value, IPAMConfiguration):
            if ipam_config is not None:
                problem(
                    doc,
                    "",
                    f"a second IPAMConfiguration (the first is document {config_index}); Calico"
                    " reads one, named default",
                )
            else:
                ipam_config, config_index = doc.value, doc.index
        if not isinstance(doc.value, IPPool):
            continue
        pool = doc.value
        if pool.name in pool_docs:
            problem(
                doc,
                "metadata.name",
                f"duplicate IPPool name {pool.name!r} (also in document"
                f" {pool_docs[pool.name].index})",
            )
            continue
        for other_doc in pool_docs.values():
            assert isinstance(other_doc.value, IPPool)
            other = other_doc.value
            if _overlap(pool.cidr, other.cidr):
                problem(
                    doc,
                    "spec.cidr",
                    f"pool {pool.name!r} ({pool.cidr}) overlaps pool {other.name!r}"
                    f" ({other.cidr}, document {other_doc.index})",
                )
                break
        pool_docs[pool.name] = doc
        pools.append(pool)
    if lab_doc is not None:
        subnets = (lab.spec.node_network.ipv4, lab.spec.node_network.ipv6)
        for pool in pools:
            for subnet in subnets:
                if _overlap(subnet, pool.cidr):
                    problem(
                        lab_doc,
                        f"spec.nodeNetwork.ipv{subnet.version}",
                        f"{subnet} overlaps IPPool {pool.name!r} ({pool.cidr}): node and pod"
                        " addresses must differ",
                    )
    if lab_doc is not None and not any(p.enabled and p.for_workloads for p in pools):
        have = (
            "it has none"
            if not pools
            else "every one is disabled or has no Workload in allowedUses"
        )
        problem(
            lab_doc,
            "spec.ipam.mode",
            f"mode pools needs at least one enabled IPPool document (apiVersion:"
            f" {CALICO_API_VERSION}, kind: IPPool) for pods, and {have}",
        )
    return pools, ipam_config or default_ipam_configuration()


def _overlap(a: IPv4Network | IPv6Network, b: IPv4Network | IPv6Network) -> bool:
    if isinstance(a, IPv4Network) and isinstance(b, IPv4Network):
        return a.overlaps(b)
    if isinstance(a, IPv6Network) and isinstance(b, IPv6Network):
        return a.overlaps(b)
    return False


# What the agent does in pools mode, which these checks follow: a node gets the address families,
# and in each its router address, of the enabled Workload pools with assignmentMode Automatic that
# select it; its pods take addresses in those families only, from those pools or from the pools
# they name, and a pool a pod names or asks an address of must select the pod's node (stricter
# than Calico, which ignores nodeSelector for them).


def _node_families(pools: Sequence[IPPool], labels: Mapping[str, str]) -> set[int]:
    return {
        p.version
        for p in pools
        if p.enabled and p.for_workloads and p.automatic and p.selects(labels)
    }


def _round_robin(assigned: bool) -> str:
    return " (assigned round-robin; set spec.nodeName to choose the node)" if assigned else ""


def _not_selected(pool: IPPool, node: str, labels: Mapping[str, str], assigned: bool) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
    return (
        f"does not select node {node} (nodeSelector {pool.spec.node_selector!r}, node labels:"
        f" {shown}){_round_robin(assigned)}"
    )


def _no_family(version: int, node: str, assigned: bool) -> str:
    return (
        f"node {node} has no IPv{version} addresses: no enabled Workload IPv{version} pool with"
        " assignmentMode Automatic selects it (the node's router address comes from one)"
        + _round_robin(assigned)
    )


def _pool_annotation_problems(
    pod: PodSpec,
    pools: Sequence[IPPool],
    node_labels: Mapping[str, Mapping[str, str]],
    assigned: bool,
) -> list[tuple[str, str]]:
    """(field path, message) problems of a pod's node and pool annotations in ``pools`` mode."""
    if not any(p.enabled and p.for_workloads for p in pools):
        return []  # the Lab document is in error already
    node = pod.node_name
    labels = node_labels[node]
    families = _node_families(pools, labels)
    if not families:
        shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
        return [
            (
                "spec.nodeName",
                f"no IP pool gives addresses on node {node}: no enabled Workload pool with"
                " assignmentMode Automatic has a nodeSelector that selects its labels"
                f" ({shown}){_round_robin(assigned)}",
            )
        ]
    by_name = {p.name: p for p in pools}
    problems: list[tuple[str, str]] = []
    for version, key in ((4, IPV4_POOLS_ANNOTATION), (6, IPV6_POOLS_ANNOTATION)):
        names = pod.requested_pools(version)
        path = format_path(["metadata", "annotations", key])
        for name in names or ():
            pool = by_name.get(name)
            if pool is None:
                known = ", ".join(repr(p) for p in by_name) or "none"
                problems.append((path, f"no IPPool is named {name!r} (pools: {known})"))
            elif pool.version != version:
                problems.append(
                    (
                        path,
                        f"pool {name!r} is an IPv{pool.version} pool ({pool.cidr}); this"
                        f" annotation names IPv{version} pools",
                    )
                )
            elif not pool.enabled:
                problems.append((path, f"pool {name!r} is disabled"))
            elif not pool.for_workloads:
                problems.append(
                    (path, f"pool {name!r} is not for pods (allowedUses has no Workload)")
                )
            elif not pool.selects(labels):
                problems.append(
                    (path, f"pool {name!r} {_not_selected(pool, node, labels, assigned)}")
                )
        if names and version not in families:
            problems.append((path, _no_family(version, node, assigned)))
    return problems


def _check_pool_ip(
    ip: IPAddress,
    pod: PodSpec,
    pools: Sequence[IPPool],
    labels: Mapping[str, str],
    assigned: bool,
) -> str | None:
    """What is wrong with an address asked for in ``pools`` mode, if anything."""
    holders = [p for p in pools if p.version == ip.version and ip in p.cidr]
    if not holders:
        family = [f"{p.name} {p.cidr}" for p in pools if p.version == ip.version]
        listed = f"pools: {', '.join(family)}" if family else f"the lab has no IPv{ip.version} pool"
        return f"{ip} is not inside any IP pool ({listed})"
    usable = [p for p in holders if p.enabled and p.for_workloads]
    if not usable:
        pool = holders[0]
        why = "is disabled" if not pool.enabled else "has no Workload in allowedUses"
        return f"{ip} is inside pool {pool.name!r} ({pool.cidr}), which {why}"
    pool = usable[0]
    named = pod.requested_pools(ip.version)
    if named and pool.name not in named:
        key = IPV4_POOLS_ANNOTATION if ip.version == 4 else IPV6_POOLS_ANNOTATION
        return (
            f"{ip} is inside pool {pool.name!r}, not one of the pools named by {key}"
            f" ({', '.join(named)})"
        )
    if not pool.selects(labels):
        return (
            f"{ip} is inside pool {pool.name!r} ({pool.cidr}), which"
            f" {_not_selected(pool, pod.node_name, labels, assigned)}"
        )
    if ip.version not in _node_families(pools, labels):
        return f"{ip}: {_no_family(ip.version, pod.node_name, assigned)}"
    return None


def _check_requested_ip(ip: IPAddress, node: str, cidrs: NodeCIDRs, assigned: bool) -> str | None:
    network: IPv4Network | IPv6Network | None = cidrs.ipv4 if ip.version == 4 else cidrs.ipv6
    if network is None:
        return (
            f"{ip} is an IPv{ip.version} address but IPv{ip.version} is disabled in this lab"
            f" (clusterPoolIPv{ip.version}PodCIDRList is empty)"
        )
    if ip not in network:
        how = " (assigned round-robin; set spec.nodeName to choose the node)" if assigned else ""
        return f"{ip} is not inside the pod CIDR {network} of node {node}{how}"
    if ip == network.network_address:
        return f"{ip} is the network address of node {node}'s pod CIDR {network}"
    if ip == network.network_address + 1:
        return f"{ip} is node {node}'s router address (the first address of {network})"
    if ip.version == 4 and ip == network.broadcast_address:
        return f"{ip} is the broadcast address of node {node}'s pod CIDR {network}"
    return None


def parse_lab_text(text: str, filename: str) -> LabFile:
    """Parse and check a whole lab file (exactly one Lab document). Raises LabFileError."""
    return parse_documents(text, filename, require_lab=True)


def load_lab_file(path: Path) -> LabFile:
    """Read and check the lab file at ``path``. Raises LabFileError (also if it cannot be read)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LabFileError(f"{path}: cannot read the lab file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LabFileError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse_lab_text(text, str(path))


_SCENARIOS = resources.files(__package__ or "ciliary.lab") / "scenarios"
DEFAULT_SCENARIO: str = (_SCENARIOS / "default.yaml").read_text(encoding="utf-8")
"""The lab ``ciliary demo`` and ``ciliary lab up`` build when given no file."""


def load_default() -> LabFile:
    """The default scenario, parsed."""
    return parse_lab_text(DEFAULT_SCENARIO, "scenarios/default.yaml")
