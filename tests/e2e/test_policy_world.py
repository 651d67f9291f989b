"""The world outside the cluster in policy, with real packets (``examples/policies/world.yaml``):
two world hosts (the Lab's ``spec.externals``) and pods on two nodes in native routing mode,
where the lab gives each world host a route to every node's pod CIDRs via that node's IP (as a
real network's router or BGP peering would), so world hosts reach pods directly and pods' replies
and requests reach them without masquerade.

Semantics asserted, with their sources (cilium/cilium ``Documentation/security/policy/``):
- ``fromEntities: [world]`` / ``toEntities: [world]`` select every peer outside the cluster, and
  a pod is never ``world`` (``pkg/policy/api/entity.go``; ``language.rst`` "Entities Based");
- ``fromCIDR`` / ``toCIDR`` select the addresses in the prefix only; an endpoint selected by any
  ingress (egress) rule default-denies the rest of that direction (``intro.rst``, enforcement
  modes), drop reason 133 "Policy denied";
- egress ``toServices`` allows the endpoint addresses of a Service without a selector, named
  (``k8sService``) or selected by its labels (``k8sServiceSelector``), and follows its
  EndpointSlices (``language.rst`` "Services based": selector-less Services only; an Endpoints
  object is mirrored into a slice, as kube-controller-manager's endpointslicemirroring);
- egress ``toFQDNs`` allows the IPs DNS gave for the names it matches (``language.rst`` "DNS
  based"; here the agents' DNS cache starts with the lab file's ``dnsProxy.preCache``, and
  learns from the pods' queries through the node's DNS proxy, which ``rules: dns`` restrict:
  a name outside them is REFUSED);
- the world has the reserved identity ``world`` (9 ``world-ipv4`` / 10 ``world-ipv6`` in a
  dual-stack cluster), a prefix some policy names has a CIDR identity (``cidr:<prefix>`` plus
  ``reserved:world`` labels, local scope ``1 << 24`` and up): Hubble names them on the enforcing
  node (``pkg/identity/numericidentity.go``, ``pkg/identity/identity.go``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ciliary.lab import manager
from tests.kubectl import get_json, kubectl, wait_for

from .conftest import CILIARY
from .test_policy_runner import EXAMPLES, PolicyLab, explain, policy_lab

pytestmark = pytest.mark.timeout(300)

PARTNER = ("172.18.0.100", "fc00:f853:ccd:e793::100")
STRANGER = ("172.18.0.101", "fc00:f853:ccd:e793::101")
LOCAL_IDENTITY_MIN = 1 << 24  # CIDR identities are node-local (upstream's local scope)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyLab]:
    yield from policy_lab(tmp_path_factory, "world.yaml", "pw")


def _hubble(lab: PolicyLab, node: str) -> list[dict[str, Any]]:
    nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
    res = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock",
         "--last", "1000", "-o", "jsonpb", "--verdict", "DROPPED"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


def _drop(lab: PolicyLab, node: str, src: str, dst: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [
            f
            for f in _hubble(lab, node)
            if f["IP"]["source"] == src
            and f["IP"]["destination"] == dst
            and f.get("drop_reason_desc") == "POLICY_DENIED"
        ]

    return wait_for(f"{src} -> {dst} dropped in node {node}'s Hubble", found, 20)[-1]


def test_world_hosts_route_to_every_nodes_pod_cidrs(lab: PolicyLab) -> None:
    rec = manager.record(lab.name)
    want = set()
    for n in rec.nodes:
        assert n.ipv4_cidr and n.ipv6_cidr and n.node_ipv4 and n.node_ipv6
        want |= {(n.ipv4_cidr, n.node_ipv4), (n.ipv6_cidr, n.node_ipv6)}
    assert len(rec.externals) == 2
    for ext in rec.externals:
        have = set()
        for family in ("-4", "-6"):
            out = subprocess.run(
                ["ip", family, "-n", ext.netns, "-j", "route", "show", "dev", "eth0"],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout  # fmt: skip
            have |= {(r["dst"], r["gateway"]) for r in json.loads(out) if "gateway" in r}
        assert have == want, ext.name


def test_shipped_policy_test_file(lab: PolicyLab) -> None:
    """Every case of ``world.test.yaml`` holds, decided by the datapath on the pod's node."""
    res = subprocess.run(
        [CILIARY, "policy", "test", str(EXAMPLES / "world.test.yaml"),
         "--name", lab.name, "-o", "json"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    report = json.loads(res.stdout)
    failed = {c["name"]: c["problems"] for c in report["cases"] if not c["passed"]}
    assert not failed and res.returncode == 0, failed
    by_name = {c["name"]: c for c in report["cases"]}
    assert len(by_name) == 18
    # the world host's own address is the source, its answer came back (an allow needs it)
    partner_in = by_name["partner -> web (fromEntities world)"]
    assert (partner_in["src_ip"], partner_in["client"]) == (PARTNER[0], "connected")
    assert by_name["stranger -> api (not in the CIDR)"]["direction"] == "ingress"
    assert by_name["client -> stranger (not in the CIDR)"]["direction"] == "egress"
    assert by_name["client -> partner over IPv6 (toCIDR)"]["dst_ip"] == PARTNER[1]


def test_world_drops_name_world_and_cidr_identities_in_hubble(lab: PolicyLab) -> None:
    """The enforcing node's Hubble names the world peer of a drop: ``reserved:world`` for an
    address no policy names, the CIDR identity (``cidr:`` labels) for one a policy names."""
    node1, node2 = lab.nodes  # api and client on node 1, web, db and crawler on node 2
    report = lab.expect(
        """
        - {from: world:stranger, to: shop/api, port: 80, expect: deny}
        - {from: world:stranger, to: shop/api, port: 80, family: 6, expect: deny}
        - {from: world:partner, to: shop/db, port: 5432, expect: deny}
        - {from: default/client, to: world:stranger, port: 80, expect: deny}
        - {from: world:partner, to: shop/api, port: 80, expect: allow}
        """,
        name="hubble",
    )
    assert report.passed, explain(report)
    api4, api6, db = lab.pod_ip("shop/api"), lab.pod_ip("shop/api", 6), lab.pod_ip("shop/db")
    client = lab.pod_ip("default/client")

    drop = _drop(lab, node1, STRANGER[0], api4)  # ingress on api's node: world-ipv4
    assert drop["node_name"].endswith(node1) and drop["traffic_direction"] == "INGRESS", drop
    assert drop["source"]["identity"] == 9, drop
    assert "reserved:world" in drop["source"]["labels"], drop
    assert not [x for x in drop["source"]["labels"] if x.startswith("cidr:")], drop
    drop = _drop(lab, node1, STRANGER[1], api6)  # the same over IPv6: world-ipv6
    assert drop["source"]["identity"] == 10 and "reserved:world" in drop["source"]["labels"]

    # the partner's address is in a CIDR policy: its drop at db's node names the CIDR identity
    drop = _drop(lab, node2, PARTNER[0], db)
    assert drop["node_name"].endswith(node2) and drop["traffic_direction"] == "INGRESS", drop
    assert drop["source"]["identity"] >= LOCAL_IDENTITY_MIN, drop
    assert f"cidr:{PARTNER[0]}/32" in drop["source"]["labels"], drop
    assert "reserved:world" in drop["source"]["labels"], drop

    drop = _drop(lab, node1, client, STRANGER[0])  # egress on client's node
    assert drop["traffic_direction"] == "EGRESS" and drop["destination"]["identity"] == 9, drop
    assert "reserved:world" in drop["destination"]["labels"], drop


# A Service without a selector whose endpoints are the partner (an external database's shape):
# its IPv4 address in an EndpointSlice written by hand, its IPv6 one in an Endpoints object (as
# Cilium's toServices example), which the controller manager mirrors into a slice; toServices
# names the Service (by name, then by its labels): the policy allows the endpoints' addresses,
# nothing else of the world.
PARTNER_SERVICE = f"""\
apiVersion: v1
kind: Service
metadata: {{name: partner, namespace: shop, labels: {{role: partner}}}}
spec:
  ipFamilyPolicy: PreferDualStack
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: partner-v4
  namespace: shop
  labels: {{kubernetes.io/service-name: partner}}
addressType: IPv4
ports: [{{name: http, port: 80, protocol: TCP}}]
endpoints: [{{addresses: ["{PARTNER[0]}"]}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: partner, namespace: shop}}
subsets:
- addresses: [{{ip: "{PARTNER[1]}"}}]
  ports: [{{name: http, port: 80, protocol: TCP}}]
"""

API_TO_SERVICE = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: api-to-partner-service, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: api}}}}
  egress:
  - toServices: [{peer}]
