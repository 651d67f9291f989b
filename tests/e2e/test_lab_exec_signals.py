"""`lab exec` killed with SIGTERM or SIGINT ends its command and everything the command started
(its process group), as `kubectl exec` does, instead of leaving them running in the pod; also
when `lab exec` itself was started with SIGINT and SIGQUIT ignored (from a background job of a
shell), which its command must not inherit."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time

import pytest

from .conftest import CILIARY, Lab

# the conftest lab, shared: these tests only run commands in its pods
SHARES_LAB = True


def _running(tag: str) -> list[str]:
    res = subprocess.run(["pgrep", "-f", f"^{tag}$"], capture_output=True, text=True, check=False)
    return res.stdout.split()


@pytest.mark.parametrize(
    ("sig", "background"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
)
def test_signal_ends_the_command_and_its_group(
    lab: Lab, sig: signal.Signals, background: bool
) -> None:
    n = 100000 + secrets.randbelow(800000)
    tag_bg, tag_fg = f"sleep {n}", f"sleep {n + 1}"
    argv = [CILIARY, "lab", "exec", "--name", lab.name, "default/client", "--",
            "sh", "-c", f"{tag_bg} & exec {tag_fg}"]  # fmt: skip
    if background:  # as a shell starts a job with `&`: SIGINT and SIGQUIT ignored, then exec
        argv = ["sh", "-c", 'trap "" INT QUIT; exec "$@"', "background-job", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (_running(tag_bg) and _running(tag_fg)):
            time.sleep(0.05)
        assert _running(tag_bg) and _running(tag_fg), "the command did not start"
        proc.send_signal(sig)
        proc.communicate(timeout=15)
        assert proc.returncode == 128 + sig
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_running(tag_bg) or _running(tag_fg)):
            time.sleep(0.05)
        assert _running(tag_bg) == [] and _running(tag_fg) == []
    finally:
        for pid in _running(tag_bg) + _running(tag_fg):
            subprocess.run(["kill", "-9", pid], check=False)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
