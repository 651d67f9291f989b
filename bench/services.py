"""Services: a pod's connections through a ClusterIP against straight to the backend pod's address,
with 1, 1k and 10k Services installed, for ciliary's tc-level load balancer (bpf_lxc, hash maps:
the cost should not grow with the number of Services), for its socket-LB (bpf_sock.c: the
backend chosen once at connect(), no per-packet translation; Cilium's default with
kubeProxyReplacement) and for iptables rules of kube-proxy's shape (a list walked for every new
connection: the reason eBPF service load balancing exists).

Metrics (bench/tools.py, the datapath group's tools, run back to back per round):
  connection rate  connrate: connect, 64 B request, 64 B response, close, serially (conn/s);
  latency          sockperf TCP ping-pong, 64-byte messages, p50 and p99 (usec).
The ratio of each result is ClusterIP / pod IP in the same setup and rounds (goal: rate ≥ 0.95,
latency ≤ 1.05). ciliary's pairs are measured in rounds of their own (``_paired``: PAIR_ROUNDS,
pod IP and ClusterIP back to back, which goes first alternating from round to round, so a load
that rises or falls during a round weighs on both alike), and their ratio is also given per
round: the median of the rounds' ratios with the lowest and highest (the spread a reading of
the goal has to be held against). With 3 rounds and one fixed order, one round's load spike
made a step's ratio (1.167 at 10k in the run of 23:15 UTC, its pod-IP rate 7.4k against 9.1k at
1k). Each round also has one ``connrate -a`` run (``tools.alternating_rates``): one process whose
connections alternate between the two destinations, so that load changing within seconds falls
on both sides alike. ciliary's connection-rate runs also give bpf_lxc's cil_from_container run time
per packet (``kernel.bpf_stats_enabled`` on for the group: the kernel's run_time_ns / run_cnt of
the pinned program, bpftool), both directions of every connection, translation included; the
socket-LB lab's also give bpf_sock's cil_sock4_connect run time per connect() (its link's
program): the translation, its reverse entry and the trace-sock records at the lab's monitor
aggregation (medium: one connect() per 5 s reported).
Setups:
  ciliary          a one-node lab (client and server pods, the datapath group's policy allowing
                   the client on the server's ports), a Service ``bench-svc`` selecting the server
                   (ports 5202 sockperf, 5203 connrate); measured with that one Service (plus the
                   lab's kubernetes and kube-dns), then after 999 and 9,000 more Services were
                   created through the lab's API server (no selector: frontends without backends,
                   8 concurrent HTTPS POSTs), each step timed from its first POST until the
                   node's ``ciliary_lb4_services`` map holds all of them (the agent's watch →
                   service manager → BPF maps). The steps run one after the other in the same
                   lab (a node's agent programs every Service of the cluster), so the ratio, not
                   the absolute numbers across steps, is the comparison;
  iptables N       the datapath group's ``routed`` topology (pod a → node r → pod b, kernel
                   routing) with r holding kube-proxy's nat rules for N Services (PREROUTING and
                   OUTPUT → KUBE-SERVICES: per Service port ``-d VIP -p tcp --dport`` → KUBE-SVC
                   chain: the masquerade mark for sources outside the cluster CIDR, then ``-m
                   statistic --mode random --probability 1/k`` splits over k = 2 KUBE-SEP chains
                   (the measured Service: 1), each marking its own hairpin and DNATing;
                   KUBE-POSTROUTING masquerades marked packets), loaded with one
                   ``iptables-restore`` (timed); the measured Service's rules in the middle of
                   KUBE-SERVICES (kube-proxy's order is arbitrary: half the list on average).
                   N = 1, 1k, 10k exist at once and are measured in the first step's rounds,
                   with a plain kernel route (no rules) beside them;
  ciliary socket-LB the same lab with ``spec.socketLB.enabled: true`` (the tc rows' lab pins it
                   false: which one the lab defaults to is not what is measured), the clients
                   run in their pods' cgroups (where the node's bpf_sock programs apply),
                   measured at 1, 1k and 10k Services (SOCKET_LB_SCALE), after the tc lab is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import tools
from bench.common import median, tag
from bench.datapath import (
    Metric,
    PerPacket,
    Samples,
    Target,
    _quiesce,
    bpf_stats,
    interleave,
    k,
    lab_yaml,
    routed,
    tool_metrics,
)
from ciliary.datapath import socketlb
from ciliary.datapath.libbpf import Map
from ciliary.datapath.linux import cgroup
from ciliary.k8s.resources import by_path
from ciliary.kube.client import KubeClient
from ciliary.lab import manager
from ciliary.lab.state import PodRecord

GROUP = "services"
SCALE = (1, 1_000, 10_000)
SOCKET_LB_SCALE = (1, 1_000, 10_000)  # the socket-LB lab's steps, as the tc lab's
METRICS = ("crr", "rr")
SERVICES = by_path("", "v1", "services")
SYNTHETIC_VIPS = ipaddress.IPv4Network("10.97.0.0/16")  # iptables: the other Services' VIPs
SYNTHETIC_PODS = ipaddress.IPv4Network("10.230.0.0/16")  # iptables: their endpoints
CLUSTER_CIDR = "10.0.0.0/8"  # iptables: sources outside it are masqueraded (kube-proxy's rule)
IPT_VIP = "10.96.0.100"
PORTS = (tools.SOCKPERF_PORT, tools.CONNRATE_PORT)
CREATE_CONCURRENCY = 8
BPF_PROGRAM = "cil_from_container"  # the tc LB's program: both directions of a pod's packets
SOCK_PROGRAM = "cil_sock4_connect"  # socket-LB's translation: once per connect()
PROGRAM_LIMIT_S = 300.0
PAIR_ROUNDS = 7  # ciliary's ClusterIP / pod IP pairs: rounds per step (see _paired)


# ---- iptables, kube-proxy's shape ------------------------------------------------------------


def kube_proxy_rules(n: int, vip: str, server_ip: str) -> str:
    """``iptables-restore`` input: the nat table of kube-proxy (iptables mode) for ``n`` Services:
    the measured one (``vip`` → ``server_ip`` on PORTS) and n-1 others of one port, 2 endpoints."""
    services: list[tuple[str, str, list[int], list[str]]] = [
        (f"bench/s{i}", str(SYNTHETIC_VIPS[i + 1]), [80],
         [str(SYNTHETIC_PODS[2 * i + 1]), str(SYNTHETIC_PODS[2 * i + 2])])
        for i in range(n - 1)
    ]  # fmt: skip
    services.insert(len(services) // 2, ("default/bench-svc", vip, list(PORTS), [server_ip]))
    chains = [":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully",
    ]
    for s, (name, addr, ports, endpoints) in enumerate(services):
        for port in ports:
            svc = f"KUBE-SVC-{s:07d}P{port}"
            chains.append(f":{svc} - [0:0]")
            where = f'-m comment --comment "{name}:p{port} cluster IP"'
            rules.append(f"-A KUBE-SERVICES -d {addr}/32 -p tcp {where} -m tcp --dport {port}"
                         f" -j {svc}")  # fmt: skip
            rules.append(f"-A {svc} ! -s {CLUSTER_CIDR} -d {addr}/32 -p tcp {where} -m tcp"
                         f" --dport {port} -j KUBE-MARK-MASQ")  # fmt: skip
            for e, ep in enumerate(endpoints):
                sep = f"KUBE-SEP-{s:07d}P{port}E{e}"
                chains.append(f":{sep} - [0:0]")
                left = len(endpoints) - e
                split = (f"-m statistic --mode random --probability {1 / left:.11f} "
                         if left > 1 else "")  # fmt: skip
                rules.append(f"-A {svc} {split}-j {sep}")
                rules.append(f"-A {sep} -s {ep}/32 -j KUBE-MARK-MASQ")
                rules.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}:{port}")
    rules.append("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    chains.append(":KUBE-NODEPORTS - [0:0]")
    head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]"]  # fmt: skip
    return "\n".join([*head, *chains, *rules, "COMMIT", ""])


@contextlib.contextmanager
def kube_proxy(connrate: Path, index: int, n: int | None) -> Iterator[tuple[list[Target], float]]:
    """Routed topologies with kube-proxy's rules for ``n`` Services (None: none, a plain
    route); yields (pod IP target, ClusterIP target) or (route target,), and the load time.
    The two targets are two copies of the topology (one client each): a client port reused for
    the VIP after a direct connection to the same server port is in the kernel's conntrack as
    that connection's reply direction (kube-proxy's known clash), which would fail it."""
    loaded: list[float] = []

    def nat(router: str, _client_ip: str, server_ip: str) -> None:
        if n is None:
            return
        text = kube_proxy_rules(n, IPT_VIP, server_ip)
        t0 = time.monotonic()
        subprocess.run(
            ["ip", "netns", "exec", router, "iptables-restore"],
            input=text, text=True, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        loaded.append(time.monotonic() - t0)

    with contextlib.ExitStack() as stack:
        (direct,) = stack.enter_context(routed(connrate, 20 + 2 * index, None, nat))
        if n is None:
            route = Target("kernel route, no rules", "route", None, direct.client, direct.server_ip)
            yield [route], 0
            return
        (other,) = stack.enter_context(routed(connrate, 21 + 2 * index, None, nat))
        label = f"iptables {k(n)}"
        yield (
            [
                Target(f"{label}: pod IP", "iptables", n, direct.client, direct.server_ip),
                Target(f"{label}: ClusterIP", "iptables", n, other.client, IPT_VIP),
            ],
            loaded[0],
        )


# ---- ciliary ---------------------------------------------------------------------------------


def _service(name: str, ports: tuple[int, ...], selector: dict[str, str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": [{"name": f"p{p}", "port": p, "targetPort": p, "protocol": "TCP"} for p in ports]
    }
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}  # fmt: skip


async def _create(kubeconfig: Path, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    client = await KubeClient.connect(kubeconfig)
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(body: dict[str, Any]) -> dict[str, Any]:
        async with sem:
            return dict(await client.create(SERVICES, body, "default"))

    try:
        return await asyncio.gather(*(one(b) for b in bodies))
    finally:
        await client.close()


def _lb_entries(pin_dir: Path) -> int:
    with Map.from_pin(pin_dir / "ciliary_lb4_services") as m:
        return m.count()


def _wait_entries(pin_dir: Path, want: int, limit_s: float) -> float:
    """Waits until the node's IPv4 service map holds ``want`` entries; returns when it did."""
    deadline = time.monotonic() + limit_s
    while (have := _lb_entries(pin_dir)) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ciliary_lb4_services: {have} of {want} entries after {limit_s}s")
        time.sleep(0.05)
    return time.monotonic()


