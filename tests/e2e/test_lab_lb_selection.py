"""Backend selection (bpf/lib/lb.h lb_select_backend) in a 2-node lab, through the tc-level LB
(socket-LB pinned off: it would translate at connect(), with no Maglev for E-W, as upstream's):
3 backend pods (one on the client's node, two on the other) behind three Services.

- Maglev (``service.cilium.io/lb-algorithm: maglev``): both nodes hold the same table (compared
  entry by entry as backend addresses: ids are node-local), and, over IPv4 and IPv6 (a
  dual-stack Service), a connection from a fixed source port reaches the backend the table
  names at ``jhash(tuple) % M`` (the tuple hash computed here, core.maglev.tuple_hash, with the
  lab's seed): the same tuple picks that backend on every node.
- ``sessionAffinity: ClientIP`` (timeoutSeconds 3): 100 connections from one client land on one
  backend; once the timeout passed, a new connection may get another.
- A terminating backend (its pod deleted, held by a finalizer: still running, its endpoint
  ``terminating``) keeps the established connection it serves, while new connections avoid it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from ciliary.core.maglev import DEFAULT_TABLE_SIZE, parse_hash_seed, tuple_hash
from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, kube_lab, unique
from tests.kubectl import get_json, kubectl, kubectl_run, wait_for

pytestmark = pytest.mark.timeout(300)

# each line received is answered with the pod's name: which backend an open connection is on
NAME_SERVER = (
    "import os, socketserver\n"
    "class H(socketserver.StreamRequestHandler):\n"
    "    def handle(self):\n"
    "        for _ in self.rfile:\n"
    "            self.wfile.write(os.environ['HOSTNAME'].encode() + b'\\n')\n"
    "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
    "socketserver.ThreadingTCPServer(('0.0.0.0', 9000), H).serve_forever()\n"
)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  socketLB: {{enabled: false}}  # the tc-level LB's selection is what is tested
  nodes:
  - name: {n1}
  - name: {n2}
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
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  nodeName: {node}
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "8080"]
  - name: names
    command: [{python}, -c, {server}]
"""

SERVICES = """\
apiVersion: v1
kind: Service
metadata:
  name: mag
  annotations: {service.cilium.io/lb-algorithm: maglev}
spec:
  selector: {app: web}
  ipFamilyPolicy: PreferDualStack
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: aff}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 3}}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: drain}
spec:
  selector: {app: web}
  ports: [{name: names, port: 9000, targetPort: 9000}]
"""

# GETs to VIP:80, each a new connection (from the given source ports, else any): the pods
GETS = """\
import http.client, json, sys
vip, count, ports = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
pods = []
for i in range(len(ports) or count):
    src = ("::" if ":" in vip else "0.0.0.0", ports[i]) if ports else None
    c = http.client.HTTPConnection(vip, 80, timeout=2, source_address=src)
    try:
        c.request("GET", "/")
        pods.append(json.loads(c.getresponse().read())["pod"])
    except OSError as err:
        pods.append(f"error: {err}")
    finally:
        c.close()
print(json.dumps(pods))
"""

# one connection to VIP:9000 held open on `want`'s pod; then, once `go` exists, its next answer
# and the pods of 20 new connections
DRAIN = """\
import json, os, socket, sys, time
vip, want, ready, go = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def ask(s):
    s.sendall(b"who\\n")
    return s.makefile().readline().strip()
held = None
for _ in range(60):
    s = socket.create_connection((vip, 9000), timeout=3)
    if ask(s) == want:
        held = s
        break
    s.close()
open(ready, "w").write("held" if held else "none")
deadline = time.time() + 60
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
try:
    again = ask(held)
except OSError as err:
    again = f"error: {err}"
new = []
for _ in range(20):
    try:
        with socket.create_connection((vip, 9000), timeout=3) as s:
            new.append(ask(s))
    except OSError as err:
        new.append(f"error: {err}")
print(json.dumps({"again": again, "new": new}))
"""

BACKENDS = ("web-a", "web-b", "web-c")


