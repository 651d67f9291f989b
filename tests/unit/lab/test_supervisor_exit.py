"""The supervisor process exits at once after its loop ends (``lab down`` waits for it): no
interpreter finalization of the whole lab's modules after its last log line."""

from __future__ import annotations

import subprocess
import sys
import time


def test_supervisor_exits_right_after_it_stopped() -> None:
    # a lab that does not exist: the loop ends at once (the lab is gone), as after SIGTERM
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciliary.lab.supervisor", "no-such-lab-t"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        stopped = time.monotonic()
        assert "supervisor of lab no-such-lab-t: stopped" in line, line
        code = proc.wait(timeout=30)
        took = time.monotonic() - stopped
    finally:
        proc.kill()
        proc.communicate()
    assert code == 0
    # finalizing the imported modules took 0.4 s on an idle machine, more under load
    assert took < 0.3, f"{took:.3f}s from the last log line to the exit"
