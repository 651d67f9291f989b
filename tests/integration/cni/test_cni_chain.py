"""The lab's CNI runtime (``ciliary.lab.cniruntime``) running conflists, as containerd would.

Two halves. Recorder plugins (tiny executables that log what they were given) pin the runtime's
own rules: order, prevResult, runtimeConfig per capability, rollback, cache, GC/STATUS to 1.1.0
plugins only, and that plugins run in the node's netns and never in ours. Then real chains on a
real agent: ``ciliary-cni`` + ``portmap`` + ``bandwidth`` + ``tuning``, and the reference
``bridge`` with ``ciliary-ipam``, checking that what the chained plugins make lands in the node
netns and is gone after DEL.

The agent here is IPv4-only: portmap 1.1.1's CHECK compares the IPv4 rules against the IPv6
chain of a dual-stack pod and fails (upstream ``checkPorts`` builds one rule set per address
and checks it in both iptables families), which is not what these tests are about.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import pytest

from ciliary.datapath.loader import FROM_CONTAINER, TO_CONTAINER
from ciliary.lab.cniruntime import CNIRuntime, CNIRuntimeError, convert_result, load_conflist

from .conftest import (
    VENV_BIN,
    NodeAgent,
    Pods,
    in_netns,
    netns_add,
    netns_del,
    node_agent,
    sh,
    tcx_names,
    unique,
)

pytestmark = pytest.mark.timeout(120)

V4_RANGE = "10.231.0.0/24"
REFERENCE_PLUGINS = Path("/usr/lib/cni")

# --------------------------------------------------------------------------- recorder plugins

RECORDER = """#!{python} -IS
import json, os, sys
SUPPORTED = {supported!r}
conf = json.loads(sys.stdin.read() or "{{}}")
cmd = os.environ.get("CNI_COMMAND", "")
version = conf.get("cniVersion", "1.0.0")
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": version, "supportedVersions": SUPPORTED}}))
    sys.exit(0)
with open(conf["log"], "a") as f:
    f.write(json.dumps({{
        "plugin": os.path.basename(sys.argv[0]), "tag": conf.get("tag"), "cmd": cmd,
        "netns": os.stat("/proc/self/ns/net").st_ino, "cniVersion": version,
        "name": conf.get("name"), "prevResult": conf.get("prevResult"),
        "runtimeConfig": conf.get("runtimeConfig"),
        "attachments": conf.get("cni.dev/valid-attachments"),
        "legacy": conf.get("cni.dev/attachments"),
        "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
    }}) + "\\n")
if conf.get("fail_on") == cmd:
    print(json.dumps({{"cniVersion": version, "code": 123, "msg": "told to fail"}}))
    sys.exit(1)
