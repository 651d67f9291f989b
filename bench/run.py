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

from bench import throughput

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
        base = res["median"]["bare-veth"]
        for setup, value in res["median"].items():
            ratio = value / base if base else 0.0
            lines.append(
                f"| {res['benchmark']} | {setup} | {value:.2f} {res['unit']} | {ratio:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="ciliary benchmarks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    results = {
        "machine": machine(),
        "benchmarks": [
            throughput.run(rounds=args.rounds, seconds=args.seconds, streams=1),
            throughput.run(rounds=args.rounds, seconds=args.seconds, streams=4),
        ],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    md = to_markdown(results)
    (RESULTS / "latest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
