"""Two CNI networks served by one agent, as the spec keys state: by (network name, container,
ifname). A GC of one network never touches the other's endpoints (nor endpoints whose network is
unknown), a repeated ADD returns the existing attachment unchanged, and an ADD of the same
container interface by another network is error 103, leaving the first attachment intact (also
through the DEL a runtime sends to roll the failed ADD back)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ciliary.core.models import EndpointCreateRequest

from .conftest import NodeAgent, Pods, assert_cni_error, node_agent, run_plugin, unique

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with node_agent(tmp_path_factory.mktemp("cni-nets"), "10.231.0.0/24", None) as a:
        yield a


def netconf(agent: NodeAgent, network: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": network, "type": "ciliary-cni",
            "node": agent.node, **extra}  # fmt: skip


def endpoint(agent: NodeAgent, cid: str) -> Any:
    with agent.client() as cl:
        return next((e for e in cl.endpoints() if e.container_id == cid), None)


def owners(agent: NodeAgent) -> set[str]:
    with agent.client() as cl:
        return {a.owner for a in cl.ipam_list().allocations}


class Attachments:
    """ADDs of a test, each DELeted (by its own network) at the end whatever happened."""

    def __init__(self, agent: NodeAgent, pods: Pods) -> None:
        self.agent, self.pods = agent, pods
        self.made: list[tuple[str, str, str]] = []

    def add(self, network: str, cid: str | None = None, path: str | None = None) -> Any:
        cid = cid or unique("c")
        path = path or self.pods.new()[1]
        self.made.append((network, cid, path))
        return run_plugin("ADD", netconf(self.agent, network), container_id=cid, netns=path)

    def cleanup(self) -> None:
        for network, cid, path in self.made:
            run_plugin("DEL", netconf(self.agent, network), container_id=cid, netns=path)


@pytest.fixture
def attachments(agent: NodeAgent, pods: Pods) -> Iterator[Attachments]:
    a = Attachments(agent, pods)
    try:
        yield a
    finally:
        a.cleanup()


def test_gc_of_one_network_keeps_the_other_networks_endpoints(
    agent: NodeAgent, attachments: Attachments
) -> None:
    net_a, net_b = unique("neta"), unique("netb")
    a_cid, b_keep, b_drop = unique("a"), unique("bk"), unique("bd")
    for network, cid in ((net_a, a_cid), (net_b, b_keep), (net_b, b_drop)):
        run = attachments.add(network, cid)
        assert run.rc == 0, str(run)
    a_ep = endpoint(agent, a_cid)
    assert a_ep.network == net_a

    conf = netconf(agent, net_b, **{"cni.dev/valid-attachments": [
        {"containerID": b_keep, "ifname": "eth0"}]})  # fmt: skip
    run = run_plugin("GC", conf, ifname=None)
    assert (run.rc, run.stdout) == (0, ""), str(run)

    assert endpoint(agent, b_drop) is None  # net_b's stale attachment went
    assert endpoint(agent, b_keep) is not None
    kept = endpoint(agent, a_cid)  # net_a's endpoint is not net_b's to collect
    assert kept is not None and (kept.id, kept.ipv4, kept.mac) == (a_ep.id, a_ep.ipv4, a_ep.mac)
    assert a_ep.lxc in agent.links("lxc")
    held = owners(agent)
    assert f"{a_cid}/eth0" in held and f"{b_keep}/eth0" in held
    assert f"{b_drop}/eth0" not in held


def test_gc_never_collects_an_endpoint_whose_network_is_unknown(
    agent: NodeAgent, pods: Pods
) -> None:
    # made through the API with no network (as every endpoint persisted before networks were
    # recorded): which network made it cannot be proven, so no network's GC may take it
    _, path = pods.new()
    cid = unique("legacy")
    with agent.client() as cl:
        made = cl.create_endpoint(EndpointCreateRequest(container_id=cid, netns=path))
    try:
        assert made.network is None
        conf = netconf(agent, unique("net"), **{"cni.dev/valid-attachments": []})
        run = run_plugin("GC", conf, ifname=None)
        assert (run.rc, run.stdout) == (0, ""), str(run)
        assert endpoint(agent, cid) is not None
        assert f"{cid}/eth0" in owners(agent)
    finally:
        with agent.client() as cl:
            cl.delete_endpoint(made.id)


def test_repeated_add_returns_the_existing_attachment(
    agent: NodeAgent, attachments: Attachments, pods: Pods
) -> None:
    network, cid = unique("net"), unique("c")
    _, path = pods.new()
    first = attachments.add(network, cid, path)
    assert first.rc == 0, str(first)
    before = endpoint(agent, cid)
    again = attachments.add(network, cid, path)
    assert again.rc == 0, str(again)
    assert again.json == first.json  # same addresses, same interfaces, same MACs
    after = endpoint(agent, cid)
    assert (after.id, after.lxc_ifindex, after.created_at) == (
        before.id, before.lxc_ifindex, before.created_at)  # fmt: skip
    check = run_plugin("CHECK", netconf(agent, network, prevResult=first.json),
                       container_id=cid, netns=path)  # fmt: skip
    assert (check.rc, check.stdout) == (0, ""), str(check)


def test_add_of_an_attached_interface_by_another_network_is_refused(
    agent: NodeAgent, attachments: Attachments, pods: Pods
) -> None:
    net_a, net_b, cid = unique("neta"), unique("netb"), unique("c")
    _, path = pods.new()
    first = attachments.add(net_a, cid, path)
    assert first.rc == 0, str(first)
    before = endpoint(agent, cid)

    other = attachments.add(net_b, cid, path)
    assert_cni_error(other, 103, f"{cid}/eth0", repr(net_a), "another ifname")
    # the runtime rolls the failed ADD back with a DEL of net_b: net_a's attachment stays
    rollback = run_plugin("DEL", netconf(agent, net_b), container_id=cid, netns=path)
    assert (rollback.rc, rollback.stdout) == (0, ""), str(rollback)

    after = endpoint(agent, cid)
    assert after is not None
    assert (after.id, after.ipv4, after.lxc_ifindex, after.network) == (
        before.id, before.ipv4, before.lxc_ifindex, net_a)  # fmt: skip
    check = run_plugin("CHECK", netconf(agent, net_a, prevResult=first.json),
                       container_id=cid, netns=path)  # fmt: skip
    assert (check.rc, check.stdout) == (0, ""), str(check)
    run = run_plugin("DEL", netconf(agent, net_a), container_id=cid, netns=path)
    assert run.rc == 0, str(run)
    assert endpoint(agent, cid) is None
