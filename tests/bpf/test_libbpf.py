"""ciliary.datapath.libbpf and the typed map views against the real kernel.

Every test loads bpf/bpf_lxc.o with its maps pinned in a fresh /sys/fs/bpf/ciliary-test-<random>
directory, and all traffic happens between the two ends of a veth pair inside a fresh network
namespace ``cilt-<random>``; both are removed by the fixtures, also on failure.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import netns as pyroute2_netns

from ciliary.datapath import libbpf
from ciliary.datapath.libbpf import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_RINGBUF,
    BPF_NOEXIST,
    BPFError,
    BPFExistsError,
    BPFInvalidError,
    BPFNoSpaceError,
    BPFNotFoundError,
    BPFObject,
    BPFVerifierError,
    Map,
    RingBuffer,
    num_possible_cpus,
    obj_pin,
    prog_from_pin,
    prog_test_run_skb,
    tc_attach,
    tc_detach,
    tc_hook_destroy,
    tc_query,
    tcx_attach,
    tcx_attached,
    tcx_detach,
    tcx_programs,
    tcx_query,
)
from ciliary.datapath.maps import (
    EP_F_READY,
    ConfigMap,
    CTEntryC,
    CTKeyC,
    CTMap,
    EndpointMap,
    EventsLostMap,
    IPCacheMap,
    decode_trace_event,
)
from ciliary.datapath.maps.config import (
    MONITOR_AGG_MEDIUM,
    MONITOR_AGG_NONE,
    ROUTING_MODE_NATIVE,
    ROUTING_MODE_TUNNEL,
)
from ciliary.datapath.maps.endpoints import encode_addr

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[2]
LXC_OBJECT = REPO / "bpf" / "bpf_lxc.o"
BPFFS = Path("/sys/fs/bpf")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lxc_object() -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], check=True)
    return LXC_OBJECT


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = BPFFS / f"ciliary-test-{secrets.token_hex(6)}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loaded(lxc_object: Path, pin_dir: Path) -> Iterator[BPFObject]:
    with BPFObject.open(lxc_object, pin_dir=pin_dir) as obj:
        obj.load()
        yield obj


@pytest.fixture
def maps_loaded(lxc_object: Path, pin_dir: Path) -> Iterator[BPFObject]:
    """The object's maps without its programs (the verifier's seconds), for map tests."""
    with BPFObject.open(lxc_object, pin_dir=pin_dir) as obj:
        obj.load(programs=False)
        yield obj


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh netns holding the veth pair lxc0 <-> peer0, both up, no addresses."""
    name = f"cilt-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "add", "name", "lxc0", "type", "veth", "peer", "name", "peer0")
        _ip("-n", name, "link", "set", "dev", "lxc0", "up")
        _ip("-n", name, "link", "set", "dev", "peer0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Runs ``fn`` in a new thread that entered netns ``name`` (setns is per thread)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            pyroute2_netns.setns(name, flags=0)
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, name=f"in-{name}")
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "netns thread hung"
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


SRC_MAC = bytes.fromhex("02aabbccdd01")
DST_MAC = bytes.fromhex("02aabbccdd02")


def udp_frame(src: IPv4Address, dst: IPv4Address, sport: int, dport: int) -> bytes:
    payload = b"ciliary-test-payload-0123456789!"
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src.packed, dst.packed
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return DST_MAC + SRC_MAC + b"\x08\x00" + ip + udp


def tcp_frame(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, flags: int) -> bytes:
    """A 20-byte TCP segment without payload (the datapath does not check L4 checksums)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src.packed, dst.packed
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return DST_MAC + SRC_MAC + b"\x08\x00" + ip + tcp


def send_frame(ifname: str, frame: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        s.send(frame)


def attach_from_container(ns: str, obj: BPFObject) -> int:
    """Attaches cil_from_container on lxc0 ingress (packets peer0 sends); returns lxc0's ifindex."""
    prog = obj.program_fd("cil_from_container")

    def attach() -> int:
        ifindex = socket.if_nametoindex("lxc0")
        tc_attach(ifindex, prog, "ingress")
        return ifindex

    return in_netns(ns, attach)


