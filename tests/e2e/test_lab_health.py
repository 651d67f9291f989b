"""Cluster health across the lab network, as ``cilium-health``: in a two-node lab (probes every
second, ``spec.healthCheckInterval``) each agent reports both nodes reachable over ICMP and HTTP
(:4240 ``/hello``) on their IPv4 and IPv6 node IPs, with round-trip times (``ciliary status``,
``--all-health``, ``ciliary health status``); the other node's agent stopped, its HTTP turns
unreachable while ICMP stays; then its ``eth0`` down, ICMP too, each within a few probe
intervals."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ciliary.core.models import ClusterHealth, StatusResponse
from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, kube_lab, unique

pytestmark = pytest.mark.timeout(240)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  hubble: {{relay: {{enabled: false}}}}
  nodeNetwork: {{ipv4: 192.168.78.0/24, ipv6: "fd78:1::/64"}}
  healthCheckInterval: 1
  nodes:
  - name: {n1}
  - name: {n2}
"""
IPS = {0: ("192.168.78.2", "fd78:1::2"), 1: ("192.168.78.3", "fd78:1::3")}
INTERVAL = 1.0
WITHIN = 8.0
"""A change shows within a round in flight (probe timeout = interval) and the next one."""


@dataclass
class HealthLab:
    name: str
    nodes: list[str]


@pytest.fixture(scope="module")
def hlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthLab]:
    name, nodes = unique("hl"), [unique("ha"), unique("hb")]
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=nodes[0], n2=nodes[1]))
    with kube_lab(path, name, nodes):
        yield HealthLab(name, nodes)


def ciliary(*argv: str) -> str:
    got = subprocess.run([CILIARY, *argv], capture_output=True, text=True, timeout=30, check=False)
    assert got.returncode == 0, (argv, got.stdout, got.stderr)
    return got.stdout


def health_of(node: str) -> ClusterHealth:
    status = StatusResponse.model_validate(
        json.loads(ciliary("--node", node, "status", "-o", "json"))
    )
    assert status.cluster_health is not None
    return status.cluster_health


def wait_health(node: str, ok: Callable[[ClusterHealth], bool], within: float) -> ClusterHealth:
    deadline = time.monotonic() + within
    while True:
        health = health_of(node)
        if ok(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.2)


def paths(health: ClusterHealth, node: str) -> dict[str, tuple[bool | None, bool | None]]:
    """address → (ICMP ok, HTTP ok) of ``node`` in ``health`` (None: not probed)."""
    (entry,) = [n for n in health.nodes if n.name == node]
    return {
        p.ip: (p.icmp.ok if p.icmp else None, p.http.ok if p.http else None) for p in entry.host
    }


def test_every_node_reaches_every_node_over_icmp_and_http(hlab: HealthLab) -> None:
    for i, node in enumerate(hlab.nodes):
        health = wait_health(node, lambda h: len(h.nodes) == 2 and h.reachable() == 2, 30)
        assert health.reachable() == 2, health
        assert health.port == 4240 and health.probe_interval_s == INTERVAL
        assert [(n.name, n.local) for n in health.nodes] == [
            (node, True),
            (hlab.nodes[1 - i], False),
        ]
        for n in health.nodes:
            j = hlab.nodes.index(n.name)
            assert [p.ip for p in n.host] == list(IPS[j])
            for p in n.host:
                for probe in (p.icmp, p.http):
                    assert probe is not None and probe.ok and probe.latency_s is not None
                    assert 0 < probe.latency_s < 1, probe
    text = ciliary("--node", hlab.nodes[0], "status", "--all-health")
    assert "Cluster health:" in text and "2/2 reachable" in text
    for ip in (*IPS[0], *IPS[1]):
        assert ip in text, text  # the table lists every address with its latencies
    assert text.count("reachable ") >= 8, text
    detail = ciliary("--node", hlab.nodes[0], "health", "status")
    assert f"{hlab.nodes[0]} (localhost):" in detail
    assert f"Host connectivity to {IPS[1][1]}:" in detail
    assert detail.count("OK, RTT=") == 8, detail


def test_a_stopped_agent_is_unreachable_over_http_only(hlab: HealthLab) -> None:
    a, b = hlab.nodes
    wait_health(a, lambda h: h.reachable() == 2, 30)
    manager.stop_agent(b, name=hlab.name)
    t0 = time.monotonic()
    want = {ip: (True, False) for ip in IPS[1]}
    health = wait_health(a, lambda h: paths(h, b) == want, WITHIN)
    took = time.monotonic() - t0
    assert paths(health, b) == want, health
    assert health.reachable() == 1
    assert "1/2 reachable" in ciliary("--node", a, "status")
    print(f"agent stopped -> HTTP unreachable in {took:.2f}s")


def test_a_node_off_the_network_is_unreachable_over_icmp_too(hlab: HealthLab) -> None:
    """After the test above (its agent stays down): its stack stops answering too."""
    a, b = hlab.nodes
    health = wait_health(a, lambda h: all(icmp for icmp, _ in paths(h, b).values()), 30)
    assert all(icmp for icmp, _ in paths(health, b).values()), health
    subprocess.run(
        ["ip", "-n", f"ciln-{hlab.name}-{b}", "link", "set", "eth0", "down"], check=True, timeout=10
    )
    t0 = time.monotonic()
    want = {ip: (False, False) for ip in IPS[1]}
    health = wait_health(a, lambda h: paths(h, b) == want, WITHIN)
    took = time.monotonic() - t0
    assert paths(health, b) == want, health
    (entry,) = [n for n in health.nodes if n.name == b]
    assert entry.host[0].icmp is not None and "no echo reply" in entry.host[0].icmp.status
    text = ciliary("--node", a, "status")  # without --all-health: the unreachable node's rows
    assert (
        "1/2 reachable" in text
        and IPS[1][0] in text
        and IPS[0][0] not in text.split("Cluster health")[1]
    )
    print(f"eth0 down -> ICMP and HTTP unreachable in {took:.2f}s")
