"""The native devices' programs and config with BPF masquerade off (agent/masquerade.py): they
stay attached, because they are also the NodePort path (bpf/lib/nodeport.h), and the NAT config
carries the node addresses for NodePort SNAT while masquerading nothing. Run in a network
namespace of the test's own with a veth as ``--devices``."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from ciliary.datapath.maps.nat import NAT_F_NODE_V4, NAT_F_NODE_V6

SCRIPT = """\
import json, sys
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from ciliary.agent.config import NetworkConfig
from ciliary.agent.masquerade import setup_masquerade
from ciliary.datapath.libbpf import tcx_query
from ciliary.datapath.linux import link
from ciliary.datapath.loader import PIN_ROOT, NodeDatapath, default_object_dir, remove_pins
pin = PIN_ROOT / sys.argv[1]
dp = NodeDatapath(default_object_dir() / "bpf_lxc.o", pin, lb_max=1024)
out = {}
try:
    dp.load()
    net = NetworkConfig(ipv4_node=IPv4Address("192.0.2.2"), ipv6_node=IPv6Address("2001:db8::2"),
                        devices=("np0",), enable_bpf_masquerade=sys.argv[2] == "on")
    out["masquerading"] = setup_masquerade(dp, net)
    ifindex = link.link_index("np0")
    out["attached"] = [len(tcx_query(ifindex, d)) == 1 for d in ("ingress", "egress")]
    out["flags"] = dp.nat_config.flags()
finally:
    dp.close()
    remove_pins(pin)
print(json.dumps(out))
"""


def _run(masquerade: str) -> dict[str, object]:
    ns = f"npt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "np0", "type", "veth", "peer", "np1"], check=True
        )
        subprocess.run(["ip", "-n", ns, "link", "set", "np0", "up"], check=True)
        res = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT, ns, masquerade],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        out: dict[str, object] = json.loads(res.stdout)
        return out
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True, timeout=30)


def test_masquerade_off_keeps_the_nodeport_programs_and_node_addresses() -> None:
    off = _run("off")
    assert off["masquerading"] == []
    assert off["attached"] == [True, True]
    assert off["flags"] == NAT_F_NODE_V4 | NAT_F_NODE_V6  # node IPs for SNAT, nothing masqueraded