class CiliaryLab:
    """The one-node lab, its measured Service, and Services added in steps."""

    def __init__(self, lab: str, kubeconfig: Path, pin_dir: Path, agent_pid: int) -> None:
        self.lab, self.kubeconfig, self.pin_dir, self.agent_pid = (
            lab,
            kubeconfig,
            pin_dir,
            agent_pid,
        )
        self.installed = 0  # Services of the bench (the measured one included)
        # connrate -a: the two clients' netns (pod IP, ClusterIP) and the argv prefix putting
        # the process in client 0's cgroup (the node's socket-LB applies to the pods' processes)
        self.pair_netns: tuple[str, str] = ("", "")
        self.pair_prefix: list[str] = []

    def add(self, count: int) -> tuple[float, float]:
        """Creates ``count`` Services without selector (2 map entries each: the port's frontend,
        the address's wildcard); returns (seconds of the API creates, seconds until the node's
        map holds them all), both from the first POST."""
        start = _lb_entries(self.pin_dir)
        first = self.installed
        bodies = [_service(f"extra-{first + i}", (80,), None) for i in range(count)]
        t0 = time.monotonic()
        asyncio.run(_create(self.kubeconfig, bodies))
        created = time.monotonic() - t0
        done = _wait_entries(self.pin_dir, start + 2 * count, PROGRAM_LIMIT_S)
        self.installed += count
        return created, done - t0


