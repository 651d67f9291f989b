"""``ciliary observe`` / ``ciliary hubble ...``: flags → GetFlowsRequest, errors, and end to end
against a real Hubble gRPC server on a unix socket."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ciliary.cli import hubble as hubble_cli
from ciliary.cli.hubble_dial import default_server
from ciliary.cli.main import build_parser, main
from ciliary.hubble import cliflags
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc
from ciliary.hubble.api.relay import relay_pb2
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.server import HubbleServer

FF = flow_pb2.FlowFilter


def request(*argv: str) -> observer_pb2.GetFlowsRequest:
    args = build_parser().parse_args(["observe", *argv])
    req, _ = hubble_cli.build_observe_request(args)
    return req


# --------------------------------------------------------------------------- flags → request


@pytest.mark.parametrize(
    ("argv", "allow", "deny"),
    [
        ([], [], []),
        (
            ["--from-ip", "1.2.3.4", "--from-ip", "5.6.7.8"],
            [FF(source_ip=["1.2.3.4", "5.6.7.8"])],
            [],
        ),
        # bidirectional flags make two filters; other flags go to both
        (
            ["--pod", "default/client", "--verdict", "DROPPED"],
            [
                FF(source_pod=["default/client"], verdict=[flow_pb2.DROPPED]),
                FF(destination_pod=["default/client"], verdict=[flow_pb2.DROPPED]),
            ],
            [],
        ),
        # --not negates only the next flag
        (
            [
                "--from-ip",
                "1.2.3.4",
                "--not",
                "--to-ip",
                "5.5.5.5",
                "--verdict",
                "DROPPED",
                "-t",
                "l7",
            ],
            [
                FF(
                    source_ip=["1.2.3.4"],
                    verdict=[flow_pb2.DROPPED],
                    event_type=[flow_pb2.EventTypeFilter(type=129)],
                )
            ],
            [FF(destination_ip=["5.5.5.5"])],
        ),
        (
            [
                "--ip",
                "1.2.3.4",
                "--not",
                "--pod",
                "deathstar",
                "--not",
                "--http-status",
                "200",
                "--http-method",
                "get",
                "--node-name",
                "k8s*",
            ],
            [
                FF(source_ip=["1.2.3.4"], http_method=["get"], node_name=["k8s*"]),
                FF(destination_ip=["1.2.3.4"], http_method=["get"], node_name=["k8s*"]),
            ],
            [
                FF(source_pod=["deathstar"], http_status_code=["200"]),
                FF(destination_pod=["deathstar"], http_status_code=["200"]),
            ],
        ),
        (
            ["-n", "cilium", "--port", "443"],
            [
                FF(source_pod=["cilium/"], source_port=["443"]),
                FF(destination_pod=["cilium/"], destination_port=["443"]),
            ],
            [],
        ),
        (["--to-namespace", "cilium"], [FF(destination_pod=["cilium/"])], []),
        (
            ["--namespace", "cilium", "--pod", "foo"],
            [FF(source_pod=["cilium/foo"]), FF(destination_pod=["cilium/foo"])],
            [],
        ),
        (
            ["--namespace", "a", "--namespace", "b", "--service", "s"],
            [FF(source_service=["a/s", "b/s"]), FF(destination_service=["a/s", "b/s"])],
            [],
        ),
        (
            ["--from-namespace", "kube-system", "--to-pod", "cilium/foo"],
            [FF(source_pod=["kube-system/"], destination_pod=["cilium/foo"])],
            [],
        ),
        (["-A", "--pod", "foo"], [FF(source_pod=["/foo"]), FF(destination_pod=["/foo"])], []),
        (
            ["--identity", "world", "--identity", "12345"],
            [FF(source_identity=[2, 12345]), FF(destination_identity=[2, 12345])],
            [],
        ),
        (
            ["--from-identity", "host", "--to-identity", "remote-node"],
            [FF(source_identity=[1], destination_identity=[6])],
            [],
        ),
        (
            ["-l", "app=web", "--to-label", "reserved:world"][:2],
            [FF(source_label=["app=web"]), FF(destination_label=["app=web"])],
            [],
        ),
        (
            ["--from-fqdn", "*.cilium.io", "--to-service", "shop/web"],
            [FF(source_fqdn=["*.cilium.io"], destination_service=["shop/web"])],
            [],
        ),
        (
            ["--service", "web"],  # the server reads a name alone as default/web
            [FF(source_service=["web"]), FF(destination_service=["web"])],
            [],
        ),
        (
            ["--to-namespace", "shop", "--to-service", "web"],
            [FF(destination_service=["shop/web"])],
            [],
        ),
        (
            ["--workload", "Deployment/web", "--from-workload", "x"][:2],
            [
                FF(source_workload=[flow_pb2.Workload(kind="Deployment", name="web")]),
                FF(destination_workload=[flow_pb2.Workload(kind="Deployment", name="web")]),
            ],
            [],
        ),
        (
            ["-t", "trace:to-endpoint", "-t", "drop", "-t", "policy-verdict", "-t", "4:2"],
            [
                FF(
                    event_type=[
                        flow_pb2.EventTypeFilter(type=4, match_sub_type=True, sub_type=0),
                        flow_pb2.EventTypeFilter(type=1),
                        flow_pb2.EventTypeFilter(type=5),
                        flow_pb2.EventTypeFilter(type=4, match_sub_type=True, sub_type=2),
                    ]
                )
            ],
            [],
        ),
        (
            ["--tcp-flags", "syn,ack", "--protocol", "tcp"],
            [FF(tcp_flags=[flow_pb2.TCPFlags(SYN=True, ACK=True)], protocol=["tcp"])],
            [],
        ),
        (
            ["--traffic-direction", "INGRESS", "-4", "--ip-version", "v6"],
            [FF(traffic_direction=[flow_pb2.INGRESS], ip_version=[flow_pb2.IPv4, flow_pb2.IPv6])],
            [],
        ),
        (
            [
                "--uuid",
                "b9fab269",
                "--http-path",
                "/page/\\d+",
                "--drop-reason-desc",
                "POLICY_DENIED",
            ],
            [
                FF(
                    uuid=["b9fab269"],
                    http_path=["/page/\\d+"],
                    drop_reason_desc=[flow_pb2.POLICY_DENIED],
                )
            ],
            [],
        ),
        (
            ["--http-header", "Foo:coco:bar"],
            [FF(http_header=[flow_pb2.HTTPHeader(key="Foo", value="coco:bar")])],
            [],
        ),
    ],
)
def test_filter_flags(argv: list[str], allow: list[FF], deny: list[FF]) -> None:
    req = request(*argv)
    assert list(req.whitelist) == allow
    assert list(req.blacklist) == deny


def test_raw_filters_are_appended() -> None:
    req = request(
        "--from-pod",
        "a",
        "--allowlist",
        '{"source_label":["k8s:app=x"]} {"destination_label":["reserved:host"]}',
        "--denylist",
        '{"sourcePort":["53"]}',
    )
    assert list(req.whitelist) == [
        FF(source_pod=["a"]),
        FF(source_label=["k8s:app=x"]),
        FF(destination_label=["reserved:host"]),
    ]
    assert list(req.blacklist) == [FF(source_port=["53"])]


@pytest.mark.parametrize(
    ("argv", "number", "first", "follow"),
    [
        ([], 20, False, False),
        (["--last", "5"], 5, False, False),
        (["--first", "3"], 3, True, False),
        (["--all"], 2**64 - 1, False, False),
        (["-f"], 0, False, True),
        (["-f", "--last", "2"], 2, False, True),
        (["--since", "5m"], 0, False, False),
        (["--since", "2021-03-23T00:00:00Z", "--last", "7"], 7, False, False),
    ],
)
def test_selectors(argv: list[str], number: int, first: bool, follow: bool) -> None:
    req = request(*argv)
    assert (req.number, req.first, req.follow) == (number, first, follow)


def test_since_until_parsing() -> None:
    now = 1_700_000_000 * 10**9
    req = cliflags.build_request(
        cliflags.Selector(since="1h30m", until="2021-03-24T00:00:00.5+01:00"), now_ns=now
    )
    assert req.since == Timestamp(seconds=1_700_000_000 - 5400)
    assert req.until == Timestamp(seconds=1616540400, nanos=500_000_000)
    assert cliflags.parse_time("2021-03-23", 0) == 1616457600 * 10**9
    assert cliflags.parse_time("2021-03-23T05Z", 0) == (1616457600 + 5 * 3600) * 10**9
    assert cliflags.parse_time("Tue, 23 Mar 2021 00:00:00 +0000", 0) == 1616457600 * 10**9
    follow = cliflags.build_request(cliflags.Selector(follow=True, until="1m"), now_ns=now)
    assert not follow.HasField("until")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--first", "1", "--last", "2"], "cannot set both --first and --last"),
        (["--first", "1", "--all"], "cannot set both --first and --all"),
        (["--first", "1", "-f"], "cannot set both --first and --follow"),
        (["--last", "1", "--all"], "cannot set both --last and --all"),
        (["-o", "table", "-f"], "table output format is not compatible with follow mode"),
        (["-o", "yaml"], "invalid output format: yaml"),
        (
            ["--since", "yesterday"],
            "failed to parse the since time: failed to convert yesterday to time",
        ),
        (["--from-ip", "1.2.3.4", "--not"], "trailing --not found in the arguments"),
        (["--not", "--not"], "consecutive --not statements"),
        (
            ["--from-ip", "1.2.3.4", "--from-fqdn", "x.io"],
            'invalid argument "x.io" for "--from-fqdn" flag: '
            "filters --from-fqdn and --from-ip cannot be combined",
        ),
        (["--port", "1", "--to-port", "2"], "filters --port and --to-port cannot be combined"),
        (["--verdict", "NOPE"], "invalid --verdict value: NOPE"),
        (["--identity", "bad"], "invalid security identity, expected one of [host world"),
        (["-t", "nope"], "unable to parse type 'nope', not a known type name"),
        (["--tcp-flags", "syn,"], "unknown tcp flag:"),
        (
            ["--traffic-direction", "up"],
            "up: invalid traffic direction, expected ingress or egress",
        ),
        (
            ["--to-namespace", "kube-system", "--to-pod", "cilium/foo"],
            'namespace conflict: "kube-system" does not contain "cilium/foo"',
        ),
        (
            ["--from-service", "cilium/foo", "--from-pod", "kube-system/hubble"],
            'namespace of service "cilium/foo" conflict with pod "kube-system"',
        ),
        (
            ["--allowlist", '{"invalid":["filters"]}'],
            """invalid --allowlist flag: failed to decode '{"invalid":["filters"]}': """,
        ),
        (["--denylist", "{"], "invalid --denylist flag: failed to decode '{': "),
        (["--server", "ftp://x:1"], "unsupported scheme 'ftp'"),
    ],
)
def test_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["observe", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err
    assert err.count("\n") == 1


def test_print_raw_filters(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "observe",
                "--from-ip",
                "1.2.3.4/16",
                "--not",
                "--from-port",
                "80",
                "--print-raw-filters",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == (
        "allowlist:\n"
        '    - \'{"source_ip":["1.2.3.4/16"]}\'\n'
        "denylist:\n"
        '    - \'{"source_port":["80"]}\'\n'
    )
    # ... and what it prints is accepted back by --allowlist/--denylist
    req = request("--allowlist", '{"source_ip":["1.2.3.4/16"]}')
    assert list(req.whitelist) == [FF(source_ip=["1.2.3.4/16"])]


def test_observe_flows_subcommand_is_the_same() -> None:
    args = build_parser().parse_args(["hubble", "observe", "--last", "3", "flows", "--pod", "x"])
    req, _ = hubble_cli.build_observe_request(args)
    assert req.number == 3
    assert list(req.whitelist) == [FF(source_pod=["x"]), FF(destination_pod=["x"])]


# --------------------------------------------------------------------------- server choice


def test_default_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CILIARY_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("HUBBLE_SERVER", raising=False)
    assert default_server() == "localhost:4245"
    (tmp_path / "lab" / "one").mkdir(parents=True)
    (tmp_path / "lab" / "one" / "relay.addr").write_text("127.0.0.1:4300\n")
    assert default_server() == "127.0.0.1:4300"
    (tmp_path / "lab" / "two").mkdir()
    (tmp_path / "lab" / "two" / "relay.addr").write_text("127.0.0.1:4301\n")
    assert default_server() == "localhost:4245"  # ambiguous: upstream's default
    monkeypatch.setenv("HUBBLE_SERVER", "unix:///x.sock")
    assert default_server() == "unix:///x.sock"


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hubble", "status", "--server", "127.0.0.1:1", "--timeout", "200ms"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "Error: cannot connect to the Hubble server at 127.0.0.1:1: no answer within 200ms; "
        "is the ciliary agent (or hubble relay) running? Start a lab with 'ciliary lab up', "
        "or point --server or $HUBBLE_SERVER at a running server\n"
    )


def test_relay_forwards_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setitem(sys.modules, "ciliary.hubble.relay", types.SimpleNamespace(main=fake_main))
    argv = ["--listen-address", "127.0.0.1:4245", "--peers", "n1=unix:///a.sock", "-h"]
    assert main(["hubble", "relay", *argv]) == 3
    assert seen == [argv]


# --------------------------------------------------------------------------- end to end


def _flow(
    sec: int, src: tuple[str, str, int], dst: tuple[str, str, int], verdict: int, sub: int
) -> flow_pb2.Flow:
    f = flow_pb2.Flow(
        time=Timestamp(seconds=sec, nanos=123_000_000),
        verdict=verdict,  # type: ignore[arg-type]
        IP=flow_pb2.IP(source=f"10.0.0.{sec % 250}", destination="10.0.1.1"),
        source=flow_pb2.Endpoint(identity=src[2], namespace=src[0], pod_name=src[1]),
        destination=flow_pb2.Endpoint(identity=dst[2], namespace=dst[0], pod_name=dst[1]),
        event_type=flow_pb2.CiliumEventType(
            type=1 if verdict == flow_pb2.DROPPED else 4, sub_type=sub
        ),
        node_name="node-1",
        Summary="TCP Flags: SYN",
    )
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 43210, 80
    f.l4.TCP.flags.SYN = True
    f.is_reply.value = False
    return f


CLIENT = ("default", "client", 12345)
WEB = ("shop", "web", 23456)
WORLD = ("", "", 2)
FLOWS = [
    _flow(1700000001, CLIENT, WEB, flow_pb2.FORWARDED, 0),
    _flow(1700000002, CLIENT, WEB, flow_pb2.DROPPED, 133),
    _flow(1700000003, WORLD, WEB, flow_pb2.DROPPED, 133),
]


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hcli", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hubble_server(sockdir: Path) -> Iterator[str]:
    """A real HubbleServer (LocalObserver holding FLOWS) on a unix socket, in a thread."""
    observer = LocalObserver("node-1")
    for f in FLOWS:
        observer.on_flow(f)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hubble-test-server", daemon=True)
    thread.start()
    server = HubbleServer(observer=observer, unix_path=sockdir / "hubble.sock")
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield f"unix://{sockdir / 'hubble.sock'}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_observe_compact(hubble_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["observe", "--server", hubble_server]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Nov 14 22:13:21.123: default/client:43210 (ID:12345) -> shop/web:80 (ID:23456) "
        "to-endpoint FORWARDED (TCP Flags: SYN)",
        "Nov 14 22:13:22.123: default/client:43210 (ID:12345) -> shop/web:80 (ID:23456) "
        "Policy denied DROPPED (TCP Flags: SYN)",
        "Nov 14 22:13:23.123: 10.0.0.3:43210 (world) -> shop/web:80 (ID:23456) "
        "Policy denied DROPPED (TCP Flags: SYN)",
    ]


@pytest.mark.parametrize(
    ("argv", "l7"),
    [
        (["--type", "l7"], True),
        (["--protocol", "http"], True),
        (["--protocol", "dns", "--protocol", "http"], True),
        (["--http-status", "5+"], True),
        (["--http-method", "get"], True),
        (["--http-path", "^/v1"], True),
        (["--protocol", "tcp", "--protocol", "http"], False),  # L3/L4 flows match too
        (["--type", "trace"], False),
        (["--not", "--type", "l7"], False),
        ([], False),
    ],
)
def test_asks_for_l7(argv: list[str], l7: bool) -> None:
    assert hubble_cli.asks_for_l7(request(*argv)) is l7


def test_observe_says_why_there_are_no_l7_flows(
    hubble_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """(#15 Build 6) asked for L7 flows and none came: a note on stderr (why, and the
    allow-all rule that gives them without enforcing); none when L3/L4 flows were asked for."""
    for argv in (["--type", "l7"], ["--protocol", "http", "-o", "jsonpb"]):
        assert main(["observe", "--server", hubble_server, *argv]) == 0
        out, err = capsys.readouterr()
        assert out == "" and err == hubble_cli.NO_L7_NOTE
    assert "rules: {http: [{}]}" in hubble_cli.NO_L7_NOTE
    assert 'dns: [{matchPattern: "*"}]' in hubble_cli.NO_L7_NOTE
    assert main(["observe", "--server", hubble_server, "--verdict", "DROPPED"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and err == ""


def test_observe_filters_and_selectors(
    hubble_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def lines(*argv: str) -> list[str]:
        assert main(["hubble", "observe", "--server", hubble_server, *argv]) == 0
        return capsys.readouterr().out.splitlines()

    assert len(lines("--verdict", "DROPPED")) == 2
    assert len(lines("--pod", "default/client", "--verdict", "DROPPED")) == 1
    assert len(lines("--not", "--from-identity", "world")) == 2
    assert len(lines("--to-namespace", "shop", "--from-identity", "world")) == 1
    assert len(lines("--last", "1")) == 1 and "(world)" in lines("--last", "1")[0]
    assert "FORWARDED" in lines("--first", "1")[0]
    assert lines("--since", "2023-11-14T22:13:22Z", "--until", "2023-11-14T22:13:22.5Z")[
        0
    ].startswith("Nov 14 22:13:22.123")
    assert lines("-t", "trace:to-endpoint", "--print-node-name", "--time-format", "RFC3339")[
        0
    ].startswith("2023-11-14T22:13:21Z [node-1]: ")


def test_observe_jsonpb_round_trip_and_input_file(
    hubble_server: str, capsys: pytest.CaptureFixture[str], sockdir: Path
) -> None:
    assert main(["observe", "--server", hubble_server, "-o", "jsonpb"]) == 0
    out = capsys.readouterr().out
    responses = [
        json_format.Parse(line, observer_pb2.GetFlowsResponse()) for line in out.splitlines()
    ]
    assert [r.flow for r in responses] == FLOWS
    assert all(r.node_name == "node-1" for r in responses)
    assert main(["observe", "--server", hubble_server, "-o", "json", "--last", "1"]) == 0
    assert (
        json_format.Parse(capsys.readouterr().out, observer_pb2.GetFlowsResponse()).flow
        == (FLOWS[-1])
    )
    # replay the saved lines: filters and --last/--first apply as on a server
    saved = sockdir / "flows.json"
    saved.write_text(out + "not json\n")
    assert main(["observe", "--input-file", str(saved), "--verdict", "DROPPED", "-s"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["observe", "--input-file", str(saved), "--last", "1", "-o", "dict"]) == 0
    block = capsys.readouterr().out
    assert "------------" not in block and "     SOURCE: 10.0.0.3:43210\n" in block
    assert main(["observe", "--input-file", str(saved), "--first", "1"]) == 0
    captured = capsys.readouterr()
    assert "FORWARDED" in captured.out and captured.out.count("\n") == 1
    assert "Failed to unmarshal" not in captured.err  # --first stopped before the bad line
    # --cel-expression: sent to a server, evaluated locally on a replayed file
    cel = ["--cel-expression", "_flow.verdict == Verdict.DROPPED"]
    assert main(["observe", "--server", hubble_server, "-o", "jsonpb", *cel]) == 0
    served = [json_format.Parse(ln, observer_pb2.GetFlowsResponse()).flow for ln in
              capsys.readouterr().out.splitlines()]  # fmt: skip
    assert served == [f for f in FLOWS if f.verdict == flow_pb2.DROPPED] and served
    assert main(["observe", "--input-file", str(saved), "-o", "jsonpb", *cel]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(served)
    assert main(["observe", "--server", hubble_server, "--cel-expression", "_flow.nope"]) == 1
    assert "error compiling CEL expression" in capsys.readouterr().err
    assert main(["observe", "--input-file", str(saved), "--cel-expression", "1 +"]) == 1
    assert "error compiling CEL expression" in capsys.readouterr().err


def test_observe_table(hubble_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["observe", "--server", hubble_server, "-o", "table", "--last", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "TIMESTAMP             SOURCE           DESTINATION   TYPE            VERDICT   SUMMARY",
        "Nov 14 22:13:23.123   10.0.0.3:43210   shop/web:80   Policy denied   DROPPED   "
        "TCP Flags: SYN",
    ]


def test_status_and_namespaces_of_an_agent(
    hubble_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hubble", "status", "--server", hubble_server]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Healthcheck (via {hubble_server}): Ok"
    assert out[1] == "Current/Max Flows: 3/4,095 (0.07%)"
    assert out[2].startswith("Flows/s: ")
    assert len(out) == 3  # an agent has no "Connected Nodes"
    assert main(["hubble", "status", "--server", hubble_server, "-o", "json"]) == 0
    status = json_format.Parse(capsys.readouterr().out, observer_pb2.ServerStatusResponse())
    assert (status.num_flows, status.seen_flows) == (3, 3)
    assert main(["hubble", "list", "namespaces", "--server", hubble_server]) == 0
    assert capsys.readouterr().out.splitlines() == ["NAMESPACE", "default", "shop"]
    # the agent's observer has no node list (only a relay does): one clear line
    assert main(["hubble", "list", "nodes", "--server", hubble_server]) == 1
    assert capsys.readouterr().err == (
        "Error: rpc error: code = Unimplemented desc = GetNodes not implemented\n"
    )


class _FakeRelay(observer_pb2_grpc.ObserverServicer):
    def GetNodes(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetNodesRequest, context: grpc.ServicerContext
    ) -> observer_pb2.GetNodesResponse:
        return observer_pb2.GetNodesResponse(
            nodes=[
                observer_pb2.Node(
                    name="node-2",
                    state=relay_pb2.NODE_UNAVAILABLE,
                    address="unix:///run/ciliary/node-2/hubble.sock",
                ),
                observer_pb2.Node(
                    name="node-1",
                    state=relay_pb2.NODE_CONNECTED,
                    uptime_ns=90 * 10**9,
                    seen_flows=180,
                    num_flows=3,
                    max_flows=4095,
                    version="ciliary 0.1.0",
                    address="unix:///run/ciliary/node-1/hubble.sock",
                    tls=observer_pb2.TLS(enabled=False),
                ),
            ]
        )

    def ServerStatus(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.ServerStatusRequest, context: grpc.ServicerContext
    ) -> observer_pb2.ServerStatusResponse:
        res = observer_pb2.ServerStatusResponse(
            num_flows=6,
            max_flows=8190,
            seen_flows=6,
            uptime_ns=10**9,
            unavailable_nodes=["node-2"],
        )
        res.num_connected_nodes.value = 1
        res.num_unavailable_nodes.value = 1
        return res


@pytest.fixture
def fake_relay(sockdir: Path) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    observer_pb2_grpc.add_ObserverServicer_to_server(_FakeRelay(), server)  # type: ignore[abstract]
    health_servicer = health.HealthServicer()
    health_servicer.set("hubble.server.Observer", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"unix://{sockdir / 'relay.sock'}")
    server.start()
    try:
        yield f"unix://{sockdir / 'relay.sock'}"
    finally:
        server.stop(None)


def test_relay_status_and_nodes(fake_relay: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hubble", "status", "--server", fake_relay]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "Current/Max Flows: 6/8,190 (0.07%)",
        "Flows/s: 6.00",
        "Connected Nodes: 1/2",
        "Unavailable Nodes: 1",
        "  - node-2",
    ]
    assert main(["hubble", "list", "nodes", "--server", fake_relay]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "NAME     STATUS        AGE     FLOWS/S   CURRENT/MAX-FLOWS",
        "node-1   Connected     1m30s   2.00      3/4095 (  0.07%)",
        "node-2   Unavailable   N/A     N/A       N/A",
    ]
    assert main(["hubble", "list", "node", "-o", "wide", "--server", fake_relay]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[1]
        .endswith("ciliary 0.1.0   unix:///run/ciliary/node-1/hubble.sock   Disabled")
    )
    assert main(["hubble", "list", "nodes", "-o", "json", "--server", fake_relay]) == 0
    assert '"name": "node-1"' in capsys.readouterr().out


def test_node_flag_picks_the_node_socket(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sockdir: Path
) -> None:
    monkeypatch.setenv("CILIARY_RUN_DIR", str(sockdir))
    assert main(["--node", "n9", "observe", "--timeout", "100ms"]) == 1
    err = capsys.readouterr().err
    assert f"unix://{sockdir}/n9/hubble.sock: no such socket" in err
