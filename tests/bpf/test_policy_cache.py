"""The policy verdict an established connection's conntrack entry holds (bpf/lib/policy.h).

An established packet whose connection passed policy at the node's current policy revision, with
the same identities, is not checked again; every policy write raises the revision
(``datapath/maps/policy.py``), so a change still reaches open connections at their next packet.
cil_from_container runs by BPF_PROG_TEST_RUN on crafted segments between two local endpoints
(the receiver's ingress policy: lib/deliver.h), in a netns holding their lxc devices.
"""

from __future__ import annotations

from ipaddress import IPv4Address, ip_network
from pathlib import Path

import pytest

from ciliary.datapath.libbpf import BPFObject, Map, prog_test_run_skb
from ciliary.datapath.maps import EP_F_READY, ConfigMap, CTMap, EndpointMap, IPCacheMap
from ciliary.datapath.maps.config import MONITOR_AGG_MEDIUM
from ciliary.datapath.maps.policy import (
    REVISION_MAP,
    EndpointPolicyMap,
    PolicyKey,
    PolicyMaps,
    PolicyRevision,
    PolicyValue,
)

from .test_libbpf import in_netns, tcp_frame

pytestmark = pytest.mark.privileged

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
SYN, ACK = 0x02, 0x10
CLIENT, SERVER = IPv4Address("10.99.0.2"), IPv4Address("10.99.0.1")
CLIENT_ID, SERVER_ID, OTHER_ID = 1234, 5678, 9999
CLIENT_EP, SERVER_EP = 7, 8
ALLOW = PolicyValue(deny=False, cookie=0)
CLIENT_ON_80 = PolicyKey(CLIENT_ID, False, 6, 80, 16)


def _test_run(prog_fd: int, frame: bytes, ifindex: int) -> int:
    """One run of the program on ``frame`` arriving on ``ifindex``; its return value."""
    return prog_test_run_skb(prog_fd, frame, ifindex=ifindex).retval


def test_a_policy_write_reaches_established_connections_whose_verdict_conntrack_holds(
    node: tuple[BPFObject, Path], two_lxc: tuple[str, int, int]
) -> None:
    obj, pin_dir = node
    ns, client_if, server_if = two_lxc
    prog = obj.program_fd("cil_from_container")
    with (
        obj.map("ciliary_lxc") as lxc, obj.map("ciliary_ipcache") as ipcache,
        obj.map("ciliary_config") as config, obj.map("ciliary_ct") as ctmap,
        obj.map("ciliary_policy") as outer, obj.map(REVISION_MAP) as rev_map,
    ):  # fmt: skip
        eps = EndpointMap(lxc)
        for addr, ifindex, sec_id, ep_id in (
            (CLIENT, client_if, CLIENT_ID, CLIENT_EP), (SERVER, server_if, SERVER_ID, SERVER_EP)
        ):  # fmt: skip
            eps.upsert(addr, ifindex=ifindex, sec_id=sec_id, ep_id=ep_id, flags=EP_F_READY,
                       mac="02:aa:bb:cc:dd:01", node_mac="02:aa:bb:cc:dd:02")  # fmt: skip
            IPCacheMap(ipcache).upsert(ip_network(f"{addr}/32"), sec_id)
        ConfigMap(config).set(MONITOR_AGG_MEDIUM, 0)
        revision = PolicyRevision(rev_map)
        maps = PolicyMaps(outer, pin_dir, revision)
        maps.ensure(SERVER_EP, {CLIENT_ON_80: ALLOW})  # the server admits the client on 80
        assert revision.current() > 0

        def run(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, flags: int) -> int:
            ifindex = client_if if src == CLIENT else server_if
            frame = tcp_frame(src, dst, sport, dport, flags)
            return in_netns(ns, lambda: _test_run(prog, frame, ifindex))

        def request(sport: int) -> int:
            return run(CLIENT, SERVER, sport, 80, ACK)

        def counted() -> int:
            (rec,) = [r for r in EndpointPolicyMap(maps.get(SERVER_EP).map).items()]  # type: ignore[union-attr]
            return rec.packets

        def connect(sport: int) -> None:
            assert run(CLIENT, SERVER, sport, 80, SYN) == TC_ACT_REDIRECT
            assert run(SERVER, CLIENT, 80, sport, SYN | ACK) == TC_ACT_REDIRECT
            assert request(sport) == TC_ACT_REDIRECT

        # the verdict is held: established requests pass without a policy lookup (the allow
        # entry counts the packets that were checked: the SYN only)
        connect(40001)
        checked = counted()
        assert [request(40001) for _ in range(3)] == [TC_ACT_REDIRECT] * 3
        assert counted() == checked
        (entry,) = [r for r in CTMap(ctmap).items() if r.sport == 40001]
        assert entry.flags & 0x4  # CT_F_REPLY_SEEN: established

        # a write that does not raise the revision (breaking the contract) is not seen by the
        # held verdict: the revision is what carries a change to open connections
        EndpointPolicyMap(maps.get(SERVER_EP).map).delete(CLIENT_ON_80)  # type: ignore[union-attr]
        assert request(40001) == TC_ACT_REDIRECT
        maps.get(SERVER_EP).upsert(CLIENT_ON_80, ALLOW)  # type: ignore[union-attr]

        # the agent's write (the allow removed) reaches the open connection at its next packet
        maps.get(SERVER_EP).apply({})  # type: ignore[union-attr]
        assert request(40001) == TC_ACT_SHOT
        maps.get(SERVER_EP).apply({CLIENT_ON_80: ALLOW})  # type: ignore[union-attr]
        assert request(40001) == TC_ACT_REDIRECT

        # the sender's egress enforced from now on (its map linked, nothing allowed): dropped
        connect(40002)
        maps.ensure(CLIENT_EP, {})
        assert request(40002) == TC_ACT_SHOT
        maps.remove(CLIENT_EP)
        assert request(40002) == TC_ACT_REDIRECT

        # the client's identity changed (no policy write): checked again, and denied
        connect(40003)
        eps.upsert(CLIENT, ifindex=client_if, sec_id=OTHER_ID, ep_id=CLIENT_EP, flags=EP_F_READY,
                   mac="02:aa:bb:cc:dd:01", node_mac="02:aa:bb:cc:dd:02")  # fmt: skip
        assert request(40003) == TC_ACT_SHOT


