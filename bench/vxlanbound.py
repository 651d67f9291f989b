"""What VXLAN between two nodes can cost on this machine when no vxlan device is on the path: a
bound for the ``multinode`` group's setup b (issue #13's goal b/a >= 0.85), not a group of
``bench.run``.

Why: the kernel's own VXLAN (the group's setup d, a vxlan device and routes, no BPF) measures
0.74-0.86 of plain routing (setup a), so no datapath that sends through a vxlan device, as
upstream's ``cilium_vxlan`` and ciliary's ``ciliary_vxlan`` both do, can be expected to reach
0.85. Setup e asks whether the encapsulation itself costs that much: the same namespaces as a and
d (``multinode.underlay_nodes``: an underlay bridge, two nodes, a pod behind each; pod MTU 1450
as in tunnel mode), where tc programs alone (``bench/vxlanbound.c``) wrap each pod packet for
the other node in outer Ethernet/IPv4/UDP 8472/VXLAN headers (``bpf_skb_adjust_room`` with the
encapsulation flags, so GSO packets stay whole) and send it out of ``eth0``, and on the other
node strip them at ``eth0``'s tc ingress and hand the inner packet to the pod
(``bpf_redirect_peer``). Nothing else: no policy, conntrack or events; a bound for what a
device-less encapsulation in ciliary's datapath could reach, not a measurement of ciliary.

a, d and e are measured as the ``multinode`` group measures (``datapath.interleave``: every round
each setup back to back, the same tools and metrics); ratios d/a and e/a. ``--halves`` adds e's
two halves alone under d's vxlan devices: e-tx (the tc programs send, the other node's vxlan
device receives) and e-rx (the vxlan devices send, the tc programs receive).

    sudo .venv/bin/python -m bench.vxlanbound [--rounds N] [--halves]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import datapath, multinode, tools
from bench.common import sh
from bench.datapath import Target, _link

SOURCE = Path(__file__).with_name("vxlanbound.c")
BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"  # lib/vxlan.h, the wire format
BPF_VXLAN = "e: VXLAN by tc programs, no device"
HALF_TX = "e-tx: tc programs send, vxlan devices receive"
HALF_RX = "e-rx: vxlan devices send, tc programs receive"


def _ip(address: str) -> str:
    return hex(int.from_bytes(bytes(int(part) for part in address.split(".")), "big"))


def _mac(address: str) -> str:
    return "{" + ",".join(f"0x{byte}" for byte in address.split(":")) + "}"


def _object(out: Path, constants: dict[str, str]) -> None:
    arch = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-Wall", f"-I/usr/include/{arch.strip()}-linux-gnu",
         f"-I{BPF_DIR}",
         *(f"-D{name}={value}" for name, value in constants.items()),
         "-c", str(SOURCE), "-o", str(out)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@contextlib.contextmanager
def bpf_vxlan_nodes(connrate: Path, half: str = "") -> Iterator[list[Target]]:
    """Setup e (see the module doc); its path is checked as the group checks a and d (the
    client's packets leave node 1 through ``eth0``). ``half`` "tx" or "rx": one direction's
    program only, under d's vxlan devices and routes (which half of e's saving is where)."""
    with (
        multinode.underlay_nodes(multinode.VXLAN_MTU) as (nodes, pods),
        tempfile.TemporaryDirectory() as tmp,
    ):
        if half:
            multinode.vxlan_devices(nodes)
        for i, (node, pod) in enumerate(zip(nodes, pods, strict=True), start=1):
            j = 3 - i  # the other node
            underlay, node_mac = _link(node, "eth0")
            lxc, lxc_mac = _link(node, "lxc0")
            constants = {
                "LOCAL_IP": _ip(f"{multinode.UNDERLAY}.{i + 1}"),
                "REMOTE_IP": _ip(f"{multinode.UNDERLAY}.{j + 1}"),
                "REMOTE_NET": _ip(f"10.0.{j}.0"),
                "LOCAL_MAC": _mac(node_mac),
                "REMOTE_MAC": _mac(_link(nodes[j - 1], "eth0")[1]),
                "UNDERLAY_IFINDEX": str(underlay),
                "LXC_IFINDEX": str(lxc),
                "LXC_MAC": _mac(lxc_mac),
                "POD_MAC": _mac(_link(pod, "eth0")[1]),
                "VNI": str(multinode.VXLAN_ID),
            }
            if half == "tx":
                constants["INNER_DMAC"] = _mac(_link(nodes[j - 1], "vxlan0")[1])
            obj = Path(tmp) / f"node{i}.o"
            _object(obj, constants)
            programs = {"": (("lxc0", "enc"), ("eth0", "dec")), "tx": (("lxc0", "enc"),),
                        "rx": (("eth0", "dec"),)}[half]  # fmt: skip
            for dev, program in programs:
                sh("tc", "qdisc", "add", "dev", dev, "clsact", ns=node)
                sh("tc", "filter", "add", "dev", dev, "ingress", "bpf", "da", "obj", str(obj),
                   "sec", "tc", "program", program, ns=node)  # fmt: skip
        with tools.servers(pods[1], connrate):
            name = {"": BPF_VXLAN, "tx": HALF_TX, "rx": HALF_RX}[half]
            target = Target(name, name, None, tools.enter(pods[0]), "10.0.2.10")
            multinode._check_path(target, connrate, nodes[0], "vxlan0" if half == "rx" else "eth0")
            yield [target]


def run(rounds: int, seconds: float, *, halves: bool = False) -> list[dict[str, Any]]:
    with tools.connrate_binary() as connrate, contextlib.ExitStack() as stack:
        targets = list(stack.enter_context(multinode.kernel_nodes(connrate, vxlan=False)))
        targets += stack.enter_context(multinode.kernel_nodes(connrate, vxlan=True))
        for half in ("", "tx", "rx") if halves else ("",):
            targets += stack.enter_context(bpf_vxlan_nodes(connrate, half))
        metrics = datapath.tool_metrics(connrate)
        samples, _ = datapath.interleave(
            targets, metrics, rounds=rounds, seconds=seconds, agents=[], log=print,
            group="vxlanbound",
        )  # fmt: skip
    results = datapath.results_of(
        targets, metrics, samples, rounds=rounds, seconds=seconds, group="vxlanbound"
    )
    for res in results:
        values = res["values"]
        res["ratios"] = {
            name.split(":")[0] + "/a": value / values[multinode.BARE]
            for name, value in values.items()
            if name != multinode.BARE
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vxlanbound", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--halves", action="store_true", help="also e's send and receive alone")
    args = parser.parse_args()
    started = time.monotonic()
    for res in run(args.rounds, args.seconds, halves=args.halves):
        print(json.dumps(res))
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in res["ratios"].items())
        print(f"# {res['benchmark']}: {ratios}", file=sys.stderr)
    print(f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
