"""Agent settings, one group per subsystem, with the defaults Cilium users expect where an
equivalent exists."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

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
    mtu: int = 1500
    ct_gc_interval_s: float = 30.0
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
    cluster_name: str = DEFAULT_CLUSTER_NAME
    """Cilium's --cluster-name: the cluster the node's endpoints belong to (Hubble's
    ``Endpoint.cluster_name``, ``--cluster`` filters, ``list namespaces``)."""
