"""Hubble in a whole lab, as a user meets it: real pod traffic allowed and denied by a real
policy in the kernel, read back with ``ciliary observe`` (hubble's flags and output forms), with a
gRPC client generated from our protos against a node and against the lab's relay, scraped by a
real Prometheus inside a node's netns, and a node going away under the relay.

Two nodes: node A runs the client, an intruder and the server (policy: only app=client may reach
the server on TCP/80); node B runs one pod so that the relay has two peers.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf import struct_pb2 as _struct_pb2  # noqa: F401 - flow extensions' type
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.lab import manager
from ciliary.lab.certs import LabCA, node_server_name
from tests.e2e.conftest import CILIARY, assert_no_leftovers, unique
from tests.e2e.prometheus import PrometheusServer

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  hubble:
    export: {{enabled: true}}
  nodes:
  - name: {a}
  - name: {b}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  nodeName: {a}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: intruder, labels: {{app: intruder}}}}
spec:
  nodeName: {a}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec:
  nodeName: {a}
  containers: [{{name: web, command: [ciliary, workload, http-server, --port, "80"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: lonely, labels: {{app: lonely}}}}
spec:
  nodeName: {b}
  containers: [{{name: main, command: [ciliary, workload, http-server, --port, "80"]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server-from-client, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints:
    - matchLabels: {{app: client, k8s:io.kubernetes.pod.namespace: default}}
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
"""


