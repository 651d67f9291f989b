"""Egress rules on named ports, with real packets.

A client pod's egress-only CiliumNetworkPolicy allows ``toPorts: [{ports: [{port: web}]}]`` towards
``app: server`` pods. Each server declares the container port name ``web`` with its own number
(two identities: the servers differ in one label), so the name stands for 8080 towards one and
9090 towards the other, each (identity, port) its own policy map entry, as Cilium resolves egress
named ports per selected identity (``pkg/policy/types`` ``NamedPortMultiMap.GetNamedPorts``). A
port the server does not name is denied; a pod that appears later naming the port opens it (the
client's endpoint is regenerated when a new pod's ports resolve the name, even for an identity
that already existed); ``policy trace`` agrees with the datapath, and the endpoint reports
nothing unsupported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.client import AgentClient
from ciliary.core.models import TraceRequest
from ciliary.lab import manager

from .conftest import Lab, assert_no_leftovers, unique

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes:
  - name: {node}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-to-web, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: server}}}}]
    toPorts: [{{ports: [{{port: web}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: v1
kind: Pod
metadata: {{name: server-a, labels: {{app: server, instance: a}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "8080"]
    ports: [{{name: web, containerPort: 8080}}]
  - name: unnamed
    command: [ciliary, workload, http-server, --port, "7070"]
    ports: [{{containerPort: 7070}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server-b, labels: {{app: server, instance: b}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "9090"]
    ports: [{{name: web, containerPort: 9090}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server-d, labels: {{app: server, instance: d}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "6060"]
"""

LATER = """\
apiVersion: v1
kind: Pod
metadata: {name: server-d2, labels: {app: server, instance: d}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "6060"]
    ports: [{name: web, containerPort: 6060}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name, node = unique("np"), unique("n")
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB.format(lab=name, node=node))
    try:
        view = manager.up(path)
        yield Lab(name, node, view, path)
    finally:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [node])


def client(lab: Lab) -> AgentClient:
    return AgentClient(manager.agent_socket(lab.node, name=lab.name), timeout=60)


def get(lab: Lab, server: str, port: int) -> bool:
    """Whether the client's HTTP GET gets an answer (False: timed out, the policy dropped it).
    A refused connection went through the policy to a server not listening yet: retried."""
    url = f"http://{lab.pod_ip(f'default/{server}')}:{port}/"
    deadline = time.monotonic() + 10
    while True:
        res = lab.run("default/client", "ciliary", "workload", "http-get", "--timeout", "1", url)
        if res.returncode == 0:
            return True
        if "connection refused" in res.stderr and time.monotonic() < deadline:
            time.sleep(0.2)
            continue
        assert "timed out" in res.stderr, res.stderr
        return False


def trace(lab: Lab, server: str, port: int) -> bool:
    with client(lab) as cl:
        return cl.policy_trace(
            TraceRequest(src="default/client", dst=f"default/{server}", port=port)
        ).allowed


def test_named_port_reaches_each_server_on_its_own_number(lab: Lab) -> None:
    assert get(lab, "server-a", 8080)
    assert get(lab, "server-b", 9090)


def test_unnamed_port_is_denied(lab: Lab) -> None:
    assert not get(lab, "server-a", 7070)


def test_trace_agrees_and_nothing_is_unsupported(lab: Lab) -> None:
    for server, port, allowed in (
        ("server-a", 8080, True),
        ("server-a", 9090, False),
        ("server-a", 7070, False),
        ("server-b", 9090, True),
        ("server-b", 8080, False),
    ):
        assert trace(lab, server, port) is allowed, (server, port)
    with client(lab) as cl:
        ep = next(e for e in cl.endpoints() if e.pod_name == "client")
        status = cl.endpoint_policy(ep.id)
    assert status.egress_enforced
    assert status.unsupported == []
    egress = {(e.identity, e.ports) for e in status.entries if e.direction == "egress"}
    assert {port for _, port in egress} == {"8080", "9090"}


def test_a_pod_naming_the_port_later_opens_it(lab: Lab, tmp_path: Path) -> None:
    """server-d declares no named port: nothing towards it. server-d2 (same labels, so the same
    identity: no selector changes) declares ``web`` as 6060: the client's endpoint is regenerated
    for the name alone, and 6060 opens towards that identity (both pods of it)."""
    assert not get(lab, "server-d", 6060)
    path = tmp_path / "later.yaml"
    path.write_text(LATER)
    manager.apply(path, name=lab.name)
    assert get(lab, "server-d2", 6060)
    assert trace(lab, "server-d2", 6060)
    assert get(lab, "server-d", 6060)  # the same identity
    assert get(lab, "server-a", 8080)  # the others still
    assert not get(lab, "server-a", 7070)
