"""`lab apply` and `lab up` are all or nothing: a pod whose CNI ADD fails or whose command cannot
start rolls back every pod, namespace and policy of the operation (API objects, record, netns,
cgroup, endpoint), and a retry after the fix succeeds; namespaces added by `lab apply` carry
`kubernetes.io/metadata.name` as `lab up`'s (and kube-apiserver's) do. Every pod runs through the
API and the kubelet role: a bare pod made with kubectl (no owner, no node) is scheduled and run,
and `lab status` shows the pods as `kubectl get pods -A -o wide` does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ciliary.client.agent import AgentClient
from ciliary.datapath.linux import netns
from ciliary.datapath.linux.cgroup import cgroup2_root
from ciliary.lab import manager
from tests.kubectl import get_json, kubectl, kubectl_run, wait_for

from .conftest import CILIARY, LAB_TEMPLATE, Lab, assert_no_leftovers, unique

APPLIED = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{tier: extra}}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-own-namespace, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {{kubernetes.io/metadata.name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, http-server, --port, "80"]
---
apiVersion: v1
kind: Pod
metadata: {{name: cli, namespace: {ns}, labels: {{app: cli}}}}
spec:
  containers:
  - name: main
    command: [{command}]
"""

# the conftest lab, shared: what these tests apply is in namespaces of their own, the agent
# they stop is restarted
SHARES_LAB = True


def _applied(path: Path, ns: str, command: str = "ciliary, workload, pause") -> Path:
    path.write_text(APPLIED.format(ns=ns, command=command))
    return path


def _assert_nothing_in_api(lab: Lab, ns: str) -> None:
    """The API server has no pod of namespace ``ns``, nor the namespace."""
    kubeconfig = manager.kubeconfig(lab.name)
    assert get_json(kubeconfig, "pods", "-n", ns)["items"] == []
    assert kubectl_run(kubeconfig, "get", "namespace", ns, check=False).returncode != 0


