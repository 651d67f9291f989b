"""Pods of two nodes talking through the VXLAN overlay, with real agents, packets and kernel.

Two scratch node namespaces joined by a veth (the underlay, addresses inside the namespaces
only), a standalone agent in each in tunnel mode (the default routing mode), a client and an
``other`` pod on node A, a server pod on node B. The test plays the node manager and the
cluster-wide identity allocator: it writes the remote ipcache entries (with the tunnel
endpoint) through the pinned map and gives both agents the same identity table before they
start, so a number means the same labels on both nodes.

Node B knows A's pods only as A's pod CIDR (world identity, tunnel endpoint A), as before the
node manager has seen their CiliumEndpoints: a policy on B that allows only the client passes
the client and drops ``other`` only because B takes the sender's identity from the VNI.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_network
from pathlib import Path

import grpc
import pytest

from ciliary.agent.config import TUNNEL_OVERHEAD
from ciliary.core.defaults import ENVOY_PIDFILE, ENVOY_STATE
from ciliary.core.flow import MIN_ALLOCATED_IDENTITY, ObservationPoint, ReservedIdentity, Verdict
from ciliary.datapath.libbpf import Map
from ciliary.datapath.linux.link import TUNNEL_DEVICE
from ciliary.datapath.loader import FROM_OVERLAY, remove_pins
from ciliary.datapath.maps.config import ROUTING_MODE_NATIVE, ROUTING_MODE_TUNNEL, ConfigMap
from ciliary.datapath.maps.ipcache import IPCACHE_F_REMOTE, IPCacheMap
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.k8s.podidentity import security_labels
from ciliary.processes import stop_recorded

from ..cni.conftest import (
    NETNS_DIR,
    PIN_ROOT,
    RUN_ROOT,
    VENV_BIN,
    NodeAgent,
    in_netns,
    netns_add,
    netns_del,
    run_plugin,
    sh,
    tcx_names,
    unique,
)
from ..cni.l7proxy import CLIENT, LISTENER, netns_exec, point_to, serve, stop

pytestmark = [pytest.mark.timeout(180), pytest.mark.privileged]

UNDERLAY = ("172.31.250.1", "172.31.250.2")
PORT_TCP, PORT_UDP = 7000, 7001
PROXY_TCP_PORT, PROXY_UDP_PORT = 10911, 10912  # the stand-in proxy's, in node A's netns
NAMESPACE = "default"
APPS = ("client", "other", "server")
IDENTITY = {app: MIN_ALLOCATED_IDENTITY + i for i, app in enumerate(APPS)}
"""The cluster's identities, as CRD allocation would number them on every node."""
POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
"""


@dataclass
class Pod:
    name: str
    netns: str
    container_id: str
    v4: str
    v6: str
    node: NodeAgent


@dataclass
class Cluster:
    a: NodeAgent
    b: NodeAgent
    client: Pod
    other: Pod
    server: Pod


def _agent(log_dir: Path, suffix: str, side: int) -> NodeAgent:
    return NodeAgent(
        node=f"ov{suffix}{side}",
        netns=f"ciov-{suffix}{side}",
        ipv4_range=f"10.231.{side}.0/24",
        ipv6_range=f"fd00:10:231:{side}::/120",
        log=log_dir / f"agent-ov{suffix}{side}.log",
        # every packet reported: from-overlay is a point only aggregation "none" reports
        extra_args=("--routing-mode", "tunnel", "--ipv4-node", UNDERLAY[side - 1],
                    "--devices", "eth0", "--monitor-aggregation", "none"),
    )  # fmt: skip


def _underlay(a: NodeAgent, b: NodeAgent) -> None:
    """One veth between the node namespaces, ``eth0`` on both ends (made in A, its peer
    created straight into B: nothing ever exists in the root netns)."""
    sh("ip", "-n", a.netns, "link", "add", "eth0", "type", "veth",
       "peer", "name", "eth0", "netns", b.netns)  # fmt: skip
    for agent, addr in ((a, UNDERLAY[0]), (b, UNDERLAY[1])):
        sh("ip", "-n", agent.netns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", agent.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", agent.netns, "link", "set", "lo", "up")


def _seed_identities(agent: NodeAgent) -> None:
    state = RUN_ROOT / agent.node
    state.mkdir(parents=True, mode=0o700)
    table = [
        {"id": number, "labels": list(security_labels(NAMESPACE, {"app": app}))}
        for app, number in IDENTITY.items()
    ]
    (state / "identities.json").write_text(json.dumps(table))


def _add_pod(agent: NodeAgent, app: str, made: list[Pod]) -> Pod:
    name = unique("ciovp-")
    path = str(netns_add(name))
    cid = unique("c")
    conf = {"cniVersion": "1.1.0", "name": "ciliary", "type": "ciliary-cni", "node": agent.node,
            "args": {"cni": {"labels": [{"key": "app", "value": app}]}}}  # fmt: skip
    run = run_plugin(
        "ADD", conf, container_id=cid, netns=path,
        args=f"K8S_POD_NAME={app};K8S_POD_NAMESPACE={NAMESPACE}",
    )  # fmt: skip
    if run.rc != 0:
        netns_del(name)
    assert run.rc == 0, str(run)
    ips = {ip["address"].split("/")[0] for ip in run.json["ips"]}
    v4 = next(a for a in ips if ":" not in a)
    v6 = next(a for a in ips if ":" in a)
    pod = Pod(app, name, cid, v4, v6, agent)
    made.append(pod)
    return pod


def _del_pod(pod: Pod) -> None:
    conf = {"cniVersion": "1.1.0", "name": "ciliary", "type": "ciliary-cni", "node": pod.node.node}
    run_plugin("DEL", conf, container_id=pod.container_id, netns=str(NETNS_DIR / pod.netns))
    netns_del(pod.netns)


def _ipcache(agent: NodeAgent) -> IPCacheMap:
    return IPCacheMap(Map.from_pin(PIN_ROOT / agent.node / "ciliary_ipcache"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("overlay")
    suffix = secrets.token_hex(2)
    a, b = _agent(log_dir, suffix, 1), _agent(log_dir, suffix, 2)
    pods: list[Pod] = []
    server: subprocess.Popen[bytes] | None = None
    try:
        for agent in (a, b):
            netns_add(agent.netns)
            _seed_identities(agent)
        _underlay(a, b)
        a.start()
        b.start()
        client = _add_pod(a, "client", pods)
        other = _add_pod(a, "other", pods)
        srv = _add_pod(b, "server", pods)
        # node A: the server's addresses (its CiliumEndpoint) and B's pod CIDRs, via B
        tunnel_b, tunnel_a = IPv4Address(UNDERLAY[1]), IPv4Address(UNDERLAY[0])
        cache_a, cache_b = _ipcache(a), _ipcache(b)
        for addr in (srv.v4, srv.v6):
            cache_a.upsert(ip_network(addr), IDENTITY["server"], tunnel_b, flags=IPCACHE_F_REMOTE)
        for cidr, world in ((b.ipv4_range, ReservedIdentity.WORLD_IPV4),
                            (b.ipv6_range, ReservedIdentity.WORLD_IPV6)):  # fmt: skip
            cache_a.upsert(ip_network(cidr), world, tunnel_b, flags=IPCACHE_F_REMOTE)
        # node B: A's pod CIDRs only (world, via A): the sender's identity can come only from
        # the VNI
        for cidr, world in ((a.ipv4_range, ReservedIdentity.WORLD_IPV4),
                            (a.ipv6_range, ReservedIdentity.WORLD_IPV6)):  # fmt: skip
            cache_b.upsert(ip_network(cidr), world, tunnel_a, flags=IPCACHE_F_REMOTE)
        cache_a.map.close()
        cache_b.map.close()
        server = subprocess.Popen(
            ["ip", "netns", "exec", srv.netns, str(VENV_BIN / "ciliary"), "workload",
             "echo-server", "--tcp-port", str(PORT_TCP), "--udp-port", str(PORT_UDP)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_listening(srv)
        yield Cluster(a, b, client, other, srv)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        for pod in pods:
            _del_pod(pod)
        for agent in (a, b):
            agent.stop()
            # the node's Envoy (an L7 test's) outlives its agent: ended by its pid file
            stop_recorded(RUN_ROOT / agent.node / ENVOY_STATE / ENVOY_PIDFILE)
            netns_del(agent.netns)
            shutil.rmtree(RUN_ROOT / agent.node, ignore_errors=True)
            remove_pins(PIN_ROOT / agent.node)


def _wait_listening(pod: Pod) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = in_netns(pod.netns, "ss", "-Hltn", f"sport = :{PORT_TCP}").stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise AssertionError("echo server did not listen")


def _run_in(pod: Pod, *argv: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", pod.netns, *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _workload(pod: Pod, *argv: str) -> subprocess.CompletedProcess[str]:
    return _run_in(pod, str(VENV_BIN / "ciliary"), "workload", *argv)


def _flows(agent: NodeAgent) -> list[flow_pb2.Flow]:
    with grpc.insecure_channel(f"unix://{RUN_ROOT / agent.node / 'hubble.sock'}") as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        req = observer_pb2.GetFlowsRequest(number=4095)
        return [r.flow for r in stub.GetFlows(req, timeout=10) if r.HasField("flow")]


def _wait_flow(agent: NodeAgent, what: str, match: object) -> flow_pb2.Flow:
    deadline = time.monotonic() + 10
    while True:
        flows = _flows(agent)
        found = [f for f in flows if match(f)]  # type: ignore[operator]
        if found:
            return found[-1]
        if time.monotonic() > deadline:
            seen = "\n".join(
                f"{f.IP.source} -> {f.IP.destination} {Verdict(f.verdict).name} "
                f"obs={f.trace_observation_point} type={f.event_type.type} "
                f"ids={f.source.identity}->{f.destination.identity}"
                for f in flows[-30:]
            )
            raise AssertionError(f"no flow on {agent.node}: {what}; last flows:\n{seen}")
        time.sleep(0.1)


def _link_index(agent: NodeAgent, ifname: str) -> int:
    out = in_netns(agent.netns, "ip", "-j", "link", "show", "dev", ifname).stdout
    return int(json.loads(out)[0]["ifindex"])


# --------------------------------------------------------------------------- tests


def test_nodes_have_the_tunnel_device_and_pods_its_mtu(cluster: Cluster) -> None:
    for agent in (cluster.a, cluster.b):
        out = in_netns(agent.netns, "ip", "-d", "-j", "link", "show", "dev", TUNNEL_DEVICE).stdout
        info = json.loads(out)[0]["linkinfo"]
        assert info["info_kind"] == "vxlan"
        assert info["info_data"]["external"] is True and info["info_data"]["port"] == 8472
        config = ConfigMap(Map.from_pin(PIN_ROOT / agent.node / "ciliary_config")).get()
        assert config.routing_mode == ROUTING_MODE_TUNNEL
        assert config.tunnel_ifindex == _link_index(agent, TUNNEL_DEVICE)
        assert config.tunnel_port == 8472  # bpf_host's outer packets (lib/encap.h)
        assert tcx_names(agent.netns, TUNNEL_DEVICE, "ingress") == [FROM_OVERLAY[:15]]
    out = in_netns(cluster.client.netns, "ip", "-j", "link", "show", "dev", "eth0").stdout
    assert json.loads(out)[0]["mtu"] == 1500 - TUNNEL_OVERHEAD


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_tcp_udp_icmp_cross_node(cluster: Cluster, family: str) -> None:
    dst = getattr(cluster.server, family)
    ping = _run_in(cluster.client, "ping", "-c", "1", "-W", "3", dst)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    for proto, port in (("tcp-echo", PORT_TCP), ("udp-echo", PORT_UDP)):
        run = _workload(cluster.client, proto, dst, str(port), "--timeout", "3")
        assert run.returncode == 0, f"{proto} to {dst}: {run.stdout}{run.stderr}"
    # sent into the tunnel on A with both identities, received on B from the VNI
    client_id, server_id = IDENTITY["client"], IDENTITY["server"]
    sent = _wait_flow(cluster.a, "to-overlay", lambda f: (
        f.trace_observation_point == ObservationPoint.TO_OVERLAY
        and f.IP.destination == dst and f.source.identity == client_id
    ))  # fmt: skip
    assert sent.destination.identity == server_id
    got = _wait_flow(cluster.b, "from-overlay", lambda f: (
        f.trace_observation_point == ObservationPoint.FROM_OVERLAY
        and f.IP.destination == dst and f.IP.source == getattr(cluster.client, family)
    ))  # fmt: skip
    assert got.source.identity == client_id
    assert "k8s:app=client" in got.source.labels
    delivered = _wait_flow(cluster.b, "to-endpoint", lambda f: (
        f.trace_observation_point == ObservationPoint.TO_ENDPOINT and f.IP.destination == dst
    ))  # fmt: skip
    assert delivered.source.identity == client_id
    assert delivered.destination.pod_name == "server"


def _device_packets(agent: NodeAgent) -> tuple[int, int]:
    """The tunnel device's received and sent packet counts."""
    out = in_netns(agent.netns, "ip", "-s", "-j", "link", "show", "dev", TUNNEL_DEVICE).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["packets"]), int(stats["tx"]["packets"])


