"""What a running lab is made of, as recorded on disk under ``/run/ciliary/lab/<name>/``.

The record is written *before* each resource is created (intent first), so that ``lab down``
after a crash of ``lab up`` or of an agent still knows every netns, process, cgroup and pin it has
to remove. ``lab status`` renders a view of it joined with liveness checks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ciliary.core.defaults import TUNNEL_PORT


class _Model(BaseModel):
    # Records written by another ciliary version must still load: `lab down` depends on it.
    model_config = ConfigDict(extra="ignore")


class NodeRecord(_Model):
    name: str
    netns: str
    state_dir: str
    pin_dir: str
    socket: str
    # Written by the lab's supervisor only (it starts every agent, see ``lab.supervisor``); the
    # manager keeps the supervisor's values when it saves the record.
    agent_pid: int | None = None
    agent_start_time: int | None = Field(default=None, description="/proc/<pid>/stat starttime")
    agent_log_offset: int = Field(default=0, description="agent.log size when it started")
    agent_restarts: int = Field(default=0, description="restarts after the agent exited")
    agent_last_exit: str | None = None
    agent_last_exit_at: float | None = None
    # Written by the manager: the supervisor starts an agent only once its node is ready for it.
    agent_wanted: bool = False
    cgroup: str | None = None
    ipv4_cidr: str | None = None
    ipv6_cidr: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    kubeconfig: str | None = Field(
        default=None,
        description="kubeconfig for use inside the node netns (the API on the lab network, "
        "https://172.18.0.1:6443 by default, else https://127.0.0.1:6443; the node's client "
        "certificate); None for a lab without an API server",
    )
    node_ipv4: str | None = Field(
        default=None, description="the node's IP on the lab network (its eth0), no prefix"
    )
    node_ipv6: str | None = None


class ContainerRecord(_Model):
    """One container of a pod: a process started in the pod's netns and cgroup."""

    name: str
    argv: list[str]
    pid: int | None = None
    pid_start_time: int | None = None
    # kubelet pods (``lab.kubeletd``): what the Pod status reports
    image: str | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    restart_at: float | None = Field(default=None, description="back-off: restart after (epoch)")


class PodRecord(_Model):
    name: str
    namespace: str
    node: str
    netns: str
    container_id: str
    labels: dict[str, str] = Field(default_factory=dict)
    containers: list[ContainerRecord] = Field(default_factory=list)
    cgroup: str | None = None
    log: str | None = None
    endpoint_id: int | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    # Pods of the API that the lab's kubelet role runs (``lab.kubeletd``), written by it only
    # (the manager keeps its values when it saves, as the supervisor's agent fields).
    kubelet: bool = False
    uid: str | None = None
    restart_policy: str = "Always"
    phase: str = "Running"
    host_network: bool = False
    """``spec.hostNetwork``: ``netns`` is the node's (never removed with the pod), no endpoint."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class HubbleRecord(_Model):
    """Hubble settings the lab's agents are started with (from the Lab's ``spec.hubble``)."""

    enabled: bool = True
    event_buffer_capacity: int = 4095
    metrics: list[str] = Field(default_factory=list)
    export: bool = False
    export_max_size_mb: int = 10
    export_max_backups: int = 5


class RelayRecord(_Model):
    """The lab's Hubble Relay process (root netns, loopback)."""

    address: str
    pid: int | None = None
    start_time: int | None = None
    cgroup: str | None = None


class SupervisorRecord(_Model):
    """The lab's supervisor process (root netns), which starts and restarts the agents."""

    pid: int | None = None
    start_time: int | None = None
    cgroup: str | None = None


class ProcessRecord(_Model):
    """One of the lab's cluster processes (``ciliary-controller-manager``, ``ciliary-operator``,
    the kubelet role): started and restarted by the supervisor, which alone writes its pid,
    start time, restarts and last exit; ``argv`` and ``wanted`` are the manager's."""

    argv: list[str]
    log: str
    cgroup: str | None = None
    wanted: bool = True
    pid: int | None = None
    start_time: int | None = None
    restarts: int = 0
    last_exit: str | None = None


class ControlPlaneRecord(_Model):
    """The lab's etcd and API server. Their pids, start times and ports live in
    ``<lab dir>/controlplane.json`` (``lab.controlplane``), rewritten by whoever (re)starts them;
    the restart counts here are written by the supervisor only, like the agents'."""

    url: str
    kubeconfig: str
    network_urls: list[str] = Field(
        default_factory=list,
        description="the API on the lab network (the bridge's addresses, port 6443), reachable "
        "from the nodes, not from pods",
    )
    apiserver_restarts: int = 0
    etcd_restarts: int = 0
    apiserver_last_exit: str | None = None
    etcd_last_exit: str | None = None


class ImageRecord(_Model):
    """The command (and args) the lab runs for an image (from the Lab's ``spec.images``)."""

    command: list[str]
    args: list[str] = Field(default_factory=list)


