"""Fuzzing the lab file parser: any input parses or fails with a one-line LabFileError, only.

Inputs are mutations of valid lab files (fields deleted, renamed, retyped, replaced by random
values; documents replaced; raw text corrupted), so that most of them get deep into validation.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciliary.k8s.calicoselector import SelectorError, parse_selector
from ciliary.lab.schema import (
    DEFAULT_SCENARIO,
    LabFile,
    LabFileError,
    parse_lab_text,
)

FILE = "fuzz.yaml"

RICH_LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {name: fuzz}
spec:
  ipam:
    mode: cluster-pool
    clusterPoolIPv4PodCIDRList: ["10.200.0.0/16"]
    clusterPoolIPv4MaskSize: 24
    clusterPoolIPv6PodCIDRList: ["fd00:10:200::/104"]
    clusterPoolIPv6MaskSize: 120
  monitorAggregation: none
  nodes: [{name: node1}, {name: node2}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a, app.kubernetes.io/part-of: demo}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {cni.projectcalico.org/ipAddrs: '["10.200.1.50", "fd00:10:200::132"]'}
spec:
  nodeName: node2
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: anything
    imagePullPolicy: IfNotPresent
    command: ["ciliary", "workload", "http-server", "--port", "80"]
    args: []
    env: [{name: X, value: "1"}]
    workingDir: /tmp
    ports: [{name: http, containerPort: 80, protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow, namespace: shop}
spec: {endpointSelector: {}}
"""

POOLS_LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {name: pools}
spec:
  ipam: {mode: pools}
  nodes:
  - {name: node1, labels: {zone: a, topology.kubernetes.io/region: r1}}
  - {name: node2, labels: {zone: b}}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: zone-a}
spec:
  cidr: 10.244.0.0/16
  blockSize: 26
  nodeSelector: zone == "a" || !has(zone)
  natOutgoing: true
  ipipMode: CrossSubnet
  allowedUses: [Workload, Tunnel]
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: zone-b}
spec:
  cidr: 10.245.0.0/16
  nodeSelector: zone in {"b", "c"} && topology.kubernetes.io/region not in {"r9"}
  vxlanMode: Always
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v6}
spec: {cidr: "fd00:10:244::/64", blockSize: 122, nodeSelector: all()}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: manual}
spec: {cidr: 10.250.0.0/24, assignmentMode: Manual, disabled: false}
---
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata: {name: default}
spec: {strictAffinity: false, maxBlocksPerHost: 20, autoAllocateBlocks: true}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    cni.projectcalico.org/ipAddrs: '["10.245.0.50", "fd00:10:244::32"]'
    cni.projectcalico.org/ipv4pools: '["zone-b"]'
