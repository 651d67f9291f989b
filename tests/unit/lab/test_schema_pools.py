"""The lab file in ``pools`` IPAM mode: Calico-style IPPool and IPAMConfiguration documents.

Every error is one line naming file, document, field path and expectation, as in cluster-pool
mode; the selector parser of ``nodeSelector`` is tested on its own at the end.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
import yaml

from ciliary.k8s.calicoselector import SelectorError, parse_selector
from ciliary.lab import schema
from ciliary.lab.schema import (
    IPAMConfiguration,
    IPPool,
    LabFile,
    LabFileError,
    LabSpec,
    NodeCIDRs,
    node_cidrs,
    parse_documents,
    parse_lab_text,
    with_running_pods,
)

FILE = "lab.yaml"
IPS = schema.REQUESTED_IPS_ANNOTATION
V4POOLS = schema.IPV4_POOLS_ANNOTATION
V6POOLS = schema.IPV6_POOLS_ANNOTATION
IPS_PATH = 'metadata.annotations["cni.projectcalico.org/ipAddrs"]'
V4POOLS_PATH = 'metadata.annotations["cni.projectcalico.org/ipv4pools"]'
V6POOLS_PATH = 'metadata.annotations["cni.projectcalico.org/ipv6pools"]'


def lab(
    *nodes: str | dict[str, Any], ipam: dict[str, Any] | None = None, name: str = "demo"
) -> dict[str, Any]:
    """A Lab document in pools mode (``ipam`` replaces the whole ipam mapping)."""
    listed = [{"name": n} if isinstance(n, str) else n for n in (nodes or ("node1", "node2"))]
    return {
        "apiVersion": "ciliary.io/v1alpha1",
        "kind": "Lab",
        "metadata": {"name": name},
        "spec": {"ipam": {"mode": "pools"} if ipam is None else ipam, "nodes": listed},
    }


def pool(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, **spec},
    }


def ipam_config(name: str = "default", **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPAMConfiguration",
        "metadata": {"name": name},
    }
    if spec:
        doc["spec"] = spec
    return doc


V4 = pool("v4", "10.244.0.0/16")
V6 = pool("v6", "fd00:10:244::/64")


def pod(
    name: str,
    *,
    node: str | None = None,
    ips: str | None = None,
    v4pools: str | None = None,
    v6pools: str | None = None,
) -> dict[str, Any]:
    annotations = {
        key: value
        for key, value in ((IPS, ips), (V4POOLS, v4pools), (V6POOLS, v6pools))
        if value is not None
    }
    metadata: dict[str, Any] = {"name": name}
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"containers": [{"name": "main", "command": ["pause"]}]}
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def dump(*docs: Any) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def parse(*docs: Any) -> LabFile:
    return parse_lab_text(dump(*docs), FILE)


def error_of(text: str, **kwargs: Any) -> LabFileError:
    with pytest.raises(LabFileError) as info:
        if kwargs:
            parse_documents(text, FILE, **kwargs)
        else:
            parse_lab_text(text, FILE)
    err = info.value
    assert "\n" not in str(err)
    assert str(err) == err.problems[0]
    assert all("\n" not in p and p.startswith(f"{FILE}: ") for p in err.problems)
    return err


def error(*docs: Any) -> str:
    return str(error_of(dump(*docs)))


def problems(*docs: Any) -> list[str]:
    return error_of(dump(*docs)).problems


# ---- the happy path -------------------------------------------------------------------------

EXAMPLE = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {name: demo}
spec:
  ipam: {mode: pools}
  nodes:
  - name: node1
    labels: {topology.kubernetes.io/zone: a, rack: r1}
  - name: node2
    labels: {topology.kubernetes.io/zone: b}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: zone-a}
spec:
  cidr: 10.244.0.0/16
  nodeSelector: topology.kubernetes.io/zone == "a"
  natOutgoing: true
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: zone-b}
spec:
  cidr: 10.245.0.0/16
  blockSize: 28
  nodeSelector: topology.kubernetes.io/zone in {"b", "c"} && !has(gpu)
  vxlanMode: CrossSubnet
  allowedUses: [Workload]
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: v6}
spec: {cidr: "fd00:10:244::/64"}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: reserved.v4}
spec: {cidr: 10.250.0.0/24, assignmentMode: Manual}
---
apiVersion: projectcalico.org/v3
kind: IPAMConfiguration
metadata: {name: default}
spec: {strictAffinity: true, maxBlocksPerHost: 0, autoAllocateBlocks: false}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    cni.projectcalico.org/ipAddrs: '["10.245.0.9", "fd00:10:244::9"]'
spec:
  nodeName: node2
  containers: [{name: web, command: [pause]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  annotations:
    cni.projectcalico.org/ipv4pools: '["reserved.v4"]'
    cni.projectcalico.org/ipv6pools: '["v6"]'
spec:
  containers: [{name: db, command: [pause]}]
"""