def test_pod_packets_bypass_the_tunnel_device(cluster: Cluster) -> None:
    """bpf/lib/encap.h: once a node knows the other's neighbour, bpf_lxc writes the outer
    headers itself and sends the packet out of eth0, and the receiving node's bpf_host strips
    them for its pod: the tunnel device carries none of their packets (its path, not the
    encapsulation, is what a tunnelled packet cost: bench/vxlanbound.py). The VNI still carries
    the identity (the other tests' flows and drops)."""
    for family in ("v4", "v6"):  # the first packets may find no neighbour yet: the device's
        dst = getattr(cluster.server, family)
        ping = _run_in(cluster.client, "ping", "-c", "1", "-W", "3", dst)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    before = {agent.node: _device_packets(agent) for agent in (cluster.a, cluster.b)}
    for family in ("v4", "v6"):
        dst = getattr(cluster.server, family)
        ping = _run_in(cluster.client, "ping", "-c", "3", "-i", "0.2", "-W", "3", dst)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        for proto, port in (("tcp-echo", PORT_TCP), ("udp-echo", PORT_UDP)):
            run = _workload(cluster.client, proto, dst, str(port), "--timeout", "3")
            assert run.returncode == 0, f"{proto} to {dst}: {run.stdout}{run.stderr}"
    after = {agent.node: _device_packets(agent) for agent in (cluster.a, cluster.b)}
    assert after == before


