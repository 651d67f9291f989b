"""Socket-LB in the kernel (bpf/bpf_sock.c through datapath/socketlb.py): with the programs on a
cgroup, a process of that cgroup (in a network namespace of its own, where the ClusterIP has no
route at all) reaches a Service's backend by connect() and by unconnected UDP sendto(), and sees
the ClusterIP as its peer (getpeername, recvfrom); a frontend without backends refuses with
EHOSTUNREACH; an agent restarted over the pins replaces the programs inside the same links; once
detached (--bpf-lb-sock=false) the ClusterIP is unreachable again: the translation was the
programs'."""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.agent.config import MONITOR_AGGREGATION
from ciliary.agent.services import ServiceManager, desired_frontends
from ciliary.core.models import BackendInfo, L4Addr, ServiceInfo, ServicePortInfo
from ciliary.datapath import socketlb
from ciliary.datapath.libbpf import Map, RingBuffer
from ciliary.datapath.linux import cgroup
from ciliary.datapath.loader import PIN_ROOT, NodeDatapath, default_object_dir, remove_pins
from ciliary.datapath.maps.events import RawSockEvent, decode_event

VIP4, VIP6, EMPTY4 = "10.96.200.1", "fd00:10:96::c8", "10.96.200.2"

# Runs in the test's cgroup and a fresh netns (only lo): a server on the backend address, a
# client to the ClusterIP; prints what each side saw.
CLIENT = r"""
import json, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
out = {}
pairs = ((socket.AF_INET, sys.argv[1], "127.0.0.1"), (socket.AF_INET6, sys.argv[2], "::1"))
for fam, vip, be in pairs:
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.bind((be, 8080)); srv.listen()
    c = socket.create_connection((vip, 80), timeout=2)
    conn, seen = srv.accept()
    out[f"tcp{fam}"] = [list(c.getpeername()[:2]), list(seen[:2]), list(c.getsockname()[:2])]
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((be, 8080))
    cu = socket.socket(fam, socket.SOCK_DGRAM); cu.settimeout(2)
    cu.sendto(b"ping", (vip, 80))
    data, src = u.recvfrom(16)
    u.sendto(b"pong", src)
    reply, frm = cu.recvfrom(16)
    out[f"udp{fam}"] = [data.decode(), list(frm[:2]), reply.decode()]
try:
    socket.create_connection((sys.argv[3], 80), timeout=2)
    out["empty"] = "connected"
except OSError as err:
    out["empty"] = err.errno
print(json.dumps(out))
"""

PROBE = r"""
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
try:
    socket.create_connection((sys.argv[1], 80), timeout=2)
    print("connected")
except OSError as err:
    print(err.errno)
"""


def _svc(name: str, ips: list[str], backends: list[str]) -> ServiceInfo:
    return ServiceInfo(
        namespace="default",
        name=name,
        type="ClusterIP",
        cluster_ips=ips,
        ports=[
            ServicePortInfo(name="http", port=80, protocol="TCP"),
            ServicePortInfo(name="dns", port=80, protocol="UDP"),
        ],
        session_affinity="None",
        external_traffic_policy="Cluster",
        backends=[
            BackendInfo(
                address=a, ready=True, serving=True, terminating=False,
                ports={"http": L4Addr(protocol="TCP", port=8080),
                       "dns": L4Addr(protocol="UDP", port=8080)},
            )
            for a in backends
        ],
    )  # fmt: skip


@pytest.fixture
def node() -> Iterator[tuple[NodeDatapath, Path]]:
    """A loaded datapath (its own pins) with two services, and an empty cgroup."""
    token = secrets.token_hex(3)
    pin_dir = PIN_ROOT / f"socklb{token}"
    group = cgroup.create(f"ciliary-socklb-{token}")
    dp = NodeDatapath(default_object_dir() / "bpf_lxc.o", pin_dir, lb_max=1024)
    try:
        dp.load(programs=False)  # socket-LB loads its own object
        ServiceManager(dp.lb).sync(
            desired_frontends(
                [_svc("web", [VIP4, VIP6], ["127.0.0.1", "::1"]), _svc("none", [EMPTY4], [])]
            )
        )
        yield dp, group
    finally:
        dp.close()
        cgroup.kill_and_remove(group)
        remove_pins(pin_dir)


