"""Same-node pod → pod datapath: ciliary against the kernel without BPF and against iptables.

Every setup is a client namespace and a server namespace holding three servers (iperf3, sockperf,
``connrate``: ``bench/tools.py``), and all setups exist at once, so each round measures every
setup back to back (interleaved: this machine is noisy, drift hits all of them alike). Metrics:
  TCP throughput   iperf3, 1 stream and 4 streams (Gbit/s, receiver side);
  latency          sockperf TCP ping-pong, 64-byte messages, full round trip, p50 and p99 (usec);
  connection rate  connrate: connect, 64 B request, 64 B response, close, serially (netperf
                   TCP_CRR style, C), connections per second.
Setups:
  a  bare veth      two namespaces joined by one veth pair, kernel only: the physical limit;
  route             pod → veth → node namespace routed by the kernel → veth → pod, no filter;
  tc floor          pod → veth → a node namespace's tc ingress → pod, as ciliary's path but with
                    a minimal program (``bench/tcfloor.c``: one store of the MACs, then
                    ``bpf_redirect_peer``, attached to the tcx hook as ciliary's are): what the
                    hook and the redirect cost without ``bpf_lxc``, so b's gap splits into the
                    hook's and the program's;
  b  ciliary        a lab node, client and server pods, a CiliumNetworkPolicy allowing the client
                    on the server's ports (TCP 5200-5203: one L3/L4 entry; with the host's allow
                    and the egress allow-all the server's map holds 3), enforced by bpf_lxc
                    (conntrack, ipcache, both policy lookups, events, redirect_peer), monitor
                    aggregation medium (the default);
  ciliary Nk        the same on other nodes of the same lab (each node has its own agent and
                    maps, so every size exists at once), with the server's policy map grown to N
                    entries and the node's ipcache to N more identities (below);
  c  iptables       the ``route`` topology with the node filtering as iptables-based CNIs do: in
                    FORWARD, traffic to the server's veth jumps to a per-pod chain holding
                    ``ctstate RELATED,ESTABLISHED -j ACCEPT`` first, then N-1 non-matching
                    allows (other /32 sources, same ports), then the client's allow, then DROP;
                    N = 1, 1k, 10k and 65k (as far as ciliary goes), loaded with one
                    ``iptables-restore`` in the node namespace.
Policy scale: synthetic identities 100000.. each get one ipcache entry (a /32 in 10.230/16,
written into the node's pinned ``ciliary_ipcache``) and one ingress allow in the server's pinned
policy map (same shape as the real one: TCP 5200/14), written after the policy was realized,
totalling N = 1k, 10k and 65k entries (the per-endpoint map holds 65536). The counts are checked
unchanged after the rounds (nothing regenerated the endpoint meanwhile).
Also recorded: each ciliary node's agent CPU for every run (it decodes the datapath's events),
including what it spends after the run on the events left in the ring buffer; every run starts
once all agents are idle again. And b's cil_from_container run time per packet (the kernel's
bpf_stats: run_time_ns / run_cnt; both directions of a pod-to-pod connection run it) during
latency and connection-rate runs of their own after the rounds (``program_run_time``: stats on
for those runs only, so the ratios do not carry the counting's cost).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import tools
from bench.common import cpu_seconds, median, scratch_netns, sh, tag
from ciliary.datapath.libbpf import BPFObject, Map, tcx_attach
from ciliary.datapath.linux import link
from ciliary.datapath.loader import FROM_CONTAINER
from ciliary.datapath.maps.ipcache import IPCacheMap
from ciliary.datapath.maps.policy import EndpointPolicyMap, PolicyKey, PolicyValue
from ciliary.lab import manager

GROUP = "datapath"
SCALE = (1, 1_000, 10_000, 65_000)  # ciliary: policy map entries (+ ipcache identities)
IPTABLES_SCALE = (1, 1_000, 10_000, 65_000)  # iptables: rules in the pod's chain
SYNTHETIC_IDENTITY = 100_000
SYNTHETIC_NET = ipaddress.IPv4Network("10.230.0.0/16")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
PROTO_TCP = 6

BARE, ROUTE, FLOOR, CILIARY, IPTABLES = "bare veth", "route", "tc floor", "ciliary", "iptables"
FLOOR_SOURCE = Path(__file__).with_name("tcfloor.c")


def k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


@dataclass
class Target:
    name: str
    kind: str  # BARE, ROUTE, CILIARY, IPTABLES
    entries: int | None  # policy map entries / rules in the chain
    client: list[str]  # argv prefix entering the client's netns
    server_ip: str
    agent_pid: int | None = None  # ciliary: the node's agent, whose CPU use is recorded
    other_agents: tuple[int, ...] = ()  # across nodes: the other nodes' agents, added to it
    pin_dir: Path | None = None  # ciliary: the node's pins (its programs' run time per packet)
    netns: str = ""  # the client's netns by name (connrate -a makes its sockets there)
    lab: str = ""  # ciliary across nodes: the lab's name (per-packet test runs, bench/multinode)


# ---- kernel-only setups -----------------------------------------------------------------------


@contextlib.contextmanager
def bare_veth(connrate: Path) -> Iterator[list[Target]]:
    t = tag()
    a, b = f"{t}-a", f"{t}-b"
    with scratch_netns([a, b]):
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", ns=a)
        sh("ip", "link", "set", "eth1", "netns", b, ns=a)
        sh("ip", "addr", "add", "10.251.0.1/30", "dev", "eth0", ns=a)
        sh("ip", "addr", "add", "10.251.0.2/30", "dev", "eth1", ns=b)
        sh("ip", "link", "set", "eth0", "up", ns=a)
        sh("ip", "link", "set", "eth1", "up", ns=b)
        with tools.servers(b, connrate):
            yield [Target(f"a: {BARE}", BARE, None, tools.enter(a), "10.251.0.2", netns=a)]


def _link(ns: str, dev: str) -> tuple[int, str]:
    """(ifindex, MAC) of ``dev`` in netns ``ns``."""
    (info,) = json.loads(sh("ip", "-j", "link", "show", dev, ns=ns).stdout)
    return int(info["ifindex"]), str(info["address"])


def mac_words(dmac: str, smac: str) -> list[int]:
    """The 12 bytes of an Ethernet header's two MACs as three words in the BPF target's
    (little-endian) order: tcfloor.c's MAC_W0..2, stored as they lie in memory."""
    raw = bytes.fromhex(dmac.replace(":", "") + smac.replace(":", ""))
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 12, 4)]


