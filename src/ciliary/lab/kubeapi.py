"""The lab as a client of its own API server: ``kubectl apply`` of a file's manifests, and the few
direct writes the cluster's own components would make (kubelet's node and pod status).

Applying runs the machine's ``kubectl apply -f -`` with the lab's kubeconfig rather than
re-creating client-side apply with kubernetes_asyncio: "exactly as ``kubectl apply -f FILE``
would" then holds by construction — the ``kubectl.kubernetes.io/last-applied-configuration``
annotation, create-or-three-way-patch (strategic merge for built-in kinds, JSON merge for CRDs),
OpenAPI validation, and the messages users know (``The CiliumNetworkPolicy "bad" is invalid:
spec.ingress[0]…``) all come from kubectl itself; a copy of its apply logic would drift from it.
kubectl's discovery cache goes under the lab's directory (``--cache-dir``), so ``lab down``
removes it with the lab.

Direct writes (creating the implicit namespaces, Node objects, pods the lab makes itself, pod
status) go over TLS with the admin certificate through ``urllib``: the lab's manager is
synchronous and needs a handful of requests, not a client library. Every failure is a
:class:`KubeAPIError` carrying the Status message kube-apiserver's clients would print.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import yaml

from ciliary.k8s import resources
from ciliary.lab.controlplane import ControlPlane

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
APPLY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 30.0
LAB_PROCESS_IMAGE = "ciliary.io/lab-process"
"""The ``image`` the lab gives a container of its own file (or of a pod it makes itself, the
cluster DNS pod) that names none: informational, as every image is here (the kubelet role runs
the container's ``command``)."""
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io"

Obj = dict[str, Any]


class KubeAPIError(RuntimeError):
    """A request the API server refused (or could not answer); ``str()`` is one line per
    problem, as kubectl prints it, and ``problems`` holds those lines."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.problems = [ln for ln in message.splitlines() if ln.strip()] or [message]


def object_path(doc: Obj, default_namespace: str = "default") -> str:
    """The URL path of the object ``doc`` describes (kind and apiVersion from the registry)."""
    rt = resources.by_kind(str(doc.get("apiVersion")), str(doc.get("kind")))
    meta = doc.get("metadata") or {}
    namespace = (meta.get("namespace") or default_namespace) if rt.namespaced else None
    return f"{rt.path(namespace)}/{meta['name']}"


class KubeAPI:
    """Requests to one lab's API server as its admin."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self._ssl: ssl.SSLContext = cp.ssl_context()

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Obj:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.cp.url}{path}", data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=REQUEST_TIMEOUT) as resp:
                answer: Obj = json.loads(resp.read() or b"{}")
                return answer
        except urllib.error.HTTPError as err:
            raw = err.read()
            message = f"{method} {path}: {err.code}"
            with contextlib.suppress(ValueError):
                message = str(json.loads(raw).get("message") or message)
            raise KubeAPIError(message, err.code) from None
        except (OSError, urllib.error.URLError) as err:
            raise KubeAPIError(f"API server {self.cp.url} unreachable: {err}") from None

    def table(self, path: str) -> Obj:
        """The server-side Table of a list (what ``kubectl get`` prints), as kubectl asks."""
        return self.request("GET", path, accept=TABLE_ACCEPT)

    def get(self, path: str) -> Obj | None:
        try:
            return self.request("GET", path)
        except KubeAPIError as err:
            if err.status == 404:
                return None
            raise

    def create(self, doc: Obj, *, exist_ok: bool = False) -> Obj | None:
        """POST ``doc`` to its collection; None when it exists and ``exist_ok``."""
        rt = resources.by_kind(str(doc["apiVersion"]), str(doc["kind"]))
        namespace = (doc.get("metadata") or {}).get("namespace") or "default"
        try:
            return self.request("POST", rt.path(namespace if rt.namespaced else None), doc)
        except KubeAPIError as err:
            if exist_ok and err.status == 409:
                return None
            raise

    def patch_status(self, path: str, status: Obj) -> Obj:
        """A JSON merge patch of the object's ``status`` subresource (kubelet's writes)."""
        return self.request(
            "PATCH",
            f"{path}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except KubeAPIError as err:
            if err.status != 404:
                raise


def apply(cp: ControlPlane, docs: Sequence[Obj]) -> str:
    """``kubectl apply -f -`` of ``docs`` (in order) with the lab's kubeconfig; kubectl's output.

    Raises :class:`KubeAPIError` with kubectl's error lines when it fails (some documents before
    the failing one may be applied: the caller rolls back)."""
    if not docs:
        return ""
    argv = [
        KUBECTL,
        "--kubeconfig", str(cp.kubeconfig),
        "--cache-dir", str(cp.dir / "kubectl-cache"),
        "apply", "-f", "-",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            input=yaml.safe_dump_all(list(docs), sort_keys=False),
            capture_output=True,
            text=True,
            timeout=APPLY_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise KubeAPIError(f"kubectl apply: {KUBECTL} is not installed") from None
    except subprocess.TimeoutExpired:
        raise KubeAPIError(f"kubectl apply did not finish within {APPLY_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise KubeAPIError("\n".join(lines) or f"kubectl apply exited {done.returncode}")
    return done.stdout


class Snapshot:
    """The objects a ``kubectl apply`` of ``docs`` may change, as they were before it, so that a
    failed apply to a running lab gives back exactly what it changed: created objects are deleted,
    changed ones are put back (``lab apply`` is all or nothing, like the rest of the lab)."""

    def __init__(self, api: KubeAPI, docs: Sequence[Obj]) -> None:
        self.api = api
        self.before: list[tuple[str, Obj | None]] = []
        for doc in docs:
            path = object_path(doc)
            self.before.append((path, api.get(path)))

    def restore(self) -> None:
        for path, old in reversed(self.before):
            if old is None:
                self.api.delete(path)
                continue
            body = dict(old)
            body["metadata"] = {
                k: v for k, v in old["metadata"].items() if k != "resourceVersion"
            }  # unconditional: put back what was there
            self.api.request("PUT", path, body)


def manifests(raw: Sequence[Obj], node_of: dict[str, str]) -> list[Obj]:
    """The documents ``lab up``/``lab apply`` hand to kubectl: every one but the Lab, Namespaces
    first (the lab accepts a Pod before its Namespace in a file; kubectl, which applies in file
    order, would not), each Pod with the ``spec.nodeName`` the lab scheduled it to
    (``node_of``: ``namespace/name`` → node), as a pod that names its node in its manifest."""
    docs: list[Obj] = []
    for original in raw:
        if original.get("kind") == "Lab":
            continue
        doc: Obj = json.loads(json.dumps(original))  # ours to change
        if doc.get("kind") == "Pod":
            meta = doc.setdefault("metadata", {})
            key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
            if key in node_of:
                doc.setdefault("spec", {})["nodeName"] = node_of[key]
        with_placeholder_images(doc)
        docs.append(doc)
    return sorted(docs, key=lambda d: d.get("kind") != "Namespace")


def with_placeholder_images(doc: Obj) -> Obj:
    """``doc`` (a Pod or a workload's pod template) with :data:`LAB_PROCESS_IMAGE` as the
    ``image`` of each container that has none: the API requires an image, as Kubernetes does,
    and lab files written before it did run commands without one."""
    found = resources.pod_spec_of(doc)
    if found is not None:
        for field in ("containers", "initContainers"):
            for c in found[1].get(field) or []:
                if isinstance(c, dict) and not c.get("image"):
                    c["image"] = LAB_PROCESS_IMAGE
    return doc
