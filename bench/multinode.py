"""Pod → pod across two nodes: ciliary's VXLAN overlay and native routing against the kernel's own
paths between the same kind of node namespaces, on the same kind of underlay.

Every setup is a client "pod" namespace behind node 1 and a server "pod" namespace (iperf3,
sockperf, ``connrate``: ``bench/tools.py``) behind node 2, the two node namespaces joined as a lab
joins them: an underlay namespace holding a bridge ``br0``, each node's ``eth0`` (172.18.0.x/24,
MTU 1500) a veth whose other end is enslaved to it. All setups exist at once and every round
measures each back to back (``datapath.interleave``: the same metrics, tools, warm-up and agent
quiescing as the one-node ``datapath`` group).
  a  kernel routing   pod → veth → node 1 forwards by a route for node 2's pod /24 via node 2's
                      IP → br0 → node 2 forwards → veth → pod; no BPF, no encapsulation: the
                      limit of this topology.
  b  ciliary VXLAN    a two-node lab with ``routingMode: tunnel``: bpf_lxc writes the VXLAN
                      headers itself (source identity in the VNI) and sends out of ``eth0``,
                      bpf_host on node 2 decapsulates and enforces (``ciliary_vxlan`` only
                      while a neighbour is unknown); the client pod on node 1, the server pod
                      on node 2, the CNP of the ``datapath`` group (the client allowed on the
                      server's ports).
  c  ciliary native   the same lab file with ``routingMode: native, autoDirectNodeRoutes: true``
                      and ``ipv4NativeRoutingCIDR`` the pod pool (as upstream requires of native
                      routing with masquerade): pod CIDR routes via the node IPs, identity from
                      the ipcache; bpf_host's masquerade check of a pod's packet to another
                      node's pod is then the prefix compare, not an ipcache lookup.
  d  kernel VXLAN     a's namespaces with each node's pod traffic through a plain Linux vxlan
                      device (id 1, the other node as remote, UDP 8472) and a route over it; pod
                      MTU 1450 as ciliary's in tunnel mode.
After the rounds, a and b, then a and c, also alternate connection by connection in one
``connrate -a`` process per round (``datapath.alternating_connections``, the ``datapath``
group's): b/a's and c/a's connection rates with whatever load the machine has falling on both
alike (the interleaved rounds' c/a moved by 0.1-0.4 between runs under load), in the results as
``crr-alternating``.
Its control in the same run: a against a' (a second setup a, built the same way in namespaces
of its own, not in the interleaved rounds) alternating the same way, which reads 1.00 when the
method favours neither side (docs/benchmarks.md: a'/a 1.008, c'/c 0.975 on a holder).
Every ratio of the interleaved rows is given twice: the ratio of the two setups' medians, and the
median of the rounds' own ratios (``paired``: each round measures a and the setup back to back,
so load that drifts between rounds cancels; under load the two differed by up to 0.2).
Each setup's path is checked once built: a short connrate run must leave through the device the
setup is about (node 1's ``eth0`` for a, b and c, its vxlan device for d), by its counters; for b
also with the encapsulation's 50 bytes per packet the client pod sent.
A ciliary setup that cannot be built or does not pass (a lab feature not there yet) is reported
as "not available: <reason>" in the results, never left out silently; a and d must work.
Ratios b/a, c/a, d/a are in the results (issue #13's goals: b/a ≥ 0.85, c/a ≥ 0.95), reported,
not asserted.
Last, per packet (``per_packet``): b's and c's programs on the client → server path and back run
by BPF_PROG_TEST_RUN on frames as the pods and the underlay carry them (a SYN, a request, the
server's first and a later reply), the kernel's own time per run: what each change to the
programs costs or saves, without the connection-rate rows' noise (their ratios move by 0.01-0.03
between runs of the same code).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import statistics
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import datapath, tools
from bench.common import median, scratch_netns, sh, tag
from bench.datapath import Target
from ciliary.agent.config import TUNNEL_OVERHEAD
from ciliary.datapath import libbpf
from ciliary.datapath.linux import link
from ciliary.lab import manager

GROUP = "multinode"
BARE = "a: kernel routing"
TUNNEL = "b: ciliary VXLAN"
NATIVE = "c: ciliary native"
VXLAN = "d: kernel VXLAN"
CONTROL = "a': kernel routing, again"  # the alternating row's control: a against a second a
RATIOS = {"b/a": TUNNEL, "c/a": NATIVE, "d/a": VXLAN}
GOALS = {"b/a": 0.85, "c/a": 0.95}  # issue #13, throughput and connection rate
UNDERLAY = "172.18.0"  # the lab network's default (kind's): node i has .i+1
VXLAN_PORT, VXLAN_ID = 8472, 1
VXLAN_MTU = 1450  # 1500 - 50 (outer IPv4 + UDP + VXLAN + inner Ethernet): ciliary's pod MTU
PROBE_SECONDS = 0.5


def _tx(ns: str, dev: str) -> tuple[int, int] | None:
    """``dev``'s transmitted packets and bytes in ``ns``; None: there is no such device."""
    res = sh("ip", "-j", "-s", "link", "show", "dev", dev, ns=ns, check=False)
    if res.returncode != 0:
        return None
    tx = json.loads(res.stdout)[0]["stats64"]["tx"]
    return int(tx["packets"]), int(tx["bytes"])