def poll_until(rb: RingBuffer, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "no matching ring buffer record"
        rb.poll(100)


# ---------------------------------------------------------------------------------------------
# library, object, map metadata
# ---------------------------------------------------------------------------------------------


def test_library_facts() -> None:
    major, minor = (int(p) for p in libbpf.libbpf_version().split("."))
    assert (major, minor) >= (1, 0)
    possible = Path("/sys/devices/system/cpu/possible").read_text().strip()
    last = int(possible.split(",")[-1].split("-")[-1])
    assert num_possible_cpus() == last + 1
    # struct bpf_tc_hook / bpf_tc_opts end in `size_t :0`: padded to 8 bytes on LP64
    assert ctypes.sizeof(libbpf._TcHook) == 24
    assert ctypes.sizeof(libbpf._TcOpts) == 32


def test_object_lists_maps_and_programs(loaded: BPFObject, pin_dir: Path) -> None:
    names = {
        "ciliary_config",
        "ciliary_lxc",
        "ciliary_ipcache",
        "ciliary_ipcache_rev",  # lib/ipcache.h: the revision the agent raises on every write
        "ciliary_ipcache_cache",  # lib/ipcache.h: the per-CPU cache of the trie's answers
        "ciliary_ct",
        "ciliary_events",
        "ciliary_events_lost",
        "ciliary_policy",
        "ciliary_policy_rev",
        "ciliary_lb4_services",
        "ciliary_lb6_services",
        "ciliary_lb4_backends",
        "ciliary_lb6_backends",
        "ciliary_lb4_reverse_nat",
        "ciliary_lb6_reverse_nat",
        "ciliary_lb4_maglev",
        "ciliary_lb6_maglev",
        "ciliary_lb_maglev_config",
        "ciliary_lb4_affinity",
        "ciliary_lb6_affinity",
        "ciliary_lb_affinity_match",
        "ciliary_lb_source_range",
        "ciliary_lb_frontend_bits",
        "ciliary_lb_select_scratch",
        "ciliary_proxy_req",
        "ciliary_nat_config",  # lib/fib.h: the native routing CIDR of its table-direct lookup
        "ciliary_encap_scratch",  # lib/encap.h: encap_and_redirect's FIB lookup, off the stack
        "ciliary_fib_scratch",  # lib/fib.h: fib_redirect's FIB lookup, off the stack
        "ciliary_fib_cache",  # lib/fib.h: the FIB's recent answers, per CPU
        "ciliary_tunnel_direct",  # lib/encap.h: endpoints looked up in the main table alone
    }
    assert set(loaded.map_names()) == names
    assert sorted(loaded.program_names()) == ["cil_from_container", "cil_to_container"]
    assert {p.name for p in pin_dir.iterdir()} == names
    assert loaded.program_fd("cil_from_container") >= 0
    with pytest.raises(KeyError):
        loaded.map("nope")


def test_map_info(maps_loaded: BPFObject) -> None:
    expected = {
        "ciliary_config": (BPF_MAP_TYPE_ARRAY, 4, 24, 1, 0),
        "ciliary_lxc": (BPF_MAP_TYPE_HASH, 20, 24, 65536, 0),
        "ciliary_ipcache": (BPF_MAP_TYPE_LPM_TRIE, 24, 12, 512000, BPF_F_NO_PREALLOC),
        "ciliary_ipcache_rev": (BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0),
        "ciliary_ipcache_cache": (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 44, 256, 0),
        "ciliary_fib_cache": (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 48, 256, 0),
        "ciliary_ct": (BPF_MAP_TYPE_LRU_HASH, 40, 88, 65536, 0),
        "ciliary_events": (BPF_MAP_TYPE_RINGBUF, 0, 0, 8 * 1024 * 1024, 0),
        "ciliary_events_lost": (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, 0),
    }
    for name, (mtype, ks, vs, entries, flags) in expected.items():
        with maps_loaded.map(name) as m:
            info = m.info
            assert (info.type, info.key_size, info.value_size) == (mtype, ks, vs), name
            assert (info.max_entries, info.flags) == (entries, flags), name
            assert info.id > 0
            assert name.startswith(info.name)  # the kernel keeps 15 characters
            assert m.is_percpu == (mtype == BPF_MAP_TYPE_PERCPU_ARRAY)


def test_map_handles_are_independent_dups(maps_loaded: BPFObject) -> None:
    m = maps_loaded.map("ciliary_lxc")
    fd = m.fd
    with maps_loaded.map("ciliary_lxc") as other:
        assert other.fd != fd
        assert other.info.id == m.info.id
    m.close()
    m.close()  # idempotent
    assert m.closed
    with pytest.raises(ValueError, match="closed"):
        m.lookup(bytes(20))


# ---------------------------------------------------------------------------------------------
# map operations
# ---------------------------------------------------------------------------------------------


def test_endpoint_map(maps_loaded: BPFObject) -> None:
    with maps_loaded.map("ciliary_lxc") as raw:
        eps = EndpointMap(raw)
        v4, v6 = IPv4Address("10.0.0.5"), IPv6Address("fd00::5")
        eps.upsert(
            v4,
            ifindex=7,
            sec_id=1234,
            ep_id=42,
            flags=EP_F_READY,
            mac="02:00:00:00:00:05",
            node_mac="02:00:00:00:01:05",
        )
        eps.upsert(
            v6,
            ifindex=7,
            sec_id=1234,
            ep_id=42,
            flags=0,
            mac="02-00-00-00-00-05",
            node_mac="02:00:00:00:01:05",
        )

        rec = eps.get(v4)
        assert rec is not None
        assert (rec.addr, rec.ifindex, rec.sec_id, rec.ep_id) == (v4, 7, 1234, 42)
        assert (rec.mac, rec.node_mac, rec.ready) == (
            "02:00:00:00:00:05",
            "02:00:00:00:01:05",
            True,
        )
        rec6 = eps.get(v6)
        assert rec6 is not None and not rec6.ready
        assert {r.addr for r in eps.items()} == {v4, v6}
        assert eps.get(IPv4Address("10.0.0.6")) is None

        # the key layout the C builds: IPv4 in addr[0..4], rest zero, family 2
        key = v4.packed + bytes(12) + bytes([2, 0, 0, 0])
        assert raw.lookup(key) is not None
        assert set(raw.keys()) == {key, encode_addr(v6)[0] + bytes([10, 0, 0, 0])}
        assert raw.count() == 2
        assert dict(raw.items()) == dict(raw.lookup_batch(chunk=1))

        assert eps.delete(v4) is True
        assert eps.delete(v4) is False
        assert raw.delete_batch([key, encode_addr(v6)[0] + bytes([10, 0, 0, 0])]) == 1
        assert raw.count() == 0
        with pytest.raises(ValueError, match="MAC"):
            eps.upsert(
                v4, ifindex=1, sec_id=1, ep_id=1, flags=0, mac="zz", node_mac="02:00:00:00:00:01"
            )


def test_ipcache_longest_prefix_match(maps_loaded: BPFObject) -> None:
    with maps_loaded.map("ciliary_ipcache") as raw:
        ipc = IPCacheMap(raw)
        ipc.upsert(ip_network("10.0.0.0/8"), 100)
        ipc.upsert(ip_network("10.1.0.0/16"), 200, IPv4Address("192.168.1.7"))
        ipc.upsert(ip_network("10.1.2.3/32"), 300)
        ipc.upsert(ip_network("2001:db8::/32"), 400)
        ipc.upsert(ip_network("0.0.0.0/0"), 2)

        assert ipc.lookup(IPv4Address("10.1.2.3")) == 300
        assert ipc.lookup(IPv4Address("10.1.9.9")) == 200
        assert ipc.lookup(IPv4Address("10.200.0.1")) == 100
        assert ipc.lookup(IPv4Address("11.0.0.1")) == 2
        assert ipc.lookup(IPv6Address("2001:db8::1")) == 400
        # the family byte is part of every prefix: IPv4 /0 never covers IPv6
        assert ipc.lookup(IPv6Address("2001:db9::1")) is None

        records = {r.prefix: r for r in ipc.items()}
        assert set(records) == {
            ip_network("10.0.0.0/8"),
            ip_network("10.1.0.0/16"),
            ip_network("10.1.2.3/32"),
            ip_network("2001:db8::/32"),
            ip_network("0.0.0.0/0"),
        }
        assert records[ip_network("10.1.0.0/16")].tunnel_endpoint == IPv4Address("192.168.1.7")
        assert records[ip_network("10.1.0.0/16")].sec_id == 200
        assert records[ip_network("10.0.0.0/8")].tunnel_endpoint is None
        # tunnel_ep is stored in network byte order, as the address bytes
        key = struct.pack("=IB3x", 32 + 16, 2) + IPv4Address("10.1.0.0").packed + bytes(12)
        value = raw.lookup(key)
        assert value is not None and value[4:8] == IPv4Address("192.168.1.7").packed
        assert dict(raw.lookup_batch()) == {k: raw.lookup(k) for k in list(raw.keys())}

        assert ipc.delete(ip_network("10.1.2.3/32")) is True
        assert ipc.delete(ip_network("10.1.2.3/32")) is False
        assert ipc.lookup(IPv4Address("10.1.2.3")) == 200
        assert raw.count() == 4


def _ct_entry(src: str, dst: str, sport: int, expires_ns: int) -> tuple[bytes, bytes]:
    key = CTKeyC(sport=sport, dport=80, proto=6, family=2)
    key.saddr[:4] = IPv4Address(src).packed
    key.daddr[:4] = IPv4Address(dst).packed
    value = CTEntryC(
        created_ns=1,
        last_seen_ns=2,
        expires_ns=expires_ns,
        tx_packets=3,
        tx_bytes=300,
        rx_packets=4,
        rx_bytes=400,
        src_sec_id=11,
        dst_sec_id=22,
        tx_flags_seen=0x02,
        rx_flags_seen=0x12,
        flags=0x4,
    )
    return bytes(key), bytes(value)


def test_conntrack_items_gc_flush(maps_loaded: BPFObject) -> None:
    with maps_loaded.map("ciliary_ct") as raw:
        ct = CTMap(raw)
        now = time.monotonic_ns()
        for i in range(10):
            raw.update(*_ct_entry("10.0.0.1", "10.0.0.2", 1000 + i, now + (i - 4) * 10**9))

        records = sorted(ct.items(), key=lambda r: r.sport)
        assert len(records) == 10
        r = records[0]
        assert (r.family, r.proto, r.src, r.dst, r.sport, r.dport) == (
            2,
            6,
            IPv4Address("10.0.0.1"),
            IPv4Address("10.0.0.2"),
            1000,
            80,
        )
        assert (r.created_ns, r.last_seen_ns, r.expires_ns) == (1, 2, now - 4 * 10**9)
        assert (r.tx_packets, r.tx_bytes, r.rx_packets, r.rx_bytes) == (3, 300, 4, 400)
        assert (r.tx_flags_seen, r.rx_flags_seen, r.flags) == (0x02, 0x12, 0x4)
        assert (r.src_sec_id, r.dst_sec_id) == (11, 22)

        assert ct.gc(now) == 5  # expires_ns <= now: i = 0..4
        assert sorted(r.sport for r in ct.items()) == list(range(1005, 1010))
        assert ct.gc() == 0  # none of the rest expires within this test's runtime
        assert ct.flush() == 5
        assert ct.count() == 0


def test_conntrack_gc_reports_the_addresses_connections_use(maps_loaded: BPFObject) -> None:
    """The DNS cache keeps an expired answer's IP while a connection uses it: a GC pass
    reports both ends of the entries it keeps, none of those it deletes."""
    with maps_loaded.map("ciliary_ct") as raw:
        ct = CTMap(raw)
        now = time.monotonic_ns()
        raw.update(*_ct_entry("10.0.0.1", "192.0.2.7", 1, now + 60 * 10**9))
        raw.update(*_ct_entry("10.0.0.3", "192.0.2.9", 2, now - 1))
        in_use: set[IPv4Address | IPv6Address] = set()
        assert ct.gc(now, in_use) == 1
        assert in_use == {IPv4Address("10.0.0.1"), IPv4Address("192.0.2.7")}
        assert ct.flush() == 1


def test_config_map(maps_loaded: BPFObject) -> None:
    with maps_loaded.map("ciliary_config") as raw:
        cfg = ConfigMap(raw)
        assert cfg.get().monitor_aggregation == MONITOR_AGG_NONE  # array: zeroed, never absent
        cfg.set(MONITOR_AGG_MEDIUM, 5 * 10**9, flags=3)
        got = cfg.get()
        assert (got.monitor_aggregation, got.aggregation_interval_ns, got.flags) == (
            MONITOR_AGG_MEDIUM,
            5 * 10**9,
            3,
        )
        assert (got.routing_mode, got.tunnel_ifindex) == (ROUTING_MODE_NATIVE, 0)
        cfg.set(MONITOR_AGG_MEDIUM, 5 * 10**9, routing_mode=ROUTING_MODE_TUNNEL, tunnel_ifindex=9)
        assert (cfg.get().routing_mode, cfg.get().tunnel_ifindex) == (ROUTING_MODE_TUNNEL, 9)
        with pytest.raises(ValueError, match="ifindex"):
            cfg.set(MONITOR_AGG_MEDIUM, 5 * 10**9, routing_mode=ROUTING_MODE_TUNNEL)
        assert raw.count() == 1


def test_percpu_map(maps_loaded: BPFObject) -> None:
    ncpus = num_possible_cpus()
    with maps_loaded.map("ciliary_events_lost") as raw:
        assert raw.value_buffer_size == 8 * ncpus
        lost = EventsLostMap(raw)
        assert lost.total() == 0
        raw.update_percpu(bytes(4), [(cpu + 1).to_bytes(8, "little") for cpu in range(ncpus)])
        assert lost.per_cpu() == [cpu + 1 for cpu in range(ncpus)]
        assert lost.total() == ncpus * (ncpus + 1) // 2
        values = raw.lookup_percpu(bytes(4))
        assert values is not None and len(values) == ncpus and all(len(v) == 8 for v in values)
        with pytest.raises(BPFInvalidError):
            raw.update_percpu(bytes(4), [bytes(8)])  # one value per possible CPU
    with maps_loaded.map("ciliary_lxc") as hashmap, pytest.raises(TypeError):
        hashmap.lookup_percpu(bytes(20))


def test_typed_errors(maps_loaded: BPFObject, tmp_path: Path) -> None:
    with maps_loaded.map("ciliary_lxc") as raw:
        key, value = bytes(20), bytes(24)
        with pytest.raises(BPFInvalidError) as wrong_key:
            raw.update(bytes(19), value)
        assert wrong_key.value.errno == errno.EINVAL
        assert wrong_key.value.op == "bpf_map_update_elem"
        with pytest.raises(BPFInvalidError):
            raw.update(key, bytes(25))
        with pytest.raises(BPFInvalidError):
            raw.lookup(b"")
        with pytest.raises(BPFNotFoundError):
            raw.update(key, value, BPF_EXIST)
        raw.update(key, value, BPF_NOEXIST)
        with pytest.raises(BPFExistsError) as exists:
            raw.update(key, value, BPF_NOEXIST)
        assert isinstance(exists.value, OSError) and exists.value.errno == errno.EEXIST
        raw.update(key, value, BPF_ANY)
    with maps_loaded.map("ciliary_config") as array:
        with pytest.raises(BPFNoSpaceError):  # index beyond max_entries: E2BIG
            array.update((1).to_bytes(4, "little"), bytes(24))
        with pytest.raises(BPFInvalidError):  # array elements cannot be deleted
            array.delete_batch([bytes(4)])

    with pytest.raises(BPFNotFoundError) as missing:
        Map.from_pin(BPFFS / f"ciliary-test-missing-{secrets.token_hex(4)}")
    assert missing.value.op == "bpf_obj_get"

    garbage = tmp_path / "garbage.o"
    garbage.write_bytes(b"\x7fELF but not really" * 20)
    with pytest.raises(BPFError) as bad:
        BPFObject.open(garbage)
    assert bad.value.op == "bpf_object__open_file"
    assert "garbage.o" in str(bad.value)

    with pytest.raises(BPFNotFoundError):
        BPFObject.open(tmp_path / "absent.o")


def test_object_use_before_load_and_after_close(lxc_object: Path) -> None:
    obj = BPFObject.open(lxc_object)
    assert not obj.loaded
    with pytest.raises(BPFInvalidError, match="not loaded"):
        obj.map("ciliary_lxc")
    with pytest.raises(BPFInvalidError, match="not loaded"):
        obj.program_fd("cil_from_container")
    obj.close()
    obj.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        obj.map("ciliary_lxc")


def test_maps_only_load_makes_every_map_and_no_program(lxc_object: Path, pin_dir: Path) -> None:
    with BPFObject.open(lxc_object, pin_dir=pin_dir) as obj:
        obj.load(programs=False)
        assert obj.loaded
        assert {p.name for p in pin_dir.iterdir()} == {
            n for n in obj.map_names() if not n.startswith(".")
        }
        with obj.map("ciliary_lxc") as m:
            assert m.info.max_entries == 65536
        with pytest.raises(BPFInvalidError, match="without programs"):
            obj.program_fd("cil_from_container")
        with pytest.raises(BPFInvalidError, match="without programs"):
            obj.pin_program("cil_from_container", pin_dir / "prog")
    with BPFObject.open(lxc_object, pin_dir=pin_dir) as again:  # the same object, whole
        again.load()
        assert again.program_fd("cil_from_container") >= 0


def test_prog_test_run_skb_runs_a_tc_program_on_a_frame(loaded: BPFObject) -> None:
    """BPF_PROG_TEST_RUN through libbpf: the verdict, the frame as the program left it, the
    kernel's time per repetition; a frame from a source no endpoint has is dropped untouched
    (anti-spoofing), however often it is run; a bad fd raises."""
    frame = tcp_frame(IPv4Address("10.98.0.1"), IPv4Address("10.98.0.2"), 1234, 80, 0x02)
    prog = loaded.program_fd("cil_from_container")
    once = prog_test_run_skb(prog, frame)
    assert (once.retval, once.data) == (2, frame)  # TC_ACT_SHOT, unchanged
    many = prog_test_run_skb(prog, frame, repeat=50)
    assert (many.retval, many.data) == (2, frame)
    assert 0 < many.duration_ns < 1_000_000
    with pytest.raises(BPFError):
        prog_test_run_skb(-1, frame)


def test_verifier_error_carries_log(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        'SEC("tc") int bad(struct __sk_buff *skb) { return *(int *)(long)skb->data; }\n'
        'char __license[] SEC("license") = "GPL";\n'
    )
    obj_path = tmp_path / "bad.o"
    arch_include = f"-I/usr/include/{os.uname().machine}-linux-gnu"
    clang = ["clang", "-target", "bpf", "-O2", "-g", arch_include]
    subprocess.run([*clang, "-c", str(src), "-o", str(obj_path)], check=True)
    with BPFObject.open(obj_path) as obj, pytest.raises(BPFVerifierError) as rejected:
        obj.load()
    err = rejected.value
    assert err.op == "bpf_object__load"
    assert err.errno == errno.EACCES
    assert "invalid access to packet" in err.verifier_log
    assert "processed" in err.verifier_log
    assert "prog 'bad'" in err.log


def test_batch_fallback_is_transparent(
    maps_loaded: BPFObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    with maps_loaded.map("ciliary_lxc") as raw:
        keys = [bytes([i]) + bytes(19) for i in range(1, 6)]
        for k in keys:
            raw.update(k, bytes(24))
        monkeypatch.setattr(libbpf._C, "bpf_map_lookup_batch", lambda *a: -libbpf.ENOTSUPP)
        monkeypatch.setattr(libbpf._C, "bpf_map_delete_batch", lambda *a: -errno.EOPNOTSUPP)
        assert sorted(k for k, _ in raw.items()) == keys
        assert raw.count() == 5
        assert raw.delete_batch([*keys[:2], bytes(20)]) == 2
        assert raw.count() == 3


def test_delete_batch_skips_absent_keys(maps_loaded: BPFObject) -> None:
    with maps_loaded.map("ciliary_lxc") as raw:
        keys = [bytes([i]) + bytes(19) for i in range(1, 101)]
        for k in keys[::2]:
            raw.update(k, bytes(24))
        assert raw.count() == 50
        assert raw.delete_batch(keys) == 50
        assert raw.count() == 0
        assert raw.delete_batch([]) == 0


def test_lookup_batch_grows_chunk_past_bucket_size(maps_loaded: BPFObject) -> None:
    with maps_loaded.map("ciliary_ct") as raw:
        for i in range(3000):
            raw.update(*_ct_entry("10.0.0.1", "10.0.0.2", i, 1))
        batch = raw.lookup_batch(chunk=1)
        assert len(batch) == 3000 == len({k for k, _ in batch})


# ---------------------------------------------------------------------------------------------
# pins
# ---------------------------------------------------------------------------------------------


def test_reopen_reuses_pinned_maps(lxc_object: Path, pin_dir: Path) -> None:
    addr = IPv4Address("10.9.8.7")
    with BPFObject.open(lxc_object, pin_dir=pin_dir) as first:
        first.load(programs=False)
        with first.map("ciliary_lxc") as m:
            first_id = m.info.id
            EndpointMap(m).upsert(
                addr,
                ifindex=3,
                sec_id=5,
                ep_id=9,
                flags=1,
                mac="02:00:00:00:00:01",
                node_mac="02:00:00:00:00:02",
            )
    # the first object is gone; the pins kept the maps alive
    with BPFObject.open(lxc_object, pin_dir=pin_dir) as second:
        second.load(programs=False)
        with second.map("ciliary_lxc") as m:
            assert m.info.id == first_id
            rec = EndpointMap(m).get(addr)
            assert rec is not None and (rec.sec_id, rec.ep_id) == (5, 9)
    with Map.from_pin(pin_dir / "ciliary_lxc") as pinned:
        assert pinned.info.id == first_id
        assert EndpointMap(pinned).get(addr) is not None


def test_max_entries_override(lxc_object: Path, pin_dir: Path) -> None:
    with BPFObject.open(lxc_object, pin_dir=pin_dir, max_entries={"ciliary_ct": 1024}) as obj:
        obj.load(programs=False)
        with obj.map("ciliary_ct") as ct:
            assert ct.info.max_entries == 1024
    # a pinned map of another size is not silently reused: libbpf refuses it
    with BPFObject.open(lxc_object, pin_dir=pin_dir, max_entries={"ciliary_ct": 2048}) as obj:
        with pytest.raises(BPFInvalidError) as mismatch:
            obj.load(programs=False)
        assert "ciliary_ct" in mismatch.value.log
    with pytest.raises(KeyError):
        BPFObject.open(lxc_object, max_entries={"no_such_map": 1})


def test_pins_of_programs_and_maps(loaded: BPFObject, pin_dir: Path) -> None:
    prog_pin = pin_dir / "cil_from_container"
    loaded.pin_program("cil_from_container", prog_pin)
    loaded.pin_program("cil_from_container", prog_pin)  # replaces the existing pin
    fd = prog_from_pin(prog_pin)
    try:
        assert fd >= 0
        with pytest.raises(BPFExistsError):
            obj_pin(fd, prog_pin)
        obj_pin(fd, pin_dir / "again")
    finally:
        os.close(fd)
    with loaded.map("ciliary_ipcache") as m:
        m.pin(pin_dir / "ipcache-copy")
        with Map.from_pin(pin_dir / "ipcache-copy") as copy:
            assert copy.info.id == m.info.id
    with pytest.raises(BPFError):  # program pins are not maps
        Map.from_pin(prog_pin)


# ---------------------------------------------------------------------------------------------
# tc and the ring buffer, inside a network namespace
# ---------------------------------------------------------------------------------------------


def test_tc_attach_query_detach(loaded: BPFObject, netns: str) -> None:
    from_fd = loaded.program_fd("cil_from_container")
    to_fd = loaded.program_fd("cil_to_container")

    def scenario() -> None:
        ifindex = socket.if_nametoindex("lxc0")
        assert tc_query(ifindex, "ingress") is None  # no clsact yet
        assert tc_detach(ifindex, "ingress") is False

        ingress_id = tc_attach(ifindex, from_fd, "ingress")
        assert ingress_id > 0
        assert tc_query(ifindex, "ingress") == ingress_id
        assert tc_query(ifindex, "egress") is None
        egress_id = tc_attach(ifindex, to_fd, "egress")
        assert egress_id not in (0, ingress_id)
        assert tc_query(ifindex, "egress") == egress_id

        # same (handle, priority): replaced in place, or refused without replace
        assert tc_attach(ifindex, to_fd, "ingress") == egress_id
        assert tc_query(ifindex, "ingress") == egress_id
        with pytest.raises(BPFExistsError):
            tc_attach(ifindex, from_fd, "ingress", replace=False)
        assert tc_attach(ifindex, from_fd, "ingress", priority=2) == ingress_id
        assert tc_query(ifindex, "ingress", priority=2) == ingress_id

        assert tc_detach(ifindex, "ingress") is True
        assert tc_detach(ifindex, "ingress") is False
        assert tc_query(ifindex, "ingress") is None
        assert tc_query(ifindex, "ingress", priority=2) == ingress_id

        assert tc_hook_destroy(ifindex) is True
        assert tc_query(ifindex, "ingress", priority=2) is None
        assert tc_query(ifindex, "egress") is None
        assert tc_hook_destroy(ifindex) is False

        with pytest.raises(BPFError) as no_dev:
            tc_attach(2**31 - 1, from_fd, "ingress")
        assert no_dev.value.errno == errno.ENODEV
        with pytest.raises(BPFInvalidError):
            tc_query(ifindex, "ingress", handle=0)

    in_netns(netns, scenario)


TCX_PROGRAMS = """\
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int tcx_first(struct __sk_buff *skb) { return TC_ACT_OK; }

SEC("tc")
int tcx_second(struct __sk_buff *skb) { return TC_ACT_OK; }

char _license[] SEC("license") = "GPL";
"""


def test_tcx_attach_replaces_by_name_in_place(tmp_path: Path, netns: str) -> None:
    """The datapath's programs are on the tcx hooks (datapath/loader.py): one per name, a new
    load of a name swapped in where the old one ran, others' programs left alone."""
    source, obj_path = tmp_path / "tcx.c", tmp_path / "tcx.o"
    source.write_text(TCX_PROGRAMS)
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True)
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-g", "-Wall", "-Werror",
         f"-I/usr/include/{machine.stdout.strip()}-linux-gnu", "-c", str(source),
         "-o", str(obj_path)],
        check=True,
    )  # fmt: skip
    with (
        BPFObject.open(obj_path) as old,
        BPFObject.open(obj_path) as new,
    ):
        old.load()
        new.load()
        first_old, second = old.program_fd("tcx_first"), old.program_fd("tcx_second")
        first_new = new.program_fd("tcx_first")

        def scenario() -> None:
            ifindex = socket.if_nametoindex("lxc0")
            assert tcx_query(ifindex, "ingress") == []
            assert tcx_attached(ifindex, first_old, "ingress") is False
            assert tcx_detach(ifindex, first_old, "ingress") is False

            old_id = tcx_attach(ifindex, first_old, "ingress")
            other_id = tcx_attach(ifindex, second, "ingress")
            assert tcx_programs(ifindex, "ingress") == [
                (old_id, "tcx_first"),
                (other_id, "tcx_second"),
            ]
            assert tcx_query(ifindex, "egress") == []
            assert tcx_attach(ifindex, first_old, "ingress") == old_id  # already there
            assert tcx_query(ifindex, "ingress") == [old_id, other_id]

            new_id = tcx_attach(ifindex, first_new, "ingress")
            assert new_id not in (old_id, other_id)
            assert tcx_query(ifindex, "ingress") == [new_id, other_id]  # in its place
            assert tcx_attached(ifindex, first_old, "ingress") is True  # by name

            assert tcx_detach(ifindex, first_old, "ingress") is True
            assert tcx_query(ifindex, "ingress") == [other_id]
            assert tcx_detach(ifindex, first_new, "ingress") is False
            # no qdisc is made for them
            qdiscs = subprocess.run(
                ["tc", "qdisc", "show", "dev", "lxc0"], capture_output=True, text=True, check=True
            ).stdout
            assert "clsact" not in qdiscs, qdiscs

            with pytest.raises(BPFError) as no_dev:
                tcx_attach(2**31 - 1, first_new, "ingress")
            assert no_dev.value.errno == errno.ENODEV

        in_netns(netns, scenario)