def lab_file(lab: str, node: str, *, socket_lb: bool) -> str:
    """The one-node lab: clients 0 and 1, the server, ``spec.socketLB.enabled`` pinned (the tc
    rows measure bpf_lxc's translation whatever the lab's default is)."""
    placed = [("client", 0, node), ("client", 1, node), ("server", 0, node)]
    spec = f"  socketLB: {{enabled: {str(socket_lb).lower()}}}\n"
    return lab_yaml(lab, [node], placed, spec)


def _in_cgroup(prec: PodRecord) -> list[str]:
    """argv prefix running a command in the pod's cgroup, as ``lab exec`` (the node's socket-LB
    applies to the pods' processes only)."""
    if not prec.cgroup:
        raise RuntimeError(f"pod {prec.key}: no cgroup in the lab's record")
    procs = cgroup.create(prec.cgroup) / "cgroup.procs"
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs)]


def _enter_pod(prec: PodRecord) -> list[str]:
    """argv prefix running a command in the pod: its cgroup and its netns."""
    return [*_in_cgroup(prec), *tools.enter(prec.netns)]


@contextlib.contextmanager
def ciliary_lab(connrate: Path, *, socket_lb: bool) -> Iterator[tuple[CiliaryLab, Target, Target]]:
    """The one-node lab with ``spec.socketLB.enabled`` pinned to ``socket_lb`` (either way: the
    lab's default is not what is measured), its measured Service, and the two targets."""
    t = tag()
    node = f"{t}a"
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        path = Path(tmp) / "lab.yaml"
        path.write_text(lab_file(t, node, socket_lb=socket_lb))
        view = manager.up(path)
        try:
            rec = manager.record(t)
            nrec = rec.nodes[0]
            assert nrec.agent_pid is not None
            pods = {p.name: p for p in view.pods}
            server = pods["server-0"]
            assert server.ipv4 is not None
            server_ip = server.ipv4.partition("/")[0]
            lab = CiliaryLab(t, manager.kubeconfig(t), Path(nrec.pin_dir), nrec.agent_pid)
            before = _lb_entries(lab.pin_dir)
            (svc,) = asyncio.run(_create(lab.kubeconfig, [
                _service("bench-svc", PORTS, {"app": "bench-server"})]))  # fmt: skip
            vip = str(svc["spec"]["clusterIP"])
            # 2 ports x (slot 0 + the server's slot) + the wildcard
            _wait_entries(lab.pin_dir, before + 2 * len(PORTS) + 1, 60)
            lab.installed = 1
            stack.enter_context(tools.servers(server.netns, connrate))
            # one client each: a port the kernel reuses towards the VIP may be one whose direct
            # connection the server still holds in TIME_WAIT (tc-level DNAT, no socket-LB: the
            # client's kernel sees two destinations; the kernel's NAT would remap the port)
            precs = {p.name: p for p in rec.pods}
            enter0, enter1 = (_enter_pod(precs[f"client-{i}"]) for i in (0, 1))
            lab.pair_netns = (precs["client-0"].netns, precs["client-1"].netns)
            lab.pair_prefix = _in_cgroup(precs["client-0"])
            kind = "ciliary socket-LB" if socket_lb else "ciliary"
            direct = Target(f"{kind}: pod IP", "ciliary", 1, enter0, server_ip, nrec.agent_pid)
            via = Target(f"{kind}: ClusterIP", "ciliary", 1, enter1, vip, nrec.agent_pid)
            yield lab, direct, via
        finally:
            stack.close()
            manager.down(t)


