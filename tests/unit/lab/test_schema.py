"""The lab file schema: each error is one line naming file, document, field path and expectation."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
import yaml

from ciliary.lab import schema
from ciliary.lab.schema import (
    DEFAULT_SCENARIO,
    DEFERRED_KINDS,
    LabFile,
    LabFileError,
    NodeCIDRs,
    load_default,
    load_lab_file,
    node_cidrs,
    parse_documents,
    parse_lab_text,
    register_deferred_kind,
    with_running_pods,
)

FILE = "lab.yaml"
IPS = schema.REQUESTED_IPS_ANNOTATION
IPS_PATH = 'metadata.annotations["cni.projectcalico.org/ipAddrs"]'


def lab(*nodes: str, ipam: dict[str, Any] | None = None, name: str = "demo") -> dict[str, Any]:
    spec: dict[str, Any] = {"nodes": [{"name": n} for n in (nodes or ("node1", "node2"))]}
    if ipam is not None:
        spec = {"ipam": ipam, **spec}
    return {
        "apiVersion": "ciliary.io/v1alpha1",
        "kind": "Lab",
        "metadata": {"name": name},
        "spec": spec,
    }


def namespace(name: str, **labels: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def pod(
    name: str,
    ns: str | None = None,
    *,
    node: str | None = None,
    ips: str | None = None,
    labels: dict[str, Any] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if ns is not None:
        metadata["namespace"] = ns
    if labels is not None:
        metadata["labels"] = labels
    if ips is not None:
        metadata["annotations"] = {IPS: ips}
    spec: dict[str, Any] = {}
    if node is not None:
        spec["nodeName"] = node
    spec["containers"] = containers or [
        {"name": "main", "command": ["ciliary", "workload", "pause"]}
    ]
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


def error(*docs: Any) -> LabFileError:
    return error_of(dump(*docs))


# ---- the happy path -------------------------------------------------------------------------

BRIEF_EXAMPLE = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata:
  name: demo
spec:
  ipam:
    mode: cluster-pool
    clusterPoolIPv4PodCIDRList: ["10.200.0.0/16"]
    clusterPoolIPv4MaskSize: 24
    clusterPoolIPv6PodCIDRList: ["fd00:10:200::/104"]
    clusterPoolIPv6MaskSize: 120
  monitorAggregation: medium
  nodes:
  - name: node1
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {cni.projectcalico.org/ipAddrs: '["10.200.0.50", "fd00:10:200::32"]'}
spec:
  nodeName: node1
  restartPolicy: Always
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
"""


def test_the_example_of_the_documentation_parses() -> None:
    lf = parse_lab_text(BRIEF_EXAMPLE, FILE)
    assert lf.lab.name == "demo"
    assert lf.lab.node_names == ["node1"]
    assert lf.lab.spec.monitor_aggregation == "medium"
    assert lf.lab.ipam.ipv4_pool == IPv4Network("10.200.0.0/16")
    assert [ns.name for ns in lf.namespaces] == ["shop"]
    assert lf.namespaces[0].labels == {"team": "a"}
    (web,) = lf.pods
    assert web.key == "shop/web"
    assert web.node_name == "node1"
    assert web.labels == {"app": "web"}
    assert web.requested_ips() == [IPv4Address("10.200.0.50"), IPv6Address("fd00:10:200::32")]
    assert web.argv() == ["ciliary", "workload", "http-server", "--port", "80"]
    assert web.env() == {"X": "1"}
    assert web.working_dir() == "/tmp"
    assert web.spec.termination_grace_period_seconds == 1
    assert web.named_ports()["http"].container_port == 80
    assert lf.other_documents == []
    assert lf.filename == FILE
    assert lf.namespace_names() == ["shop", "default", "kube-system"]
    assert lf.namespace_labels("kube-system") == {}
    assert lf.pod("shop/web") is web


def test_models_round_trip_with_the_yaml_names() -> None:
    lf = parse_lab_text(BRIEF_EXAMPLE, FILE)
    dumped = lf.pods[0].model_dump(by_alias=True, mode="json", exclude_defaults=True)
    assert dumped["spec"]["containers"][0]["ports"] == [{"name": "http", "containerPort": 80}]
    ipam = lf.lab.model_dump(by_alias=True, mode="json")["spec"]["ipam"]
    assert ipam["clusterPoolIPv6PodCIDRList"] == ["fd00:10:200::/104"]
    # populate_by_name: python names work too
    assert schema.NodeSpec.model_validate({"name": "n1"}).name == "n1"


def test_defaults() -> None:
    lf = parse(lab("node1"), pod("p"))
    assert lf.lab.spec.monitor_aggregation == "medium"
    ipam = lf.lab.ipam
    assert ipam.mode == "cluster-pool"
    assert ipam.cluster_pool_ipv4_pod_cidr_list == [IPv4Network("10.200.0.0/16")]
    assert ipam.cluster_pool_ipv4_mask_size == 24
    assert ipam.cluster_pool_ipv6_pod_cidr_list == [IPv6Network("fd00:10:200::/104")]
    assert ipam.cluster_pool_ipv6_mask_size == 120
    p = lf.pods[0]
    assert p.namespace == "default"
    assert p.spec.restart_policy == "Always"
    assert p.spec.termination_grace_period_seconds == 30
    assert p.requested_ips() == []


def test_kubelet_crash_loop_back_off_max_container_restart_period() -> None:
    """KubeletConfiguration's ``crashLoopBackOff.maxContainerRestartPeriod``: 300 s unless
    set, 1 to 300 s (seconds here)."""
    assert (
        parse(lab("node1")).lab.spec.kubelet.crash_loop_back_off.max_container_restart_period == 300
    )
    doc = lab("node1")
    doc["spec"]["kubelet"] = {"crashLoopBackOff": {"maxContainerRestartPeriod": 2}}
    assert parse(doc).lab.spec.kubelet.crash_loop_back_off.max_container_restart_period == 2
    doc["spec"]["kubelet"] = {"crashLoopBackOff": {"maxContainerRestartPeriod": 0.5}}
    problem = error(doc).problems[0]
    assert "spec.kubelet.crashLoopBackOff.maxContainerRestartPeriod" in problem, problem


