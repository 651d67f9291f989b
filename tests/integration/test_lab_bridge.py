"""The lab network's bridge keeps the MAC address it was made with when ports are plugged: a
bridge without one takes its lowest port's, so plugging a node whose veth has a lower MAC moved
the address the other nodes had resolved for the bridge (the API server's), and their requests
hung until their neighbour entries went stale."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Interface

import pytest

from ciliary.datapath.linux import bridge, netns


def _mac(ns: str, dev: str) -> str:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True, text=True, check=True
    ).stdout
    return str(json.loads(out)[0]["address"])


@pytest.fixture
def namespaces() -> Iterator[tuple[str, list[str]]]:
    tag = secrets.token_hex(3)
    hub, hosts = f"h1br-{tag}", [f"h1bn{i}-{tag}" for i in range(4)]
    try:
        for ns in (hub, *hosts):
            netns.create(ns)
        yield hub, hosts
    finally:
        for ns in (hub, *hosts):
            netns.remove(ns)


def test_the_bridge_keeps_its_mac_as_ports_are_plugged(
    namespaces: tuple[str, list[str]],
) -> None:
    hub, hosts = namespaces
    bridge.create_bridge(str(netns.path_of(hub)), "br0", [IPv4Interface("192.0.2.1/24")])
    made = _mac(hub, "br0")
    assert int(made.split(":")[0], 16) & 0x03 == 0x02  # locally administered, unicast
    ports = []
    for i, ns in enumerate(hosts):
        port = f"p{i}"
        bridge.plug(
            bridge_netns=str(netns.path_of(hub)), bridge="br0", port=port,
            netns_path=str(netns.path_of(ns)), ifname="eth0",
            addresses=[IPv4Interface(f"192.0.2.{10 + i}/24")],
        )  # fmt: skip
        ports.append(_mac(hub, port))
        assert _mac(hub, "br0") == made, (made, ports)
    # with four random port MACs, one is below the bridge's in all but 1/16 of runs: the case
    # that moved a bridge without a MAC of its own
    subprocess.run(
        ["ip", "-n", hub, "link", "set", "p0", "address", "02:00:00:00:00:01"], check=True
    )
    assert _mac(hub, "br0") == made
