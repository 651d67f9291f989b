"""Pods on three nodes of one lab talk across nodes, in both of Cilium's routing modes: VXLAN
(the default; the source identity rides in the VNI) and native routing (the lab network routes
the pod CIDRs, the receiving node takes the identity from its ipcache). A policy allowing one
source is enforced at the destination node with the sender's real identity: a pod of the third
node with other labels is dropped there, ``Policy denied``, and the receiving node's Hubble names
its identity. An agent restart on either end leaves a cross-node connection established."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, kube_lab, unique
from tests.kubectl import get_json, kubectl, wait_for

pytestmark = pytest.mark.timeout(300)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  routingMode: {mode}
  autoDirectNodeRoutes: {direct}
  nodes:
  - name: {n1}
  - name: {n2}
  - name: {n3}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  nodeName: {n1}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: other, labels: {{app: other}}}}
spec:
  nodeName: {n3}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec:
  nodeName: {n2}
  containers:
  - name: echo
    command: [ciliary, workload, echo-server, --tcp-port, "7", --udp-port, "7"]
  - name: web
    command: [ciliary, workload, http-server, --port, "80"]
"""

ONLY_CLIENT = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
        k8s:io.kubernetes.pod.namespace: default
"""

# A TCP connection held open across an agent restart: one echo round trip per line read from
# stdin, "ok"/"fail" printed for each.
HOLD = """\
import socket, sys
s = socket.create_connection((sys.argv[1], 7), timeout=5)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        got = b""
        while len(got) < len(line):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        print("ok" if got == line.encode() else "fail", flush=True)
    except OSError as err:
        print(f"fail {err}", flush=True)
"""


@dataclass(frozen=True)
class MultiLab:
    name: str
    mode: str
    nodes: list[str]
    kubeconfig: str

    def ip(self, pod: str, family: int = 4) -> str:
        prec = manager.find_pod(manager.record(self.name), pod)
        addr = prec.ipv4 if family == 4 else prec.ipv6
        assert addr is not None, (pod, family)
        return addr.partition("/")[0]

    def run(self, pod: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(pod, list(argv), name=self.name, timeout=30)


@pytest.fixture(scope="module", params=["tunnel", "native"])
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MultiLab]:
    mode = str(request.param)
    name, nodes = unique("mn"), [unique("n") for _ in range(3)]
    path = tmp_path_factory.mktemp("multinode") / "lab.yaml"
    direct = str(mode == "native").lower()
    text = LAB.format(lab=name, mode=mode, direct=direct, n1=nodes[0], n2=nodes[1], n3=nodes[2])
    path.write_text(text)
    with kube_lab(path, name, nodes) as kubeconfig:
        yield MultiLab(name, mode, nodes, kubeconfig)


def _serving(lab: MultiLab, family: int) -> None:
    host = lab.ip("shop/server", family)
    url = f"http://[{host}]/" if family == 6 else f"http://{host}/"
    wait_for(
        f"the server over IPv{family}",
        lambda: lab.run("default/client", "ciliary", "workload", "http-get", url).returncode == 0,
        30,
    )


@pytest.mark.parametrize("family", [4, 6])
def test_pod_to_pod_across_nodes(lab: MultiLab, family: int) -> None:
    _serving(lab, family)
    server = lab.ip("shop/server", family)
    for argv in (
        ["ciliary", "workload", "tcp-echo", server, "7", "--count", "3"],
        ["ciliary", "workload", "udp-echo", server, "7", "--count", "3"],
        ["ciliary", "workload", "ping", server, "-c", "3", "-i", "0.1"],
    ):
        for pod in ("default/client", "default/other"):  # from node 1 and from node 3
            res = lab.run(pod, *argv)
            assert res.returncode == 0, f"{pod} {argv}: {res.stdout} {res.stderr}"


def _identity(lab: MultiLab, pod: str) -> int:
    cep = get_json(lab.kubeconfig, "ciliumendpoints", pod, "-n", "default")
    return int(cep["status"]["identity"]["id"])


def _hubble(lab: MultiLab, node: str, *flags: str) -> list[dict[str, Any]]:
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
    res = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock",
         "--last", "200", "-o", "jsonpb", *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


def test_policy_enforced_at_the_destination_with_the_source_identity(lab: MultiLab) -> None:
    _serving(lab, 4)
    server = lab.ip("shop/server")
    tcp = ["ciliary", "workload", "tcp-echo", server, "7", "--timeout", "1"]
    kubectl(lab.kubeconfig, "apply", "-f", "-", stdin=ONLY_CLIENT)
    try:
        wait_for("other denied", lambda: lab.run("default/other", *tcp).returncode != 0, 20)
        assert lab.run("default/client", *tcp).returncode == 0

        other_id, client_id = _identity(lab, "other"), _identity(lab, "client")
        assert other_id != client_id
        n2 = lab.nodes[1]

        def denied() -> list[dict[str, Any]]:
            return [
                f
                for f in _hubble(lab, n2, "--verdict", "DROPPED", "--to-pod", "shop/server")
                if f.get("drop_reason_desc") == "POLICY_DENIED"
            ]

        drop = wait_for("the destination node's drop", denied, 20)[-1]
        # decided on node 2 (the server's) with the sender's real identity, not world's
        assert drop["node_name"].endswith(n2), drop
        assert drop["source"]["identity"] == other_id, drop
        assert "k8s:app=other" in drop["source"]["labels"], drop
        assert drop["traffic_direction"] == "INGRESS", drop

        allowed = [
            f
            for f in _hubble(lab, n2, "--verdict", "FORWARDED", "--to-pod", "shop/server")
            if f["source"]["identity"] == client_id
        ]
        assert allowed, "no forwarded flow from the client at the destination node"
        if lab.mode == "tunnel":  # observed on both ends of the overlay
            sent = _hubble(lab, lab.nodes[0], "--to-ip", server, "--verdict", "FORWARDED")
            points = {f.get("trace_observation_point") for f in sent}
            assert "TO_OVERLAY" in points, points
            points = {f.get("trace_observation_point") for f in allowed}
            assert "FROM_OVERLAY" in points or "TO_ENDPOINT" in points, points
    finally:
        kubectl(lab.kubeconfig, "delete", "cnp", "-n", "shop", "server-from-client")
    wait_for("other allowed again", lambda: lab.run("default/other", *tcp).returncode == 0, 20)


def test_connection_survives_agent_restarts(lab: MultiLab) -> None:
    _serving(lab, 4)
    client = manager.find_pod(manager.record(lab.name), "default/client")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", client.netns, sys.executable, "-c", HOLD, lab.ip("shop/server")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None

    def round_trip() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("hello\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert round_trip() == "ok"
        for node in (lab.nodes[0], lab.nodes[1]):  # the client's, then the server's
            manager.restart_agent(node, name=lab.name)
            assert round_trip() == "ok", f"after restarting {node}'s agent"
    finally:
        proc.communicate(timeout=10)  # closes stdin: the holder ends; its pipes are closed