def test_default_scenario() -> None:
    packaged = Path(schema.__file__).parent / "scenarios" / "default.yaml"
    assert packaged.read_text() == DEFAULT_SCENARIO
    lf = load_default()
    assert lf.lab.name == "ciliary-demo"
    assert lf.lab.node_names == ["node1", "node2"]
    assert [(ns.name, ns.labels) for ns in lf.namespaces] == [("shop", {"team": "shop"})]
    pods = {p.key: p for p in lf.pods}
    assert sorted(pods) == ["default/client", "shop/db", "shop/echo", "shop/web"]
    # the web tier and the database on the second node: the demo's traffic crosses nodes
    assert {k: p.node_name for k, p in pods.items()} == {
        "default/client": "node1", "shop/echo": "node1", "shop/web": "node2", "shop/db": "node2",
    }  # fmt: skip
    assert pods["default/client"].labels == {"app": "client"}
    assert pods["default/client"].argv() == ["ciliary", "workload", "pause"]
    assert pods["shop/web"].argv() == ["ciliary", "workload", "http-server", "--port", "80"]
    assert pods["shop/web"].named_ports()["http"].container_port == 80
    assert pods["shop/echo"].argv() == [
        *("ciliary", "workload", "echo-server", "--tcp-port", "7", "--udp-port", "7")
    ]
    assert pods["shop/db"].argv() == [
        *("ciliary", "workload", "echo-server", "--tcp-port", "5432", "--udp-port", "5432")
    ]
    assert {p.key: p.labels["app"] for p in lf.pods} == {
        "default/client": "client",
        "shop/web": "web",
        "shop/echo": "echo",
        "shop/db": "db",
    }
    # the API server's kinds go to it as they are; the policy layer sees only policies
    assert [(d.kind, d.namespace, d.name) for d in lf.api_documents] == [("Service", "shop", "web")]
    assert [d.kind for d in lf.other_documents] == ["CiliumNetworkPolicy"]


def test_round_robin_assignment_in_file_order() -> None:
    lf = parse(
        lab("node1", "node2", "node3"),
        pod("a"),
        pod("b", node="node1"),  # pinned pods do not take a turn
        pod("c"),
        pod("d"),
        pod("e"),
    )
    assert [(p.name, p.node_name) for p in lf.pods] == [
        ("a", "node1"),
        ("b", "node1"),
        ("c", "node2"),
        ("d", "node3"),
        ("e", "node1"),
    ]
    assert [p.name for p in lf.pods_on("node1")] == ["a", "b", "e"]


def test_node_cidrs_follow_the_cluster_pool() -> None:
    lf = parse(lab("n0", "n1", "n2"))
    cidrs = node_cidrs(lf)
    assert list(cidrs) == ["n0", "n1", "n2"]
    assert cidrs["n2"] == NodeCIDRs(
        ipv4=IPv4Network("10.200.2.0/24"),
        ipv6=IPv6Network("fd00:10:200::200/120"),
        ipv4_router=IPv4Address("10.200.2.1"),
        ipv6_router=IPv6Address("fd00:10:200::201"),
    )
    assert node_cidrs(lf.lab) == cidrs


def test_node_cidrs_with_one_family() -> None:
    ipam: dict[str, Any] = {
        "clusterPoolIPv4PodCIDRList": [],
        "clusterPoolIPv6PodCIDRList": ["fd00::/64"],
    }
    ipam["clusterPoolIPv6MaskSize"] = 112
    cidrs = node_cidrs(parse(lab("a", "b", ipam=ipam)))
    assert cidrs["b"].ipv4 is None and cidrs["b"].ipv4_router is None
    assert cidrs["b"].ipv6 == IPv6Network("fd00::1:0/112")
    assert cidrs["b"].ipv6_router == IPv6Address("fd00::1:1")


def test_args_without_command_is_a_command() -> None:
    lf = parse(lab(), pod("p", containers=[{"name": "c", "args": ["sleep", "1"]}]))
    assert lf.pods[0].argv() == ["sleep", "1"]


def test_argv_is_the_first_container_with_a_command() -> None:
    containers: list[dict[str, Any]] = [
        {"name": "side", "image": "proxy"},
        {"name": "main", "command": ["a"], "args": ["b"]},
    ]
    doc = lab()
    doc["spec"]["images"] = [{"image": "proxy", "command": ["sleep", "infinity"]}]
    lf = parse(doc, pod("p", containers=containers))
    assert lf.pods[0].argv() == ["a", "b"]
    assert lf.pods[0].main_container().name == "main"


def test_label_syntax_accepted() -> None:
    labels = {"app.kubernetes.io/name": "web", "empty": "", "a": "A-b_c.D", "x" * 63: "y" * 63}
    lf = parse(lab(), namespace("shop", **{"k8s.io/team": "a"}), pod("p", "shop", labels=labels))
    assert lf.pods[0].labels == labels


def test_implicit_namespaces_need_no_declaration_and_can_be_declared() -> None:
    lf = parse(lab(), namespace("default", env="dev"), pod("a"), pod("b", "kube-system"))
    assert [p.key for p in lf.pods] == ["default/a", "kube-system/b"]
    assert lf.namespace_labels("default") == {"env": "dev"}
    assert lf.namespace_names() == ["default", "kube-system"]


def test_a_namespace_may_come_after_its_pods() -> None:
    assert parse(lab(), pod("a", "late"), namespace("late")).pods[0].key == "late/a"


