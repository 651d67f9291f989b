"""One thin client of a Kubernetes API server, over kubernetes_asyncio's transport.

kubernetes_asyncio gives the parts that are hard to get right — kubeconfig and in-cluster
loading (certificates, tokens, exec plugins), TLS, the aiohttp session — but its typed models
cost a deserialization per object and drop what they do not know. Controllers and informers
work on the objects as the API sends them (JSON dicts, read through :mod:`ciliary.k8s` when a
typed view helps), so this module calls the API through the library's ``call_api`` with
``_preload_content=False`` and decodes JSON itself. Paths come from
:class:`ciliary.k8s.resources.ResourceType`, the one registry of kinds.

Errors: :class:`KubeError` carries the Status the server answered (code, reason, message, as
clients decide by them); :class:`KubeUnavailableError` is a transport failure (connection
refused or reset, timeout), which callers retry.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from ciliary.k8s.resources import ResourceType

Obj = dict[str, Any]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

__all__ = ["JSON", "MERGE_PATCH", "KubeClient", "KubeError", "KubeUnavailableError", "Obj"]


class KubeError(Exception):
    """The API server refused a request; ``code`` and ``reason`` are its Status'."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class KubeUnavailableError(Exception):
    """The API server could not be reached or did not answer in time."""


def object_path(rt: ResourceType, namespace: str | None, name: str, sub: str = "") -> str:
    path = f"{rt.path(namespace if rt.namespaced else None)}/{name}"
    return f"{path}/{sub}" if sub else path


class KubeClient:
    """Requests as JSON dicts; one aiohttp session (connection pool) for the whole process."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: Path | None = None) -> KubeClient:
        """From a kubeconfig file, or (None) from the pod's service account as in-cluster
        clients do (``KUBERNETES_SERVICE_HOST`` and the mounted token)."""
        cfg = client.Configuration()
        if kubeconfig is not None:
            await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            raise KubeUnavailableError("no kubeconfig given and not running in a pod")
        return cls(client.ApiClient(configuration=cfg))

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        *,
        body: Any,
        content_type: str,
        timeout: float | aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": JSON, "Content-Type": content_type}
        try:
            resp: aiohttp.ClientResponse = await self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise KubeUnavailableError(f"{method} {path}: {err or type(err).__name__}") from err
        return resp

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float = 30.0,
    ) -> Obj:
        """One request; the decoded body, or :class:`KubeError` with the server's Status."""
        resp = await self._call(
            method, path, query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            async with resp:
                raw = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise KubeUnavailableError(f"{method} {path}: {err or type(err).__name__}") from err
        doc = _decode(raw)
        if resp.status >= 300:
            raise KubeError(
                resp.status, str(doc.get("reason", "")), str(doc.get("message", raw[:200]))
            )
        return doc

    async def watch(
        self, path: str, query: Mapping[str, str], timeout_seconds: int
    ) -> AsyncIterator[Obj]:
        """The events of one watch request (``watch=1`` added), until the server ends it."""
        q = {**query, "watch": "1", "timeoutSeconds": str(timeout_seconds)}
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_seconds + 30)
        resp = await self._call("GET", path, q, body=None, content_type=JSON, timeout=timeout)
        async with resp:
            if resp.status != 200:
                doc = _decode(await resp.read())
                raise KubeError(resp.status, str(doc.get("reason", "")), str(doc.get("message")))
            try:
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                raise KubeUnavailableError(f"watch {path}: {err or type(err).__name__}") from err

    # Conveniences over the registry's paths.

    async def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        return await self.request("GET", object_path(rt, namespace, name))

    async def create(self, rt: ResourceType, namespace: str | None, obj: Obj) -> Obj:
        return await self.request("POST", rt.path(namespace if rt.namespaced else None), body=obj)

    async def replace(self, rt: ResourceType, obj: Obj, sub: str = "") -> Obj:
        meta = obj["metadata"]
        return await self.request(
            "PUT", object_path(rt, meta.get("namespace"), meta["name"], sub), body=obj
        )

    async def merge_patch(
        self, rt: ResourceType, namespace: str | None, name: str, patch: Obj, sub: str = ""
    ) -> Obj:
        return await self.request(
            "PATCH", object_path(rt, namespace, name, sub), body=patch, content_type=MERGE_PATCH
        )

    async def delete(
        self, rt: ResourceType, namespace: str | None, name: str, *, uid: str | None = None
    ) -> Obj:
        """Delete with background propagation; ``uid`` as precondition (never another object
        that took the name since it was read)."""
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        body["propagationPolicy"] = "Background"
        if uid:
            body["preconditions"] = {"uid": uid}
        return await self.request("DELETE", object_path(rt, namespace, name), body=body)


def _decode(raw: bytes) -> Obj:
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"message": raw[:200].decode(errors="replace")}
    return doc if isinstance(doc, dict) else {"message": str(doc)[:200]}