def _check_path(
    target: Target,
    connrate: Path,
    node_ns: str,
    dev: str,
    bypassed: str | None = None,
    *,
    overhead: int = 0,
) -> None:
    """A short connrate run from the client; ``dev`` in node 1 must have sent at least two
    packets per connection (each sends a SYN, its request, ACKs and a FIN) and ``bypassed``, if
    node 1 has it, none: else the setup's traffic took another path than the one it is named
    for (native routing must not be encapsulated on its way out of eth0). ``overhead``: ``dev``
    must also have sent that many bytes more per packet than the client pod's eth0 (ciliary's
    VXLAN, encapsulated by bpf_lxc itself and sent out of eth0, not through the device)."""
    devs = [d for d in (dev, bypassed) if d]
    before = {d: _tx(node_ns, d) for d in devs}
    pod_before = _tx(target.netns, "eth0") if overhead else None
    if before[dev] is None:
        raise RuntimeError(f"{target.name}: no device {dev} in node 1 ({node_ns})")
    rate = tools.connrate_per_s(target.client, connrate, target.server_ip, PROBE_SECONDS)
    sent = {}
    for d in devs:
        now, then = _tx(node_ns, d) or (0, 0), before[d] or (0, 0)
        sent[d] = (now[0] - then[0], now[1] - then[1])
    if sent[dev][0] < 2 * rate * PROBE_SECONDS:
        raise RuntimeError(
            f"{target.name}: {rate * PROBE_SECONDS:.0f} connections but {dev} of node 1 sent"
            f" {sent[dev][0]} packets: the traffic took another path"
        )
    if bypassed and sent[bypassed][0] > 0:
        raise RuntimeError(f"{target.name}: {bypassed} of node 1 sent {sent[bypassed][0]} packets")
    if pod_before is not None:
        pod_now = _tx(target.netns, "eth0") or (0, 0)
        packets, size = pod_now[0] - pod_before[0], pod_now[1] - pod_before[1]
        if sent[dev][1] - size < 0.9 * overhead * packets:
            raise RuntimeError(
                f"{target.name}: {dev} of node 1 sent {sent[dev][1]} bytes for the pod's"
                f" {packets} packets of {size} bytes: not encapsulated"
            )


# ---- kernel-only setups ------------------------------------------------------------------------


def _veth(ns: str, dev: str, peer_ns: str, peer: str) -> None:
    sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer, ns=ns)
    sh("ip", "link", "set", peer, "netns", peer_ns, ns=ns)


def _up(ns: str, *devs: str) -> None:
    for dev in devs:
        sh("ip", "link", "set", dev, "up", ns=ns)


