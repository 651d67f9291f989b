"""Socket-LB in a lab (``spec.socketLB.enabled``: each agent's bpf_sock.c on its node's
cgroup, which holds that node's pod processes, ``lab exec`` included): a client pod's TCP
connect() to a ClusterIP reaches the backend, the server sees the client's own
address and the client's getpeername() says ClusterIP:80; an unconnected UDP sendto() to the
ClusterIP is answered from the ClusterIP (recvfrom). The node's conntrack table proves it
was the socket that was translated, not the packets: the connections' entries name the backend
and its target port, carry no rev-NAT index, and no service entry (to the ClusterIP) exists.
(The tc-level LB with ``--bpf-lb-sock=false``, the lab's default, is test_lab_services'.)"""

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

pytestmark = pytest.mark.timeout(240)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  socketLB: {{enabled: true}}
  nodes:
  - name: {n1}
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
metadata: {{name: web, labels: {{app: web}}}}
spec:
  nodeName: {n1}
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "8080"]
  - name: echo
    command: [ciliary, workload, echo-server, --udp-port, "5353"]
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: echo, port: 53, targetPort: 5353, protocol: UDP}
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
        addr = manager.find_pod(manager.record(self.name), pod).ipv4
        assert addr is not None, pod
        return addr.partition("/")[0]

    def cli(self, node: str, *argv: str) -> Any:
        res = subprocess.run(
            [CILIARY, "--node", node, *argv, "-o", "json"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, (argv, res.stdout, res.stderr)
        return json.loads(res.stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SockLab]:
    name, nodes = unique("sock"), [unique("n")]  # one node: the translation is the client's
    path = tmp_path_factory.mktemp("socketlb") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=nodes[0]))
    with kube_lab(path, name, nodes) as kubeconfig:
        kubectl(kubeconfig, "apply", "-f", "-", stdin=SERVICE)
        yield SockLab(name, nodes, kubeconfig)


def test_connect_and_sendmsg_are_translated_in_the_socket(lab: SockLab) -> None:
    vip = str(get_json(lab.kubeconfig, "service", "web")["spec"]["clusterIP"])
    client, backend = lab.ip("client"), lab.ip("web")

    def programmed() -> bool:
        return any(
            e["service_address"] == vip and e["slot"] > 0 and e["backend_address"] == backend
            for e in lab.cli(lab.nodes[0], "bpf", "lb", "list")
        )

    wait_for("the Service in the node's maps", programmed, 30)
    res = manager.run_in_pod("default/client", [sys.executable, "-c", CLIENT, vip], name=lab.name)
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
