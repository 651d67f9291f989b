"""A control plane (etcd + API server) with ``ciliary-controller-manager`` running against it
through its kubeconfig, and no kubelet: the tests play the kubelet by patching pod status.
The manager is stopped by pid (SIGTERM, then SIGKILL) in a ``finally``; its log is printed
when a test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ciliary.lab.controlplane import ControlPlane
from tests.controlplane import control_plane

__all__ = ["Cluster", "cluster", "control_plane"]

VENV_BIN = Path(__file__).resolve().parents[3] / ".venv" / "bin"


@dataclass
class Cluster:
    cp: ControlPlane
    manager: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def cluster(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Cluster]:
    log = tmp_path / "controller-manager.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "ciliary-controller-manager"),
                "--kubeconfig",
                str(control_plane.kubeconfig),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield Cluster(control_plane, proc, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait()
        print(log.read_text(errors="replace")[-6000:])
        assert code == 0, f"controller-manager exited {code}"
