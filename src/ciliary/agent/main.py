"""``ciliary-agent``: parse flags, enter the node's network namespace, run the daemon.

The netns switch happens first, before any thread exists, so that every thread the agent starts
(asyncio's executor, netlink workers) lives in the node namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from ciliary.agent.config import MONITOR_AGGREGATION, RUN_ROOT, AgentConfig
from ciliary.datapath.linux import netns
from ciliary.datapath.linux.errors import LinkError
from ciliary.datapath.loader import PIN_ROOT, default_object_dir


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
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--ipam", choices=["cluster-pool", "pools"], default="cluster-pool",
                   help="cluster-pool: this node's CIDRs (--ipv4/6-range); pools: Calico IPPools "
                   "from the cluster store")  # fmt: skip
    p.add_argument("--cluster-store", type=Path, help="directory of the shared cluster store")
    p.add_argument("--node-labels", default="", help="k=v,k2=v2 (matched by pool nodeSelectors)")
    p.add_argument("--enable-policy", choices=["default", "always", "never"], default="default",
                   help="policy enforcement mode, as Cilium's")  # fmt: skip
    p.add_argument("--debug", action="store_true")
    return p


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
    if args.ipam == "cluster-pool" and args.ipv4_range is None and args.ipv6_range is None:
        print("ciliary-agent: need --ipv4-range and/or --ipv6-range", file=sys.stderr)
        return 2
    if args.ipam == "pools" and args.cluster_store is None:
        print("ciliary-agent: --ipam pools needs --cluster-store", file=sys.stderr)
        return 2
    try:
        node_labels = dict(kv.split("=", 1) for kv in args.node_labels.split(",") if kv)
    except ValueError:
        print(
            f"ciliary-agent: bad --node-labels {args.node_labels!r} (want k=v,...)", file=sys.stderr
        )
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
        mtu=args.mtu,
        ipam_mode=args.ipam,
        cluster_store=args.cluster_store,
        node_labels=node_labels,
        enable_policy=args.enable_policy,
    )
    try:
        if cfg.netns:
            netns.enter(cfg.netns)
    except LinkError as err:
        print(f"ciliary-agent: {err}", file=sys.stderr)
        return 1
    # after setns: nothing may start a thread before it
    from ciliary.agent.daemon import Agent  # noqa: PLC0415

    try:
        asyncio.run(Agent(cfg).run())
    except Exception as err:
        logging.getLogger("ciliary.agent").exception("agent failed: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
