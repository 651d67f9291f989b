"""The agent's API, as data: request and response bodies of the unix-socket REST API.

The agent serves these and the CLI, the CNI plugin and the lab read them, through
``ciliary.client``; neither side imports the other, they share only this module. Models are
pydantic v2 so that a bad request is answered with the exact field that is wrong, and field names
follow Cilium's API (``cilium-dbg endpoint list -o json``) where one exists.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

API_PREFIX = "/v1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class EndpointState(enum.StrEnum):
    """Endpoint lifecycle states, Cilium's names."""

    CREATING = "creating"
    RESTORING = "restoring"
    WAITING_FOR_IDENTITY = "waiting-for-identity"
    WAITING_TO_REGENERATE = "waiting-to-regenerate"
    REGENERATING = "regenerating"
    READY = "ready"
    NOT_READY = "not-ready"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"
    INVALID = "invalid"


class EndpointCreateRequest(_Model):
    """Plug a pod in: create its interface in ``netns`` and make it an endpoint of this node."""

    container_id: str = Field(
        min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
    )
    netns: str = Field(min_length=1, description="path of the pod's network namespace")
    ifname: str = Field(default="eth0", min_length=1, max_length=15, pattern=r"^[^/:\s]+$")
    pod_name: str = ""
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    ipv4: str | None = Field(default=None, description="requested IPv4 (else allocated)")
    ipv6: str | None = Field(default=None, description="requested IPv6 (else allocated)")
    pools: list[str] | None = Field(
        default=None, description="IP pools to allocate from (pools mode; Calico's annotation)"
    )
    mtu: int | None = Field(default=None, ge=576, le=65535)
    network: str | None = Field(
        default=None,
        min_length=1,
        description="CNI network name of the attachment (the conflist's name), recorded so that "
        "GC, DEL and a repeated ADD only ever touch their own network's attachments",
    )


class StateChange(_Model):
    time: float
    state: EndpointState
    reason: str = ""


class Endpoint(_Model):
    id: int
    container_id: str
    pod_name: str
    namespace: str
    labels: dict[str, str]
    identity: int
    state: EndpointState
    ipv4: str | None
    ipv6: str | None
    ifname: str
    netns: str
    lxc: str = Field(description="node-side veth name")
    lxc_ifindex: int
    mac: str = Field(description="pod-side MAC")
    node_mac: str = Field(description="node-side MAC, the pod's gateway MAC")
    ipv4_gateway: str | None = None
    ipv6_gateway: str | None = None
    mtu: int = 1500
    policy_ingress: Literal["Enabled", "Disabled"] = "Disabled"
    policy_egress: Literal["Enabled", "Disabled"] = "Disabled"
    created_at: float
    log: list[StateChange] = Field(default_factory=list)
    network: str | None = Field(
        default=None,
        description="CNI network that made the attachment; None: created without one (API, or "
        "a record from before networks were recorded), never garbage-collected by a CNI GC",
    )
    reserved_identity: int | None = Field(
        default=None,
        description="the reserved identity the agent gave an endpoint of its own (the health "
        "endpoint's 4, reserved:health); None: the identity of its pod's labels",
    )


class IPCacheEntry(_Model):
    prefix: str
    identity: int
    tunnel_endpoint: str | None = None


class NATEntry(_Model):
    """One BPF masquerade map entry (``ciliary bpf nat list``): ``OUT`` is the pod's packet
    given the source ``to``:``to_port`` (XLATE_SRC), ``IN`` the reply given the destination
    ``to``:``to_port`` (XLATE_DST), as ``cilium-dbg bpf nat list``."""

    family: Literal["IPv4", "IPv6"]
    protocol: str
    direction: Literal["OUT", "IN"]
    src: str
    dst: str
    sport: int
    dport: int
    to: str
    to_port: int
    age_s: float


class CTEntry(_Model):
    family: Literal["IPv4", "IPv6"]
    protocol: str
    src: str
    dst: str
    sport: int
    dport: int
    age_s: float
    expires_in_s: float
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    tx_flags: list[str]
    rx_flags: list[str]
    flags: list[str]
    src_identity: int
    dst_identity: int
    rev_nat_index: int = 0
    """The service frontend a translated connection was sent to (its replies get it back as
    source); ``service`` in ``flags``: the entry keyed on the client's tuple to the frontend."""


