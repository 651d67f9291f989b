"""Debian's Redis and PostgreSQL (scripts/setup.sh) run as lab pods from ordinary manifests,
``examples/databases.yaml`` applied with kubectl as a user would: a Redis Deployment and a
PostgreSQL StatefulSet (``postgres-0``, ``initdb`` into its emptyDir), each non-root and behind a
Service; a client pod gets ``PONG`` and a ``SELECT`` answer over the real datapath, and a
CiliumNetworkPolicy that leaves the client out turns both into drops Hubble reports as
``POLICY_DENIED`` on the way to each server. An emptyDir volume over a directory that does not
exist is refused with kubelet's CreateContainerConfigError."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, shared_kube_lab, unique
from tests.kubectl import get_json, kubectl, pods, wait_for
from tests.unit.hubble.test_l7_dashboard import SPEC as L7_SPEC

pytestmark = pytest.mark.timeout(300)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "databases.yaml"
NOBODY = 65534  # the example's runAsUser

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  images:
  - image: redis:7
    command: [redis-server]
    args: [--port, "6379", --protected-mode, "no", --dir, /tmp, --save, "", --appendonly, "no"]
  hubble:
    metrics:  # test_lab_l7_http's (it shares this lab)
    - flow
    - "{l7_metric}"
  nodes:
  - name: {node}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: v1
kind: Pod
metadata: {{name: cache, labels: {{app: cache}}}}
spec:
  containers:
  - name: redis
    image: redis:7
---
apiVersion: v1
kind: Pod
metadata: {{name: app, namespace: default}}
spec:
  containers:
  - name: main
    command:
    - /bin/sh
    - -c
    - >-
      echo "hello uid=$(id -u) dir=$(pwd)"; i=0;
      while :; do echo "tick $i"; i=$((i+1)); sleep 0.2; done
    workingDir: {workdir}
    securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
    resources: {{limits: {{memory: 48Mi}}}}
"""
"""The lab file of this module and of the modules that share the lab (one lab up and down fewer
a run each: test_lab_l7_http, test_lab_pods_runtime, test_lab_socketlb): ``default/app`` is
test_lab_pods_runtime's lab-file pod (its user, working directory ``{workdir}`` and memory limit,
its log), which nothing here selects; the Hubble metrics are test_lab_l7_http's; what each module
applies has names and labels of its own (redis, postgres, nowhere; runs, rootless, nginx) or a
namespace of its own (l7http, socketlb)."""
SHARES_LAB = "databases"

DB_FROM_NOBODY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-nobody}
spec:
  endpointSelector: {matchLabels: {tier: db}}
  ingress: [{fromEndpoints: [{matchLabels: {app: nobody}}]}]
"""

NO_MOUNT_POINT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: nowhere}
spec:
  replicas: 1
  selector: {matchLabels: {app: nowhere}}
  template:
    metadata: {labels: {app: nowhere}}
    spec:
      containers:
      - name: main
        image: debian
        command: [sleep, infinity]
        volumeMounts: [{name: data, mountPath: /nonexistent/ciliary-data}]
      volumes: [{name: data, emptyDir: {}}]
"""


def ready_pod(kubeconfig: str, selector: str) -> dict[str, Any] | None:
    for pod in pods(kubeconfig, selector):
        status = pod.get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        if status.get("phase") == "Running" and conditions.get("Ready") == "True":
            return pod
    return None


def server_process(lab: str, pod: str) -> int:
    """The container's command: the child of its PID namespace's ``unshare``."""
    (crec,) = manager.find_pod(manager.record(lab), pod).containers
    assert crec.pid is not None
    (child,) = (Path(f"/proc/{crec.pid}/task/{crec.pid}/children").read_text()).split()
    return int(child)


def uid_of(pid: int) -> list[str]:
    found = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert found is not None
    return found.group(1).split()


def write_lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    """LAB written for a new lab; the working directory of ``default/app`` is ``work`` next to
    the file (``workdir``)."""
    name, node = unique("db"), unique("n")
    path = tmp_path_factory.mktemp("databases") / "lab.yaml"
    text = LAB.format(lab=name, node=node, workdir=path.parent / "work", l7_metric=L7_SPEC)
    path.write_text(text)
    return path, name, [node]


def workdir(lab: str) -> Path:
    """The working directory LAB gave ``default/app`` (next to the lab's file)."""
    file = manager.record(lab).file
    assert file is not None
    return Path(file).parent / "work"


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[tuple[str, str, str]]:
    """(lab name, admin kubeconfig, node) with the example's workloads applied and ready."""
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as (name, nodes, kubeconfig):
        kubectl(kubeconfig, "apply", "-f", str(EXAMPLE))
        yield name, kubeconfig, nodes[0]