def test_empty_documents_are_skipped_but_counted() -> None:
    text = dump(lab()) + "---\n---\n" + dump(pod("p", containers=[{"name": "c"}]))
    err = error_of(text)
    assert str(err).startswith(f"{FILE}: document 3 (Pod default/p): spec.containers[0]")


# ---- structure errors: unknown fields, types, syntax ------------------------------------------


def test_unknown_field_names_the_path() -> None:
    p = pod("web", "shop")
    p["spec"]["containers"][0]["comand"] = ["x"]
    err = error(lab(), namespace("shop"), p)
    assert str(err) == (
        f"{FILE}: document 3 (Pod shop/web): spec.containers[0].comand: unknown field"
    )


@pytest.mark.parametrize(
    ("where", "path"),
    [
        (lambda d: d.update(status={}), "status"),
        (lambda d: d["metadata"].update(uid="x"), "metadata.uid"),
        (lambda d: d["spec"].update(dnsPolicy="None"), "spec.dnsPolicy"),
        (
            lambda d: d["spec"]["containers"][0].update(volumeDevices=[]),
            "spec.containers[0].volumeDevices",
        ),
        (
            lambda d: d["spec"].update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]),
            "spec.volumes[0].hostPath",
        ),
    ],
)
def test_unknown_fields_anywhere(where: Any, path: str) -> None:
    p = pod("web")
    where(p)
    assert str(error(lab(), p)) == f"{FILE}: document 2 (Pod default/web): {path}: unknown field"


def test_security_context_resources_working_dir_accepted() -> None:
    """What the sandbox applies to a lab pod (lab.podsandbox) is part of a lab file's pods."""
    p = pod("web")
    p["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsGroup": 50}
    p["spec"]["containers"][0].update(
        securityContext={"runAsUser": 1000},
        resources={"limits": {"memory": "64Mi", "cpu": "250m"}},
        workingDir="/srv",
    )
    (parsed,) = parse(lab(), p).pods
    c = parsed.containers[0]
    assert c.security_context is not None and c.security_context.run_as_user == 1000
    assert c.resources is not None and c.resources.limits == {"memory": "64Mi", "cpu": "250m"}
    assert c.working_dir == "/srv"
    sc = parsed.spec.security_context
    assert sc is not None and sc.run_as_non_root is True and sc.run_as_group == 50


def test_empty_dir_volumes_accepted() -> None:
    """emptyDir volumes and their mounts are a lab pod's too (lab.podsandbox mounts them)."""
    p = pod("db")
    p["spec"]["volumes"] = [{"name": "data", "emptyDir": {"sizeLimit": "64Mi"}}]
    p["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/var/lib/x"}]
    (parsed,) = parse(lab(), p).pods
    (volume,) = parsed.spec.volumes
    assert volume.name == "data" and volume.empty_dir is not None
    assert volume.empty_dir.size_limit == "64Mi"
    (mount,) = parsed.containers[0].volume_mounts
    assert (mount.name, mount.mount_path, mount.read_only) == ("data", "/var/lib/x", False)


def test_unknown_field_in_the_lab() -> None:
    d = lab()
    d["spec"]["ipam"] = {"clusterPoolIPv4MaskSise": 24}
    err = error(d)
    assert str(err) == (
        f"{FILE}: document 1 (Lab demo): spec.ipam.clusterPoolIPv4MaskSise: unknown field"
    )


def test_missing_required_fields() -> None:
    p = pod("web")
    del p["spec"]["containers"]
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Pod default/web): spec.containers: required field is missing"
    )
    p = pod("web")
    del p["metadata"]["name"]
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Pod): metadata.name: required field is missing"
    )
    d = lab()
    del d["spec"]
    assert str(error(d)) == f"{FILE}: document 1 (Lab demo): spec: required field is missing"


def test_wrong_types_say_what_was_expected() -> None:
    p = pod("web")
    p["spec"]["containers"][0]["ports"] = [{"containerPort": "80"}]
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Pod default/web): spec.containers[0].ports[0].containerPort:"
        " expected an integer, got '80'"
    )
    p = pod("web", labels={"version": 1})
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Pod default/web): metadata.labels.version: expected a string,"
        " got int 1 (quote it to make it a string)"
    )
    p = pod("web")
    p["spec"]["containers"][0]["command"] = "ciliary workload pause"
    assert str(error(lab(), p)).endswith(
        "spec.containers[0].command: expected a list, got 'ciliary workload pause'"
    )
    p = pod("web")
    p["spec"]["containers"] = {"name": "x"}
    assert str(error(lab(), p)).endswith("spec.containers: expected a list, got a mapping")
    p = pod("web")
    p["metadata"] = "web"
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Pod): metadata: expected a mapping, got 'web'"
    )


def test_enumerations_and_ranges() -> None:
    p = pod("web")
    p["spec"]["restartPolicy"] = "Sometimes"
    assert str(error(lab(), p)).endswith(
        "spec.restartPolicy: expected 'Always', 'OnFailure' or 'Never', got 'Sometimes'"
    )
    p = pod("web")
    p["spec"]["terminationGracePeriodSeconds"] = -1
    assert str(error(lab(), p)).endswith(
        "spec.terminationGracePeriodSeconds: expected a number >= 0, got int -1"
    )
    p = pod("web")
    p["spec"]["containers"][0]["ports"] = [{"containerPort": 70000, "protocol": "tcp"}]
    err = error(lab(), p)
    assert str(err).endswith("ports[0].containerPort: expected a number <= 65535, got int 70000")
    assert err.problems[1].endswith("ports[0].protocol: expected 'TCP', 'UDP' or 'SCTP', got 'tcp'")
    d = lab()
    d["spec"]["monitorAggregation"] = "maximum"
    assert str(error(d)).endswith(
        "spec.monitorAggregation: expected 'none' or 'medium', got 'maximum'"
    )