def _floor_object(out: Path, peer_ifindex: int, dmac: str, smac: str) -> None:
    """bench/tcfloor.c for one direction: to ``peer_ifindex``'s peer, with these MACs."""
    words = mac_words(dmac, smac)
    arch = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-Wall", f"-I/usr/include/{arch.strip()}-linux-gnu",
         f"-DPEER_IFINDEX={peer_ifindex}",
         *(f"-DMAC_W{i}={w}u" for i, w in enumerate(words)),
         "-c", str(FLOOR_SOURCE), "-o", str(out)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@contextlib.contextmanager
def tc_floor(connrate: Path) -> Iterator[list[Target]]:
    """Client and server namespaces each joined by a veth pair to a node namespace, whose two
    devices' tcx ingress runs bench/tcfloor.c (as ciliary attaches): the other side's MACs,
    bpf_redirect_peer. Client and server resolve each other to their node-side device's MAC
    statically, as a pod resolves its gateway."""
    t = tag()
    a, n, b = f"{t}-a", f"{t}-n", f"{t}-b"
    ips = {a: "10.250.0.2", b: "10.250.0.3"}
    with scratch_netns([a, n, b]), tempfile.TemporaryDirectory() as tmp:
        for pod, dev in ((a, "lxca"), (b, "lxcb")):
            sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", dev, ns=pod)
            sh("ip", "link", "set", dev, "netns", n, ns=pod)
            sh("ip", "addr", "add", f"{ips[pod]}/24", "dev", "eth0", ns=pod)
            sh("ip", "link", "set", "eth0", "up", ns=pod)
            sh("ip", "link", "set", dev, "up", ns=n)
        (ia, ma), (ib, mb) = _link(n, "lxca"), _link(n, "lxcb")
        ea, eb = _link(a, "eth0")[1], _link(b, "eth0")[1]
        sh("ip", "neigh", "add", ips[b], "lladdr", ma, "dev", "eth0", "nud", "permanent", ns=a)
        sh("ip", "neigh", "add", ips[a], "lladdr", mb, "dev", "eth0", "nud", "permanent", ns=b)
        for ifindex, peer, dmac, smac in ((ia, ib, eb, mb), (ib, ia, ea, ma)):
            obj = Path(tmp) / f"{ifindex}.o"
            _floor_object(obj, peer, dmac, smac)
            # a tcx attachment without a link outlives the object closed here
            with BPFObject.open(obj) as floor, link.in_netns(f"/run/netns/{n}"):
                floor.load()
                tcx_attach(ifindex, floor.program_fd("tc_floor"), "ingress")
        with tools.servers(b, connrate):
            yield [Target(FLOOR, FLOOR, None, tools.enter(a), ips[b], netns=a)]


