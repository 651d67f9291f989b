"""CRD-mode identity allocation against a real API server + etcd: three allocators with their
own clients allocate the same 200 label sets at once (same order, so most sets are raced, and a
range barely larger than the sets, so numbers collide): every allocator answers the same number
for a set, no number serves two sets, and exactly one CiliumIdentity per set is left."""

from __future__ import annotations

import asyncio
import random

import pytest

from ciliary.agent.k8s.identity import (
    IDENTITIES,
    CRDIdentityAllocator,
    identity_object,
    labels_map,
    object_labels,
)
from ciliary.kube.client import KubeClient
from ciliary.lab.controlplane import ControlPlane
from tests.integration.kube.helpers import run

pytestmark = pytest.mark.timeout(240)


def label_set(i: int) -> tuple[str, ...]:
    return (
        f"k8s:app=app{i % 50}",
        f"k8s:io.kubernetes.pod.namespace=ns{i // 50}",
        "k8s:io.cilium.k8s.namespace.labels.team=blue",
    )


def test_object_shape_as_upstream() -> None:
    labels = label_set(3)
    obj = identity_object(300, labels_map(labels))
    assert obj["metadata"]["name"] == "300"
    assert obj["security-labels"] == {
        "k8s:app": "app3",
        "k8s:io.kubernetes.pod.namespace": "ns0",
        "k8s:io.cilium.k8s.namespace.labels.team": "blue",
    }
    assert obj["metadata"]["labels"] == {"app": "app3", "io.kubernetes.pod.namespace": "ns0"}
    assert object_labels({"reserved:host": ""}) == {}


def test_three_allocators_200_sets_agree(control_plane: ControlPlane) -> None:
    sets = [label_set(i) for i in range(200)]

    async def body(kube: KubeClient) -> None:
        clients = [await KubeClient.connect(control_plane.kubeconfig) for _ in range(3)]
        allocators = [
            CRDIdentityAllocator(c, max_id=256 + 239, rng=random.Random(i))
            for i, c in enumerate(clients)
        ]
        try:
            for a in allocators:
                a.start()
            # an identity that exists before: everyone must use it, nobody creates one
            pre = await kube.create(IDENTITIES, identity_object(400, labels_map(sets[0])))
            assert pre["metadata"]["name"] == "400"

            async def allocate_all(a: CRDIdentityAllocator) -> dict[tuple[str, ...], int]:
                sem = asyncio.Semaphore(8)

                async def one(labels: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
                    async with sem:
                        return labels, await a.allocate(labels)

                return dict(await asyncio.gather(*(one(s) for s in sets)))

            results = await asyncio.wait_for(
                asyncio.gather(*(allocate_all(a) for a in allocators)), 180
            )
            first = results[0]
            for other in results[1:]:
                assert other == first  # every allocator: the same number for every set
            numbers = list(first.values())
            assert len(set(numbers)) == 200  # no number serves two sets
            assert all(256 <= n <= 256 + 239 for n in numbers)
            assert first[sets[0]] == 400
            # the cluster holds exactly the winners (the losers of races were deleted)
            listed = (await kube.list(IDENTITIES))["items"]
            stored = {int(o["metadata"]["name"]): o["security-labels"] for o in listed}
            assert stored == {n: labels_map(s) for s, n in first.items()}
            created = sum(a.created for a in allocators)
            assert created == 199, [(a.created, a.discarded) for a in allocators]
            # every allocator's cache agrees, lookups answer the labels
            for a in allocators:
                await a.informer.wait_for_resource_version(
                    max(int(o["metadata"]["resourceVersion"]) for o in listed), 10
                )
                assert a.lookup(first[sets[5]]) == tuple(sorted(sets[5]))
                assert a.cached(sets[7]) == first[sets[7]]
                assert len(a.all()) == 200
            # a later allocation of a known set costs no request and gives the same number
            assert await allocators[2].allocate(sets[9]) == first[sets[9]]
        finally:
            for a in allocators:
                await a.stop()
            for c in clients:
                await c.close()

    run(control_plane, body, ns="")
