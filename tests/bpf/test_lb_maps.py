"""The service maps in the kernel (bpf/lib/lb.h through datapath/maps/lb.py): what the service
manager writes reads back the same (both families, ports in network order as the C reads them),
and an agent restarted over the same pins finds every frontend and backend id again, so the
next sync writes nothing and a new frontend gets an id no existing one has."""

from __future__ import annotations

import ctypes
import secrets
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from ciliary.agent.services import ServiceManager, desired_frontends
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath.libbpf import BPFObject, Map
from ciliary.datapath.loader import PIN_ROOT, NodeDatapath, default_object_dir, remove_pins
from ciliary.datapath.maps import EP_F_READY, EndpointMap
from ciliary.datapath.maps.lb import (
    FRONTEND_BITS_MAP,
    FRONTEND_BITS_WORDS,
    LB_MAPS,
    Backend,
    Frontend,
    LBMaps,
    LbServiceC,
    ServiceValue,
    frontend_bit,
)

from .test_libbpf import in_netns, tcp_frame
from .test_policy_cache import TC_ACT_OK, TC_ACT_REDIRECT, _test_run


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


def _bits(pin_dir: Path) -> set[int]:
    """The set bits of ciliary_lb_frontend_bits, as the datapath reads them."""
    with Map.from_pin(pin_dir / FRONTEND_BITS_MAP) as raw:
        words = [int.from_bytes(v, sys.byteorder) for _, v in raw.items()]
    assert len(words) == FRONTEND_BITS_WORDS
    return {i * 64 + b for i, w in enumerate(words) for b in range(64) if w >> b & 1}


def test_frontend_bits_follow_the_addresses_a_service_entry_is_keyed_on(pin_dir: Path) -> None:
    """bpf/lib/lb.h skips the service lookups for an address whose bit is clear, so every address
    with a slot-0 entry (its port's and its wildcard's) has its bit set, from before the entry is
    written to after the last entry of the address is gone; a restart over the pins rebuilds the
    same bits from the entries; nothing else is set."""
    web = _svc("web", ["10.96.0.5", "fd00:10:96::5"], ["10.0.1.5", "fd00::5"])
    db = _svc("db", ["10.96.0.6"], ["10.0.1.9"])
    web_bits = {frontend_bit(ip_address(a)) for a in ("10.96.0.5", "fd00:10:96::5")}
    db_bit = frontend_bit(ip_address("10.96.0.6"))
    dp = _load(pin_dir)
    try:
        assert _bits(pin_dir) == set()
        mgr = ServiceManager(dp.lb)
        mgr.sync(desired_frontends([web, db]))
        assert _bits(pin_dir) == web_bits | {db_bit}
    finally:
        dp.close()
    dp = _load(pin_dir)  # a restarted agent: the bits rebuilt from the entries it finds
    try:
        assert _bits(pin_dir) == web_bits | {db_bit}
        again = ServiceManager(dp.lb)
        again.restore()
        again.sync(desired_frontends([web]))  # db gone: its bit too (unless web's share it)
        assert _bits(pin_dir) == web_bits | ({db_bit} & web_bits)
        again.sync({})
        assert _bits(pin_dir) == set()
    finally:
        dp.close()


def test_the_datapath_skips_the_service_lookups_only_at_addresses_whose_bit_is_clear(
    node: tuple[BPFObject, Path], two_lxc: tuple[str, int, int]
) -> None:
    """cil_from_container translates a SYN to a ClusterIP whose entry LBMaps wrote; with the
    bits cleared behind LBMaps' back the same frontend is not looked up (the SYN leaves for the
    stack untranslated); with only frontend_bit(VIP) set again it is: the C reads the bit the
    Python computes (lib/common.h's addr_hash and frontend_bit are twins)."""
    obj, _ = node
    ns, client_if, server_if = two_lxc
    client, server, vip = (
        IPv4Address("10.99.0.2"),
        IPv4Address("10.99.0.1"),
        ip_address("10.96.7.7"),
    )
    names = [n for names in LB_MAPS.values() for n in names] + [FRONTEND_BITS_MAP, "ciliary_lxc"]
    maps = {n: obj.map(n) for n in names}
    try:
        eps = EndpointMap(maps["ciliary_lxc"])
        for addr, ifindex, ep_id in ((client, client_if, 7), (server, server_if, 8)):
            eps.upsert(addr, ifindex=ifindex, sec_id=1000 + ep_id, ep_id=ep_id, flags=EP_F_READY,
                       mac="02:aa:bb:cc:dd:01", node_mac="02:aa:bb:cc:dd:02")  # fmt: skip
        lb = LBMaps(maps)
        fe = Frontend(vip, 80, 6)
        lb.upsert_backend(1, Backend(server, 8080, 6))
        lb.upsert_rev_nat(1, Frontend(vip, 80, 0))
        lb.upsert_slot(fe, 1, ServiceValue(backend_id=1))
        lb.upsert_slot(fe, 0, ServiceValue(count=1, rev_nat_index=1))
        prog = obj.program_fd("cil_from_container")

        def syn(sport: int) -> int:
            frame = tcp_frame(client, IPv4Address(str(vip)), sport, 80, 0x02)
            return in_netns(ns, lambda: _test_run(prog, frame, client_if))

        assert syn(41001) == TC_ACT_REDIRECT  # to the backend, a local pod
        bits = maps[FRONTEND_BITS_MAP]
        zero = bytes(8)
        for i in range(FRONTEND_BITS_WORDS):
            bits.update(i.to_bytes(4, sys.byteorder), zero)
        assert syn(41002) == TC_ACT_OK  # no lookup: to the stack, as an unknown address
        bit = frontend_bit(vip)
        bits.update((bit >> 6).to_bytes(4, sys.byteorder), (1 << (bit & 63)).to_bytes(8, "little"))
        assert syn(41003) == TC_ACT_REDIRECT
    finally:
        for m in maps.values():
            m.close()
