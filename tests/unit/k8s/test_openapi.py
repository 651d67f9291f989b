"""OpenAPI v3 for kubectl apply's validation: shapes, and the machine's kubectl accepting them."""

from __future__ import annotations

import json
from pathlib import Path

from ciliary.k8s import discovery, openapi
from ciliary.k8s.resources import RESOURCES
from tests.unit.k8s.kubectlserver import Route, kubectl, serve

MANIFEST = """\
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  containers: [{name: c, image: x}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d1, namespace: default}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec: {containers: [{name: c, image: x}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: np1, namespace: default}
spec: {endpointSelector: {}}
"""


def test_index_and_documents() -> None:
    idx = openapi.index()["paths"]
    assert set(idx) == {openapi.gv_path(r.group, r.version) for r in RESOURCES}
    url = idx["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    answer = openapi.handle("/openapi/v3/api/v1", url.partition("?")[2])
    assert answer is not None and answer[0] == "application/json"
    doc = json.loads(answer[1])
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert {"name": "fieldValidation", "in": "query"}.items() <= patch["parameters"][2].items()
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    assert "/api/v1/nodes/{name}" in doc["paths"]  # cluster-scoped: no namespace segment
    assert openapi.group_version_document("cilium.io", "v2") is not None
    assert openapi.group_version_document("nope", "v1") is None
    assert openapi.handle("/openapi/v2") is None
    assert openapi.handle("/openapi/v3/apis/nope/v1") is None


def _route(with_openapi: bool, seen: list[str]) -> Route:
    def route(path: str, query: str, accept: str) -> tuple[int, str, bytes] | None:
        seen.append(path)
        if path == "/version":
            return 200, "application/json", json.dumps(discovery.version_info()).encode()
        answer = discovery.handle(path, accept)
        if answer is None and with_openapi:
            answer = openapi.handle(path, query)
        return None if answer is None else (200, answer[0], answer[1])

    return route


def test_kubectl_apply_validates_with_our_openapi(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    seen: list[str] = []
    with serve(_route(True, seen)) as url:
        out = kubectl(url, "apply", "--dry-run=client", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    assert "pod/p1 created (dry run)" in out.stdout
    assert "deployment.apps/d1 created (dry run)" in out.stdout
    assert "ciliumnetworkpolicy.cilium.io/np1 created (dry run)" in out.stdout
    assert "/openapi/v3/api/v1" in seen and "/openapi/v3/apis/cilium.io/v2" in seen
    assert "/openapi/v2" not in seen


def test_without_openapi_kubectl_refuses(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    with serve(_route(False, [])) as url:
        out = kubectl(url, "apply", "--dry-run=client", "-f", str(manifest))
    assert out.returncode != 0
    assert "failed to download openapi" in out.stderr
