"""The node manager with real processes: a ``ciliary-agent`` in a scratch netns against a real
control plane. A fake remote node's CiliumNode and CiliumEndpoints created through the API reach
the agent's ipcache (pinned map: identities, tunnel endpoints, ``IPCACHE_F_REMOTE``); a deleted
pod's entry goes at once; an agent restart prunes the entries of what was deleted while it was
down and keeps the rest; in native mode with auto-direct-node-routes the remote node's pod CIDRs
are routed via its node IPs in the node netns, and go with the node. The agent's own CiliumNode
publishes its node IPs as ``InternalIP`` and ``ciliary status`` lists the cluster's nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from ciliary.agent.k8s.ciliumendpoints import CILIUM_ENDPOINTS, CILIUM_NODES, cilium_node
from ciliary.client.agent import AgentClient, AgentClientError
from ciliary.datapath.libbpf import Map
from ciliary.datapath.loader import PIN_ROOT, remove_pins
from ciliary.datapath.maps.ipcache import IPCACHE_F_REMOTE, IPCacheMap, IPCacheRecord
from ciliary.k8s.resources import by_path
from ciliary.kube.client import KubeClient
from ciliary.lab.controlplane import ControlPlane, add_node

pytestmark = pytest.mark.timeout(240)

RUN_ROOT = Path("/run/ciliary")
NAMESPACES = by_path("", "v1", "namespaces")
TEP = IPv4Address("172.18.0.3")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def _netns(name: str) -> Iterator[Path]:
    """A node netns with an ``eth0`` on the underlay subnet (a veth whose peer stays in the
    netns: routes only, no other node behind it)."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
            ["link", "set", "eth0p", "up"],
            ["link", "set", "eth0", "up"],
            ["addr", "add", "172.18.0.2/24", "dev", "eth0"],
            ["addr", "add", "fc00::2/64", "dev", "eth0", "nodad"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "netns", "del", f"{name}-health"], check=False)  # the agent's


def _until(check: Callable[[], bool], what: str, timeout: float, log: Path) -> float:
    """Polls ``check`` every 5 ms; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"timed out: {what}\n{log.read_text()[-3000:]}"
        time.sleep(0.005)
    return time.monotonic() - start


def _remote_entries(node: str) -> dict[str, IPCacheRecord]:
    """The node manager's entries of the agent's pinned ipcache."""
    with Map.from_pin(PIN_ROOT / node / "ciliary_ipcache") as raw:
        return {str(r.prefix): r for r in IPCacheMap(raw).items() if r.flags & IPCACHE_F_REMOTE}


def _cep(name: str, identity: int, ipv4: str, ipv6: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": name, "namespace": "shop"},
        "status": {"id": 1, "identity": {"id": identity, "labels": []}, "networking": {
            "addressing": [{"ipv4": ipv4, "ipv6": ipv6}], "node": node}},
    }  # fmt: skip


class Cluster:
    """The test's admin API client, on a loop of its own."""

    def __init__(self, cp: ControlPlane) -> None:
        self.loop = asyncio.new_event_loop()
        self.kube = self.loop.run_until_complete(KubeClient.connect(cp.kubeconfig))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def create_cep(self, obj: dict[str, Any]) -> None:
        async def go() -> None:
            made = await self.kube.create(
                CILIUM_ENDPOINTS, {k: v for k, v in obj.items() if k != "status"}, "shop"
            )
            await self.kube.replace(
                CILIUM_ENDPOINTS, {**made, "status": obj["status"]}, subresource="status"
            )

        self.run(go())

    def close(self) -> None:
        self.run(self.kube.close())
        self.loop.close()


