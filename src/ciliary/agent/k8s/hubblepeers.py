"""Hubble peers from the cluster's CiliumNodes: each agent publishes where its Hubble server is
on its own CiliumNode, and every agent's ``peer.Peer`` lists the cluster's nodes from there.

Upstream's Peer service lists the node manager's nodes, each dialed at its node IP and the Hubble
port (``<node-ip>:4244``, TLS server name ``<node>.<cluster>.hubble-grpc.cilium.io``); a
CiliumNode has no field for a Hubble address because it is implied. Ours is not: a lab node is a
network namespace on one machine and the relay (root netns) cannot reach a node IP inside it,
so it dials the node's unix socket (or a loopback port). So, our difference from upstream, each
agent writes what a relay needs into its CiliumNode's annotations:

* ``hubble.ciliary.io/address``: ``unix:///…/hubble.sock`` or ``host:port``;
* ``hubble.ciliary.io/tls-server-name``: the name to verify, absent when the server at that
  address speaks plaintext.

A CiliumNode without an address (its agent runs without Hubble, or has not published yet) is no
peer. The list is the informer's store; every informer event (a node added, its annotations
changed, the CiliumNode deleted) wakes the open Notify streams (``PeerServicer.notify_changed``),
which diff the list into PEER_ADDED / PEER_UPDATED / PEER_DELETED. Publishing is a merge patch
of the annotations through a :class:`KeyedWriter` (retried while the API server is away); the
annotations stay when the agent stops (the node still exists, a restarted agent serves the same
address).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ciliary.agent.k8s.ciliumendpoints import CILIUM_NODES
from ciliary.agent.k8s.writer import KeyedWriter
from ciliary.hubble.peer import PeerInfo
from ciliary.kube.client import KubeClient, KubeObject
from ciliary.kube.informer import HandlerFuncs, Informer

log = logging.getLogger(__name__)

ADDRESS_ANNOTATION = "hubble.ciliary.io/address"
TLS_SERVER_NAME_ANNOTATION = "hubble.ciliary.io/tls-server-name"


def peer_of(obj: KubeObject) -> PeerInfo | None:
    """The Hubble server a CiliumNode publishes, None when it publishes none."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    address = annotations.get(ADDRESS_ANNOTATION)
    if not isinstance(address, str) or not address:
        return None
    server_name = annotations.get(TLS_SERVER_NAME_ANNOTATION)
    return PeerInfo(
        str(meta["name"]),
        address,
        server_name if isinstance(server_name, str) and server_name else None,
    )


def annotations_patch(peer: PeerInfo) -> dict[str, object]:
    """The merge patch publishing ``peer`` (a null removes a TLS server name published before)."""
    return {
        "metadata": {
            "annotations": {
                ADDRESS_ANNOTATION: peer.address,
                TLS_SERVER_NAME_ANNOTATION: peer.tls_server_name,
            }
        }
    }


class HubblePeers:
    """Every CiliumNode's published Hubble server (:meth:`peers`), and this node's publication."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self._listeners: list[Callable[[], None]] = []
        self.informer = Informer(client, CILIUM_NODES, name="hubble-peers")
        self.informer.add_handler(
            HandlerFuncs(
                add=lambda _o: self._changed(),
                update=lambda _o, _n: self._changed(),
                delete=lambda _o: self._changed(),
            )
        )
        self._writer: KeyedWriter[str, PeerInfo] = KeyedWriter("hubble-peer-publish", self._write)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` after every change of the nodes (on the loop, no arguments)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def start(self) -> None:
        self.informer.start()
        self._writer.start()

    async def wait_synced(self, timeout: float | None = None) -> None:
        await self.informer.wait_synced(timeout)

    async def stop(self) -> None:
        await self._writer.flushed(2.0)
        await self._writer.stop()
        await self.informer.stop()

    def publish(self, peer: PeerInfo) -> None:
        """Writes ``peer`` into the annotations of the CiliumNode named ``peer.name``."""
        self._writer.want(peer.name, peer)

    async def flushed(self, timeout: float) -> bool:
        return await self._writer.flushed(timeout)

    async def _write(self, node: str, peer: PeerInfo) -> None:
        await self._client.patch(CILIUM_NODES, node, annotations_patch(peer))
        log.info("CiliumNode %s: hubble peer at %s", node, peer.address)

    def peers(self) -> list[PeerInfo]:
        """The nodes that publish a Hubble server, sorted by name."""
        found = (peer_of(obj) for obj in self.informer.store.objects())
        return sorted((p for p in found if p is not None), key=lambda p: p.name)
