"""``ciliary hubble status`` and ``ciliary hubble list nodes|namespaces``: unary questions to a
Hubble server or relay, answered in upstream's shapes.

``status`` health-checks the server's Observer under upstream's name
(``hubble.server.Observer``) and prints its ring and, behind a relay, how many nodes answer;
``list`` asks a relay for its nodes (state, age, flow rate and ring use, as upstream's columns)
or for the namespaces with recent flows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ciliary.cli.hubble_dial import OUTPUTS, dial, rpc_error
from ciliary.cli.output import CLIError, Context
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.goformat import NOT_AVAILABLE, TabWriter, go_duration
from ciliary.hubble.observer import HEALTH_SERVICE
from ciliary.hubble.printer import Output, Printer, PrinterOptions

# --------------------------------------------------------------------------- status


def run_status(args: argparse.Namespace, ctx: Context) -> int:
    output = OUTPUTS.get(args.output)
    if output is None:
        raise CLIError(f"invalid output format: {args.output}")
    channel, addr = dial(args, ctx)
    with channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_SERVICE),
                timeout=args.request_timeout,
            )
        except grpc.RpcError as err:
            raise rpc_error(err, addr, "failed getting status") from err
        serving = health.status == health_pb2.HealthCheckResponse.SERVING
        if output is Output.COMPACT:
            state = (
                "Ok"
                if serving
                else "Unavailable: "
                + (health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
            )
            sys.stdout.write(f"Healthcheck (via {addr.target}): {state}\n")
            sys.stdout.flush()
        if not serving:
            raise CLIError("not healthy")
        try:
            status = observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=args.request_timeout
            )
        except grpc.RpcError as err:
            raise rpc_error(err, addr, "failed to get hubble server status") from err
    Printer(PrinterOptions(output=output), sys.stdout, sys.stderr).write_server_status(status)
    return 0


# --------------------------------------------------------------------------- list


def _list_output(args: argparse.Namespace) -> str:
    if args.output not in ("json", "table", "wide"):
        raise CLIError(f"unknown output format: {args.output}")
    return str(args.output)


def _unary(
    args: argparse.Namespace, ctx: Context, call: Callable[[observer_pb2_grpc.ObserverStub], Any]
) -> Any:
    channel, addr = dial(args, ctx)
    with channel:
        try:
            return call(observer_pb2_grpc.ObserverStub(channel))
        except grpc.RpcError as err:
            raise rpc_error(err, addr) from err


def _print_json_list(messages: Sequence[Any]) -> None:
    data = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


_NODE_STATES = {
    relay_pb2.NODE_CONNECTED: "Connected",
    relay_pb2.NODE_UNAVAILABLE: "Unavailable",
    relay_pb2.NODE_GONE: "Gone",
    relay_pb2.NODE_ERROR: "Error",
}


def node_rows(nodes: Sequence[observer_pb2.Node], wide: bool) -> list[str]:
    """``hubble list nodes`` table lines (upstream's columns and number formats)."""
    tab = TabWriter()
    head = ["NAME", "STATUS", "AGE", "FLOWS/S", "CURRENT/MAX-FLOWS"]
    tab.row(*head, *(["VERSION", "ADDRESS", "TLS"] if wide else []))
    for n in sorted(nodes, key=lambda n: n.name):
        age = flows_per_sec = ratio = NOT_AVAILABLE
        uptime_s = round(n.uptime_ns / 1e9)
        if uptime_s > 0:
            age = go_duration(uptime_s * 1_000_000_000)
            flows_per_sec = f"{n.seen_flows / uptime_s:.2f}"
        if n.max_flows > 0:
            ratio = f"{n.num_flows}/{n.max_flows} ({n.num_flows / n.max_flows * 100:6.2f}%)"
        row = [n.name, _NODE_STATES.get(n.state, "Unknown"), age, flows_per_sec, ratio]
        if wide:
            tls = NOT_AVAILABLE
            if n.HasField("tls"):
                tls = "Enabled" if n.tls.enabled else "Disabled"
            row += [n.version or NOT_AVAILABLE, n.address, tls]
        tab.row(*row)
    return tab.render()


def run_list_nodes(args: argparse.Namespace, ctx: Context) -> int:
    output = _list_output(args)
    res = _unary(
        args,
        ctx,
        lambda stub: stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=args.request_timeout),
    )
    nodes = sorted(res.nodes, key=lambda n: n.name)
    if output == "json":
        _print_json_list(nodes)
    else:
        sys.stdout.write("\n".join(node_rows(nodes, output == "wide")) + "\n")
        sys.stdout.flush()
    return 0


def run_list_namespaces(args: argparse.Namespace, ctx: Context) -> int:
    output = _list_output(args)
    res = _unary(
        args,
        ctx,
        lambda stub: stub.GetNamespaces(
            observer_pb2.GetNamespacesRequest(), timeout=args.request_timeout
        ),
    )
    if output == "json":
        _print_json_list(list(res.namespaces))
        return 0
    tab = TabWriter()
    tab.row("NAMESPACE", *(["CLUSTER"] if output == "wide" else []))
    for ns in res.namespaces:
        cluster = [ns.cluster] if output == "wide" and ns.cluster else []
        tab.row(ns.namespace, *cluster)
    sys.stdout.write("\n".join(tab.render()) + "\n")
    sys.stdout.flush()
    return 0
