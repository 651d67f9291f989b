"""Settings for the whole suite.

Hypothesis: no per-example deadline. Its default (200 ms) fails an example that a busy 2-core
machine merely paused (GC, a neighbour test's lab), which made property tests flaky under load
(seen: ``test_rendered_field_selectors_round_trip``); what a property test checks is the
property, and the suite's time budget is kept by its own timeouts.

Orphaned proxies: a node's Envoy outlives its agent by design (the next agent adopts it), so a
test that removes a node's run directory without ending it (by its pid file) leaves a process
nobody can adopt. At the end of the session every Envoy started during it whose bootstrap file
is gone is ended and named, and the session fails: a leak is found where it is made, not on the
next machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from ciliary import processes

settings.register_profile("ciliary", deadline=None)
settings.load_profile("ciliary")


def _orphaned_envoys(since_ticks: int) -> list[tuple[int, str]]:
    """Envoy processes started at or after ``since_ticks`` whose ``-c`` bootstrap file is gone."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(b"/envoy") or b"-c" not in argv[:-1]:
            continue
        bootstrap = argv[argv.index(b"-c") + 1].decode(errors="replace")
        started = processes.start_time(int(entry.name))
        if started is None or started < since_ticks or os.path.exists(bootstrap):
            continue
        found.append((int(entry.name), bootstrap))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # started since this test run began (the runner's own start)
    orphans = _orphaned_envoys(processes.start_time(os.getpid()) or 0)
    if not orphans:
        return
    for pid, _ in orphans:
        processes.stop(pid, processes.start_time(pid), 5.0)
    names = ", ".join(f"pid {pid} ({bootstrap})" for pid, bootstrap in orphans)
    tw = session.config.get_terminal_writer()
    tw.line()
    tw.line(f"orphaned Envoy processes left by the tests (ended now): {names}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
