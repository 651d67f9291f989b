"""The lab runs workloads: ``lab up`` starts ciliary-controller-manager, ciliary-operator and the
kubelet role (``lab.kubeletd``) under its supervisor; a Deployment applied with kubectl becomes
pods spread over the nodes, running with real addresses and reachable with real packets; a pod
deleted is replaced (new address) and the old one leaves nothing; ``kubectl scale`` scales; a
DaemonSet runs one pod per node; containers restart per ``restartPolicy``; an image without a
command is refused naming the pod; ``lab down`` leaves nothing."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ciliary.client.agent import AgentClient
from ciliary.lab import manager, process
from tests.e2e.conftest import CILIARY, KubeLab, shared_kube_lab
from tests.e2e.test_lab_kubectl import SHARES_LAB as KUBECTL_LAB
from tests.e2e.test_lab_kubectl import write_lab
from tests.kubectl import get_json, kubectl, kubectl_run, pods, wait_for

pytestmark = pytest.mark.timeout(600)

T = TypeVar("T")

# The lab of test_lab_kubectl, shared (one lab up and down fewer a run): two nodes, socket-LB on
# (Cilium's default: host-network pods' connects are translated), kubelet's
# maxContainerRestartPeriod 1 s (what these tests kill is back after 1 s, not 10 s). It runs
# before this module (SHARES_LAB_FRESH) and leaves only what is in ``shop`` and a control plane
# restarted; test_lab_l7_starwars adds its pods and policies in ``default`` (labels org/class,
# none of this module's); this module adds a client on each node (``lab apply``) and works in
# ``default`` by its own labels.
SHARES_LAB = KUBECTL_LAB

CLIENTS = """\
apiVersion: v1
kind: Pod
metadata: {{name: client-1, labels: {{app: client}}}}
spec:
  nodeName: {n1}
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: v1
kind: Pod
metadata: {{name: client-2, labels: {{app: client}}}}
spec:
  nodeName: {n2}
  containers:
  - name: main
    command: [ciliary, workload, pause]
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: http
        image: ciliary/http-server
        command: [ciliary, workload, http-server]
        args: [--port, "80"]
        ports: [{name: http, containerPort: 80}]
"""

DAEMONSET = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agentlike}
spec:
  selector: {matchLabels: {app: agentlike}}
  template:
    metadata: {labels: {app: agentlike}}
    spec:
      containers:
      - name: main
        image: busybox
        command: [ciliary, workload, pause]
"""

CRASHER = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: crasher}
spec:
  replicas: 1
  selector: {matchLabels: {app: crasher}}
  template:
    metadata: {labels: {app: crasher}}
    spec:
      containers:
      - name: main
        image: busybox
        command: [sh, -c, "sleep 0.5; exit 3"]
"""

IMAGE_ONLY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx}
spec:
  replicas: 1
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
"""


PROBED = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: probed}
spec:
  replicas: 1
  selector: {matchLabels: {app: probed}}
  template:
    metadata: {labels: {app: probed}}
    spec:
      containers:
      - name: http
        image: ciliary/http-server
        command: [ciliary, workload, http-server]
        args: [--port, "80"]
        ports: [{name: http, containerPort: 80}, {name: health, containerPort: 8081}]
        readinessProbe:
          httpGet: {path: /healthz, port: health}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: probed}
spec:
  selector: {app: probed}
  ports: [{port: 80, targetPort: http}]
"""

LIVENESS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: wedged}
spec:
  replicas: 1
  selector: {matchLabels: {app: wedged}}
  template:
    metadata: {labels: {app: wedged}}
    spec:
      containers:
      - name: main
        image: busybox
        command: [ciliary, workload, pause]
        livenessProbe:
          exec: {command: [sh, -c, "exit 1"]}
          periodSeconds: 1
          failureThreshold: 2
"""


HOSTNET = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: hostnet}
spec:
  selector: {matchLabels: {app: hostnet}}
  template:
    metadata: {labels: {app: hostnet}}
    spec:
      hostNetwork: true
      containers:
      - name: http
        image: ciliary/http-server
        command: [ciliary, workload, http-server, --port, "18082"]
        ports: [{containerPort: 18082}]
