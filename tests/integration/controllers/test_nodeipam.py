"""The operator's cluster-pool IPAM against a real API server + etcd, as the ``ciliary-operator``
process with upstream's flags: CiliumNodes without pod CIDRs get the lowest free one per family,
one that names its own keeps it (never handed out again), a deleted node's CIDRs are reused, and
``kubectl get ciliumnodes -o yaml`` shows them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ciliary.controllers.nodeipam import CILIUM_NODES, pod_cidrs
from ciliary.kube.client import KubeClient
from ciliary.lab.controlplane import ControlPlane
from tests.integration.controllers.conftest import VENV_BIN
from tests.integration.kube.helpers import run

pytestmark = pytest.mark.timeout(120)


def node(name: str, *cidrs: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"ipam": {"podCIDRs": list(cidrs)}}}


async def cidrs_of(kube: KubeClient, name: str, log: Path, timeout: float = 15) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = pod_cidrs(await kube.get(CILIUM_NODES, name))
        if got:
            return got
        assert asyncio.get_running_loop().time() < deadline, log.read_text()
        await asyncio.sleep(0.05)


def test_operator_allocates_pod_cidrs(control_plane: ControlPlane, tmp_path: Path) -> None:
    log = tmp_path / "operator.log"

    async def body(kube: KubeClient) -> None:
        await kube.create(CILIUM_NODES, node("fixed", "10.240.1.0/24"))  # as a lab file fixes it
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    str(VENV_BIN / "ciliary-operator"),
                    "--kubeconfig",
                    str(control_plane.kubeconfig),
                    "--cluster-pool-ipv4-cidr",
                    "10.240.0.0/22",
                    "--cluster-pool-ipv4-mask-size",
                    "24",
                    "--cluster-pool-ipv6-cidr",
                    "fd00:240::/110",
                    "--cluster-pool-ipv6-mask-size",
                    "112",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        try:
            await kube.create(CILIUM_NODES, node("a"))
            assert await cidrs_of(kube, "a", log) == ["10.240.0.0/24", "fd00:240::/112"]
            await kube.create(CILIUM_NODES, node("b"))
            assert await cidrs_of(kube, "b", log) == ["10.240.2.0/24", "fd00:240::1:0/112"]
            assert await cidrs_of(kube, "fixed", log) == ["10.240.1.0/24"]  # untouched
            await kube.delete(CILIUM_NODES, "a")
            await kube.create(CILIUM_NODES, node("c"))
            assert await cidrs_of(kube, "c", log) == ["10.240.0.0/24", "fd00:240::/112"]
            os.kill(proc.pid, signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 10) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    run(control_plane, body, ns="")
    shown = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "get", "ciliumnodes", "-o",
         "yaml"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert "podCIDRs:\n      - 10.240.2.0/24\n      - fd00:240::1:0/112" in shown, shown
    assert "allocated pod CIDRs 10.240.2.0/24, fd00:240::1:0/112" in log.read_text()
