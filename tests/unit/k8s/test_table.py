"""Tables: kubectl's columns per kind, ages as HumanDuration, and the machine's kubectl printing
them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ciliary.k8s import discovery
from ciliary.k8s.resources import by_kind
from ciliary.k8s.table import human_duration, render, to_table
from tests.unit.k8s.kubectlserver import Route, kubectl, serve

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POD_T = by_kind("v1", "Pod")


def ts(seconds_ago: int) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (599, "9m59s"),
        (600, "10m"),
        (179 * 60 + 59, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60 * 7, "3h7m"),
        (8 * 3600 + 60 * 7, "8h"),
        (47 * 3600, "47h"),
        (52 * 3600, "2d4h"),
        (3 * 86400, "3d"),
        (30 * 86400, "30d"),
        (800 * 86400, "2y70d"),
        (730 * 86400, "2y"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def pod(name: str = "web-1", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"app": "web"},
            "creationTimestamp": ts(200),
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.5",
            "containerStatuses": [
                {"name": "a", "ready": True, "restartCount": 0, "state": {"running": {}}},
                {
                    "name": "b",
                    "ready": False,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": ts(30)}},
                },
            ],
            **status,
        },
    }


def test_pod_rows_and_columns() -> None:
    table = to_table(POD_T, [pod()], resource_version="42", now=NOW)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42"}
    cols = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert cols == [
        ("Name", 0),
        ("Ready", 0),
        ("Status", 0),
        ("Restarts", 0),
        ("Age", 0),
        ("IP", 1),
        ("Node", 1),
        ("Nominated Node", 1),
        ("Readiness Gates", 1),
    ]
    (row,) = table["rows"]
    assert row["cells"] == [
        "web-1",
        "1/2",
        "CrashLoopBackOff",
        "2 (30s ago)",
        "3m20s",
        "10.0.0.5",
        "node-1",
        "<none>",
        "<none>",
    ]
    assert row["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": pod()["metadata"],
    }


def test_pod_status_column() -> None:
    def status_of(p: dict[str, Any]) -> Any:
        return to_table(POD_T, [p], now=NOW)["rows"][0]["cells"][2]

    pending = pod()
    pending["status"] = {"phase": "Pending"}
    assert status_of(pending) == "Pending"
    done = pod()
    done["status"]["containerStatuses"] = [
        {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    ]
    assert status_of(done) == "Completed"
    killed = pod()
    killed["status"]["containerStatuses"] = [
        {"state": {"terminated": {"exitCode": 137, "signal": 9}}}
    ]
    assert status_of(killed) == "Signal:9"
    init = pod()
    init["spec"]["initContainers"] = [{"name": "i"}]
    init["status"]["initContainerStatuses"] = [{"state": {"running": {}}}]
    assert status_of(init) == "Init:0/1"
    deleting = pod()
    deleting["metadata"]["deletionTimestamp"] = ts(1)
    assert status_of(deleting) == "Terminating"


def test_include_object_modes_and_render() -> None:
    assert "object" not in to_table(POD_T, [pod()], "None", now=NOW)["rows"][0]
    assert (
        to_table(POD_T, [pod()], "Object", now=NOW)["rows"][0]["object"]["spec"]["nodeName"]
        == "node-1"
    )
    assert render(POD_T, [pod()], "7")["metadata"]["resourceVersion"] == "7"
    assert render(POD_T, [pod()], "7")["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    table = to_table(POD_T, [], continue_token="abc", now=NOW)
    assert table["rows"] == [] and table["metadata"]["continue"] == "abc"


def cells(api_version: str, kind: str, obj: dict[str, Any]) -> tuple[list[str], list[Any]]:
    table = to_table(by_kind(api_version, kind), [obj], now=NOW)
    return [c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"]


def test_other_kinds() -> None:
    meta = {"name": "x", "creationTimestamp": ts(52 * 3600)}
    assert cells("v1", "Namespace", {"metadata": meta, "status": {"phase": "Active"}}) == (
        ["Name", "Status", "Age"],
        ["x", "Active", "2d4h"],
    )
    svc = {
        "metadata": meta,
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}],
            "selector": {"app": "web"},
        },
    }
    assert cells("v1", "Service", svc) == (
        ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"],
        ["x", "NodePort", "10.96.0.10", "<none>", "80:30080/TCP,53/UDP", "2d4h", "app=web"],
    )
    lb = {"metadata": meta, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1"}}
    assert cells("v1", "Service", lb)[1][3] == "<pending>"
    deploy = {
        "metadata": meta,
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}},
        },
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    }
    assert cells("apps/v1", "Deployment", deploy)[1] == [
        "x",
        "2/3",
        3,
        2,
        "2d4h",
        "c",
        "nginx",
        "app=web",
    ]
    node = {
        "metadata": {**meta, "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "spec": {"unschedulable": True},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.0.2"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0"},
        },
    }
    assert cells("v1", "Node", node)[1][:6] == [
        "x",
        "Ready,SchedulingDisabled",
        "control-plane",
        "2d4h",
        "v1.32.0",
        "192.168.0.2",
    ]
    cep = {
        "metadata": meta,
        "status": {
            "identity": {"id": 12345},
            "state": "ready",
            "networking": {"addressing": [{"ipv4": "10.0.0.5", "ipv6": "fd00::5"}]},
        },
    }
    names, row = cells("cilium.io/v2", "CiliumEndpoint", cep)
    assert dict(zip(names, row, strict=True)) == {
        "Name": "x",
        "Security Identity": 12345,
        "Ingress Enforcement": None,
        "Egress Enforcement": None,
        "Endpoint State": "ready",
        "IPv4": "10.0.0.5",
        "IPv6": "fd00::5",
    }
    cnp = {"metadata": meta, "status": {"conditions": [{"type": "Valid", "status": "True"}]}}
    assert cells("cilium.io/v2", "CiliumNetworkPolicy", cnp) == (
        ["Name", "Age", "Valid"],
        ["x", "2d4h", "True"],
    )
    assert cells("v1", "ConfigMap", {"metadata": meta}) == (["Name", "Age"], ["x", "2d4h"])
    assert cells("v1", "ConfigMap", {"metadata": {"name": "y"}})[1] == ["y", "<unknown>"]


def _route(tables: dict[str, dict[str, Any]]) -> Route:
    def route(path: str, query: str, accept: str) -> tuple[int, str, bytes] | None:
        if path == "/version":
            return 200, "application/json", json.dumps(discovery.version_info()).encode()
        answer = discovery.handle(path, accept)
        if answer is not None:
            return 200, answer[0], answer[1]
        if path in tables and "as=Table" in accept:
            return 200, "application/json", json.dumps(tables[path]).encode()
        return None

    return route


def test_kubectl_prints_our_tables() -> None:
    pods = to_table(POD_T, [pod("web-1"), pod("web-2")], resource_version="9", now=NOW)
    cep = {
        "metadata": {"name": "web-1", "namespace": "shop"},
        "status": {"identity": {"id": 4242}, "state": "ready"},
    }
    ceps = to_table(by_kind("cilium.io/v2", "CiliumEndpoint"), [cep], resource_version="9")
    tables = {
        "/api/v1/namespaces/shop/pods": pods,
        "/api/v1/pods": pods,
        "/apis/cilium.io/v2/namespaces/shop/ciliumendpoints": ceps,
    }
    with serve(_route(tables)) as url:
        plain = kubectl(url, "get", "pods", "-n", "shop")
        wide = kubectl(url, "get", "pods", "-A", "-o", "wide", "--show-labels")
        cep_out = kubectl(url, "get", "cep", "-n", "shop")
    assert plain.returncode == 0, plain.stderr
    header, *rows = plain.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[0].split()[:4] == ["web-1", "1/2", "CrashLoopBackOff", "2"]
    assert rows[0].split()[4:] == ["(30s", "ago)", "3m20s"]
    assert len(rows) == 2
    assert wide.returncode == 0, wide.stderr
    header, *rows = wide.stdout.splitlines()
    assert header.split()[:2] == ["NAMESPACE", "NAME"]  # read from the rows' PartialObjectMetadata
    assert {"IP", "NODE", "NOMINATED", "READINESS", "LABELS"} <= set(header.split())
    assert rows[0].split()[0] == "shop" and "10.0.0.5" in rows[0] and "app=web" in rows[0]
    assert cep_out.returncode == 0, cep_out.stderr
    assert cep_out.stdout.splitlines()[0].split() == [
        "NAME",
        "SECURITY",
        "IDENTITY",
        "ENDPOINT",
        "STATE",
        "IPV4",
        "IPV6",
    ]
    assert cep_out.stdout.splitlines()[1].split() == [
        "web-1",
        "4242",
        "ready",
    ]  # null cells print blank
