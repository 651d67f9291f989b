"""``ciliary lab``: a cluster on this machine, made of network namespaces, agents and pods.

The lab plays the parts Kubernetes plays for Cilium: it creates node namespaces joined by the
lab network (``lab.underlay``: each node's ``eth0`` on a bridge in ``cilu-<lab>``, the nodes'
InternalIPs) and starts one agent in each (the DaemonSet), runs ciliary-operator with the file's
cluster pool (each agent's CiliumNode gets its pod CIDRs from it, cluster-pool v2), creates pod
namespaces, asks the node's agent to plug them in and starts the pods' commands in them (kubelet
+ runtime).

Safety and hygiene contracts:
  * everything is validated before anything is created; a failure half-way rolls back what was
    made, so a failed ``lab up`` leaves nothing;
  * the lab record (``/run/ciliary/lab/<name>/state.json``) is written *before* each resource is
    created, so ``lab down`` after any crash still finds every netns, process, cgroup, pin and
    state directory to remove; it also sweeps by the lab's name prefixes;
  * only namespaces created here are addressed; no route or address is added to the root netns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ciliary.apiserver.etcdserver import EtcdError
from ciliary.client.agent import AgentAPIError, AgentClient, AgentUnavailableError
from ciliary.core import atomicfile as atomic
from ciliary.core.defaults import ENVOY_PIDFILE, ENVOY_STATE
from ciliary.core.maglev import new_hash_seed
from ciliary.core.yamldoc import YAMLDocumentError, load_documents
from ciliary.datapath.linux import bpffs, cgroup, cgrouplimits, netns
from ciliary.datapath.linux.errors import LinkError
from ciliary.k8s import core, podlogs
from ciliary.lab import (
    certs,
    controlplane,
    dnsconfig,
    kubeapi,
    kubelet,
    nodenetwork,
    podsandbox,
    process,
    schema,
    underlay,
)
from ciliary.lab.cniruntime import CNIRuntime, CNIRuntimeError
from ciliary.lab.state import (
    ContainerRecord,
    ControlPlaneRecord,
    ControlPlaneView,
    ExternalRecord,
    ExternalView,
    HubbleRecord,
    ImageRecord,
    LabRecord,
    LabView,
    NodeRecord,
    NodeView,
    PodRecord,
    PodTableView,
    PodView,
    ProcessRecord,
    ProcessView,
    RelayRecord,
    RelayView,
    SupervisorRecord,
)
from ciliary.processes import stop_recorded

if TYPE_CHECKING:  # the kubelet role (lab.kubeletd) imports this module: no policy engine, no rich
    from rich.progress import Progress, TaskID

    from ciliary.policy.api import Policy

RUN_ROOT = Path(os.environ.get("CILIARY_RUN_DIR", "/run/ciliary"))
LAB_ROOT = RUN_ROOT / "lab"
PIN_ROOT = Path("/sys/fs/bpf/ciliary")
CGROUP_PARENT = "ciliary"
AGENT_READY_TIMEOUT = 60.0
RELAY_READY_TIMEOUT = 20.0
CNI_PLUGIN_DIRS = [Path("/usr/lib/cni"), Path("/opt/cni/bin")]
NETWORK_NAME = "ciliary"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
"""What kube-apiserver's system namespaces controller creates at start; the lab's API server
leaves it to the lab."""


class LabError(Exception):
    """A lab operation failed; ``str()`` is one line for the user. ``problems`` holds every
    problem of a bad input (one line each naming file, document and field; the first is
    ``str()``), so the CLI shows them all at once."""

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]


# ---- names -------------------------------------------------------------------------------------


def node_netns(lab: str, node: str) -> str:
    return f"ciln-{lab}-{node}"


def pod_netns(lab: str, namespace: str, pod: str) -> str:
    return f"cilp-{lab}-{namespace}-{pod}"


def _lab_dir(lab: str) -> Path:
    return LAB_ROOT / lab


def _state_file(lab: str) -> Path:
    return _lab_dir(lab) / "state.json"


def _cni_conf_dir(lab: str, node: str) -> Path:
    return _lab_dir(lab) / "cni" / node / "net.d"


def _write_conflist(lab: str, node: str) -> Path:
    """The node's CNI configuration, as a runtime finds it in its conf dir."""
    conf_dir = _cni_conf_dir(lab, node)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "10-ciliary.conflist"
    conflist = {
        "cniVersion": "1.1.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": NETWORK_NAME,
        "plugins": [{"type": "ciliary-cni", "node": node, "capabilities": {"ips": True}}],
    }
    path.write_text(json.dumps(conflist, indent=1))
    return path


def _cni(rec: LabRecord, nrec: NodeRecord) -> CNIRuntime:
    # Plugins run inside the node's netns (as kubelet's runtime does on its node), so whatever a
    # chained plugin configures (iptables, ifb, ...) lands there, never in the root namespace.
    return CNIRuntime(
        _cni_conf_dir(rec.name, nrec.name),
        [process.venv_bin(), *CNI_PLUGIN_DIRS],
        netns_of_runtime=str(netns.path_of(nrec.netns)),
    )


def _k8s_object(
    kind: str, name: str, namespace: str | None = None, **body: object
) -> dict[str, object]:
    meta: dict[str, object] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    labels = body.pop("labels", None)
    annotations = body.pop("annotations", None)
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, **body}


# The agent_* fields of a node are the supervisor's (``lab.supervisor``): it starts every agent
# and writes them; every other writer keeps the values on disk. Writes of the record take
# ``state.lock`` so the two never lose each other's updates.
SUPERVISED_FIELDS = (
    "agent_pid", "agent_start_time", "agent_log_offset",
    "agent_restarts", "agent_last_exit", "agent_last_exit_at",
)  # fmt: skip
SUPERVISED_CONTROL_PLANE_FIELDS = (
    "apiserver_restarts", "apiserver_last_exit", "etcd_restarts", "etcd_last_exit",
)  # fmt: skip
SUPERVISED_PROCESS_FIELDS = ("pid", "start_time", "restarts", "last_exit")
CONTROLLER_MANAGER, OPERATOR, KUBELET = "controller-manager", "operator", "kubelet"
DNS_PRE_CACHE = "dns-pre-cache.json"  # the agents' --tofqdns-pre-cache, in the lab's directory