def test_ringbuffer_reports_spoofed_source_drop(loaded: BPFObject, netns: str) -> None:
    ifindex = attach_from_container(netns, loaded)
    src, dst = IPv4Address("10.99.0.2"), IPv4Address("10.99.0.1")
    frame = udp_frame(src, dst, 40000, 53)
    records: list[bytes] = []
    started = time.monotonic_ns()
    with loaded.map("ciliary_events") as events, RingBuffer(events.fd, records.append) as rb:
        in_netns(netns, lambda: send_frame("peer0", frame))
        readable, _, _ = select.select([rb.epoll_fd()], [], [], 5.0)
        assert readable, "ring buffer never became readable"
        rb.consume()
        poll_until(rb, lambda: any(decode_trace_event(r).proto == 17 for r in records))

    ev = next(e for e in map(decode_trace_event, records) if e.proto == 17)
    assert (ev.type, ev.verdict, ev.drop_reason) == (1, 2, 132)  # EVENT_DROP, DROPPED, INVALID_SIP
    assert (ev.family, ev.src, ev.dst, ev.sport, ev.dport) == (2, src, dst, 40000, 53)
    assert (ev.smac, ev.dmac) == ("02:aa:bb:cc:dd:01", "02:aa:bb:cc:dd:02")
    assert (ev.ifindex, ev.pkt_len) == (ifindex, len(frame))
    assert (ev.obs_point, ev.ct_state, ev.ep_id, ev.src_sec_id) == (5, 4, 0, 0)
    assert started <= ev.ts_ns <= time.monotonic_ns()
    with loaded.map("ciliary_events_lost") as lost:
        assert EventsLostMap(lost).total() == 0


