"""kubectl's typed imperative commands against the API server: ``kubectl create namespace|
configmap|serviceaccount|deployment|service`` send protobuf (kubectl v1.32.4, whatever discovery
says) and used to fail with 415; the stored objects are what the same commands would store
through JSON. Kinds the server does not serve stay 404."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ciliary.lab.controlplane import ControlPlane

pytestmark = pytest.mark.timeout(180)

KUBECTL = "/usr/bin/kubectl"


def kubectl(
    cp: ControlPlane, *args: str | Path, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [KUBECTL, "--kubeconfig", str(cp.kubeconfig), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode == 0) == ok, done.stderr
    return done


def stored(cp: ControlPlane, *what: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(kubectl(cp, "get", *what, "-o", "json").stdout)
    for key in ("uid", "creationTimestamp", "resourceVersion", "generation"):
        doc["metadata"].pop(key, None)
    return doc


def test_typed_create_commands(control_plane: ControlPlane, tmp_path: Path) -> None:
    cp = control_plane
    sent = kubectl(cp, "create", "namespace", "shop", "-v=8").stderr
    assert "Content-Type: application/vnd.kubernetes.protobuf" in sent  # what is being served
    assert stored(cp, "ns", "shop")["metadata"]["name"] == "shop"

    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\xff\xfe\x00bin")
    kubectl(
        cp, "create", "configmap", "c", "-n", "shop", "--from-literal=a=b", f"--from-file={blob}"
    )
    cm = stored(cp, "cm", "c", "-n", "shop")
    assert (cm["data"], cm["binaryData"]) == ({"a": "b"}, {"blob.bin": "//4AYmlu"})

    kubectl(cp, "create", "serviceaccount", "robot", "-n", "shop")
    assert stored(cp, "sa", "robot", "-n", "shop")["metadata"]["namespace"] == "shop"

    kubectl(
        cp, "create", "deployment", "web", "-n", "shop", "--image=nginx", "--replicas=0",
        "--port=8080", "--", "sleep", "10",
    )  # fmt: skip
    deploy = stored(cp, "deploy", "web", "-n", "shop")
    assert deploy["metadata"]["labels"] == {"app": "web"}
    assert deploy["spec"]["replicas"] == 0  # a Go pointer: 0 is not "absent" (would be 1)
    assert deploy["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert deploy["spec"]["template"]["spec"]["containers"] == [
        {"name": "nginx", "image": "nginx", "command": ["sleep", "10"],
         "ports": [{"containerPort": 8080}]}
    ]  # fmt: skip

    kubectl(cp, "create", "service", "clusterip", "web", "-n", "shop", "--tcp=80:8080",
            "--tcp=53:dns")  # fmt: skip
    svc = stored(cp, "svc", "web", "-n", "shop")["spec"]
    assert [p["targetPort"] for p in svc["ports"]] == [8080, "dns"]
    assert (svc["selector"], svc["type"]) == ({"app": "web"}, "ClusterIP")
    # the API server allocated its cluster IP from the lab's service range (#14)
    ip = kubectl(cp, "get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/16")
    table = kubectl(cp, "get", "svc", "-n", "shop").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert table[1].split()[:5] == ["web", "ClusterIP", ip, "<none>", "80/TCP,53/TCP"]
    kubectl(cp, "create", "service", "nodeport", "np", "-n", "shop", "--tcp=80:80",
            "--node-port=30080")  # fmt: skip
    assert stored(cp, "svc", "np", "-n", "shop")["spec"]["ports"][0]["nodePort"] == 30080

    # errors still come back as Status objects kubectl prints
    again = kubectl(cp, "create", "namespace", "shop", ok=False)
    assert 'Error from server (AlreadyExists): namespaces "shop" already exists' in again.stderr
    bad = kubectl(cp, "create", "configmap", "Bad_Name", "-n", "shop", ok=False)
    assert 'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value' in bad.stderr
    dry = kubectl(cp, "create", "configmap", "dry", "-n", "shop", "--dry-run=server", "-o", "name")
    assert dry.stdout.strip() == "configmap/dry"
    kubectl(cp, "get", "cm", "dry", "-n", "shop", ok=False)
    secret = kubectl(cp, "create", "secret", "generic", "s", "-n", "shop", "--from-literal=a=b",
                     ok=False)  # fmt: skip
    assert "the server could not find the requested resource" in secret.stderr