# ---- the run ---------------------------------------------------------------------------------


def _pair_results(
    label: str,
    targets: list[Target],
    samples: dict[str, dict[str, list[tuple[float, ...]]]],
    metrics: dict[str, tuple[str, str, bool, Any]],
    *,
    rounds: int,
    seconds: float,
) -> list[dict[str, Any]]:
    """One result per metric column: the targets' medians, ratios against the first (pod IP)."""
    out = []
    for key in METRICS:
        title, unit, higher, _ = metrics[key]
        columns = ("p50", "p99") if key == "rr" else ("",)
        for c, col in enumerate(columns):
            per = {t.name: [v[c] for v in samples[key][t.name]] for t in targets}
            out.append({
                "benchmark": f"{label}: {title}{' ' + col if col else ''}, median of {rounds}"
                             f" x {seconds}s",
                "metric": f"{key}{'-' + col if col else ''}",
                "unit": unit,
                "higher_is_better": higher,
                "baseline": targets[0].name,
                "values": {name: median(v) for name, v in per.items()},
                "samples": per,
                "group": GROUP,
            })  # fmt: skip
    return out


def _paired(
    pair: tuple[Target, Target],
    metrics: dict[str, tuple[str, str, bool, Metric]],
    *,
    rounds: int,
    seconds: float,
    agents: list[int],
    log: Callable[[str], None],
    alternate: Callable[[float], tuple[float, float]] | None = None,
) -> tuple[Samples, dict[str, list[float]]]:
    """ciliary's pod IP and ClusterIP targets measured in ``rounds`` rounds after a warm-up
    (connection rate, 1 s each, not recorded), every metric on both back to back, the order
    alternating (even rounds the pod IP first, odd rounds the ClusterIP), each run once the
    agent is idle; with ``alternate`` (seconds → the pod IP's and the ClusterIP's connection
    rate in one run whose connections alternate between them) also one such run per round,
    ``ALT`` in the samples. Returns the samples (as ``interleave``'s) and, per metric column,
    each round's ClusterIP / pod IP ratio in percent."""
    direct, via = pair
    samples: Samples = {m: {t.name: [] for t in pair} for m in metrics}
    if alternate is not None:
        samples[ALT] = {t.name: [] for t in pair}
    _, _, _, crr = metrics["crr"]
    for target in pair:
        _quiesce(agents, log, GROUP)
        crr(target, 1)
    for r in range(rounds):
        for key, (_, _, _, measure) in metrics.items():
            for target in pair if r % 2 == 0 else pair[::-1]:
                _quiesce(agents, log, GROUP)
                samples[key][target.name].append(measure(target, seconds))
        if alternate is not None:
            _quiesce(agents, log, GROUP)
            rate_direct, rate_via = alternate(seconds)
            samples[ALT][direct.name].append((rate_direct,))
            samples[ALT][via.name].append((rate_via,))
        log(f"{GROUP}: paired round {r + 1}/{rounds} done")
    ratios: dict[str, list[float]] = {}
    for key in samples:
        columns = ("p50", "p99") if key == "rr" else ("",)
        for c, col in enumerate(columns):
            pairs = zip(samples[key][direct.name], samples[key][via.name], strict=True)
            ratios[f"{key}{'-' + col if col else ''}"] = [100 * v[c] / d[c] for d, v in pairs]
    return samples, ratios


