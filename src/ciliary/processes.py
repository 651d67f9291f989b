"""Child processes known by pid *and* start time, and how to stop them: one home for the
SIGTERM → wait → SIGKILL → reap sequence every starter of long-running processes needs (the
lab's agents, pods and cluster processes, the control plane's etcd and API server).

It sits below every component (it imports no ciliary package) so the API server's etcd and the
lab share it. A recycled pid is never signalled: a process is ours only while its pid has the
start time we recorded. Stopping several processes is parallel: all get SIGTERM at once and
share one deadline, so stopping eight costs the slowest one's shutdown, not their sum.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, NoReturn

KILL_WAIT = 2.0
"""How long a SIGKILLed process may take to be gone (its exit, our reaping) before we stop
waiting: the kernel has it then, nothing we can do is faster."""


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), None if the pid is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])


def age(pid: int, started: int | None = None) -> float | None:
    """Seconds since ``pid`` started (None if it is gone or is no longer the process started at
    ``started``)."""
    ticks = start_time(pid)
    if ticks is None or (started is not None and ticks != started):
        return None
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def alive(pid: int | None, started: int | None) -> bool:
    """Whether ``pid`` runs and is still the process started at ``started`` (None: any); a
    zombie is not alive."""
    if pid is None:
        return False
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return False
    return not zombie(pid)


def zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and waits to be reaped (its /proc state is Z)."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our ended child (no zombie left); else nothing."""
    if pid <= 0:  # waitpid(0 or -1) would reap any child of ours
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_all(
    targets: Iterable[tuple[int | None, int | None]],
    timeout: float = 5.0,
    *,
    group: bool = False,
) -> None:
    """Stop every (pid, start time) of ``targets`` that is still ours, in parallel: SIGTERM to
    all, wait for all until one deadline ``timeout`` s away, SIGKILL to the rest, reap. With
    ``group`` the signals go to the process group each pid leads (a container behind its PID
    namespace's ``unshare``, which does not forward signals)."""
    send = os.killpg if group else os.kill
    running: list[tuple[int, int | None]] = []
    for pid, started in targets:
        if pid is None or pid <= 0:
            continue
        reap(pid)
        if alive(pid, started):
            running.append((pid, started))
    for pid, _ in running:
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGTERM)
    running = _wait(running, time.monotonic() + timeout)
    for pid, _ in running:
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGKILL)
    _wait(running, time.monotonic() + KILL_WAIT)


def stop(pid: int | None, started: int | None, timeout: float = 5.0) -> None:
    """:func:`stop_all` of one process."""
    stop_all([(pid, started)], timeout)


def _wait(running: list[tuple[int, int | None]], deadline: float) -> list[tuple[int, int | None]]:
    """Reap and drop the ended ones until none is left or ``deadline``; returns those left."""
    delay = 0.005
    while True:
        for pid, _ in running:
            reap(pid)
        running = [(pid, started) for pid, started in running if alive(pid, started)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


_DETACH = """\
import os, sys, time
parent = os.getpid()
child = os.fork()
if child:
    print(child, flush=True)
    os._exit(0)
os.dup2(2, 1)
while os.getppid() == parent:
    time.sleep(0.001)
os.execv(sys.argv[1], sys.argv[1:])
"""


def spawn_detached(argv: Sequence[str], log: IO[bytes], pass_fds: Sequence[int] = ()) -> int:
    """Start ``argv`` so that it outlives its starter: in a session of its own, and whose parent
    is already init when it execs (a short-lived intermediate forks it and exits; the child waits
    until it is reparented). A program that asks for a parent-death signal (Envoy does: it gets
    SIGTERM when its parent exits) then never gets one from its starter's exit. Its output goes
    to ``log``, ``pass_fds`` stay open in it. Returns its pid (not our child: whoever reaps
    orphans reaps it; watch it with a pidfd or :func:`alive`). Blocks for the intermediate's
    start (a Python interpreter's, tens of ms): call it from a thread in an event loop."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DETACH, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )
    out, _ = proc.communicate(timeout=30)
    if proc.returncode != 0 or not out.strip().isdigit():
        raise OSError(f"could not start {argv[0]} (launcher exit {proc.returncode}: {out!r})")
    return int(out)


def recorded(pidfile: Path) -> tuple[int, int | None] | None:
    """The (pid, start time) a pid file names (JSON ``{"pid": …, "start_time": …}``, as the
    agent records the node's Envoy, which outlives it), or None when there is no such file or it
    is not one."""
    try:
        doc = json.loads(pidfile.read_text())
        pid, started = int(doc["pid"]), doc.get("start_time")
        return pid, None if started is None else int(started)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def alive_recorded(pidfile: Path) -> bool:
    """Whether the process a pid file names still runs (and is the one recorded)."""
    found = recorded(pidfile)
    return found is not None and alive(*found)


def stop_recorded(pidfile: Path, timeout: float = 5.0) -> None:
    """:func:`stop` the process a pid file names (while it is still the one recorded), then
    remove the file: how the owner of a run directory ends what outlived its agent."""
    found = recorded(pidfile)
    if found is not None:
        stop(*found, timeout)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` without the interpreter's finalization: the other side of
    stopping a long-running process. Python's normal exit tears down the objects of every
    imported module one by one, for the lab supervisor, the agent and the hubble relay (grpc,
    protobuf, pydantic, the lab) 0.1-1 s of CPU without a system call after their work is done,
    which ``lab down`` and ``lab restart-agent`` wait for. Only for a process whose own shutdown
    is complete (sockets closed, state written, BPF objects closed, pins kept as always): the
    kernel closes any descriptor left, the logs and standard streams are flushed here, and
    atexit handlers do not run."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
