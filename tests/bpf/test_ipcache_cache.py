"""The per-CPU cache in front of the ipcache's trie (bpf/lib/ipcache.h) and its revision
(``ciliary_ipcache_rev``, raised by ``IPCacheMap`` after every write: datapath/maps/ipcache.py).

A pod's packets to an address outside the node take their destination's identity from the
ipcache; the sender's egress policy admits one identity. cil_from_container runs by
BPF_PROG_TEST_RUN on SYNs of new connections (no conntrack entry, no held verdict: each is
checked against policy with the identity the ipcache lookup gives), on one CPU: the cache is
per CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_network
from itertools import count
from pathlib import Path

import pytest

from ciliary.datapath.libbpf import BPFObject, Map, prog_test_run_skb
from ciliary.datapath.maps import EP_F_READY, ConfigMap, EndpointMap, IPCacheMap
from ciliary.datapath.maps.config import MONITOR_AGG_MEDIUM
from ciliary.datapath.maps.ipcache import IPCACHE_MAP, IPCACHE_REVISION_MAP
from ciliary.datapath.maps.policy import (
    REVISION_MAP,
    PolicyKey,
    PolicyMaps,
    PolicyRevision,
    PolicyValue,
)
from ciliary.datapath.maps.revision import Revision

from .test_libbpf import in_netns, tcp_frame

pytestmark = pytest.mark.privileged

TC_ACT_SHOT = 2
SYN = 0x02
CLIENT, REMOTE = IPv4Address("10.99.0.2"), IPv4Address("10.98.7.9")
CLIENT_ID, ALLOWED_ID, OTHER_ID = 1234, 4321, 9999
CLIENT_EP = 7
ALLOW = PolicyValue(deny=False, cookie=0)


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """This thread on one CPU while the test runs (the cache is per CPU)."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def test_the_cache_answers_until_the_revision_is_raised(
    node: tuple[BPFObject, Path], two_lxc: tuple[str, int, int], one_cpu: int
) -> None:
    obj, pin_dir = node
    ns, client_if, _ = two_lxc
    prog = obj.program_fd("cil_from_container")
    ports = count(41000)
    with (
        obj.map("ciliary_lxc") as lxc, obj.map(IPCACHE_MAP) as raw,
        obj.map(IPCACHE_REVISION_MAP) as rev_map, obj.map("ciliary_config") as config,
        obj.map("ciliary_policy") as outer, obj.map(REVISION_MAP) as policy_rev,
    ):  # fmt: skip
        EndpointMap(lxc).upsert(CLIENT, ifindex=client_if, sec_id=CLIENT_ID, ep_id=CLIENT_EP,
                                flags=EP_F_READY, mac="02:aa:bb:cc:dd:01",
                                node_mac="02:aa:bb:cc:dd:02")  # fmt: skip
        ConfigMap(config).set(MONITOR_AGG_MEDIUM, 0)
        # the client may send to ALLOWED_ID on port 80 only
        maps = PolicyMaps(outer, pin_dir, PolicyRevision(policy_rev))
        maps.ensure(CLIENT_EP, {PolicyKey(ALLOWED_ID, True, 6, 80, 16): ALLOW})
        revision = Revision(rev_map)
        agent = IPCacheMap(raw, revision)  # the agent's view: raises the revision
        reader = IPCacheMap(raw)  # a view without the revision (a reader's)

        def connect() -> int:
            """A new connection's SYN from the client to REMOTE:80: the program's verdict."""
            frame = tcp_frame(CLIENT, REMOTE, next(ports), 80, SYN)
            return in_netns(ns, lambda: _run_on(one_cpu, prog, frame, client_if))

        assert revision.current() == 0
        agent.upsert(ip_network(f"{REMOTE}/32"), ALLOWED_ID)
        first = revision.current()
        assert first > 0
        assert connect() != TC_ACT_SHOT
        assert connect() != TC_ACT_SHOT  # the cache's answer (same revision): the same

        # a write that does not raise the revision (breaking the contract) is not seen while
        # the CPU's slot holds the address: the revision is what carries a change
        reader.upsert(ip_network(f"{REMOTE}/32"), OTHER_ID)
        assert revision.current() == first
        assert connect() != TC_ACT_SHOT

        # the agent's write raises it: the next packet takes the trie's new answer
        agent.upsert(ip_network(f"{REMOTE}/32"), OTHER_ID)
        assert revision.current() == first + 1
        assert connect() == TC_ACT_SHOT
        assert connect() == TC_ACT_SHOT  # cached: still the other identity

        # deleted: nothing covers the address (world, not allowed); a negative answer is
        # cached and raised away the same way
        assert agent.delete(ip_network(f"{REMOTE}/32"))
        assert connect() == TC_ACT_SHOT
        agent.upsert(ip_network("10.98.0.0/16"), ALLOWED_ID)  # a covering prefix
        assert connect() != TC_ACT_SHOT
        assert revision.current() == first + 3

        # a revision at 0 (no writer keeps it) caches nothing: every lookup is the trie's
        rev_map.update((0).to_bytes(4, "little"), (0).to_bytes(4, "little"))
        reader.upsert(ip_network("10.98.0.0/16"), OTHER_ID)
        assert connect() == TC_ACT_SHOT
        reader.upsert(ip_network("10.98.0.0/16"), ALLOWED_ID)
        assert connect() != TC_ACT_SHOT


def _run_on(cpu: int, prog: int, frame: bytes, ifindex: int) -> int:
    """One test run on ``cpu`` (this thread pinned to it: in_netns's thread is another)."""
    os.sched_setaffinity(0, {cpu})
    return prog_test_run_skb(prog, frame, ifindex=ifindex).retval


def test_revision_is_raised_never_to_zero_and_read_back(
    node: tuple[BPFObject, Path],
) -> None:
    obj, _ = node
    with obj.map(IPCACHE_REVISION_MAP) as rev_map:
        first, second = Revision(rev_map), Revision(rev_map)
        assert first.current() == 0
        assert first.bump() == 1
        assert second.bump() == 2  # another writer continues from what the map holds
        rev_map.update((0).to_bytes(4, "little"), (0xFFFFFFFF).to_bytes(4, "little"))
        assert first.bump() == 1  # wraps past 0: 0 means "cache nothing"
        assert Revision(rev_map, 0x3).bump() == 2
        rev_map.update((0).to_bytes(4, "little"), (3).to_bytes(4, "little"))
        assert Revision(rev_map, 0x3).bump() == 1  # within the mask, never 0


def test_from_pin_raises_the_pinned_revision(node: tuple[BPFObject, Path]) -> None:
    """A benchmark's or a test's writes to a node's pinned ipcache raise its revision too."""
    _, pin_dir = node
    view = IPCacheMap.from_pin(pin_dir)
    try:
        view.upsert(ip_network("10.97.0.0/16"), ALLOWED_ID)
        assert view.lookup(IPv4Address("10.97.1.1")) == ALLOWED_ID
        assert view.delete(ip_network("10.97.0.0/16"))
    finally:
        view.close()
    with Map.from_pin(pin_dir / IPCACHE_REVISION_MAP) as rev_map:
        assert Revision(rev_map).current() == 2