"""

PARTNER_TO_STRANGER = (f'addresses: ["{PARTNER[0]}"]', f'addresses: ["{STRANGER[0]}"]')

BY_NAME = "{k8sService: {serviceName: partner, namespace: shop}}"
BY_LABELS = "{k8sServiceSelector: {selector: {matchLabels: {role: partner}}, namespace: shop}}"


def test_to_services_allows_a_selector_less_services_world_endpoints(lab: PolicyLab) -> None:
    """Egress ``toServices`` (``k8sService`` by name, then ``k8sServiceSelector``) on shop/api
    (node 1; no other egress rule selects it): the world host the Service's endpoints name (an
    EndpointSlice, and an Endpoints mirrored into one) is reached over both families, straight
    and through the Service's ClusterIP (translated first, the policy applies to the backend),
    while another world host is denied, Policy denied in node 1's Hubble (egress, to the
    stranger's address); the IPv4 slice moved to the stranger swaps them."""
    kubeconfig = subprocess.run(
        [CILIARY, "lab", "kubeconfig", "--name", lab.name],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    kubectl(kubeconfig, "apply", "-f", "-", stdin=PARTNER_SERVICE)
    vip = get_json(kubeconfig, "service", "partner", "-n", "shop")["spec"]["clusterIP"]

    _wait_endpoints(lab, set(PARTNER))
    api = lab.pod_ip("shop/api")
    try:
        for peer in (BY_NAME, BY_LABELS):
            lab.import_policy(API_TO_SERVICE.format(peer=peer))
            report = lab.expect(
                """
                - {from: shop/api, to: world:partner, port: 80, expect: allow}
                - {from: shop/api, to: world:partner, port: 80, family: 6, expect: allow}
                - {from: shop/api, to: world:stranger, port: 80, expect: deny}
                - {from: shop/api, to: world:stranger, port: 80, family: 6, expect: deny}
                """,
                name="to-services",
            )
            assert report.passed, explain(report)
            got = lab.run("shop/api", "ciliary", "workload", "http-get", "--timeout", "3",
                          f"http://{vip}/")  # fmt: skip
            assert got.returncode == 0, (peer, got.stdout, got.stderr)
            drop = _drop(lab, lab.nodes[0], api, STRANGER[0])
            assert drop["traffic_direction"] == "EGRESS", drop
        # what the rule allows follows the EndpointSlices: pointed at the stranger, it swaps
        kubectl(kubeconfig, "apply", "-f", "-", stdin=PARTNER_SERVICE.replace(*PARTNER_TO_STRANGER))
        _wait_endpoints(lab, {STRANGER[0], PARTNER[1]})
        report = lab.expect(
            """
            - {from: shop/api, to: world:stranger, port: 80, expect: allow}
            - {from: shop/api, to: world:partner, port: 80, expect: deny}
            """,
            name="to-services-moved",
        )
        assert report.passed, explain(report)
    finally:
        lab.delete_policies()
        kubectl(kubeconfig, "delete", "-f", "-", stdin=PARTNER_SERVICE)


API_TO_FQDN = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: api-to-partner-name, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: api}}}}
  egress:
  - toFQDNs: [{peer}]
