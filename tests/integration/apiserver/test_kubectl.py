"""The machine's own kubectl (/usr/bin/kubectl) against etcd + ciliary-apiserver over TLS with
the lab's kubeconfig: apply of a multi-document manifest, get (-o wide, -o yaml, -l,
--field-selector, short names), get -w printing later changes, label, delete with and without a
finalizer, and an invalid CiliumNetworkPolicy refused with its field path and not stored."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ciliary.k8s.resources import RESOURCES
from ciliary.lab.controlplane import ControlPlane
from tests.kubectl import KUBECTL, kubectl_run

pytestmark = pytest.mark.timeout(240)


MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox, ports: [{containerPort: 80, name: http}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  nodeName: n2
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: c, image: busybox, ports: [{containerPort: 8080}]}]
"""

BAD_CNP = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{toPorts: [{ports: [{port: "99999"}]}]}]
"""


def kubectl(
    cp: ControlPlane, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return kubectl_run(cp.kubeconfig, *args, check=check, stdin=stdin)


def names(cp: ControlPlane, *args: str) -> list[str]:
    out = kubectl(cp, "get", *args, "-o", "json").stdout
    return sorted(o["metadata"]["name"] for o in json.loads(out)["items"])


@pytest.fixture
def shop(control_plane: ControlPlane, tmp_path: Path) -> ControlPlane:
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(MANIFEST)
    out = kubectl(control_plane, "apply", "-f", str(manifest)).stdout
    assert "namespace/shop created" in out and "deployment.apps/api created" in out
    return control_plane


def test_apply_and_get(shop: ControlPlane, tmp_path: Path) -> None:
    assert names(shop, "pods", "-n", "shop") == ["db", "web"]
    assert names(shop, "po", "-A", "-l", "app=web") == ["web"]
    assert names(shop, "pods", "-A", "-l", "app in (web,db),app!=db") == ["web"]
    assert names(shop, "pods", "-A", "--field-selector", "spec.nodeName=n2") == ["db"]
    assert names(shop, "cnp", "-n", "shop") == ["db-from-web"]
    assert names(shop, "netpol", "-n", "shop") == ["deny-all"]
    wide = kubectl(shop, "get", "pods", "-n", "shop", "-o", "wide").stdout
    assert "NODE" in wide.splitlines()[0] and "n2" in wide
    pod: dict[str, Any] = yaml.safe_load(
        kubectl(shop, "get", "pod", "web", "-n", "shop", "-o", "yaml").stdout
    )
    assert pod["metadata"]["uid"] and pod["metadata"]["creationTimestamp"]
    assert int(pod["metadata"]["resourceVersion"]) > 0
    # a second apply of a changed manifest is a strategic merge patch keeping the ports
    changed = tmp_path / "changed.yaml"
    changed.write_text(MANIFEST.replace("image: busybox, ports", "image: nginx, ports"))
    out = kubectl(shop, "apply", "-f", str(changed)).stdout
    assert "pod/web configured" in out and "pod/db unchanged" in out
    web = json.loads(kubectl(shop, "get", "pod", "web", "-n", "shop", "-o", "json").stdout)
    assert web["spec"]["containers"][0]["image"] == "nginx"
    assert web["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "name": "http"}]
    kubectl(shop, "label", "pod", "db", "-n", "shop", "tier=data")
    assert names(shop, "pods", "-n", "shop", "-l", "tier=data") == ["db"]
    before = json.loads(kubectl(shop, "get", "deploy", "api", "-n", "shop", "-o", "json").stdout)
    assert before["metadata"]["generation"] == 2  # the second apply changed its image too
    kubectl(shop, "scale", "deployment", "api", "-n", "shop", "--replicas=3")
    deploy = json.loads(kubectl(shop, "get", "deploy", "api", "-n", "shop", "-o", "json").stdout)
    assert deploy["spec"]["replicas"] == 3 and deploy["metadata"]["generation"] == 3


def test_invalid_policy_names_the_field_and_is_not_stored(
    shop: ControlPlane, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CNP)
    result = kubectl(shop, "apply", "-f", str(bad), check=False)
    assert result.returncode == 1
    assert 'CiliumNetworkPolicy "bad" is invalid' in result.stderr
    assert "spec.ingress[0].toPorts[0].ports[0].port" in result.stderr
    assert names(shop, "cnp", "-n", "shop") == ["db-from-web"]


def test_a_container_without_an_image_is_refused_as_kubernetes_does(shop: ControlPlane) -> None:
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: noimage, namespace: shop}\n" + (
        "spec: {containers: [{name: c, command: [sleep, infinity]}]}\n"
    )
    result = kubectl(shop, "create", "-f", "-", stdin=pod, check=False)
    assert result.returncode == 1
    assert 'Pod "noimage" is invalid: spec.containers[0].image: Required value' in result.stderr
    deploy = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: noimage, namespace: shop}\n"
        "spec:\n  selector: {matchLabels: {app: x}}\n  template:\n"
        "    metadata: {labels: {app: x}}\n    spec: {containers: [{name: c}]}\n"
    )
    result = kubectl(shop, "apply", "-f", "-", stdin=deploy, check=False)
    assert result.returncode == 1
    assert "spec.template.spec.containers[0].image: Required value" in result.stderr
    assert "noimage" not in names(shop, "pods", "-n", "shop") + names(shop, "deploy", "-n", "shop")


def test_get_watch_prints_later_changes(shop: ControlPlane) -> None:
    proc = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(shop.kubeconfig), "get", "pods", "-n", "shop", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while len(lines) < 3 and time.monotonic() < deadline:  # header, db, web: listed
            time.sleep(0.05)
        assert [line.split()[0] for line in lines[:3]] == ["NAME", "db", "web"], lines
        # the watch continues from the list's resourceVersion: nothing between is missed
        late = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "late", "namespace": "shop"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }
        )
        kubectl(shop, "create", "-f", "-", stdin=late)
        while not any(line.split()[0] == "late" for line in lines[3:]):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        assert lines[0].split()[:2] == ["NAME", "READY"]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        reader.join(timeout=10)


def test_delete_with_and_without_finalizer(shop: ControlPlane) -> None:
    kubectl(shop, "delete", "pod", "web", "-n", "shop")
    assert names(shop, "pods", "-n", "shop") == ["db"]
    kubectl(
        shop,
        "patch",
        "pod",
        "db",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":["example.com/keep"]}}',
    )
    kubectl(shop, "delete", "pod", "db", "-n", "shop", "--wait=false")
    held = json.loads(kubectl(shop, "get", "pod", "db", "-n", "shop", "-o", "json").stdout)
    assert held["metadata"]["deletionTimestamp"]
    kubectl(
        shop,
        "patch",
        "pod",
        "db",
        "-n",
        "shop",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/metadata/finalizers"}]',
    )
    gone = kubectl(shop, "get", "pod", "db", "-n", "shop", check=False)
    assert gone.returncode == 1 and 'pods "db" not found' in gone.stderr
    kubectl(shop, "delete", "namespace", "shop")
    assert names(shop, "cnp", "-A") == []
    missing = kubectl(shop, "get", "pod", "nope", "-n", "default", check=False)
    assert 'Error from server (NotFound): pods "nope" not found' in missing.stderr


def test_api_resources_lists_our_kinds(control_plane: ControlPlane) -> None:
    """`kubectl api-resources` against the real server lists every served kind with its short
    names (discovery as kubectl ≥1.30 asks for it first: aggregated)."""
    out = kubectl(control_plane, "api-resources", "--no-headers").stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    plurals = {r[0] for r in rows}
    for rt in RESOURCES:
        assert rt.plural in plurals, f"{rt.plural} missing from kubectl api-resources"
    shorts = {
        "ciliumnetworkpolicies": "cnp",
        "ciliumclusterwidenetworkpolicies": "ccnp",
        "ciliumendpoints": "cep",
        "ciliumnodes": "cn",
        "ciliumidentities": "ciliumid",
    }
    for plural, short in shorts.items():
        line = next(r for r in rows if r[0] == plural)
        assert short in line[1].split(","), (plural, line)
    assert names(control_plane, "ciliumidentities") == []  # the short-named kinds answer `get`