def test_the_revision_is_raised_by_every_write_and_never_is_zero(
    node: tuple[BPFObject, Path],
) -> None:
    obj, pin_dir = node
    with obj.map(REVISION_MAP) as rev_map, obj.map("ciliary_policy") as outer:
        revision = PolicyRevision(rev_map)
        assert revision.current() == 0
        maps = PolicyMaps(outer, pin_dir, revision)
        inner = maps.ensure(SERVER_EP, {CLIENT_ON_80: ALLOW})
        seen = revision.current()
        inner.apply({CLIENT_ON_80: ALLOW})  # nothing differs: nothing written, not raised
        assert revision.current() == seen
        inner.apply({})
        assert revision.current() == seen + 1
        maps.remove(SERVER_EP)
        assert revision.current() == seen + 2
        # another process's handle on the pinned map raises the same revision
        maps.ensure(SERVER_EP, {})
        pinned = EndpointPolicyMap.from_pin(pin_dir / f"ciliary_policy_{SERVER_EP}")
        try:
            before = revision.current()
            pinned.upsert(CLIENT_ON_80, ALLOW)
            assert revision.current() == before + 1
        finally:
            pinned.close()
        rev_map.update((0).to_bytes(4, "little"), (0x3FFFFFFF).to_bytes(4, "little"))
        assert revision.bump() == 1  # wraps past 0
    with Map.from_pin(pin_dir / REVISION_MAP) as m:
        assert PolicyRevision(m).current() == 1


def test_the_stack_delivered_path_holds_and_drops_the_verdict_alike(
    node: tuple[BPFObject, Path], two_lxc: tuple[str, int, int]
) -> None:
    """cil_to_container (tc egress of the server's lxc: what the node stack delivers to the pod)
    keeps the receiver's ingress verdict in the entry too, and a policy write reaches it."""
    obj, pin_dir = node
    ns, _, server_if = two_lxc
    prog = obj.program_fd("cil_to_container")
    host, host_id = IPv4Address("10.99.1.7"), 4242
    from_host = PolicyKey(host_id, False, 6, 80, 16)
    with (
        obj.map("ciliary_lxc") as lxc, obj.map("ciliary_ipcache") as ipcache,
        obj.map("ciliary_config") as config, obj.map("ciliary_policy") as outer,
        obj.map(REVISION_MAP) as rev_map,
    ):  # fmt: skip
        EndpointMap(lxc).upsert(SERVER, ifindex=server_if, sec_id=SERVER_ID, ep_id=SERVER_EP,
                                flags=EP_F_READY, mac="02:aa:bb:cc:dd:01",
                                node_mac="02:aa:bb:cc:dd:02")  # fmt: skip
        IPCacheMap(ipcache).upsert(ip_network(f"{host}/32"), host_id)
        ConfigMap(config).set(MONITOR_AGG_MEDIUM, 0)
        maps = PolicyMaps(outer, pin_dir, PolicyRevision(rev_map))
        inner = maps.ensure(SERVER_EP, {from_host: ALLOW})

        def send(flags: int) -> int:
            frame = tcp_frame(host, SERVER, 40010, 80, flags)
            return in_netns(ns, lambda: _test_run(prog, frame, server_if))

        def counted() -> int:
            (rec,) = EndpointPolicyMap(inner.map).items()
            return rec.packets

        assert send(SYN) == TC_ACT_OK
        assert send(ACK) == TC_ACT_OK
        checked = counted()
        assert [send(ACK) for _ in range(3)] == [TC_ACT_OK] * 3
        assert counted() == checked  # held: not looked up
        inner.apply({})
        assert send(ACK) == TC_ACT_SHOT
