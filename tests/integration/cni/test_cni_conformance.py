"""``ciliary-cni`` against the CNI spec, run as a runtime runs it: the real executable, a real
agent in a node netns, real pod netns. Every verb, every result version, every error path."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import pytest

from ciliary.agent.config import TUNNEL_OVERHEAD
from ciliary.client.agent import AgentAPIError
from ciliary.core.models import EndpointState, IPAMAllocateRequest

from .conftest import (
    RUN_ROOT,
    NodeAgent,
    Pods,
    assert_cni_error,
    in_netns,
    node_agent,
    run_plugin,
    unique,
)

pytestmark = pytest.mark.timeout(120)

V4_RANGE = "10.230.0.0/24"
V6_RANGE = "fd00:10:230::/120"
VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with node_agent(tmp_path_factory.mktemp("cni-agent"), V4_RANGE, V6_RANGE) as a:
        yield a


def netconf(agent: NodeAgent, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "ciliary", "type": "ciliary-cni",
            "node": agent.node, **extra}  # fmt: skip


def pod_addresses(netns_name: str, ifname: str = "eth0") -> set[str]:
    out = in_netns(netns_name, "ip", "-j", "addr", "show", "dev", ifname).stdout
    return {
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(out)
        for a in link["addr_info"]
        if a.get("scope") == "global"
    }


def endpoint_of(agent: NodeAgent, container_id: str) -> Any:
    with agent.client() as cl:
        return next((e for e in cl.endpoints() if e.container_id == container_id), None)


class Attached:
    """One ADDed attachment of a test, DELeted at the end whatever happened."""

    def __init__(self, agent: NodeAgent, pods: Pods) -> None:
        self.agent, self.pods = agent, pods
        self.made: list[tuple[str, str, dict[str, Any]]] = []

    def add(
        self, version: str = "1.1.0", *, cni_args: str | None = None, **conf: Any
    ) -> tuple[str, str, str, dict[str, Any]]:
        cid = unique("c")
        name, path = self.pods.new()
        config = netconf(self.agent, version, **conf)
        self.made.append((cid, path, config))
        run = run_plugin("ADD", config, container_id=cid, netns=path, args=cni_args)
        assert run.rc == 0, str(run)
        return cid, name, path, run.json

    def cleanup(self) -> None:
        for cid, path, config in self.made:
            run_plugin("DEL", config, container_id=cid, netns=path)


@pytest.fixture
def attached(agent: NodeAgent, pods: Pods) -> Iterator[Attached]:
    a = Attached(agent, pods)
    try:
        yield a
    finally:
        a.cleanup()


# --------------------------------------------------------------------------- VERSION


def test_version_answers_in_the_configs_version_and_lists_ours() -> None:
    started = time.monotonic()
    run = run_plugin("VERSION", {"cniVersion": "1.0.0"}, ifname=None)
    elapsed = time.monotonic() - started
    assert run.rc == 0, str(run)
    assert run.json == {"cniVersion": "1.0.0", "supportedVersions": VERSIONS}
    assert elapsed < 2.0  # runtimes call VERSION a lot: no agent, no HTTP client imported

    bare = run_plugin("VERSION", "", ifname=None)
    assert bare.rc == 0 and bare.json["cniVersion"] == "1.1.0", str(bare)


# --------------------------------------------------------------------------- ADD


@pytest.mark.parametrize("version", VERSIONS)
def test_add_result_has_the_shape_of_the_requested_version(
    agent: NodeAgent, attached: Attached, version: str
) -> None:
    dns = {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    labels = [{"key": "app", "value": "web"}]
    cid, pod, path, result = attached.add(
        version,
        cni_args="K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=shop",
        dns=dns,
        args={"cni": {"labels": labels}},
    )
    assert result["cniVersion"] == version
    assert set(result) == {"cniVersion", "interfaces", "ips", "routes", "dns"}
    host, sandbox = result["interfaces"]
    assert host["name"].startswith("lxc") and "sandbox" not in host
    assert sandbox["name"] == "eth0" and sandbox["sandbox"] == path
    ep = endpoint_of(agent, cid)
    assert ep is not None and ep.state == EndpointState.READY
    assert (ep.pod_name, ep.namespace, ep.labels) == ("web-1", "shop", {"app": "web"})
    assert host["mac"] == ep.node_mac and sandbox["mac"] == ep.mac
    if version == "1.1.0":
        # the agent runs in tunnel mode (the default): its --mtu less the VXLAN header
        assert sandbox["mtu"] == ep.mtu == 1500 - TUNNEL_OVERHEAD
        assert set(sandbox) == {"name", "mac", "mtu", "sandbox"}
    else:
        assert set(sandbox) == {"name", "mac", "sandbox"}
    v4, v6 = result["ips"]
    old = version in ("0.3.1", "0.4.0")
    assert ("version" in v4) == old and ("version" in v6) == old
    if old:
        assert (v4["version"], v6["version"]) == ("4", "6")
    assert v4["address"] == f"{ep.ipv4}/32" and v6["address"] == f"{ep.ipv6}/128"
    assert ip_address(ep.ipv4) in ip_network(V4_RANGE)
    assert ip_address(ep.ipv6) in ip_network(V6_RANGE)
    assert (v4["gateway"], v6["gateway"]) == (ep.ipv4_gateway, ep.ipv6_gateway)
    assert v4["interface"] == v6["interface"] == 1
    assert result["routes"] == [
        {"dst": "0.0.0.0/0", "gw": ep.ipv4_gateway},
        {"dst": "::/0", "gw": ep.ipv6_gateway},
    ]
    assert result["dns"] == dns
    assert pod_addresses(pod) == {v4["address"], v6["address"]}
    assert host["name"] in agent.links("lxc")


def test_add_honours_requested_ips_from_the_ips_capability_and_args(
    agent: NodeAgent, attached: Attached
) -> None:
    cid, pod, _, result = attached.add(runtimeConfig={"ips": ["10.230.0.77/24", "fd00:10:230::77"]})
    assert [i["address"] for i in result["ips"]] == ["10.230.0.77/32", "fd00:10:230::77/128"]
    assert {"10.230.0.77/32", "fd00:10:230::77/128"} == pod_addresses(pod)
    _, pod2, _, via_args = attached.add(args={"cni": {"ips": ["10.230.0.78"]}})
    assert via_args["ips"][0]["address"] == "10.230.0.78/32"
    assert "10.230.0.78/32" in pod_addresses(pod2)
    assert endpoint_of(agent, cid).ipv4 == "10.230.0.77"


# --------------------------------------------------------------------------- DEL


def test_del_is_idempotent(agent: NodeAgent, attached: Attached) -> None:
    cid, _, path, result = attached.add()
    lxc = result["interfaces"][0]["name"]
    conf = netconf(agent, prevResult=result)
    for _ in range(2):
        run = run_plugin("DEL", conf, container_id=cid, netns=path)
        assert (run.rc, run.stdout) == (0, ""), str(run)
    assert endpoint_of(agent, cid) is None
    assert lxc not in agent.links("lxc")
    with agent.client() as cl:
        owners = {a.owner for a in cl.ipam_list().allocations}
    assert f"{cid}/eth0" not in owners


def test_del_after_the_netns_is_gone_cleans_up(
    agent: NodeAgent, attached: Attached, pods: Pods
) -> None:
    cid, pod, path, result = attached.add()
    pods.remove(pod)
    assert not Path(path).exists()
    run = run_plugin("DEL", netconf(agent), container_id=cid, netns=path)
    assert (run.rc, run.stdout) == (0, ""), str(run)
    assert endpoint_of(agent, cid) is None
    assert result["interfaces"][0]["name"] not in agent.links("lxc")


def test_del_of_an_unknown_container_succeeds(agent: NodeAgent) -> None:
    run = run_plugin("DEL", netconf(agent), container_id=unique("never"), netns="/run/netns/none")
    assert (run.rc, run.stdout) == (0, ""), str(run)
    no_netns = run_plugin("DEL", netconf(agent), container_id=unique("never"), netns=None)
    assert (no_netns.rc, no_netns.stdout) == (0, ""), str(no_netns)


# --------------------------------------------------------------------------- CHECK


def test_check_passes_right_after_add(agent: NodeAgent, attached: Attached) -> None:
    cid, _, path, result = attached.add("1.0.0")
    run = run_plugin("CHECK", netconf(agent, "1.0.0", prevResult=result),
                     container_id=cid, netns=path)  # fmt: skip
    assert (run.rc, run.stdout) == (0, ""), str(run)


def test_check_names_an_address_someone_deleted(agent: NodeAgent, attached: Attached) -> None:
    cid, pod, path, result = attached.add()
    v4 = result["ips"][0]["address"]
    in_netns(pod, "ip", "addr", "del", v4, "dev", "eth0")
    run = run_plugin("CHECK", netconf(agent, prevResult=result), container_id=cid, netns=path)
    err = assert_cni_error(run, 100, str(ip_interface(v4).ip), "missing")
    assert "details" not in err  # the problems are in msg, once


def test_check_without_prev_result_is_invalid_config(agent: NodeAgent, attached: Attached) -> None:
    cid, _, path, _ = attached.add()
    run = run_plugin("CHECK", netconf(agent), container_id=cid, netns=path)
    assert_cni_error(run, 7, "CHECK needs prevResult")


def test_check_does_not_exist_before_0_4_0(agent: NodeAgent, attached: Attached) -> None:
    cid, _, path, result = attached.add("0.3.1")
    run = run_plugin("CHECK", netconf(agent, "0.3.1", prevResult=result),
                     container_id=cid, netns=path)  # fmt: skip
    assert_cni_error(run, 1, "CHECK", "0.3.1")


# --------------------------------------------------------------------------- GC and STATUS


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_removes_attachments_not_in_the_valid_list(
    agent: NodeAgent, attached: Attached, key: str
) -> None:
    keep, _, _, _ = attached.add()
    drop, _, _, dropped = attached.add()
    with agent.client() as cl:
        others = [
            {"containerID": e.container_id, "ifname": e.ifname}
            for e in cl.endpoints()
            if e.container_id != drop
        ]
    conf = netconf(agent)
    conf[key] = others
    run = run_plugin("GC", conf, ifname=None)
    assert (run.rc, run.stdout) == (0, ""), str(run)
    assert endpoint_of(agent, drop) is None
    assert endpoint_of(agent, keep) is not None
    assert dropped["interfaces"][0]["name"] not in agent.links("lxc")
    with agent.client() as cl:
        owners = {a.owner for a in cl.ipam_list().allocations}
    assert f"{drop}/eth0" not in owners and f"{keep}/eth0" in owners


def test_gc_needs_the_attachment_list_and_version_1_1_0(agent: NodeAgent) -> None:
    assert_cni_error(run_plugin("GC", netconf(agent), ifname=None), 7, "cni.dev/valid-attachments")
    old = run_plugin("GC", netconf(agent, "1.0.0", **{"cni.dev/valid-attachments": []}))
    assert_cni_error(old, 1, "GC")


STANDALONE_POLICIES = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
"""


