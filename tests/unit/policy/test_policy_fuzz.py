"""Fuzzing the policy parser: any input parses or fails with one-line PolicyError problems, only.

Inputs are mutations of valid, feature-rich policy documents (fields deleted, renamed, retyped or
replaced by random values, list items duplicated, documents replaced) so that most of them get
deep into validation, plus random YAML values and corrupted text.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciliary.policy.api import Policy, PolicyError, parse_policy_documents, parse_policy_text

FILE = "fuzz.yaml"

RICH = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rich
  namespace: shop
  labels: {team: a}
  annotations: {note: "x"}
  uid: 0b5e
spec:
  description: one
  endpointSelector:
    matchLabels: {app: web, "k8s:tier": front}
    matchExpressions: [{key: env, operator: In, values: [prod, dev]}]
  enableDefaultDeny: {ingress: true, egress: false}
  labels: [{key: owner, value: me, source: k8s}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}, {}]
    fromRequires: [{matchLabels: {env: prod}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: http, protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/v1/.*", host: "a\\\\.io", headers: ["X-A: 1"]}
        - headerMatches: [{name: X-B, value: b, mismatch: LOG}]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
    toPorts: [{ports: [{port: "1000", endPort: 2000, protocol: UDP}]}]
  - fromEntities: [world, host]
    icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
  - fromNodes: [{matchLabels: {role: worker}}]
  ingressDeny:
  - fromCIDR: [192.168.0.1]
    toPorts: [{ports: [{port: "22"}]}]
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.io"}, {matchName: a.io}]}
  - toFQDNs: [{matchName: a.io}, {matchPattern: "*.b.io"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}], serverNames: [a.io]}]
  - toServices: [{k8sService: {serviceName: db, namespace: shop}}]
  - toServices: [{k8sServiceSelector: {selector: {matchLabels: {a: b}}, namespace: x}}]
  - toCIDRSet: [{cidrGroupRef: group-a}]
  - toGroups: [{aws: {securityGroupsIds: [sg-1], region: eu}}]
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules: {kafka: [{role: produce, topic: t}, {apiKey: fetch, apiVersion: "3"}]}
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      listener: {name: l, envoyConfig: {name: cec, kind: CiliumEnvoyConfig}, priority: 5}
  - authentication: {mode: required}
    toEndpoints: [{}]
  egressDeny:
  - toEntities: [world]
specs:
- endpointSelector: {}
  ingress: [{}]
- endpointSelector: {matchLabels: {"reserved:init": ""}}
  egress: [{toEntities: [all]}]
status: {conditions: [{type: Valid}]}
"""

HOST = """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host}
spec:
  nodeSelector: {matchLabels: {node-access: ssh}}
  ingress:
  - fromEntities: [cluster]
  - toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  egress:
  - toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules: {dns: [{matchPattern: "*"}]}
"""

K8S = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: k8s, namespace: shop}
spec:
  podSelector: {matchLabels: {role: db}, matchExpressions: [{key: tier, operator: Exists}]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {project: p}}
      podSelector: {matchLabels: {role: frontend}}
    - podSelector: {}
    ports: [{protocol: TCP, port: 6379}, {port: metrics}, {protocol: UDP}]
  - {}
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: 32000, endPort: 32768}]
"""

VALID_TEXTS = (RICH, HOST, K8S)
VALID_DOCS: list[dict[str, Any]] = [yaml.safe_load(t) for t in VALID_TEXTS]


def check(outcome: object) -> None:
    """A parse result must be a list of policies; an error must be one-line problems."""
    assert isinstance(outcome, list)
    assert all(isinstance(p, Policy) for p in outcome)


def parse_text(text: str) -> None:
    try:
        check(parse_policy_text(text, FILE))
    except PolicyError as exc:
        assert exc.problems and str(exc) == exc.problems[0]
        for line in exc.problems:
            assert line.startswith(f"{FILE}:"), line
            assert "\n" not in line and "\r" not in line, line


def parse_docs(docs: list[object]) -> None:
    try:
        check(parse_policy_documents(list(enumerate(docs, 1)), FILE))
    except PolicyError as exc:
        assert exc.problems and str(exc) == exc.problems[0]
        for line in exc.problems:
            assert line.startswith(f"{FILE}:"), line
            assert "\n" not in line and "\r" not in line, line


def test_the_seeds_are_valid() -> None:
    for text in VALID_TEXTS:
        (policy,) = parse_policy_text(text, FILE)
        assert policy.rules


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "0",
            "80",
            "65536",
            "http",
            "TCP",
            "ANY",
            "In",
            "Exists",
            "world",
            "10.0.0.0/8",
            "fd00::/64",
            "1.2.3.4",
            "k8s:app",
            "reserved:host",
            "*.io",
            "EchoRequest",
            "IPv6",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3),
    ),
    max_leaves=8,
)


def containers(doc: object) -> list[object]:
    """Every dict and list inside ``doc`` (including ``doc``)."""
    found: list[object] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            found.append(node)
            stack.extend(node)
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> list[object]:
    docs: list[object] = [copy.deepcopy(d) for d in VALID_DOCS]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        doc_index = draw(st.integers(min_value=0, max_value=len(docs) - 1))
        nodes = containers(docs[doc_index])
        if not nodes:
            docs[doc_index] = draw(values)
            continue
        node = draw(st.sampled_from(nodes))
        operation = draw(st.sampled_from(["delete", "replace", "insert", "duplicate", "retype"]))
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node, key=repr)))
            if operation == "delete":
                del node[key]
            elif operation == "insert":
                node[draw(st.text(max_size=10))] = draw(values)
            elif operation == "duplicate":
                node[f"{key}x"] = copy.deepcopy(node[key])
            elif operation == "retype":
                node[key] = [node[key]] if not isinstance(node[key], list) else {"a": node[key]}
            else:
                node[key] = draw(values)
        elif isinstance(node, list) and node:
            index = draw(st.integers(min_value=0, max_value=len(node) - 1))
            if operation == "delete":
                del node[index]
            elif operation == "duplicate":
                node.append(copy.deepcopy(node[index]))
            elif operation == "insert":
                node.insert(index, draw(values))
            else:
                node[index] = draw(values)
        elif draw(st.booleans()):
            docs[doc_index] = draw(values)
    return docs


SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(mutated_documents())
def test_mutated_documents(docs: list[object]) -> None:
    parse_docs(docs)


@settings(SETTINGS, max_examples=120)
@given(mutated_documents())
def test_mutated_documents_as_yaml(docs: list[object]) -> None:
    try:
        text = yaml.safe_dump_all(docs)
    except yaml.YAMLError:
        return
    parse_text(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=3))
def test_random_documents(docs: list[object]) -> None:
    parse_docs(docs)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(VALID_TEXTS),
    st.integers(min_value=0, max_value=2000),
    st.text(max_size=5),
)
def test_corrupted_text(text: str, position: int, junk: str) -> None:
    position %= len(text)
    parse_text(text[:position] + junk + text[position + len(junk) :])


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    parse_text(text)


def test_hostile_yaml() -> None:
    parse_text("a: &x [*x]\n")  # a recursive structure
    parse_text("kind: CiliumNetworkPolicy\nspec: &s {ingress: [*s]}\n")
    parse_text("[" * 5000)
    parse_text("port: 1" + "0" * 5000 + "\n")
    parse_text("a: !!python/object:os.system ls\n")