class MapPressure(_Model):
    name: str
    entries: int
    max_entries: int

    @property
    def pressure(self) -> float:
        return self.entries / self.max_entries if self.max_entries else 0.0


class KernelFeatures(_Model):
    release: str
    btf: bool
    bpffs: bool
    cgroup2: bool
    tcx: bool
    ringbuf: bool
    lpm_trie: bool
    lru_hash: bool
    redirect_peer: bool


class DatapathStatus(_Model):
    object: str
    programs: list[str]
    pin_dir: str
    monitor_aggregation: str
    events_lost: int


class IPAMStatus(_Model):
    ipv4_cidr: str | None
    ipv6_cidr: str | None
    ipv4_router: str | None
    ipv6_router: str | None
    allocated: int


class ClusterNodeStatus(_Model):
    """A node of the cluster as the agent's node manager knows it (from its CiliumNode)."""

    name: str
    node_ips: list[str] = Field(default_factory=list)
    local: bool = False
    health_ips: list[str] = Field(
        default_factory=list, description="its health endpoint's addresses (spec.health)"
    )


class ConnectivityStatus(_Model):
    """One probe of a path (upstream's ``ConnectivityStatus``): its round-trip time, or why it
    failed (``status``, empty when it answered)."""

    ok: bool
    latency_s: float | None = None
    status: str = ""
    last_probed: float = Field(description="unix time of the probe")


class PathStatus(_Model):
    """One address of a node or of its health endpoint (upstream's ``PathStatus``): ICMP echo
    to its stack, HTTP to its agent's health responder (``GET /hello`` on the health port).
    None: not probed yet."""

    ip: str
    icmp: ConnectivityStatus | None = None
    http: ConnectivityStatus | None = None

    def reachable(self) -> bool:
        return bool(self.icmp and self.icmp.ok and self.http and self.http.ok)


class NodeHealth(_Model):
    """A node of the cluster as this node's prober sees it: one path per node IP (``host``)
    and one per address of its health endpoint (``endpoint``, upstream's ``health-endpoint``;
    from its CiliumNode's ``spec.health``)."""

    name: str
    local: bool = False
    host: list[PathStatus] = Field(default_factory=list)
    endpoint: list[PathStatus] = Field(
        default_factory=list,
        description="the node's health endpoint addresses; empty: it publishes none",
    )

    def reachable(self) -> bool:
        """Every address, of the node and of its health endpoint, answered both probes, as
        upstream counts a node (a node without addresses is not reachable; one that publishes
        no health endpoint is judged on its node addresses, as upstream's)."""
        return bool(self.host) and all(p.reachable() for p in [*self.host, *self.endpoint])


class ClusterHealth(_Model):
    """Cluster connectivity from this node (``cilium-health status``)."""

    probe_interval_s: float
    port: int
    last_probe: float | None = Field(
        default=None, description="unix time the last round of probes finished; None before"
    )
    nodes: list[NodeHealth] = Field(default_factory=list)

    def reachable(self) -> int:
        return sum(1 for n in self.nodes if n.reachable())


class StatusResponse(_Model):
    node: str
    version: str
    healthy: bool
    uptime_s: float
    pid: int
    kernel: KernelFeatures
    datapath: DatapathStatus
    ipam: IPAMStatus
    endpoints_by_state: dict[str, int]
    maps: list[MapPressure]
    kubernetes_apis: list[str] | None = Field(
        default=None,
        description="the Kubernetes resources whose informers have synced, upstream's names "
        '("core/v1::Service"); None without a Kubernetes API',
    )
    cluster_nodes: list[ClusterNodeStatus] | None = Field(
        default=None,
        description="the cluster's nodes known to the node manager; None without a Kubernetes API",
    )
    cluster_health: ClusterHealth | None = Field(
        default=None,
        description="connectivity to every node of the cluster (the health prober's); None "
        "without a Kubernetes API or with health checking disabled",
    )
    proxy_ports: dict[str, int] = Field(
        default_factory=dict,
        description="the node's L7 proxies' ports by upstream's names (ciliary.core.proxyports); "
        "empty with --enable-l7-proxy=false",
    )


