"""Workloads: what a user's manifests cost on a two-node lab, next to bare CNI ADDs.

1. ``kubectl apply`` of a Deployment of ``replicas`` pods (``sleep infinity`` containers: the
   lab has no images, and a pod process's own size is not what is measured) → every pod Ready,
   through the whole chain: API server, controller manager (Deployment → ReplicaSet → Pods),
   scheduler (spread over both nodes), the kubelet role (sandbox, CNI ADD through each node's
   agent, container, status). Per pod: from the pod's ADDED event to the event where its
   ``Ready`` condition is ``True``, both as seen by a watch (an informer in this process): the
   Pod's own timestamps are whole seconds. Total: from just before ``kubectl apply`` to the last
   pod Ready. Baseline, in the same run: bare CNI ADDs of the same number of pods through
   ciliary's plugin (the ``cni`` group's measurement: ADD → pod answers a ping, one node, no API
   server, controllers or kubelet), per pod and summed.
2. Agent RSS (``VmRSS``, each node's agent; the larger of the two) with 0 workload pods, with
   the Deployment's ``replicas`` pods, and after ``kubectl scale`` to ``scale_to`` pods (spread
   over both nodes), or as many hundreds as the first pods' rate says fit in ``SCALE_BUDGET_S``;
   2 s settle before each reading.
3. Policy change → enforced on every node: a CNP selecting the Deployment's pods is applied with
   ``kubectl apply`` alternately allowing and denying TCP 9100 from the Deployment's pods
   (ingress always enforced: the denied state allows 9001 only). On each node one of its pods
   probes another (the lab's nodes route no pod traffic to each other) with connect attempts on
   9100 (no listener: a RST means the policy let
   the SYN through, a timeout that it was dropped, as the ``policy`` group does). Per change,
   from just before ``kubectl apply``: kubectl returned, and the later of the two nodes' packet
   verdicts; p50/p99 over ``flips`` changes. Every change regenerates every pod's endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import cni_latency
from bench.common import median, rss_mib, tag
from bench.policy_bench import _pct, _wait_verdict
from ciliary.datapath.linux import netns
from ciliary.k8s.resources import by_kind
from ciliary.kube.client import KubeClient, KubeObject, object_key
from ciliary.kube.informer import HandlerFuncs, Informer
from ciliary.lab import manager

GROUP = "workloads"
REPLICAS = 100
SCALE_TO = 1000
SCALE_BUDGET_S = 360.0
"""The scale-up runs only as far as fits this time at the rate the first ``replicas`` pods got
Ready (in hundreds of pods): 1000 pods may not, on two cores."""
FLIPS = 10
KUBECTL = "/usr/bin/kubectl"

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  ipam:
    clusterPoolIPv4MaskSize: 22
    clusterPoolIPv6MaskSize: 118
  nodes: [{{name: {lab}a}}, {{name: {lab}b}}]
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: bench, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: bench}}}}
  template:
    metadata: {{labels: {{app: bench}}}}
    spec:
      containers:
      - {{name: main, image: debian, command: [sleep, infinity]}}
"""

FLIP = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bench-flip, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: bench}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: bench}}}}]
    toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]
"""


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    res = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True, text=True, timeout=120, check=False, input=stdin,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def _ready(pod: KubeObject) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class _PodTimes:
    """Monotonic times of each bench pod's first ADDED event and first Ready, from a watch."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.changed = asyncio.Event()

    def see(self, pod: KubeObject) -> None:
        now = time.monotonic()
        key = object_key(pod)
        self.created.setdefault(key, now)
        if _ready(pod):
            self.ready.setdefault(key, now)
        self.changed.set()

    def ready_count(self) -> int:
        return sum(1 for k in self.ready if k in self.created)


async def _scale(
    kubeconfig: Path, argv: list[str], stdin: str | None, want: int, limit_s: float
) -> tuple[_PodTimes, float, float]:
    """Run a kubectl command, then wait until ``want`` bench pods are Ready: (the times of the
    pods created since, the command's start, the last pod Ready)."""
    client = await KubeClient.connect(kubeconfig)
    times = _PodTimes()
    informer = Informer(
        client, by_kind("v1", "Pod"), namespace="default", label_selector="app=bench"
    )
    try:
        informer.start()
        await informer.wait_synced(60)
        before = set(informer.store.keys())
        informer.add_handler(HandlerFuncs(add=times.see, update=lambda _old, new: times.see(new)))
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, "--kubeconfig", str(kubeconfig), *argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate(stdin.encode() if stdin else None)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(argv)}: {err.decode().strip()}")
        deadline = t0 + limit_s
        while True:
            ready = [o for o in informer.store.objects() if _ready(o)]
            if len(ready) >= want:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ready)} of {want} pods Ready after {limit_s:.0f}s")
            times.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(times.changed.wait(), 5)
        for key in before:  # only pods this command made
            times.created.pop(key, None)
        end = max(times.ready.values(), default=t0)
        return times, t0, end
    finally:
        await informer.stop()
        await client.close()


def _agents_rss(lab: str) -> float:
    pids = [n.agent_pid for n in manager.record(lab).nodes]
    return max(rss_mib(pid) for pid in pids if pid is not None)


@contextlib.contextmanager
def _two_nodes() -> Iterator[tuple[str, Path]]:
    t = tag()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yaml"
        path.write_text(LAB.format(lab=t))
        manager.up(path)
        try:
            yield t, manager.kubeconfig(t)
        finally:
            manager.down(t)


