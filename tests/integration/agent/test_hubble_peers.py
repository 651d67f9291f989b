"""Hubble peers from CiliumNodes, against a real ``ciliary-apiserver`` + etcd.

Two agents' peer components (``agent.k8s.hubblepeers``, each with its own client) register
their CiliumNodes and publish their Hubble addresses in its annotations; node n1's Hubble server
serves ``peer.Peer/Notify`` from its informer. The stream's poll is an hour, so every change the
test sees arrived through an informer event: both peers are added, n2's new address (now with a
TLS server name) is an update, a CiliumNode without an address is no peer, and deleting n2's
CiliumNode is PEER_DELETED. A restarted agent's re-registration keeps the annotations.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from ciliary.agent.k8s.ciliumendpoints import CILIUM_NODES, cilium_node, register_node
from ciliary.agent.k8s.hubblepeers import ADDRESS_ANNOTATION, HubblePeers
from ciliary.hubble.api.peer import peer_pb2, peer_pb2_grpc
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.peer import PeerInfo
from ciliary.hubble.server import HubbleServer
from ciliary.kube.client import KubeClient
from ciliary.lab.controlplane import ControlPlane
from tests.integration.kube.helpers import run

pytestmark = pytest.mark.timeout(120)

ADDED, UPDATED, DELETED = peer_pb2.PEER_ADDED, peer_pb2.PEER_UPDATED, peer_pb2.PEER_DELETED


def test_peers_follow_ciliumnodes(control_plane: ControlPlane, tmp_path: Path) -> None:
    async def body(kube: KubeClient) -> None:
        clients = [await KubeClient.connect(control_plane.kubeconfig) for _ in range(2)]
        agents = [HubblePeers(c) for c in clients]
        server: HubbleServer | None = None
        try:
            for name, client, agent in zip(("n1", "n2"), clients, agents, strict=True):
                await register_node(client, cilium_node(name, [], [], {}))
                agent.start()
                await agent.wait_synced(10)
            server = HubbleServer(
                LocalObserver("n1"),
                unix_path=tmp_path / "n1.sock",
                peers=agents[0].peers,
                peer_poll_interval=3600.0,  # only the informer's events wake the stream
            )
            await server.start()
            assert server.peer_servicer is not None
            agents[0].add_listener(server.peer_servicer.notify_changed)
            n1 = PeerInfo("n1", f"unix://{tmp_path / 'n1.sock'}")
            agents[0].publish(n1)
            agents[1].publish(PeerInfo("n2", "unix:///run/n2/hubble.sock"))

            notes: list[Any] = []

            async def follow() -> None:
                async with grpc.aio.insecure_channel(f"unix://{tmp_path / 'n1.sock'}") as ch:
                    async for note in peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest()):
                        notes.append(note)

            reader = asyncio.create_task(follow())

            async def seen(*want: tuple[str, int, str]) -> None:
                for _ in range(1500):
                    got = [(n.name, n.type, n.address) for n in notes]
                    if all(w in got for w in want):
                        return
                    await asyncio.sleep(0.01)
                raise AssertionError(f"no {want} in {notes}")

            try:
                await seen(("n1", ADDED, n1.address), ("n2", ADDED, "unix:///run/n2/hubble.sock"))
                assert not any(n.tls.server_name for n in notes)
                await kube.create(CILIUM_NODES, cilium_node("n3", [], [], {}))  # no address
                agents[1].publish(PeerInfo("n2", "127.0.0.1:4244", "n2.lab.hubble-grpc.cilium.io"))
                await seen(("n2", UPDATED, "127.0.0.1:4244"))
                update = next(n for n in notes if n.type == UPDATED)
                assert update.tls.server_name == "n2.lab.hubble-grpc.cilium.io"
                # a restarted agent re-registers its node: the published address stays
                await register_node(clients[1], cilium_node("n2", ["10.0.0.1"], [], {}))
                got = await kube.get(CILIUM_NODES, "n2")
                assert got["metadata"]["annotations"][ADDRESS_ANNOTATION] == "127.0.0.1:4244"
                await kube.delete(CILIUM_NODES, "n2")
                await seen(("n2", DELETED, "127.0.0.1:4244"))
                kinds = [(n.name, n.type) for n in notes]  # the two adds in either order
                assert sorted(kinds[:2]) == [("n1", ADDED), ("n2", ADDED)]
                # n3 never: a CiliumNode without a Hubble address is no peer
                assert kinds[2:] == [("n2", UPDATED), ("n2", DELETED)]
                # each agent's informer sees the delete on its own: n2's may be behind n1's
                for _ in range(1500):
                    if [p.name for p in agents[1].peers()] == ["n1"]:
                        break
                    await asyncio.sleep(0.01)
                assert [p.name for p in agents[1].peers()] == ["n1"]
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            if server is not None:
                await server.stop(grace=0.1)
            for agent in agents:
                await agent.stop()
            for c in clients:
                await c.close()

    run(control_plane, body)
