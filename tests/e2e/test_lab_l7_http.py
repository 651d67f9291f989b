"""HTTP rules in a lab (issue #15 Build 3): a client pod's egress CNP with an HTTP rule to the
web pod's port 80; the datapath hands the client's connections to the node's Envoy (started by
the agent once the rule applies), which answers a request the rule does not allow with Cilium's
``403 Access denied`` and forwards the others to the pod. The policy is in the lab file, so it is
in force before the pods start."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

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
metadata: {{name: web, labels: {{app: web}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "80"]
  - name: other
    command: [ciliary, workload, http-server, --port, "8080"]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-http}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: web}}}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/public(/.*)?"}}
    - ports: [{{port: "8080", protocol: TCP}}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name, node = unique("fl7"), unique("fn")
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB.format(lab=name, node=node))
    try:
        yield Lab(name, node, manager.up(path), path)
    finally:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [node])


def _get(lab: Lab, url: str, status: int) -> str:
    """ "" when ``url`` answered ``status``, else what the client said."""
    res = lab.run("default/client", "ciliary", "workload", "http-get", url,
                  "--expect-status", str(status))  # fmt: skip
    return res.stdout + res.stderr if res.returncode else ""


def test_get_public_200_private_403(lab: Lab) -> None:
    web = lab.pod_ip("default/web")
    # the agent starts Envoy when the rule first applies (~0.5 s); until it listens the
    # datapath drops the redirected connection (fail closed)
    deadline = time.monotonic() + 20
    while (err := _get(lab, f"http://{web}/public", 200)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert err == "", err
    denied = lab.run("default/client", "ciliary", "workload", "http-get", f"http://{web}/private",
                     "--expect-status", "403")  # fmt: skip
    assert "HTTP 403 15 bytes" in denied.stdout, denied  # "Access denied\r\n", Envoy's answer
    assert _get(lab, f"http://{web}/publicity", 403) == ""  # the path regex matches whole
    assert _get(lab, f"http://{web}:8080/private", 200) == ""  # no L7 rule: not redirected
