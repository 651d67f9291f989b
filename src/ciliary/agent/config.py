"""Agent settings, one group per subsystem, with the defaults Cilium users expect where an
equivalent exists."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Literal

from ciliary.core.defaults import CLUSTER_HEALTH_PORT, TUNNEL_PORT
from ciliary.hubble.filters import DEFAULT_CLUSTER_NAME

RUN_ROOT = Path("/run/ciliary")

MONITOR_AGGREGATION = {"none": 0, "medium": 2}
"""Cilium's ``--monitor-aggregation`` levels we implement: every packet, or new connections,
first replies, TCP flag changes and one report per interval per connection (the default)."""

MONITOR_QUEUE_SIZE_PER_CPU = 1024
MONITOR_QUEUE_SIZE_MAX = 16384


def default_event_queue_size() -> int:
    """Upstream's ``--hubble-event-queue-size`` default: 1024 per CPU, at most 16384."""
    return min(MONITOR_QUEUE_SIZE_PER_CPU * (os.cpu_count() or 1), MONITOR_QUEUE_SIZE_MAX)


@dataclass(frozen=True)
class HubbleConfig:
    """Hubble in the agent, with upstream's flag names (``--hubble-*``) and defaults. As
    upstream, the TCP listener uses TLS unless ``disable_tls``; its certificate comes from
    whoever installs the agent (the lab's CA, see ``lab/certs.py``): without one, the agent
    opens no TCP listener rather than a plaintext one."""

    enabled: bool = True
    socket: Path | None = None
    """Unix socket of the server (0600); default ``<state_dir>/hubble.sock``."""
    listen_address: str = ":4244"
    """TCP ``[host]:port`` inside the node's netns; empty = no TCP listener."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_files: tuple[Path, ...] = ()
    """Client CAs: with any, the TCP listener requires client certificates (mTLS)."""
    disable_tls: bool = False
    event_buffer_capacity: int = 4095
    """Flows kept by the observer's ring: 2**n - 1, 1..65535."""
    event_queue_size: int = field(default_factory=default_event_queue_size)
    """Datapath events waiting for the decoder; beyond it they are lost (and counted)."""
    metrics_server: str = ":9965"
    metrics: tuple[str, ...] = ()
    """Enabled Hubble metrics, upstream syntax (``drop``, ``flow:sourceContext=pod``...); none
    by default as upstream, and then no metrics server either."""
    prometheus_serve_addr: str = ":9962"
    """The agent's own metrics (``cilium_*``); empty = not served."""
    export_file_path: str = ""
    export_file_max_size_mb: int = 10
    export_file_max_backups: int = 5
    export_allowlist: str = ""
    export_denylist: str = ""
    lost_poll_interval_s: float = 1.0
    """How often the datapath's lost-event counters are read when no event arrives."""


ROUTING_MODES = ("tunnel", "native")
TUNNEL_PROTOCOLS = ("vxlan",)
DEFAULT_TUNNEL_PORT = TUNNEL_PORT
TUNNEL_OVERHEAD = 50
"""Bytes VXLAN over IPv4 adds to a packet (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8): in
tunnel mode a pod's MTU is the node's less this, as Cilium's."""


@dataclass(frozen=True)
class NetworkConfig:
    """How pods reach pods of other nodes and the world, with cilium-agent's flag names:
    ``--routing-mode`` (``tunnel``: VXLAN with the source identity in the VNI, the default;
    ``native``: the underlay routes pod CIDRs, identity from the ipcache), ``--tunnel-protocol``,
    ``--tunnel-port``, ``--auto-direct-node-routes`` (native: a route per remote node's pod CIDR
    via its node IP, all nodes on one L2), ``--ipv4-native-routing-cidr`` /
    ``--ipv6-native-routing-cidr`` (never masqueraded), ``--ipv4-node`` / ``--ipv6-node`` (this
    node's IPs on the underlay, published in its CiliumNode as ``InternalIP``), ``--devices``
    (the node's underlay devices: BPF masquerade and NodePort attach there) and
    ``--enable-ipv4-masquerade`` / ``--enable-ipv6-masquerade`` / ``--enable-bpf-masquerade``."""

    routing_mode: Literal["tunnel", "native"] = "tunnel"
    tunnel_protocol: Literal["vxlan"] = "vxlan"
    tunnel_port: int = DEFAULT_TUNNEL_PORT
    auto_direct_node_routes: bool = False
    ipv4_native_routing_cidr: IPv4Network | None = None
    ipv6_native_routing_cidr: IPv6Network | None = None
    ipv4_node: IPv4Address | None = None
    ipv6_node: IPv6Address | None = None
    devices: tuple[str, ...] = ()
    enable_ipv4_masquerade: bool = True
    enable_ipv6_masquerade: bool = True
    enable_bpf_masquerade: bool = True


