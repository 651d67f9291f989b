"""Container probes as kubelet runs them: readiness, liveness and startup.

Why: a Service's backends are its *ready* pods (the EndpointSlice controller copies the Pod's
``Ready`` condition into ``conditions.ready``, and every agent drops an unready backend from its
maps), and users' manifests say what ready means with a ``readinessProbe``. Without probes a pod
would be Ready as soon as its processes run, before its server listens, and would stay Ready with
a wedged server; with them, the lab behaves as a cluster does when a backend goes unready.

Semantics (kubelet's ``prober`` package):

* a probe runs every ``periodSeconds`` after ``initialDelaySeconds``, each attempt bounded by
  ``timeoutSeconds``; its result flips only after ``successThreshold`` consecutive successes or
  ``failureThreshold`` consecutive failures;
* **readiness** starts as failed (a container is not Ready before its first success); without a
  readiness probe a running container is Ready;
* **liveness** starts as succeeded; ``failureThreshold`` failures in a row kill the container,
  which then restarts per the pod's ``restartPolicy`` (the kubelet's usual restart path);
* **startup**: until it succeeds, neither readiness nor liveness runs and the container is not
  Ready; its failures kill the container as liveness failures do;
* a restarted container starts over (readiness failed again, startup not yet succeeded).

Where probes come from: ``httpGet`` and ``tcpSocket`` connect from the *node's* network namespace
to the pod's IP (kubelet runs in the host's network namespace: the packets cross the pod's
datapath as traffic from the ``host`` identity, which Cilium allows by default); ``exec`` runs the
command inside the pod (its netns and mount view, as ``kubectl exec``). ``grpc`` probes need a
gRPC channel opened inside another network namespace, which grpcio cannot do: they fail, with a
message saying so.

The probe I/O runs in worker threads (``setns`` moves only the calling thread); the state machine
(:class:`ProbeState`) is pure and tested on its own.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from ciliary.datapath.linux import netns
from ciliary.datapath.linux.link import in_netns
from ciliary.k8s import core
from ciliary.lab import manager, process

log = logging.getLogger("ciliary.lab.prober")

Kind = Literal["readiness", "liveness", "startup"]
USER_AGENT = "kube-probe/1.34"  # kubelet's, with the minor version of the API the lab serves


@dataclass
class ProbeState:
    """One probe's result with kubelet's thresholds: :meth:`record` each attempt's outcome."""

    success_threshold: int
    failure_threshold: int
    ok: bool
    successes: int = 0
    failures: int = 0

    def record(self, success: bool) -> bool:
        """Takes one attempt's outcome; whether the probe's result changed."""
        if success:
            self.successes, self.failures = self.successes + 1, 0
            if not self.ok and self.successes >= self.success_threshold:
                self.ok = True
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.ok and self.failures >= self.failure_threshold:
                self.ok = False
                return True
        return False


def initial_state(kind: Kind, probe: core.Probe) -> ProbeState:
    """Readiness and startup start failed, liveness succeeded (kubelet's initial results)."""
    return ProbeState(probe.success_threshold, probe.failure_threshold, ok=kind == "liveness")


@dataclass(frozen=True)
class Target:
    """What a probe of one container reaches: the lab, pod, node and the pod's IP."""

    lab: str
    pod: str  # namespace/name
    node: str
    pod_ip: str


def _host(action_host: str | None, target: Target) -> str:
    return action_host or target.pod_ip


def _node_netns(target: Target) -> str:
    return str(netns.path_of(manager.node_netns(target.lab, target.node)))


