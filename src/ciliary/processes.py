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
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

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


def alive(pid: int | None, started: int | None) -> bool:
    """Whether ``pid`` runs and is still the process started at ``started`` (None: any); a
    zombie is not alive."""
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
