"""``make bench``: run every benchmark group, write ``bench/results/latest.json``, ``latest.md``
and the plots (``bench/results/*.png``), then regenerate the README's "Performance" section.

Results are ratios against baselines measured in the same run, with absolute medians beside
them; the machine is described in the output so numbers are never read alone. A group is one
entry of ``GROUPS``: a name and a function of the parsed options returning result dicts (see
``bench/report.py``); a group may add its own table renderer and plots in ``report.py``.

``--only GROUP`` runs one group and keeps the other groups' latest results; ``--quick`` runs
every group with reduced sizes (development on a busy machine) and marks the output as such.
Neither rewrites the README unless ``--readme`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    apiserver_bench,
    cni_latency,
    common,
    controlplane,
    datapath,
    dnsproxy,
    hubble_bench,
    hubble_ui,
    l7,
    multinode,
    policy_bench,
    readme,
    report,
    services,
    workloads,
)

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Group:
    name: str
    run: Callable[[argparse.Namespace], list[dict[str, Any]]]
    about: str


def _log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


GROUPS = [
    Group(
        "datapath",
        lambda a: datapath.run(
            rounds=a.rounds,
            seconds=a.seconds,
            scale=(1, 1_000) if a.quick else datapath.SCALE,
            iptables_scale=(1, 1_000) if a.quick else datapath.IPTABLES_SCALE,
            log=_log,
        ),
        "pod → pod throughput, latency, connection rate: bare veth, ciliary, iptables; scale",
    ),
    Group(
        "multinode",
        lambda a: multinode.run(rounds=a.rounds, seconds=a.seconds, log=_log),
        "pod → pod across two nodes: kernel routing, ciliary VXLAN and native routing, kernel"
        " VXLAN",
    ),
    Group(
        "controlplane",
        lambda a: controlplane.run(
            levels=(0, 10, 50) if a.quick else controlplane.LEVELS,
            samples=3 if a.quick else 5,
            log=_log,
        ),
        "agent RSS and CPU with 0 / 100 / 1000 endpoints",
    ),
    Group("cni", lambda a: cni_latency.run(pods=a.pods), "CNI ADD → pod reachable"),
    Group(
        "hubble",
        lambda a: hubble_bench.run(rounds=a.rounds, step_seconds=2 if a.quick else 3, log=_log),
        "flows/s decoded and filtered, highest event rate with 0 lost, observe --last 4095",
    ),
    Group(
        "hubble-ui",
        lambda a: hubble_ui.run(seconds=10 if a.quick else 30, log=_log),
        "the Hubble UI page with 200 workloads and 5,000 flows/min: frame time and event loop"
        " lag in headless Chromium against the same page without flows",
    ),
    Group(
        "l7",
        lambda a: l7.run(
            rounds=a.rounds,
            seconds=a.seconds,
            queries=300 if a.quick else dnsproxy.QUERIES,
            log=_log,
        ),
        "HTTP requests/s and p50/p99 pod → pod: direct, through ciliary's L7 path (egress HTTP"
        " rule, the node's Envoy), through a standalone Envoy; a pod's DNS query through the"
        " agent's DNS proxy vs direct to the server",
    ),
    Group(
        "policy",
        lambda a: policy_bench.run(engine_runs=1 if a.quick else 3, flips=20 if a.quick else 60),
        "policy computation, rule change → enforced",
    ),
    Group(
        "apiserver",
        lambda a: apiserver_bench.run(
            rounds=1 if a.quick else apiserver_bench.ROUNDS,
            creates=300 if a.quick else apiserver_bench.CREATES,
            stored=2_000 if a.quick else apiserver_bench.STORED,
            log=_log,
        ),
        "Kubernetes API server vs its etcd: create rate, watch fan-out, RSS with 10k objects",
    ),
    Group(
        "services",
        lambda a: services.run(
            rounds=1 if a.quick else 3,
            pair_rounds=2 if a.quick else services.PAIR_ROUNDS,
            seconds=a.seconds,
            scale=(1, 1_000) if a.quick else services.SCALE,
            socket_lb_scale=(1,) if a.quick else services.SOCKET_LB_SCALE,
            log=_log,
        ),
        "a pod through a ClusterIP vs to the pod IP with 1 / 1k / 10k Services: ciliary (tc-level"
        " LB; socket-LB likewise) vs kube-proxy's iptables rules; time to program the Services",
    ),
    Group(
        "workloads",
        lambda a: workloads.run(
            replicas=a.pods,
            scale_to=a.scale_to or (a.pods if a.quick else workloads.SCALE_TO),
            flips=4 if a.quick else workloads.FLIPS,
            log=_log,
        ),
        "kubectl apply of a Deployment → pods Ready vs bare CNI ADD; agent RSS at 0 / 100 /"
        " 1000 pods; policy change → enforced on both nodes",
    ),
]


def machine() -> dict[str, Any]:
    cpu_model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    ipt = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False)
    return {
        "kernel": platform.release(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "iptables": ipt.stdout.strip() or "iptables: not found",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: list[str] | None = None) -> int:
    names = [g.name for g in GROUPS]
    parser = argparse.ArgumentParser(
        description="ciliary benchmarks",
        epilog="groups: " + "; ".join(f"{g.name}: {g.about}" for g in GROUPS),
    )
    parser.add_argument("--only", choices=names, action="append", help="run these groups only")
    parser.add_argument("--quick", action="store_true", help="reduced sizes, for development")
    parser.add_argument("--rounds", type=int, help="measured rounds per setup (default 5)")
    parser.add_argument("--seconds", type=float, help="seconds per datapath run (default 2)")
    parser.add_argument(
        "--pods", type=int, help="pods for the CNI ADD and workloads benchmarks (default 100)"
    )
    parser.add_argument(
        "--scale-to", type=int, help="pods for the workloads group's largest RSS level (1000)"
    )
    parser.add_argument("--readme", action="store_true", help="regenerate the README section")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.seconds = args.seconds or (1 if args.quick else 2)
    args.pods = args.pods or (20 if args.quick else 100)
    selected = [g for g in GROUPS if args.only is None or g.name in args.only]

    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so every group's finally blocks still remove
    # what it made (netns, labs, servers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.monotonic()
    common.sweep_leftovers(_log)
    benchmarks: list[dict[str, Any]] = []
    failed: list[str] = []
    for group in selected:
        t0 = time.monotonic()
        _log(f"{group.name}: {group.about}")
        try:
            group_results = group.run(args)  # each group removes what it made, also on failure
        except Exception:
            traceback.print_exc()
            _log(f"{group.name}: FAILED after {time.monotonic() - t0:.0f}s, going on")
            failed.append(group.name)
            continue
        for res in group_results:
            res.setdefault("group", group.name)  # what a later partial run of that group replaces
        benchmarks.extend(group_results)
        _log(f"{group.name}: done in {time.monotonic() - t0:.0f}s")

    results: dict[str, Any] = {
        "machine": {**machine(), "duration_s": round(time.monotonic() - start)},
        "command": "make bench"
        if not args.quick and args.only is None
        else " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "benchmarks": benchmarks,
    }
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "latest.json"
    ran = {g.name for g in selected} - set(failed)
    if (args.only is not None or failed) and previous.exists():
        # a partial (or partly failed) run must not erase the other groups' latest numbers
        old = json.loads(previous.read_text())
        keep = [
            b
            for b in old.get("benchmarks", [])
            if b.get("group") in names and b.get("group") not in ran
        ]  # groups that no longer exist go too
        for b in keep:  # which run each kept result is from (said in latest.md's header)
            b.setdefault(
                "run", {"date": old["machine"]["date"], "command": old.get("command", "make bench")}
            )
        results["benchmarks"] = [*keep, *benchmarks]
    results["failed"] = failed
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    md = report.to_markdown(results, names)
    (RESULTS / "latest.md").write_text(md)
    for path in report.plots(results, RESULTS):
        _log(f"plot: {path}")
    print(md)
    if failed:
        _log(f"FAILED: {', '.join(failed)} (their previous results, if any, were kept)")
    elif args.readme or (args.only is None and not args.quick):
        readme.main()
    _log(f"all done in {(time.monotonic() - start) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