"""


@pytest.mark.parametrize(
    "peer", ["{matchName: partner.example.com}", '{matchPattern: "*.example.com"}']
)
def test_to_fqdns_allows_the_ips_of_the_name(lab: PolicyLab, peer: str) -> None:
    """Egress ``toFQDNs`` on shop/api: the partner's name is in every agent's DNS cache (the lab
    file's ``dnsProxy.preCache``: ``--tofqdns-pre-cache``), so its IPs are allowed over both
    families while the stranger is denied (Policy denied in node 1's Hubble)."""
    for node in lab.nodes:
        listed = subprocess.run(
            [CILIARY, "fqdn", "cache", "list", "--node", node, "-o", "json"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        (entry,) = json.loads(listed)
        assert entry["fqdn"] == "partner.example.com" and entry["ips"] == list(PARTNER), entry
    lab.import_policy(API_TO_FQDN.format(peer=peer))
    try:
        report = lab.expect(
            """
            - {from: shop/api, to: world:partner, port: 80, expect: allow}
            - {from: shop/api, to: world:partner, port: 80, family: 6, expect: allow}
            - {from: shop/api, to: world:stranger, port: 80, expect: deny}
            """,
            name="to-fqdns",
        )
        assert report.passed, explain(report)
        drop = _drop(lab, lab.nodes[0], lab.pod_ip("shop/api"), STRANGER[0])
        assert drop["traffic_direction"] == "EGRESS", drop
    finally:
        lab.delete_policies()


def _wait_endpoints(lab: PolicyLab, addresses: set[str]) -> None:
    """Until every agent's service cache has shop/partner with exactly these endpoints."""

    def everywhere() -> bool:
        for node in lab.nodes:
            with lab.client(node) as cl:
                have = [s for s in cl.services() if (s.namespace, s.name) == ("shop", "partner")]
                if not have or {b.address for b in have[0].backends} != addresses:
                    return False
        return True

    wait_for(f"shop/partner's endpoints {sorted(addresses)} in every agent", everywhere, 30)


STRANGER_NAME = "stranger.shop.svc.cluster.local"
STRANGER_SERVICE = f"""\
apiVersion: v1
kind: Service
metadata: {{name: stranger, namespace: shop}}
spec:
  clusterIP: None
  ports: [{{name: echo, port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: stranger-v4
  namespace: shop
  labels: {{kubernetes.io/service-name: stranger}}
addressType: IPv4
ports: [{{name: echo, port: 80, protocol: TCP}}]
endpoints: [{{addresses: ["{STRANGER[0]}"]}}]
"""
API_DNS_PROXY = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: api-dns-proxy, namespace: shop}}
spec:
  endpointSelector:
    matchExpressions: [{{key: app, operator: In, values: [api, web]}}]
  egress:
  - toEndpoints:
    - matchLabels: {{k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}}
    toPorts:
    - ports: [{{port: "53", protocol: ANY}}]
      rules: {{dns: [{{matchPattern: "*.shop.svc.cluster.local"}}]}}
  - toFQDNs: [{{matchName: {STRANGER_NAME}}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""


def _observe(nrec: Any, *flags: str) -> list[dict[str, Any]]:
    """A node's flows for ``ciliary observe`` flags (jsonpb)."""
    res = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock",
         "--last", "2000", "-o", "jsonpb", *flags],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]


def test_dns_proxy_in_the_lab(lab: PolicyLab) -> None:
    """Issue #15's DNS walkthrough in a lab: shop/api (node 1, the cluster DNS pod's) and
    shop/web (node 2: the query and its answer cross nodes) ask the cluster DNS (kube-dns's
    ClusterIP) through their node's DNS proxy (``rules: dns``); the stranger's name (a headless
    Service whose endpoint is the stranger) is answered and the first connection to its IP,
    allowed by ``toFQDNs`` only after the answer (each node's cache learns from its own
    proxy), passes; a name outside the pattern is REFUSED; the DNS cache and Hubble show it."""
    kubeconfig = subprocess.run(
        [CILIARY, "lab", "kubeconfig", "--name", lab.name],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    kubectl(kubeconfig, "apply", "-f", "-", stdin=STRANGER_SERVICE)
    dns = ("--server", "10.96.0.10", "--timeout", "3")

    def echo(pod: str, timeout: str) -> subprocess.CompletedProcess[str]:
        return lab.run(pod, "ciliary", "workload", "tcp-echo", STRANGER[0], "80",
                       "--timeout", timeout)  # fmt: skip

    try:
        lab.import_policy(API_DNS_PROXY)
        for pod, node in (("shop/api", lab.nodes[0]), ("shop/web", lab.nodes[1])):
            # not resolved on this node yet: toFQDNs selects nothing, the stranger is dropped
            assert echo(pod, "1").returncode != 0, pod
            wait_for(
                f"{STRANGER_NAME} from {pod}",
                lambda pod=pod: lab.run(pod, "ciliary", "workload", "dns-query",
                                        STRANGER_NAME, *dns).returncode == 0,
                30,
            )  # fmt: skip
            first = echo(pod, "0.8")
            assert first.returncode == 0, f"{pod}: {first.stdout}{first.stderr}"
            refused = lab.run(pod, "ciliary", "workload", "dns-query",
                              "kubernetes.default.svc.cluster.local", *dns,
                              "--expect-rcode", "REFUSED")  # fmt: skip
            assert refused.returncode == 0, refused.stdout + refused.stderr
            listed = subprocess.run(
                [CILIARY, "fqdn", "cache", "list", "--node", node, "-o", "json"],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout  # fmt: skip
            assert STRANGER_NAME in {e["fqdn"] for e in json.loads(listed)}, listed
            nrec = next(n for n in manager.record(lab.name).nodes if n.name == node)
            res = subprocess.run(
                [CILIARY, "observe", "--server", f"unix://{nrec.state_dir}/hubble.sock",
                 "--last", "2000", "-o", "jsonpb", "--type", "l7"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            flows = [r["flow"] for r in map(json.loads, res.stdout.splitlines()) if "flow" in r]
            seen = {(f["l7"]["type"], f["verdict"], f["l7"]["dns"]["query"]) for f in flows
                    if "dns" in f.get("l7", {})}  # fmt: skip
            assert ("RESPONSE", "FORWARDED", f"{STRANGER_NAME}.") in seen, (pod, seen)
            assert ("REQUEST", "DROPPED", "kubernetes.default.svc.cluster.local.") in seen, seen
            # Hubble's l7.dns as upstream's (#15 Build 5): the answer's fields, --protocol dns
            answer = next(f["l7"] for f in _observe(nrec, "--protocol", "dns")
                          if f["l7"]["type"] == "RESPONSE"
                          and f["l7"]["dns"]["query"] == f"{STRANGER_NAME}.")  # fmt: skip
            got = answer["dns"]
            assert (got["ips"], got["qtypes"], got["rrtypes"], got.get("rcode", 0)) == (
                [STRANGER[0]], ["A"], ["A"], 0), got  # fmt: skip
            assert got["ttl"] > 0 and got["observation_source"] == "proxy"
            assert int(answer["latency_ns"]) > 0
            # L3/L4 flows to and from the resolved IP carry its name (the node's FQDN cache),
            # and --to-fqdn / --fqdn select them with upstream's wildcards
            named = _observe(nrec, "--to-fqdn", "*.shop.svc.cluster.local", "--type", "trace")
            assert named, "no trace flow to the stranger named"
            for f in named:
                assert f["destination_names"] == [STRANGER_NAME], f
                assert f["IP"]["destination"] == STRANGER[0], f
            back = _observe(nrec, "--from-fqdn", STRANGER_NAME, "--type", "trace")
            assert back, "no trace flow from the stranger named"
            for f in back:
                assert f["source_names"] == [STRANGER_NAME], f
                assert f["IP"]["source"] == STRANGER[0], f
    finally:
        lab.delete_policies()
        kubectl(kubeconfig, "delete", "-f", "-", stdin=STRANGER_SERVICE)