def test_a_pools_lab_parses() -> None:
    lf = parse_lab_text(EXAMPLE, FILE)
    assert lf.ipam_mode == "pools"
    assert lf.lab.ipam.mode == "pools"
    assert [p.name for p in lf.ip_pools] == ["zone-a", "zone-b", "v6", "reserved.v4"]
    zone_a, zone_b, v6, reserved = lf.ip_pools
    assert lf.ip_pool("zone-b") is zone_b
    with pytest.raises(KeyError):
        lf.ip_pool("nope")
    assert zone_a.cidr == IPv4Network("10.244.0.0/16") and zone_a.version == 4
    assert v6.cidr == IPv6Network("fd00:10:244::/64") and v6.version == 6
    assert zone_a.spec.block_size == 26  # the defaults, per family
    assert v6.spec.block_size == 122
    assert zone_b.spec.block_size == 28
    assert zone_b.selector.text == zone_b.spec.node_selector
    assert zone_a.spec.nat_outgoing and not zone_b.spec.nat_outgoing
    assert zone_b.spec.vxlan_mode == "CrossSubnet" and zone_b.spec.ipip_mode == "Never"
    assert zone_b.for_workloads and zone_b.spec.allowed_uses == ["Workload"]
    assert v6.spec.allowed_uses == ["Workload", "Tunnel"]
    assert v6.spec.node_selector == "all()"
    assert reserved.automatic is False and zone_a.automatic is True
    assert all(p.enabled for p in lf.ip_pools)
    # nodes and their labels; pools select them
    node1, node2 = lf.lab.nodes
    assert node1.labels == {"topology.kubernetes.io/zone": "a", "rack": "r1"}
    assert [p.name for p in lf.ip_pools if p.selects(node1.labels)] == [
        "zone-a",
        "v6",
        "reserved.v4",
    ]
    assert [p.name for p in lf.ip_pools if p.selects(node2.labels)] == [
        "zone-b",
        "v6",
        "reserved.v4",
    ]
    assert not zone_b.selects({"topology.kubernetes.io/zone": "b", "gpu": ""})
    # the IPAM configuration
    config = lf.ipam_config
    assert config.spec.strict_affinity is True
    assert config.spec.max_blocks_per_host == 0
    assert config.spec.auto_allocate_blocks is False
    # pods: requested addresses and pool annotations
    web, db = lf.pods
    assert web.requested_ips() == [IPv4Address("10.245.0.9"), IPv6Address("fd00:10:244::9")]
    assert web.requested_pools(4) is None and web.requested_pools(6) is None
    assert db.requested_pools(4) == ["reserved.v4"]
    assert db.requested_pools(6) == ["v6"]
    assert db.node_name == "node1"  # round-robin as in cluster-pool mode


def test_node_cidrs_do_not_exist_in_pools_mode() -> None:
    lf = parse_lab_text(EXAMPLE, FILE)
    empty = NodeCIDRs(ipv4=None, ipv6=None, ipv4_router=None, ipv6_router=None)
    assert node_cidrs(lf) == {"node1": empty, "node2": empty}
    ipam = lf.lab.ipam
    assert ipam.ipv4_pool is None and ipam.ipv6_pool is None
    assert ipam.cluster_pool_ipv4_pod_cidr_list == []
    assert ipam.cluster_pool_ipv6_pod_cidr_list == []
    with pytest.raises(ValueError, match="mode pools has no node CIDRs"):
        ipam.capacity()


def test_more_nodes_than_a_cluster_pool_would_hold_are_fine() -> None:
    nodes = [f"n{i}" for i in range(300)]  # the default cluster pool holds 256 nodes
    doc = lab(*nodes)
    doc["spec"]["nodeNetwork"] = {"ipv4": "172.18.0.0/23"}  # the default /24 holds 253
    assert len(parse(doc, V4).lab.nodes) == 300


def test_calico_json_of_the_documents() -> None:
    lf = parse_lab_text(EXAMPLE, FILE)
    assert lf.ip_pools[1].to_calico_json() == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "zone-b", "labels": {}, "annotations": {}},
        "spec": {
            "cidr": "10.245.0.0/16",
            "blockSize": 28,
            "ipipMode": "Never",
            "vxlanMode": "CrossSubnet",
            "natOutgoing": False,
            "disabled": False,
            "nodeSelector": 'topology.kubernetes.io/zone in {"b", "c"} && !has(gpu)',
            "allowedUses": ["Workload"],
            "assignmentMode": "Automatic",
            "disableBGPExport": False,
        },
    }
    assert lf.ipam_config.to_calico_json() == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPAMConfiguration",
        "metadata": {"name": "default", "labels": {}, "annotations": {}},
        "spec": {"strictAffinity": True, "maxBlocksPerHost": 0, "autoAllocateBlocks": False},
    }
    # the JSON reads back as the same model
    for pool_model in lf.ip_pools:
        assert IPPool.model_validate(pool_model.to_calico_json()) == pool_model
    json.dumps(lf.ip_pools[2].to_calico_json())  # plain JSON types only
    assert lf.ip_pools[2].to_calico_json()["spec"]["cidr"] == "fd00:10:244::/64"


def test_ipam_configuration_defaults_without_a_document() -> None:
    lf = parse(lab(), V4)
    assert lf.ipam_config.to_calico_json() == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPAMConfiguration",
        "metadata": {"name": "default", "labels": {}, "annotations": {}},
        "spec": {"strictAffinity": False, "maxBlocksPerHost": 20, "autoAllocateBlocks": True},
    }
    assert parse(lab(), V4, ipam_config()).ipam_config == lf.ipam_config
    assert IPAMConfiguration.model_validate(ipam_config()) == lf.ipam_config


def test_a_cluster_pool_lab_has_no_pools() -> None:
    cluster = lab(ipam={"mode": "cluster-pool"})
    lf = parse(cluster, pod("a"))
    assert lf.ipam_mode == "cluster-pool"
    assert lf.ip_pools == []
    assert lf.ipam_config.spec.max_blocks_per_host == 20
    assert node_cidrs(lf)["node1"].ipv4 == IPv4Network("10.200.0.0/24")
    # node labels exist in cluster-pool mode too
    assert parse(lab({"name": "n1", "labels": {"a": "b"}}, ipam={})).lab.nodes[0].labels == {
        "a": "b"
    }


