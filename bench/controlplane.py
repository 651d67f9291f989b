"""Control plane: the agent's memory and CPU with 0, 100 and 1000 endpoints.

One lab node (its agent, plus the lab's cluster DNS pod) with 20 CiliumNetworkPolicies: policy
``j`` selects ``app: cp-j`` and allows ``app: cp-(j+1)`` on TCP 80, so every endpoint is enforced
and a new identity regenerates the endpoints that select it, as in a cluster. Endpoints are added
through the agent's API (``PUT /v1/endpoint``, what ``ciliary-cni`` calls; the plugin's own
start-up is measured by the ``cni`` group), one at a time, each into its own scratch network
namespace held by its bind mount: no pod process. A probe of ``lab apply`` with 20 pods running
``ciliary workload pause`` took 278 ms per pod and 54 MiB of RSS per pod process: 1000 lab pods
would need ~5 min and ~53 GiB, and the agent's work does not depend on the pods' processes. Labels
``app: cp-(i mod 20)``, so 20 identities.

Per level, after a 2 s settle: agent RSS (``VmRSS``) and agent CPU while idle (run time of all
its threads from ``/proc/<pid>/task/*/schedstat`` over 1 s windows, % of one core), medians of
``samples`` windows; then one policy change (a CNP on ``app: cp-0`` re-imported alternating
between TCP 8080 and 8081, one import not timed, then ``samples``): API round trip and agent CPU
time, medians. Between levels: wall time and agent CPU time per endpoint added. Ratios are
against 0 endpoints.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, median, rss_mib, tag
from ciliary.client.agent import AgentClient
from ciliary.core.models import EndpointCreateRequest
from ciliary.datapath.linux import netns
from ciliary.lab import manager

GROUP = "controlplane"
LEVELS = (0, 100, 1000)
APPS = 20

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  ipam:
    clusterPoolIPv4MaskSize: 21
    clusterPoolIPv6MaskSize: 116
  nodes: [{{name: {node}}}]
"""

POLICY = """\
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: cp-{j}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: cp-{j}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: cp-{peer}}}}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""

FLIP = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: cp-flip, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: cp-0}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: cp-1}}}}]
    toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]
"""


def _idle(pid: int, samples: int) -> tuple[list[float], list[float]]:
    time.sleep(2)  # settle: the last regenerations, GC
    rss, cpu = [], []
    for _ in range(samples):
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(1)
        cpu.append((cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100)
        rss.append(rss_mib(pid))
    return rss, cpu


def _policy_changes(cl: AgentClient, pid: int, count: int) -> tuple[list[float], list[float]]:
    """``count`` imports of one rule alternating between two ports (after one not timed):
    (API round trips ms, agent CPU ms) per import."""
    wall, used = [], []
    for n in range(count + 1):
        text = FLIP.format(port=8080 + n % 2)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        cl.policy_import(text, "cp-flip.yaml")
        if n > 0:
            wall.append((time.monotonic() - t0) * 1e3)
            used.append((cpu_seconds(pid) - c0) * 1e3)
    return wall, used


def run(
    *,
    levels: tuple[int, ...] = LEVELS,
    samples: int = 5,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    t = tag()
    names: list[str] = []
    rss: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    change_ms: dict[str, list[float]] = {}
    change_cpu_ms: dict[str, list[float]] = {}
    add_ms: dict[str, float] = {}
    add_cpu_ms: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yaml"
        text = LAB.format(lab=t, node=f"{t}n")
        text += "".join(POLICY.format(j=j, peer=(j + 1) % APPS) for j in range(APPS))
        path.write_text(text)
        manager.up(path)
        try:
            nrec = manager.record(t).nodes[0]
            assert nrec.agent_pid is not None
            pid = nrec.agent_pid
            with AgentClient(Path(nrec.socket), timeout=120) as cl:
                done = 0
                for level in levels:
                    label = f"{level} endpoints"
                    if level > done:
                        c0, t0 = cpu_seconds(pid), time.monotonic()
                        for i in range(done, level):
                            name = f"{t}-cp{i}"
                            names.append(name)
                            netns.create(name)
                            cl.create_endpoint(
                                EndpointCreateRequest(
                                    container_id=f"{t}-cp{i}",
                                    netns=f"/run/netns/{name}",
                                    pod_name=f"cp{i}",
                                    labels={"app": f"cp-{i % APPS}"},
                                )
                            )
                        wall, used = time.monotonic() - t0, cpu_seconds(pid) - c0
                        add_ms[f"{done} → {level}"] = wall * 1e3 / (level - done)
                        add_cpu_ms[f"{done} → {level}"] = used * 1e3 / (level - done)
                        log(f"controlplane: {level} endpoints in {wall:.1f}s")
                        done = level
                    if len(cl.endpoints()) < level:
                        raise RuntimeError(f"the agent lists fewer than {level} endpoints")
                    rss[label], cpu[label] = _idle(pid, samples)
                    change_ms[label], change_cpu_ms[label] = _policy_changes(cl, pid, samples)
        finally:
            manager.down(t)  # the node netns and with it every lxc veth
            for name in names:
                netns.remove(name)
    base = f"{levels[0]} endpoints"

    def result(title: str, short: str, unit: str, per: dict[str, list[float]]) -> dict[str, Any]:
        return {
            "benchmark": title,
            "short": short,  # the plot's title
            "unit": unit,
            "baseline": base,
            "values": {k: median(v) for k, v in per.items()},
            "samples": per,
            "group": GROUP,
        }

    return [
        result(f"agent memory (RSS), median of {samples} samples", "agent RSS", "MiB", rss),
        result(
            f"agent CPU while idle, % of one core, median of {samples} x 1s",
            "agent CPU while idle",
            "%",
            cpu,
        ),
        result(
            f"one policy change (import, all endpoints regenerated), API round trip, median of"
            f" {samples}",
            "one policy change: API round trip",
            "ms",
            change_ms,
        ),
        result(
            f"one policy change, agent CPU time, median of {samples}",
            "one policy change: agent CPU",
            "ms",
            change_cpu_ms,
        ),
        {
            "benchmark": "endpoint creation through the agent API, per endpoint",
            "unit": "ms",
            "baseline": None,
            "values": {
                **{f"wall, {k}": v for k, v in add_ms.items()},
                **{f"agent CPU, {k}": v for k, v in add_cpu_ms.items()},
            },
            "group": GROUP,
        },
    ]
