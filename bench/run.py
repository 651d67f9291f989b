"""``make bench``: run every benchmark, write ``bench/results/latest.json`` and ``latest.md``.

Results are ratios against baselines measured in the same run, with absolute medians beside
them for reference; the machine is described in the output so numbers are never read alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench import cni_latency, policy_bench, throughput

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Machine: Linux {m['kernel']}, {m['cpus']} CPUs, {m['mem_gib']} GiB; {m['date']}.",
        "Reproduce: `make bench`.",
        "",
        "| benchmark | setup | median | ratio vs baseline |",
        "|---|---|---|---|",
    ]
    for res in results["benchmarks"]:
        base_name = res.get("baseline")
        base = res["values"].get(base_name) if base_name else None
        for setup, value in res["values"].items():
            ratio = f"{value / base:.3f}" if base else "-"
            lines.append(f"| {res['benchmark']} | {setup} | {value:.2f} {res['unit']} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="ciliary benchmarks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--pods", type=int, default=100, help="pods for the CNI ADD benchmark")
    parser.add_argument("--only", choices=["throughput", "cni", "policy"], help="run one group")
    args = parser.parse_args()
    benchmarks: list[dict[str, Any]] = []

    def add(group: str, results: list[dict[str, Any]]) -> None:
        for res in results:
            res.setdefault("group", group)  # what a later partial run of that group replaces
        benchmarks.extend(results)

    if args.only in (None, "throughput"):
        add("throughput", [
            throughput.run(rounds=args.rounds, seconds=args.seconds, streams=1),
            throughput.run(rounds=args.rounds, seconds=args.seconds, streams=4),
        ])  # fmt: skip
    if args.only in (None, "cni"):
        add("cni", cni_latency.run(pods=args.pods))
    if args.only in (None, "policy"):
        add("policy", policy_bench.run(rounds=args.rounds))
    results = {"machine": machine(), "benchmarks": benchmarks}
    RESULTS.mkdir(exist_ok=True)
    if args.only is not None:
        # a partial run must not erase the other group's latest numbers
        previous = RESULTS / "latest.json"
        if previous.exists():
            old = json.loads(previous.read_text())
            keep = [b for b in old.get("benchmarks", []) if b.get("group") not in (None, args.only)]
            results["benchmarks"] = [*keep, *benchmarks]
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    md = to_markdown(results)
    (RESULTS / "latest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