def _run(group: Path, script: str, *args: str) -> str:
    """``script`` as a process of ``group`` in a netns of its own."""
    argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs")]
    argv += ["unshare", "--net", sys.executable, "-c", script, *args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_connect_sendmsg_recvmsg_getpeername_translated(node: tuple[NodeDatapath, Path]) -> None:
    dp, group = node
    dp.attach_socket_lb(group)
    dp.attach_socket_lb(group)  # a restarted agent: the same links get the new programs
    assert socketlb.attached(dp.pin_dir) == dict.fromkeys(socketlb.PROGRAMS, group.stat().st_ino)
    out = json.loads(_run(group, CLIENT, VIP4, VIP6, EMPTY4))
    # TCP: the client's peer is the ClusterIP, the server sees the client's own address
    peer, seen, local = out["tcp2"]
    assert peer == [VIP4, 80]
    assert seen == local and seen[0] == "127.0.0.1"
    peer6, seen6, local6 = out["tcp10"]
    assert peer6 == [VIP6, 80]
    assert seen6 == local6 and seen6[0] == "::1"
    # unconnected UDP: translated per datagram, the reply reads as from the ClusterIP
    assert out["udp2"] == ["ping", [VIP4, 80], "pong"]
    assert out["udp10"] == ["ping", [VIP6, 80], "pong"]
    assert out["empty"] == 113  # EHOSTUNREACH: a frontend without backends
    # detached (--bpf-lb-sock=false): no translation, the ClusterIP has no route here
    assert dp.detach_socket_lb()
    assert socketlb.attached(dp.pin_dir) == {}
    assert _run(group, PROBE, VIP4) == "101"  # ENETUNREACH
    assert not dp.detach_socket_lb()


def test_a_link_on_another_cgroup_is_replaced(node: tuple[NodeDatapath, Path]) -> None:
    dp, group = node
    other = cgroup.create(f"{group.name}-other")
    try:
        dp.attach_socket_lb(other)
        assert set(socketlb.attached(dp.pin_dir).values()) == {other.stat().st_ino}
        dp.attach_socket_lb(group)  # the flag now names another cgroup
        assert set(socketlb.attached(dp.pin_dir).values()) == {group.stat().st_ino}
        assert _run(other, PROBE, VIP4) == "101"  # the old cgroup is no longer translated
        assert _run(group, PROBE, VIP4) == "111"  # translated: no server, ECONNREFUSED
    finally:
        dp.detach_socket_lb()
        cgroup.kill_and_remove(other)


# Runs in the test's cgroup and a fresh netns (a pod): a TCP server on each backend address,
# then rounds of connects to the ClusterIP, each accepted by whichever server the socket was
# sent to; one JSON line per round (the backend of each connect), a round per line of stdin.
ROUNDS = r"""
import json, select, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
vip, n, backends = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
servers = {}
for be in backends:
    s = socket.socket(); s.bind((be, 8080)); s.listen(128); servers[s] = be
for _ in sys.stdin:
    seen = []
    for _ in range(n):
        c = socket.create_connection((vip, 80), timeout=2)
        ready, _w, _x = select.select(list(servers), [], [], 2)
        conn, _addr = ready[0].accept()
        seen.append(servers[ready[0]])
        conn.close(); c.close()
    print(json.dumps(seen), flush=True)
"""

BACKENDS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def _affinity_svc(
    terminating: frozenset[str] = frozenset(), affinity: bool = True, timeout: int = 600
) -> ServiceInfo:
    return ServiceInfo(
        namespace="default", name="sticky", type="ClusterIP", cluster_ips=[VIP4],
        ports=[ServicePortInfo(name="http", port=80, protocol="TCP")],
        session_affinity="ClientIP" if affinity else "None", session_affinity_timeout=timeout,
        external_traffic_policy="Cluster",
        backends=[
            BackendInfo(
                address=a, ready=a not in terminating, serving=True,
                terminating=a in terminating, ports={"http": L4Addr(protocol="TCP", port=8080)},
            )
            for a in BACKENDS
        ],
    )  # fmt: skip


@pytest.fixture
def sticky() -> Iterator[tuple[ServiceManager, Path]]:
    """Socket-LB on an empty cgroup over a loaded datapath (its own pins) whose services the
    test syncs."""
    token = secrets.token_hex(3)
    pin_dir = PIN_ROOT / f"socklb{token}"
    group = cgroup.create(f"ciliary-socklb-{token}")
    dp = NodeDatapath(default_object_dir() / "bpf_lxc.o", pin_dir, lb_max=1024)
    try:
        dp.load(programs=False)  # socket-LB loads its own object
        dp.attach_socket_lb(group)
        yield ServiceManager(dp.lb), group
    finally:
        dp.detach_socket_lb()
        dp.close()
        cgroup.kill_and_remove(group)
        remove_pins(pin_dir)


class _Pod:
    """A process of the cgroup in a netns of its own (a pod), running ROUNDS."""

    def __init__(self, group: Path, n: int) -> None:
        argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs")]
        argv += ["unshare", "--net", sys.executable, "-c", ROUNDS, VIP4, str(n), ",".join(BACKENDS)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def round(self) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the pod's process ended: {self.proc.wait(timeout=5)}"
        return list(json.loads(line))

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        assert code == 0


def test_affinity_is_per_network_namespace(sticky: tuple[ServiceManager, Path]) -> None:
    """sessionAffinity ClientIP in socket-LB: 100 connects from one pod (netns) land on one
    backend; other pods have their own (not all the same one); a pod's backend that starts
    terminating is not chosen again, the pod sticks to its next one instead."""
    manager, group = sticky
    manager.sync(desired_frontends([_affinity_svc()]))
    pod = _Pod(group, 100)
    try:
        first = pod.round()
        assert len(first) == 100 and len(set(first)) == 1, first
        others = []
        for _ in range(11):
            other = _Pod(group, 3)
            try:
                seen = other.round()
            finally:
                other.close()
            assert len(set(seen)) == 1, seen  # each pod sticks to its own backend
            others.append(seen[0])
        # 12 pods each given a random one of 3 backends: all on one has p = 3**-11
        assert len({first[0], *others}) > 1, (first[0], others)

        manager.sync(desired_frontends([_affinity_svc(terminating=frozenset({first[0]}))]))
        again = pod.round()
        assert first[0] not in again and len(set(again)) == 1, (first[0], again)
    finally:
        pod.close()


def test_affinity_holds_until_the_timeout(sticky: tuple[ServiceManager, Path]) -> None:
    """#14's Must-hold on the socket-LB path: 100 connections from one client (pod) land on one
    backend until the timeout (timeoutSeconds 1 here): each round's 100 connects, the first
    over a second after the previous round's last, stick to one backend; once the timeout has
    passed a round may get another one (each round: 2 chances in 3), and one does."""
    manager, group = sticky
    manager.sync(desired_frontends([_affinity_svc(timeout=1)]))
    pod = _Pod(group, 100)
    try:
        rounds = [pod.round()]
        while len({r[0] for r in rounds}) == 1 and len(rounds) < 13:
            time.sleep(1.2)  # the affinity entry expires (last used over 1 s ago)
            rounds.append(pod.round())
    finally:
        pod.close()
    assert all(len(r) == 100 and len(set(r)) == 1 for r in rounds), rounds
    assert len({r[0] for r in rounds}) > 1, f"{len(rounds)} rounds all on {rounds[0][0]}"


def test_terminating_backends_are_never_chosen(sticky: tuple[ServiceManager, Path]) -> None:
    """Without affinity: new connections spread over the active backends (random slots), a
    terminating backend (kept for its established connections) gets none of 100."""
    manager, group = sticky
    manager.sync(desired_frontends([_affinity_svc(frozenset({"127.0.0.2"}), affinity=False)]))
    pod = _Pod(group, 100)
    try:
        seen = pod.round()
    finally:
        pod.close()
    assert set(seen) == {"127.0.0.1", "127.0.0.3"}, seen


def _sock_records(dp: NodeDatapath, group: Path, script: str, *args: str) -> list[RawSockEvent]:
    """The trace-sock records ``script`` (run as _run does) makes the programs send."""
    records: list[bytes] = []
    with RingBuffer(dp.events_map.fd, records.append) as rb:
        rb.consume()
        records.clear()  # none of an earlier run
        _run(group, script, *args)
        rb.consume()
    return [e for e in map(decode_event, records) if isinstance(e, RawSockEvent)]


def test_translations_are_reported_as_trace_sock_records(node: tuple[NodeDatapath, Path]) -> None:
    """Monitor aggregation none: every translation point of every socket. A connect() to the
    ClusterIP: pre-xlate-fwd (the ClusterIP) and post-xlate-fwd (the backend), the socket's
    cookie, the process's cgroup; UDP sendmsg() and recvmsg()/getpeername() too."""
    dp, group = node
    dp.attach_socket_lb(group)
    dp.config.set(MONITOR_AGGREGATION["none"], 5_000_000_000)
    got = _sock_records(dp, group, PROBE, VIP4)
    points = [(e.xlate_point, str(e.dst), e.dport, e.l4_proto, e.family) for e in got]
    assert points == [(1, VIP4, 80, 1, 2), (2, "127.0.0.1", 8080, 1, 2)], got
    assert {e.cgroup_id for e in got} == {group.stat().st_ino}
    assert len({e.sock_cookie for e in got}) == 1 and got[0].sock_cookie
    every = _sock_records(dp, group, CLIENT, VIP4, VIP6, EMPTY4)
    udp = {(e.xlate_point, str(e.dst), e.dport) for e in every if e.l4_proto == 2}
    assert udp >= {(1, VIP4, 80), (2, "127.0.0.1", 8080), (3, "127.0.0.1", 8080), (4, VIP4, 80)}
    assert (4, VIP6, 80) in {(e.xlate_point, str(e.dst), e.dport) for e in every if e.family == 10}
    many = _sock_records(dp, group, CONNECTS, VIP4, "20")
    assert len(many) == 40 and len({e.sock_cookie for e in many}) == 20, many


# Runs as PROBE: `n` connect()s to the ClusterIP (refused: no server), each a new socket.
CONNECTS = r"""
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for _ in range(int(sys.argv[2])):
    try:
        socket.create_connection((sys.argv[1], 80), timeout=2).close()
    except OSError:
        pass
"""

# Runs as PROBE: an unconnected UDP datagram to the ClusterIP and its answer (sendmsg, recvmsg).
DATAGRAM = r"""
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 8080))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(2)
c.sendto(b"ping", (sys.argv[1], 80))
data, src = u.recvfrom(16)
u.sendto(b"pong", src)
assert c.recvfrom(16)[1][0] == sys.argv[1]
"""


def _socket_events_refused(dp: NodeDatapath) -> int:
    """The trace-sock bucket's refusals (lib/ratelimit.h: ciliary_ratelimit[3], struct
    ratelimit_value {last_topup, tokens, dropped})."""
    with Map.from_pin(dp.pin_dir / "ciliary_ratelimit") as m:
        raw = m.lookup(struct.pack("<I", 3))
    assert raw is not None
    return int(struct.unpack("<QQQ", raw)[2])


def test_medium_reports_one_connect_per_interval(node: tuple[NodeDatapath, Path]) -> None:
    """Monitor aggregation medium (the default), upstream's trace-sock rate limit: one token
    per report interval node-wide, taken once per connect(): 20 connect()s within the interval
    give one socket's pre- and post-xlate-fwd records and 19 refusals; a UDP sendmsg()/
    recvmsg() never reports (nor takes the token); once the interval has passed, the next
    connect() is reported again."""
    dp, group = node
    dp.attach_socket_lb(group)
    t0 = time.monotonic()
    got = _sock_records(dp, group, CONNECTS, VIP4, "20")  # the built-in default: medium, 5 s
    intervals = 1 + int((time.monotonic() - t0) / 5)  # a loaded machine may cross one
    assert len(got) == 2 * intervals <= 4, got
    assert [e.xlate_point for e in got] == [1, 2] * intervals, got
    assert got[0].sock_cookie == got[1].sock_cookie and (str(got[0].dst), str(got[1].dst)) == (
        VIP4, "127.0.0.1")  # fmt: skip
    assert _socket_events_refused(dp) == 20 - intervals
    interval_ns = 200_000_000
    dp.config.set(MONITOR_AGGREGATION["medium"], interval_ns)
    time.sleep(interval_ns / 1e9 * 1.5)  # the bucket holds a token again
    assert _sock_records(dp, group, DATAGRAM, VIP4) == []  # answered: translated both ways
    assert [e.xlate_point for e in _sock_records(dp, group, PROBE, VIP4)] == [1, 2]
