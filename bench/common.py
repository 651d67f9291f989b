"""Shared bench plumbing: scratch namespaces with guaranteed removal, statistics.

Everything here creates uniquely named namespaces and removes them in ``finally`` blocks; no
address or route is ever added to the root namespace (lab prefixes live only inside ours).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)


PREFIX = "cilb"
"""Every lab and scratch netns of a bench run has a name containing this prefix + 4 hex digits."""


def tag() -> str:
    return PREFIX + secrets.token_hex(2)


APISERVER_SUFFIX = "-apiserver"
"""The ``apiserver`` group's control plane lives in ``<tmp>/<PREFIX>xxxx-apiserver``."""


def apiserver_dirs() -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"{PREFIX}*{APISERVER_SUFFIX}"))


def sweep_leftovers(log: Callable[[str], None]) -> None:
    """What a killed run (SIGKILL: no finally blocks) left: bench labs (removed like `lab down`,
    processes by the pids in their records), bench control planes (etcd + API server stopped by
    the pids in their ``controlplane.json``, data removed) and scratch namespaces. Only names a
    bench run makes are touched."""
    from ciliary.lab import controlplane, manager  # noqa: PLC0415  (root; only at a run's start)

    for lab in manager.list_labs():
        if PREFIX in lab:
            log(f"removing lab {lab} left by an interrupted bench run")
            manager.down(lab)
    for lab_dir in apiserver_dirs():
        log(f"removing control plane {lab_dir} left by an interrupted bench run")
        cp = controlplane.load(lab_dir)
        if cp is not None:
            controlplane.stop_control_plane(cp)  # by pid and start time
        shutil.rmtree(lab_dir, ignore_errors=True)
    listing = sh("ip", "netns", "list", check=False).stdout.split()
    for name in listing:
        if name.startswith(PREFIX):
            log(f"removing netns {name} left by an interrupted bench run")
            sh("ip", "netns", "del", name, check=False)


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


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of all the threads of a process (schedstat: nanoseconds, not 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total / 1e9


def rss_mib(pid: int) -> float:
    """A process's resident memory (``VmRSS``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
