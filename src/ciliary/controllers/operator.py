"""``ciliary-operator``: cilium-operator's role, the cluster-wide half of Cilium's control plane.

Upstream splits Cilium's control plane in two: the agent on every node, and one operator per
cluster for what must not be done N times at once (garbage-collecting identities no endpoint
uses, and later allocating each CiliumNode's pod CIDRs). It is a process of its own, not part of
``ciliary-controller-manager``, for the reasons upstream's is: it manages Cilium's resources,
not Kubernetes' own, is deployed and upgraded with Cilium (and may run while another
controller manager runs the workloads), and a cluster without Cilium needs none of it.

Today it runs the identity garbage collector (``identitygc``). Like the controller manager it
is only an API client (``process``): no state of its own, SIGTERM or SIGINT stops it (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ciliary.controllers.identitygc import DEFAULT_GRACE, DEFAULT_INTERVAL, IdentityGC
from ciliary.controllers.process import cancel, parse_args, serve
from ciliary.kube.client import KubeClient


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number of seconds")
    return value


async def run(kube: KubeClient, stop: asyncio.Event, *, grace: float, interval: float) -> None:
    gc = IdentityGC(kube, grace=grace, interval=interval)
    task = asyncio.create_task(gc.run(), name="identity-gc")
    try:
        await stop.wait()
    finally:
        await cancel([task])


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)

    async def body(kube: KubeClient, stop: asyncio.Event) -> None:
        await run(
            kube,
            stop,
            grace=args.identity_heartbeat_timeout,
            interval=args.identity_gc_interval,
        )

    asyncio.run(serve(args.kubeconfig, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
