"""Composition root of the agent: builds the components in order, runs, stops. No logic here.

Start-up order matters for the restart contract: the datapath is loaded through its pins first
(so running traffic keeps its state), then endpoints are restored and their programs re-attached
(atomic replace), then (with an API) the health endpoint is made or kept and the node's
CiliumNode written with its addresses, then Hubble and only then the ring buffer reader start
(so the backlog of events written while no agent ran reaches Hubble, and the first flows find
every endpoint known), and only then is the API socket opened, so no request sees a
half-restored node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable
from concurrent.futures import Future
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path

from ciliary import __version__, processes
from ciliary.agent.accesslog import HTTPAccessBatch, to_l7_batch
from ciliary.agent.config import MONITOR_AGGREGATION, TUNNEL_OVERHEAD, AgentConfig
from ciliary.agent.dnsproxy import DNSProxy, EndpointDNSRules
from ciliary.agent.endpoints import EndpointManager
from ciliary.agent.envoypolicy import EndpointView, NodeEnvoy
from ciliary.agent.fibdirect import FibDirectWatch, TunnelDirectWatch
from ciliary.agent.health import ClusterHealthChecker, HealthTarget
from ciliary.agent.healthendpoint import HealthEndpoint, netns_name
from ciliary.agent.hubble import AgentHubble
from ciliary.agent.identity import IdentityAllocator, LocalIdentityAllocator
from ciliary.agent.ipam import IPAM, ClusterPoolIPAM, PoolsIPAM
from ciliary.agent.ipam.kubestore import KubeDatastore
from ciliary.agent.k8s import ciliumendpoints, nodecidrs
from ciliary.agent.k8s.ciliumendpoints import EndpointSync
from ciliary.agent.k8s.hostports import HostPorts
from ciliary.agent.k8s.identity import CRDIdentityAllocator
from ciliary.agent.k8s.nodemanager import LocalNode, NodeManager, NodeRoutes
from ciliary.agent.k8s.pods import PodWatcher
from ciliary.agent.k8s.policies import PolicyWatcher
from ciliary.agent.k8s.services import ServiceWatcher, synced_apis
from ciliary.agent.masquerade import setup_masquerade
from ciliary.agent.monitor import Monitor
from ciliary.agent.podstore import PodLookup, PodMeta, no_pods
from ciliary.agent.policymanager import PolicyManager
from ciliary.agent.proxysockets import ProxySockets
from ciliary.agent.server import APIServer
from ciliary.agent.services import (
    FrontendNode,
    ServiceManager,
    ServiceSyncer,
    lb_map_entries,
    service_frontends,
    service_handlers,
)
from ciliary.core import proxyports
from ciliary.core.atomicfile import write_json
from ciliary.core.defaults import ENVOY_PIDFILE, ENVOY_STATE
from ciliary.core.flow import IP_PROTOCOLS, ReservedIdentity, tcp_flag_names
from ciliary.core.maglev import parse_hash_seed
from ciliary.core.models import (
    FQDN_SOURCE_CONNECTION,
    ClusterNodeStatus,
    CTEntry,
    DatapathStatus,
    Endpoint,
    EndpointState,
    FQDNCacheEntry,
    IPAMStatus,
    IPCacheEntry,
    LBMapEntry,
    MaglevTable,
    MapPressure,
    ServiceFrontend,
    StatusResponse,
)
from ciliary.core.proxyports import DNS_EGRESS, HTTP_EGRESS, HTTP_INGRESS, ProxyPorts
from ciliary.core.proxyports import allocate as allocate_proxy_ports
from ciliary.datapath import probe
from ciliary.datapath.linux import link as links
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.config import ROUTING_MODE_NATIVE, ROUTING_MODE_TUNNEL
from ciliary.datapath.maps.conntrack import CT_SCOPE_SERVICE
from ciliary.datapath.maps.endpoints import IPAddress
from ciliary.kube.client import KubeClient, KubeObject
from ciliary.kube.informer import HandlerFuncs, Informer
from ciliary.policy.dnszombies import ZombieCollection
from ciliary.policy.fqdn import DNSCache, DNSLookup

log = logging.getLogger(__name__)
DNS_GC_INTERVAL_S = 1.0
SAVED_DNS_CACHE = "fqdn-cache.json"
"""In the state directory: the DNS cache (``DNSCache.dump``), so a restarted agent's toFQDNs
rules allow what they allowed before (saved every second it changed, and at exit)."""
CT_FLAG_NAMES = {0x1: "tx-closing", 0x2: "rx-closing", 0x4: "seen-reply", 0x20: "loopback"}


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        datapath: NodeDatapath | None = None,
        datapath_loading: Future[None] | None = None,
    ) -> None:
        """``datapath``: the node's, made from ``cfg`` by the caller, whose load (``run`` waits
        for ``datapath_loading``, its outcome) started before this agent was built; else
        ``run`` loads one made here."""
        # cluster-pool v2: the operator allocates this node's CIDRs into its CiliumNode; no API
        # socket, so no CNI ADD, until they are there (main waits for them already)
        cfg = nodecidrs.with_allocated_ranges(cfg)
        self.cfg = cfg
        self.node = cfg.node
        self.started = time.monotonic()
        self.datapath = datapath or NodeDatapath(
            cfg.bpf_object, cfg.pin_dir, ct_max=cfg.ct_max, lb_max=cfg.lb_max
        )
        self._datapath_loading = datapath_loading
        self.ipam_datastore: KubeDatastore | None = None
        self.ipam = self._make_ipam(cfg)
        self.identities: IdentityAllocator = LocalIdentityAllocator(
            cfg.state_dir / "identities.json"
        )
        envoy_dir = cfg.state_dir / ENVOY_STATE
        self.proxy_ports = (
            allocate_proxy_ports(
                {DNS_EGRESS: cfg.tofqdns_proxy_port},
                restored=proxyports.load(cfg.state_dir / proxyports.SAVED_PORTS),
                # the Envoy an earlier agent left still listens on its ports (it is adopted)
                held=(HTTP_EGRESS, HTTP_INGRESS)
                if processes.alive_recorded(envoy_dir / ENVOY_PIDFILE)
                else (),
            )
            if cfg.enable_l7_proxy
            else ProxyPorts()
        )
        """The node's proxy listeners (``ciliary.core.proxyports``): the DNS proxy and Envoy bind
        these ports; the policy maps redirect L7 rules' traffic to them (the previous agent's,
        saved in the state directory, when they are still free or still Envoy's)."""
        mode = (
            cfg.enable_policy if cfg.enable_policy in ("default", "always", "never") else "default"
        )
        self.policy = PolicyManager(
            datapath=self.datapath,
            # without an API server, policies imported through this agent's own API live in its
            # state directory (they survive a restart); with one, the API server holds them
            saved=None if cfg.kubeconfig is not None or cfg.in_cluster else cfg.state_dir,
            mode=mode,  # type: ignore[arg-type]
            identity_labels=self._identity_labels,  # whichever allocator is in use
            all_identities=self._all_identities,
            fqdns=DNSCache(
                cfg.tofqdns_min_ttl,
                cfg.tofqdns_max_ips_per_name,
                cfg.tofqdns_max_deferred_connection_deletes,
            ),
            proxy_ports=self.proxy_ports if cfg.enable_l7_proxy else None,
        )
        self.endpoints = EndpointManager(
            state_dir=cfg.state_dir,
            datapath=self.datapath,
            ipam=self.ipam,
            identities=self.identities,
            pods=self._pod_meta,
            policy=self.policy,
            mtu=self._pod_mtu(cfg),
            on_change=self._endpoint_changed,
        )
        self.monitor = Monitor(
            cfg.node, self.datapath, self._pod_of_endpoint, explain=self._explain_cookie,
            default_deny=self.policy.default_deny,
        )  # fmt: skip
        self.hubble = AgentHubble(self, cfg.hubble)
        self.server = APIServer(self, cfg.socket)
        self._pods: PodLookup = no_pods  # the pod informer's once the API is reached
        self.kube: KubeClient | None = None
        self.pod_watcher: PodWatcher | None = None
        self.policy_watcher: PolicyWatcher | None = None
        self.service_watcher: ServiceWatcher | None = None
        self.services: ServiceSyncer | None = None
        """The service manager: the watcher's services into the BPF service maps."""
        self.endpoint_sync: EndpointSync | None = None
        self.node_manager: NodeManager | None = None
        self.tunnel_direct: TunnelDirectWatch | None = None
        self.health: ClusterHealthChecker | None = None
        """Cluster health: with a Kubernetes API (its nodes are the node manager's)."""
        self.health_endpoint = HealthEndpoint(
            self.endpoints, netns_name(cfg.netns, cfg.node), cfg.health.port
        )
        """The node's health endpoint: made (or kept) with cluster health, else removed."""
        self.crd_identities: CRDIdentityAllocator | None = None
        """Set when the agent has a Kubernetes API (``--kubeconfig`` or in a pod)."""
        self.dns_proxy: DNSProxy | None = None
        self._saved_dns_version = 0
        """The DNS cache's version last saved (``SAVED_DNS_CACHE``)."""
        """The DNS proxy (``rules: dns``, toFQDNs' answers), started when L7 proxies are on."""
        self.envoy = NodeEnvoy(
            cfg.node, envoy_dir, self.proxy_ports, self._endpoint_views,
            lambda: [(str(r.prefix), r.sec_id) for r in self.datapath.ipcache.items()],
            ipv6=cfg.ipv6_range is not None, on_access=self._http_access,
            access_busy=self._hubble_half_full,
        )  # fmt: skip
        """The node's Envoy (HTTP L7 rules), when the node has its proxy ports."""
        self.proxy_sockets: ProxySockets | None = None
        """Envoy's listeners in the datapath's socket map (bpf_sk_lookup.c), with Envoy."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._serving = asyncio.Event()
        """Set once the agent serves: its ring reader runs (the health prober waits for it)."""

    @staticmethod
    def _pod_mtu(cfg: AgentConfig) -> int:
        """Cilium's route MTU: in tunnel mode every pod packet gets a VXLAN header on the way
        to another node, so pods send that much less than the underlay carries."""
        tunnel = cfg.network.routing_mode == "tunnel"
        return cfg.mtu - TUNNEL_OVERHEAD if tunnel else cfg.mtu

    def _make_ipam(self, cfg: AgentConfig) -> IPAM:
        if cfg.ipam_mode == "pools":  # Calico's pools and blocks live in the API (main checks)
            self.ipam_datastore = KubeDatastore(cfg.kubeconfig)
            self.ipam_datastore.start()
            return PoolsIPAM(cfg.node, cfg.node_labels, self.ipam_datastore)
        return ClusterPoolIPAM(
            cfg.node, cfg.ipv4_range, cfg.ipv6_range, cfg.state_dir / "ipam-allocations.json"
        )

    def _identity_labels(self, number: int) -> tuple[str, ...] | None:
        return self.identities.lookup(number)

    def _all_identities(self) -> list[tuple[int, tuple[str, ...]]]:
        return self.identities.all()

    async def _pod_meta(self, namespace: str, name: str) -> PodMeta | None:
        return await self._pods(namespace, name)

    async def _connect_kubernetes(self) -> None:
        """Pods, namespaces and policies from the API: informers synced before endpoints are
        restored (their labels and the policies they get must be the cluster's)."""
        self.kube = await KubeClient.connect(self.cfg.kubeconfig)
        self.pod_watcher = PodWatcher(self.kube, self.node, self.endpoints.pod_changed)
        self.policy_watcher = PolicyWatcher(
            self.kube, self.policy, self._policy_changed, node=self.node
        )
        # cluster-wide identities (CiliumIdentity objects): every one of the cluster feeds the
        # selector cache; CIDR identities stay node-local (the policy manager's)
        self.crd_identities = CRDIdentityAllocator(self.kube)
        self.crd_identities.on_added.append(self._cluster_identity_added)
        self.crd_identities.on_deleted.append(self._cluster_identity_deleted)
        self.endpoint_sync = EndpointSync(self.kube, self.node, self._node_ips())
        self.node_manager = self._make_node_manager(self.kube)
        self.node_manager.on_reconciled.append(self.envoy.changed)  # peers' addresses
        if self.tunnel_direct is not None:
            self.node_manager.on_reconciled.append(self.tunnel_direct.changed)
        self.service_watcher = ServiceWatcher(self.kube)
        self.services = self._make_service_syncer(self.service_watcher)
        self.service_watcher.start()
        self.pod_watcher.start()
        self.policy_watcher.start()
        self.crd_identities.start()
        self.endpoint_sync.start()
        if self.cfg.health.enabled:  # probes once the node manager knows the cluster's nodes
            self.health = ClusterHealthChecker(
                self._health_targets,
                ready=self._health_ready,
                interval_s=self.cfg.health.interval_s,
                port=self.cfg.health.port,
            )
            soon = self.health.probe_soon  # a node joins or leaves: probe now, not in a minute
            self.node_manager.nodes_informer.add_handler(
                HandlerFuncs(add=lambda _o: soon(), delete=lambda _o: soon())
            )
            await self.health.start()
        self.node_manager.start()  # writes nothing before its informers synced
        log.info("waiting for the Kubernetes API at %s", self.kube.host)
        await self.pod_watcher.wait_synced()
        await self.policy_watcher.wait_synced()
        await self.crd_identities.informer.wait_synced()
        self._pods = self.pod_watcher
        self.identities = self.crd_identities
        self.endpoints.use_identities(self.crd_identities)
        log.info("pods, namespaces and policies synced from %s", self.kube.host)

    def _make_service_syncer(self, watcher: ServiceWatcher) -> ServiceSyncer:
        """The service manager over the pinned maps (ids restored from them), fed by the
        watcher's informers once its cache has each event; it writes nothing before the
        watcher synced, then prunes what went while no agent ran."""
        cfg = self.cfg
        seed = parse_hash_seed(cfg.maglev_hash_seed)
        # the datapath's half of Maglev: table size and tuple-hash seeds (before any table)
        self.datapath.lb.set_maglev_config(cfg.maglev_table_size, seed.jhash0, seed.jhash1)
        manager = ServiceManager(
            self.datapath.lb,
            algorithm=cfg.lb_algorithm,
            maglev_table_size=cfg.maglev_table_size,
            maglev_seed=seed.murmur,
        )
        manager.restore()
        node = FrontendNode(self.node, tuple(self._node_ips()))  # NodePort: --ipv4/6-node
        # the Services' frontends and this node's pods' hostPorts (agent.k8s.hostports)
        hostports, pods = HostPorts(self.node), self.pod_watcher
        assert pods is not None
        syncer = ServiceSyncer(
            manager,
            lambda: [*watcher.services.services(), *hostports.services()],
            lambda ns, name: hostports.get(ns, name) or watcher.services.get(ns, name),
            node,
        )

        def pod_event(pod: KubeObject, deleted: bool = False) -> None:
            for key in hostports.update(pod, deleted):
                syncer.changed(*key)

        pods.pods.add_handler(
            HandlerFuncs(
                add=pod_event,
                update=lambda _old, new: pod_event(new),
                delete=lambda pod: pod_event(pod, deleted=True),
            )
        )
        on_service, on_slice = syncer.handlers()
        watcher.informers["services"].add_handler(on_service)
        watcher.informers["endpointslices"].add_handler(on_slice)

        # toServices rules: the policy follows the Services' endpoints
        def policy_follows(namespace: str, name: str) -> None:
            if self.policy.service_changed(namespace, name, watcher.services.get(namespace, name)):
                reason = f"Service {namespace}/{name} changed (toServices)"
                self._spawn(self._policy_changed(reason), f"service-{namespace}-{name}-policy")

        policy_svc, policy_slice = service_handlers(policy_follows)
        watcher.informers["services"].add_handler(policy_svc)
        watcher.informers["endpointslices"].add_handler(policy_slice)

        async def synced() -> None:  # no full sync before the pods' hostPorts are known
            await watcher.wait_synced()
            await pods.wait_synced()

        self._spawn(syncer.run(synced), "services")
        return syncer

    async def _register_node(self, kube: KubeClient) -> None:
        """The node's CiliumNode, once the endpoints are restored and the health endpoint is
        there (its addresses are ``spec.health``; without health checking there is none)."""
        health: list[str] = []
        if self.cfg.health.enabled:
            ep = await self.health_endpoint.ensure()  # None: not made (logged), none published
            health = [a for a in (ep.ipv4, ep.ipv6) if a] if ep is not None else []
        else:
            await self.health_endpoint.remove()
        await ciliumendpoints.register_node(
            kube,
            ciliumendpoints.cilium_node(
                self.node,
                [str(r) for r in (self.ipam.router_v4, self.ipam.router_v6) if r is not None],
                [str(c) for c in (self.cfg.ipv4_range, self.cfg.ipv6_range) if c is not None],
                self.cfg.node_labels,
                self._node_ips(),
                health=health,
            ),
        )

    def _node_ips(self) -> list[str]:
        """This node's IPs on the underlay (``--ipv4-node``, ``--ipv6-node``), IPv4 first."""
        net = self.cfg.network
        return [str(a) for a in (net.ipv4_node, net.ipv6_node) if a is not None]

    async def _health_ready(self) -> None:
        """The first round once the node manager knows the cluster's nodes and the agent
        serves: a probe of this node's health endpoint is a datapath event, which must not
        land in a ring no reader drains yet (a restart after an outage: it would be lost)."""
        assert self.node_manager is not None
        await self.node_manager.wait_synced()
        await self._serving.wait()

    def _health_targets(self) -> list[HealthTarget]:
        nm = self.node_manager
        nodes = nm.nodes() if nm is not None else []
        return [HealthTarget(n.name, n.node_ips, n.local, n.health_ips) for n in nodes]

    def _make_node_manager(self, kube: KubeClient) -> NodeManager:
        net = self.cfg.network
        local = LocalNode(
            self.node,
            tuple(a for a in (net.ipv4_node, net.ipv6_node) if a is not None),
            tuple(c for c in (self.cfg.ipv4_range, self.cfg.ipv6_range) if c is not None),
            tuple(r for r in (self.ipam.router_v4, self.ipam.router_v6) if r is not None),
        )
        tunnel = net.routing_mode == "tunnel"
        return NodeManager(
            kube,
            local,
            self.datapath.ipcache,
            mode=net.routing_mode,
            # in every mode: routes left by a native-mode run before are pruned
            routes=NodeRoutes(
                net.devices[0] if net.devices else None,
                tunnel_mtu=self._pod_mtu(self.cfg) if tunnel else None,
            ),
            auto_direct_node_routes=net.auto_direct_node_routes,
        )

    def _cluster_identity_added(self, number: int, labels: tuple[str, ...]) -> None:
        changed = self.policy.identity_added(number, labels)
        if changed:
            self._spawn(self.endpoints.selections_changed(changed), f"identity-{number}-added")

    def _cluster_identity_deleted(self, number: int, _labels: tuple[str, ...]) -> None:
        if any(ep.identity == number for ep in self.endpoints.endpoints()):
            return  # still ours (the operator's GC lost a race with a new endpoint)
        changed = self.policy.identity_removed(number)
        if changed:
            self._spawn(self.endpoints.selections_changed(changed), f"identity-{number}-deleted")

    async def _policy_changed(self, reason: str) -> None:
        await self.endpoints.regenerate_all(reason)
        for ep in self.endpoints.endpoints():  # policy enforcement in the CiliumEndpoints
            self._publish_endpoint(ep)

    def _publish_endpoint(self, ep: Endpoint) -> None:
        sync = self.endpoint_sync
        if sync is None or not ep.pod_name:
            return
        if ciliumendpoints.publishable(ep):
            pol = self.policy.realized(ep.id)
            enforcing = (pol.ingress_enforced, pol.egress_enforced) if pol else (False, False)
            labels = self.identities.lookup(ep.identity) or ()
            ports = self.endpoints.named_ports(ep.id)
            node = ciliumendpoints.cep_node(self.node, self._node_ips())
            status = ciliumendpoints.endpoint_status(ep, node, labels, enforcing, ports)
            sync.changed(ep.namespace, ep.pod_name, status)
        elif ep.state in (EndpointState.DISCONNECTING, EndpointState.DISCONNECTED):
            sync.deleted(ep.namespace, ep.pod_name)

    async def _disconnect_kubernetes(self) -> None:
        if self.health is not None:
            await self.health.stop()
        await self.health_endpoint.stop()  # its endpoint and netns stay (restart contract)
        if self.endpoint_sync is not None:
            await self.endpoint_sync.flushed(2.0)
            await self.endpoint_sync.stop()
        if self.crd_identities is not None:
            await self.crd_identities.stop()
        if self.node_manager is not None:  # its ipcache entries and routes stay (restart)
            await self.node_manager.stop()
        for watcher in (self.policy_watcher, self.pod_watcher, self.service_watcher):
            if watcher is not None:
                await watcher.stop()
        if self.kube is not None:
            await self.kube.close()

    def _explain_cookie(self, cookie: int) -> list[str]:
        return [str(r) for r in self.policy.rules_of_cookie(cookie)]

    def _endpoint_changed(self, ep: Endpoint) -> None:
        self.hubble.endpoint_changed(ep)
        self._publish_endpoint(ep)

    def _pod_of_endpoint(self, ep_id: int) -> str | None:
        ep = self.endpoints.get(ep_id)
        return f"{ep.namespace}/{ep.pod_name}" if ep is not None and ep.pod_name else None

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _setup_node(self) -> None:
        for key, value in (
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ):
            links.write_sysctl(key, value)
        host_ifindex = await asyncio.to_thread(
            links.ensure_host_device, self.ipam.router_v4, self.ipam.router_v6
        )
        for router in (self.ipam.router_v4, self.ipam.router_v6):
            if router is not None:
                self.datapath.ipcache.upsert(ip_network(router), ReservedIdentity.HOST)
        net = self.cfg.network
        mode, tunnel_ifindex = ROUTING_MODE_NATIVE, 0
        if net.routing_mode == "tunnel":
            # kept as it is when it exists (restart contract); the program replaced atomically
            tunnel_ifindex = await asyncio.to_thread(
                links.ensure_tunnel_device, net.tunnel_port, self._pod_mtu(self.cfg)
            )
            self.datapath.attach_overlay(tunnel_ifindex)
            self.datapath.attach_from_host(host_ifindex)
            mode = ROUTING_MODE_TUNNEL
        else:
            self.datapath.detach_from_host(host_ifindex)
            if await asyncio.to_thread(links.delete_link, links.TUNNEL_DEVICE):
                log.info("native routing: removed the tunnel device of an earlier run")
        # written once, whole, after the device exists: a restarted agent's programs keep
        # tunnelling with the previous entry until then
        self.datapath.config.set(
            MONITOR_AGGREGATION[self.cfg.monitor_aggregation],
            int(self.cfg.monitor_aggregation_interval_s * 1e9),
            routing_mode=mode,
            tunnel_ifindex=tunnel_ifindex,
            tunnel_port=net.tunnel_port if tunnel_ifindex else 0,
        )
        await asyncio.to_thread(setup_masquerade, self.datapath, net)
        if self.proxy_ports.ports:
            # packets bpf_lxc assigns to a proxy's socket are delivered locally (lib/proxy.h)
            await asyncio.to_thread(links.ensure_proxy_routing)
        cidrs = [c for c in (net.ipv4_native_routing_cidr, net.ipv6_native_routing_cidr) if c]
        if mode == ROUTING_MODE_NATIVE and cidrs:  # the main table alone where rules allow it
            routers = [r for r in (self.ipam.router_v4, self.ipam.router_v6) if r is not None]
            self._spawn(FibDirectWatch(self.datapath.config, cidrs, routers).run(), "fib-direct")
        elif mode == ROUTING_MODE_TUNNEL:
            # the tunnel endpoints' next hop in the main table alone where rules allow it: the
            # node manager's (_connect_kubernetes hooks it up; without an API, none)
            self.tunnel_direct = TunnelDirectWatch(
                self.datapath.tunnel_direct,
                lambda: self.node_manager.tunnel_endpoints() if self.node_manager else set(),
            )
            self._spawn(self.tunnel_direct.run(), "fib-direct-tunnel")

    def _setup_socket_lb(self) -> None:
        """Socket-LB on the node's cgroup (--cgroup-root, --bpf-lb-sock, as upstream's), else
        the tc-level LB alone: a link an earlier run left is detached."""
        cfg = self.cfg
        if cfg.bpf_lb_sock and cfg.cgroup_root is not None:
            self.datapath.attach_socket_lb(cfg.cgroup_root)
            log.info("socket-LB attached to cgroup %s", cfg.cgroup_root)
        elif self.datapath.detach_socket_lb():
            log.info("socket-LB detached: service translation at tc only")

    async def run(self) -> None:
        cfg = self.cfg
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.proxy_ports.ports:
            proxyports.save(cfg.state_dir / proxyports.SAVED_PORTS, self.proxy_ports)
        self._restore_dns_cache()  # before policies: toFQDNs rules start with these IPs
        self._load_dns_pre_cache()
        if self._datapath_loading is None:
            self.datapath.load()
        else:
            await asyncio.wrap_future(self._datapath_loading)
        await self._setup_node()
        self._setup_socket_lb()
        if cfg.kubeconfig is not None or cfg.in_cluster:
            await self._connect_kubernetes()
        else:
            self.policy.load_saved()
        restored, removed = await self.endpoints.restore()
        log.info("restored %d endpoints, removed %d stale objects", restored, removed)
        if self.kube is not None:
            await self._register_node(self.kube)
        await self._start_dns_proxy()  # endpoints and policies known: queries can be decided
        if self.envoy.enabled:  # its configuration follows every realized policy from now on
            self.policy.on_realized.append(lambda _ep: self.envoy.changed())
            self.proxy_sockets = ProxySockets(
                self.datapath.attach_proxy_lookup(), lambda: self.envoy.process.pid,
                lambda: self.envoy.listener_ports, ipv6=cfg.ipv6_range is not None,
            )  # fmt: skip
            self.envoy.on_configured.append(self.proxy_sockets.changed)
            await self.envoy.start()
        # Hubble's sink before the reader: its first drain is the ring's backlog (events the
        # datapath wrote while no agent ran), which must reach Hubble, enriched from the
        # endpoints just restored.
        await self.hubble.start()
        self.monitor.start()
        await self.server.start()
        self._serving.set()
        self._spawn(self._ct_gc(), "ct-gc")
        self._spawn(self._dns_gc(), "dns-gc")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("agent for node %s ready on %s (pid %d)", cfg.node, cfg.socket, os.getpid())
        try:
            await self._stop.wait()
        finally:
            # Restart contract: programs stay attached and maps pinned; only the API goes away.
            await self.server.stop()
            if self.dns_proxy is not None:
                await self.dns_proxy.stop()
            if self.proxy_sockets is not None:
                await self.proxy_sockets.stop()
            await self.envoy.detach()  # Envoy runs on: the next agent adopts it
            await self.hubble.stop()
            self.monitor.stop()
            for task in list(self._tasks):
                task.cancel()
            self._save_dns_cache()
            await self._disconnect_kubernetes()
            if self.ipam_datastore is not None:
                await asyncio.to_thread(self.ipam_datastore.close)
            self.datapath.close()

    def _restore_dns_entries(self, path: Path) -> None:
        """The DNS cache entries of ``path`` (the pre-cache shape, as ``DNSCache.dump`` writes
        them) into the cache; OSError or ValueError naming what is wrong."""
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError("expected a JSON list of entries")
        self.policy.fqdns.restore(data)

    def _load_dns_pre_cache(self) -> None:
        """``--tofqdns-pre-cache``: all its answers or, when it is bad, no start (the error names
        the file and the entry)."""
        path = self.cfg.tofqdns_pre_cache
        if path is None:
            return
        try:
            self._restore_dns_entries(path)
        except (OSError, ValueError) as err:
            raise RuntimeError(f"--tofqdns-pre-cache {path}: {err}") from err
        log.info("DNS cache: %d names from %s", len(self.policy.fqdns.names()), path)

    async def _dns_gc(self) -> None:
        """Expired DNS answers become zombies; zombies no connection used in the last conntrack
        GC pass leave, and toFQDNs rules stop selecting their IPs. The cache is saved when it
        changed (answers, expiry, zombies)."""
        while True:
            await asyncio.sleep(DNS_GC_INTERVAL_S)
            await self._dns_gc_pass(time.time())
            if self.policy.fqdns.version != self._saved_dns_version:
                self._save_dns_cache()

    async def _dns_gc_pass(self, now: float) -> None:
        collected: list[ZombieCollection] = []
        if self.policy.dns_changed(lambda cache: collected.append(cache.gc(now))):
            await self._policy_changed("DNS answers expired, unused (toFQDNs)")
        for c in collected:
            if c.dead:
                log.info("DNS cache: %d expired IPs no connection uses removed", len(c.dead))
            if c.evicted_in_use:
                log.warning(
                    "DNS cache: %d expired IPs still in use removed (over"
                    " --tofqdns-max-deferred-connection-deletes or"
                    " --tofqdns-endpoint-max-ip-per-hostname): their connections are cut",
                    c.evicted_in_use,
                )

    def _restore_dns_cache(self) -> None:
        """The DNS cache a previous run saved (a bad file is logged and left: fewer IPs
        allowed, never more)."""
        path = self.cfg.state_dir / SAVED_DNS_CACHE
        if not path.exists():
            return
        try:
            self._restore_dns_entries(path)
        except (OSError, ValueError) as err:
            log.error("%s: DNS cache not restored: %s", path, err)
            return
        self._saved_dns_version = self.policy.fqdns.version
        log.info("DNS cache: %d names restored", len(self.policy.fqdns.names()))

    def _save_dns_cache(self) -> None:
        try:
            write_json(self.cfg.state_dir / SAVED_DNS_CACHE, self.policy.fqdns.dump(time.time()))
        except OSError as err:
            log.warning("DNS cache not saved: %s", err)
            return
        self._saved_dns_version = self.policy.fqdns.version

    async def _start_dns_proxy(self) -> None:
        """The DNS proxy on its port (``ciliary.core.proxyports``), if L7 proxies are on."""
        port = self.proxy_ports.ports.get(DNS_EGRESS)
        if port is None:
            return
        rules = EndpointDNSRules(
            endpoint_at=self._endpoint_at,
            policy_of=self.policy.realized,
            identity_of=self.policy.identity_of_ip,
            update=self._dns_answered,
        )
        cfg = self.cfg
        self.dns_proxy = DNSProxy(
            port, rules, on_event=self.monitor.publish,
            reject_code=cfg.tofqdns_dns_reject_response_code,
            response_max_delay_s=cfg.tofqdns_proxy_response_max_delay_s,
            transparent=cfg.dnsproxy_enable_transparent_mode,
            concurrency_limit=cfg.dnsproxy_concurrency_limit,
            concurrency_grace_s=cfg.dnsproxy_concurrency_grace_s,
        )  # fmt: skip
        await self.dns_proxy.start()

    def _hubble_half_full(self) -> bool:
        """Whether Hubble's events queue is half full: the access log reader waits (a read's
        lines then still fit; a burst would overflow it: L7 flows lost)."""
        queue = self.hubble.queue
        return len(queue) * 2 > queue.capacity

    def _http_access(self, batch: HTTPAccessBatch) -> None:
        """The requests of one read of Envoy's access log: Hubble's request and response
        flows, as one batch of L7 records (grouped: per request only its time and latency)."""
        self.monitor.publish(to_l7_batch(batch))

    def _endpoint_views(self) -> list[EndpointView]:
        return [
            EndpointView(
                ep.id, tuple(a for a in (ep.ipv4, ep.ipv6) if a), self.policy.realized(ep.id)
            )
            for ep in self.endpoints.endpoints()
        ]

    def _endpoint_at(self, addr: object) -> int | None:
        text = str(addr)
        for ep in self.endpoints.endpoints():
            if text in (ep.ipv4, ep.ipv6):
                return ep.id
        return None

    def l7_stats(self) -> dict[tuple[str, str], int]:
        """The DNS proxy's requests for ``cilium_policy_l7_total`` (upstream's rules)."""
        if self.dns_proxy is None:
            return {}
        stats = self.dns_proxy.stats
        return {
            ("fqdn", "received"): stats.queries,
            ("fqdn", "forwarded"): stats.forwarded,
            ("fqdn", "denied"): stats.refused,
            ("fqdn", "parse_errors"): stats.malformed,
        }

    def _dns_answered(self, lookups: list[DNSLookup]) -> Awaitable[None] | None:
        """A DNS answer the proxy holds back: into the cache; when the IPs toFQDNs rules
        select changed, the regeneration of every endpoint (their maps allow the IPs) that the
        proxy awaits before it releases the answer (None: nothing to wait for)."""
        if self.policy.dns_changed(lambda cache: cache.load(lookups)):
            return self._policy_changed("DNS answer (toFQDNs)")
        return None

    def fqdn_cache(self) -> list[FQDNCacheEntry]:
        """The answers, then the zombies (``source`` connection) with the next conntrack GC
        pass as their expiration, as upstream lists them."""
        cache = self.policy.fqdns
        answers = [
            FQDNCacheEntry(fqdn=name, ip=ip, expiration_time=datetime.fromtimestamp(at, UTC))
            for name, ip, at in cache.entries()
        ]
        return answers + [
            FQDNCacheEntry(
                fqdn=name,
                ip=ip,
                expiration_time=datetime.fromtimestamp(cache.zombies.next_ct_gc or at, UTC),
                source=FQDN_SOURCE_CONNECTION,
            )
            for name, ip, at in cache.zombies.entries()
        ]

    async def _ct_gc(self) -> None:
        """Expired conntrack entries leave the map; the pass tells the DNS cache's zombies which
        IPs connections still use (upstream's MarkAlive, then SetCTGCTime after the marks)."""
        zombies = self.policy.fqdns.zombies
        grace = self.cfg.tofqdns_idle_connection_grace_period_s
        while True:
            await asyncio.sleep(self.cfg.ct_gc_interval_s)
            start = time.time()
            in_use: set[IPAddress] | None = set() if len(zombies) else None
            try:
                removed = self.datapath.ct.gc(time.monotonic_ns(), in_use)
                if removed:
                    log.debug("ct gc removed %d entries", removed)
            except Exception:
                log.exception("conntrack GC failed")
                continue  # not a complete pass: it condemns no zombie
            if in_use:
                zombies.mark_alive(start + grace, {str(addr) for addr in in_use})
            zombies.ct_gc_done(start, time.time() + self.cfg.ct_gc_interval_s)

    # ---- views for the API -----------------------------------------------------------------

    async def status(self) -> StatusResponse:
        usage = self.datapath.map_usage()
        attached = any(
            self.datapath.is_attached(ep.lxc_ifindex) for ep in self.endpoints.endpoints()
        )
        return StatusResponse(
            node=self.node,
            version=__version__,
            healthy=True,
            uptime_s=time.monotonic() - self.started,
            pid=os.getpid(),
            kernel=probe.kernel_features(datapath_loaded=True, attached=attached),
            datapath=DatapathStatus(
                object=str(self.cfg.bpf_object),
                programs=self.datapath.programs,
                pin_dir=str(self.cfg.pin_dir),
                monitor_aggregation=self.cfg.monitor_aggregation,
                events_lost=self.datapath.events_lost.total(),
            ),
            ipam=IPAMStatus(
                ipv4_cidr=self._cidr_text(4),
                ipv6_cidr=self._cidr_text(6),
                ipv4_router=str(self.ipam.router_v4) if self.ipam.router_v4 else None,
                ipv6_router=str(self.ipam.router_v6) if self.ipam.router_v6 else None,
                allocated=len(self.ipam.allocations()),
            ),
            endpoints_by_state=self.endpoints.counts_by_state(),
            kubernetes_apis=None if self.kube is None else synced_apis(self._informers()),
            cluster_nodes=None
            if self.node_manager is None
            else [
                ClusterNodeStatus(
                    name=n.name,
                    node_ips=list(n.node_ips),
                    local=n.local,
                    health_ips=list(n.health_ips),
                )
                for n in self.node_manager.nodes()
            ],
            cluster_health=None if self.health is None else self.health.report(),
            proxy_ports=dict(self.proxy_ports.ports),
            maps=[
                MapPressure(name=u.name, entries=u.entries, max_entries=u.max_entries)
                for u in usage
            ],
        )

    def _informers(self) -> list[Informer]:
        """The agent's informers (status reports which have synced)."""
        out: list[Informer] = []
        if self.pod_watcher is not None:
            out += [self.pod_watcher.pods, self.pod_watcher.namespaces]
        for watcher in (self.policy_watcher, self.service_watcher):
            out += watcher.informers.values() if watcher is not None else []
        if self.crd_identities is not None:
            out.append(self.crd_identities.informer)
        if self.hubble.peers is not None:
            out.append(self.hubble.peers.informer)
        if self.node_manager is not None:
            out += self.node_manager.informers()
        return out

    def _cidr_text(self, family: int) -> str | None:
        """Node CIDR (cluster-pool) or the pools of that family (pools), for status."""
        if self.cfg.ipam_mode == "cluster-pool":
            cidr = self.cfg.ipv4_range if family == 4 else self.cfg.ipv6_range
            return str(cidr) if cidr else None
        pools = [p.cidr for p in self.ipam.listing().pools if (":" in p.cidr) == (family == 6)]
        return ", ".join(pools) or None

    def ct_entries(self) -> list[CTEntry]:
        now = time.monotonic_ns()
        out = []
        for rec in self.datapath.ct.items():
            out.append(
                CTEntry(
                    family="IPv4" if rec.family == 2 else "IPv6",
                    protocol=IP_PROTOCOLS.get(rec.proto, str(rec.proto)),
                    src=str(rec.src),
                    dst=str(rec.dst),
                    sport=rec.sport,
                    dport=rec.dport,
                    age_s=round((now - rec.created_ns) / 1e9, 3),
                    expires_in_s=round((rec.expires_ns - now) / 1e9, 3),
                    tx_packets=rec.tx_packets,
                    tx_bytes=rec.tx_bytes,
                    rx_packets=rec.rx_packets,
                    rx_bytes=rec.rx_bytes,
                    tx_flags=tcp_flag_names(rec.tx_flags_seen) if rec.proto == 6 else [],
                    rx_flags=tcp_flag_names(rec.rx_flags_seen) if rec.proto == 6 else [],
                    flags=[n for bit, n in CT_FLAG_NAMES.items() if rec.flags & bit]
                    + (["service"] if rec.scope == CT_SCOPE_SERVICE else []),
                    rev_nat_index=rec.rev_nat_index,
                    src_identity=rec.src_sec_id,
                    dst_identity=rec.dst_sec_id,
                )
            )
        return out

    def service_frontends(self) -> list[ServiceFrontend]:
        """The frontends in the BPF service maps (``ciliary service list``)."""
        known = self.services.manager.known() if self.services is not None else {}
        return service_frontends(self.datapath.lb.dump(), known)

    def lb_entries(self) -> list[LBMapEntry]:
        """Every slot of the BPF service maps (``ciliary bpf lb list``)."""
        known = self.services.manager.known() if self.services is not None else {}
        return lb_map_entries(self.datapath.lb.dump(), known)

    def maglev_tables(self) -> list[MaglevTable]:
        """Every Maglev frontend's table in the maps (``ciliary bpf lb maglev list``)."""
        out = []
        for (frontend, slot), head in self.datapath.lb.dump().slots.items():
            if slot != 0:
                continue
            table = self.datapath.lb.maglev_table(head.rev_nat_index, frontend.family)
            if table is not None:
                out.append(
                    MaglevTable(
                        service_id=head.rev_nat_index,
                        family=frontend.address.version,
                        backend_ids=table,
                    )
                )
        return sorted(out, key=lambda t: (t.family, t.service_id))

    def ipcache_entries(self) -> list[IPCacheEntry]:
        return [
            IPCacheEntry(
                prefix=str(rec.prefix),
                identity=rec.sec_id,
                tunnel_endpoint=str(rec.tunnel_endpoint) if rec.tunnel_endpoint else None,
            )
            for rec in self.datapath.ipcache.items()
        ]