@contextlib.contextmanager
def _record_lock(lab: str, *, create: bool = True) -> Iterator[None]:
    """The record's lock; without ``create`` a lab that is gone (its directory removed) is a
    LabError instead of a directory made again."""
    path = _lab_dir(lab) / "state.lock"
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        raise LabError(f"lab {lab!r} is gone (no {path.parent})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _refresh_supervised(rec: LabRecord) -> None:
    """Take the supervisor's fields of every node (and the control plane's restart counts) from
    the record on disk into ``rec``."""
    with contextlib.suppress(LabError):
        disk = _load(rec.name)
        if disk.control_plane is not None and rec.control_plane is not None:
            for field in SUPERVISED_CONTROL_PLANE_FIELDS:
                setattr(rec.control_plane, field, getattr(disk.control_plane, field))
        on_disk = {n.name: n for n in disk.nodes}
        for nrec in rec.nodes:
            if nrec.name in on_disk:
                for field in SUPERVISED_FIELDS:
                    setattr(nrec, field, getattr(on_disk[nrec.name], field))
        for pname, prec in rec.processes.items():
            if pname in disk.processes:
                for field in SUPERVISED_PROCESS_FIELDS:
                    setattr(prec, field, getattr(disk.processes[pname], field))
        # the kubelet role's pods are its own (lab.kubeletd): as on disk
        rec.pods = [p for p in rec.pods if not p.kubelet] + [p for p in disk.pods if p.kubelet]


def save_kubelet_pods(rec: LabRecord) -> None:
    """The kubelet role's write: its pods (``kubelet``) from ``rec``, everything else as on
    disk, under the record's lock."""
    with _record_lock(rec.name, create=False):
        disk = _load(rec.name)
        disk.pods = [p for p in disk.pods if not p.kubelet] + [p for p in rec.pods if p.kubelet]
        atomic.write_json(_state_file(rec.name), disk.model_dump(mode="json"))


def save_kubelet_pod(lab: str, prec: PodRecord) -> None:
    """The kubelet role's write of ONE pod (``lab.kubeletd`` syncs pods concurrently): under the
    record's lock, the record on disk with ``prec`` in place of the kubelet pod of its key (or
    added), every other pod as on disk, so concurrent syncs of other pods lose nothing."""
    with _record_lock(lab, create=False):
        disk = _load(lab)
        others = [p for p in disk.pods if not (p.kubelet and p.key == prec.key)]
        disk.pods = [*others, prec]
        atomic.write_json(_state_file(lab), disk.model_dump(mode="json"))


def remove_kubelet_pod(rec: LabRecord, prec: PodRecord) -> None:
    """Tear a kubelet pod down (as :func:`remove_pod`) and drop only its entry from the record
    on disk, under the lock (``rec`` is the caller's snapshot, which other pods' concurrent
    syncs have made stale)."""
    _remove_pod(rec, prec)
    with _record_lock(rec.name, create=False):
        disk = _load(rec.name)
        disk.pods = [p for p in disk.pods if not (p.kubelet and p.key == prec.key)]
        atomic.write_json(_state_file(rec.name), disk.model_dump(mode="json"))


def update_process(lab: str, name: str, change: Callable[[ProcessRecord], None]) -> None:
    """Read-modify-write one cluster process of the record under the lock (the supervisor's)."""
    with _record_lock(lab, create=False):
        rec = _load(lab)
        if name in rec.processes:
            change(rec.processes[name])
            atomic.write_json(_state_file(lab), rec.model_dump(mode="json"))


def _save(rec: LabRecord, *, agent_fields: bool = False) -> None:
    """Write the record; the supervisor's fields of ``rec`` are refreshed from disk first unless
    ``agent_fields`` (the writer started the agent itself)."""
    with _record_lock(rec.name):
        if not agent_fields:
            _refresh_supervised(rec)
        atomic.write_json(_state_file(rec.name), rec.model_dump(mode="json"))


def update_control_plane(lab: str, change: Callable[[ControlPlaneRecord], None]) -> None:
    """Read-modify-write the control plane's part of the record under the lock (the
    supervisor's restart counts)."""
    with _record_lock(lab, create=False):
        rec = _load(lab)
        if rec.control_plane is not None:
            change(rec.control_plane)
            atomic.write_json(_state_file(lab), rec.model_dump(mode="json"))


def update_node(lab: str, node: str, change: Callable[[NodeRecord], None]) -> None:
    """Read-modify-write one node of the record under the lock (the supervisor's writes)."""
    with _record_lock(lab, create=False):
        rec = _load(lab)
        change(_node(rec, node))
        atomic.write_json(_state_file(lab), rec.model_dump(mode="json"))


def _load(lab: str) -> LabRecord:
    path = _state_file(lab)
    try:
        return LabRecord.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise LabError(f"lab {lab!r} is not up (no {path})") from None
    except ValueError as err:
        raise LabError(f"lab record {path} is unreadable: {err}") from err


def list_labs() -> list[str]:
    if not LAB_ROOT.is_dir():
        return []
    return sorted(p.name for p in LAB_ROOT.iterdir() if (p / "state.json").exists())


def _resolve(name: str | None) -> str:
    if name is not None:
        return name
    labs = list_labs()
    if not labs:
        raise LabError("no lab is up (start one with `ciliary lab up`)")
    if len(labs) > 1:
        raise LabError(f"several labs are up ({', '.join(labs)}): choose one with --name")
    return labs[0]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("this command must run as root (try sudo)")


def _cgroup_rel(lab: str, leaf: str) -> str:
    return f"{CGROUP_PARENT}/{lab}/{leaf}"


def node_cgroup_rel(lab: str, node: str) -> str:
    """The node's own cgroup, parent of its pods' (containers and ``lab exec``): what a node's
    root cgroup is to Cilium, where its agent attaches socket-LB (``--cgroup-root``). Only pod
    processes are in it: the node's agent and the lab's processes have cgroups of their own."""
    return _cgroup_rel(lab, f"node-{node}")


@contextlib.contextmanager
def _step(progress: Progress | None, text: str) -> Iterator[TaskID | None]:
    task = progress.add_task(text, total=1) if progress is not None else None
    yield task
    if progress is not None and task is not None:
        progress.update(task, completed=1)


# ---- up ----------------------------------------------------------------------------------------


def up(path: Path | None, *, name: str | None = None, progress: Progress | None = None) -> LabView:
    """Create the lab described by ``path`` (the embedded default scenario when None)."""
    _require_root()
    try:
        lab_file = schema.load_default() if path is None else schema.load_lab_file(path)
    except schema.LabFileError as err:
        raise _file_error(err, path) from err
    lab_name = name or lab_file.lab.metadata.name
    _preflight(lab_name, lab_file)
    policies = _policies_of(lab_file)
    network, node_ips = underlay.plan(lab_name, lab_file.lab.spec)
    dns_proxy = lab_file.lab.spec.dns_proxy
    crash_loop = lab_file.lab.spec.kubelet.crash_loop_back_off
    rec = LabRecord(
        name=lab_name,
        file=str(path) if path else None,
        created_at=time.time(),
        monitor_aggregation=lab_file.lab.spec.monitor_aggregation,
        socket_lb=lab_file.lab.spec.socket_lb.enabled,
        maglev_hash_seed=new_hash_seed(),  # one per cluster, every agent's
        dns_pre_cache=[
            {
                "fqdn": a.fqdn,
                "ips": [str(ip) for ip in a.ips],
                "ttl": a.ttl,
                "lookup-time": int(time.time()),
            }
            for a in lab_file.lab.spec.dns_proxy.pre_cache
        ],
        dns_min_ttl=lab_file.lab.spec.dns_proxy.min_ttl,
        dns_idle_connection_grace_period_s=dns_proxy.idle_connection_grace_period,
        dns_max_deferred_connection_deletes=dns_proxy.max_deferred_connection_deletes,
        ct_gc_interval_s=lab_file.lab.spec.conntrack_gc_interval,
        max_restart_period_s=crash_loop.max_container_restart_period,
        ipam_mode=lab_file.lab.spec.ipam.mode,
        hubble=_hubble_record(lab_file.lab.spec.hubble),
        images={
            i.image: ImageRecord(command=i.command, args=i.args) for i in lab_file.lab.spec.images
        },
        network=network,  # recorded before it is made, as every resource
    )
    _save(rec)
    try:
        # the supervisor imports while etcd and the API server start: it spawns the first agent
        # as soon as the node is recorded (it tends the control plane once it is recorded)
        _start_supervisor(rec)
        with _step(progress, "control plane: etcd + API server"):
            _start_control_plane(rec)
        _publish_cluster(rec, lab_file)
        dns = _cluster_dns_pod(rec, lab_file)
        # the kubelet role starts while the nodes are made, it takes each node as it registers;
        # the operator too: each agent waits for the pod CIDRs it allocates (cluster-pool v2)
        _start_cluster_processes(
            rec, [KUBELET, OPERATOR], wait=False, operator_flags=_cluster_pool_flags(lab_file)
        )
        cidrs = schema.node_cidrs(lab_file)
        with _step(progress, f"lab network: {network.netns}, {network.bridge}, the API on it"):
            underlay.create(network)
            _add_network_listeners(rec)
        externals = lab_file.lab.spec.externals
        if externals:  # the world is there before the cluster
            with _step(progress, f"world: {len(externals)} hosts on the lab network"):
                _create_externals(rec, lab_file.lab.spec)
        made: list[NodeRecord] = []
        for node in lab_file.lab.spec.nodes:
            with _step(progress, f"node {node.name}: netns + agent started"):
                made.append(
                    _create_node(
                        rec, node.name, cidrs[node.name], dict(node.labels), node_ips[node.name]
                    )
                )
        for nrec in made:
            with _step(progress, f"node {nrec.name}: agent ready, node registered"):
                _finish_node(rec, nrec, cidrs[nrec.name])
        relay = lab_file.lab.spec.hubble.relay
        relay_address: str | None = None
        if rec.hubble.enabled and relay.enabled:  # starts while the cluster DNS and pods do
            with _step(progress, "hubble relay: started"):
                relay_address = _start_relay(rec, relay.listen_address)
        if externals and network.routing_mode == "native":
            with _step(progress, "world: routes to the pod CIDRs via the nodes"):
                underlay.route_world(network, rec.externals, rec.nodes)
        # the controller manager once the nodes are there (started with them, its start-up slowed
        # theirs more than it saved); its DNS records are on disk before the DNS pod starts
        _start_cluster_processes(
            rec,
            [CONTROLLER_MANAGER],
            wait=False,
            dns_records=dns_records_file(rec.name) if dns is not None else None,
        )
        text = Path(path).read_text() if path is not None else schema.DEFAULT_SCENARIO
        docs = _manifests(text, lab_file)
        if dns is not None:
            with _step(progress, "cluster DNS: kube-dns, its records, the DNS pod"):
                _await_dns_records(rec)  # the server reads them as it starts
            docs += [controlplane.kube_dns_service(), _pod_doc(dns)]
        with _step(progress, "kubectl apply: the file's manifests"):
            _apply_in_order(rec, docs, policies)
        keys = [p.key for p in lab_file.pods] + ([dns.key] if dns is not None else [])
        with _step(progress, f"{len(keys)} pods: running and ready"):
            _await_pods(rec, keys)
        if relay_address is not None:
            with _step(progress, "hubble relay: listening"):
                _await_relay(rec, relay_address)
    except BaseException as err:
        _teardown(rec)
        if isinstance(err, LabError | LinkError | AgentAPIError | AgentUnavailableError):
            problems = getattr(err, "problems", None) or [str(err)]
            raise LabError(
                f"lab up failed, nothing was left behind: {err}",
                [f"lab up failed, nothing was left behind: {problems[0]}", *problems[1:]],
            ) from err
        raise
    return status(lab_name)


def _start_control_plane(rec: LabRecord) -> None:
    """etcd and the API server of the lab, data and certificates under the lab's directory (the
    lab's CA is Hubble's too), recorded before the nodes: the cluster exists first, as with
    kind. ``lab down`` stops both by pid and removes their data with the directory."""
    addresses = underlay.api_addresses(rec.network) if rec.network is not None else []
    try:
        cp = controlplane.start_control_plane(
            _lab_dir(rec.name), cluster=rec.name, addresses=addresses
        )
    except (controlplane.ControlPlaneError, EtcdError, OSError) as err:
        raise LabError(f"control plane: {err}") from err
    rec.control_plane = ControlPlaneRecord(url=cp.url, kubeconfig=str(cp.kubeconfig))
    _save(rec)
    api = _api(rec.name)
    # kube-apiserver's system namespaces controller makes these at start, and its
    # kubernetes-service controller the kubernetes Service at the API's address on the network
    system = [_k8s_object("Namespace", n) for n in SYSTEM_NAMESPACES]
    if addresses:
        system += controlplane.kubernetes_service(addresses[0])
    _api_call(lambda: [api.create(doc, exist_ok=True) for doc in system])


def control_plane(lab: str) -> controlplane.ControlPlane | None:
    """The lab's etcd + API server as last (re)started (None for a lab without one)."""
    return controlplane.load(_lab_dir(lab))


def _api(lab: str) -> kubeapi.KubeAPI:
    cp = control_plane(lab)
    if cp is None:
        raise LabError(f"lab {lab!r} has no control plane (no {_lab_dir(lab)}/controlplane.json)")
    return kubeapi.KubeAPI(cp)


def _api_call(fn: Callable[[], object]) -> None:
    try:
        fn()
    except kubeapi.KubeAPIError as err:
        raise LabError(f"API server: {err}", [f"API server: {p}" for p in err.problems]) from err


def _manifests(text: str, lab_file: schema.LabFile) -> list[kubeapi.Obj]:
    """Every document of the file but the Lab, pods with the node the lab scheduled them to."""
    try:
        raw = [doc for _, doc in load_documents(text, lab_file.filename) if isinstance(doc, dict)]
    except YAMLDocumentError as err:
        raise LabError(str(err)) from err
    return kubeapi.manifests(raw, {p.key: p.node_name for p in lab_file.pods})


def _apply_manifests(rec: LabRecord, docs: list[kubeapi.Obj]) -> None:
    """``docs`` through the API as ``kubectl apply -f`` would (``lab.kubeapi``). Something the
    API refuses (a 422 with its field path, ...) fails the caller, which rolls back."""
    cp = control_plane(rec.name)
    if cp is None:
        raise LabError(f"lab {rec.name!r} has no control plane")
    try:
        kubeapi.apply(cp, docs)
    except kubeapi.KubeAPIError as err:
        raise LabError(
            f"kubectl apply: {'; '.join(err.problems)}",
            [f"kubectl apply: {p}" for p in err.problems],
        ) from err


WORKLOAD_KINDS = frozenset(
    {"Pod", "Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job", "CronJob"}
)
"""Kinds whose objects become running pods: applied after everything else of a file, once every
agent enforces the file's policies."""
POD_READY_TIMEOUT = 120.0
POLICY_SYNC_TIMEOUT = 30.0
POLL = 0.05


def _apply_in_order(rec: LabRecord, docs: list[kubeapi.Obj], policies: list[Policy]) -> None:
    """``docs`` through the API, so that no pod runs before its policy is enforced: with
    policies, first everything but the kinds that make pods (namespaces, policies, services…),
    then, once every agent of the lab has the policies, the pods and workloads."""
    if not policies:
        _apply_manifests(rec, docs)
        return
    _apply_manifests(rec, [d for d in docs if d.get("kind") not in WORKLOAD_KINDS])
    _await_policies(rec, policies)
    _apply_manifests(rec, [d for d in docs if d.get("kind") in WORKLOAD_KINDS])


def _await_policies(rec: LabRecord, policies: list[Policy]) -> None:
    """Wait until every running agent has each of ``policies`` (key and rule count) in its
    repository, as its policy list reports it. An agent that is down (held down, or between
    restarts) is not waited for: it plugs in no pod until it runs again, and it serves only once
    its informers have synced the API's policies."""
    wanted = {(pol.key, len(pol.rules)) for pol in policies}
    deadline = time.monotonic() + POLICY_SYNC_TIMEOUT
    for nrec in _load(rec.name).nodes:
        while process.alive(nrec.agent_pid, nrec.agent_start_time):
            have: set[tuple[str, int]] = set()
            with (
                contextlib.suppress(AgentUnavailableError, AgentAPIError),
                AgentClient(Path(nrec.socket), timeout=5) as cl,
            ):
                have = {(p.key, p.rules) for p in cl.policy_list().policies}
            if wanted <= have:
                break
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(k for k, _ in wanted - have))
                raise LabError(
                    f"node {nrec.name}: the agent does not enforce {missing} after"
                    f" {POLICY_SYNC_TIMEOUT:.0f}s (see {Path(nrec.state_dir) / 'agent.log'})"
                )
            time.sleep(POLL)


STARTING_REASONS = ("ContainerCreating", "PodInitializing")


