"""The lab network in the lab file (``spec.nodeNetwork`` and the routing fields, each problem
naming its field), its address plan, and what the lab's agents are started with."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
import yaml

from ciliary.agent.config import NetworkConfig
from ciliary.agent.main import _parser, network_config
from ciliary.lab import controlplane, manager, nodenetwork, underlay
from ciliary.lab.schema import LabBody, LabFileError, parse_lab_text
from ciliary.lab.state import HubbleRecord, LabRecord, NodeRecord

FILE = "lab.yaml"
WHERE = f"{FILE}: document 1 (Lab demo)"


def lab_spec(nodes: int = 2, **spec: Any) -> LabBody:
    return parse_lab_text(lab_text(nodes, **spec), FILE).lab.spec


def lab_text(nodes: int = 2, **spec: Any) -> str:
    body = {"nodes": [{"name": f"node{i + 1}"} for i in range(nodes)], **spec}
    return yaml.safe_dump(
        {"apiVersion": "ciliary.io/v1alpha1", "kind": "Lab", "metadata": {"name": "demo"},
         "spec": body}
    )  # fmt: skip


def problems(text: str) -> list[str]:
    with pytest.raises(LabFileError) as info:
        parse_lab_text(text, FILE)
    return info.value.problems


def test_defaults_are_kinds_network_and_ciliums_routing() -> None:
    spec = lab_spec()
    assert spec.node_network.ipv4 == IPv4Network("172.18.0.0/24")
    assert spec.node_network.ipv6 == IPv6Network("fc00:f853:ccd:e793::/64")
    assert (spec.routing_mode, spec.auto_direct_node_routes, spec.tunnel_port) == (
        "tunnel",
        False,
        8472,
    )
    assert spec.ipv4_native_routing_cidr is None and spec.ipv6_native_routing_cidr is None


def test_helm_names_are_read() -> None:
    spec = lab_spec(
        routingMode="native",
        autoDirectNodeRoutes=True,
        ipv4NativeRoutingCIDR="10.200.0.0/16",
        ipv6NativeRoutingCIDR="fd00:10:200::/104",
        tunnelPort=4789,
        nodeNetwork={"ipv4": "192.168.50.0/28", "ipv6": "fd00:50::/120"},
    )
    assert spec.routing_mode == "native" and spec.auto_direct_node_routes
    assert spec.ipv4_native_routing_cidr == IPv4Network("10.200.0.0/16")
    assert spec.ipv6_native_routing_cidr == IPv6Network("fd00:10:200::/104")
    assert spec.tunnel_port == 4789
    assert spec.node_network.ipv4 == IPv4Network("192.168.50.0/28")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"routingMode": "native"},
            "spec.autoDirectNodeRoutes: expected true with routingMode native: the lab network"
            " has no router but the nodes",
        ),
        (
            {"autoDirectNodeRoutes": True},
            "spec.autoDirectNodeRoutes: only valid with routingMode native",
        ),
        ({"routingMode": "direct"}, "spec.routingMode: expected 'tunnel' or 'native'"),
        ({"tunnelPort": 70000}, "spec.tunnelPort: expected a number <= 65535"),
        (
            {"ipv4NativeRoutingCIDR": "fd00::/8"},
            "spec.ipv4NativeRoutingCIDR: expected an IPv4 CIDR",
        ),
        (
            {"nodeNetwork": {"ipv4": "127.0.0.0/24"}},
            "spec.nodeNetwork.ipv4: expected a subnet for the nodes' interfaces: 127.0.0.0/24"
            " cannot be on an interface",
        ),
        (
            {"nodeNetwork": {"ipv4": "10.0.0.0/30"}},
            "spec.nodeNetwork.ipv4: 2 nodes do not fit in 10.0.0.0/30: it has room for 1",
        ),
        (
            {"nodeNetwork": {"ipv6": "fd00::/127"}},
            "spec.nodeNetwork.ipv6: 2 nodes do not fit in fd00::/127: it has room for 0",
        ),
        (
            {"nodeNetwork": {"ipv4": "10.200.7.0/24"}},
            "spec.nodeNetwork.ipv4: 10.200.7.0/24 overlaps the pod CIDR pool"
            " spec.ipam.clusterPoolIPv4PodCIDRList[0] (10.200.0.0/16)",
        ),
        (
            {"nodeNetwork": {"ipv6": "fd00:10::/32"}},
            "spec.nodeNetwork.ipv6: fd00:10::/32 overlaps the pod CIDR pool"
            " spec.ipam.clusterPoolIPv6PodCIDRList[0] (fd00:10:200::/104)",
        ),
        ({"nodeNetwork": {"ipv4": "10.0.0.0/24", "mtu": 9000}}, "spec.nodeNetwork.mtu"),
    ],
)
def test_bad_network_fields_are_named(spec: dict[str, Any], expected: str) -> None:
    (problem,) = problems(lab_text(**spec))
    assert problem.startswith(f"{WHERE}: {expected}"), problem


def test_a_subnet_just_big_enough_for_the_nodes() -> None:
    # .0 network, .1 the lab network's, .2 .. .6 five nodes, .7 broadcast
    spec = lab_spec(5, nodeNetwork={"ipv4": "10.9.0.0/29", "ipv6": "fd09::/125"})
    assert nodenetwork.capacity(spec.node_network.ipv4) == 5
    assert nodenetwork.capacity(spec.node_network.ipv6) == 6
    assert (
        "6 nodes do not fit in 10.9.0.0/29"
        in problems(lab_text(6, nodeNetwork={"ipv4": "10.9.0.0/29", "ipv6": "fd09::/125"}))[0]
    )


def test_the_node_network_must_not_overlap_an_ip_pool() -> None:
    pool = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "nodes-too"},
        "spec": {"cidr": "172.18.0.0/16"},
    }
    text = lab_text(ipam={"mode": "pools"}) + "---\n" + yaml.safe_dump(pool)
    assert problems(text) == [
        f"{WHERE}: spec.nodeNetwork.ipv4: 172.18.0.0/24 overlaps IPPool 'nodes-too'"
        " (172.18.0.0/16): node and pod addresses must differ"
    ]


def test_plan_gives_the_network_the_first_address_and_nodes_the_next_in_file_order() -> None:
    spec = lab_spec(3, nodeNetwork={"ipv4": "10.9.0.0/24", "ipv6": "fd09::/64"})
    record, nodes = underlay.plan("demo", spec)
    assert (record.netns, record.bridge, record.ipv4, record.ipv6) == (
        "cilu-demo",
        "br0",
        "10.9.0.0/24",
        "fd09::/64",
    )
    own = nodenetwork.gateway(spec.node_network.ipv4, spec.node_network.ipv6)
    assert (str(own.ipv4), str(own.ipv6)) == ("10.9.0.1/24", "fd09::1/64")
    assert {n: (str(a.ipv4), str(a.ipv6)) for n, a in nodes.items()} == {
        "node1": ("10.9.0.2/24", "fd09::2/64"),
        "node2": ("10.9.0.3/24", "fd09::3/64"),
        "node3": ("10.9.0.4/24", "fd09::4/64"),
    }
    assert underlay.lab_of("cilu-demo") == "demo" and underlay.lab_of("ciln-demo-a") is None


def test_the_api_is_on_the_lab_networks_own_addresses() -> None:
    record, _ = underlay.plan("demo", lab_spec(nodeNetwork={"ipv4": "10.9.0.0/24",
                                                            "ipv6": "fd09::/64"}))  # fmt: skip
    assert underlay.api_addresses(record) == ["10.9.0.1", "fd09::1"]
    default, _ = underlay.plan("demo", lab_spec())
    addresses = underlay.api_addresses(default)
    assert addresses == ["172.18.0.1", "fc00:f853:ccd:e793::1"]
    assert [controlplane.network_url(a) for a in addresses] == [
        "https://172.18.0.1:6443",
        "https://[fc00:f853:ccd:e793::1]:6443",
    ]


def agent_network(spec: LabBody) -> NetworkConfig:
    """The NetworkConfig the lab's agent for node1 parses from the argv the lab gives it."""
    record, nodes = underlay.plan("demo", spec)
    rec = LabRecord(
        name="demo", file=None, created_at=0, hubble=HubbleRecord(enabled=False), network=record
    )
    nrec = NodeRecord(
        name="node1",
        netns="ciln-demo-node1",
        state_dir="/run/ciliary/node1",
        pin_dir="/sys/fs/bpf/ciliary/node1",
        socket="/run/ciliary/node1/agent.sock",
        node_ipv4=str(nodes["node1"].ipv4.ip),
        node_ipv6=str(nodes["node1"].ipv6.ip),
    )
    argv = manager._agent_argv(rec, nrec)
    assert argv[:3] == [argv[0], "-m", "ciliary.agent.main"]
    return network_config(_parser().parse_args(argv[3:]))


