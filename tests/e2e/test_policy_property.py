"""Property: for random policies over a fixed 4-pod lab and random flows, three answers agree —
``policy trace``, a simulation of the datapath's lookup over the agent's published map state
(``GET /v1/endpoint/{id}/policy``), and the datapath itself (real packets, the monitor's verdict).

The simulation is written here from the lookup contract of ``bpf/lib/policy.h`` (two longest
prefix lookups, the remote identity and identity 0; a deny from either wins; else the longer
allow; else default deny, 133; an endpoint with no enforced direction has no map and allows
all), independently of the agent's trace code, so a wrong map state, a wrong trace or a
datapath that does not do what its maps say each break the property.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from ciliary.core.models import EndpointPolicyStatus, PolicyMapEntry

from .conftest import assert_no_leftovers, unique
from .test_policy_runner import PolicyLab, explain

PODS: dict[str, dict[str, str]] = {
    "default/a": {"app": "a", "tier": "front"},
    "default/b": {"app": "b", "tier": "back"},
    "other/c": {"app": "c", "tier": "front"},
    "other/d": {"app": "d", "tier": "back"},
}
PORTS = (80, 443, 8080)
ICMP_ECHO = 8
PROTO = {"TCP": 6, "UDP": 17, "ICMP": 1}

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  monitorAggregation: medium
  nodes:
  - name: {node}
---
apiVersion: v1
kind: Namespace
metadata: {{name: other, labels: {{team: other}}}}
"""
POD = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {labels}}}
spec:
  containers:
{containers}"""
# Every pod listens on every port of PORTS: an allowed flow is a connection, not a RST that the
# runner would take for a server still starting (and ask again for seconds).
CONTAINERS = "".join(
    f'  - name: tcp{p}\n    command: [ciliary, workload, echo-server, --tcp-port, "{p}"]\n'
    for p in PORTS
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyLab]:
    name, node = unique("ppt"), unique("n")
    text = LAB.format(lab=name, node=node)
    for key, labels in PODS.items():
        ns, _, pod = key.partition("/")
        labels_yaml = yaml.safe_dump(labels, default_flow_style=True)
        text += POD.format(name=pod, ns=ns, labels=labels_yaml, containers=CONTAINERS)
    path = tmp_path_factory.mktemp("ppt") / "lab.yaml"
    path.write_text(text)
    from ciliary.lab import manager  # noqa: PLC0415

    try:
        manager.up(path)
        yield PolicyLab(name, [node], path)
    finally:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [node])


# --------------------------------------------------------------------------------------------
# Random policies and flows

selectors = st.sampled_from(
    [
        {},
        {"app": "a"},
        {"app": "b"},
        {"app": "c"},
        {"app": "d"},
        {"tier": "front"},
        {"tier": "back"},
    ]
)
namespaces = st.sampled_from([None, "default", "other"])
port_sets = st.sampled_from([None, [80], [443], [80, 8080], [8080]])


@st.composite
def peers(draw: st.DrawFn, ingress: bool) -> dict[str, Any]:
    labels = dict(draw(selectors))
    ns = draw(namespaces)
    if ns is not None:
        labels["k8s:io.kubernetes.pod.namespace"] = ns
    rule: dict[str, Any] = {
        ("fromEndpoints" if ingress else "toEndpoints"): [{"matchLabels": labels}]
    }
    ports = draw(port_sets)
    if ports is not None:
        rule["toPorts"] = [{"ports": [{"port": str(p), "protocol": "TCP"} for p in ports]}]
    return rule


@st.composite
def policies(draw: st.DrawFn, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"endpointSelector": {"matchLabels": draw(selectors)}}
    for section, ingress, most in (
        ("ingress", True, 2),
        ("ingressDeny", True, 1),
        ("egress", False, 2),
        ("egressDeny", False, 1),
    ):
        rules = draw(st.lists(peers(ingress), max_size=most))
        if rules:
            spec[section] = rules
    if len(spec) == 1:
        spec["ingress"] = [draw(peers(True))]
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": f"p{index}", "namespace": draw(st.sampled_from(["default", "other"]))},
        "spec": spec,
    }


@st.composite
def policy_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 3))
    return [draw(policies(i)) for i in range(n)]


PAIRS = [(s, d) for s in sorted(PODS) for d in sorted(PODS) if s != d]
flow = st.tuples(
    st.sampled_from(PAIRS), st.sampled_from([*(("TCP", p) for p in PORTS), ("ICMP", None)])
).map(lambda f: (f[0][0], f[0][1], f[1]))
flows = st.lists(flow, min_size=3, max_size=4, unique=True)


# --------------------------------------------------------------------------------------------
# The map state simulation (bpf/lib/policy.h)


def _prefix(entry: PolicyMapEntry) -> int:
    """LPM prefix length of an entry: identity+direction 40, +protocol 48, +port bits."""
    if entry.protocol == "any":
        return 40
    if entry.ports == "any":
        return 48
    low, _, high = entry.ports.partition("-")
    size = int(high or low) - int(low) + 1
    return 64 - (size.bit_length() - 1)


def _matches(entry: PolicyMapEntry, proto: str, port: int) -> bool:
    if entry.protocol not in ("any", proto):
        return False
    if entry.ports in ("any",) or entry.protocol == "any":
        return True
    low, _, high = entry.ports.partition("-")
    return int(low) <= port <= int(high or low)


def _lookup(
    entries: list[PolicyMapEntry], identity: int, direction: str, proto: str, port: int
) -> PolicyMapEntry | None:
    found = [
        e
        for e in entries
        if e.identity == identity and e.direction == direction and _matches(e, proto, port)
    ]
    return max(found, key=_prefix, default=None)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    drop_reason: int | None


def simulate(
    pol: EndpointPolicyStatus, remote: int, direction: str, proto: str, port: int
) -> Verdict:
    if not (pol.ingress_enforced or pol.egress_enforced):
        return Verdict(True, None)  # no policy map for the endpoint: nothing enforced
    specific = _lookup(pol.entries, remote, direction, proto, port)
    wildcard = _lookup(pol.entries, 0, direction, proto, port)
    for e in (specific, wildcard):
        if e is not None and e.action == "deny":
            return Verdict(False, 181)
    best = specific
    if wildcard is not None and (best is None or _prefix(wildcard) > _prefix(best)):
        best = wildcard
    return Verdict(True, None) if best is not None else Verdict(False, 133)


# --------------------------------------------------------------------------------------------
# The property


@settings(
    max_examples=8,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # each example costs real packets
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(docs=policy_sets(), sample=flows)
def test_trace_mapstate_and_datapath_agree(
    lab: PolicyLab, docs: list[dict[str, Any]], sample: list[tuple[str, str, tuple[str, Any]]]
) -> None:
    text = yaml.safe_dump_all(docs, sort_keys=False)
    try:
        lab.import_policy(text, "property.yaml")
        with lab.client() as cl:
            eps = {f"{e.namespace}/{e.pod_name}": e for e in cl.endpoints()}
            pols = {key: cl.endpoint_policy(ep.id) for key, ep in eps.items()}
        cases = []
        for src, dst, (proto, port) in sample:
            p = ICMP_ECHO if proto == "ICMP" else port
            egress = simulate(pols[src], eps[dst].identity, "egress", proto, p)
            ingress = simulate(pols[dst], eps[src].identity, "ingress", proto, p)
            deciding = egress if not egress.allowed else ingress
            c: dict[str, Any] = {
                "name": f"{src}->{dst} {proto}/{port or 'echo'}",
                "from": src,
                "to": dst,
                "protocol": proto,
                "expect": "allow" if egress.allowed and ingress.allowed else "deny",
            }
            if port is not None:
                c["port"] = port
            if deciding.drop_reason is not None:
                c["dropReason"] = deciding.drop_reason
            cases.append(c)
        report = lab.check(yaml.safe_dump(cases), name="property")
        assert report.passed, f"{explain(report)}\npolicies:\n{text}"
        assert all(r.datapath is not None for r in report.cases)
        for r in report.cases:
            event(f"datapath {r.datapath} (drop reason {r.drop_reason})")
    finally:
        lab.delete_policies()
