"""Processes the lab starts (agents, pod commands): spawn into a netns and a cgroup, identify by
pid *and* start time (a recycled pid is never mistaken for ours), stop by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# One home for "a process known by pid and start time" and for stopping it (the control plane's
# etcd and API server use it too): re-exported here, the lab's own name for it.
from ciliary.processes import age, alive, start_time, stop, stop_all, zombie

__all__ = [
    "ENDING_WAIT",
    "FORWARDED_SIGNALS",
    "GROUP_GRACE",
    "age",
    "alive",
    "exit_status",
    "run_forwarding_signals",
    "spawn",
    "start_time",
    "stop",
    "stop_all",
    "stop_group",
    "venv_bin",
    "wait_exec",
    "zombie",
]


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
    inherit_env: bool = True,
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
    if inherit_env:  # the lab's own processes (agents, relay): ours, our venv first
        environment = dict(os.environ)
        environment["PATH"] = f"{venv_bin()}:{environment.get('PATH', '/usr/bin:/bin')}"
    else:  # a pod's: exactly ``env`` (see podsandbox)
        environment = {}
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


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _runs(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    """Whether a process with ``cmdline`` is ``argv`` itself (its wrappers have exec'd into it):
    the same program and arguments, or a script's interpreter followed by them (``#!``)."""
    if not cmdline or not argv:
        return False
    name = os.path.basename(argv[0])
    if os.path.basename(cmdline[0]) == name and list(cmdline[1:]) == list(argv[1:]):
        return True
    return (
        len(cmdline) >= 2
        and os.path.basename(cmdline[1]) == name
        and list(cmdline[2:]) == list(argv[1:])
    )


ENDING_WAIT = 2.0
"""Seconds :func:`exit_status` waits for a child that shows as a zombie but cannot be reaped
yet: a killed multi-threaded process's main thread is a zombie in /proc while its other threads
still exit (and the last one closes its descriptors: an agent's BPF programs and maps), and
wait() takes the group only after them. Asked at once, its status read as unknown (seen:
test_lab_supervisor's SIGKILLed agent, "exited (status unknown)", 2 runs of 9)."""


def exit_status(pid: int, wait: float = 0.0) -> int | None:
    """The exit code of our child ``pid`` if it has ended (it is reaped), else None; a signal
    that killed it is 128 + its number, as a shell reports it. ``wait``: seconds to wait for
    one that has ended but cannot be reaped yet (see ``ENDING_WAIT``); one that runs is never
    waited for."""
    deadline = time.monotonic() + wait
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done != 0:
            break
        if time.monotonic() >= deadline or not zombie(pid):
            return None
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def wait_exec(
    pid: int, started: int | None, argv: Sequence[str], timeout: float = 10.0
) -> int | None:
    """Wait until the process we spawned runs ``argv`` (the wrappers before it, ``sh`` joining
    the cgroup and ``nsenter`` entering the netns, have exec'd into it) or has ended first.

    Returns the exit code when it ended before running ``argv`` (the command could not be
    started: not found, not executable, ...), None once it runs ``argv`` (or at ``timeout``: a
    chain we do not recognise is not an error). A command that runs and then exits is not a
    start failure (as with a container that starts and crashes)."""
    deadline = time.monotonic() + timeout
    while True:
        code = exit_status(pid)
        if code is not None:
            return code
        cmdline = _cmdline(pid)
        if cmdline is not None and _runs(cmdline, argv):
            return None
        # a wrapper that forks instead of exec'ing (a PID namespace's unshare): its descendants
        if any(_runs(_cmdline(child) or [], argv) for child in _descendants(pid)):
            return None
        if not alive(pid, started) and not cmdline:
            return 127  # gone, and not our child (no status to read): it never ran argv
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        kids = [int(c) for c in children]
        out.extend(kids)
        todo.extend(kids)
    return out


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
GROUP_GRACE = 5.0


def run_forwarding_signals(
    start: Callable[[], subprocess.Popen[bytes]], grace: float = GROUP_GRACE
) -> int:
    """Start a process with ``start`` (it must lead its own process group) and wait for it in
    the foreground, as ``kubectl exec`` does: SIGINT, SIGTERM, SIGHUP and SIGQUIT we receive go
    to its whole group; once it ends after such a signal (or ``grace`` seconds later, with
    SIGKILL), whatever of its group is left is killed, so nothing it started keeps running.
    Returns its exit code (128 + signal when a signal ended it, as a shell reports it).

    Our handlers are installed *before* the process starts: a signal in between is forwarded
    once it runs, and the process starts with those signals at their defaults (exec resets a
    handled signal, but an ignored one is inherited: a ``lab exec`` run from a background job,
    whose shell ignores SIGINT and SIGQUIT, would otherwise pass that deafness on to its
    command, as no container runtime does)."""
    received: list[int] = []
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started[0].pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        proc = start()
        started.append(proc)
        for signum in list(received):  # arrived while it was starting
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)
        deadline: float | None = None
        while True:
            try:
                code = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if received and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if received and started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started[0].pid, signal.SIGKILL)  # the rest of its group
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def stop_group(pid: int | None, started: int | None, timeout: float = 5.0) -> None:
    """:func:`stop` for a process group led by ``pid`` (a container behind its PID namespace's
    ``unshare``, which does not forward signals); only if (pid, start time) is still ours."""
    stop_all([(pid, started)], timeout, group=True)