class L4Addr(_Model):
    protocol: str
    port: int


class ServicePortInfo(_Model):
    name: str
    port: int
    protocol: str
    node_port: int | None = None


class BackendInfo(_Model):
    """One address behind a service, merged over the service's EndpointSlices."""

    address: str
    node_name: str | None = None
    ready: bool
    serving: bool
    terminating: bool
    ports: dict[str, L4Addr] = Field(description="the slices' ports by name ('' if unnamed)")


class LBBackend(_Model):
    """One backend of a programmed frontend (``ciliary service list``'s ``1 => addr (active)``)."""

    id: int
    address: str
    port: int
    protocol: str
    state: Literal["active", "terminating", "quarantined", "maintenance"]


class ServiceFrontend(_Model):
    """One frontend as the BPF service maps hold it (``ciliary service list``, as
    ``cilium-dbg service list``): its id (= rev-NAT index), address, port, protocol, the service
    it belongs to (when this agent programmed it) and its backends in slot order."""

    id: int
    address: str
    port: int
    protocol: str
    type: str
    namespace: str | None = None
    name: str | None = None
    backends: list[LBBackend]


class LBMapEntry(_Model):
    """One slot of a service map (``ciliary bpf lb list``, as ``cilium-dbg bpf lb list``):
    slot 0 is the service entry (no backend), slots 1..count name a backend."""

    service_address: str
    service_port: int
    protocol: str
    slot: int
    rev_nat_index: int
    backend_address: str | None = None
    backend_port: int | None = None
    flags: list[str]


class MaglevTable(_Model):
    """A Maglev frontend's lookup table as the datapath reads it (``ciliary bpf lb maglev
    list``, as ``cilium-dbg bpf lb maglev list``): entry i = the backend id of the tuples whose
    hash mod the table's size is i."""

    service_id: int = Field(description="the frontend's id (= rev-NAT index)")
    family: Literal[4, 6]
    backend_ids: list[int]


FQDN_SOURCE_LOOKUP: Final = "lookup"
FQDN_SOURCE_CONNECTION: Final = "connection"
FQDNSource = Literal["lookup", "connection"]
"""Where a DNS cache entry comes from (upstream's ``cilium fqdn cache list`` Source): a DNS
answer, or an expired answer's IP kept because a connection may use it (a DNS "zombie")."""


class FQDNCacheEntry(_Model):
    """One (name, IP) of the agent's DNS cache (``ciliary fqdn cache list``, as ``cilium-dbg fqdn
    cache list``): what toFQDNs rules select, until ``expiration_time``."""

    fqdn: str
    ip: str
    expiration_time: datetime
    source: FQDNSource = Field(
        default=FQDN_SOURCE_LOOKUP,
        description="lookup: a DNS answer, selected until it expires; connection: an expired"
        " answer's IP kept while a connection may use it, checked again at expiration_time (the"
        " next conntrack GC pass)",
    )


class ServiceInfo(_Model):
    """A Service as the agent's service cache holds it (Cilium's ``k8s.Service`` + backends)."""

    namespace: str
    name: str
    type: str
    cluster_ips: list[str]
    ports: list[ServicePortInfo]
    session_affinity: str
    session_affinity_timeout: int = 10800
    """sessionAffinityConfig.clientIP.timeoutSeconds (Kubernetes' default: 3 h)."""
    lb_algorithm: str | None = None
    """the ``service.cilium.io/lb-algorithm`` annotation (random, maglev); None: the agent's."""
    external_traffic_policy: str
    backends: list[BackendInfo]
    internal_traffic_policy: str = "Cluster"
    external_ips: list[str] = Field(default_factory=list, description="spec.externalIPs")
    load_balancer_ips: list[str] = Field(
        default_factory=list, description="status.loadBalancer.ingress[].ip"
    )
    load_balancer_source_ranges: list[str] = Field(
        default_factory=list, description="spec.loadBalancerSourceRanges (empty: everyone)"
    )
    selector: dict[str, str] | None = Field(
        default=None, description="spec.selector; None for a Service without one"
    )
    labels: dict[str, str] = Field(default_factory=dict, description="metadata.labels")


class NodeAddressInfo(_Model):
    type: str
    address: str