def test_standalone_agent_keeps_its_imported_policies(agent: NodeAgent) -> None:
    """Without a Kubernetes API, policies imported through the agent's own API are kept in its
    state directory (no shared store): a restarted agent enforces the same set, a deleted one
    stays deleted."""
    with agent.client() as cl:
        imported = sorted(cl.policy_import(STANDALONE_POLICIES, "p.yaml").keys)
        assert imported == ["CiliumNetworkPolicy/default/web", "NetworkPolicy/default/db"]
        cl.policy_delete(["NetworkPolicy/default/db"])
    assert (RUN_ROOT / agent.node / "policies.json").exists()
    agent.stop()
    agent.start()
    try:
        with agent.client() as cl:
            assert [p.key for p in cl.policy_list().policies] == imported[:1]
    finally:
        with agent.client() as cl:
            cl.policy_delete(all=True)


def test_status_follows_the_agent(agent: NodeAgent) -> None:
    up = run_plugin("STATUS", netconf(agent), ifname=None)
    assert (up.rc, up.stdout) == (0, ""), str(up)
    agent.stop()
    try:
        down = run_plugin("STATUS", netconf(agent), ifname=None)
        assert_cni_error(down, 50, agent.node, "not running")
    finally:
        agent.start()
    assert run_plugin("STATUS", netconf(agent), ifname=None).rc == 0


