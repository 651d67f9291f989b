"""A lab file's pod runs as its spec says: ``securityContext`` user, ``workingDir`` and the pod's
memory limit applied to the container process (seen in ``/proc``, the cgroup files); a container
kubelet would refuse (``runAsNonRoot`` and no user) fails ``lab up`` naming the pod and the
reason, leaving nothing; ``kubectl logs`` (the lab's admin kubeconfig) prints a container's
output from its log file, ``-f`` follows it. The kubelet role's pods (a Deployment's) get the
same: user, one log file per run (``-p``), and kubelet's CreateContainerConfigError. Debian's
nginx runs as such a pod, non-root, and serves another pod."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ciliary.datapath.linux import cgroup
from ciliary.lab import manager
from tests.e2e.conftest import assert_no_leftovers, shared_kube_lab, unique
from tests.e2e.test_lab_databases import SHARES_LAB as DATABASES_LAB
from tests.e2e.test_lab_databases import workdir, write_lab
from tests.kubectl import KUBECTL, kubectl, kubectl_run, pods, wait_for

pytestmark = pytest.mark.timeout(300)

MEMORY = 48 * 1024 * 1024
T = TypeVar("T")

# The lab of test_lab_databases, shared (one lab up and down fewer a run): its file holds this
# module's lab-file pod, ``default/app`` (a user, a working directory, a memory limit, a log of
# ticks), which nothing of that module selects.
SHARES_LAB = DATABASES_LAB

REFUSED = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes:
  - name: {node}
---
apiVersion: v1
kind: Pod
metadata: {{name: rootless, namespace: default}}
spec:
  securityContext: {{runAsNonRoot: true}}
  containers:
  - name: main
    command: [ciliary, workload, pause]
"""


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[tuple[str, str, Path]]:
    """(name, admin kubeconfig, the pod's working directory)."""
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as (name, _, kubeconfig):
        yield name, kubeconfig, workdir(name)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _container_process(name: str) -> int:
    """The container's command: the child of its PID namespace's ``unshare``."""
    crec = manager.find_pod(manager.record(name), "default/app").containers[0]
    assert crec.pid is not None
    (child,) = _children(crec.pid)
    return child


def _memory_limit(pid: int) -> int:
    """The memory limit of ``pid``'s cgroup: v1's memory hierarchy if the host has one, v2's."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            for mount in Path("/proc/mounts").read_text().splitlines():
                parts = mount.split()
                if parts[2] == "cgroup" and "memory" in parts[3].split(","):
                    limit = Path(parts[1]) / path.lstrip("/") / "memory.limit_in_bytes"
                    return int(limit.read_text())
    root = cgroup.cgroup2_root()
    assert root is not None
    (v2,) = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    return int((root / v2.lstrip("/") / "memory.max").read_text())


def test_security_context_working_dir_and_memory_limit(lab: tuple[str, str, Path]) -> None:
    name, _, workdir = lab
    pid = _container_process(name)
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(.*)$", status, re.M)
    gid = re.search(r"^Gid:\s+(.*)$", status, re.M)
    assert uid is not None and uid.group(1).split() == ["1000"] * 4
    assert gid is not None and gid.group(1).split() == ["1000"] * 4
    assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
    assert _memory_limit(pid) == MEMORY


def test_kubectl_logs_and_follow(lab: tuple[str, str, Path]) -> None:
    _, kubeconfig, workdir = lab
    deadline = time.monotonic() + 20
    out = ""
    while time.monotonic() < deadline and "tick 1" not in out:
        out = kubectl_run(kubeconfig, "logs", "app", "-c", "main", timeout=30).stdout
        time.sleep(0.2)
    assert out.startswith(f"hello uid=1000 dir={workdir}\ntick 0\n"), out
    seen = int(re.findall(r"^tick (\d+)$", out, re.M)[-1])
    follow = subprocess.Popen(
        [KUBECTL, "--kubeconfig", kubeconfig, "logs", "-f", "app"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        later: list[int] = []
        end = time.monotonic() + 20
        while time.monotonic() < end and len([n for n in later if n > seen]) < 3:
            line = follow.stdout.readline()
            if not line:
                break
            if line.startswith("tick "):
                later.append(int(line.split()[1]))
        # streamed as the container writes: ticks written after the first read arrive
        assert len([n for n in later if n > seen]) >= 3, (later, seen)
        assert later == sorted(later)
    finally:
        follow.kill()
        follow.communicate()


def test_run_as_non_root_without_user_fails_lab_up(tmp_path: Path) -> None:
    name, node = unique("rt"), unique("n")
    path = tmp_path / "lab.yaml"
    path.write_text(REFUSED.format(lab=name, node=node))
    try:
        with pytest.raises(manager.LabError) as info:
            manager.up(path)
        message = str(info.value)
        assert "nothing was left behind" in message
        assert "default/rootless" in message
        assert "CreateContainerConfigError" in message and "runAsNonRoot" in message
        assert name not in manager.list_labs()
    finally:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [node])


RESTARTING = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: runs}
spec:
  replicas: 1
  selector: {matchLabels: {app: runs}}
  template:
    metadata: {labels: {app: runs}}
    spec:
      securityContext: {runAsUser: 1000}
      containers:
      - name: main
        image: busybox
        command: [sh, -c, 'echo "run uid=$(id -u) at $(date +%s%N)"; sleep 0.5; exit 3']
"""

ROOTLESS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: rootless}
spec:
  replicas: 1
  selector: {matchLabels: {app: rootless}}
  template:
    metadata: {labels: {app: rootless}}
    spec:
      securityContext: {runAsNonRoot: true}
      containers:
      - name: main
        image: busybox
        command: [ciliary, workload, pause]
