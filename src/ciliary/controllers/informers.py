"""The informers the controllers share: one list + watch per resource for the whole process,
as kube-controller-manager's shared informer factory, so N controllers reading pods cost one
watch of pods."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields

from ciliary.k8s.resources import ResourceType, by_path
from ciliary.kube.client import KubeClient
from ciliary.kube.informer import Informer

PODS = by_path("", "v1", "pods")
NODES = by_path("", "v1", "nodes")
SERVICES = by_path("", "v1", "services")
DEPLOYMENTS = by_path("apps", "v1", "deployments")
REPLICASETS = by_path("apps", "v1", "replicasets")
DAEMONSETS = by_path("apps", "v1", "daemonsets")
STATEFULSETS = by_path("apps", "v1", "statefulsets")
ENDPOINTSLICES = by_path("discovery.k8s.io", "v1", "endpointslices")
ENDPOINTS = by_path("", "v1", "endpoints")


@dataclass
class Informers:
    pods: Informer
    nodes: Informer
    services: Informer
    deployments: Informer
    replicasets: Informer
    daemonsets: Informer
    statefulsets: Informer
    endpointslices: Informer
    endpoints: Informer

    @classmethod
    def create(cls, kube: KubeClient) -> Informers:
        return cls(
            pods=Informer(kube, PODS),
            nodes=Informer(kube, NODES),
            services=Informer(kube, SERVICES),
            deployments=Informer(kube, DEPLOYMENTS),
            replicasets=Informer(kube, REPLICASETS),
            daemonsets=Informer(kube, DAEMONSETS),
            statefulsets=Informer(kube, STATEFULSETS),
            endpointslices=Informer(kube, ENDPOINTSLICES),
            endpoints=Informer(kube, ENDPOINTS),
        )

    def all(self) -> list[Informer]:
        return [getattr(self, f.name) for f in fields(self)]

    def by_resource(self, rt: ResourceType) -> Informer | None:
        for informer in self.all():
            if informer.rt is rt:
                return informer
        return None

    async def wait_synced(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.all()))
