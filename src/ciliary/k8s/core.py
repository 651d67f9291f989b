"""The core (``v1``) kinds a lab runs on: Namespace, Pod, Node, Service.

Field names, defaults and name rules are Kubernetes' (``k8s.io/api/core/v1``), trimmed to what a
lab uses:
a pod's containers with their command, args, env, ports, volume mounts and probes (readiness,
liveness, startup: what kubelet runs to decide Ready and restarts), its volumes (of the
sources, ``emptyDir``), its node (``nodeName``, or ``nodeSelector`` for a scheduler to honour)
and addresses; a node's pod CIDRs and addresses; a service's type, selector, ports, cluster IPs,
session affinity and traffic policies. Workload controllers (:mod:`ciliary.k8s.apps`) embed
:class:`PodTemplateSpec`. The lab file's containers are these (made strict by the lab, where an
unknown field is a typo).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ciliary.k8s.fields import EnvName, FieldProblemError, ObjectName, PortName
from ciliary.k8s.meta import ObjectMeta, ObjectModel, TypedObject
from ciliary.k8s.quantity import QuantityError, parse_quantity

__all__ = [
    "Container",
    "ContainerPort",
    "EmptyDirVolumeSource",
    "EnvVar",
    "ExecAction",
    "GRPCAction",
    "HTTPGetAction",
    "HTTPHeader",
    "LoadBalancerIngress",
    "LoadBalancerStatus",
    "Namespace",
    "NamespaceSpec",
    "Node",
    "NodeAddress",
    "NodeSpec",
    "NodeStatus",
    "Pod",
    "PodIP",
    "PodSecurityContext",
    "PodSpec",
    "PodStatus",
    "PodTemplateSpec",
    "Probe",
    "Protocol",
    "ResourceRequirements",
    "SecurityContext",
    "Service",
    "ServicePort",
    "ServiceSpec",
    "ServiceStatus",
    "TCPSocketAction",
    "Volume",
    "VolumeMount",
]

Protocol = Literal["TCP", "UDP", "SCTP"]


class NamespaceSpec(ObjectModel):
    finalizers: list[str] = Field(default_factory=list)


class Namespace(TypedObject):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)


class EnvVar(ObjectModel):
    name: EnvName
    value: str = ""


class ContainerPort(ObjectModel):
    """A declared container port; its name is what policies' named ports (``toPorts``) resolve."""

    name: PortName | None = None
    container_port: int = Field(ge=1, le=65535)
    protocol: Protocol = "TCP"
    host_port: int | None = Field(default=None, ge=1, le=65535)
    """Exposed on the node's addresses (the agent's HostPort service, ``agent.k8s.hostports``)."""
    host_ip: str | None = None


class SecurityContext(ObjectModel):
    """The identity a container runs as (``runAsUser``/``runAsGroup``; ``runAsNonRoot`` makes
    the runtime refuse to start it as root). Unset fields fall back to the pod's."""

    run_as_user: int | None = Field(default=None, ge=0)
    run_as_group: int | None = Field(default=None, ge=0)
    run_as_non_root: bool | None = None


class PodSecurityContext(SecurityContext):
    """The pod-level defaults of every container's :class:`SecurityContext`."""


Quantity = int | float | str


class ResourceRequirements(ObjectModel):
    """``limits`` and ``requests`` by resource name (``cpu``, ``memory``), each a quantity
    (:mod:`ciliary.k8s.quantity`, which checks them here)."""

    limits: dict[str, Quantity] = Field(default_factory=dict)
    requests: dict[str, Quantity] = Field(default_factory=dict)

    @field_validator("limits", "requests")
    @classmethod
    def _quantities(cls, values: dict[str, Quantity]) -> dict[str, Quantity]:
        for name, value in values.items():
            try:
                parse_quantity(value)
            except QuantityError as err:
                raise FieldProblemError(str(err), name) from None
        return values


class EmptyDirVolumeSource(ObjectModel):
    """An ``emptyDir``: scratch space that starts empty (``sizeLimit`` a quantity)."""

    medium: Literal["", "Memory"] = ""
    size_limit: Quantity | None = None

    @field_validator("size_limit")
    @classmethod
    def _quantity(cls, value: Quantity | None) -> Quantity | None:
        if value is not None:
            try:
                parse_quantity(value)
            except QuantityError as err:
                raise FieldProblemError(str(err)) from None
        return value


