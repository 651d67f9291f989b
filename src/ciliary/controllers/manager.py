"""``ciliary-controller-manager``: the workload controllers and the scheduler in one process.

What kube-controller-manager and kube-scheduler are to a cluster, as one asyncio process that is
only a client of the API server (a kubeconfig, or the pod's service account): shared informers
(one list + watch per resource), then, once every cache has synced, the Deployment, ReplicaSet,
DaemonSet, StatefulSet, EndpointSlice and garbage-collection controllers and the scheduler,
each a reconcile loop over its own work queue. Controllers start only after the caches are
full, as upstream's ``WaitForCacheSync``: a ReplicaSet reconciled against an empty pod cache
would create its pods a second time.

SIGTERM or SIGINT stops it (exit 0). The process holds no state of its own: a restart lists
everything again and carries on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from ciliary.controllers.daemonset import DaemonSetController
from ciliary.controllers.deployment import DeploymentController
from ciliary.controllers.endpointslice import EndpointSliceController
from ciliary.controllers.garbagecollector import GarbageCollector
from ciliary.controllers.informers import Informers
from ciliary.controllers.queue import Controller
from ciliary.controllers.replicaset import ReplicaSetController
from ciliary.controllers.scheduler import Scheduler
from ciliary.controllers.statefulset import StatefulSetController
from ciliary.kube.client import KubeClient

log = logging.getLogger("ciliary.controllers")


def build(kube: KubeClient) -> tuple[Informers, list[Controller]]:
    informers = Informers.create(kube)
    controllers: list[Controller] = [
        DeploymentController(kube, informers),
        ReplicaSetController(kube, informers),
        DaemonSetController(kube, informers),
        StatefulSetController(kube, informers),
        Scheduler(kube, informers),
        EndpointSliceController(kube, informers),
        GarbageCollector(kube, informers),
    ]
    return informers, controllers


async def run(kubeconfig: Path | None) -> None:
    kube = await KubeClient.connect(kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        informers, controllers = build(kube)
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(i.run(), name=f"informer-{i.rt.plural}") for i in informers.all()
            ]

            async def start_controllers() -> None:
                await informers.wait_synced()
                log.info("caches synced; starting %d controllers", len(controllers))
                for c in controllers:
                    running.append(tasks.create_task(c.run(), name=f"controller-{c.name}"))

            running.append(tasks.create_task(start_controllers(), name="start-controllers"))
            await stop.wait()
            for task in running:
                task.cancel()
    finally:
        await kube.close()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0.25)  # let TLS transports finish closing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ciliary-controller-manager",
        description="Deployment, ReplicaSet, DaemonSet, StatefulSet, EndpointSlice and garbage"
        " collection controllers and the scheduler, as clients of a Kubernetes API server.",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig of the API server (default: the pod's service account)",
    )
    parser.add_argument("--v", type=int, default=0, help="log verbosity (0: info, 2+: debug)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.v >= 2 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(run(args.kubeconfig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
