"""Processes the lab starts (agents, pod commands): spawn into a netns and a cgroup, identify by
pid *and* start time (a recycled pid is never mistaken for ours), stop by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), None if the pid is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    if pid is None:
        return False
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    return True


def venv_bin() -> Path:
    return Path(sys.executable).parent


def spawn(
    argv: Sequence[str],
    *,
    netns_path: str | None,
    cgroup_path: Path | None,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> tuple[int, int | None]:
    """Start a detached process (own session), optionally inside a netns (via nsenter, which
    execs: the pid we get is the command's) and a cgroup. Returns (pid, start time)."""
    full = list(argv)
    if netns_path is not None:
        full = ["nsenter", f"--net={netns_path}", "--", *full]
    if cgroup_path is not None:
        # The child joins the cgroup itself and then execs, so nothing it starts can escape the
        # group (no preexec_fn: the lab process may have threads).
        procs = str(cgroup_path / "cgroup.procs")
        full = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *full]
    environment = dict(os.environ)
    environment["PATH"] = f"{venv_bin()}:{environment.get('PATH', '/usr/bin:/bin')}"
    if env:
        environment.update(env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd or "/",
            start_new_session=True,
        )
    # The lab does not wait() for its children (they outlive `lab up`); detach the Popen so the
    # interpreter does not warn about a still-running child at exit.
    proc.returncode = 0
    return proc.pid, start_time(proc.pid)


def stop(pid: int | None, started: int | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only if (pid, start time) is still ours."""
    if pid is None or not alive(pid, started):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, started):
            _reap(pid)
            return
        _reap(pid)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