def test_all_problems_of_all_documents_are_kept() -> None:
    a = pod("a")
    a["spec"]["bogus"] = 1
    b = pod("b")
    b["spec"]["containers"][0]["name"] = "Main"
    b["metadata"]["labels"] = {"ok": "-bad-"}
    err = error(lab(), a, b)
    assert err.problems == [
        f"{FILE}: document 2 (Pod default/a): spec.bogus: unknown field",
        f"{FILE}: document 3 (Pod default/b): metadata.labels.ok: expected a label value (empty,"
        " or at most 63 characters of letters, digits, '-', '_' and '.', starting and ending"
        " with a letter or digit), got '-bad-'",
        f"{FILE}: document 3 (Pod default/b): spec.containers[0].name: expected a DNS-1123 label"
        " (lowercase letters, digits and '-', starting and ending with a letter or digit, at"
        " most 63 characters), got 'Main'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1\n", f"{FILE}: line 2 column 1: expected ',' or ']', but got '<stream end>'"),
        ("a: 1\nb: : 2\n", f"{FILE}: line 2 column 4: mapping values are not allowed here"),
        ("a: 1\n  b: 2\n", f"{FILE}: line 2 column 4: mapping values are not allowed here"),
        ("a: 1\na: 2\n", f"{FILE}: line 2 column 1: duplicate key 'a' (first given on line 1)"),
        ("a: '\x00'\n", f"{FILE}: line 1 column 5: unacceptable character #x0000"),
        ("a: !!python/object:os.system x\n", f"{FILE}: line 1 column 4: could not determine"),
        ("a: 2024-13-45\n", f"{FILE}: line 1 column 4: invalid timestamp '2024-13-45'"),
        ("a: " + "9" * 5000 + "\n", f"{FILE}: line 1 column 4: invalid int"),
    ],
)
def test_yaml_errors_give_line_and_column(text: str, expected: str) -> None:
    assert str(error_of(text)).startswith(expected)


def test_yaml_error_in_a_later_document() -> None:
    text = dump(lab()) + "---\nkind: Pod\nmetadata: {name: [x}\n"
    assert str(error_of(text)).startswith(f"{FILE}: line 11 column 20: ")


# ---- document level errors ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "---\n...\n"])
def test_empty_file(text: str) -> None:
    assert str(error_of(text)) == (f"{FILE}: the file has no documents (expected a Lab document)")


def test_no_lab_document() -> None:
    assert str(error(namespace("shop"), pod("a"))) == (
        f"{FILE}: no Lab document (apiVersion: ciliary.io/v1alpha1, kind: Lab) in the file"
    )


def test_two_lab_documents() -> None:
    assert str(error(lab(), pod("a"), lab(name="other"))) == (
        f"{FILE}: document 3 (Lab other): a second Lab document (the first is document 1);"
        " a file describes one lab"
    )


@pytest.mark.parametrize(
    ("doc", "got"),
    [(["a", "b"], "a list"), ("text", "'text'"), (5, "int 5"), (True, "bool true")],
)
def test_document_not_a_mapping(doc: Any, got: str) -> None:
    assert str(error(lab(), doc)) == (
        f"{FILE}: document 2: expected a mapping (an object with apiVersion, kind, metadata),"
        f" got {got}"
    )


def test_kind_and_api_version() -> None:
    p = pod("a")
    del p["kind"]
    assert str(error(lab(), p)) == f"{FILE}: document 2: kind: required field is missing"
    p = pod("a")
    p["kind"] = "Job"
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Job a): kind: unknown kind 'Job' (expected one of"
        " Lab, Namespace, Pod, IPPool, IPAMConfiguration, CiliumClusterwideNetworkPolicy,"
        " CiliumNetworkPolicy, NetworkPolicy, ConfigMap, DaemonSet, Deployment, EndpointSlice,"
        " ReplicaSet, Service, StatefulSet)"
    )
    p = pod("a")
    p["apiVersion"] = "apps/v1"
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Pod default/a): apiVersion: expected 'v1' for kind Pod, got 'apps/v1'"
    )
    p = pod("a")
    del p["apiVersion"]
    assert str(error(lab(), p)) == (
        f"{FILE}: document 2 (Pod default/a): apiVersion: required field is missing (expected 'v1')"
    )
    d = lab()
    d["apiVersion"] = "v1"
    assert str(error(d)) == (
        f"{FILE}: document 1 (Lab demo): apiVersion: expected 'ciliary.io/v1alpha1' for kind"
        " Lab, got 'v1'"
    )
    p = pod("a")
    p["kind"] = ["Pod"]
    assert str(error(lab(), p)) == f"{FILE}: document 2: kind: expected a string, got a list"


CNP: dict[str, Any] = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "allow-web", "namespace": "shop"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}, "anything": [1, 2]},
}


def test_deferred_kinds_are_kept_raw() -> None:
    knp = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny"},
        "spec": {"podSelector": {}},
    }
    ccnp = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "all"},
        "spec": {},
    }
    lf = parse(lab(), namespace("shop"), CNP, knp, ccnp)
    raw = lf.other_documents
    assert [(d.index, d.kind, d.namespace, d.name) for d in raw] == [
        (3, "CiliumNetworkPolicy", "shop", "allow-web"),
        (4, "NetworkPolicy", None, "deny"),
        (5, "CiliumClusterwideNetworkPolicy", None, "all"),
    ]
    assert raw[0].body == CNP
    assert raw[0].filename == FILE
    assert raw[0].api_version == "cilium.io/v2"
    assert raw[0].where == f"{FILE}: document 3 (CiliumNetworkPolicy shop/allow-web)"
    assert raw[1].where == f"{FILE}: document 4 (NetworkPolicy default/deny)"
    assert raw[2].where == f"{FILE}: document 5 (CiliumClusterwideNetworkPolicy all)"