def test_the_lab_document_dumps_and_reads_back_in_pools_mode() -> None:
    lf = parse_lab_text(EXAMPLE, FILE)
    dumped = lf.lab.model_dump(by_alias=True, mode="json")
    assert dumped["spec"]["ipam"] == {"mode": "pools"}
    assert dumped["spec"]["nodes"][1] == {
        "name": "node2",
        "labels": {"topology.kubernetes.io/zone": "b"},
    }
    assert LabSpec.model_validate(dumped) == lf.lab


def test_single_stack_and_disabled_pools() -> None:
    lf = parse(
        lab(), V6, pool("old", "10.1.0.0/16", disabled=True), pod("a", ips='["fd00:10:244::5"]')
    )
    assert [(p.name, p.enabled) for p in lf.ip_pools] == [("v6", True), ("old", False)]


def test_named_pools_may_be_manual() -> None:
    # assignmentMode Manual: only pods that name the pool (or one of its addresses) use it
    manual = pool("manual", "10.9.0.0/24", assignmentMode="Manual")
    lf = parse(lab(), V4, manual, pod("a", v4pools='["manual"]'), pod("b", ips='["10.9.0.7"]'))
    assert lf.pods[0].requested_pools(4) == ["manual"]
    assert parse(lab(), V4, pod("a", v4pools="[]")).pods[0].requested_pools(4) == []


def test_the_selector_matches_node_labels_with_calico_semantics() -> None:
    nodes = (
        {"name": "n1", "labels": {"zone": "a"}},
        {"name": "n2", "labels": {"zone": "b", "edge": "true"}},
        {"name": "n3"},
    )
    selectors = {
        "all()": ["n1", "n2", "n3"],
        "": ["n1", "n2", "n3"],
        "has(zone)": ["n1", "n2"],
        "!has(zone)": ["n3"],
        'zone == "a"': ["n1"],
        'zone != "a"': ["n2", "n3"],  # != also selects nodes without the label
        "zone in {'a', 'b'}": ["n1", "n2"],
        'zone not in {"a"}': ["n2", "n3"],
        'zone == "a" || edge == "true"': ["n1", "n2"],
        'has(zone) && !(edge == "true")': ["n1"],
        "!all()": [],
    }
    for selector, expected in selectors.items():
        lf = parse(lab(*nodes), pool("p", "10.1.0.0/16", nodeSelector=selector))
        assert [n.name for n in lf.lab.nodes if lf.ip_pools[0].selects(n.labels)] == expected


# ---- the Lab document in pools mode -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clusterPoolIPv4PodCIDRList", ["10.200.0.0/16"]),
        ("clusterPoolIPv4MaskSize", 24),
        ("clusterPoolIPv6PodCIDRList", []),
        ("clusterPoolIPv6MaskSize", 120),
    ],
)
def test_cluster_pool_fields_are_refused_in_pools_mode(field: str, value: Any) -> None:
    assert error(lab(ipam={"mode": "pools", field: value}), V4) == (
        f"{FILE}: document 1 (Lab demo): spec.ipam.{field}: only valid with mode cluster-pool"
        " (in mode pools, addresses come from IPPool documents)"
    )


def test_pools_mode_needs_an_enabled_pool_for_pods() -> None:
    expected = (
        f"{FILE}: document 1 (Lab demo): spec.ipam.mode: mode pools needs at least one enabled"
        " IPPool document (apiVersion: projectcalico.org/v3, kind: IPPool) for pods, and"
    )
    assert error(lab(), pod("a")) == f"{expected} it has none"
    assert error(lab(), pool("a", "10.1.0.0/16", disabled=True)) == (
        f"{expected} every one is disabled or has no Workload in allowedUses"
    )
    assert error(lab(), pool("t", "10.1.0.0/16", allowedUses=["Tunnel"])) == (
        f"{expected} every one is disabled or has no Workload in allowedUses"
    )


def test_invalid_node_labels() -> None:
    err = error(lab({"name": "node1", "labels": {"zone": "-a"}}), V4)
    assert err.startswith(
        f"{FILE}: document 1 (Lab demo): spec.nodes[0].labels.zone: expected a label value"
    )
    err = error(lab({"name": "node1", "labels": {"a b": "x"}}), V4)
    assert err.startswith(f'{FILE}: document 1 (Lab demo): spec.nodes[0].labels["a b"]: invalid')
    err = error(lab({"name": "node1", "labels": {"n": 1}}), V4)
    assert err == (
        f"{FILE}: document 1 (Lab demo): spec.nodes[0].labels.n: expected a string, got int 1"
        " (quote it to make it a string)"
    )


# ---- Calico documents where they do not belong --------------------------------------------------


def test_calico_documents_need_pools_mode() -> None:
    cluster = lab(ipam={"mode": "cluster-pool"})
    assert problems(cluster, V4, ipam_config()) == [
        f"{FILE}: document 2 (IPPool v4): IPPool documents need spec.ipam.mode: pools (lab"
        " 'demo' uses cluster-pool)",
        f"{FILE}: document 3 (IPAMConfiguration default): IPAMConfiguration documents need"
        " spec.ipam.mode: pools (lab 'demo' uses cluster-pool)",
    ]
    assert error(lab(ipam={}), V4).endswith(
        "IPPool documents need spec.ipam.mode: pools (lab 'demo' uses cluster-pool)"
    )


def test_pool_annotations_need_pools_mode() -> None:
    cluster = lab(ipam={"mode": "cluster-pool"})
    assert problems(cluster, pod("a", v4pools='["x"]', v6pools="[]")) == [
        f"{FILE}: document 2 (Pod default/a): {V4POOLS_PATH}: only valid with spec.ipam.mode:"
        " pools (lab 'demo' uses cluster-pool)",
        f"{FILE}: document 2 (Pod default/a): {V6POOLS_PATH}: only valid with spec.ipam.mode:"
        " pools (lab 'demo' uses cluster-pool)",
    ]


