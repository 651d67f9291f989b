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
from pathlib import Path

import pytest
import yaml

from ciliary.client import AgentClient
from ciliary.core.models import TraceRequest
from ciliary.lab import manager, policytest

from .conftest import Lab

# the conftest lab, shared (one lab up and down fewer a run): this module's policy and pods are
# in a namespace of their own, which the policy's selectors cannot leave (the lab's
# default/client is not this module's client)
SHARES_LAB = True
NS = "namedports"

OWN = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-to-web, namespace: {ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: server}}}}]
    toPorts: [{{ports: [{{port: web}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: client}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: v1
kind: Pod
metadata: {{name: server-a, namespace: {ns}, labels: {{app: server, instance: a}}}}
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
metadata: {{name: server-b, namespace: {ns}, labels: {{app: server, instance: b}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "9090"]
    ports: [{{name: web, containerPort: 9090}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server-d, namespace: {ns}, labels: {{app: server, instance: d}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "6060"]
"""

LATER = """\
apiVersion: v1
kind: Pod
metadata: {name: server-d2, namespace: namedports, labels: {app: server, instance: d}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "6060"]
    ports: [{name: web, containerPort: 6060}]
"""


@pytest.fixture(scope="module")
def lab(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """The conftest lab (the fixture this one overrides) with this module's namespace, policy
    and pods (``lab apply``)."""
    path = tmp_path_factory.mktemp("namedports") / "own.yaml"
    path.write_text(OWN.format(ns=NS))
    manager.apply(path, name=lab.name)
    return lab


def client(lab: Lab) -> AgentClient:
    return AgentClient(manager.agent_socket(lab.node, name=lab.name), timeout=60)


def expect(lab: Lab, *cases: tuple[str, int, str]) -> None:
    """Each ``(server, port, allow|deny)`` from the client, judged by the PolicyTest oracle: a
    deny is the datapath's own drop (reason 133, at the client's egress), never a timeout; an
    allow is the datapath's FORWARDED with the server's reply seen by the client."""
    doc = {
        "apiVersion": policytest.API_VERSION,
        "kind": policytest.KIND,
        "metadata": {"name": "named-ports"},
        "spec": {
            "cases": [
                {"name": f"{server}:{port}", "from": f"{NS}/client", "to": f"{NS}/{server}",
                 "port": port, "expect": verdict}
                | ({"dropReason": 133} if verdict == "deny" else {})
                for server, port, verdict in cases
            ]
        },
    }  # fmt: skip
    report = policytest.run(
        policytest.parse_text(yaml.safe_dump(doc), "<named-ports>"), name=lab.name
    )
    failed = {
        c.name: (c.problems, c.datapath_event, c.client) for c in report.cases if not c.passed
    }
    assert not failed, failed
    for c in report.cases:
        assert c.datapath == c.expected
        if c.expected == "deny":
            assert c.direction == "egress", c  # the client's egress rule decided


def trace(lab: Lab, server: str, port: int) -> bool:
    with client(lab) as cl:
        return cl.policy_trace(
            TraceRequest(src=f"{NS}/client", dst=f"{NS}/{server}", port=port)
        ).allowed


def test_named_port_reaches_each_server_on_its_own_number(lab: Lab) -> None:
    expect(lab, ("server-a", 8080, "allow"), ("server-b", 9090, "allow"))


def test_unnamed_port_is_denied(lab: Lab) -> None:
    expect(lab, ("server-a", 7070, "deny"), ("server-a", 9090, "deny"), ("server-b", 8080, "deny"))


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
        ep = next(e for e in cl.endpoints() if (e.namespace, e.pod_name) == (NS, "client"))
        status = cl.endpoint_policy(ep.id)
    assert status.egress_enforced
    assert status.unsupported == []
    egress = {(e.identity, e.ports) for e in status.entries if e.direction == "egress"}
    assert {port for _, port in egress} == {"8080", "9090"}


def test_a_pod_naming_the_port_later_opens_it(lab: Lab, tmp_path: Path) -> None:
    """server-d declares no named port: nothing towards it. server-d2 (same labels, so the same
    identity: no selector changes) declares ``web`` as 6060: the client's endpoint is regenerated
    for the name alone, and 6060 opens towards that identity (both pods of it)."""
    expect(lab, ("server-d", 6060, "deny"))
    path = tmp_path / "later.yaml"
    path.write_text(LATER)
    manager.apply(path, name=lab.name)
    deadline = time.monotonic() + 10  # the client's endpoint is regenerated for the new name
    while not trace(lab, "server-d2", 6060) and time.monotonic() < deadline:
        time.sleep(0.2)
    expect(
        lab,
        ("server-d2", 6060, "allow"),
        ("server-d", 6060, "allow"),  # the same identity
        ("server-a", 8080, "allow"),  # the others still
        ("server-a", 7070, "deny"),
    )
