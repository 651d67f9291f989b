"""#14's first Must-hold in its own words, on the path labs default to (socket-LB on, as
Cilium's with kubeProxyReplacement; test_lab_services checks the tc path): in a 2-node lab, the
Service ``shop/web`` has 3 backends, one on the client's node and two on the other. From the
client pod, ``ciliary workload http-get http://web.shop.svc.cluster.local/`` (30 requests, each a
new connection, the name resolved by the pod's resolver through the cluster DNS) is answered
every time, by all 3 backends (Hubble, through the lab's relay, names the backend pod of each
connection: with socket-LB the connection goes to the backend itself); getpeername() of a
connection to the name returns the Service's ClusterIP; a UDP DNS query to the kube-dns Service's
ClusterIP (the cluster DNS is itself a Service) answers the name with that ClusterIP. Killing a
backend's pod: both nodes' maps drop it, and the requests from then on, from a pod of each node,
all succeed and none reaches it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, kube_lab, unique
from tests.kubectl import get_json, kubectl, wait_for

pytestmark = pytest.mark.timeout(300)

NAME = "web.shop.svc.cluster.local"
BACKENDS = ("web-a", "web-b", "web-c")

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
{backends}"""

BACKEND = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}
spec:
  nodeName: {node}
  containers: [{{name: web, command: [ciliary, workload, http-server, --port, "8080"]}}]
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"""

PEER = f"""\
import socket
with socket.create_connection(("{NAME}", 80), timeout=3) as s:
    print(s.getpeername()[0])
"""


@dataclass(frozen=True)
class NameLab:
    name: str
    nodes: list[str]
    kubeconfig: str

    def run(self, pod: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(pod, list(argv), name=self.name, timeout=60)

    def http_get(self, pod: str, count: int) -> None:
        res = self.run(pod, "ciliary", "workload", "http-get", f"http://{NAME}/",
                       "--count", str(count), "--timeout", "3")  # fmt: skip
        assert res.returncode == 0, (pod, res.stdout, res.stderr)

    def vip(self) -> str:
        return str(get_json(self.kubeconfig, "-n", "shop", "service", "web")["spec"]["clusterIP"])

    def answered_by(self, pod: str, since: str) -> set[str]:
        """The shop pods ``pod``'s connections to port 8080 reached since ``since`` (Hubble
        through the lab's relay: every node's flows)."""
        relay = manager.record(self.name).relay
        assert relay is not None
        res = subprocess.run(
            [CILIARY, "hubble", "observe", "--server", relay.address, "--since", since,
             "--from-pod", pod, "--to-namespace", "shop", "--to-port", "8080", "--all",
             "-o", "jsonpb"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        flows = [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]
        return {f["destination"]["pod_name"] for f in flows}

    def in_maps(self, node: str, address: str) -> bool:
        res = subprocess.run(
            [CILIARY, "--node", node, "bpf", "lb", "list", "-o", "json"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return any(e["backend_address"] == address for e in json.loads(res.stdout))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NameLab]:
    name, nodes = unique("byname"), [unique("n") for _ in range(2)]
    placement = {"web-a": nodes[0], "web-b": nodes[1], "web-c": nodes[1]}
    backends = "".join(BACKEND.format(name=n, node=node) for n, node in placement.items())
    path = tmp_path_factory.mktemp("byname") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=nodes[0], n2=nodes[1], backends=backends))
    with kube_lab(path, name, nodes) as kubeconfig:
        kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICE)
        yield NameLab(name, nodes, kubeconfig)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def test_http_get_by_name_reaches_the_backends_on_both_nodes(lab: NameLab) -> None:
    vip = lab.vip()
    # the name resolves through kube-dns's ClusterIP (UDP): the Service's ClusterIP
    kube_dns = str(get_json(lab.kubeconfig, "-n", "kube-system", "service", "kube-dns")
                   ["spec"]["clusterIP"])  # fmt: skip

    def resolved() -> bool:
        res = lab.run("default/client", "ciliary", "workload", "dns-query", NAME,
                      "--server", kube_dns, "--timeout", "2")  # fmt: skip
        return res.returncode == 0 and res.stdout.strip() == f"{NAME}. A -> NOERROR, {vip}"

    wait_for(f"{NAME} through kube-dns's ClusterIP {kube_dns} (UDP)", resolved, 20)
    wait_for("the 3 backends in both nodes' maps", lambda: all(
        lab.in_maps(n, str(p["status"]["podIP"])) for n in lab.nodes
        for p in get_json(lab.kubeconfig, "-n", "shop", "pods")["items"]), 30)  # fmt: skip
    since = _now()
    lab.http_get("default/client", 30)

    def all_answered() -> set[str] | None:
        got = lab.answered_by("default/client", since)
        return got if len(got) >= 3 else None

    seen = wait_for("Hubble's flows of the 30 requests", all_answered, 20)
    assert seen == set(BACKENDS), seen
    peer = lab.run("default/client", sys.executable, "-c", PEER)
    assert (peer.returncode, peer.stdout.strip()) == (0, vip), (peer.stdout, peer.stderr)


def test_a_killed_backend_is_out_of_every_nodes_maps_before_the_next_request(
    lab: NameLab,
) -> None:
    gone = str(get_json(lab.kubeconfig, "-n", "shop", "pod", "web-c")["status"]["podIP"])
    assert all(lab.in_maps(n, gone) for n in lab.nodes)
    start = time.monotonic()
    kubectl(lab.kubeconfig, "-n", "shop", "delete", "pod", "web-c", "--wait=false")

    def out_of_maps() -> bool:
        return not any(lab.in_maps(n, gone) for n in lab.nodes)

    wait_for("web-c out of both nodes' maps", out_of_maps, 30, interval=0.05)
    print(f"\nweb-c deleted: out of both nodes' maps after {time.monotonic() - start:.2f} s")
    since = _now()
    for pod in ("default/client", "shop/web-b"):  # a pod on each node
        lab.http_get(pod, 20)
    for pod in ("default/client", "shop/web-b"):

        def answered(pod: str = pod) -> set[str]:
            return lab.answered_by(pod, since)

        got = wait_for(f"Hubble's flows of {pod}'s requests", answered, 20)
        assert got <= {"web-a", "web-b"}, (pod, got)