def test_calico_documents_cannot_be_applied_to_a_running_lab() -> None:
    base = parse(lab(), V4)
    err = error_of(dump(pool("more", "10.9.0.0/16"), ipam_config()), require_lab=False, base=base)
    assert err.problems == [
        f"{FILE}: document 1 (IPPool more): an IPPool cannot be added to the running lab 'demo';"
        " only Namespace, Pod and policy documents can",
        f"{FILE}: document 2 (IPAMConfiguration default): an IPAMConfiguration cannot be added"
        " to the running lab 'demo'; only Namespace, Pod and policy documents can",
    ]


# ---- IPPool documents ---------------------------------------------------------------------------


def pool_error(doc: dict[str, Any]) -> str:
    return error(lab(), V4, doc)


def where(name: str = "p") -> str:
    return f"{FILE}: document 3 (IPPool {name})"


CIDR_EXPECTED = "expected an IPv4 or IPv6 CIDR like 10.244.0.0/16 or fd00:10:244::/64"


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.9.0.1/16", f"{CIDR_EXPECTED}, got '10.9.0.1/16' (10.9.0.1/16 has host bits set)"),
        (
            "fd00:9::1/64",
            f"{CIDR_EXPECTED}, got 'fd00:9::1/64' (fd00:9::1/64 has host bits set)",
        ),
        ("10.9.0.0", f"{CIDR_EXPECTED}, got '10.9.0.0' (no prefix length)"),
        ("fd00:9::%eth0/64", f"{CIDR_EXPECTED}, got 'fd00:9::%eth0/64' (a pool has no zone)"),
        (
            "10.9.0.0/33",
            f"{CIDR_EXPECTED}, got '10.9.0.0/33' ('10.9.0.0/33' does not appear to be an IPv4 or"
            " IPv6 network)",
        ),
        (16, f"{CIDR_EXPECTED}, got int 16"),
        (
            "169.254.0.0/24",
            "169.254.0.0/24 overlaps the IPv4 link-local range 169.254.0.0/16 (pod addresses"
            " cannot be link-local)",
        ),
        (
            "169.0.0.0/8",
            "169.0.0.0/8 overlaps the IPv4 link-local range 169.254.0.0/16 (pod addresses cannot"
            " be link-local)",
        ),
        (
            "fe80::/64",
            "fe80::/64 overlaps the IPv6 link-local range fe80::/10 (pod addresses cannot be"
            " link-local)",
        ),
    ],
)
def test_pool_cidr(cidr: Any, message: str) -> None:
    assert pool_error(pool("p", cidr)) == f"{where()}: spec.cidr: {message}"


@pytest.mark.parametrize(
    ("cidr", "block_size", "message"),
    [
        ("10.9.0.0/16", 19, "expected a block size between 20 and 32 for an IPv4 pool, got int 19"),
        ("10.9.0.0/16", 33, "expected a block size between 20 and 32 for an IPv4 pool, got int 33"),
        (
            "fd00:9::/64",
            26,
            "expected a block size between 116 and 128 for an IPv6 pool, got int 26",
        ),
        (
            "fd00:9::/64",
            129,
            "expected a block size between 116 and 128 for an IPv6 pool, got int 129",
        ),
        ("10.9.0.0/16", "26", "expected an integer, got '26'"),
        (
            "10.9.0.0/29",
            28,
            "expected a block size of at least the pool's prefix length 29 (a block lies inside"
            " the pool), got int 28",
        ),
    ],
)
def test_pool_block_size(cidr: str, block_size: Any, message: str) -> None:
    assert (
        pool_error(pool("p", cidr, blockSize=block_size)) == f"{where()}: spec.blockSize: {message}"
    )


def test_a_null_block_size_is_the_default() -> None:
    lf = parse(
        lab(), pool("a", "10.9.0.0/16", blockSize=None), pool("b", "fd00::/64", blockSize=None)
    )
    assert [p.spec.block_size for p in lf.ip_pools] == [26, 122]


def test_block_sizes_at_the_limits() -> None:
    lf = parse(
        lab(),
        pool("a", "10.9.0.0/20", blockSize=20),
        pool("b", "10.10.0.0/32", blockSize=32),
        pool("c", "fd00:9::/116", blockSize=116),
        pool("d", "fd00:a::1/128", blockSize=128),
    )
    assert [p.spec.block_size for p in lf.ip_pools] == [20, 32, 116, 128]


def test_a_pool_smaller_than_the_default_block() -> None:
    assert pool_error(pool("p", "10.9.0.0/27")) == (
        f"{where()}: spec.cidr: 10.9.0.0/27 is smaller than one block (/26, the default"
        " blockSize for IPv4); set blockSize to at least 27"
    )
    assert pool_error(pool("p", "fd00:9::/123")) == (
        f"{where()}: spec.cidr: fd00:9::/123 is smaller than one block (/122, the default"
        " blockSize for IPv6); set blockSize to at least 123"
    )


