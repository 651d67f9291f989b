"""fibrules: when the main table alone routes bpf_lxc's lookups for the native routing CIDR as
the node's ip rules would (a lab node's rules, and the rules that must keep the full lookup),
and which netlink notifications ask for the rules to be read again."""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address, ip_network

from ciliary.datapath.linux.fibrules import (
    FIB_RULE_INVERT,
    FR_ACT_TO_TBL,
    RT_TABLE_LOCAL,
    RT_TABLE_MAIN,
    Rule,
    main_lookup_suffices,
    relevant_events,
    rule_of,
)

CIDR = ip_network("10.200.0.0/16")
ROUTER = ip_address("10.200.0.1")
FR_ACT_PROHIBIT = 8


def _rule(
    priority: int,
    table: int = 0,
    action: int = FR_ACT_TO_TBL,
    *,
    dst: str | None = None,
    mark: int | None = None,
    inverted: bool = False,
    suppresses: bool = False,
) -> Rule:
    narrowed = dst is not None or mark is not None
    return Rule(
        priority=priority,
        table=table,
        action=action,
        inverted=inverted,
        selects_all=not narrowed and not inverted,
        suppresses=suppresses,
        dst=ip_network(dst) if dst is not None else None,
        mark=mark,
    )


LOCAL = _rule(0, RT_TABLE_LOCAL)
PROXY = _rule(9, 2004, mark=0x200)  # fwmark 0x200/0xf00 lookup 2004
FENCE_LO = _rule(100, RT_TABLE_MAIN, dst="172.18.0.1/32")  # iif lo to ADDR lookup main
FENCE = _rule(101, action=FR_ACT_PROHIBIT, dst="172.18.0.1/32")  # to ADDR tcp 6443 prohibit
MAIN = _rule(32766, RT_TABLE_MAIN)
DEFAULT = _rule(32767, 253)
LAB_NODE = [LOCAL, PROXY, FENCE_LO, FENCE, MAIN, DEFAULT]
LOCAL_ROUTES = [ip_network(p) for p in ("10.200.0.1/32", "127.0.0.0/8", "172.18.0.2/32")]


def _suffices(rules: list[Rule], local: list[str] | None = None) -> bool:
    routes = LOCAL_ROUTES if local is None else [ip_network(p) for p in local]
    return main_lookup_suffices(rules, routes, CIDR, [ROUTER])


def test_a_lab_nodes_rules_route_the_pod_pool_as_main_does() -> None:
    assert _suffices(LAB_NODE)
    assert _suffices([LOCAL, MAIN])  # a node without rules of its own


def test_a_rule_that_may_match_the_pool_before_main_keeps_the_full_lookup() -> None:
    for rule in (
        _rule(50, 100, dst="10.200.1.0/24"),  # another table for a part of the pool
        _rule(50, action=FR_ACT_PROHIBIT, dst="10.0.0.0/8"),  # a prohibit covering it
        _rule(50, 100),  # every lookup to another table
        _rule(50, 2004, mark=0x200, inverted=True),  # "not fwmark": matches mark 0
        _rule(50, 100, mark=0),  # fwmark 0 matches bpf_fib_lookup's mark 0
        _rule(50, RT_TABLE_MAIN, dst="10.200.1.0/24", suppresses=True),  # main may be skipped
    ):
        assert not _suffices([LOCAL, rule, MAIN]), rule
    # after main they never matter: main's miss is the stack's in both lookups
    assert _suffices([LOCAL, MAIN, _rule(40000, action=FR_ACT_PROHIBIT)])


def test_rules_that_cannot_change_the_answer() -> None:
    assert _suffices([LOCAL, _rule(50, 100, dst="192.168.0.0/16"), MAIN])  # disjoint
    assert _suffices([LOCAL, _rule(50, 100, mark=0x1000), MAIN])  # fwmark, never mark 0
    assert _suffices([LOCAL, _rule(50, RT_TABLE_MAIN, dst="10.200.1.0/24"), MAIN])  # main anyway


def test_main_must_be_reached_unsuppressed() -> None:
    assert not _suffices([LOCAL, DEFAULT])
    assert not _suffices([LOCAL, _rule(32766, RT_TABLE_MAIN, suppresses=True), DEFAULT])


def test_the_local_table_may_hold_only_the_nodes_own_addresses_in_the_pool() -> None:
    assert not _suffices(LAB_NODE, ["10.200.0.1/32", "10.200.1.77/32"])  # an address of a pod's
    assert not _suffices(LAB_NODE, ["10.200.0.0/24"])
    assert _suffices(LAB_NODE, ["10.200.0.1/32", "192.168.1.1/32"])
    # a local rule that never looks at the pool is fine whatever its table holds
    narrow_local = _rule(0, RT_TABLE_LOCAL, dst="127.0.0.0/8")
    assert _suffices([narrow_local, MAIN], ["10.200.1.77/32"])