@dataclass(frozen=True)
class SelLab:
    name: str
    nodes: list[str]
    kubeconfig: str

    def ip(self, pod: str, family: int = 4) -> str:
        prec = manager.find_pod(manager.record(self.name), pod)
        addr = prec.ipv4 if family == 4 else prec.ipv6
        assert addr is not None, pod
        return addr.partition("/")[0]

    def run(self, pod: str, *argv: str, timeout: float = 60) -> str:
        res = manager.run_in_pod(pod, list(argv), name=self.name, timeout=timeout)
        assert res.returncode == 0, (res.stdout, res.stderr)
        return res.stdout

    def vip(self, service: str, family: int = 4) -> str:
        ips = get_json(self.kubeconfig, "service", service)["spec"]["clusterIPs"]
        return str(next(ip for ip in ips if (":" in ip) == (family == 6)))

    def frontends(self, node: str) -> list[dict[str, Any]]:
        res = subprocess.run(
            [CILIARY, "--node", node, "service", "list", "-o", "json"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        out: list[dict[str, Any]] = json.loads(res.stdout)
        return out

    def frontend(self, node: str, service: str, port: int, family: int = 4) -> dict[str, Any]:
        vip = self.vip(service, family)
        return next(f for f in self.frontends(node) if f["address"] == vip and f["port"] == port)

    def gets(
        self, service: str, count: int, ports: tuple[int, ...] = (), family: int = 4
    ) -> list[str]:
        vip = self.vip(service, family)
        out = self.run("client", sys.executable, "-c", GETS, vip, str(count), *map(str, ports))
        pods: list[str] = json.loads(out)
        return pods


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SelLab]:
    name, nodes = unique("sel"), [unique("n") for _ in range(2)]
    placement = {"web-a": nodes[0], "web-b": nodes[1], "web-c": nodes[1]}
    server = json.dumps(NAME_SERVER)
    backends = "".join(
        BACKEND.format(name=n, node=node, python=sys.executable, server=server)
        for n, node in placement.items()
    )
    path = tmp_path_factory.mktemp("selection") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=nodes[0], n2=nodes[1], backends=backends))
    with kube_lab(path, name, nodes) as kubeconfig:
        try:
            kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICES)
            lab = SelLab(name, nodes, kubeconfig)
            vips = {lab.vip(svc) for svc in ("mag", "aff", "drain")} | {lab.vip("mag", 6)}
            for node in nodes:  # every Service's backends on both nodes
                wait_for(
                    f"the Services on {node}",
                    lambda n=node: (
                        sum(
                            len(f["backends"]) == 3
                            for f in lab.frontends(n)
                            if f["address"] in vips
                        )
                        == 4
                    ),
                    30,
                )
            yield lab
        finally:
            kubectl_run(  # the drain test's finalizer released: lab down deletes web-a
                kubeconfig, "patch", "pod", "web-a", "--type=merge",
                "-p", '{"metadata": {"finalizers": null}}', check=False,
            )  # fmt: skip


def _table(lab: SelLab, node: str, family: int = 4) -> list[str]:
    """``mag``'s Maglev table on ``node`` (``ciliary bpf lb maglev list``), as addresses."""
    fe = lab.frontend(node, "mag", 80, family)
    by_id = {b["id"]: b["address"] for b in fe["backends"]}
    res = subprocess.run(
        [CILIARY, "--node", node, "bpf", "lb", "maglev", "list", "-o", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    tables = [t for t in json.loads(res.stdout) if t["service_id"] == fe["id"]]
    assert len(tables) == 1 and tables[0]["family"] == family, (node, res.stdout[:200])
    return [by_id[i] for i in tables[0]["backend_ids"]]


@pytest.mark.parametrize("family", [4, 6])
def test_maglev_the_same_tuple_picks_the_same_backend_on_every_node(
    lab: SelLab, family: int
) -> None:
    tables = [_table(lab, node, family) for node in lab.nodes]
    assert len(tables[0]) == DEFAULT_TABLE_SIZE
    assert tables[0] == tables[1]
    assert set(tables[0]) == {lab.ip(p, family) for p in BACKENDS}
    seed = manager.record(lab.name).maglev_hash_seed
    assert seed is not None
    client = ip_address(lab.ip("client", family)).packed
    ports = tuple(41000 + 7 * i + family for i in range(6))
    pods = lab.gets("mag", 0, ports, family)
    by_ip = {lab.ip(p, family): p for p in BACKENDS}
    expected = [
        by_ip[tables[1][tuple_hash(client, port, 80, 6, parse_hash_seed(seed)) % len(tables[1])]]
        for port in ports
    ]
    assert pods == expected


def test_session_affinity_one_backend_until_the_timeout(lab: SelLab) -> None:
    pods = lab.gets("aff", 100)
    assert len(pods) == 100 and len(set(pods)) == 1 and pods[0] in BACKENDS, pods
    first = pods[0]
    seen = {first}
    for _ in range(8):  # each round: another choice with probability 2/3
        time.sleep(3.3)
        seen.add(lab.gets("aff", 1)[0])
        if len(seen) > 1:
            break
    assert len(seen) > 1, f"every connection after the timeout went to {first}"


def test_a_terminating_backend_keeps_its_connection_and_gets_no_new_one(
    lab: SelLab, tmp_path: Path
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    result: dict[str, Any] = {}

    def client() -> None:
        result["out"] = lab.run(
            "client", sys.executable, "-c", DRAIN, lab.vip("drain"), "web-a", str(ready), str(go),
            timeout=120,
        )  # fmt: skip

    kubectl(lab.kubeconfig, "patch", "pod", "web-a", "--type=merge",
            "-p", '{"metadata": {"finalizers": ["ciliary.io/e2e-hold"]}}')  # fmt: skip
    worker = threading.Thread(target=client)
    worker.start()
    try:
        wait_for("the held connection", ready.exists, 60)
        assert ready.read_text() == "held"
        kubectl(lab.kubeconfig, "delete", "pod", "web-a", "--wait=false")
        web_a = lab.ip("web-a")
        for node in lab.nodes:
            wait_for(
                f"web-a terminating on {node}",
                lambda n=node: any(
                    b["address"] == web_a and b["state"] == "terminating"
                    for b in lab.frontend(n, "drain", 9000)["backends"]
                ),
                30,
            )
    finally:
        go.write_text("")
        worker.join(120)
    out = json.loads(result["out"])
    assert out["again"] == "web-a", out  # the established connection still reaches it
    assert len(out["new"]) == 20 and set(out["new"]) <= {"web-b", "web-c"}, out