def test_encapsulation_modes() -> None:
    assert pool_error(pool("p", "10.9.0.0/16", ipipMode="Always", vxlanMode="CrossSubnet")) == (
        f"{where()}: spec.vxlanMode: ipipMode and vxlanMode cannot both be enabled (ipipMode is"
        " Always); set one of them to Never"
    )
    assert pool_error(pool("p", "fd00:9::/64", ipipMode="Always")) == (
        f"{where()}: spec.ipipMode: expected Never for an IPv6 pool (IPIP carries IPv4 only; use"
        " vxlanMode), got 'Always'"
    )
    assert pool_error(pool("p", "10.9.0.0/16", ipipMode="always")) == (
        f"{where()}: spec.ipipMode: expected 'Never', 'Always' or 'CrossSubnet', got 'always'"
    )
    lf = parse(lab(), pool("a", "10.9.0.0/16", ipipMode="CrossSubnet", vxlanMode="Never"))
    assert lf.ip_pools[0].spec.ipip_mode == "CrossSubnet"
    lf = parse(lab(), pool("a", "fd00:9::/64", vxlanMode="Always"))
    assert lf.ip_pools[0].spec.vxlan_mode == "Always"


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"natOutgoing": "yes"}, "natOutgoing", "expected true or false, got 'yes'"),
        ({"disabled": 1}, "disabled", "expected true or false, got int 1"),
        (
            {"allowedUses": ["Workload", "Storage"]},
            "allowedUses[1]",
            "expected 'Workload', 'Tunnel' or 'LoadBalancer', got 'Storage'",
        ),
        ({"allowedUses": ["Tunnel", "Tunnel"]}, "allowedUses[1]", "Tunnel is given twice"),
        ({"allowedUses": []}, "allowedUses", "expected at least 1 item(s), got 0"),
        (
            {"assignmentMode": "Auto"},
            "assignmentMode",
            "expected 'Automatic' or 'Manual', got 'Auto'",
        ),
        ({"nodeSelector": ["all()"]}, "nodeSelector", "expected a string, got a list"),
        ({"ipip": {"enabled": True}}, "ipip", "unknown field"),
        ({"disableBGPExport": "yes"}, "disableBGPExport", "expected true or false, got 'yes'"),
        ({"disableBgpExport": True}, "disableBgpExport", "unknown field"),
    ],
)
def test_pool_fields(spec: dict[str, Any], path: str, message: str) -> None:
    assert pool_error(pool("p", "10.9.0.0/16", **spec)) == f"{where()}: spec.{path}: {message}"


def test_a_bad_node_selector_names_the_field() -> None:
    assert pool_error(pool("p", "10.9.0.0/16", nodeSelector='zone = "a"')) == (
        f'{where()}: spec.nodeSelector: expected a Calico selector (all(), has(k), k == "v",'
        ' k != "v", k in {"a", "b"}, k not in {"a", "b"}, joined by !, &&, || and parentheses),'
        " got 'zone = \"a\"': unexpected character '=' at character 6 (use == to compare)"
    )


def test_pool_document_structure() -> None:
    doc = pool("p", "10.9.0.0/16")
    del doc["spec"]["cidr"]
    assert pool_error(doc) == f"{where()}: spec.cidr: required field is missing"
    doc = pool("p", "10.9.0.0/16")
    del doc["spec"]
    assert pool_error(doc) == f"{where()}: spec: required field is missing"
    doc = pool("p", "10.9.0.0/16")
    doc["metadata"]["namespace"] = "default"
    assert pool_error(doc) == (
        f"{FILE}: document 3 (IPPool default/p): metadata.namespace: unknown field"
    )
    assert pool_error(pool("Pool_1", "10.9.0.0/16")) == (
        f"{where('Pool_1')}: metadata.name: expected a DNS-1123 subdomain (lowercase letters,"
        " digits, '-' and '.', each dot-separated part starting and ending with a letter or"
        " digit, at most 253 characters), got 'Pool_1'"
    )
    doc = pool("p", "10.9.0.0/16")
    doc["apiVersion"] = "crd.projectcalico.org/v1"
    assert pool_error(doc) == (
        f"{where()}: apiVersion: expected 'projectcalico.org/v3' for kind IPPool, got"
        " 'crd.projectcalico.org/v1'"
    )
    doc = pool("p", "10.9.0.0/16")
    doc["status"] = {}
    assert pool_error(doc) == f"{where()}: status: unknown field"


def test_all_problems_of_a_pool_are_reported() -> None:
    doc = pool("p", "10.9.0.0/16", natOutgoing="no", blockSize=99, bogus=1)
    assert error_of(dump(lab(), V4, doc)).problems == [
        f"{where()}: spec.blockSize: expected a block size between 20 and 32 for an IPv4 pool,"
        " got int 99",
        f"{where()}: spec.natOutgoing: expected true or false, got 'no'",
        f"{where()}: spec.bogus: unknown field",
    ]


# ---- pools together -----------------------------------------------------------------------------


def test_overlapping_pools() -> None:
    assert problems(
        lab(),
        V4,
        pool("inner", "10.244.7.0/24"),
        V6,
        pool("wide", "fd00:10::/32"),
        pool("other-family-same-bits", "::a00:0/104"),
    ) == [
        f"{FILE}: document 3 (IPPool inner): spec.cidr: pool 'inner' (10.244.7.0/24) overlaps"
        " pool 'v4' (10.244.0.0/16, document 2)",
        f"{FILE}: document 5 (IPPool wide): spec.cidr: pool 'wide' (fd00:10::/32) overlaps pool"
        " 'v6' (fd00:10:244::/64, document 4)",
    ]


def test_overlap_counts_disabled_pools_too() -> None:
    err = error(lab(), V4, pool("old", "10.244.0.0/16", disabled=True))
    assert err == (
        f"{FILE}: document 3 (IPPool old): spec.cidr: pool 'old' (10.244.0.0/16) overlaps pool"
        " 'v4' (10.244.0.0/16, document 2)"
    )


def test_duplicate_pool_names() -> None:
    assert error(lab(), V4, pool("v4", "10.9.0.0/16")) == (
        f"{FILE}: document 3 (IPPool v4): metadata.name: duplicate IPPool name 'v4' (also in"
        " document 2)"
    )