@contextlib.contextmanager
def underlay_nodes(mtu: int) -> Iterator[tuple[list[str], list[str]]]:
    """The kernel setups' namespaces: the underlay (``br0``), two nodes on it (``eth0``,
    forwarding on) and a pod behind each (its ``eth0`` to the node's ``lxc0``, pod MTU ``mtu``,
    default route via the node); yields (nodes, pods), removed on exit."""
    t = tag()
    under = f"{t}-u"
    nodes, pods = [f"{t}-n1", f"{t}-n2"], [f"{t}-p1", f"{t}-p2"]
    with scratch_netns([under, *nodes, *pods]):
        sh("ip", "link", "add", "br0", "type", "bridge", ns=under)
        _up(under, "br0")
        for i, (node, pod) in enumerate(zip(nodes, pods, strict=True), start=1):
            _veth(node, "eth0", under, f"n{i}")
            sh("ip", "link", "set", f"n{i}", "master", "br0", ns=under)
            _up(under, f"n{i}")
            sh("ip", "addr", "add", f"{UNDERLAY}.{i + 1}/24", "dev", "eth0", ns=node)
            _veth(pod, "eth0", node, "lxc0")
            for ns, dev in ((pod, "eth0"), (node, "lxc0")):
                sh("ip", "link", "set", dev, "mtu", str(mtu), ns=ns)
            sh("ip", "addr", "add", f"10.0.{i}.10/24", "dev", "eth0", ns=pod)
            sh("ip", "addr", "add", f"10.0.{i}.1/24", "dev", "lxc0", ns=node)
            _up(pod, "eth0")
            _up(node, "eth0", "lxc0")
            sh("ip", "route", "add", "default", "via", f"10.0.{i}.1", ns=pod)
            sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)
        yield nodes, pods


def vxlan_devices(nodes: list[str]) -> None:
    """Setup d's vxlan device (id 1, the other node as remote, UDP 8472) on each node, and its
    route for the other node's pod /24 over it."""
    for i, node in enumerate(nodes, start=1):
        j = 3 - i  # the other node
        sh("ip", "link", "add", "vxlan0", "type", "vxlan", "id", str(VXLAN_ID),
           "local", f"{UNDERLAY}.{i + 1}", "remote", f"{UNDERLAY}.{j + 1}",
           "dstport", str(VXLAN_PORT), "dev", "eth0", ns=node)  # fmt: skip
        sh("ip", "addr", "add", f"10.1.0.{i}/24", "dev", "vxlan0", ns=node)
        _up(node, "vxlan0")
        sh("ip", "route", "add", f"10.0.{j}.0/24", "via", f"10.1.0.{j}", "dev", "vxlan0", ns=node)


@contextlib.contextmanager
def kernel_nodes(connrate: Path, *, vxlan: bool) -> Iterator[list[Target]]:
    """Setup a (``vxlan`` False) or d: the underlay, two nodes, a pod behind each."""
    with underlay_nodes(VXLAN_MTU if vxlan else 1500) as (nodes, pods):
        if vxlan:
            vxlan_devices(nodes)
        else:
            for i, node in enumerate(nodes, start=1):
                j = 3 - i  # the other node
                sh("ip", "route", "add", f"10.0.{j}.0/24", "via", f"{UNDERLAY}.{j + 1}",
                   "dev", "eth0", ns=node)  # fmt: skip
        with tools.servers(pods[1], connrate):
            name = VXLAN if vxlan else BARE
            target = Target(name, name, None, tools.enter(pods[0]), "10.0.2.10", netns=pods[0])
            _check_path(target, connrate, nodes[0], "vxlan0" if vxlan else "eth0")
            yield [target]


# ---- ciliary -----------------------------------------------------------------------------------

POD_POOL = "10.200.0.0/16"  # the lab's default clusterPoolIPv4PodCIDRList
ROUTING = {
    TUNNEL: "  routingMode: tunnel\n",
    NATIVE: "  routingMode: native\n  autoDirectNodeRoutes: true\n"
    f"  ipv4NativeRoutingCIDR: {POD_POOL}\n",
}
VXLAN_DEVICE = "ciliary_vxlan"