# --------------------------------------------------------------------------- error paths


def test_config_that_is_not_json_is_a_decode_failure(pods: Pods) -> None:
    _, path = pods.new()
    run = run_plugin("ADD", "{not json", container_id=unique("c"), netns=path)
    assert_cni_error(run, 6, "not valid JSON")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"command": None}, "CNI_COMMAND"),
        ({"command": "FROB"}, "CNI_COMMAND"),
        ({"container_id": None}, "CNI_CONTAINERID"),
        ({"container_id": "-bad"}, "CNI_CONTAINERID"),
        ({"ifname": "a-very-long-ifname0"}, "CNI_IFNAME"),
        ({"ifname": "eth/0"}, "CNI_IFNAME"),
        ({"netns": None}, "CNI_NETNS"),
    ],
)
def test_invalid_environment_is_error_4(
    agent: NodeAgent, pods: Pods, env: dict[str, Any], fragment: str
) -> None:
    _, path = pods.new()
    params: dict[str, Any] = {"command": "ADD", "container_id": unique("c"), "netns": path,
                              "ifname": "eth0", **env}  # fmt: skip
    command = params.pop("command")
    run = run_plugin(command, netconf(agent), **params)
    assert_cni_error(run, 4, fragment)
    assert endpoint_of(agent, params["container_id"] or "") is None