def _pod_problem(key: str, pod: kubeapi.Obj) -> str | None:
    """Why the kubelet role cannot run ``pod``, from its status (the reason and message it
    wrote), or None while it is starting or running."""
    status = pod.get("status") or {}
    reason, message = None, None
    if status.get("phase") == "Failed":
        reason, message = status.get("reason") or "Failed", status.get("message") or ""
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if reason is None and waiting and waiting.get("reason") not in STARTING_REASONS:
            reason = waiting.get("reason")
            message = waiting.get("message") or status.get("message") or ""
    if reason is None:
        return None
    text = str(message or "")
    text = text if text.startswith(f"pod {key}") else f"pod {key}: {text}"
    return f"{text} ({reason})"


def _pod_ready(pod: kubeapi.Obj) -> bool:
    """Running and Ready, or done for good (``Succeeded``: every container exited 0)."""
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return True
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _await_pods(rec: LabRecord, keys: Sequence[str]) -> None:
    """Wait until each pod ``keys`` names is Running and Ready in the API (the kubelet role
    started it and wrote its status); a pod the kubelet role cannot run fails with the reason
    of its status, naming the pod."""
    api = _api(rec.name)
    pending = set(keys)
    deadline = time.monotonic() + POD_READY_TIMEOUT
    while pending:
        try:
            items = api.request("GET", "/api/v1/pods").get("items") or []
        except kubeapi.KubeAPIError as err:
            raise LabError(f"API server: {err}") from err
        pods = {f"{o['metadata'].get('namespace')}/{o['metadata']['name']}": o for o in items}
        for key in sorted(pending):
            pod = pods.get(key)
            if pod is None:
                raise LabError(f"pod {key}: deleted from the API server while it was starting")
            problem = _pod_problem(key, pod)
            if problem is not None:
                raise LabError(problem)
            if _pod_ready(pod):
                pending.discard(key)
        if not pending:
            return
        if time.monotonic() > deadline:
            kubelet_log = _lab_dir(rec.name) / f"{KUBELET}.log"
            raise LabError(
                f"pods not running and ready after {POD_READY_TIMEOUT:.0f}s:"
                f" {', '.join(sorted(pending))} (kubelet role: {_tail(kubelet_log)})"
            )
        if not _supervised(rec):
            log = supervisor_dir(rec.name) / "supervisor.log"
            raise LabError(f"the lab's supervisor exited: {_tail(log)}")
        time.sleep(POLL)


def _await_pods_gone(rec: LabRecord, keys: set[str]) -> None:
    """Wait until the kubelet role has torn down the pods ``keys`` names (deleted from the API);
    what is still there after the timeout is removed here."""
    deadline = time.monotonic() + POD_READY_TIMEOUT / 4
    while True:
        left = [p for p in _load(rec.name).pods if p.key in keys]
        if not left:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    disk = _load(rec.name)
    for prec in [p for p in disk.pods if p.key in keys]:
        _remove_pod(disk, prec)
    save_kubelet_pods(disk)


def apply(path: Path, *, name: str | None = None, progress: Progress | None = None) -> LabView:
    """Add the Namespace and Pod documents of ``path`` to a running lab (all or nothing)."""
    _require_root()
    rec = _load(_resolve(name))
    try:
        base = schema.load_lab_file(Path(rec.file)) if rec.file else schema.load_default()
        added = schema.parse_documents(
            Path(path).read_text(), str(path), require_lab=False, base=_effective_base(base, rec)
        )
    except OSError as err:
        raise LabError(f"{path}: {err.strerror}") from err
    except schema.LabFileError as err:
        raise _file_error(err, path) from err
    policies = _policies_of(added)
    undo = _ApplyUndo.of(rec)
    api_undo: kubeapi.Snapshot | None = None
    try:
        docs = _manifests(Path(path).read_text(), added)
        try:
            api_undo = kubeapi.Snapshot(_api(rec.name), docs)
        except kubeapi.KubeAPIError as err:
            raise LabError(f"API server: {err}") from err
        for ns in added.namespaces:
            # as kube-apiserver does for every namespace (and `lab up` here): its name as a label
            labels = {**ns.metadata.labels, "kubernetes.io/metadata.name": ns.metadata.name}
            rec.namespaces[ns.metadata.name] = labels
        _save(rec)
        with _step(progress, "kubectl apply"):
            _apply_in_order(rec, docs, policies)
        with _step(progress, f"{len(added.pods)} pods: running and ready"):
            _await_pods(rec, [p.key for p in added.pods])
    except BaseException as err:
        if api_undo is not None:  # the kubelet role stops the pods deleted here
            with contextlib.suppress(kubeapi.KubeAPIError):
                api_undo.restore()
        undo.rollback(rec, {p.key for p in added.pods})
        if isinstance(err, LabError | LinkError | AgentAPIError | AgentUnavailableError):
            raise LabError(f"lab apply failed, nothing was added: {err}") from err
        raise
    return status(rec.name)


class _ApplyUndo:
    """What ``lab apply`` must give back of the record when it fails, once its objects (pods,
    namespaces, policies: restored to their previous version when it replaced one) are back as
    they were in the API (``kubeapi.Snapshot``): every pod of the record it made (the kubelet
    role tears them down; waited for) and the namespaces it added."""

    def __init__(self, pods: set[str], namespaces: dict[str, dict[str, str]]) -> None:
        self.pods, self.namespaces = pods, namespaces

    @classmethod
    def of(cls, rec: LabRecord) -> _ApplyUndo:
        return cls({p.key for p in rec.pods}, {k: dict(v) for k, v in rec.namespaces.items()})

    def rollback(self, rec: LabRecord, pods: set[str]) -> None:
        """Give back what the apply made; ``pods`` are the keys of the file's pods."""
        _await_pods_gone(rec, pods - self.pods)
        rec.namespaces = self.namespaces
        _save(rec)


def _publish_cluster(rec: LabRecord, lab_file: schema.LabFile) -> None:
    """Record the lab's namespaces (the API server gets them with the file's manifests) and
    put the IP pools in the API server before any agent starts."""
    for ns_name in ("default", "kube-system"):
        rec.namespaces.setdefault(ns_name, {})
    for ns in lab_file.namespaces:
        rec.namespaces[ns.metadata.name] = dict(ns.metadata.labels)
    for ns_name, labels in rec.namespaces.items():
        # as Kubernetes (>= 1.21) does, every namespace carries its own name as a label, so
        # policies can select namespaces by name
        labels.setdefault("kubernetes.io/metadata.name", ns_name)
    if lab_file.ipam_mode == "pools":
        # Calico's pools are API objects that the agents' IPAM informers read: in the API server
        # before any agent starts (the file's manifests, applied later, hold them again: no-op)
        pools = [pool.to_calico_json() for pool in lab_file.ip_pools]
        _apply_manifests(rec, [*pools, lab_file.ipam_config.to_calico_json()])
    _save(rec)


def _file_error(err: schema.LabFileError, path: Path | None) -> LabError:
    """Every problem of a bad lab file at once: the schema's, and those of its policy documents
    (which are checked only once the rest is valid otherwise), in document order."""
    problems = list(err.problems)
    if path is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            problems += _policy_problems(Path(path).read_text(), str(path), problems)
    problems.sort(key=_document_number)
    return LabError(problems[0], problems)


def _document_number(problem: str) -> int:
    match = re.search(r": document (\d+)[ :]", problem)
    return int(match.group(1)) if match else 0


def _policy_problems(text: str, filename: str, known: list[str]) -> list[str]:
    """The policy parser's problems with the file's policy documents that have none yet."""
    try:
        docs = load_documents(text, filename)
    except YAMLDocumentError:
        return []
    flagged = {_document_number(p) for p in known}
    policy_docs = [
        (index, doc)
        for index, doc in docs
        if isinstance(doc, dict)
        and doc.get("kind") in schema.DEFERRED_KINDS
        and index not in flagged
    ]
    from ciliary.policy.api import PolicyError, parse_policy_documents  # noqa: PLC0415

    try:
        if policy_docs:
            parse_policy_documents(policy_docs, filename)
    except PolicyError as perr:
        return list(perr.problems)
    return []


def _policies_of(lab_file: schema.LabFile) -> list[Policy]:
    """The lab file's CiliumNetworkPolicy / NetworkPolicy documents, validated all or nothing."""
    from ciliary.policy.api import PolicyError, parse_policy_documents  # noqa: PLC0415

    docs = [(d.index, d.body) for d in lab_file.other_documents]
    try:
        return parse_policy_documents(docs, lab_file.filename) if docs else []
    except PolicyError as err:
        raise LabError(str(err), err.problems) from err


def _effective_base(base: schema.LabFile, rec: LabRecord) -> schema.LabFile:
    """The lab as it runs now (its file plus pods applied since), for duplicate/IP checks."""
    return schema.with_running_pods(
        base, [(p.namespace, p.name, p.ipv4, p.ipv6) for p in rec.pods], namespaces=rec.namespaces
    )


def _preflight(lab_name: str, lab_file: schema.LabFile) -> None:
    if _state_file(lab_name).exists():
        raise LabError(
            f"lab {lab_name!r} is already up (`ciliary lab down --name {lab_name}` first)"
        )
    try:
        bpffs.ensure_mounted()
    except OSError as err:
        raise LabError(str(err)) from err
    if cgroup.cgroup2_root() is None:
        raise LabError("no cgroup2 hierarchy is mounted")
    taken = [underlay.netns_name(lab_name)] + [
        underlay.external_netns(lab_name, e.name) for e in lab_file.lab.spec.externals
    ]
    for ns_name in taken:
        if netns.exists(ns_name):
            raise LabError(f"network namespace {ns_name} already exists")
    for node in lab_file.lab.spec.nodes:
        if netns.exists(node_netns(lab_name, node.name)):
            raise LabError(f"network namespace {node_netns(lab_name, node.name)} already exists")
        sock = RUN_ROOT / node.name / "agent.sock"
        if (RUN_ROOT / node.name).exists():
            raise LabError(
                f"node name {node.name!r} is in use on this machine ({RUN_ROOT / node.name} exists;"
                f" another lab? `ciliary lab down --all` removes every lab) [{sock}]"
            )
    for pod in lab_file.pods:
        if netns.exists(pod_netns(lab_name, pod.namespace, pod.name)):
            raise LabError(
                f"network namespace {pod_netns(lab_name, pod.namespace, pod.name)} exists"
            )


def _cluster_pool_flags(lab_file: schema.LabFile) -> list[str]:
    """ciliary-operator's cluster pool (upstream's flags) from the lab file's IPAM options; none
    in ``pools`` mode (the agents take Calico blocks, the operator allocates no node CIDR)."""
    ipam = lab_file.lab.spec.ipam
    if ipam.mode != "cluster-pool":
        return []
    flags = []
    if ipam.cluster_pool_ipv4_pod_cidr_list:
        flags += [
            "--cluster-pool-ipv4-cidr", ",".join(map(str, ipam.cluster_pool_ipv4_pod_cidr_list)),
            "--cluster-pool-ipv4-mask-size", str(ipam.cluster_pool_ipv4_mask_size),
        ]  # fmt: skip
    if ipam.cluster_pool_ipv6_pod_cidr_list:
        flags += [
            "--cluster-pool-ipv6-cidr", ",".join(map(str, ipam.cluster_pool_ipv6_pod_cidr_list)),
            "--cluster-pool-ipv6-mask-size", str(ipam.cluster_pool_ipv6_mask_size),
        ]  # fmt: skip
    return flags


CILIUM_NODES = "/apis/cilium.io/v2/ciliumnodes"


