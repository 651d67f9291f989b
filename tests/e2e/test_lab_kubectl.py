"""The machine's own kubectl against a whole lab: ``lab up`` starts etcd + the API server, applies
the file's manifests through it and plays kubelet (Nodes, pod status), so ``kubectl get pods -o
wide`` shows the pods' real addresses and nodes and ``kubectl wait`` sees them Ready; a file the
lab refuses leaves nothing (no etcd, no API server, no data); the API refusing a ``lab apply``
rolls it back; a killed API server is restarted by the lab's supervisor; each node reaches the
API on its own loopback (``ip netns exec <node netns> kubectl`` with the node's kubeconfig), also
after that restart, and pods do not; ``lab down`` leaves nothing."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliary.lab import controlplane, manager
from ciliary.lab.certs import router_addresses
from tests.e2e.conftest import CILIARY, KubeLab, assert_no_leftovers, shared_kube_lab, unique
from tests.kubectl import KUBECTL, get_json, kubectl_run

pytestmark = pytest.mark.timeout(300)


LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  # kubelet's maxContainerRestartPeriod: what these tests kill is back after 1 s, not 10 s
  kubelet: {{crashLoopBackOff: {{maxContainerRestartPeriod: 1}}}}
  socketLB: {{enabled: true}}  # Cilium's default; test_lab_workloads (it shares this lab) needs it
  nodes:
  - name: {n1}
  - name: {n2}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{team: shop}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop, labels: {{app: web}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, http-server, --port, "80"]
    ports: [{{name: http, containerPort: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: shop, labels: {{app: db}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: db-from-web, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: db}}}}
  ingress: [{{fromEndpoints: [{{matchLabels: {{app: web}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-ingress, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
  ingress: [{{ports: [{{port: 80}}]}}]
"""

BAD_CNP = """\
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress: [{toPorts: [{ports: [{port: "99999"}]}]}]
"""


# test_lab_l7_starwars (its tunnel-mode lab) and test_lab_workloads share this lab (one lab up
# and down each fewer a run). This module runs first (SHARES_LAB_FRESH): it asserts on every pod
# of the lab and on what lab up applied; what it leaves (a pod and a config map in shop, a
# namespace held in Terminating, an API server and an etcd killed and restarted) is nothing the
# others look at.
SHARES_LAB = "kubectl"
SHARES_LAB_FRESH = True


def write_lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    """The lab file of this module's lab (LAB, two nodes)."""
    name, n1, n2 = unique("kc"), unique("n"), unique("n")
    path = tmp_path_factory.mktemp("kubectl") / "lab.yaml"
    path.write_text(LAB.format(lab=name, n1=n1, n2=n2))
    return path, name, [n1, n2]


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[KubeLab]:
    """A two-node lab from LAB; (name, nodes, kubeconfig path)."""
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as made:
        yield made


def test_kubectl_sees_the_lab(lab: tuple[str, list[str], str]) -> None:
    name, nodes, kubeconfig = lab
    assert kubeconfig == f"/run/ciliary/lab/{name}/kubeconfig"
    assert oct(os.stat(kubeconfig).st_mode & 0o777) == "0o600"
    view = manager.status(name)
    assert view.control_plane is not None and view.control_plane.apiserver_alive
    # -o wide: the pods' real addresses (the agents' IPAM) and the nodes the lab put them on
    wide = kubectl_run(kubeconfig, "get", "pods", "-A", "-o", "wide").stdout
    rows = {tuple(line.split()[:2]): line.split() for line in wide.splitlines()[1:]}
    for pod in view.pods:
        row = rows[(pod.namespace, pod.name)]
        assert row[2:4] == ["1/1", "Running"], row
        assert pod.ipv4 is not None and row[6] == pod.ipv4.partition("/")[0], (row, pod)
        assert row[7] == pod.node, row
    assert {("shop", "web"), ("shop", "db"), ("kube-system", "coredns")} <= set(rows)
    web = get_json(kubeconfig, "pod", "web", "-n", "shop")
    assert web["spec"]["nodeName"] in nodes
    prec = manager.find_pod(manager.record(name), "shop/web")
    addresses = [a.partition("/")[0] for a in (prec.ipv4, prec.ipv6) if a]
    assert [a["ip"] for a in web["status"]["podIPs"]] == addresses
    statuses = web["status"]["containerStatuses"]
    assert [(c["name"], c["ready"], c["restartCount"], c["started"]) for c in statuses] == [
        ("main", True, 0, True)
    ]
    # applied as kubectl apply does: the last-applied annotation, kubectl can diff against it
    assert "kubectl.kubernetes.io/last-applied-configuration" in web["metadata"]["annotations"]
    kubectl_run(
        kubeconfig, "wait", "--for=condition=Ready", "pod", "-l", "app in (web,db)", "-n",
        "shop", "--timeout=30s",
    )  # fmt: skip
    cnps = kubectl_run(kubeconfig, "get", "cnp", "-A").stdout
    assert "db-from-web" in cnps and "shop" in cnps
    netpols = kubectl_run(kubeconfig, "get", "netpol", "-n", "shop", "-o", "name").stdout.split()
    assert netpols == ["networkpolicy.networking.k8s.io/web-ingress"]
    node_rows = kubectl_run(kubeconfig, "get", "nodes", "-o", "wide").stdout.splitlines()[1:]
    by_name = {line.split()[0]: line.split() for line in node_rows}
    assert sorted(by_name) == sorted(nodes)
    for n in view.nodes:
        assert by_name[n.name][1] == "Ready"
        assert n.node_ipv4 is not None
        assert by_name[n.name][5] == n.node_ipv4  # its InternalIP: its IP on the lab network
    namespaces = kubectl_run(kubeconfig, "get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system", "namespace/shop"} <= set(namespaces)


