"""Per-endpoint policy maps against the kernel: creation through the outer map-of-maps, the safe
update order, LPM semantics of port prefixes, and the range → prefix decomposition."""

from __future__ import annotations

import itertools
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciliary.core.ports import port_range_prefixes
from ciliary.datapath.libbpf import BPFObject, Map
from ciliary.datapath.maps.policy import (
    PolicyChange,
    PolicyKey,
    PolicyKeyC,
    PolicyMaps,
    PolicyValue,
)

OBJECT = Path(__file__).resolve().parents[2] / "bpf" / "bpf_lxc.o"


@pytest.fixture
def maps() -> Iterator[PolicyMaps]:
    pin_dir = Path("/sys/fs/bpf") / f"ciliary-test-{secrets.token_hex(4)}"
    obj = BPFObject.open(OBJECT, pin_dir=pin_dir)
    try:
        obj.load(programs=False)  # the maps are what these tests hold
        with obj.map("ciliary_policy") as outer:
            yield PolicyMaps(outer, pin_dir)
    finally:
        obj.close()
        shutil.rmtree(pin_dir, ignore_errors=True)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_port_range_prefixes_cover_exactly(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    covered: list[tuple[int, int]] = []
    for port, bits in port_range_prefixes(lo, hi):
        size = 1 << (16 - bits)
        assert port % size == 0
        covered.append((port, port + size - 1))
    covered.sort()
    assert covered[0][0] == lo and covered[-1][1] == hi
    for (_, end), (start, _) in itertools.pairwise(covered):
        assert start == end + 1
    assert len(covered) <= 32


def test_key_round_trip_and_prefixlen() -> None:
    k = PolicyKey(identity=256, egress=True, protocol=6, port=8080, port_prefix=16)
    assert k.prefixlen == 64
    assert PolicyKey.from_c(PolicyKeyC.from_buffer_copy(bytes(k.to_c()))) == k
    assert k.c_bytes == bytes(k.to_c()) and k.c_bytes is k.c_bytes  # made once
    assert PolicyKey(identity=0, egress=False).prefixlen == 40
    with pytest.raises(ValueError):
        PolicyKey(identity=1, egress=False, protocol=0, port=80, port_prefix=16)
    with pytest.raises(ValueError):
        PolicyKey(identity=1, egress=False, protocol=6, port=81, port_prefix=15)


def test_ensure_apply_remove(maps: PolicyMaps) -> None:
    allow80 = PolicyKey(256, False, 6, 80, 16)
    deny_all = PolicyKey(300, False)
    inner = maps.ensure(7, {allow80: PolicyValue(False, 11)})
    assert maps.enforced() == [7]
    assert inner.current() == {allow80: PolicyValue(False, 11)}
    written, deleted = inner.apply(
        {deny_all: PolicyValue(True, 12), allow80: PolicyValue(False, 11)}
    )
    assert (written, deleted) == (1, 0)
    written, deleted = inner.apply({deny_all: PolicyValue(True, 12)})
    assert (written, deleted) == (0, 1)
    # reopened from its pin, the map holds the same entries
    again = maps.get(7)
    assert again is not None and again.current() == {deny_all: PolicyValue(True, 12)}
    maps.remove(7)
    assert maps.enforced() == [] and maps.get(7) is None


def test_apply_changes_writes_the_difference_without_reading(maps: PolicyMaps) -> None:
    allow80, allow443 = PolicyKey(256, False, 6, 80, 16), PolicyKey(256, False, 6, 443, 16)
    deny_all = PolicyKey(300, False)
    inner = maps.ensure(8, {allow80: PolicyValue(False, 1), deny_all: PolicyValue(True, 2)})
    # allow80 gets another cookie, allow443 arrives, the deny goes (given with its value)
    written, deleted = inner.apply_changes(
        {allow80: PolicyValue(False, 3), allow443: PolicyValue(False, 1, proxy_port=15001)},
        {deny_all: PolicyValue(True, 2)},
    )
    assert (written, deleted) == (2, 1)
    assert inner.current() == {
        allow80: PolicyValue(False, 3),
        allow443: PolicyValue(False, 1, proxy_port=15001),
    }
    inner.close()


class _OnlyBatches:
    """A policy map's ``Map`` that records batch calls and refuses entry-by-entry writes."""

    def __init__(self, real: Map) -> None:
        self.real = real
        self.calls: list[tuple[str, int]] = []

    def update_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("update", len(items)))
        self.real.update_batch(items)

    def delete_batch(self, keys: list[bytes]) -> int:
        self.calls.append(("delete", len(keys)))
        return self.real.delete_batch(keys)

    def update(self, key: bytes, value: bytes) -> None:
        raise AssertionError("a change is written in batches, not entry by entry")

    delete = update