def _allocated_cidrs(rec: LabRecord, nrec: NodeRecord, expected: schema.NodeCIDRs) -> None:
    """Record the pod CIDRs the operator allocated to the node (its CiliumNode's
    ``spec.ipam.podCIDRs``, there once its agent serves). They must be the ones the lab file
    was checked against (``schema.node_cidrs``: node *i* gets the *i*-th subnet, as the
    operator's lowest-free allocation gives them to nodes made one after the other), else the
    file's pod addresses would not be the node's: a LabError naming both."""
    api = _api(rec.name)
    obj: kubeapi.Obj | None = None

    def read() -> None:
        nonlocal obj
        obj = api.get(f"{CILIUM_NODES}/{nrec.name}")

    _api_call(read)
    spec = (obj or {}).get("spec") or {}
    got = list(((spec.get("ipam") or {}).get("podCIDRs")) or [])
    want = [str(c) for c in (expected.ipv4, expected.ipv6) if c is not None]
    if sorted(got) != sorted(want):
        raise LabError(
            f"node {nrec.name}: CiliumNode spec.ipam.podCIDRs is {got or 'empty'}, expected"
            f" {want} (the lab file's cluster pool, node {nrec.name}'s subnet)"
        )
    nrec.ipv4_cidr = str(expected.ipv4) if expected.ipv4 is not None else None
    nrec.ipv6_cidr = str(expected.ipv6) if expected.ipv6 is not None else None
    _save(rec)


def _create_node(
    rec: LabRecord,
    node: str,
    cidrs: schema.NodeCIDRs,
    labels: dict[str, str],
    addresses: nodenetwork.NodeAddresses,
) -> NodeRecord:
    """The node's netns, its ``eth0`` on the lab network (``addresses``) and its agent, started
    but not yet ready (``_finish_node`` waits for it): the nodes' agents start together, each
    importing, loading its BPF objects and syncing while the next node is made. In
    ``cluster-pool`` mode the agent gets no range: it creates its CiliumNode and serves once
    ciliary-operator allocated its pod CIDRs. The operator gives node *i* the *i*-th subnet
    only if the nodes' CiliumNodes come one after the other, so the next node is made once this
    one's CiliumNode has its CIDRs (``_await_allocation``). In ``pools`` mode (each agent claims
    its blocks itself) the agent is ready before the next node is made, as before."""
    nrec = NodeRecord(
        name=node,
        netns=node_netns(rec.name, node),
        state_dir=str(RUN_ROOT / node),
        pin_dir=str(PIN_ROOT / node),
        socket=str(RUN_ROOT / node / "agent.sock"),
        cgroup=_cgroup_rel(rec.name, f"agent-{node}"),
        labels=labels,
        kubeconfig=str(controlplane.node_kubeconfig(_lab_dir(rec.name), node))
        if rec.control_plane is not None
        else None,
        node_ipv4=str(addresses.ipv4.ip),
        node_ipv6=str(addresses.ipv6.ip),
    )
    if rec.control_plane is None:  # no operator: the node's CIDRs by flag
        nrec.ipv4_cidr = str(cidrs.ipv4) if cidrs.ipv4 else None
        nrec.ipv6_cidr = str(cidrs.ipv6) if cidrs.ipv6 else None
    rec.nodes.append(nrec)
    _save(rec)  # intent first
    _write_conflist(rec.name, node)
    netns.create(nrec.netns)
    if rec.network is not None:  # on the lab network before its agent starts
        underlay.plug_node(rec.network, nrec)
        if rec.control_plane is not None:  # its pods kept from the API there
            underlay.fence_api(rec.network, nrec, controlplane.NODE_API_PORT)
    if rec.control_plane is not None:  # the API on the node's loopback before its agent starts
        _add_node_listener(rec, nrec)
    _start_agent(rec, nrec, ready=False)
    if rec.control_plane is None:
        return nrec  # the node's CIDRs by flag: no allocation order to keep
    if rec.ipam_mode == "cluster-pool":
        _await_allocation(rec, nrec)
    else:
        _wait_agent(nrec, Path(nrec.state_dir) / "agent.log", nrec.agent_log_offset)
    return nrec


def _await_allocation(rec: LabRecord, nrec: NodeRecord) -> None:
    """Wait until the operator has allocated pod CIDRs in the node's CiliumNode, which its agent
    creates once it runs (an agent that exits meanwhile fails, with its log's reason)."""
    api = _api(rec.name)
    log_path = Path(nrec.state_dir) / "agent.log"
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while True:
        try:
            obj = api.get(f"{CILIUM_NODES}/{nrec.name}")
        except kubeapi.KubeAPIError as err:
            raise LabError(f"API server: {err}") from err
        if ((obj or {}).get("spec") or {}).get("ipam", {}).get("podCIDRs"):
            return
        if not process.alive(nrec.agent_pid, nrec.agent_start_time):
            tail = _tail(log_path, nrec.agent_log_offset)
            raise LabError(f"agent of node {nrec.name} exited during start-up: {tail}")
        if time.monotonic() > deadline:
            raise LabError(
                f"node {nrec.name}: no pod CIDRs in its CiliumNode after"
                f" {AGENT_READY_TIMEOUT:.0f}s (see {log_path} and the operator's log)"
            )
        time.sleep(POLL)


def _finish_node(rec: LabRecord, nrec: NodeRecord, cidrs: schema.NodeCIDRs) -> None:
    """Once the node's agent is ready: the pod CIDRs it got recorded and checked (cluster-pool),
    and its Node object registered, as kubelet does once it runs."""
    _wait_agent(nrec, Path(nrec.state_dir) / "agent.log", nrec.agent_log_offset)
    if rec.control_plane is not None and rec.ipam_mode == "cluster-pool":
        _allocated_cidrs(rec, nrec, cidrs)
    pod_cidrs = [c for c in (nrec.ipv4_cidr, nrec.ipv6_cidr) if c]
    if rec.control_plane is not None:  # kubelet registers its node once it runs
        api = _api(rec.name)
        node, labels = nrec.name, nrec.labels
        path = f"/api/v1/nodes/{node}"
        _api_call(lambda: api.create(kubelet.node(node, labels, pod_cidrs), exist_ok=True))
        status = kubelet.node_status(node, node_ips(nrec))
        _api_call(lambda: api.patch_status(path, status))


def _create_externals(rec: LabRecord, spec: schema.LabBody) -> None:
    """The world's hosts: each a netns on the lab network (recorded first) running its
    command, if any, in its own cgroup with its log in the lab's directory; not restarted (a
    machine of its own, outside the cluster: no kubelet tends it)."""
    if rec.network is None:
        raise LabError(f"lab {rec.name!r} has no lab network for its world hosts")
    net = spec.node_network
    plan = nodenetwork.external_addresses(
        net.ipv4, net.ipv6, [(e.name, e.addresses) for e in spec.externals]
    )
    for ext_spec in spec.externals:
        argv = ext_spec.argv()
        ext = ExternalRecord(
            name=ext_spec.name,
            netns=underlay.external_netns(rec.name, ext_spec.name),
            ipv4=str(plan[ext_spec.name].ipv4.ip),
            ipv6=str(plan[ext_spec.name].ipv6.ip),
            argv=argv,
            cgroup=_cgroup_rel(rec.name, f"world-{ext_spec.name}") if argv else None,
            log=str(_lab_dir(rec.name) / "world" / f"{ext_spec.name}.log") if argv else None,
        )
        rec.externals.append(ext)
        _save(rec)  # intent first
        netns.create(ext.netns)
        underlay.plug_external(rec.network, ext)
        if ext.cgroup is not None and ext.log is not None:
            try:
                ext.pid, ext.start_time = process.spawn(
                    argv,
                    netns_path=str(netns.path_of(ext.netns)),
                    cgroup_path=cgroup.create(ext.cgroup),
                    log_path=Path(ext.log),
                )
            except OSError as err:
                raise LabError(f"world host {ext.name}: cannot start {argv[0]!r}: {err}") from err
            _save(rec)
            # as a pod's container: a command that cannot start fails lab up, naming the host
            code = process.wait_exec(ext.pid, ext.start_time, argv)
            if code is not None:
                meaning = {126: "not executable", 127: "command not found"}.get(
                    code, f"exit code {code}"
                )
                raise LabError(
                    f"world host {ext.name} (spec.externals): cannot start {argv[0]!r}"
                    f" ({meaning}): {_tail(Path(ext.log))}"
                )


def node_ips(nrec: NodeRecord) -> list[str]:
    """The node's IPs on the lab network (IPv4 first): its InternalIPs, as kubelet reports."""
    return [a for a in (nrec.node_ipv4, nrec.node_ipv6) if a]


def _add_node_listener(rec: LabRecord, nrec: NodeRecord) -> None:
    """The API server listens inside the node netns, on its loopback (never routed through the
    root netns, out of the pods' reach), and the node gets its kubeconfig: for the API on the
    lab network (its first address, IPv4) when the lab has one, as a cluster's nodes dial their
    API server's address on their network, else the loopback."""
    cp = control_plane(rec.name)
    if cp is None or rec.control_plane is None:
        raise LabError(f"lab {rec.name!r} has no control plane")
    server = rec.control_plane.network_urls[0] if rec.control_plane.network_urls else None
    try:
        controlplane.add_node(cp, nrec.name, netns.path_of(nrec.netns), server=server)
    except (controlplane.ControlPlaneError, OSError) as err:
        raise LabError(f"node {nrec.name}: API server in its netns: {err}") from err


def _add_network_listeners(rec: LabRecord) -> None:
    """The API server listens on the lab network's own addresses too (inside ``cilu-<lab>``),
    as a cluster's API on its nodes' network; recorded as ``ControlPlaneRecord.network_urls``."""
    cp = control_plane(rec.name)
    if cp is None or rec.network is None or rec.control_plane is None:
        raise LabError(f"lab {rec.name!r} has no control plane or no lab network")
    try:
        urls = controlplane.add_network(
            cp, netns.path_of(rec.network.netns), underlay.api_addresses(rec.network)
        )
    except (controlplane.ControlPlaneError, OSError) as err:
        raise LabError(f"API server on the lab network {rec.network.netns}: {err}") from err
    rec.control_plane.network_urls = urls
    _save(rec)


def _agent_argv(rec: LabRecord, nrec: NodeRecord) -> list[str]:
    argv = [
        sys.executable, "-m", "ciliary.agent.main",
        "--node-name", nrec.name,
        "--netns", nrec.netns,
        "--state-dir", nrec.state_dir,
        "--bpf-pin-dir", nrec.pin_dir,
        "--monitor-aggregation", rec.monitor_aggregation,
        "--ipam", rec.ipam_mode,
        "--cluster-name", rec.name,  # the lab is the cluster
    ]  # fmt: skip
    root = cgroup.cgroup2_root()
    if root is not None:  # socket-LB on the node's pods when the lab file asks for it
        argv += ["--cgroup-root", str(root / node_cgroup_rel(rec.name, nrec.name))]
        argv += [f"--bpf-lb-sock={str(rec.socket_lb).lower()}"]
    if rec.dns_pre_cache:  # the DNS answers toFQDNs rules start with
        pre_cache = _lab_dir(rec.name) / DNS_PRE_CACHE
        atomic.write_json(pre_cache, rec.dns_pre_cache)
        argv += ["--tofqdns-pre-cache", str(pre_cache)]
    if rec.dns_min_ttl:
        argv += ["--tofqdns-min-ttl", str(rec.dns_min_ttl)]
    argv += [
        "--tofqdns-idle-connection-grace-period", f"{rec.dns_idle_connection_grace_period_s:g}",
        "--tofqdns-max-deferred-connection-deletes", str(rec.dns_max_deferred_connection_deletes),
        "--conntrack-gc-interval", f"{rec.ct_gc_interval_s:g}",
    ]  # fmt: skip
    if rec.maglev_hash_seed:  # the same on every node: a tuple picks the same Maglev backend
        argv += ["--bpf-lb-maglev-hash-seed", rec.maglev_hash_seed]
    if nrec.labels:
        argv += ["--node-labels", ",".join(f"{k}={v}" for k, v in sorted(nrec.labels.items()))]
    if nrec.kubeconfig:  # pods, namespaces and policies from the lab's API server
        argv += ["--kubeconfig", nrec.kubeconfig]
    if not nrec.kubeconfig:  # with an API, the CiliumNode's CIDRs (the operator's) are its own
        if nrec.ipv4_cidr:
            argv += ["--ipv4-range", nrec.ipv4_cidr]
        if nrec.ipv6_cidr:
            argv += ["--ipv6-range", nrec.ipv6_cidr]
    if rec.network is not None:  # the node's place on the lab network, the lab's routing
        argv += underlay.agent_flags(rec.network, nrec)
    return argv + _hubble_argv(rec, nrec)