def test_ipam_configuration_documents() -> None:
    assert error(lab(), V4, ipam_config("cluster")) == (
        f"{FILE}: document 3 (IPAMConfiguration cluster): metadata.name: expected 'default'"
        " (Calico reads one IPAMConfiguration, named default), got 'cluster'"
    )
    assert error(lab(), V4, ipam_config(), ipam_config(strictAffinity=True)) == (
        f"{FILE}: document 4 (IPAMConfiguration default): a second IPAMConfiguration (the first"
        " is document 3); Calico reads one, named default"
    )
    assert error(lab(), V4, ipam_config(maxBlocksPerHost=-1)) == (
        f"{FILE}: document 3 (IPAMConfiguration default): spec.maxBlocksPerHost: expected a"
        " number >= 0, got int -1"
    )
    assert error(lab(), V4, ipam_config(strictAffinity="true")) == (
        f"{FILE}: document 3 (IPAMConfiguration default): spec.strictAffinity: expected true or"
        " false, got 'true'"
    )
    assert error(lab(), V4, ipam_config(maxBlocks=3)) == (
        f"{FILE}: document 3 (IPAMConfiguration default): spec.maxBlocks: unknown field"
    )
    doc = ipam_config()
    del doc["metadata"]
    assert error(lab(), V4, doc) == (
        f"{FILE}: document 3 (IPAMConfiguration): metadata: required field is missing"
    )


# ---- pods in pools mode -------------------------------------------------------------------------

POD = f"{FILE}: document 4 (Pod default/a)"


def pod_problems(*pools: dict[str, Any], **kwargs: Any) -> list[str]:
    return problems(lab(), *pools, pod("a", **kwargs))


def test_requested_addresses_must_be_in_an_enabled_pool_for_pods() -> None:
    assert pod_problems(V4, V6, ips='["10.9.0.1", "fd00:9::1"]') == [
        f"{POD}: {IPS_PATH}: 10.9.0.1 is not inside any IP pool (pools: v4 10.244.0.0/16)",
        f"{POD}: {IPS_PATH}: fd00:9::1 is not inside any IP pool (pools: v6 fd00:10:244::/64)",
    ]
    assert pod_problems(V4, pool("old", "10.9.0.0/16", disabled=True), ips='["10.9.0.1"]') == [
        f"{FILE}: document 4 (Pod default/a): {IPS_PATH}: 10.9.0.1 is inside pool 'old'"
        " (10.9.0.0/16), which is disabled"
    ]
    tunnel = pool("tunnel", "10.9.0.0/16", allowedUses=["Tunnel"])
    assert pod_problems(V4, tunnel, ips='["10.9.0.1"]') == [
        f"{POD}: {IPS_PATH}: 10.9.0.1 is inside pool 'tunnel' (10.9.0.0/16), which has no"
        " Workload in allowedUses"
    ]
    assert pod_problems(V4, pool("x", "10.9.0.0/16"), ips='["fd00::1"]') == [
        f"{POD}: {IPS_PATH}: fd00::1 is not inside any IP pool (the lab has no IPv6 pool)"
    ]


def test_any_address_of_a_pool_can_be_asked_for() -> None:
    # No node CIDR, so no network, router or broadcast address: blocks are not subnets.
    lf = parse(lab(), V4, pod("a", ips='["10.244.0.0"]'), pod("b", ips='["10.244.255.255"]'))
    assert [str(p.requested_ips()[0]) for p in lf.pods] == ["10.244.0.0", "10.244.255.255"]


def test_the_same_address_twice() -> None:
    docs = (lab(), V4, pod("z", ips='["10.244.3.3"]'), pod("a", ips='["10.244.3.3"]'))
    assert error(*docs) == (
        f"{POD}: {IPS_PATH}: 10.244.3.3 is also requested by pod default/z (document 3)"
    )


def test_requested_address_and_named_pools_must_agree() -> None:
    other = pool("other", "10.9.0.0/16")
    assert pod_problems(V4, other, ips='["10.244.0.5"]', v4pools='["other"]') == [
        f"{FILE}: document 4 (Pod default/a): {IPS_PATH}: 10.244.0.5 is inside pool 'v4', not"
        " one of the pools named by cni.projectcalico.org/ipv4pools (other)"
    ]
    lf = parse(lab(), V4, other, pod("a", ips='["10.9.0.5"]', v4pools='["v4", "other"]'))
    assert lf.pods[0].requested_pools(4) == ["v4", "other"]


def test_named_pools_must_exist_with_the_right_family() -> None:
    assert pod_problems(V4, V6, v4pools='["v6", "nope"]', v6pools='["v4"]') == [
        f"{FILE}: document 4 (Pod default/a): {V4POOLS_PATH}: pool 'v6' is an IPv6 pool"
        " (fd00:10:244::/64); this annotation names IPv4 pools",
        f"{FILE}: document 4 (Pod default/a): {V4POOLS_PATH}: no IPPool is named 'nope' (pools:"
        " 'v4', 'v6')",
        f"{FILE}: document 4 (Pod default/a): {V6POOLS_PATH}: pool 'v4' is an IPv4 pool"
        " (10.244.0.0/16); this annotation names IPv6 pools",
    ]


def test_named_pools_must_be_enabled_and_for_pods() -> None:
    old = pool("old", "10.9.0.0/16", disabled=True)
    tunnel = pool("tunnel", "10.10.0.0/16", allowedUses=["Tunnel"])
    assert problems(lab(), V4, old, tunnel, pod("a", v4pools='["old", "tunnel"]')) == [
        f"{FILE}: document 5 (Pod default/a): {V4POOLS_PATH}: pool 'old' is disabled",
        f"{FILE}: document 5 (Pod default/a): {V4POOLS_PATH}: pool 'tunnel' is not for pods"
        " (allowedUses has no Workload)",
    ]


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ("v4", "'v4' (not JSON)"),
        ('"v4"', "'\"v4\"'"),
        ("[1]", "'[1]'"),
        ('{"a": 1}', "'{\"a\": 1}'"),
    ],
)
def test_pool_annotation_syntax(value: str, got: str) -> None:
    assert error(lab(), V4, pod("a", v6pools=value)) == (
        f"{FILE}: document 3 (Pod default/a): {V6POOLS_PATH}: expected a JSON list of IP pool"
        f' names like ["pool-a", "pool-b"], got {got}'
    )