ALT = "crr-alternating"  # connrate -a: one client's connections alternating between the two
_RATIO_TITLES = {
    "crr": "connection rate",
    ALT: "connection rate, alternating in one run",
    "rr-p50": "latency p50",
    "rr-p99": "latency p99",
}


def _ratio_result(label: str, ratios: dict[str, list[float]], *, seconds: float) -> dict[str, Any]:
    """The per-round ClusterIP / pod IP ratios of a step: median, lowest and highest (%)."""
    values: dict[str, float] = {}
    for key, per in ratios.items():
        title = _RATIO_TITLES.get(key, key)
        values[f"{title}: median of the rounds' ratios"] = median(per)
        values[f"{title}: lowest round"] = min(per)
        values[f"{title}: highest round"] = max(per)
    n = len(next(iter(ratios.values()), []))
    return {
        "benchmark": f"{label}: ClusterIP / pod IP of each round ({n} rounds x {seconds}s, the"
                     " two back to back, order alternating), median and range",
        "metric": "paired-ratio",
        "unit": "% of pod IP",
        "baseline": None,
        "values": values,
        "samples": ratios,
        "group": GROUP,
    }  # fmt: skip


def _naming(measure: Metric) -> Metric:
    """``measure`` whose failure names the setup."""

    def named(target: Target, seconds: float) -> tuple[float, ...]:
        try:
            return measure(target, seconds)
        except RuntimeError as err:
            raise RuntimeError(f"{target.name}: {err}") from err

    return named


