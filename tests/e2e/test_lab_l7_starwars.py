"""Cilium's own L7 example in a lab (issue #15 Must hold), its policy verbatim from Cilium's
getting-started guide (``sw_l3_l4_l7_policy.yaml``): only ``POST /v1/request-landing`` from
``org: empire`` pods reaches port 80 of the ``class: deathstar`` pod. The rule is an *ingress*
rule: the datapath hands the empire pods' connections to the deathstar's node's Envoy
(``cilium-http-ingress``) wherever the tiefighter runs, on the deathstar's node (cil_from_container
→ local delivery) or on the other one (out of the tunnel, cil_from_overlay); Envoy forwards the
allowed request to the deathstar as the tiefighter (original_src), answers ``PUT
/v1/exhaust-port`` with Cilium's ``403 Access denied``, and the xwing (``org: alliance``) is
dropped at L3/L4. Vader's own egress policy sends its connections through the egress listener
first (an allow-all HTTP rule): Envoy's upstream connection to the deathstar, through the node
stack (cil_to_container, tc egress), goes back into the lxc's tc ingress and to the ingress
listener, so the deathstar's rule still decides (no bypass). The deathstar's node's Hubble
shows the L7 request/response flows and the xwing's policy drop; ``policy trace`` and a
PolicyTest name the L7 rule."""

from __future__ import annotations

import functools
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliary.client.agent import AgentClient
from ciliary.core.models import TraceRequest
from ciliary.lab import manager
from tests.kubectl import wait_for

from .conftest import CILIARY, Lab, assert_no_leftovers, shared_kube_lab, unique
from .test_lab_kubectl import SHARES_LAB as KUBECTL_LAB
from .test_lab_kubectl import write_lab

pytestmark = pytest.mark.timeout(300)

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {name: LAB}
spec:
  nodes:
  - name: N1
  - name: N2
---
apiVersion: v1
kind: Pod
metadata: {name: deathstar, labels: {org: empire, class: deathstar}}
spec:
  nodeName: N1
  containers: [{name: main, command: [ciliary, workload, http-server, --port, "80"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, labels: {org: empire, class: tiefighter}}
spec:
  nodeName: N1
  containers: [{name: main, command: [ciliary, workload, pause]}]
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter-2, labels: {org: empire, class: tiefighter}}
spec:
  nodeName: N2
  containers: [{name: main, command: [ciliary, workload, pause]}]
---
apiVersion: v1
kind: Pod
metadata: {name: vader, labels: {org: empire, class: vader}}
spec:
  nodeName: N1
  containers: [{name: main, command: [ciliary, workload, pause]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: vader-egress-visibility}
spec:
  endpointSelector: {matchLabels: {class: vader}}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{}]}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, labels: {org: alliance, class: xwing}}
spec:
  nodeName: N2
  containers: [{name: main, command: [ciliary, workload, pause]}]
---
"""
# Cilium's sw_l3_l4_l7_policy.yaml, verbatim
POLICY = """\
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector:
    matchLabels:
      org: empire
      class: deathstar
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: "POST"
          path: "/v1/request-landing"
