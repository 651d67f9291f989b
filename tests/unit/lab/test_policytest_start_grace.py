"""A refused TCP probe is asked again only while the server could still be starting: for
SERVER_START_GRACE after the youngest container that could be it started. A closed port of a
pod that has run a while is answered at once (users' cases on closed ports cost no 5 s each);
servers we cannot see (world hosts, other addresses) and containers not running keep the whole
grace."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from ciliary.lab import process
from ciliary.lab.policytest import SERVER_START_GRACE, _Lab, _Peer, _start_grace_left
from ciliary.lab.state import ContainerRecord, LabRecord, NodeRecord, PodRecord


@pytest.fixture
def young_pid() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def _pod(name: str, pid: int | None, *, host_network: bool = False) -> PodRecord:
    started = process.start_time(pid) if pid is not None else None
    return PodRecord(
        name=name,
        namespace="default",
        node="n1",
        netns="ciln-l-n1" if host_network else f"cilp-l-{name}",
        container_id=name,
        containers=[ContainerRecord(name="c", argv=["x"], pid=pid, pid_start_time=started)],
        host_network=host_network,
    )


def _lab(*pods: PodRecord) -> _Lab:
    out = _Lab.__new__(_Lab)
    out.rec = LabRecord(
        name="l",
        file=None,
        created_at=0,
        nodes=[NodeRecord(name="n1", netns="ciln-l-n1", state_dir="/s", pin_dir="/p", socket="/k")],
        pods=list(pods),
    )
    out.routers = {"n1": {4: "10.200.0.1"}}
    out.world = {}
    return out


def _to(pod: PodRecord) -> _Peer:
    return _Peer(pod.key, "pod", "10.200.0.5", pod.node, pod.netns, pod)


def test_process_age_counts_from_the_start_and_knows_a_recycled_pid(young_pid: int) -> None:
    me = process.age(os.getpid())
    assert me is not None and me > 0
    young = process.age(young_pid, process.start_time(young_pid))
    assert young is not None and young < me
    started = process.start_time(young_pid)
    assert started is not None
    assert process.age(young_pid, started + 1) is None  # not the process we recorded


def test_an_old_pods_refusal_is_final() -> None:
    old = _pod("old", os.getpid())  # the test runner itself: running for longer than the grace
    age = process.age(os.getpid())
    assert age is not None
    if age < SERVER_START_GRACE:
        time.sleep(SERVER_START_GRACE - age)
    assert _start_grace_left(_lab(old), _to(old)) == 0.0


def test_a_young_pod_gets_the_rest_of_the_grace(young_pid: int) -> None:
    young = _pod("young", young_pid)
    left = _start_grace_left(_lab(young), _to(young))
    assert SERVER_START_GRACE - 2.0 < left <= SERVER_START_GRACE


def test_a_container_not_running_gets_the_whole_grace() -> None:
    restarting = _pod("restarting", None)
    assert _start_grace_left(_lab(restarting), _to(restarting)) == SERVER_START_GRACE


def test_the_host_follows_its_nodes_host_network_pods(young_pid: int) -> None:
    host = _Peer("host", "host", "10.200.0.1", "n1", "ciln-l-n1")
    assert _start_grace_left(_lab(_pod("web", young_pid)), host) == 0.0  # not host-network
    left = _start_grace_left(_lab(_pod("hostweb", young_pid, host_network=True)), host)
    assert left > SERVER_START_GRACE - 2.0


def test_servers_we_cannot_see_get_the_whole_grace() -> None:
    world = _Peer("world", "world", "172.18.0.254", None, "cilw-l-w")
    assert _start_grace_left(_lab(), world) == SERVER_START_GRACE
