"""#14's first Must-hold in its own words, on the path labs default to (socket-LB on, as
Cilium's with kubeProxyReplacement; test_lab_services checks the tc path), in the lab ``make
demo`` builds (the default scenario, under a name of its own) with two more backends of the
Service ``shop/web``: 3 backends over 2 nodes (``web`` and ``web-b`` on node 2, ``web-a`` on the
client's node 1). The demo's Service step (client → web.shop.svc.cluster.local, HTTP GET) succeeds
in it. From the client pod, ``ciliary workload http-get http://web.shop.svc.cluster.local/`` (30
requests, each a new connection, the name resolved by the pod's resolver through the cluster DNS)
is answered every time, by all 3 backends (Hubble, through the lab's relay, names the backend pod
of each connection: with socket-LB the connection goes to the backend itself); getpeername() of
a connection to the name returns the Service's ClusterIP (the name's first address: IPv6 or
IPv4, the Service is dual-stack); a UDP DNS query to the kube-dns Service's ClusterIP (the
cluster DNS is itself a Service) answers the name with the Service's IPv4 ClusterIP.
Killing a backend's pod: both nodes' maps drop it, and the requests from then on, from a pod of
each node, all succeed and none reaches it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from ciliary.lab import demo, manager, schema
from tests.e2e.conftest import CILIARY, kube_lab, unique
from tests.kubectl import get_json, kubectl, wait_for

pytestmark = pytest.mark.timeout(300)

NAME = demo.WEB_SERVICE
BACKENDS = ("web", "web-a", "web-b")

EXTRA = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "80"]
    ports: [{{name: http, containerPort: 80, protocol: TCP}}]
"""


def demo_lab_file(lab: str, n1: str, n2: str) -> str:
    """The default scenario (``make demo``'s lab) named ``lab`` on nodes ``n1``/``n2``, with
    web-a on n1 and web-b on n2 behind its Service."""
    text = schema.DEFAULT_SCENARIO.replace("name: ciliary-demo", f"name: {lab}", 1)
    text = re.sub(r"\bnode1\b", n1, re.sub(r"\bnode2\b", n2, text)).rstrip("\n") + "\n"
    return text + EXTRA.format(name="web-a", node=n1) + EXTRA.format(name="web-b", node=n2)


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
        """The shop pods ``pod``'s connections to port 80 reached since ``since`` (Hubble
        through the lab's relay: every node's flows)."""
        relay = manager.record(self.name).relay
        assert relay is not None
        res = subprocess.run(
            [CILIARY, "hubble", "observe", "--server", relay.address, "--since", since,
             "--from-pod", pod, "--to-namespace", "shop", "--to-port", "80", "--all",
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
    name, nodes = unique("demo"), [unique("n") for _ in range(2)]
    path = tmp_path_factory.mktemp("byname") / "lab.yaml"
    path.write_text(demo_lab_file(name, *nodes))
    with kube_lab(path, name, nodes) as kubeconfig:
        yield NameLab(name, nodes, kubeconfig)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def test_the_demos_service_step_reaches_web_by_name(lab: NameLab) -> None:
    """``make demo``'s first step, as the demo runs it, in the demo's lab."""
    rec = manager.record(lab.name)
    ips = {p.key: (p.ipv4, p.ipv6) for p in rec.pods}
    step = demo._steps(ips)[0]
    assert NAME in step.title and not step.denied, step

    def answered() -> bool:  # the server starts with its pod: bounded wait, as the demo's
        return manager.run_in_pod(step.pod, step.argv, name=lab.name).returncode == 0

    wait_for(f"the demo's step {step.title!r}", answered, 30, interval=0.5)


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

    def programmed() -> bool:
        pods = get_json(lab.kubeconfig, "-n", "shop", "pods", "-l", "app=web")["items"]
        return all(lab.in_maps(n, str(p["status"]["podIP"])) for n in lab.nodes for p in pods)

    wait_for("the 3 backends in both nodes' maps", programmed, 30)
    since = _now()
    lab.http_get("default/client", 30)

    def all_answered() -> set[str] | None:
        got = lab.answered_by("default/client", since)
        return got if len(got) >= 3 else None

    seen = wait_for("Hubble's flows of the 30 requests", all_answered, 20)
    assert seen == set(BACKENDS), seen
    peer = lab.run("default/client", sys.executable, "-c", PEER)  # the name's first address
    vips = get_json(lab.kubeconfig, "-n", "shop", "service", "web")["spec"]["clusterIPs"]
    assert peer.returncode == 0 and peer.stdout.strip() in vips, (peer.stdout, peer.stderr)


def test_a_killed_backend_is_out_of_every_nodes_maps_before_the_next_request(
    lab: NameLab,
) -> None:
    gone = str(get_json(lab.kubeconfig, "-n", "shop", "pod", "web-b")["status"]["podIP"])
    assert all(lab.in_maps(n, gone) for n in lab.nodes)
    start = time.monotonic()
    kubectl(lab.kubeconfig, "-n", "shop", "delete", "pod", "web-b", "--wait=false")

    def out_of_maps() -> bool:
        return not any(lab.in_maps(n, gone) for n in lab.nodes)

    wait_for("web-b out of both nodes' maps", out_of_maps, 30, interval=0.05)
    print(f"\nweb-b deleted: out of both nodes' maps after {time.monotonic() - start:.2f} s")
    since = _now()
    for pod in ("default/client", "shop/web"):  # a pod on each node
        lab.http_get(pod, 20)
    for pod in ("default/client", "shop/web"):

        def answered(pod: str = pod) -> set[str]:
            return lab.answered_by(pod, since)

        got = wait_for(f"Hubble's flows of {pod}'s requests", answered, 20)
        assert got <= {"web", "web-a"}, (pod, got)
