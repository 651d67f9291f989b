"""``ciliary-operator``: cilium-operator's role, the cluster-wide half of Cilium's control plane.

Upstream splits Cilium's control plane in two: the agent on every node, and one operator per
cluster for what must not be done N times at once (garbage-collecting identities no endpoint
uses, allocating each CiliumNode's pod CIDRs in cluster-pool IPAM). It is a process of its
own, not part of ``ciliary-controller-manager``, for the reasons upstream's is: it manages
Cilium's resources, not Kubernetes' own, is deployed and upgraded with Cilium (and may run
while another controller manager runs the workloads), and a cluster without Cilium needs none
of it.

It runs the identity garbage collector (``identitygc``) and, when given a cluster pool
(``--cluster-pool-ipv4-cidr``/``--cluster-pool-ipv6-cidr``, upstream's flags), the pod CIDR
allocator of every CiliumNode (``nodeipam``). Like the controller manager it is only an API
client (``process``): no state of its own, SIGTERM or SIGINT stops it (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ciliary.controllers.identitygc import DEFAULT_GRACE, DEFAULT_INTERVAL, IdentityGC
from ciliary.controllers.nodeipam import ClusterPool, ClusterPoolError, NodeIPAM, parse_cidrs
from ciliary.controllers.process import cancel, parse_args, serve
from ciliary.kube.client import KubeClient


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of seconds")
    return value


async def run(
    kube: KubeClient,
    stop: asyncio.Event,
    *,
    grace: float,
    interval: float,
    pool: ClusterPool | None = None,
) -> None:
    gc = IdentityGC(kube, grace=grace, interval=interval)
    tasks = [asyncio.create_task(gc.run(), name="identity-gc")]
    if pool is not None and pool.enabled:
        tasks.append(asyncio.create_task(NodeIPAM(kube, pool).run(), name="node-ipam"))
    try:
        await stop.wait()
    finally:
        await cancel(tasks)


def cluster_pool(args: argparse.Namespace) -> ClusterPool:
    """The cluster pool of the flags (``ClusterPoolError`` naming the flag when bad)."""
    return ClusterPool(
        ipv4=tuple(parse_cidrs(args.cluster_pool_ipv4_cidr, 4, "--cluster-pool-ipv4-cidr")),
        ipv4_mask=args.cluster_pool_ipv4_mask_size,
        ipv6=tuple(parse_cidrs(args.cluster_pool_ipv6_cidr, 6, "--cluster-pool-ipv6-cidr")),
        ipv6_mask=args.cluster_pool_ipv6_mask_size,
    )


def build_parser() -> argparse.ArgumentParser:
    """The operator's own flags (``process.parse_args`` adds ``--kubeconfig`` and ``--v``)."""
    parser = argparse.ArgumentParser(
        prog="ciliary-operator",
        description="Cilium's cluster-wide controllers (identity garbage collection), as a"
        " client of a Kubernetes API server.",
    )
    parser.add_argument(
        "--identity-gc-interval",
        type=_positive,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="seconds between identity GC passes (upstream's flag takes a Go duration)",
    )
    parser.add_argument(
        "--identity-heartbeat-timeout",
        type=_positive,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="seconds an identity must stay unused before it is deleted",
    )
    # cluster-pool IPAM (upstream's flags): without a CIDR the operator allocates no pod CIDRs
    parser.add_argument(
        "--cluster-pool-ipv4-cidr",
        default="",
        metavar="CIDR[,CIDR...]",
        help="IPv4 pod CIDRs of the cluster, cut into one node CIDR per CiliumNode",
    )
    parser.add_argument(
        "--cluster-pool-ipv4-mask-size",
        type=int,
        default=24,
        metavar="BITS",
        help="prefix length of each node's IPv4 pod CIDR (default 24)",
    )
    parser.add_argument(
        "--cluster-pool-ipv6-cidr",
        default="",
        metavar="CIDR[,CIDR...]",
        help="IPv6 pod CIDRs of the cluster, cut into one node CIDR per CiliumNode",
    )
    parser.add_argument(
        "--cluster-pool-ipv6-mask-size",
        type=int,
        default=112,
        metavar="BITS",
        help="prefix length of each node's IPv6 pod CIDR (default 112)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        pool = cluster_pool(args)
    except ClusterPoolError as err:
        parser.error(str(err))

    async def body(kube: KubeClient, stop: asyncio.Event) -> None:
        await run(
            kube,
            stop,
            grace=args.identity_heartbeat_timeout,
            interval=args.identity_gc_interval,
            pool=pool,
        )

    asyncio.run(serve(args.kubeconfig, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