class NodeInfo(_Model):
    """A Kubernetes Node as the agent's node cache holds it."""

    name: str
    addresses: list[NodeAddressInfo]
    labels: dict[str, str]


MonitorEventType = Literal["trace", "drop", "policy-verdict"]
"""The record types ``ciliary monitor`` shows, by their ``core.flow.MESSAGE_TYPES`` names."""
MONITOR_EVENT_TYPES: tuple[MonitorEventType, ...] = get_args(MonitorEventType)


class MonitorEvent(_Model):
    """One decoded datapath notification (trace or drop), as ``ciliary monitor`` shows it."""

    time: str = Field(description="RFC 3339 wall-clock time of the verdict")
    ts_ns: int = Field(description="CLOCK_MONOTONIC of the verdict")
    ct_created_ns: int
    node: str
    type: MonitorEventType
    verdict: str
    drop_reason: int
    drop_reason_desc: str
    observation_point: str
    ip_version: Literal[4, 6]
    protocol: str
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    icmp_type: int
    icmp_code: int
    tcp_flags: list[str]
    is_reply: bool
    ct_state: str
    src_identity: int
    dst_identity: int
    endpoint_id: int
    dst_endpoint_id: int
    ifindex: int
    ifname: str
    length: int
    src_mac: str
    dst_mac: str
    src_pod: str | None = None
    dst_pod: str | None = None
    traffic_direction: Literal["ingress", "egress", "unknown"] = "unknown"
    policy_match_type: int = 0
    policy_rules: list[str] = Field(
        default_factory=list, description="the rules that decided (allowed or denied) this flow"
    )
    verdict_reason: str = Field(default="", description="'default deny' when no rule allowed it")
    default_deny_by: list[str] = Field(
        default_factory=list,
        description="default deny: the policies that select the endpoint for that direction",
    )
    explanation: str = Field(
        default="", description="default deny, in words: who selects the endpoint, and why it drops"
    )
    summary: str


