"""The service manager (agent/services.py) without a kernel: which frontends and backends the
services ask for, the ids (allocated, stable over a restore), and the order of the writes, checked
after every single write against what the datapath may read meanwhile: no slot names a missing
backend, a service entry never counts a slot that is not there, every frontend has its rev-NAT
entry."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

import pytest

from ciliary.agent.services import (
    IDAllocator,
    ServiceManager,
    ServiceSyncer,
    desired_frontends,
    lb_map_entries,
    service_frontends,
)
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath.maps.endpoints import packed_addresses
from ciliary.datapath.maps.lb import (
    BE_STATE_ACTIVE,
    BE_STATE_TERMINATING,
    SVC_FLAG_WILDCARD,
    Backend,
    Frontend,
    LBState,
    ServiceValue,
)


class FakeMaps:
    """The six maps as dicts; every write is checked against the datapath's invariants."""

    def __init__(self) -> None:
        self.state = LBState()
        self.writes = 0

    def _check(self) -> None:
        self.writes += 1
        slots = self.state.slots
        for (fe, slot), value in slots.items():
            if slot == 0:
                for i in range(1, value.count + 1):
                    assert (fe, i) in slots, f"{fe} counts slot {i}, absent"
                assert value.rev_nat_index in self.state.rev_nat, f"{fe} without rev-NAT"
            else:
                assert value.backend_id in self.state.backends, f"{fe}/{slot} -> missing backend"

    def upsert_slot(self, fe: Frontend, slot: int, value: ServiceValue) -> None:
        self.state.slots[(fe, slot)] = value
        self._check()

    def delete_slot(self, fe: Frontend, slot: int) -> None:
        del self.state.slots[(fe, slot)]
        self._check()

    def upsert_backend(self, backend_id: int, backend: Backend) -> None:
        self.state.backends[backend_id] = backend
        self._check()

    def delete_backend(self, backend_id: int, family: int) -> None:
        del self.state.backends[backend_id]
        self._check()

    def upsert_rev_nat(self, index: int, fe: Frontend) -> None:
        self.state.rev_nat[index] = Frontend(fe.address, fe.port, 0)
        self._check()

    def delete_rev_nat(self, index: int, family: int) -> None:
        del self.state.rev_nat[index]
        self._check()

    def dump(self) -> LBState:
        return LBState(
            dict(self.state.slots),
            dict(self.state.backends),
            dict(self.state.rev_nat),
            {i: set(r) for i, r in self.state.source_ranges.items()},
        )


def _backend(addr: str, *, ready: bool = True, serving: bool = True, term: bool = False,
             ports: dict[str, L4Addr] | None = None) -> BackendInfo:  # fmt: skip
    return BackendInfo(
        address=addr,
        ready=ready,
        serving=serving,
        terminating=term,
        ports=ports
        if ports is not None
        else {"http": L4Addr(protocol="TCP", port=8080), "dns": L4Addr(protocol="UDP", port=53)},
    )


def _svc(
    backends: list[BackendInfo], name: str = "web", ips: tuple[str, ...] = ("10.96.0.5",)
) -> ServiceInfo:
    return ServiceInfo(
        namespace="shop",
        name=name,
        type="ClusterIP",
        cluster_ips=list(ips),
        ports=[
            ServicePortInfo(name="http", port=80, protocol="TCP"),
            ServicePortInfo(name="dns", port=53, protocol="UDP"),
        ],
        session_affinity="None",
        external_traffic_policy="Cluster",
        backends=backends,
    )


def fe(addr: str, port: int, proto: int) -> Frontend:
    return Frontend(ip_address(addr), port, proto)


