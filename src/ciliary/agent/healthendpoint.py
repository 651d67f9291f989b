"""The node's health endpoint, as upstream's ``cilium-health`` endpoint: a pod-like endpoint the
other nodes probe, so cluster health proves the path pods take, not only the node's.

It is an endpoint like a pod's, made through the same endpoint manager (intent record, IPAM,
veth and routes, endpoint map, ``bpf_lxc`` attached, policy, READY), with three differences:

* its network namespace is the agent's own, named after the node's: ``<node netns>-health``
  (``ciln-<lab>-<node>-health`` in a lab, so ``lab down``'s removal of the lab's ``ciln-<lab>-``
  namespaces takes it; ``ciliary-<node>-health`` for an agent given no ``--netns``);
* its identity is reserved, ``4`` (``reserved:health``), never allocated from labels; no
  CiliumEndpoint is written for it (it has no pod), as upstream;
* its addresses (one per family the node's IPAM has, from the pod CIDR, IPAM owner
  ``cilium-health/eth0``) are published in the node's CiliumNode as ``spec.health.ipv4``/
  ``ipv6``, from which every other node's node manager puts them in its ipcache (identity 4,
  this node as tunnel endpoint).

Lifetime, as the pods' restart contract: the endpoint survives an agent restart (the endpoint
manager restores it with its netns, addresses and datapath, so other nodes' ipcaches never see
it change); :meth:`HealthEndpoint.ensure` makes it when there is none — first start, or its netns
was lost (a stale netns of that name is removed first) — and the agent then serves the responder
inside it. An agent whose health checking is off removes it (:meth:`HealthEndpoint.remove`). The
netns is never removed at agent shutdown: ``lab down`` (or whoever made the node) removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from ciliary.agent.endpoints import EndpointError, EndpointManager
from ciliary.agent.health import serve_in_netns
from ciliary.core.flow import ReservedIdentity
from ciliary.core.models import Endpoint, EndpointCreateRequest, EndpointState
from ciliary.datapath.linux import netns
from ciliary.datapath.linux.errors import LinkError

log = logging.getLogger(__name__)

HEALTH_CONTAINER_ID = "cilium-health"
"""The attachment's container id (its IPAM owner is ``cilium-health/eth0``)."""
HEALTH_IFNAME = "eth0"


def netns_name(node_netns: str | None, node: str) -> str:
    """The health endpoint's netns: the node netns's name (``--netns``, a name or a path) with
    ``-health``; ``ciliary-<node>-health`` for an agent without one."""
    base = Path(node_netns).name if node_netns else f"ciliary-{node}"
    return f"{base}-health"


class HealthEndpoint:
    """Makes (or keeps) the node's health endpoint and serves ``/hello`` inside it."""

    def __init__(self, endpoints: EndpointManager, netns: str, port: int) -> None:
        self._endpoints = endpoints
        self.netns = netns
        self.port = port
        self._servers: list[asyncio.Server] = []

    @property
    def _path(self) -> str:
        return str(netns.path_of(self.netns))

    def endpoint(self) -> Endpoint | None:
        return self._endpoints.by_container(HEALTH_CONTAINER_ID, HEALTH_IFNAME)

    async def ensure(self) -> Endpoint | None:
        """The health endpoint, ready (after the endpoint manager's restore): the restored one,
        else a new one in a fresh netns; then the responder inside it. None when it cannot be
        made (logged, its netns removed again): the agent runs on without one, publishes no
        ``spec.health``, and its own prober reports no endpoint path for this node."""
        try:
            ep = await self._endpoint()
        except (EndpointError, LinkError, OSError) as err:
            log.error("health endpoint: cannot make it in %s: %s", self.netns, err)
            with contextlib.suppress(LinkError, OSError):
                await asyncio.to_thread(netns.remove, self.netns)
            return None
        try:
            self._servers = await serve_in_netns(self._path, self.port)
        except OSError as err:  # the other nodes will report its HTTP path unreachable
            log.error("health endpoint: cannot listen on port %d in %s: %s", self.port,
                      self.netns, err)  # fmt: skip
        return ep

    async def _endpoint(self) -> Endpoint:
        ep = self.endpoint()
        if ep is not None and (ep.state != EndpointState.READY or ep.netns != self._path):
            await self._endpoints.delete(ep.id)
            await asyncio.to_thread(netns.remove, ep.netns)  # ours, under another name before
            ep = None
        if ep is None:
            await asyncio.to_thread(self._fresh_netns)
            ep, _ = await self._endpoints.create(
                EndpointCreateRequest(  # no pod, no namespace
                    container_id=HEALTH_CONTAINER_ID,
                    netns=self._path,
                    ifname=HEALTH_IFNAME,
                    namespace="",
                ),
                reserved_identity=ReservedIdentity.HEALTH,
            )
            log.info(
                "health endpoint %d made in %s: %s",
                ep.id, self.netns, ", ".join(a for a in (ep.ipv4, ep.ipv6) if a),
            )  # fmt: skip
        return ep

    def _fresh_netns(self) -> None:
        if netns.remove(self.netns):
            log.info("removed the stale health netns %s", self.netns)
        netns.create(self.netns)

    async def stop(self) -> None:
        """The responder stops; the endpoint and its netns stay (restart contract)."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers = []

    async def remove(self) -> None:
        """Health checking is off: the endpoint (if a previous run made it) and its netns go."""
        await self.stop()
        ep = self.endpoint()
        if ep is not None:
            await self._endpoints.delete(ep.id)
        if await asyncio.to_thread(netns.remove, self.netns):
            log.info("health checking off: removed the health endpoint's netns %s", self.netns)


__all__ = ["HEALTH_CONTAINER_ID", "HealthEndpoint", "netns_name"]
