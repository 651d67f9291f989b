"""The plugins' stdlib client of the agent: HTTP framing, failures told apart with the messages
the CLI's client uses, answers checked for the fields the plugins read."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ciliary.cni import agentapi
from ciliary.cni.agentapi import (
    AgentAPIError,
    AgentClient,
    AgentDiscoveryError,
    AgentProtocolError,
    AgentUnavailableError,
)

from .conftest import FakeAgent, error, http

ENDPOINT = {
    "id": 7, "container_id": "c1", "pod_name": "", "namespace": "default", "labels": {},
    "identity": 1234, "state": "ready", "ipv4": "10.0.0.5", "ipv6": None, "ifname": "eth0",
    "netns": "/run/netns/p", "lxc": "lxc1234", "lxc_ifindex": 9, "mac": "02:00:00:00:00:02",
    "node_mac": "02:00:00:00:00:01", "ipv4_gateway": "10.0.0.1", "ipv6_gateway": None,
    "mtu": 1500, "created_at": 1.0, "log": [],
}  # fmt: skip


def client(agent: FakeAgent, timeout: float = 5.0) -> AgentClient:
    return AgentClient(str(agent.socket), timeout=timeout)


def test_socket_path_of_a_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(agentapi.RUN_DIR_ENV, raising=False)
    assert agentapi.agent_socket_path("n1") == "/run/ciliary/n1/agent.sock"
    monkeypatch.setenv(agentapi.RUN_DIR_ENV, "/tmp/runs")
    assert agentapi.agent_socket_path("n1") == "/tmp/runs/n1/agent.sock"
    assert agentapi.node_of("/tmp/runs/n1/agent.sock") == "n1"
    for bad in ("", "-n", "a/b", "../x"):
        with pytest.raises(AgentDiscoveryError, match="invalid node name"):
            agentapi.agent_socket_path(bad)


def test_request_line_headers_and_body(fake_agent: FakeAgent) -> None:
    fake_agent.reply("PUT", "/v1/endpoint", http(201, ENDPOINT))
    assert client(fake_agent).create_endpoint({"container_id": "c1", "é": "ü"}) == ENDPOINT
    (req,) = fake_agent.requests
    assert (req.method, req.target, req.body) == (
        "PUT",
        "/v1/endpoint",
        {"container_id": "c1", "é": "ü"},
    )
    assert req.headers["connection"] == "close" and req.headers["host"] == "agent"
    assert req.headers["content-type"] == "application/json"


def test_query_values_are_percent_encoded(fake_agent: FakeAgent) -> None:
    fake_agent.reply("DELETE", "/v1/ipam", http(200, {"allocations": []}))
    assert client(fake_agent).ipam_release("c1/eth0") == []
    assert fake_agent.requests[0].target == "/v1/ipam?owner=c1%2Feth0"
    assert agentapi.quote("a b&c=d/ü~") == "a%20b%26c%3Dd%2F%C3%BC~"


@pytest.mark.parametrize(
    "response",
    [
        http(200, {"status": "ok", "node": "n"}),
        http(200, {"status": "ok", "node": "n"}, chunked=True),
        # no Content-Length and no chunks: the body is what comes until the agent closes
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"status": "ok", "node": "n"}',
    ],
    ids=["content-length", "chunked", "until-eof"],
)
def test_response_framings(fake_agent: FakeAgent, response: bytes) -> None:
    fake_agent.reply("GET", "/v1/healthz", response)
    assert client(fake_agent).healthz() == {"status": "ok", "node": "n"}


def test_body_arriving_in_pieces(fake_agent: FakeAgent) -> None:
    whole = http(200, {"allocations": []})

    def slowly(conn: socket.socket) -> None:
        for i in range(0, len(whole), 7):
            conn.sendall(whole[i : i + 7])

    fake_agent.reply("GET", "/v1/ipam", slowly)
    assert client(fake_agent).ipam_list() == []


def test_error_response_becomes_api_error(fake_agent: FakeAgent) -> None:
    fake_agent.reply("POST", "/v1/ipam", error(409, "pool p1 is exhausted", "exhausted"))
    with pytest.raises(AgentAPIError) as exc:
        client(fake_agent).ipam_allocate({"owner": "c/eth0"})
    assert (exc.value.status, exc.value.kind, exc.value.message) == (
        409, "exhausted", "pool p1 is exhausted",
    )  # fmt: skip
    assert str(exc.value) == "pool p1 is exhausted"


def test_server_errors_say_so(fake_agent: FakeAgent) -> None:
    fake_agent.reply("GET", "/v1/healthz", error(500, "internal error: boom", "internal"))
    with pytest.raises(AgentAPIError) as exc:
        client(fake_agent).healthz()
    assert str(exc.value) == "agent failed (HTTP 500, internal): internal error: boom"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"Bad Gateway\nmore lines", "Bad Gateway"),
        (b"", "Whatever"),  # no body: the reason phrase
        (b'{"error": "x", "extra": 1}', '{"error": "x", "extra": 1}'),  # not an ErrorResponse
    ],
)
def test_error_that_is_not_an_error_response(
    fake_agent: FakeAgent, raw: bytes, message: str
) -> None:
    fake_agent.reply("GET", "/v1/healthz", http(502, raw=raw))
    with pytest.raises(AgentAPIError) as exc:
        client(fake_agent).healthz()
    assert (exc.value.status, exc.value.kind, exc.value.message) == (502, "http", message)


def test_missing_socket(tmp_path: Path) -> None:
    sock = tmp_path / "n9" / "agent.sock"
    with pytest.raises(AgentUnavailableError) as exc:
        AgentClient(str(sock)).healthz()
    assert str(exc.value) == (
        f"agent socket {sock} does not exist: is the ciliary agent of node 'n9' running?"
    )
    assert not exc.value.timed_out


def test_stale_socket_is_refused(fake_agent: FakeAgent) -> None:
    fake_agent.close()  # the file stays, nobody listens: an agent that died
    assert fake_agent.socket.exists()
    with pytest.raises(AgentUnavailableError, match="connection refused on agent socket") as exc:
        client(fake_agent).healthz()
    assert "'fake-node' is not running (stale socket)" in str(exc.value)


def test_agent_that_does_not_answer_times_out(fake_agent: FakeAgent) -> None:
    fake_agent.reply("GET", "/v1/healthz", lambda conn: fake_agent.stop.wait(10))
    with pytest.raises(AgentUnavailableError) as exc:
        client(fake_agent, timeout=0.2).healthz()
    assert exc.value.timed_out
    assert str(exc.value) == (
        f"agent at {fake_agent.socket} did not answer within 0.2s (read timeout); is it stuck?"
    )


@pytest.mark.parametrize(
    ("response", "why"),
    [
        (b"", "server disconnected without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-", "in the middle of the response headers"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", "after 2 of 10 body bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}", "incomplete chunked"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"),
    ],
)
def test_broken_answers(fake_agent: FakeAgent, response: bytes, why: str) -> None:
    fake_agent.reply("GET", "/v1/healthz", response)
    with pytest.raises(AgentUnavailableError) as exc:
        client(fake_agent).healthz()
    assert str(exc.value).startswith(f"connection to the agent at {fake_agent.socket} broke (")
    assert why in str(exc.value) and str(exc.value).endswith("did the agent exit?")


@pytest.mark.parametrize(
    ("method", "path", "body", "call", "why"),
    [
        ("PUT", "/v1/endpoint", {**ENDPOINT, "lxc": None}, "create", "lxc: expected a string"),
        ("PUT", "/v1/endpoint", {"id": 1}, "create", "ifname: missing"),
        ("PUT", "/v1/endpoint", [], "create", "<body>: expected an object"),
        ("PUT", "/v1/endpoint", {**ENDPOINT, "mtu": True}, "create", "mtu: expected an integer"),
        ("GET", "/v1/endpoint", {}, "list", "<body>: expected a list"),
        ("GET", "/v1/endpoint", [{"id": "7"}], "list", "0.id: expected an integer"),
        ("GET", "/v1/ipam", {"allocations": [{}]}, "ipam", "allocations.0.owner: missing"),
        ("GET", "/v1/ipam", {"allocations": None}, "ipam", "allocations: expected a list"),
        ("POST", "/v1/endpoint/check", {"ok": True, "problems": [1]}, "check", "problems.0"),
        ("POST", "/v1/gc", {"endpoints_removed": []}, "gc", "addresses_released: missing"),
    ],
)
def test_unexpected_answers_are_protocol_errors(
    fake_agent: FakeAgent, method: str, path: str, body: object, call: str, *, why: str
) -> None:
    fake_agent.reply(method, path, http(200, body))
    cl = client(fake_agent)
    calls: dict[str, Callable[[], object]] = {
        "create": lambda: cl.create_endpoint({}),
        "list": cl.endpoints,
        "ipam": cl.ipam_list,
        "check": lambda: cl.check_endpoint({}),
        "gc": lambda: cl.gc({}),
    }
    with pytest.raises(AgentProtocolError) as exc:
        calls[call]()
    prefix = f"agent at {fake_agent.socket} answered {method} {path} with an unexpected body: "
    assert str(exc.value).startswith(prefix) and why in str(exc.value), str(exc.value)


def test_answer_that_is_not_json(fake_agent: FakeAgent) -> None:
    fake_agent.reply("GET", "/v1/healthz", http(200, raw=b"<html>"))
    with pytest.raises(AgentProtocolError, match="GET /v1/healthz with an unexpected body"):
        client(fake_agent).healthz()


def test_one_connection_per_call(fake_agent: FakeAgent) -> None:
    fake_agent.reply("GET", "/v1/healthz", http(200, {"status": "ok"}))
    cl = client(fake_agent)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cl.healthz())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [{"status": "ok"}] * 3 and len(fake_agent.requests) == 3
