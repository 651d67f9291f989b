"""Batched Hubble counters: a flow's count is in a plain dict until the counter is collected,
so every read (a scrape, ``get_sample_value``) sees every flow counted before it, and label
sets appear (with their ``_created`` time) at their first flow, as unbatched counters."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ciliary.hubble.metrics import FlowMetrics
from ciliary.hubble.metrics.handlers import BatchedCounter
from tests.unit.hubble.test_metrics import tcp_flow

FLOWS = "hubble_flows_processed_total"
LABELS = {"protocol": "TCP", "type": "Trace", "subtype": "to-endpoint", "verdict": "FORWARDED"}
LINE = (
    'hubble_flows_processed_total{protocol="TCP",subtype="to-endpoint",type="Trace",'
    'verdict="FORWARDED"} '
)


def _scraped(reg: CollectorRegistry) -> str:
    text = generate_latest(reg).decode()
    return next(line for line in text.splitlines() if line.startswith(LINE))[len(LINE) :]


def test_every_scrape_sees_every_flow_counted_before_it() -> None:
    reg = CollectorRegistry()
    fm = FlowMetrics("flow tcp", reg)
    for _ in range(3):
        fm.on_flow(tcp_flow(syn=True))
    assert _scraped(reg) == "3.0"
    fm.on_flow(tcp_flow())
    assert _scraped(reg) == "4.0"
    assert _scraped(reg) == "4.0"  # a flush adds each count once
    fm.on_flow(tcp_flow(syn=True))
    assert reg.get_sample_value(FLOWS, LABELS) == 5
    assert reg.get_sample_value("hubble_tcp_flags_total", {"flag": "SYN", "family": "IPv4"}) == 4


def test_a_label_set_is_created_at_its_first_flow() -> None:
    reg = CollectorRegistry()
    fm = FlowMetrics("flow", reg)
    fm.on_flow(tcp_flow())
    counted = time.time()
    for _ in range(1000):  # time passes before the first read
        fm.on_flow(tcp_flow())
    created = reg.get_sample_value("hubble_flows_processed_created", LABELS)
    assert created is not None and created <= counted


def test_a_wrong_label_count_fails_at_the_increment() -> None:
    batched = BatchedCounter(CollectorRegistry(), "x_total", "x", ["a", "b"])
    with pytest.raises(ValueError, match="Incorrect label count"):
        batched.inc(("only-one",))
    batched.inc(("1", "2"), 2)
    batched.inc(("1", "2"))
    batched.flush()
    batched.flush()
    assert batched.counter.labels("1", "2")._value.get() == 3
