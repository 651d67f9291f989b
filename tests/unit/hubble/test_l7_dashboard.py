"""The "L7 HTTP metrics by workload" Grafana dashboard (examples/grafana) is fed by our metrics:
every metric its queries and variables name is one our registry serves with the README's
``--hubble-metrics`` spec, and every label they match or group by is one of that metric's
labels. (test_prometheus_scrape.py runs the queries against a real Prometheus.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.metrics import FlowMetrics

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "grafana"
BOARD = EXAMPLES / "ciliary-hubble-l7-http-dashboard.json"
SPEC = (
    "httpV2:labelsContext=source_namespace,source_workload,destination_namespace,"
    "destination_workload,traffic_direction"
)
"""The spec the dashboard's description and the README name."""

_METRIC = re.compile(r"\b((?:hubble|cilium)_[a-z0-9_]+)\b")
_MATCHER = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{?([a-zA-Z_]+)")
SCRAPE_LABELS = {"instance", "job"}


def http_response(status: int) -> flow_pb2.Flow:
    """A response flow as Envoy's access log makes it (server → client, ingress)."""
    return flow_pb2.Flow(
        Type=flow_pb2.L7,
        traffic_direction=flow_pb2.TrafficDirection.INGRESS,
        source=flow_pb2.Endpoint(
            namespace="shop", workloads=[flow_pb2.Workload(name="web", kind="Deployment")]
        ),
        destination=flow_pb2.Endpoint(
            namespace="shop", workloads=[flow_pb2.Workload(name="client", kind="Deployment")]
        ),
        l7=flow_pb2.Layer7(
            type=flow_pb2.L7FlowType.RESPONSE,
            latency_ns=3_000_000,
            http=flow_pb2.HTTP(code=status, method="GET", protocol="HTTP/1.1", url="http://web/"),
        ),
    )


def served_labels() -> dict[str, set[str]]:
    """Sample name → its label names, as our registry exposes them after some traffic."""
    reg = CollectorRegistry()
    metrics = FlowMetrics(SPEC, reg)
    for status in (200, 403, 503):
        metrics.on_flow(http_response(status))
    served: dict[str, set[str]] = {}
    for family in reg.collect():
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    return served


def board_queries() -> list[str]:
    board = json.loads(BOARD.read_text())
    queries = [
        target["expr"]
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    queries += [v["definition"] for v in board["templating"]["list"]]
    return queries


def test_every_query_names_served_metrics_and_their_labels() -> None:
    served = served_labels()
    board = json.loads(BOARD.read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    queries = board_queries()
    assert len(queries) >= 10
    seen: set[str] = set()
    for query in queries:
        names = set(_METRIC.findall(query))
        assert names, f"no metric in {query!r}"
        missing = names - set(served)
        assert not missing, f"{query!r}: metrics {missing} are not served by {SPEC!r}"
        seen |= names
        labels = set().union(*(served[n] for n in names)) | SCRAPE_LABELS
        used = set(_MATCHER.findall(query))
        for group in _GROUPING.findall(query):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        used |= set(re.findall(r"label_values\([^,]*,\s*([a-z_]+)\)", query))
        assert used <= labels, f"{query!r}: labels {used - labels} are not the metrics'"
        unknown = set(_VARIABLE.findall(query)) - variables - {"__rate_interval", "__range"}
        assert not unknown, f"{query!r}: undefined variables {unknown}"
    assert {"hubble_http_requests_total", "hubble_http_request_duration_seconds_bucket"} <= seen


def test_the_check_fails_for_a_metric_or_label_we_do_not_serve() -> None:
    """The checks above can fail: a wrong metric name and a label httpV2 has not."""
    served = served_labels()
    assert "hubble_http_responses_total" not in served  # v1 only
    assert "destination_pod" not in served["hubble_http_requests_total"]
    assert {"reporter", "status", "method", "source_workload"} <= served[
        "hubble_http_requests_total"
    ]