def _connect(target: Target, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection from the node's network namespace (where kubelet runs)."""
    with in_netns(_node_netns(target)):
        return socket.create_connection((host, port), timeout=timeout)


def http_get(
    target: Target, action: core.HTTPGetAction, port: int, timeout: float
) -> tuple[bool, str]:
    """kubelet's HTTP probe: success when 200 <= status < 400 (redirects are not followed)."""
    host = _host(action.host, target)
    sock = _connect(target, host, port, timeout)
    if action.scheme == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # kubelet does not verify probe certificates either
        sock = ctx.wrap_socket(sock, server_hostname=host)
    hostport = f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock
    try:
        headers = {"Host": hostport, "User-Agent": USER_AGENT, "Accept": "*/*"}
        headers |= {h.name: h.value for h in action.http_headers}
        conn.request("GET", action.path or "/", headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    if 200 <= status < 400:
        return True, f"HTTP probe succeeded with statuscode: {status}"
    return False, f"HTTP probe failed with statuscode: {status}"


def tcp_socket(
    target: Target, action: core.TCPSocketAction, port: int, timeout: float
) -> tuple[bool, str]:
    _connect(target, _host(action.host, target), port, timeout).close()
    return True, ""


def exec_probe(target: Target, action: core.ExecAction, timeout: float) -> tuple[bool, str]:
    try:
        done = manager.run_in_pod(target.pod, action.command, name=target.lab, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout:g}s"
    output = (done.stdout + done.stderr).strip()
    return done.returncode == 0, output


def run_probe(target: Target, container: core.Container, probe: core.Probe) -> tuple[bool, str]:
    """One attempt (blocking; a worker thread runs it): (success, kubelet's message)."""
    timeout = float(probe.timeout_seconds)
    try:
        if probe.http_get is not None:
            port = container.port_number(probe.http_get.port)
            return http_get(target, probe.http_get, port, timeout)
        if probe.tcp_socket is not None:
            port = container.port_number(probe.tcp_socket.port)
            return tcp_socket(target, probe.tcp_socket, port, timeout)
        if probe.exec is not None:
            return exec_probe(target, probe.exec, timeout)
    except (OSError, http.client.HTTPException, ValueError) as err:
        return False, f"probe error: {err}"
    return False, "grpc probes are not run by the lab's kubelet (no gRPC channel in a pod netns)"


@dataclass
class ContainerProbes:
    """The probes of one run of one container (a restart makes a new one)."""

    readiness: ProbeState | None
    liveness: ProbeState | None
    startup: ProbeState | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return self.startup is None or self.startup.ok

    @property
    def ready(self) -> bool:
        return self.started and (self.readiness is None or self.readiness.ok)


Run = tuple[str, str, str, int]  # pod key, pod uid, container name, restart count


class Prober:
    """Probe workers of every container of the pods this kubelet runs.

    ``on_change(pod_key)`` is called when a container's readiness or started state changes (the
    kubelet then writes the pod's status); ``kill(pod_key, container)`` when liveness or startup
    failed (the kubelet stops the container, its restart policy applies).
    """

    def __init__(
        self,
        lab: str,
        on_change: Callable[[str], None],
        kill: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.lab = lab
        self.on_change = on_change
        self.kill = kill
        self.runs: dict[Run, ContainerProbes] = {}

    def ready(self, pod_key: str, uid: str, spec: core.Container, restarts: int) -> bool:
        """Whether this run of the container is Ready as far as its probes go: True without
        readiness or startup probe; a run whose probes have not started yet is not Ready."""
        probes = self.runs.get((pod_key, uid, spec.name, restarts))
        if probes is None:
            return spec.readiness_probe is None and spec.startup_probe is None
        return probes.ready

    def started(self, pod_key: str, uid: str, spec: core.Container, restarts: int) -> bool:
        """Whether the run has passed its startup probe (True without one)."""
        probes = self.runs.get((pod_key, uid, spec.name, restarts))
        if probes is None:
            return spec.startup_probe is None
        return probes.started

    def sync(
        self,
        target: Target,
        uid: str,
        containers: list[tuple[core.Container, int, bool]],
    ) -> None:
        """Runs the probes of ``containers`` (spec, restart count, running) of the pod
        ``target.pod``; stops those of its runs that ended (:meth:`forget`: a pod that is
        gone)."""
        wanted: set[Run] = set()
        for spec, restarts, running in containers:
            if not running:
                continue
            run = (target.pod, uid, spec.name, restarts)
            wanted.add(run)
            if run not in self.runs:
                self._start(run, target, spec)
        for run in [r for r in self.runs if r[0] == target.pod and r not in wanted]:
            self._stop(run)

    def forget(self, pod_key: str) -> None:
        """The pod is gone: stop its probes."""
        for run in [r for r in self.runs if r[0] == pod_key]:
            self._stop(run)

    def _start(self, run: Run, target: Target, spec: core.Container) -> None:
        def state(kind: Kind, probe: core.Probe | None) -> ProbeState | None:
            return initial_state(kind, probe) if probe is not None else None

        probes = ContainerProbes(
            readiness=state("readiness", spec.readiness_probe),
            liveness=state("liveness", spec.liveness_probe),
            startup=state("startup", spec.startup_probe),
        )
        self.runs[run] = probes
        kinds: list[tuple[Kind, core.Probe | None]] = [
            ("startup", spec.startup_probe),
            ("readiness", spec.readiness_probe),
            ("liveness", spec.liveness_probe),
        ]
        for kind, probe in kinds:
            if probe is not None:
                task = asyncio.create_task(
                    self._worker(run, target, spec, probe, kind=kind, probes=probes),
                    name=f"probe-{kind}-{run[0]}-{run[2]}",
                )
                probes.tasks.append(task)

    def _stop(self, run: Run) -> None:
        probes = self.runs.pop(run)
        for task in probes.tasks:
            task.cancel()

    async def _worker(
        self,
        run: Run,
        target: Target,
        spec: core.Container,
        probe: core.Probe,
        *,
        kind: Kind,
        probes: ContainerProbes,
    ) -> None:
        state = {
            "readiness": probes.readiness, "liveness": probes.liveness, "startup": probes.startup
        }[kind]  # fmt: skip
        assert state is not None
        await asyncio.sleep(probe.initial_delay_seconds)
        while True:
            if kind == "startup" and state.ok:
                return  # succeeded once: startup probes stop
            if kind == "startup" or probes.started:
                began = time.monotonic()
                ok, message = await asyncio.to_thread(run_probe, target, spec, probe)
                if not ok:
                    log.info(
                        "pod %s container %s: %s probe failed: %s", run[0], run[2], kind, message
                    )
                if state.record(ok):
                    log.info(
                        "pod %s container %s: %s probe %s",
                        run[0], run[2], kind, "succeeded" if state.ok else "failed",
                    )  # fmt: skip
                    if kind != "readiness" and not state.ok:
                        await self.kill(run[0], run[2])  # the restart makes a new run
                        return
                    self.on_change(run[0])
                wait = probe.period_seconds - (time.monotonic() - began)
            else:
                wait = probe.period_seconds
            await asyncio.sleep(max(wait, 0.0))


def kill_container(lab: str, pod_key: str, container: str) -> None:
    """Stops a container whose liveness (or startup) probe failed; the kubelet's relist sees it
    exit and restarts it per the pod's restartPolicy."""
    rec = manager.record(lab)
    prec = next((p for p in rec.pods if p.key == pod_key and p.kubelet), None)
    crec = next((c for c in prec.containers if c.name == container), None) if prec else None
    if crec is not None and crec.pid is not None:
        process.stop_group(crec.pid, crec.pid_start_time, timeout=1.0)
