"""The agent's Service, EndpointSlice and Node informers (``agent.k8s.services``) against a real
``ciliary-apiserver`` + etcd: a Service and its two EndpointSlices created through the API reach
the cache merged (the not-ready endpoint left out), the agent's REST API serves them
(``GET /v1/service``, ``GET /v1/cluster/nodes``), the synced APIs carry upstream's names, and
deleting a slice then the Service removes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from ciliary.agent.k8s.services import (
    ENDPOINT_SLICES,
    NODES,
    SERVICES,
    ServiceWatcher,
    synced_apis,
)
from ciliary.agent.server import APIServer
from ciliary.core.models import API_PREFIX
from ciliary.kube.client import KubeClient
from ciliary.lab.controlplane import ControlPlane
from tests.integration.kube.helpers import run

pytestmark = pytest.mark.timeout(120)


def _slice(name: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def _addresses(watcher: ServiceWatcher, node: str) -> list[str] | None:
    info = watcher.nodes.get(node)
    return None if info is None else [a.address for a in info.addresses]


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_services_endpointslices_and_nodes_reach_the_cache(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    async def body(kube: KubeClient) -> None:
        client = await KubeClient.connect(control_plane.kubeconfig)
        watcher = ServiceWatcher(client)
        server = APIServer(SimpleNamespace(service_watcher=watcher), tmp_path / "agent.sock")  # type: ignore[arg-type]
        try:
            watcher.start()
            await watcher.wait_synced(10)
            assert synced_apis(watcher.informers.values()) == [
                "core/v1::Node",
                "core/v1::Service",
                "discovery/v1::EndpointSlice",
            ]
            await kube.create(NODES, {"metadata": {"name": "n7", "labels": {"zone": "a"}}})
            address = {"type": "InternalIP", "address": "192.168.7.7"}
            await kube.patch(
                NODES, "n7", {"status": {"addresses": [address]}}, subresource="status"
            )
            await kube.create(
                SERVICES,
                {
                    "metadata": {"name": "web"},
                    "spec": {
                        "type": "NodePort",
                        "clusterIP": "10.96.0.10",  # asked for: in the lab's service range
                        "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                        "externalTrafficPolicy": "Local",
                    },
                },
                "t",
            )
            ready = {"addresses": ["10.0.0.1"], "conditions": {"ready": True}}
            unready = {"addresses": ["10.0.0.2"], "conditions": {"ready": False}}
            other = {"addresses": ["10.0.0.3"], "conditions": {"ready": True}}
            await kube.create(ENDPOINT_SLICES, _slice("web-a", [ready, unready]), "t")
            await kube.create(ENDPOINT_SLICES, _slice("web-b", [other]), "t")

            def backends() -> list[str] | None:
                svc = watcher.services.get("t", "web")
                return None if svc is None else [b.address for b in svc.backends]

            await _until(lambda: backends() == ["10.0.0.1", "10.0.0.3"], "merged backends")
            await _until(lambda: _addresses(watcher, "n7") == ["192.168.7.7"], "node n7")
            svc = watcher.services.get("t", "web")
            assert svc is not None
            assert svc.type == "NodePort" and svc.external_traffic_policy == "Local"
            assert svc.cluster_ips == ["10.96.0.10"]
            assert [(p.port, p.node_port) for p in svc.ports] == [(80, 30080)]

            await server.start()
            conn = aiohttp.UnixConnector(path=str(tmp_path / "agent.sock"))
            async with aiohttp.ClientSession(connector=conn) as http:
                async with http.get(f"http://agent{API_PREFIX}/service") as resp:
                    listed = json.loads(await resp.text())
                async with http.get(f"http://agent{API_PREFIX}/cluster/nodes") as resp:
                    nodes = json.loads(await resp.text())
            assert [(s["namespace"], s["name"]) for s in listed] == [("t", "web")]
            assert [b["address"] for b in listed[0]["backends"]] == ["10.0.0.1", "10.0.0.3"]
            n7 = next(n for n in nodes if n["name"] == "n7")
            assert n7["labels"] == {"zone": "a"}
            assert n7["addresses"] == [{"type": "InternalIP", "address": "192.168.7.7"}]

            await kube.delete(ENDPOINT_SLICES, "web-a", "t")
            await _until(lambda: backends() == ["10.0.0.3"], "web-a's backends gone")
            await kube.delete(SERVICES, "web", "t")
            await _until(lambda: watcher.services.get("t", "web") is None, "service gone")
            await kube.delete(NODES, "n7")
            await _until(lambda: watcher.nodes.get("n7") is None, "node gone")
        finally:
            await server.stop()
            await watcher.stop()
            await client.close()

    run(control_plane, body)