def test_receiving_node_enforces_ingress_on_the_vni_identity(cluster: Cluster) -> None:
    with cluster.b.client() as cl:
        cl.policy_import(POLICY, "p.yaml")
    try:
        for family in ("v4", "v6"):
            dst = getattr(cluster.server, family)
            ok = _workload(cluster.client, "tcp-echo", dst, str(PORT_TCP), "--timeout", "3")
            assert ok.returncode == 0, ok.stdout + ok.stderr
            denied = _workload(cluster.other, "tcp-echo", dst, str(PORT_TCP), "--timeout", "1")
            assert denied.returncode != 0, f"other reached {dst} through the policy"
            src = getattr(cluster.other, family)
            drop = _wait_flow(cluster.b, f"drop from other over {family}", lambda f: (
                f.verdict == Verdict.DROPPED and f.IP.source == src  # noqa: B023
                and f.event_type.type == 1
            ))  # fmt: skip
            assert drop.source.identity == IDENTITY["other"]
            assert "k8s:app=other" in drop.source.labels
            assert drop.drop_reason_desc == flow_pb2.POLICY_DENIED
            assert drop.traffic_direction == flow_pb2.INGRESS
            assert drop.destination.pod_name == "server"
    finally:
        with cluster.b.client() as cl:
            cl.policy_delete(all=True)