def _iptables_rules(n: int, client_ip: str, server_dev: str) -> str:
    lo, hi = tools.PORT_RANGE
    match = f"-p tcp -m tcp --dport {lo}:{hi} -j ACCEPT"
    lines = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":bench-pod-server - [0:0]",
        f"-A FORWARD -o {server_dev} -j bench-pod-server",
        "-A bench-pod-server -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    lines += [f"-A bench-pod-server -s {SYNTHETIC_NET[i + 1]}/32 {match}" for i in range(n - 1)]
    lines += [f"-A bench-pod-server -s {client_ip}/32 {match}", "-A bench-pod-server -j DROP"]
    return "\n".join([*lines, "COMMIT", ""])


@contextlib.contextmanager
def routed(
    connrate: Path,
    index: int,
    rules: int | None,
    router: Callable[[str, str, str], None] | None = None,
) -> Iterator[list[Target]]:
    """pod a → node r → pod b, routed by the kernel; ``rules`` not None: iptables in r;
    ``router(r, client_ip, server_ip)``: more set-up of the node (bench/services.py: NAT)."""
    t = tag()
    a, r, b = f"{t}-a", f"{t}-r", f"{t}-b"
    net = f"10.{252 - index // 200}.{(index % 200)}"  # distinct /24 pairs per setup
    client_ip, server_ip = f"{net}.2", f"{net}.130"
    with scratch_netns([a, r, b]):
        for pod, dev, ip, gw in (
            (a, "ra", client_ip, f"{net}.1"),
            (b, "rb", server_ip, f"{net}.129"),
        ):
            sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", dev, ns=pod)
            sh("ip", "link", "set", dev, "netns", r, ns=pod)
            sh("ip", "addr", "add", f"{ip}/25", "dev", "eth0", ns=pod)
            sh("ip", "link", "set", "eth0", "up", ns=pod)
            sh("ip", "route", "add", "default", "via", gw, ns=pod)
            sh("ip", "addr", "add", f"{gw}/25", "dev", dev, ns=r)
            sh("ip", "link", "set", dev, "up", ns=r)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=r)
        if router is not None:
            router(r, client_ip, server_ip)
        if rules is None:
            name, kind = ROUTE, ROUTE
        else:
            subprocess.run(
                ["ip", "netns", "exec", r, "iptables-restore"],
                input=_iptables_rules(rules, client_ip, "rb"),
                text=True, check=True, capture_output=True, timeout=300,
            )  # fmt: skip
            name, kind = f"{IPTABLES} {k(rules)}", IPTABLES
            if rules == 1:
                name = f"c: {name}"
        with tools.servers(b, connrate):
            yield [Target(name, kind, rules, tools.enter(a), server_ip)]


# ---- ciliary ---------------------------------------------------------------------------------

LAB_HEAD = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes: [{nodes}]
{spec}---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bench-datapath, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: bench-server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: bench-client}}}}]
    toPorts: [{{ports: [{{port: "{lo}", endPort: {hi}, protocol: TCP}}]}}]
"""

LAB_POD = """\
---
apiVersion: v1
kind: Pod
metadata: {{name: {role}-{i}, labels: {{app: bench-{role}}}}}
spec:
  nodeName: {node}
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
"""


def lab_yaml(lab: str, nodes: list[str], pods: list[tuple[str, int, str]], spec: str = "") -> str:
    """The lab file: ``nodes``, the policy, ``pods`` as (role, index, node) → pod ``role-index``
    labelled ``app: bench-<role>`` on that node; ``spec``: more lines of the Lab's spec."""
    lo, hi = tools.PORT_RANGE
    names = ", ".join(f"{{name: {n}}}" for n in nodes)
    text = LAB_HEAD.format(lab=lab, nodes=names, spec=spec, lo=lo, hi=hi)
    for role, i, node in pods:
        text += LAB_POD.format(role=role, i=i, node=node)
    return text


