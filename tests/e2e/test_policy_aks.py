"""The AKS network policy walkthrough, with real packets (``examples/policies/aks-*.yaml``).

Step 1 (in the lab file, so in force before the pods start): deny all ingress to the
``production`` namespace. Step 2 (``lab apply``, the cluster store path, as ``kubectl apply``):
allow the frontends of ``development``-labelled namespaces in, namespaceSelector AND podSelector
in one peer. Step 3: the backend may only send DNS queries to kube-dns (53/UDP, 53/TCP).

Semantics asserted, with their sources:
- a NetworkPolicy with ``policyTypes: [Ingress]`` and no ingress rule selects its pods for
  ingress default deny; the datapath drops with reason 133 "Policy denied" (Kubernetes
  NetworkPolicy docs, "Default deny all ingress traffic"; cilium ``bpf/lib/common.h``
  DROP_POLICY = -133, Hubble ``DropReason POLICY_DENIED = 133``);
- ``namespaceSelector`` and ``podSelector`` in the same ``from`` element are AND'ed (Kubernetes
  NetworkPolicy docs, "Behavior of to and from selectors"); Cilium translates the namespace
  selector to ``io.cilium.k8s.namespace.labels.*`` (``pkg/k8s/network_policy.go``);
- egress rules are an allow-list: once a rule with an ``egress`` section selects a pod, its other
  egress is default-denied, and replies of allowed connections are not (Cilium
  ``Documentation/security/policy/intro.rst``, policy enforcement modes; conntrack).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ciliary.core.models import MonitorEvent
from ciliary.lab import manager
from tests.kubectl import kubectl, wait_for

from .conftest import CILIARY
from .test_policy_runner import EXAMPLES, PolicyLab, case, policy_lab

STEP2 = EXAMPLES / "aks-allow-development.yaml"
STEP3 = EXAMPLES / "aks-dns-egress.yaml"


# the AKS walkthrough lab, shared with test_policy_runner: handed on at step 1 again
SHARES_LAB = "aks-walkthrough.yaml"
STEP_KEYS = {
    "NetworkPolicy/production/backend-allow-development",
    "CiliumNetworkPolicy/production/backend-egress-dns-only",
}


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[PolicyLab]:
    shared = policy_lab(tmp_path_factory, SHARES_LAB, "aks", request, _shared_labs)
    made = next(shared)
    try:
        yield made
        try:
            _undo_steps(made)
        except BaseException:
            shared.close()  # not handed on: removed
            raise
    finally:
        next(shared, None)


def _undo_steps(lab: PolicyLab) -> None:
    """Back to step 1: steps 2 and 3 deleted from the cluster and gone from every agent."""
    kubectl(
        manager.kubeconfig(lab.name), "delete", "--ignore-not-found", "-f", str(STEP2),
        "-f", str(STEP3),
    )  # fmt: skip

    def gone(node: str) -> bool:
        with lab.client(node) as cl:
            listing = cl.policy_list()
            if STEP_KEYS & {p.key for p in listing.policies}:
                return False
            return all(
                cl.endpoint_policy(e.id).revision >= listing.revision for e in cl.endpoints()
            )

    wait_for("steps 2 and 3 gone from every agent", lambda: all(map(gone, lab.nodes)), 30)


def _steps(lab: PolicyLab, upto: int) -> None:
    """Bring the lab to a step of the walkthrough (so a test also runs alone)."""
    with lab.client() as cl:
        have = {p.key for p in cl.policy_list().policies}
    if upto >= 2 and "NetworkPolicy/production/backend-allow-development" not in have:
        lab.apply(STEP2)
    if upto >= 3 and "CiliumNetworkPolicy/production/backend-egress-dns-only" not in have:
        lab.apply(STEP3)


class _Monitor(threading.Thread):
    def __init__(self, lab: PolicyLab) -> None:
        super().__init__(daemon=True)
        self.client = lab.client()
        self.events: list[MonitorEvent] = []

    def run(self) -> None:
        try:
            for ev in self.client.monitor():
                self.events.append(ev)
        except Exception:
            return

    def __enter__(self) -> _Monitor:
        self.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self.client.close()


def test_step1_deny_all_ingress_to_the_namespace(lab: PolicyLab) -> None:
    """Every client is dropped on the way into production, reason 133 "Policy denied", with the
    monitor showing the drop; the production backend itself still reaches out (no egress rule)."""
    with lab.client() as cl:
        assert {p.key for p in cl.policy_list().policies} == {
            "NetworkPolicy/production/default-deny-ingress"
        }, "step 1 must be the only policy (run this module in file order)"
    backend = lab.pod_ip("production/backend")
    with _Monitor(lab) as mon:
        res = lab.run(
            "development/frontend", "ciliary", "workload", "http-get", f"http://{backend}/",
            "--timeout", "1",
        )  # fmt: skip
        assert res.returncode == 1 and "timed out" in res.stderr, res.stderr
    drops = [
        e
        for e in mon.events
        if e.type == "drop" and e.dst_ip == backend and e.dst_port == 80 and e.protocol == "TCP"
    ]
    assert drops, [e.summary for e in mon.events]
    ev = drops[0]
    assert (ev.verdict, ev.drop_reason, ev.drop_reason_desc) == ("DROPPED", 133, "Policy denied")
    assert ev.traffic_direction == "ingress" and ev.verdict_reason == "default deny"
    assert ev.default_deny_by == ["NetworkPolicy production/default-deny-ingress"]
    assert ev.explanation == (
        "production/backend is selected for ingress by NetworkPolicy"
        " production/default-deny-ingress; no rule of it allows this peer/port"
    )
    assert (ev.src_pod, ev.dst_pod) == ("development/frontend", "production/backend")
    assert ev.tcp_flags == ["SYN"]

    lab.expect(
        """
        - {name: dev-frontend, from: development/frontend, to: production/backend, port: 80,
           expect: deny, dropReason: 133}
        - {name: default-frontend, from: default/frontend, to: production/backend, port: 80,
           expect: deny, dropReason: 133}
        - {name: ping, from: development/tools, to: production/backend, protocol: ICMP,
           expect: deny}
        - {name: out, from: production/backend, to: development/tools, port: 7, expect: allow}
        """
    )


def test_step2_allow_from_development_namespace(lab: PolicyLab) -> None:
    """Only pods matching both selectors get in: the development frontend is FORWARDED (by the
    new rule); the same labels in another namespace, and another development pod, are DROPPED."""
    _steps(lab, 2)
    backend = lab.pod_ip("production/backend")
    res = lab.run("development/frontend", "ciliary", "workload", "http-get", f"http://{backend}/")
    assert res.returncode == 0, res.stderr
    report = lab.expect(
        """
        - {name: dev-frontend, from: development/frontend, to: production/backend, port: 80,
           expect: allow, rule: NetworkPolicy production/backend-allow-development}
        - {name: dev-frontend-v6, from: development/frontend, to: production/backend, port: 80,
           family: 6, expect: allow}
        - {name: dev-frontend-other-port, from: development/frontend, to: production/backend,
           port: 81, expect: deny, dropReason: 133}
        - {name: default-frontend, from: default/frontend, to: production/backend, port: 80,
           expect: deny, dropReason: 133}
        - {name: dev-tools, from: development/tools, to: production/backend, port: 80,
           expect: deny, dropReason: 133}
        """
    )
    allowed = case(report, "dev-frontend")
    assert allowed.client == "connected" and "ingress[0]" in allowed.reason
    assert case(report, "default-frontend").direction == "ingress"


def test_step3_egress_only_to_kube_dns(lab: PolicyLab) -> None:
    """The backend's DNS queries to the cluster DNS pod are answered over UDP and TCP; anything
    else it sends is dropped at its own egress; replies to its allowed ingress still flow."""
    _steps(lab, 3)
    dns = manager.cluster_dns_ip(lab.name)
    assert dns is not None, "the lab has no kube-system/coredns pod"
    name = "frontend.development.pod.cluster.local"
    for extra in ([], ["--tcp"]):
        res = lab.run(
            "production/backend", "ciliary", "workload", "dns-query", name, "--server", dns, *extra
        )
        assert res.returncode == 0, f"dns-query {extra}: {res.stdout} {res.stderr}"
        assert lab.pod_ip("development/frontend") in res.stdout
    res = lab.run(
        "production/backend", "ciliary", "workload", "tcp-echo", lab.pod_ip("development/tools"),
        "7", "--timeout", "1",
    )  # fmt: skip
    assert res.returncode == 1 and "timed out" in res.stderr
    report = lab.expect(
        """
        - {name: dns-udp, from: production/backend, to: kube-system/coredns, port: 53,
           protocol: UDP, expect: allow, rule: backend-egress-dns-only}
        - {name: dns-tcp, from: production/backend, to: kube-system/coredns, port: 53,
           protocol: TCP, expect: allow}
        - {name: dns-pod-other-port, from: production/backend, to: kube-system/coredns, port: 80,
           expect: deny}
        - {name: to-tools, from: production/backend, to: development/tools, port: 7, protocol: UDP,
           expect: deny, dropReason: 133}
        - {name: to-host, from: production/backend, to: host, port: 22, expect: deny}
        - {name: to-world, from: production/backend, to: 192.0.2.10, port: 443, expect: deny}
        - {name: frontend-still-in, from: development/frontend, to: production/backend, port: 80,
           expect: allow}
        """
    )
    assert case(report, "dns-udp").client == "answered"
    assert case(report, "to-tools").direction == "egress"
    # replies of the allowed ingress pass the backend's egress default deny
    backend = lab.pod_ip("production/backend")
    res = lab.run("development/frontend", "ciliary", "workload", "http-get", f"http://{backend}/")
    assert res.returncode == 0, res.stderr


def test_walkthrough_policy_test_file(lab: PolicyLab) -> None:
    """The shipped PolicyTest file passes once every step is applied, through the CLI."""
    _steps(lab, 3)
    res = subprocess.run(
        [CILIARY, "policy", "test", str(EXAMPLES / "aks-walkthrough.test.yaml"),
         "--name", lab.name, "-o", "json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    report = json.loads(res.stdout)
    failed = [(c["name"], c["problems"]) for c in report["cases"] if not c["passed"]]
    assert res.returncode == 0 and not failed, failed
    assert all(c["datapath"] == c["expected"] == c["trace"] for c in report["cases"])
