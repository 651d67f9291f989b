"""The suite's guard against orphaned proxies (tests/conftest.py): a real Envoy started during
the session is named once its bootstrap file is gone (nothing can adopt it then), never while
its node's files exist."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from ciliary import processes
from ciliary.agent.envoy import envoy_binary

from ..conftest import _orphaned_envoys


def test_an_envoy_whose_bootstrap_is_gone_is_found(tmp_path: Path) -> None:
    bootstrap = tmp_path / "bootstrap.json"
    admin = tmp_path / "admin.sock"
    bootstrap.write_text(json.dumps({"admin": {"address": {"pipe": {"path": str(admin)}}}}))
    since = processes.start_time(os.getpid()) or 0
    log = (tmp_path / "envoy.log").open("wb")
    proc = subprocess.Popen(
        [str(envoy_binary()), "-c", str(bootstrap), "--concurrency", "1",
         "--base-id-path", str(tmp_path / "base-id"), "--use-dynamic-base-id",
         "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not admin.exists():  # started and configured: its argv is Envoy's own
            assert proc.poll() is None, (tmp_path / "envoy.log").read_text()
            assert time.monotonic() < deadline, "envoy did not open its admin socket"
            time.sleep(0.05)
        assert proc.pid not in {pid for pid, _ in _orphaned_envoys(since)}
        bootstrap.unlink()
        assert (proc.pid, str(bootstrap)) in _orphaned_envoys(since)
        later = (processes.start_time(proc.pid) or 0) + 1
        assert proc.pid not in {pid for pid, _ in _orphaned_envoys(later)}  # not ours: older
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