def _grow(pin_dir: Path, server_ep: int, total: int) -> tuple[int, int]:
    """Fill the server's policy map up to ``total`` entries and the node's ipcache with one
    identity per added entry; returns (policy entries, ipcache entries)."""
    lo, _ = tools.PORT_RANGE
    pmap = EndpointPolicyMap.from_pin(pin_dir / f"ciliary_policy_{server_ep}")
    ipc = IPCacheMap.from_pin(pin_dir)  # raising the node's ipcache revision (its cache)
    try:
        extra = max(0, total - pmap.map.count())
        value = PolicyValue(deny=False, cookie=0)
        for i in range(extra):
            ipc.upsert(ipaddress.IPv4Network(f"{SYNTHETIC_NET[i + 1]}/32"), SYNTHETIC_IDENTITY + i)
            pmap.upsert(PolicyKey(SYNTHETIC_IDENTITY + i, False, PROTO_TCP, lo, 14), value)
        return pmap.map.count(), ipc.map.count()
    finally:
        pmap.close()
        ipc.close()


@contextlib.contextmanager
def ciliary_lab(connrate: Path, scale: tuple[int, ...]) -> Iterator[list[Target]]:
    t = tag()
    nodes = [f"{t}{chr(ord('a') + i)}" for i in range(len(scale))]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        path = Path(tmp) / "lab.yaml"
        placed = [(r, i, node) for i, node in enumerate(nodes) for r in ("client", "server")]
        path.write_text(lab_yaml(t, nodes, placed))
        view = manager.up(path)  # a failed `up` removes what it made
        try:
            rec = manager.record(t)
            pods = {p.name: p for p in view.pods}
            targets, counts = [], {}
            for i, (n, nrec) in enumerate(zip(scale, rec.nodes, strict=True)):
                client, server = pods[f"client-{i}"], pods[f"server-{i}"]
                assert server.ipv4 is not None and server.endpoint_id is not None
                if n > 1:
                    counts[i] = _grow(Path(nrec.pin_dir), server.endpoint_id, n)
                else:
                    counts[i] = _counts(Path(nrec.pin_dir), server.endpoint_id)
                entries = counts[i][0]
                name = f"b: {CILIARY}" if n == 1 else f"{CILIARY} {k(n)}"
                stack.enter_context(tools.servers(server.netns, connrate))
                targets.append(Target(name, CILIARY, entries, tools.enter(client.netns),
                                      server.ipv4, nrec.agent_pid,
                                      pin_dir=Path(nrec.pin_dir),
                                      netns=client.netns))  # fmt: skip
            yield targets
            for i, nrec in enumerate(rec.nodes):
                server = pods[f"server-{i}"]
                assert server.endpoint_id is not None
                now = _counts(Path(nrec.pin_dir), server.endpoint_id)
                if now != counts[i]:
                    raise RuntimeError(
                        f"node {nrec.name}: policy/ipcache entries changed during the rounds"
                        f" ({counts[i]} → {now})"
                    )
        finally:
            stack.close()  # servers first, then the lab
            manager.down(t)


def _counts(pin_dir: Path, server_ep: int) -> tuple[int, int]:
    with (
        Map.from_pin(pin_dir / f"ciliary_policy_{server_ep}") as pmap,
        Map.from_pin(pin_dir / "ciliary_ipcache") as ipc,
    ):
        return pmap.count(), ipc.count()


# ---- BPF run time per packet (bpf_stats) -------------------------------------------------------


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """``kernel.bpf_stats_enabled`` on while the run lasts (the kernel then counts each program's
    run time and runs), its previous value back after."""
    before = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1\n")
    try:
        yield
    finally:
        BPF_STATS.write_text(before + "\n")


