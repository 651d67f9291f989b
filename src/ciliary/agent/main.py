"""``ciliary-agent``: parse flags, enter the node's network namespace, run the daemon.

The netns switch happens first, before any thread exists, so that every thread the agent starts
(asyncio's executor, netlink workers) lives in the node namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

from ciliary.agent.config import (
    DEFAULT_TUNNEL_PORT,
    MONITOR_AGGREGATION,
    ROUTING_MODES,
    RUN_ROOT,
    TUNNEL_PROTOCOLS,
    AgentConfig,
    HealthConfig,
    HubbleConfig,
    NetworkConfig,
    default_event_queue_size,
)
from ciliary.agent.k8s import nodecidrs
from ciliary.core.defaults import CLUSTER_HEALTH_PORT
from ciliary.core.maglev import (
    DEFAULT_HASH_SEED,
    DEFAULT_TABLE_SIZE,
    MAGLEV_TABLE_SIZES,
    parse_hash_seed,
    validate_table_size,
)
from ciliary.datapath.linux import netns
from ciliary.datapath.linux.errors import LinkError
from ciliary.datapath.loader import PIN_ROOT, NodeDatapath, default_object_dir
from ciliary.hubble.cliflags import parse_go_duration
from ciliary.hubble.filters import DEFAULT_CLUSTER_NAME
from ciliary.kube.client import SERVICE_HOST_ENV
from ciliary.processes import exit_now


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ciliary-agent", description="ciliary node agent")
    p.add_argument("--node-name", required=True)
    p.add_argument("--netns", help="network namespace (name or path) of the node")
    p.add_argument("--state-dir", type=Path, help="default /run/ciliary/<node>")
    p.add_argument("--bpf-pin-dir", type=Path, help="default /sys/fs/bpf/ciliary/<node>")
    p.add_argument("--socket", type=Path, help="default <state-dir>/agent.sock")
    p.add_argument("--bpf-object", type=Path, help="default bpf/bpf_lxc.o of the checkout")
    p.add_argument("--ipv4-range", type=IPv4Network, help="this node's IPv4 pod CIDR")
    p.add_argument("--ipv6-range", type=IPv6Network, help="this node's IPv6 pod CIDR")
    p.add_argument("--monitor-aggregation", choices=sorted(MONITOR_AGGREGATION), default="medium")
    p.add_argument("--monitor-aggregation-interval", type=float, default=5.0, metavar="SECONDS")
    p.add_argument("--bpf-ct-global-max", type=int, default=65536)
    p.add_argument("--bpf-lb-map-max", type=int, default=65536,
                   help="entries of each service map (slots, backends, rev-NAT)")  # fmt: skip
    p.add_argument("--bpf-lb-algorithm", choices=("random", "maglev"), default="random",
                   help="backend selection of new connections (a Service's"
                   " service.cilium.io/lb-algorithm annotation overrides)")  # fmt: skip
    p.add_argument("--bpf-lb-maglev-table-size", type=_maglev_size, default=DEFAULT_TABLE_SIZE,
                   metavar="M", help=f"Maglev table size, a prime of {MAGLEV_TABLE_SIZES}"
                   )  # fmt: skip
    p.add_argument("--bpf-lb-maglev-hash-seed", type=_maglev_seed, default=DEFAULT_HASH_SEED,
                   metavar="SEED", help="base64 of 12 bytes, the same on every node"
                   )  # fmt: skip
    p.add_argument("--cgroup-root", type=Path,
                   help="cgroup v2 directory of this node's pods (socket-LB attaches there)"
                   )  # fmt: skip
    p.add_argument("--bpf-lb-sock", nargs="?", const=True, default=True, type=_bool,
                   metavar="BOOL", help="socket-LB on --cgroup-root (true); false: tc-level LB"
                   " alone")  # fmt: skip
    p.add_argument("--tofqdns-pre-cache", type=Path, metavar="PATH",
                   help="DNS answers toFQDNs rules start with (JSON, as 'ciliary fqdn cache list"
                   " -o json')")  # fmt: skip
    p.add_argument("--tofqdns-min-ttl", type=int, default=0, metavar="SECONDS",
                   help="keep DNS answers' IPs at least this long (0: their TTL)")  # fmt: skip
    p.add_argument("--tofqdns-endpoint-max-ip-per-hostname", type=int, default=1000,
                   metavar="N", help="IPs kept per DNS name (the latest expiring)")  # fmt: skip
    p.add_argument("--tofqdns-proxy-port", type=int, default=0, metavar="PORT",
                   help="the DNS proxy's port (0: the lowest free one of the proxy port range)"
                   )  # fmt: skip
    p.add_argument("--tofqdns-idle-connection-grace-period", type=_grace, default=0.0,
                   metavar="DURATION", help="how long an expired DNS answer's IP stays allowed"
                   " after the last conntrack GC pass that saw a connection to it (0s)"
                   )  # fmt: skip
    p.add_argument("--tofqdns-max-deferred-connection-deletes", type=_count, default=10000,
                   metavar="N", help="expired DNS answers' IPs kept at most while connections"
                   " may use them (10000; 0: none)")  # fmt: skip
    p.add_argument("--conntrack-gc-interval", type=_duration, default=30.0,
                   metavar="DURATION", help="time between conntrack GC passes (30s)"
                   )  # fmt: skip
    p.add_argument("--tofqdns-dns-reject-response-code", choices=["refused", "nameError"],
                   default="refused", help="what a DNS query the rules deny gets (refused)"
                   )  # fmt: skip
    p.add_argument("--tofqdns-proxy-response-max-delay", type=_duration, default=0.1,
                   metavar="DURATION", help="longest wait of a DNS answer for the datapath to"
                   " allow its IPs before it is released anyway (100ms)")  # fmt: skip
    p.add_argument("--dnsproxy-enable-transparent-mode", nargs="?", const=True, default=True,
                   type=_bool, metavar="BOOL", help="forward DNS queries from the pod's address"
                   " (true); false: from the node's")  # fmt: skip
    p.add_argument("--dnsproxy-concurrency-limit", type=_count, default=0, metavar="N",
                   help="DNS queries the proxy processes at once (0: no limit); the others wait"
                   " the grace period, then are dropped")  # fmt: skip
    p.add_argument("--dnsproxy-concurrency-processing-grace-period", type=_grace, default=0.0,
                   metavar="DURATION", help="how long a query waits for room (0s)")  # fmt: skip
    p.add_argument("--enable-l7-proxy", nargs="?", const=True, default=True, type=_bool,
                   metavar="BOOL", help="redirect traffic under L7 rules to the node's proxies"
                   " (true); false: L7 rules allow at L4")  # fmt: skip
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--ipam", choices=["cluster-pool", "pools"], default="cluster-pool",
                   help="cluster-pool: this node's CIDRs (--ipv4/6-range); pools: Calico IPPools "
                   "from the Kubernetes API")  # fmt: skip
    p.add_argument("--kubeconfig", "--k8s-kubeconfig-path", type=Path, dest="kubeconfig",
                   help="list and watch pods, namespaces and policies from this cluster (in a pod:"
                   " the service account when KUBERNETES_SERVICE_HOST is set)")  # fmt: skip
    p.add_argument("--node-labels", default="", help="k=v,k2=v2 (matched by pool nodeSelectors)")
    p.add_argument("--cluster-name", type=_cluster_name, default=DEFAULT_CLUSTER_NAME,
                   help="name of the cluster the node belongs to (as cilium-agent's)")  # fmt: skip
    p.add_argument("--enable-policy", choices=["default", "always", "never"], default="default",
                   help="policy enforcement mode, as Cilium's")  # fmt: skip
    p.add_argument("--debug", action="store_true")
    _health_flags(p)
    _network_flags(p)
    _hubble_flags(p)
    return p


def _health_flags(p: argparse.ArgumentParser) -> None:
    """Cluster health (HealthConfig): upstream's names, and the probe interval of our own."""
    h = p.add_argument_group("cluster health")
    h.add_argument(
        "--enable-health-checking",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="probe every node of the cluster and answer their probes (default true)",
    )
    h.add_argument(
        "--cluster-health-port",
        type=_port,
        default=CLUSTER_HEALTH_PORT,
        help="TCP port of the health responder, probed on every node (default 4240)",
    )
    h.add_argument(
        "--cluster-health-interval",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="time between two rounds of probes (default 60, upstream's)",
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1..65535, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 3600], got {text!r}")
    return value


