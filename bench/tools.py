"""The traffic tools of the datapath benchmarks, all C programs: iperf3 (TCP throughput), sockperf
(TCP ping-pong latency) and ``connrate`` (short TCP connections per second, ``bench/connrate.c``,
compiled here with the system compiler into a temporary directory; the l7 group's
``httpload``, bench/httpload.c, likewise).

A server side is the three servers in one network namespace, started by us and stopped by pid;
a client side is the argv prefix that enters the client's namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

IPERF_PORT, SOCKPERF_PORT, CONNRATE_PORT = 5201, 5202, 5203
# The serial tools (one message or connection in flight) run client and server on one CPU: on
# this VM a cross-CPU wake-up costs ~45 usec per round trip, and where the scheduler happened to
# put the two processes made unpinned runs bimodal (13 vs 60 usec p50 over loopback). iperf3 is
# not pinned (its streams use both CPUs).
PIN_CPU = str((os.cpu_count() or 1) - 1)
PIN = ["taskset", "-c", PIN_CPU]
PORT_RANGE = (5200, 5203)  # what policies allow: one /14 port prefix, one map entry
SOURCE = Path(__file__).with_name("connrate.c")


@contextlib.contextmanager
def c_binary(source: Path) -> Iterator[Path]:
    """``source`` (one C file of bench/) compiled with the system compiler into a temporary
    directory, removed on exit."""
    cc = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError(f"no C compiler (cc, clang, gcc) to build {source}")
    with tempfile.TemporaryDirectory(prefix="ciliary-bench-") as tmp:
        out = Path(tmp) / source.stem
        subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(source)], check=True, timeout=60)
        yield out


def connrate_binary() -> contextlib.AbstractContextManager[Path]:
    return c_binary(SOURCE)


def enter(netns_name: str) -> list[str]:
    """argv prefix running a command in the named netns (``/run/netns/<name>``)."""
    return ["nsenter", f"--net=/run/netns/{netns_name}", "--"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def listening(netns_name: str, ports: Sequence[int]) -> bool:
    res = subprocess.run(
        [*enter(netns_name), "ss", "-Hltn"], capture_output=True, text=True, check=False
    )
    found = {int(m) for m in re.findall(r":(\d+)\s", res.stdout)}
    return all(p in found for p in ports)


@contextlib.contextmanager
def servers(netns_name: str, connrate: Path) -> Iterator[None]:
    """iperf3, sockperf and connrate servers in ``netns_name``, stopped (by pid) on exit."""
    argvs = [
        ["iperf3", "-s", "-p", str(IPERF_PORT)],
        [*PIN, "sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", str(SOCKPERF_PORT)],
        [*PIN, str(connrate), "-s", str(CONNRATE_PORT)],
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in argvs:
            procs.append(
                subprocess.Popen(
                    [*enter(netns_name), *argv],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 10
        while not listening(netns_name, (IPERF_PORT, SOCKPERF_PORT, CONNRATE_PORT)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"bench servers did not start in {netns_name}")
            time.sleep(0.05)
        yield
    finally:
        for proc in procs:
            stop(proc)


_TOOLS = ("iperf3", "sockperf")


def run_tool(argv: Sequence[str], timeout: float) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        tool = next(
            (a for a in argv if a in _TOOLS or a.endswith(("connrate", "httpload"))), argv[0]
        )
        raise RuntimeError(f"{tool} failed: {res.stdout[-300:]} {res.stderr[-300:]}")
    return res.stdout


def alternating_rates(
    prefix: list[str], connrate: Path, pair: tuple[tuple[str, str], tuple[str, str]], s: float
) -> tuple[float, float]:
    """Connections per second to each of ``pair`` ((client netns, server address) each) from
    one connrate process whose connections alternate between them (``connrate -a``, pinned,
    run after ``prefix``, e.g. a cgroup's): each side's connections over the time they took.
    Load that changes during the run falls on both sides alike."""
    (ns_a, ip_a), (ns_b, ip_b) = pair
    argv = [*prefix, *PIN, str(connrate), "-a", ns_a, ip_a, ns_b, ip_b, str(CONNRATE_PORT), str(s)]
    n_a, t_a, n_b, t_b = run_tool(argv, s + 30).split()
    return int(n_a) / float(t_a), int(n_b) / float(t_b)


def iperf3_gbps(client: Sequence[str], ip: str, seconds: float, streams: int) -> float:
    """Receiver-side TCP throughput, Gbit/s."""
    out = run_tool(
        [*client, "iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t", str(seconds),
         "-P", str(streams), "-J"],
        seconds + 30,
    )  # fmt: skip
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


_PCT = re.compile(r"percentile\s+(\d+\.\d+)\s*=\s*([\d.]+)")


def sockperf_rtt_us(client: Sequence[str], ip: str, seconds: float) -> tuple[float, float]:
    """TCP ping-pong round trip (64-byte messages, one in flight), (p50, p99) in microseconds.
    sockperf discards its first 400 ms (its own warm-up) and sleeps 2 s before starting."""
    out = run_tool(
        [*client, *PIN, "sockperf", "ping-pong", "--tcp", "-i", ip, "-p", str(SOCKPERF_PORT),
         "-m", "64", "-t", str(max(1, round(seconds))), "--full-rtt"],
        seconds + 30,
    )  # fmt: skip
    pct = {float(q): float(v) for q, v in _PCT.findall(out)}
    if 50.0 not in pct or 99.0 not in pct:
        raise RuntimeError(f"sockperf printed no percentiles: {out[-300:]}")
    return pct[50.0], pct[99.0]


def connrate_per_s(client: Sequence[str], connrate: Path, ip: str, seconds: float) -> float:
    """Short TCP connections per second (connect, 64 B request, 64 B response, close), serial."""
    out = run_tool(
        [*client, *PIN, str(connrate), "-c", ip, str(CONNRATE_PORT), str(seconds)], seconds + 30
    )
    count, elapsed = out.split()
    return int(count) / float(elapsed)