def _ciliary_steps(
    connrate: Path,
    metrics: dict[str, tuple[str, str, bool, Any]],
    *,
    socket_lb: bool,
    scale: tuple[int, ...],
    beside: list[Target],
    rounds: int,
    pair_rounds: int,
    seconds: float,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, float], Samples]:
    """One lab (socket-LB on or off), measured at each step of ``scale`` (its pod IP and
    ClusterIP in ``pair_rounds`` paired rounds): its results, the program times, and the
    samples of ``beside`` (the kernel setups, measured in ``rounds`` interleaved rounds of
    their own at the first step, the lab's agent idle)."""
    results: list[dict[str, Any]] = []
    program: dict[str, float] = {}
    first: Samples = {}
    kind = "ciliary socket-LB" if socket_lb else "ciliary"
    t0 = time.monotonic()
    with ciliary_lab(connrate, socket_lb=socket_lb) as (lab, direct, via):
        log(f"{GROUP}: {kind} lab ready after {time.monotonic() - t0:.1f}s")
        title, unit, higher, crr = metrics["crr"]
        ends = ((lab.pair_netns[0], direct.server_ip), (lab.pair_netns[1], via.server_ip))

        def alternate(secs: float) -> tuple[float, float]:
            try:
                return tools.alternating_rates(lab.pair_prefix, connrate, ends, secs)
            except RuntimeError as err:
                raise RuntimeError(f"{kind}: alternating connections: {err}") from err

        for n in scale:
            per_packet = PerPacket(crr, lab.pin_dir / BPF_PROGRAM, [direct, via])
            per_connect = PerPacket(per_packet, lab.pin_dir / socketlb.LINK_DIR / SOCK_PROGRAM,
                                    [direct, via], link=True)  # fmt: skip
            measured = per_connect if socket_lb else per_packet
            step = {**metrics, "crr": (title, unit, higher, measured)}
            if n > lab.installed:
                added = n - lab.installed
                created, programmed = lab.add(added)
                where = f"{kind} lab, " if socket_lb else ""
                program[f"{where}{k(added)} Services: created through the API"] = created
                program[f"{where}{k(added)} Services: created → all in the node's BPF maps"] = (
                    programmed
                )
                log(f"{GROUP}: {added} Services created in {created:.1f}s, in the maps after"
                    f" {programmed:.1f}s")  # fmt: skip
            cil = [direct, via]
            if n == scale[0] and beside:
                first, _ = interleave(beside, metrics, rounds=rounds, seconds=seconds,
                                      agents=[lab.agent_pid], log=log, group=GROUP)  # fmt: skip
            samples, ratios = _paired((direct, via), step, rounds=pair_rounds, seconds=seconds,
                                      agents=[lab.agent_pid], log=log,
                                      alternate=alternate)  # fmt: skip
            results += _pair_results(f"{kind}, {k(n)} Services", cil, samples, metrics,
                                     rounds=pair_rounds, seconds=seconds)  # fmt: skip
            results.append({
                "benchmark": f"{kind}, {k(n)} Services: TCP connection rate, one client process"
                             " alternating its connections between the pod IP (from client 0's"
                             " netns) and the ClusterIP (from client 1's), each side's"
                             f" connections over their own time, median of {pair_rounds} x"
                             f" {seconds}s",
                "metric": ALT,
                "unit": unit,
                "higher_is_better": True,
                "baseline": direct.name,
                "values": {t: median([v[0] for v in vs]) for t, vs in samples[ALT].items()},
                "samples": samples[ALT],
                "group": GROUP,
            })  # fmt: skip
            results.append(_ratio_result(f"{kind}, {k(n)} Services", ratios, seconds=seconds))
            results.append({
                "benchmark": f"{kind}, {k(n)} Services: {BPF_PROGRAM} run time per packet"
                             " during the connection-rate runs (bpf_stats: both directions,"
                             f" the service translation included), median of {pair_rounds}",
                "metric": "bpf-ns-per-packet",
                "unit": "ns/packet",
                "higher_is_better": False,
                "baseline": direct.name,
                "values": {t: median(v) for t, v in per_packet.samples.items()},
                "samples": per_packet.samples,
                "group": GROUP,
            })  # fmt: skip
            if socket_lb:
                results.append({
                    "benchmark": f"{kind}, {k(n)} Services: {SOCK_PROGRAM} run time per"
                                 " connect() during the connection-rate runs (bpf_stats: the"
                                 " translation, its reverse entry and trace-sock records"
                                 f" included), median of {pair_rounds}",
                    "metric": "bpf-ns-per-connect",
                    "unit": "ns/connect",
                    "higher_is_better": False,
                    "baseline": direct.name,
                    "values": {t: median(v) for t, v in per_connect.samples.items()},
                    "samples": per_connect.samples,
                    "group": GROUP,
                })  # fmt: skip
    return results, program, first