def test_deferred_kinds_check_api_version_and_name() -> None:
    bad = copy.deepcopy(CNP)
    bad["apiVersion"] = "cilium.io/v1"
    assert str(error(lab(), bad)) == (
        f"{FILE}: document 2 (CiliumNetworkPolicy shop/allow-web): apiVersion: expected"
        " 'cilium.io/v2' for kind CiliumNetworkPolicy, got 'cilium.io/v1'"
    )
    bad = copy.deepcopy(CNP)
    bad["metadata"]["name"] = 5
    assert str(error(lab(), bad)).endswith("metadata.name: expected a string, got int 5")


def test_api_kinds_go_to_the_api_server_as_they_are() -> None:
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"anything": "the API server checks it"},
    }
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    lf = parse(lab(), ns, svc, deploy)
    assert [(d.kind, d.namespace, d.name, d.body) for d in lf.api_documents] == [
        ("Service", "shop", "web", svc),
        ("Deployment", None, "web", deploy),
    ]
    assert lf.other_documents == []
    assert str(error(lab(), svc)) == (
        f"{FILE}: document 2 (Service shop/web): metadata.namespace: namespace 'shop' is not"
        " declared (add a Namespace document; only default and kube-system exist without one)"
    )
    wrong = {**deploy, "apiVersion": "extensions/v1beta1"}
    assert str(error(lab(), wrong)) == (
        f"{FILE}: document 2 (Deployment default/web): apiVersion: expected 'apps/v1' for kind"
        " Deployment, got 'extensions/v1beta1'"
    )
    nameless = {**svc, "metadata": {"namespace": "shop"}}
    assert str(error(lab(), ns, nameless)).endswith("metadata.name: expected a string, got null")


def test_register_deferred_kind() -> None:
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumEnvoyConfig", "metadata": {"name": "x"}}
    assert "unknown kind 'CiliumEnvoyConfig'" in str(error(lab(), doc))
    register_deferred_kind("CiliumEnvoyConfig", "cilium.io/v2")
    try:
        assert parse(lab(), doc).other_documents[0].kind == "CiliumEnvoyConfig"
    finally:
        del DEFERRED_KINDS["CiliumEnvoyConfig"]
    with pytest.raises(ValueError, match="at least one apiVersion"):
        register_deferred_kind("X")


# ---- names and labels --------------------------------------------------------------------------


def test_name_rules() -> None:
    assert str(error(lab(name="a-very-long-lab-name-x"))) == (
        f"{FILE}: document 1 (Lab a-very-long-lab-name-x): metadata.name: expected a DNS-1123"
        " label (lowercase letters, digits and '-', starting and ending with a letter or"
        " digit, at most 20 characters), got 'a-very-long-lab-name-x'"
    )
    assert str(error(lab("node-number-0001"))).startswith(
        f"{FILE}: document 1 (Lab demo): spec.nodes[0].name: expected a DNS-1123 label"
    )
    assert "at most 15 characters), got 'node-number-0001'" in str(error(lab("node-number-0001")))
    assert str(error(lab(), pod("Web"))).startswith(
        f"{FILE}: document 2 (Pod default/Web): metadata.name: expected a DNS-1123 label"
    )
    assert str(error(lab(), namespace("shop_1"))).startswith(
        f"{FILE}: document 2 (Namespace shop_1): metadata.name: expected a DNS-1123 label"
    )
    assert str(error(lab(), pod("a", node="Node1"))).startswith(
        f"{FILE}: document 2 (Pod default/a): spec.nodeName: expected a DNS-1123 label"
    )


@pytest.mark.parametrize(
    "key",
    ["a b", "-a", "a/", "/a", "Example.com/a", "a/b/c", "x" * 64, "a" * 254 + "/b", ""],
)
def test_invalid_label_keys(key: str) -> None:
    err = error(lab(), pod("a", labels={key: "v"}))
    assert str(err).startswith(f"{FILE}: document 2 (Pod default/a): metadata.labels")
    assert ": invalid key: expected a label key ([prefix/]name:" in str(err)


def test_label_key_path_is_quoted() -> None:
    err = error(lab(), pod("a", labels={"a b": "v"}))
    assert str(err).startswith(f'{FILE}: document 2 (Pod default/a): metadata.labels["a b"]: ')


@pytest.mark.parametrize("value", ["-a", "a-", "a b", "x" * 64, "é"])
def test_invalid_label_values(value: str) -> None:
    err = error(lab(), namespace("shop", team=value))
    assert str(err).startswith(
        f"{FILE}: document 2 (Namespace shop): metadata.labels.team: expected a label value"
    )


def test_annotation_keys_follow_the_label_key_rules() -> None:
    p = pod("a")
    p["metadata"]["annotations"] = {"not valid": "x", "ok/fine": "any value at all: {}"}
    assert ": invalid key: expected a label key" in str(error(lab(), p))


def test_container_rules() -> None:
    twins: list[dict[str, Any]] = [{"name": "c", "command": ["a"]}, {"name": "c"}]
    assert str(error(lab(), pod("p", containers=twins))) == (
        f"{FILE}: document 2 (Pod default/p): spec.containers[1].name: duplicate container"
        " name 'c' (also spec.containers[0])"
    )
    idle: list[dict[str, Any]] = [{"name": "c", "command": [], "args": []}, {"name": "d"}]
    assert str(error(lab(), pod("p", containers=idle))) == (
        f"{FILE}: document 2 (Pod default/p): spec.containers[0].command: expected a command"
        " (command or args), e.g. command: [ciliary, workload, pause], or an image that the"
        " Lab's spec.images maps to one"
    )
    p = pod("p")
    p["spec"]["containers"] = []
    assert str(error(lab(), p)).endswith("spec.containers: expected at least 1 item(s), got 0")