class LabNetworkRecord(_Model):
    """The lab network (``lab.underlay``, from the Lab's ``spec.nodeNetwork``) and the routing
    settings every agent of the lab is started with. Recorded before the namespace is made."""

    netns: str
    bridge: str
    ipv4: str = Field(description="the subnet, e.g. 172.18.0.0/24")
    ipv6: str
    routing_mode: str = "tunnel"
    auto_direct_node_routes: bool = False
    ipv4_native_routing_cidr: str | None = None
    ipv6_native_routing_cidr: str | None = None
    tunnel_port: int = TUNNEL_PORT
    health_check_interval_s: float = 60.0


class ExternalRecord(_Model):
    """A host of the world outside the cluster (the Lab's ``spec.externals``): its netns on the
    lab network and its command's process (not restarted: a host of its own)."""

    name: str
    netns: str
    ipv4: str
    ipv6: str
    argv: list[str] = Field(default_factory=list)
    pid: int | None = None
    start_time: int | None = None
    cgroup: str | None = None
    log: str | None = None


class LabRecord(_Model):
    name: str
    file: str | None
    created_at: float
    nodes: list[NodeRecord] = Field(default_factory=list)
    pods: list[PodRecord] = Field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = Field(default_factory=dict)
    monitor_aggregation: str = "medium"
    socket_lb: bool = False
    """The Lab's ``spec.socketLB.enabled``: the agents' ``--bpf-lb-sock``."""
    dns_pre_cache: list[dict[str, Any]] = Field(default_factory=list)
    """The Lab's ``spec.dnsProxy.preCache`` as the agents' ``--tofqdns-pre-cache`` reads it
    (``lookup-time``: ``lab up``)."""
    dns_min_ttl: int = 0
    dns_idle_connection_grace_period_s: float = 0.0
    dns_max_deferred_connection_deletes: int = 10000
    ct_gc_interval_s: float = 30.0
    """The Lab's ``spec.dnsProxy`` zombie settings and ``spec.conntrackGCInterval``: the agents'
    ``--tofqdns-idle-connection-grace-period``, ``--tofqdns-max-deferred-connection-deletes``,
    ``--conntrack-gc-interval``."""
    max_restart_period_s: float = 300.0
    """The Lab's ``spec.kubelet.crashLoopBackOff.maxContainerRestartPeriod``: the cap of the
    restart back-off of the kubelet role's containers and of what the supervisor tends."""
    maglev_hash_seed: str | None = None
    """The cluster's ``--bpf-lb-maglev-hash-seed``, made at ``lab up`` and given to every agent
    (None in records made before: the agents' default seed)."""
    ipam_mode: str = "cluster-pool"
    hubble: HubbleRecord = Field(default_factory=HubbleRecord)
    images: dict[str, ImageRecord] = Field(default_factory=dict)
    relay: RelayRecord | None = None
    supervisor: SupervisorRecord | None = None
    control_plane: ControlPlaneRecord | None = None
    processes: dict[str, ProcessRecord] = Field(default_factory=dict)
    network: LabNetworkRecord | None = Field(
        default=None, description="None in records of labs made before the lab network"
    )
    externals: list[ExternalRecord] = Field(default_factory=list)


class NodeView(_Model):
    name: str
    netns: str
    agent_pid: int | None
    agent_alive: bool
    agent_restarts: int = 0
    agent_last_exit: str | None = None
    agent_last_exit_at: float | None = None
    socket: str
    ipv4_cidr: str | None
    ipv6_cidr: str | None
    kubeconfig: str | None = None
    node_ipv4: str | None = None
    node_ipv6: str | None = None


class ExternalView(_Model):
    name: str
    netns: str
    ipv4: str
    ipv6: str
    pid: int | None
    alive: bool


class PodView(_Model):
    name: str
    namespace: str
    node: str
    netns: str
    ipv4: str | None
    ipv6: str | None
    endpoint_id: int | None
    pids: list[int]
    running: bool
    labels: dict[str, str]


class ProcessView(_Model):
    name: str
    pid: int | None
    alive: bool
    restarts: int = 0
    last_exit: str | None = None


class RelayView(_Model):
    address: str
    pid: int | None
    alive: bool


class ControlPlaneView(_Model):
    url: str
    kubeconfig: str
    apiserver_pid: int | None
    apiserver_alive: bool
    apiserver_restarts: int = 0
    apiserver_last_exit: str | None = None
    etcd_pid: int | None
    etcd_alive: bool
    etcd_restarts: int = 0
    etcd_last_exit: str | None = None


class PodTableView(_Model):
    """The lab's pods as ``kubectl get pods -A -o wide`` prints them: the API server's Table
    (its columns, upper-cased, after NAMESPACE), every cell as text."""

    columns: list[str]
    rows: list[list[str]]


class LabView(_Model):
    name: str
    file: str | None
    created_at: float
    nodes: list[NodeView]
    pods: list[PodView]
    relay: RelayView | None = None
    supervisor_alive: bool | None = None
    control_plane: ControlPlaneView | None = None
    processes: list[ProcessView] = Field(default_factory=list)
    externals: list[ExternalView] = Field(default_factory=list)
    pod_table: PodTableView | None = Field(
        default=None, description="from the API server; None when it does not answer"
    )