def test_agents_get_their_node_ips_device_and_the_tunnel() -> None:
    net = agent_network(lab_spec(tunnelPort=4789))
    assert net.ipv4_node == IPv4Address("172.18.0.2")
    assert net.ipv6_node == IPv6Address("fc00:f853:ccd:e793::2")
    assert net.devices == ("eth0",)
    assert (net.routing_mode, net.tunnel_port, net.auto_direct_node_routes) == (
        "tunnel",
        4789,
        False,
    )
    assert net.ipv4_native_routing_cidr is None


def test_agents_get_native_routing_with_direct_routes_and_the_cidrs() -> None:
    net = agent_network(
        lab_spec(
            routingMode="native",
            autoDirectNodeRoutes=True,
            ipv4NativeRoutingCIDR="10.200.0.0/16",
            ipv6NativeRoutingCIDR="fd00:10:200::/104",
        )
    )
    assert (net.routing_mode, net.auto_direct_node_routes) == ("native", True)
    assert net.ipv4_native_routing_cidr == IPv4Network("10.200.0.0/16")
    assert net.ipv6_native_routing_cidr == IPv6Network("fd00:10:200::/104")
    assert net.ipv4_node == IPv4Address("172.18.0.2")


# ---- the world: hosts outside the cluster on the lab network ---------------------------------