class _Msg(dict[str, object]):
    """What rule_of reads of a pyroute2 message."""

    def get_attr(self, name: str) -> object:
        attrs = self["attrs"]
        assert isinstance(attrs, list)
        return next((v for k, v in attrs if k == name), None)


def _msg(attrs: list[tuple[str, object]], **header: int) -> _Msg:
    base = {"family": socket.AF_INET, "dst_len": 0, "src_len": 0, "tos": 0, "table": 254}
    base.update(action=FR_ACT_TO_TBL, flags=0)
    return _Msg(attrs=attrs, **{**base, **header})


def test_rule_of_reads_selectors_and_masks() -> None:
    proxy = rule_of(
        _msg(
            [("FRA_TABLE", 2004), ("FRA_PRIORITY", 9), ("FRA_FWMARK", 0x200),
             ("FRA_FWMASK", 0xF00), ("FRA_SUPPRESS_PREFIXLEN", 0xFFFFFFFF)],
            table=252,
        )
    )  # fmt: skip
    assert (proxy.priority, proxy.table, proxy.mark, proxy.selects_all) == (9, 2004, 0x200, False)
    assert not proxy.suppresses
    main = rule_of(_msg([("FRA_TABLE", 254), ("FRA_PRIORITY", 32766)]))
    assert main.selects_all and main.dst is None and main.mark is None
    fence = rule_of(
        _msg(
            [("FRA_PRIORITY", 101), ("FRA_DST", "172.18.0.1"), ("FRA_IP_PROTO", 6),
             ("UNKNOWN", {})],
            dst_len=32, table=0,
        )
    )  # fmt: skip
    assert fence.dst == ip_network("172.18.0.1/32") and not fence.selects_all
    unknown = rule_of(_msg([("FRA_PRIORITY", 5), ("UNKNOWN", {})]))
    assert not unknown.selects_all  # an attribute not understood may narrow it
    inverted = rule_of(_msg([("FRA_PRIORITY", 5)], flags=FIB_RULE_INVERT))
    assert inverted.inverted and not inverted.selects_all
    suppressing = rule_of(_msg([("FRA_PRIORITY", 5), ("FRA_SUPPRESS_PREFIXLEN", 0)]))
    assert suppressing.suppresses


def _nlmsg(kind: int, table: int = 0) -> bytes:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, table, 0, 0, 1, 0)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_only_rules_and_local_routes_are_relevant_events() -> None:
    rtm_newroute, rtm_delroute, rtm_newrule = 24, 25, 32
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        assert not relevant_events(b)  # nothing pending
        a.send(_nlmsg(rtm_newroute, RT_TABLE_MAIN) + _nlmsg(rtm_delroute, RT_TABLE_MAIN))
        assert not relevant_events(b)  # a pod's route: every CNI ADD
        a.send(_nlmsg(rtm_newroute, RT_TABLE_MAIN) + _nlmsg(rtm_newroute, RT_TABLE_LOCAL))
        assert relevant_events(b)  # an address came or went
        a.send(_nlmsg(rtm_newrule))
        a.send(_nlmsg(rtm_newroute, RT_TABLE_MAIN))
        assert relevant_events(b)  # a rule, and all that was pending read
        assert not relevant_events(b)


def test_a_tunnel_endpoint_is_proven_as_a_host_prefix_of_no_address_of_its_own() -> None:
    """agent/fibdirect.py's tunnel endpoints: another node's IP as a /32 with no own address
    (lib/encap.h's next-hop lookup of the outer packet). A lab node's rules leave it to main,
    the API fence included (its destination is the bridge's address); a rule on the endpoint
    itself, or the endpoint being a local address, keeps the full lookup."""
    local = [ip_network(p) for p in ("127.0.0.0/8", "172.18.0.2/32", "172.18.0.255/32")]
    other = ip_network("172.18.0.3/32")

    def proven(rules: list[Rule], endpoint: str = "172.18.0.3/32") -> bool:
        return main_lookup_suffices(rules, local, ip_network(endpoint), ())

    assert proven(LAB_NODE)
    assert not proven(LAB_NODE, "172.18.0.2/32")  # this node's own address: the local table's
    assert not proven(LAB_NODE, "172.18.0.1/32")  # the fence's address: its prohibit may match
    assert not proven([LOCAL, _rule(50, action=FR_ACT_PROHIBIT, dst=str(other)), MAIN])
    assert proven([LOCAL, _rule(50, action=FR_ACT_PROHIBIT, dst="172.18.0.4/32"), MAIN])
