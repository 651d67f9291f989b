"""Cilium policy examples with real packets (``examples/policies/cilium-examples.yaml``).

The lab file carries its policies, so ``lab up`` puts them in force before any pod starts:
the very first packets are already subject to them.

Semantics asserted, with their sources (cilium/cilium ``Documentation/security/policy/``):
- entities: ``host`` is the local node, ``cluster`` is every endpoint of the cluster plus host,
  remote-node, init, health, ... (``pkg/policy/api/entity.go``); ``world`` is outside;
- ``toCIDRSet`` with ``except``: the block minus the exceptions, for peers outside the cluster
  (``language.rst`` "CIDR based", ``CIDRRule.ExceptCIDRs``);
- deny policies take precedence over allow policies for the same peer and port, drop reason
  181 "Policy denied by denylist" (``deny.rst``: "Deny policies ... take precedence over any other
  rules"; ``bpf/lib/common.h`` DROP_POLICY_DENY), the monitor naming the deny rule;
- ``fromRequires`` adds its requirement to every ``fromEndpoints`` of rules selecting the
  endpoint and grants nothing by itself (``language.rst`` "Requires");
- Kubernetes mode allows the local host to reach local endpoints whatever the policy (the agent
  turns ``--allow-localhost=auto`` into ``always`` when it runs with Kubernetes:
  ``daemon/cmd/daemon.go`` "Kubernetes demands that the localhost can always reach local pods";
  ``pkg/policy/mapstate.go`` ``determineAllowLocalhostIngress``);
- ICMP errors about a tracked connection (destination unreachable, time exceeded, parameter
  problem) are ``CT_RELATED`` and bypass policy (``bpf/lib/conntrack.h`` ``ct_lookup4``:
  ``TUPLE_F_RELATED``, and ``ct_create4`` creating the related ICMP entry).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from ciliary.core.models import MonitorEvent

from .conftest import CILIARY
from .test_policy_runner import EXAMPLES, PolicyLab, case, policy_lab, refusals_are_final

KNOWN_AGENT_BUGS: dict[str, str] = {}
"""Cases of the shipped test file an agent bug is known to break (none now)."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyLab]:
    yield from policy_lab(tmp_path_factory, "cilium-examples.yaml", "cex")


def test_policies_of_the_lab_file_are_in_force(lab: PolicyLab) -> None:
    with lab.client() as cl:
        keys = {p.key for p in cl.policy_list().policies}
    assert {
        "CiliumNetworkPolicy/default/web-from-host",
        "CiliumNetworkPolicy/default/db-deny-client",
        "CiliumNetworkPolicy/default/requires-prod",
    } <= keys


def test_entities_host_and_cluster(lab: PolicyLab, monkeypatch: pytest.MonkeyPatch) -> None:
    report = lab.expect(
        """
        - {name: host-web, from: host, to: default/web, port: 80, expect: allow,
           rule: default/web-from-host}
        - {name: host-web-v6, from: host, to: default/web, port: 80, family: 6, expect: allow}
        """
    )
    assert case(report, "host-web").client == "connected"
    refusals_are_final(monkeypatch)  # nobody listens on the auditor's 9 or the node's 22
    report = lab.expect(
        """
        - {name: pod-web, from: default/client, to: default/web, port: 80, expect: deny,
           dropReason: 133}
        - {name: cluster-pod, from: default/egress, to: default/auditor, port: 9, expect: allow,
           rule: default/egress-cluster-and-cidr}
        - {name: cluster-pod-icmp, from: default/egress, to: default/client, protocol: ICMP,
           expect: allow}
        - {name: cluster-host, from: default/egress, to: host, port: 22, expect: allow}
        - {name: cluster-dns, from: default/egress, to: kube-system/coredns, port: 53,
           protocol: UDP, expect: allow}
        - {name: not-world, from: default/egress, to: 198.51.100.1, port: 443, expect: deny,
           dropReason: 133}
        """
    )
    assert case(report, "cluster-host").client == "refused"  # the node answered with a reset


def test_cidrset_except_on_world_addresses(lab: PolicyLab) -> None:
    lab.expect(
        """
        - {name: in-except, from: default/egress, to: 192.0.2.200, port: 443, expect: deny,
           dropReason: 133}
        - {name: in-except-udp, from: default/egress, to: 192.0.2.129, port: 53, protocol: UDP,
           expect: deny}
        - {name: outside, from: default/egress, to: 192.0.3.1, port: 443, expect: deny}
        """
    )


