"""Rendering of ``latest.json``: the markdown tables (``latest.md``) and the PNG plots.

Every result is a dict with ``benchmark``, ``unit``, ``baseline`` (a setup name or None),
``values`` (setup → median) and ``group`` (and ``run``, date and command, when a partial run kept
it from an earlier one); datapath results also carry ``metric``,
``higher_is_better`` and ``setups`` (setup → kind, entries), from which the summary (b/a, c/a)
and the policy-scale tables and plots are built. Groups without a renderer of their own get one
table per benchmark: setup, median, ratio against the baseline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

Result = dict[str, Any]

_METRIC_TITLES = {
    "tcp1": "TCP throughput, 1 stream",
    "tcp4": "TCP throughput, 4 streams",
    "rr-p50": "TCP request/response latency p50",
    "rr-p99": "TCP request/response latency p99",
    "crr": "TCP connection rate",
}
_PER_PACKET_RUNS = {"rr": "latency (sockperf ping-pong)", "crr": "connection-rate"}


def _num(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def _direction(res: Result) -> str:
    return "higher is better" if res.get("higher_is_better", True) else "lower is better"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"Machine: Linux {m['kernel']}, {m.get('cpu_model', '?')}, {m['cpus']} cores,"
        f" {m['mem_gib']} GiB RAM, {m.get('iptables', 'iptables ?')}; run {m['date']}"
        f" in {m.get('duration_s', 0) / 60:.1f} min."
    )


# ---- datapath ---------------------------------------------------------------------------------


def _setup_of(res: Result, kind: str, entries_min: bool = True) -> str | None:
    """The setup of ``kind`` with the fewest entries (b: ciliary, c: iptables 1 rule)."""
    cands = [(s["entries"] or 0, name) for name, s in res["setups"].items() if s["kind"] == kind]
    return min(cands)[1] if cands else None


def _agent_cpu_table(res: Result) -> list[str]:
    """Rows: ciliary setups; columns: metrics (keys of ``values`` are "<setup> | <metric>")."""
    cells: dict[str, dict[str, float]] = {}
    for key, value in res["values"].items():
        setup, metric = key.split(" | ", 1)
        cells.setdefault(setup, {})[metric] = value
    metrics = list(dict.fromkeys(m for row in cells.values() for m in row))
    short = {"tcp1": "TCP 1 stream", "tcp4": "TCP 4 streams", "rr": "latency", "crr": "conn rate"}
    lines = [
        f"{res['benchmark']}:",
        "",
        "| setup | " + " | ".join(short.get(m, m) for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for setup, row in cells.items():
        lines.append(f"| {setup} | " + " | ".join(_num(row[m]) for m in metrics) + " |")
    return lines


def datapath_tables(all_results: list[Result]) -> list[str]:
    results = [r for r in all_results if "setups" in r]
    extra = [r for r in all_results if r.get("metric") == "agent-cpu" and r["values"]]
    per_packet = [
        r for r in all_results if str(r.get("metric", "")).startswith("bpf-ns-per-packet-")
    ]
    alternating = [r for r in all_results if r.get("metric") == "crr-alternating"]
    if not results:
        return []
    first = results[0]
    a = first["baseline"]
    b, c = _setup_of(first, "ciliary"), _setup_of(first, "iptables")
    route, floor = _setup_of(first, "route"), _setup_of(first, "tc floor")
    cols = [s for s in (a, b, c, route, floor) if s]
    lines = [
        "## Datapath: pod → pod on one node",
        "",
        f"Medians of interleaved rounds after a warm-up; `b/a` and `c/a` are ratios against {a}"
        " measured in the same rounds (throughput and connection rate: higher is better;"
        " latency: lower is better).",
        "",
        "| metric | " + " | ".join(cols) + " | b/a | c/a |",
        "|---|" + "---|" * (len(cols) + 2),
    ]
    for res in results:
        v = res["values"]
        row = [f"{_METRIC_TITLES.get(res['metric'], res['benchmark'])} ({res['unit']})"]
        row += [_num(v[s]) for s in cols]
        row += [f"**{v[b] / v[a]:.3f}**" if b else "-", f"{v[c] / v[a]:.3f}" if c else "-"]
        lines.append("| " + " | ".join(row) + " |")
    b_entries = first["setups"][b]["entries"] if b else "?"
    lines += [
        "",
        "- **a**: two namespaces joined by one veth pair, kernel only, no BPF: the physical limit.",
        f"- **b**: two ciliary lab pods on one node; a CiliumNetworkPolicy allows the client on"
        f" the server's ports, enforced by `bpf_lxc` (conntrack, ipcache, policy lookups, events,"
        f" `bpf_redirect_peer`); the server's policy map holds {b_entries} entries (the client's"
        " L3/L4 allow, the host's allow, the egress allow-all).",
        "- **c**: pod → node namespace → pod routed by the kernel, the node filtering as"
        " iptables-based CNIs do: FORWARD → a per-pod chain with conntrack"
        " `RELATED,ESTABLISHED -j ACCEPT` first, N-1 non-matching allows, the client's allow,"
        " DROP (N = 1 here).",
        "- **route**: the same routed path without any filter.",
        *(
            [
                "- **tc floor**: pod → node namespace → pod as b, through the node-side veth's tc"
                " ingress (clsact) with a minimal program (`bench/tcfloor.c`: the MACs, then"
                " `bpf_redirect_peer`): what the hook and the redirect cost without `bpf_lxc`."
            ]
            if floor
            else []
        ),
        f"- Tools: iperf3 ({first.get('seconds', '?')} s runs); sockperf TCP ping-pong, 64 B,"
        " full round trip, client and server pinned to one CPU; `bench/connrate.c` (C, compiled"
        " at bench time): connect, 64 B request, 64 B response, close, one connection at a"
        " time, pinned likewise.",
        *(
            f"- **b**'s `cil_from_container` per packet (bpf_stats run_time_ns / run_cnt, both"
            f" directions, stats on for separate runs only) during the"
            f" {_PER_PACKET_RUNS.get(r['metric'].removeprefix('bpf-ns-per-packet-'), '?')}"
            f" runs: **{_num(next(iter(r['values'].values())))} ns**"
            for r in per_packet
        ),
        *(_alternating_line(r) for r in alternating),
        "",
        *(line for res in extra for line in [*_agent_cpu_table(res), ""]),
        *scale_table(results),
    ]
    return lines


def _alternating_line(res: Result) -> str:
    """The datapath group's alternating connection-rate runs (bench.datapath.alternating_result)
    as one line under its table."""
    v = res["values"]
    a = res["baseline"]
    b = next(k for k in res["samples"] if k != a)
    label = b.split(":", 1)[0] if ":" in b else b  # "b: ciliary" → b, "tc floor" as it is
    return (
        f"- **{label}/a connection rate, alternating in one run** (one `connrate -a` process"
        f" whose connections alternate between a and {label}, each side's over their own time:"
        f" load that changes during a run falls on both alike): median of the rounds' ratios"
        f" **{v['median of the round ratios (%)'] / 100:.3f}** (rounds"
        f" {v['lowest round (%)'] / 100:.3f}-{v['highest round (%)'] / 100:.3f}; a"
        f" {_num(v[a])}, {label} {_num(v[b])} conn/s)"
        + (f"; {res['note']}" if res.get("note") else "")
    )


def scale_series(res: Result, kind: str) -> list[tuple[int, str]]:
    return sorted(
        (s["entries"] or 0, name) for name, s in res["setups"].items() if s["kind"] == kind
    )


def scale_table(results: list[Result]) -> list[str]:
    first = results[0]
    ours, theirs = scale_series(first, "ciliary"), scale_series(first, "iptables")
    lines = [
        "### Policy scale",
        "",
        "ciliary: entries in the server's policy map (the client's allow + synthetic identities,"
        " each also in the node's ipcache); iptables: rules in the server's chain before and"
        f" including the client's allow. Ratio against {first['baseline']}, median in"
        " parentheses; a flat row is the goal.",
        "",
        "| metric | setup | " + " | ".join(f"~{_k(_round(n))}" for n, _ in ours) + " |",
        "|---|---|" + "---|" * len(ours),
    ]
    for res in results:
        v, a = res["values"], res["values"][res["baseline"]]
        title = _METRIC_TITLES.get(res["metric"], res["metric"])
        for label, series in (("ciliary", ours), ("iptables", theirs)):
            by_n = {_round(n): name for n, name in series}
            cells = []
            for n, _ in ours:
                name = by_n.get(_round(n))
                cells.append(f"{v[name] / a:.3f} ({_num(v[name])})" if name else "-")
            lines.append(f"| {title} ({res['unit']}) | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    exact = ", ".join(f"{_k(n)}" for n, _ in ours)
    lines.append(f"Exact ciliary policy map sizes: {exact} entries.")
    return lines


def _round(n: int) -> int:
    """Scale points by order of magnitude: the allow policy's 1-3 entries count as 1."""
    for point in (65_000, 10_000, 1_000):
        if n >= point:
            return point
    return 1


