"""``ciliary hubble ui``'s web server: the page's static files and a small JSON/SSE API over
the relay.

The browser never speaks gRPC: this server asks the relay (:mod:`ciliary.hubble.ui.flows`) and
hands the page JSON — ``/api/namespaces`` (GetNamespaces), ``/api/nodes`` (GetNodes) — and one
server-sent-events stream per view, ``/api/flows/stream?namespace=NS&filter=FLAGS``: a GetFlows
follow of that namespace with ``hubble observe``'s filter flags, sent as ``flows`` events (a
batch of table rows every ~50 ms while flows arrive) and ``map`` events (the namespace's whole
service map, :mod:`ciliary.hubble.ui.servicemap`, when its picture changed, at most every
0.5 s), ``failure`` once
when the filter is refused or the relay fails (the page then stops the stream rather than letting
the browser retry it), and a comment every 15 s to keep proxies from closing an idle stream.

The policy view (``/api/policy?workload=ID``: what may reach a workload and what it may reach,
per port; ``/api/policy/workloads``; ``/api/policy/trace?from=ID&to=ID&port=N&protocol=P``: the
"what if") is computed by :mod:`ciliary.hubble.ui.policyview` from the cluster's Kubernetes API
(``--kubeconfig``), never from an agent.

The page's own JS/CSS is in ``static/``; cytoscape (the map's layout and drawing) comes from npm,
pinned by ``package-lock.json`` and installed by ``make setup`` into ``node_modules``, served at
``/vendor/cytoscape.min.js``: nothing is fetched from the internet at run time. The server binds
loopback by default: flows name every pod and address of the cluster, and there is no login.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aiohttp import web

from ciliary.hubble.client import ClientTLS, connect
from ciliary.hubble.ui import DEFAULT_PORT
from ciliary.hubble.ui.flows import (
    FlowQuery,
    QueryError,
    RelayClient,
    build_query,
    flow_row,
    rpc_message,
)
from ciliary.hubble.ui.policyview import RESERVED_SOURCES, PolicySource, PolicyViewError
from ciliary.hubble.ui.servicemap import ServiceMap

log = logging.getLogger(__name__)

UI_DIR = Path(__file__).resolve().parent
STATIC_DIR = UI_DIR / "static"
CYTOSCAPE_JS = UI_DIR / "node_modules" / "cytoscape" / "dist" / "cytoscape.min.js"

BATCH_WINDOW = 0.05
"""Seconds flows are gathered into one ``flows`` event once the first arrived."""
BATCH_MAX = 500
MAP_INTERVAL = 0.5
"""Seconds between two ``map`` events at most (a large map is re-sent whole; the page redraws
only what changed in it)."""
KEEPALIVE = 15.0

_RELAY_KEY = web.AppKey("relay", RelayClient)
_RELAY_NAME_KEY = web.AppKey("relay_name", str)
_POLICIES_KEY = web.AppKey("policies", PolicySource)
_END = object()


class UIError(RuntimeError):
    """The UI cannot start (front-end files missing, relay unreachable); the message says what
    to do."""


def check_assets() -> None:
    """UIError unless the page's files and the npm packages are installed."""
    if not (STATIC_DIR / "index.html").is_file():
        raise UIError(f"the Hubble UI's page is missing ({STATIC_DIR / 'index.html'})")
    if not CYTOSCAPE_JS.is_file():
        raise UIError(
            f"the Hubble UI's front-end packages are not installed ({CYTOSCAPE_JS} missing): "
            f"run 'make setup' (npm ci in {UI_DIR})"
        )


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def _cytoscape(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(CYTOSCAPE_JS)


async def _unary(request: web.Request, what: str) -> web.Response:
    relay = request.app[_RELAY_KEY]
    try:
        answer: Any = await (relay.namespaces() if what == "namespaces" else relay.nodes())
    except grpc.RpcError as err:
        msg = rpc_message(err, request.app[_RELAY_NAME_KEY])
        return web.json_response({"error": msg}, status=502)
    return web.json_response({what: answer})


async def _namespaces(request: web.Request) -> web.Response:
    return await _unary(request, "namespaces")


async def _nodes(request: web.Request) -> web.Response:
    return await _unary(request, "nodes")


async def _pump(relay: RelayClient, query: FlowQuery, queue: asyncio.Queue[Any]) -> None:
    """Relay flows into ``queue``; an error message string or _END closes it."""
    try:
        async for flow in relay.flows(query):
            await queue.put(flow)
    except grpc.RpcError as err:
        await queue.put(err)
        return
    await queue.put(_END)


async def _send_flows(
    resp: web.StreamResponse, queue: asyncio.Queue[Any], smap: ServiceMap, relay_name: str
) -> None:
    """Batches the queue's flows into ``flows``/``map`` events until it ends or fails; a changed
    map is sent at most every MAP_INTERVAL seconds (at once when the last one is older)."""
    loop = asyncio.get_running_loop()
    await resp.write(_sse("map", smap.snapshot()))
    map_sent, map_dirty = loop.time(), False
    while True:
        wait = KEEPALIVE
        if map_dirty:
            wait = max(0.0, map_sent + MAP_INTERVAL - loop.time())
        try:
            first = await asyncio.wait_for(queue.get(), wait)
        except TimeoutError:
            if map_dirty:
                await resp.write(_sse("map", smap.snapshot()))
                map_sent, map_dirty = loop.time(), False
            else:
                await resp.write(b": keepalive\n\n")
            continue
        batch = [first]
        await asyncio.sleep(BATCH_WINDOW)
        while len(batch) < BATCH_MAX and not queue.empty():
            batch.append(queue.get_nowait())
        rows, changed, end = [], False, None
        for item in batch:
            if item is _END or isinstance(item, grpc.RpcError):
                end = item
                break
            rows.append(flow_row(item))
            changed |= smap.add(item)
        if rows:
            await resp.write(_sse("flows", rows))
        map_dirty |= changed
        if map_dirty and (end is not None or loop.time() - map_sent >= MAP_INTERVAL):
            await resp.write(_sse("map", smap.snapshot()))
            map_sent, map_dirty = loop.time(), False
        if isinstance(end, grpc.RpcError):
            await resp.write(_sse("failure", {"message": rpc_message(end, relay_name)}))
            return
        if end is _END:
            await resp.write(_sse("failure", {"message": "the relay ended the flow stream"}))
            return


async def _flows_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await resp.prepare(request)
    namespace = request.query.get("namespace", "")
    try:
        query = build_query(namespace, request.query.get("filter", ""))
    except QueryError as err:
        await resp.write(_sse("failure", {"message": str(err), "filter": True}))
        return resp
    queue: asyncio.Queue[Any] = asyncio.Queue()
    smap = ServiceMap(namespace)
    async with asyncio.TaskGroup() as tg:
        pump = tg.create_task(
            _pump(request.app[_RELAY_KEY], query, queue), name=f"hubble-ui-flows-{namespace}"
        )
        try:
            await _send_flows(resp, queue, smap, request.app[_RELAY_NAME_KEY])
        except ConnectionResetError:  # the page went away
            pass
        finally:
            pump.cancel()
    return resp


async def _policy_answer(request: web.Request, question: str) -> web.Response:
    """``/api/policy`` (a workload's view), ``/api/policy/workloads`` (the what-if's choices)
    and ``/api/policy/trace`` (the what-if), from the cluster's API (policyview)."""
    source = request.app.get(_POLICIES_KEY)
    if source is None:
        msg = "no Kubernetes API to read policies from: start the UI with --kubeconfig"
        return web.json_response({"error": msg}, status=503)
    q = request.query
    try:
        cluster = await source.read()
        if question == "workloads":
            ids = sorted(cluster.workloads)
            answer: dict[str, Any] = {
                "workloads": [{"id": k, "name": cluster.workloads[k].shown} for k in ids]
                + [{"id": f"reserved:{r}", "name": r} for r in RESERVED_SOURCES],
            }
        elif question == "view":
            answer = cluster.view(q.get("workload", ""))
        else:
            port_text = q.get("port", "")
            if not port_text.isdigit():
                raise PolicyViewError(f"port {port_text!r}: expected a number 0..65535")
            answer = cluster.what_if(
                q.get("from", ""), q.get("to", ""), q.get("protocol", "TCP"), int(port_text)
            )
    except PolicyViewError as err:
        return web.json_response({"error": str(err)}, status=400)
    except Exception as err:  # the API away, refused credentials
        log.warning("policy view: %s", err)
        where = f"the Kubernetes API ({source.kubeconfig})"
        return web.json_response({"error": f"{where}: {err}"}, status=502)
    return web.json_response(answer)


async def _policy_view(request: web.Request) -> web.Response:
    return await _policy_answer(request, "view")


async def _policy_workloads(request: web.Request) -> web.Response:
    return await _policy_answer(request, "workloads")


async def _policy_trace(request: web.Request) -> web.Response:
    return await _policy_answer(request, "trace")


def make_app(
    relay: RelayClient, relay_name: str, policies: PolicySource | None = None
) -> web.Application:
    """The UI's aiohttp application over a relay client (``relay_name`` is shown in errors) and,
    for the policy view, the cluster's API (``policies``)."""
    app = web.Application()
    app[_RELAY_KEY] = relay
    app[_RELAY_NAME_KEY] = relay_name
    if policies is not None:
        app[_POLICIES_KEY] = policies
    app.router.add_get("/api/policy", _policy_view)
    app.router.add_get("/api/policy/workloads", _policy_workloads)
    app.router.add_get("/api/policy/trace", _policy_trace)
    app.router.add_get("/", _index)
    app.router.add_get("/api/namespaces", _namespaces)
    app.router.add_get("/api/nodes", _nodes)
    app.router.add_get("/api/flows/stream", _flows_stream)
    app.router.add_get("/vendor/cytoscape.min.js", _cytoscape)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    return app


async def serve(
    relay_addr: str,
    tls: ClientTLS | None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    dial_timeout: float = 5.0,
    ready: asyncio.Event | None = None,
    kubeconfig: Path | None = None,
) -> None:
    """Serves the UI until cancelled; prints its URL once it listens."""
    check_assets()
    try:
        channel = await connect(relay_addr, tls, timeout=dial_timeout)
    except ConnectionError as err:
        raise UIError(f"{err}; is the lab (its relay) running? ('ciliary lab up')") from err
    policies = PolicySource(kubeconfig) if kubeconfig is not None else None
    app = make_app(RelayClient(channel), relay_addr, policies)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as err:
            raise UIError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"Hubble UI at http://{shown}:{bound}/ (relay {relay_addr})", flush=True)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(Exception):
            await channel.close(None)
        if policies is not None:
            with contextlib.suppress(Exception):
                await policies.close()


__all__ = [
    "DEFAULT_PORT",
    "UIError",
    "check_assets",
    "make_app",
    "serve",
]