"""


def _lab(tmp_path_factory: pytest.TempPathFactory, routing: str = "") -> Iterator[Lab]:
    name, n1, n2 = unique("hsw"), unique("hn"), unique("hn")
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    text = LAB.replace("LAB", name).replace("N1", n1).replace("N2", n2) + POLICY
    path.write_text(text.replace("spec:\n  nodes:", f"spec:\n{routing}  nodes:", 1))
    try:
        yield Lab(name, n1, manager.up(path), path)
    finally:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [n1, n2])


# The tunnel-mode tests take test_lab_kubectl's two-node lab (shared, one lab up and down fewer a
# run: tunnel mode, the default, socket-LB on as here): LAB's pods and the policies are applied
# to it as they are (``lab apply``: the policies in force before the pods start, as with lab
# up). Its own pods are in shop, workloads' (test_lab_workloads shares it too) carry app labels
# none of the policies here select, and these pods none of theirs. native_lab is a lab of its own.
SHARES_LAB = KUBECTL_LAB


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[Lab]:
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as (name, nodes, _):
        n1, n2 = nodes
        path = tmp_path_factory.mktemp("starwars") / "starwars.yaml"
        pods = LAB.split("---\n", 1)[1]  # every document but the Lab
        path.write_text(pods.replace("N1", n1).replace("N2", n2) + POLICY)
        yield Lab(name, n1, manager.apply(path, name=name), path)


@pytest.fixture(scope="module")
def native_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _lab(tmp_path_factory, "  routingMode: native\n  autoDirectNodeRoutes: true\n")


def _curl(lab: Lab, pod: str, method: str, path: str, family: int = 4) -> tuple[str, str]:
    """(status code and body size, body) of one request from ``pod`` to the deathstar (the
    body as text: its "\\r\\n" read as "\\n"); code 000: no answer."""
    ip = lab.pod_ip("default/deathstar", family)
    url = f"http://{ip if family == 4 else f'[{ip}]'}{path}"
    res = lab.run(f"default/{pod}", "curl", "-s", "-m", "3", "-X", method,
                  "-w", "\n%{http_code} %{size_download}", url)  # fmt: skip
    body, _, code = res.stdout.rpartition("\n")
    return code, body


def _hubble(lab: Lab, *flags: str) -> list[dict[str, Any]]:
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == lab.node)
    res = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock",
         "--last", "2000", "-o", "jsonpb", *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


@pytest.mark.parametrize("tiefighter", ["tiefighter", "tiefighter-2", "vader"])
def test_landing_allowed_exhaust_port_denied(lab: Lab, tiefighter: str) -> None:
    # the agent starts Envoy when the rule first applies; until it listens the datapath drops
    # the redirected connection (fail closed)
    deadline = time.monotonic() + 30
    while (got := _curl(lab, tiefighter, "POST", "/v1/request-landing"))[0][:3] != "200":
        assert time.monotonic() < deadline, got
        time.sleep(0.3)
    # Envoy's upstream connection left as the tiefighter: the deathstar sees the real client
    seen = json.loads(got[1])
    assert seen["path"] == "/v1/request-landing"
    assert seen["client"].rpartition(":")[0] == lab.pod_ip(f"default/{tiefighter}"), seen
    # Cilium's answer, "Access denied\r\n" (15 bytes)
    assert _curl(lab, tiefighter, "PUT", "/v1/exhaust-port") == ("403 15", "Access denied\n")
    assert _curl(lab, tiefighter, "GET", "/v1/request-landing")[0] == "403 15"


@pytest.mark.parametrize("tiefighter", ["tiefighter", "tiefighter-2"])
def test_ipv6_too(lab: Lab, tiefighter: str) -> None:
    got = _curl(lab, tiefighter, "POST", "/v1/request-landing", 6)
    assert got[0][:3] == "200", got
    client = json.loads(got[1])["client"]
    assert client.rpartition(":")[0].strip("[]") == lab.pod_ip(f"default/{tiefighter}", 6)
    assert _curl(lab, tiefighter, "PUT", "/v1/exhaust-port", 6) == ("403 15", "Access denied\n")


def test_xwing_is_dropped_at_l3_l4(lab: Lab) -> None:
    assert _curl(lab, "xwing", "POST", "/v1/request-landing")[0] == "000 0"
    xwing = lab.pod_ip("default/xwing")
    drops = wait_for(
        "the xwing's drop in the deathstar node's Hubble",
        lambda: [
            f
            for f in _hubble(lab, "--verdict", "DROPPED")
            if f["IP"]["source"] == xwing and f.get("drop_reason_desc") == "POLICY_DENIED"
        ],
        20,
    )
    assert drops[-1]["destination"]["pod_name"] == "deathstar"


def test_hubble_shows_the_l7_request_and_response_flows(lab: Lab) -> None:
    test_landing_allowed_exhaust_port_denied(lab, "tiefighter")

    def summaries() -> set[tuple[str, str, str, int]]:
        out = set()
        for f in _hubble(lab, "--type", "l7"):
            http = f.get("l7", {}).get("http", {})
            out.add((f["l7"]["type"], f["verdict"], http.get("method", ""), http.get("code", 0)))
        return out

    want = {
        ("REQUEST", "FORWARDED", "POST", 0),
        ("RESPONSE", "FORWARDED", "POST", 200),
        ("REQUEST", "DROPPED", "PUT", 0),
        ("RESPONSE", "FORWARDED", "PUT", 403),
    }
    got = wait_for("the L7 flows in Hubble", lambda: want <= summaries() or None, 20)
    assert got
    # the policy verdict of the deathstar's ingress says redirected (to the L7 proxy), as upstream's
    tiefighter = lab.pod_ip("default/tiefighter")
    verdicts = {
        (f["verdict"], f.get("traffic_direction"))
        for f in _hubble(lab, "--type", "policy-verdict", "--to-pod", "default/deathstar")
        if f["IP"]["source"] == tiefighter
    }
    assert ("REDIRECTED", "INGRESS") in verdicts, verdicts
    # the connection's packets were handed to the proxy (observation point to-proxy)
    points = {
        f.get("trace_observation_point") for f in _hubble(lab, "--to-pod", "default/deathstar")
    }
    assert "TO_PROXY" in points, points


LANDING = "http: method=POST path=/v1/request-landing"


def test_policy_trace_names_the_l7_rule(lab: Lab) -> None:
    req = TraceRequest(src="default/tiefighter", dst="default/deathstar", protocol="TCP", port=80)
    with AgentClient(manager.agent_socket(lab.node, name=lab.name)) as cl:
        tr = cl.policy_trace(req)
        assert tr.allowed and tr.ingress.reason == "allowed"
        assert [r.name for r in tr.ingress.rules] == ["rule1"]
        assert tr.ingress.l7 == [LANDING] and tr.ingress.proxy_port > 0
        assert tr.ingress.proxy_port == cl.status().proxy_ports["cilium-http-ingress"]
        xwing = cl.policy_trace(req.model_copy(update={"src": lab.pod_ip("default/xwing")}))
        assert not xwing.allowed and xwing.ingress.l7 == []


def test_policy_test_cases_name_the_l7_rule(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "starwars.test.yaml"
    path.write_text(
        "apiVersion: ciliary.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: starwars}\n"
        "spec:\n  cases:\n"
        "  - {name: landing, from: default/tiefighter, to: default/deathstar, port: 80,"
        " expect: allow, rule: rule1}\n"
        "  - {name: other node, from: default/tiefighter-2, to: default/deathstar, port: 80,"
        " expect: allow, rule: rule1}\n"
        "  - {name: alliance, from: default/xwing, to: default/deathstar, port: 80,"
        " expect: deny, dropReason: 133}\n"
    )
    res = subprocess.run(
        [CILIARY, "policy", "test", str(path), "--name", lab.name, "-o", "json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    landing, other, alliance = json.loads(res.stdout)["cases"]
    for case in (landing, other):
        assert (case["datapath"], case["trace"], case["client"]) == ("allow", "allow", "connected")
        assert (
            case["reason"]
            == f"CiliumNetworkPolicy default/rule1 rule 0 ingress[0]; L7 (proxy): {LANDING}"
        )
        assert case["l7"] == [LANDING]
    assert (alliance["datapath"], alliance["drop_reason"]) == ("deny", 133)


def test_native_routing_other_node(native_lab: Lab) -> None:
    # native routing: the tiefighter's packets reach the deathstar's node on eth0, where
    # cil_from_netdev's delivery hands them to the ingress listener
    test_landing_allowed_exhaust_port_denied(native_lab, "tiefighter-2")
    test_landing_allowed_exhaust_port_denied(native_lab, "tiefighter")
