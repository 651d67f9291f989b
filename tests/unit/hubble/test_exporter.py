"""Flow export: upstream's JSON-lines ExportEvent format, filters, field mask, rotation."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.exporter import FlowExporter, parse_field_mask, parse_flow_filters


def flow(
    namespace: str = "shop", verdict: flow_pb2.Verdict.ValueType = flow_pb2.Verdict.FORWARDED
) -> flow_pb2.Flow:
    return flow_pb2.Flow(
        time=Timestamp(seconds=1_700_000_000, nanos=5),
        verdict=verdict,
        node_name="node-a",
        IP=flow_pb2.IP(source="10.0.0.1", destination="10.0.1.2", ipVersion=flow_pb2.IPv4),
        source=flow_pb2.Endpoint(namespace=namespace, pod_name="web-1", identity=1001),
        destination=flow_pb2.Endpoint(namespace="db", pod_name="pg-0", identity=1002),
        drop_reason_desc=flow_pb2.POLICY_DENIED
        if verdict == flow_pb2.Verdict.DROPPED
        else flow_pb2.DROP_REASON_UNKNOWN,
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_event_format_with_proto_field_names(tmp_path: Path) -> None:
    path = tmp_path / "out" / "flows.log"
    exporter = FlowExporter(path, node_name="node-x")
    exporter.on_flow(flow())
    exporter.on_lost(flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=2))
    exporter.on_agent_event(flow_pb2.AgentEvent(type=flow_pb2.AGENT_STARTED))
    exporter.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, lost, agent = lines(path)
    assert first["node_name"] == "node-a"  # the flow's node
    assert first["time"] == "2023-11-14T22:13:20.000000005Z"
    exported = first["flow"]
    assert isinstance(exported, dict)
    assert exported["verdict"] == "FORWARDED"
    assert exported["IP"] == {"source": "10.0.0.1", "destination": "10.0.1.2", "ipVersion": "IPv4"}
    assert exported["source"] == {"namespace": "shop", "pod_name": "web-1", "identity": 1001}
    assert lost["lost_events"] == {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "2"}
    assert lost["node_name"] == "node-x"
    assert agent["agent_event"] == {"type": "AGENT_STARTED"}
    # a reader gets the ExportEvent back
    event = json_format.Parse(path.read_text().splitlines()[0], observer_pb2.ExportEvent())
    assert event.flow.source.pod_name == "web-1"


def test_allowlist_and_denylist(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    exporter = FlowExporter(
        path,
        allowlist='{"source_pod":["shop/"]},{"verdict":["DROPPED"]}',
        denylist=[flow_pb2.FlowFilter(destination_ip=["10.0.9.9"])],
    )
    denied = flow(namespace="other")
    denied.IP.destination = "10.0.9.9"
    dropped_elsewhere = flow(namespace="other", verdict=flow_pb2.Verdict.DROPPED)
    for f in (flow(), flow(namespace="other"), dropped_elsewhere, denied):
        exporter.on_flow(f)
    exporter.close()
    assert [line["flow"]["source"]["namespace"] for line in lines(path)] == ["shop", "other"]  # type: ignore[index]
    assert (exporter.written, exporter.filtered) == (2, 2)


def test_parse_flow_filters_forms() -> None:
    one = parse_flow_filters('{"sourcePod": ["a/"]}')
    assert list(one[0].source_pod) == ["a/"]
    many = parse_flow_filters('[{"verdict":["DROPPED"]}, {"destination_port":["53"]}]')
    assert [list(f.verdict) for f in many] == [[flow_pb2.Verdict.DROPPED], []]
    assert list(many[1].destination_port) == ["53"]
    assert parse_flow_filters("  ") == []
    for bad in ('{"source_pod": "a/"', '{"nope": 1}', "[1]"):
        with pytest.raises(ValueError, match="flow filter"):
            parse_flow_filters(bad)


def test_invalid_filter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FlowExporter(tmp_path / "f.log", allowlist='{"source_ip":["not-an-ip"]}')


def test_field_mask(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    exporter = FlowExporter(path, field_mask="time source.namespace verdict")
    exporter.on_flow(flow())
    exporter.close()
    (line,) = lines(path)
    assert line["flow"] == {
        "time": "2023-11-14T22:13:20.000000005Z",
        "verdict": "FORWARDED",
        "source": {"namespace": "shop"},
    }
    with pytest.raises(ValueError, match="invalid flow field mask"):
        parse_field_mask("source.bogus")
    assert parse_field_mask("") is None


def test_size_rotation_keeps_max_backups(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    one_line = len(_rendered_line()) + 1
    # room for ~3 lines per file
    exporter = FlowExporter(path, max_size_mb=(3.5 * one_line) / (1024 * 1024), max_backups=2)
    for _ in range(20):
        exporter.on_flow(flow())
    exporter.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["flows.log", "flows.log.1", "flows.log.2"]
    for name in files:
        size = (tmp_path / name).stat().st_size
        assert 0 < size <= 3.5 * one_line
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        assert all("flow" in line for line in lines(tmp_path / name))


def test_rotation_settings_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max backups"):
        FlowExporter(tmp_path / "f.log", max_size_mb=1, max_backups=0)
    with pytest.raises(ValueError, match="max size"):
        FlowExporter(tmp_path / "f.log", max_size_mb=-1)
    # max_size_mb=0: one ever-growing file, no backups needed
    exporter = FlowExporter(tmp_path / "f.log", max_size_mb=0, max_backups=0)
    exporter.on_flow(flow())
    exporter.close()
    assert len(lines(tmp_path / "f.log")) == 1


def _rendered_line() -> str:
    event = observer_pb2.ExportEvent(node_name="node-a")
    event.time.CopyFrom(flow().time)
    event.flow.CopyFrom(flow())
    return json_format.MessageToJson(event, preserving_proto_field_name=True, indent=None)