@dataclass(frozen=True)
class HealthConfig:
    """Cluster health (``agent/health.py``), cilium-agent's ``--enable-health-checking`` and
    ``--cluster-health-port``; ``--cluster-health-interval`` is ciliary's (upstream probes every
    60 s, fixed), so a lab can see a node go away in seconds."""

    enabled: bool = True
    port: int = CLUSTER_HEALTH_PORT
    interval_s: float = 60.0


@dataclass(frozen=True)
class AgentConfig:
    node: str
    state_dir: Path
    pin_dir: Path
    socket: Path
    bpf_object: Path
    ipv4_range: IPv4Network | None
    ipv6_range: IPv6Network | None
    netns: str | None = None
    monitor_aggregation: str = "medium"
    monitor_aggregation_interval_s: float = 5.0
    ct_max: int = 65536
    lb_max: int = 65536
    """--bpf-lb-map-max: entries of each service map (Cilium's default)."""
    lb_algorithm: str = "random"
    """--bpf-lb-algorithm: random or maglev (a Service's lb-algorithm annotation overrides)."""
    maglev_table_size: int = 16381
    """--bpf-lb-maglev-table-size (upstream's default, one of its primes)."""
    maglev_hash_seed: str = "JLfvgnHc2kaSUFaI"
    """--bpf-lb-maglev-hash-seed: base64 of 12 bytes, the same on every node (upstream's
    default; the lab passes one of its own to every agent)."""
    cgroup_root: Path | None = None
    """--cgroup-root: the cgroup v2 directory socket-LB attaches to (upstream's flag); None:
    no socket-LB, the tc-level LB alone."""
    tofqdns_pre_cache: Path | None = None
    """--tofqdns-pre-cache: DNS answers loaded at start (``ciliary fqdn cache list -o json``)."""
    tofqdns_min_ttl: int = 0
    """--tofqdns-min-ttl: the shortest time an answer's IPs stay selected (upstream's 0)."""
    tofqdns_max_ips_per_name: int = 1000
    """--tofqdns-endpoint-max-ip-per-hostname (upstream's 1000)."""
    tofqdns_proxy_port: int = 0
    tofqdns_idle_connection_grace_period_s: float = 0.0
    """--tofqdns-idle-connection-grace-period: how long after the last conntrack GC pass that
    saw a connection to an expired answer's IP the IP stays selected (upstream's 0s)."""
    tofqdns_max_deferred_connection_deletes: int = 10000
    """--tofqdns-max-deferred-connection-deletes: expired answers' IPs kept at most while
    connections may use them (upstream's 10000; 0: none kept)."""
    tofqdns_dns_reject_response_code: str = "refused"
    """--tofqdns-dns-reject-response-code: what a denied DNS query gets (refused|nameError)."""
    tofqdns_proxy_response_max_delay_s: float = 0.1
    """--tofqdns-proxy-response-max-delay: how long an answer waits for the datapath to allow
    its IPs before it is released anyway (upstream's 100ms)."""
    dnsproxy_enable_transparent_mode: bool = True
    dnsproxy_concurrency_limit: int = 0
    """--dnsproxy-concurrency-limit: DNS queries processed at once (0: no limit, upstream's)."""
    dnsproxy_concurrency_grace_s: float = 0.0
    """--dnsproxy-concurrency-processing-grace-period: how long a query waits for room."""
    """--dnsproxy-enable-transparent-mode: forwarded queries leave from the pod's address and
    port (upstream's default since 1.12); false: from the node's."""
    """--tofqdns-proxy-port: the DNS proxy's port (0: allocated, ``ciliary.core.proxyports``)."""
    enable_l7_proxy: bool = True
    """--enable-l7-proxy (upstream's, default true): L7 rules redirect to the node's proxies;
    false: they allow at L4 (reported unsupported)."""
    bpf_lb_sock: bool = True
    """--bpf-lb-sock: socket-LB where a --cgroup-root is given (false: tc-level LB alone)."""
    mtu: int = 1500
    ct_gc_interval_s: float = 30.0
    """--conntrack-gc-interval: time between conntrack GC passes (upstream's flag; its default
    0s picks the interval from the map's use, ours is a fixed 30 s). Each pass also tells the
    DNS cache which expired answers' IPs connections still use."""
    ipam_mode: str = "cluster-pool"
    kubeconfig: Path | None = None
    """Cilium's --k8s-kubeconfig-path: the Kubernetes API the agent lists and watches."""
    in_cluster: bool = False
    """Use the pod's service account (``KUBERNETES_SERVICE_HOST``) when no kubeconfig is given.
    With either, pods, namespaces, policies and Hubble peers come from the API."""
    node_labels: dict[str, str] = field(default_factory=dict)
    enable_policy: str = "default"
    """Cilium's --enable-policy: default (enforce once selected), always, never."""
    hubble: HubbleConfig = field(default_factory=HubbleConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    cluster_name: str = DEFAULT_CLUSTER_NAME
    """Cilium's --cluster-name: the cluster the node's endpoints belong to (Hubble's
    ``Endpoint.cluster_name``, ``--cluster`` filters, ``list namespaces``)."""