def client(lab: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return manager.run_in_pod("default/client", list(argv), name=lab, timeout=30)


def redis_ping(lab: str, ip: str) -> subprocess.CompletedProcess[str]:
    return client(lab, "timeout", "2", "redis-cli", "-h", ip, "-p", "6379", "ping")


def psql_select(lab: str, ip: str) -> subprocess.CompletedProcess[str]:
    conninfo = f"host={ip} port=5432 user=postgres dbname=postgres connect_timeout=2"
    return client(lab, "psql", conninfo, "-Atc", "SELECT 40 + 2")


def answered(call: Callable[[], subprocess.CompletedProcess[str]], want: str) -> str:
    def probe() -> str | None:
        got = call()
        return got.stdout if got.returncode == 0 and got.stdout.strip() == want else None

    return wait_for(f"the answer {want!r}", probe, 30)


def dropped_to(lab: str, node: str, pod: str, port: int) -> list[dict[str, Any]]:
    """Hubble's DROPPED flows to ``pod`` (``namespace/name``) on ``port``, from the node's own
    Hubble server."""
    (nrec,) = [n for n in manager.record(lab).nodes if n.name == node]
    sock = Path(nrec.state_dir) / "hubble.sock"
    res = subprocess.run(
        [CILIARY, "observe", "--server", f"unix://{sock}", "--verdict", "DROPPED",
         "--to-pod", pod, "--to-port", str(port), "--last", "50", "-o", "jsonpb"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    responses = [json.loads(line) for line in res.stdout.splitlines()]
    return [r["flow"] for r in responses if "flow" in r]


def test_redis_and_postgres_serve_a_client_until_a_policy_denies_it(
    lab: tuple[str, str, str],
) -> None:
    name, kubeconfig, node = lab
    redis = wait_for("redis ready", lambda: ready_pod(kubeconfig, "app=redis"))
    postgres = wait_for("postgres-0 ready", lambda: ready_pod(kubeconfig, "app=postgres"))
    assert postgres["metadata"]["name"] == "postgres-0"
    redis_ip, pg_ip = redis["status"]["podIP"], postgres["status"]["podIP"]
    services = get_json(kubeconfig, "services", "redis", "postgres")
    assert {s["metadata"]["name"] for s in services["items"]} == {"redis", "postgres"}

    assert answered(lambda: redis_ping(name, redis_ip), "PONG")
    assert answered(lambda: psql_select(name, pg_ip), "42")

    # Debian's servers, non-root, writing into their emptyDir (initdb's files are there)
    rpid = server_process(name, f"default/{redis['metadata']['name']}")
    ppid = server_process(name, "default/postgres-0")
    assert Path(f"/proc/{rpid}/comm").read_text().strip() == "redis-server"
    assert Path(f"/proc/{ppid}/comm").read_text().strip() == "postgres"
    assert uid_of(rpid) == [str(NOBODY)] * 4 and uid_of(ppid) == [str(NOBODY)] * 4
    assert (Path(f"/proc/{ppid}/root/var/lib/postgresql/data/PG_VERSION")).is_file()
    mounts = Path(f"/proc/{ppid}/mountinfo").read_text()
    assert re.search(r" /var/lib/postgresql .* - tmpfs ciliary-emptydir ", mounts), mounts
    assert not Path("/var/lib/postgresql/data").exists()  # the machine's directory is untouched

    kubectl(kubeconfig, "apply", "-f", "-", stdin=DB_FROM_NOBODY)
    wait_for("redis denied", lambda: redis_ping(name, redis_ip).returncode != 0, 20)
    wait_for("postgres denied", lambda: psql_select(name, pg_ip).returncode != 0, 20)
    # a verdict, not a timeout: the datapath dropped the client's SYNs to each server by policy
    for pod, port in ((redis["metadata"]["name"], 6379), ("postgres-0", 5432)):

        def drops_to(pod: str = pod, port: int = port) -> list[dict[str, Any]]:
            return dropped_to(name, node, f"default/{pod}", port)

        drops = wait_for(f"Hubble's drops to {pod}", drops_to, 20)
        drop = drops[-1]
        assert drop["verdict"] == "DROPPED" and drop["drop_reason_desc"] == "POLICY_DENIED", drop
        assert drop["source"]["pod_name"] == "client" and drop["l4"]["TCP"]["flags"]["SYN"], drop

    kubectl(kubeconfig, "delete", "cnp", "db-from-nobody")
    assert answered(lambda: redis_ping(name, redis_ip), "PONG")
    assert answered(lambda: psql_select(name, pg_ip), "42")


def test_a_lab_file_pod_runs_the_command_its_image_maps_to(lab: tuple[str, str, str]) -> None:
    """The lab file's ``cache`` Pod has ``image: redis:7`` and no command: the kubelet role runs
    the command the Lab's ``spec.images`` maps that image to, and it serves."""
    name, kubeconfig, _ = lab
    cache = wait_for("cache ready", lambda: ready_pod(kubeconfig, "app=cache"))
    (container,) = cache["spec"]["containers"]
    assert container["image"] == "redis:7" and "command" not in container, container
    assert answered(lambda: redis_ping(name, cache["status"]["podIP"]), "PONG")
    pid = server_process(name, "default/cache")
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
    title = Path(f"/proc/{pid}/cmdline").read_bytes()  # redis sets its title from its args
    assert title.startswith(b"redis-server *:6379"), title


def test_empty_dir_without_a_mount_point_is_refused(lab: tuple[str, str, str]) -> None:
    """The lab mounts an emptyDir over an existing directory only (pods share the machine's
    root file system): kubelet's CreateContainerConfigError names the mount."""
    name, kubeconfig, _ = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=NO_MOUNT_POINT)

    def refused() -> dict[str, Any] | None:
        items = pods(kubeconfig, "app=nowhere")
        status = (items[0].get("status") or {}) if items else {}
        return items[0] if status.get("reason") == "CreateContainerConfigError" else None

    pod = wait_for("the refusal", refused, 60)
    (c,) = pod["status"]["containerStatuses"]
    message = c["state"]["waiting"]["message"]
    assert "/nonexistent/ciliary-data" in message and "volumeMounts[0]" in message, message
    assert not Path("/nonexistent").exists()
    key = f"default/{pod['metadata']['name']}"
    assert not [p for p in manager.record(name).pods if p.key == key]  # nothing runs
    kubectl(kubeconfig, "delete", "deployment", "nowhere")
