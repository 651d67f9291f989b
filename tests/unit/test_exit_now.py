"""``processes.exit_now``: the agent and the hubble relay end without the interpreter's
finalization once their own shutdown is done (the lab supervisor's test is in tests/unit/lab).

A process that finalizes runs its atexit handlers; one that ends through ``exit_now`` does not,
so each process here runs with an atexit handler that prints a marker, which must not appear,
while the work before the exit (log lines, the relay's pid file removal) must have happened.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKER = "FINALIZED-BY-THE-INTERPRETER"

_WRAPPER = f"""
import atexit, runpy, sys
atexit.register(lambda: print({MARKER!r}, flush=True))
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}


def test_exit_now_flushes_buffered_output_and_skips_atexit() -> None:
    code = (
        "import atexit; from ciliary.processes import exit_now;"
        f"atexit.register(print, {MARKER!r});"
        "print('buffered', end=''); exit_now(3)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert (out.returncode, out.stdout) == (3, "buffered")


def test_agent_main_exits_without_finalization() -> None:
    # an early return of main (no Kubernetes API for --ipam pools) takes the same exit path as
    # the one after the agent's shutdown
    argv = ["ciliary.agent.main", "--node-name", "exit-now-t", "--ipam", "pools"]
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert "--ipam pools needs a Kubernetes API" in out.stderr
    assert MARKER not in out.stdout


def test_relay_stops_cleanly_then_exits_without_finalization() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="relay-exit-"))
    pid_file = tmp / "relay.pid"
    relay_args = [
        "--listen-address", f"unix://{tmp}/relay.sock",
        "--peers", f"n1=unix://{tmp}/no-node.sock",
        "--retry-timeout", "200ms",
        "--pid-file", str(pid_file),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, "ciliary.hubble.relay", *relay_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stderr is not None and proc.stdout is not None
    try:
        while "listening on" not in (line := proc.stderr.readline()):
            assert line, "relay exited early"
        deadline = time.monotonic() + 10
        while not pid_file.exists():
            assert time.monotonic() < deadline, "no pid file"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
        pid_file_left = pid_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0
    assert "hubble relay stopped" in rest, rest
    assert not pid_file_left
    assert MARKER not in out