def _hubble_record(spec: schema.HubbleSpec) -> HubbleRecord:
    return HubbleRecord(
        enabled=spec.enabled,
        event_buffer_capacity=spec.event_buffer_capacity,
        metrics=list(spec.metrics),
        export=spec.export.enabled,
        export_max_size_mb=spec.export.max_size_mb,
        export_max_backups=spec.export.max_backups,
    )


def _hubble_argv(rec: LabRecord, nrec: NodeRecord) -> list[str]:
    """Agent flags for Hubble, named as cilium-agent's. The node's servers (:4244 gRPC, :9965
    Hubble metrics, :9962 agent metrics) listen inside the node's netns, as on a real node; its
    unix socket (``<state-dir>/hubble.sock``) is what the relay in the root netns dials."""
    hub = rec.hubble
    if not hub.enabled:
        return ["--enable-hubble=false"]
    argv = ["--hubble-event-buffer-capacity", str(hub.event_buffer_capacity)]
    if hub.metrics:
        argv += ["--hubble-metrics", " ".join(hub.metrics)]
    if hub.export:
        argv += [
            "--hubble-export-file-path", str(Path(nrec.state_dir) / "hubble" / "events.log"),
            "--hubble-export-file-max-size-mb", str(hub.export_max_size_mb),
            "--hubble-export-file-max-backups", str(hub.export_max_backups),
        ]  # fmt: skip
    # :4244 serves TLS with the lab CA's certificate for this node, clients need one (mTLS)
    # (upstream's name and loopback: the node's addresses come from the operator once it runs)
    ca = certs.LabCA(_lab_dir(rec.name), cluster=rec.name)
    return argv + certs.agent_flags(ca, nrec.name)


def relay_socket(lab: str) -> Path:
    """The lab relay's root-only unix socket (its default listener)."""
    return _lab_dir(lab) / "hubble-relay.sock"


