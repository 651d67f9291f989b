"""CNI ADD latency: time from the runtime executing the plugin to a pod that answers, over 100
pods, for ciliary and for the reference ``bridge`` + ``host-local`` chain (a plain CNI with no
policy, no identity, no datapath programs) measured in the same run.

For ciliary the time is split with the endpoint's own state log (wall-clock transitions):
  plugin start   exec of ciliary-cni → the agent receives the request (interpreter + imports);
  IPAM+identity  request → regenerating (addresses persisted, identity allocated);
  datapath       regenerating → ready (veth, addresses, routes, maps, programs attached: the pod's
                 policy is enforced from here on);
  return         ready → the runtime has the result (answer, plugin exit, nsenter).
"ADD→reachable" adds the first successful ping from another pod.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import scratch_netns, sh, tag
from ciliary.client.agent import AgentClient
from ciliary.lab import manager, process
from ciliary.lab.cniruntime import CNIRuntime

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  ipam:
    clusterPoolIPv4MaskSize: 22
    clusterPoolIPv6MaskSize: 118
  nodes: [{{name: {node}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: prober}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ping_until(prober_ns: str, ip: str, deadline_s: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        res = subprocess.run(
            ["nsenter", f"--net=/run/netns/{prober_ns}", "--", "ping", "-c1", "-W1", ip],
            capture_output=True, check=False,
        )  # fmt: skip
        if res.returncode == 0:
            return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"{ip} never became reachable")


def ciliary_adds(pods: int) -> dict[str, list[float]]:
    """``pods`` CNI ADDs through ciliary's plugin on a one-node lab, one after another (ms per
    pod: ``add``, ``reachable`` and the split of the ADD; see the module docstring)."""
    t = tag()
    out: dict[str, list[float]] = {
        k: [] for k in ("add", "reachable", "plugin", "ipam", "datapath", "return")
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yaml"
        node = f"{t}n"
        path.write_text(LAB.format(lab=t, node=node))
        view = manager.up(path)
        try:
            rec = manager.record(t)
            nrec = rec.nodes[0]
            prober = view.pods[0].netns
            runtime = manager._cni(rec, nrec)
            names = [f"{t}-p{i}" for i in range(pods)]
            with scratch_netns(names):
                with AgentClient(Path(nrec.socket)) as cl:
                    for i, name in enumerate(names):
                        cid = f"{t}-bench-{i}"
                        t0w, t0 = time.time(), time.monotonic()
                        runtime.add(cid, f"/run/netns/{name}", "eth0")
                        t1w, t1 = time.time(), time.monotonic()
                        ep = next(e for e in cl.endpoints() if e.container_id == cid)
                        assert ep.ipv4 is not None
                        t2 = _ping_until(prober, ep.ipv4)
                        log = {c.state.value: c.time for c in ep.log}
                        out["add"].append((t1 - t0) * 1e3)
                        out["reachable"].append((t2 - t0) * 1e3)
                        out["plugin"].append((log["creating"] - t0w) * 1e3)
                        out["ipam"].append((log["regenerating"] - log["creating"]) * 1e3)
                        out["datapath"].append((log["ready"] - log["regenerating"]) * 1e3)
                        out["return"].append((t1w - log["ready"]) * 1e3)
                for i, name in enumerate(names):
                    runtime.delete(f"{t}-bench-{i}", f"/run/netns/{name}", "eth0")
        finally:
            manager.down(t)
    return out


def _bridge(pods: int) -> dict[str, list[float]]:
    """The reference chain, run in a scratch "node" netns with its own conf dir."""
    t = tag()
    node, prober = f"{t}-node", f"{t}-prober"
    out: dict[str, list[float]] = {"add": [], "reachable": []}
    with tempfile.TemporaryDirectory() as tmp, scratch_netns([node]):
        conf_dir = Path(tmp) / "net.d"
        conf_dir.mkdir()
        (conf_dir / "10-bridge.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "bench-bridge",
            "plugins": [{
                "type": "bridge", "bridge": "cbr0", "isGateway": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.253.0.0/22"}]],
                         "dataDir": str(Path(tmp) / "host-local")},
            }],
        }))  # fmt: skip
        runtime = CNIRuntime(
            conf_dir,
            [process.venv_bin(), Path("/usr/lib/cni")],
            netns_of_runtime=f"/run/netns/{node}",
        )
        names = [f"{t}-p{i}" for i in range(pods)]
        with scratch_netns([prober, *names]):
            prober_ip = runtime.add(f"{t}-prober", f"/run/netns/{prober}", "eth0")
            del prober_ip
            for i, name in enumerate(names):
                t0 = time.monotonic()
                res = runtime.add(f"{t}-b{i}", f"/run/netns/{name}", "eth0")
                t1 = time.monotonic()
                ip = res["ips"][0]["address"].split("/")[0]
                t2 = _ping_until(prober, ip)
                out["add"].append((t1 - t0) * 1e3)
                out["reachable"].append((t2 - t0) * 1e3)
            for i, name in enumerate(names):
                runtime.delete(f"{t}-b{i}", f"/run/netns/{name}", "eth0")
            runtime.delete(f"{t}-prober", f"/run/netns/{prober}", "eth0")
        sh("ip", "link", "del", "cbr0", ns=node, check=False)
    return out


def run(*, pods: int = 100) -> list[dict[str, Any]]:
    base = _bridge(pods)
    ours = ciliary_adds(pods)
    results = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        results.append({
            "benchmark": f"CNI ADD → pod reachable, {label} over {pods} pods",
            "unit": "ms",
            "baseline": "bridge+host-local",
            "values": {
                "bridge+host-local": _pct(base["reachable"], q),
                "ciliary": _pct(ours["reachable"], q),
            },
        })  # fmt: skip
    results.append({
        "benchmark": f"ciliary CNI ADD time split, median over {pods} pods",
        "unit": "ms",
        "baseline": None,
        "values": {
            "plugin start": statistics.median(ours["plugin"]),
            "IPAM + identity": statistics.median(ours["ipam"]),
            "datapath (policy enforced)": statistics.median(ours["datapath"]),
            "return to runtime": statistics.median(ours["return"]),
            "ADD total": statistics.median(ours["add"]),
            "bridge+host-local ADD total": statistics.median(base["add"]),
        },
    })  # fmt: skip
    return results