def test_node_manager_ipcache_restart_and_native_routes(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    node = f"nm{os.getpid() % 100000}"
    log = tmp_path / "agent.log"
    socket = RUN_ROOT / node / "agent.sock"
    with _netns(f"cinm-{node}") as ns_path:
        kubeconfig = add_node(control_plane, node, ns_path)
        cluster = Cluster(control_plane)

        def start(*extra: str) -> subprocess.Popen[bytes]:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "ciliary.agent.main", "--node-name", node,
                     "--netns", ns_path.name, "--kubeconfig", str(kubeconfig),
                     "--ipv4-range", "10.0.1.0/24", "--ipv6-range", "fd00:1::/64",
                     "--ipv4-node", "172.18.0.2", "--ipv6-node", "fc00::2", *extra],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                )  # fmt: skip

            def healthy() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                with contextlib.suppress(AgentClientError, OSError), AgentClient(socket) as cl:
                    cl.healthz()
                    return True
                return False

            _until(healthy, "the agent serving", 60, log)
            return proc

        agent: subprocess.Popen[bytes] | None = None
        try:
            agent = start()
            # the agent's own CiliumNode: node IPs as InternalIP, routers as CiliumInternalIP
            own = cluster.run(cluster.kube.get(CILIUM_NODES, node))
            assert own["spec"]["addresses"] == [
                {"type": "InternalIP", "ip": "172.18.0.2"},
                {"type": "InternalIP", "ip": "fc00::2"},
                {"type": "CiliumInternalIP", "ip": "10.0.1.1"},
                {"type": "CiliumInternalIP", "ip": "fd00:1::1"},
            ]
            # its health endpoint: identity 4 in its own netns, published as spec.health
            with AgentClient(socket) as cl:
                (health,) = [e for e in cl.endpoints() if e.identity == 4]
            assert health.netns == f"{ns_path}-health" and health.pod_name == ""
            assert own["spec"]["health"] == {"ipv4": health.ipv4, "ipv6": health.ipv6}
            assert health.ipv4 and ip_address(health.ipv4) in ip_network("10.0.1.0/24")
            # a fake remote node and two of its pods
            remote = cilium_node("far", ["10.0.2.1", "fd00:2::1"], ["10.0.2.0/24", "fd00:2::/64"],
                                 {}, ["172.18.0.3", "fc00::3"],
                                 health=["10.0.2.5", "fd00:2::5"])  # fmt: skip
            cluster.run(cluster.kube.create(CILIUM_NODES, remote))
            cluster.run(cluster.kube.create(NAMESPACES, {"metadata": {"name": "shop"}}))
            cluster.create_cep(_cep("web", 300, "10.0.2.7", "fd00:2::7", "172.18.0.3"))
            cluster.create_cep(_cep("db", 301, "10.0.2.8", "fd00:2::8", "172.18.0.3"))
            _until(lambda: "10.0.2.8/32" in _remote_entries(node), "the remote pods", 30, log)
            got = {p: (r.sec_id, r.tunnel_endpoint) for p, r in _remote_entries(node).items()}
            assert got == {
                "172.18.0.2/32": (1, None), "fc00::2/128": (1, None),
                "172.18.0.3/32": (6, None), "fc00::3/128": (6, None),
                "10.0.2.1/32": (6, TEP), "fd00:2::1/128": (6, TEP),
                "10.0.2.0/24": (9, TEP), "fd00:2::/64": (10, TEP),
                "10.0.2.5/32": (4, TEP), "fd00:2::5/128": (4, TEP),  # its health endpoint
                "10.0.2.7/32": (300, TEP), "fd00:2::7/128": (300, TEP),
                "10.0.2.8/32": (301, TEP), "fd00:2::8/128": (301, TEP),
            }  # fmt: skip
            with AgentClient(socket) as cl:  # the API shows the same, tunnel endpoints included
                api = {e.prefix: (e.identity, e.tunnel_endpoint) for e in cl.ipcache_list()}
                assert api["10.0.2.7/32"] == (300, "172.18.0.3")
                nodes = cl.status().cluster_nodes
            assert nodes is not None
            assert [(n.name, n.node_ips, n.local, n.health_ips) for n in nodes] == [
                ("far", ["172.18.0.3", "fc00::3"], False, ["10.0.2.5", "fd00:2::5"]),
                (node, ["172.18.0.2", "fc00::2"], True, [health.ipv4, health.ipv6]),
            ]
            shown = subprocess.run(
                [sys.executable, "-m", "ciliary.cli.main", "--node", node, "status"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
            assert "far 172.18.0.3, fc00::3" in shown, shown

            # a pod goes: its entries go within the policy budget
            cluster.run(cluster.kube.delete(CILIUM_ENDPOINTS, "db", "shop"))
            took = _until(
                lambda: "10.0.2.8/32" not in _remote_entries(node), "db's entry gone", 5, log
            )
            assert took < 1.0, took
            print(f"\nCEP delete -> ipcache entry gone: {took * 1000:.0f} ms")
            assert "10.0.2.7/32" in _remote_entries(node)

            # restart: what was deleted while the agent was down is pruned, the rest kept
            _stop(agent)
            cluster.run(cluster.kube.delete(CILIUM_ENDPOINTS, "web", "shop"))
            assert "10.0.2.7/32" in _remote_entries(node)  # pinned: kept while down
            agent = start()
            _until(lambda: "10.0.2.7/32" not in _remote_entries(node), "stale pruned", 30, log)
            with AgentClient(socket) as cl:  # the health endpoint restored, not made again
                (again,) = [e for e in cl.endpoints() if e.identity == 4]
            same = ("id", "ipv4", "ipv6", "lxc", "mac", "netns")
            assert [getattr(again, f) for f in same] == [getattr(health, f) for f in same]
            assert again.log[-1].reason == "restored"
            assert _remote_entries(node)["10.0.2.0/24"].tunnel_endpoint == TEP

            def routes() -> dict[str, tuple[str, str]]:
                """proto 193 routes: prefix → (gateway, or source when none; device)."""
                out = {}
                for fam in ("-4", "-6"):
                    listed = subprocess.run(
                        ["ip", "-n", ns_path.name, "-j", fam, "route", "show", "proto", "193"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    for r in json.loads(listed or "[]"):
                        via = r.get("gateway") or r.get("prefsrc")
                        out[str(ip_network(r["dst"]))] = (via, r.get("dev"))
                return out

            # tunnel mode: the remote pod CIDRs via ciliary_host from the router addresses
            tunnel_routes = {
                "10.0.2.0/24": ("10.0.1.1", "ciliary_host"),
                "fd00:2::/64": ("fd00:1::1", "ciliary_host"),
            }
            _until(lambda: routes() == tunnel_routes, "tunnel routes", 30, log)

            # native mode with auto-direct-node-routes: routes via the node IPs, no tunnel ep
            # (and health checking off: the health endpoint, its netns and spec.health go)
            _stop(agent)
            agent = start("--routing-mode", "native", "--auto-direct-node-routes",
                          "--devices", "eth0", "--enable-health-checking=false")  # fmt: skip
            with AgentClient(socket) as cl:
                assert [e for e in cl.endpoints() if e.identity == 4] == []
            assert not Path(f"{ns_path}-health").exists()
            assert "health" not in cluster.run(cluster.kube.get(CILIUM_NODES, node))["spec"]
            native_routes = {
                "10.0.2.0/24": ("172.18.0.3", "eth0"),
                "fd00:2::/64": ("fc00::3", "eth0"),
            }
            _until(lambda: routes() == native_routes, "native routes", 30, log)
            _until(
                lambda: _remote_entries(node)["10.0.2.0/24"].tunnel_endpoint is None,
                "no tunnel endpoints in native mode", 30, log,
            )  # fmt: skip
            assert all(r.tunnel_endpoint is None for r in _remote_entries(node).values())

            # the node goes: its routes and entries go
            cluster.run(cluster.kube.delete(CILIUM_NODES, "far"))
            _until(lambda: not routes(), "routes removed with the node", 10, log)
            _until(
                lambda: set(_remote_entries(node)) == {"172.18.0.2/32", "fc00::2/128"},
                "only this node's own addresses left", 10, log,
            )  # fmt: skip
        finally:
            if agent is not None:
                _stop(agent)
            cluster.close()
            shutil.rmtree(RUN_ROOT / node, ignore_errors=True)
            remove_pins(PIN_ROOT / node)