class Volume(ObjectModel):
    """A pod's volume. Of the sources only ``emptyDir`` is modelled: a volume of another kind
    (``hostPath``, ``configMap``, ...) is kept by name with no source, and a runtime that cannot
    provide it refuses the container that mounts it (``lab.podsandbox``)."""

    name: ObjectName
    empty_dir: EmptyDirVolumeSource | None = None


class VolumeMount(ObjectModel):
    name: ObjectName
    mount_path: str = Field(min_length=1)
    read_only: bool = False


PortRef = int | PortName
"""A probe's port: a number, or the name of one of the container's ``ports`` (IntOrString)."""


class HTTPHeader(ObjectModel):
    name: str = Field(min_length=1)
    value: str = ""


class HTTPGetAction(ObjectModel):
    """GET ``scheme://host:port/path``; 200 <= status < 400 is success. ``host`` defaults to
    the pod's IP (kubelet's)."""

    path: str = "/"
    port: PortRef
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    http_headers: Sequence[HTTPHeader] = Field(default_factory=list)


class TCPSocketAction(ObjectModel):
    """Success when a TCP connection to ``host`` (default: the pod's IP) and ``port`` opens."""

    port: PortRef
    host: str | None = None


class ExecAction(ObjectModel):
    """Success when ``command`` run inside the container exits 0."""

    command: list[str] = Field(min_length=1)


class GRPCAction(ObjectModel):
    """The gRPC health checking protocol (``grpc.health.v1.Health/Check``) on ``port``."""

    port: int = Field(ge=1, le=65535)
    service: str | None = None


