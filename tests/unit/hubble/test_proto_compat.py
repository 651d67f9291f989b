"""Wire compatibility of our Hubble .proto files with upstream Hubble.

Upstream `hubble` CLIs, relays and UIs only interoperate with us if service paths, message
field numbers/types and enum values are exactly upstream's, and `hubble observe -o jsonpb`
consumers only parse our JSON if field names are too. The expected tables below were typed
from upstream's sources, not derived from our .proto files, so a typo on either side fails here:

- flow: cilium/cilium@018371ba3fb697cdb61cf2af97540bd27f3c6107 api/v1/flow/flow.pb.go
  (struct tags; protoc-gen-go v1.36.12, Hubble 1.19 development line)
- observer: DataDog/cilium@dc204c2d28f65ca8bf6f169af787523319a142b3 api/v1/observer/observer.proto
  (minus that fork's GetPolicies) and the method list of
  cilium/cilium@018c221af7bfa2ac62d75b30f341074b67226187 api/v1/observer/observer_grpc.pb.go
- relay: cilium/cilium@a0b419ed7a029b1d9539dac267c90f95e54e6833 api/v1/relay/relay.proto
- peer: cilium/cilium@08ccb7b1eb2a1cea87a518652d6fc1f1719024bd api/v1/peer/peer.proto
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.wrappers_pb2 import BoolValue

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.peer import peer_pb2, peer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_DOUBLE: "double",
}


def _type(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        name = field.message_type.full_name
    elif field.enum_type is not None:
        name = field.enum_type.full_name
    else:
        name = _SCALARS[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _shape(desc: Descriptor) -> dict[str, tuple[int, str]]:
    return {f.name: (f.number, _type(f)) for f in desc.fields}


def _values(desc: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in desc.values}


TS = "google.protobuf.Timestamp"

FLOW = {
    "time": (1, TS),
    "uuid": (34, "string"),
    "emitter": (41, "flow.Emitter"),
    "verdict": (2, "flow.Verdict"),
    "drop_reason": (3, "uint32"),
    "auth_type": (35, "flow.AuthType"),
    "ethernet": (4, "flow.Ethernet"),
    "IP": (5, "flow.IP"),
    "l4": (6, "flow.Layer4"),
    "tunnel": (39, "flow.Tunnel"),
    "source": (8, "flow.Endpoint"),
    "destination": (9, "flow.Endpoint"),
    "Type": (10, "flow.FlowType"),
    "node_name": (11, "string"),
    "node_labels": (37, "repeated string"),
    "source_names": (13, "repeated string"),
    "destination_names": (14, "repeated string"),
    "l7": (15, "flow.Layer7"),
    "reply": (16, "bool"),
    "event_type": (19, "flow.CiliumEventType"),
    "source_service": (20, "flow.Service"),
    "destination_service": (21, "flow.Service"),
    "traffic_direction": (22, "flow.TrafficDirection"),
    "policy_match_type": (23, "uint32"),
    "trace_observation_point": (24, "flow.TraceObservationPoint"),
    "trace_reason": (36, "flow.TraceReason"),
    "file": (38, "flow.FileInfo"),
    "ip_trace_id": (40, "flow.IPTraceID"),
    "drop_reason_desc": (25, "flow.DropReason"),
    "is_reply": (26, "google.protobuf.BoolValue"),
    "debug_capture_point": (27, "flow.DebugCapturePoint"),
    "interface": (28, "flow.NetworkInterface"),
    "proxy_port": (29, "uint32"),
    "trace_context": (30, "flow.TraceContext"),
    "sock_xlate_point": (31, "flow.SocketTranslationPoint"),
    "socket_cookie": (32, "uint64"),
    "cgroup_id": (33, "uint64"),
    "Summary": (100000, "string"),
    "extensions": (150000, "google.protobuf.Any"),
    "egress_allowed_by": (21001, "repeated flow.Policy"),
    "ingress_allowed_by": (21002, "repeated flow.Policy"),
    "egress_denied_by": (21004, "repeated flow.Policy"),
    "ingress_denied_by": (21005, "repeated flow.Policy"),
    "policy_log": (21006, "repeated string"),
    "aggregate": (21007, "flow.Aggregate"),
}

FLOW_FILTER = {
    "uuid": (29, "repeated string"),
    "source_ip": (1, "repeated string"),
    "source_ip_xlated": (34, "repeated string"),
    "source_pod": (2, "repeated string"),
    "source_fqdn": (7, "repeated string"),
    "source_label": (10, "repeated string"),
    "source_service": (16, "repeated string"),
    "source_workload": (26, "repeated flow.Workload"),
    "source_cluster_name": (37, "repeated string"),
    "destination_ip": (3, "repeated string"),
    "destination_pod": (4, "repeated string"),
    "destination_fqdn": (8, "repeated string"),
    "destination_label": (11, "repeated string"),
    "destination_service": (17, "repeated string"),
    "destination_workload": (27, "repeated flow.Workload"),
    "destination_cluster_name": (38, "repeated string"),
    "traffic_direction": (30, "repeated flow.TrafficDirection"),
    "verdict": (5, "repeated flow.Verdict"),
    "drop_reason_desc": (33, "repeated flow.DropReason"),
    "interface": (35, "repeated flow.NetworkInterface"),
    "event_type": (6, "repeated flow.EventTypeFilter"),
    "http_status_code": (9, "repeated string"),
    "protocol": (12, "repeated string"),
    "source_port": (13, "repeated string"),
    "destination_port": (14, "repeated string"),
    "reply": (15, "repeated bool"),
    "dns_query": (18, "repeated string"),
    "source_identity": (19, "repeated uint32"),
    "destination_identity": (20, "repeated uint32"),
    "http_method": (21, "repeated string"),
    "http_path": (22, "repeated string"),
    "http_url": (31, "repeated string"),
    "http_header": (32, "repeated flow.HTTPHeader"),
    "tcp_flags": (23, "repeated flow.TCPFlags"),
    "node_name": (24, "repeated string"),
    "node_labels": (36, "repeated string"),
    "ip_version": (25, "repeated flow.IPVersion"),
    "trace_id": (28, "repeated string"),
    "ip_trace_id": (39, "repeated uint64"),
    "encrypted": (40, "repeated bool"),
    "experimental": (999, "flow.FlowFilter.Experimental"),
}

PORTS = {"source_port": (1, "uint32"), "destination_port": (2, "uint32")}
TYPE_CODE = {"type": (1, "uint32"), "code": (2, "uint32")}

MESSAGES: dict[Descriptor, dict[str, tuple[int, str]]] = {
    flow_pb2.Flow.DESCRIPTOR: FLOW,
    flow_pb2.FlowFilter.DESCRIPTOR: FLOW_FILTER,
    flow_pb2.FlowFilter.Experimental.DESCRIPTOR: {"cel_expression": (1, "repeated string")},
    flow_pb2.Endpoint.DESCRIPTOR: {
        "ID": (1, "uint32"),
        "identity": (2, "uint32"),
        "cluster_name": (7, "string"),
        "namespace": (3, "string"),
        "labels": (4, "repeated string"),
        "pod_name": (5, "string"),
        "workloads": (6, "repeated flow.Workload"),
    },
    flow_pb2.Workload.DESCRIPTOR: {"name": (1, "string"), "kind": (2, "string")},
    flow_pb2.Layer4.DESCRIPTOR: {
        "TCP": (1, "flow.TCP"),
        "UDP": (2, "flow.UDP"),
        "ICMPv4": (3, "flow.ICMPv4"),
        "ICMPv6": (4, "flow.ICMPv6"),
        "SCTP": (5, "flow.SCTP"),
        "VRRP": (6, "flow.VRRP"),
        "IGMP": (7, "flow.IGMP"),
    },
    flow_pb2.TCP.DESCRIPTOR: {**PORTS, "flags": (3, "flow.TCPFlags")},
    flow_pb2.UDP.DESCRIPTOR: PORTS,
    flow_pb2.SCTP.DESCRIPTOR: {**PORTS, "chunk_type": (3, "flow.SCTPChunkType")},
    flow_pb2.ICMPv4.DESCRIPTOR: TYPE_CODE,
    flow_pb2.ICMPv6.DESCRIPTOR: TYPE_CODE,
    flow_pb2.TCPFlags.DESCRIPTOR: {
        name: (i, "bool")
        for i, name in enumerate(["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"], 1)
    },
    flow_pb2.IP.DESCRIPTOR: {
        "source": (1, "string"),
        "source_xlated": (5, "string"),
        "destination": (2, "string"),
        "ipVersion": (3, "flow.IPVersion"),
        "encrypted": (4, "bool"),
    },
    flow_pb2.Ethernet.DESCRIPTOR: {"source": (1, "string"), "destination": (2, "string")},
    flow_pb2.Tunnel.DESCRIPTOR: {
        "protocol": (1, "flow.Tunnel.Protocol"),
        "IP": (2, "flow.IP"),
        "l4": (3, "flow.Layer4"),
        "vni": (4, "uint32"),
    },
    flow_pb2.Layer7.DESCRIPTOR: {
        "type": (1, "flow.L7FlowType"),
        "latency_ns": (2, "uint64"),
        "dns": (100, "flow.DNS"),
        "http": (101, "flow.HTTP"),
        "kafka": (102, "flow.Kafka"),
    },
    flow_pb2.DNS.DESCRIPTOR: {
        "query": (1, "string"),
        "ips": (2, "repeated string"),
        "ttl": (3, "uint32"),
        "cnames": (4, "repeated string"),
        "observation_source": (5, "string"),
        "rcode": (6, "uint32"),
        "qtypes": (7, "repeated string"),
        "rrtypes": (8, "repeated string"),
    },
    flow_pb2.HTTP.DESCRIPTOR: {
        "code": (1, "uint32"),
        "method": (2, "string"),
        "url": (3, "string"),
        "protocol": (4, "string"),
        "headers": (5, "repeated flow.HTTPHeader"),
    },
    flow_pb2.Policy.DESCRIPTOR: {
        "name": (1, "string"),
        "namespace": (2, "string"),
        "labels": (3, "repeated string"),
        "revision": (4, "uint64"),
        "kind": (5, "string"),
    },
    flow_pb2.Service.DESCRIPTOR: {"name": (1, "string"), "namespace": (2, "string")},
    flow_pb2.CiliumEventType.DESCRIPTOR: {"type": (1, "int32"), "sub_type": (2, "int32")},
    flow_pb2.EventTypeFilter.DESCRIPTOR: {
        "type": (1, "int32"),
        "match_sub_type": (2, "bool"),
        "sub_type": (3, "int32"),
    },
    flow_pb2.NetworkInterface.DESCRIPTOR: {"index": (1, "uint32"), "name": (2, "string")},
    flow_pb2.LostEvent.DESCRIPTOR: {
        "source": (1, "flow.LostEventSource"),
        "num_events_lost": (2, "uint64"),
        "cpu": (3, "google.protobuf.Int32Value"),
        "first": (4, TS),
        "last": (5, TS),
    },
    flow_pb2.AgentEvent.DESCRIPTOR: {
        "type": (1, "flow.AgentEventType"),
        "unknown": (100, "flow.AgentEventUnknown"),
        "agent_start": (101, "flow.TimeNotification"),
        "policy_update": (102, "flow.PolicyUpdateNotification"),
        "endpoint_regenerate": (103, "flow.EndpointRegenNotification"),
        "endpoint_update": (104, "flow.EndpointUpdateNotification"),
        "ipcache_update": (105, "flow.IPCacheNotification"),
        "service_upsert": (106, "flow.ServiceUpsertNotification"),
        "service_delete": (107, "flow.ServiceDeleteNotification"),
    },
    flow_pb2.DebugEvent.DESCRIPTOR: {
        "type": (1, "flow.DebugEventType"),
        "source": (2, "flow.Endpoint"),
        "hash": (3, "google.protobuf.UInt32Value"),
        "arg1": (4, "google.protobuf.UInt32Value"),
        "arg2": (5, "google.protobuf.UInt32Value"),
        "arg3": (6, "google.protobuf.UInt32Value"),
        "message": (7, "string"),
        "cpu": (8, "google.protobuf.Int32Value"),
    },
    flow_pb2.TraceContext.DESCRIPTOR: {"parent": (1, "flow.TraceParent")},
    flow_pb2.TraceParent.DESCRIPTOR: {"trace_id": (1, "string")},
    observer_pb2.GetFlowsRequest.DESCRIPTOR: {
        "number": (1, "uint64"),
        "first": (9, "bool"),
        "follow": (3, "bool"),
        "blacklist": (5, "repeated flow.FlowFilter"),
        "whitelist": (6, "repeated flow.FlowFilter"),
        "since": (7, TS),
        "until": (8, TS),
        "field_mask": (10, "google.protobuf.FieldMask"),
        "experimental": (999, "observer.GetFlowsRequest.Experimental"),
        "extensions": (150000, "google.protobuf.Any"),
    },
    observer_pb2.GetFlowsResponse.DESCRIPTOR: {
        "flow": (1, "flow.Flow"),
        "node_status": (2, "relay.NodeStatusEvent"),
        "lost_events": (3, "flow.LostEvent"),
        "node_name": (1000, "string"),
        "time": (1001, TS),
    },
    observer_pb2.GetAgentEventsRequest.DESCRIPTOR: {
        "number": (1, "uint64"),
        "first": (9, "bool"),
        "follow": (2, "bool"),
        "since": (7, TS),
        "until": (8, TS),
    },
    observer_pb2.ServerStatusResponse.DESCRIPTOR: {
        "num_flows": (1, "uint64"),
        "max_flows": (2, "uint64"),
        "seen_flows": (3, "uint64"),
        "uptime_ns": (4, "uint64"),
        "num_connected_nodes": (5, "google.protobuf.UInt32Value"),
        "num_unavailable_nodes": (6, "google.protobuf.UInt32Value"),
        "unavailable_nodes": (7, "repeated string"),
        "version": (8, "string"),
        "flows_rate": (9, "double"),
    },
    observer_pb2.Node.DESCRIPTOR: {
        "name": (1, "string"),
        "version": (2, "string"),
        "address": (3, "string"),
        "state": (4, "relay.NodeState"),
        "tls": (5, "observer.TLS"),
        "uptime_ns": (6, "uint64"),
        "num_flows": (7, "uint64"),
        "max_flows": (8, "uint64"),
        "seen_flows": (9, "uint64"),
    },
    observer_pb2.TLS.DESCRIPTOR: {"enabled": (1, "bool"), "server_name": (2, "string")},
    observer_pb2.Namespace.DESCRIPTOR: {"cluster": (1, "string"), "namespace": (2, "string")},
    observer_pb2.GetNamespacesResponse.DESCRIPTOR: {
        "namespaces": (1, "repeated observer.Namespace")
    },
    observer_pb2.ExportEvent.DESCRIPTOR: {
        "flow": (1, "flow.Flow"),
        "node_status": (2, "relay.NodeStatusEvent"),
        "lost_events": (3, "flow.LostEvent"),
        "agent_event": (4, "flow.AgentEvent"),
        "debug_event": (5, "flow.DebugEvent"),
        "node_name": (1000, "string"),
        "time": (1001, TS),
    },
    relay_pb2.NodeStatusEvent.DESCRIPTOR: {
        "state_change": (1, "relay.NodeState"),
        "node_names": (2, "repeated string"),
        "message": (3, "string"),
    },
    peer_pb2.ChangeNotification.DESCRIPTOR: {
        "name": (1, "string"),
        "address": (2, "string"),
        "type": (3, "peer.ChangeNotificationType"),
        "tls": (4, "peer.TLS"),
    },
    peer_pb2.TLS.DESCRIPTOR: {"server_name": (1, "string")},
}


@pytest.mark.parametrize("desc", list(MESSAGES), ids=lambda d: d.full_name)
def test_message_fields_match_upstream(desc: Descriptor) -> None:
    assert _shape(desc) == MESSAGES[desc]


def test_oneofs_match_upstream() -> None:
    def members(desc: Descriptor, oneof: str) -> list[str]:
        return [f.name for f in desc.oneofs_by_name[oneof].fields]

    assert members(flow_pb2.Layer4.DESCRIPTOR, "protocol") == [
        "TCP",
        "UDP",
        "ICMPv4",
        "ICMPv6",
        "SCTP",
        "VRRP",
        "IGMP",
    ]
    assert members(flow_pb2.Layer7.DESCRIPTOR, "record") == ["dns", "http", "kafka"]
    assert members(observer_pb2.GetFlowsResponse.DESCRIPTOR, "response_types") == [
        "flow",
        "node_status",
        "lost_events",
    ]
    assert len(flow_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["notification"].fields) == 8


def test_flow_reserved_numbers_stay_unused() -> None:
    used = {f.number for f in flow_pb2.Flow.DESCRIPTOR.fields}
    assert used.isdisjoint({7, 12, 17, 18})


ENUMS: dict[EnumDescriptor, dict[str, int]] = {
    flow_pb2.Verdict.DESCRIPTOR: {
        "VERDICT_UNKNOWN": 0,
        "FORWARDED": 1,
        "DROPPED": 2,
        "ERROR": 3,
        "AUDIT": 4,
        "REDIRECTED": 5,
        "TRACED": 6,
        "TRANSLATED": 7,
    },
    flow_pb2.TrafficDirection.DESCRIPTOR: {
        "TRAFFIC_DIRECTION_UNKNOWN": 0,
        "INGRESS": 1,
        "EGRESS": 2,
    },
    flow_pb2.TraceObservationPoint.DESCRIPTOR: {
        "UNKNOWN_POINT": 0,
        "TO_PROXY": 1,
        "TO_HOST": 2,
        "TO_STACK": 3,
        "TO_OVERLAY": 4,
        "TO_ENDPOINT": 101,
        "FROM_ENDPOINT": 5,
        "FROM_PROXY": 6,
        "FROM_HOST": 7,
        "FROM_STACK": 8,
        "FROM_OVERLAY": 9,
        "FROM_NETWORK": 10,
        "TO_NETWORK": 11,
        "FROM_CRYPTO": 12,
        "TO_CRYPTO": 13,
    },
    flow_pb2.LostEventSource.DESCRIPTOR: {
        "UNKNOWN_LOST_EVENT_SOURCE": 0,
        "PERF_EVENT_RING_BUFFER": 1,
        "OBSERVER_EVENTS_QUEUE": 2,
        "HUBBLE_RING_BUFFER": 3,
    },
    flow_pb2.EventType.DESCRIPTOR: {"UNKNOWN": 0, "EventSample": 9, "RecordLost": 2},
    flow_pb2.FlowType.DESCRIPTOR: {"UNKNOWN_TYPE": 0, "L3_L4": 1, "L7": 2, "SOCK": 3},
    flow_pb2.IPVersion.DESCRIPTOR: {"IP_NOT_USED": 0, "IPv4": 1, "IPv6": 2},
    flow_pb2.AuthType.DESCRIPTOR: {"DISABLED": 0, "SPIRE": 1, "TEST_ALWAYS_FAIL": 2},
    flow_pb2.L7FlowType.DESCRIPTOR: {
        "UNKNOWN_L7_TYPE": 0,
        "REQUEST": 1,
        "RESPONSE": 2,
        "SAMPLE": 3,
    },
    flow_pb2.TraceReason.DESCRIPTOR: {
        "TRACE_REASON_UNKNOWN": 0,
        "NEW": 1,
        "ESTABLISHED": 2,
        "REPLY": 3,
        "RELATED": 4,
        "REOPENED": 5,
        "SRV6_ENCAP": 6,
        "SRV6_DECAP": 7,
        "ENCRYPT_OVERLAY": 8,
    },
    flow_pb2.AgentEventType.DESCRIPTOR: {
        "AGENT_EVENT_UNKNOWN": 0,
        "AGENT_STARTED": 2,
        "POLICY_UPDATED": 3,
        "POLICY_DELETED": 4,
        "ENDPOINT_REGENERATE_SUCCESS": 5,
        "ENDPOINT_REGENERATE_FAILURE": 6,
        "ENDPOINT_CREATED": 7,
        "ENDPOINT_DELETED": 8,
        "IPCACHE_UPSERTED": 9,
        "IPCACHE_DELETED": 10,
        "SERVICE_UPSERTED": 11,
        "SERVICE_DELETED": 12,
    },
    flow_pb2.SocketTranslationPoint.DESCRIPTOR: {
        "SOCK_XLATE_POINT_UNKNOWN": 0,
        "SOCK_XLATE_POINT_PRE_DIRECTION_FWD": 1,
        "SOCK_XLATE_POINT_POST_DIRECTION_FWD": 2,
        "SOCK_XLATE_POINT_PRE_DIRECTION_REV": 3,
        "SOCK_XLATE_POINT_POST_DIRECTION_REV": 4,
    },
    relay_pb2.NodeState.DESCRIPTOR: {
        "UNKNOWN_NODE_STATE": 0,
        "NODE_CONNECTED": 1,
        "NODE_UNAVAILABLE": 2,
        "NODE_GONE": 3,
        "NODE_ERROR": 4,
    },
    peer_pb2.ChangeNotificationType.DESCRIPTOR: {
        "UNKNOWN": 0,
        "PEER_ADDED": 1,
        "PEER_DELETED": 2,
        "PEER_UPDATED": 3,
    },
}


@pytest.mark.parametrize("desc", list(ENUMS), ids=lambda d: d.full_name)
def test_enum_values_match_upstream(desc: EnumDescriptor) -> None:
    assert _values(desc) == ENUMS[desc]


# A subset of DropReason: the ones our datapath emits plus both ends of the range.
DROP_REASONS = {
    "DROP_REASON_UNKNOWN": 0,
    "INVALID_SOURCE_MAC": 130,
    "INVALID_SOURCE_IP": 132,
    "POLICY_DENIED": 133,
    "INVALID_PACKET_DROPPED": 134,
    "CT_TRUNCATED_OR_INVALID_HEADER": 135,
    "UNSUPPORTED_L3_PROTOCOL": 139,
    "MISSED_TAIL_CALL": 140,
    "UNKNOWN_L4_PROTOCOL": 142,
    "STALE_OR_UNROUTABLE_IP": 151,
    "CT_MAP_INSERTION_FAILED": 155,
    "SERVICE_BACKEND_NOT_FOUND": 158,
    "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT": 160,
    "FIB_LOOKUP_FAILED": 169,
    "INVALID_IDENTITY": 171,
    "POLICY_DENY": 181,
    "AUTH_REQUIRED": 189,
    "TTL_EXCEEDED": 196,
    "DROP_HOST_NOT_READY": 202,
    "DROP_EP_NOT_READY": 203,
    "DROP_NO_EGRESS_IP": 204,
    "DROP_PUNT_PROXY": 205,
    "DROP_FRAG_NOT_FOUND_WORLD": 207,
}


def test_drop_reasons_match_upstream() -> None:
    values = _values(flow_pb2.DropReason.DESCRIPTOR)
    assert {name: values[name] for name in DROP_REASONS} == DROP_REASONS
    # upstream's codes are 0 and 130..207 without 159 and 206
    assert set(values.values()) == {0} | (set(range(130, 208)) - {159, 206})


def test_service_and_method_paths_match_upstream() -> None:
    observer = observer_pb2.DESCRIPTOR.services_by_name["Observer"]
    assert observer.full_name == "observer.Observer"
    streams = {"GetFlows", "GetAgentEvents", "GetDebugEvents"}
    methods = {
        f"/{observer.full_name}/{m.name}": (
            m.input_type.full_name,
            m.output_type.full_name,
            m.name in streams,
        )
        for m in observer.methods
    }
    assert methods == {
        "/observer.Observer/GetFlows": (
            "observer.GetFlowsRequest",
            "observer.GetFlowsResponse",
            True,
        ),
        "/observer.Observer/GetAgentEvents": (
            "observer.GetAgentEventsRequest",
            "observer.GetAgentEventsResponse",
            True,
        ),
        "/observer.Observer/GetDebugEvents": (
            "observer.GetDebugEventsRequest",
            "observer.GetDebugEventsResponse",
            True,
        ),
        "/observer.Observer/GetNodes": (
            "observer.GetNodesRequest",
            "observer.GetNodesResponse",
            False,
        ),
        "/observer.Observer/GetNamespaces": (
            "observer.GetNamespacesRequest",
            "observer.GetNamespacesResponse",
            False,
        ),
        "/observer.Observer/ServerStatus": (
            "observer.ServerStatusRequest",
            "observer.ServerStatusResponse",
            False,
        ),
    }
    for m in observer.methods:
        assert m.client_streaming is False
        assert m.server_streaming is (m.name in streams)

    peer = peer_pb2.DESCRIPTOR.services_by_name["Peer"]
    notify = peer.methods_by_name["Notify"]
    assert f"/{peer.full_name}/{notify.name}" == "/peer.Peer/Notify"
    assert notify.input_type.full_name == "peer.NotifyRequest"
    assert notify.output_type.full_name == "peer.ChangeNotification"
    assert notify.server_streaming and not notify.client_streaming


def test_grpc_stubs_use_upstream_paths() -> None:
    # The generated stubs hard-code the method paths; check they are the descriptor's.
    assert hasattr(observer_pb2_grpc, "ObserverStub")
    assert hasattr(observer_pb2_grpc, "add_ObserverServicer_to_server")
    assert hasattr(peer_pb2_grpc, "PeerStub")
    src = Path(observer_pb2_grpc.__file__).read_text(encoding="utf-8")
    assert "'/observer.Observer/GetFlows'" in src
    assert "'/observer.Observer/GetNamespaces'" in src
    assert "'/peer.Peer/Notify'" in Path(peer_pb2_grpc.__file__).read_text(encoding="utf-8")


def _sample_flow() -> flow_pb2.Flow:
    f = flow_pb2.Flow(
        uuid="3c5a8b52-1d59-4c0c-9a43-7d2b1e0f6a11",
        verdict=flow_pb2.DROPPED,
        drop_reason_desc=flow_pb2.POLICY_DENY,
        Type=flow_pb2.L3_L4,
        node_name="node-1",
        traffic_direction=flow_pb2.INGRESS,
        trace_observation_point=flow_pb2.TO_ENDPOINT,
        is_reply=BoolValue(value=False),
        Summary="TCP Flags: SYN",
    )
    f.time.FromNanoseconds(1_700_000_000_123_456_789)
    f.IP.source = "10.0.1.5"
    f.IP.destination = "10.0.2.7"
    f.IP.ipVersion = flow_pb2.IPv4
    f.l4.TCP.source_port = 40000
    f.l4.TCP.destination_port = 80
    f.l4.TCP.flags.SYN = True
    f.source.ID = 101
    f.source.identity = 4242
    f.source.namespace = "default"
    f.source.pod_name = "client"
    f.source.labels.append("k8s:app=client")
    f.destination.pod_name = "server"
    f.event_type.type = 5
    f.ingress_denied_by.add(name="deny-client", namespace="default", kind="CiliumNetworkPolicy")
    f.policy_log.append("audit-web")
    return f


def test_flow_round_trip_and_upstream_json_names() -> None:
    f = _sample_flow()
    wire = f.SerializeToString()
    back = flow_pb2.Flow.FromString(wire)
    assert back == f
    assert back.HasField("is_reply") and back.is_reply.value is False
    assert back.l4.WhichOneof("protocol") == "TCP"

    doc = json.loads(json_format.MessageToJson(back, preserving_proto_field_name=True))
    # the exact key spellings `hubble observe -o jsonpb` consumers expect
    assert doc["IP"] == {"source": "10.0.1.5", "destination": "10.0.2.7", "ipVersion": "IPv4"}
    assert doc["l4"] == {
        "TCP": {"source_port": 40000, "destination_port": 80, "flags": {"SYN": True}}
    }
    assert doc["source"]["pod_name"] == "client"
    assert doc["source"]["ID"] == 101
    assert doc["Type"] == "L3_L4"
    assert doc["node_name"] == "node-1"
    assert doc["Summary"] == "TCP Flags: SYN"
    assert doc["is_reply"] is False
    assert doc["verdict"] == "DROPPED"
    assert doc["drop_reason_desc"] == "POLICY_DENY"
    assert doc["traffic_direction"] == "INGRESS"
    assert doc["trace_observation_point"] == "TO_ENDPOINT"
    assert doc["time"] == "2023-11-14T22:13:20.123456789Z"
    assert doc["ingress_denied_by"] == [
        {"name": "deny-client", "namespace": "default", "kind": "CiliumNetworkPolicy"}
    ]
    assert doc["policy_log"] == ["audit-web"]


def test_get_flows_response_round_trip() -> None:
    resp = observer_pb2.GetFlowsResponse(flow=_sample_flow(), node_name="node-1")
    resp.time.FromNanoseconds(1_700_000_000_000_000_000)
    back = observer_pb2.GetFlowsResponse.FromString(resp.SerializeToString())
    assert back.WhichOneof("response_types") == "flow"
    assert back == resp
    lost = observer_pb2.GetFlowsResponse(
        lost_events=flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=3)
    )
    doc = json.loads(json_format.MessageToJson(lost, preserving_proto_field_name=True))
    assert doc == {"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "3"}}
