"""Shared bench plumbing: scratch namespaces with guaranteed removal, iperf3 runs, statistics.

Everything here creates uniquely named namespaces and removes them in ``finally`` blocks; no
address or route is ever added to the root namespace (lab prefixes live only inside ours).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)


def tag() -> str:
    return "cilb" + secrets.token_hex(2)


@contextlib.contextmanager
def scratch_netns(names: Sequence[str]) -> Iterator[None]:
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            sh("ip", "link", "set", "lo", "up", ns=name)
        yield
    finally:
        for name in names:
            sh("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def iperf3_server(ns: str) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "iperf3", "-s"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def iperf3_gbps(
    client_argv_prefix: Sequence[str], server_ip: str, seconds: int, streams: int = 1
) -> float:
    """Receiver-side throughput in Gbit/s of one iperf3 TCP run."""
    res = subprocess.run(
        [
            *client_argv_prefix,
            "iperf3",
            "-c",
            server_ip,
            "-t",
            str(seconds),
            "-P",
            str(streams),
            "-J",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {res.stdout[-400:]} {res.stderr[-400:]}")
    data = json.loads(res.stdout)
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