def test_ringbuffer_callback_exception_surfaces(loaded: BPFObject, netns: str) -> None:
    attach_from_container(netns, loaded)
    frame = udp_frame(IPv4Address("10.99.0.2"), IPv4Address("10.99.0.1"), 40001, 53)
    seen: list[bytes] = []

    def callback(record: bytes) -> None:
        seen.append(record)
        if len(seen) == 1:
            raise RuntimeError("boom from callback")

    with loaded.map("ciliary_events") as events, RingBuffer(events.fd, callback) as rb:
        in_netns(netns, lambda: send_frame("peer0", frame))
        with pytest.raises(RuntimeError, match="boom"):
            poll_until(rb, lambda: False)
        # the ring buffer stays usable after the error
        in_netns(netns, lambda: send_frame("peer0", frame))
        poll_until(rb, lambda: len(seen) >= 2)
    rb.close()
    with pytest.raises(ValueError, match="closed"):
        rb.consume()


def test_forwarded_packet_is_traced_and_tracked(loaded: BPFObject, netns: str) -> None:
    ifindex = attach_from_container(netns, loaded)
    src, dst = IPv4Address("10.99.0.2"), IPv4Address("10.99.0.1")
    with (
        loaded.map("ciliary_lxc") as lxc,
        loaded.map("ciliary_ipcache") as ipcache,
        loaded.map("ciliary_config") as config,
        loaded.map("ciliary_ct") as ctmap,
        loaded.map("ciliary_events") as events,
    ):
        EndpointMap(lxc).upsert(
            src,
            ifindex=ifindex,
            sec_id=1234,
            ep_id=7,
            flags=EP_F_READY,
            mac="02:aa:bb:cc:dd:01",
            node_mac="02:aa:bb:cc:dd:02",
        )
        # a prefix of another node, but the datapath is in native mode: the stack routes it
        IPCacheMap(ipcache).upsert(ip_network("10.99.0.0/24"), 5678, IPv4Address("192.0.2.9"))
        ConfigMap(config).set(MONITOR_AGG_NONE, 0)

        records: list[bytes] = []
        with RingBuffer(events.fd, records.append) as rb:
            in_netns(netns, lambda: send_frame("peer0", udp_frame(src, dst, 40002, 53)))
            poll_until(rb, lambda: any(decode_trace_event(r).proto == 17 for r in records))
        ev = next(e for e in map(decode_trace_event, records) if e.proto == 17)
        assert (ev.type, ev.verdict, ev.drop_reason, ev.obs_point) == (4, 1, 0, 3)  # TO_STACK
        assert (ev.ep_id, ev.src_sec_id, ev.dst_sec_id, ev.ct_state) == (7, 1234, 5678, 0)
        assert ev.ct_created_ns > 0

        ct = CTMap(ctmap)
        (entry,) = [r for r in ct.items() if r.sport == 40002]
        assert (entry.src, entry.dst, entry.dport, entry.proto) == (src, dst, 53, 17)
        assert (entry.tx_packets, entry.rx_packets) == (1, 0)
        assert (entry.src_sec_id, entry.dst_sec_id) == (1234, 5678)
        assert entry.created_ns == ev.ct_created_ns
        assert entry.expires_ns == entry.created_ns + 60 * 10**9  # CT_LIFETIME_NONTCP
        assert ct.gc() == 0
        assert ct.gc(entry.expires_ns) == 1