def _duration(text: str) -> float:
    """A Go duration (``100ms``, ``1s``) or plain seconds, positive, at most an hour."""
    try:
        value = float(text)
    except ValueError:
        nanoseconds = parse_go_duration(text)
        value = -1.0 if nanoseconds is None else nanoseconds / 1e9
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(
            f"expected a duration in (0, 1h] (100ms, 2s), got {text!r}"
        )
    return value


def _count(text: str) -> int:
    """A whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _grace(text: str) -> float:
    """A duration that may be zero (``0s``, ``250ms``, plain seconds)."""
    return 0.0 if text.strip() in ("0", "0s") else _duration(text)


def _network_flags(p: argparse.ArgumentParser) -> None:
    """Routing between nodes and to the world, cilium-agent's flag names (NetworkConfig)."""
    n = p.add_argument_group("routing")
    n.add_argument("--routing-mode", choices=ROUTING_MODES, default="tunnel",
                   help="tunnel: VXLAN between nodes (default); native: the network routes pod"
                   " CIDRs")  # fmt: skip
    n.add_argument("--tunnel-protocol", choices=TUNNEL_PROTOCOLS, default="vxlan")
    n.add_argument("--tunnel-port", type=int, default=DEFAULT_TUNNEL_PORT,
                   help=f"UDP port of the tunnel ({DEFAULT_TUNNEL_PORT})")  # fmt: skip
    n.add_argument("--auto-direct-node-routes", nargs="?", const=True, default=False,
                   type=_bool, metavar="BOOL",
                   help="native routing: route each remote node's pod CIDRs via its node IP"
                   " (nodes on one L2)")  # fmt: skip
    n.add_argument("--ipv4-native-routing-cidr", type=IPv4Network,
                   help="IPv4 destinations reached without masquerading")  # fmt: skip
    n.add_argument("--ipv6-native-routing-cidr", type=IPv6Network,
                   help="IPv6 destinations reached without masquerading")  # fmt: skip
    n.add_argument("--ipv4-node", type=IPv4Address, help="this node's IPv4 address")
    n.add_argument("--ipv6-node", type=IPv6Address, help="this node's IPv6 address")
    n.add_argument(
        "--devices",
        default="",
        help="comma-separated underlay devices of the node (masquerade, NodePort)",
    )
    for family in ("ipv4", "ipv6"):
        n.add_argument(f"--enable-{family}-masquerade", nargs="?", const=True, default=True,
                       type=_bool, metavar="BOOL",
                       help=f"masquerade {family} traffic leaving the cluster (true)")  # fmt: skip
    n.add_argument("--enable-bpf-masquerade", nargs="?", const=True, default=True,
                   type=_bool, metavar="BOOL", help="masquerade in BPF (true)")  # fmt: skip


