"""The Hubble UI's side of the relay: what it asks (GetFlows follow, GetNodes, GetNamespaces) and
the JSON rows the page shows for each flow.

The UI is a client of the relay only, as any ``hubble observe`` is: it dials the relay's
address (:mod:`ciliary.hubble.client`), never a node or the agent. Its filter bar speaks
``hubble observe``'s flag grammar (:mod:`ciliary.hubble.filterflags`: one grammar, the CLI's)
and the filters run on the server side, never in the browser: the namespace the page shows goes
to the relay as upstream's ``--namespace`` filter (source or destination pod in it) together
with the user's ``--not`` filters (the request's denylist); the user's other filters are
compiled with the relay's own matcher (:mod:`ciliary.hubble.filters`) and applied here, because
a FlowFilter list cannot AND two filters on the same field (``--namespace`` and ``--to-pod``
both set the pod fields, which ``hubble observe`` refuses to combine).

A row is the flow as the table shows it (time, source, destination, port, L7 info, verdict,
drop reason) plus what the side panel needs: the policies that decided (upstream's
``{ingress,egress}_{allowed,denied}_by`` and, for a default deny, our explanation in
``extensions``: :mod:`ciliary.hubble.explain`) and the whole flow as proto3 JSON.
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.explain import default_deny_of
from ciliary.hubble.filterflags import build_filters, flag_pairs
from ciliary.hubble.filters import build_filter
from ciliary.hubble.printer import flow_ports, flow_summary, reserved_identity_name

HISTORY = 2000
"""Flows asked of each node's ring when a stream starts (then it follows)."""

REQUEST_TIMEOUT = 10.0
"""Seconds a unary question (nodes, namespaces) may take."""

_FORWARDED = {flow_pb2.FORWARDED, flow_pb2.REDIRECTED, flow_pb2.AUDIT}
_DROPPED = {flow_pb2.DROPPED, flow_pb2.ERROR}


class QueryError(ValueError):
    """A namespace or filter text the UI cannot turn into a relay request; the message says
    which and why (shown under the filter bar)."""


@dataclass(frozen=True)
class FlowQuery:
    """What one flows stream asks: the relay request (namespace + denylist, follow) and the
    local predicate of the user's allow filters."""

    request: observer_pb2.GetFlowsRequest
    match: Callable[[flow_pb2.Flow], bool]


def build_query(namespace: str, filter_text: str, history: int = HISTORY) -> FlowQuery:
    """The stream of ``namespace``'s flows that pass ``filter_text`` (``hubble observe`` flags,
    e.g. ``--verdict DROPPED --to-port 5432``); QueryError naming the problem."""
    if not namespace:
        raise QueryError("no namespace given")
    try:
        words = shlex.split(filter_text)
    except ValueError as err:
        raise QueryError(f"filter {filter_text!r}: {err}") from None
    try:
        pairs = flag_pairs(words)
        ns_allow, _ = build_filters([("namespace", namespace)])
        allow, deny = build_filters(pairs)
        match = build_filter(allow, [])
    except ValueError as err:  # FlagError, FilterError
        raise QueryError(f"filter {filter_text!r}: {err}") from None
    request = observer_pb2.GetFlowsRequest(
        number=history, follow=True, whitelist=ns_allow, blacklist=deny
    )
    return FlowQuery(request, match)


# --------------------------------------------------------------------------- rows


def endpoint_name(ep: flow_pb2.Endpoint, ip: str) -> str:
    """``namespace/pod``, a reserved identity's name (``world``, ``host``…) or the address."""
    if ep.pod_name:
        return f"{ep.namespace}/{ep.pod_name}" if ep.namespace else ep.pod_name
    reserved = reserved_identity_name(ep.identity)
    if reserved is not None and ep.identity:
        return reserved
    for label in ep.labels:
        if label.startswith("reserved:"):
            return label.removeprefix("reserved:")
    return ip or "unknown"


def l7_info(f: flow_pb2.Flow) -> str:
    """The L7 column: ``GET http://web/ → 200``, ``DNS A web.shop… → 10.0.0.1``, else ``""``."""
    if not f.HasField("l7"):
        return ""
    l7 = f.l7
    which = l7.WhichOneof("record")
    if which == "http":
        http = l7.http
        text = " ".join(p for p in (http.method, http.url) if p)
        return f"{text} → {http.code}" if http.code else text
    if which == "dns":
        dns = l7.dns
        answer = ", ".join(dns.ips)
        qtypes = ",".join(dns.qtypes)
        return f"DNS {qtypes} {dns.query}".replace("  ", " ") + (f" → {answer}" if answer else "")
    return flow_pb2.L7FlowType.Name(l7.type).lower() if l7.type else "l7"


def protocol(f: flow_pb2.Flow) -> str:
    """``TCP``, ``UDP``, ``SCTP``, ``ICMPv4``, ``ICMPv6`` or ``""``."""
    return (f.l4.WhichOneof("protocol") or "") if f.HasField("l4") else ""