---
apiVersion: v1
kind: Service
metadata: {name: hostnet}
spec:
  selector: {app: hostnet}
  ports: [{port: 80, targetPort: 18082}]
"""
# GET a URL N times, print the answering pods (http-server names the pod it runs in)
FETCH_PODS = """\
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
pods = [json.load(opener.open(sys.argv[1], timeout=5))["pod"] for _ in range(int(sys.argv[2]))]
print(json.dumps(pods))
"""


def ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and conditions.get("Ready") == "True"


def ready_pods(kubeconfig: str, selector: str, count: int) -> list[dict[str, Any]] | None:
    """The ``count`` pods of ``selector`` once exactly that many exist and all are Ready."""
    got = pods(kubeconfig, selector)
    live = [p for p in got if not p["metadata"].get("deletionTimestamp")]
    return live if len(live) == count and all(ready(p) for p in live) else None


def restarted(kubeconfig: str, selector: str, count: int) -> dict[str, Any] | None:
    """A pod of ``selector`` whose first container restarted at least ``count`` times."""
    for p in pods(kubeconfig, selector):
        statuses = (p.get("status") or {}).get("containerStatuses") or []
        if statuses and statuses[0]["restartCount"] >= count:
            return p
    return None


def client(nodes: list[str], pod: dict[str, Any]) -> str:
    """The file's client pod on ``pod``'s node."""
    return f"default/client-{nodes.index(pod['spec']['nodeName']) + 1}"


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[KubeLab]:
    """test_lab_kubectl's lab with this module's clients added."""
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as made:
        name, (n1, n2), _ = made
        path = tmp_path_factory.mktemp("workloads") / "clients.yaml"
        path.write_text(CLIENTS.format(n1=n1, n2=n2))
        manager.apply(path, name=name)
        yield made


def test_cluster_processes_run_under_the_supervisor(lab: tuple[str, list[str], str]) -> None:
    name, _, _ = lab
    view = manager.status(name)
    procs = {p.name: p for p in view.processes}
    assert sorted(procs) == ["controller-manager", "kubelet", "operator"]
    assert all(p.alive and p.restarts == 0 for p in procs.values()), procs
    shown = subprocess.run(
        [CILIARY, "lab", "status", "--name", name], capture_output=True, text=True, check=True
    ).stdout
    assert "controller-manager running" in shown and "kubelet running" in shown, shown
    # killed -9, the controller manager is started again by the supervisor (after its back-off)
    cm = procs["controller-manager"]
    assert cm.pid is not None
    os.kill(cm.pid, signal.SIGKILL)

    def restarted() -> bool:
        again = {p.name: p for p in manager.status(name).processes}["controller-manager"]
        return again.alive and again.restarts == 1 and again.pid != cm.pid

    wait_for("the controller manager's restart", restarted, timeout=40)
    again = {p.name: p for p in manager.status(name).processes}["controller-manager"]
    assert again.last_exit == "killed by SIGKILL"


def test_deployment_pods_run_spread_and_serve(lab: tuple[str, list[str], str]) -> None:
    name, nodes, kubeconfig = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=DEPLOYMENT)
    web = wait_for("4 ready web pods", lambda: ready_pods(kubeconfig, "app=web", 4), 120)
    per_node = sorted(sum(p["spec"]["nodeName"] == n for p in web) for n in nodes)
    assert per_node == [2, 2], [p["spec"]["nodeName"] for p in web]
    cidrs = {n.name: ipaddress.ip_network(n.ipv4_cidr or "") for n in manager.status(name).nodes}
    ips = set()
    for p in web:
        ip = p["status"]["podIP"]
        assert ipaddress.ip_address(ip) in cidrs[p["spec"]["nodeName"]], p["status"]
        assert p["status"]["containerStatuses"][0]["image"] == "ciliary/http-server"
        assert p["status"]["hostIP"]
        ips.add(ip)
        rec = manager.find_pod(manager.record(name), f"default/{p['metadata']['name']}")
        assert rec.kubelet and rec.uid == p["metadata"]["uid"] and rec.ipv4
        assert rec.ipv4.partition("/")[0] == ip
        # real packets from another pod (a client of the file on the pod's node: the lab's
        # nodes have no datapath between them)
        got = manager.run_in_pod(
            client(nodes, p), ["ciliary", "workload", "http-get", f"http://{ip}/"], name=name
        )
        assert got.returncode == 0, (ip, got.stdout, got.stderr)
    assert len(ips) == 4
    # one label set, one cluster-wide identity: every replica's endpoint has the same number on
    # whichever node it runs, both nodes' identity lists know it, and so does the API
    numbers = set()
    for n in nodes:
        with AgentClient(manager.agent_socket(n, name=name)) as cl:
            numbers |= {e.identity for e in cl.endpoints() if e.pod_name in names_of(web)}
            known = {i.id: i.labels for i in cl.identities()}
        assert len(numbers) == 1, numbers
        (number,) = numbers
        assert "k8s:app=web" in known[number], known.get(number)
    api = get_json(kubeconfig, "ciliumidentities", str(number))
    assert api["security-labels"]["k8s:app"] == "web", api


def names_of(items: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["name"] for p in items}


def test_deleted_pod_is_replaced_and_leaves_nothing(lab: tuple[str, list[str], str]) -> None:
    name, nodes, kubeconfig = lab
    web = wait_for("4 ready web pods", lambda: ready_pods(kubeconfig, "app=web", 4), 120)
    victim = web[0]
    pod_name, ip = victim["metadata"]["name"], victim["status"]["podIP"]
    old = manager.find_pod(manager.record(name), f"default/{pod_name}")
    node = manager.node_record(manager.record(name), old.node)
    kubectl(kubeconfig, "delete", "pod", pod_name)

    def replaced() -> list[dict[str, Any]] | None:
        now = ready_pods(kubeconfig, "app=web", 4)
        if now is None or pod_name in {p["metadata"]["name"] for p in now}:
            return None
        return now

    after = wait_for("the replacement pod", replaced, 120)
    new = [p for p in after if p["metadata"]["name"] not in {w["metadata"]["name"] for w in web}]
    assert len(new) == 1 and new[0]["status"]["podIP"] != ip

    def served() -> bool:
        # Ready is "containers running" (no readiness probe, as in Kubernetes), not "listening"
        got = manager.run_in_pod(
            client(nodes, new[0]),
            ["ciliary", "workload", "http-get", f"http://{new[0]['status']['podIP']}/"],
            name=name,
        )
        return got.returncode == 0

    wait_for("the replacement pod to serve HTTP", served, 20)

    def gone() -> bool:
        with AgentClient(Path(node.socket)) as cl:
            endpoints = cl.endpoints()
        return (
            not os.path.exists(f"/run/netns/{old.netns}")
            and all(e.container_id != old.container_id for e in endpoints)
            and all(ip not in (e.ipv4 or "") for e in endpoints)
            and all(p.key != old.key for p in manager.record(name).pods)
        )

    wait_for("the old pod's netns, endpoint and record to go", gone, 30)
    for c in old.containers:
        assert not process.alive(c.pid, c.pid_start_time)


def test_scale_down(lab: tuple[str, list[str], str]) -> None:
    name, _, kubeconfig = lab
    kubectl(kubeconfig, "scale", "deployment", "web", "--replicas=2")
    two = wait_for("2 web pods", lambda: ready_pods(kubeconfig, "app=web", 2), 120)

    def recorded() -> bool:
        recs = [
            p
            for p in manager.record(name).pods
            if p.namespace == "default" and p.labels.get("app") == "web"  # shop/web: the lab's
        ]
        return sorted(p.name for p in recs) == sorted(p["metadata"]["name"] for p in two)

    wait_for("the record to hold the 2 pods only", recorded, 30)
    netns = [n for n in os.listdir("/run/netns") if n.startswith(f"cilp-{name}-default-web-")]
    assert len(netns) == 2, netns


def test_daemonset_runs_one_pod_per_node(lab: tuple[str, list[str], str]) -> None:
    _, nodes, kubeconfig = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=DAEMONSET)
    ds = wait_for("a ready pod per node", lambda: ready_pods(kubeconfig, "app=agentlike", 2), 120)
    assert sorted(p["spec"]["nodeName"] for p in ds) == sorted(nodes)


def test_containers_restart_per_policy(lab: tuple[str, list[str], str]) -> None:
    _, _, kubeconfig = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=CRASHER)
    pod = wait_for(
        "two restarts (the second after the back-off)",
        lambda: restarted(kubeconfig, "app=crasher", 2),
        60,
    )
    assert pod["status"]["phase"] == "Running"  # restartPolicy Always: never ends


def test_image_without_command_is_refused_naming_the_pod(
    lab: tuple[str, list[str], str],
) -> None:
    _, _, kubeconfig = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=IMAGE_ONLY)

    def failed() -> dict[str, Any] | None:
        for p in pods(kubeconfig, "app=nginx"):
            if (p.get("status") or {}).get("phase") == "Failed":
                return p
        return None

    pod = wait_for("the refusal", failed, 60)
    assert pod["status"]["reason"] == "ImageWithoutCommand"
    message = pod["status"]["message"]
    assert f"default/{pod['metadata']['name']}" in message and "nginx:1.27" in message
    kubectl(kubeconfig, "delete", "deployment", "nginx")


def _active_backend_on(name: str, nodes: list[str], address: str) -> dict[str, bool]:
    """Per node: whether its agent has ``address`` as an active backend of some frontend."""
    out = {}
    for n in manager.record(name).nodes:
        if n.name in nodes:
            with AgentClient(Path(n.state_dir) / "agent.sock", timeout=5) as cl:
                out[n.name] = any(
                    b.address == address and b.state == "active"
                    for f in cl.service_frontends()
                    for b in f.backends
                )
    return out


def _slice_ready(kubeconfig: str, address: str) -> bool | None:
    slices = get_json(kubeconfig, "endpointslices", "-l", "kubernetes.io/service-name=probed")[
        "items"
    ]
    for sl in slices:
        for ep in sl.get("endpoints") or []:
            if address in ep.get("addresses", []):
                return bool((ep.get("conditions") or {}).get("ready"))
    return None


def test_readiness_probe_decides_ready_and_the_service_backends(
    lab: tuple[str, list[str], str],
) -> None:
    """A readinessProbe (httpGet from the node to a named port) gates the pod's Ready condition,
    its EndpointSlice ``ready`` and every node's service backends, both ways."""
    name, nodes, kubeconfig = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=PROBED)

    def running() -> dict[str, Any] | None:
        got = [p for p in pods(kubeconfig, "app=probed") if p.get("status", {}).get("podIP")]
        return got[0] if got and got[0]["status"].get("phase") == "Running" else None

    pod = wait_for("the probed pod running", running, 60)
    key, address = f"default/{pod['metadata']['name']}", pod["status"]["podIP"]
    wait_for(
        "its endpoint in the slice, not ready",
        lambda: _slice_ready(kubeconfig, address) is False,
        30,
    )
    time.sleep(3)  # three probe periods: the failing probe keeps it out
    pod = get_json(kubeconfig, "pod", pod["metadata"]["name"])
    assert not ready(pod) and pod["status"]["containerStatuses"][0]["ready"] is False, pod["status"]
    assert not any(_active_backend_on(name, nodes, address).values())

    health = subprocess.Popen(
        [CILIARY, "lab", "exec", "--name", name, key, "--",
         "ciliary", "workload", "http-server", "--port", "8081"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            "Ready once /healthz answers",
            lambda: ready(get_json(kubeconfig, "pod", pod["metadata"]["name"])),
            30,
        )
        wait_for(
            "an active backend on every node",
            lambda: all(_active_backend_on(name, nodes, address).values()),
            30,
        )
        vip = get_json(kubeconfig, "service", "probed")["spec"]["clusterIP"]
        got = manager.run_in_pod(
            "default/client-1", ["ciliary", "workload", "http-get", f"http://{vip}/"], name=name
        )
        assert got.returncode == 0, (got.stdout, got.stderr)
    finally:
        os.killpg(health.pid, signal.SIGTERM)
        health.wait(10)
    wait_for(
        "not Ready once /healthz is gone",
        lambda: not ready(get_json(kubeconfig, "pod", pod["metadata"]["name"])),
        30,
    )
    wait_for(
        "no active backend on any node",
        lambda: not any(_active_backend_on(name, nodes, address).values()),
        30,
    )
    assert _slice_ready(kubeconfig, address) is False
    kubectl(kubeconfig, "delete", "-f", "-", stdin=PROBED)


def test_failed_liveness_probe_restarts_the_container(lab: tuple[str, list[str], str]) -> None:
    _, _, kubeconfig = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=LIVENESS)
    pod = wait_for(
        "a restart after two failed liveness probes",
        lambda: restarted(kubeconfig, "app=wedged", 1),
        60,
    )
    assert pod["status"]["phase"] == "Running"
    kubectl(kubeconfig, "delete", "deployment", "wedged")