def test_frontends_per_cluster_ip_and_port_with_their_family_and_port_backends() -> None:
    svc = _svc(
        [
            _backend("10.0.1.5"),
            _backend("10.0.2.7"),
            _backend("fd00::5"),
            _backend("10.0.1.9", ports={"metrics": L4Addr(protocol="TCP", port=9090)}),
            _backend("10.0.1.8", ready=False, serving=True, term=True),
        ],
        ips=("10.96.0.5", "fd00:10:96::5"),
    )
    got = desired_frontends([svc])
    assert set(got) == {
        fe("10.96.0.5", 0, 0),
        fe("10.96.0.5", 80, 6),
        fe("10.96.0.5", 53, 17),
        fe("fd00:10:96::5", 0, 0),
        fe("fd00:10:96::5", 80, 6),
        fe("fd00:10:96::5", 53, 17),
    }
    assert got[fe("10.96.0.5", 0, 0)].backends == ()
    assert got[fe("10.96.0.5", 0, 0)].flags2 == SVC_FLAG_WILDCARD
    http = got[fe("10.96.0.5", 80, 6)]
    # the ready ones chosen from; a terminating one after them (kept for its connections, never
    # chosen while there are ready ones); the target port by the port's name
    assert [(str(b.address), b.port, b.proto, b.state) for b in http.backends] == [
        ("10.0.1.5", 8080, 6, BE_STATE_ACTIVE),
        ("10.0.2.7", 8080, 6, BE_STATE_ACTIVE),
        ("10.0.1.8", 8080, 6, BE_STATE_TERMINATING),
    ]
    assert http.active == 2
    assert [str(b.address) for b in got[fe("fd00:10:96::5", 53, 17)].backends] == ["fd00::5"]
    assert http.service == ("shop", "web")


def test_terminating_serving_backends_only_when_no_ready_one_is_left() -> None:
    svc = _svc(
        [
            _backend("10.0.1.8", ready=False, serving=True, term=True),
            _backend("10.0.1.9", ready=False, serving=False, term=True),
        ]
    )
    http = desired_frontends([svc])[fe("10.96.0.5", 80, 6)]
    assert [(str(b.address), b.state) for b in http.backends] == [
        ("10.0.1.8", BE_STATE_TERMINATING)
    ]
    assert http.active == 1  # chosen from, none being ready


def test_sync_programs_removes_a_backend_then_the_service_in_a_safe_order() -> None:
    maps = FakeMaps()
    mgr = ServiceManager(maps)
    three = [_backend("10.0.1.5"), _backend("10.0.1.6"), _backend("10.0.2.7")]
    mgr.sync(desired_frontends([_svc(three)]))
    http = fe("10.96.0.5", 80, 6)
    head = maps.state.slots[(http, 0)]
    assert head.count == 3 and head.rev_nat_index > 0
    ids = [maps.state.slots[(http, i)].backend_id for i in (1, 2, 3)]
    assert {str(maps.state.backends[i].address) for i in ids} == {
        "10.0.1.5",
        "10.0.1.6",
        "10.0.2.7",
    }
    assert all(maps.state.backends[i].state == BE_STATE_ACTIVE for i in ids)
    assert maps.state.rev_nat[head.rev_nat_index] == Frontend(ip_address("10.96.0.5"), 80, 0)
    # 3 frontends (http, dns, wildcard), 6 backends (3 addresses x 2 ports)
    assert len(maps.state.backends) == 6
    assert len({v.rev_nat_index for (_, s), v in maps.state.slots.items() if s == 0}) == 3

    # a pod goes: out of every slot, then out of the backend map; the rest keeps its ids
    gone = next(i for i in ids if str(maps.state.backends[i].address) == "10.0.1.6")
    mgr.sync(desired_frontends([_svc([three[0], three[2]])]), owned=mgr.owned_by(("shop", "web")))
    assert maps.state.slots[(http, 0)].count == 2
    assert (http, 3) not in maps.state.slots
    assert gone not in maps.state.backends
    assert {maps.state.slots[(http, i)].backend_id for i in (1, 2)} == set(ids) - {gone}
    assert maps.state.slots[(http, 0)].rev_nat_index == head.rev_nat_index

    # unchanged: nothing written
    before = maps.writes
    two = desired_frontends([_svc([three[0], three[2]])])
    assert mgr.sync(two, mgr.owned_by(("shop", "web"))) == 0
    assert maps.writes == before

    # the Service goes: nothing of it is left
    mgr.sync({}, owned=mgr.owned_by(("shop", "web")))
    assert maps.state.slots == {} and maps.state.backends == {} and maps.state.rev_nat == {}