def test_a_change_is_four_batches_in_the_safe_order(maps: PolicyMaps) -> None:
    """New denies, allows that go, new allows, denies that go: one batch syscall each, so a
    change costs an endpoint at most four syscalls; its bytes are made once for every map."""
    old_allows = {PolicyKey(256, False, 6, p, 16): PolicyValue(False, 1) for p in (80, 81, 82)}
    old_denies = {PolicyKey(300 + i, False): PolicyValue(True, 2) for i in range(2)}
    new_allows = {PolicyKey(257, True, 17, p, 16): PolicyValue(False, 3) for p in (53, 54)}
    new_denies = {PolicyKey(400, False, 6, 22, 16): PolicyValue(True, 4)}
    change = PolicyChange(new_denies | new_allows, old_allows | old_denies)
    assert change.batches() is change.batches()
    for ep_id in (9, 10):  # two endpoints whose states moved the same way: one change
        inner = maps.ensure(ep_id, old_allows | old_denies)
        recorder = _OnlyBatches(inner.map)
        inner._map = recorder  # type: ignore[assignment]
        assert inner.write(change) == (3, 5)
        assert recorder.calls == [("update", 1), ("delete", 3), ("update", 2), ("delete", 2)]
        inner._map = recorder.real
        assert inner.current() == new_denies | new_allows
        inner.close()


def test_an_inner_map_is_opened_once(maps: PolicyMaps, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of a rule change used to open the endpoint's pin again; the handle is kept,
    its close() leaves it open, and removal closes it."""
    allow80 = PolicyKey(256, False, 6, 80, 16)
    first = maps.ensure(11, {allow80: PolicyValue(False, 1)})
    first.close()
    opened: list[object] = []
    monkeypatch.setattr(Map, "from_pin", opened.append)
    again = maps.get(11)
    assert again is first and not again.map.closed and opened == []
    assert again.current() == {allow80: PolicyValue(False, 1)}
    assert maps.ensure(11) is first
    maps.remove(11)
    assert first.map.closed and maps.get(11) is None
    monkeypatch.undo()
    fresh = maps.ensure(12)
    maps.prune(keep=[])  # restart reconciliation closes what it removes too
    assert fresh.map.closed and maps.get(12) is None


def test_lpm_port_prefix_match(maps: PolicyMaps) -> None:
    inner = maps.ensure(3)
    for port, bits in port_range_prefixes(8000, 8015):
        inner.upsert(PolicyKey(256, True, 6, port, bits), PolicyValue(False, 5))
    lookup = PolicyKeyC(prefixlen=64, sec_label=256, egress=1, protocol=6)
    lookup.dport = socket.htons(8007)
    assert inner.map.lookup(bytes(lookup)) is not None
    lookup.dport = socket.htons(8016)
    assert inner.map.lookup(bytes(lookup)) is None


def test_prune_removes_maps_of_gone_endpoints(maps: PolicyMaps) -> None:
    maps.ensure(1)
    maps.ensure(2)
    assert maps.prune([2]) == [1]
    assert maps.enforced() == [2]
