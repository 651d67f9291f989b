"""The lab's kubelet role: runs every pod bound to a node of the lab (``-m ciliary.lab.kubeletd``).

A pod reaches a node of the lab through the API only: the lab file's own pods (``lab up``/``lab
apply`` apply them with ``spec.nodeName``, as a manifest that names its node), a bare pod of
``kubectl run``/``kubectl apply`` (bound by the scheduler of ``ciliary-controller-manager``), the
pods of Deployments, ReplicaSets, DaemonSets and StatefulSets, the lab's cluster DNS pod. This
process does what kubelet does on each node, for every node of the lab: one process per lab (not
one per node) because the lab's record is one file under one lock; each node still has its own
informer, as each kubelet watches ``spec.nodeName=<node>`` only, from the moment its node
registers (a Node informer), so this process starts with the lab, before the nodes are made.
Pods are synced concurrently, as kubelet has a pod worker per pod: ``--parallel`` workers run the
blocking pod functions of ``lab.manager`` in threads, never two syncs of the same pod at once (a
pod that gets an event while its sync runs is synced again after it), and each sync writes only
its own pod's entry of the record, read-modify-write under the record's lock
(``manager.save_kubelet_pod``/``remove_kubelet_pod``), so concurrent syncs lose no update.
It is started and restarted by the lab's supervisor; on a restart it takes the pods of the
record back (their processes run on) and reconciles them with the API.

For a pod bound to one of its nodes:

* **start**: the lab's own steps (``manager.run_api_pod``: netns, CNI ADD through the node's
  conflist, each container's ``command`` + ``args`` as a process; ``image`` informational), then
  the Pod status (phase, podIP/podIPs, hostIP, Ready, containerStatuses). A container with an
  ``image`` and no ``command`` runs the command the Lab's ``spec.images`` maps that image to
  (``LabRecord.images``; its ``args`` when the container has none); any other cannot run here
  (the lab has no images): the pod is refused,
  ``Failed`` with reason ``ImageWithoutCommand`` and a message naming the pod. A start that fails
  (CNI, a command not found) is undone and tried again after a back-off; its message is in the
  status (``Pending``, the container ``waiting``), where ``lab up``/``lab apply`` read it;
* **restart**: a container that exits is started again per ``restartPolicy`` (``Always``;
  ``OnFailure`` if its exit code is not 0; never for ``Never``), at once the first time, then
  after kubelet's CrashLoopBackOff (10 s doubling, at most 5 min), ``restartCount`` in the
  status; when every container has ended for good the phase is ``Succeeded`` (all exit codes 0)
  or ``Failed``;
* **stop**: a pod deleted from the API (or replaced by another of the same name, a new uid) is
  torn down: containers stopped, CNI DEL, netns and cgroup removed, its record gone.

* **probe**: readiness, liveness and startup probes run as kubelet runs them (``lab.prober``):
  ``Ready`` follows the readiness probes (so an unready pod leaves its Services' EndpointSlices
  and every node's service maps), a failed liveness or startup probe kills the container, which
  restarts per ``restartPolicy``.

Container liveness is this machine's process table, checked every second (kubelet's PLEG
relist); cluster state arrives only through the informers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from ciliary.controllers.process import cancel, parse_args, serve
from ciliary.k8s import core
from ciliary.k8s.resources import by_path
from ciliary.kube.client import ApiError, KubeClient, KubeObject
from ciliary.kube.informer import HandlerFuncs, Informer
from ciliary.lab import kubelet, manager, podsandbox, prober, process, schema
from ciliary.lab.state import ImageRecord, LabRecord, PodRecord

PODS = by_path("", "v1", "pods")
NODES = by_path("", "v1", "nodes")
RELIST = 1.0  # seconds between checks of the containers' processes
RETRY = 5.0  # seconds before a pod whose start failed is tried again
BACKOFF_INITIAL, BACKOFF_MAX = 10.0, 300.0
PARALLEL = 6  # pods synced at once (default of --parallel)

log = logging.getLogger("ciliary.lab.kubeletd")

Status = dict[str, Any]


def refusal(pod: Mapping[str, Any], images: Mapping[str, ImageRecord]) -> str | None:
    """Why the lab cannot run ``pod`` (a container with an image and no command that the Lab's
    ``spec.images`` does not map to one), or None."""
    meta = pod.get("metadata") or {}
    key = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
    for c in (pod.get("spec") or {}).get("containers") or []:
        if not c.get("command") and not c.get("args") and c.get("image") not in images:
            image = c.get("image") or "(none)"
            return (
                f"pod {key}: container {c.get('name')!r} has image {image!r} and no command;"
                " the lab runs no images, only a container's command + args (or the command"
                " its Lab's spec.images maps the image to)"
            )
    return None


def _command_and_args(
    c: Mapping[str, Any], images: Mapping[str, ImageRecord]
) -> tuple[list[str], list[str]]:
    """A container's command + args; a container without a command runs its image's mapped
    command, with the mapped args when it has none of its own (as an image's entrypoint and
    cmd would in Kubernetes)."""
    command, args = list(c.get("command") or []), list(c.get("args") or [])
    mapped = images.get(c.get("image") or "")
    if not command and mapped is not None:
        return list(mapped.command), args or list(mapped.args)
    return command, args


SECURITY_FIELDS = ("runAsUser", "runAsGroup", "runAsNonRoot")


def _known(value: Any, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """The fields of ``value`` the lab applies (lab.podsandbox); None when it is absent."""
    if not isinstance(value, Mapping):
        return None
    return {k: value[k] for k in fields if value.get(k) is not None}


def pod_spec(
    pod: Mapping[str, Any], images: Mapping[str, ImageRecord] | None = None
) -> schema.PodSpec:
    """The API's Pod as the lab's pod document (only what the lab runs of it); ``images`` is the
    Lab's image → command mapping (``LabRecord.images``)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    runs = [_command_and_args(c, images or {}) for c in spec.get("containers") or []]
    containers = [
        {
            "name": c["name"],
            "image": c.get("image"),
            "command": command,
            "args": args,
            "env": [{"name": e["name"], "value": e.get("value") or ""} for e in c.get("env") or []],
            "workingDir": c.get("workingDir"),
            "securityContext": _known(c.get("securityContext"), SECURITY_FIELDS),
            "resources": _known(c.get("resources"), ("limits", "requests")),
            "ports": [
                {k: p[k] for k in ("name", "containerPort", "protocol") if k in p}
                for p in c.get("ports") or []
            ],
            "volumeMounts": [
                {k: m[k] for k in ("name", "mountPath", "readOnly") if k in m}
                for m in c.get("volumeMounts") or []
            ],
        }
        for c, (command, args) in zip(spec.get("containers") or [], runs, strict=True)
    ]
    return schema.PodSpec.model_validate(
        {
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace", "default"),
                "labels": dict(meta.get("labels") or {}),
                "annotations": dict(meta.get("annotations") or {}),
            },
            "spec": {
                "nodeName": spec.get("nodeName"),
                "restartPolicy": spec.get("restartPolicy", "Always"),
                "hostNetwork": bool(spec.get("hostNetwork", False)),
                "securityContext": _known(spec.get("securityContext"), SECURITY_FIELDS),
                "containers": containers,
                # another source than emptyDir is kept by name: podsandbox refuses its mounts
                "volumes": [
                    {"name": v["name"], **({"emptyDir": v["emptyDir"]} if "emptyDir" in v else {})}
                    for v in spec.get("volumes") or []
                ],
            },
        },
        strict=False,
    )