def test_unknown_cni_version_is_error_1(agent: NodeAgent, pods: Pods) -> None:
    _, path = pods.new()
    run = run_plugin("ADD", netconf(agent, "9.9.9"), container_id=unique("c"), netns=path)
    err = assert_cni_error(run, 1, "9.9.9")
    assert err["cniVersion"] == "1.1.0"


def test_invalid_config_is_error_7(agent: NodeAgent, pods: Pods) -> None:
    _, path = pods.new()
    no_node = {"cniVersion": "1.0.0", "name": "ciliary", "type": "ciliary-cni"}
    run = run_plugin("ADD", no_node, container_id=unique("c"), netns=path)
    err = assert_cni_error(run, 7, '"node"')
    assert err["cniVersion"] == "1.0.0"  # errors speak the config's version
    bad_ip = netconf(agent, runtimeConfig={"ips": ["not-an-ip"]})
    assert_cni_error(
        run_plugin("ADD", bad_ip, container_id=unique("c"), netns=path), 7, "not-an-ip"
    )


def test_missing_or_wrong_netns_is_error_102(agent: NodeAgent, tmp_path: Path) -> None:
    missing = run_plugin("ADD", netconf(agent), container_id=unique("c"),
                         netns="/run/netns/cicp-does-not-exist")  # fmt: skip
    assert_cni_error(missing, 102, "does not exist")
    regular = tmp_path / "not-a-netns"
    regular.write_text("")
    wrong = run_plugin("ADD", netconf(agent), container_id=unique("c"), netns=str(regular))
    assert_cni_error(wrong, 102, "not a network namespace")
    with agent.client() as cl:
        assert not [e for e in cl.endpoints() if e.netns == str(regular)]


def test_agent_refusal_is_error_100_with_its_message(agent: NodeAgent, pods: Pods) -> None:
    _, path = pods.new()
    conf = netconf(agent, runtimeConfig={"ips": ["10.99.0.5"]})
    run = run_plugin("ADD", conf, container_id=unique("c"), netns=path)
    assert_cni_error(run, 100, "10.99.0.5", agent.node)


def test_ipam_exhaustion_is_error_101(pods: Pods, tmp_path: Path) -> None:
    # a node of its own with a /28: 13 addresses to fill rather than the shared node's 253
    with node_agent(tmp_path, "10.232.0.0/28", None) as small:
        taken = 0
        with small.client() as cl:
            while True:
                try:
                    cl.ipam_allocate(IPAMAllocateRequest(owner=f"fill/e{taken}"))
                except AgentAPIError as err:
                    assert err.kind == "exhausted", err
                    break
                taken += 1
                assert taken < 16
        assert taken == 13
        _, path = pods.new()
        cid = unique("c")
        run = run_plugin("ADD", netconf(small), container_id=cid, netns=path)
        assert_cni_error(run, 101, "no free address", small.node)
        assert endpoint_of(small, cid) is None
        assert small.links("lxc") == set()