def verdict_class(verdict: int) -> str:
    """``forwarded``, ``dropped`` or ``other`` (traces, socket translations: no verdict of the
    datapath on a packet, no edge on the map)."""
    if verdict in _FORWARDED:
        return "forwarded"
    if verdict in _DROPPED:
        return "dropped"
    return "other"


def _policy(p: flow_pb2.Policy) -> dict[str, str]:
    return {"name": p.name, "namespace": p.namespace, "kind": p.kind}


def deciding_policies(f: flow_pb2.Flow) -> dict[str, Any]:
    """The policies behind a flow's verdict, per upstream field, and our default-deny
    explanation when the drop matched no rule (then upstream's fields are empty)."""
    out: dict[str, Any] = {
        field: [_policy(p) for p in getattr(f, field)]
        for field in (
            "ingress_allowed_by",
            "egress_allowed_by",
            "ingress_denied_by",
            "egress_denied_by",
        )
        if len(getattr(f, field))
    }
    why = default_deny_of(f)
    if why is not None:
        out["default_deny"] = {"explanation": why[0], "policies": why[1]}
    return out


def flow_row(f: flow_pb2.Flow) -> dict[str, Any]:
    """One flow as the page's table and side panel show it."""
    src_ip = f.IP.source if f.HasField("IP") else ""
    dst_ip = f.IP.destination if f.HasField("IP") else ""
    _, dst_port = flow_ports(f)
    when = f.time.ToJsonString() if f.HasField("time") else ""
    verdict = flow_pb2.Verdict.Name(f.verdict)
    dropped = f.verdict in _DROPPED
    return {
        "id": f.uuid or f"{when}/{f.node_name}/{src_ip}/{dst_ip}/{dst_port}",
        "time": when,
        "node": f.node_name,
        "source": endpoint_name(f.source, src_ip),
        "source_ip": src_ip,
        "destination": endpoint_name(f.destination, dst_ip),
        "destination_ip": dst_ip,
        "port": int(dst_port) if dst_port else None,
        "protocol": protocol(f),
        "l7": l7_info(f),
        "summary": flow_summary(f),
        "verdict": verdict,
        "verdict_class": verdict_class(f.verdict),
        "drop_reason": flow_pb2.DropReason.Name(f.drop_reason_desc)
        if dropped and f.drop_reason_desc
        else "",
        "is_reply": f.is_reply.value if f.HasField("is_reply") else None,
        "direction": flow_pb2.TrafficDirection.Name(f.traffic_direction),
        "policies": deciding_policies(f),
        "flow": json_format.MessageToDict(f, preserving_proto_field_name=True),
    }


# --------------------------------------------------------------------------- the relay


class RelayClient:
    """The three questions the UI asks the relay, over one asyncio channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = observer_pb2_grpc.ObserverStub(channel)

    async def namespaces(self) -> list[str]:
        """Namespaces with recent flows (GetNamespaces), sorted, without duplicates across
        clusters."""
        resp = await self._stub.GetNamespaces(
            observer_pb2.GetNamespacesRequest(), timeout=REQUEST_TIMEOUT
        )
        return sorted({ns.namespace for ns in resp.namespaces if ns.namespace})

    async def nodes(self) -> list[dict[str, Any]]:
        """The relay's nodes (GetNodes): name, state, address, flows held."""
        resp = await self._stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=REQUEST_TIMEOUT)
        return [
            {
                "name": n.name,
                "state": relay_pb2.NodeState.Name(n.state),
                "address": n.address,
                "num_flows": n.num_flows,
                "max_flows": n.max_flows,
                "seen_flows": n.seen_flows,
            }
            for n in resp.nodes
        ]

    async def flows(self, query: FlowQuery) -> AsyncIterator[flow_pb2.Flow]:
        """The query's flows, history first, then live, until the caller stops iterating
        (which cancels the call)."""
        call = self._stub.GetFlows(query.request)
        try:
            async for resp in call:
                if resp.HasField("flow") and query.match(resp.flow):
                    yield resp.flow
        finally:
            call.cancel()


def rpc_message(err: grpc.RpcError, relay: str) -> str:
    """One line for a relay failure, as the page shows it."""
    code = err.code() if isinstance(err, grpc.aio.AioRpcError | grpc.Call) else None
    details = err.details() if isinstance(err, grpc.aio.AioRpcError | grpc.Call) else str(err)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the Hubble relay at {relay} is unavailable ({details})"
    name = code.name if code is not None else "UNKNOWN"
    return f"the Hubble relay at {relay} answered {name}: {details}"


__all__ = [
    "HISTORY",
    "FlowQuery",
    "QueryError",
    "RelayClient",
    "build_query",
    "deciding_policies",
    "endpoint_name",
    "flow_row",
    "l7_info",
    "rpc_message",
    "verdict_class",
]