def _listening(address: str) -> bool:
    """Whether something accepts connections on ``unix:///path`` or ``host:port``."""
    if address.startswith("unix://"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            try:
                probe.connect(address[len("unix://") :])
            except OSError:
                return False
            return True
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def relay_address_file(lab: str) -> Path:
    """Where the lab writes its relay's ``host:port`` (read by ``ciliary observe``'s default)."""
    return _lab_dir(lab) / "relay.addr"


def _free_loopback_port(preferred: int) -> int:
    """``preferred`` when nothing listens on it on 127.0.0.1, else a free port the kernel picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise LabError("no free loopback port for the Hubble relay")


def _start_relay(rec: LabRecord, listen_address: str) -> str:
    """One relay per lab, in the root netns, dialing every node's unix socket. By default it
    serves on a root-only unix socket in the lab's directory; a TCP (loopback) listen address
    of the lab file gets TLS and requires client certificates (the lab CA's, see certs).
    Returns the address it will listen on (``_await_relay`` waits for that)."""
    ca = certs.LabCA(_lab_dir(rec.name), cluster=rec.name)
    if listen_address:
        address = listen_address
        if address.startswith(":"):
            address = "127.0.0.1" + address
        if address.endswith(":0"):
            address = f"127.0.0.1:{_free_loopback_port(0)}"
        tls_flags = certs.relay_flags(ca, tcp=True)
        published = f"tls://{address}"
    else:
        address = f"unix://{relay_socket(rec.name)}"
        tls_flags = certs.relay_flags(ca, tcp=False)
        published = address
    peers = ",".join(f"{n.name}=unix://{Path(n.state_dir) / 'hubble.sock'}" for n in rec.nodes)
    rrec = RelayRecord(address=published, cgroup=_cgroup_rel(rec.name, "hubble-relay"))
    rec.relay = rrec
    _save(rec)  # intent first
    cg = cgroup.create(rrec.cgroup) if rrec.cgroup else None
    log_path = _lab_dir(rec.name) / "hubble-relay.log"
    argv = [
        sys.executable, "-m", "ciliary.hubble.relay",
        "--listen-address", address,
        "--peers", peers,
        "--retry-timeout", "2s",  # a restarted agent is back in the relay within seconds
        *tls_flags,
    ]  # fmt: skip
    rrec.pid, rrec.start_time = process.spawn(
        argv, netns_path=None, cgroup_path=cg, log_path=log_path
    )
    _save(rec)
    return address


def _await_relay(rec: LabRecord, address: str) -> None:
    """Wait until the relay ``_start_relay`` started listens on ``address``, then publish its
    address for ``ciliary observe``."""
    rrec = rec.relay
    if rrec is None:
        raise LabError(f"lab {rec.name!r} has no Hubble relay")
    log_path = _lab_dir(rec.name) / "hubble-relay.log"
    deadline = time.monotonic() + RELAY_READY_TIMEOUT
    while time.monotonic() < deadline:
        if not process.alive(rrec.pid, rrec.start_time):
            raise LabError(f"hubble relay exited during start-up: {_tail(log_path)}")
        if _listening(address):
            atomic.write_text(relay_address_file(rec.name), rrec.address + "\n")
            return
        time.sleep(0.1)
    raise LabError(f"hubble relay not listening on {address} after {RELAY_READY_TIMEOUT:.0f}s")


def supervisor_dir(lab: str) -> Path:
    """Requests to the lab's supervisor (``restart-<node>``) and its log."""
    return _lab_dir(lab) / "supervisor"


def _start_supervisor(rec: LabRecord) -> None:
    """The lab's supervisor: starts each node's agent once the node is made, and restarts it
    when it exits (kubelet's part for the agent's DaemonSet pod). One per lab, root netns."""
    srec = SupervisorRecord(cgroup=_cgroup_rel(rec.name, "supervisor"))
    rec.supervisor = srec
    _save(rec)  # intent first
    cg = cgroup.create(srec.cgroup) if srec.cgroup else None
    argv = [sys.executable, "-m", "ciliary.lab.supervisor", rec.name]
    srec.pid, srec.start_time = process.spawn(
        argv, netns_path=None, cgroup_path=cg, log_path=supervisor_dir(rec.name) / "supervisor.log"
    )
    _save(rec)


def _start_cluster_processes(
    rec: LabRecord,
    names: Sequence[str],
    *,
    wait: bool = True,
    operator_flags: Sequence[str] = (),
    dns_records: Path | None = None,
) -> None:
    """The cluster's own processes ``names``, started and restarted by the supervisor, each a
    client of the API with the admin kubeconfig: the kubelet role that runs every pod
    (``lab.kubeletd``; ``lab up`` starts it before the nodes are made, it takes each node as it
    registers), cilium-operator's role (``ciliary.controllers.operator`` with
    ``operator_flags``, the lab's cluster pool: started with the kubelet role, the agents wait
    for the pod CIDRs it allocates) and kube-controller-manager's (with the cluster DNS records
    controller writing ``dns_records`` when the lab runs its own DNS pod). With ``wait``,
    returns once the supervisor has started every one of the lab's processes."""
    if rec.control_plane is None:
        return
    kubeconfig = rec.control_plane.kubeconfig
    python = [sys.executable, "-m"]
    argvs = {
        CONTROLLER_MANAGER: [
            *python,
            "ciliary.controllers.manager",
            "--kubeconfig",
            kubeconfig,
            *(["--cluster-dns-records", str(dns_records)] if dns_records is not None else []),
        ],
        OPERATOR: [
            *python,
            "ciliary.controllers.operator",
            "--kubeconfig",
            kubeconfig,
            *operator_flags,
        ],
        KUBELET: [*python, "ciliary.lab.kubeletd", "--kubeconfig", kubeconfig, rec.name],
    }
    for pname in names:
        rec.processes[pname] = ProcessRecord(
            argv=argvs[pname],
            log=str(_lab_dir(rec.name) / f"{pname}.log"),
            cgroup=_cgroup_rel(rec.name, pname),
        )
    _save(rec)  # intent first: the supervisor starts them
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while wait and any(p.pid is None for p in rec.processes.values()):
        if not _supervised(rec):
            log = supervisor_dir(rec.name) / "supervisor.log"
            raise LabError(f"the lab's supervisor exited: {_tail(log)}")
        if time.monotonic() > deadline:
            raise LabError("the supervisor did not start the cluster's processes")
        time.sleep(0.05)
        _refresh_supervised(rec)


def spawn_process(rec: LabRecord, name: str) -> ProcessRecord:
    """Start one of the lab's cluster processes (the supervisor's part; no wait); the returned
    record has its new pid."""
    prec = rec.processes[name]
    cg = cgroup.create(prec.cgroup) if prec.cgroup else None
    prec.pid, prec.start_time = process.spawn(
        prec.argv, netns_path=None, cgroup_path=cg, log_path=Path(prec.log)
    )
    return prec


HUBBLE_UI = "hubble-ui"
HUBBLE_UI_READY_TIMEOUT = 20.0
_UI_URL = re.compile(r"^Hubble UI at (http://\S+/) ", re.MULTILINE)


def start_hubble_ui(lab: str, port: int = 12000) -> str:
    """``ciliary hubble ui`` on the lab's relay as one of the lab's processes: the supervisor
    starts (and restarts) it like the cluster's, ``lab down`` stops it by its recorded pid and
    start time. ``port`` 0: any free port. Returns the UI's URL once it answers; LabError when
    the lab has no relay or supervisor, or when the UI exits during start-up (its log's reason:
    e.g. the port is taken), and then it is not restarted."""
    with _record_lock(lab, create=False):
        rec = _load(lab)
        if rec.relay is None:
            raise LabError(f"lab {lab!r} has no Hubble relay: the Hubble UI reads its flows")
        if not _supervised(rec):
            raise LabError(f"lab {lab!r} has no running supervisor to run the Hubble UI")
        old = rec.processes.get(HUBBLE_UI)
        if old is not None and process.alive(old.pid, old.start_time):
            process.stop(old.pid, old.start_time)  # another port, or a UI that hangs
        log_path = _lab_dir(lab) / f"{HUBBLE_UI}.log"
        argv = [sys.executable, "-m", "ciliary.cli.main", "hubble", "ui"]
        api = ["--kubeconfig", rec.control_plane.kubeconfig] if rec.control_plane else []
        rec.processes[HUBBLE_UI] = ProcessRecord(
            argv=[*argv, "--relay", rec.relay.address, *api, "--port", str(port)],
            log=str(log_path),
            cgroup=_cgroup_rel(lab, HUBBLE_UI),
        )
        start = _log_size(log_path)  # this run's lines only
        atomic.write_json(_state_file(lab), rec.model_dump(mode="json"))
    deadline = time.monotonic() + HUBBLE_UI_READY_TIMEOUT
    while time.monotonic() < deadline:
        prec = _load(lab).processes[HUBBLE_UI]
        if prec.last_exit is not None:
            update_process(lab, HUBBLE_UI, lambda p: setattr(p, "wanted", False))
            raise LabError(f"the Hubble UI exited ({prec.last_exit}): {_tail(log_path, start)}")
        with contextlib.suppress(OSError):
            with open(log_path, "rb") as fh:
                fh.seek(start)
                found = _UI_URL.search(fh.read().decode(errors="replace"))
            if found:
                return found.group(1)
        time.sleep(0.1)
    why = _tail(log_path, start)
    raise LabError(f"the Hubble UI did not listen within {HUBBLE_UI_READY_TIMEOUT:.0f}s: {why}")


def _supervised(rec: LabRecord) -> bool:
    return rec.supervisor is not None and process.alive(
        rec.supervisor.pid, rec.supervisor.start_time
    )


def spawn_agent(rec: LabRecord, nrec: NodeRecord) -> None:
    """Start the node's agent process (no wait) and set ``nrec``'s agent fields."""
    state_dir = Path(nrec.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cg = cgroup.create(nrec.cgroup) if nrec.cgroup else None
    cgroup.create(node_cgroup_rel(rec.name, nrec.name))  # its --cgroup-root, before it starts
    log_path = state_dir / "agent.log"
    nrec.agent_log_offset = _log_size(log_path)  # this run's lines: an earlier run's are stale
    nrec.agent_pid, nrec.agent_start_time = process.spawn(
        _agent_argv(rec, nrec), netns_path=None, cgroup_path=cg, log_path=log_path
    )


def _start_agent(
    rec: LabRecord, nrec: NodeRecord, *, restart: bool = False, ready: bool = True
) -> None:
    """(Re)start the node's agent through the supervisor (directly when the lab has none, e.g. it
    was killed); with ``ready``, wait until it is ready."""
    old_pid = nrec.agent_pid
    nrec.agent_wanted = True
    _save(rec)
    (supervisor_dir(rec.name) / f"hold-{nrec.name}").unlink(missing_ok=True)
    if _supervised(rec):
        if restart:
            request = supervisor_dir(rec.name) / f"restart-{nrec.name}"
            request.parent.mkdir(parents=True, exist_ok=True)
            request.touch()
        _await_spawn(rec, nrec, old_pid)
    else:
        if restart:
            process.stop(nrec.agent_pid, nrec.agent_start_time)
        with _record_lock(rec.name):
            spawn_agent(rec, nrec)
            atomic.write_json(_state_file(rec.name), rec.model_dump(mode="json"))
    if ready:
        _wait_agent(nrec, Path(nrec.state_dir) / "agent.log", nrec.agent_log_offset)


def _await_spawn(rec: LabRecord, nrec: NodeRecord, old_pid: int | None) -> None:
    """Wait until the supervisor has started a new agent for ``nrec`` (fields refreshed)."""
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while time.monotonic() < deadline:
        _refresh_supervised(rec)
        if nrec.agent_pid is not None and nrec.agent_pid != old_pid:
            return
        if not _supervised(rec):
            log = supervisor_dir(rec.name) / "supervisor.log"
            raise LabError(f"the lab's supervisor exited: {_tail(log)}")
        time.sleep(0.05)
    raise LabError(f"the supervisor did not start the agent of node {nrec.name}")


def _wait_agent(nrec: NodeRecord, log_path: Path, log_start: int = 0) -> None:
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    sock = Path(nrec.socket)
    while time.monotonic() < deadline:
        if not process.alive(nrec.agent_pid, nrec.agent_start_time):
            tail = _tail(log_path, log_start)
            raise LabError(f"agent of node {nrec.name} exited during start-up: {tail}")
        if sock.exists():
            with contextlib.suppress(AgentUnavailableError), AgentClient(sock, timeout=2) as cl:
                cl.healthz()
                return
        time.sleep(0.1)
    raise LabError(f"agent of node {nrec.name} not ready after {AGENT_READY_TIMEOUT:.0f}s")


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(path: Path, start: int = 0) -> str:
    """The telling line of a log (the last error, else the last line), from byte ``start`` on: a
    process's own run, never a line an earlier run left in the same file."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        for line in reversed(lines):
            if "Error" in line or "error" in line or "failed" in line:
                return line.strip()[-300:]
        return lines[-1].strip()[-300:] if lines else "(empty log)"
    return f"(no log at {path})"


def _node(rec: LabRecord, name: str) -> NodeRecord:
    for n in rec.nodes:
        if n.name == name:
            return n
    raise LabError(f"lab {rec.name!r} has no node {name!r}")


def _create_pod(rec: LabRecord, pod: schema.PodSpec, uid: str) -> PodRecord:
    """Make the pod ``uid`` of the API (the kubelet role's part, ``lab.kubeletd``, which reports
    its status): netns, CNI ADD, its containers as processes; the record is written with
    :func:`save_kubelet_pod` (this pod's entry only: pods start concurrently), before each
    resource is made."""

    def save(rec: LabRecord) -> None:
        save_kubelet_pod(rec.name, prec)

    nrec = _node(rec, pod.node_name)
    host = pod.spec.host_network
    prec = PodRecord(
        name=pod.name,
        namespace=pod.namespace,
        node=nrec.name,
        netns=nrec.netns if host else pod_netns(rec.name, pod.namespace, pod.name),
        container_id=f"{rec.name}-{pod.namespace}-{pod.name}",
        labels=dict(pod.labels),
        containers=[
            ContainerRecord(name=c.name, argv=c.argv(), image=c.image)
            for c in pod.spec.containers
            if c.argv()
        ],
        cgroup=f"{node_cgroup_rel(rec.name, nrec.name)}/pod-{pod.namespace}-{pod.name}",
        kubelet=True,
        uid=uid,
        restart_policy=pod.spec.restart_policy,
        host_network=host,
    )
    rec.pods.append(prec)
    save(rec)  # intent first
    if host:  # kubelet makes no sandbox for it: the node's netns and addresses, no CNI
        prec.ipv4 = f"{nrec.node_ipv4}/32" if nrec.node_ipv4 else None
        prec.ipv6 = f"{nrec.node_ipv6}/128" if nrec.node_ipv6 else None
        return _start_containers(rec, pod, prec, uid)
    path = netns.create(prec.netns)
    requested = [str(a) for a in pod.requested_ips()]
    try:
        _cni(rec, nrec).add(
            prec.container_id,
            str(path),
            "eth0",
            args={
                "K8S_POD_NAMESPACE": pod.namespace,
                "K8S_POD_NAME": pod.name,
                "K8S_POD_INFRA_CONTAINER_ID": prec.container_id,
            },
            capability_args={"ips": requested} if requested else {},
        )
    except CNIRuntimeError as err:
        raise LabError(f"pod {prec.key}: CNI ADD failed: {err}") from err
    with AgentClient(Path(nrec.socket)) as cl:
        ep = next(e for e in cl.endpoints() if e.container_id == prec.container_id)
    prec.endpoint_id, prec.ipv4, prec.ipv6 = ep.id, ep.ipv4, ep.ipv6
    return _start_containers(rec, pod, prec, uid)


def _start_containers(rec: LabRecord, pod: schema.PodSpec, prec: PodRecord, uid: str) -> PodRecord:
    """The pod's processes start only now: the endpoint is ready (programs attached) by
    contract. Every container is a process in the pod's netns and its cgroup (as containers of a
    pod share the pod's network namespace), its output in kubelet's log file of its run, which
    ``kubectl logs`` reads through the API server (named by the pod's uid in the API)."""

    def save(rec: LabRecord) -> None:
        save_kubelet_pod(rec.name, prec)

    prec.log = str(podlogs.pod_log_dir(pod_log_root(rec.name), pod.namespace, pod.name, uid))
    save(rec)
    specs = {c.name: c for c in pod.spec.containers}
    for crec in prec.containers:
        start_container(rec, pod, prec, crec, specs[crec.name])  # ContainerConfigError: status
        save(rec)
    _check_started(rec, prec)
    return prec


def pod_log_root(lab: str) -> Path:
    """Where the lab's containers write their logs (the API server's ``--pod-log-dir``)."""
    return controlplane.pod_log_dir(_lab_dir(lab))


def container_log(rec: LabRecord, prec: PodRecord, crec: ContainerRecord) -> Path:
    """The log file of ``crec``'s current run (``crec.restarts`` numbers it)."""
    return podlogs.container_log_path(
        pod_log_root(rec.name),
        prec.namespace,
        prec.name,
        prec.uid or prec.container_id,
        crec.name,
        restart_count=crec.restarts,
    )


def run_api_pod(rec: LabRecord, pod: schema.PodSpec, uid: str) -> PodRecord:
    """The kubelet role's start of a pod of the API (``lab.kubeletd``), its status left to it."""
    return _create_pod(rec, pod, uid)


def remove_pod(rec: LabRecord, prec: PodRecord) -> None:
    """Stop a pod's containers, CNI DEL, remove its netns and cgroup, drop it from ``rec`` (the
    caller saves)."""
    _remove_pod(rec, prec)


def node_record(rec: LabRecord, name: str) -> NodeRecord:
    return _node(rec, name)


def start_container(
    rec: LabRecord,
    pod: schema.PodSpec,
    prec: PodRecord,
    crec: ContainerRecord,
    spec: schema.Container,
) -> None:
    """Start one container of a made pod (its first start, or a restart: ``crec.restarts``
    numbers the run and its log file): a process in the pod's netns and cgroup, under the pod's
    ``resources.limits``, as its ``securityContext`` user, in its ``workingDir``; ``crec``'s pid
    fields are set (the caller saves). The one place a container process starts (the lab's
    pods and the kubelet role's). Raises ``podsandbox.ContainerConfigError`` for a container
    kubelet would refuse (``runAsNonRoot`` and root)."""
    cg = cgroup.create(prec.cgroup) if prec.cgroup else None
    # Each container also gets its own mount view and environment (podsandbox): no agent or
    # relay socket, no lab key, none of our environment; the DNS pod reads its records, every
    # other pod gets its namespace's resolv.conf (ClusterFirst).
    keep = [dns_records_file(rec.name).parent] if _is_cluster_dns(pod.labels) else []
    _write_resolv_confs(rec.name, pod.namespace)
    pod_spec = _core_spec(pod)
    user = podsandbox.run_as(prec.key, pod_spec, spec)  # refused before any cgroup is limited
    join = cgrouplimits.apply(prec.cgroup, podsandbox.pod_limits(pod_spec)) if prec.cgroup else []
    argv = podsandbox.container_command(
        prec.key,
        pod_spec,
        spec,
        RUN_ROOT,
        keep=keep,
        join_cgroups=join,
        files=_pod_files(rec.name, prec),
    )
    # The container's stdout/stderr is its log file: owned by its user, so that reopening
    # /dev/stdout (nginx's access_log, as on a runtime's pipe) works as that user.
    log_path = container_log(rec, prec, crec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch(mode=0o640)
    os.chown(log_path, user.uid, user.gid)
    crec.pid, crec.pid_start_time = process.spawn(
        argv,
        netns_path=str(netns.path_of(prec.netns)),
        cgroup_path=cg,
        log_path=log_path,
        env=podsandbox.container_env(pod.name, [(v.name, v.value) for v in spec.env]),
        inherit_env=False,
    )


def _core_spec(pod: schema.PodSpec) -> core.PodSpec:
    return core.PodSpec(
        containers=list(pod.spec.containers),
        security_context=pod.spec.security_context,
        volumes=list(pod.spec.volumes),
    )


def check_containers(pod: schema.PodSpec) -> None:
    """Raise ``podsandbox.ContainerConfigError`` if a container of ``pod`` would be refused
    (kubelet checks this before it makes anything of the pod)."""
    spec = _core_spec(pod)
    for container in pod.spec.containers:
        podsandbox.run_as(pod.key, spec, container)
        podsandbox.empty_dir_mounts(pod.key, spec, container)


def _pod_doc(pod: schema.PodSpec) -> kubeapi.Obj:
    """The Pod the lab applies for ``pod`` (its own: the cluster DNS pod), bound to its node."""
    doc: kubeapi.Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        **pod.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True),
    }
    doc.setdefault("metadata", {})["namespace"] = pod.namespace
    doc.setdefault("spec", {})["nodeName"] = pod.node_name
    return kubeapi.with_placeholder_images(doc)


def _check_started(rec: LabRecord, prec: PodRecord) -> None:
    """A container whose command cannot be started (not found, not executable) fails the pod,
    as the runtime's start error fails it in Kubernetes; the reason is the log line the failed
    exec wrote (its run's own log file) and its exit code. A command that starts and later
    exits is not a start failure."""
    for crec in prec.containers:
        if crec.pid is None:
            continue
        code = process.wait_exec(crec.pid, crec.pid_start_time, crec.argv)
        if code is None:
            continue
        meaning = {126: "not executable", 127: "command not found"}.get(code, f"exit code {code}")
        reason = _tail(container_log(rec, prec, crec))
        raise LabError(
            f"pod {prec.key}: container {crec.name} cannot start {crec.argv[0]!r}"
            f" ({meaning}): {reason}"
        )


# ---- cluster DNS -------------------------------------------------------------------------------

CLUSTER_DNS_LABEL = ("k8s-app", "kube-dns")
CLUSTER_DNS_POD = ("kube-system", "coredns")


def dns_records_file(lab: str) -> Path:
    """The names the lab's DNS pod serves (``ciliary workload dns-server --records``)."""
    return _lab_dir(lab) / "dns" / "records.json"


def resolv_conf_file(lab: str, namespace: str) -> Path:
    """The resolv.conf of lab ``lab``'s pods of ``namespace`` (``dnsconfig``)."""
    return _lab_dir(lab) / "resolv" / f"{namespace}.conf"


def _write_resolv_confs(lab: str, namespace: str) -> None:
    """``namespace``'s resolv.conf and every other one already written, with the cluster DNS
    pod's addresses of the record on disk (rewritten in place: the DNS pod gets them while the
    other pods start), under the record's lock (the kubelet role starts pods concurrently)."""
    with _record_lock(lab, create=False):
        rec = _load(lab)
        servers = dnsconfig.nameservers(_cluster_dns_addresses_of(rec), kube_dns=_runs_dns(rec))
        directory = resolv_conf_file(lab, namespace).parent
        known = {f.stem for f in directory.glob("*.conf")} if directory.is_dir() else set()
        for ns in sorted(known | {namespace}):
            dnsconfig.write_in_place(resolv_conf_file(lab, ns), dnsconfig.resolv_conf(ns, servers))


def _pod_files(lab: str, prec: PodRecord) -> list[tuple[Path, Path]]:
    """The files bound into ``prec``'s containers: its namespace's resolv.conf (ClusterFirst),
    but for the cluster DNS pod (``dnsPolicy: Default``) or a machine without one to cover."""
    source = resolv_conf_file(lab, prec.namespace)
    if _is_cluster_dns(prec.labels) or not source.is_file() or not dnsconfig.RESOLV_CONF.exists():
        return []
    return [(source, dnsconfig.RESOLV_CONF)]


def _runs_dns(rec: LabRecord) -> bool:
    """Whether the lab runs its own DNS pod behind ``kube-system/kube-dns``: ``lab up`` decided
    it before any pod, and gave the controller manager the records file then."""
    cm = rec.processes.get(CONTROLLER_MANAGER)
    return cm is not None and "--cluster-dns-records" in cm.argv


def _cluster_dns_addresses_of(rec: LabRecord) -> list[str]:
    """The cluster DNS pod's addresses (IPv4 first), [] until it has them."""
    for p in rec.pods:
        if _is_cluster_dns(p.labels) and (p.ipv4 or p.ipv6):
            return [a.partition("/")[0] for a in (p.ipv4, p.ipv6) if a]
    return []


def _is_cluster_dns(labels: dict[str, str]) -> bool:
    key, value = CLUSTER_DNS_LABEL
    return labels.get(key) == value


def _cluster_dns_addresses(lab_file: schema.LabFile) -> list[str] | None:
    """The addresses the DNS pod asks for: in ``cluster-pool`` mode the highest free ones of the
    first node's CIDRs, so the file's pods get the addresses they would get without it (and none
    they ask for is taken); [] in ``pools`` mode (any address). None when a CIDR has no room
    for the DNS pod besides the file's pods on that node."""
    if lab_file.ipam_mode != "cluster-pool":
        return []
    node = lab_file.lab.spec.nodes[0].name
    cidrs = schema.node_cidrs(lab_file)[node]
    on_node = lab_file.pods_on(node)
    taken = {str(a) for p in lab_file.pods for a in p.requested_ips()}
    picked: list[str] = []
    for net, router in ((cidrs.ipv4, cidrs.ipv4_router), (cidrs.ipv6, cidrs.ipv6_router)):
        if net is None:
            continue
        reserved = {net.network_address, router}
        last = net.broadcast_address
        if net.version == 4:
            reserved.add(last)
        if net.num_addresses - len(reserved) <= len(on_node):
            return None
        for offset in range(min(net.num_addresses, len(taken) + 4)):
            addr = last - offset
            if addr not in reserved and str(addr) not in taken:
                picked.append(str(addr))
                break
    return picked


def _cluster_dns_pod(rec: LabRecord, lab_file: schema.LabFile) -> schema.PodSpec | None:
    """The lab's ``kube-system/coredns`` pod on the first node, as a cluster's DNS pod; None when
    the file brings its own (a pod labelled ``k8s-app: kube-dns``, or one of that name)."""
    own = [
        p for p in lab_file.pods if _is_cluster_dns(p.labels) or p.key == "/".join(CLUSTER_DNS_POD)
    ]
    if own:
        return None
    addresses = _cluster_dns_addresses(lab_file)
    if addresses is None:
        return None
    namespace, name = CLUSTER_DNS_POD
    key, value = CLUSTER_DNS_LABEL
    annotations = {schema.REQUESTED_IPS_ANNOTATION: json.dumps(addresses)} if addresses else {}
    argv = ["ciliary", "workload", "dns-server", "--records", str(dns_records_file(rec.name))]
    return schema.PodSpec.model_validate(
        {
            "metadata": {
                "name": name, "namespace": namespace,
                "labels": {key: value}, "annotations": annotations,
            },
            "spec": {
                "nodeName": lab_file.lab.spec.nodes[0].name,
                "containers": [{
                    "name": "coredns",
                    "command": argv,
                    "ports": [
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                    ],
                }],
            },
        },
        strict=False,
    )  # fmt: skip


def _await_dns_records(rec: LabRecord) -> None:
    """Wait until the controller manager's cluster DNS controller has written the records file
    (its first render, once its caches synced): the DNS pod's server refuses to start without
    it. The controller is the file's only writer (``controllers.clusterdns``)."""
    path = dns_records_file(rec.name)
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            log = Path(rec.processes[CONTROLLER_MANAGER].log)
            raise LabError(
                f"the controller manager did not write the cluster DNS records {path}"
                f" within {AGENT_READY_TIMEOUT:g}s: {_tail(log)}"
            )
        time.sleep(POLL)


def cluster_dns_ip(name: str) -> str | None:
    """The address of lab ``name``'s DNS pod (``k8s-app: kube-dns``): IPv4, else IPv6."""
    addresses = _cluster_dns_addresses_of(_load(name))
    return addresses[0] if addresses else None


# ---- down --------------------------------------------------------------------------------------


def down(name: str | None = None, *, all_labs: bool = False) -> list[str]:
    """Remove a lab (or all): processes, netns (and with them every veth), pins, cgroups, state."""
    _require_root()
    if all_labs:
        names = list_labs()
        # labs whose record was lost still leave netns with our prefixes behind
        leftovers = ("ciln-", "cilp-", underlay.WORLD_PREFIX)
        for ns_name in [n for prefix in leftovers for n in netns.list_names(prefix)]:
            lab = ns_name.split("-", 2)[1] if ns_name.count("-") >= 2 else None
            if lab and lab not in names:
                names.append(lab)
        for ns_name in netns.list_names(underlay.PREFIX):
            lab = underlay.lab_of(ns_name)
            if lab and lab not in names:
                names.append(lab)
    else:
        names = [_resolve(name) if name is None else name]
    removed = []
    for lab in names:
        try:
            rec = _load(lab)
        except LabError:
            rec = LabRecord(name=lab, file=None, created_at=0)
            if not netns.exists(underlay.netns_name(lab)) and not any(
                netns.list_names(p)
                for p in (f"ciln-{lab}-", f"cilp-{lab}-", underlay.external_netns(lab, ""))
            ):
                if not all_labs:
                    raise
                continue
        _teardown(rec)
        removed.append(lab)
    return removed


def _remove_pod(rec: LabRecord, prec: PodRecord) -> None:
    if prec.cgroup:
        root = cgroup.cgroup2_root()
        if root is not None:
            cgroup.kill_and_remove(root / prec.cgroup)
    for crec in prec.containers:
        process.stop_group(crec.pid, crec.pid_start_time, timeout=1.0)
    if prec.cgroup:
        cgrouplimits.remove_v1(prec.cgroup)
    if prec.host_network:  # the node's netns stays; no CNI DEL (no ADD was made)
        if prec.log:
            shutil.rmtree(prec.log, ignore_errors=True)
        if prec in rec.pods:
            rec.pods.remove(prec)
        return
    with contextlib.suppress(Exception):
        node = _node(_load(rec.name), prec.node)  # the agent now (the supervisor restarts it)
        if process.alive(node.agent_pid, node.agent_start_time):
            _cni(rec, node).delete(prec.container_id, str(netns.path_of(prec.netns)), "eth0")
    netns.remove(prec.netns)
    if prec.log:  # its container logs go with it (kubelet removes a deleted pod's)
        shutil.rmtree(prec.log, ignore_errors=True)
    if prec in rec.pods:
        rec.pods.remove(prec)


def _teardown(rec: LabRecord) -> None:
    """Idempotent removal of everything the record (and the lab's name prefixes) points at."""
    errors: list[str] = []
    root = cgroup.cgroup2_root()
    if rec.supervisor is not None:
        # first, so that no agent is started again while the lab goes
        process.stop(rec.supervisor.pid, rec.supervisor.start_time, timeout=5.0)
        if rec.supervisor.cgroup and root is not None:
            _collect(errors, cgroup.kill_and_remove, root / rec.supervisor.cgroup)
        with contextlib.suppress(OSError):
            _refresh_supervised(rec)
    # Each step stops its processes in parallel (one deadline for all), in this order: the
    # kubelet role (and the controllers) before its pods go, the pods, then the relay and agents.
    process.stop_all([(p.pid, p.start_time) for p in rec.processes.values()], timeout=5.0)
    for cluster_process in rec.processes.values():
        if cluster_process.cgroup and root is not None:
            _collect(errors, cgroup.kill_and_remove, root / cluster_process.cgroup)
    if rec.processes:
        with contextlib.suppress(OSError):
            _refresh_supervised(rec)  # the pods the kubelet role made until it stopped
    for prec in list(rec.pods):
        if prec.cgroup and root is not None:
            _collect(errors, cgroup.kill_and_remove, root / prec.cgroup)
        if prec.cgroup:
            _collect(errors, cgrouplimits.remove_v1, prec.cgroup)
    containers = [(c.pid, c.pid_start_time) for p in rec.pods for c in p.containers]
    process.stop_all(containers, timeout=1.0)  # those outside a cgroup (killed above)
    relay = [(rec.relay.pid, rec.relay.start_time)] if rec.relay is not None else []
    agents = [(n.agent_pid, n.agent_start_time) for n in rec.nodes]
    world = [(e.pid, e.start_time) for e in rec.externals]
    process.stop_all(relay + agents + world, timeout=5.0)
    for nrec in rec.nodes:  # its Envoy outlives the agent (for the next one): ended by pid
        _collect(errors, stop_recorded, Path(nrec.state_dir) / ENVOY_STATE / ENVOY_PIDFILE)
    for ext in rec.externals:
        if ext.cgroup and root is not None:
            _collect(errors, cgroup.kill_and_remove, root / ext.cgroup)
    if rec.relay is not None and rec.relay.cgroup and root is not None:
        _collect(errors, cgroup.kill_and_remove, root / rec.relay.cgroup)
    for nrec in rec.nodes:
        if nrec.cgroup and root is not None:
            _collect(errors, cgroup.kill_and_remove, root / nrec.cgroup)
        node_group = node_cgroup_rel(rec.name, nrec.name)
        if root is not None:
            _collect(errors, cgroup.kill_and_remove, root / node_group)
        _collect(errors, cgrouplimits.remove_v1, node_group)  # the v1 limits' parent
    for prec in rec.pods:
        if not prec.host_network:  # a host-network pod's is its node's, removed below
            _collect(errors, netns.remove, prec.netns)
    for nrec in rec.nodes:
        _collect(errors, netns.remove, nrec.netns)
    for ns_name in netns.list_names(f"cilp-{rec.name}-") + netns.list_names(f"ciln-{rec.name}-"):
        _collect(errors, netns.remove, ns_name)
    for ext in rec.externals:
        _collect(errors, netns.remove, ext.netns)
    for ns_name in netns.list_names(underlay.external_netns(rec.name, "")):
        _collect(errors, netns.remove, ns_name)
    _collect(errors, underlay.remove, rec.name)  # after the nodes: their veths are gone
    for nrec in rec.nodes:
        _collect(errors, shutil.rmtree, Path(nrec.pin_dir), ignore_errors=False)
        _collect(errors, shutil.rmtree, Path(nrec.state_dir), ignore_errors=False)
    cp = control_plane(rec.name)
    if cp is not None:  # its data (etcd's) goes with the lab's directory below
        _collect(errors, controlplane.stop_control_plane, cp)
    if root is not None:
        _collect(errors, cgroup.kill_and_remove, root / CGROUP_PARENT / rec.name)
        for group in (f"{CGROUP_PARENT}/{rec.name}", CGROUP_PARENT):  # the v1 limits' parents
            cgrouplimits.remove_v1(group)
        parent = root / CGROUP_PARENT
        with contextlib.suppress(OSError):
            parent.rmdir()  # only when no other lab uses it
    _collect(errors, shutil.rmtree, _lab_dir(rec.name), ignore_errors=False)
    for empty in (PIN_ROOT, LAB_ROOT, RUN_ROOT):
        with contextlib.suppress(OSError):
            empty.rmdir()  # only once no other lab or agent uses it
    bpffs.unmount_if_setup_mounted()  # the last user gone: give the machine back as found
    if errors:
        raise LabError(f"lab {rec.name}: cleanup incomplete: {'; '.join(errors)}")


def _collect(errors: list[str], fn: object, *args: object, **kwargs: object) -> None:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except FileNotFoundError:
        return
    except Exception as err:
        errors.append(str(err))


# ---- status / exec / restart -------------------------------------------------------------------


def status(name: str | None = None) -> LabView:
    rec = _load(_resolve(name))
    return LabView(
        name=rec.name,
        file=rec.file,
        created_at=rec.created_at,
        nodes=[
            NodeView(
                name=n.name,
                netns=n.netns,
                agent_pid=n.agent_pid,
                agent_alive=process.alive(n.agent_pid, n.agent_start_time),
                agent_restarts=n.agent_restarts,
                agent_last_exit=n.agent_last_exit,
                agent_last_exit_at=n.agent_last_exit_at,
                socket=n.socket,
                ipv4_cidr=n.ipv4_cidr,
                ipv6_cidr=n.ipv6_cidr,
                kubeconfig=n.kubeconfig,
                node_ipv4=n.node_ipv4,
                node_ipv6=n.node_ipv6,
            )
            for n in rec.nodes
        ],
        pods=[
            PodView(
                name=p.name,
                namespace=p.namespace,
                node=p.node,
                netns=p.netns,
                ipv4=p.ipv4,
                ipv6=p.ipv6,
                endpoint_id=p.endpoint_id,
                pids=[c.pid for c in p.containers if c.pid is not None],
                running=bool(p.containers)
                and all(process.alive(c.pid, c.pid_start_time) for c in p.containers),
                labels=p.labels,
            )
            for p in rec.pods
        ],
        relay=RelayView(
            address=rec.relay.address,
            pid=rec.relay.pid,
            alive=process.alive(rec.relay.pid, rec.relay.start_time),
        )
        if rec.relay is not None
        else None,
        supervisor_alive=_supervised(rec) if rec.supervisor is not None else None,
        externals=[
            ExternalView(
                name=e.name,
                netns=e.netns,
                ipv4=e.ipv4,
                ipv6=e.ipv6,
                pid=e.pid,
                alive=process.alive(e.pid, e.start_time),
            )
            for e in rec.externals
        ],
        control_plane=_control_plane_view(rec),
        processes=[
            ProcessView(
                name=pname,
                pid=p.pid,
                alive=process.alive(p.pid, p.start_time),
                restarts=p.restarts,
                last_exit=p.last_exit,
            )
            for pname, p in rec.processes.items()
        ],
        pod_table=_pod_table(rec),
    )


def _pod_table(rec: LabRecord) -> PodTableView | None:
    """``kubectl get pods -A -o wide`` of the lab (the API server's Table, as kubectl prints it:
    every column, NAMESPACE first); None when the API server does not answer."""
    cp = control_plane(rec.name)
    if cp is None:
        return None
    try:
        table = kubeapi.KubeAPI(cp).table("/api/v1/pods")
    except kubeapi.KubeAPIError:
        return None
    columns = ["NAMESPACE"] + [str(c["name"]).upper() for c in table.get("columnDefinitions", [])]
    rows = []
    for row in table.get("rows") or []:
        namespace = ((row.get("object") or {}).get("metadata") or {}).get("namespace", "")
        rows.append([str(namespace)] + ["" if c is None else str(c) for c in row["cells"]])
    return PodTableView(columns=columns, rows=sorted(rows))


def _control_plane_view(rec: LabRecord) -> ControlPlaneView | None:
    cprec = rec.control_plane
    cp = control_plane(rec.name)
    if cprec is None or cp is None:
        return None
    return ControlPlaneView(
        url=cprec.url,
        kubeconfig=cprec.kubeconfig,
        apiserver_pid=cp.apiserver_pid,
        apiserver_alive=cp.apiserver_alive(),
        apiserver_restarts=cprec.apiserver_restarts,
        apiserver_last_exit=cprec.apiserver_last_exit,
        etcd_pid=cp.etcd.pid,
        etcd_alive=cp.etcd.alive(),
        etcd_restarts=cprec.etcd_restarts,
        etcd_last_exit=cprec.etcd_last_exit,
    )


def kubeconfig(name: str | None = None, *, node: str | None = None) -> Path:
    """The path of the lab's kubeconfig (admin certificate embedded; ``kubectl --kubeconfig``),
    or with ``node`` the node's own, for use inside its netns (``ip netns exec``)."""
    rec = _load(_resolve(name))
    if rec.control_plane is None:
        raise LabError(f"lab {rec.name!r} has no API server (made by an older ciliary)")
    if node is None:
        return Path(rec.control_plane.kubeconfig)
    nrec = _node(rec, node)
    if nrec.kubeconfig is None:
        raise LabError(f"node {node} has no kubeconfig (made by an older ciliary)")
    return Path(nrec.kubeconfig)


def _pod_env(prec: PodRecord) -> dict[str, str]:
    """Environment of a command run in a pod: a container's (podsandbox), not ours."""
    return podsandbox.container_env(prec.name)


def find_pod(rec: LabRecord, pod: str) -> PodRecord:
    ns, _, name = pod.rpartition("/")
    ns = ns or "default"
    for p in rec.pods:
        if p.namespace == ns and p.name == name:
            return p
    known = ", ".join(p.key for p in rec.pods) or "none"
    raise LabError(f"lab {rec.name!r} has no pod {ns}/{name} (pods: {known})")


def _pod_cgroup(prec: PodRecord) -> Path | None:
    """The pod's cgroup (v2), which a command run in the pod joins (as ``kubectl exec`` joins
    the container's): the node's socket-LB applies to it as to the pod's containers."""
    root = cgroup.cgroup2_root()
    if root is None or not prec.cgroup:
        return None
    return cgroup.create(prec.cgroup)


def exec_in_pod(pod: str, argv: list[str], *, name: str | None = None) -> int:
    """Run a command inside a pod's network namespace, in the foreground; its exit code."""
    _require_root()
    if not argv:
        raise LabError("nothing to run: give a command after --")
    lab = _resolve(name)
    prec = find_pod(_load(lab), pod)
    env = _pod_env(prec)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            podsandbox.exec_argv(
                netns.path_of(prec.netns), argv, RUN_ROOT, _pod_files(lab, prec), _pod_cgroup(prec)
            ),
            env=env,
            start_new_session=True,  # its own process group, which our signals end as a whole
        )

    try:
        return process.run_forwarding_signals(start)
    except FileNotFoundError as err:
        raise LabError(f"cannot run {argv[0]}: {err.strerror}") from err


def restart_agent(node: str, *, name: str | None = None) -> None:
    """Stop (if running) and start again the agent of ``node``; returns once it is ready."""
    _require_root()
    rec = _load(_resolve(name))
    _start_agent(rec, _node(rec, node), restart=True)


def stop_agent(node: str, *, name: str | None = None) -> None:
    """Stop the agent of ``node`` and keep it down (the supervisor does not restart it) until
    :func:`restart_agent`: an outage on purpose. The datapath stays: pods keep their traffic."""
    _require_root()
    rec = _load(_resolve(name))
    nrec = _node(rec, node)
    hold = supervisor_dir(rec.name) / f"hold-{nrec.name}"
    hold.parent.mkdir(parents=True, exist_ok=True)
    hold.touch()
    _refresh_supervised(rec)
    process.stop(nrec.agent_pid, nrec.agent_start_time)


def agent_socket(node: str, *, name: str | None = None) -> Path:
    return Path(_node(_load(_resolve(name)), node).socket)


def record(name: str | None = None) -> LabRecord:
    return _load(_resolve(name))


def dump(name: str | None = None) -> str:
    return json.dumps(_load(_resolve(name)).model_dump(mode="json"), indent=1)


def run_in_pod(
    pod: str, argv: list[str], *, name: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a command inside a pod's netns and capture its output (tests, demo)."""
    lab = _resolve(name)
    prec = find_pod(_load(lab), pod)
    env = _pod_env(prec)
    return subprocess.run(
        podsandbox.exec_argv(
            netns.path_of(prec.netns), argv, RUN_ROOT, _pod_files(lab, prec), _pod_cgroup(prec)
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
