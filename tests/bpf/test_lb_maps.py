"""The service maps in the kernel (bpf/lib/lb.h through datapath/maps/lb.py): what the service
manager writes reads back the same (both families, ports in network order as the C reads them),
and an agent restarted over the same pins finds every frontend and backend id again, so the
next sync writes nothing and a new frontend gets an id no existing one has."""

from __future__ import annotations

import ctypes
import secrets
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from ciliary.agent.services import ServiceManager, desired_frontends
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath.libbpf import Map
from ciliary.datapath.loader import PIN_ROOT, NodeDatapath, default_object_dir, remove_pins
from ciliary.datapath.maps.lb import Frontend, LbServiceC


def _svc(name: str, ips: list[str], backends: list[str]) -> ServiceInfo:
    return ServiceInfo(
        namespace="default",
        name=name,
        type="ClusterIP",
        cluster_ips=ips,
        ports=[ServicePortInfo(name="http", port=80, protocol="TCP")],
        session_affinity="None",
        external_traffic_policy="Cluster",
        backends=[
            BackendInfo(
                address=a, ready=True, serving=True, terminating=False,
                ports={"http": L4Addr(protocol="TCP", port=8080)},
            )
            for a in backends
        ],
    )  # fmt: skip


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = PIN_ROOT / f"lbtest{secrets.token_hex(3)}"
    try:
        yield path
    finally:
        remove_pins(path)


def _load(pin_dir: Path) -> NodeDatapath:
    dp = NodeDatapath(default_object_dir() / "bpf_lxc.o", pin_dir, lb_max=1024)
    dp.load(programs=False)  # the service tables are what is tested
    return dp


def test_written_entries_read_back_and_survive_a_restart(pin_dir: Path) -> None:
    web = _svc("web", ["10.96.0.5", "fd00:10:96::5"], ["10.0.1.5", "10.0.2.7", "fd00::5"])
    dp = _load(pin_dir)
    try:
        mgr = ServiceManager(dp.lb)
        mgr.sync(desired_frontends([web]))
        state = dp.lb.dump()
        http = Frontend(ip_address("10.96.0.5"), 80, 6)
        head = state.slots[(http, 0)]
        assert head.count == 2
        assert {str(state.backends[state.slots[(http, i)].backend_id].address) for i in (1, 2)} == {
            "10.0.1.5",
            "10.0.2.7",
        }
        assert state.backends[state.slots[(http, 1)].backend_id].port == 8080
        http6 = Frontend(ip_address("fd00:10:96::5"), 80, 6)
        assert state.slots[(http6, 0)].count == 1
        assert state.rev_nat[head.rev_nat_index] == Frontend(ip_address("10.96.0.5"), 80, 0)
        # the C's view: address and dport network order in the key (80, and the wildcard's 0)
        with Map.from_pin(pin_dir / "ciliary_lb4_services") as raw:
            assert ctypes.sizeof(LbServiceC) == raw.value_size
            keys = {k[:6] for k, _ in raw.items() if k[:4] == bytes([10, 96, 0, 5])}
        assert keys == {bytes([10, 96, 0, 5, 0, 80]), bytes([10, 96, 0, 5, 0, 0])}
        ids = {fe: p.id for fe, p in mgr.frontends.items()}
        backends = dict(mgr.backends)
    finally:
        dp.close()

    dp = _load(pin_dir)  # a restarted agent, over the pins
    try:
        again = ServiceManager(dp.lb)
        again.restore()
        assert {fe: p.id for fe, p in again.frontends.items()} == ids
        assert again.backends == backends
        assert again.sync(desired_frontends([web])) == 0  # nothing to write
        db = _svc("db", ["10.96.0.6"], ["10.0.1.9"])
        again.sync(desired_frontends([web, db]))
        new_ids = [p.id for p in again.frontends.values()]
        assert len(new_ids) == len(set(new_ids))
        again.sync({})  # every Service gone: the maps are empty
        state = dp.lb.dump()
        assert (state.slots, state.backends, state.rev_nat) == ({}, {}, {})
    finally:
        dp.close()
