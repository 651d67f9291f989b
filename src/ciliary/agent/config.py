"""Agent settings, one group, with the defaults Cilium users expect where an equivalent exists."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

RUN_ROOT = Path("/run/ciliary")

MONITOR_AGGREGATION = {"none": 0, "medium": 2}
"""Cilium's ``--monitor-aggregation`` levels we implement: every packet, or new connections,
first replies, TCP flag changes and one report per interval per connection (the default)."""


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
    cluster_store: Path | None = None
    node_labels: dict[str, str] = field(default_factory=dict)
    enable_policy: str = "default"
    """Cilium's --enable-policy: default (enforce once selected), always, never."""