def network_config(args: argparse.Namespace) -> NetworkConfig:
    return NetworkConfig(
        routing_mode=args.routing_mode,
        tunnel_protocol=args.tunnel_protocol,
        tunnel_port=args.tunnel_port,
        auto_direct_node_routes=args.auto_direct_node_routes,
        ipv4_native_routing_cidr=args.ipv4_native_routing_cidr,
        ipv6_native_routing_cidr=args.ipv6_native_routing_cidr,
        ipv4_node=args.ipv4_node,
        ipv6_node=args.ipv6_node,
        devices=tuple(d for d in args.devices.split(",") if d),
        enable_ipv4_masquerade=args.enable_ipv4_masquerade,
        enable_ipv6_masquerade=args.enable_ipv6_masquerade,
        enable_bpf_masquerade=args.enable_bpf_masquerade,
    )


def _cluster_name(text: str) -> str:
    """Cilium's rule for cluster names: lower-case alphanumerics and '-', at most 32."""
    if len(text) > 32 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text):
        raise argparse.ArgumentTypeError(
            f"invalid cluster name {text!r}: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 32 characters"
        )
    return text


def _maglev_size(text: str) -> int:
    try:
        return validate_table_size(int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _maglev_seed(text: str) -> str:
    try:
        parse_hash_seed(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _hubble_flags(p: argparse.ArgumentParser) -> None:
    """Upstream's agent flags for Hubble, same names and defaults (``--hubble-disable-tls``
    aside: see HubbleConfig)."""
    h = p.add_argument_group("hubble")

    def bool_flag(name: str, help_text: str) -> None:
        h.add_argument(name, nargs="?", const=True, default=True, type=_bool, metavar="BOOL",
                       help=help_text)  # fmt: skip

    bool_flag("--enable-hubble", "run the Hubble server (true)")
    h.add_argument(
        "--hubble-socket-path",
        type=Path,
        help="unix socket of the Hubble server (default <state-dir>/hubble.sock)",
    )
    h.add_argument(
        "--hubble-listen-address",
        default=":4244",
        help='TCP address in the node netns (":4244"; "" = unix socket only)',
    )
    h.add_argument(
        "--hubble-disable-tls", nargs="?", const=True, default=False, type=_bool, metavar="BOOL",
        help="serve the TCP listener in plaintext (false: TLS, and without "
        "--hubble-tls-cert-file/--hubble-tls-key-file no TCP listener at all)",
    )  # fmt: skip
    h.add_argument("--hubble-tls-cert-file", type=Path, help="server certificate (PEM)")
    h.add_argument("--hubble-tls-key-file", type=Path, help="server key (PEM)")
    h.add_argument(
        "--hubble-tls-client-ca-files",
        type=Path,
        nargs="*",
        default=[],
        help="CAs of accepted client certificates (mTLS when given)",
    )
    h.add_argument(
        "--hubble-event-buffer-capacity",
        type=int,
        default=4095,
        help="flows kept in the ring: 2^n-1, 1..65535 (4095)",
    )
    h.add_argument(
        "--hubble-event-queue-size",
        type=int,
        default=0,
        help="datapath events waiting to be decoded (0: 1024 per CPU, at most 16384)",
    )
    h.add_argument(
        "--hubble-metrics-server",
        default=":9965",
        help='address of /metrics for Hubble metrics (":9965"; served when '
        "--hubble-metrics enables any)",
    )
    h.add_argument(
        "--hubble-metrics",
        default="",
        help='enabled Hubble metrics, upstream syntax: "drop,flow,tcp" or '
        '"dns:query;ignoreAAAA http:..." (none by default)',
    )
    h.add_argument(
        "--prometheus-serve-addr",
        default=":9962",
        help='address of the agent\'s own /metrics (":9962"; "" = off)',
    )
    h.add_argument(
        "--hubble-export-file-path",
        default="",
        help="write every flow as JSON lines to this file (off by default)",
    )
    h.add_argument("--hubble-export-file-max-size-mb", type=int, default=10)
    h.add_argument("--hubble-export-file-max-backups", type=int, default=5)
    h.add_argument(
        "--hubble-export-allowlist",
        default="",
        help="FlowFilters (JSON, one per line or an array) a flow must match to be exported",
    )
    h.add_argument("--hubble-export-denylist", default="",
                   help="FlowFilters (JSON) excluding flows from export")  # fmt: skip


def hubble_config(args: argparse.Namespace) -> HubbleConfig:
    """Checks and gathers the Hubble flags; raises ValueError naming the flag. (Importing
    grpc and prometheus_client starts no thread, so this may run before the netns switch.)"""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from ciliary.hubble.exporter import parse_flow_filters  # noqa: PLC0415 (no thread starts)
    from ciliary.hubble.metrics import FlowMetrics  # noqa: PLC0415
    from ciliary.hubble.ring import validate_capacity  # noqa: PLC0415
    from ciliary.hubble.server import parse_listen_address  # noqa: PLC0415

    try:
        validate_capacity(args.hubble_event_buffer_capacity)
    except ValueError as err:
        raise ValueError(f"--hubble-event-buffer-capacity: {err}") from None
    if args.hubble_event_queue_size < 0:
        raise ValueError("--hubble-event-queue-size must be >= 0")
    for name in ("hubble_listen_address", "hubble_metrics_server", "prometheus_serve_addr"):
        value = getattr(args, name)
        if value:
            try:
                parse_listen_address(value)
            except ValueError as err:
                raise ValueError(f"--{name.replace('_', '-')}: {err}") from None
    try:
        FlowMetrics(args.hubble_metrics, CollectorRegistry())  # options included
    except ValueError as err:
        raise ValueError(f"--hubble-metrics: {err}") from None
    for name in ("hubble_export_allowlist", "hubble_export_denylist"):
        if getattr(args, name):
            try:
                parse_flow_filters(getattr(args, name))
            except ValueError as err:
                raise ValueError(f"--{name.replace('_', '-')}: {err}") from None
    if not args.hubble_disable_tls and args.hubble_listen_address:
        if (args.hubble_tls_cert_file is None) != (args.hubble_tls_key_file is None):
            raise ValueError("--hubble-tls-cert-file and --hubble-tls-key-file go together")
        for path in (
            args.hubble_tls_cert_file,
            args.hubble_tls_key_file,
            *args.hubble_tls_client_ca_files,
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"hubble TLS file {path} does not exist")
    elif args.hubble_tls_cert_file is not None and args.hubble_disable_tls:
        logging.getLogger("ciliary.agent").warning(
            "--hubble-tls-cert-file is ignored: --hubble-disable-tls is set"
        )
    return HubbleConfig(
        enabled=args.enable_hubble,
        socket=args.hubble_socket_path,
        listen_address=args.hubble_listen_address,
        tls_cert_file=args.hubble_tls_cert_file,
        tls_key_file=args.hubble_tls_key_file,
        tls_client_ca_files=tuple(args.hubble_tls_client_ca_files),
        disable_tls=args.hubble_disable_tls or not args.hubble_listen_address,
        event_buffer_capacity=args.hubble_event_buffer_capacity,
        event_queue_size=args.hubble_event_queue_size or default_event_queue_size(),
        metrics_server=args.hubble_metrics_server,
        metrics=(args.hubble_metrics,) if args.hubble_metrics.strip() else (),
        prometheus_serve_addr=args.prometheus_serve_addr,
        export_file_path=args.hubble_export_file_path,
        export_file_max_size_mb=args.hubble_export_file_max_size_mb,
        export_file_max_backups=args.hubble_export_file_max_backups,
        export_allowlist=args.hubble_export_allowlist,
        export_denylist=args.hubble_export_denylist,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.geteuid() != 0:
        print("ciliary-agent: must run as root (BPF, netlink, netns)", file=sys.stderr)
        return 1
    has_api = args.kubeconfig is not None or bool(os.environ.get(SERVICE_HOST_ENV))
    no_range = args.ipv4_range is None and args.ipv6_range is None
    if args.ipam == "cluster-pool" and no_range and not has_api:
        # with an API, the operator allocates them into the node's CiliumNode
        print(
            "ciliary-agent: need --ipv4-range and/or --ipv6-range (or a Kubernetes API,"
            " --kubeconfig, whose operator allocates the node's pod CIDRs)",
            file=sys.stderr,
        )
        return 2
    if args.ipam == "pools" and not has_api:
        print(
            "ciliary-agent: --ipam pools needs a Kubernetes API (--kubeconfig, or run in a pod):"
            " Calico's IP pools and IPAM blocks are API objects",
            file=sys.stderr,
        )
        return 2
    try:
        node_labels = dict(kv.split("=", 1) for kv in args.node_labels.split(",") if kv)
    except ValueError:
        print(
            f"ciliary-agent: bad --node-labels {args.node_labels!r} (want k=v,...)", file=sys.stderr
        )
        return 2
    try:
        hubble = hubble_config(args)
    except ValueError as err:
        print(f"ciliary-agent: {err}", file=sys.stderr)
        return 2
    state_dir = args.state_dir or RUN_ROOT / args.node_name
    cfg = AgentConfig(
        node=args.node_name,
        state_dir=state_dir,
        pin_dir=args.bpf_pin_dir or PIN_ROOT / args.node_name,
        socket=args.socket or state_dir / "agent.sock",
        bpf_object=args.bpf_object or default_object_dir() / "bpf_lxc.o",
        ipv4_range=args.ipv4_range,
        ipv6_range=args.ipv6_range,
        netns=args.netns,
        monitor_aggregation=args.monitor_aggregation,
        monitor_aggregation_interval_s=args.monitor_aggregation_interval,
        ct_max=args.bpf_ct_global_max,
        lb_max=args.bpf_lb_map_max,
        lb_algorithm=args.bpf_lb_algorithm,
        maglev_table_size=args.bpf_lb_maglev_table_size,
        maglev_hash_seed=args.bpf_lb_maglev_hash_seed,
        cgroup_root=args.cgroup_root,
        bpf_lb_sock=args.bpf_lb_sock,
        tofqdns_pre_cache=args.tofqdns_pre_cache,
        tofqdns_min_ttl=args.tofqdns_min_ttl,
        tofqdns_max_ips_per_name=args.tofqdns_endpoint_max_ip_per_hostname,
        tofqdns_proxy_port=args.tofqdns_proxy_port,
        tofqdns_idle_connection_grace_period_s=args.tofqdns_idle_connection_grace_period,
        tofqdns_max_deferred_connection_deletes=args.tofqdns_max_deferred_connection_deletes,
        ct_gc_interval_s=args.conntrack_gc_interval,
        tofqdns_dns_reject_response_code=args.tofqdns_dns_reject_response_code,
        tofqdns_proxy_response_max_delay_s=args.tofqdns_proxy_response_max_delay,
        dnsproxy_enable_transparent_mode=args.dnsproxy_enable_transparent_mode,
        dnsproxy_concurrency_limit=args.dnsproxy_concurrency_limit,
        dnsproxy_concurrency_grace_s=args.dnsproxy_concurrency_processing_grace_period,
        enable_l7_proxy=args.enable_l7_proxy,
        mtu=args.mtu,
        ipam_mode=args.ipam,
        kubeconfig=args.kubeconfig,
        in_cluster=args.kubeconfig is None and bool(os.environ.get(SERVICE_HOST_ENV)),
        node_labels=node_labels,
        enable_policy=args.enable_policy,
        hubble=hubble,
        network=network_config(args),
        health=HealthConfig(
            enabled=args.enable_health_checking,
            port=args.cluster_health_port,
            interval_s=args.cluster_health_interval,
        ),
        cluster_name=args.cluster_name,
    )
    try:
        if cfg.netns:
            netns.enter(cfg.netns)
    except LinkError as err:
        print(f"ciliary-agent: {err}", file=sys.stderr)
        return 1
    # after setns: nothing may start a thread before it. The BPF objects load first (the
    # verifier's seconds, without the GIL) while the daemon's modules import and it waits for its
    # pod CIDRs, rather than after them: ~1.4 s less from CIDRs to ready per agent start
    datapath = NodeDatapath(cfg.bpf_object, cfg.pin_dir, ct_max=cfg.ct_max, lb_max=cfg.lb_max)
    loading = datapath.load_in_background()
    try:
        # cluster-pool v2: the node's CiliumNode made and its pod CIDRs allocated before the
        # daemon's modules import, not after, since lab up makes the next node once they are
        # there (the operator allocates in node order): ~1 s sooner per node made after another
        cfg = nodecidrs.with_allocated_ranges(cfg)
        from ciliary.agent.daemon import Agent  # noqa: PLC0415

        asyncio.run(Agent(cfg, datapath=datapath, datapath_loading=loading).run())
    except Exception as err:
        logging.getLogger("ciliary.agent").exception("agent failed: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    # main returns after the agent's own shutdown (API and Hubble servers stopped, Kubernetes
    # and IPAM clients closed, datapath closed, pins kept): skip the interpreter's finalization
    # of its modules, which lab down and lab restart-agent would otherwise wait for
    exit_now(main())