L7_POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-l7, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: server}}}}]
    toPorts:
    - ports: [{{port: "{PORT_TCP}", protocol: TCP}}]
      rules: {{http: [{{}}]}}
    - ports: [{{port: "{PORT_UDP}", protocol: UDP}}]
      rules: {{dns: [{{matchPattern: "*"}}]}}
"""


@pytest.mark.parametrize("upstream", ["pod-tuple", "own-port"])
def test_l7_proxy_speaks_to_another_nodes_pod_as_the_pod(cluster: Cluster, upstream: str) -> None:
    """bpf/lib/proxy.h across nodes: the client's connection and query to the server on node B
    go to a stand-in proxy in node A's netns (its ports put into the client's entries), which
    passes them on as the pod; B's replies come back through the tunnel and reach the proxy's
    upstream sockets (bpf_overlay hands them to the stack with the to-proxy mark), not the pod."""
    with cluster.a.client() as cl:
        cl.policy_import(L7_POLICY, "l7.yaml")
        ep = next(e.id for e in cl.endpoints() if e.container_id == cluster.client.container_id)
        assert {e.protocol for e in cl.endpoint_policy(ep).entries if e.proxy_port} == {
            "TCP",
            "UDP",
        }
    point_to(cluster.a.node, ep, PROXY_TCP_PORT, PROXY_UDP_PORT)
    # node A's own route to B's pods (the node manager's, tunnel mode): the proxy's upstream
    # connections leave through the node stack
    remote = str(cluster.b.ipv4_range)
    router = str(next(ip_network(str(cluster.a.ipv4_range)).hosts()))
    sh("ip", "-n", cluster.a.netns, "route", "replace", remote, "dev", "ciliary_host",
       "src", router, "mtu", str(1500 - TUNNEL_OVERHEAD))  # fmt: skip
    proxy = serve(cluster.a.netns, LISTENER, str(PROXY_TCP_PORT), str(PROXY_UDP_PORT), upstream)
    try:
        srv, client = cluster.server.v4, cluster.client.v4
        for kind, port in (("tcp", PORT_TCP), ("udp", PORT_UDP)):
            seen = netns_exec(cluster.client.netns, CLIENT, kind, srv, str(port))
            assert seen == f"proxy {kind} {srv}:{port} from {client}, upstream: hello"
    finally:
        stop(proxy)
        sh("ip", "-n", cluster.a.netns, "route", "del", remote, check=False)
        with cluster.a.client() as cl:
            cl.policy_delete(all=True)


WORLD_PORT = 7100  # a server of node B's own netns: the world to node A's pods (masqueraded)
WORLD_SERVER = r"""
import socket, sys
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(sys.argv[1])))
t.listen(8)
print("ready", flush=True)
while True:
    c, peer = t.accept()
    c.recv(200)
    c.sendall(f"world from {peer[0]}".encode())
    c.close()
