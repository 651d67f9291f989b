"""lab.process.exit_status: the status of a child whose main thread has ended while another of
its threads still runs (a zombie in /proc that wait() cannot reap yet, as a SIGKILLed agent is
while its threads exit) is waited for when asked to, not reported unknown."""

from __future__ import annotations

import subprocess
import sys
import time

from ciliary.lab import process

# The main thread exits alone (SYS_exit, not exit_group); the other thread ends the process
# with code 9 after 0.5 s: meanwhile the process is a zombie that wait() cannot take.
MAIN_THREAD_FIRST = """\
import ctypes, os, threading, time
def later():
    time.sleep(0.5)
    os._exit(9)
threading.Thread(target=later).start()
ctypes.CDLL(None, use_errno=True).syscall(60, 0)  # SYS_exit (x86_64)
"""


def _zombie_child() -> int:
    proc = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_FIRST])
    proc.returncode = 0  # reaped by exit_status from now on
    deadline = time.monotonic() + 10
    while not process.zombie(proc.pid):
        assert time.monotonic() < deadline, "the main thread never exited"
        time.sleep(0.01)
    return proc.pid


def test_an_unreapable_zombie_is_waited_for() -> None:
    pid = _zombie_child()
    assert process.exit_status(pid) is None  # asked at once: not reapable yet
    assert process.exit_status(pid, process.ENDING_WAIT) == 9


def test_a_running_child_is_not_waited_for() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        start = time.monotonic()
        assert process.exit_status(proc.pid, process.ENDING_WAIT) is None
        assert time.monotonic() - start < 0.5
    finally:
        proc.kill()
        proc.wait()
