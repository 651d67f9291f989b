"""The Hubble UI's backend: the service map builder, flows → table rows, the filter bar's
grammar (``hubble observe`` flags as text), and the server's JSON/SSE API over a real Hubble
gRPC server (a :class:`LocalObserver` behind :class:`HubbleServer` on a unix socket, the same
Observer API the relay serves)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf.wrappers_pb2 import BoolValue

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.client import connect
from ciliary.hubble.explain import default_deny_extension
from ciliary.hubble.filterflags import flag_pairs
from ciliary.hubble.flagvalues import FlagError
from ciliary.hubble.observer import LocalObserver
from ciliary.hubble.server import HubbleServer
from ciliary.hubble.ui.flows import QueryError, RelayClient, build_query, flow_row
from ciliary.hubble.ui.servicemap import ServiceMap, card_labels
from ciliary.policy.explain import DefaultDeny, PolicyRef

# --------------------------------------------------------------------------- flows


def ep(
    ns: str = "",
    pod: str = "",
    labels: tuple[str, ...] = (),
    identity: int = 0,
    workload: tuple[str, str] | None = None,
) -> flow_pb2.Endpoint:
    e = flow_pb2.Endpoint(namespace=ns, pod_name=pod, labels=list(labels), identity=identity)
    if workload is not None:
        e.workloads.add(name=workload[0], kind=workload[1])
    return e


CLIENT = ep("default", "client", ("k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"))
WEB = ep("shop", "web", ("k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"))
DB = ep("shop", "db", ("k8s:app=db",))


def tcp(
    src: flow_pb2.Endpoint,
    dst: flow_pb2.Endpoint,
    port: int,
    verdict: int = flow_pb2.FORWARDED,
    reply: bool | None = False,
    **kw: Any,
) -> flow_pb2.Flow:
    f = flow_pb2.Flow(
        verdict=verdict,
        source=src,
        destination=dst,
        IP=flow_pb2.IP(source="10.0.0.1", destination="10.0.0.2", ipVersion=flow_pb2.IPv4),
        l4=flow_pb2.Layer4(TCP=flow_pb2.TCP(source_port=40000, destination_port=port)),
        node_name="n1",
        **kw,
    )
    if reply is not None:
        f.is_reply.CopyFrom(BoolValue(value=reply))
    f.time.FromNanoseconds(1_700_000_000_123_000_000)
    return f


def dropped(src: flow_pb2.Endpoint, dst: flow_pb2.Endpoint, port: int) -> flow_pb2.Flow:
    return tcp(
        src, dst, port, flow_pb2.DROPPED, reply=None, drop_reason_desc=flow_pb2.POLICY_DENIED
    )


# --------------------------------------------------------------------------- service map


def test_map_edges_by_workload_port_and_verdict() -> None:
    m = ServiceMap("shop")
    assert m.add(tcp(CLIENT, WEB, 80)) is True
    assert m.add(tcp(CLIENT, WEB, 80)) is False  # same picture: no new snapshot needed
    assert m.add(tcp(WEB, CLIENT, 40000, reply=True)) is False  # replies are not edges
    assert m.add(dropped(CLIENT, DB, 5432)) is True
    snap = m.snapshot()
    cards = {c["id"]: c for c in snap["cards"]}
    assert set(cards) == {"default/Pod/client", "shop/Pod/web", "shop/Pod/db"}
    assert cards["shop/Pod/web"]["ports"] == ["80/TCP"]
    assert cards["shop/Pod/web"]["labels"] == ["app=web"]
    assert cards["shop/Pod/web"]["inside"] is True
    assert cards["default/Pod/client"]["inside"] is False
    assert cards["default/Pod/client"]["ports"] == []
    edges = {(e["source"], e["target"], e["port"], e["protocol"]): e for e in snap["edges"]}
    assert set(edges) == {
        ("default/Pod/client", "shop/Pod/web", 80, "TCP"),
        ("default/Pod/client", "shop/Pod/db", 5432, "TCP"),
    }
    assert edges["default/Pod/client", "shop/Pod/web", 80, "TCP"]["verdict"] == "forwarded"
    assert edges["default/Pod/client", "shop/Pod/web", 80, "TCP"]["flows"] == 2
    assert edges["default/Pod/client", "shop/Pod/db", 5432, "TCP"]["verdict"] == "dropped"
    # an allowed connection on the same edge later: mixed, and the picture changed
    assert m.add(tcp(CLIENT, DB, 5432)) is True
    verdicts = {e["target"]: e["verdict"] for e in m.snapshot()["edges"]}
    assert verdicts["shop/Pod/db"] == "mixed"


def test_map_cards_workloads_reserved_and_kube_dns() -> None:
    m = ServiceMap("shop")
    a = ep("shop", "web-7d9f-abcde", ("k8s:app=web",), workload=("web", "Deployment"))
    b = ep("shop", "web-7d9f-fghij", ("k8s:app=web",), workload=("web", "Deployment"))
    dns = ep("kube-system", "coredns-1", ("k8s:k8s-app=kube-dns",))
    world = ep(identity=2, labels=("reserved:world",))
    cidr = ep(identity=16777217, labels=("cidr:1.1.1.1/32", "reserved:world"))
    m.add(tcp(a, dns, 53))
    m.add(tcp(b, dns, 53))
    m.add(tcp(world, a, 80))
    m.add(tcp(a, cidr, 443))
    m.add(tcp(ep(identity=1), a, 80))
    cards = {c["id"]: c for c in m.snapshot()["cards"]}
    assert set(cards) == {
        "shop/Deployment/web",
        "kube-system/kube-dns",
        "reserved:world",
        "reserved:host",
    }
    web = cards["shop/Deployment/web"]
    assert (web["name"], web["kind"], web["ports"]) == ("web", "Deployment", ["80/TCP"])
    assert cards["kube-system/kube-dns"]["kind"] == "kube-dns"
    assert cards["reserved:world"]["kind"] == "world"
    assert cards["reserved:host"]["name"] == "host"
    # both pods of the Deployment share one edge to kube-dns
    assert [e["flows"] for e in m.snapshot()["edges"] if e["target"].endswith("kube-dns")] == [2]


def test_map_http_values_per_edge() -> None:
    m = ServiceMap("shop")
    f = tcp(CLIENT, WEB, 80)
    f.l7.CopyFrom(
        flow_pb2.Layer7(
            type=flow_pb2.RESPONSE,
            http=flow_pb2.HTTP(code=200, method="GET", url="http://web/index.html?x=1"),
        )
    )
    assert m.add(f) is True
    edge = m.snapshot()["edges"][0]
    assert edge["http"] == {"methods": ["GET"], "paths": ["/index.html"], "codes": [200]}


def test_card_labels_hide_what_every_pod_has() -> None:
    assert card_labels(
        [
            "k8s:app=web",
            "k8s:io.kubernetes.pod.namespace=shop",
            "k8s:io.cilium.k8s.policy.cluster=default",
            "k8s:io.cilium.k8s.policy.serviceaccount=default",
            "reserved:init",
            "k8s:tier=front",
        ]
    ) == ["app=web", "tier=front"]


# --------------------------------------------------------------------------- rows


def test_flow_row_of_a_default_deny_names_the_policy() -> None:
    f = dropped(CLIENT, DB, 5432)
    f.traffic_direction = flow_pb2.INGRESS
    why = DefaultDeny(
        endpoint="shop/db",
        direction="ingress",
        policies=(PolicyRef("k", "CiliumNetworkPolicy", "shop", "db-from-web"),),
    )
    f.extensions.CopyFrom(default_deny_extension(why))
    row = flow_row(f)
    assert row["source"] == "default/client" and row["destination"] == "shop/db"
    assert (row["port"], row["protocol"]) == (5432, "TCP")
    assert (row["verdict"], row["verdict_class"]) == ("DROPPED", "dropped")
    assert row["drop_reason"] == "POLICY_DENIED"
    assert row["is_reply"] is None and row["direction"] == "INGRESS"
    assert row["policies"]["default_deny"]["policies"] == ["CiliumNetworkPolicy shop/db-from-web"]
    assert "db-from-web" in row["policies"]["default_deny"]["explanation"]
    assert row["time"] == "2023-11-14T22:13:20.123Z"
    assert row["flow"]["destination"]["pod_name"] == "db"
    json.dumps(row)  # the page gets it as JSON


def test_flow_row_of_an_allowed_flow_names_the_rule_and_l7() -> None:
    f = tcp(CLIENT, WEB, 80, uuid="u-1")
    f.ingress_allowed_by.add(name="web-from-client", namespace="shop", kind="CiliumNetworkPolicy")
    f.l7.CopyFrom(flow_pb2.Layer7(http=flow_pb2.HTTP(code=404, method="GET", url="http://web/x")))
    row = flow_row(f)
    assert row["id"] == "u-1"
    assert row["policies"] == {
        "ingress_allowed_by": [
            {"name": "web-from-client", "namespace": "shop", "kind": "CiliumNetworkPolicy"}
        ]
    }
    assert row["l7"] == "GET http://web/x → 404"
    assert row["drop_reason"] == "" and row["is_reply"] is False
    world = flow_row(tcp(ep(identity=2, labels=("reserved:world",)), WEB, 80))
    assert world["source"] == "world"


# --------------------------------------------------------------------------- filter text


def test_flag_pairs_long_short_and_equals_forms() -> None:
    assert flag_pairs(
        ["--pod", "x", "--verdict=DROPPED", "-4", "-n", "shop", "--not", "-t", "drop"]
    ) == [
        ("pod", "x"),
        ("verdict", "DROPPED"),
        ("ipv4", "v4"),
        ("namespace", "shop"),
        ("not", "true"),
        ("type", "drop"),
    ]
    for words, msg in (
        (["shop/db"], 'unexpected argument "shop/db"'),
        (["--podd", "x"], "unknown flag: --podd"),
        (["--pod"], "flag needs an argument: --pod"),
        (["--ipv4=v6"], "takes no value"),
    ):
        with pytest.raises(FlagError, match=msg):
            flag_pairs(words)


def test_build_query_sends_the_namespace_and_denylist_and_matches_the_rest() -> None:
    q = build_query("shop", "--verdict DROPPED --not --from-pod default/intruder")
    assert q.request.follow is True and q.request.number > 0
    assert [list(f.source_pod) + list(f.destination_pod) for f in q.request.whitelist] == [
        ["shop/"],
        ["shop/"],
    ]
    assert [list(f.source_pod) for f in q.request.blacklist] == [["default/intruder"]]
    assert q.match(dropped(CLIENT, DB, 5432)) is True
    assert q.match(tcp(CLIENT, WEB, 80)) is False
    # --to-pod with the namespace: hubble observe refuses --namespace with --to-pod, the UI
    # does not send them together
    assert build_query("shop", "--to-pod shop/db").match(dropped(CLIENT, DB, 5432)) is True
    assert build_query("shop", "").match(tcp(CLIENT, WEB, 80)) is True


@pytest.mark.parametrize(
    ("ns", "text", "msg"),
    [
        ("", "", "no namespace"),
        ("shop", "--verdict MAYBE", 'invalid argument "MAYBE" for "--verdict"'),
        ("shop", "--port 80 --to-port 80", "cannot be combined"),
        ("shop", "--pod 'x", "No closing quotation"),
        ("shop", "--not", "trailing --not"),
    ],
)
def test_build_query_errors_name_the_problem(ns: str, text: str, msg: str) -> None:
    with pytest.raises(QueryError, match=msg):
        build_query(ns, text)


# --------------------------------------------------------------------------- the server


async def _events(resp: Any, wanted: int) -> list[tuple[str, Any]]:
    """The first ``wanted`` SSE events of a response (event, parsed data)."""
    out: list[tuple[str, Any]] = []
    event = ""
    while len(out) < wanted:
        line = (await asyncio.wait_for(resp.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            out.append((event, json.loads(line.removeprefix("data: "))))
    return out


async def _ui(observer: LocalObserver) -> AsyncIterator[TestClient[Any, Any]]:
    from ciliary.hubble.ui.server import make_app  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="ui-"))
    server = HubbleServer(observer, unix_path=tmp / "h.sock")
    await server.start()
    channel = await connect(f"unix://{tmp / 'h.sock'}", timeout=5)
    client = TestClient(TestServer(make_app(RelayClient(channel), "unix://test")))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await channel.close(None)
        await server.stop(grace=0)


def test_server_streams_rows_and_map_and_refuses_bad_filters() -> None:
    async def scenario() -> None:
        observer = LocalObserver("n1", capacity=255)
        observer.on_flow(tcp(CLIENT, WEB, 80))
        async for client in _ui(observer):
            page = await client.get("/")
            assert page.status == 200 and "cytoscape.min.js" in await page.text()
            js = await client.get("/vendor/cytoscape.min.js")
            assert js.status == 200 and len(await js.read()) > 100_000
            assert (await client.get("/static/app.js")).status == 200
            ns = await client.get("/api/namespaces")
            assert await ns.json() == {"namespaces": ["default", "shop"]}

            resp = await client.get("/api/flows/stream", params={"namespace": "shop", "filter": ""})
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            (e1, empty), (e2, rows), (e3, snap) = await _events(resp, 3)
            assert (e1, empty["cards"]) == ("map", [])
            assert e2 == "flows" and [r["destination"] for r in rows] == ["shop/web"]
            assert e3 == "map" and [e["verdict"] for e in snap["edges"]] == ["forwarded"]
            # live: a flow that arrives later comes through the same stream
            observer.on_flow(dropped(CLIENT, DB, 5432))
            (e4, rows), (e5, snap) = await _events(resp, 2)
            assert e4 == "flows" and [r["verdict"] for r in rows] == ["DROPPED"]
            assert e5 == "map" and len(snap["edges"]) == 2
            resp.close()

            # a filter narrows: only dropped flows, of the namespace only
            observer.on_flow(tcp(ep("other", "x"), ep("other", "y"), 80))
            resp = await client.get(
                "/api/flows/stream", params={"namespace": "shop", "filter": "--verdict DROPPED"}
            )
            _, (_, rows), _ = await _events(resp, 3)
            assert [(r["destination"], r["verdict"]) for r in rows] == [("shop/db", "DROPPED")]
            resp.close()

            resp = await client.get(
                "/api/flows/stream", params={"namespace": "shop", "filter": "--nope"}
            )
            [(event, body)] = await _events(resp, 1)
            assert event == "failure" and body == {
                "message": "filter '--nope': unknown flag: --nope",
                "filter": True,
            }

    asyncio.run(scenario())


def test_server_sends_a_changing_map_at_most_every_map_interval() -> None:
    """A busy namespace changes its map with almost every batch; the page gets the whole map
    (all the cards and edges) at most every MAP_INTERVAL, and the last change still arrives."""
    from ciliary.hubble.ui.server import MAP_INTERVAL  # noqa: PLC0415

    async def scenario() -> None:
        observer = LocalObserver("n1", capacity=255)
        async for client in _ui(observer):
            resp = await client.get("/api/flows/stream", params={"namespace": "shop"})
            [(event, _)] = await _events(resp, 1)
            assert event == "map"
            start = asyncio.get_running_loop().time()
            for port in range(20):  # a new edge every 50 ms: 20 batches that change the map
                observer.on_flow(tcp(CLIENT, WEB, 1000 + port))
                await asyncio.sleep(0.05)
            took = asyncio.get_running_loop().time() - start
            maps: list[Any] = []
            while not maps or len(maps[-1]["edges"]) < 20:
                [(event, data)] = await _events(resp, 1)
                if event == "map":
                    maps.append(data)
            assert len(maps) <= took / MAP_INTERVAL + 2, len(maps)
            assert len(maps) < 10, len(maps)  # not one per changing batch (20)
            resp.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- policy view


def _pod(ns: str, name: str, labels: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels, **meta},
        "spec": {},
        "status": {"phase": "Running"},
    }


def _cnp(name: str, selects: str, peer: dict[str, str], port: str) -> tuple[str, str, Any]:
    spec = {
        "endpointSelector": {"matchLabels": {"app": selects}},
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": peer}],
                "toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}],
            }
        ],
    }
    meta = {"name": name, "namespace": "shop", "uid": "u1", "resourceVersion": "7"}
    return "cilium.io/v2", "CiliumNetworkPolicy", {"metadata": meta, "spec": spec}


def _cluster() -> Any:
    from ciliary.hubble.ui.policyview import build  # noqa: PLC0415

    web_owner = [{"kind": "ReplicaSet", "name": "web-5d8f", "controller": True}]
    return build(
        [
            _cnp("web-from-client", "web", {"app": "client", NS_LABEL: "default"}, "80"),
            _cnp("db-from-web", "db", {"app": "web"}, "5432"),
            ("cilium.io/v2", "CiliumNetworkPolicy", {"metadata": {"name": "bad"}, "spec": {}}),
        ],
        [
            _pod("default", "client", {"app": "client"}),
            _pod(
                "shop",
                "web-5d8f-abcde",
                {"app": "web", "pod-template-hash": "5d8f"},
                ownerReferences=web_owner,
            ),
            _pod(
                "shop",
                "web-5d8f-fghij",
                {"app": "web", "pod-template-hash": "5d8f"},
                ownerReferences=web_owner,
            ),
            _pod("shop", "db", {"app": "db"}),
            {
                "metadata": {"namespace": "kube-system", "name": "n1-agent"},
                "spec": {"hostNetwork": True},
                "status": {},
            },
        ],
        [{"metadata": {"name": "shop"}}, {"metadata": {"name": "default"}}],
    )


NS_LABEL = "k8s:io.kubernetes.pod.namespace"


def test_policy_view_of_a_workload_per_port_with_its_rules() -> None:
    cluster = _cluster()
    # the map's card ids: the Deployment of both web pods; a host-network pod is the host
    assert sorted(cluster.workloads) == ["default/Pod/client", "shop/Deployment/web", "shop/Pod/db"]
    view = cluster.view("shop/Pod/db")
    assert view["ingress"]["enforced"] is True
    assert view["ingress"]["enforced_by"] == ["CiliumNetworkPolicy shop/db-from-web"]
    ports = {p["port"]: p["peers"] for p in view["ingress"]["ports"]}
    assert ports["5432/TCP"] == [
        {
            "peers": ["shop/web"],
            "verdict": "allowed",
            "rules": ["CiliumNetworkPolicy shop/db-from-web"],
        }
    ]
    assert ports["any"][0]["peers"] == ["host"]  # allow-localhost, as the agents run
    assert view["egress"]["enforced"] is False
    assert view["refused"] and view["refused"][0].startswith("CiliumNetworkPolicy bad:")
    with pytest.raises(ValueError, match="workload 'shop/Pod/nope': no running pod of it"):
        cluster.view("shop/Pod/nope")


def test_what_if_names_the_deciding_rule_or_the_default_deny() -> None:
    cluster = _cluster()
    denied = cluster.what_if("default/Pod/client", "shop/Pod/db", "tcp", 5432)
    assert (denied["allowed"], denied["reason"], denied["direction"]) == (
        False,
        "default deny",
        "ingress",
    )
    assert denied["enforced_by"] == ["CiliumNetworkPolicy shop/db-from-web"]
    assert denied["text"] == (
        "default deny: shop/db is selected for ingress by CiliumNetworkPolicy shop/db-from-web;"
        " no rule of it allows this peer/port"
    )
    allowed = cluster.what_if("shop/Deployment/web", "shop/Pod/db", "TCP", 5432)
    assert allowed["allowed"] is True
    assert allowed["text"] == "allowed at ingress by CiliumNetworkPolicy shop/db-from-web"
    assert cluster.what_if("shop/Deployment/web", "shop/Pod/db", "TCP", 5433)["allowed"] is False
    assert cluster.what_if("reserved:world", "shop/Deployment/web", "TCP", 80)["allowed"] is False
    assert cluster.what_if("default/Pod/client", "shop/Deployment/web", "TCP", 80)["allowed"]
    with pytest.raises(ValueError, match="protocol 'GRE': expected one of TCP, UDP"):
        cluster.what_if("default/Pod/client", "shop/Pod/db", "GRE", 1)
    with pytest.raises(ValueError, match=r"port 70000: expected 0\.\.65535"):
        cluster.what_if("default/Pod/client", "shop/Pod/db", "TCP", 70000)
    with pytest.raises(ValueError, match="source 'reserved:nope': no such reserved identity"):
        cluster.what_if("reserved:nope", "shop/Pod/db", "TCP", 1)


def test_policy_api_without_a_kubeconfig_says_so() -> None:
    async def scenario() -> None:
        async for client in _ui(LocalObserver("n1", capacity=255)):
            resp = await client.get("/api/policy", params={"workload": "shop/Pod/db"})
            assert resp.status == 503
            assert await resp.json() == {
                "error": "no Kubernetes API to read policies from: start the UI with --kubeconfig"
            }

    asyncio.run(scenario())


def test_map_skips_replies_traces_and_socket_translations() -> None:
    m = ServiceMap("shop")
    assert m.add(tcp(CLIENT, WEB, 80, flow_pb2.TRACED)) is False
    assert m.add(tcp(CLIENT, WEB, 80, flow_pb2.TRANSLATED)) is False
    assert m.add(tcp(WEB, CLIENT, 40000, reply=True)) is False
    assert m.snapshot()["edges"] == [] and m.snapshot()["cards"] == []


def test_cli_names_an_unreachable_relay_and_a_bad_address(tmp_path: Path) -> None:
    ciliary = str(Path(sys.executable).with_name("ciliary"))
    sock = tmp_path / "no-relay.sock"
    res = subprocess.run(
        [ciliary, "hubble", "ui", "--relay", f"unix://{sock}", "--timeout", "0.3s"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.strip() == (
        f"Error: cannot connect to Hubble server unix://{sock}: no answer within 0.3s; "
        "is the lab (its relay) running? ('ciliary lab up')"
    )
    res = subprocess.run(
        [ciliary, "hubble", "ui", "--relay", "ftp://x:1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1 and "unsupported scheme 'ftp'" in res.stderr
    res = subprocess.run(
        [ciliary, "hubble", "ui", "--relay", f"unix://{sock}", "--kubeconfig", str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.strip() == f"Error: --kubeconfig {tmp_path / 'k'}: no such file"
