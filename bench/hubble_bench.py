"""Hubble: how many flows a node decodes and filters per second, the highest datapath event rate
it keeps up with without losing one, and how long ``observe --last 4095`` takes.

1. In-process pipeline on 20,000 realistic records (TCP and UDP between two local pods): the raw
   record decode alone is the baseline, next to the ring reader's batch decode of the same
   records as ring spans of 1,024 (``decode_batch``: numpy, #17 step 2); then + the flow
   decoder (enrichment from endpoints and identities), + the observer (ring, namespaces, the
   lab's default Hubble metrics as hooks), + one whitelist/blacklist filter evaluated on every
   flow ("decoded and filtered").
2. A one-node lab with ``monitorAggregation: none`` (one event per packet): ``sockperf`` sends UDP
   at a fixed message rate from one pod to another for a few seconds per step; a GetFlows
   follower whose filter matches nothing counts every LostEvent (datapath ring, events queue).
   Steps double until a loss, then bisect: the result is the highest rate with 0 lost, next to
   what the in-process pipeline could do.
3. ``ciliary observe --last 4095 -o json`` against the node's socket and against the relay, with
   the observer ring full, wall time of the whole command (process start included) against
   ``--last 1`` (the fixed cost), median of 5 after a warm-up.

#17's first step (struct unpack + cached addresses/MACs in the record decode; the decoder's
Endpoint/summary/address-text/TCP-flag caches and batched UUIDs; batched metric counters),
stage 1 on 2026-12-05 with the machine shared with other builds (load 5-13 on 2 cores), before
and after interleaved in the same minutes, median of 3 runs (each the median of 3 rounds).
Flows per CPU-second of the process (``time.process_time`` as the clock: steadier under load)
and per wall-clock second (the bench's own clock; ~5x below a quiet machine's)::

                                    CPU s: before -> after    wall s: before -> after
    record decode only                     40.8k -> 241k (5.9x)       21.4k -> 131k  (6.1x)
    + flow decoder (enrichment)            14.2k -> 38.2k (2.7x)       8.1k -> 19.1k (2.4x)
    + observer ring + metrics               8.0k -> 18.6k (2.3x)       3.3k ->  8.3k (2.5x)
    + filter (decoded and filtered)         7.7k -> 17.3k (2.2x)       3.6k -> 12.0k (3.3x)

#15 Build 1 (one event vocabulary, records dispatched on their type byte by ``decode_event`` and
the decoder's families), the stages through both dispatches as the agent runs them, before ->
after interleaved on the loaded machine (load 5-7), median of 7 rounds, flows per CPU-second:
record decode 237k -> 233k, + flow decoder 38.2k -> 38.0k, + observer ring + metrics 18.7k ->
18.5k, + filter 17.2k -> 16.9k (within 2 %: one dict lookup per record for each dispatch).

#17 step 3 (the observer ring as columns: ``rows_pipeline``, the agent's path for spans of trace
records), flows per CPU-second, median of 3 rounds, two runs interleaved with the tree before
(load 9.3-10.4): the one-by-one stages as before (record decode + decoder + observer + metrics +
filter 15.5k / 15.4k before, 14.4k / 14.5k after); rows: flow templates 437k / 467k, + observer
columns + metrics per template 406k / 439k, + filter (``build_row_filter``: templates and the
source-port column, matching rows made whole; the filter matches none of these records) 286k,
+ every flow made whole 99k / 101k. The lab step (2.) at load ~11: 0 lost at every rate sockperf
reached, 64k/s (10-20k/s before).

The counters' batched sums are added when they are collected; the bench does not scrape (a
scrape costs one ``inc`` per label set, a handful, not one per flow).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import grpc

from bench.common import median, tag
from ciliary.agent.flowrows import decode_rows
from ciliary.agent.flows import EndpointInfo, FlowDecoder, FlowGetters
from ciliary.datapath.libbpf import RINGBUF_HDR_SZ
from ciliary.datapath.maps.events import (
    TRACE_RECORD_STRIDE,
    TraceEventC,
    decode_batch,
    decode_event,
    trace_rows,
)
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.filters import build_filter, build_row_filter
from ciliary.hubble.metrics import FlowMetrics
from ciliary.hubble.observer import LocalObserver
from ciliary.lab import manager

GROUP = "hubble"
RECORDS = 20_000
SPAN_RECORDS = 1024
"""Records per ring span in the batch-decode row (a busy ring hands over thousands at once)."""
CILIARY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ciliary")
DEFAULT_METRICS = "dns drop tcp flow port-distribution icmp policy"
SINK_PORT = 11111
Log = Callable[[str], None]

# ---- 1. in-process pipeline --------------------------------------------------------------------

_CLIENT, _SERVER = ip_address("10.200.0.10"), ip_address("10.200.0.20")


def _record(i: int) -> bytes:
    ev = TraceEventC()
    ev.ts_ns = time.monotonic_ns() + i
    ev.saddr[:4] = list(_CLIENT.packed)
    ev.daddr[:4] = list(_SERVER.packed)
    ev.smac[:] = [2, 0, 0, 0, 0, 1]
    ev.dmac[:] = [2, 0, 0, 0, 0, 2]
    ev.sport, ev.dport = 30000 + i % 1000, 80 if i % 2 else 53
    ev.src_sec_id, ev.dst_sec_id = 20001, 20002
    ev.ifindex, ev.pkt_len = 7, 120
    ev.ep_id, ev.dst_ep_id = 11, 12
    ev.family = socket.AF_INET
    ev.proto = 6 if i % 2 else 17
    dropped = i % 10 == 0
    ev.type = 1 if dropped else 4
    ev.verdict = 2 if dropped else 1
    ev.drop_reason = 133 if dropped else 0
    ev.obs_point = 101
    ev.tcp_flags = 0x12 if i % 4 == 1 else 0x10
    ev.ct_state = 1
    ev.traffic_direction = 1
    return bytes(ev)


def _ring_spans(records: list[bytes], per_span: int = SPAN_RECORDS) -> list[bytes]:
    """The records as the ring reader's spans: each behind its 8-byte ring header, 8-aligned."""
    framed = [struct.pack("=II", len(r), 0) + r + bytes(-len(r) % RINGBUF_HDR_SZ) for r in records]
    return [b"".join(framed[i : i + per_span]) for i in range(0, len(framed), per_span)]