@contextlib.contextmanager
def ciliary_nodes(connrate: Path, name: str) -> Iterator[tuple[list[Target], list[int]]]:
    """Setup b or c: a two-node lab, the client pod on the first node, the server pod on the
    second; yields the target and the lab's agents (idle before every run)."""
    t = tag()
    nodes = [f"{t}a", f"{t}b"]
    placed = [("client", 0, nodes[0]), ("server", 0, nodes[1])]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        path = Path(tmp) / "lab.yaml"
        path.write_text(datapath.lab_yaml(t, nodes, placed, ROUTING[name]))
        view = manager.up(path)  # a failed `up` removes what it made
        try:
            rec = manager.record(t)
            pods = {p.name: p for p in view.pods}
            client, server = pods["client-0"], pods["server-0"]
            node_ns = {n.name: n.netns for n in rec.nodes}
            if server.ipv4 is None or client.node == server.node:
                raise RuntimeError(f"{name}: server pod without IPv4 or on the client's node")
            stack.enter_context(tools.servers(server.netns, connrate))
            agent = {n.name: n.agent_pid for n in rec.nodes}
            other = tuple(p for p in [agent[server.node]] if p)
            target = Target(name, name, None, tools.enter(client.netns), server.ipv4,
                            agent[client.node], other, netns=client.netns, lab=t)  # fmt: skip
            if name == TUNNEL:
                _check_path(target, connrate, node_ns[client.node], "eth0",
                            overhead=TUNNEL_OVERHEAD)  # fmt: skip
            else:
                _check_path(target, connrate, node_ns[client.node], "eth0", VXLAN_DEVICE)
            yield [target], [n.agent_pid for n in rec.nodes if n.agent_pid]
        finally:
            stack.close()  # servers first, then the lab
            manager.down(t)


# ---- per packet: each program's own time by BPF_PROG_TEST_RUN ----------------------------------

PACKET_RUNS = 2000
"""Test runs per established/reply row (the same skb each time: medians of the kernel's time)."""
PACKET_NEW = 400
"""New connections (SYNs of distinct ports) per "new" row: each creates its conntrack entry."""
PACKET_PASSES = 3
"""per_packet passes per setup; each row reports the lowest pass's median: a pass during which an
agent decodes the previous one's events on the same core reads up to 1.6x higher."""
_packet_ports = itertools.count(2000, PACKET_NEW)
"""Each per_packet call's client ports: new to every conntrack, below the ephemeral range."""


def _tcp(ips: tuple[str, str], ports: tuple[int, int], flags: int, macs: bytes) -> bytes:
    """An Ethernet (``macs``: destination, source) + IPv4 + TCP frame, 64 bytes of payload when
    not a SYN, IPv4 checksum valid (the datapath checks no L4 checksum)."""
    (src, dst), (sport, dport) = ips, ports
    payload = b"" if flags & 0x02 else b"x" * 64
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65000, 0, 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                               ipaddress.IPv4Address(src).packed,
                               ipaddress.IPv4Address(dst).packed))  # fmt: skip
    words = sum(int.from_bytes(ip[i : i + 2], "big") for i in range(0, 20, 2))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    ip[10:12] = struct.pack("!H", ~words & 0xFFFF)
    return macs + b"\x08\x00" + bytes(ip) + tcp


def _link(netns: str, dev: str) -> tuple[int, bytes, int]:
    """(ifindex, MAC, the peer's ifindex or 0) of ``dev`` in ``netns``."""
    (info,) = json.loads(sh("ip", "-j", "-n", netns, "link", "show", dev).stdout)
    return (
        int(info["ifindex"]),
        bytes.fromhex(info["address"].replace(":", "")),
        int(info.get("link_index", 0)),
    )


