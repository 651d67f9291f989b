"""Pod → pod TCP throughput: ciliary's datapath against what the kernel does without us.

Setups, measured interleaved in one run (this machine is noisy, so each round runs all setups
back to back and the medians are compared):
  bare-veth   two namespaces joined by one veth pair, no BPF: the physical limit here;
  kernel-route  pod → veth → node namespace routed by the kernel (no BPF) → veth → pod: what a
              plain routed CNI does;
  ciliary     two lab pods on one node: pod eth0 → lxc (tc ingress bpf_lxc: conntrack, ipcache,
              events) → bpf_redirect_peer into the peer pod, with monitor aggregation medium.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import iperf3_gbps, iperf3_server, median, scratch_netns, sh, tag
from ciliary.lab import manager

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes: [{{name: {node}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server}}
spec:
  containers: [{{name: main, command: [iperf3, -s]}}]
"""


@contextlib.contextmanager
def bare_veth() -> Iterator[tuple[list[str], str]]:
    t = tag()
    a, b = f"{t}-a", f"{t}-b"
    with scratch_netns([a, b]):
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", ns=a)
        sh("ip", "link", "set", "eth1", "netns", b, ns=a)
        sh("ip", "addr", "add", "10.251.0.1/30", "dev", "eth0", ns=a)
        sh("ip", "addr", "add", "10.251.0.2/30", "dev", "eth1", ns=b)
        sh("ip", "link", "set", "eth0", "up", ns=a)
        sh("ip", "link", "set", "eth1", "up", ns=b)
        with iperf3_server(b):
            yield ["ip", "netns", "exec", a], "10.251.0.2"


@contextlib.contextmanager
def kernel_route() -> Iterator[tuple[list[str], str]]:
    t = tag()
    a, r, b = f"{t}-a", f"{t}-r", f"{t}-b"
    with scratch_netns([a, r, b]):
        for pod, dev, ip, gw in (
            (a, "ra", "10.252.0.2", "10.252.0.1"),
            (b, "rb", "10.252.1.2", "10.252.1.1"),
        ):
            sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", dev, ns=pod)
            sh("ip", "link", "set", dev, "netns", r, ns=pod)
            sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=pod)
            sh("ip", "link", "set", "eth0", "up", ns=pod)
            sh("ip", "route", "add", "default", "via", gw, ns=pod)
            sh("ip", "addr", "add", f"{gw}/24", "dev", dev, ns=r)
            sh("ip", "link", "set", dev, "up", ns=r)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=r)
        with iperf3_server(b):
            yield ["ip", "netns", "exec", a], "10.252.1.2"


@contextlib.contextmanager
def ciliary_pods() -> Iterator[tuple[list[str], str]]:
    t = tag()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yaml"
        path.write_text(LAB.format(lab=t, node=f"{t}n"))
        view = manager.up(path)
        try:
            server = next(p for p in view.pods if p.name == "server")
            client = next(p for p in view.pods if p.name == "client")
            assert server.ipv4 is not None
            yield ["nsenter", f"--net=/run/netns/{client.netns}", "--"], server.ipv4
        finally:
            manager.down(t)


SETUPS = {"bare-veth": bare_veth, "kernel-route": kernel_route, "ciliary": ciliary_pods}


def run(*, rounds: int = 5, seconds: int = 4, streams: int = 1) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in SETUPS}
    with contextlib.ExitStack() as stack:
        targets = {name: stack.enter_context(setup()) for name, setup in SETUPS.items()}
        for prefix, ip in targets.values():  # warm-up, not recorded
            iperf3_gbps(prefix, ip, 1, streams)
        for _ in range(rounds):
            for name, (prefix, ip) in targets.items():
                samples[name].append(iperf3_gbps(prefix, ip, seconds, streams))
    medians = {name: median(v) for name, v in samples.items()}
    return {
        "benchmark": (
            f"pod-to-pod TCP throughput, iperf3 {streams} stream(s), {seconds}s x {rounds}"
        ),
        "unit": "Gbit/s",
        "baseline": "bare-veth",
        "values": medians,
        "samples": samples,
    }