def test_a_service_update_leaves_other_services_alone() -> None:
    maps = FakeMaps()
    mgr = ServiceManager(maps)
    web, db = _svc([_backend("10.0.1.5")]), _svc([_backend("10.0.1.5")], "db", ("10.96.0.6",))
    mgr.sync(desired_frontends([web, db]))
    mgr.sync({}, owned=mgr.owned_by(("shop", "web")))
    assert {f.address for f, _ in maps.state.slots} == {ip_address("10.96.0.6")}
    # the backend both used stays for db
    assert {str(b.address) for b in maps.state.backends.values()} == {"10.0.1.5"}


def test_ids_survive_a_restart_and_a_full_sync_removes_what_went_while_down() -> None:
    maps = FakeMaps()
    first = ServiceManager(maps)
    web, db = _svc([_backend("10.0.1.5")]), _svc([_backend("10.0.1.7")], "db", ("10.96.0.6",))
    first.sync(desired_frontends([web, db]))
    http = fe("10.96.0.5", 80, 6)
    rev_nat = maps.state.slots[(http, 0)].rev_nat_index
    backend = maps.state.slots[(http, 1)].backend_id

    again = ServiceManager(maps)  # a restarted agent, over the pinned maps
    again.restore()
    before = maps.writes
    again.sync(desired_frontends([web]))  # db was deleted while no agent ran
    assert maps.state.slots[(http, 0)].rev_nat_index == rev_nat
    assert maps.state.slots[(http, 1)].backend_id == backend
    assert {f.address for f, _ in maps.state.slots} == {ip_address("10.96.0.5")}
    assert {str(b.address) for b in maps.state.backends.values()} == {"10.0.1.5"}  # db's gone
    assert maps.writes > before  # db's entries removed, web's untouched
    # a new frontend gets an id no restored one has
    db2 = _svc([_backend("10.0.1.7")], "db2", ("10.96.0.7",))
    again.sync(desired_frontends([web, db2]))
    ids = [v.rev_nat_index for (_, s), v in maps.state.slots.items() if s == 0]
    assert len(ids) == len(set(ids))


def test_id_allocator_skips_used_ids_and_does_not_reuse_a_released_one_at_once() -> None:
    ids = IDAllocator(4)
    ids.claim(2)
    assert [ids.allocate(), ids.allocate()] == [1, 3]
    ids.release(1)
    assert ids.allocate() == 4
    assert ids.allocate() == 1  # wrapped around
    with pytest.raises(RuntimeError, match="all 4 ids are in use"):
        ids.allocate()


def test_listings_show_the_maps_with_ids_and_the_service_names() -> None:
    maps = FakeMaps()
    mgr = ServiceManager(maps)
    svc = _svc([_backend("10.0.1.5"), _backend("fd00::5")], ips=("10.96.0.5", "fd00:10:96::5"))
    mgr.sync(desired_frontends([svc]))
    fronts = service_frontends(maps.dump(), mgr.known())
    assert len(fronts) == 4  # the wildcards are not services
    http = next(f for f in fronts if (f.address, f.port) == ("10.96.0.5", 80))
    assert (http.protocol, http.type, http.namespace, http.name) == (
        "TCP",
        "ClusterIP",
        "shop",
        "web",
    )
    assert [(b.address, b.port, b.protocol, b.state) for b in http.backends] == [
        ("10.0.1.5", 8080, "TCP", "active")
    ]
    entries = lb_map_entries(maps.dump(), mgr.known())
    assert [e.service_address for e in entries][:1] == ["10.96.0.5"]  # IPv4 first, both listed
    slots = [(e.slot, e.backend_address, e.backend_port, e.rev_nat_index) for e in entries
             if (e.service_address, e.service_port) == ("10.96.0.5", 80)]  # fmt: skip
    assert slots == [(0, None, None, http.id), (1, "10.0.1.5", 8080, http.id)]
    wildcard = next(
        e for e in entries if (e.service_address, e.service_port) == ("fd00:10:96::5", 0)
    )
    assert wildcard.protocol == "ANY" and "wildcard" in wildcard.flags


