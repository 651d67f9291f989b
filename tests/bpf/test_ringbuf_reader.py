"""The ring buffer read through its memory mapping (``RingBuffer.peek``/``advance``) and the
agent's reader (``Monitor``) on a real BPF_MAP_TYPE_RINGBUF: bpf_lxc's cil_from_container
drops spoofed frames sent on a veth and writes a drop record per frame into a ring shrunk to
one page, so a few dozen records wrap it around. What is checked: records across the wrap
come out whole and in order, decoded alike by the numpy batch path and the per-record
decoder; a partial advance leaves the rest in the ring; the Monitor's full sink pauses the
reader with the remaining records still in the ring, and resuming delivers them in order. A
small program of the test's own (built here with the Makefile's compiler) discards every other
record it reserves: the reader skips them and the batch decode walks past them."""

from __future__ import annotations

import asyncio
import ctypes
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from ciliary.agent import monitor as monitor_module
from ciliary.agent.monitor import Monitor
from ciliary.datapath.libbpf import (
    RINGBUF_DISCARD_BIT,
    BPFObject,
    RingBuffer,
    ring_records,
    tc_attach,
)
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps import EventsLostMap
from ciliary.datapath.maps.events import (
    TRACE_RECORD_DTYPE,
    RawTraceEvent,
    TraceEventC,
    decode_batch,
    decode_event,
)
from tests.bpf.test_libbpf import (  # noqa: F401  (fixtures)
    attach_from_container,
    in_netns,
    lxc_object,
    netns,
    pin_dir,
    send_frame,
    udp_frame,
)

pytestmark = pytest.mark.privileged

RING_BYTES = 4096  # one page: 36 records of 112 bytes
SRC, DST = IPv4Address("10.99.0.2"), IPv4Address("10.99.0.1")


@pytest.fixture
def small_ring(lxc_object: Path, pin_dir: Path) -> Iterator[BPFObject]:  # noqa: F811
    obj = BPFObject.open(lxc_object, pin_dir=pin_dir, max_entries={"ciliary_events": RING_BYTES})
    try:
        obj.load()
        yield obj
    finally:
        obj.close()


def send(netns: str, sports: range) -> None:  # noqa: F811
    frames = [udp_frame(SRC, DST, port, 53) for port in sports]
    in_netns(netns, lambda: [send_frame("peer0", f) for f in frames])


def sports_of(events: list[object]) -> list[int]:
    return [e.sport for e in events if isinstance(e, RawTraceEvent) and e.proto == 17]


def wait_for(rb: RingBuffer, count: int) -> bytes:
    """The ring's span once it holds ``count`` of our UDP records (the veth may add others)."""
    deadline = time.monotonic() + 5
    while True:
        span = rb.peek()
        if len(sports_of(decode_batch(span).events)) >= count:
            return span
        assert time.monotonic() < deadline, f"ring never held {count} records"
        select.select([rb.epoll_fd()], [], [], 0.1)


def test_records_across_the_wrap_come_out_whole_and_in_order(
    small_ring: BPFObject,
    netns: str,  # noqa: F811
) -> None:
    attach_from_container(netns, small_ring)
    with small_ring.map("ciliary_events") as events, RingBuffer(events.fd) as rb:
        consumed = 0
        for first in (40000, 40030, 40060):  # 3 x 30 x 112 bytes: twice past the page's end
            send(netns, range(first, first + 30))
            span = wait_for(rb, 30)
            batch = decode_batch(span)
            assert sports_of(batch.events) == list(range(first, first + 30))
            records, end = ring_records(span)
            assert batch.events == [decode_event(span[o : o + n]) for o, n in records]
            assert batch.end == end == len(span)
            rb.advance(batch.end)
            consumed += batch.end
        assert consumed > 2 * RING_BYTES and rb.peek() == b""
        with small_ring.map("ciliary_events_lost") as lost:
            assert EventsLostMap(lost).total() == 0


def test_a_partial_advance_leaves_the_rest_in_the_ring(
    small_ring: BPFObject,
    netns: str,  # noqa: F811
) -> None:
    attach_from_container(netns, small_ring)
    with small_ring.map("ciliary_events") as events, RingBuffer(events.fd) as rb:
        send(netns, range(41000, 41005))
        batch = decode_batch(wait_for(rb, 5))
        taken = sports_of(batch.events).index(41001)
        rb.advance(batch.ends[taken])  # 41000 and 41001 (and whatever came before) taken
        assert sports_of(decode_batch(rb.peek()).events) == [41002, 41003, 41004]
        with pytest.raises(ValueError, match="8-byte"):
            rb.advance(3)
        capped = rb.peek(2 * 112 + 8)  # at most that much: the third record cut short
        assert len(capped) == 2 * 112 + 8
        assert decode_batch(capped).events == decode_batch(rb.peek()).events[:2]
    with pytest.raises(ValueError, match="closed"):
        rb.peek()