def _bpftool_json(*argv: str) -> Any:
    out = subprocess.run(
        ["bpftool", "-j", *argv], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return json.loads(out)


def prog_run_stats(pin: Path, *, link: bool = False) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program pinned at ``pin`` (bpftool; zeros while stats are
    off); ``link``: ``pin`` is a BPF link's (socket-LB's, datapath/socketlb.py), whose program
    is measured."""
    if link:
        info = _bpftool_json(
            "prog", "show", "id", str(_bpftool_json("link", "show", "pinned", str(pin))["prog_id"])
        )
    else:
        info = _bpftool_json("prog", "show", "pinned", str(pin))
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


class PerPacket:
    """A measure that also records the run time per run of the program pinned at ``pin``
    (cil_from_container: per packet; bench/services.py's cil_sock4_connect: per connect()) of
    each run (ns) of the ``recorded`` targets; the first run of a target (interleave's warm-up)
    is left out."""

    def __init__(
        self, measure: Any, pin: Path, recorded: list[Target], *, link: bool = False
    ) -> None:
        self.measure, self.pin, self.link = measure, pin, link
        self.recorded = {t.name for t in recorded}
        self.samples: dict[str, list[float]] = {}
        self._warm: set[str] = set()

    def _stats(self) -> tuple[int, int]:
        return prog_run_stats(self.pin, link=True) if self.link else prog_run_stats(self.pin)

    def __call__(self, target: Target, seconds: float) -> tuple[float, ...]:
        if target.name not in self.recorded:
            return tuple(self.measure(target, seconds))
        ns0, n0 = self._stats()
        values: tuple[float, ...] = self.measure(target, seconds)
        ns1, n1 = self._stats()
        if target.name not in self._warm:
            self._warm.add(target.name)
        elif n1 > n0:
            self.samples.setdefault(target.name, []).append((ns1 - ns0) / (n1 - n0))
        return values


# ---- the run ---------------------------------------------------------------------------------

Metric = Callable[[Target, float], tuple[float, ...]]
Samples = dict[str, dict[str, list[tuple[float, ...]]]]
"""metric → setup → one tuple of values per measured round"""


def tool_metrics(connrate: Path) -> dict[str, tuple[str, str, bool, Metric]]:
    """key → (title, unit, higher is better, measure(target, seconds) → values)."""
    return {
        "tcp1": ("TCP throughput, iperf3 1 stream", "Gbit/s", True,
                 lambda t, s: (tools.iperf3_gbps(t.client, t.server_ip, s, 1),)),
        "tcp4": ("TCP throughput, iperf3 4 streams", "Gbit/s", True,
                 lambda t, s: (tools.iperf3_gbps(t.client, t.server_ip, s, 4),)),
        "rr": ("TCP request/response latency, sockperf ping-pong", "usec", False,
               lambda t, s: tools.sockperf_rtt_us(t.client, t.server_ip, s)),
        "crr": ("TCP connection rate, connect/request/response/close", "conn/s", True,
                lambda t, s: (tools.connrate_per_s(t.client, connrate, t.server_ip, s),)),
    }  # fmt: skip


def _quiesce(
    agents: list[int], log: Callable[[str], None], group: str = GROUP, limit: float = 30.0
) -> None:
    """Wait until the lab's agents are idle (< 5% of a core over 100 ms): an agent still decoding
    the events of the previous run (the ring buffer holds 8 MiB of them) would steal CPU from the
    next setup's run; in a first version the setup measured after ciliary's was always slower."""
    deadline = time.monotonic() + limit
    while agents and time.monotonic() < deadline:
        c0 = sum(cpu_seconds(pid) for pid in agents)
        time.sleep(0.1)
        if sum(cpu_seconds(pid) for pid in agents) - c0 < 0.005:
            return
    if agents:
        log(f"{group}: the agents are still busy after {limit:.0f}s, going on")


def interleave(
    targets: list[Target],
    metrics: dict[str, tuple[str, str, bool, Metric]],
    *,
    rounds: int,
    seconds: float,
    agents: list[int],
    log: Callable[[str], None],
    group: str = GROUP,
) -> tuple[Samples, dict[str, list[float]]]:
    """Every round runs every metric on every setup back to back (round 0: a short warm-up, not
    recorded), each run once ``agents`` are idle. Returns the samples and, for targets with an
    ``agent_pid``, the CPU per run of that agent and its ``other_agents`` ("<setup> | <metric>"
    → % of one core)."""
    samples: Samples = {m: {t.name: [] for t in targets} for m in metrics}
    agent_cpu: dict[str, list[float]] = {}
    for r in range(rounds + 1):
        for key, (_, _, _, measure) in metrics.items():
            if r == 0 and key == "rr":
                continue  # sockperf warms up by itself (its first 400 ms are discarded)
            for target in targets:
                _quiesce(agents, log, group)
                pids = [target.agent_pid, *target.other_agents] if target.agent_pid else []
                c0, t0 = sum(cpu_seconds(p) for p in pids), time.monotonic()
                value = measure(target, 1 if r == 0 else seconds)
                if r > 0:
                    samples[key][target.name].append(value)
                if pids and r > 0:
                    wall = time.monotonic() - t0
                    _quiesce(agents, log, group)  # what the run left in the ring buffer counts too
                    pct = (sum(cpu_seconds(p) for p in pids) - c0) / wall * 100
                    agent_cpu.setdefault(f"{target.name} | {key}", []).append(pct)
        log(f"{group}: round {r}/{rounds} done" + (" (warm-up)" if r == 0 else ""))
    return samples, agent_cpu


def run(
    *,
    rounds: int = 5,
    seconds: float = 2,
    scale: tuple[int, ...] = SCALE,
    iptables_scale: tuple[int, ...] = IPTABLES_SCALE,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    with tools.connrate_binary() as connrate, contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        targets: list[Target] = []
        targets += stack.enter_context(bare_veth(connrate))
        targets += stack.enter_context(routed(connrate, 0, None))
        targets += stack.enter_context(tc_floor(connrate))
        targets += stack.enter_context(ciliary_lab(connrate, scale))
        log(f"datapath: ciliary lab ready ({len(scale)} nodes) after {time.monotonic() - t0:.1f}s")
        for i, n in enumerate(iptables_scale):
            targets += stack.enter_context(routed(connrate, i + 1, n))
        log(f"datapath: {len(targets)} setups ready after {time.monotonic() - t0:.1f}s")
        metrics = tool_metrics(connrate)
        agents = [t.agent_pid for t in targets if t.agent_pid]
        samples, agent_cpu = interleave(
            targets, metrics, rounds=rounds, seconds=seconds, agents=agents, log=log
        )
        cil = next(t for t in targets if t.kind == CILIARY and t.entries and t.pin_dir)
        # the floor read the way the goal is: what the hook and the redirect alone leave of a's
        # connection rate bounds what any program there can reach
        pairs = [(targets[0], t) for t in (cil, *(t for t in targets if t.kind == FLOOR))]
        alts = [
            (pair, alternating_connections(connrate, pair, rounds=rounds, seconds=seconds,
                                           agents=agents, log=log))
            for pair in pairs
        ]  # fmt: skip
        per_packet = program_run_time(cil, metrics, rounds=rounds, seconds=seconds, log=log)
    results = results_of(targets, metrics, samples, rounds=rounds, seconds=seconds)
    results += [alternating_result(pair, alt, seconds=seconds) for pair, alt in alts]
    results.append(agent_cpu_result(agent_cpu, "the node agent's", GROUP))
    results += per_packet
    return results


def alternating_connections(
    connrate: Path,
    pair: tuple[Target, Target],
    *,
    rounds: int,
    seconds: float,
    agents: list[int],
    log: Callable[[str], None],
) -> list[tuple[float, float]]:
    """Per round, the two targets' connection rates from one ``connrate -a`` run whose
    connections alternate between them (``tools.alternating_rates``; which goes first
    alternating by round), each run once the agents are idle: (first's, second's) per round."""
    out = []
    for r in range(rounds):
        order = pair if r % 2 == 0 else pair[::-1]
        _quiesce(agents, log)
        ends = ((order[0].netns, order[0].server_ip), (order[1].netns, order[1].server_ip))
        first, second = tools.alternating_rates([], connrate, ends, seconds)
        out.append((first, second) if r % 2 == 0 else (second, first))
    log(f"{GROUP}: alternating connection-rate runs done")
    return out


ALTERNATING = "crr-alternating"


def alternating_result(
    pair: tuple[Target, Target], rates: list[tuple[float, float]], *, seconds: float
) -> dict[str, Any]:
    """The alternating runs' medians and each round's own ratio (second / first, %)."""
    a, b = pair
    ratios = [100 * vb / va if va else 0.0 for va, vb in rates]
    return {
        "benchmark": f"TCP connection rate, one connrate process alternating its connections"
                     f" between {a.name} and {b.name}, each side's over their own time, median"
                     f" of {len(rates)} x {seconds}s",
        "metric": ALTERNATING,
        "unit": "conn/s",
        "higher_is_better": True,
        "baseline": a.name,
        "values": {
            a.name: median([v[0] for v in rates]),
            b.name: median([v[1] for v in rates]),
            "median of the round ratios (%)": median(ratios),
            "lowest round (%)": min(ratios),
            "highest round (%)": max(ratios),
        },
        "samples": {a.name: [v[0] for v in rates], b.name: [v[1] for v in rates]},
        "group": GROUP,
    }  # fmt: skip


PER_PACKET_METRICS = ("rr", "crr")  # established packets (ping-pong); short connections


def program_run_time(
    target: Target,
    metrics: dict[str, tuple[str, str, bool, Metric]],
    *,
    rounds: int,
    seconds: float,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """cil_from_container's run time per packet (it runs for both directions of a pod-to-pod
    connection: each side's lxc) during the latency and the connection-rate runs of ``target``,
    measured after the interleaved rounds, with ``kernel.bpf_stats_enabled`` on for these runs
    only: the counting costs the programs two clock reads per run, which the ratios above do
    not carry."""
    assert target.pin_dir is not None
    out = []
    with bpf_stats():
        for key in PER_PACKET_METRICS:
            title, _, _, measure = metrics[key]
            per = PerPacket(measure, target.pin_dir / FROM_CONTAINER, [target])
            for r in range(rounds + 1):  # the first: PerPacket's warm-up
                per(target, 1 if r == 0 else seconds)
            values = per.samples.get(target.name, [])
            log(f"{GROUP}: {FROM_CONTAINER} ns per packet, {key}: {median(values):.0f}")
            out.append({
                "benchmark": f"{target.name}: {FROM_CONTAINER} run time per packet (bpf_stats:"
                             f" run_time_ns / run_cnt, both directions) during {title}, median"
                             f" of {rounds} x {seconds}s",
                "metric": f"bpf-ns-per-packet-{key}",
                "unit": "ns/packet",
                "higher_is_better": False,
                "baseline": None,
                "values": {target.name: median(values)},
                "samples": {target.name: values},
                "group": GROUP,
            })  # fmt: skip
    return out


def agent_cpu_result(agent_cpu: dict[str, list[float]], whose: str, group: str) -> dict[str, Any]:
    """The agent CPU of ``interleave`` as a result (``whose``: which agents, for its title)."""
    return {
        "benchmark": f"ciliary: {whose} CPU per second of each run (it decodes the"
        " datapath's events; including the backlog it drains after the run), % of one core",
        "metric": "agent-cpu",
        "unit": "%",
        "baseline": None,
        "values": {name: median(v) for name, v in agent_cpu.items()},
        "samples": agent_cpu,
        "group": group,
    }


def results_of(
    targets: list[Target],
    metrics: dict[str, tuple[str, str, bool, Metric]],
    samples: Samples,
    *,
    rounds: int,
    seconds: float,
    group: str = GROUP,
) -> list[dict[str, Any]]:
    """One result per metric (latency: p50 and p99), medians, baseline: the first target."""
    base = targets[0].name
    setups = {
        t.name: {"kind": t.kind, "entries": t.entries} for t in targets
    }  # for the tables and the scale plots
    out = []
    for key, (title, unit, higher, _) in metrics.items():
        columns = ("p50", "p99") if key == "rr" else ("",)
        for c, col in enumerate(columns):
            per = {name: [v[c] for v in vals] for name, vals in samples[key].items()}
            out.append({
                "benchmark": f"{title}{' ' + col if col else ''}, median of {rounds} x {seconds}s",
                "metric": f"{key}{'-' + col if col else ''}",
                "unit": unit,
                "higher_is_better": higher,
                "baseline": base,
                "values": {name: median(v) for name, v in per.items()},
                "samples": per,
                "setups": setups,
                "seconds": seconds,
                "group": group,
            })  # fmt: skip
    return out