def _decoder() -> FlowDecoder:
    eps = {
        _CLIENT: EndpointInfo(11, 20001, "default", "client"),
        _SERVER: EndpointInfo(12, 20002, "shop", "server"),
    }
    labels = {
        20001: ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"],
        20002: ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=shop"],
    }
    return FlowDecoder(
        "bench-node",
        FlowGetters(
            endpoint_by_ip=eps.get,
            identity_of_ip=lambda ip: eps[ip].identity if ip in eps else None,
            identity_labels=labels.get,
            ifname=lambda _i: "lxc0bench",
        ),
    )


def _rate(records: list[bytes], stage: Callable[[bytes], object], rounds: int) -> list[float]:
    for rec in records[:2000]:  # warm-up
        stage(rec)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for rec in records:
            stage(rec)
        out.append(len(records) / (time.perf_counter() - t0))
    return out


def pipeline(rounds: int) -> dict[str, list[float]]:
    """flows/s per stage, ``rounds`` samples each."""
    records = [_record(i) for i in range(RECORDS)]
    decoder = _decoder()
    observer = LocalObserver("bench-node", capacity=4095)
    metrics = FlowMetrics(DEFAULT_METRICS, _registry())
    observer.add_flow_hook(metrics.on_flow)
    keep = build_filter(
        [flow_pb2.FlowFilter(source_pod=["default/"], verdict=[flow_pb2.DROPPED])],
        [flow_pb2.FlowFilter(destination_port=["53"])],
    )

    families = decoder.families  # the agent's path: both dispatches on the record type

    def decode_only(rec: bytes) -> object:
        return decode_event(rec)

    def enrich(rec: bytes) -> object:
        raw = decode_event(rec)
        return families[raw.type](raw)

    def observe(rec: bytes) -> object:
        raw = decode_event(rec)
        flow = families[raw.type](raw)
        assert flow is not None
        observer.on_flow(flow)
        return flow

    def filtered(rec: bytes) -> object:
        raw = decode_event(rec)
        flow = families[raw.type](raw)
        assert flow is not None
        observer.on_flow(flow)
        return keep(flow)

    spans = _ring_spans(records)

    def batch_rate() -> list[float]:
        decode_batch(spans[0])  # warm-up
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for span in spans:
                decode_batch(span)
            out.append(len(records) / (time.perf_counter() - t0))
        return out

    return {
        "record decode only (baseline)": _rate(records, decode_only, rounds),
        "ring batch decode (decode_batch, numpy)": batch_rate(),
        "+ flow decoder (enrichment)": _rate(records, enrich, rounds),
        "+ observer ring + metrics": _rate(records, observe, rounds),
        "+ filter (decoded and filtered)": _rate(records, filtered, rounds),
        **rows_pipeline(spans, rounds),
    }