def plot_datapath(all_results: list[Result], out_dir: Path) -> list[Path]:
    results = [r for r in all_results if "setups" in r]
    cols = 3
    rows = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for n, res in enumerate(results):
        ax = axes[n // cols][n % cols]
        v, a = res["values"], res["values"][res["baseline"]]
        for kind, style in (("ciliary", "o-"), ("iptables", "s--")):
            series = scale_series(res, kind)
            xs = [max(1, n) for n, _ in series]
            ax.plot(xs, [v[name] / a for _, name in series], style, label=kind)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("policy map entries / iptables rules")
        title = _METRIC_TITLES.get(res["metric"], res["metric"])
        ax.set_title(f"{title} ({_direction(res)})", fontsize=9)
        ax.set_ylabel(f"ratio vs {res['baseline']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for n in range(len(results), rows * cols):
        axes[n // cols][n % cols].axis("off")
    fig.suptitle("pod → pod on one node vs policy size (1.0 = bare veth pair)", fontsize=10)
    fig.tight_layout()
    path = out_dir / "policy_scale.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ---- multinode --------------------------------------------------------------------------------


def multinode_tables(results: list[Result]) -> list[str]:
    """Columns a-d (a setup that was not available: "n/a" and its reason below the table), the
    ratios b/a, c/a, d/a the group computed, the goals of issue #13 above them."""
    extra = [r for r in results if r.get("metric") == "agent-cpu" and r["values"]]
    alternating = [r for r in results if r.get("metric") == "crr-alternating"]
    packets = [r for r in results if r.get("metric") == "per-packet" and r["values"]]
    results = [r for r in results if "ratios" in r]
    first = results[0]
    a = first["baseline"]
    unavailable: dict[str, str] = first.get("unavailable", {})
    ratios: dict[str, dict[str, Any]] = first["ratios"]  # "b/a" → setup, value, goal
    cols = [a, *(r["setup"] for r in ratios.values())]
    goals = ", ".join(f"{k} ≥ {r['goal']}" for k, r in ratios.items() if r.get("goal"))
    lines = [
        "## Datapath: pod → pod across two nodes",
        "",
        f"Medians of interleaved rounds after a warm-up; ratios against {a} measured in the same"
        " rounds (throughput and connection rate: higher is better; latency: lower is better):"
        " the ratio of the medians, and in brackets the median of the rounds' own ratios (each"
        " round measures a and the setup back to back)."
        f" Goals (issue #13, throughput and connection rate): {goals}.",
        "",
        "| metric | " + " | ".join(cols) + " | " + " | ".join(ratios) + " |",
        "|---|" + "---|" * (len(cols) + len(ratios)),
    ]
    for res in results:
        v = res["values"]
        row = [f"{_METRIC_TITLES.get(res['metric'], res['benchmark'])} ({res['unit']})"]
        row += [_num(v[s]) if s in v else "n/a" for s in cols]
        row += [
            _ratio(r["value"]) + (f" ({_ratio(r['paired'])})" if r.get("paired") else "")
            for r in res["ratios"].values()
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "- Every setup: a client pod behind node 1 and a server pod behind node 2, the node"
        " namespaces joined by an underlay namespace's bridge (each node's `eth0`, 172.18.0.x/24,"
        " MTU 1500), as the lab network joins lab nodes.",
        "- **a**: kernel routing only: each node routes the other's pod /24 via its node IP; no"
        " BPF, no encapsulation: the limit.",
        "- **b**: a two-node ciliary lab, `routingMode: tunnel`: `bpf_lxc` writes the VXLAN"
        " headers itself with the source identity in the VNI and sends out of `eth0`, `bpf_host`"
        " decapsulates and enforces the CNP allowing the client on the server's ports (pod MTU"
        " 1450; `ciliary_vxlan` only while a neighbour is unknown).",
        "- **c**: the same lab file with `routingMode: native`, `autoDirectNodeRoutes: true`.",
        "- **d**: a's namespaces, the pod traffic through a Linux vxlan device per node (UDP"
        " 8472, the other node as remote) and a route over it, no BPF; pod MTU 1450.",
        "- Each setup's path is checked before the rounds by node 1's device counters (`eth0`"
        " for a, b and c, the vxlan device for d; for b, 50 bytes more per packet than the"
        " client pod sent; for c, nothing through `ciliary_vxlan`)."
        " Tools as in the one-node table.",
    ]
    lines += [
        f"- **{name}: not available** in this run: {why}" for name, why in unavailable.items()
    ]
    lines += [_alternating_line(r) for r in alternating]
    lines += ["", *(line for res in extra for line in _agent_cpu_table(res))]
    lines += [line for res in packets for line in _per_packet_table(res)]
    return lines


def _per_packet_table(res: Result) -> list[str]:
    """bench/multinode.py's per_packet rows, one column per ciliary setup."""
    setups: dict[str, dict[str, float]] = res["values"]
    rows = list(dict.fromkeys(row for v in setups.values() for row in v))
    lines = [
        "",
        f"{res['benchmark']}: the client's SYNs, a request, the server's first and later replies,"
        " as the pods and the underlay carry them (the receiving node's program gets what the"
        " sending node's sent), run on each node's pinned program in its netns; the lowest of"
        " three passes' medians (caches as warm as repetition makes them: a floor per packet,"
        " not a connection's share):",
        "",
        "| program, packet | " + " | ".join(setups) + " |",
        "|---|" + "---|" * len(setups),
    ]
    for row in rows:
        cells = [_num(v[row]) if row in v else "n/a" for v in setups.values()]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# ---- control plane ----------------------------------------------------------------------------


def plot_controlplane(results: list[Result], out_dir: Path) -> list[Path]:
    curves = [r for r in results if r.get("baseline")]
    if not curves:
        return []
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    for ax, res in zip(axes[0], curves, strict=True):
        xs = [int(name.split()[0]) for name in res["values"]]
        ax.plot(xs, list(res["values"].values()), "o-")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("endpoints")
        ax.set_ylabel(res["unit"])
        ax.set_title(res.get("short") or res["benchmark"].split(",")[0], fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "controlplane.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


# ---- generic ----------------------------------------------------------------------------------


def generic_tables(results: list[Result]) -> list[str]:
    """One table for the group: the benchmark named on its first row, ratio against its
    baseline ("-" where it has none)."""
    lines = ["| benchmark | setup | median | ratio |", "|---|---|---|---|"]
    for res in results:
        base = res["values"].get(res["baseline"]) if res.get("baseline") else None
        for n, (setup, value) in enumerate(res["values"].items()):
            ratio = f"{value / base:.3f}" if base else "-"
            title = res["benchmark"] if n == 0 else ""
            lines.append(f"| {title} | {setup} | {_num(value)} {res['unit']} | {ratio} |")
    return lines


def hubble_ui_tables(results: list[Result]) -> list[str]:
    """Frame time and lag: no flows, loaded, ratio, the goal and whether it is met; then the
    run's facts (cards drawn, flows taken in, backend CPU)."""
    lines = [f"## {TITLES['hubble-ui']}", "", ABOUT["hubble-ui"], ""]
    timed = [r for r in results if r.get("baseline")]
    if timed:
        base_name = timed[0]["baseline"]
        loaded = next(k for k in timed[0]["values"] if k != base_name)
        lines += [
            f"| metric (ms) | {base_name} | {loaded} | ratio | goal |",
            "|---|---|---|---|---|",
        ]
        for res in timed:
            v = res["values"]
            base, value = v[base_name], v[loaded]
            ratio = f"{value / base:.2f}" if base > 0 else "-"
            goal = res.get("goal")
            verdict = "met" if goal is not None and value <= goal else "**not met**"
            met = "-" if goal is None else f"≤ {goal:g}: {verdict}"
            lines.append(f"| {res['benchmark']} | {_num(base)} | {_num(value)} | {ratio} | {met} |")
        lines.append("")
    for res in results:
        if res.get("baseline"):
            continue
        lines += [f"{res['benchmark']}:", "", "| | |", "|---|---|"]
        for key, value in res["values"].items():
            shown = _num(value) if isinstance(value, int | float) else str(value)
            lines.append(f"| {key} | {shown} |")
    return lines


Renderer = Callable[[list[Result]], list[str]]
Plotter = Callable[[list[Result], Path], list[Path]]
TITLES = {
    "controlplane": "Control plane: agent with 0 / 100 / 1000 endpoints",
    "cni": "CNI ADD",
    "policy": "Network policy engine and rule changes",
    "hubble": "Hubble: flows per node, losses, observe",
    "hubble-ui": "Hubble UI: 200 workloads and 5,000 flows/min in a browser",
    "apiserver": "Kubernetes API server on etcd: writes, watch fan-out, memory",
    "workloads": "Workloads: a Deployment on two nodes, agent memory, policy change → enforced",
    "services": "Services: ClusterIP vs pod IP with 1 / 1k / 10k Services, ciliary vs iptables",
    "l7": "L7: HTTP through ciliary's L7 path vs a standalone Envoy; the DNS proxy",
}
ABOUT = {
    "l7": (
        "A client pod's HTTP GETs (httpload: one in flight, one keep-alive connection or a new"
        " connection per request) to nginx in a server pod on one node: a: direct (no L7 rule),"
        " b: through ciliary's L7 path (an egress HTTP rule: the datapath redirects to the"
        " node's Envoy, RBAC, access log, upstream as the pod), c: through the same Envoy binary"
        " as a plain reverse proxy in a third pod. Ratio: against c (b's is the target b/c ≥ 0.9;"
        " latency: lower is better). DNS rows (target p50 added ≤ 1 ms): the client pod's"
        " queries to DNS servers in the server pod, port 53 through the node agent's DNS proxy"
        " (a rules: dns rule, the datapath's redirect) vs 5353 direct (in the lab); and"
        " bench/dnsproxy.py's (the proxy alone behind iptables TPROXY, scratch namespaces)."
        " See bench/l7.py."
    ),
    "services": (
        "A client pod's connections (connrate: connect, 64 B request/response, close) and"
        " sockperf ping-pong latency through a ClusterIP against straight to the backend's pod"
        " IP (ratio: ClusterIP / pod IP, goal ≥ 0.95 for the rate, ≤ 1.05 for latency). ciliary:"
        " a one-node lab, tc-level load balancing in bpf_lxc, 1 Service, then 1k and 10k"
        " Services created through the lab's API server (timed until the node's BPF service map"
        " holds them); ciliary socket-LB: the same with the translation at connect() (bpf_sock),"
        " 1, 1k and 10k Services. iptables: kube-proxy's nat rules (KUBE-SERVICES → KUBE-SVC with"
        " statistic splits → KUBE-SEP DNAT) for 1, 1k, 10k Services on a kernel-routed node,"
        " the measured Service in the middle of the list. See bench/services.py."
    ),
    "hubble": (
        "The node's flow pipeline in-process (record decode → flow with endpoints, identities"
        " and policy → observer ring + the lab's default Hubble metrics → one filter), then a"
        " one-node lab with `monitorAggregation: none` fed UDP at fixed rates by sockperf until"
        " a LostEvent appears (counted by a GetFlows follower that sees every loss), and"
        " `ciliary observe -o json` timed as a user runs it, ring full."
    ),
    "hubble-ui": (
        "A synthetic relay (a real gRPC Observer: GetFlows, GetNodes, GetNamespaces) with flows"
        " between the pods of 200 Deployments (two peers each, some dropped, replies, DNS) at"
        " 5,000 flows/min, `ciliary hubble ui --relay` on it, and Debian's headless Chromium"
        " (Playwright) on the page: every requestAnimationFrame interval (frame time; 16.7 ms"
        " when no frame is late) and how late a 50 ms setTimeout fires (event loop lag) over the"
        " window, the map grouped and every flow streamed. Baseline: the same page, same browser"
        " and run, on a namespace without flows. Goals: p99 frame time ≤ 50 ms, p99 lag ≤ 100 ms."
        " See bench/hubble_ui.py."
    ),
    "controlplane": (
        "One lab node with 20 policies; endpoints added through the agent's API (what"
        " `ciliary-cni` calls) into scratch namespaces, labels `app: cp-(i mod 20)`. RSS and idle"
        " CPU of the agent process (all threads); one policy change = re-import of one rule,"
        " timed to the API's answer (every endpoint is regenerated before it answers)."
    ),
    "cni": (
        "`ciliary-cni` executed as a runtime does, against Debian's reference `bridge` +"
        " `host-local` chain in the same run."
    ),
    "policy": (
        "The policy engine in-process on synthetic clusters, and one rule change through the"
        " agent until the BPF map and then a real packet see it."
    ),
    "apiserver": (
        "`ciliary-apiserver` over TLS (client certificates of the lab CA) on a real etcd, both"
        " started by the bench; the baseline is that etcd driven directly with aetcd in the same"
        " run, from the same process, at the same concurrency (8 clients) and with values as long"
        " as the stored objects. Creates are HTTPS POSTs of ConfigMaps (one guarded etcd"
        " transaction each) against plain etcd puts; watchers are HTTP watch streams against"
        " etcd watch streams (the API server opens one etcd watch per client watch), connected"
        " before a writer creates the objects, so with 1 watcher the rate is bounded by the"
        " writes. Memory: the API server process's RSS idle and with 10k ConfigMaps stored,"
        " after one unpaginated list of all of them. Two cores are shared by etcd, the API"
        " server and the clients."
    ),
    "workloads": (
        "A two-node lab with its API server, controller manager, scheduler and kubelet role:"
        " `kubectl apply` of a Deployment (`sleep infinity` pods) until every pod is Ready, per"
        " pod from its ADDED to its Ready watch event, against bare CNI ADDs of as many pods"
        " through `ciliary-cni` in the same run; the agents' RSS as the Deployment grows; a CNP"
        " on the Deployment's pods flipped with `kubectl apply` until a real SYN on each node"
        " gets the new verdict. See docs/benchmarks.md."
    ),
}
RENDERERS: dict[str, Renderer] = {
    "datapath": datapath_tables,
    "multinode": multinode_tables,
    "hubble-ui": hubble_ui_tables,
}
PLOTTERS: dict[str, Plotter] = {"datapath": plot_datapath, "controlplane": plot_controlplane}


def to_markdown(results: dict[str, Any], order: list[str]) -> str:
    m = results["machine"]
    lines = [
        "# ciliary benchmarks",
        "",
        f"- {machine_line(m)}",
        f"- Reproduce: `{results.get('command', 'make bench')}` (as root; plots in"
        " `bench/results/*.png`).",
        "",
    ]
    earlier: dict[tuple[str, str], list[str]] = {}
    for res in results["benchmarks"]:
        run = res.get("run")
        if run is not None:
            groups_of = earlier.setdefault((run["date"], run["command"]), [])
            if res.get("group", "other") not in groups_of:
                groups_of.append(res.get("group", "other"))
    if earlier:
        lines[-1:-1] = [
            f"- Kept from earlier runs: {', '.join(groups)} from `{command}` run {date}."
            for (date, command), groups in earlier.items()
        ]
    if results.get("failed"):
        lines += [
            f"**Failed groups: {', '.join(results['failed'])}** (their tables, if any, are from"
            " an earlier run).",
            "",
        ]
    if results.get("quick"):
        lines += ["**Quick run (reduced sizes): for development, not for publication.**", ""]
    groups: dict[str, list[Result]] = {}
    for res in results["benchmarks"]:
        groups.setdefault(res.get("group", "other"), []).append(res)
    for group in sorted(groups, key=lambda g: order.index(g) if g in order else len(order)):
        render = RENDERERS.get(group)
        if render is not None:
            lines += render(groups[group])
        else:
            lines += [f"## {TITLES.get(group, group)}", ""]
            if group in ABOUT:
                lines += [ABOUT[group], ""]
            lines += generic_tables(groups[group])
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    paths = []
    groups: dict[str, list[Result]] = {}
    for res in results["benchmarks"]:
        groups.setdefault(res.get("group", "other"), []).append(res)
    for group, plotter in PLOTTERS.items():
        if groups.get(group):
            paths += plotter(groups[group], out_dir)
    return paths


def main() -> int:
    """``python -m bench.report``: re-render ``latest.md`` and the plots from ``latest.json``."""
    from bench.run import GROUPS, RESULTS  # noqa: PLC0415 (run imports this module)

    results = json.loads((RESULTS / "latest.json").read_text())
    (RESULTS / "latest.md").write_text(to_markdown(results, [g.name for g in GROUPS]))
    for path in plots(results, RESULTS):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