def test_a_syn_on_a_closing_connection_opens_a_new_one(loaded: BPFObject, netns: str) -> None:
    """A client port that comes round again while the old connection's entry is closing (10 s
    after FIN/RST): the SYN is a new connection, as upstream's ACTION_CREATE on a closing entry,
    so under aggregation medium it is reported as new (CT_NEW: policy checked again) with a
    fresh entry, not folded into the old connection whose flags were all reported already."""
    ifindex = attach_from_container(netns, loaded)
    src, dst = IPv4Address("10.99.0.2"), IPv4Address("10.99.0.1")
    syn, ack, rst = 0x02, 0x10, 0x04
    with (
        loaded.map("ciliary_lxc") as lxc,
        loaded.map("ciliary_ipcache") as ipcache,
        loaded.map("ciliary_config") as config,
        loaded.map("ciliary_ct") as ctmap,
        loaded.map("ciliary_events") as events,
    ):
        EndpointMap(lxc).upsert(
            src,
            ifindex=ifindex,
            sec_id=1234,
            ep_id=7,
            flags=EP_F_READY,
            mac="02:aa:bb:cc:dd:01",
            node_mac="02:aa:bb:cc:dd:02",
        )
        IPCacheMap(ipcache).upsert(ip_network("10.99.0.0/24"), 5678, IPv4Address("192.0.2.9"))
        ConfigMap(config).set(MONITOR_AGG_MEDIUM, 0)
        ct = CTMap(ctmap)

        def entry_created() -> int:
            (entry,) = [r for r in ct.items() if r.sport == 40003]
            return entry.created_ns

        def send(flags: int) -> None:
            in_netns(netns, lambda: send_frame("peer0", tcp_frame(src, dst, 40003, 80, flags)))

        records: list[bytes] = []
        with RingBuffer(events.fd, records.append) as rb:
            send(syn)
            first_created = entry_created()
            for flags in (ack, syn | ack, rst, ack, syn):
                send(flags)
            poll_until(rb, lambda: sum(decode_trace_event(r).proto == 6 for r in records) >= 3)
            rb.poll(200)
        events_tcp = [e for e in map(decode_trace_event, records) if e.proto == 6]
        reported = [(e.tcp_flags, e.ct_state) for e in events_tcp]
        # SYN new; ACK not reported; SYN|ACK (ACK seen, SYN seen: nothing new) not reported;
        # RST reported; the ACK after it not; the second SYN new again
        assert reported == [(syn, 0), (rst, 1), (syn, 0)]
        assert entry_created() > first_created