def test_the_monitor_pauses_on_a_full_sink_and_resumes_in_order(
    small_ring: BPFObject,
    netns: str,  # noqa: F811
) -> None:
    attach_from_container(netns, small_ring)
    got: list[object] = []
    room = [3]

    def sink(event: object) -> bool:
        got.append(event)
        return len(sports_of(got)) < room[0]  # full once it holds room[0] of ours

    async def scenario(events_map: object) -> None:
        monitor = Monitor("n1", cast(NodeDatapath, SimpleNamespace(events_map=events_map)), str)
        monitor.add_sink(sink)
        send(netns, range(42000, 42010))  # the backlog the first drain reads
        with RingBuffer(events_map.fd) as other:  # type: ignore[attr-defined]
            wait_for(other, 10)
            monitor.start()
            try:
                assert monitor.paused and sports_of(got) == [42000, 42001, 42002]
                # the reader stopped right after the record that filled the sink: the ring
                # (whose consumer position every reader of the map shares) holds the rest
                assert sports_of(decode_batch(other.peek()).events) == list(range(42003, 42010))
                room[0] = 100
                monitor.resume()
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if len(sports_of(got)) == 10:
                        break
                assert sports_of(got) == list(range(42000, 42010))
                assert not monitor.paused and monitor.caught_up and monitor.malformed == 0
                assert monitor.received == len(got) and other.peek() == b""
            finally:
                monitor.stop()

    with small_ring.map("ciliary_events") as events:
        asyncio.run(scenario(events))


def test_the_monitor_reads_a_backlog_a_batch_per_wake_up(
    small_ring: BPFObject,
    netns: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog larger than the reader's batch is read over several wake-ups of the loop, in
    order; ``caught_up`` only once a batch reached the producer position."""
    attach_from_container(netns, small_ring)
    monkeypatch.setattr(monitor_module, "READ_BATCH_BYTES", 4 * 112)
    got: list[object] = []

    async def scenario(events_map: object) -> None:
        monitor = Monitor("n1", cast(NodeDatapath, SimpleNamespace(events_map=events_map)), str)
        monitor.add_sink(got.append)
        send(netns, range(43000, 43010))
        with RingBuffer(events_map.fd) as other:  # type: ignore[attr-defined]
            wait_for(other, 10)
            monitor.start()
            try:
                assert len(got) == 4 and not monitor.caught_up  # one batch, the rest waits
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if monitor.caught_up:
                        break
                assert sports_of(got) == list(range(43000, 43010)) and other.peek() == b""
                assert monitor.caught_up and not monitor.paused
            finally:
                monitor.stop()

    with small_ring.map("ciliary_events") as events:
        asyncio.run(scenario(events))


def test_a_lone_event_is_read_at_once_and_a_steady_stream_in_batches(
    small_ring: BPFObject,
    netns: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a drain that emptied the ring the reader leaves the fd alone for the hold-off
    (#17): records written meanwhile are read together when it ends, not one wake-up each; a
    record after a quiet spell (the fd waited on again) is read at once."""
    attach_from_container(netns, small_ring)
    monkeypatch.setattr(monitor_module, "HOLDOFF_S", 2.0)  # long: a loaded machine
    got: list[object] = []
    arrived: dict[int, float] = {}
    drains: list[int] = []

    def sink(event: object) -> None:
        got.append(event)
        for port in sports_of([event]):
            arrived[port] = time.monotonic()

    async def scenario(events_map: object) -> None:
        monitor = Monitor("n1", cast(NodeDatapath, SimpleNamespace(events_map=events_map)), str)
        monitor.add_sink(sink)
        monitor.add_drain_hook(lambda: drains.append(len(sports_of(got))))
        monitor.start()
        try:
            await asyncio.sleep(2.3)  # the start's drain and its hold-off are over
            sent = time.monotonic()
            await asyncio.to_thread(send, netns, range(44000, 44001))
            for _ in range(100):
                await asyncio.sleep(0.005)
                if 44000 in arrived:
                    break
            assert arrived[44000] - sent < 1.0  # at once, not at the end of a hold-off
            for port in range(44001, 44006):  # a stream, inside the hold-off that began
                await asyncio.to_thread(send, netns, range(port, port + 1))
                await asyncio.sleep(0.02)
            assert not set(arrived) & set(range(44001, 44006))  # still held off
            for _ in range(400):
                await asyncio.sleep(0.01)
                if len(arrived) == 6:
                    break
            assert sorted(arrived) == list(range(44000, 44006))
            assert sports_of(got) == list(range(44000, 44006))
            assert arrived[44001] - sent >= 1.5  # read when the hold-off ended
            # the five were read by one drain: the counts the drains saw jump from 1 to 6
            assert drains.count(1) >= 1 and 2 not in drains and 6 in drains
        finally:
            monitor.stop()

    with small_ring.map("ciliary_events") as events:
        asyncio.run(scenario(events))


DISCARD_ODD = """
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {{
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
}} events SEC(".maps");

/* a trace_event-sized record per packet: type TRACE, pkt_len; discarded when the length is odd */
SEC("tc")
int discard_odd(struct __sk_buff *skb)
{{
	__u8 *rec = bpf_ringbuf_reserve(&events, {size}, 0);
	if (!rec)
		return TC_ACT_OK;
	__builtin_memset(rec, 0, {size});
	rec[0] = 4;
	*(__u32 *)(rec + {pkt_len}) = skb->len;
	if (skb->len & 1)
		bpf_ringbuf_discard(rec, 0);
	else
		bpf_ringbuf_submit(rec, 0);
	return TC_ACT_OK;
}}

char _license[] SEC("license") = "GPL";
"""


def test_discarded_records_are_skipped_by_the_reader(tmp_path: Path, netns: str) -> None:  # noqa: F811
    source = tmp_path / "discard_odd.c"
    source.write_text(
        DISCARD_ODD.format(size=ctypes.sizeof(TraceEventC), pkt_len=TraceEventC.pkt_len.offset)
    )
    machine = subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True)
    subprocess.run(
        ["clang", "-target", "bpf", "-O2", "-g", "-Wall", "-Werror",
         f"-I/usr/include/{machine.stdout.strip()}-linux-gnu", "-c", str(source),
         "-o", str(tmp_path / "discard_odd.o")],
        check=True,
    )  # fmt: skip
    lengths = range(64, 80)  # 8 odd ones discarded, 8 even ones kept

    def attach_and_send() -> None:
        tc_attach(socket.if_nametoindex("lxc0"), obj.program_fd("discard_odd"), "ingress")
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind(("peer0", 0))
            for n in lengths:  # a local experimental ethertype, padded to n bytes
                s.send((b"\x02" * 6 + b"\x04" * 6 + b"\x88\xb5").ljust(n, b"\0"))

    with BPFObject.open(tmp_path / "discard_odd.o") as obj:
        obj.load()
        in_netns(netns, attach_and_send)
        with obj.map("events") as events, RingBuffer(events.fd) as rb:
            span = rb.peek()
            headers = np.frombuffer(span, TRACE_RECORD_DTYPE)["ring_len"].tolist()
            ours = [h for h in headers if (h & ~RINGBUF_DISCARD_BIT) == 104]
            assert sum(1 for h in ours if h & RINGBUF_DISCARD_BIT) >= 8  # they are in the ring
            batch = decode_batch(span)
            seen = [e.pkt_len for e in batch.events if isinstance(e, RawTraceEvent)]
            assert [n for n in seen if n in lengths] == list(range(64, 80, 2))
            records, end = ring_records(span)
            assert len(records) == len(batch.events) and batch.end == end == len(span)
            rb.advance(batch.end)
            assert rb.peek() == b""


