"""The pod's side of its veth against the kernel: ``link.create_pod_interface`` configures it
with one batch of rtnetlink requests (``datapath/linux/rtnl.py``) and the pod netns ends up as
the datapath expects (addresses, on-link and default routes, permanent neighbours of the node
side's MAC, ``lo`` up); a failing request is named. Run from a node netns of the test's own
(the node side gets a host route), with a pod netns of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

SCRIPT = """\
import json, sys
from ipaddress import ip_address
from ciliary.datapath.linux import link, rtnl
from ciliary.datapath.linux.errors import LinkError
pod = f"/run/netns/{sys.argv[1]}"
made = link.create_pod_interface(
    netns_path=pod, container_id="c0ffee", ifname="eth0",
    ipv4=ip_address("10.98.0.5"), ipv6=ip_address("fd00:98::5"),
    router_v4=ip_address("10.98.0.1"), router_v6=ip_address("fd00:98::1"),
)
out = {"node_mac": made.node_mac, "lxc": made.lxc}
idx = made.pod_ifindex
with link.in_netns(pod):
    try:  # the address again, then a new one: the first fails, the second is still made
        rtnl.run([rtnl.address("add 10.98.0.5 again", idx, ip_address("10.98.0.5"), 32),
                  rtnl.address("add 10.98.0.6", idx, ip_address("10.98.0.6"), 32)])
    except LinkError as err:
        out["error"] = str(err)
print(json.dumps(out))
"""


def _ip(ns: str, *args: str) -> list[dict[str, object]]:
    res = subprocess.run(
        ["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True, timeout=30
    )
    found: list[dict[str, object]] = json.loads(res.stdout or "[]")
    return found


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    node, pod = (f"rtnl-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("node", "pod"))
    for ns in (node, pod):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        yield node, pod
    finally:
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def test_the_pod_side_is_made_in_one_batch(namespaces: tuple[str, str]) -> None:
    node, pod = namespaces
    res = subprocess.run(
        ["ip", "netns", "exec", node, sys.executable, "-c", SCRIPT, pod],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    mac = out["node_mac"]
    assert out["error"] == "add 10.98.0.5 again: File exists"
    links = {link["ifname"]: link for link in _ip(pod, "link")}
    assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]  # type: ignore[operator]
    addrs = {
        (a["local"], a["prefixlen"], bool(a.get("nodad")))
        for entry in _ip(pod, "addr", "show", "dev", "eth0")
        for a in entry["addr_info"]  # type: ignore[attr-defined]
        if a["scope"] == "global"
    }
    assert addrs == {
        ("10.98.0.5", 32, False), ("10.98.0.6", 32, False), ("fd00:98::5", 128, True),
    }  # fmt: skip
    v4 = {(r["dst"], r.get("gateway"), r.get("scope"), r["protocol"]) for r in _ip(pod, "route")}
    assert v4 == {
        ("default", "10.98.0.1", None, "static"), ("10.98.0.1", None, "link", "static"),
    }  # fmt: skip
    v6 = {
        (r["dst"], r.get("gateway"))
        for r in _ip(pod, "-6", "route")
        if r.get("protocol") == "static"
    }
    assert v6 == {("default", "fd00:98::1"), ("fd00:98::1", None)}
    neighbours = {(n["dst"], n["lladdr"], tuple(n["state"])) for n in _ip(pod, "neigh")}  # type: ignore[arg-type]
    assert neighbours == {
        (ip, mac, ("PERMANENT",)) for ip in ("10.98.0.1", "fd00:98::1", "fe80::1")
    }
    assert ("10.98.0.5", out["lxc"]) in {(r["dst"], r.get("dev")) for r in _ip(node, "route")}
