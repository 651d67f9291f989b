"""The FIB's recent answers, per CPU (bpf/lib/fib.h, ``ciliary_fib_cache``): native routing's
lookups in the main table alone, used for FIB_CACHE_NS (50 ms) and for packets no longer than the
route's MTU.

A netns as a node: the pod's lxc0, an ``eth0`` with the next hop 172.30.0.2 as a permanent
neighbour, a route to another node's pod CIDR through it (MTU 1000, locked). cil_from_container
runs by BPF_PROG_TEST_RUN on one CPU (the cache is per CPU) on packets from the pod to a pod of
that CIDR (an ipcache entry IPCACHE_F_REMOTE, the native routing CIDR, DP_F_FIB_MAIN_V4: the
direct lookup); its output frame's destination MAC says which neighbour answered.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, ip_network
from itertools import count
from pathlib import Path

import pytest

from ciliary.datapath.libbpf import BPFObject, TestRun, prog_test_run_skb
from ciliary.datapath.maps import EP_F_READY, ConfigMap, EndpointMap, IPCacheMap
from ciliary.datapath.maps.config import DP_F_FIB_MAIN_V4, MONITOR_AGG_MEDIUM
from ciliary.datapath.maps.ipcache import IPCACHE_F_REMOTE, IPCACHE_REVISION_MAP
from ciliary.datapath.maps.nat import NAT_CONFIG_MAP, NATConfigMap
from ciliary.datapath.maps.revision import Revision

from .test_libbpf import DST_MAC, SRC_MAC, _checksum, in_netns

pytestmark = pytest.mark.privileged

TC_ACT_OK = 0
TC_ACT_REDIRECT = 7
ACK = 0x10
CLIENT, REMOTE = IPv4Address("10.200.1.2"), IPv4Address("10.200.9.5")
NEXT_HOP = "172.30.0.2"
MAC1, MAC2, MAC3 = "02:00:00:00:aa:01", "02:00:00:00:aa:02", "02:00:00:00:aa:03"
ROUTE_MTU = 1000
CACHE_SECONDS = 0.05  # FIB_CACHE_NS


def _frame(sport: int, payload: int = 0) -> bytes:
    """The pod's TCP segment to REMOTE:80 with ``payload`` bytes (the network header's length
    is what the FIB's MTU check compares)."""
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 1, 1, 5 << 4, ACK, 65535, 0, 0) + bytes(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, CLIENT.packed, REMOTE.packed
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return DST_MAC + SRC_MAC + b"\x08\x00" + ip + tcp


@pytest.fixture
def routed_node() -> Iterator[tuple[str, int]]:
    """The node netns (its name, lxc0's ifindex)."""
    name = f"cilt-{secrets.token_hex(4)}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", name, *args], check=True)

    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True)  # fmt: skip
        ip("link", "add", "lxc0", "type", "veth", "peer", "name", "peer0")
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "wire0")
        for dev in ("lxc0", "peer0", "eth0", "wire0"):
            ip("link", "set", dev, "up")
        ip("addr", "add", "172.30.0.1/24", "dev", "eth0")
        ip("neigh", "replace", NEXT_HOP, "lladdr", MAC1, "dev", "eth0", "nud", "permanent")
        ip("route", "add", "10.200.9.0/24", "via", NEXT_HOP, "dev", "eth0",
           "mtu", "lock", str(ROUTE_MTU))  # fmt: skip
        yield name, in_netns(name, lambda: socket.if_nametoindex("lxc0"))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_forwarding_answers_are_cached_briefly_and_only_for_direct_lookups(
    node: tuple[BPFObject, Path], routed_node: tuple[str, int]
) -> None:
    obj, _ = node
    ns, lxc = routed_node
    prog = obj.program_fd("cil_from_container")
    cpu = min(os.sched_getaffinity(0))
    ports = count(42000)
    with (
        obj.map("ciliary_lxc") as eps, obj.map("ciliary_ipcache") as ipcache,
        obj.map(IPCACHE_REVISION_MAP) as ipcache_rev, obj.map("ciliary_config") as config,
        obj.map(NAT_CONFIG_MAP) as nat,
    ):  # fmt: skip
        EndpointMap(eps).upsert(CLIENT, ifindex=lxc, sec_id=1234, ep_id=7, flags=EP_F_READY,
                                mac="02:aa:bb:cc:dd:01", node_mac="02:aa:bb:cc:dd:02")  # fmt: skip
        IPCacheMap(ipcache, Revision(ipcache_rev)).upsert(
            ip_network(f"{REMOTE}/32"), 5678, flags=IPCACHE_F_REMOTE
        )
        NATConfigMap(nat).set(None, None, native_v4=IPv4Network("10.200.0.0/16"))
        cfg = ConfigMap(config)
        cfg.set(MONITOR_AGG_MEDIUM, 5 * 10**9, DP_F_FIB_MAIN_V4)  # a written config: native

        def send(payload: int = 0) -> TestRun:
            frame = _frame(next(ports), payload)

            def run() -> TestRun:
                os.sched_setaffinity(0, {cpu})  # in_netns's thread: the cache is per CPU
                return prog_test_run_skb(prog, frame, ifindex=lxc)

            return in_netns(ns, run)

        def next_hop_mac() -> str:
            out = send()
            assert out.retval == TC_ACT_REDIRECT
            return out.data[:6].hex(":")

        def neighbour(mac: str) -> None:
            subprocess.run(["ip", "-n", ns, "neigh", "replace", NEXT_HOP, "lladdr", mac, "dev",
                            "eth0", "nud", "permanent"], check=True)  # fmt: skip

        assert next_hop_mac() == MAC1
        # the neighbour's new address: the cached answer still holds, for at most 50 ms
        neighbour(MAC2)
        start = time.monotonic()
        seen = next_hop_mac()
        if time.monotonic() - start < CACHE_SECONDS / 2:
            assert seen == MAC1
        time.sleep(CACHE_SECONDS + 0.02)
        assert next_hop_mac() == MAC2

        # longer than the route's MTU: not the cached answer's to give; the FIB says "too big"
        # and the stack takes the packet (its ICMP "fragmentation needed")
        assert next_hop_mac() == MAC2  # cached, for short packets
        assert send(payload=ROUTE_MTU).retval == TC_ACT_OK
        assert send(payload=ROUTE_MTU - 100).retval == TC_ACT_REDIRECT

        # the full lookup (the rules may matter: no DP_F_FIB_MAIN_V4) is never cached
        cfg.set_flags(0)
        neighbour(MAC3)
        assert next_hop_mac() == MAC3