def run(
    *,
    rounds: int = 3,
    pair_rounds: int = PAIR_ROUNDS,
    seconds: float = 2,
    scale: tuple[int, ...] = SCALE,
    socket_lb_scale: tuple[int, ...] = SOCKET_LB_SCALE,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """The tc-level LB's lab at ``scale`` (the kernel setups beside its first step, ``rounds``
    rounds; ciliary's pairs ``pair_rounds`` each step), then the socket-LB lab's at
    ``socket_lb_scale``, one lab at a time."""
    results: list[dict[str, Any]] = []
    with tools.connrate_binary() as connrate, bpf_stats(), contextlib.ExitStack() as stack:
        metrics = {
            key: (title, unit, higher, _naming(measure))
            for key, (title, unit, higher, measure) in tool_metrics(connrate).items()
            if key in METRICS
        }
        t0 = time.monotonic()
        (route,), _ = stack.enter_context(kube_proxy(connrate, 0, None))
        ipt: list[tuple[int, list[Target]]] = []
        load_s: dict[str, float] = {}
        for i, n in enumerate(scale):
            pair, took = stack.enter_context(kube_proxy(connrate, i + 1, n))
            ipt.append((n, pair))
            load_s[f"iptables-restore, {k(n)} Services"] = took
        log(f"{GROUP}: iptables setups ready after {time.monotonic() - t0:.1f}s")
        beside = [route, *(t for _, pair in ipt for t in pair)]
        tc_rows, program, samples = _ciliary_steps(
            connrate, metrics, socket_lb=False, scale=scale, beside=beside, rounds=rounds,
            pair_rounds=pair_rounds, seconds=seconds, log=log,
        )  # fmt: skip
        results += tc_rows
        for m, pair in ipt:
            results += _pair_results(
                f"iptables (kube-proxy rules), {k(m)} Services", [*pair, route], samples,
                metrics, rounds=rounds, seconds=seconds,
            )  # fmt: skip
        stack.close()  # the kernel setups go before the second lab comes
        if socket_lb_scale:
            sock_rows, sock_program, _ = _ciliary_steps(
                connrate, metrics, socket_lb=True, scale=socket_lb_scale, beside=[],
                rounds=rounds, pair_rounds=pair_rounds, seconds=seconds, log=log,
            )  # fmt: skip
            results += sock_rows
            program |= sock_program
    results.append({
        "benchmark": "time to program Services: ciliary through the lab's API server (8"
                     " concurrent creates) until the node's service map holds them; iptables:"
                     " one iptables-restore of the whole nat table",
        "metric": "program-time",
        "unit": "s",
        "baseline": None,
        "values": {**program, **load_s},
        "group": GROUP,
    })  # fmt: skip
    return results