_PARSE_PEERS = {
    4: (IPv4Address("10.99.0.2"), IPv4Address("10.99.0.1"), "10.99.0.0/24"),
    6: (IPv6Address("fd00:99::2"), IPv6Address("fd00:99::1"), "fd00:99::/64"),
}


def _parse_frame(family: int, proto: int, sport: int, *, options: bool) -> bytes:
    """A TCP (PSH|ACK) or UDP packet to port 8080 with 16 bytes of payload; ``options``: 4
    bytes of IPv4 NOP options (ihl 6), or an IPv6 destination-options header (8 bytes: PadN)."""
    src, dst, _ = _PARSE_PEERS[family]
    payload = b"0123456789abcdef"
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, 8080, 7, 9, 5 << 4, 0x18, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sport, 8080, 8 + len(payload), 0) + payload
    if family == 6:
        ext = bytes([proto, 0, 1, 4, 0, 0, 0, 0]) if options else b""
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(l4), 60 if options else proto,
                         64, src.packed, dst.packed) + ext  # fmt: skip
        return DST_MAC + SRC_MAC + b"\x86\xdd" + ip + l4
    opts = b"\x01\x01\x01\x01" if options else b""
    ihl = 5 + len(opts) // 4
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(l4), 1, 0, 64, proto, 0,
        src.packed, dst.packed,
    ) + opts  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return DST_MAC + SRC_MAC + b"\x08\x00" + ip + l4