def test_port_rules() -> None:
    ports = [{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}]
    p = pod("p", containers=[{"name": "c", "command": ["a"], "ports": ports}])
    assert str(error(lab(), p)).endswith(
        "spec.containers[0].ports[1].name: duplicate port name 'http' (also ports[0])"
    )
    for bad in ("HTTP", "a--b", "-a", "123", "a-very-long-port-name"):
        ports = [{"name": bad, "containerPort": 80}]
        p = pod("p", containers=[{"name": "c", "command": ["a"], "ports": ports}])
        assert "spec.containers[0].ports[0].name: expected a port name" in str(error(lab(), p))


def test_env_rules() -> None:
    env: list[dict[str, Any]] = [{"name": "1X", "value": "1"}]
    p = pod("p", containers=[{"name": "c", "command": ["a"], "env": env}])
    assert "spec.containers[0].env[0].name: expected an environment variable name" in str(
        error(lab(), p)
    )
    env = [{"name": "X", "valueFrom": {}}]
    p = pod("p", containers=[{"name": "c", "command": ["a"], "env": env}])
    assert str(error(lab(), p)).endswith("spec.containers[0].env[0].valueFrom: unknown field")


# ---- cross-document checks ----------------------------------------------------------------------


def test_duplicate_node() -> None:
    assert str(error(lab("a", "b", "a"))) == (
        f"{FILE}: document 1 (Lab demo): spec.nodes[2].name: duplicate node name 'a'"
        " (also spec.nodes[0])"
    )


def test_lab_images_map_an_image_to_its_command() -> None:
    doc = lab()
    doc["spec"]["images"] = [
        {"image": "redis:7", "command": ["redis-server"], "args": ["--port", "6379"]},
        {"image": "nginx", "command": ["nginx"]},
    ]
    images = parse(doc).lab.spec.images
    assert [(i.image, i.command, i.args) for i in images] == [
        ("redis:7", ["redis-server"], ["--port", "6379"]),
        ("nginx", ["nginx"], []),
    ]
    doc["spec"]["images"] = [{"image": "redis:7", "command": []}]
    assert str(error(doc)) == (
        f"{FILE}: document 1 (Lab demo): spec.images[0].command: expected at least 1 item(s), got 0"
    )
    doc["spec"]["images"] = [{"image": "", "command": ["x"]}, {"image": "x", "cmd": ["x"]}]
    assert [p.split(": ", 2)[2] for p in error(doc).problems] == [
        "spec.images[0].image: String should have at least 1 character, got ''",
        "spec.images[1].command: required field is missing",
        "spec.images[1].cmd: unknown field",
    ]
    doc["spec"]["images"] = [{"image": "x", "command": ["a"]}, {"image": "x", "command": ["b"]}]
    assert str(error(doc)) == (
        f"{FILE}: document 1 (Lab demo): spec.images[1].image: duplicate image 'x'"
        " (also spec.images[0])"
    )


def test_a_pod_may_run_a_mapped_image_without_a_command() -> None:
    doc = lab()
    doc["spec"]["images"] = [{"image": "redis:7", "command": ["redis-server"]}]
    redis = pod("cache", containers=[{"name": "redis", "image": "redis:7"}])
    assert [c.image for c in parse(doc, redis).pods[0].spec.containers] == ["redis:7"]
    unmapped = pod("web", containers=[{"name": "web", "image": "nginx:1.25"}])
    assert str(error(doc, unmapped)) == (
        f"{FILE}: document 2 (Pod default/web): spec.containers[0].image: 'nginx:1.25' has no"
        " command here: the lab runs no images, so give the container a command or map the image"
        " in the Lab's spec.images ({image, command, args})"
    )
    bare = pod("idle", containers=[{"name": "idle"}])
    assert "spec.containers[0].command: expected a command" in str(error(doc, bare))


def test_duplicate_pod() -> None:
    assert str(error(lab(), pod("a"), pod("b"), pod("a", "default"))) == (
        f"{FILE}: document 4 (Pod default/a): metadata.name: duplicate pod default/a"
        " (also in document 2)"
    )
    # the same name in another namespace is another pod
    assert len(parse(lab(), namespace("x"), pod("a"), pod("a", "x")).pods) == 2


def test_duplicate_namespace() -> None:
    assert str(error(lab(), namespace("shop"), namespace("shop", team="b"))) == (
        f"{FILE}: document 3 (Namespace shop): metadata.name: duplicate namespace 'shop'"
        " (also declared in document 2)"
    )


def test_undeclared_namespace() -> None:
    assert str(error(lab(), pod("a", "shop"))) == (
        f"{FILE}: document 2 (Pod shop/a): metadata.namespace: namespace 'shop' is not declared"
        " (add a Namespace document; only default and kube-system exist without one)"
    )


def test_unknown_node() -> None:
    assert str(error(lab("node1", "node2"), pod("a", node="node3"))) == (
        f"{FILE}: document 2 (Pod default/a): spec.nodeName: node 'node3' is not a node of lab"
        " 'demo' (nodes: node1, node2)"
    )


def test_cross_document_problems_are_all_reported_in_file_order() -> None:
    err = error(lab(), pod("a", "nope"), namespace("x"), namespace("x"), pod("b", node="n9"))
    assert [p.split(": ")[1] for p in err.problems] == [
        "document 2 (Pod nope/a)",
        "document 4 (Namespace x)",
        "document 5 (Pod default/b)",
    ]


# ---- requested addresses ------------------------------------------------------------------------


def ip_error(ips: str, node: str | None = "node1", *others: Any) -> str:
    return str(error(lab("node1", "node2"), *others, pod("a", node=node, ips=ips)))


