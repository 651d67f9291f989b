"""Hubble UI at scale: is the page still responsive with 200 workloads and 5,000 flows/min?

A synthetic relay (a real ``grpc.aio`` Observer server on a unix socket, serving GetFlows,
GetNodes and GetNamespaces as the relay does) holds flows shaped like upstream's — pods of 200
Deployments in namespace ``bench`` (labels ``app``, ``tier``; owner ``workloads``), each talking
to two others on a port of its own, some of it dropped by policy, replies, kube-dns lookups —
and feeds new ones at 5,000 flows/min (83/s). ``ciliary hubble ui --relay`` runs against it as a
user runs it, and Debian's headless Chromium (Playwright, ``/usr/bin/chromium``) opens the page.

Measured in the page for ``seconds`` (30 by default): every ``requestAnimationFrame`` interval
(frame time: 16.7 ms when nothing is late) and the event loop's lag (how late a 50 ms
``setTimeout`` fires); p50/p99/max of each. The baseline is the same page in the same browser and
run on a namespace without flows (its stream open, nothing arriving); the goals are p99 frame
time ≤ 50 ms and p99 lag ≤ 100 ms. Also reported: how long the 200 cards take to appear after
the page is opened, the flows the page took in during the window, and the UI backend's CPU.

The generator is the one home of synthetic UI flows: ``tests/e2e/test_hubble_ui_scale.py`` uses
it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import BoolValue

from bench.common import cpu_seconds
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.observer import LocalObserver, ObserverServicer

GROUP = "hubble-ui"
WORKLOADS = 200
FLOWS_PER_MIN = 5_000
NAMESPACE = "bench"
NODE = "bench-node"
TIERS = ("front", "api", "cache", "data", "batch")
PEERS = 2
"""Each workload opens connections to this many others (so ~400 edges)."""
CHROMIUM = "/usr/bin/chromium"
CILIARY = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "ciliary")
FRAME_GOAL_MS = 50.0
LAG_GOAL_MS = 100.0
Log = Callable[[str], None]


# ---- the synthetic flows ----------------------------------------------------------------------


def workload_endpoint(i: int) -> flow_pb2.Endpoint:
    """Pod of Deployment ``svc-<i>`` (its identity, labels and owner, as our Hubble fills them)."""
    name, tier = f"svc-{i}", TIERS[i % len(TIERS)]
    ep = flow_pb2.Endpoint(
        ID=1000 + i,
        identity=20000 + i,
        namespace=NAMESPACE,
        pod_name=f"{name}-6d4b7c9f8-{i:05x}",
        labels=[
            f"k8s:app={name}",
            f"k8s:tier={tier}",
            f"k8s:io.kubernetes.pod.namespace={NAMESPACE}",
            "k8s:io.cilium.k8s.policy.serviceaccount=default",
        ],
    )
    ep.workloads.add(name=name, kind="Deployment")
    return ep


def _ip(i: int) -> str:
    return f"10.{100 + i // 250}.{i % 250}.{10 + i % 200}"


KUBE_DNS = flow_pb2.Endpoint(
    ID=7,
    identity=102,
    namespace="kube-system",
    pod_name="coredns-5d78c9869d-abcde",
    labels=["k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"],
)


def peers_of(i: int) -> list[int]:
    return [(i * 7 + 1 + k * 13) % WORKLOADS for k in range(PEERS)]


def synthetic_flow(n: int, now_ns: int | None = None) -> flow_pb2.Flow:
    """The ``n``-th flow: round ``n // WORKLOADS`` has one flow of each workload, to its first
    peer in even rounds, its second in odd ones (one in 9 workloads is denied towards its second
    peer); every 10th round of a workload is a reply and every 25th a DNS lookup, staggered so
    that the first 4 rounds hold every edge."""
    i, r = n % WORKLOADS, n // WORKLOADS
    k = r % PEERS
    src, dst, port = workload_endpoint(i), workload_endpoint(peers_of(i)[k]), 8000 + (i % 20)
    src_ip, dst_ip = _ip(i), _ip(peers_of(i)[k])
    proto = "TCP"
    if (r + i) % 25 == 24:
        dst, dst_ip, port, proto = KUBE_DNS, "10.96.0.10", 53, "UDP"
    dropped = k == 1 and i % 9 == 0 and proto == "TCP"
    reply = (r + i) % 10 == 9 and not dropped
    if reply:
        src, dst, src_ip, dst_ip = dst, src, dst_ip, src_ip
    f = flow_pb2.Flow(
        verdict=flow_pb2.DROPPED if dropped else flow_pb2.FORWARDED,
        Type=flow_pb2.L3_L4,
        node_name=NODE,
        source=src,
        destination=dst,
        IP=flow_pb2.IP(source=src_ip, destination=dst_ip, ipVersion=flow_pb2.IPv4),
        event_type=flow_pb2.CiliumEventType(type=1 if dropped else 4),
        traffic_direction=flow_pb2.INGRESS,
        trace_observation_point=flow_pb2.TO_ENDPOINT if not dropped else flow_pb2.UNKNOWN_POINT,
        Summary="TCP Flags: SYN" if proto == "TCP" else "UDP",
    )
    sport, dport = 40000 + n % 20000, port
    if reply:
        sport, dport = dport, sport
    if proto == "TCP":
        f.l4.TCP.source_port, f.l4.TCP.destination_port = sport, dport
        f.l4.TCP.flags.SYN = True
        f.l4.TCP.flags.ACK = reply
    else:
        f.l4.UDP.source_port, f.l4.UDP.destination_port = sport, dport
    if dropped:
        f.drop_reason_desc = flow_pb2.POLICY_DENIED
    else:
        f.is_reply.CopyFrom(BoolValue(value=reply))
    f.time.FromNanoseconds(now_ns if now_ns is not None else time.time_ns())
    return f


# ---- the synthetic relay ----------------------------------------------------------------------


class _RelayServicer(ObserverServicer):
    """The node observer's servicer plus the relay's GetNodes (one connected node)."""

    async def GetNodes(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetNodesRequest, context: Any
    ) -> observer_pb2.GetNodesResponse:
        obs = self.observer
        node = observer_pb2.Node(
            name=obs.node_name,
            version=obs.version,
            address="unix:///bench",
            state=relay_pb2.NODE_CONNECTED,
            uptime_ns=obs.uptime_ns,
            num_flows=len(obs.ring),
            max_flows=obs.ring.capacity,
            seen_flows=obs.seen_flows,
        )
        return observer_pb2.GetNodesResponse(nodes=[node])


class SyntheticRelay:
    """A relay-shaped Observer server on a unix socket, fed ``rate`` flows/min by its own thread
    and event loop (so a synchronous caller, e.g. Playwright's, is free). The ring first holds
    ``prefill`` flows (every workload's edges, as a relay's history)."""

    def __init__(self, rate_per_min: float = FLOWS_PER_MIN, prefill: int = 2 * PEERS * WORKLOADS):
        self.rate = rate_per_min / 60.0
        self.prefill = prefill
        self._dir = tempfile.TemporaryDirectory(prefix="ciliary-ui-bench-")
        self.socket = Path(self._dir.name) / "relay.sock"
        self.address = f"unix://{self.socket}"
        self.observer = LocalObserver(NODE, capacity=4095)
        self.sent = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ui-bench-relay")
        self._server: grpc.aio.Server | None = None
        self._feeder: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(_RelayServicer(self.observer), server)
        server.add_insecure_port(self.address)
        await server.start()
        self._server = server
        for _ in range(self.prefill):
            self.observer.on_flow(synthetic_flow(self.sent))
            self.sent += 1
        self._feeder = asyncio.get_running_loop().create_task(self._feed())

    async def _feed(self) -> None:
        start, base = time.monotonic(), self.sent
        while True:
            await asyncio.sleep(0.05)
            due = base + int((time.monotonic() - start) * self.rate)
            while self.sent < due:
                self.observer.on_flow(synthetic_flow(self.sent))
                self.sent += 1

    async def _stop(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        if self._server is not None:
            await self._server.stop(grace=0)

    def __enter__(self) -> SyntheticRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._dir.cleanup()


@contextlib.contextmanager
def hubble_ui(relay: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``ciliary hubble ui --relay RELAY --port 0`` as a process: (its URL, the process)."""
    proc = subprocess.Popen(
        [CILIARY, "hubble", "ui", "--relay", relay, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        url = ""
        while not url:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
                raise RuntimeError(f"ciliary hubble ui printed no URL: {err}")
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline()
                if line.startswith("Hubble UI at "):
                    url = line.split()[3]
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# ---- measuring in the page --------------------------------------------------------------------

MEASURE_JS = """async (ms) => {
  const frames = [], lags = [];
  const received0 = hubbleUI.state.received, layouts0 = hubbleUI.map.layouts;
  await new Promise((resolve) => {
    const stop = performance.now() + ms;
    let last = null;
    function frame(t) {
      if (last !== null) frames.push(t - last);
      last = t;
      if (t < stop) requestAnimationFrame(frame); else resolve();
    }
    requestAnimationFrame(frame);
    const tick = 50;
    let expected = performance.now() + tick;
    function lag() {
      const now = performance.now();
      lags.push(Math.max(0, now - expected));
      expected = now + tick;
      if (now < stop) setTimeout(lag, tick);
    }
    setTimeout(lag, tick);
  });
  return {
    frames, lags,
    received: hubbleUI.state.received - received0,
    layouts: hubbleUI.map.layouts - layouts0,
    cards: hubbleUI.cy.nodes().not(".group").length,
    edges: hubbleUI.cy.edges().length,
    rows: hubbleUI.state.rows.length,
  };
}"""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        raise RuntimeError("the page recorded no samples (no frames: is the page rendering?)")
    return {
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "max": max(samples),
        "n": float(len(samples)),
    }


def measure(seconds: float, log: Log = print) -> dict[str, Any]:
    """The whole scenario (see the module doc); the numbers of both setups."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - a dev dependency

    out: dict[str, Any] = {}
    with (
        SyntheticRelay() as relay,
        hubble_ui(relay.address) as (url, proc),
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log(f"hubble-ui: baseline (no flows) for {seconds:.0f} s")
            page.goto(f"{url}?namespace=no-flows-here")
            page.wait_for_function("hubbleUI.state.source !== null")
            page.wait_for_timeout(1000)
            out["no flows"] = page.evaluate(MEASURE_JS, seconds * 1000)
            log("hubble-ui: 200 workloads")
            t0 = time.monotonic()
            page.goto(f"{url}?namespace={NAMESPACE}")
            page.wait_for_function(
                f"hubbleUI.cy.nodes().not('.group').length >= {WORKLOADS}", timeout=60_000
            )
            out["cards_after_s"] = time.monotonic() - t0
            # steady state: the history (the prefill) is in the table, the map complete
            page.wait_for_function(f"hubbleUI.state.received >= {relay.prefill}", timeout=60_000)
            page.wait_for_timeout(2000)
            log(f"hubble-ui: measuring for {seconds:.0f} s at {FLOWS_PER_MIN} flows/min")
            cpu0, w0, sent0 = cpu_seconds(proc.pid), time.monotonic(), relay.sent
            out["load"] = page.evaluate(MEASURE_JS, seconds * 1000)
            wall = time.monotonic() - w0
            out["backend_cpu"] = (cpu_seconds(proc.pid) - cpu0) / wall
            out["relay_rate_per_min"] = (relay.sent - sent0) / wall * 60
            out["group_key"] = page.evaluate("hubbleUI.map.groupKey")
            page.close()
        finally:
            browser.close()
    return out


def run(seconds: float = 30.0, log: Log = print) -> list[dict[str, Any]]:
    m = measure(seconds, log)
    base, load = m["no flows"], m["load"]
    loaded = f"{WORKLOADS} workloads, {FLOWS_PER_MIN:,} flows/min"
    results: list[dict[str, Any]] = []
    for what, key, goal in (
        ("frame time", "frames", FRAME_GOAL_MS),
        ("event loop lag", "lags", LAG_GOAL_MS),
    ):
        b, lo = summary(base[key]), summary(load[key])
        for stat in ("p50", "p99", "max"):
            results.append(
                {
                    "benchmark": f"{what} {stat}",
                    "unit": "ms",
                    "baseline": "no flows",
                    "values": {"no flows": b[stat], loaded: lo[stat]},
                    "goal": goal if stat == "p99" else None,
                    "samples": {"no flows": int(b["n"]), loaded: int(lo["n"])},
                    "group": GROUP,
                }
            )
    results.append(
        {
            "benchmark": "page and backend under load",
            "unit": "",
            "baseline": None,
            "values": {
                "seconds measured": seconds,
                "cards drawn": float(load["cards"]),
                "edges drawn": float(load["edges"]),
                "map grouped by": m["group_key"],
                "seconds from opening the page to 200 cards": round(m["cards_after_s"], 2),
                "flows taken in by the page per min": load["received"] / seconds * 60,
                "relay flows per min": m["relay_rate_per_min"],
                "layouts run in the window": float(load["layouts"]),
                "backend CPU (cores)": round(m["backend_cpu"], 3),
            },
            "group": GROUP,
        }
    )
    return results


if __name__ == "__main__":
    import json
    import sys

    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    print(json.dumps(run(secs, log=lambda s: print(s, file=sys.stderr)), indent=1))