def test_world_hosts_take_addresses_from_the_top_unless_they_name_them() -> None:
    spec = lab_spec(
        externals=[
            {
                "name": "web",
                "command": ["ciliary", "workload", "http-server"],
                "args": ["--port", "80"],
            },
            {"name": "db", "addresses": ["172.18.0.100"]},
            {"name": "dns", "addresses": ["fc00:f853:ccd:e793::53"]},
        ]
    )
    web, db, dns = spec.externals
    assert [str(a) for a in dns.addresses] == ["fc00:f853:ccd:e793::53"]
    assert web.argv() == ["ciliary", "workload", "http-server", "--port", "80"]
    assert db.argv() == []
    net = spec.node_network
    plan = nodenetwork.external_addresses(
        net.ipv4, net.ipv6, [(e.name, e.addresses) for e in spec.externals]
    )
    assert {n: (str(a.ipv4), str(a.ipv6)) for n, a in plan.items()} == {
        "web": ("172.18.0.254/24", "fc00:f853:ccd:e793:ffff:ffff:ffff:fffe/64"),
        "db": ("172.18.0.100/24", "fc00:f853:ccd:e793:ffff:ffff:ffff:fffd/64"),
        "dns": ("172.18.0.252/24", "fc00:f853:ccd:e793::53/64"),
    }
    assert underlay.external_netns("demo", "web") == "cilw-demo-web"


@pytest.mark.parametrize(
    ("externals", "expected"),
    [
        (
            [{"name": "node1"}],
            "spec.externals[0].name: duplicate name 'node1' (also node spec.nodes[0];",
        ),
        ([{"name": "w"}, {"name": "w"}], "spec.externals[1].name: duplicate name 'w' (also"),
        ([{"name": "Web"}], "spec.externals[0].name: expected a DNS-1123 label"),
        (
            [{"name": "w", "addresses": ["172.18.0.3"]}],
            "spec.externals[0].addresses[0]: 172.18.0.3 is node node2",
        ),
        (
            [{"name": "w", "addresses": ["172.18.0.1"]}],
            "spec.externals[0].addresses[0]: 172.18.0.1 is the lab network's own address",
        ),
        (
            [{"name": "w", "addresses": ["172.18.0.255"]}],
            "spec.externals[0].addresses[0]: 172.18.0.255 is not a host address of"
            " spec.nodeNetwork.ipv4 (172.18.0.0/24)",
        ),
        (
            [{"name": "w", "addresses": ["10.1.1.1"]}],
            "spec.externals[0].addresses[0]: 10.1.1.1 is not a host address of",
        ),
        (
            [{"name": "v"}, {"name": "w", "addresses": ["172.18.0.254"]}],
            "spec.externals[1].addresses[0]: 172.18.0.254 is also spec.externals[0] (v)",
        ),
        (
            [{"name": "w", "addresses": ["10.1.1.1", "10.1.1.2"]}],
            "spec.externals[0].addresses[1]: a second IPv4 address (a host has one per family)",
        ),
        (
            [{"name": "w", "addresses": ["web.example"]}],
            "spec.externals[0].addresses[0]: expected an IP address like 172.18.0.100",
        ),
        ([{"name": "w", "image": "nginx"}], "spec.externals[0].image: unknown field"),
    ],
)
def test_bad_world_hosts_are_named(externals: list[dict[str, Any]], expected: str) -> None:
    (problem,) = problems(lab_text(externals=externals))
    assert problem.startswith(f"{WHERE}: {expected}"), problem


def test_world_hosts_count_against_the_lab_network() -> None:
    net = {"ipv4": "10.9.0.0/29", "ipv6": "fd09::/120"}  # room for 5
    lab_spec(3, nodeNetwork=net, externals=[{"name": "a"}, {"name": "b"}])
    (problem,) = problems(
        lab_text(3, nodeNetwork=net, externals=[{"name": "a"}, {"name": "b"}, {"name": "c"}])
    )
    assert problem == (
        f"{WHERE}: spec.nodeNetwork.ipv4: 3 nodes and 3 externals do not fit in 10.9.0.0/29: it"
        " has room for 5 (its first address is the lab network's own)"
    )