def per_packet(lab: str) -> dict[str, float]:
    """ns per packet of each program on the client → server path and back, by
    BPF_PROG_TEST_RUN of the node's pinned programs in its netns (frames as the pods and the
    underlay carry them: the sending node's cil_from_container gets the pod's frame, the
    receiving node's cil_from_netdev what that program sent (encapsulated in tunnel mode);
    each node's neighbour of the other resolved first): "new" (a SYN, ``PACKET_NEW`` distinct
    ports), "first reply" (their SYN-ACKs), "established" (a request segment of one of them),
    "reply" (a later segment back). The kernel's own clock around the program: no tool, no
    scheduler, no other packet in it; caches as warm as the repetition makes them, so a floor,
    not a share of a connection."""
    rec = manager.record(lab)
    pods = {p.name: p for p in rec.pods}
    client, server = pods["client-0"], pods["server-0"]
    nodes = {n.name: n for n in rec.nodes}
    cn, sn = nodes[client.node], nodes[server.node]
    assert client.ipv4 and server.ipv4
    ci, si = client.ipv4.partition("/")[0], server.ipv4.partition("/")[0]
    _, c_mac, c_lxc = _link(client.netns, "eth0")
    _, s_mac, s_lxc = _link(server.netns, "eth0")
    a_eth, b_eth = _link(cn.netns, "eth0")[0], _link(sn.netns, "eth0")[0]
    lxc_mac = {}
    for node, idx in ((cn, c_lxc), (sn, s_lxc)):
        (info,) = [
            i for i in json.loads(sh("ip", "-j", "-n", node.netns, "link").stdout)
            if i["ifindex"] == idx
        ]  # fmt: skip
        lxc_mac[node.name] = bytes.fromhex(info["address"].replace(":", ""))
    for x, y in ((cn, sn), (sn, cn)):  # the neighbour bpf_fib_lookup needs
        addrs = json.loads(sh("ip", "-j", "-4", "-n", y.netns, "addr", "show", "eth0").stdout)
        sh("ping", "-c", "1", "-W", "1", addrs[0]["addr_info"][0]["local"], ns=x.netns)

    def runs(
        node: Any, prog: str, frames: list[bytes], ifindex: int, repeat: int = 1
    ) -> tuple[float, list[bytes]]:
        """The median time of ``frames`` each run ``repeat`` times, and each one's output."""
        times, outs = [], []
        with link.in_netns(f"/run/netns/{node.netns}"):
            fd = libbpf.prog_from_pin(f"{node.pin_dir}/{prog}")
            try:
                for f in frames:
                    res = [libbpf.prog_test_run_skb(fd, f, ifindex=ifindex) for _ in range(repeat)]
                    times += [r.duration_ns for r in res]
                    outs.append(res[0].data)
            finally:
                os.close(fd)
        return float(statistics.median(times)), outs

    # what one node's cil_from_container sends is what the other's cil_from_netdev gets (the
    # encapsulated frame in tunnel mode): each row's frames are the previous row's output
    base = next(_packet_ports)
    c_lxc_mac, s_lxc_mac = lxc_mac[cn.name], lxc_mac[sn.name]
    new = range(base, base + PACKET_NEW)
    out: dict[str, float] = {}
    rows = [
        ("new", [_tcp((ci, si), (p, 5201), 0x02, c_lxc_mac + c_mac) for p in new], 1),
        ("first reply", [_tcp((si, ci), (5201, p), 0x12, s_lxc_mac + s_mac) for p in new], 1),
        ("established", [_tcp((ci, si), (base, 5201), 0x10, c_lxc_mac + c_mac)], PACKET_RUNS),
        ("reply", [_tcp((si, ci), (5201, base), 0x10, s_lxc_mac + s_mac)], PACKET_RUNS),
    ]
    for kind, frames, repeat in rows:
        request = kind in ("new", "established")
        src, dst = (cn, sn) if request else (sn, cn)
        side = "client's" if request else "server's"
        other = "server's" if request else "client's"
        t, sent = runs(src, "cil_from_container", frames, c_lxc if request else s_lxc, repeat)
        out[f"cil_from_container ({side} node), {kind}"] = t
        t, _ = runs(dst, "cil_from_netdev", sent, b_eth if request else a_eth, repeat)
        out[f"cil_from_netdev ({other} node), {kind}"] = t
    return out