class Probe(ObjectModel):
    """A container probe with kubelet's defaults; exactly one handler (``httpGet``,
    ``tcpSocket``, ``exec``, ``grpc``), as the API server requires."""

    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    exec: ExecAction | None = None
    grpc: GRPCAction | None = None
    initial_delay_seconds: int = Field(default=0, ge=0)
    timeout_seconds: int = Field(default=1, ge=1)
    period_seconds: int = Field(default=10, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    failure_threshold: int = Field(default=3, ge=1)
    termination_grace_period_seconds: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        handlers = [self.http_get, self.tcp_socket, self.exec, self.grpc]
        if sum(h is not None for h in handlers) != 1:
            raise ValueError(
                "must specify exactly one handler type (httpGet, tcpSocket, exec or grpc)"
            )
        return self


class Container(ObjectModel):
    """What a lab runs of a container: a command line (there are no images to take one from),
    its environment and working directory, its declared ports and volume mounts."""

    name: ObjectName
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: Sequence[EnvVar] = Field(default_factory=list)
    working_dir: str | None = None
    ports: Sequence[ContainerPort] = Field(default_factory=list)
    security_context: SecurityContext | None = None
    resources: ResourceRequirements | None = None
    volume_mounts: Sequence[VolumeMount] = Field(default_factory=list)
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    startup_probe: Probe | None = None

    @field_validator("ports")
    @classmethod
    def _unique_port_names(cls, ports: Sequence[ContainerPort]) -> Sequence[ContainerPort]:
        first: dict[str, int] = {}
        for i, port in enumerate(ports):
            if port.name is None:
                continue
            if port.name in first:
                raise FieldProblemError(
                    f"duplicate port name {port.name!r} (also ports[{first[port.name]}])", i, "name"
                )
            first[port.name] = i
        return ports

    @model_validator(mode="after")
    def _probes(self) -> Container:
        """The API server's rules: liveness and startup probes need ``successThreshold`` 1, a
        named probe port must be one of the container's ``ports``."""
        names = {p.name for p in self.ports if p.name is not None}
        for field, probe in (
            ("readinessProbe", self.readiness_probe),
            ("livenessProbe", self.liveness_probe),
            ("startupProbe", self.startup_probe),
        ):
            if probe is None:
                continue
            if field != "readinessProbe" and probe.success_threshold != 1:
                raise FieldProblemError("must be 1", field, "successThreshold")
            action = probe.http_get or probe.tcp_socket
            if action is not None and isinstance(action.port, str) and action.port not in names:
                kind = "httpGet" if probe.http_get is not None else "tcpSocket"
                raise FieldProblemError(
                    f"port name {action.port!r} is not one of the container's ports",
                    field, kind, "port",
                )  # fmt: skip
        return self

    def port_number(self, port: PortRef) -> int:
        """A probe's port as a number (a name resolves through ``ports``)."""
        if isinstance(port, int):
            return port
        return next(p.container_port for p in self.ports if p.name == port)

    def argv(self) -> list[str]:
        """What runs: ``command`` then ``args``."""
        return [*self.command, *self.args]


class PodSpec(ObjectModel):
    containers: list[Container] = Field(default_factory=list)
    node_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    termination_grace_period_seconds: int = Field(default=30, ge=0)
    host_network: bool = False
    hostname: str | None = None
    subdomain: str | None = None
    service_account_name: str | None = None
    security_context: PodSecurityContext | None = None
    volumes: list[Volume] = Field(default_factory=list)

    def named_ports(self) -> dict[str, ContainerPort]:
        """Declared ports by name, across containers (the first declaration of a name wins)."""
        ports: dict[str, ContainerPort] = {}
        for container in self.containers:
            for port in container.ports:
                if port.name is not None:
                    ports.setdefault(port.name, port)
        return ports


class PodIP(ObjectModel):
    ip: str


class PodStatus(ObjectModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] | None = None
    pod_ip: str | None = Field(default=None, alias="podIP")
    pod_ips: list[PodIP] = Field(default_factory=list, alias="podIPs")
    host_ip: str | None = Field(default=None, alias="hostIP")
    start_time: str | None = None


class Pod(TypedObject):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Pod"] = "Pod"
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def key(self) -> str:
        """``namespace/name`` (the namespace ``default`` when the object names none)."""
        return f"{self.metadata.namespace or 'default'}/{self.metadata.name}"


class PodTemplateSpec(ObjectModel):
    """The pod a controller stamps out: metadata (labels the selector must match) and spec."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PodSpec = Field(default_factory=PodSpec)


class NodeSpec(ObjectModel):
    pod_cidr: str | None = Field(default=None, alias="podCIDR")
    pod_cidrs: list[str] = Field(default_factory=list, alias="podCIDRs")
    provider_id: str | None = Field(default=None, alias="providerID")
    unschedulable: bool = False


class NodeAddress(ObjectModel):
    type: Literal["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"]
    address: str


class NodeStatus(ObjectModel):
    addresses: list[NodeAddress] = Field(default_factory=list)


class Node(TypedObject):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)

    def internal_ips(self) -> list[str]:
        return [a.address for a in self.status.addresses if a.type == "InternalIP"]


class ServicePort(ObjectModel):
    name: str | None = None
    protocol: Protocol = "TCP"
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = None  # a number or a container port's name
    node_port: int | None = Field(default=None, ge=1, le=65535)
    app_protocol: str | None = None


class ClientIPConfig(ObjectModel):
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400)


class SessionAffinityConfig(ObjectModel):
    client_ip: ClientIPConfig | None = Field(default=None, alias="clientIP")


class ServiceSpec(ObjectModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    selector: dict[str, str] = Field(default_factory=dict)
    ports: list[ServicePort] = Field(default_factory=list)
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: list[str] = Field(default_factory=list, alias="clusterIPs")
    ip_families: list[Literal["IPv4", "IPv6"]] = Field(default_factory=list, alias="ipFamilies")
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = Field(
        default=None, alias="ipFamilyPolicy"
    )
    external_name: str | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    external_traffic_policy: Literal["Cluster", "Local"] | None = None  # None: Cluster
    internal_traffic_policy: Literal["Cluster", "Local"] | None = None
    # what the API server allocates for a LoadBalancer with externalTrafficPolicy Local
    health_check_node_port: int | None = Field(default=None, ge=1, le=65535)
    allocate_load_balancer_node_ports: bool | None = None
    external_ips: list[str] = Field(default_factory=list, alias="externalIPs")
    load_balancer_source_ranges: list[str] = Field(default_factory=list)
    """Who may reach a LoadBalancer's ingress IPs (CIDRs; empty: everyone)."""

    @field_validator("load_balancer_source_ranges")
    @classmethod
    def _source_ranges_are_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"spec.loadBalancerSourceRanges: {cidr!r} is not a CIDR") from None
        return value

    @field_validator("external_ips")
    @classmethod
    def _external_ips_are_addresses(cls, value: list[str]) -> list[str]:
        for ip in value:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"spec.externalIPs: {ip!r} is not an IP address") from None
        return value

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


class LoadBalancerIngress(ObjectModel):
    ip: str | None = None
    hostname: str | None = None


class LoadBalancerStatus(ObjectModel):
    ingress: list[LoadBalancerIngress] = Field(default_factory=list)


class ServiceStatus(ObjectModel):
    """What a load-balancer controller reports (the lab has none: set it with kubectl)."""

    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


class Service(TypedObject):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Service"] = "Service"
    spec: ServiceSpec = Field(default_factory=ServiceSpec)
    status: ServiceStatus = Field(default_factory=ServiceStatus)