def test_syncer_programs_all_once_synced_then_each_changed_service() -> None:
    maps = FakeMaps()
    services = {("shop", "web"): _svc([_backend("10.0.1.5")])}
    syncer = ServiceSyncer(
        ServiceManager(maps), lambda: list(services.values()), lambda ns, n: services.get((ns, n))
    )
    synced = asyncio.Event()

    async def scenario() -> None:
        task = asyncio.create_task(syncer.run(synced.wait))
        syncer.changed("shop", "web")  # before the watcher synced: nothing is written
        await asyncio.sleep(0.01)
        assert maps.writes == 0
        synced.set()
        await asyncio.wait_for(syncer.synced.wait(), 1)
        assert {f.address for f, _ in maps.state.slots} == {ip_address("10.96.0.5")}
        on_service, on_slice = syncer.handlers()
        services[("shop", "db")] = _svc([_backend("10.0.1.7")], "db", ("10.96.0.6",))
        on_service.add({"metadata": {"namespace": "shop", "name": "db"}})  # type: ignore[misc]
        del services[("shop", "web")]
        slice_ = {"metadata": {"namespace": "shop", "name": "web-x1",
                               "labels": {"kubernetes.io/service-name": "web"}}}  # fmt: skip
        on_slice.delete(slice_)  # type: ignore[misc]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if {f.address for f, _ in maps.state.slots} == {ip_address("10.96.0.6")}:
                break
        assert {f.address for f, _ in maps.state.slots} == {ip_address("10.96.0.6")}
        task.cancel()

    asyncio.run(scenario())


def test_hubble_lookups_service_by_address_and_frontend_by_rev_nat_index() -> None:
    maps = FakeMaps()
    mgr = ServiceManager(maps)
    web, db = _svc([_backend("10.0.1.5")]), _svc([_backend("10.0.1.7")], "db", ("10.96.0.6",))
    mgr.sync(desired_frontends([web, db]))
    vip = ip_address("10.96.0.5")
    assert mgr.service_by_addr(vip, 80) == ("shop", "web")
    assert mgr.service_by_addr(vip, 53) == ("shop", "web")  # the UDP port, any protocol
    assert mgr.service_by_addr(vip, 81) is None
    assert mgr.service_by_addr(ip_address("10.0.1.5"), 80) is None  # a backend is no frontend
    index = maps.state.slots[(fe("10.96.0.6", 80, 6), 0)].rev_nat_index
    assert mgr.frontend_of(index) == fe("10.96.0.6", 80, 6)
    again = ServiceManager(maps)  # restored ids resolve too
    again.restore()
    assert again.frontend_of(index) == fe("10.96.0.6", 80, 6)
    mgr.sync(desired_frontends([web]))  # db deleted: its index no longer names it
    assert mgr.frontend_of(index) is None
    assert mgr.service_by_addr(ip_address("10.96.0.6"), 80) is None


def test_frontend_addresses_are_kept_until_a_frontend_comes_or_goes() -> None:
    """Hubble asks for the frontends' addresses once per batch of flows: the same array while
    no frontend is added or removed (a backend change keeps it), a new one after either."""
    maps = FakeMaps()
    mgr = ServiceManager(maps)
    assert len(mgr.frontend_addresses()) == 0
    web = _svc([_backend("10.0.1.5")])
    mgr.sync(desired_frontends([web]))
    first = mgr.frontend_addresses()
    assert first.tobytes() == packed_addresses([ip_address("10.96.0.5")]).tobytes()
    mgr.sync(desired_frontends([_svc([_backend("10.0.1.6")])]), mgr.owned_by(("shop", "web")))
    assert mgr.frontend_addresses() is first  # backends changed, frontends the same
    db = _svc([_backend("10.0.1.5")], "db", ("10.96.0.6",))
    mgr.sync(desired_frontends([web, db]))
    assert (
        mgr.frontend_addresses().tobytes()
        == packed_addresses([ip_address("10.96.0.5"), ip_address("10.96.0.6")]).tobytes()
    )
    mgr.sync({}, owned=mgr.owned_by(("shop", "db")))
    assert mgr.frontend_addresses().tobytes() == first.tobytes()
