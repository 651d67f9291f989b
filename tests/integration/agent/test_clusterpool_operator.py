"""Cluster-pool v2 end to end with real processes: a ``ciliary-agent`` given a kubeconfig and no
pod CIDR flag creates its CiliumNode and does not serve (its API socket stays closed: a CNI ADD
fails closed) while it waits, saying so in its log; once ``ciliary-operator`` runs with the
cluster pool flags, the node gets the operator's CIDRs, its router is the first address, and the
CiliumNode shows both."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.client.agent import AgentClient, AgentClientError
from ciliary.datapath.loader import PIN_ROOT, remove_pins
from ciliary.lab.controlplane import ControlPlane, add_node
from tests.integration.controllers.conftest import VENV_BIN

pytestmark = pytest.mark.timeout(180)

RUN_ROOT = Path("/run/ciliary")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def _netns(name: str) -> Iterator[Path]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "netns", "del", f"{name}-health"], check=False)  # the agent's


def _until(check: object, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out: {what}\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_agent_serves_once_the_operator_allocated_its_cidrs(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    node = f"cpo{os.getpid() % 100000}"
    agent_log, operator_log = tmp_path / "agent.log", tmp_path / "operator.log"
    socket = RUN_ROOT / node / "agent.sock"
    with _netns(f"cicn-{node}") as ns_path:
        kubeconfig = add_node(control_plane, node, ns_path)
        with open(agent_log, "wb") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "ciliary.agent.main", "--node-name", node,
                 "--netns", ns_path.name, "--kubeconfig", str(kubeconfig)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        operator: subprocess.Popen[bytes] | None = None
        try:
            waiting = (
                f"waiting for the operator to allocate spec.ipam.podCIDRs of CiliumNode {node}"
            )
            _until(lambda: waiting in agent_log.read_text(), "the agent's wait", 60, agent_log)
            assert agent.poll() is None, agent_log.read_text()
            assert not socket.exists(), "no pod CIDR yet: the agent must not serve"
            with open(operator_log, "wb") as out:
                operator = subprocess.Popen(
                    [str(VENV_BIN / "ciliary-operator"),
                     "--kubeconfig", str(control_plane.kubeconfig),
                     "--cluster-pool-ipv4-cidr", "10.251.0.0/16",
                     "--cluster-pool-ipv4-mask-size", "24"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                )  # fmt: skip

            def healthy() -> bool:
                assert agent.poll() is None, agent_log.read_text()
                if not socket.exists():
                    return False
                with contextlib.suppress(AgentClientError), AgentClient(socket) as cl:
                    cl.healthz()
                    return True
                return False

            _until(healthy, "the agent serving", 60, agent_log)
            with AgentClient(socket) as cl:
                ipam = cl.status().ipam
            assert (ipam.ipv4_cidr, ipam.ipv4_router, ipam.ipv6_cidr) == (
                "10.251.0.0/24",
                "10.251.0.1",
                None,
            )
            shown = subprocess.run(
                ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "get", "ciliumnode",
                 node, "-o", "jsonpath={.spec.ipam.podCIDRs} {.spec.addresses[0].ip}"],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout  # fmt: skip
            assert shown == '["10.251.0.0/24"] 10.251.0.1', shown
        finally:
            _stop(agent)
            if operator is not None:
                _stop(operator)
            shutil.rmtree(RUN_ROOT / node, ignore_errors=True)
            remove_pins(PIN_ROOT / node)
