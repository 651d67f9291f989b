"""The agent client and the ``ciliary`` CLI against a fake agent on a real unix socket.

The fake is a test double of the agent's HTTP surface only (aiohttp on a unix socket in a temp
run dir, serving canned model instances), so these tests exercise the real transport, the real
error mapping and the real rendering without root, netns or BPF.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel

from ciliary.cli import lab as lab_cli
from ciliary.cli import monitor as monitor_cli
from ciliary.cli.main import main
from ciliary.cli.output import CLIError
from ciliary.client import (
    AgentAPIError,
    AgentClient,
    AgentDiscoveryError,
    AgentPermissionError,
    AgentProtocolError,
    AgentUnavailableError,
    resolve_agent_socket,
)
from ciliary.core.models import (
    CTEntry,
    DatapathStatus,
    Endpoint,
    EndpointCreateRequest,
    EndpointState,
    ErrorResponse,
    IPAMStatus,
    IPCacheEntry,
    KernelFeatures,
    MapPressure,
    MonitorEvent,
    StateChange,
    StatusResponse,
)
from ciliary.lab.state import LabView, NodeView, PodView

NOW = 1_700_000_000.0

# --------------------------------------------------------------------------- canned data


def make_endpoint(
    id: int, pod: str, *, ipv4: str, ipv6: str | None, labels: dict[str, str], identity: int
) -> Endpoint:
    return Endpoint(
        id=id,
        container_id=f"c-{pod}",
        pod_name=pod,
        namespace="default",
        labels=labels,
        identity=identity,
        state=EndpointState.READY,
        ipv4=ipv4,
        ipv6=ipv6,
        ifname="eth0",
        netns=f"/run/netns/cilp-lab-default-{pod}",
        lxc=f"lxc{id:04d}",
        lxc_ifindex=100 + id,
        mac="02:00:00:00:00:01",
        node_mac="02:00:00:00:00:02",
        created_at=NOW,
        log=[
            StateChange(time=NOW, state=EndpointState.CREATING, reason="created"),
            StateChange(time=NOW + 1, state=EndpointState.READY, reason="regenerated"),
        ],
    )


ENDPOINTS = [
    make_endpoint(
        12, "client", ipv4="10.200.0.5", ipv6="fd00:200::5", labels={"app": "client"}, identity=256
    ),
    make_endpoint(
        34,
        "server",
        ipv4="10.200.0.7",
        ipv6=None,
        labels={"app": "server", "tier": "web"},
        identity=257,
    ),
]

STATUS = StatusResponse(
    node="n1",
    version="0.1.0",
    healthy=True,
    uptime_s=3723.0,
    pid=4242,
    kernel=KernelFeatures(
        release="6.1.0-test",
        btf=True,
        bpffs=True,
        cgroup2=True,
        tcx=True,
        ringbuf=True,
        lpm_trie=True,
        lru_hash=True,
        redirect_peer=False,
    ),
    datapath=DatapathStatus(
        object="bpf_lxc.o",
        programs=["cil_from_container", "cil_to_container"],
        pin_dir="/sys/fs/bpf/ciliary/n1",
        monitor_aggregation="medium",
        events_lost=0,
    ),
    ipam=IPAMStatus(
        ipv4_cidr="10.200.0.0/24",
        ipv6_cidr="fd00:200::/64",
        ipv4_router="10.200.0.1",
        ipv6_router="fd00:200::1",
        allocated=3,
    ),
    endpoints_by_state={"ready": 2, "regenerating": 1},
    proxy_ports={"cilium-http-egress": 10001, "cilium-dns-egress": 10000},
    maps=[
        MapPressure(name="cilium_ct4_global", entries=12, max_entries=65536),
        MapPressure(name="cilium_ipcache", entries=95, max_entries=100),
    ],
    kubernetes_apis=["core/v1::Pods", "core/v1::Service", "discovery/v1::EndpointSlice"],
)

CT = [
    CTEntry(
        family="IPv6",
        protocol="TCP",
        src="fd00:200::5",
        dst="fd00::1",
        sport=43210,
        dport=80,
        age_s=5.0,
        expires_in_s=21595.0,
        tx_packets=3,
        tx_bytes=220,
        rx_packets=2,
        rx_bytes=150,
        tx_flags=["SYN", "ACK"],
        rx_flags=["SYN", "ACK"],
        flags=["SeenNonSyn"],
        src_identity=256,
        dst_identity=257,
    ),
    CTEntry(
        family="IPv4",
        protocol="UDP",
        src="10.200.0.5",
        dst="10.200.0.7",
        sport=5353,
        dport=53,
        age_s=1.0,
        expires_in_s=59.0,
        tx_packets=1,
        tx_bytes=60,
        rx_packets=0,
        rx_bytes=0,
        tx_flags=[],
        rx_flags=[],
        flags=[],
        src_identity=256,
        dst_identity=2,
    ),
]

IPCACHE = [
    IPCacheEntry(prefix="10.200.0.7/32", identity=257),
    IPCacheEntry(prefix="0.0.0.0/0", identity=2),
    IPCacheEntry(prefix="10.200.0.5/32", identity=256, tunnel_endpoint="192.168.1.2"),
]


def make_event(kind: str, **over: Any) -> MonitorEvent:
    base: dict[str, Any] = {
        "time": "2024-01-01T00:00:00.000000Z",
        "ts_ns": 1,
        "ct_created_ns": 0,
        "node": "n1",
        "type": kind,
        "verdict": "DROPPED" if kind == "drop" else "FORWARDED",
        "drop_reason": 133 if kind == "drop" else 0,
        "drop_reason_desc": "Policy denied" if kind == "drop" else "",
        "observation_point": "to-endpoint",
        "ip_version": 4,
        "protocol": "TCP",
        "src_ip": "10.200.0.5",
        "dst_ip": "10.200.0.7",
        "src_port": 43210,
        "dst_port": 80,
        "icmp_type": 0,
        "icmp_code": 0,
        "tcp_flags": ["SYN"],
        "is_reply": False,
        "ct_state": "new",
        "src_identity": 256,
        "dst_identity": 257,
        "endpoint_id": 12,
        "dst_endpoint_id": 34,
        "ifindex": 134,
        "ifname": "lxc0034",
        "length": 74,
        "src_mac": "02:00:00:00:00:01",
        "dst_mac": "02:00:00:00:00:02",
        "src_pod": "default/client",
        "dst_pod": "default/server",
        "summary": "TCP Flags: SYN",
    }
    base.update(over)
    return MonitorEvent.model_validate(base)


EVENTS = [
    make_event("trace"),
    make_event("drop"),
    make_event("trace", observation_point="from-endpoint", ct_state="established"),
]


# --------------------------------------------------------------------------- the fake agent


def _json(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        body = data.model_dump_json()
    else:
        body = json.dumps(
            [d.model_dump(mode="json") for d in data] if isinstance(data, list) else data
        )
    return web.Response(text=body, status=status, content_type="application/json")


def _not_found(what: str) -> web.Response:
    return _json(ErrorResponse(error=f"{what} not found", kind="not-found"), 404)


class FakeAgent:
    """aiohttp on a unix socket, in its own thread and event loop."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.endpoints = {ep.id: ep for ep in ENDPOINTS}
        self.monitor_queries: list[str | None] = []
        self.status_delay = 0.0
        self.broken_status = False
        self.plain_ipcache_error = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    # -- handlers

    async def healthz(self, _: web.Request) -> web.Response:
        return _json({"status": "ok", "node": "n1"})

    async def status(self, _: web.Request) -> web.Response:
        if self.status_delay:
            await asyncio.sleep(self.status_delay)
        if self.broken_status:
            return _json({"node": "n1"})
        return _json(STATUS)

    async def endpoint_list(self, _: web.Request) -> web.Response:
        return _json(list(self.endpoints.values()))

    async def endpoint_get(self, request: web.Request) -> web.Response:
        ep = self.endpoints.get(int(request.match_info["id"]))
        return _json(ep) if ep else _not_found(f"endpoint {request.match_info['id']}")

    async def endpoint_create(self, request: web.Request) -> web.Response:
        req = EndpointCreateRequest.model_validate(await request.json())
        new_id = max(self.endpoints) + 1
        ep = make_endpoint(
            new_id,
            req.pod_name,
            ipv4=req.ipv4 or "10.200.0.9",
            ipv6=None,
            labels=req.labels,
            identity=258,
        )
        ep = ep.model_copy(update={"container_id": req.container_id, "netns": req.netns})
        self.endpoints[new_id] = ep
        return _json(ep, 201)

    async def endpoint_delete(self, request: web.Request) -> web.Response:
        ep = self.endpoints.pop(int(request.match_info["id"]), None)
        return _json(ep) if ep else _not_found(f"endpoint {request.match_info['id']}")

    async def endpoint_delete_by_container(self, request: web.Request) -> web.Response:
        cid = request.query.get("container_id", "")
        for ep in list(self.endpoints.values()):
            if ep.container_id == cid:
                del self.endpoints[ep.id]
                return _json(ep)
        return _not_found(f"container {cid}")

    async def ct(self, _: web.Request) -> web.Response:
        return _json(CT)

    async def ipcache(self, _: web.Request) -> web.Response:
        if self.plain_ipcache_error:
            return web.Response(text="boom\n", status=500)
        return _json(IPCACHE)

    async def monitor(self, request: web.Request) -> web.StreamResponse:
        want = request.query.get("type")
        self.monitor_queries.append(want)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for ev in EVENTS:
            if want is None or ev.type == want:
                await resp.write(ev.model_dump_json().encode() + b"\n")
        # like the agent: never end on our own; stop once the client has gone away
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)
        return resp

    # -- lifecycle

    async def _start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/v1/healthz", self.healthz),
                web.get("/v1/status", self.status),
                web.get("/v1/endpoint", self.endpoint_list),
                web.put("/v1/endpoint", self.endpoint_create),
                web.delete("/v1/endpoint", self.endpoint_delete_by_container),
                web.get("/v1/endpoint/{id}", self.endpoint_get),
                web.delete("/v1/endpoint/{id}", self.endpoint_delete),
                web.get("/v1/map/ct", self.ct),
                web.get("/v1/map/ipcache", self.ipcache),
                web.get("/v1/monitor", self.monitor),
            ]
        )
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.sock)).start()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await self.loop.shutdown_asyncgens()

    def start(self) -> None:
        self.sock.parent.mkdir(parents=True, exist_ok=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # short path: unix socket paths are limited to 108 bytes, pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="cil-", dir="/tmp"))
    monkeypatch.setenv("CILIARY_RUN_DIR", str(path))
    monkeypatch.delenv("CILIARY_AGENT_SOCKET", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(run_dir: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(run_dir / "n1" / "agent.sock")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def dead_socket(path: Path) -> Path:
    """A socket file nobody listens on (what a crashed agent leaves behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
    return path


# --------------------------------------------------------------------------- client


def test_client_round_trips_every_method(agent: FakeAgent) -> None:
    with AgentClient(agent.sock, timeout=5) as c:
        assert c.healthz() == {"status": "ok", "node": "n1"}
        assert c.status() == STATUS
        assert c.endpoints() == ENDPOINTS
        assert c.endpoint(12) == ENDPOINTS[0]
        assert c.ct_list() == CT
        assert c.ipcache_list() == IPCACHE

        req = EndpointCreateRequest(
            container_id="c-new", netns="/run/netns/x", pod_name="new", labels={"app": "new"}
        )
        created = c.create_endpoint(req)
        assert (created.id, created.container_id, created.labels) == (35, "c-new", {"app": "new"})
        assert c.endpoint(35) == created
        assert c.delete_endpoint(35) == created
        assert c.delete_endpoint_by_container("c-server") == ENDPOINTS[1]
        assert [e.id for e in c.endpoints()] == [12]

        stream = c.monitor()
        assert list(itertools.islice(stream, 3)) == EVENTS
        stream.close()
        assert agent.monitor_queries == [None]


def test_monitor_passes_type_to_the_agent(agent: FakeAgent) -> None:
    with AgentClient(agent.sock) as c, contextlib.closing(c.monitor("drop")) as stream:
        assert next(stream) == EVENTS[1]
    assert agent.monitor_queries == ["drop"]


def test_missing_socket_is_unavailable_and_named(run_dir: Path) -> None:
    sock = run_dir / "n9" / "agent.sock"
    with AgentClient(sock) as c, pytest.raises(AgentUnavailableError) as err:
        c.status()
    assert str(sock) in str(err.value)
    assert "running" in str(err.value)
    assert err.value.socket_path == sock


def test_stale_socket_is_connection_refused(run_dir: Path) -> None:
    sock = dead_socket(run_dir / "n1" / "agent.sock")
    with AgentClient(sock) as c, pytest.raises(AgentUnavailableError, match="refused") as err:
        c.endpoints()
    assert str(sock) in str(err.value)
    assert not isinstance(err.value, AgentPermissionError)


def test_error_response_becomes_api_error(agent: FakeAgent) -> None:
    with AgentClient(agent.sock) as c, pytest.raises(AgentAPIError) as err:
        c.endpoint(999)
    assert (err.value.status, err.value.kind) == (404, "not-found")
    assert str(err.value) == "endpoint 999 not found"


def test_plain_text_error_and_bad_body(agent: FakeAgent) -> None:
    agent.plain_ipcache_error = True
    agent.broken_status = True
    with AgentClient(agent.sock) as c:
        with pytest.raises(AgentAPIError) as err:
            c.ipcache_list()
        assert (err.value.status, err.value.kind, err.value.message) == (500, "http", "boom")
        with pytest.raises(AgentProtocolError, match="unexpected body"):
            c.status()


def test_slow_agent_times_out(agent: FakeAgent) -> None:
    agent.status_delay = 0.3
    with AgentClient(agent.sock, timeout=0.05) as c, pytest.raises(AgentUnavailableError) as err:
        c.status()
    assert "did not answer" in str(err.value)


# --------------------------------------------------------------------------- socket discovery


def test_resolve_single_socket(agent: FakeAgent) -> None:
    assert resolve_agent_socket() == agent.sock


def test_resolve_none_running(run_dir: Path) -> None:
    (run_dir / "lab").mkdir()  # lab state dirs hold no socket
    with pytest.raises(AgentDiscoveryError, match="no ciliary agent is running"):
        resolve_agent_socket()


def test_resolve_several_lists_nodes(run_dir: Path) -> None:
    dead_socket(run_dir / "n1" / "agent.sock")
    dead_socket(run_dir / "n2" / "agent.sock")
    with pytest.raises(AgentDiscoveryError, match=r"nodes: n1, n2.*--node"):
        resolve_agent_socket()


def test_resolve_root_only_dirs_is_a_permission_error(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_socket(run_dir / "n1" / "agent.sock")

    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_socket", denied)
    with pytest.raises(AgentPermissionError, match="root-only"):
        resolve_agent_socket()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["endpoint", "list"]) == 1
    assert capsys.readouterr().err == "Error: this command must run as root (try sudo)\n"


def test_resolve_explicit_node_and_env(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_agent_socket("n7") == run_dir / "n7" / "agent.sock"
    monkeypatch.setenv("CILIARY_AGENT_SOCKET", "/somewhere/agent.sock")
    assert resolve_agent_socket() == Path("/somewhere/agent.sock")
    assert resolve_agent_socket("n7") == run_dir / "n7" / "agent.sock"
    with pytest.raises(AgentDiscoveryError, match="invalid node name"):
        resolve_agent_socket("../etc")


# --------------------------------------------------------------------------- CLI


def test_endpoint_list_json_parses_back(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["endpoint", "list", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [Endpoint.model_validate(d) for d in data] == ENDPOINTS


def test_endpoint_list_table(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--node", "n1", "endpoint", "list"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "ENDPOINT",
        "IDENTITY",
        "12",
        "34",
        "k8s:app=client",
        "k8s:tier=web",
        "k8s:io.kubernetes.pod.namespace=default",
        "fd00:200::5",
        "10.200.0.7",
        "ready",
        "default/server",
        "Disabled",
    ):
        assert needle in out, needle
    # one label per line, untruncated however narrow the (captured) console is
    assert max(len(line) for line in out.splitlines()) > 80
    assert sum("k8s:" in line for line in out.splitlines()) == 5


def test_endpoint_get(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoint", "get", "pod:default/server", "--node", "n1"]) == 0
    out = capsys.readouterr().out
    assert "34" in out and "k8s:tier=web" in out and "regenerated" in out and "lxc0034" in out
    assert main(["endpoint", "get", "12", "-o", "json"]) == 0
    assert Endpoint.model_validate_json(capsys.readouterr().out) == ENDPOINTS[0]


def test_status(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "Node:" in out and "n1" in out
    assert "missing: redirect-peer" in out
    assert "2/3 ready" in out
    assert "Proxy Status: Ok cilium-dns-egress 10000, cilium-http-egress 10001" in " ".join(
        out.split()
    )
    assert "cilium_ipcache" in out and "95.0%" in out
    assert "cil_to_container" in out
    assert (
        'Kubernetes APIs: ["core/v1::Pods", "core/v1::Service", "discovery/v1::EndpointSlice"]'
        in " ".join(out.split())
    )
    assert main(["status", "-o", "json"]) == 0
    assert StatusResponse.model_validate_json(capsys.readouterr().out) == STATUS


def test_status_without_l7_proxies(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(globals(), "STATUS", STATUS.model_copy(update={"proxy_ports": {}}))
    assert main(["status"]) == 0
    assert "Proxy Status: Disabled" in " ".join(capsys.readouterr().out.split())


def test_bpf_ct_and_ipcache(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bpf", "ct", "list", "global"]) == 0
    out = capsys.readouterr().out
    assert "[fd00:200::5]:43210 -> [fd00::1]:80" in out
    assert "10.200.0.5:5353 -> 10.200.0.7:53" in out
    assert "256->257" in out
    assert main(["bpf", "ipcache", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "PREFIX" in lines[0] and "TUNNEL ENDPOINT" in lines[0]
    assert lines[1].startswith("0.0.0.0/0") and "reserved:world" in lines[1]
    assert "192.168.1.2" in "".join(lines)
    assert main(["bpf", "ipcache", "list", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {IPCacheEntry.model_validate(d) for d in data} == set(IPCACHE)


def test_monitor_json_count(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--count", "2", "-o", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [MonitorEvent.model_validate_json(line) for line in lines] == EVENTS[:2]


def test_monitor_text_and_filters(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "-n", "2", "--related-to", "12"]) == 0
    trace, drop = capsys.readouterr().out.splitlines()
    assert trace == (
        "-> endpoint 34 flow 0x0 , identity 256->257 state new ifindex lxc0034 "
        "orig-ip 10.200.0.5: 10.200.0.5:43210 -> 10.200.0.7:80 tcp SYN "
        "(default/client -> default/server)"
    )
    assert drop.startswith("xx drop (Policy denied) flow 0x0 to endpoint 34, ifindex 134")
    assert main(["monitor", "-n", "1", "--type", "trace", "--from", "12"]) == 0
    assert capsys.readouterr().out.startswith("-> endpoint 34")
    assert agent.monitor_queries[-1] == "trace"


def test_format_event_ipv6_and_icmp() -> None:
    ev = make_event(
        "trace",
        ip_version=6,
        src_ip="fd00::5",
        dst_ip="fd00::7",
        observation_point="from-endpoint",
        tcp_flags=["ACK", "SYN"],
        src_pod=None,
        dst_pod=None,
    )
    line = monitor_cli.format_event(ev)
    assert line.startswith("<- endpoint 12 flow 0x0")
    assert line.endswith("[fd00::5]:43210 -> [fd00::7]:80 tcp SYN, ACK")
    ping = make_event("trace", protocol="ICMPv4", icmp_type=8, src_port=0, dst_port=0)
    assert "10.200.0.5 -> 10.200.0.7 icmpv4 EchoRequest" in monitor_cli.format_event(ping)


def test_no_agent_is_one_error_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--node", "n3", "endpoint", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("Error: ") and str(run_dir / "n3" / "agent.sock") in err


def test_workload_gets_everything_after_the_word(monkeypatch: pytest.MonkeyPatch) -> None:
    import ciliary.workload.main as workload_main  # noqa: PLC0415

    seen: list[list[str]] = []

    def fake_main(argv: list[str] | None = None) -> int:
        seen.append(list(argv or []))
        return 7

    monkeypatch.setattr(workload_main, "main", fake_main)
    assert main(["--node", "n1", "workload", "http-server", "--port", "80", "-v"]) == 7
    assert seen == [["http-server", "--port", "80", "-v"]]


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoint", "frobnicate"]) == 2
    assert main(["monitor", "-o", "yaml"]) == 2
    capsys.readouterr()


def test_permission_denied_asks_for_root(
    agent: FakeAgent, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(self: AgentClient) -> StatusResponse:
        raise AgentPermissionError("permission denied", self.socket_path)

    monkeypatch.setattr(AgentClient, "status", denied)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["status"]) == 1
    assert capsys.readouterr().err == "Error: this command must run as root (try sudo)\n"
    assert main(["lab", "down", "--all"]) == 1
    assert capsys.readouterr().err == "Error: this command must run as root (try sudo)\n"


# --------------------------------------------------------------------------- lab commands


class FakeManager:
    """Stands in for ``ciliary.lab.manager`` (which needs root, netns and BPF)."""

    class LabError(Exception):
        pass

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def exec_in_pod(self, pod: str, argv: list[str], *, name: str | None = None) -> int:
        self.calls.append(("exec", pod, argv, name))
        return 3

    def status(self, name: str | None = None) -> LabView:
        if name == "nope":
            raise self.LabError("lab 'nope' is not up")
        return LabView(
            name="lab1",
            file=None,
            created_at=NOW,
            nodes=[
                NodeView(
                    name="n1",
                    netns="ciln-lab1-n1",
                    agent_pid=4242,
                    agent_alive=True,
                    socket="/run/ciliary/n1/agent.sock",
                    ipv4_cidr="10.200.0.0/24",
                    ipv6_cidr=None,
                    node_ipv4="172.18.0.2",
                    node_ipv6="fc00:f853:ccd:e793::2",
                )
            ],
            pods=[
                PodView(
                    name="client",
                    namespace="default",
                    node="n1",
                    netns="cilp-lab1-default-client",
                    ipv4="10.200.0.5",
                    ipv6=None,
                    endpoint_id=12,
                    pids=[99],
                    running=False,
                    labels={"app": "client"},
                )
            ],
        )


@pytest.fixture
def fake_manager(monkeypatch: pytest.MonkeyPatch) -> FakeManager:
    import ciliary.lab.manager as real  # noqa: PLC0415

    fake = FakeManager()
    monkeypatch.setattr(real, "LabError", FakeManager.LabError)
    monkeypatch.setattr(real, "exec_in_pod", fake.exec_in_pod)
    monkeypatch.setattr(real, "status", fake.status)
    return fake


def test_lab_exec_passes_argv_and_exit_code(fake_manager: FakeManager) -> None:
    assert main(["lab", "exec", "client", "--", "ping", "-c1", "10.200.0.7"]) == 3
    assert (
        main(["lab", "exec", "--name", "l1", "kube-system/dns", "--", "sh", "-c", "x", "--"]) == 3
    )
    assert main(["lab", "exec", "client", "--name", "l2", "--", "ls"]) == 3
    assert fake_manager.calls == [
        ("exec", "default/client", ["ping", "-c1", "10.200.0.7"], None),
        ("exec", "kube-system/dns", ["sh", "-c", "x", "--"], "l1"),
        ("exec", "default/client", ["ls"], "l2"),
    ]


def test_lab_status(fake_manager: FakeManager, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "status"]) == 0
    out = capsys.readouterr().out
    assert "ciln-lab1-n1" in out and "default/client" in out and "10.200.0.5" in out
    assert "INTERNAL-IP" in out and "172.18.0.2,fc00:f853:ccd:e793::2" in out  # the node's IPs
    assert main(["lab", "status", "-o", "json"]) == 0
    assert LabView.model_validate_json(capsys.readouterr().out).name == "lab1"
    assert main(["lab", "status", "--name", "nope"]) == 1
    assert capsys.readouterr().err == "Error: lab 'nope' is not up\n"


def test_split_exec_argv_rejects_stray_options() -> None:
    with pytest.raises(CLIError):
        lab_cli.split_exec_argv(None, ["--bogus", "--", "ls"])
    assert lab_cli.normalize_pod("a/b") == "a/b"
    assert lab_cli.normalize_pod("b") == "default/b"
