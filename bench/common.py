"""Shared bench plumbing: scratch namespaces with guaranteed removal, statistics.

Everything here creates uniquely named namespaces and removes them in ``finally`` blocks; no
address or route is ever added to the root namespace (lab prefixes live only inside ours).
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path


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