def test_cidrset_except_allows_the_rest_of_the_block(lab: PolicyLab) -> None:
    lab.expect(
        """
        - {name: in-block, from: default/egress, to: 192.0.2.10, port: 443, expect: allow}
        """
    )


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


def test_deny_beats_allow_with_reason_181_and_the_rule_named(lab: PolicyLab) -> None:
    db = lab.pod_ip("default/db")
    with _Monitor(lab) as mon:
        res = lab.run(
            "default/client", "ciliary", "workload", "tcp-echo", db, "5432", "--timeout", "1"
        )
        assert res.returncode == 1 and "timed out" in res.stderr
        ok = lab.run("default/auditor", "ciliary", "workload", "tcp-echo", db, "5432")
        assert ok.returncode == 0, ok.stderr
    drops = [e for e in mon.events if e.type == "drop" and e.dst_ip == db and e.dst_port == 5432]
    assert drops, [e.summary for e in mon.events]
    ev = drops[0]
    assert (ev.drop_reason, ev.drop_reason_desc) == (181, "Policy denied by denylist")
    assert ev.traffic_direction == "ingress" and ev.src_pod == "default/client"
    assert ev.policy_rules == ["CiliumNetworkPolicy default/db-deny-client rule 0 ingressDeny[0]"]
    report = lab.expect(
        """
        - {name: denied, from: default/client, to: default/db, port: 5432, expect: deny,
           dropReason: 181,
           rule: "CiliumNetworkPolicy default/db-deny-client rule 0 ingressDeny[0]"}
        - {name: allowed, from: default/auditor, to: default/db, port: 5432, expect: allow,
           rule: default/db-allow}
        - {name: other-port, from: default/client, to: default/db, port: 5433, expect: deny,
           dropReason: 133}
        """
    )
    assert case(report, "denied").trace_reason.startswith("ingress: CiliumNetworkPolicy")


def test_from_requires(lab: PolicyLab) -> None:
    lab.expect(
        """
        - {name: prod, from: default/frontend-prod, to: default/vault, port: 8200,
           expect: allow}
        - {name: dev, from: default/frontend-dev, to: default/vault, port: 8200, expect: deny,
           dropReason: 133}
        - {name: not-frontend, from: default/client, to: default/vault, port: 8200,
           expect: deny}
        - {name: requires-alone-grants-nothing, from: default/frontend-dev,
           to: default/frontend-prod, protocol: ICMP, expect: deny}
        """
    )


def test_shipped_policy_test_file(lab: PolicyLab) -> None:
    """Every case of the shipped file holds, except those an agent bug breaks (listed above)."""
    res = subprocess.run(
        [CILIARY, "policy", "test", str(EXAMPLES / "cilium-examples.test.yaml"),
         "--name", lab.name, "-o", "json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    report = json.loads(res.stdout)
    failed = {c["name"]: c["problems"] for c in report["cases"] if not c["passed"]}
    unexpected = {n: p for n, p in failed.items() if n not in KNOWN_AGENT_BUGS}
    assert not unexpected, unexpected
    assert res.returncode == (1 if failed else 0)
    fixed = set(KNOWN_AGENT_BUGS) - set(failed)
    assert not fixed, f"fixed, remove from KNOWN_AGENT_BUGS: {fixed}"
    if failed:
        pytest.xfail(f"known agent bugs: {sorted(failed)}")
    # every case decided by the datapath's own event, agreeing with the file and the trace
    assert all(c["datapath"] == c["expected"] == c["trace"] for c in report["cases"]), [
        (c["name"], c["datapath"], c["expected"], c["trace"]) for c in report["cases"]
    ]


def test_host_reaches_local_pods_whatever_the_policy(lab: PolicyLab) -> None:
    lab.expect(
        """
        - {name: host-db, from: host, to: default/db, port: 5432, expect: allow}
        """
    )


def test_icmp_errors_of_allowed_flows_are_related(lab: PolicyLab) -> None:
    """web's ingress only admits the host; its UDP datagram to a closed port of the client gets
    an ICMP port unreachable back, which must reach web (as "connection refused")."""
    client = lab.pod_ip("default/client")
    res = lab.run(
        "default/web", "ciliary", "workload", "udp-echo", client, "9999", "--timeout", "1"
    )
    assert "connection refused" in res.stderr, res.stderr