def test_requested_ips_accepted() -> None:
    lf = parse(
        lab("node1", "node2"),
        pod("a", node="node2", ips='["10.200.1.10"]'),
        pod("b", ips='[" fd00:10:200::2 "]'),
        pod("c", ips="[]"),
    )
    assert lf.pods[0].requested_ips() == [IPv4Address("10.200.1.10")]
    assert lf.pods[1].requested_ips() == [IPv6Address("fd00:10:200::2")]
    assert lf.pods[1].node_name == "node1"
    assert lf.pods[2].requested_ips() == []


@pytest.mark.parametrize(
    ("ips", "message"),
    [
        ("10.200.0.5", "expected a JSON list of addresses like"),
        ('"10.200.0.5"', "expected a JSON list of addresses like"),
        ("[10.200.0.5", "(not JSON)"),
        ("[5]", "expected a JSON list of addresses like"),
        ('["10.200.0.300"]', "'10.200.0.300' is not an IP address"),
        ('["fe80::1%eth0"]', "has a zone"),
        ('["10.200.0.5", "10.200.0.6"]', "more than one IPv4 address (a pod has one per family)"),
    ],
)
def test_requested_ips_syntax(ips: str, message: str) -> None:
    text = ip_error(ips)
    assert text.startswith(f"{FILE}: document 2 (Pod default/a): {IPS_PATH}: expected a JSON")
    assert message in text


@pytest.mark.parametrize(
    ("ips", "message"),
    [
        (
            '["10.200.1.5"]',
            "10.200.1.5 is not inside the pod CIDR 10.200.0.0/24 of node node1",
        ),
        (
            '["fd00:10:200::105"]',
            "fd00:10:200::105 is not inside the pod CIDR fd00:10:200::/120 of node node1",
        ),
        (
            '["10.200.0.0"]',
            "10.200.0.0 is the network address of node node1's pod CIDR 10.200.0.0/24",
        ),
        (
            '["10.200.0.1"]',
            "10.200.0.1 is node node1's router address (the first address of 10.200.0.0/24)",
        ),
        (
            '["fd00:10:200::1"]',
            "fd00:10:200::1 is node node1's router address (the first address of"
            " fd00:10:200::/120)",
        ),
        (
            '["fd00:10:200::"]',
            "fd00:10:200:: is the network address of node node1's pod CIDR fd00:10:200::/120",
        ),
        (
            '["10.200.0.255"]',
            "10.200.0.255 is the broadcast address of node node1's pod CIDR 10.200.0.0/24",
        ),
    ],
)
def test_requested_ips_must_fit_the_node(ips: str, message: str) -> None:
    assert ip_error(ips) == f"{FILE}: document 2 (Pod default/a): {IPS_PATH}: {message}"


def test_requested_ip_on_a_round_robin_node_says_how_to_choose() -> None:
    text = ip_error('["10.200.1.5"]', None)
    assert text.endswith(
        "10.200.1.5 is not inside the pod CIDR 10.200.0.0/24 of node node1 (assigned"
        " round-robin; set spec.nodeName to choose the node)"
    )


def test_requested_ip_of_a_disabled_family() -> None:
    ipam: dict[str, Any] = {"clusterPoolIPv6PodCIDRList": []}
    err = error(lab("node1", ipam=ipam), pod("a", ips='["fd00:10:200::5"]'))
    assert str(err).endswith(
        f"{IPS_PATH}: fd00:10:200::5 is an IPv6 address but IPv6 is disabled in this lab"
        " (clusterPoolIPv6PodCIDRList is empty)"
    )


def test_the_same_ip_requested_twice() -> None:
    text = ip_error('["10.200.0.9"]', "node1", pod("z", ips='["10.200.0.9"]'))
    assert text == (
        f"{FILE}: document 3 (Pod default/a): {IPS_PATH}: 10.200.0.9 is also requested by pod"
        " default/z (document 2)"
    )


# ---- IPAM ---------------------------------------------------------------------------------------


def test_more_nodes_than_the_pool_holds() -> None:
    ipam = {"clusterPoolIPv4PodCIDRList": ["10.0.0.0/24"], "clusterPoolIPv4MaskSize": 25}
    assert parse(lab("a", "b", ipam=ipam)).lab.ipam.capacity() == 2
    assert str(error(lab("a", "b", "c", ipam=ipam))) == (
        f"{FILE}: document 1 (Lab demo): spec.nodes: 3 nodes do not fit in the pod CIDR pool"
        " (10.0.0.0/24 in /25 subnets and fd00:10:200::/104 in /120 subnets holds 2 nodes)"
    )


def test_ipam_cidr_and_mask_checks() -> None:
    err = error(lab(ipam={"clusterPoolIPv4PodCIDRList": ["10.0.0.1/16"]}))
    assert str(err) == (
        f"{FILE}: document 1 (Lab demo): spec.ipam.clusterPoolIPv4PodCIDRList[0]: expected an"
        " IPv4 CIDR like 10.200.0.0/16, got '10.0.0.1/16' (10.0.0.1/16 has host bits set)"
    )
    err = error(lab(ipam={"clusterPoolIPv4PodCIDRList": ["fd00::/64"]}))
    assert "clusterPoolIPv4PodCIDRList[0]: expected an IPv4 CIDR" in str(err)
    err = error(lab(ipam={"clusterPoolIPv6PodCIDRList": [64]}))
    assert str(err).endswith(
        "spec.ipam.clusterPoolIPv6PodCIDRList[0]: expected an IPv6 CIDR like fd00:10:200::/104,"
        " got int 64"
    )
    err = error(lab(ipam={"clusterPoolIPv4MaskSize": 8}))
    assert str(err) == (
        f"{FILE}: document 1 (Lab demo): spec.ipam.clusterPoolIPv4MaskSize: expected a mask"
        " size between 16 and 30 (the pool prefix is /16; a node CIDR needs room for the"
        " network and router addresses and a pod), got int 8"
    )
    assert "clusterPoolIPv6MaskSize: expected a mask size between 104 and 126" in str(
        error(lab(ipam={"clusterPoolIPv6MaskSize": 127}))
    )
    err = error(lab(ipam={"clusterPoolIPv4PodCIDRList": [], "clusterPoolIPv6PodCIDRList": []}))
    assert str(err) == (
        f"{FILE}: document 1 (Lab demo): spec.ipam: expected at least one of"
        " clusterPoolIPv4PodCIDRList and clusterPoolIPv6PodCIDRList to be non-empty"
    )
    assert str(error(lab(ipam={"mode": "kubernetes"}))).endswith(
        "spec.ipam.mode: expected 'cluster-pool' or 'pools', got 'kubernetes'"
    )