class IPAMAllocateRequest(_Model):
    """Addresses for one attachment (``<container id>/<ifname>``), all or nothing."""

    owner: str = Field(min_length=3, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[^/:\s]{1,15}$")
    kind: Literal["endpoint", "ipam-plugin"] = "ipam-plugin"
    families: list[Literal[4, 6]] | None = Field(
        default=None, description="families wanted; None = every family the node has"
    )
    requested: list[str] = Field(default_factory=list, description="specific addresses")
    pools: list[str] | None = Field(default=None, description="pool names to allocate from")


class IPAllocation(_Model):
    owner: str
    kind: Literal["endpoint", "ipam-plugin", "router"]
    family: Literal[4, 6]
    address: str
    prefix_len: int = Field(description="of the pool block/node CIDR the address is in")
    gateway: str | None
    pool: str
    block: str | None = None
    created_at: float


class IPAMAllocateResponse(_Model):
    allocations: list[IPAllocation]


class IPPoolStatus(_Model):
    name: str
    cidr: str
    block_size: int
    disabled: bool
    nat_outgoing: bool
    node_selector: str
    size: int
    used: int


class IPAMBlockStatus(_Model):
    cidr: str
    pool: str
    affinity: str | None = Field(description="host:<node> when affine to a node")
    size: int
    used: int


class IPAMListing(_Model):
    mode: Literal["cluster-pool", "pools"]
    node: str
    strict_affinity: bool = False
    pools: list[IPPoolStatus]
    blocks: list[IPAMBlockStatus]
    allocations: list[IPAllocation]


class Attachment(_Model):
    container_id: str = Field(alias="containerID")
    ifname: str

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


class GCRequest(_Model):
    """CNI GC of one network: its attachments not in ``valid_attachments`` are released
    (endpoints and their addresses); other networks' attachments are never touched."""

    valid_attachments: list[Attachment]
    network: str = Field(
        min_length=1, description="the CNI network being collected: only its attachments go"
    )
    scope: Literal["endpoints", "ipam-plugin"] = Field(
        default="endpoints",
        description="endpoints: ciliary-cni's network; ipam-plugin: via ciliary-ipam",
    )


class GCResponse(_Model):
    endpoints_removed: list[int]
    addresses_released: list[str]


class EndpointCheckRequest(_Model):
    """CNI CHECK: does the attachment still look as ADD made it?"""

    container_id: str
    ifname: str
    netns: str
    addresses: list[str] = Field(default_factory=list, description="CIDRs from prevResult")
    network: str | None = Field(default=None, description="CNI network of the attachment")


class CheckResponse(_Model):
    ok: bool
    problems: list[str]


class PolicyImportRequest(_Model):
    """Policy YAML as the user wrote it; the agent parses it (all or nothing)."""

    text: str
    filename: str = "<stdin>"


class PolicySummary(_Model):
    key: str
    kind: str
    namespace: str | None
    name: str
    source: str
    rules: int


class PolicyListResponse(_Model):
    revision: int
    policies: list[PolicySummary]


class PolicyChangeResponse(_Model):
    revision: int
    keys: list[str]


class RuleReference(_Model):
    """Which rule decided: Cilium's "derived from" (policy kind/namespace/name + rule)."""

    policy: str = Field(description="kind/namespace/name")
    kind: str
    namespace: str | None
    name: str
    rule_index: int
    section: str = Field(description="ingress | egress | ingressDeny | egressDeny")
    peer_index: int

    def __str__(self) -> str:
        where = self.name if self.namespace is None else f"{self.namespace}/{self.name}"
        return f"{self.kind} {where} rule {self.rule_index} {self.section}[{self.peer_index}]"


class PolicyMapEntry(_Model):
    direction: Literal["ingress", "egress"]
    identity: int
    protocol: str
    ports: str = Field(description="'any', '80', or '8000-8015'")
    action: Literal["allow", "deny"]
    rules: list[RuleReference]
    packets: int = 0
    bytes: int = 0
    proxy_port: int = Field(0, description="the L7 proxy the traffic goes to (0: none)")


class EndpointPolicyStatus(_Model):
    endpoint_id: int
    identity: int
    revision: int
    ingress_enforced: bool
    egress_enforced: bool
    policies: list[str]
    entries: list[PolicyMapEntry]
    unsupported: list[str] = Field(default_factory=list)
    ingress_enforced_by: list[str] = Field(
        default_factory=list, description="policies that put ingress into default deny"
    )
    egress_enforced_by: list[str] = Field(
        default_factory=list, description="policies that put egress into default deny"
    )


class TraceRequest(_Model):
    """A flow to explain: each side is a pod (``[ns/]name``), an endpoint id, or an IP."""

    src: str
    dst: str
    protocol: Literal["TCP", "UDP", "SCTP", "ICMP", "ICMPv6"] = "TCP"
    port: int = Field(default=0, ge=0, le=65535, description="destination port (ICMP: type)")


class TraceHalf(_Model):
    direction: Literal["egress", "ingress"]
    endpoint: str | None = Field(description="the endpoint whose policy applies, if any")
    allowed: bool
    reason: str = Field(description="allowed | denied by rule | default deny | not enforced")
    rules: list[RuleReference]
    matched: str | None = Field(description="the policy map entry that matched")
    default_deny_by: list[str] = Field(
        default_factory=list,
        description="default deny: the policies that select the endpoint for this direction",
    )
    explanation: str = Field(default="", description="default deny, in words")
    near_misses: list[str] = Field(
        default_factory=list,
        description="allow rules whose selector matched the peer's labels but not its namespace",
    )
    l7: list[str] = Field(
        default_factory=list,
        description="the L7 rules a proxy applies to each request of the connection (allowed "
        "at L4 with L7 rules), one line per rule, e.g. 'http: method=POST path=/v1/x'",
    )
    proxy_port: int = Field(
        default=0, description="the L7 proxy the connection is redirected to, 0 = none"
    )


class TraceResponse(_Model):
    src: str
    src_identity: int
    dst: str
    dst_identity: int
    protocol: str
    port: int
    allowed: bool
    verdict: Literal["FORWARDED", "DROPPED"]
    drop_reason: int | None
    drop_reason_desc: str | None
    egress: TraceHalf
    ingress: TraceHalf


class IdentityInfo(_Model):
    id: int
    labels: list[str]
    reserved: bool
    endpoints: list[int] = Field(default_factory=list)


class ErrorResponse(_Model):
    error: str
    kind: str = "error"
