"""The Prometheus endpoint: ``/metrics`` of one registry over HTTP, on the owner's event loop.

Serves Hubble's flow metrics (``--hubble-metrics-server``) and the agent's own
(``--prometheus-serve-addr``) alike.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ciliary.hubble.server import split_listen_address

log = logging.getLogger("ciliary.hubble.metrics")


class MetricsServer:
    """Serves ``/metrics`` of one registry over HTTP (aiohttp, on the running event loop).

    Content negotiation as prometheus_client's: OpenMetrics when the Accept header asks for
    ``application/openmetrics-text`` (needed for exemplars), the classic text format otherwise.
    The registry is collected on the event loop, so collectors may read loop-owned state.
    """

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        self.registry = registry
        self.host, self._port = split_listen_address(address)
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when started with port 0; give a host with port 0,
        as each address family of ``":0"`` would get a port of its own)."""
        if self._runner is not None:
            for addr in self._runner.addresses:
                if isinstance(addr, tuple):
                    return int(addr[1])
        return self._port

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("metrics server listening on %s:%d", self.host or "*", self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