@dataclass
class HubbleLab:
    name: str
    a: str
    b: str
    relay: str

    def observe(self, *args: str, server: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CILIARY, "observe", "--server", server or self.relay, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def observe_json(self, *args: str, server: str | None = None) -> list[flow_pb2.Flow]:
        res = self.observe("-o", "jsonpb", *args, server=server)
        assert res.returncode == 0, res.stderr
        flows = []
        for line in res.stdout.splitlines():
            resp = json_format.Parse(line, observer_pb2.GetFlowsResponse())
            if resp.HasField("flow"):
                flows.append(resp.flow)
        return flows


def _traffic(lab: str, server_ip: str) -> None:
    ok = manager.run_in_pod(
        "default/client", ["ciliary", "workload", "http-get", f"http://{server_ip}/"], name=lab
    )
    assert ok.returncode == 0, ok.stderr
    denied = manager.run_in_pod(
        "default/intruder",
        ["ciliary", "workload", "http-get", "--timeout", "1", f"http://{server_ip}/"],
        name=lab,
    )
    assert denied.returncode != 0


@pytest.fixture(scope="module")
def hlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubbleLab]:
    name, a, b = unique("hub"), unique("na"), unique("nb")
    path = tmp_path_factory.mktemp("hubble") / "lab.yaml"
    path.write_text(LAB.format(lab=name, a=a, b=b))
    try:
        view = manager.up(path)
        assert view.relay is not None and view.relay.alive
        server_ip = next(p.ipv4 for p in view.pods if p.name == "server")
        assert server_ip is not None
        _traffic(name, server_ip)
        yield HubbleLab(name, a, b, view.relay.address)
    finally:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [a, b])
        ps = subprocess.run(
            ["pgrep", "-f", f"ciliary.hubble.relay.*{a}="],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ps.stdout.strip() == "", f"relay still running: {ps.stdout}"


def _wait_flows(hlab: HubbleLab, *args: str, timeout: float = 10.0) -> list[flow_pb2.Flow]:
    deadline = time.monotonic() + timeout
    while True:
        flows = hlab.observe_json(*args)
        if flows or time.monotonic() > deadline:
            return flows
        time.sleep(0.3)


def test_denied_flow_has_verdict_reason_pods_identities_and_policy(hlab: HubbleLab) -> None:
    flows = _wait_flows(hlab, "--namespace", "shop", "--verdict", "DROPPED", "--last", "100")
    assert flows, "no DROPPED flow into shop"
    drop = flows[-1]
    assert drop.verdict == flow_pb2.DROPPED
    assert drop.drop_reason_desc == flow_pb2.POLICY_DENIED
    assert drop.source.pod_name == "intruder" and drop.source.namespace == "default"
    assert drop.destination.pod_name == "server" and drop.destination.namespace == "shop"
    assert "k8s:app=intruder" in drop.source.labels
    assert drop.source.identity >= 256 and drop.destination.identity >= 256
    assert drop.l4.TCP.destination_port == 80 and drop.l4.TCP.flags.SYN
    assert drop.traffic_direction == flow_pb2.INGRESS
    assert drop.node_name.endswith(hlab.a)
    assert drop.IP.ipVersion == flow_pb2.IPv4
    # identities are the agent's: the same number `ciliary endpoint list` would show
    ident = subprocess.run(
        [CILIARY, "--node", hlab.a, "identity", "get", str(drop.source.identity), "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "k8s:app=intruder" in ident.stdout


def test_allowed_flow_names_the_policy_and_compact_output(hlab: HubbleLab) -> None:
    flows = _wait_flows(
        hlab, "--from-pod", "default/client", "--to-pod", "shop/server", "--protocol", "tcp",
        "--verdict", "FORWARDED", "--last", "50",
    )  # fmt: skip
    assert flows
    syn = [f for f in flows if f.l4.TCP.flags.SYN and not f.l4.TCP.flags.ACK]
    assert syn, [f.Summary for f in flows]
    assert any(p.name == "server-from-client" for f in syn for p in f.ingress_allowed_by)
    res = hlab.observe("--pod", "shop/server", "--last", "200", "--print-policy-names")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "default/client" in out and "shop/server:80" in out
    assert "FORWARDED" in out and "DROPPED" in out and "Policy denied" in out
    # the filters of the seeds: --pod limits to the server's flows
    assert "default/lonely" not in out


def test_json_parses_back_and_protocol_filter(hlab: HubbleLab) -> None:
    res = hlab.observe("-o", "json", "--protocol", "tcp", "--last", "20")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines
    for line in lines:
        obj = json.loads(line)
        resp = json_format.Parse(line, observer_pb2.GetFlowsResponse())
        if "flow" in obj:
            assert resp.flow.l4.HasField("TCP")
            # upstream's JSON names (protojson with proto names)
            assert "IP" in obj["flow"] and "l4" in obj["flow"]
    udp = hlab.observe_json("--protocol", "udp", "--last", "20", "--to-pod", "shop/server")
    assert all(f.l4.HasField("UDP") for f in udp)


def test_follow_streams_new_flows(hlab: HubbleLab) -> None:
    with subprocess.Popen(
        [CILIARY, "observe", "--server", hlab.relay, "-f", "--from-pod", "default/client",
         "-o", "jsonpb"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:  # fmt: skip
        _follow_one(hlab, proc)


def _follow_one(hlab: HubbleLab, proc: subprocess.Popen[str]) -> None:
    """``-f`` streams flows that happen after it starts, and only those: a replay of history
    (this module's earlier traffic from the client) fails, as a flow older than the start or one
    not of this test's own connection (a port no other test uses) before it."""
    start = time.time()
    port = 20000 + os.getpid() % 20000
    try:
        server_ip = manager.find_pod(manager.record(hlab.name), "shop/server").ipv4
        argv = ["ciliary", "workload", "tcp-echo", str(server_ip), str(port), "--timeout", "1"]
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        sent_at = 0.0
        got = None
        while got is None and time.monotonic() < deadline:
            if time.monotonic() - sent_at > 2:  # again until the stream is subscribed
                manager.run_in_pod("default/client", argv, name=hlab.name)
                sent_at = time.monotonic()
            if not select.select([proc.stdout], [], [], 0.5)[0]:
                continue
            resp = json_format.Parse(proc.stdout.readline(), observer_pb2.GetFlowsResponse())
            if not resp.HasField("flow"):
                continue
            f = resp.flow
            assert f.time.ToNanoseconds() / 1e9 >= start - 0.5, f"replayed: {f}"
            assert port in (f.l4.TCP.destination_port, f.l4.TCP.source_port), (
                f"a flow of earlier traffic: {f}"
            )
            got = f
        assert got is not None and got.source.pod_name == "client"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target)


def test_grpc_client_talks_to_node_and_relay(hlab: HubbleLab) -> None:
    node_sock = f"unix:///run/ciliary/{hlab.a}/hubble.sock"
    for target in (node_sock, hlab.relay):
        with _channel(target) as ch:
            for service in ("hubble.server.Observer", "observer.Observer"):  # upstream's, ours
                health = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING, service
            stub = observer_pb2_grpc.ObserverStub(ch)
            status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
            assert status.num_flows > 0 and status.max_flows >= 4095
            flows = [
                r.flow
                for r in stub.GetFlows(observer_pb2.GetFlowsRequest(number=10), timeout=10)
                if r.HasField("flow")
            ]
            # the relay passes number to each node (N per node, as upstream's): 2 nodes here
            assert 0 < len(flows) <= (10 if target == node_sock else 20)
            times = [f.time.ToNanoseconds() for f in flows]
            assert times == sorted(times)
    with _channel(hlab.relay) as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)
        status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
        assert status.num_connected_nodes.value == 2
        nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
        assert {n.name.split("/")[-1] for n in nodes} == {hlab.a, hlab.b}
        assert all(n.state == relay_pb2.NODE_CONNECTED for n in nodes)
        ns = stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
        assert {"default", "shop"} <= {n.namespace for n in ns}


def test_status_and_list_nodes_cli(hlab: HubbleLab) -> None:
    res = subprocess.run(
        [CILIARY, "hubble", "status", "--server", hlab.relay],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "Connected Nodes: 2/2" in res.stdout
    res = subprocess.run(
        [CILIARY, "hubble", "list", "nodes", "--server", hlab.relay],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert hlab.a in res.stdout and hlab.b in res.stdout and "Connected" in res.stdout


def test_prometheus_scrapes_hubble_and_agent_metrics(hlab: HubbleLab) -> None:
    netns = manager.record(hlab.name).nodes[0].netns
    with PrometheusServer(["127.0.0.1:9965", "127.0.0.1:9962"], netns=netns) as prom:
        drops = prom.value('sum(hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"})')
        assert drops >= 1
        forwarded = prom.value('sum(hubble_flows_processed_total{verdict="FORWARDED"})')
        assert forwarded >= 1
        assert prom.value('sum(hubble_tcp_flags_total{flag="SYN"})') >= 1
        assert prom.value('sum(hubble_policy_verdicts_total{action="dropped"})') >= 1
        ready = prom.value('cilium_endpoint_state{endpoint_state="ready"}')
        assert ready >= 3  # client, intruder, server on node A
        assert prom.value("cilium_policy") >= 1


def test_export_file_holds_flows(hlab: HubbleLab) -> None:
    path = Path(f"/run/ciliary/{hlab.a}/hubble/events.log")
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = path.read_text().splitlines()
    events = [json_format.Parse(ln, observer_pb2.ExportEvent()) for ln in lines]
    assert any(e.HasField("flow") and e.flow.verdict == flow_pb2.DROPPED for e in events)


def test_node_going_away_is_reported_not_fatal(hlab: HubbleLab) -> None:
    rec = manager.record(hlab.name)
    nrec = next(n for n in rec.nodes if n.name == hlab.b)
    subprocess.run(["kill", "-9", str(nrec.agent_pid)], check=True)
    try:
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            with _channel(hlab.relay) as ch:
                status = observer_pb2_grpc.ObserverStub(ch).ServerStatus(
                    observer_pb2.ServerStatusRequest(), timeout=5
                )
            if status.num_unavailable_nodes.value == 1:
                break
            time.sleep(0.5)
        assert status is not None and status.num_unavailable_nodes.value == 1
        assert any(hlab.b in n for n in status.unavailable_nodes)
        flows = hlab.observe_json("--namespace", "shop", "--last", "5")
        assert flows and all(f.node_name.endswith(hlab.a) for f in flows)
    finally:
        manager.restart_agent(hlab.b, name=hlab.name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with _channel(hlab.relay) as ch:
            status = observer_pb2_grpc.ObserverStub(ch).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=5
            )
        if status.num_connected_nodes.value == 2:
            return
        time.sleep(0.5)
    raise AssertionError(f"node {hlab.b} not reconnected: {status}")


def test_node_serves_hubble_on_4244_inside_its_netns(hlab: HubbleLab) -> None:
    """As on a real node, :4244 is the node's own: reachable from its network namespace, with
    TLS and a client certificate of the lab's CA (here the relay's)."""
    node = manager.record(hlab.name).nodes[0]
    ca = LabCA(manager.relay_address_file(hlab.name).parent, cluster=hlab.name)
    client = ca.relay_client()
    res = subprocess.run(
        ["ip", "netns", "exec", node.netns, CILIARY, "hubble", "status",
         "--server", "tls://127.0.0.1:4244", "--tls-ca-cert-files", str(ca.ca_cert),
         "--tls-client-cert-file", str(client.cert), "--tls-client-key-file", str(client.key),
         "--tls-server-name", node_server_name(node.name, hlab.name)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Healthcheck (via 127.0.0.1:4244): Ok" in res.stdout
    assert "Current/Max Flows" in res.stdout


def test_flows_carry_the_lab_cluster_name_and_cluster_filter_matches(hlab: HubbleLab) -> None:
    """The lab is the cluster: its agents run with ``--cluster-name <lab>``, so pods' endpoints
    name it, ``--cluster`` selects by it, and ``list namespaces`` says the same cluster."""
    flows = _wait_flows(hlab, "--cluster", hlab.name, "--namespace", "shop", "--last", "20")
    assert flows, "--cluster <lab name> matched nothing"
    for f in flows:
        pods = [e for e in (f.source, f.destination) if e.pod_name]
        assert pods and all(e.cluster_name == hlab.name for e in pods), f
    assert hlab.observe_json("--cluster", "no-such-cluster", "--last", "20") == []
    res = subprocess.run(
        [CILIARY, "hubble", "list", "namespaces", "-o", "json", "--server", hlab.relay],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert {"cluster": hlab.name, "namespace": "shop"} in json.loads(res.stdout)


def test_allowed_policy_verdict_is_not_a_reply(hlab: HubbleLab) -> None:
    """Upstream: an allowed policy verdict has ``is_reply`` false (present), so compact output
    prints ``->`` (``<>`` is for flows whose direction is unknown)."""
    args = ("--type", "policy-verdict", "--from-pod", "default/client", "--to-pod", "shop/server",
            "--verdict", "FORWARDED", "--last", "20")  # fmt: skip
    flows = _wait_flows(hlab, *args)
    assert flows
    assert all(f.HasField("is_reply") and not f.is_reply.value for f in flows)
    res = hlab.observe(*args)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if "policy-verdict" in ln]
    assert lines and all(" -> " in ln and " <> " not in ln for ln in lines), lines


def test_cel_expression_through_relay_and_node(hlab: HubbleLab) -> None:
    """``--cel-expression`` with upstream's ``_flow`` variable: checked by the relay, evaluated
    by the nodes, and an invalid expression is a clear InvalidArgument."""
    expr = "_flow.verdict == Verdict.DROPPED && _flow.destination.namespace == 'shop'"
    for server in (hlab.relay, f"unix:///run/ciliary/{hlab.a}/hubble.sock"):
        flows = hlab.observe_json("--cel-expression", expr, "--last", "50", server=server)
        assert flows, server
        assert all(
            f.verdict == flow_pb2.DROPPED and f.destination.namespace == "shop" for f in flows
        )
    res = hlab.observe("--cel-expression", "_flow.verdict ==", "--last", "1")
    assert res.returncode != 0
    assert "InvalidArgument" in res.stderr and "error compiling CEL expression" in res.stderr


def test_last_n_through_the_relay_is_n_per_node(hlab: HubbleLab) -> None:
    """As upstream's relay: ``--last N`` asks every node for its last N, merged in time order."""
    server_ip = manager.find_pod(manager.record(hlab.name), "shop/server").ipv4
    across = manager.run_in_pod(  # node B's pod to node A's server: flows on both nodes
        "default/lonely",
        ["ciliary", "workload", "http-get", "--timeout", "1", f"http://{server_ip}/"],
        name=hlab.name,
    )
    assert across.returncode != 0  # denied by the server's policy, seen on both nodes
    deadline = time.monotonic() + 15
    while True:
        flows = hlab.observe_json("--last", "1")
        nodes = sorted(f.node_name.split("/")[-1] for f in flows)
        if nodes == sorted([hlab.a, hlab.b]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert nodes == sorted([hlab.a, hlab.b])  # one per node, not one for the cluster
    times = [f.time.ToNanoseconds() for f in flows]
    assert times == sorted(times)
    first = hlab.observe_json("--first", "1")
    assert sorted(f.node_name.split("/")[-1] for f in first) == sorted([hlab.a, hlab.b])