def rows_pipeline(spans: list[bytes], rounds: int) -> dict[str, list[float]]:
    """The agent's path since #17 step 3: each ring span as numpy rows (``trace_rows``),
    enriched as flow templates (``decode_rows``), into the observer's columns with the metrics
    counted per template; then the bench's filter on every row (on its template, as GetFlows
    does for a filter that reads no per-row field), matching rows made whole; and a reader that
    makes every flow whole (a follower without a filter)."""
    decoder = _decoder()
    observer = LocalObserver("bench-node", capacity=4095)
    metrics = FlowMetrics(DEFAULT_METRICS, _registry())
    observer.add_counted_flow_hook(metrics.on_flows)
    ring = observer.ring
    verdicts = build_row_filter(
        [flow_pb2.FlowFilter(source_pod=["default/"], verdict=[flow_pb2.DROPPED])],
        [flow_pb2.FlowFilter(destination_port=["53"])],
    )

    def templates(span: bytes) -> object:
        rows = trace_rows(span)
        assert rows is not None
        return decode_rows(decoder, rows)

    def observe(span: bytes) -> object:
        rows = trace_rows(span)
        assert rows is not None
        observer.on_flow_rows(decode_rows(decoder, rows))
        return rows

    def filtered(span: bytes) -> object:
        n = len(observe(span))  # type: ignore[arg-type]
        for pos in range(ring.written - n, ring.written):
            row = ring.row_at(pos)
            assert row is not None
            if verdicts(row[0], row[2]):
                ring.get(pos)
        return n

    def made_whole(span: bytes) -> object:
        n = len(observe(span))  # type: ignore[arg-type]
        for pos in range(ring.written - n, ring.written):
            ring.get(pos)
        return n

    records = sum(len(span) for span in spans) // TRACE_RECORD_STRIDE

    def rate(stage: Callable[[bytes], object]) -> list[float]:
        stage(spans[0])  # warm-up
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for span in spans:
                stage(span)
            out.append(records / (time.perf_counter() - t0))
        return out

    return {
        "rows: flow templates (decode_rows)": rate(templates),
        "rows: + observer columns + metrics per template": rate(observe),
        "rows: + filter (decoded and filtered)": rate(filtered),
        "rows: + every flow made whole (a reader without filter)": rate(made_whole),
    }


def _registry() -> Any:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    return CollectorRegistry()


# ---- 2./3. the lab -----------------------------------------------------------------------------

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  monitorAggregation: none
  nodes: [{{name: {node}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: sender, labels: {{app: sender}}}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: sink, labels: {{app: sink}}}}
spec:
  containers:
  - {{name: main, command: [sockperf, server, -i, 0.0.0.0, -p, "{port}"]}}