def _assert_nothing_of(lab: Lab, ns: str) -> None:
    """Nothing of namespace ``ns`` is left: API objects, record, netns, cgroups, endpoints."""
    rec = manager.record(lab.name)
    assert [p.key for p in rec.pods if p.namespace == ns] == []
    assert ns not in rec.namespaces
    _assert_nothing_in_api(lab, ns)
    kubeconfig = manager.kubeconfig(lab.name)
    netpol = "networkpolicy/web-from-own-namespace"
    gone = kubectl_run(kubeconfig, "get", netpol, "-n", ns, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone
    assert netns.list_names(f"cilp-{lab.name}-{ns}-") == []
    root = cgroup2_root()
    assert root is not None
    assert list((root / "ciliary" / lab.name).glob(f"pod-{ns}-*")) == []
    with AgentClient(manager.agent_socket(lab.node, name=lab.name)) as cl:
        ids = [e.container_id for e in cl.endpoints()]
    assert [c for c in ids if f"-{ns}-" in c] == []


def test_failed_cni_add_rolls_back_the_whole_apply(lab: Lab, tmp_path: Path) -> None:
    ns = unique("ap")
    conflist = Path(f"/run/ciliary/lab/{lab.name}/cni/{lab.node}/net.d/10-ciliary.conflist")
    good = conflist.read_text()
    broken = json.loads(good)
    broken["plugins"].append({"type": "ciliary-no-such-plugin"})
    conflist.write_text(json.dumps(broken))
    try:
        with pytest.raises(manager.LabError, match=r"nothing was added.*CNI ADD failed"):
            manager.apply(_applied(tmp_path / "a.yaml", ns), name=lab.name)
    finally:
        conflist.write_text(good)
    _assert_nothing_of(lab, ns)
    view = manager.apply(_applied(tmp_path / "a.yaml", ns), name=lab.name)
    pods = {f"{p.namespace}/{p.name}": p for p in view.pods}
    assert pods[f"{ns}/web"].running and pods[f"{ns}/cli"].running


def test_applied_namespace_is_selectable_by_name(lab: Lab, tmp_path: Path) -> None:
    """A NetworkPolicy allowing its own namespace by ``kubernetes.io/metadata.name`` admits the
    applied namespace's pods (real packets), and still denies pods of other namespaces."""
    ns = unique("nm")
    manager.apply(_applied(tmp_path / "n.yaml", ns), name=lab.name)
    body = get_json(manager.kubeconfig(lab.name), "namespace", ns)
    assert body["metadata"]["labels"] == {"tier": "extra", "kubernetes.io/metadata.name": ns}
    web = lab.pod_ip(f"{ns}/web")
    get = ["ciliary", "workload", "http-get", f"http://{web}/", "--timeout", "3"]
    allowed = lab.run(f"{ns}/cli", *get)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    denied = lab.run("default/client", *get)
    assert denied.returncode != 0, denied.stdout


def test_apply_of_a_pod_whose_command_does_not_exist_fails_and_rolls_back(
    lab: Lab, tmp_path: Path
) -> None:
    ns = unique("nc")
    path = _applied(tmp_path / "c.yaml", ns, command="no-such-command-ciliary")
    with pytest.raises(manager.LabError) as info:
        manager.apply(path, name=lab.name)
    message = str(info.value)
    assert f"pod {ns}/cli: container main cannot start 'no-such-command-ciliary'" in message
    assert "command not found" in message and "No such file or directory" in message
    _assert_nothing_of(lab, ns)
    manager.apply(_applied(tmp_path / "c.yaml", ns), name=lab.name)
    assert {p.name for p in manager.status(lab.name).pods if p.namespace == ns} == {"web", "cli"}


def test_lab_up_with_a_missing_command_fails_and_leaves_nothing(tmp_path: Path) -> None:
    """`lab up`'s own rollback: the last pod cannot start, after the node, its agent, the relay,
    the DNS pod and the other pods were made: exit 1 with the reason, and nothing is left."""
    lab, node = unique("upc"), unique("n")
    text = LAB_TEMPLATE.format(lab=lab, node=node, aggregation="medium")
    text = text.replace(
        'command: [ciliary, workload, http-server, --port, "80"]',
        "command: [/nonexistent/ciliary-http]",
    )
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    res = subprocess.run(
        [CILIARY, "lab", "up", str(path)], capture_output=True, text=True, timeout=180, check=False
    )
    assert res.returncode == 1, res.stdout
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(err) == 1, res.stderr
    assert "lab up failed, nothing was left behind" in err[0]
    assert "pod shop/server: container web cannot start '/nonexistent/ciliary-http'" in err[0]
    assert_no_leftovers(lab, [node])


def test_apply_while_the_agent_is_down_rolls_back_and_a_retry_succeeds(
    lab: Lab, tmp_path: Path
) -> None:
    """The agent is down (`lab stop-agent`: stopped and held down): the ADD fails, the rollback
    still leaves nothing; once the agent is back the same apply succeeds."""
    ns = unique("dn")
    res = subprocess.run(
        [CILIARY, "lab", "stop-agent", lab.node, "--name", lab.name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    try:
        assert not manager.status(lab.name).nodes[0].agent_alive
        with pytest.raises(manager.LabError, match=r"nothing was added.*CNI ADD failed"):
            manager.apply(_applied(tmp_path / "d.yaml", ns), name=lab.name)
        rec = manager.record(lab.name)
        assert [p.key for p in rec.pods if p.namespace == ns] == []
        assert ns not in rec.namespaces
        _assert_nothing_in_api(lab, ns)
        assert netns.list_names(f"cilp-{lab.name}-{ns}-") == []
        assert not manager.status(lab.name).nodes[0].agent_alive, "held down: not restarted"
    finally:
        manager.restart_agent(lab.node, name=lab.name)
    _assert_nothing_of(lab, ns)  # also the restarted agent has no endpoint of it
    view = manager.apply(_applied(tmp_path / "d.yaml", ns), name=lab.name)
    assert {p.name for p in view.pods if p.namespace == ns and p.running} == {"web", "cli"}


BARE = """\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}
spec:
  containers:
  - name: main
    image: debian
    command: [ciliary, workload, http-server, --port, "8080"]
"""


def test_a_bare_pod_of_kubectl_is_scheduled_run_and_shown_by_lab_status(lab: Lab) -> None:
    """A Pod made with `kubectl apply` (no owner, no nodeName) is bound to the lab's node by the
    scheduler and run by the kubelet role (Running, Ready, serving); `lab status` shows it as
    `kubectl get pods -A -o wide` does; `kubectl delete` tears it down."""
    name = unique("bare")
    kubeconfig = manager.kubeconfig(lab.name)
    kubectl(kubeconfig, "apply", "-f", "-", stdin=BARE.format(name=name))

    def ready() -> dict[str, object] | None:
        pod = get_json(kubeconfig, "pod", name)
        conditions = pod.get("status", {}).get("conditions") or []
        ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return pod if ok else None

    pod = wait_for(f"bare pod {name} ready", ready, timeout=60)
    assert pod["spec"]["nodeName"] == lab.node  # type: ignore[index]
    ip = pod["status"]["podIP"]  # type: ignore[index]
    got = lab.run("default/client", "ciliary", "workload", "http-get", f"http://{ip}:8080/")
    assert got.returncode == 0, got.stdout + got.stderr

    wide = kubectl(kubeconfig, "get", "pods", "-A", "-o", "wide").splitlines()
    status = subprocess.run(
        [CILIARY, "lab", "status", "--name", lab.name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    header = ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide[0].split()[:8] == header
    assert [ln for ln in status if ln.split()[:8] == header], status
    for line in wide[1:]:  # every pod kubectl lists, with the same cells (AGE may tick)
        cells = line.split()
        row = next((ln.split() for ln in status if ln.split()[:2] == cells[:2]), None)
        assert row is not None, (line, status)
        assert row[2:5] + row[6:] == cells[2:5] + cells[6:], (row, cells)
    assert any(ln.split()[:2] == ["default", name] for ln in status)

    kubectl(kubeconfig, "delete", "pod", name)
    wait_for(
        f"pod {name} torn down",
        lambda: all(p.name != name for p in manager.record(lab.name).pods),
        timeout=30,
    )
    assert netns.list_names(f"cilp-{lab.name}-default-{name}") == []
