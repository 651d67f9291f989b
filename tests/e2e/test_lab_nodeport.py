"""NodePort and externalIPs from a world host (the kube-proxy replacement's external half, SNAT
mode: bpf_host.c cil_from_netdev, bpf/lib/nodeport.h) in a 2-node lab per routing mode (tunnel,
Cilium's default, and native with autoDirectNodeRoutes: the forwarded request is routed with the
FIB instead of tunnelled), with the only backend on node 1:

- a dual-stack NodePort Service (externalTrafficPolicy Cluster) answers on both nodes' IPv4 and
  IPv6 addresses: node 1 delivers to its local backend keeping the client's address; node 2,
  which has no backend, SNATs the request to its own IP and sends it to node 1, and translates
  the reply back (the client sees node 2's IP and nodePort answer: a TCP exchange that completes
  proves it);
- with externalTrafficPolicy Local, node 1 answers with the world host's address preserved and
  node 2 (no local backend: a frontend without backends) drops the connection;
- an externalIP (routed to node 1 by the world host) reaches the backend likewise, and so does a
  LoadBalancer's status.loadBalancer.ingress IP (set with kubectl, routed to node 2: SNAT);
- a pod of node 2 reaches node 1's IP:nodePort (the reply reverse-translated before the tunnel);
- Hubble names the Service of a NodePort connection on both nodes (the forwarding node's traces
  of the request and its reply, the backend node's to-endpoint), within monitor aggregation
  (medium in the tunnel lab, none in the native one);
- the backend reaches itself through the Service's ClusterIP over IPv4 and IPv6 (hairpin: from
  the service loopback address).
The labs are test_lab_services's, one per mode (shared: ~30 s each with lab up on an idle
machine), with a world host; this module's pods and Services are in a namespace of their own.
The labs pin socket-LB off: a pod's connections must take the tc path checked here."""

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
from tests.e2e.test_lab_services import AGGREGATION, write_lab
from tests.e2e.test_lab_services import SHARES_LAB as SERVICES_LAB
from tests.kubectl import get_json, kubectl, wait_for

pytestmark = pytest.mark.timeout(300)

# test_lab_services's labs, shared (one lab up and down fewer a run per mode): two nodes, a world
# host, socket-LB off, monitor aggregation medium in tunnel mode and none in native mode (its
# AGGREGATION). Its pods (a client, other, web-a/b/c app=web) and its Service web are in default;
# this module's pods and Services are in NS, which their selectors cannot leave.
SHARES_LAB = SERVICES_LAB
NS = "nodeport"

PODS = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-a, namespace: {ns}, labels: {{app: web}}}}
spec:
  nodeName: {n1}
  containers:
  - name: web
    command: [ciliary, workload, http-server, --port, "8080"]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  nodeName: {n2}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
"""

EXTERNAL_IP = "203.0.113.10"  # outside every lab network: the world host routes it to node 1
LB_IP = "203.0.113.11"  # a LoadBalancer's ingress IP, routed to node 2 (no backend there)

SERVICES = f"""\
apiVersion: v1
kind: Service
metadata: {{name: web-np}}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-local}}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-ext}}
spec:
  selector: {{app: web}}
  externalIPs: [{EXTERNAL_IP}]
  ports: [{{name: http, port: 8000, targetPort: 8080, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-lb}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{name: http, port: 8001, targetPort: 8080, protocol: TCP}}]
"""
LB_STATUS = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}})

# One GET; prints the answer's JSON ({"pod", "client"}) or {"error": ...}.
GET = """\
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    host = f"[{sys.argv[1]}]" if ":" in sys.argv[1] else sys.argv[1]
    with opener.open(f"http://{host}:{sys.argv[2]}/", timeout=float(sys.argv[3])) as r:
        print(json.dumps(json.load(r)))
except OSError as err:
    print(json.dumps({"error": str(err)}))
