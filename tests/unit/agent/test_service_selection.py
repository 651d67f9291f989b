"""What the service manager writes for the datapath's backend selection (lib/lb.h
lb_select_backend): terminating backends kept beyond slot 0's count (qcount) so established
connections keep their backend entry, a Maglev frontend's table (upstream's table over the active
backends by name, the same whatever the ids), affinity timeout and match entries; all written
before slot 0 and pruned after it."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

from ciliary.agent.services import ServiceManager, desired_frontends
from ciliary.core.maglev import lookup_table
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath.maps.endpoints import AF_INET4
from ciliary.datapath.maps.lb import (
    LB_ALGORITHM_SHIFT,
    LB_SELECTION_MAGLEV,
    SVC_FLAG_AFFINITY,
    Frontend,
)
from tests.unit.agent.test_service_manager import FakeMaps

HTTP = Frontend(ip_address("10.96.0.5"), 80, 6)


class SelectionMaps(FakeMaps):
    def __init__(self) -> None:
        super().__init__()
        self.maglev: dict[tuple[int, int], list[int]] = {}
        self.matches: set[tuple[int, int]] = set()

    def upsert_maglev(self, index: int, family: int, table: Sequence[int]) -> None:
        assert all(i in self.state.backends for i in table), "table names a missing backend"
        self.maglev[(family, index)] = list(table)

    def delete_maglev(self, index: int, family: int) -> None:
        del self.maglev[(family, index)]

    def upsert_affinity_match(self, backend_id: int, index: int) -> None:
        self.matches.add((backend_id, index))

    def delete_affinity_match(self, backend_id: int, index: int) -> None:
        self.matches.remove((backend_id, index))


def _svc(
    backends: dict[str, bool], *, affinity: int = 0, algorithm: str | None = None
) -> ServiceInfo:
    return ServiceInfo(
        namespace="default",
        name="web",
        type="ClusterIP",
        cluster_ips=["10.96.0.5"],
        ports=[ServicePortInfo(name="http", port=80, protocol="TCP")],
        session_affinity="ClientIP" if affinity else "None",
        session_affinity_timeout=affinity or 10800,
        lb_algorithm=algorithm,
        external_traffic_policy="Cluster",
        backends=[
            BackendInfo(
                address=a, ready=not term, serving=True, terminating=term,
                ports={"http": L4Addr(protocol="TCP", port=8080)},
            )
            for a, term in backends.items()
        ],
    )  # fmt: skip


def test_a_terminating_backend_stays_in_the_maps_beyond_count() -> None:
    maps = SelectionMaps()
    mgr = ServiceManager(maps)
    mgr.sync(desired_frontends([_svc({"10.0.1.1": False, "10.0.1.2": False})]))
    ids = {str(b.address): i for i, b in maps.state.backends.items()}
    mgr.sync(desired_frontends([_svc({"10.0.1.1": True, "10.0.1.2": False})]))
    head = maps.state.slots[(HTTP, 0)]
    assert (head.count, head.qcount) == (1, 1)
    assert maps.state.slots[(HTTP, 1)].backend_id == ids["10.0.1.2"]  # the one chosen from
    assert maps.state.slots[(HTTP, 2)].backend_id == ids["10.0.1.1"]  # kept, same id
    assert maps.state.backends[ids["10.0.1.1"]].state == 1  # BE_STATE_TERMINATING
    # gone from the EndpointSlice: its slot and backend entry go
    mgr.sync(desired_frontends([_svc({"10.0.1.2": False})]))
    assert (maps.state.slots[(HTTP, 0)].count, maps.state.slots[(HTTP, 0)].qcount) == (1, 0)
    assert ids["10.0.1.1"] not in maps.state.backends
    # a restarted manager reads the terminating slots back
    mgr.sync(desired_frontends([_svc({"10.0.1.1": True, "10.0.1.2": False})]))
    again = ServiceManager(maps)
    again.restore()
    assert len(again.frontends[HTTP].backend_ids) == 2
    writes = maps.writes
    again.sync(desired_frontends([_svc({"10.0.1.1": True, "10.0.1.2": False})]))
    assert maps.writes == writes


def test_maglev_table_over_the_active_backends_by_name() -> None:
    maps = SelectionMaps()
    mgr = ServiceManager(maps, algorithm="maglev", maglev_table_size=251, maglev_seed=7)
    names = [f"10.0.1.{i}" for i in range(1, 6)]
    mgr.sync(desired_frontends([_svc(dict.fromkeys(names, False))]))
    index = mgr.frontends[HTTP].id
    table = maps.maglev[(AF_INET4, index)]
    expected = lookup_table(sorted(f"{n}:8080" for n in names), 251, 7)
    by_id = {i: f"{b.address}:{b.port}" for i, b in maps.state.backends.items()}
    assert [by_id[i] for i in table] == [sorted(f"{n}:8080" for n in names)[e] for e in expected]
    assert (AF_INET4, mgr.frontends[Frontend(ip_address("10.96.0.5"), 0, 0)].id) not in maps.maglev
    # one terminating: out of the table, still a backend entry
    mgr.sync(desired_frontends([_svc({n: n == names[0] for n in names})]))
    assert {by_id[i] for i in maps.maglev[(AF_INET4, index)]} == {f"{n}:8080" for n in names[1:]}
    # the annotation overrides the agent's algorithm; deleting the Service drops the table
    mgr.sync(desired_frontends([_svc(dict.fromkeys(names, False), algorithm="random")]))
    assert (AF_INET4, index) not in maps.maglev
    mgr.sync(desired_frontends([_svc(dict.fromkeys(names, False))]))
    assert (AF_INET4, index) in maps.maglev
    mgr.sync({})
    assert maps.maglev == {}


def test_slot_0_marks_a_maglev_frontend_once_its_table_is_written() -> None:
    """The datapath looks a frontend's Maglev table up only when slot 0 says LB_SELECTION_MAGLEV
    above the affinity timeout (lib/lb.h): set with the table, gone with it, the timeout intact;
    a restarted manager reads both back."""
    maps = SelectionMaps()
    mgr = ServiceManager(maps, algorithm="maglev", maglev_table_size=251, maglev_seed=7)
    names = dict.fromkeys(["10.0.1.1", "10.0.1.2"], False)
    mgr.sync(desired_frontends([_svc(names, affinity=30)]))
    head = maps.state.slots[(HTTP, 0)]
    assert (AF_INET4, head.rev_nat_index) in maps.maglev
    assert head.backend_id == (LB_SELECTION_MAGLEV << LB_ALGORITHM_SHIFT) | 30
    wildcard = maps.state.slots[(Frontend(ip_address("10.96.0.5"), 0, 0), 0)]
    assert wildcard.backend_id == 0  # no table, no mark
    again = ServiceManager(maps, algorithm="maglev", maglev_table_size=251, maglev_seed=7)
    again.restore()
    assert again.frontends[HTTP].affinity_timeout == 30
    writes = maps.writes
    again.sync(desired_frontends([_svc(names, affinity=30)]))
    assert maps.writes == writes  # the table and the mark are read back: nothing to write
    again.sync(desired_frontends([_svc(names, algorithm="random", affinity=30)]))
    assert maps.state.slots[(HTTP, 0)].backend_id == 30
    assert maps.maglev == {}
    again.sync(desired_frontends([_svc(names)]))  # Maglev, no affinity
    assert maps.state.slots[(HTTP, 0)].backend_id == LB_SELECTION_MAGLEV << LB_ALGORITHM_SHIFT


def test_affinity_timeout_flag_and_matches() -> None:
    maps = SelectionMaps()
    mgr = ServiceManager(maps)
    mgr.sync(desired_frontends([_svc({"10.0.1.1": False, "10.0.1.2": False}, affinity=3)]))
    head = maps.state.slots[(HTTP, 0)]
    assert head.flags & SVC_FLAG_AFFINITY and head.backend_id == 3
    index = head.rev_nat_index
    ids = {str(b.address): i for i, b in maps.state.backends.items()}
    assert maps.matches == {(ids["10.0.1.1"], index), (ids["10.0.1.2"], index)}
    # a restarted agent knows the matches it wrote: a backend terminating loses its match
    again = ServiceManager(maps)
    again.restore()
    again.sync(desired_frontends([_svc({"10.0.1.1": True, "10.0.1.2": False}, affinity=3)]))
    assert maps.matches == {(ids["10.0.1.2"], index)}  # a terminating one is no client's
    mgr = again
    mgr.sync(desired_frontends([_svc({"10.0.1.1": True, "10.0.1.2": False})]))
    assert maps.matches == set()
    assert not maps.state.slots[(HTTP, 0)].flags & SVC_FLAG_AFFINITY