"""


@contextlib.contextmanager
def _lab(log: Log) -> Iterator[tuple[str, str, str, str]]:
    name, node = f"hb{tag()}", f"hb{tag()}n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lab.yaml"
        path.write_text(LAB.format(lab=name, node=node, port=SINK_PORT))
        try:
            log(f"hubble: lab {name} up")
            view = manager.up(path)
            sink = next(p.ipv4 for p in view.pods if p.name == "sink")
            assert sink is not None and view.relay is not None
            yield name, node, sink, view.relay.address
        finally:
            if name in manager.list_labs():
                manager.down(name)


class _LossCounter(threading.Thread):
    """A GetFlows follower whose filter matches no flow: it keeps up, and LostEvents are never
    filtered, so it sees every loss the node reports."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.lost = 0
        self._channel = grpc.insecure_channel(target)
        self._call: Any = None
        self.ready = threading.Event()

    def run(self) -> None:
        req = observer_pb2.GetFlowsRequest(
            follow=True, whitelist=[flow_pb2.FlowFilter(source_ip=["192.0.2.255"])]
        )
        self._call = observer_pb2_grpc.ObserverStub(self._channel).GetFlows(req)
        self.ready.set()
        with contextlib.suppress(grpc.RpcError):
            for res in self._call:
                if res.HasField("lost_events"):
                    self.lost += res.lost_events.num_events_lost

    def stop(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._channel.close()


def _seen(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        st = observer_pb2_grpc.ObserverStub(ch).ServerStatus(
            observer_pb2.ServerStatusRequest(), timeout=5
        )
    return int(st.seen_flows)


_SENT = re.compile(r"Total of (\d+) messages sent")


def _step(
    lab: str, sink: str, target: str, counter: _LossCounter, *, rate: int, secs: int
) -> dict[str, int]:
    lost0, seen0 = counter.lost, _seen(target)
    res = manager.run_in_pod(
        "default/sender",
        ["sockperf", "throughput", "-i", sink, "-p", str(SINK_PORT), "-m", "16",
         f"--mps={rate}", "-t", str(secs)],
        name=lab, timeout=secs + 30,
    )  # fmt: skip
    sent = sum(int(n) for n in _SENT.findall(res.stdout + res.stderr))
    # let the decoder drain and the lost counters be polled (1 s) before reading
    last, stable = -1, time.monotonic() + 20
    while time.monotonic() < stable:
        time.sleep(1.2)
        now = _seen(target) + counter.lost
        if now == last:
            break
        last = now
    seen = _seen(target) - seen0
    return {"rate": rate, "sent": sent, "seen": seen, "lost": counter.lost - lost0}


Steps = list[dict[str, int]]


def highest_rate(lab: str, node: str, sink: str, log: Log, secs: int) -> tuple[int, Steps]:
    target = f"unix:///run/ciliary/{node}/hubble.sock"
    counter = _LossCounter(target)
    counter.start()
    counter.ready.wait(5)
    steps: Steps = []
    try:
        time.sleep(1.5)
        good, bad, rate = 0, 0, 2000
        while rate <= 256_000:
            st = _step(lab, sink, target, counter, rate=rate, secs=secs)
            steps.append(st)
            log(f"hubble: {rate}/s sent {st['sent']} seen {st['seen']} lost {st['lost']}")
            if st["lost"] == 0 and st["sent"] > 0:
                good, rate = rate, rate * 2
            else:
                bad = rate
                break
        for _ in range(2 if bad else 0):  # bisect between the last good and the first bad rate
            rate = (good + bad) // 2
            st = _step(lab, sink, target, counter, rate=rate, secs=secs)
            steps.append(st)
            log(f"hubble: {rate}/s sent {st['sent']} seen {st['seen']} lost {st['lost']}")
            if st["lost"] == 0:
                good = rate
            else:
                bad = rate
    finally:
        counter.stop()
    return good, steps


def _observe_ms(server: str, last: int) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(
        [CILIARY, "observe", "--server", server, "--last", str(last), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if res.returncode != 0:
        raise RuntimeError(f"observe failed: {res.stderr[-300:]}")
    lines = sum(1 for ln in res.stdout.splitlines() if '"flow"' in ln)
    if lines < last:
        raise RuntimeError(f"observe --last {last} printed {lines} flows")
    return elapsed


def observe_latency(node: str, relay: str, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for where, server in (("node socket", f"unix:///run/ciliary/{node}/hubble.sock"),
                          ("relay", relay)):  # fmt: skip
        for last in (1, 4095):
            _observe_ms(server, last)  # warm-up
            out[f"--last {last}, {where}"] = [_observe_ms(server, last) for _ in range(rounds)]
    return out


def run(rounds: int = 5, step_seconds: int = 3, log: Log = print) -> list[dict[str, Any]]:
    log("hubble: in-process pipeline")
    stages = pipeline(rounds)
    base = "record decode only (baseline)"
    results: list[dict[str, Any]] = [
        {
            "benchmark": f"flows/s through the node's pipeline ({RECORDS:,} records, in-process)",
            "unit": "flows/s",
            "baseline": base,
            "values": {k: median(v) for k, v in stages.items()},
            "samples": stages,
            "group": GROUP,
        }
    ]
    with _lab(log) as (lab, node, sink, relay):
        best, steps = highest_rate(lab, node, sink, log, step_seconds)
        pipeline_rate = median(stages["rows: + filter (decoded and filtered)"])
        results.append(
            {
                "benchmark": (
                    "highest datapath event rate with 0 lost (UDP at a fixed rate, one event per"
                    f" packet, {step_seconds} s per step)"
                ),
                "unit": "events/s",
                "baseline": "in-process pipeline (decoded and filtered)",
                "values": {
                    "in-process pipeline (decoded and filtered)": pipeline_rate,
                    "node in a lab, 0 lost": float(best),
                },
                "steps": steps,
                "group": GROUP,
            }
        )
        log("hubble: observe latency")
        lat = observe_latency(node, relay, rounds)
        results.append(
            {
                "benchmark": "`ciliary observe -o json` wall time (process start included)",
                "unit": "ms",
                "baseline": "--last 1, node socket",
                "values": {k: median(v) for k, v in lat.items()},
                "samples": lat,
                "group": GROUP,
            }
        )
    return results
