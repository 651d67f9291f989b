"""The agent's REST API on a root-only unix socket (aiohttp).

Handlers are thin: parse and validate the body with the ``ciliary.core.models`` schema (a bad
request gets a 400 naming the field), call the component, serialize the model. Errors always
answer with an ``ErrorResponse`` body so clients can print one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ciliary.agent import policytrace
from ciliary.agent.endpoints import EndpointError
from ciliary.agent.ipam import IPAMError
from ciliary.agent.k8s.policies import PolicyWriteError
from ciliary.agent.masquerade import nat_entries
from ciliary.core.models import (
    API_PREFIX,
    MONITOR_EVENT_TYPES,
    Endpoint,
    EndpointCheckRequest,
    EndpointCreateRequest,
    ErrorResponse,
    GCRequest,
    GCResponse,
    IPAMAllocateRequest,
    IPAMAllocateResponse,
    PolicyChangeResponse,
    PolicyImportRequest,
    PolicyListResponse,
    TraceRequest,
)
from ciliary.policy.api import PolicyError

if TYPE_CHECKING:
    from ciliary.agent.daemon import Agent

log = logging.getLogger(__name__)
_MAX_BODY = web.AppKey("max_body", int)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(
    data: BaseModel | Sequence[BaseModel] | dict[str, str], status: int = 200
) -> web.Response:
    if isinstance(data, BaseModel):
        body = data.model_dump_json()
    elif isinstance(data, Sequence):
        body = "[" + ",".join(m.model_dump_json() for m in data) + "]"
    else:
        body = json.dumps(data)
    return web.Response(text=body, status=status, content_type="application/json")


def _error(message: str, status: int, kind: str = "error") -> web.Response:
    return _json(ErrorResponse(error=message, kind=kind), status)


# The largest request body the API reads (aiohttp's default is 1 MiB, less than a policy import
# of a few thousand rules). A body over it is read to its end and dropped, so the client gets
# the answer naming the limit instead of a broken pipe.
MAX_BODY_ENV = "CILIARY_AGENT_API_MAX_BODY"
DEFAULT_MAX_BODY = 64 << 20
_DRAIN_AT_MOST = 1 << 30


def max_body_bytes() -> int:
    """The body limit: ``$CILIARY_AGENT_API_MAX_BODY`` (bytes) in the agent's environment, else
    64 MiB."""
    raw = os.environ.get(MAX_BODY_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_BODY


def _too_large(size: int | None, limit: int) -> web.Response:
    what = f"request body of {size} bytes" if size is not None else "request body"
    return _error(
        f"{what} is over the agent API's limit of {limit} bytes ({limit >> 20} MiB); raise it"
        f" with {MAX_BODY_ENV}=<bytes> in the agent's environment, or split the import into"
        " smaller files",
        413,
        "too-large",
    )


async def _drain(request: web.Request) -> None:
    """Read and drop what the client still sends (bounded), so it can read our answer."""
    left = _DRAIN_AT_MOST
    while left > 0 and not request.content.at_eof():
        chunk = await request.content.readany()
        if not chunk:
            return
        left -= len(chunk)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    limit = request.app[_MAX_BODY]
    try:
        if request.content_length is not None and request.content_length > limit:
            await _drain(request)
            return _too_large(request.content_length, limit)
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:  # a body without Content-Length (chunked)
        with contextlib.suppress(ConnectionResetError):
            await _drain(request)
        return _too_large(None, limit)
    except ConnectionResetError:
        # the client hung up mid-request (interrupted, timed out): nothing to answer, no bug
        log.info("client went away during %s %s; request dropped", request.method, request.path)
        return web.Response(status=400)
    except web.HTTPException as exc:
        return _error(exc.reason or "error", exc.status, "http")
    except EndpointError as err:
        return _error(str(err), err.status, err.kind)
    except PolicyError as err:
        return _error(str(err), 400, "policy")
    except PolicyWriteError as err:
        return _error(str(err), 502, "kubernetes")
    except IPAMError as err:
        status = {"exhausted": 409, "conflict": 409, "not-found": 404}.get(err.kind, 400)
        return _error(str(err), status, "exhausted" if err.kind == "exhausted" else "ipam")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _error(f"invalid request: {where}: {first['msg']}", 400, "validation")
    except Exception as err:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(f"internal error: {err}", 500, "internal")


async def _body(request: web.Request) -> object:
    try:
        return await request.json()
    except ValueError as err:
        raise EndpointError("request body is not valid JSON", 400, "validation") from err


class APIServer:
    def __init__(self, agent: Agent, socket_path: Path) -> None:
        self._agent = agent
        self._path = socket_path
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        """Set by :meth:`stop`: the monitor streams end (aiohttp's clean-up would wait for them,
        up to its 60 s shutdown timeout, before the agent can exit)."""
        limit = max_body_bytes()
        app = web.Application(middlewares=[_errors], client_max_size=limit)
        app[_MAX_BODY] = limit
        p = API_PREFIX
        app.add_routes(
            [
                web.get(f"{p}/healthz", self.healthz),
                web.get(f"{p}/status", self.status),
                web.get(f"{p}/endpoint", self.endpoint_list),
                web.put(f"{p}/endpoint", self.endpoint_create),
                web.delete(f"{p}/endpoint", self.endpoint_delete_by_container),
                web.post(f"{p}/endpoint/check", self.endpoint_check),
                web.get(f"{p}/endpoint/{{id}}", self.endpoint_get),
                web.delete(f"{p}/endpoint/{{id}}", self.endpoint_delete),
                web.get(f"{p}/map/ct", self.ct_list),
                web.get(f"{p}/map/nat", self.nat_list),
                web.get(f"{p}/map/ipcache", self.ipcache_list),
                web.get(f"{p}/monitor", self.monitor),
                web.get(f"{p}/ipam", self.ipam_list),
                web.post(f"{p}/ipam", self.ipam_allocate),
                web.delete(f"{p}/ipam", self.ipam_release),
                web.post(f"{p}/gc", self.gc),
                web.post(f"{p}/ipam/gc", self.ipam_gc),
                web.put(f"{p}/policy", self.policy_import),
                web.get(f"{p}/policy", self.policy_list),
                web.delete(f"{p}/policy", self.policy_delete),
                web.post(f"{p}/policy/trace", self.policy_trace),
                web.get(f"{p}/endpoint/{{id}}/policy", self.endpoint_policy),
                web.get(f"{p}/identity", self.identity_list),
                web.get(f"{p}/identity/{{id}}", self.identity_get),
                web.get(f"{p}/fqdn/cache", self.fqdn_cache_list),
                web.get(f"{p}/service", self.service_list),
                web.get(f"{p}/service/frontend", self.service_frontend_list),
                web.get(f"{p}/map/lb", self.lb_list),
                web.get(f"{p}/map/lb/maglev", self.maglev_list),
                web.get(f"{p}/cluster/nodes", self.node_list),
            ]
        )
        self._app = app

    async def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._path.exists() or self._path.is_symlink():
            self._path.unlink()
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await self._runner.setup()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            site = web.UnixSite(self._runner, str(self._path))
            await site.start()
        finally:
            os.umask(old_umask)
        os.chmod(self._path, 0o600)

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- handlers ------------------------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        return _json({"status": "ok", "node": self._agent.node})

    async def status(self, _: web.Request) -> web.Response:
        return _json(await self._agent.status())

    def _with_enforcement(self, ep: Endpoint) -> Endpoint:
        pol = self._agent.policy.realized(ep.id)
        if pol is None:
            return ep
        on = {True: "Enabled", False: "Disabled"}
        return ep.model_copy(
            update={
                "policy_ingress": on[pol.ingress_enforced],
                "policy_egress": on[pol.egress_enforced],
            }
        )

    async def endpoint_list(self, _: web.Request) -> web.Response:
        return _json([self._with_enforcement(ep) for ep in self._agent.endpoints.endpoints()])

    def _ep_id(self, request: web.Request) -> int:
        try:
            return int(request.match_info["id"])
        except ValueError as err:
            raise EndpointError("endpoint id must be a number", 400, "validation") from err

    async def endpoint_get(self, request: web.Request) -> web.Response:
        ep_id = self._ep_id(request)
        ep = self._agent.endpoints.get(ep_id)
        if ep is None:
            return _error(f"endpoint {ep_id} not found", 404, "not-found")
        return _json(self._with_enforcement(ep))

    async def endpoint_create(self, request: web.Request) -> web.Response:
        req = EndpointCreateRequest.model_validate(await _body(request))
        ep, made = await self._agent.endpoints.create(req)
        return _json(ep, 201 if made else 200)

    async def endpoint_check(self, request: web.Request) -> web.Response:
        req = EndpointCheckRequest.model_validate(await _body(request))
        return _json(await self._agent.endpoints.check(req))

    async def ipam_list(self, _: web.Request) -> web.Response:
        return _json(self._agent.ipam.listing())

    async def ipam_allocate(self, request: web.Request) -> web.Response:
        req = IPAMAllocateRequest.model_validate(await _body(request))
        if req.kind != "ipam-plugin":
            return _error("only ipam-plugin allocations may be made directly", 400, "validation")
        return _json(IPAMAllocateResponse(allocations=self._agent.ipam.allocate(req)), 201)

    async def ipam_release(self, request: web.Request) -> web.Response:
        owner = request.query.get("owner", "")
        if not owner:
            return _error("owner query parameter is required", 400, "validation")
        held = self._agent.ipam.owned_by(owner)
        if any(a.kind != "ipam-plugin" for a in held):
            return _error(f"{owner} is an endpoint: delete the endpoint instead", 409, "conflict")
        return _json(IPAMAllocateResponse(allocations=self._agent.ipam.release(owner)))

    async def policy_import(self, request: web.Request) -> web.Response:
        req = PolicyImportRequest.model_validate(await _body(request))
        watcher = self._agent.policy_watcher
        if watcher is not None:  # the API server holds the policies: write them there
            keys = await watcher.import_text(req.text, req.filename)
        else:
            keys = self._agent.policy.import_text(req.text, req.filename)
        await self._agent.endpoints.regenerate_all(f"policy import of {req.filename}")
        return _json(PolicyChangeResponse(revision=self._agent.policy.repo.revision, keys=keys))

    async def policy_list(self, _: web.Request) -> web.Response:
        return _json(
            PolicyListResponse(
                revision=self._agent.policy.repo.revision, policies=self._agent.policy.summaries()
            )
        )

    async def policy_delete(self, request: web.Request) -> web.Response:
        everything = request.query.get("all", "") in ("1", "true")
        keys = request.query.getall("key", [])
        if not everything and not keys:
            return _error(
                "give key=<kind/namespace/name> (repeatable) or all=true", 400, "validation"
            )
        try:
            targets = None if everything else list(keys)
            watcher = self._agent.policy_watcher
            if watcher is not None:
                removed = await watcher.delete(targets)
            else:
                removed = self._agent.policy.delete(targets)
        except KeyError as err:
            return _error(str(err.args[0]), 404, "not-found")
        await self._agent.endpoints.regenerate_all("policy delete")
        return _json(PolicyChangeResponse(revision=self._agent.policy.repo.revision, keys=removed))

    async def policy_trace(self, request: web.Request) -> web.Response:
        req = TraceRequest.model_validate(await _body(request))
        return _json(policytrace.trace(req, self._agent.endpoints, self._agent.policy))

    async def endpoint_policy(self, request: web.Request) -> web.Response:
        ep_id = self._ep_id(request)
        ep = self._agent.endpoints.get(ep_id)
        if ep is None:
            return _error(f"endpoint {ep_id} not found", 404, "not-found")
        return _json(self._agent.policy.status(ep))

    async def identity_list(self, _: web.Request) -> web.Response:
        return _json(self._agent.policy.identities(self._agent.endpoints.endpoints()))

    async def identity_get(self, request: web.Request) -> web.Response:
        number = self._ep_id(request)
        for info in self._agent.policy.identities(self._agent.endpoints.endpoints()):
            if info.id == number:
                return _json(info)
        return _error(f"identity {number} not found", 404, "not-found")

    async def fqdn_cache_list(self, _: web.Request) -> web.Response:
        """The DNS cache toFQDNs rules select from (name, IP, expiry)."""
        return _json(self._agent.fqdn_cache())

    async def service_list(self, _: web.Request) -> web.Response:
        """The service cache (read-only; empty without a Kubernetes API)."""
        watcher = self._agent.service_watcher
        return _json(watcher.services.services() if watcher is not None else [])

    async def service_frontend_list(self, _: web.Request) -> web.Response:
        """The frontends the BPF service maps hold, with ids and backends."""
        return _json(self._agent.service_frontends())

    async def lb_list(self, _: web.Request) -> web.Response:
        return _json(self._agent.lb_entries())

    async def maglev_list(self, _: web.Request) -> web.Response:
        return _json(self._agent.maglev_tables())

    async def node_list(self, _: web.Request) -> web.Response:
        watcher = self._agent.service_watcher
        return _json(watcher.nodes.nodes() if watcher is not None else [])

    async def ipam_gc(self, _: web.Request) -> web.Response:
        released = await self._agent.endpoints.release_orphaned_addresses()
        return _json(IPAMAllocateResponse(allocations=released))

    async def gc(self, request: web.Request) -> web.Response:
        req = GCRequest.model_validate(await _body(request))
        valid = {f"{a.container_id}/{a.ifname}" for a in req.valid_attachments}
        removed, released = await self._agent.endpoints.gc(req.network, valid, req.scope)
        return _json(GCResponse(endpoints_removed=removed, addresses_released=released))

    async def endpoint_delete(self, request: web.Request) -> web.Response:
        return _json(await self._agent.endpoints.delete(self._ep_id(request)))

    async def endpoint_delete_by_container(self, request: web.Request) -> web.Response:
        container_id = request.query.get("container_id", "")
        ep = self._agent.endpoints.by_container(container_id) if container_id else None
        if ep is None:
            return _error(f"no endpoint for container {container_id!r}", 404, "not-found")
        return _json(await self._agent.endpoints.delete(ep.id))

    async def ct_list(self, _: web.Request) -> web.Response:
        return _json(self._agent.ct_entries())

    async def nat_list(self, _: web.Request) -> web.Response:
        return _json(nat_entries(self._agent.datapath))

    async def ipcache_list(self, _: web.Request) -> web.Response:
        return _json(self._agent.ipcache_entries())

    async def monitor(self, request: web.Request) -> web.StreamResponse:
        want = request.query.get("type")
        if want is not None and want not in MONITOR_EVENT_TYPES:
            *rest, last = MONITOR_EVENT_TYPES
            return _error(f"type must be {', '.join(rest)} or {last}", 400, "validation")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue = self._agent.monitor.subscribe()
        try:
            while not self._stopping.is_set():  # a subscriber must not keep the agent running
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    # a quiet datapath must not keep a vanished subscriber alive
                    if request.transport is None or request.transport.is_closing():
                        break
                    continue
                if want is not None and event.type != want:
                    continue
                await resp.write(event.model_dump_json().encode() + b"\n")
        except ConnectionResetError:
            pass  # the client went away; cancellation (shutdown) propagates
        finally:
            self._agent.monitor.unsubscribe(queue)
        return resp
