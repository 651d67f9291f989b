"""deploy/manifests against the lab's API server through kubectl, as a user installs them on a
cluster: ``kubectl apply --dry-run=server`` accepts every object and stores none, then a real
``kubectl apply`` stores them and ``kubectl get`` lists them (RBAC kinds and CRDs included)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ciliary.lab.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(180)

KUBECTL = "/usr/bin/kubectl"
MANIFESTS = Path(__file__).resolve().parents[3] / "deploy" / "manifests"


def _kubectl(cp: ControlPlane, *args: str) -> str:
    out = subprocess.run(
        [KUBECTL, "--kubeconfig", str(cp.kubeconfig), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _names(cp: ControlPlane, kinds: str) -> set[str]:
    listed = json.loads(_kubectl(cp, "get", kinds, "-A", "-o", "json"))
    return {f"{o['kind']}/{o['metadata']['name']}" for o in listed["items"]}


OURS = {
    "DaemonSet/ciliary",
    "Deployment/ciliary-operator",
    "Deployment/hubble-relay",
    "ServiceAccount/ciliary-agent",
    "ServiceAccount/ciliary-operator",
    "ServiceAccount/hubble-relay",
    "ClusterRole/ciliary-agent",
    "ClusterRole/ciliary-operator",
    "ClusterRoleBinding/ciliary-agent",
    "ClusterRoleBinding/ciliary-operator",
    "ConfigMap/ciliary-config",
    "Service/hubble-peer",
    "Service/hubble-relay",
    "CustomResourceDefinition/ciliumnetworkpolicies.cilium.io",
    "CustomResourceDefinition/ciliumclusterwidenetworkpolicies.cilium.io",
    "CustomResourceDefinition/ciliumendpoints.cilium.io",
    "CustomResourceDefinition/ciliumnodes.cilium.io",
    "CustomResourceDefinition/ciliumidentities.cilium.io",
}
KINDS = "ds,deploy,sa,clusterrole,clusterrolebinding,cm,svc,crd"


def test_dry_run_then_apply(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane
    _kubectl(cp, "create", "namespace", "kube-system")
    before = _names(cp, KINDS)

    out = _kubectl(cp, "apply", "--dry-run=server", "-f", str(MANIFESTS))
    assert out.count("(server dry run)") == len(OURS), out
    assert _names(cp, KINDS) == before  # nothing stored

    out = _kubectl(cp, "apply", "-f", str(MANIFESTS))
    assert out.count(" created") == len(OURS), out
    assert _names(cp, KINDS) == before | OURS

    table = _kubectl(cp, "get", "ds,deploy,sa,clusterrole", "-A")
    for row in (
        "daemonset.apps/ciliary",
        "deployment.apps/ciliary-operator",
        "deployment.apps/hubble-relay",
        "serviceaccount/ciliary-agent",
        "clusterrole.rbac.authorization.k8s.io/ciliary-agent",
        "clusterrole.rbac.authorization.k8s.io/ciliary-operator",
    ):
        assert row in table, table

    role = json.loads(_kubectl(cp, "get", "clusterrole", "ciliary-agent", "-o", "json"))
    assert {"apiGroups": ["cilium.io"], "resources": ["ciliumidentities"],
            "verbs": ["get", "list", "watch", "create", "delete"]} in role["rules"]  # fmt: skip

    # applying again changes nothing (client-side apply: a patch per object, all no-ops)
    out = _kubectl(cp, "apply", "-f", str(MANIFESTS))
    assert out.count(" unchanged") == len(OURS), out

    # an edited role is a strategic merge patch of an rbac kind: dry run first, then for real
    edited = tmp_path / "role.yaml"
    docs = list(yaml.safe_load_all((MANIFESTS / "10-rbac.yaml").read_text()))
    (agent,) = [
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "ciliary-agent"
    ]
    agent["rules"].append({"apiGroups": [""], "resources": ["events"], "verbs": ["create"]})
    edited.write_text(yaml.safe_dump(agent))
    out = _kubectl(cp, "apply", "--dry-run=server", "-f", str(edited))
    assert "configured (server dry run)" in out, out
    assert json.loads(_kubectl(cp, "get", "clusterrole", "ciliary-agent", "-o", "json")) == role
    _kubectl(cp, "apply", "-f", str(edited))
    live = json.loads(_kubectl(cp, "get", "clusterrole", "ciliary-agent", "-o", "json"))
    assert live["rules"] == agent["rules"]