ZONES = ({"name": "node1", "labels": {"zone": "a"}}, {"name": "node2", "labels": {"zone": "b"}})
ZONE_A = pool("zone-a", "10.244.0.0/16", nodeSelector='zone == "a"')


def test_a_pod_on_a_node_no_pool_selects() -> None:
    manual = pool("manual", "10.9.0.0/16", assignmentMode="Manual")
    docs = (lab(*ZONES), ZONE_A, manual, pod("x"), pod("y"), pod("z", node="node2"))
    assert problems(*docs) == [
        f"{FILE}: document 5 (Pod default/y): spec.nodeName: no IP pool gives addresses on node"
        " node2: no enabled Workload pool with assignmentMode Automatic has a nodeSelector that"
        " selects its labels (zone=b) (assigned round-robin; set spec.nodeName to choose the"
        " node)",
        f"{FILE}: document 6 (Pod default/z): spec.nodeName: no IP pool gives addresses on node"
        " node2: no enabled Workload pool with assignmentMode Automatic has a nodeSelector that"
        " selects its labels (zone=b)",
    ]
    # naming a pool or asking for an address does not help: the node has no router address
    assert problems(lab(*ZONES), ZONE_A, manual, pod("z", node="node2", v4pools='["manual"]')) == [
        f"{FILE}: document 4 (Pod default/z): spec.nodeName: no IP pool gives addresses on node"
        " node2: no enabled Workload pool with assignmentMode Automatic has a nodeSelector that"
        " selects its labels (zone=b)",
    ]


def test_a_node_without_labels_says_so() -> None:
    docs = (lab("node1"), pool("p", "10.1.0.0/16", nodeSelector="has(zone)"), pod("a"))
    assert "selects its labels (none) (assigned round-robin" in error(*docs)


def test_named_pools_and_requested_addresses_must_select_the_node() -> None:
    # As the agent does (Calico would ignore nodeSelector for a pool the pod names).
    zone_b = pool("zone-b", "10.245.0.0/16", nodeSelector='zone == "b"')
    assert problems(lab(*ZONES), ZONE_A, zone_b, pod("p", node="node1", v4pools='["zone-b"]')) == [
        f"{FILE}: document 4 (Pod default/p): {V4POOLS_PATH}: pool 'zone-b' does not select"
        " node node1 (nodeSelector 'zone == \"b\"', node labels: zone=a)"
    ]
    assert problems(lab(*ZONES), ZONE_A, zone_b, pod("p", ips='["10.245.0.5"]')) == [
        f"{FILE}: document 4 (Pod default/p): {IPS_PATH}: 10.245.0.5 is inside pool 'zone-b'"
        " (10.245.0.0/16), which does not select node node1 (nodeSelector 'zone == \"b\"', node"
        " labels: zone=a) (assigned round-robin; set spec.nodeName to choose the node)"
    ]
    lf = parse(lab(*ZONES), ZONE_A, zone_b, pod("p", node="node2", ips='["10.245.0.5"]'))
    assert lf.pods[0].node_name == "node2"


def test_a_node_has_the_families_of_its_automatic_pools() -> None:
    # node1 has IPv4 only: the IPv6 pool is Manual, so the node has no IPv6 router address
    v6_manual = pool("v6", "fd00:10:244::/64", assignmentMode="Manual")
    assert problems(lab(), V4, v6_manual, pod("p", node="node1", v6pools='["v6"]')) == [
        f"{FILE}: document 4 (Pod default/p): {V6POOLS_PATH}: node node1 has no IPv6 addresses:"
        " no enabled Workload IPv6 pool with assignmentMode Automatic selects it (the node's"
        " router address comes from one)"
    ]
    assert problems(lab(), V4, v6_manual, pod("p", ips='["fd00:10:244::5"]')) == [
        f"{FILE}: document 4 (Pod default/p): {IPS_PATH}: fd00:10:244::5: node node1 has no IPv6"
        " addresses: no enabled Workload IPv6 pool with assignmentMode Automatic selects it (the"
        " node's router address comes from one) (assigned round-robin; set spec.nodeName to"
        " choose the node)"
    ]


# ---- a running lab in pools mode ----------------------------------------------------------------


def base_lab() -> LabFile:
    return parse(
        lab(),
        V4,
        V6,
        ipam_config(strictAffinity=True),
        pod("a", ips='["10.244.0.10"]'),  # node1
        pod("b"),  # node2
    )


def test_apply_in_pools_mode() -> None:
    base = base_lab()
    added = parse_documents(
        dump(pod("c", ips='["10.244.9.9"]'), pod("d", v6pools='["v6"]')),
        "apply.yaml",
        require_lab=False,
        base=base,
    )
    assert added.lab == base.lab
    assert added.ip_pools == base.ip_pools  # the running lab's pools
    assert added.ipam_config.spec.strict_affinity is True
    assert [(p.key, p.node_name) for p in added.pods] == [
        ("default/c", "node1"),
        ("default/d", "node2"),
    ]
    err = error_of(dump(pod("e", ips='["10.244.0.10"]')), require_lab=False, base=base)
    assert str(err) == (
        f"{FILE}: document 1 (Pod default/e): {IPS_PATH}: 10.244.0.10 is also requested by pod"
        " default/a, already in the lab"
    )
    err = error_of(
        dump(pod("e", ips='["10.9.0.1"]', v4pools='["x"]')), require_lab=False, base=base
    )
    assert err.problems == [
        f"{FILE}: document 1 (Pod default/e): {V4POOLS_PATH}: no IPPool is named 'x' (pools:"
        " 'v4', 'v6')",
        f"{FILE}: document 1 (Pod default/e): {IPS_PATH}: 10.9.0.1 is not inside any IP pool"
        " (pools: v4 10.244.0.0/16)",
    ]


