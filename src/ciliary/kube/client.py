"""The one Kubernetes REST client of ciliary: JSON objects over kubernetes_asyncio's transport.

Every process that talks to an API server uses it: the agent (identities, and soon pods,
services, policies), ``ciliary-controller-manager`` and ``ciliary-operator``. It lives in
``ciliary.kube``, a layer above ``k8s`` and below both of them, so that there is one client, one
error type and one informer (``informer``) however many processes list and watch.

Why not kubernetes_asyncio's typed APIs: half the kinds read are custom (Cilium's, Calico's),
and consumers want the objects as the server sent them (a typed model round trip costs a
deserialization per object, drops unknown fields and renames the rest; a pod template copied
by a controller must keep every field). The resource registry (``ciliary.k8s.resources``)
already knows every kind's URL, so one client that takes a ``ResourceType`` serves them all.
kubernetes_asyncio still does what it is good at: kubeconfig and in-cluster configuration
(client certificates, bearer tokens and their refresh, CA data) and the aiohttp session.

Its ``Watch`` helper is not used either: on a 410 it re-watches from the same (expired)
resourceVersion. ``watch`` here yields raw events and raises ``ApiError(410)`` so that the
informer relists.

Errors: every failure is an ``ApiError``: ``status`` is the HTTP status (or the Status object's
``code`` for a watch ERROR event), 0 when the server could not be reached or the connection broke
(``unavailable``). Callers retry those with back-off; 4xx other than 410/409/404 are permanent.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from ciliary.k8s.resources import ResourceType

KubeObject = dict[str, Any]

SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT_ENV = "KUBERNETES_SERVICE_PORT"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

_JSON = "application/json"
_MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A request the API server refused (``status`` ≥ 400) or could not be made (``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def unavailable(self) -> bool:
        return self.status == 0 or self.status >= 500

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def conflict(self) -> bool:
        return self.status == 409 and self.reason != "AlreadyExists"

    @classmethod
    def from_status(cls, status: Mapping[str, Any], http_status: int = 0) -> ApiError:
        """From a ``Status`` object (a refused request's body or a watch ERROR event)."""
        code = status.get("code")
        return cls(
            int(code) if isinstance(code, int) else http_status,
            str(status.get("reason") or ""),
            str(status.get("message") or ""),
        )


class ConfigError(Exception):
    """No usable client configuration (no kubeconfig, not in a pod)."""


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: KubeObject

    @property
    def resource_version(self) -> int:
        return resource_version(self.object)


def resource_version(obj: Mapping[str, Any]) -> int:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(rv))
    except (TypeError, ValueError):
        return 0


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` or ``name`` (cluster-scoped), client-go's MetaNamespaceKeyFunc: the
    key of informer stores and controllers' work queues."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def split_key(key: str) -> tuple[str | None, str]:
    """``object_key``'s inverse, client-go's SplitMetaNamespaceKey: (namespace or None, name)."""
    namespace, sep, name = key.partition("/")
    return (namespace, name) if sep else (None, namespace)


def object_path(
    rt: ResourceType, name: str, namespace: str | None = None, subresource: str | None = None
) -> str:
    """One object's URL path (the namespace is ignored for cluster-scoped kinds)."""
    path = f"{rt.path(namespace)}/{name}"
    return f"{path}/{subresource}" if subresource else path


async def load_configuration(
    kubeconfig: Path | None = None,
    *,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> kclient.Configuration:
    """The kubeconfig's configuration when given (``--kubeconfig``), else the in-cluster one:
    ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service account's token and CA, as
    kubernetes_asyncio's ``load_incluster_config`` reads them (the token re-read as it rotates).
    """
    cfg = kclient.Configuration()
    env = os.environ if environ is None else environ
    try:
        if kubeconfig is not None:
            await kconfig.load_kube_config(
                config_file=str(kubeconfig),
                context=context,
                client_configuration=cfg,
                persist_config=False,
            )
        else:
            kconfig.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=cfg,
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=dict(env),
            )
    except (ConfigException, OSError, ValueError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
        raise ConfigError(f"{where}: {err}") from err
    return cfg


class KubeClient:
    """JSON requests against one API server. Coroutine-safe (one aiohttp session)."""

    def __init__(self, api: kclient.ApiClient) -> None:
        self._api = api

    @classmethod
    async def connect(
        cls,
        kubeconfig: Path | None = None,
        *,
        context: str | None = None,
        environ: Mapping[str, str] | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    ) -> KubeClient:
        cfg = await load_configuration(
            kubeconfig, context=context, environ=environ, service_account_dir=service_account_dir
        )
        return cls(kclient.ApiClient(configuration=cfg))

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: aiohttp.ClientTimeout | float | None = None,
        content_type: str = _JSON,
    ) -> aiohttp.ClientResponse:
        try:
            resp: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": _JSON, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as err:
            raise ApiError(err.status or 0, str(err.reason or "")) from err
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ApiError(0, "Unavailable", str(err) or type(err).__name__) from err
        if resp.status >= 400:
            try:
                text = await resp.text()
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                resp.release()
                raise ApiError(resp.status, resp.reason or "", str(err)) from err
            resp.release()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and doc.get("kind") == "Status":
                raise ApiError.from_status(doc, resp.status)
            raise ApiError(resp.status, resp.reason or "", text[:200])
        return resp

    async def _json(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float = 30.0,
    ) -> KubeObject:
        resp = await self._call(method, path, query=query, body=body, timeout=timeout)
        return await _read_json(resp, method, path)

    async def list(
        self,
        rt: ResourceType,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
    ) -> KubeObject:
        """One page of a list (``metadata.continue`` names the next). Without resourceVersion
        the read is served from etcd with quorum (the latest state)."""
        query = _selectors(label_selector, field_selector)
        if limit:
            query["limit"] = str(limit)
        if continue_token:
            query["continue"] = continue_token
        if resource_version is not None:
            query["resourceVersion"] = resource_version
        return await self._json("GET", rt.path(namespace), query=query)

    @asynccontextmanager
    async def watch(
        self,
        rt: ResourceType,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """A watch from ``resource_version``: the events of the stream, ending when the server
        ends it (its timeout) or the connection breaks (``ApiError`` 0); an ERROR event raises
        ``ApiError`` with the Status's code (410: relist). The response is closed on exit."""
        query = _selectors(label_selector, field_selector)
        query |= {
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if bookmarks:
            query["allowWatchBookmarks"] = "true"
        # no total timeout; a silent server (frozen, partitioned) is noticed by the read timeout,
        # longer than the server's own timeout and its bookmark interval
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_seconds + 30)
        resp = await self._call("GET", rt.path(namespace), query=query, timeout=timeout)
        try:
            yield _events(resp)
        finally:
            resp.close()

    async def get(self, rt: ResourceType, name: str, namespace: str | None = None) -> KubeObject:
        return await self._json("GET", object_path(rt, name, namespace))

    async def create(
        self,
        rt: ResourceType,
        body: Mapping[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> KubeObject:
        """POST to the collection, or with ``subresource`` to that subresource of the object
        the body names (``pods/<name>/binding``, as client-go's ``Bind``)."""
        path = rt.path(namespace)
        if subresource:
            path = object_path(rt, str(body["metadata"]["name"]), namespace, subresource)
        return await self._json("POST", path, body=dict(body))

    async def replace(
        self, rt: ResourceType, body: Mapping[str, Any], *, subresource: str | None = None
    ) -> KubeObject:
        """PUT the whole object (its ``metadata.resourceVersion``, when set, is a precondition:
        409 Conflict if the object changed since)."""
        meta = body["metadata"]
        path = object_path(rt, str(meta["name"]), meta.get("namespace"), subresource)
        return await self._json("PUT", path, body=dict(body))

    async def patch(
        self,
        rt: ResourceType,
        name: str,
        patch: Mapping[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> KubeObject:
        """A JSON merge patch (RFC 7386), the one patch type custom resources take."""
        path = object_path(rt, name, namespace, subresource)
        resp = await self._call(
            "PATCH", path, body=dict(patch), timeout=30.0, content_type=_MERGE_PATCH
        )
        return await _read_json(resp, "PATCH", path)

    async def delete(
        self,
        rt: ResourceType,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> KubeObject:
        """Delete, only if the object still has ``uid`` / ``resource_version`` when given
        (409 Conflict otherwise)."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        pre = {
            k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v is not None
        }
        if pre:
            body["preconditions"] = pre
        return await self._json("DELETE", object_path(rt, name, namespace), body=body)


async def _read_json(resp: aiohttp.ClientResponse, method: str, path: str) -> KubeObject:
    try:
        doc = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
        raise ApiError(0, "Unavailable", f"reading the response: {err}") from err
    finally:
        resp.release()
    if not isinstance(doc, dict):
        raise ApiError(0, "BadResponse", f"{method} {path}: not a JSON object")
    return doc


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[WatchEvent]:
    while True:
        try:
            line = await resp.content.readline()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise ApiError(0, "Unavailable", f"watch stream broke: {err}") from err
        if not line:
            return
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as err:
            raise ApiError(0, "BadResponse", f"watch event is not JSON: {err}") from err
        kind = doc.get("type")
        obj = doc.get("object")
        if not isinstance(obj, dict) or not isinstance(kind, str):
            raise ApiError(0, "BadResponse", "watch event without type or object")
        if kind == "ERROR":
            raise ApiError.from_status(obj)
        yield WatchEvent(kind, obj)


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    query: dict[str, str] = {}
    if label_selector:
        query["labelSelector"] = label_selector
    if field_selector:
        query["fieldSelector"] = field_selector
    return query
