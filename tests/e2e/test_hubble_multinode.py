"""Hubble across nodes: a flow between pods of two nodes names both pods on both nodes.

The receiving node knows the sender only by its address and the identity the overlay carried;
its pod name and namespace come from the cluster's CiliumEndpoints (the node manager's index),
as upstream's ipcache metadata, so pod filters (``--from-pod``, ``--to-pod``, ``--namespace``)
select cross-node traffic on either node, and the relay's merged view names both ends; its
``--node-name`` (``<cluster>/<node>``) selects one node's flows.

One lab of two nodes (VXLAN): ``default/client`` on node 1, ``shop/server`` on node 2.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, assert_no_leftovers, unique
from tests.kubectl import wait_for

pytestmark = pytest.mark.timeout(120)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes:
  - name: {n1}
  - name: {n2}
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
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec:
  nodeName: {n2}
  containers: [{{name: web, command: [ciliary, workload, http-server, --port, "80"]}}]
"""

Flow = dict[str, Any]


@dataclass(frozen=True)
class TwoNodes:
    name: str
    n1: str
    n2: str
    relay: str

    def node_socket(self, node: str) -> str:
        nrec = next(n for n in manager.record(self.name).nodes if n.name == node)
        return f"unix://{nrec.state_dir}/hubble.sock"

    def observe(self, server: str, *flags: str) -> list[Flow]:
        res = subprocess.run(
            [CILIARY, "observe", "--server", server, "--last", "500", "-o", "jsonpb", *flags],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    name, n1, n2 = unique("hmn"), unique("n"), unique("n")
    path = tmp_path_factory.mktemp("hubble-multinode") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=n1, n2=n2))
    try:
        view = manager.up(path)
        assert view.relay is not None and view.relay.alive
        server = next(p.ipv4 for p in view.pods if p.name == "server")
        assert server is not None
        url = f"http://{server.partition('/')[0]}/"

        def get() -> bool:
            argv = ["ciliary", "workload", "http-get", "--timeout", "2", url]
            return manager.run_in_pod("default/client", argv, name=name).returncode == 0

        wait_for("the client's GET across nodes", get, 30)
        yield TwoNodes(name, n1, n2, view.relay.address)
    finally:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [n1, n2])


def _pod(endpoint: Flow) -> str:
    return f"{endpoint.get('namespace', '')}/{endpoint.get('pod_name', '')}"


def test_receiving_node_names_the_remote_client(lab: TwoNodes) -> None:
    """On the server's node the client is a remote pod: ``--from-pod default/client`` selects
    its flows, and they name it (and the server) as on the client's own node."""
    node2 = lab.node_socket(lab.n2)
    flows = wait_for(
        "node 2's flows from default/client",
        lambda: lab.observe(node2, "--from-pod", "default/client", "--to-pod", "shop/server"),
        10,
    )
    for f in flows:
        assert f["node_name"] == f"{lab.name}/{lab.n2}", f
        assert (_pod(f["source"]), _pod(f["destination"])) == ("default/client", "shop/server")
        assert "ID" not in f["source"], f  # not an endpoint of this node
        assert "k8s:app=client" in f["source"]["labels"], f
        assert f["source"]["cluster_name"] == lab.name, f
    points = {f.get("trace_observation_point") for f in flows}
    assert points & {"FROM_OVERLAY", "TO_ENDPOINT"}, points
    # replies name the remote client as their destination; --namespace matches either end
    replies = lab.observe(node2, "--to-pod", "default/client")
    assert replies and all(_pod(f["source"]) == "shop/server" for f in replies), replies
    ns = lab.observe(node2, "--namespace", "default")
    assert len(ns) >= len(flows) + len(replies), (len(ns), len(flows), len(replies))
    # on the client's node the server is the remote one
    node1 = lab.node_socket(lab.n1)
    sent = lab.observe(node1, "--to-pod", "shop/server")
    assert sent and all(_pod(f["source"]) == "default/client" for f in sent), sent
    assert "TO_OVERLAY" in {f.get("trace_observation_point") for f in sent}


def test_relay_names_both_ends_and_selects_a_node(lab: TwoNodes) -> None:
    """Through the relay both nodes' flows of the connection name both pods; ``--node-name``
    (``<cluster>/<node>``, or a node pattern) keeps one node's."""
    both = lab.observe(lab.relay, "--from-pod", "default/client", "--to-pod", "shop/server")
    nodes = {f["node_name"] for f in both}
    assert nodes == {f"{lab.name}/{lab.n1}", f"{lab.name}/{lab.n2}"}, nodes
    # <cluster>/<node>, or a bare node name (any cluster)
    for pattern, node in ((f"{lab.name}/{lab.n1}", lab.n1), (lab.n2, lab.n2)):
        one = lab.observe(lab.relay, "--node-name", pattern, "--from-pod", "default/client")
        assert one and {f["node_name"] for f in one} == {f"{lab.name}/{node}"}, (pattern, one)
    assert lab.observe(lab.relay, "--node-name", f"other/{lab.n1}") == []