if cmd == "ADD":
    prev = conf.get("prevResult") or {{
        "cniVersion": version,
        "interfaces": [{{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1400,
                        "sandbox": os.environ["CNI_NETNS"]}}],
        "ips": [{{"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 0}},
                {{"address": "fd00:9::2/64", "interface": 0}}],
        "routes": [{{"dst": "0.0.0.0/0", "gw": "10.9.0.1", "mtu": 1400}}],
        "dns": {{"nameservers": ["10.9.0.10"]}},
    }}
    prev = dict(prev, cniVersion=version)
    prev.setdefault("routes", []).append({{"dst": "10.{{}}.0.0/16".format(len(prev["routes"]))}})
    print(json.dumps(prev))
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Recorder plugins ``rec-new`` (speaks 1.1.0) and ``rec-old`` (up to 1.0.0) in a CNI path,
    a conf dir, a log, and a netns standing in for the node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, supported in (
        ("rec-new", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        ("rec-old", ["0.3.1", "0.4.0", "1.0.0"]),
    ):
        exe = bin_dir / name
        exe.write_text(RECORDER.format(python=sys.executable, supported=supported))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    node_ns = unique("cicn-")
    path = netns_add(node_ns)
    try:
        yield {
            "bin": bin_dir,
            "conf_dir": conf_dir,
            "log": tmp_path / "calls.log",
            "netns": str(path),
            "netns_ino": os.stat(path).st_ino,
        }
    finally:
        netns_del(node_ns)


def write_conflist(conf_dir: Path, body: dict[str, Any], name: str = "10-test.conflist") -> Path:
    path = conf_dir / name
    path.write_text(json.dumps(body))
    return path


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_runtime_runs_the_chain_in_order_in_the_node_netns(recorder: dict[str, Any]) -> None:
    log = str(recorder["log"])
    write_conflist(recorder["conf_dir"], {
        "cniVersion": "0.4.0", "cniVersions": ["0.4.0", "1.0.0", "9.0.0"], "name": "recnet",
        "plugins": [
            {"type": "rec-new", "tag": "a", "log": log, "capabilities": {"portMappings": True}},
            {"type": "rec-old", "tag": "b", "log": log, "capabilities": {"bandwidth": True}},
            {"type": "rec-new", "tag": "c", "log": log},
        ],
    })  # fmt: skip
    rt = CNIRuntime(recorder["conf_dir"], [recorder["bin"]], netns_of_runtime=recorder["netns"])
    caps = {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 100},
        "ips": ["10.9.0.2"],
    }
    result = rt.add("ctr1", "/run/netns/pod", "eth0", args={"K8S_POD_NAME": "p"},
                    capability_args=caps)  # fmt: skip
    adds = calls(recorder["log"])
    assert [(c["tag"], c["cmd"]) for c in adds] == [("a", "ADD"), ("b", "ADD"), ("c", "ADD")]
    assert {c["netns"] for c in adds} == {recorder["netns_ino"]}
    assert os.stat("/proc/self/ns/net").st_ino != recorder["netns_ino"]
    assert {c["cniVersion"] for c in adds} == {"1.0.0"}  # highest common of cniVersions
    assert {c["name"] for c in adds} == {"recnet"}
    assert adds[0]["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    assert adds[1]["runtimeConfig"] == {"bandwidth": caps["bandwidth"]}
    assert adds[2]["runtimeConfig"] is None
    assert adds[0]["prevResult"] is None
    assert adds[1]["prevResult"]["routes"][-1] == {"dst": "10.1.0.0/16"}
    assert adds[2]["prevResult"]["routes"][-1] == {"dst": "10.2.0.0/16"}
    # 1.0.0 has no interface mtu, no route mtu, no ips[].version
    assert "mtu" not in adds[1]["prevResult"]["interfaces"][0]
    assert "mtu" not in adds[1]["prevResult"]["routes"][0]
    assert all("version" not in ip for ip in adds[1]["prevResult"]["ips"])
    env = adds[0]["env"]
    assert env["CNI_CONTAINERID"] == "ctr1" and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_NETNS"] == "/run/netns/pod"
    assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=p"
    assert env["CNI_PATH"] == str(recorder["bin"])
    assert result == rt.cached_result("ctr1", "eth0")
    assert result["routes"][-1] == {"dst": "10.3.0.0/16"}

    recorder["log"].unlink()
    rt.check("ctr1", "/run/netns/pod", "eth0")
    checks = calls(recorder["log"])
    assert [c["tag"] for c in checks] == ["a", "b", "c"]
    assert all(c["prevResult"] == result for c in checks)
    assert checks[1]["runtimeConfig"] == {"bandwidth": caps["bandwidth"]}  # the ADD's args

    recorder["log"].unlink()
    rt.delete("ctr1", "/run/netns/pod", "eth0")
    dels = calls(recorder["log"])
    assert [(c["tag"], c["cmd"]) for c in dels] == [("c", "DEL"), ("b", "DEL"), ("a", "DEL")]
    assert all(c["prevResult"] == result for c in dels)
    assert {c["netns"] for c in dels} == {recorder["netns_ino"]}
    assert rt.cached_result("ctr1", "eth0") is None


def test_runtime_rolls_back_a_failed_add_and_keeps_del_best_effort(
    recorder: dict[str, Any],
) -> None:
    log = str(recorder["log"])
    write_conflist(recorder["conf_dir"], {
        "cniVersion": "1.1.0", "name": "recnet",
        "plugins": [
            {"type": "rec-new", "tag": "a", "log": log},
            {"type": "rec-new", "tag": "b", "log": log, "fail_on": "ADD"},
            {"type": "rec-new", "tag": "c", "log": log},
        ],
    })  # fmt: skip
    rt = CNIRuntime(recorder["conf_dir"], [recorder["bin"]], netns_of_runtime=recorder["netns"])
    with pytest.raises(CNIRuntimeError) as failed:
        rt.add("ctr2", "/run/netns/pod", "eth0")
    assert (failed.value.code, failed.value.plugin) == (123, "rec-new")
    assert "told to fail" in str(failed.value)
    assert [(c["tag"], c["cmd"]) for c in calls(recorder["log"])] == [
        ("a", "ADD"), ("b", "ADD"), ("b", "DEL"), ("a", "DEL"),
    ]  # fmt: skip
    assert rt.cached_result("ctr2", "eth0") is None

    # DEL goes on past a failing plugin and reports the first failure at the end
    write_conflist(recorder["conf_dir"], {
        "cniVersion": "1.1.0", "name": "recnet",
        "plugins": [
            {"type": "rec-new", "tag": "a", "log": log},
            {"type": "rec-new", "tag": "b", "log": log, "fail_on": "DEL"},
        ],
    })  # fmt: skip
    rt.add("ctr3", "/run/netns/pod", "eth0")
    recorder["log"].unlink()
    with pytest.raises(CNIRuntimeError, match="told to fail"):
        rt.delete("ctr3", "/run/netns/pod", "eth0")
    assert [c["tag"] for c in calls(recorder["log"])] == ["b", "a"]
    assert rt.cached_result("ctr3", "eth0") is not None  # kept: a retried DEL needs it


def test_runtime_gc_and_status_reach_only_plugins_that_speak_1_1_0(
    recorder: dict[str, Any],
) -> None:
    log = str(recorder["log"])
    write_conflist(recorder["conf_dir"], {
        "cniVersion": "1.0.0", "name": "recnet",
        "plugins": [
            {"type": "rec-new", "tag": "new", "log": log},
            {"type": "rec-old", "tag": "old", "log": log},
        ],
    })  # fmt: skip
    rt = CNIRuntime(recorder["conf_dir"], [recorder["bin"]], netns_of_runtime=recorder["netns"])
    rt.add("keep", "/run/netns/pod1", "eth0")
    rt.add("stale", "/run/netns/pod2", "eth0")
    recorder["log"].unlink()
    report = rt.gc([("keep", "eth0")])
    assert report.deleted == [("stale", "eth0")]
    assert report.collected_by == ["rec-new"]
    seen = calls(recorder["log"])
    assert [(c["tag"], c["cmd"]) for c in seen] == [
        ("old", "DEL"), ("new", "DEL"), ("new", "GC"),
    ]  # fmt: skip
    gc = seen[-1]
    assert gc["cniVersion"] == "1.1.0"
    assert gc["attachments"] == gc["legacy"] == [{"containerID": "keep", "ifname": "eth0"}]
    assert "CNI_CONTAINERID" not in gc["env"] and "CNI_NETNS" not in gc["env"]
    assert gc["netns"] == recorder["netns_ino"]
    assert rt.cached_result("stale", "eth0") is None
    assert rt.cached_result("keep", "eth0") is not None

    recorder["log"].unlink()
    rt.status()
    assert [(c["tag"], c["cmd"]) for c in calls(recorder["log"])] == [("new", "STATUS")]


def test_runtime_never_falls_back_to_its_own_netns(recorder: dict[str, Any]) -> None:
    write_conflist(recorder["conf_dir"], {
        "cniVersion": "1.0.0", "name": "recnet",
        "plugins": [{"type": "rec-new", "log": str(recorder["log"])}],
    })  # fmt: skip
    rt = CNIRuntime(recorder["conf_dir"], [recorder["bin"]],
                    netns_of_runtime="/run/netns/cicn-gone")  # fmt: skip
    with pytest.raises(CNIRuntimeError, match="does not exist"):
        rt.add("ctr4", "/run/netns/pod", "eth0")
    assert calls(recorder["log"]) == []
    missing = CNIRuntime(recorder["conf_dir"], [Path("/nonexistent")])
    with pytest.raises(CNIRuntimeError, match="not found in CNI path"):
        missing.add("ctr5", "/run/netns/pod", "eth0")


def test_conflist_loading_and_result_conversion(tmp_path: Path) -> None:
    path = write_conflist(tmp_path, {
        "cniVersion": "0.4.0", "cniVersions": ["0.3.1", "1.1.0", "2.0.0"], "name": "n",
        "disableCheck": True, "plugins": [{"type": "x"}],
    })  # fmt: skip
    conf = load_conflist(path)
    assert (conf.name, conf.cni_version, conf.disable_check) == ("n", "1.1.0", True)
    single = write_conflist(tmp_path, {"cniVersion": "0.3.1", "name": "s", "type": "y"}, "s.conf")
    assert load_conflist(single).plugins[0]["type"] == "y"
    for bad in ({"name": "n", "cniVersion": "1.0.0", "plugins": []},
                {"name": "n", "cniVersion": "0.1.0", "plugins": [{"type": "x"}]},
                {"cniVersion": "1.0.0", "plugins": [{"type": "x"}]},
                {"name": "n", "cniVersion": "1.0.0", "plugins": [{"notype": 1}]}):  # fmt: skip
        with pytest.raises(CNIRuntimeError):
            load_conflist(write_conflist(tmp_path, bad, "bad.conflist"))
    result = {"cniVersion": "1.1.0", "interfaces": [{"name": "e", "mtu": 9000, "pciID": "x"}],
              "ips": [{"address": "fd00::1/64", "interface": 0}],
              "routes": [{"dst": "::/0", "table": 5}]}  # fmt: skip
    assert convert_result(result, "0.3.1") == {
        "cniVersion": "0.3.1", "interfaces": [{"name": "e"}],
        "ips": [{"version": "6", "address": "fd00::1/64", "interface": 0}],
        "routes": [{"dst": "::/0"}],
    }  # fmt: skip
    assert convert_result(result, "1.1.0") == result


# --------------------------------------------------------------------------- real chains


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    with node_agent(tmp_path_factory.mktemp("chain-agent"), V4_RANGE, None) as a:
        yield a


def root_snapshot() -> dict[str, set[str]]:
    """What chained plugins could leak into *our* namespace: CNI iptables chains/rules, and
    links named like theirs (lxc*, ifb/bwp*, cib*)."""
    nat4 = sh("iptables", "-t", "nat", "-S").stdout.splitlines()
    nat6 = sh("ip6tables", "-t", "nat", "-S").stdout.splitlines()
    links = {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show").stdout or "[]")}
    return {
        "nat4": {r for r in nat4 if "CNI" in r},
        "nat6": {r for r in nat6 if "CNI" in r},
        "links": {n for n in links if n.startswith(("lxc", "bwp", "ifb", "cib"))},
    }


def chain_runtime(
    agent: NodeAgent, base: Path, plugins: list[dict[str, Any]], cache_dir: Path | None = None
) -> CNIRuntime:
    conf_dir = base / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    write_conflist(conf_dir, {"cniVersion": "1.0.0", "name": "chain", "plugins": plugins})
    return CNIRuntime(
        conf_dir,
        [VENV_BIN, REFERENCE_PLUGINS],
        netns_of_runtime=str(agent.netns_path),
        cache_dir=cache_dir,
    )


def nat_rules(agent: NodeAgent) -> list[str]:
    return in_netns(agent.netns, "iptables", "-t", "nat", "-S").stdout.splitlines()


def test_ciliary_chained_with_portmap_bandwidth_and_tuning(
    agent: NodeAgent, pods: Pods, tmp_path: Path
) -> None:
    plugins: list[dict[str, Any]] = [
        {"type": "ciliary-cni", "node": agent.node, "capabilities": {"ips": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}},
    ]
    rt = chain_runtime(agent, tmp_path, plugins)
    caps = {
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        # ingress only: bandwidth's egress shaping is a filter on the host veth's ingress qdisc,
        # which would never run after our BPF programs' verdict on the veth's tcx hook
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 800_000},
    }
    before = root_snapshot()
    pod, path = pods.new()
    cid = unique("ch")
    try:
        result = rt.add(cid, path, "eth0", args={"K8S_POD_NAME": "web"}, capability_args=caps)
        lxc = result["interfaces"][0]["name"]
        pod_ip = str(ip_interface(result["ips"][0]["address"]).ip)
        assert ip_address(pod_ip) in ip_network(V4_RANGE)

        rules = nat_rules(agent)
        dnat_chain = next(r.split()[1] for r in rules if r.startswith("-N CNI-DN-"))
        assert any(f"--to-destination {pod_ip}:80" in r for r in rules), rules
        assert "-A CNI-HOSTPORT-DNAT" in "\n".join(rules)
        qdiscs = in_netns(agent.netns, "tc", "qdisc", "show", "dev", lxc).stdout
        assert "tbf" in qdiscs and "clsact" not in qdiscs, qdiscs  # ours need no qdisc
        assert tcx_names(agent.netns, lxc, "ingress") == [FROM_CONTAINER[:15]]
        assert tcx_names(agent.netns, lxc, "egress") == [TO_CONTAINER[:15]]
        sysctl = in_netns(pod, "cat", "/proc/sys/net/ipv4/conf/eth0/accept_local").stdout
        assert sysctl.strip() == "1"
        assert root_snapshot() == before, "a chained plugin wrote into the root netns"

        # CHECK in chain order: ciliary-cni passes, then Debian's portmap 1.1.1 fails on its own
        # known bug (it checks the IPv4 rules in the ip6tables chain, which an IPv4-only pod does
        # not have; later plugins treat a missing chain as nothing to check).
        with pytest.raises(CNIRuntimeError) as check:
            rt.check(cid, path, "eth0")
        assert check.value.plugin == "portmap", check.value
        assert "ipv6 dnat" in check.value.msg, check.value
        # ... so the other plugins' CHECK runs through the same network without portmap, on the
        # same cached result: ciliary-cni (agent), bandwidth (tbf on the lxc), tuning (sysctl)
        without_portmap = chain_runtime(agent, tmp_path / "no-portmap", [
            p for p in plugins if p["type"] != "portmap"
        ], cache_dir=rt.cache_dir)  # fmt: skip
        without_portmap.check(cid, path, "eth0")
        in_netns(pod, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/eth0/accept_local")
        with pytest.raises(CNIRuntimeError) as changed:
            without_portmap.check(cid, path, "eth0")
        assert changed.value.plugin == "tuning", changed.value
        rt.status()  # ciliary-cni is the only 1.1.0 plugin of the chain: the agent is up

        rt.delete(cid, path, "eth0")
        rules = nat_rules(agent)
        assert not [r for r in rules if dnat_chain in r or pod_ip in r], rules
        assert lxc not in agent.links("lxc")
        with agent.client() as cl:
            assert not [e for e in cl.endpoints() if e.container_id == cid]
        assert rt.cached_result(cid, "eth0") is None
        rt.delete(cid, path, "eth0")  # DEL again: every plugin is idempotent
        assert root_snapshot() == before
    finally:
        rt.delete(cid, path, "eth0")


def test_chain_gc_deletes_stale_attachments_everywhere(
    agent: NodeAgent, pods: Pods, tmp_path: Path
) -> None:
    rt = chain_runtime(agent, tmp_path, [
        {"type": "ciliary-cni", "node": agent.node},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ])  # fmt: skip
    caps = {"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]}
    (_, keep_path), (_, stale_path) = pods.new(), pods.new()
    keep, stale = unique("gk"), unique("gs")
    try:
        kept = rt.add(keep, keep_path, "eth0", capability_args=caps)
        gone = rt.add(stale, stale_path, "eth0", capability_args=caps)
        report = rt.gc([(keep, "eth0")])
        assert report.deleted == [(stale, "eth0")]
        assert report.collected_by == ["ciliary-cni"]
        stale_ip = str(ip_interface(gone["ips"][0]["address"]).ip)
        keep_ip = str(ip_interface(kept["ips"][0]["address"]).ip)
        rules = "\n".join(nat_rules(agent))
        assert stale_ip not in rules and keep_ip in rules
        with agent.client() as cl:
            alive = {e.container_id for e in cl.endpoints()}
        assert keep in alive and stale not in alive
    finally:
        rt.delete(keep, keep_path, "eth0")
        rt.delete(stale, stale_path, "eth0")


def test_reference_bridge_with_ciliary_ipam(agent: NodeAgent, pods: Pods, tmp_path: Path) -> None:
    rt = chain_runtime(agent, tmp_path, [
        {"type": "bridge", "bridge": "cib0", "isGateway": True,
         "ipam": {"type": "ciliary-ipam", "node": agent.node}},
    ])  # fmt: skip
    pod, path = pods.new()
    cid = unique("br")
    try:
        result = rt.add(cid, path, "eth0")
        (ip,) = result["ips"]
        addr = ip_interface(ip["address"])
        assert addr.network == ip_network(V4_RANGE) and ip["gateway"] == "10.231.0.1"
        assert result["interfaces"][ip["interface"]]["sandbox"] == path
        shown = in_netns(pod, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert ip["address"] in shown
        assert "cib0" in agent.links("cib")
        with agent.client() as cl:
            mine = [a for a in cl.ipam_list().allocations if a.owner == f"{cid}/eth0"]
        assert [(a.kind, a.address) for a in mine] == [("ipam-plugin", str(addr.ip))]

        rt.check(cid, path, "eth0")  # bridge delegates CHECK to ciliary-ipam

        rt.delete(cid, path, "eth0")
        with agent.client() as cl:
            assert not [a for a in cl.ipam_list().allocations if a.owner == f"{cid}/eth0"]
        rt.delete(cid, path, "eth0")
    finally:
        rt.delete(cid, path, "eth0")