"""


def first_pod(kubeconfig: str, selector: str) -> dict[str, Any] | None:
    items = pods(kubeconfig, selector)
    return items[0] if items else None


def test_kubelet_pods_runs_each_in_its_log_file(lab: tuple[str, str, Path]) -> None:
    """The kubelet role's pods run as their securityContext says too; each run of a restarted
    container has its own log file: ``kubectl logs`` the current one, ``-p`` the one before."""
    _, kubeconfig, _ = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=RESTARTING)

    def restarted() -> dict[str, Any] | None:
        pod = first_pod(kubeconfig, "app=runs")
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        return pod if statuses and statuses[0]["restartCount"] >= 1 else None

    pod = wait_for("a restart", restarted, 60)
    name = pod["metadata"]["name"]
    current = kubectl(kubeconfig, "logs", name)
    previous = kubectl(kubeconfig, "logs", name, "-p")
    assert re.fullmatch(r"run uid=1000 at \d+\n", current), current
    assert re.fullmatch(r"run uid=1000 at \d+\n", previous), previous
    assert previous != current
    logs = manager.pod_log_root(lab[0]) / f"default_{name}_{pod['metadata']['uid']}" / "main"
    assert {"0.log", "1.log"} <= {p.name for p in logs.iterdir()}
    kubectl(kubeconfig, "delete", "deployment", "runs")
    wait_for("the pod's logs to go with it", lambda: not logs.parent.exists(), 30)


def test_kubelet_refuses_root_for_run_as_non_root(lab: tuple[str, str, Path]) -> None:
    name, kubeconfig, _ = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=ROOTLESS)

    def refused() -> dict[str, Any] | None:
        pod = first_pod(kubeconfig, "app=rootless")
        reason = ((pod or {}).get("status") or {}).get("reason")
        return pod if reason == "CreateContainerConfigError" else None

    pod = wait_for("the refusal", refused, 60)
    status = pod["status"]
    assert status["phase"] == "Pending"
    (c,) = status["containerStatuses"]
    assert c["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    assert "runAsNonRoot" in c["state"]["waiting"]["message"]
    key = f"default/{pod['metadata']['name']}"
    assert key in status["message"]
    assert not [p for p in manager.record(name).pods if p.key == key]  # nothing runs
    kubectl(kubeconfig, "delete", "deployment", "rootless")


NGINX = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: nginx}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: nginx}}}}
  template:
    metadata: {{labels: {{app: nginx}}}}
    spec:
      securityContext: {{runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}}
      containers:
      - name: nginx
        image: nginx:1.22
        command: [nginx, -e, stderr, -c, {conf}]
        ports: [{{name: http, containerPort: 8080}}]
        resources: {{limits: {{memory: 128Mi, cpu: 500m}}}}
"""

NGINX_CONF = """\
daemon off;
pid {dir}/nginx.pid;
error_log stderr notice;
worker_processes 1;
events {{}}
http {{
    access_log /dev/stdout;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 8080;
        location / {{ root {dir}/www; }}
    }}
}}
"""

PAGE = "hello from nginx\n"


@pytest.fixture
def nginx_dir() -> Iterator[Path]:
    """nginx's config and files, as a volume would give them: readable (and its temp paths
    writable) by the pod's user 1000, outside root's private pytest directory."""
    path = Path(tempfile.mkdtemp(prefix="ciliary-nginx-"))
    try:
        (path / "www").mkdir()
        (path / "www" / "index.html").write_text(PAGE)
        (path / "nginx.conf").write_text(NGINX_CONF.format(dir=path))
        for p in (path, path / "www", path / "www" / "index.html", path / "nginx.conf"):
            os.chown(p, 1000, 1000)
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_nginx_runs_as_a_pod_and_serves_another_pod(
    lab: tuple[str, str, Path], nginx_dir: Path
) -> None:
    """Debian's nginx (scripts/setup.sh) from an ordinary Deployment: non-root, its own config
    file, under limits; another pod GETs its page; its access log is ``kubectl logs``."""
    name, kubeconfig, _ = lab
    kubectl(kubeconfig, "apply", "-f", "-", stdin=NGINX.format(conf=nginx_dir / "nginx.conf"))

    def running() -> dict[str, Any] | None:
        pod = first_pod(kubeconfig, "app=nginx")
        status = (pod or {}).get("status") or {}
        ready = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return pod if status.get("phase") == "Running" and ready.get("Ready") == "True" else None

    pod = wait_for("nginx running", running, 60)
    ip = pod["status"]["podIP"]

    def get() -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(
            "default/app", ["ciliary", "workload", "http-get", f"http://{ip}:8080/"], name=name
        )

    deadline = time.monotonic() + 30
    while (got := get()).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.3)
    nginx_log = kubectl(kubeconfig, "logs", pod["metadata"]["name"])
    assert got.returncode == 0, (got.stdout, got.stderr, nginx_log)
    assert "200" in got.stdout and f"{len(PAGE)}" in got.stdout, got.stdout
    rec = manager.find_pod(manager.record(name), f"default/{pod['metadata']['name']}")
    (crec,) = rec.containers
    assert crec.pid is not None
    (master,) = _children(crec.pid)
    assert Path(f"/proc/{master}/comm").read_text().strip() == "nginx"
    uid = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{master}/status").read_text(), re.M)
    assert uid is not None and uid.group(1).split() == ["1000"] * 4
    logs = kubectl(kubeconfig, "logs", pod["metadata"]["name"])  # the access log, after the GET
    assert re.search(r'"GET / HTTP/1\.[01]" 200 ', logs), logs
    kubectl(kubeconfig, "delete", "deployment", "nginx")