def per_packet_result(setups: dict[str, dict[str, float]]) -> dict[str, Any]:
    """per_packet of each ciliary setup as a result (``setups``: name → its rows)."""
    return {
        "benchmark": "per packet: each program's own time (BPF_PROG_TEST_RUN of the node's"
        " pinned programs, medians, ns)",
        "metric": "per-packet",
        "unit": "ns",
        "baseline": None,
        "values": setups,
        "group": GROUP,
    }


def paired_ratio(setup: list[float], base: list[float]) -> float | None:
    """The median of the rounds' own ratios setup / base (the two lists: one value per round, in
    round order); None when no round has a base value."""
    ratios = [s / b for s, b in zip(setup, base, strict=True) if b]
    return median(ratios) if ratios else None


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [""]
    return f"{type(err).__name__}: {lines[0][:300]}"


# ---- the run -----------------------------------------------------------------------------------


def run(
    *, rounds: int = 5, seconds: float = 2, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    with tools.connrate_binary() as connrate, contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        targets: list[Target] = stack.enter_context(kernel_nodes(connrate, vxlan=False))
        agents: list[int] = []
        unavailable: dict[str, str] = {}
        for name in (TUNNEL, NATIVE):
            try:
                lab_targets, lab_agents = stack.enter_context(ciliary_nodes(connrate, name))
            except Exception as err:  # a lab feature not there (yet): said in the results
                unavailable[name] = _reason(err)
                log(f"{GROUP}: {name}: not available: {unavailable[name]}")
                continue
            targets += lab_targets
            agents += lab_agents
        targets += stack.enter_context(kernel_nodes(connrate, vxlan=True))
        (control,) = stack.enter_context(kernel_nodes(connrate, vxlan=False))
        control.name = control.kind = CONTROL
        log(f"{GROUP}: {len(targets)} setups and a control ready after"
            f" {time.monotonic() - t0:.1f}s")  # fmt: skip
        metrics = datapath.tool_metrics(connrate)
        samples, agent_cpu = datapath.interleave(
            targets, metrics, rounds=rounds, seconds=seconds, agents=agents, log=log, group=GROUP
        )
        labs = [t for name in (TUNNEL, NATIVE) for t in targets if t.name == name]
        alternating = []
        # b/a's and c/a's connection rates with load changes falling on both alike, then the
        # same method's control: a against a second a, which must read 1.00
        for second in (*labs, control):
            pair = (targets[0], second)
            rates = datapath.alternating_connections(
                connrate, pair, rounds=rounds, seconds=seconds, agents=agents, log=log
            )
            result = {**datapath.alternating_result(pair, rates, seconds=seconds), "group": GROUP}
            if second is control:
                result["note"] = "the method's control, a against a second a: 1.00 when fair"
            alternating.append(result)
        packets: dict[str, dict[str, float]] = {}
        for t in labs:  # PACKET_PASSES passes, each with the agents idle, as every run
            passes = []
            for _ in range(PACKET_PASSES):
                datapath._quiesce(agents, log, GROUP)
                passes.append(per_packet(t.lab))
            packets[t.name] = {row: min(p[row] for p in passes) for row in passes[0]}
        log(f"{GROUP}: per-packet test runs done")
    results = datapath.results_of(
        targets, metrics, samples, rounds=rounds, seconds=seconds, group=GROUP
    )
    for res in results:
        v, per_round = res["values"], res["samples"]
        res["ratios"] = {
            r: {
                "setup": s,
                "value": v[s] / v[BARE] if s in v else None,
                "paired": paired_ratio(per_round[s], per_round[BARE]) if s in v else None,
                "goal": GOALS.get(r),
            }
            for r, s in RATIOS.items()
        }
        res["unavailable"] = unavailable
    results += alternating
    results.append(datapath.agent_cpu_result(agent_cpu, "both nodes' agents'", GROUP))
    if packets:
        results.append(per_packet_result(packets))
    for name, reason in unavailable.items():
        log(f"{GROUP}: {name} not available: {reason}")
    return results
