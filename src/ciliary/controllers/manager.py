"""``ciliary-controller-manager``: the workload controllers and the scheduler in one process.

What kube-controller-manager and kube-scheduler are to a cluster, as one asyncio process that is
only a client of the API server (a kubeconfig, or the pod's service account): shared informers
(one list + watch per resource), then, once every cache has synced, the Deployment, ReplicaSet,
DaemonSet, StatefulSet, EndpointSlice, EndpointSlice mirroring (a selector-less Service's
Endpoints as EndpointSlices) and garbage-collection controllers and the scheduler,
each a reconcile loop over its own work queue; with ``--cluster-dns-records``, also the cluster
DNS records controller (``clusterdns``: the zone the DNS pod serves, which CoreDNS would read
from the API itself). Controllers start only after the caches are
full, as upstream's ``WaitForCacheSync``: a ReplicaSet reconciled against an empty pod cache
would create its pods a second time.

SIGTERM or SIGINT stops it (exit 0). The process holds no state of its own: a restart lists
everything again and carries on (``process``). Cilium's controllers (identity GC) are
``ciliary-operator``'s (``operator``), as cilium-operator is not kube-controller-manager.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from ciliary.controllers.clusterdns import DEFAULT_DOMAIN, ClusterDNSController
from ciliary.controllers.daemonset import DaemonSetController
from ciliary.controllers.deployment import DeploymentController
from ciliary.controllers.endpointslice import EndpointSliceController
from ciliary.controllers.endpointslicemirroring import EndpointSliceMirroringController
from ciliary.controllers.garbagecollector import GarbageCollector
from ciliary.controllers.informers import Informers
from ciliary.controllers.process import cancel, parse_args, serve
from ciliary.controllers.queue import Controller
from ciliary.controllers.replicaset import ReplicaSetController
from ciliary.controllers.scheduler import Scheduler
from ciliary.controllers.statefulset import StatefulSetController
from ciliary.kube.client import KubeClient

log = logging.getLogger("ciliary.controllers")


def build(
    kube: KubeClient, dns_records: Path | None = None, cluster_domain: str = DEFAULT_DOMAIN
) -> tuple[Informers, list[Controller]]:
    informers = Informers.create(kube)
    controllers: list[Controller] = [
        DeploymentController(kube, informers),
        ReplicaSetController(kube, informers),
        DaemonSetController(kube, informers),
        StatefulSetController(kube, informers),
        Scheduler(kube, informers),
        EndpointSliceController(kube, informers),
        EndpointSliceMirroringController(kube, informers),
        GarbageCollector(kube, informers),
    ]
    if dns_records is not None:
        controllers.append(ClusterDNSController(informers, dns_records, cluster_domain))
    return informers, controllers


async def run(
    kube: KubeClient,
    stop: asyncio.Event,
    dns_records: Path | None = None,
    cluster_domain: str = DEFAULT_DOMAIN,
) -> None:
    """Informers started, controllers once every cache synced, all stopped on ``stop``."""
    informers, controllers = build(kube, dns_records, cluster_domain)
    for informer in informers.all():
        informer.start()
    running: list[asyncio.Task[None]] = []

    async def start_controllers() -> None:
        await informers.wait_synced()
        log.info("caches synced; starting %d controllers", len(controllers))
        for c in controllers:
            running.append(asyncio.create_task(c.run(), name=f"controller-{c.name}"))

    running.append(asyncio.create_task(start_controllers(), name="start-controllers"))
    try:
        await stop.wait()
    finally:
        await cancel(running)
        for informer in informers.all():
            await informer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ciliary-controller-manager",
        description="Deployment, ReplicaSet, DaemonSet, StatefulSet, EndpointSlice and"
        " garbage collection controllers and the scheduler, as clients of a Kubernetes API"
        " server.",
    )
    parser.add_argument(
        "--cluster-dns-records",
        type=Path,
        help="write the cluster DNS zone (Services, EndpointSlices, Pods) to this records file"
        " of 'ciliary workload dns-server' (default: no DNS records controller)",
    )
    parser.add_argument(
        "--cluster-domain",
        default=DEFAULT_DOMAIN,
        help=f"the cluster's DNS domain ({DEFAULT_DOMAIN})",
    )
    args = parse_args(parser, argv)

    async def body(kube: KubeClient, stop: asyncio.Event) -> None:
        await run(kube, stop, args.cluster_dns_records, args.cluster_domain)

    asyncio.run(serve(args.kubeconfig, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
