"""loadBalancerSourceRanges (agent/services.py → ciliary_lb_source_range): a LoadBalancer's ingress
frontends get SVC_FLAG_SOURCE_RANGE and their prefixes (NodePort and ClusterIP frontends of the
same Service do not, as upstream's default); the prefixes are written before slot 0 sets the flag
and removed after it clears or shrinks, and go with the frontend; a restarted manager reads them
back and rewrites nothing."""

from __future__ import annotations

from ipaddress import ip_address

from ciliary.agent.services import FrontendNode, ServiceManager, desired_frontends
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath.maps.lb import (
    SRC_RANGE_KEY_BITS,
    SVC_FLAG_LOADBALANCER,
    SVC_FLAG_SOURCE_RANGE,
    Frontend,
    LbSrcRangeKeyC,
    _src_range_key,
    _src_range_text,
)
from tests.unit.agent.test_service_manager import FakeMaps

NODE = FrontendNode("n1", ("192.168.1.2",))
LB = Frontend(ip_address("198.51.100.7"), 80, 6)
NODEPORT = Frontend(ip_address("192.168.1.2"), 30080, 6)


class RangeMaps(FakeMaps):
    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def upsert_slot(self, fe: Frontend, slot: int, value: object) -> None:
        if slot == 0 and value.flags & SVC_FLAG_SOURCE_RANGE:  # type: ignore[attr-defined]
            have = self.state.source_ranges.get(value.rev_nat_index, set())  # type: ignore[attr-defined]
            assert have, "the flag is set before the frontend's prefixes are there"
        self.order.append(f"slot0 {fe.port}" if slot == 0 else "slot")
        super().upsert_slot(fe, slot, value)  # type: ignore[arg-type]

    def upsert_source_range(self, index: int, cidr: str) -> None:
        self.state.source_ranges.setdefault(index, set()).add(cidr)
        self.order.append(f"+{cidr}")

    def delete_source_range(self, index: int, cidr: str) -> None:
        self.state.source_ranges[index].remove(cidr)
        if not self.state.source_ranges[index]:
            del self.state.source_ranges[index]
        self.order.append(f"-{cidr}")


def _svc(ranges: list[str]) -> ServiceInfo:
    return ServiceInfo(
        namespace="shop", name="web", type="LoadBalancer", cluster_ips=["10.96.0.5"],
        ports=[ServicePortInfo(name="http", port=80, protocol="TCP", node_port=30080)],
        session_affinity="None", external_traffic_policy="Cluster",
        load_balancer_ips=["198.51.100.7"], load_balancer_source_ranges=ranges,
        backends=[BackendInfo(
            address="10.0.1.5", node_name="n1", ready=True, serving=True, terminating=False,
            ports={"http": L4Addr(protocol="TCP", port=8080)},
        )],
    )  # fmt: skip


def test_only_the_load_balancer_frontends_get_the_ranges() -> None:
    fes = desired_frontends([_svc(["203.0.113.0/24", "2001:db8::/32"])], NODE)
    assert fes[LB].flags == SVC_FLAG_LOADBALANCER | SVC_FLAG_SOURCE_RANGE
    assert fes[LB].source_ranges == {"203.0.113.0/24", "2001:db8::/32"}
    assert not fes[NODEPORT].flags & SVC_FLAG_SOURCE_RANGE and not fes[NODEPORT].source_ranges
    open_to_all = desired_frontends([_svc([])], NODE)[LB]
    assert open_to_all.flags == SVC_FLAG_LOADBALANCER and not open_to_all.source_ranges


def test_ranges_are_written_before_the_flag_and_removed_after() -> None:
    maps = RangeMaps()
    mgr = ServiceManager(maps)
    mgr.sync(desired_frontends([_svc(["203.0.113.0/24"])], NODE))
    index = mgr.frontends[LB].id
    assert maps.state.source_ranges == {index: {"203.0.113.0/24"}}
    maps.order.clear()
    mgr.sync(desired_frontends([_svc(["198.18.0.0/15"])], NODE))
    assert maps.order.index("+198.18.0.0/15") < maps.order.index("slot0 80")
    assert maps.order.index("-203.0.113.0/24") > maps.order.index("slot0 80")
    # a restarted manager reads them back: the same desired state writes nothing
    again = ServiceManager(maps)
    again.restore()
    writes, order = maps.writes, list(maps.order)
    again.sync(desired_frontends([_svc(["198.18.0.0/15"])], NODE))
    assert (maps.writes, maps.order) == (writes, order)
    # cleared: the flag goes first, then the prefixes; the Service deleted: nothing left
    again.sync(desired_frontends([_svc([])], NODE))
    assert maps.state.source_ranges == {}
    assert not maps.state.slots[(LB, 0)].flags & SVC_FLAG_SOURCE_RANGE
    again.sync(desired_frontends([_svc(["203.0.113.0/24"])], NODE))
    again.sync({})
    assert maps.state.source_ranges == {} and maps.state.slots == {}


def test_the_lpm_key_holds_the_frontend_family_and_prefix() -> None:
    for cidr, family, bits in (("203.0.113.0/24", 2, 24), ("2001:db8::/32", 10, 32)):
        k = LbSrcRangeKeyC.from_buffer_copy(_src_range_key(7, cidr))
        assert (k.rev_nat_id, k.family, k.prefixlen) == (7, family, SRC_RANGE_KEY_BITS + bits)
        assert _src_range_text(k) == cidr