LOOPBACK_API = "https://127.0.0.1:6443"  # a node's own loopback, where the API listens too


def kubectl_in_netns(ns: str, kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The machine's kubectl run inside the network namespace ``ns`` (files from the root's
    mount namespace: only the network differs)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, KUBECTL, "--kubeconfig", kubeconfig, "--request-timeout=5s",
         *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_nodes_reach_the_api(name: str) -> None:
    """With their kubeconfigs (the API on the lab network) and on their own loopback."""
    for node in manager.status(name).nodes:
        assert node.kubeconfig is not None
        for server in ((), ("--server", LOOPBACK_API)):
            got = kubectl_in_netns(
                node.netns, node.kubeconfig, *server, "get", "nodes", "-o", "name"
            )
            assert got.returncode == 0, (node.name, server, got.stderr)
            assert f"node/{node.name}" in got.stdout.split(), got.stdout


def test_nodes_reach_the_api_on_their_loopback_and_pods_do_not(
    lab: tuple[str, list[str], str],
) -> None:
    name, nodes, _ = lab
    view = manager.status(name)
    assert sorted(n.name for n in view.nodes) == sorted(nodes)
    for node in view.nodes:
        path = subprocess.run(
            [CILIARY, "lab", "kubeconfig", "--name", name, "--node", node.name],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert path == node.kubeconfig == f"/run/ciliary/lab/{name}/nodes/{node.name}/kubeconfig"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        # the API on the lab network (the default one's bridge address), as kind's nodes dial it
        assert "server: https://172.18.0.1:6443" in Path(path).read_text()
    assert_nodes_reach_the_api(name)
    # the root netns' loopback is not the node's: the lab's port answers only in the root netns
    cp = manager.control_plane(name)
    assert cp is not None
    admin_in_node = kubectl_in_netns(
        view.nodes[0].netns, str(cp.kubeconfig), "get", "--raw=/readyz"
    )
    assert admin_in_node.returncode != 0 and "refused" in admin_in_node.stderr
    # pods: neither their own loopback nor their node's addresses lead to the API, nor the lab
    # network's (the node's routing refuses to forward there: no connection, so no TLS error)
    for pod in view.pods:
        node = next(n for n in view.nodes if n.name == pod.node)
        assert node.kubeconfig is not None and node.ipv4_cidr is not None
        got = kubectl_in_netns(
            pod.netns, node.kubeconfig, "--server", LOOPBACK_API, "get", "--raw=/readyz"
        )
        assert got.returncode != 0 and "refused" in got.stderr, (pod.name, got.stderr)
        fenced = kubectl_in_netns(pod.netns, node.kubeconfig, "get", "--raw=/readyz")
        assert fenced.returncode != 0 and "dial tcp 172.18.0.1:6443: connect: " in fenced.stderr, (
            pod.name,
            fenced.stderr,
        )
        router = router_addresses([node.ipv4_cidr])[0]
        via_node = kubectl_in_netns(
            pod.netns, node.kubeconfig, "--server", f"https://{router}:6443", "get",
            "--raw=/readyz",
        )  # fmt: skip
        # refused: nothing listens there (a TLS error would mean something answered)
        assert via_node.returncode != 0 and "refused" in via_node.stderr, (
            pod.name,
            via_node.stderr,
        )


def test_lab_apply_goes_through_the_api_and_is_rolled_back_when_refused(
    lab: tuple[str, list[str], str], tmp_path: Path
) -> None:
    name, _, kubeconfig = lab
    added = tmp_path / "more.yaml"
    added.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cache, namespace: shop, labels: {app: c}}\n"
        "spec:\n  containers: [{name: main, command: [ciliary, workload, pause]}]\n"
    )
    manager.apply(added, name=name)
    kubectl_run(kubeconfig, "wait", "--for=condition=Ready", "pod/cache", "-n", "shop")
    # A namespace the API holds in Terminating (a finalizer keeps it): the lab still knows it,
    # the API refuses new content in it (NamespaceLifecycle), so the apply fails and rolls back.
    kubectl_run(
        kubeconfig,
        "apply",
        "-f",
        "-",
        stdin="kind: Namespace\napiVersion: v1\nmetadata: {name: closing}\n",
    )
    kubectl_run(
        kubeconfig, "patch", "namespace", "closing", "--type=merge", "-p",
        '{"metadata":{"finalizers":["example.com/hold"]}}',
    )  # fmt: skip
    kubectl_run(kubeconfig, "delete", "namespace", "closing", "--wait=false")
    refused = tmp_path / "refused.yaml"
    refused.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: closing}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: shop}\n"
        "spec:\n  containers: [{name: main, command: [ciliary, workload, pause]}]\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: doomed, namespace: closing}\n"
        "spec:\n  containers: [{name: main, command: [ciliary, workload, pause]}]\n"
    )
    with pytest.raises(manager.LabError, match="being terminated"):
        manager.apply(refused, name=name)
    pods = {f"{p.namespace}/{p.name}" for p in manager.status(name).pods}
    assert "shop/late" not in pods and "closing/doomed" not in pods
    api_pods = kubectl_run(kubeconfig, "get", "pods", "-A", "-o", "name").stdout.split()
    assert "pod/late" not in api_pods and "pod/doomed" not in api_pods
    kubectl_run(
        kubeconfig, "patch", "namespace", "closing", "--type=merge", "-p",
        '{"metadata":{"finalizers":null}}',
    )  # fmt: skip