@pytest.mark.parametrize(("family", "proto"), [(4, 6), (4, 17), (6, 6), (6, 17)])
def test_direct_and_general_parsing_fill_the_packet_alike(
    loaded: BPFObject, netns: str, family: int, proto: int
) -> None:
    """bpf/lib/parse.h reads the common case (IPv4/IPv6 TCP/UDP, headers in the linear area)
    straight from the packet and everything else with bpf_skb_load_bytes: both must fill
    ``struct pkt`` alike. The same segment sent with a bare IP header (the direct path) and
    with IPv4 options / an IPv6 extension header (the general path): trace events (aggregation
    none) and conntrack entries compared."""
    src, dst, prefix = _PARSE_PEERS[family]
    extra = 4 if family == 4 else 8
    ifindex = attach_from_container(netns, loaded)
    with (
        loaded.map("ciliary_lxc") as lxc,
        loaded.map("ciliary_ipcache") as ipcache,
        loaded.map("ciliary_config") as config,
        loaded.map("ciliary_ct") as ctmap,
        loaded.map("ciliary_events") as events,
    ):
        EndpointMap(lxc).upsert(
            src, ifindex=ifindex, sec_id=1234, ep_id=7, flags=EP_F_READY,
            mac="02:aa:bb:cc:dd:01", node_mac="02:aa:bb:cc:dd:02",
        )  # fmt: skip
        IPCacheMap(ipcache).upsert(ip_network(prefix), 5678)
        ConfigMap(config).set(MONITOR_AGG_NONE, 0)
        records: list[bytes] = []
        with RingBuffer(events.fd, records.append) as rb:
            for sport, options in ((40100, False), (40101, True)):
                frame = _parse_frame(family, proto, sport, options=options)
                in_netns(netns, lambda f=frame: send_frame("peer0", f))  # type: ignore[misc]
            poll_until(rb, lambda: sum(decode_trace_event(r).proto == proto for r in records) >= 2)
        direct, general = (e for e in map(decode_trace_event, records) if e.proto == proto)
        assert (direct.sport, general.sport) == (40100, 40101)
        assert general.pkt_len == direct.pkt_len + extra
        same = ["src", "dst", "smac", "dmac", "dport", "family", "tcp_flags", "ep_id", "type"]
        same += ["verdict", "obs_point", "src_sec_id", "dst_sec_id", "ct_state", "is_reply"]
        assert {f: getattr(direct, f) for f in same} == {f: getattr(general, f) for f in same}
        assert (direct.src, direct.dst, direct.dport, direct.ct_state) == (src, dst, 8080, 0)
        assert direct.tcp_flags == (0x18 if proto == 6 else 0)
        entries = {r.sport: r for r in CTMap(ctmap).items() if r.sport in (40100, 40101)}
        assert {s: (r.src, r.dst, r.dport, r.proto, r.tx_packets) for s, r in entries.items()} == {
            40100: (src, dst, 8080, proto, 1),
            40101: (src, dst, 8080, proto, 1),
        }
        assert entries[40101].tx_bytes == entries[40100].tx_bytes + extra
        assert entries[40100].tx_flags_seen == entries[40101].tx_flags_seen
