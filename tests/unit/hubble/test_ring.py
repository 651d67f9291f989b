"""The flow ring: capacity rules, positions, readers, lapping and async follow."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.ring import DEFAULT_CAPACITY, Event, Ring, validate_capacity

LOST_RING = flow_pb2.LostEventSource.HUBBLE_RING_BUFFER


def ev(i: int) -> Event:
    return Event(time_ns=i, flow=flow_pb2.Flow(uuid=str(i)))


def ids(events: list[Event]) -> list[str]:
    return [e.flow.uuid if e.flow else f"lost:{e.lost.num_events_lost}" for e in events]  # type: ignore[union-attr]


@pytest.mark.parametrize("cap", [1, 3, 7, 255, 4095, 65535])
def test_valid_capacities(cap: int) -> None:
    assert Ring(cap).capacity == cap


@pytest.mark.parametrize("cap", [0, -1, 2, 4, 100, 4096, 65536, 131071])
def test_invalid_capacities_are_rejected_with_reason(cap: int) -> None:
    with pytest.raises(ValueError, match=rf"invalid ring capacity {cap}"):
        Ring(cap)


def test_capacity_type_and_default() -> None:
    with pytest.raises(ValueError, match="integer"):
        validate_capacity(True)
    assert Ring().capacity == DEFAULT_CAPACITY == 4095


def test_event_carries_exactly_one_payload() -> None:
    with pytest.raises(ValueError):
        Event(time_ns=1)
    with pytest.raises(ValueError):
        Event(time_ns=1, flow=flow_pb2.Flow(), lost=flow_pb2.LostEvent())


def test_write_counts_and_last_returns_oldest_first() -> None:
    r = Ring(7)
    assert r.last(3) == [] and len(r) == 0 and r.oldest == 0
    for i in range(5):
        r.write(ev(i))
    assert r.written == 5 and len(r) == 5 and r.oldest == 0
    assert ids(r.last(3)) == ["2", "3", "4"]
    assert ids(r.last(100)) == ["0", "1", "2", "3", "4"]
    for i in range(5, 20):
        r.write(ev(i))
    assert r.written == 20 and len(r) == 7 and r.oldest == 13
    assert ids(r.last(7)) == [str(i) for i in range(13, 20)]
    assert r.get(12) is None and r.get(20) is None and r.get(13) is not None
    assert [p for p, _ in r.backward()] == list(range(19, 12, -1))


def test_reader_reads_then_reports_lapping_with_count() -> None:
    lapped: list[int] = []
    r = Ring(3, on_lapped=lapped.append)
    reader = r.reader(0)
    for i in range(2):
        r.write(ev(i))
    assert ids([reader.next(), reader.next()]) == ["0", "1"]  # type: ignore[list-item]
    assert reader.next() is None  # caught up
    for i in range(2, 10):  # positions 2..9; ring keeps 7, 8, 9
        r.write(ev(i))
    lost = reader.next()
    assert lost is not None and lost.lost is not None
    assert lost.lost.source == LOST_RING and lost.lost.num_events_lost == 5
    assert lapped == [5]
    assert ids([reader.next(), reader.next(), reader.next()]) == ["7", "8", "9"]  # type: ignore[list-item]
    assert reader.next() is None


def test_follow_wakes_on_writes_from_the_loop() -> None:
    async def body() -> list[str]:
        r = Ring(15)
        r.write(ev(0))
        got: list[str] = []

        async def consume() -> None:
            async for e in r.follow(0):
                assert e.flow is not None
                got.append(e.flow.uuid)
                if len(got) == 4:
                    return

        task = asyncio.create_task(consume(), name="consume")
        for i in range(1, 4):
            await asyncio.sleep(0.01)
            r.write(ev(i))
        await asyncio.wait_for(task, 2)
        return got

    assert asyncio.run(body()) == ["0", "1", "2", "3"]


def test_follow_wakes_on_writes_from_another_thread() -> None:
    async def body() -> list[str]:
        r = Ring(15)
        got: list[str] = []

        async def consume() -> None:
            async for e in r.follow(r.written):
                assert e.flow is not None
                got.append(e.flow.uuid)
                if len(got) == 3:
                    return

        task = asyncio.create_task(consume(), name="consume")
        await asyncio.sleep(0.01)

        def writer() -> None:
            for i in range(3):
                r.write(ev(i))

        t = threading.Thread(target=writer)
        t.start()
        await asyncio.wait_for(task, 2)
        t.join()
        return got

    assert asyncio.run(body()) == ["0", "1", "2"]


def test_follow_of_a_lapped_reader_yields_lost_event_then_continues() -> None:
    async def body() -> list[str]:
        r = Ring(3)
        agen = r.follow(0)
        for i in range(10):  # reader at 0, ring keeps 7..9
            r.write(ev(i))
        got = [await anext(agen) for _ in range(4)]
        r.write(ev(10))
        got.append(await anext(agen))
        await agen.aclose()  # type: ignore[attr-defined]
        return ids(got)

    assert asyncio.run(body()) == ["lost:7", "7", "8", "9", "10"]


def test_cancelled_follower_leaves_no_waiter() -> None:
    async def body() -> int:
        r = Ring(3)

        async def consume() -> None:
            async for _ in r.follow(0):
                pass

        task = asyncio.create_task(consume(), name="consume")
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(r._waiters)

    assert asyncio.run(body()) == 0
