"""What kubelet writes to the API server about its node and its pods, for a lab's nodes and pods.

A lab has no kubelet, but ``kubectl get nodes``, ``kubectl get pods -o wide`` and ``kubectl wait
--for=condition=Ready`` read what kubelet would have written, so the lab writes the same objects
at the same moments:

* a **Node** per lab node when the node is made (kubelet registers itself): kubelet's well-known
  labels (``kubernetes.io/hostname``, ``/os``, ``/arch``) plus the file's, ``spec.podCIDRs`` (the
  node IPAM controller's part), then its ``status``: ``Ready=True``, addresses (``InternalIP``:
  the node's IPs on the lab network, IPv4 then IPv6, ``lab.underlay``; ``Hostname``: its name)
  and ``nodeInfo``;
* a Pod's **status** once its containers run (the lab's CNI ADD is done and the processes are
  started, as kubelet's status manager reports after the sandbox and containers are up): phase
  ``Running``, ``podIP``/``podIPs``, ``hostIP``, ``startTime``, the conditions kubelet sets
  (``PodReadyToStartContainers``, ``Initialized``, ``ContainersReady``, ``Ready``,
  ``PodScheduled``) and one ``containerStatus`` per container (``ready``, ``started``,
  ``restartCount`` 0 for the lab's own pods); the kubelet role (``lab.kubeletd``) reports the
  pods it runs with :func:`pod_status`: restart counts, exit codes, ``Failed`` with a reason,
  ``Ready`` only when the containers' readiness probes say so (``lab.prober``).

These are pure builders; ``lab.manager`` sends them (``lab.kubeapi``).
"""

from __future__ import annotations

import datetime
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ciliary import __version__
from ciliary.k8s.discovery import GIT_VERSION

Obj = dict[str, Any]

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def now() -> str:
    """A Kubernetes timestamp (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timestamp(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def node(name: str, labels: dict[str, str], pod_cidrs: Sequence[str]) -> Obj:
    """The Node kubelet registers (and the node IPAM controller completes with its CIDRs)."""
    spec: Obj = {}
    if pod_cidrs:
        spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": _arch(),
                **labels,
            },
        },
        "spec": spec,
    }


def _os_image() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def node_status(name: str, addresses: Sequence[str]) -> Obj:
    """A ready node's status: the Ready condition (and the pressure conditions false), its
    ``addresses`` (its InternalIPs, kubelet's order: IPv4 first) and Hostname, and what it runs
    (the lab's runtime is ciliary's, on this machine's kernel)."""
    stamp = now()

    def condition(kind: str, status: str, reason: str, message: str) -> Obj:
        return {
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp,
        }  # fmt: skip

    return {
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                      "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                      "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID",
                      "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            *({"type": "InternalIP", "address": a} for a in addresses),
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "kubeletVersion": GIT_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _arch(),
            "kernelVersion": platform.release(),
            "osImage": _os_image(),
            "containerRuntimeVersion": f"ciliary-lab://{__version__}",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    }  # fmt: skip


def pod_running(
    *,
    containers: Sequence[tuple[str, str | None]],
    container_id: str,
    pod_ips: Sequence[str],
    host_ip: str | None,
    started_at: float,
) -> Obj:
    """The status kubelet reports for a pod whose containers all run (``containers``: each
    container's name and image). ``pod_ips`` without prefix length, IPv4 first."""
    start = timestamp(started_at)
    ready_at = now()
    conditions = [
        {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": at}
        for kind, at in (
            ("PodReadyToStartContainers", start),
            ("Initialized", start),
            ("Ready", ready_at),
            ("ContainersReady", ready_at),
            ("PodScheduled", start),
        )
    ]
    status: Obj = {
        "phase": "Running",
        "conditions": conditions,
        "startTime": start,
        "containerStatuses": [
            {
                "name": name,
                "image": image or "",
                "imageID": "",
                "containerID": f"ciliary-lab://{container_id}-{name}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": start}},
            }
            for name, image in containers
        ],
        "qosClass": "BestEffort",
    }
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    return status


@dataclass(frozen=True)
class ContainerState:
    """One container of a pod the kubelet role runs, as its status reports it: running, or
    ``exit_code`` (None: unknown) once ended; ``waiting`` a reason it is not started yet."""

    name: str
    image: str | None
    running: bool
    restarts: int = 0
    exit_code: int | None = None
    waiting: tuple[str, str] | None = None  # (reason, message)
    ready: bool = True  # its probes' verdict (lab.prober): readiness, startup
    started: bool = True  # passed its startup probe (or has none)


def pod_status(
    *,
    phase: str,
    containers: Sequence[ContainerState],
    container_id: str,
    pod_ips: Sequence[str],
    host_ip: str | None,
    started_at: str,
    reason: str | None = None,
    message: str | None = None,
) -> Obj:
    """The status kubelet reports for a pod in any phase: ``Ready`` when every container runs
    and is ready by its probes, restart counts, exit codes of ended containers (kubelet's
    ``terminated`` state) and reasons of containers that cannot start (``waiting``)."""
    ready = phase == "Running" and all(c.running and c.ready for c in containers)
    stamp = now()

    def condition(kind: str, ok: bool) -> Obj:
        return {
            "type": kind, "status": "True" if ok else "False",
            "lastProbeTime": None, "lastTransitionTime": stamp,
        }  # fmt: skip

    def state(c: ContainerState) -> Obj:
        if c.running:
            return {"running": {"startedAt": started_at}}
        if c.waiting is not None:
            return {"waiting": {"reason": c.waiting[0], "message": c.waiting[1]}}
        code = c.exit_code if c.exit_code is not None else 1
        return {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "finishedAt": stamp,
            }
        }

    status: Obj = {
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", bool(pod_ips)),
            condition("Initialized", True),
            condition("Ready", ready),
            condition("ContainersReady", ready),
            condition("PodScheduled", True),
        ],
        "startTime": started_at,
        "containerStatuses": [
            {
                "name": c.name,
                "image": c.image or "",
                "imageID": "",
                "containerID": f"ciliary-lab://{container_id}-{c.name}",
                "ready": c.running and c.ready and phase == "Running",
                "started": c.running and c.started,
                "restartCount": c.restarts,
                "state": state(c),
            }
            for c in containers
        ],
        "qosClass": "BestEffort",
    }
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    return status
