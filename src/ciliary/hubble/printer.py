"""Renders Hubble API responses the way the upstream ``hubble`` CLI does.

People who know Hubble read flows by their shape: ``Jan  1 00:20:34.567: default/a:43210
(ID:12345) -> shop/web:80 (ID:23456) to-endpoint FORWARDED (TCP Flags: SYN)``, reserved
identities in parentheses by name, ``<>`` when the direction is unknown, ``EVENTS LOST:`` lines,
``dict`` blocks separated by ``------------``, tab-aligned ``table`` columns printed when the
stream ends, and ``jsonpb`` = one proto3-JSON ``GetFlowsResponse`` per line with proto field
names (so ``hubble observe --input-file`` and ``json_format.Parse`` read it back). This module
reproduces those shapes from the protobuf messages alone: it is pure (writes to the text streams
it is given), so the CLI, tests and anything else can print flows identically.

Timestamps are printed in UTC with Go's layouts (``StampMilli`` by default), as protobuf
timestamps are UTC and upstream formats them unconverted.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ciliary.core.flow import (
    DROP_REASONS,
    MSG_CAPTURE,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    MSG_TRACE_SOCK,
    POLICY_MATCH_TYPES,
    TRACE_POINTS,
    ReservedIdentity,
)
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.explain import default_deny_of
from ciliary.hubble.goformat import (
    NOT_AVAILABLE,
    TabWriter,
    format_timestamp,
    go_duration,
    group_thousands,
)
from ciliary.hubble.gopacket import ICMP4_TYPE_NAMES, ICMP6_TYPE_NAMES, TCP_FLAG_ORDER

# --------------------------------------------------------------------------- vocabulary

_SOCK_XLATE = {
    flow_pb2.SOCK_XLATE_POINT_POST_DIRECTION_FWD: "post-xlate-fwd",
    flow_pb2.SOCK_XLATE_POINT_POST_DIRECTION_REV: "post-xlate-rev",
    flow_pb2.SOCK_XLATE_POINT_PRE_DIRECTION_FWD: "pre-xlate-fwd",
    flow_pb2.SOCK_XLATE_POINT_PRE_DIRECTION_REV: "pre-xlate-rev",
}

DICT_SEPARATOR = "------------"
_NODE_NAMES_CUTOFF = 50


def reserved_identity_name(identity: int) -> str | None:
    """``world`` for 2, ``remote-node`` for 6, ...; None for non-reserved identities."""
    try:
        return ReservedIdentity(identity).name.lower().replace("_", "-")
    except ValueError:
        return None


def _enum_name(enum_type: str, value: int) -> str:
    """Name of ``value`` in the flow/relay enum ``enum_type``; the number if it has none."""
    module = relay_pb2 if enum_type == "NodeState" else flow_pb2
    desc = module.DESCRIPTOR.enum_types_by_name[enum_type].values_by_number.get(value)
    return desc.name if desc is not None else str(value)


def _ts(msg: Message, field: str) -> Timestamp | None:
    return getattr(msg, field) if msg.HasField(field) else None


# --------------------------------------------------------------------------- colors


class _Colors:
    """fatih/color's palette as upstream uses it; every method is identity when disabled."""

    _CODES = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _paint(self, color: str, text: str) -> str:
        if not self.enabled:
            return text
        return f"\x1b[{self._CODES[color]}m{text}\x1b[0m"

    def host(self, text: str) -> str:
        return self._paint("cyan", text)

    def port(self, text: str) -> str:
        return self._paint("yellow", text)

    def identity(self, text: str) -> str:
        return self._paint("magenta", text)

    def forwarded(self, text: str) -> str:
        return self._paint("green", text)

    def dropped(self, text: str) -> str:
        return self._paint("red", text)

    def warn(self, text: str) -> str:
        return self._paint("yellow", text)


# --------------------------------------------------------------------------- flow pieces


def flow_ports(f: flow_pb2.Flow) -> tuple[str, str]:
    """Source and destination port of a TCP/UDP/SCTP flow as text, else empty strings."""
    if not f.HasField("l4"):
        return "", ""
    which = f.l4.WhichOneof("protocol")
    if which in ("TCP", "UDP", "SCTP"):
        l4 = getattr(f.l4, which)
        return str(l4.source_port), str(l4.destination_port)
    return "", ""


