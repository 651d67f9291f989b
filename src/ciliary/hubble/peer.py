"""``peer.Peer/Notify``: how a relay learns which Hubble servers exist.

Upstream's agent streams one ``PEER_ADDED`` per known node, then ``PEER_ADDED`` /
``PEER_DELETED`` / ``PEER_UPDATED`` as its node manager reports changes; a renamed node is a
delete plus an add, and an update is only sent when something a client dials with (address,
TLS server name) changed (``pkg/hubble/peer/handler.go``). The servicer takes a callable
listing the peers (the agent's: its CiliumNode informer's nodes, ``agent.k8s.hubblepeers``)
and diffs successive lists: it is woken by :meth:`PeerServicer.notify_changed` (the agent calls
it on every informer event) and re-lists every ``poll_interval`` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from ciliary.hubble.api.peer import peer_pb2, peer_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One Hubble server: its node name, the address to dial (``unix:///...`` or
    ``host:port``) and the TLS server name to verify (None: the peer serves plaintext)."""

    name: str
    address: str
    tls_server_name: str | None = None


ListPeers = Callable[[], Sequence[PeerInfo] | Awaitable[Sequence[PeerInfo]]]


def _notification(peer: PeerInfo, kind: int) -> peer_pb2.ChangeNotification:
    return peer_pb2.ChangeNotification(
        name=peer.name,
        address=peer.address,
        type=kind,  # type: ignore[arg-type]
        tls=peer_pb2.TLS(server_name=peer.tls_server_name)
        if peer.tls_server_name is not None
        else None,
    )


def diff_peers(
    old: dict[str, PeerInfo], new: dict[str, PeerInfo]
) -> list[peer_pb2.ChangeNotification]:
    """Notifications turning ``old`` into ``new``: deletions first, then additions and
    updates, each sorted by name."""
    out = [_notification(old[name], peer_pb2.PEER_DELETED) for name in sorted(old.keys() - new)]
    for name in sorted(new):
        if name not in old:
            out.append(_notification(new[name], peer_pb2.PEER_ADDED))
        elif new[name] != old[name]:
            out.append(_notification(new[name], peer_pb2.PEER_UPDATED))
    return out


class PeerServicer(peer_pb2_grpc.PeerServicer):
    """Streams peer changes computed from ``list_peers()`` (sync or async callable)."""

    def __init__(self, list_peers: ListPeers, poll_interval: float = DEFAULT_POLL_INTERVAL):
        self._list_peers = list_peers
        self.poll_interval = poll_interval
        self._wakeups: set[asyncio.Event] = set()

    def notify_changed(self) -> None:
        """Makes every open Notify stream re-list now (call from the server's loop)."""
        for ev in self._wakeups:
            ev.set()

    async def _current(self) -> dict[str, PeerInfo]:
        result = self._list_peers()
        peers = await result if inspect.isawaitable(result) else result
        return {p.name: p for p in peers}

    async def Notify(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.NotifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[peer_pb2.ChangeNotification]:
        try:
            known = await self._current()
        except Exception as err:
            log.exception("listing Hubble peers failed")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot list peers: {err}")
            return
        for note in diff_peers({}, known):
            yield note
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), self.poll_interval)
                wakeup.clear()
                try:
                    current = await self._current()
                except Exception:
                    log.exception("listing Hubble peers failed; keeping the previous list")
                    continue
                for note in diff_peers(known, current):
                    yield note
                known = current
        finally:
            self._wakeups.discard(wakeup)