def _restarts(policy: str, code: int | None) -> bool:
    if policy == "Always":
        return True
    return policy == "OnFailure" and code != 0


def _backoff(restarts: int, maximum: float = BACKOFF_MAX) -> float:
    """Delay before restart number ``restarts + 1``: none the first time, then CrashLoopBackOff
    capped at ``maximum`` (the Lab's ``spec.kubelet.crashLoopBackOff.maxContainerRestartPeriod``;
    one under 10 s is every delay, as kubelet's)."""
    if restarts == 0:
        return 0.0
    return float(min(BACKOFF_INITIAL * 2 ** (restarts - 1), maximum))


def _container_models(pod: Mapping[str, Any]) -> dict[str, core.Container]:
    """The pod's containers as typed models (their probes); one the model refuses (the API
    server validates probes, so only a pod written before it did) runs without probes."""
    out: dict[str, core.Container] = {}
    for c in (pod.get("spec") or {}).get("containers") or []:
        try:
            out[c["name"]] = core.Container.model_validate(c)
        except (ValidationError, KeyError, TypeError) as err:
            log.warning("pod container %r: probes not run: %s", c.get("name"), err)
    return out


class Kubelet:
    def __init__(self, lab: str, kube: KubeClient, *, parallel: int = PARALLEL) -> None:
        if parallel < 1:
            raise ValueError(f"--parallel must be at least 1, not {parallel}")
        self.lab = lab
        self.parallel = parallel
        self.kube = kube
        self.informers: dict[str, Informer] = {}  # node → its pods (spec.nodeName)
        self.tasks: list[asyncio.Task[None]] = []
        self.handler = HandlerFuncs(
            add=self._on_event,
            update=lambda _old, new: self._on_event(new),
            delete=self._on_event,
        )
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.in_flight: set[str] = set()  # pods whose sync runs now
        self.dirty: set[str] = set()  # in flight and enqueued again meanwhile: synced once more
        self.retry_at: dict[str, float] = {}
        self.prober = prober.Prober(lab, on_change=self._probe_changed, kill=self._probe_kill)
        self.status_due: set[str] = set()  # a probe result changed: write the status again
        self.synced_records: dict[str, PodRecord | None] = {}  # by sync(): the pod's record

    # ---- events ---------------------------------------------------------------------------

    def enqueue(self, key: str) -> None:
        if key in self.in_flight:
            self.dirty.add(key)  # never two syncs of one pod at once: again after this one
        elif key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    def _on_event(self, obj: KubeObject) -> None:
        meta = obj.get("metadata") or {}
        self.enqueue(f"{meta.get('namespace', 'default')}/{meta.get('name')}")

    def pod(self, key: str) -> KubeObject | None:
        for inf in self.informers.values():
            obj = inf.store.get(key)
            if obj is not None:
                return obj
        return None

    def _probe_changed(self, key: str) -> None:
        self.status_due.add(key)
        self.enqueue(key)

    async def _probe_kill(self, key: str, container: str) -> None:
        log.info("pod %s: container %s failed its liveness probe, killing it", key, container)
        await asyncio.to_thread(prober.kill_container, self.lab, key, container)
        self.enqueue(key)

    def _sync_probes(self, key: str, obj: KubeObject | None) -> None:
        """The probes of the pod's running containers (after a sync: new runs start, ended runs
        and deleted pods stop)."""
        prec = self.synced_records.pop(key, None)
        if obj is None or prec is None or not (prec.ipv4 or prec.ipv6):
            self.prober.forget(key)
            return
        specs = _container_models(obj)
        target = prober.Target(
            lab=self.lab,
            pod=key,
            node=prec.node,
            pod_ip=(prec.ipv4 or prec.ipv6 or "").partition("/")[0],
        )
        runs = [
            (specs[c.name], c.restarts, process.alive(c.pid, c.pid_start_time))
            for c in prec.containers
            if c.name in specs
        ]
        self.prober.sync(target, str(obj["metadata"].get("uid")), runs)

    def _on_node(self, node: KubeObject) -> None:
        """A node registered (its Node object): the pod informer of its kubelet, as a node's
        kubelet starts watching its pods once the node is there. So this process can start
        with the lab, before any node is made."""
        name = str((node.get("metadata") or {}).get("name"))
        if name in self.informers:
            return
        inf = Informer(self.kube, PODS, field_selector=f"spec.nodeName={name}", name=name)
        inf.add_handler(self.handler)
        inf.start()
        self.informers[name] = inf
        self.tasks.append(asyncio.create_task(self._adopt(name, inf), name=f"adopt-{name}"))

    async def _adopt(self, node: str, inf: Informer) -> None:
        """Once the node's pods are listed, its pods of the record (this process restarted;
        their processes ran on) are checked against them: those deleted meanwhile go now."""
        await inf.wait_synced()
        rec = await asyncio.to_thread(manager.record, self.lab)
        for p in rec.pods:
            if p.kubelet and p.node == node:
                self.enqueue(p.key)

    def synced(self, node: str) -> bool:
        """Whether the pods of ``node`` are listed (before that, a pod of the record that the
        informer lacks is not known to be deleted)."""
        inf = self.informers.get(node)
        return inf is not None and inf.synced.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        nodes = Informer(self.kube, NODES, name="nodes")
        nodes.add_handler(
            HandlerFuncs(
                add=self._on_node,
                update=lambda _old, new: self._on_node(new),
                delete=lambda _node: None,
            )
        )
        nodes.start()
        self.start_workers()
        self.tasks.append(asyncio.create_task(self._relist(), name="kubelet-relist"))
        try:
            await stop.wait()
        finally:
            await cancel(self.tasks)
            self.executor.shutdown(wait=False, cancel_futures=True)
            await nodes.stop()
            for inf in self.informers.values():
                await inf.stop()

    async def _relist(self) -> None:
        """Every second: pods with a container that ended, a restart due, or a start to retry."""
        while True:
            await asyncio.sleep(RELIST)
            now = time.time()
            for key, at in list(self.retry_at.items()):
                if now >= at:
                    del self.retry_at[key]
                    self.enqueue(key)
            try:
                rec = await asyncio.to_thread(manager.record, self.lab)
            except manager.LabError:
                continue
            for p in rec.pods:
                if p.kubelet and any(
                    c.pid is not None
                    and (
                        not process.alive(c.pid, c.pid_start_time)
                        or (c.restart_at is not None and now >= c.restart_at)
                    )
                    for c in p.containers
                ):
                    self.enqueue(p.key)

    def start_workers(self) -> None:
        """``parallel`` workers, each syncing one pod at a time in a thread of its own."""
        self.executor = ThreadPoolExecutor(self.parallel, thread_name_prefix="pod-sync")
        self.tasks += [
            asyncio.create_task(self._worker(), name=f"kubelet-worker-{i}")
            for i in range(self.parallel)
        ]

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            self.in_flight.add(key)
            try:
                await self._sync_one(key)
            finally:
                self.in_flight.discard(key)
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.enqueue(key)

    async def _sync_one(self, key: str) -> None:
        obj = self.pod(key)
        loop = asyncio.get_running_loop()
        try:
            status = await loop.run_in_executor(self.executor, self.sync, key, obj)
        except Exception as err:
            log.warning("pod %s: %s; again in %.0fs", key, err, RETRY)
            self.retry_at[key] = time.time() + RETRY
            status = self._waiting(obj, str(err)) if obj is not None else None
        self._sync_probes(key, obj)
        if status is not None and obj is not None:
            await self._write_status(obj, status)

    async def _write_status(self, obj: KubeObject, status: Status) -> None:
        meta = obj["metadata"]
        with contextlib.suppress(ApiError):  # a pod deleted meanwhile: its DELETED event follows
            await self.kube.patch(
                PODS, meta["name"], {"status": status}, meta.get("namespace"), subresource="status"
            )

    # ---- one pod (blocking: runs in a thread) ---------------------------------------------

    def sync(self, key: str, obj: KubeObject | None) -> Status | None:
        """Bring pod ``key`` to what the API says; the status to write, if any."""
        rec = manager.record(self.lab)
        prec = next((p for p in rec.pods if p.key == key and p.kubelet), None)
        if prec is not None and not self.synced(prec.node):
            return None  # its node's pods are not listed yet: _adopt enqueues it then
        meta = (obj or {}).get("metadata") or {}
        if prec is not None and (obj is None or meta.get("uid") != prec.uid):
            log.info("pod %s: stopping (deleted or replaced)", key)
            manager.remove_kubelet_pod(rec, prec)
            prec = None
        if obj is None or meta.get("deletionTimestamp"):
            return None
        status = self._start(rec, key, obj) if prec is None else self._tend(rec, prec, obj)
        self.synced_records[key] = next(
            (p for p in rec.pods if p.key == key and p.kubelet), None
        )  # fmt: skip
        return status

    def _start(self, rec: LabRecord, key: str, obj: KubeObject) -> Status | None:
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return None
        reason = refusal(obj, rec.images)
        if reason is not None:
            log.warning("%s", reason)
            return self._status(obj, None, "Failed", reason="ImageWithoutCommand", message=reason)
        started = time.time()
        spec = pod_spec(obj, rec.images)
        try:
            manager.check_containers(spec)  # before anything of the pod is made
        except podsandbox.ContainerConfigError as err:
            if (obj.get("status") or {}).get("reason") == err.reason:
                return None  # reported already (each write would sync the pod again)
            log.warning("pod %s: %s", key, err)
            return self._status(
                obj, None, "Pending", reason=err.reason, message=str(err),
                waiting=(err.reason, str(err)),
            )  # fmt: skip
        try:
            prec = manager.run_api_pod(rec, spec, str(obj["metadata"].get("uid")))
        except BaseException:
            for made in [p for p in rec.pods if p.key == key and p.kubelet]:
                manager.remove_kubelet_pod(rec, made)
            raise
        log.info("pod %s: running, %s", key, prec.ipv4 or prec.ipv6)
        return self._status(obj, prec, "Running", started_at=kubelet.timestamp(started))

    def _tend(self, rec: LabRecord, prec: PodRecord, obj: KubeObject) -> Status | None:
        """Restarts per ``restartPolicy``; the status when something changed."""
        now = time.time()
        changed = False
        spec = None
        for crec in prec.containers:
            if crec.pid is None or process.alive(crec.pid, crec.pid_start_time):
                continue
            if crec.restart_at is None:  # just ended
                crec.last_exit_code = process.exit_status(crec.pid, process.ENDING_WAIT)
                changed = True
                if _restarts(prec.restart_policy, crec.last_exit_code):
                    crec.restart_at = now + _backoff(crec.restarts, rec.max_restart_period_s)
                    log.info(
                        "pod %s: container %s exited (%s), restart in %.0fs",
                        prec.key, crec.name, crec.last_exit_code, crec.restart_at - now,
                    )  # fmt: skip
                else:
                    crec.pid = None  # ended for good
            if crec.restart_at is not None and now >= crec.restart_at:
                spec = spec or pod_spec(obj, rec.images)
                container = next(c for c in spec.spec.containers if c.name == crec.name)
                crec.restarts += 1  # numbers the new run (its log file)
                manager.start_container(rec, spec, prec, crec, container)
                crec.restart_at = None
                changed = True
        due = prec.key in self.status_due
        self.status_due.discard(prec.key)
        if not changed:
            return self._status(obj, prec, prec.phase) if due else None
        if all(c.pid is None for c in prec.containers):
            ok = all(c.last_exit_code == 0 for c in prec.containers)
            prec.phase = "Succeeded" if ok else "Failed"
        manager.save_kubelet_pod(self.lab, prec)
        return self._status(obj, prec, prec.phase)

    # ---- status ---------------------------------------------------------------------------

    def _status(
        self,
        obj: KubeObject,
        prec: PodRecord | None,
        phase: str,
        *,
        started_at: str | None = None,
        reason: str | None = None,
        message: str | None = None,
        waiting: tuple[str, str] | None = None,
    ) -> Status:
        spec = obj.get("spec") or {}
        start = started_at or (obj.get("status") or {}).get("startTime") or kubelet.now()
        records = {c.name: c for c in prec.containers} if prec is not None else {}
        models = _container_models(obj)
        meta = obj.get("metadata") or {}
        uid, key = str(meta.get("uid")), f"{meta.get('namespace', 'default')}/{meta.get('name')}"
        containers = []
        for c in spec.get("containers") or []:
            crec = records.get(c["name"])
            running = crec is not None and process.alive(crec.pid, crec.pid_start_time)
            model = models.get(c["name"])
            restarts = crec.restarts if crec is not None else 0
            containers.append(
                kubelet.ContainerState(
                    name=c["name"],
                    image=c.get("image"),
                    running=running,
                    restarts=crec.restarts if crec is not None else 0,
                    exit_code=crec.last_exit_code if crec is not None else None,
                    waiting=None if crec is not None else (waiting or ("Refused", message or "")),
                    ready=model is None or self.prober.ready(key, uid, model, restarts),
                    started=model is None or self.prober.started(key, uid, model, restarts),
                )
            )
        host_ip = None
        with contextlib.suppress(manager.LabError):
            nrec = manager.node_record(manager.record(self.lab), spec.get("nodeName", ""))
            hosts = manager.node_ips(nrec)  # kubelet's hostIP: the node's (first) InternalIP
            host_ip = hosts[0] if hosts else None
        ips = [a.partition("/")[0] for a in (prec.ipv4, prec.ipv6) if a] if prec else []
        return kubelet.pod_status(
            phase=phase,
            containers=containers,
            container_id=prec.container_id if prec else "",
            pod_ips=ips,
            host_ip=host_ip,
            started_at=start,
            reason=reason,
            message=message,
        )

    def _waiting(self, obj: KubeObject, message: str) -> Status:
        return self._status(
            obj, None, "Pending", waiting=("CreateContainerError", message), message=message
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ciliary-lab-kubelet",
        description="The lab's kubelet role: runs every pod bound to a node of the lab.",
    )
    parser.add_argument("lab")
    parser.add_argument(
        "--parallel",
        type=int,
        default=PARALLEL,
        help=f"pods started, stopped and tended at once (default {PARALLEL})",
    )
    args = parse_args(parser, argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be at least 1, not {args.parallel}")
    kubeconfig = args.kubeconfig or manager.kubeconfig(args.lab)

    async def body(kube: KubeClient, stop: asyncio.Event) -> None:
        await Kubelet(args.lab, kube, parallel=args.parallel).run(stop)

    asyncio.run(serve(kubeconfig, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