spec:
  nodeName: node2
  containers: [{name: web, command: [ciliary, workload, pause]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  annotations:
    cni.projectcalico.org/ipv4pools: '["manual"]'
    cni.projectcalico.org/ipv6pools: '[]'
spec:
  containers: [{name: db, command: [ciliary, workload, pause]}]
"""

BASES = [
    list(yaml.safe_load_all(DEFAULT_SCENARIO)),
    list(yaml.safe_load_all(RICH_LAB)),
    list(yaml.safe_load_all(POOLS_LAB)),
]

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
INTERESTING = st.sampled_from(
    [
        "",
        "v1",
        "Pod",
        "Lab",
        "Namespace",
        "node1",
        "node2",
        "default",
        "shop",
        "TCP",
        "10.200.0.5",
        "10.200.0.1",
        "fd00:10:200::5",
        "10.0.0.0/8",
        '["10.200.0.7"]',
        "[x",
        "a/b",
        "-",
        "ciliary.io/v1alpha1",
        "cilium.io/v2",
        "CiliumNetworkPolicy",
        "pools",
        "cluster-pool",
        "IPPool",
        "IPAMConfiguration",
        "projectcalico.org/v3",
        "10.244.0.0/24",
        "10.244.0.1/16",
        "fd00:10:244::/120",
        "169.254.0.0/16",
        "all()",
        "!all()",
        'zone == "a"',
        "has(zone",
        '["zone-a"]',
        '["v6"]',
        "Always",
        "Never",
        "Manual",
        "Tunnel",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    INTERESTING,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(TEXT, INTERESTING, st.integers(0, 3)), inner, max_size=3),
    ),
    max_leaves=6,
)
KEYS = st.one_of(
    TEXT,
    INTERESTING,
    st.sampled_from(["name", "kind", "metadata", "spec", "containers", "labels", "command"]),
    st.integers(0, 3),
    st.none(),
)


def containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every mapping and list in ``node``."""
    found: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        found.append(path)
        for key, value in node.items():
            found.extend(containers(value, (*path, key)))
    elif isinstance(node, list):
        found.append(path)
        for i, value in enumerate(node):
            found.extend(containers(value, (*path, i)))
    return found


def at(root: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        root = root[part]
    return root


@st.composite
def mutated_documents(draw: st.DrawFn) -> list[Any]:
    docs: list[Any] = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = containers(docs)[1:]  # not the stream itself: documents and below
        op = draw(st.sampled_from(["delete", "rename", "replace", "insert", "duplicate", "doc"]))
        if op == "doc":
            index = draw(st.integers(0, len(docs)))
            docs.insert(index, draw(VALUES))
            continue
        target = at(docs, draw(st.sampled_from(paths)))
        if isinstance(target, dict):
            keys = list(target)
            if op == "insert" or not keys:
                target[draw(KEYS)] = draw(VALUES)
                continue
            key = draw(st.sampled_from(keys))
            if op == "delete":
                del target[key]
            elif op == "rename":
                target[draw(KEYS)] = target.pop(key)
            elif op == "duplicate":
                target[draw(KEYS)] = copy.deepcopy(target[key])
            else:
                target[key] = draw(VALUES)
        elif isinstance(target, list):
            if op == "insert" or not target:
                target.insert(draw(st.integers(0, len(target))), draw(VALUES))
                continue
            index = draw(st.integers(0, len(target) - 1))
            if op == "delete":
                del target[index]
            elif op == "duplicate":
                target.append(copy.deepcopy(target[index]))
            else:
                target[index] = draw(VALUES)
    return docs


def check(text: str) -> LabFile | None:
    try:
        return parse_lab_text(text, FILE)
    except LabFileError as err:
        message = str(err)
        assert message, "an empty error message"
        assert "\n" not in message and "\r" not in message
        assert message.startswith(f"{FILE}: ")
        assert err.problems and err.problems[0] == message
        assert all("\n" not in p and p.startswith(f"{FILE}: ") for p in err.problems)
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_documents_parse_or_fail_with_one_line(docs: list[Any]) -> None:
    text = yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True)
    check(text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([DEFAULT_SCENARIO, RICH_LAB, POOLS_LAB]),
    st.lists(
        st.tuples(
            st.integers(0, 2000),
            st.integers(0, 5),
            st.text(
                st.one_of(
                    st.sampled_from(list(":-[]{}#&*!|>'\"%@`,? \n\t\\")),
                    st.characters(exclude_categories=["Cs"]),
                ),
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_corrupted_text_parses_or_fails_with_one_line(
    text: str, edits: list[tuple[int, int, str]]
) -> None:
    for offset, deleted, inserted in edits:
        position = offset % (len(text) + 1)
        text = text[:position] + inserted + text[position + deleted :]
    check(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_fails_with_one_line(text: str) -> None:
    check(text)


SELECTOR_PIECES = st.sampled_from(
    [*"ab!&|=(){},'\" ", "has", "all", "in", "not", "==", "!=", "&&", "||", '"v"', "x.io/k"]
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(SELECTOR_PIECES, max_size=30).map("".join), st.text(max_size=30)))
def test_selectors_parse_or_fail_with_a_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert selector.matches({"a": "v", "x.io/k": ""}) in (True, False)


def test_the_bases_are_valid() -> None:
    for docs in BASES:
        assert check(yaml.safe_dump_all(docs, sort_keys=False)) is not None
