"""The node manager's entry computation (CiliumNodes + CiliumEndpoints + routing mode → wanted
ipcache entries and native routes), its diff, and its reconcile against a map that already holds
entries (the pinned map after an agent restart): stale flagged ones pruned, live ones kept,
other owners' never touched. Against the API server and a real map:
``tests/integration/agent/test_nodemanager.py``."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

import pytest

from ciliary.agent.k8s.ciliumendpoints import cep_node, cilium_node, endpoint_status
from ciliary.agent.k8s.nodemanager import (
    ClusterEndpoint,
    ClusterNode,
    Entry,
    IPNet,
    LocalNode,
    NodeManager,
    RemotePod,
    diff,
    parse_endpoint,
    parse_node,
    wanted_entries,
    wanted_routes,
)
from ciliary.core.flow import ReservedIdentity
from ciliary.core.models import Endpoint, EndpointState
from ciliary.datapath.linux.errors import LinkError
from ciliary.datapath.maps.ipcache import IPCACHE_F_REMOTE, IPCacheRecord

V4 = IPv4Address
LOCAL = LocalNode(
    "n1",
    (ip_address("172.18.0.2"), ip_address("fc00::2")),
    (ip_network("10.0.1.0/24"), ip_network("fd00:1::/64")),
)
N2 = ClusterNode(
    "n2",
    (ip_address("172.18.0.3"), ip_address("fc00::3")),
    (ip_address("10.0.2.1"), ip_address("fd00:2::1")),
    (ip_network("10.0.2.0/24"), ip_network("fd00:2::/64")),
)
N1 = ClusterNode(  # this node's own CiliumNode: contributes nothing but its InternalIPs (HOST)
    "n1",
    (ip_address("172.18.0.2"), ip_address("fc00::2")),
    (ip_address("10.0.1.1"),),
    (ip_network("10.0.1.0/24"),),
)


def net(text: str) -> IPNet:
    return ip_network(text)


def test_tunnel_mode_entries() -> None:
    web = ClusterEndpoint(
        "a/web", 300, (ip_address("10.0.2.7"), ip_address("fd00:2::7")), "172.18.0.3"
    )
    mine = ClusterEndpoint("a/db", 301, (ip_address("10.0.1.9"),), "172.18.0.2")
    got = wanted_entries(LOCAL, [N1, N2], [web, mine], "tunnel")
    tep = V4("172.18.0.3")
    assert got == {
        net("172.18.0.2/32"): Entry(ReservedIdentity.HOST, None),
        net("fc00::2/128"): Entry(ReservedIdentity.HOST, None),
        net("172.18.0.3/32"): Entry(ReservedIdentity.REMOTE_NODE, None),
        net("fc00::3/128"): Entry(ReservedIdentity.REMOTE_NODE, None),
        net("10.0.2.1/32"): Entry(ReservedIdentity.REMOTE_NODE, tep),
        net("fd00:2::1/128"): Entry(ReservedIdentity.REMOTE_NODE, tep),
        net("10.0.2.0/24"): Entry(ReservedIdentity.WORLD_IPV4, tep),
        net("fd00:2::/64"): Entry(ReservedIdentity.WORLD_IPV6, tep),
        net("10.0.2.7/32"): Entry(300, tep),
        net("fd00:2::7/128"): Entry(300, tep),
    }


def test_native_mode_has_no_tunnel_endpoints() -> None:
    web = ClusterEndpoint("a/web", 300, (ip_address("10.0.2.7"),), "172.18.0.3")
    got = wanted_entries(LOCAL, [N2], [web], "native")
    assert all(e.tunnel_endpoint is None for e in got.values())
    assert got[net("10.0.2.7/32")] == Entry(300, None)
    assert got[net("10.0.2.0/24")] == Entry(ReservedIdentity.WORLD_IPV4, None)


def test_endpoint_node_by_name_ipv6_or_unknown_ip() -> None:
    by_name = ClusterEndpoint("a/x", 400, (ip_address("10.0.2.8"),), "n2")
    by_v6 = ClusterEndpoint("a/y", 401, (ip_address("10.0.2.9"),), "fc00::3")
    unknown = ClusterEndpoint("a/z", 402, (ip_address("10.0.9.9"),), "172.18.0.9")
    unknown_v6 = ClusterEndpoint("a/w", 403, (ip_address("10.0.9.8"),), "fc00::9")
    mine_by_name = ClusterEndpoint("a/v", 404, (ip_address("10.0.3.3"),), "n1")
    got = wanted_entries(LOCAL, [N2], [by_name, by_v6, unknown, unknown_v6, mine_by_name], "tunnel")
    assert got[net("10.0.2.8/32")] == Entry(400, V4("172.18.0.3"))
    assert got[net("10.0.2.9/32")] == Entry(401, V4("172.18.0.3"))
    assert got[net("10.0.9.9/32")] == Entry(402, V4("172.18.0.9"))
    assert got[net("10.0.9.8/32")] == Entry(403, None)
    assert net("10.0.3.3/32") not in got


def test_remote_endpoint_in_local_cidr_is_left_to_the_local_endpoint() -> None:
    leftover = ClusterEndpoint("a/old", 500, (ip_address("10.0.1.5"),), "172.18.0.3")
    assert net("10.0.1.5/32") not in wanted_entries(LOCAL, [N2], [leftover], "tunnel")


def test_node_addresses_win_over_pods() -> None:
    odd = ClusterEndpoint("a/odd", 600, (ip_address("172.18.0.3"),), "172.18.0.3")
    got = wanted_entries(LOCAL, [N2], [odd], "tunnel")
    assert got[net("172.18.0.3/32")] == Entry(ReservedIdentity.REMOTE_NODE, None)


def test_diff() -> None:
    a, b, c = net("10.0.2.7/32"), net("10.0.2.8/32"), net("10.0.2.9/32")
    current = {a: Entry(300, None), b: Entry(301, None)}
    wanted = {a: Entry(300, None), b: Entry(302, None), c: Entry(303, None)}
    assert diff(current, wanted) == ({b: Entry(302, None), c: Entry(303, None)}, [])
    assert diff(current, {}) == ({}, [a, b])


def test_routes_native_with_auto_direct_node_routes_or_tunnel_via_the_host_device() -> None:
    assert wanted_routes(LOCAL, [N1, N2], "native", True) == {
        net("10.0.2.0/24"): ip_address("172.18.0.3"),
        net("fd00:2::/64"): ip_address("fc00::3"),
    }
    assert wanted_routes(LOCAL, [N2], "native", False) == {}
    # tunnel mode: a remote pod CIDR from this node's router of its family (via ciliary_host)
    routed = LocalNode(
        LOCAL.name,
        LOCAL.node_ips,
        LOCAL.pod_cidrs,
        (ip_address("10.0.1.1"), ip_address("fd00:1::1")),
    )
    assert wanted_routes(routed, [N1, N2], "tunnel", False) == {
        net("10.0.2.0/24"): ip_address("10.0.1.1"),
        net("fd00:2::/64"): ip_address("fd00:1::1"),
    }
    v4_router = LocalNode(LOCAL.name, LOCAL.node_ips, LOCAL.pod_cidrs, (ip_address("10.0.1.1"),))
    assert wanted_routes(v4_router, [N2], "tunnel", True) == {  # no v6 router: no v6 route
        net("10.0.2.0/24"): ip_address("10.0.1.1")
    }
    v4_only = ClusterNode("n3", (ip_address("172.18.0.4"),), (), (net("fd00:3::/64"),))
    assert wanted_routes(LOCAL, [v4_only], "native", True) == {}  # no v6 node IP: no route


def test_published_objects_parse_back() -> None:
    """What an agent publishes (CiliumNode, CiliumEndpoint) is what the node manager reads."""
    obj = cilium_node(
        "n2",
        ["10.0.2.1", "fd00:2::1"],
        ["10.0.2.0/24", "fd00:2::/64"],
        {},
        ["172.18.0.3", "fc00::3"],
    )
    assert obj["spec"]["addresses"] == [
        {"type": "InternalIP", "ip": "172.18.0.3"},
        {"type": "InternalIP", "ip": "fc00::3"},
        {"type": "CiliumInternalIP", "ip": "10.0.2.1"},
        {"type": "CiliumInternalIP", "ip": "fd00:2::1"},
    ]
    assert parse_node(obj) == N2
    ep = Endpoint(
        id=1, container_id="c", ifname="eth0", netns="/x", ipv4="10.0.2.7/32",
        ipv6="fd00:2::7/128", identity=300, state=EndpointState.READY, pod_name="web",
        namespace="a", labels={}, lxc="lxc1", lxc_ifindex=0, mac="", node_mac="",
        created_at=0.0,
    )  # fmt: skip
    node = cep_node("n2", ["172.18.0.3", "fc00::3"])
    assert node == "172.18.0.3"
    assert cep_node("n2", []) == "n2"
    status = endpoint_status(ep, node, [], (False, False))
    cep = {"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
           "metadata": {"name": "web", "namespace": "a"},
           "status": status.model_dump(by_alias=True, exclude_none=True)}  # fmt: skip
    assert parse_endpoint(cep) == ClusterEndpoint(
        "a/web", 300, (ip_address("10.0.2.7"), ip_address("fd00:2::7")), "172.18.0.3"
    )


def test_health_endpoints_of_remote_nodes_are_health_with_their_node_as_tunnel_endpoint() -> None:
    """spec.health as published parses back; remote health IPs → identity 4 (reserved:health),
    tunnelled to their node in tunnel mode, not in native mode; this node's own health endpoint
    is a local endpoint (not the node manager's), a stale one in its pod CIDR is left alone."""
    obj = cilium_node(
        "n2", ["10.0.2.1"], ["10.0.2.0/24", "fd00:2::/64"], {}, ["172.18.0.3", "fc00::3"],
        health=["10.0.2.5", "fd00:2::5"],
    )  # fmt: skip
    assert obj["spec"]["health"] == {"ipv4": "10.0.2.5", "ipv6": "fd00:2::5"}
    assert "health" not in cilium_node("n2", [], [], {})["spec"]
    n2 = parse_node(obj)
    assert n2.health_ips == (ip_address("10.0.2.5"), ip_address("fd00:2::5"))
    mine = ClusterNode("n1", LOCAL.node_ips, (), (), (ip_address("10.0.1.5"),))
    stale = ClusterNode("n3", (ip_address("172.18.0.4"),), (), (), (ip_address("10.0.1.6"),))
    got = wanted_entries(LOCAL, [mine, n2, stale], [], "tunnel")
    tep = V4("172.18.0.3")
    assert got[net("10.0.2.5/32")] == Entry(ReservedIdentity.HEALTH, tep)
    assert got[net("fd00:2::5/128")] == Entry(ReservedIdentity.HEALTH, tep)
    assert net("10.0.1.5/32") not in got and net("10.0.1.6/32") not in got
    native = wanted_entries(LOCAL, [n2], [], "native")
    assert native[net("10.0.2.5/32")] == Entry(ReservedIdentity.HEALTH, None)
    bad = {**obj, "spec": {**obj["spec"], "health": {"ipv4": "fd00:2::5"}}}
    with pytest.raises(ValueError, match=r"CiliumNode n2: spec.health.ipv4: not an IPv4"):
        parse_node(bad)


def test_malformed_objects_name_the_field() -> None:
    bad = cilium_node("n9", [], [], {}, ["172.18.0.9"])
    bad["spec"]["addresses"][0]["ip"] = "not-an-ip"
    with pytest.raises(ValueError, match=r"CiliumNode n9: spec.addresses\[0\].ip"):
        parse_node(bad)
    bad = cilium_node("n9", [], ["10.0.9.0/33"], {})
    with pytest.raises(ValueError, match=r"CiliumNode n9: spec.ipam.podCIDRs\[0\]"):
        parse_node(bad)


class FakeIPCache:
    def __init__(self, records: list[IPCacheRecord]) -> None:
        self.entries = {r.prefix: r for r in records}
        self.writes = 0

    def upsert(
        self, prefix: IPNet, sec_id: int, tunnel_endpoint: IPv4Address | None = None, *, flags: int
    ) -> None:
        self.writes += 1
        self.entries[prefix] = IPCacheRecord(prefix, sec_id, tunnel_endpoint, flags)

    def delete(self, prefix: IPNet) -> bool:
        return self.entries.pop(prefix, None) is not None

    def items(self) -> list[IPCacheRecord]:
        return list(self.entries.values())


class FakeRoutes:
    def __init__(self, routes: dict[IPNet, Any]) -> None:
        self.table = dict(routes)

    def routes(self) -> dict[IPNet, Any]:
        return dict(self.table)

    def replace(self, prefix: IPNet, via: Any) -> None:
        self.table[prefix] = via

    def delete(self, prefix: IPNet) -> None:
        self.table.pop(prefix, None)


def _stored(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"] |= {"uid": obj["metadata"]["name"], "resourceVersion": "1"}
    return obj


def _web_cep() -> dict[str, Any]:
    return _stored({
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": "web", "namespace": "a"},
        "status": {"identity": {"id": 300}, "networking": {
            "addressing": [{"ipv4": "10.0.2.7"}], "node": "172.18.0.3"}},
    })  # fmt: skip


def _manager(ipcache: FakeIPCache, routes: FakeRoutes, mode: Any) -> NodeManager:
    mgr = NodeManager(
        None,  # type: ignore[arg-type]  # the informers are never started here
        LOCAL, ipcache, mode=mode, routes=routes, auto_direct_node_routes=True,
    )  # fmt: skip
    n2 = cilium_node("n2", ["10.0.2.1"], ["10.0.2.0/24"], {}, ["172.18.0.3"])
    mgr.nodes_informer.store.put(_stored(n2))
    mgr.endpoints_informer.store.put(_web_cep())
    return mgr


def test_reconcile_prunes_only_its_own_stale_entries() -> None:
    """The map as a restarted agent finds it: the live entry stays (not even rewritten), the
    stale flagged one goes, the endpoint manager's and the policy manager's stay."""
    tep = V4("172.18.0.3")
    live = IPCacheRecord(IPv4Network("10.0.2.7/32"), 300, tep, IPCACHE_F_REMOTE)
    stale = IPCacheRecord(IPv4Network("10.0.2.99/32"), 301, tep, IPCACHE_F_REMOTE)
    local_ep = IPCacheRecord(IPv4Network("10.0.1.5/32"), 302, None, 0)
    cidr = IPCacheRecord(IPv6Network("2001:db8::/32"), 1 << 24 | 1, None, 0)
    ipcache = FakeIPCache([live, stale, local_ep, cidr])
    routes = FakeRoutes({IPv4Network("10.0.7.0/24"): ip_address("172.18.0.7")})  # gone node's
    mgr = _manager(ipcache, routes, "tunnel")
    asyncio.run(mgr._reconcile())
    assert set(ipcache.entries) == {
        live.prefix, local_ep.prefix, cidr.prefix,
        net("172.18.0.2/32"), net("fc00::2/128"),  # HOST
        net("172.18.0.3/32"), net("10.0.2.1/32"), net("10.0.2.0/24"),
    }  # fmt: skip
    assert ipcache.entries[live.prefix] == live
    assert ipcache.entries[local_ep.prefix] == local_ep
    assert ipcache.entries[cidr.prefix] == cidr
    assert ipcache.writes == 5  # live was already right
    assert all(ipcache.entries[p].flags == IPCACHE_F_REMOTE for p in (net("10.0.2.0/24"),))
    assert routes.table == {}  # tunnel mode: the stale native route is pruned, none added

    # the pod goes: its entry goes on the next reconcile
    mgr.endpoints_informer.store.remove("a/web")
    asyncio.run(mgr._reconcile())
    assert live.prefix not in ipcache.entries
    assert ipcache.entries[local_ep.prefix] == local_ep


def test_reconcile_native_routes() -> None:
    ipcache = FakeIPCache([])
    routes = FakeRoutes({IPv4Network("10.0.7.0/24"): ip_address("172.18.0.7")})
    mgr = _manager(ipcache, routes, "native")
    asyncio.run(mgr._reconcile())
    assert routes.table == {net("10.0.2.0/24"): ip_address("172.18.0.3")}
    assert ipcache.entries[net("10.0.2.7/32")].tunnel_endpoint is None
    mgr.nodes_informer.store.remove("n2")
    asyncio.run(mgr._reconcile())
    assert routes.table == {}


def test_relist_reads_the_map_again() -> None:
    """After a relist (410 Gone) the map is the truth again: an entry of ours that went missing
    is written back, one that is no longer wanted is pruned."""
    ipcache = FakeIPCache([])
    mgr = _manager(ipcache, FakeRoutes({}), "tunnel")
    asyncio.run(mgr._reconcile())
    web = net("10.0.2.7/32")
    lost = ipcache.entries.pop(web)
    stray = IPCacheRecord(IPv4Network("10.0.2.66/32"), 301, None, IPCACHE_F_REMOTE)
    ipcache.entries[stray.prefix] = stray
    asyncio.run(mgr._reconcile())  # no relist: the node manager trusts what it wrote
    assert web not in ipcache.entries and stray.prefix in ipcache.entries
    mgr.endpoints_informer.lists += 1
    asyncio.run(mgr._reconcile())
    assert ipcache.entries[web] == lost
    assert stray.prefix not in ipcache.entries


def test_unchanged_objects_are_parsed_once() -> None:
    """A reconcile recomputes the wanted set from the stores; an object whose resourceVersion
    did not change keeps its parse (and its host prefixes), a new version is parsed again."""
    mgr = _manager(FakeIPCache([]), FakeRoutes({}), "tunnel")
    (first,) = mgr._cluster_endpoints()
    assert mgr._cluster_endpoints()[0] is first
    changed = _web_cep()
    changed["metadata"]["resourceVersion"] = "2"
    changed["status"]["identity"]["id"] = 301
    mgr.endpoints_informer.store.put(changed)
    (second,) = mgr._cluster_endpoints()
    assert second is not first and second.identity == 301


class FlakyRoutes(FakeRoutes):
    """Refuses the first route (the underlay device not there yet)."""

    def __init__(self) -> None:
        super().__init__({})
        self.refused = 0

    def replace(self, prefix: IPNet, via: Any) -> None:
        if not self.refused:
            self.refused += 1
            raise LinkError(f"route {prefix} via {via}: device eth0 does not exist")
        super().replace(prefix, via)


def test_a_refused_write_is_retried_without_another_event() -> None:
    routes = FlakyRoutes()
    mgr = _manager(FakeIPCache([]), routes, "native")

    async def run() -> None:
        for inf in mgr.informers():
            inf.synced.set()
        task = asyncio.create_task(mgr._run())
        try:
            async with asyncio.timeout(5):
                while not routes.table:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(run())
    assert routes.refused == 1
    assert routes.table == {net("10.0.2.0/24"): ip_address("172.18.0.3")}


def test_pod_by_ip_names_remote_pods_from_the_endpoints_store() -> None:
    """Hubble's address → remote pod: the CiliumEndpoint's namespace and name, the node by its
    CiliumNode's name; kept by the store's index on every event (no reconcile needed); this
    node's endpoints and pod CIDRs, unknown addresses and malformed objects name nothing."""
    mgr = _manager(FakeIPCache([]), FakeRoutes({}), "tunnel")
    assert mgr.pod_by_ip(V4("10.0.2.7")) == RemotePod("a", "web", "n2")
    assert mgr.pod_by_ip(V4("10.0.2.8")) is None
    # a node without a CiliumNode (yet): named as the CiliumEndpoint names it
    lone = _web_cep()
    lone["metadata"]["name"] = "lone"
    lone["status"]["networking"] = {"addressing": [{"ipv6": "fd00:9::5"}], "node": "172.18.0.9"}
    mgr.endpoints_informer.store.put(lone)
    assert mgr.pod_by_ip(ip_address("fd00:9::5")) == RemotePod("a", "lone", "172.18.0.9")
    # this node's own: a CiliumEndpoint naming it, or an address in its pod CIDRs
    mine = _web_cep()
    mine["metadata"]["name"] = "mine"
    mine["status"]["networking"] = {"addressing": [{"ipv4": "10.0.3.3"}], "node": "n1"}
    stale = _web_cep()
    stale["metadata"]["name"] = "stale"
    stale["status"]["networking"] = {"addressing": [{"ipv4": "10.0.1.5"}], "node": "172.18.0.3"}
    for obj in (mine, stale):
        mgr.endpoints_informer.store.put(obj)
    assert mgr.pod_by_ip(V4("10.0.3.3")) is None
    assert mgr.pod_by_ip(V4("10.0.1.5")) is None
    # two claims of one address: the first by key, as the ipcache entry's identity
    dup = _web_cep()
    dup["metadata"] |= {"name": "web", "namespace": "0-first"}
    mgr.endpoints_informer.store.put(dup)
    assert mgr.pod_by_ip(V4("10.0.2.7")) == RemotePod("0-first", "web", "n2")
    mgr.endpoints_informer.store.remove("0-first/web")
    assert mgr.pod_by_ip(V4("10.0.2.7")) == RemotePod("a", "web", "n2")
    # no identity yet, or malformed: not in the ipcache, so no name either
    pending = _web_cep()
    pending["status"].pop("identity")
    bad = _web_cep()
    bad["metadata"]["namespace"] = "b"
    bad["status"]["networking"]["addressing"] = [{"ipv4": "10.0.2.9"}, {"ipv4": "nope"}]
    mgr.endpoints_informer.store.put(pending)
    mgr.endpoints_informer.store.put(bad)
    assert mgr.pod_by_ip(V4("10.0.2.7")) is None
    assert mgr.pod_by_ip(V4("10.0.2.9")) is None