def flow_type(f: flow_pb2.Flow) -> str:
    """Upstream's TYPE column: ``to-endpoint``, ``Policy denied``, ``policy-verdict:L3-L4
    INGRESS``, ``http-request``, ``dns-response proxy``, ... (``UNKNOWN`` otherwise)."""
    if f.HasField("l7"):
        l7_type = _enum_name("L7FlowType", f.l7.type).lower()
        record = f.l7.WhichOneof("record")
        proto = "l7"
        if record == "http":
            proto = "http"
        elif record == "dns":
            proto = "dns"
            l7_type += " " + f.l7.dns.observation_source
        elif record == "kafka":
            proto = "kafka"
        return f"{proto}-{l7_type}"
    if not f.HasField("event_type"):
        return "UNKNOWN"
    etype, sub = f.event_type.type, f.event_type.sub_type
    if etype == MSG_TRACE:
        return TRACE_POINTS.get(sub, str(sub))
    if etype == MSG_DROP:
        return DROP_REASONS.get(sub, str(sub))
    if etype == MSG_POLICY_VERDICT:
        match = POLICY_MATCH_TYPES.get(f.policy_match_type, "unknown")
        direction = _enum_name("TrafficDirection", f.traffic_direction)
        return f"policy-verdict:{match} {direction}"
    if etype == MSG_CAPTURE:
        return _enum_name("DebugCapturePoint", f.debug_capture_point)
    if etype == MSG_TRACE_SOCK:
        point = f.sock_xlate_point
        return _SOCK_XLATE.get(point, _enum_name("SocketTranslationPoint", point))
    return "UNKNOWN"


def policy_names(policies: Iterable[flow_pb2.Policy]) -> str:
    """`` BY name (Kind), name2 (Kind2)`` for policies that have both a name and a kind."""
    named = [f"{p.name} ({p.kind})" for p in policies if p.name and p.kind]
    return " BY " + ", ".join(named) if named else ""


def _default_deny_names(f: flow_pb2.Flow) -> str:
    """`` (default deny: <why>)`` for a default-deny drop whose flow explains it (our
    ``extensions``, :mod:`ciliary.hubble.explain`); upstream's fields name no policy there."""
    why = default_deny_of(f)
    return f" (default deny: {why[0]})" if why is not None else ""


def _deciding_policies(f: flow_pb2.Flow) -> Sequence[flow_pb2.Policy]:
    egress = f.traffic_direction == flow_pb2.EGRESS
    if f.verdict in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED):
        return f.egress_allowed_by if egress else f.ingress_allowed_by
    if f.verdict in (flow_pb2.DROPPED, flow_pb2.ERROR, flow_pb2.AUDIT):
        return f.egress_denied_by if egress else f.ingress_denied_by
    return ()


def l4_summary(f: flow_pb2.Flow) -> str:
    """The summary Hubble's parser writes for L3/L4 flows (``TCP Flags: SYN, ACK``, ``UDP``,
    ``ICMPv4 EchoRequest``); used when a flow carries no ``Summary`` of its own."""
    if not f.HasField("l4"):
        return ""
    which = f.l4.WhichOneof("protocol")
    if which == "TCP":
        flags = f.l4.TCP.flags
        names = [n for n in TCP_FLAG_ORDER if getattr(flags, n)]
        return "TCP Flags: " + ", ".join(names) if names else "TCP"
    if which == "ICMPv4":
        return "ICMPv4 " + ICMP4_TYPE_NAMES.get(f.l4.ICMPv4.type, f"Type{f.l4.ICMPv4.type}")
    if which == "ICMPv6":
        return "ICMPv6 " + ICMP6_TYPE_NAMES.get(f.l4.ICMPv6.type, f"Type{f.l4.ICMPv6.type}")
    return which or ""


def flow_summary(f: flow_pb2.Flow) -> str:
    """SUMMARY column: the flow's summary, prefixed by its IP trace ID and followed by its
    authentication type when those are set."""
    summary = f.Summary or l4_summary(f)
    if f.HasField("ip_trace_id") and f.ip_trace_id.trace_id:
        summary = f"IP Trace ID: {f.ip_trace_id.trace_id}; {summary}"
    if f.auth_type != flow_pb2.DISABLED:
        summary = f"{summary}; Auth: {_enum_name('AuthType', f.auth_type)}"
    return summary


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _join_with_cutoff(elems: Sequence[str], sep: str, target: int) -> str:
    total, end = 0, len(elems)
    for i, elem in enumerate(elems):
        total += len(elem) + len(sep)
        if total > target and i > 0:
            end = i
            break
    joined = sep.join(elems[:end])
    omitted = len(elems) - end
    return f"{joined} (and {omitted} more)" if omitted else joined


