"""Socket-LB in a lab (``spec.socketLB.enabled``, on by default: each agent's bpf_sock.c on its
node's cgroup, which holds that node's pod processes, ``lab exec`` included): a client pod's TCP
connect() to a ClusterIP reaches the backend, the server sees the client's own
address and the client's getpeername() says ClusterIP:80; an unconnected UDP sendto() to the
ClusterIP is answered from the ClusterIP (recvfrom). The node's conntrack table proves it
was the socket that was translated, not the packets: the connections' entries name the backend
and its target port, carry no rev-NAT index, and no service entry (to the ClusterIP) exists.
``hubble observe --type trace-sock`` shows the client's connect() as SOCK flows: pre-xlate-fwd
to the ClusterIP with destination_service socketlb/web, post-xlate-fwd to the web pod (at the
default monitor aggregation, of one connect() per report interval).
A ``sessionAffinity: ClientIP`` Service over 3 pods: 100 connections from one pod land on one
backend, a second pod sticks to its own; that backend once terminating (deleted, held by a
finalizer) gets none of the pod's next connections, which stick to another one.
(The tc-level LB with ``socketLB: {enabled: false}`` is test_lab_services'.)"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, shared_kube_lab
from tests.e2e.test_lab_databases import SHARES_LAB as DATABASES_LAB
from tests.e2e.test_lab_databases import write_lab
from tests.kubectl import get_json, kubectl, wait_for

pytestmark = pytest.mark.timeout(240)

# test_lab_databases's one-node lab, shared (one lab up and down fewer a run; its spec is the
# default's but for an image map): this module's pods and Services are in a namespace of its own,
# under names of their own there, which its Services' selectors cannot leave.
SHARES_LAB = DATABASES_LAB
NS = "socketlb"

PODS = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: client}}}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client2, namespace: {ns}, labels: {{app: client}}}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: sticky-a, namespace: {ns}, labels: {{tier: sticky}}}}
spec:
  containers: [{{name: web, command: [ciliary, workload, http-server, --port, "8080"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: sticky-b, namespace: {ns}, labels: {{tier: sticky}}}}
spec:
  containers: [{{name: web, command: [ciliary, workload, http-server, --port, "8080"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web, tier: sticky}}}}
spec:
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "8080"]
  - name: echo
    command: [ciliary, workload, echo-server, --udp-port, "5353"]
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: socketlb}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: echo, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: socketlb}
spec:
  selector: {tier: sticky}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
"""

# GETs to VIP:80, each a new connection: the pods that answered
GETS = """\
import http.client, json, sys
pods = []
for _ in range(int(sys.argv[2])):
    c = http.client.HTTPConnection(sys.argv[1], 80, timeout=3)
    c.request("GET", "/")
    pods.append(json.loads(c.getresponse().read())["pod"])
    c.close()
print(json.dumps(pods))
"""

# A GET over a connect()ed TCP socket and an unconnected UDP datagram, both to the ClusterIP;
# prints what the client saw (its socket's peer and local address, the server's answer naming
# the client it saw, the UDP reply's source).
CLIENT = """\
import json, socket, sys
vip = sys.argv[1]
c = socket.create_connection((vip, 80), timeout=3)
peer, local = c.getpeername()[:2], c.getsockname()[:2]
c.sendall(b"GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n")
data = b""
while chunk := c.recv(4096):
    data += chunk
body = json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"hello", (vip, 53))
reply, frm = u.recvfrom(64)
print(json.dumps({"peer": peer, "local": local, "body": body, "udp_from": frm[:2],
                  "udp": reply.decode(), "udp_local": u.getsockname()[:2]}))
"""