def test_with_running_pods_in_pools_mode() -> None:
    base = base_lab()
    running = with_running_pods(
        base,
        [
            ("default", "a", "10.244.0.10", "fd00:10:244::a"),
            ("default", "b", "10.244.64.2/32", None),
            ("default", "late", "10.244.128.7", None),  # applied since: no node CIDR to place it
        ],
    )
    assert running.ip_pools == base.ip_pools
    assert running.ipam_config == base.ipam_config
    assert running.pod("default/late").node_name == "node1"
    assert running.pod("default/b").requested_ips() == [IPv4Address("10.244.64.2")]
    err = error_of(dump(pod("n", ips='["10.244.128.7"]')), require_lab=False, base=running)
    assert str(err).endswith(
        "10.244.128.7 is also requested by pod default/late, already in the lab"
    )
    added = parse_documents(
        dump(pod("n", ips='["10.244.0.11"]')), FILE, require_lab=False, base=running
    )
    assert added.pods[0].node_name == "node2"  # round-robin after the three running pods


# ---- the selector parser ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("all()", {}, True),
        ("  all ( )  ", {}, True),
        ("", {}, True),
        ("   ", {"a": "b"}, True),
        ("!all()", {}, False),
        ("has(a)", {"a": ""}, True),
        ("has(a)", {"b": "x"}, False),
        ("has(example.com/a-b_c)", {"example.com/a-b_c": "1"}, True),
        ('a == "x"', {"a": "x"}, True),
        ("a=='x'", {"a": "x"}, True),
        ('a == "x"', {"a": "y"}, False),
        ('a == "x"', {}, False),
        ('a != "x"', {}, True),
        ('a != "x"', {"a": "x"}, False),
        ('a == ""', {"a": ""}, True),
        ('a in {"x", "y"}', {"a": "y"}, True),
        ('a in {"x", "y"}', {}, False),
        ("a in {}", {"a": "x"}, False),
        ('a not in {"x"}', {}, True),
        ('a not in {"x"}', {"a": "x"}, False),
        ("a not in {}", {"a": "x"}, True),
        ('a == "1" || b == "2" && c == "3"', {"a": "1"}, True),  # && binds tighter
        ('a == "1" || b == "2" && c == "3"', {"b": "2"}, False),
        ('(a == "1" || b == "2") && c == "3"', {"a": "1"}, False),
        ('(a == "1" || b == "2") && c == "3"', {"b": "2", "c": "3"}, True),
        ("!!has(a)", {"a": "1"}, True),
        ('!(has(a) && a != "1")', {"a": "2"}, False),
        ("((((has(a)))))", {"a": "1"}, True),
        ("in == 'x'", {"in": "x"}, True),  # keywords are keys where a key is expected
        ("has(all)", {"all": "x"}, True),
    ],
)
def test_selector_semantics(text: str, labels: dict[str, str], expected: bool) -> None:
    selector = parse_selector(text)
    assert selector.text == text
    assert selector.matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("has(a", "expected ')' at character 6, got the end"),
        ("all(", "expected ')' at character 5, got the end"),
        ("all", "expected ==, !=, in or not in after 'all' at character 4, got the end"),
        ("a", "expected ==, !=, in or not in after 'a' at character 2, got the end"),
        ("a = 'x'", "unexpected character '=' at character 3 (use == to compare)"),
        ("has(a) & has(b)", "unexpected character '&' at character 8 (use &&)"),
        ("has(a) | has(b)", "unexpected character '|' at character 8 (use ||)"),
        ("a == x", "expected a quoted string at character 6, got 'x'"),
        ('a == "x', "unterminated string at character 6"),
        ("a in ('x')", "expected '{' at character 6, got '('"),
        ("a in {'x' 'y'}", "expected ',' or '}' at character 11, got \"'y'\""),
        ("a in {'x',}", "expected a quoted string at character 11, got '}'"),
        ("a not {'x'}", "expected ==, !=, in or not in after 'a' at character 3, got 'not'"),
        ("has(a) has(b)", "expected &&, || or the end at character 8, got 'has'"),
        (
            "has(a) &&",
            "expected a label key, all(), has(key), '!' or '(' at character 10, got the end",
        ),
        ("&& has(a)", "expected a label key, all(), has(key), '!' or '(' at character 1, got '&&'"),
        ("()", "expected a label key, all(), has(key), '!' or '(' at character 2, got ')'"),
        ("has('a')", "expected a label key at character 5, got \"'a'\""),
        ("-a == 'x'", "expected a label key at character 1, got '-a'"),
        ("a/b/c == 'x'", "expected a label key at character 1, got 'a/b/c'"),
        ("a == 'x' $", "unexpected character '$' at character 10"),
        ("é == 'x'", "unexpected character 'é' at character 1"),
        ("(" * 65 + "all()" + ")" * 65, "nested more than 64 levels deep"),
        ("!" * 65 + "all()", "nested more than 64 levels deep"),
    ],
)
def test_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_selectors_nested_to_the_limit_parse() -> None:
    assert parse_selector("(" * 64 + "all()" + ")" * 64).matches({})
    assert parse_selector("!" * 64 + "all()").matches({})
    long_chain = " && ".join(f"has(k{i})" for i in range(2000))  # iterative, not recursive
    assert parse_selector(long_chain).matches({f"k{i}": "" for i in range(2000)})
