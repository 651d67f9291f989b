"""A real Prometheus scrapes our Hubble metrics server and answers PromQL about it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.wrappers_pb2 import BoolValue
from prometheus_client import CollectorRegistry

from ciliary.agent.metrics import AgentMetrics, count_identities
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.metrics import FlowMetrics, MetricsServer
from tests.e2e.prometheus import PROMETHEUS, PrometheusError, PrometheusServer
from tests.unit.hubble.test_l7_dashboard import SPEC as L7_SPEC
from tests.unit.hubble.test_l7_dashboard import http_response

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "grafana"

pytestmark = pytest.mark.skipif(not PROMETHEUS.exists(), reason="prometheus is not installed")


def _flow(verdict: flow_pb2.Verdict.ValueType) -> flow_pb2.Flow:
    return flow_pb2.Flow(
        verdict=verdict,
        drop_reason_desc=flow_pb2.POLICY_DENIED
        if verdict == flow_pb2.Verdict.DROPPED
        else flow_pb2.DROP_REASON_UNKNOWN,
        IP=flow_pb2.IP(source="10.0.0.1", destination="10.0.1.2", ipVersion=flow_pb2.IPv4),
        l4=flow_pb2.Layer4(
            TCP=flow_pb2.TCP(destination_port=80, flags=flow_pb2.TCPFlags(SYN=True))
        ),
        source=flow_pb2.Endpoint(namespace="shop", pod_name="web-1"),
        event_type=flow_pb2.CiliumEventType(type=1 if verdict == flow_pb2.Verdict.DROPPED else 4),
        is_reply=BoolValue(value=False),
    )


def test_prometheus_config_lists_targets(tmp_path: Path) -> None:
    prom = PrometheusServer(["127.0.0.1:9965", "127.0.0.1:9962"], scrape_interval="2s")
    config = prom._config()
    assert 'targets: ["127.0.0.1:9965", "127.0.0.1:9962"]' in config
    assert "scrape_interval: 2s" in config


@pytest.mark.privileged
def test_prometheus_inside_a_netns(tmp_path: Path) -> None:
    """Server, Prometheus and queries all inside one network namespace (as on a lab node)."""
    netns = f"ciliary-prom-{os.getpid()}"
    (tmp_path / "metrics").write_text('hubble_lost_events_total{source="hubble_ring_buffer"} 4\n')
    subprocess.run(["ip", "netns", "add", netns], check=True)
    exporter: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        exporter = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "9965",
             "--bind", "127.0.0.1", "--directory", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with PrometheusServer(["127.0.0.1:9965"], netns=netns) as prom:
            assert prom.value('hubble_lost_events_total{source="hubble_ring_buffer"}') == 4.0
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(timeout=10)
        subprocess.run(["ip", "netns", "delete", netns], check=True)


def _dashboard_exprs(name: str) -> list[str]:
    board = json.loads((EXAMPLES / name).read_text())
    assert board["__inputs"][0]["name"] == "DS_PROMETHEUS"
    exprs = [
        target["expr"]
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    assert all(panel["datasource"]["uid"] == "${DS_PROMETHEUS}" for panel in board["panels"]
               if panel["type"] != "row")  # fmt: skip
    return [
        re.sub(
            r"\$[a-z_]+",  # the dashboards' variables, all of them "All"
            ".*",
            e.replace("$__rate_interval", "10s").replace("$__range", "1m"),
        )
        for e in exprs
    ]


ALLOWED_EMPTY = ("icmp", "flows_to_world", "dns")
"""Dashboard panels of events the scenario below does not produce."""


def _may_be_empty(expr: str) -> bool:
    return any(a in expr for a in ALLOWED_EMPTY)


def test_prometheus_scrapes_our_metrics_and_runs_the_dashboards() -> None:
    """One real Prometheus scrapes three of our servers: fixed Hubble counters are read back
    exactly; over moving Hubble and agent metrics every dashboard query is valid PromQL and
    the core panels show data."""

    async def scenario() -> tuple[dict[str, float], list[str], list[str], bool]:
        fixed_registry = CollectorRegistry()
        fixed = FlowMetrics("flow drop:sourceContext=pod", fixed_registry)
        for verdict in (flow_pb2.Verdict.FORWARDED,) * 3 + (flow_pb2.Verdict.DROPPED,) * 2:
            fixed.on_flow(_flow(verdict))
        hubble_registry = CollectorRegistry()
        flows = FlowMetrics(
            f"flow drop tcp icmp port-distribution policy flows-to-world dns {L7_SPEC}",
            hubble_registry,
        )
        agent_registry = CollectorRegistry()
        agent = AgentMetrics(
            agent_registry,
            lambda: {"ready": 2},
            lambda: (1, 4),
            lambda: count_identities([1, 300]),
            lambda: [("ciliary_ct", 10, 100)],
            version="0.1.0",
        )
        servers = [
            MetricsServer(fixed_registry, "127.0.0.1:0"),
            MetricsServer(hubble_registry, "127.0.0.1:0"),
            MetricsServer(agent_registry, "127.0.0.1:0"),
        ]
        for server in servers:
            await server.start()
        prom = PrometheusServer([f"127.0.0.1:{s.port}" for s in servers])
        empty: list[str] = []
        failed: list[str] = []
        values: dict[str, float] = {}
        feeder: asyncio.Task[None] | None = None
        try:
            await asyncio.to_thread(prom.start)
            workdir = prom.workdir
            assert workdir is not None
            instance = f'instance="127.0.0.1:{servers[0].port}"'
            for key, query in (
                (
                    "forwarded",
                    f'sum(hubble_flows_processed_total{{verdict="FORWARDED",{instance}}})',
                ),
                (
                    "drops",
                    f'hubble_drop_total{{source="shop/web-1",reason="POLICY_DENIED",{instance}}}',
                ),
                ("up", f"up{{{instance}}}"),
            ):
                values[key] = await asyncio.to_thread(prom.value, query)

            async def feed() -> None:  # counters keep moving between scrapes
                while True:
                    for verdict in (flow_pb2.Verdict.FORWARDED, flow_pb2.Verdict.DROPPED):
                        flows.on_flow(_flow(verdict))
                    verdict_event = _flow(flow_pb2.Verdict.FORWARDED)
                    verdict_event.event_type.type = 5
                    flows.on_flow(verdict_event)
                    for status in (200, 403, 503):  # the L7 dashboard's panels
                        flows.on_flow(http_response(status))
                    flows.on_lost(
                        flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=1)
                    )
                    agent.observe_regeneration(0.05, ok=True)
                    await asyncio.sleep(0.2)

            feeder = asyncio.create_task(feed(), name="feed-metrics")
            await asyncio.to_thread(prom.wait_for, "rate(hubble_flows_processed_total[10s]) > 0")
            await asyncio.to_thread(
                prom.wait_for, "rate(cilium_endpoint_regenerations_total[10s]) > 0"
            )
            for name in (
                "ciliary-hubble-dashboard.json",
                "ciliary-agent-dashboard.json",
                "ciliary-hubble-l7-http-dashboard.json",
            ):
                for expr in _dashboard_exprs(name):
                    try:
                        if not await asyncio.to_thread(prom.query, expr):
                            # a busy machine delays scrapes: give rate windows time to fill
                            if not _may_be_empty(expr):
                                with contextlib.suppress(PrometheusError):
                                    await asyncio.to_thread(prom.wait_for, expr, 10.0)
                            if not await asyncio.to_thread(prom.query, expr):
                                empty.append(expr)
                    except PrometheusError as err:
                        failed.append(f"{expr}: {err}")
        finally:
            if feeder is not None:
                feeder.cancel()
            await asyncio.to_thread(prom.stop)
            for server in servers:
                await server.stop()
        return values, empty, failed, workdir.exists()

    values, empty, failed, left_behind = asyncio.run(scenario())
    assert values == {"forwarded": 3.0, "drops": 2.0, "up": 1.0}
    assert not left_behind
    assert failed == []
    # only the panels of events this scenario does not produce may be empty
    assert [e for e in empty if not _may_be_empty(e)] == []
