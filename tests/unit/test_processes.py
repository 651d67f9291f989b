"""ciliary.processes: stopping is parallel (one deadline for all), escalates to SIGKILL, reaps,
and never signals a pid whose start time is not the one recorded."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from ciliary import processes

# exits 0.4 s after SIGTERM (a graceful shutdown that takes a while)
SLOW_EXIT = "trap 'sleep 0.4; exit 0' TERM; while :; do sleep 0.05; done"
# ignores SIGTERM
STUBBORN = "trap '' TERM; while :; do sleep 0.05; done"


def _start(script: str) -> tuple[int, int | None]:
    proc = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    proc.returncode = 0  # known by pid from now on: stop_all reaps it
    started = processes.start_time(proc.pid)
    deadline = time.monotonic() + 5
    # the trap is set once the loop's first sleep runs
    while not any(processes.start_time(int(c)) is not None for c in _children(proc.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc.pid, started


def _children(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_stop_all_waits_for_all_in_parallel() -> None:
    targets = [_start(SLOW_EXIT) for _ in range(4)]
    t0 = time.monotonic()
    processes.stop_all(targets, timeout=5.0)
    took = time.monotonic() - t0
    # one after another it would be 4 x 0.4 s; in parallel about one 0.4 s
    assert 0.35 <= took < 1.2, took
    for pid, started in targets:
        assert not processes.alive(pid, started)
        assert _reaped(pid)


def test_stop_all_kills_what_ignores_sigterm_at_the_deadline() -> None:
    stubborn, slow = _start(STUBBORN), _start(SLOW_EXIT)
    t0 = time.monotonic()
    processes.stop_all([stubborn, slow], timeout=0.8)
    took = time.monotonic() - t0
    assert 0.75 <= took < 2.0, took
    assert not processes.alive(*stubborn) and not processes.alive(*slow)
    assert _reaped(stubborn[0]) and _reaped(slow[0])


def test_a_pid_with_another_start_time_is_not_signalled() -> None:
    pid, started = _start(SLOW_EXIT)
    assert started is not None
    try:
        processes.stop_all([(pid, started + 1), (None, None), (0, None)], timeout=0.2)
        assert processes.alive(pid, started)
    finally:
        processes.stop(pid, started)
    assert not processes.alive(pid, started)


def test_group_stop_reaches_the_whole_group() -> None:
    # the leader does not forward signals; its child must get them from the group signal
    pid, started = _start("sh -c 'while :; do sleep 0.05; done' & wait")
    child = int(_children(pid)[0])
    processes.stop_all([(pid, started)], timeout=2.0, group=True)
    assert not processes.alive(pid, started)
    deadline = time.monotonic() + 2
    while processes.alive(child, None):
        assert time.monotonic() < deadline, "the group's child is still running"
        time.sleep(0.01)


def test_a_detached_process_is_inits_child_and_stopped_by_its_pid_file(tmp_path: Path) -> None:
    """spawn_detached: the process outlives its starter (its parent is no longer us when it
    runs: a parent-death signal it asks for never comes from our exit), in a session of its
    own; a pid file naming it is how it is found and stopped later."""
    log = tmp_path / "log"
    with open(log, "wb") as out:
        pid = processes.spawn_detached(["/bin/sh", "-c", "echo started; exec sleep 30"], out)
    started = processes.start_time(pid)
    try:
        assert processes.alive(pid, started)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(fields[1]) != os.getpid()  # ppid: not ours
        assert os.getsid(pid) != os.getsid(0)  # its own session
        deadline = time.monotonic() + 10  # it execs once reparented: its output then comes
        while log.read_text() != "started\n":  # to the log
            assert time.monotonic() < deadline, f"no output in the log: {log.read_text()!r}"
            time.sleep(0.01)
        pidfile = tmp_path / "x.pid"
        pidfile.write_text(json.dumps({"pid": pid, "start_time": started}))
        assert processes.recorded(pidfile) == (pid, started)
        assert processes.alive_recorded(pidfile)
        processes.stop_recorded(pidfile, timeout=2)
        assert not processes.alive(pid, started) and not pidfile.exists()
    finally:
        if processes.alive(pid, started):
            os.kill(pid, 9)
    pidfile.write_text("{not json")
    assert processes.recorded(pidfile) is None and not processes.alive_recorded(pidfile)
    processes.stop_recorded(pidfile)  # nothing to stop: the file goes
    assert not pidfile.exists()