"""


@dataclass(frozen=True)
class NPLab:
    name: str
    mode: str
    aggregation: str
    nodes: list[str]
    node_ips: list[str]
    node_ips6: list[str]
    world_netns: str
    world_ip: str
    world_ip6: str
    kubeconfig: str

    def node_port(self, service: str) -> int:
        svc = get_json(self.kubeconfig, "-n", NS, "service", service)
        return int(svc["spec"]["ports"][0]["nodePort"])

    def get(self, address: str, port: int, timeout: float = 3) -> dict[str, Any]:
        res = subprocess.run(
            ["ip", "netns", "exec", self.world_netns, sys.executable, "-c", GET, address,
             str(port), str(timeout)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        out: dict[str, Any] = json.loads(res.stdout)
        return out

    def frontend(self, node: str, address: str, port: int) -> dict[str, Any] | None:
        res = subprocess.run(
            [CILIARY, "--node", node, "service", "list", "-o", "json"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        listed: list[dict[str, Any]] = json.loads(res.stdout)
        return next((f for f in listed if (f["address"], f["port"]) == (address, port)), None)


@pytest.fixture(scope="module", params=["tunnel", "native"])
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[NPLab]:
    # Monitor aggregation per lab (the NodePort traces honour it): Cilium's default in tunnel
    # mode, every packet reported (and the from-* points) in native mode.
    mode = str(request.param)
    aggregation = AGGREGATION[mode]
    write = functools.partial(write_lab, tmp_path_factory, mode)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write, variant=mode) as made:
        name, nodes, kubeconfig = made
        pods = tmp_path_factory.mktemp("nodeport") / "pods.yaml"
        pods.write_text(PODS.format(ns=NS, n1=nodes[0], n2=nodes[1]))
        manager.apply(pods, name=name)
        rec = manager.record(name)
        ips, ips6 = [], []
        for node in nodes:
            nrec = next(n for n in rec.nodes if n.name == node)
            assert nrec.node_ipv4 is not None and nrec.node_ipv6 is not None
            ips.append(nrec.node_ipv4)
            ips6.append(nrec.node_ipv6)
        (world,) = rec.externals
        netns = world.netns
        addrs = subprocess.run(
            ["ip", "netns", "exec", netns, "ip", "-o", "addr", "show", "scope", "global"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()  # fmt: skip
        world_ip = addrs[addrs.index("inet") + 1].partition("/")[0]
        world_ip6 = addrs[addrs.index("inet6") + 1].partition("/")[0]
        # the external IP and the LoadBalancer IP are routed to a node, as a router would
        for address, via in ((EXTERNAL_IP, ips[0]), (LB_IP, ips[1])):
            subprocess.run(
                ["ip", "netns", "exec", netns, "ip", "route", "add", f"{address}/32", "via", via],
                check=True, timeout=30,
            )  # fmt: skip
        kubectl(kubeconfig, "apply", "-n", NS, "-f", "-", stdin=SERVICES)
        # no load-balancer controller in the lab: its status as one would write it
        kubectl(kubeconfig, "patch", "-n", NS, "service", "web-lb", "--subresource=status",
                "--type=merge", "-p", LB_STATUS)  # fmt: skip
        yield NPLab(
            name, mode, aggregation, nodes, ips, ips6, netns, world_ip, world_ip6, kubeconfig
        )


def _wait_frontend(lab: NPLab, node: str, address: str, port: int, backends: int) -> None:
    def ready() -> bool:
        f = lab.frontend(node, address, port)
        return f is not None and len(f["backends"]) == backends

    wait_for(f"{address}:{port} with {backends} backends on {node}", ready, 30)


def _host(client: str) -> str:
    """The address of an ``ip:port`` / ``[ip]:port`` the server saw."""
    return client.rpartition(":")[0].strip("[]")


@pytest.mark.parametrize("family", [4, 6])
def test_nodeport_answers_on_every_node_from_a_world_host(lab: NPLab, family: int) -> None:
    port = lab.node_port("web-np")
    ips, world = (lab.node_ips, lab.world_ip) if family == 4 else (lab.node_ips6, lab.world_ip6)
    for node, ip in zip(lab.nodes, ips, strict=True):
        _wait_frontend(lab, node, ip, port, 1)
    listed = lab.frontend(lab.nodes[1], ips[1], port)
    assert listed is not None and listed["type"] == "NodePort", listed
    local = lab.get(ips[0], port)
    assert local.get("pod") == "web-a", local
    assert _host(local["client"]) == world  # a local backend: no SNAT
    remote = lab.get(ips[1], port)  # node 2 has no backend: SNAT, tunnel to node 1
    assert remote.get("pod") == "web-a", remote
    assert _host(remote["client"]) == ips[1]


def test_external_traffic_policy_local_refuses_where_no_backend_runs(lab: NPLab) -> None:
    port = lab.node_port("web-local")
    _wait_frontend(lab, lab.nodes[0], lab.node_ips[0], port, 1)
    _wait_frontend(lab, lab.nodes[1], lab.node_ips[1], port, 0)
    here = lab.get(lab.node_ips[0], port)
    assert here.get("pod") == "web-a", here
    assert _host(here["client"]) == lab.world_ip  # the client's address preserved
    there = lab.get(lab.node_ips[1], port, timeout=1)
    assert "error" in there, there


def test_an_external_ip_reaches_the_backend(lab: NPLab) -> None:
    _wait_frontend(lab, lab.nodes[0], EXTERNAL_IP, 8000, 1)
    listed = lab.frontend(lab.nodes[0], EXTERNAL_IP, 8000)
    assert listed is not None and listed["type"] == "ExternalIPs", listed
    got = lab.get(EXTERNAL_IP, 8000)
    assert got.get("pod") == "web-a", got
    assert _host(got["client"]) == lab.world_ip


def test_a_load_balancer_ingress_ip_reaches_the_backend_through_another_node(lab: NPLab) -> None:
    _wait_frontend(lab, lab.nodes[1], LB_IP, 8001, 1)
    listed = lab.frontend(lab.nodes[1], LB_IP, 8001)
    assert listed is not None and listed["type"] == "LoadBalancer", listed
    got = lab.get(LB_IP, 8001)  # node 2 has no backend: SNAT to its IP, tunnel to node 1
    assert got.get("pod") == "web-a", got
    assert _host(got["client"]) == lab.node_ips[1]


def test_load_balancer_source_ranges_admit_only_their_clients(lab: NPLab) -> None:
    """``spec.loadBalancerSourceRanges``: a world host outside them is dropped where the LB IP
    arrives (node 2; Hubble names upstream's reason), one inside reaches the backend; the same
    Service's NodePort stays open (as upstream's default); cleared, the LB IP is open again."""

    def ranges(cidrs: list[str]) -> None:
        body = json.dumps({"spec": {"loadBalancerSourceRanges": cidrs}})
        kubectl(lab.kubeconfig, "patch", "-n", NS, "service", "web-lb", "--type=merge", "-p", body)

    _wait_frontend(lab, lab.nodes[1], LB_IP, 8001, 1)
    try:
        ranges(["198.18.0.0/15"])  # not the world host's
        wait_for(
            "the LB IP refusing the world host", lambda: "error" in lab.get(LB_IP, 8001, 1), 20
        )

        def dropped() -> list[dict[str, Any]]:
            return [
                f
                for f in _observe(lab, lab.nodes[1], "--verdict", "DROPPED")
                if f.get("drop_reason_desc") == "DENIED_BY_LB_SRC_RANGE_CHECK"
                and f["IP"]["source"] == lab.world_ip
            ]

        wait_for("the source-range drop in node 2's Hubble", dropped, 20)
        port = lab.node_port("web-lb")
        assert lab.get(lab.node_ips[1], port).get("pod") == "web-a"  # its NodePort: open
        ranges([f"{lab.world_ip}/32", "198.18.0.0/15"])
        wait_for(
            "the LB IP admitting the world host",
            lambda: lab.get(LB_IP, 8001, 1).get("pod") == "web-a",
            20,
        )
    finally:
        ranges([])
    wait_for("the LB IP open again", lambda: lab.get(LB_IP, 8001, 1).get("pod") == "web-a", 20)


def test_a_pod_of_another_node_reaches_the_nodeport(lab: NPLab) -> None:
    """A pod on node 2 to node 1's IP:nodePort: translated by node 1 (the frontend is node 1's),
    delivered to its local backend; the reply, tunnelled back to the pod's node, leaves node 1
    with the frontend as source (bpf_lxc reverse-translates before the tunnel)."""
    port = lab.node_port("web-np")
    _wait_frontend(lab, lab.nodes[0], lab.node_ips[0], port, 1)
    res = manager.run_in_pod(
        f"{NS}/client", [sys.executable, "-c", GET, lab.node_ips[0], str(port), "3"],
        name=lab.name, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got.get("pod") == "web-a", got


def _observe(lab: NPLab, node: str, *flags: str) -> list[dict[str, Any]]:
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
    res = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock", "--last",
         "1000", "-o", "jsonpb", *flags],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


WEB_NP = {"name": "web-np", "namespace": NS}


def _world(endpoint: dict[str, Any]) -> bool:
    return any(label.startswith("reserved:world") for label in endpoint.get("labels", ()))


def _bare(f: dict[str, Any]) -> bool:
    """A TCP packet that neither opens nor closes its connection (a bare ACK, data)."""
    return not {"SYN", "FIN", "RST"} & set(f["l4"]["TCP"].get("flags", {}))


def test_hubble_names_the_service_of_a_nodeport_connection(lab: NPLab) -> None:
    """Node 2 forwards a world host's connection to node 1's backend: its request is traced
    (to-overlay, or to-network in native mode) from the world host, world identity, to the
    backend, with destination_service; the reply, back out to the client from the frontend, with
    source_service. Monitor aggregation: at medium only the packets that open or close the
    connection, at none every packet and the request as received (from-network, to the node's
    IP and nodePort). Node 1, delivering to its local backend, names the Service too."""
    port = lab.node_port("web-np")
    _wait_frontend(lab, lab.nodes[1], lab.node_ips[1], port, 1)
    assert lab.get(lab.node_ips[1], port).get("pod") == "web-a"
    point = "TO_OVERLAY" if lab.mode == "tunnel" else "TO_NETWORK"
    medium = lab.aggregation == "medium"

    def from_world() -> list[dict[str, Any]]:
        return [f for f in _observe(lab, lab.nodes[1], "--to-service", f"{NS}/web-np")
                if f["IP"]["source"] == lab.world_ip]  # fmt: skip

    def requests() -> list[dict[str, Any]]:
        sent = [f for f in from_world() if f["trace_observation_point"] == point]
        return sent if sent and (medium or any(map(_bare, sent))) else []

    flows = wait_for("node 2's flows to web-np", requests, 20)
    for f in flows:
        assert f["destination_service"] == WEB_NP, f
        assert _world(f["source"]), f
        assert f["destination"].get("pod_name") == "web-a", f
        assert not (medium and _bare(f)), f  # aggregated: no bare ACKs
    assert any(f["l4"]["TCP"]["flags"].get("SYN") for f in flows), flows  # the opening packet
    received = [f for f in from_world() if f["trace_observation_point"] == "FROM_NETWORK"]
    assert bool(received) != medium, received  # a from-* point: at aggregation none only
    for f in received:
        assert f["IP"]["destination"] == lab.node_ips[1], f
        assert f["destination_service"] == WEB_NP, f
    replies = _observe(lab, lab.nodes[1], "--from-service", f"{NS}/web-np")
    mine = [f for f in replies if f["IP"]["destination"] == lab.world_ip]
    assert mine, replies
    for f in mine:
        assert f["source_service"] == WEB_NP and f["IP"]["source"] == lab.node_ips[1], f
        assert f["trace_observation_point"] == "TO_NETWORK", f

    assert lab.get(lab.node_ips[0], port).get("pod") == "web-a"

    def delivered() -> list[dict[str, Any]]:
        return [f for f in _observe(lab, lab.nodes[0], "--to-service", f"{NS}/web-np")
                if f["IP"]["source"] == lab.world_ip]  # fmt: skip

    local = wait_for("node 1's to-endpoint flows to web-np", delivered, 20)
    assert any(f["trace_observation_point"] == "TO_ENDPOINT" and _world(f["source"])
               for f in local), local  # fmt: skip


LOOPBACK = {4: "169.254.42.1", 6: "fe80::1"}  # upstream's --ipv{4,6}-service-loopback-address


@pytest.mark.parametrize("family", [4, 6])
def test_a_backend_reaches_itself_through_its_cluster_ip(lab: NPLab, family: int) -> None:
    """Hairpin on the tc path (socket-LB is off here): web-a, web-np's only backend, GETs
    web-np's ClusterIP and is given itself; the request arrives from the service loopback
    address (the kernel refuses a packet from its own address on eth0, and would answer it over
    lo), whose reply bpf_lxc turns back to the pod, from the VIP."""
    ips = get_json(lab.kubeconfig, "-n", NS, "service", "web-np")["spec"]["clusterIPs"]
    vip = next(ip for ip in ips if (":" in ip) == (family == 6))
    _wait_frontend(lab, lab.nodes[0], vip, 80, 1)
    res = manager.run_in_pod(
        f"{NS}/web-a", [sys.executable, "-c", GET, vip, "80", "3"], name=lab.name, timeout=30
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got.get("pod") == "web-a", got
    assert _host(got["client"]).partition("%")[0] == LOOPBACK[family], got