@dataclass(frozen=True)
class SockLab:
    name: str
    nodes: list[str]
    kubeconfig: str

    def ip(self, pod: str) -> str:
        addr = manager.find_pod(manager.record(self.name), f"{NS}/{pod}").ipv4
        assert addr is not None, pod
        return addr.partition("/")[0]

    def vip(self, service: str) -> str:
        return str(get_json(self.kubeconfig, "-n", NS, "service", service)["spec"]["clusterIP"])

    def gets(self, pod: str, service: str, count: int) -> list[str]:
        res = manager.run_in_pod(
            f"{NS}/{pod}", [sys.executable, "-c", GETS, self.vip(service), str(count)],
            name=self.name, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, (res.stdout, res.stderr)
        pods: list[str] = json.loads(res.stdout)
        return pods

    def observe(self, *flags: str) -> list[dict[str, Any]]:
        """``hubble observe`` of the node (upstream's flags), as JSON flows."""
        nrec = next(n for n in manager.record(self.name).nodes if n.name == self.nodes[0])
        res = subprocess.run(
            [CILIARY, "hubble", "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock",
             "--last", "1000", "-o", "jsonpb", *flags],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]

    def backends(self, service: str) -> dict[str, str]:
        """Backend address -> state of the Service's port 80 frontend in the node's maps."""
        vip = self.vip(service)
        for fe in self.cli(self.nodes[0], "service", "list"):
            if fe["address"] == vip and fe["port"] == 80:
                return {b["address"]: b["state"] for b in fe["backends"]}
        return {}

    def cli(self, node: str, *argv: str) -> Any:
        res = subprocess.run(
            [CILIARY, "--node", node, *argv, "-o", "json"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, (argv, res.stdout, res.stderr)
        return json.loads(res.stdout)


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[SockLab]:
    # one node: the translation is the client's
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as (name, nodes, kubeconfig):
        path = tmp_path_factory.mktemp("socketlb") / "pods.yaml"
        path.write_text(PODS.format(ns=NS))
        manager.apply(path, name=name)
        kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICE)
        yield SockLab(name, nodes, kubeconfig)


def test_connect_and_sendmsg_are_translated_in_the_socket(lab: SockLab) -> None:
    vip = lab.vip("web")
    client, backend = lab.ip("client"), lab.ip("web")

    def programmed() -> bool:
        return any(
            e["service_address"] == vip and e["slot"] > 0 and e["backend_address"] == backend
            for e in lab.cli(lab.nodes[0], "bpf", "lb", "list")
        )

    wait_for("the Service in the node's maps", programmed, 30)
    res = manager.run_in_pod(f"{NS}/client", [sys.executable, "-c", CLIENT, vip], name=lab.name)
    assert res.returncode == 0, (res.stdout, res.stderr)
    got = json.loads(res.stdout)
    assert got["peer"] == [vip, 80], got  # getpeername: the ClusterIP
    assert got["body"]["pod"] == "web", got
    assert got["body"]["client"] == f"{client}:{got['local'][1]}", got  # the real client
    assert (got["udp"], got["udp_from"]) == ("hello", [vip, 53]), got  # recvfrom: the ClusterIP

    entries = lab.cli(lab.nodes[0], "bpf", "ct", "list")
    tcp = [e for e in entries if e["src"] == client and e["sport"] == got["local"][1]]
    udp = [e for e in entries if e["src"] == client and e["sport"] == got["udp_local"][1]]
    for name, mine, port in (("TCP", tcp, 8080), ("UDP", udp, 5353)):
        assert mine, f"no {name} conntrack entry of the client's connection: {entries}"
        for e in mine:  # to the backend, never to the ClusterIP; no service translation
            assert (e["dst"], e["dport"]) == (backend, port), e
            assert e["rev_nat_index"] == 0 and "service" not in e["flags"], e
    assert not [e for e in entries if e["dst"] == vip], "a service conntrack entry exists"


def test_socket_translations_are_hubble_sock_flows(lab: SockLab) -> None:
    """upstream's trace-sock flows: the client's connect() before (to the ClusterIP, the
    Service named) and after the translation (to the web pod). At the lab's monitor aggregation
    (medium, the default) one connect() per report interval (5 s) on the node is reported: the
    client connects until one of its connect()s is."""
    vip, client, backend = lab.vip("web"), lab.ip("client"), lab.ip("web")

    def sock_flows() -> list[dict[str, Any]] | None:
        assert lab.gets("client", "web", 1) == ["web"]
        flows = [f for f in lab.observe("--type", "trace-sock", "--from-pod", f"{NS}/client")
                 if f["IP"]["destination"] in (vip, backend)]  # fmt: skip
        return flows if len(flows) >= 2 else None

    flows = wait_for("the client's trace-sock flows", sock_flows, 30, interval=1)
    pre = [f for f in flows if f["sock_xlate_point"] == "SOCK_XLATE_POINT_PRE_DIRECTION_FWD"]
    post = [f for f in flows if f["sock_xlate_point"] == "SOCK_XLATE_POINT_POST_DIRECTION_FWD"]
    assert pre and post, flows
    for f in pre + post:
        assert (f["Type"], f["source"]["pod_name"], f["IP"]["source"]) == (
            "SOCK", "client", client), f  # fmt: skip
        assert f["event_type"]["type"] == 7 and f["socket_cookie"] and f["cgroup_id"], f
    assert pre[-1]["verdict"] == "TRACED", pre[-1]
    assert pre[-1]["IP"]["destination"] == vip and pre[-1]["l4"]["TCP"]["destination_port"] == 80
    assert pre[-1]["destination_service"] == {"namespace": NS, "name": "web"}, pre[-1]
    assert post[-1]["verdict"] == "TRANSLATED", post[-1]
    assert (post[-1]["IP"]["destination"], post[-1]["destination"]["pod_name"]) == (backend, "web")
    assert post[-1]["l4"]["TCP"]["destination_port"] == 8080, post[-1]
    # one socket: the same cookie before and after
    assert {f["socket_cookie"] for f in pre} & {f["socket_cookie"] for f in post}


def test_affinity_per_pod_and_a_terminating_backend_is_left(lab: SockLab) -> None:
    sticky = {"web", "sticky-a", "sticky-b"}
    wait_for("the sticky Service's 3 backends", lambda: len(lab.backends("sticky")) == 3, 60)
    first = lab.gets("client", "sticky", 100)
    assert len(set(first)) == 1 and set(first) <= sticky, first  # one backend for the pod
    other = lab.gets("client2", "sticky", 20)
    assert len(set(other)) == 1 and set(other) <= sticky, other  # its own (maybe the same)

    chosen = first[0]
    address = lab.ip(chosen)
    kubectl(lab.kubeconfig, "-n", NS, "patch", "pod", chosen, "--type=merge",
            "-p", '{"metadata": {"finalizers": ["ciliary.io/e2e-hold"]}}')  # fmt: skip
    try:
        kubectl(lab.kubeconfig, "-n", NS, "delete", "pod", chosen, "--wait=false")
        wait_for(
            f"{chosen} terminating in the node's maps",
            lambda: lab.backends("sticky").get(address) == "terminating",
            60,
        )
        again = lab.gets("client", "sticky", 20)
        assert chosen not in again and len(set(again)) == 1, (chosen, again)
    finally:
        kubectl(lab.kubeconfig, "-n", NS, "patch", "pod", chosen, "--type=merge",
                "-p", '{"metadata": {"finalizers": null}}')  # fmt: skip
