"""The REST half of the lab's Kubernetes API: URL → resource → storage, kube-apiserver's verbs.

Paths are kube-apiserver's: ``/api/v1/…`` for the core group, ``/apis/<group>/<version>/…``
for the others, a namespaced collection under ``namespaces/<ns>/``, an object's subresource after
its name (``status``, ``scale``, ``binding``, ``log``). Every failure is a ``Status`` object
with kube-apiserver's reason and code (:mod:`ciliary.apiserver.errors`), since clients decide by
them. Discovery documents, OpenAPI and Tables come from :mod:`ciliary.k8s` (``discovery``,
``openapi``, ``table``); this module owns the verbs and their ordering guarantees only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ciliary.apiserver import binding, errors, patching, podlogs, services, strategy, watch
from ciliary.apiserver.etcd import RequestTooLargeError
from ciliary.apiserver.etcdserver import MAX_REQUEST_BYTES as ETCD_MAX_REQUEST_BYTES
from ciliary.apiserver.filters import predicate
from ciliary.apiserver.servicealloc import (
    DEFAULT_SERVICE_CIDR,
    IP_PREFIX,
    PORT_PREFIX,
    ServiceAllocator,
    Session,
    parse_service_cidrs,
)
from ciliary.apiserver.storage import DELETE, ClaimTakenError, Obj, Outcome, Storage, parse_rv
from ciliary.k8s import discovery, openapi, protobuf, table
from ciliary.k8s.resources import RESOURCES, ResourceType, UnknownResourceError, by_path

log = logging.getLogger(__name__)

NAMESPACES = by_path("", "v1", "namespaces")
SERVICES = by_path("", "v1", "services")
SERVICE_WRITE_ATTEMPTS = 16  # a choice etcd says is taken is made again (another process)


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def resolve(group: str, version: str, segments: list[str]) -> Target:
    """The resource a path after ``/api/v1`` or ``/apis/<g>/<v>`` names."""
    namespace: str | None = None
    namespace_sub = len(segments) == 3 and segments[2] in ("status", "finalize")
    if segments and segments[0] == "namespaces" and len(segments) >= 3 and not namespace_sub:
        namespace, segments = segments[1], segments[2:]
    if not segments or len(segments) > 3:
        raise errors.resource_not_found()
    try:
        rt = by_path(group, version, segments[0])
    except UnknownResourceError:
        raise errors.resource_not_found() from None
    name = segments[1] if len(segments) > 1 else None
    sub = segments[2] if len(segments) > 2 else None
    if sub is not None and sub not in rt.subresources:
        raise errors.resource_not_found()
    if namespace is not None and not rt.namespaced:
        raise errors.resource_not_found()
    return Target(rt, namespace, name, sub)


def _dry_run(request: web.Request) -> bool:
    """``dryRun=All``: every check of the verb runs, nothing is written (any other value is
    400, as kube-apiserver answers)."""
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise errors.bad_request(f'Invalid dryRun value: "{value}", supported values: All')
    return bool(values)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(doc, separators=(",", ":")).encode(),
        content_type="application/json",
    )


class APIServer:
    def __init__(
        self,
        storage: Storage,
        *,
        bookmark_interval: float = 60.0,
        pod_log_dir: Path | None = None,
        service_allocator: ServiceAllocator | None = None,
    ) -> None:
        self.storage = storage
        # Service cluster IPs and node ports: claims written with the Services (servicealloc)
        self.services = service_allocator or ServiceAllocator(
            parse_service_cidrs(DEFAULT_SERVICE_CIDR)
        )
        if storage.claims is None:
            storage.claims = self.services
        self._claims_loaded = asyncio.Lock()
        self.bookmark_interval = bookmark_interval
        self.pod_log_dir = pod_log_dir  # the kubelet role's logs (ciliary.k8s.podlogs layout)
        self._streams: set[asyncio.Task[Any]] = set()  # the handlers of open watches and log -f
        self._closing = False  # shutdown has ended the streams: a later one ends at once

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self._errors])
        app.router.add_get("/version", self.version)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.healthz)
        app.router.add_get("/livez", self.healthz)
        app.router.add_route("*", "/api", self.discovery)
        app.router.add_route("*", "/apis", self.discovery)
        app.router.add_route("*", "/openapi/{tail:.*}", self.openapi)
        app.router.add_route("*", "/api/{version}", self.discovery)
        app.router.add_route("*", "/apis/{group}", self.discovery)
        app.router.add_route("*", "/apis/{group}/{version}", self.discovery)
        app.router.add_route("*", "/api/{version}/{tail:.+}", self.core)
        app.router.add_route("*", "/apis/{group}/{version}/{tail:.+}", self.grouped)
        app.on_shutdown.append(self._end_streams)
        return app

    @contextlib.asynccontextmanager
    async def _stream(self) -> AsyncIterator[None]:
        """Marks the current handler as a stream that only ends when the client goes (a watch, a
        followed log), so that shutdown ends it at once (as kube-apiserver closes its watches)
        rather than waiting the runner's shutdown_timeout for a handler that never finishes."""
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        if self._closing:
            # a handler that reached its stream after shutdown ended the others (its request
            # was still being read, or its list served, then): it would hold the runner's
            # shutdown_timeout as well
            task.cancel()
        try:
            yield
        finally:
            self._streams.discard(task)

    async def _end_streams(self, _app: web.Application) -> None:
        self._closing = True
        for task in list(self._streams):
            task.cancel()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except errors.StatusError as err:
            return _json(err.status(), err.code)
        except RequestTooLargeError as err:
            # one object is one etcd request: over etcd's --max-request-bytes nothing is stored
            status = errors.request_entity_too_large(
                f"{err}: an object is stored in one etcd request of at most"
                f" {ETCD_MAX_REQUEST_BYTES} bytes (etcd --max-request-bytes)"
            )
            return _json(status.status(), 413)
        except web.HTTPException as err:
            if err.status == 404:
                return _json(errors.resource_not_found().status(), 404)
            raise
        except Exception as err:
            log.exception("%s %s failed", request.method, request.path_qs)
            status = errors.internal(str(err))
            return _json(status.status(), 500)

    async def version(self, request: web.Request) -> web.Response:
        return _json(discovery.version_info())

    async def healthz(self, request: web.Request) -> web.Response:
        await self.storage.revision()
        return web.Response(text="ok")

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        host = request.host
        result = discovery.handle(request.path, request.headers.get("Accept", ""), host)
        if result is None:
            raise errors.resource_not_found()
        content_type, body = result
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        result = openapi.handle(request.path, request.query_string)
        if result is None:
            raise errors.resource_not_found()
        content_type, body = result
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def core(self, request: web.Request) -> web.StreamResponse:
        return await self._resource(request, "", request.match_info["version"])

    async def grouped(self, request: web.Request) -> web.StreamResponse:
        return await self._resource(
            request, request.match_info["group"], request.match_info["version"]
        )

    async def _resource(self, request: web.Request, group: str, version: str) -> web.StreamResponse:
        target = resolve(group, version, request.match_info["tail"].split("/"))
        method = request.method
        if target.name is None:
            if method == "GET":
                return await self.list_or_watch(request, target)
            if method == "POST":
                return await self.create(request, target)
            if method == "DELETE":
                return await self.delete_collection(request, target)
        elif target.subresource is None:
            if method == "GET":
                return await self.get(request, target)
            if method == "PUT":
                return await self.update(request, target)
            if method == "PATCH":
                return await self.patch(request, target)
            if method == "DELETE":
                return await self.delete(request, target)
        elif target.subresource == "status":
            if method == "GET":
                return await self.get(request, target)
            if method in ("PUT", "PATCH"):
                return await (self.update if method == "PUT" else self.patch)(request, target)
        elif target.subresource == "scale":
            if method == "GET":
                return _json(_scale(await self._get(target)))
            if method in ("PUT", "PATCH"):
                return await self.scale(request, target)
        elif target.subresource == "binding" and method == "POST":
            return await self.bind(request, target)
        elif target.subresource == "log" and method == "GET":
            async with self._stream():
                return await podlogs.serve(request, await self._get(target), self.pod_log_dir)
        raise errors.method_not_allowed()

    # ------------------------------------------------------------------------------ reads

    async def _get(self, target: Target) -> Obj:
        assert target.name is not None
        return await self.storage.get(target.rt, target.namespace, target.name)

    def _table(self, request: web.Request) -> str | None:
        """The ``includeObject`` of a request for a Table, None when it wants objects."""
        if "as=Table" not in request.headers.get("Accept", ""):
            return None
        return request.query.get("includeObject") or "Metadata"

    async def get(self, request: web.Request, target: Target) -> web.Response:
        obj = await self._get(target)
        include = self._table(request)
        if include is not None:
            rv = obj["metadata"]["resourceVersion"]
            return _json(table.to_table(target.rt, [obj], include, rv))
        return _json(obj)

    async def list_or_watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        q = request.query
        rt = target.rt
        match = predicate(rt, q.get("labelSelector"), q.get("fieldSelector"))
        rv = parse_rv(q.get("resourceVersion"))
        include = self._table(request)
        if watch.parse_bool(q.get("watch")):

            def one(kind: str, obj: Obj) -> Obj:
                if include is None or kind == "BOOKMARK":
                    return obj
                return table.to_table(rt, [obj], include, obj["metadata"]["resourceVersion"])

            async with self._stream():
                return await watch.serve_watch(
                    request,
                    self.storage,
                    rt,
                    target.namespace,
                    match=match,
                    resource_version=rv,
                    bookmarks=watch.parse_bool(q.get("allowWatchBookmarks")),
                    timeout=watch.timeout_seconds(q.get("timeoutSeconds")),
                    bookmark_interval=self.bookmark_interval,
                    render=one,
                )
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise errors.bad_request(f"invalid limit {q.get('limit')!r}") from None
        page = await self.storage.list(
            rt,
            target.namespace,
            limit=max(limit, 0),
            continue_token=q.get("continue") or None,
            match=match,
        )
        meta: dict[str, Any] = {"resourceVersion": str(page.revision)}
        if page.continue_token:
            meta["continue"] = page.continue_token
        if include is not None:
            return _json(
                table.to_table(
                    rt,
                    page.items,
                    include,
                    str(page.revision),
                    continue_token=page.continue_token or "",
                )
            )
        return _json(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": page.items,
            }
        )

    # ------------------------------------------------------------------------------ writes

    async def _body(self, request: web.Request) -> Any:
        """A JSON (or YAML) body, or protobuf for the kinds kubectl's typed create commands send
        (:mod:`ciliary.k8s.protobuf`); other protobuf is 415, as a server without that codec
        answers."""
        raw = await request.read()
        if not raw:
            return None
        content_type = request.headers.get("Content-Type", "application/json")
        media = content_type.split(";")[0].strip() or "application/json"
        try:
            if media in ("application/yaml", "application/apply-patch+yaml"):
                return yaml.safe_load(raw.decode())
            if media in ("application/json", "*/*"):
                return json.loads(raw)
            if media == protobuf.MEDIA_TYPE:
                return protobuf.decode(raw)
        except protobuf.UnsupportedProtobufError as err:
            raise errors.StatusError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in a protobuf form not served here: {err}",
            ) from None
        except (ValueError, yaml.YAMLError) as err:
            raise errors.bad_request(
                f"the body of the request could not be decoded: {err}"
            ) from None
        raise errors.StatusError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include:"
            f' application/json, application/yaml (got "{media}")',
        )

    async def _namespace_exists(self, rt: ResourceType, obj: Obj) -> None:
        """A namespaced object is created only in a namespace that exists and is not being
        deleted (kube-apiserver's NamespaceLifecycle admission)."""
        namespace = obj["metadata"].get("namespace")
        if rt.namespaced and namespace:
            kv = await self.storage.get_raw(NAMESPACES, None, namespace)
            if kv is None:
                raise errors.not_found(NAMESPACES, namespace)
            doc = json.loads(kv.value)
            if doc.get("metadata", {}).get("deletionTimestamp"):
                raise errors.StatusError(
                    403,
                    "Forbidden",
                    f'{errors.qualified(rt)} "{obj["metadata"]["name"]}" is forbidden: unable to'
                    f" create new content in namespace {namespace} because it is being"
                    " terminated",
                )

    async def create(self, request: web.Request, target: Target) -> web.Response:
        rt = target.rt
        body = await self._body(request)
        return await self._create(request, rt, body, target.namespace)

    async def _create(
        self, request: web.Request, rt: ResourceType, body: Obj, namespace: str | None
    ) -> web.Response:
        """A new object from ``body`` (a POST, or an apply of an object that is not there)."""
        obj = strategy.prepare_create(rt, body, namespace)
        await self._namespace_exists(rt, obj)
        if rt is SERVICES:
            return _json(await self._create_service(obj, dry_run=_dry_run(request)), 201)
        if _dry_run(request):
            return _json(obj, 201)
        return _json(await self.storage.create(rt, obj), 201)

    async def _load_claims(self) -> None:
        """The allocator's view of what is claimed, read from etcd before its first use."""
        async with self._claims_loaded:
            if not self.services.loaded:
                keys = await self.storage.keys(IP_PREFIX) + await self.storage.keys(PORT_PREFIX)
                self.services.load(keys)

    async def _create_service(self, obj: Obj, *, dry_run: bool) -> Obj:
        """A Service with what it is allocated, written with its claims in one transaction; a
        choice etcd says is taken is made again, a taken address the client asked for is 422."""
        await self._load_claims()
        for _ in range(SERVICE_WRITE_ATTEMPTS):
            with self.services.session() as session:
                svc = services.admit(self.services, session, None, obj)
                if dry_run:
                    return svc
                try:
                    return await self.storage.create(SERVICES, svc)
                except ClaimTakenError as err:
                    self.services.taken(err.key)
                    if err.key not in session.picked:
                        raise services.taken_error(svc, err.key) from None
        raise errors.conflict(SERVICES, obj["metadata"]["name"], "too many concurrent allocations")

    async def update(self, request: web.Request, target: Target) -> web.Response:
        body = strategy.check_type(target.rt, await self._body(request))
        precondition = parse_rv(body["metadata"].get("resourceVersion"))
        return await self._update(
            request, target, lambda _current: json.loads(json.dumps(body)), precondition
        )

    async def _update(
        self,
        request: web.Request,
        target: Target,
        new: Callable[[Obj], Obj],
        precondition: int | None,
    ) -> web.Response:
        """Read-modify-write of the object (of its status for the status subresource): ``new``
        makes the wanted object from the current one, the update strategy checks it."""
        rt = target.rt
        assert target.name is not None
        status_only = target.subresource == "status"
        if rt is SERVICES:
            await self._load_claims()
        for _ in range(SERVICE_WRITE_ATTEMPTS):
            with self.services.session() as session:
                attempted: list[Obj] = []

                def change(
                    current: Obj, session: Session = session, attempted: list[Obj] = attempted
                ) -> Outcome:
                    if status_only:
                        return strategy.prepare_status_update(rt, current, new(current))
                    out = strategy.prepare_update(rt, current, new(current))
                    if rt is SERVICES and out != DELETE:
                        assert not isinstance(out, str)
                        out = services.admit(self.services, session, current, out)
                        attempted.append(out)
                    return out

                try:
                    obj, _ = await self.storage.update(
                        rt,
                        target.namespace,
                        target.name,
                        change,
                        precondition_rv=precondition,
                        dry_run=_dry_run(request),
                    )
                except ClaimTakenError as err:
                    self.services.taken(err.key)
                    if err.key in session.picked:
                        continue
                    raise services.taken_error(attempted[-1], err.key) from None
                return _json(obj)
        raise errors.conflict(rt, target.name, "too many concurrent allocations")

    async def patch(self, request: web.Request, target: Target) -> web.Response:
        rt = target.rt
        assert target.name is not None
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in patching.PATCH_TYPES:
            raise errors.unsupported_media_type(content_type)
        patch = patching.parse_body(content_type, await request.read())
        if content_type == patching.APPLY and target.subresource != "status":
            existing = await self.storage.get_raw(rt, target.namespace, target.name)
            if existing is None:
                if not isinstance(patch, dict):
                    raise errors.bad_request("apply configuration must be an object")
                patch.setdefault("metadata", {})["name"] = target.name
                return await self._create(request, rt, patch, target.namespace)
        precondition = None
        if isinstance(patch, dict) and isinstance(patch.get("metadata"), dict):
            precondition = parse_rv(patch["metadata"].get("resourceVersion"))
        return await self._update(
            request,
            target,
            lambda current: patching.apply_patch(rt, content_type, current, patch),
            precondition,
        )

    async def scale(self, request: web.Request, target: Target) -> web.Response:
        rt = target.rt
        assert target.name is not None
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = patching.parse_body(
            content_type if request.method == "PATCH" else "application/json", raw
        )

        def change(current: Obj) -> Outcome:
            scale = _scale(current)
            if request.method == "PATCH":
                ct = patching.MERGE if content_type == patching.STRATEGIC else content_type
                scale = patching.apply_patch(rt, ct, scale, body)
            else:
                scale = body
            replicas = (scale.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise errors.invalid(
                    rt, target.name or "", [errors.Cause("spec.replicas", "Invalid value")]
                )
            new = json.loads(json.dumps(current))
            new.setdefault("spec", {})["replicas"] = replicas
            return strategy.prepare_update(rt, current, new)

        obj, _ = await self.storage.update(
            rt, target.namespace, target.name, change, dry_run=_dry_run(request)
        )
        return _json(_scale(obj))

    async def bind(self, request: web.Request, target: Target) -> web.Response:
        """``POST pods/<name>/binding`` (:mod:`ciliary.apiserver.binding`)."""
        assert target.name is not None
        wanted = binding.parse(await self._body(request), target.name)
        await self.storage.update(
            target.rt,
            target.namespace,
            target.name,
            lambda current: binding.bind(target.rt, current, wanted),
            precondition_rv=wanted.resource_version,
            dry_run=_dry_run(request),
        )
        return _json(binding.SUCCESS, 201)

    async def _delete_one(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        precondition: int | None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        def change(current: Obj) -> Outcome:
            if current["metadata"].get("finalizers"):
                return strategy.mark_deleting(current)
            return DELETE

        obj, deleted = await self.storage.update(
            rt, namespace, name, change, precondition_rv=precondition, dry_run=dry_run
        )
        if deleted and rt is NAMESPACES and not dry_run:
            await self._delete_namespace_content(name)
        return obj

    async def _delete_namespace_content(self, namespace: str) -> None:
        """kube's namespace controller, done at once: every object in it is deleted (objects
        with finalizers are marked and stay until their finalizers are removed)."""
        for rt in RESOURCES:
            if not rt.namespaced:
                continue
            page = await self.storage.list(rt, namespace)
            for obj in page.items:
                try:
                    await self._delete_one(rt, namespace, obj["metadata"]["name"], None)
                except errors.StatusError as err:
                    if err.code != 404:
                        raise

    async def delete(self, request: web.Request, target: Target) -> web.Response:
        assert target.name is not None
        body = await self._body(request) or {}
        if not isinstance(body, dict):
            raise errors.bad_request("DeleteOptions must be an object")
        preconditions = body.get("preconditions") or {}
        precondition = parse_rv(preconditions.get("resourceVersion"))
        uid = preconditions.get("uid")
        if uid:
            current = await self._get(target)
            if current["metadata"].get("uid") != uid:
                raise errors.conflict(
                    target.rt,
                    target.name,
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta:"
                    f" {current['metadata'].get('uid')}",
                )
        obj = await self._delete_one(
            target.rt, target.namespace, target.name, precondition, dry_run=_dry_run(request)
        )
        return _json(obj)

    async def delete_collection(self, request: web.Request, target: Target) -> web.Response:
        rt = target.rt
        q = request.query
        match = predicate(rt, q.get("labelSelector"), q.get("fieldSelector"))
        dry_run = _dry_run(request)
        page = await self.storage.list(rt, target.namespace, match=match)
        deleted = []
        for obj in page.items:
            meta = obj["metadata"]
            try:
                deleted.append(
                    await self._delete_one(
                        rt, meta.get("namespace"), meta["name"], None, dry_run=dry_run
                    )
                )
            except errors.StatusError as err:
                if err.code != 404:
                    raise
        return _json(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(await self.storage.revision())},
                "items": deleted,
            }
        )


def _scale(obj: Obj) -> Obj:
    meta = obj["metadata"]
    status = obj.get("status") or {}
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
        },
    }