def test_the_monitor_hands_rows_to_a_rows_sink_and_pauses_when_it_is_full(
    small_ring: BPFObject,
    netns: str,  # noqa: F811
) -> None:
    """The rows path (#17): the one sink that takes rows
    gets the span's trace records as numpy rows, no object per record; a full sink stops the
    reader right after the rows it took, resuming hands over the rest in order; a subscriber
    (``ciliary monitor``) gets its event per record while the sink still gets rows."""
    attach_from_container(netns, small_ring)
    taken: list[np.ndarray] = []
    events: list[object] = []
    room = [3]

    def rows_sink(rows: np.ndarray) -> tuple[int, bool]:
        ours = np.cumsum(rows["proto"] == 17) + len(sports())  # the veth may add others
        full_at = np.nonzero(ours >= room[0])[0]
        n = int(full_at[0]) + 1 if len(full_at) else len(rows)
        taken.append(rows[:n].copy())
        return n, len(full_at) > 0

    def sports() -> list[int]:
        return [int(r["sport"]) for rows in taken for r in rows if r["proto"] == 17]

    async def scenario(events_map: object) -> None:
        monitor = Monitor("n1", cast(NodeDatapath, SimpleNamespace(events_map=events_map)), str)
        monitor.add_sink(events.append, rows=rows_sink)
        send(netns, range(44000, 44010))
        with RingBuffer(events_map.fd) as other:  # type: ignore[attr-defined]
            wait_for(other, 10)
            monitor.start()
            try:
                assert monitor.paused and sports() == [44000, 44001, 44002] and events == []
                assert sports_of(decode_batch(other.peek()).events) == list(range(44003, 44010))
                room[0] = 100
                monitor.resume()
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if len(sports()) == 10:
                        break
                assert sports() == list(range(44000, 44010)) and events == []
                assert monitor.received == sum(len(r) for r in taken) and not monitor.paused
                assert other.peek() == b""
                sub = monitor.subscribe()
                send(netns, range(44010, 44012))
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if len(sports()) == 12:
                        break
                assert sports() == list(range(44000, 44012)) and events == []
                udp = [sub.get_nowait() for _ in range(sub.qsize())]
                assert [e.src_port for e in udp if e.protocol == "UDP"] == [44010, 44011]
            finally:
                monitor.stop()

    with small_ring.map("ciliary_events") as events_map:
        asyncio.run(scenario(events_map))