def test_agent_down_on_add_is_try_again_later_and_leaves_nothing(
    agent: NodeAgent, pods: Pods
) -> None:
    _, path = pods.new()
    cid = unique("c")
    before = agent.links("lxc")
    agent.stop()
    try:
        run = run_plugin("ADD", netconf(agent), container_id=cid, netns=path)
        assert_cni_error(run, 11, agent.node, "not running", "try again later")
        down_del = run_plugin("DEL", netconf(agent), container_id=cid, netns=path)
        assert_cni_error(down_del, 11, "try again later")  # the runtime retries DEL
    finally:
        agent.start()
    assert agent.links("lxc") == before
    assert endpoint_of(agent, cid) is None
    with agent.client() as cl:
        assert not [a for a in cl.ipam_list().allocations if a.owner.startswith(cid)]


# --------------------------------------------------------------------------- ciliary-ipam


def test_ipam_plugin_add_check_gc_del(agent: NodeAgent, attached: Attached) -> None:
    """``ciliary-ipam`` as a main plugin calls it: IPAM results, owner ``<cid>/<ifname>``."""
    ep_cid, _, _, _ = attached.add()  # an endpoint: GC of the IPAM plugin must not touch it
    cid, stale = unique("ip"), unique("ip")
    conf = {"cniVersion": "0.4.0", "name": "br", "type": "bridge", "node": "ignored-top-level",
            "ipam": {"type": "ciliary-ipam", "node": agent.node}}  # fmt: skip

    def ipam(command: str, conf: dict[str, Any], container: str = cid) -> Any:
        return run_plugin(command, conf, plugin="ciliary-ipam", container_id=container,
                          netns="/run/netns/unused")  # fmt: skip

    try:
        add = ipam("ADD", conf)
        assert add.rc == 0, str(add)
        result = add.json
        assert set(result) == {"cniVersion", "ips", "routes", "dns"}  # no interfaces
        v4, v6 = result["ips"]
        assert (v4["version"], v6["version"]) == ("4", "6")
        assert ip_interface(v4["address"]).network == ip_network(V4_RANGE)
        assert ip_interface(v6["address"]).network == ip_network(V6_RANGE)
        assert "interface" not in v4
        assert result["routes"] == [
            {"dst": "0.0.0.0/0", "gw": v4["gateway"]},
            {"dst": "::/0", "gw": v6["gateway"]},
        ]
        with agent.client() as cl:
            mine = [a for a in cl.ipam_list().allocations if a.owner == f"{cid}/eth0"]
        assert {(a.kind, a.address) for a in mine} == {
            ("ipam-plugin", str(ip_interface(v4["address"]).ip)),
            ("ipam-plugin", str(ip_interface(v6["address"]).ip)),
        }
        assert ipam("CHECK", {**conf, "prevResult": result}).rc == 0

        # GC (1.1.0): only ipam-plugin allocations of attachments that are not valid go
        assert ipam("ADD", conf, stale).rc == 0
        keep = [{"containerID": cid, "ifname": "eth0"}]
        gc = ipam("GC", {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": keep})
        assert (gc.rc, gc.stdout) == (0, ""), str(gc)
        with agent.client() as cl:
            owners = {a.owner for a in cl.ipam_list().allocations}
        assert f"{stale}/eth0" not in owners
        assert {f"{cid}/eth0", f"{ep_cid}/eth0"} <= owners

        for _ in range(2):
            rm = ipam("DEL", conf)
            assert (rm.rc, rm.stdout) == (0, ""), str(rm)
        check = ipam("CHECK", {**conf, "prevResult": result})
        assert_cni_error(check, 100, f"{cid}/eth0", "no address")
    finally:
        ipam("DEL", conf)
        ipam("DEL", conf, stale)