def test_invalid_probe_is_refused_by_the_api_server(lab: tuple[str, list[str], str]) -> None:
    _, _, kubeconfig = lab
    bad = LIVENESS.replace(
        "failureThreshold: 2", "failureThreshold: 2\n          successThreshold: 3"
    )
    res = kubectl_run(kubeconfig, "apply", "-f", "-", stdin=bad, check=False)
    assert res.returncode != 0
    assert "spec.template.spec.containers[0].livenessProbe.successThreshold" in res.stderr, (
        res.stderr
    )
    assert "must be 1" in res.stderr


def test_host_network_pods_run_in_their_nodes_namespace(lab: tuple[str, list[str], str]) -> None:
    """``hostNetwork: true``: no sandbox, no CNI; the pod's IP is its node's InternalIP, its
    processes run in the node's network namespace and answer a Service from pods; a
    host-network pod's own connect() to a ClusterIP is translated (socket-LB on the node's
    cgroup); deleting the pods leaves the node's namespace (and its pods) untouched."""
    name, nodes, kubeconfig = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=HOSTNET)
    got = wait_for(
        "a host-network pod per node", lambda: ready_pods(kubeconfig, "app=hostnet", 2), 120
    )
    internal = {
        n["metadata"]["name"]: [
            a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"
        ]
        for n in get_json(kubeconfig, "nodes")["items"]
    }
    rec = manager.record(name)
    for pod in got:
        node = pod["spec"]["nodeName"]
        assert [p["ip"] for p in pod["status"]["podIPs"]] == internal[node], pod["status"]
        prec = manager.find_pod(rec, f"default/{pod['metadata']['name']}")
        assert prec.netns == manager.node_netns(name, node) and prec.endpoint_id is None
    vip = get_json(kubeconfig, "service", "hostnet")["spec"]["clusterIP"]
    url = f"http://{vip}/"
    answered = manager.run_in_pod(
        "default/client-1", [sys.executable, "-c", FETCH_PODS, url, "20"], name=name
    )
    assert answered.returncode == 0, answered.stderr
    assert set(json.loads(answered.stdout)) <= {p["metadata"]["name"] for p in got}
    host_pod = f"default/{got[0]['metadata']['name']}"
    from_host = manager.run_in_pod(
        host_pod, [sys.executable, "-c", FETCH_PODS, url, "5"], name=name
    )
    assert from_host.returncode == 0, from_host.stderr  # translated in the socket (socket-LB)
    kubectl(kubeconfig, "delete", "-f", "-", stdin=HOSTNET)
    wait_for("the host-network pods gone", lambda: not pods(kubeconfig, "app=hostnet"), 60)
    for node in nodes:
        assert Path(f"/run/netns/{manager.node_netns(name, node)}").exists()
    again = manager.run_in_pod(
        "default/client-2",
        ["ciliary", "workload", "ping", "-c", "1", internal[nodes[0]][0]],
        name=name,
    )
    assert again.returncode == 0, again.stdout + again.stderr
