"""The selection's maps in the kernel (lib/lb.h): the objects load with them (the selection a
global function the verifier checks once), a Maglev frontend's table is an inner array of the
configured size under its rev-NAT index in ciliary_lb4_maglev (swapped whole on change, gone
with the frontend), slot 0 carries the affinity timeout and flag and the match map the
frontend's active backends."""

from __future__ import annotations

import ctypes
from pathlib import Path

from ciliary.agent.services import ServiceManager, desired_frontends
from ciliary.core.maglev import lookup_table, parse_hash_seed
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath.libbpf import Map
from ciliary.datapath.maps.endpoints import AF_INET4
from ciliary.datapath.maps.lb import (
    SVC_FLAG_AFFINITY,
    LbMaglevConfigC,
    slot0_affinity_timeout,
    slot0_maglev,
)
from tests.bpf.test_lb_maps import _load, pin_dir  # noqa: F401  (the fixture)


def _svc(backends: list[str], annotation: str | None, affinity: int = 0) -> ServiceInfo:
    return ServiceInfo(
        namespace="default", name="web", type="ClusterIP", cluster_ips=["10.96.0.5"],
        ports=[ServicePortInfo(name="http", port=80, protocol="TCP")],
        session_affinity="ClientIP" if affinity else "None",
        session_affinity_timeout=affinity or 10800, lb_algorithm=annotation,
        external_traffic_policy="Cluster",
        backends=[
            BackendInfo(address=a, ready=True, serving=True, terminating=False,
                        ports={"http": L4Addr(protocol="TCP", port=8080)})
            for a in backends
        ],
    )  # fmt: skip


def test_maglev_tables_and_affinity_in_the_kernel(pin_dir: Path) -> None:  # noqa: F811
    dp = _load(pin_dir)
    try:
        seed = parse_hash_seed("AAAAAQAAAAIAAAAD")
        dp.lb.set_maglev_config(251, seed.jhash0, seed.jhash1)
        with Map.from_pin(pin_dir / "ciliary_lb_maglev_config") as raw:
            conf = LbMaglevConfigC.from_buffer_copy(raw.lookup(bytes(4)) or b"")
        assert (conf.table_size, conf.seed_v4, conf.seed_v6) == (251, 2, 3)
        mgr = ServiceManager(dp.lb, maglev_table_size=251, maglev_seed=seed.murmur)
        names = ["10.0.1.5", "10.0.1.6", "10.0.2.7"]
        mgr.sync(desired_frontends([_svc(names, "maglev", affinity=3)]))
        (http,) = [fe for fe in mgr.frontends if fe.port == 80]
        index = mgr.frontends[http].id
        table = dp.lb.maglev_table(index, AF_INET4)
        assert table is not None and len(table) == 251
        state = dp.lb.dump()
        by_name = sorted(f"{n}:8080" for n in names)
        expected = [by_name[i] for i in lookup_table(by_name, 251, seed.murmur)]
        assert [f"{state.backends[i].address}:{state.backends[i].port}" for i in table] == expected
        with Map.from_pin(pin_dir / "ciliary_lb4_maglev") as outer:
            assert outer.lookup(bytes(ctypes.c_uint16(index))) is not None
        head = state.slots[(http, 0)]
        assert head.flags & SVC_FLAG_AFFINITY and slot0_affinity_timeout(head.backend_id) == 3
        assert slot0_maglev(head.backend_id)  # the datapath looks its table up
        with Map.from_pin(pin_dir / "ciliary_lb_affinity_match") as match:
            assert len(list(match.items())) == 3
        # a backend fewer: a new table; the annotation gone: no table, no matches
        mgr.sync(desired_frontends([_svc(names[:2], "maglev")]))
        table = dp.lb.maglev_table(index, AF_INET4)
        assert table is not None and len(set(table)) == 2
        mgr.sync(desired_frontends([_svc(names[:2], None)]))
        assert dp.lb.maglev_table(index, AF_INET4) is None
        assert not slot0_maglev(dp.lb.dump().slots[(http, 0)].backend_id)
        with Map.from_pin(pin_dir / "ciliary_lb4_maglev") as outer:
            assert outer.lookup(bytes(ctypes.c_uint16(index))) is None
        with Map.from_pin(pin_dir / "ciliary_lb_affinity_match") as match:
            assert list(match.items()) == []
    finally:
        dp.close()
