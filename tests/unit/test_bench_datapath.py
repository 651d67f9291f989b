"""The datapath benchmark's per-packet run time of cil_from_container (bench/datapath.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from bench import datapath
from bench.datapath import Target, program_run_time


def test_program_run_time_per_packet_of_its_own_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Stats on around its runs only; per metric a warm-up run (not kept) and ``rounds`` runs,
    each (run_time_ns delta) / (run_cnt delta) of the node's pinned cil_from_container."""
    stats_on: list[bool] = []

    @contextlib.contextmanager
    def fake_stats() -> contextlib.AbstractContextManager[None]:  # type: ignore[misc]
        stats_on.append(True)
        yield

    rr = [(0, 0), (10, 1), (10, 1), (610, 2), (610, 2), (1_010, 4)]  # warm-up, 600, 200
    crr = [(1_010, 4), (1_110, 5), (1_110, 5), (2_110, 7), (2_110, 7), (2_710, 9)]  # -, 500, 300
    counters = iter(rr + crr)
    pins: set[Path] = set()

    def fake_run_stats(pin: Path, *, link: bool = False) -> tuple[int, int]:
        pins.add(pin)
        return next(counters)

    monkeypatch.setattr(datapath, "bpf_stats", fake_stats)
    monkeypatch.setattr(datapath, "prog_run_stats", fake_run_stats)
    target = Target("b: ciliary", "ciliary", 3, [], "10.0.0.2", pin_dir=tmp_path)
    metrics = {key: ("t", "u", True, lambda t, s: (s,)) for key in ("tcp1", "rr", "crr")}
    rows = program_run_time(target, metrics, rounds=2, seconds=1, log=lambda _: None)
    assert stats_on == [True]
    assert pins == {tmp_path / "cil_from_container"}
    assert [r["metric"] for r in rows] == ["bpf-ns-per-packet-rr", "bpf-ns-per-packet-crr"]
    assert rows[0]["samples"] == {"b: ciliary": [600.0, 200.0]}
    assert rows[1]["samples"] == {"b: ciliary": [500.0, 300.0]}
    assert rows[0]["values"] == {"b: ciliary": 400.0}


def test_the_tc_floor_gets_both_macs_in_header_order() -> None:
    """tcfloor.c stores MAC_W0..2 as they lie in memory: the destination's bytes first."""
    words = datapath.mac_words("02:aa:bb:cc:dd:01", "0a:0b:0c:0d:0e:0f")
    raw = b"".join(w.to_bytes(4, "little") for w in words)
    assert raw == bytes.fromhex("02aabbccdd010a0b0c0d0e0f")
    assert words != datapath.mac_words("0a:0b:0c:0d:0e:0f", "02:aa:bb:cc:dd:01")


def test_alternating_connections_pair_each_round_in_both_orders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One connrate -a run per round, a and b swapping places every round, each rate given back
    to its own setup; the result has the medians and each round's own b/a, and the datapath
    table shows it."""
    from bench import report  # noqa: PLC0415

    calls: list[tuple[tuple[str, str], tuple[str, str]]] = []
    by_ns = {"ns-a": 10_000.0, "ns-b": 9_000.0}

    def fake_rates(prefix: list[str], connrate: Path, pair: tuple[tuple[str, str], ...],
                   s: float) -> tuple[float, float]:  # fmt: skip
        assert prefix == [] and s == 2.0
        calls.append((pair[0], pair[1]))
        slow = 0.5 if len(calls) == 2 else 1.0  # a loaded round: both sides alike
        return by_ns[pair[0][0]] * slow, by_ns[pair[1][0]] * slow

    monkeypatch.setattr(datapath.tools, "alternating_rates", fake_rates)
    monkeypatch.setattr(datapath, "_quiesce", lambda *a, **k: None)
    a = Target("a: bare veth", datapath.BARE, None, [], "10.251.0.2", netns="ns-a")
    b = Target("b: ciliary", datapath.CILIARY, 3, [], "10.0.1.5", netns="ns-b")
    rates = datapath.alternating_connections(
        Path("/x/connrate"), (a, b), rounds=3, seconds=2.0, agents=[], log=lambda _: None
    )
    assert [c[0][0] for c in calls] == ["ns-a", "ns-b", "ns-a"]  # who goes first alternates
    assert calls[1] == (("ns-b", "10.0.1.5"), ("ns-a", "10.251.0.2"))
    assert rates == [(10_000.0, 9_000.0), (5_000.0, 4_500.0), (10_000.0, 9_000.0)]
    res = datapath.alternating_result((a, b), rates, seconds=2.0)
    v = res["values"]
    assert (v[a.name], v[b.name]) == (10_000.0, 9_000.0)
    assert v["median of the round ratios (%)"] == pytest.approx(90.0)
    assert v["lowest round (%)"] == pytest.approx(90.0) == v["highest round (%)"]
    line = report._alternating_line(res)
    assert "**b/a connection rate" in line
    assert "**0.900**" in line and "a 10,000, b 9,000 conn/s" in line
    floor = Target(datapath.FLOOR, datapath.FLOOR, None, [], "10.250.0.3", netns="ns-f")
    line = report._alternating_line(
        datapath.alternating_result((a, floor), [(10_000.0, 9_500.0)], seconds=2.0)
    )
    assert "**tc floor/a connection rate" in line and "tc floor 9,500 conn/s" in line