# --------------------------------------------------------------------------- printer


class Output(enum.StrEnum):
    COMPACT = "compact"
    DICT = "dict"
    JSONPB = "jsonpb"
    TABLE = "table"


def message_json(msg: Message) -> str:
    """proto3 JSON on one line with proto field names (``source_pod``, ``IP``, ``Summary``),
    fields in number order, defaults omitted: what upstream's ``-o jsonpb`` writes."""
    data = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class PrinterOptions:
    output: Output = Output.COMPACT
    time_format: str = "StampMilli"
    ip_translation: bool = True
    node_name: bool = False
    policy_names: bool = False
    color: bool = False
    debug: bool = False
    silent_errors: bool = False


class Printer:
    """Writes flows/lost events/node status (``GetFlowsResponse``) and server status in one of
    upstream's formats. Call :meth:`close` at the end: ``table`` output is aligned then."""

    def __init__(self, opts: PrinterOptions, out: TextIO, err: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.err = err
        self.line = 0
        self._tab = TabWriter() if opts.output is Output.TABLE else None
        color = opts.color and opts.output in (Output.COMPACT, Output.DICT)
        self.color = _Colors(color)

    # ---------------------------------------------------------------- helpers

    def _ts(self, ts: Timestamp | None) -> str:
        return format_timestamp(ts, self.opts.time_format)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def write_err(self, msg: str) -> None:
        if not self.opts.silent_errors:
            self.err.write(msg + "\n")
            self.err.flush()

    def hostname(
        self, ip: str, port: str, *, ns: str, pod: str, svc: str, names: Sequence[str]
    ) -> str:
        """``ns/pod:port`` (or service, DNS names, IP) like upstream's ``Hostname``."""
        host = ip
        if self.opts.ip_translation:
            if pod:
                host = f"{ns}/{pod}" if ns else pod
            elif svc:
                host = f"{ns}/{svc}" if ns else svc
            elif names:
                host = ",".join(names)
        if port and port != "0":
            return _join_host_port(host, self.color.port(port))
        return host

    def host_names(self, f: flow_pb2.Flow) -> tuple[str, str]:
        if not f.HasField("IP"):
            if f.HasField("ethernet"):
                return (
                    self.color.host(f.ethernet.source),
                    self.color.host(f.ethernet.destination),
                )
            return "", ""
        src_ns, src_pod = f.source.namespace, f.source.pod_name
        dst_ns, dst_pod = f.destination.namespace, f.destination.pod_name
        src_svc = dst_svc = ""
        if f.HasField("source_service"):
            src_ns, src_svc = f.source_service.namespace, f.source_service.name
        if f.HasField("destination_service"):
            dst_ns, dst_svc = f.destination_service.namespace, f.destination_service.name
        sport, dport = flow_ports(f)
        src = self.hostname(
            f.IP.source, sport, ns=src_ns, pod=src_pod, svc=src_svc, names=f.source_names
        )
        dst = self.hostname(
            f.IP.destination, dport, ns=dst_ns, pod=dst_pod, svc=dst_svc, names=f.destination_names
        )
        return self.color.host(src), self.color.host(dst)

    def identity(self, identity: int) -> str:
        name = reserved_identity_name(identity)
        return self.color.identity(f"({name})" if name else f"(ID:{identity})")

    def verdict(self, f: flow_pb2.Flow) -> str:
        msg = _enum_name("Verdict", f.verdict)
        is_pv = f.HasField("event_type") and f.event_type.type == MSG_POLICY_VERDICT
        if f.verdict in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED):
            text = self.color.forwarded("ALLOWED" if is_pv else msg)
        elif f.verdict in (flow_pb2.DROPPED, flow_pb2.ERROR):
            text = self.color.dropped("DENIED" if is_pv else msg)
        elif f.verdict == flow_pb2.AUDIT:
            text = self.color.warn("AUDITED" if is_pv else msg)
        elif f.verdict in (flow_pb2.TRACED, flow_pb2.TRANSLATED):
            text = self.color.warn(msg)
        else:
            text = msg
        if self.opts.policy_names:
            text += policy_names(_deciding_policies(f)) or _default_deny_names(f)
        return text

    def _table_row(self, when: str, node_name: str, *cells: str) -> None:
        """One ``-o table`` row of a flow or lost event; the header comes before the first."""
        assert self._tab is not None
        node = [node_name] if self.opts.node_name else []
        if self.line == 0:
            head = ["TIMESTAMP"] + (["NODE"] if self.opts.node_name else [])
            self._tab.row(*head, "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")
        self._tab.row(when, *node, *cells)

    def _dict_head(self, when: str, node_name: str) -> list[str]:
        """The first lines of a ``-o dict`` block: separator (but first), timestamp, node."""
        lines = [DICT_SEPARATOR] if self.line != 0 else []
        lines.append(f"  TIMESTAMP: {when}")
        if self.opts.node_name:
            lines.append(f"       NODE: {node_name}")
        return lines

    # ---------------------------------------------------------------- GetFlows

    def write_get_flows_response(self, res: observer_pb2.GetFlowsResponse) -> None:
        which = res.WhichOneof("response_types")
        if which == "flow":
            self.write_flow(res)
        elif which == "lost_events":
            self.write_lost_events(res)
        elif which == "node_status":
            self.write_node_status(res)
        elif which is not None and self.opts.debug:
            self.write_err(f"unknown response type: {which}")

    def write_flow(self, res: observer_pb2.GetFlowsResponse) -> None:
        f = res.flow
        out = self.opts.output
        if out is Output.JSONPB:
            self._write(message_json(res) + "\n")
            return
        when = self._ts(_ts(f, "time"))
        src, dst = self.host_names(f)
        if out is Output.TABLE:
            self._table_row(
                when, f.node_name, src, dst, flow_type(f), self.verdict(f), flow_summary(f)
            )
        elif out is Output.DICT:
            lines = self._dict_head(when, f.node_name)
            lines += [
                f"     SOURCE: {src}",
                f"DESTINATION: {dst}",
                f"       TYPE: {flow_type(f)}",
                f"    VERDICT: {self.verdict(f)}",
                f"    SUMMARY: {flow_summary(f)}",
            ]
            self._write("\n".join(lines) + "\n")
        else:
            src_id = self.identity(f.source.identity)
            dst_id = self.identity(f.destination.identity)
            node = f" [{f.node_name}]" if self.opts.node_name else ""
            arrow = "->"
            if not f.HasField("is_reply"):
                arrow = "<>"
            elif f.is_reply.value:
                src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
            self._write(
                f"{when}{node}: {src} {src_id} {arrow} {dst} {dst_id} "
                f"{flow_type(f)} {self.verdict(f)} ({flow_summary(f)})\n"
            )
        self.line += 1

    def write_lost_events(self, res: observer_pb2.GetFlowsResponse) -> None:
        lost = res.lost_events
        out = self.opts.output
        if out is Output.JSONPB:
            self._write(message_json(res) + "\n")
            return
        when = self._ts(_ts(res, "time"))
        source = _enum_name("LostEventSource", lost.source)
        cpu = f"CPU({lost.cpu.value})"
        span = ""
        if lost.HasField("first") or lost.HasField("last"):
            span = f" (first: {self._ts(_ts(lost, 'first'))}, last: {self._ts(_ts(lost, 'last'))})"
        summary = f"{cpu} - {lost.num_events_lost}{span}"
        if out is Output.TABLE:
            self._table_row(when, res.node_name, source, "-", "EVENTS LOST", "-", summary)
        elif out is Output.DICT:
            lines = self._dict_head(when, res.node_name)
            lines += [
                f"     SOURCE: {source}",
                "       TYPE: EVENTS LOST",
                "    VERDICT: -",
                f"    SUMMARY: {summary}",
            ]
            self._write("\n".join(lines) + "\n")
        else:
            line = f"{when} EVENTS LOST: {source} {cpu} {lost.num_events_lost}{span}"
            self._write(self.color.warn(line) + "\n")
        self.line += 1

    def write_node_status(self, res: observer_pb2.GetFlowsResponse) -> None:
        """Relay node status: errors/unavailability always, the rest in debug mode, to stderr."""
        status = res.node_status
        state = status.state_change
        if not self.opts.debug and state not in (
            relay_pb2.NODE_ERROR,
            relay_pb2.NODE_UNAVAILABLE,
        ):
            return
        if self.opts.output is Output.JSONPB:
            self.write_err(message_json(res))
            return
        names = list(status.node_names)
        joined = _join_with_cutoff(names, ", ", _NODE_NAMES_CUTOFF)
        when = self._ts(_ts(res, "time"))
        if self.opts.output is Output.DICT:
            if self.line != 0:
                self._write(DICT_SEPARATOR + "\n")
            else:
                self.line += 1
            message = json.dumps(status.message) if status.message else NOT_AVAILABLE
            self.write_err(
                f"  TIMESTAMP: {when}\n"
                f"      STATE: {_enum_name('NodeState', state)}\n"
                f"      NODES: {joined}\n"
                f"    MESSAGE: {message}"
            )
            return
        prefix = f"{when} [{res.node_name}]"
        n = len(names)
        if state == relay_pb2.NODE_CONNECTED:
            msg = f"{prefix}: Receiving flows from {n} nodes: {joined}"
        elif state == relay_pb2.NODE_UNAVAILABLE:
            msg = f"{prefix}: {n} nodes are unavailable: {joined}"
        elif state == relay_pb2.NODE_GONE:
            msg = f"{prefix}: {n} nodes removed from cluster: {joined}"
        elif state == relay_pb2.NODE_ERROR:
            msg = f"{prefix}: Error {json.dumps(status.message)} on {n} nodes: {joined}"
        else:
            msg = f"{prefix}: unknown node status event: {message_json(status)}"
        self.write_err(msg)

    # ---------------------------------------------------------------- status

    def write_server_status(self, res: observer_pb2.ServerStatusResponse) -> None:
        """``hubble status`` body (after the ``Healthcheck`` line the caller prints)."""
        connected = (
            str(res.num_connected_nodes.value)
            if res.HasField("num_connected_nodes")
            else NOT_AVAILABLE
        )
        unavailable = (
            str(res.num_unavailable_nodes.value)
            if res.HasField("num_unavailable_nodes")
            else NOT_AVAILABLE
        )
        rate = f"{res.flows_rate:.2f}" if res.flows_rate > 0 else NOT_AVAILABLE
        out = self.opts.output
        if out is Output.JSONPB:
            self._write(message_json(res) + "\n")
        elif out is Output.TABLE:
            tab = TabWriter()
            tab.row(
                "NUM FLOWS",
                "MAX FLOWS",
                "SEEN FLOWS",
                "FLOWS PER SECOND",
                "UPTIME",
                "NUM CONNECTED NODES",
                "NUM UNAVAILABLE NODES",
                "VERSION",
            )
            tab.row(
                group_thousands(res.num_flows),
                group_thousands(res.max_flows),
                group_thousands(res.seen_flows),
                rate,
                go_duration(res.uptime_ns),
                connected,
                unavailable,
                res.version,
            )
            self._write("\n".join(tab.render()) + "\n")
        elif out is Output.DICT:
            self._write(
                f"          NUM FLOWS: {group_thousands(res.num_flows)}\n"
                f"          MAX FLOWS: {group_thousands(res.max_flows)}\n"
                f"         SEEN FLOWS: {group_thousands(res.seen_flows)}\n"
                f"   FLOWS PER SECOND: {rate}\n"
                f"             UPTIME: {go_duration(res.uptime_ns)}\n"
                f"NUM CONNECTED NODES: {connected}\n"
                f" NUM UNAVAIL. NODES: {unavailable}\n"
                f"            VERSION: {res.version}\n"
            )
        else:
            lines = []
            ratio = ""
            if res.max_flows > 0:
                ratio = f" ({res.num_flows / res.max_flows * 100:.2f}%)"
            lines.append(
                f"Current/Max Flows: {group_thousands(res.num_flows)}/"
                f"{group_thousands(res.max_flows)}{ratio}"
            )
            uptime_s = res.uptime_ns / 1e9
            if rate == NOT_AVAILABLE and uptime_s > 0:
                rate = f"{res.seen_flows / uptime_s:.2f}"
            lines.append(f"Flows/s: {rate}")
            has_conn = res.HasField("num_connected_nodes")
            has_unav = res.HasField("num_unavailable_nodes")
            if has_conn:
                total = ""
                if has_unav:
                    total = f"/{res.num_unavailable_nodes.value + res.num_connected_nodes.value}"
                lines.append(f"Connected Nodes: {res.num_connected_nodes.value}{total}")
            if has_unav and res.num_unavailable_nodes.value > 0:
                n = res.num_unavailable_nodes.value
                names = sorted(res.unavailable_nodes)
                if names:
                    if n > len(names):
                        names.append(f"and {n - len(names)} more...")
                    lines.append(f"Unavailable Nodes: {n}\n  - " + "\n  - ".join(names))
                else:
                    lines.append(f"Unavailable Nodes: {n}")
            self._write("\n".join(lines) + "\n")

    def close(self) -> None:
        """Flushes the aligned table (``-o table``); a no-op for the streaming formats."""
        if self._tab is not None and self._tab.rows:
            self._write("\n".join(self._tab.render()) + "\n")
            self._tab.rows.clear()