def test_no_nodes() -> None:
    d = lab()
    d["spec"]["nodes"] = []
    assert str(error(d)) == (
        f"{FILE}: document 1 (Lab demo): spec.nodes: expected at least 1 item(s), got 0"
    )


# ---- reading files, adding documents to a running lab -------------------------------------------


def test_load_lab_file(tmp_path: Path) -> None:
    path = tmp_path / "my-lab.yaml"
    path.write_text(dump(lab(), pod("a")))
    assert load_lab_file(path).pods[0].key == "default/a"
    path.write_text(dump(lab(), pod("A")))
    with pytest.raises(LabFileError, match=rf"^{path}: document 2 \(Pod default/A\)"):
        load_lab_file(path)
    with pytest.raises(LabFileError, match=r"cannot read the lab file: No such file"):
        load_lab_file(tmp_path / "missing.yaml")
    path.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(LabFileError, match=r"not UTF-8 text"):
        load_lab_file(path)


def base_lab() -> LabFile:
    return parse(
        lab("node1", "node2"),
        namespace("shop"),
        pod("a", ips='["10.200.0.10"]'),  # node1
        pod("b"),  # node2
        pod("c", "shop"),  # node1
    )


def test_apply_adds_documents_to_the_running_lab() -> None:
    base = base_lab()
    added = parse_documents(
        dump(namespace("more"), pod("d", "more"), pod("e", "shop"), CNP),
        "apply.yaml",
        require_lab=False,
        base=base,
    )
    assert added.lab == base.lab
    assert [ns.name for ns in added.namespaces] == ["more"]
    # round-robin continues after the three pods of the base
    assert [(p.key, p.node_name) for p in added.pods] == [
        ("more/d", "node2"),
        ("shop/e", "node1"),
    ]
    assert added.other_documents[0].index == 4


def test_apply_checks_against_the_base() -> None:
    base = base_lab()
    err = error_of(dump(pod("a"), namespace("shop")), require_lab=False, base=base)
    assert err.problems == [
        f"{FILE}: document 1 (Pod default/a): metadata.name: duplicate pod default/a (it"
        " already exists in the lab)",
        f"{FILE}: document 2 (Namespace shop): metadata.name: duplicate namespace 'shop' (it"
        " already exists in the lab)",
    ]
    err = error_of(
        dump(pod("z", node="node1", ips='["10.200.0.10"]')), require_lab=False, base=base
    )
    assert str(err).endswith(
        f"{IPS_PATH}: 10.200.0.10 is also requested by pod default/a, already in the lab"
    )
    err = error_of(dump(pod("z", node="node7")), require_lab=False, base=base)
    assert "spec.nodeName: node 'node7' is not a node of lab 'demo'" in str(err)
    err = error_of(dump(lab()), require_lab=False, base=base)
    assert str(err) == (
        f"{FILE}: document 1 (Lab demo): a Lab document cannot be added to the running lab"
        " 'demo'; only Namespace, Pod and policy documents can"
    )
    err = error_of("", require_lab=False, base=base)
    assert str(err) == (f"{FILE}: the file has no documents (expected documents to add to the lab)")


def test_parse_documents_without_lab_or_base() -> None:
    err = error_of(dump(pod("a")), require_lab=False)
    assert str(err).startswith(f"{FILE}: no Lab document")
    lf = parse_documents(dump(pod("a"), lab()), FILE, require_lab=False)
    assert lf.pods[0].node_name == "node1"


def test_with_running_pods_uses_the_addresses_pods_have() -> None:
    base = base_lab()
    running = with_running_pods(
        base,
        [
            ("default", "a", "10.200.0.10", "fd00:10:200::a"),
            ("default", "b", "10.200.1.20/32", None),
            ("shop", "c", "10.200.0.30", None),
            ("late", "x", "10.200.1.40", None),  # applied since, on node2
        ],
        namespaces={"shop": {}, "late": {"t": "1"}},
    )
    assert [p.key for p in running.pods] == ["default/a", "default/b", "shop/c", "late/x"]
    assert running.pod("late/x").node_name == "node2"
    assert running.pod("default/b").requested_ips() == [IPv4Address("10.200.1.20")]
    assert running.namespace_labels("late") == {"t": "1"}
    err = error_of(
        dump(pod("n", node="node2", ips='["10.200.1.20"]')), require_lab=False, base=running
    )
    assert str(err).endswith("10.200.1.20 is also requested by pod default/b, already in the lab")
    err = error_of(dump(pod("x", "late")), require_lab=False, base=running)
    assert "duplicate pod late/x" in str(err)
    added = parse_documents(dump(pod("y", "late")), FILE, require_lab=False, base=running)
    assert added.pods[0].key == "late/y"


def test_error_type() -> None:
    err = LabFileError(["a\nb", "c"])
    assert str(err) == "a b"
    assert err.problems == ["a b", "c"]
    with pytest.raises(ValueError, match="at least one problem"):
        LabFileError([])