def test_killed_api_server_is_restarted_by_the_supervisor(lab: tuple[str, list[str], str]) -> None:
    name, _, kubeconfig = lab
    cp = manager.control_plane(name)
    assert cp is not None
    before = manager.status(name).control_plane
    assert before is not None
    os.kill(cp.apiserver_pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = manager.status(name).control_plane
        assert view is not None
        restarted = view.apiserver_restarts == before.apiserver_restarts + 1
        if (
            restarted
            and kubectl_run(kubeconfig, "get", "--raw=/readyz", check=False).returncode == 0
        ):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the API server was not restarted: {manager.status(name).control_plane}")
    after = controlplane.load(Path(f"/run/ciliary/lab/{name}"))
    assert after is not None and after.apiserver_pid != cp.apiserver_pid
    assert after.port == cp.port  # the kubeconfig stays valid
    names = kubectl_run(kubeconfig, "get", "pods", "-n", "shop", "-o", "name").stdout.split()
    assert {"pod/web", "pod/db"} <= set(names)  # etcd kept everything
    status = subprocess.run(
        [CILIARY, "lab", "status", "--name", name], capture_output=True, text=True, check=True
    ).stdout
    assert f"https://127.0.0.1:{cp.port}" in status and "apiserver running, 1 restarts" in status
    # the restarted server opened the nodes' listeners again before it turned ready
    assert_nodes_reach_the_api(name)


def test_lab_up_with_an_invalid_policy_names_the_field_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    name, n1, n2 = unique("kb"), unique("n"), unique("n")
    path = tmp_path / "bad.yaml"
    path.write_text(LAB.format(lab=name, n1=n1, n2=n2) + BAD_CNP)
    result = subprocess.run(
        [CILIARY, "lab", "up", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "CiliumNetworkPolicy shop/bad" in result.stderr
    assert "spec.ingress[0].toPorts[0].ports[0].port" in result.stderr
    assert name not in manager.list_labs()
    assert_no_leftovers(name, [n1, n2])


def test_killed_etcd_is_restarted_by_the_supervisor_with_its_data(
    lab: tuple[str, list[str], str],
) -> None:
    """kill -9 etcd: the supervisor brings it back on the same ports with the same data dir, the
    API server (which never exited) answers again, and nothing stored is lost."""
    name, _, kubeconfig = lab
    cp = manager.control_plane(name)
    assert cp is not None
    before = manager.status(name).control_plane
    assert before is not None
    kubectl_run(kubeconfig, "create", "configmap", "before-etcd-kill", "-n", "shop")
    os.kill(cp.etcd.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = manager.status(name).control_plane
        assert view is not None
        restarted = view.etcd_restarts == before.etcd_restarts + 1 and view.etcd_alive
        if (
            restarted
            and kubectl_run(kubeconfig, "get", "--raw=/readyz", check=False).returncode == 0
        ):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"etcd was not restarted: {manager.status(name).control_plane}")
    after = controlplane.load(Path(f"/run/ciliary/lab/{name}"))
    assert after is not None and after.etcd.pid != cp.etcd.pid
    assert after.etcd.client_url == cp.etcd.client_url  # the API server's --etcd-servers holds
    got = kubectl_run(kubeconfig, "get", "configmap", "-n", "shop", "-o", "name").stdout.split()
    assert "configmap/before-etcd-kill" in got  # the data dir survived the kill
    kubectl_run(kubeconfig, "create", "configmap", "after-etcd-kill", "-n", "shop")
    status = subprocess.run(
        [CILIARY, "lab", "status", "--name", name], capture_output=True, text=True, check=True
    ).stdout
    assert "etcd running, 1 restarts" in status