"""


@pytest.mark.parametrize("upstream", ["pod-tuple", "own-port"])
def test_l7_proxy_reaches_the_world_masqueraded(cluster: Cluster, upstream: str) -> None:
    """The proxy's upstream connection to a world address leaves masqueraded (node A's IP, as
    the pod's own would); the reply, translated back by bpf_host, reaches the proxy's upstream
    socket (the to-proxy mark), not the pod."""
    world = UNDERLAY[1]
    policy = L7_POLICY.replace(
        "  - toEndpoints: [{matchLabels: {app: server}}]\n",
        f"  - toCIDR: [{world}/32]\n",
    ).replace(f'port: "{PORT_TCP}"', f'port: "{WORLD_PORT}"')
    with cluster.a.client() as cl:
        cl.policy_import(policy, "l7-world.yaml")
        ep = next(e.id for e in cl.endpoints() if e.container_id == cluster.client.container_id)
    point_to(cluster.a.node, ep, PROXY_TCP_PORT, PROXY_UDP_PORT)
    server = serve(cluster.b.netns, WORLD_SERVER, str(WORLD_PORT))
    proxy = serve(cluster.a.netns, LISTENER, str(PROXY_TCP_PORT), str(PROXY_UDP_PORT), upstream)
    try:
        seen = netns_exec(cluster.client.netns, CLIENT, "tcp", world, str(WORLD_PORT))
        assert seen == (
            f"proxy tcp {world}:{WORLD_PORT} from {cluster.client.v4},"
            f" upstream: world from {UNDERLAY[0]}"
        )
    finally:
        stop(proxy)
        stop(server)
        with cluster.a.client() as cl:
            cl.policy_delete(all=True)


def test_agent_restart_keeps_cross_node_connections(cluster: Cluster) -> None:
    """The restart contract across nodes: the tunnel device (its ifindex, which the datapath
    config names) survives the receiving agent's restart and a connection carries on."""
    before = _link_index(cluster.b, TUNNEL_DEVICE)
    stream = subprocess.Popen(
        ["ip", "netns", "exec", cluster.client.netns, str(VENV_BIN / "ciliary"), "workload",
         "tcp-stream", cluster.server.v4, str(PORT_TCP), "--duration", "6",
         "--interval", "0.1", "--timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # the connection is established and exchanging lines
        cluster.b.stop()
        cluster.b.start()
        out, _ = stream.communicate(timeout=30)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
    assert stream.returncode == 0, out
    assert _link_index(cluster.b, TUNNEL_DEVICE) == before
    config = ConfigMap(Map.from_pin(PIN_ROOT / cluster.b.node / "ciliary_config")).get()
    assert (config.routing_mode, config.tunnel_ifindex) == (ROUTING_MODE_TUNNEL, before)


def test_native_mode_has_no_tunnel_device(tmp_path: Path) -> None:
    """Restarted in native mode, a node of a tunnel-mode run loses its tunnel device."""
    suffix = secrets.token_hex(2)
    agent = NodeAgent(
        node=f"ovn{suffix}", netns=f"ciov-n{suffix}", ipv4_range="10.231.9.0/24",
        ipv6_range=None, log=tmp_path / "agent.log", extra_args=("--routing-mode", "tunnel"),
    )  # fmt: skip
    try:
        netns_add(agent.netns)
        agent.start()
        assert TUNNEL_DEVICE in agent.links()
        agent.stop()
        agent.extra_args = ("--routing-mode", "native")
        agent.start()
        assert TUNNEL_DEVICE not in agent.links()
        config = ConfigMap(Map.from_pin(PIN_ROOT / agent.node / "ciliary_config")).get()
        native = (ROUTING_MODE_NATIVE, 0, 0)
        assert (config.routing_mode, config.tunnel_ifindex, config.tunnel_port) == native
    finally:
        agent.stop()
        stop_recorded(RUN_ROOT / agent.node / ENVOY_STATE / ENVOY_PIDFILE)
        netns_del(agent.netns)
        shutil.rmtree(RUN_ROOT / agent.node, ignore_errors=True)
        remove_pins(PIN_ROOT / agent.node)