def _policy_flips(lab: str, kubeconfig: Path, flips: int) -> dict[str, list[float]]:
    by_node: dict[str, list[Any]] = {}
    for p in manager.record(lab).pods:
        if p.name.startswith("bench-") and p.ipv4:
            by_node.setdefault(p.node, []).append(p)
    # on each node one pod probes another (the lab's nodes route no pod traffic to each other)
    pairs = [(ps[0].netns, ps[1].ipv4.partition("/")[0]) for ps in by_node.values() if len(ps) > 1]
    if len(pairs) < 2:
        raise RuntimeError(f"not two Deployment pods on each node: {sorted(by_node)}")
    out: dict[str, list[float]] = {"kubectl": [], "enforced": []}
    with contextlib.ExitStack() as stack:
        probers = [
            stack.enter_context(ThreadPoolExecutor(1, initializer=netns.enter, initargs=(ns,)))
            for ns, _ in pairs
        ]
        _kubectl(kubeconfig, "apply", "-f", "-", stdin=FLIP.format(port=9100))
        t0 = time.monotonic()
        for prober, (_, ip) in zip(probers, pairs, strict=True):
            prober.submit(_wait_verdict, ip, True, t0, 30.0).result()
        allowed = True
        for _ in range(flips):
            allowed = not allowed
            t0 = time.monotonic()
            waits = [
                prober.submit(_wait_verdict, ip, allowed, t0, 10.0)
                for prober, (_, ip) in zip(probers, pairs, strict=True)
            ]
            _kubectl(
                kubeconfig, "apply", "-f", "-", stdin=FLIP.format(port=9100 if allowed else 9001)
            )
            out["kubectl"].append((time.monotonic() - t0) * 1e3)
            out["enforced"].append(max(w.result() for w in waits) * 1e3)
            time.sleep(0.2)
        _kubectl(kubeconfig, "delete", "cnp", "bench-flip")
    return out


def run(
    *,
    replicas: int = REPLICAS,
    scale_to: int = SCALE_TO,
    flips: int = FLIPS,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    bare = cni_latency.ciliary_adds(replicas)
    log(f"workloads: {replicas} bare CNI ADDs in {sum(bare['reachable']) / 1e3:.1f}s")
    rss: dict[str, float] = {}
    with _two_nodes() as (lab, kubeconfig):
        time.sleep(2)
        rss["0 pods"] = _agents_rss(lab)
        times, t0, end = asyncio.run(
            _scale(
                kubeconfig,
                ["apply", "-f", "-"],
                DEPLOYMENT.format(replicas=replicas),
                replicas,
                limit_s=600,
            )
        )
        per_pod = [(times.ready[k] - times.created[k]) * 1e3 for k in times.created]
        total_s = end - t0
        log(f"workloads: {replicas} pods Ready in {total_s:.1f}s")
        time.sleep(2)
        rss[f"{replicas} pods"] = _agents_rss(lab)
        changes = _policy_flips(lab, kubeconfig, flips)
        log(f"workloads: {flips} policy changes, enforced p50 {median(changes['enforced']):.0f} ms")
        scale_s = None
        fits = replicas + int(SCALE_BUDGET_S / (total_s / replicas)) // 100 * 100
        if fits < scale_to:
            log(f"workloads: {scale_to} pods would take over {SCALE_BUDGET_S:.0f}s, {fits} instead")
            scale_to = fits
        if scale_to > replicas:
            _, s0, s1 = asyncio.run(
                _scale(
                    kubeconfig,
                    ["scale", "deployment/bench", f"--replicas={scale_to}"],
                    None,
                    scale_to,
                    limit_s=1800,
                )
            )
            scale_s = s1 - s0
            log(f"workloads: scaled to {scale_to} pods in {scale_s:.0f}s")
            time.sleep(2)
            rss[f"{scale_to} pods"] = _agents_rss(lab)
    results: list[dict[str, Any]] = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        results.append({
            "benchmark": f"pod → Ready, {label} over {replicas} pods",
            "unit": "ms",
            "baseline": "bare CNI ADD → reachable",
            "values": {
                "bare CNI ADD → reachable": _pct(bare["reachable"], q),
                "Deployment pod created → Ready": _pct(per_pod, q),
            },
        })  # fmt: skip
    results.append({
        "benchmark": f"{replicas} pods, total",
        "unit": "s",
        "baseline": "bare CNI ADDs, one after another",
        "values": {
            "bare CNI ADDs, one after another": sum(bare["reachable"]) / 1e3,
            "kubectl apply Deployment → all Ready": total_s,
            **({f"kubectl scale {replicas} → {scale_to} → all Ready": scale_s} if scale_s else {}),
        },
    })  # fmt: skip
    results.append({
        "benchmark": "agent memory (RSS), the larger of the two nodes' agents",
        "unit": "MiB",
        "baseline": "0 pods",
        "values": rss,
    })  # fmt: skip
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        results.append({
            "benchmark": (
                f"policy change → enforced on both nodes ({replicas} pods selected), {label} over"
                f" {flips} kubectl applies"
            ),
            "unit": "ms",
            "baseline": "kubectl apply returned",
            "values": {
                "kubectl apply returned": _pct(changes["kubectl"], q),
                "packet verdict on both nodes": _pct(changes["enforced"], q),
            },
        })  # fmt: skip
    results[-1]["samples"] = changes
    for res in results:
        res["group"] = GROUP
    return results
