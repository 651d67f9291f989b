"""Both plugins' verbs against a fake agent, in process: the requests they send (the agent's
API models, as JSON), the results and errors they print, and how each agent failure maps to the
code a runtime acts on. The same verbs against a real agent are tests/integration/cni."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ciliary.cni import ipam_main, main, spec
from ciliary.cni.agentapi import AgentPermissionError, AgentUnavailableError

from .conftest import FakeAgent, error, http
from .test_agentapi import ENDPOINT

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
NETNS = "/run/netns/pod"
DUAL = {**ENDPOINT, "ipv6": "fd00::5", "ipv6_gateway": "fd00::1"}


@pytest.fixture(autouse=True)
def _any_netns_will_do(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(spec, "check_netns", lambda path: None)
    yield


def conf(agent: FakeAgent, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "net", "type": "ciliary-cni",
            "agent_socket": str(agent.socket), **extra}  # fmt: skip


def invoke(
    command: str,
    config: dict[str, Any],
    *,
    ipam: bool = False,
    cid: str = "c1",
    args: str = "",
) -> tuple[int, Any]:
    environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": NETNS,
               "CNI_IFNAME": "eth0", "CNI_ARGS": args}  # fmt: skip
    plugin = ipam_main if ipam else main
    rc, out = main.run(environ, json.dumps(config), plugin.HANDLERS, plugin.PLUGIN)
    return rc, json.loads(out) if out else None


# --------------------------------------------------------------------------- ciliary-cni ADD


@pytest.mark.parametrize("version", VERSIONS)
def test_add_sends_an_endpoint_request_and_answers_in_the_configs_version(
    fake_agent: FakeAgent, version: str
) -> None:
    fake_agent.reply("PUT", "/v1/endpoint", http(201, DUAL))
    config = conf(
        fake_agent, version, mtu=1400, dns={"nameservers": ["10.96.0.10"]},
        args={"cni": {"labels": [{"key": "app", "value": "web"}]}},
        runtimeConfig={"ips": ["10.0.0.5/24"]}, ipam={"pools": ["blue"]},
    )  # fmt: skip
    rc, result = invoke("ADD", config, args="K8S_POD_NAME=web-1;K8S_POD_NAMESPACE=shop")
    assert rc == 0, result
    (req,) = fake_agent.requests
    assert (req.method, req.path) == ("PUT", "/v1/endpoint")
    assert req.body == {
        "container_id": "c1", "netns": NETNS, "ifname": "eth0", "pod_name": "web-1",
        "namespace": "shop", "labels": {"app": "web"}, "ipv4": "10.0.0.5", "ipv6": None,
        "pools": ["blue"], "mtu": 1400, "network": "net",
    }  # fmt: skip
    old = version in ("0.3.1", "0.4.0")
    host: dict[str, Any] = {"name": "lxc1234", "mac": "02:00:00:00:00:01"}
    pod: dict[str, Any] = {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": NETNS}
    if version == "1.1.0":  # the MTU, and in the spec's key order
        host = {**host, "mtu": 1500}
        pod = {"name": "eth0", "mac": pod["mac"], "mtu": 1500, "sandbox": NETNS}
    ips = [{"address": "10.0.0.5/32", "gateway": "10.0.0.1", "interface": 1},
           {"address": "fd00::5/128", "gateway": "fd00::1", "interface": 1}]  # fmt: skip
    if old:
        ips = [{"version": v, **ip} for v, ip in zip(("4", "6"), ips, strict=True)]
    expected = {
        "cniVersion": version, "interfaces": [host, pod], "ips": ips,
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "::/0", "gw": "fd00::1"}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }  # fmt: skip
    assert result == expected
    # byte for byte: key order too, as json.dumps writes it
    assert list(result) == list(expected) and list(result["interfaces"][1]) == list(pod)


def test_add_defaults(fake_agent: FakeAgent) -> None:
    fake_agent.reply("PUT", "/v1/endpoint", http(201, ENDPOINT))
    rc, result = invoke("ADD", conf(fake_agent, "1.0.0"))
    assert rc == 0
    body = fake_agent.requests[0].body
    assert (body["pod_name"], body["namespace"], body["labels"]) == ("", "default", {})
    assert body["ipv4"] is body["ipv6"] is body["pools"] is body["mtu"] is None
    assert [ip["address"] for ip in result["ips"]] == ["10.0.0.5/32"]  # IPv4-only endpoint
    assert result["dns"] == {}


def test_add_with_a_container_id_the_agent_would_refuse_is_invalid_config(
    fake_agent: FakeAgent,
) -> None:
    rc, err = invoke("ADD", conf(fake_agent), cid="c" * 257)
    assert (rc, err["code"]) == (1, 7)
    assert err["msg"] == "invalid request: container_id: String should have at most 256 characters"
    assert not fake_agent.requests


@pytest.mark.parametrize(
    ("response", "code", "msg", "details"),
    [
        (error(409, "no address left in pool default", "exhausted"), 101,
         "no free address on node fake-node: no address left in pool default",
         "HTTP 409, kind exhausted"),
        (error(400, "network namespace /x is gone", "netns"), 102,
         "network namespace /x is gone", "HTTP 400, kind netns"),
        (error(409, "10.99.0.5 is not in any pool", "ipam"), 100,
         "ciliary agent of node fake-node refused the request: 10.99.0.5 is not in any pool",
         "HTTP 409, kind ipam"),
        (error(500, "internal error: boom", "internal"), 100,
         "ciliary agent of node fake-node refused the request: internal error: boom",
         "HTTP 500, kind internal"),
        (http(502, raw=b"Bad Gateway"), 100,
         "ciliary agent of node fake-node refused the request: Bad Gateway", "HTTP 502, kind http"),
        (http(201, {"id": 1}), 100, None, None),
    ],
)  # fmt: skip
def test_add_maps_agent_answers_to_codes(
    fake_agent: FakeAgent, response: bytes, code: int, msg: str | None, details: str | None
) -> None:
    fake_agent.reply("PUT", "/v1/endpoint", response)
    rc, err = invoke("ADD", conf(fake_agent, "1.0.0"))
    assert rc == 1 and err["code"] == code and err["cniVersion"] == "1.0.0"
    if msg is None:  # a protocol error: an agent of another version
        assert "answered PUT /v1/endpoint with an unexpected body: ifname: missing" in err["msg"]
        assert "details" not in err
    else:
        assert (err["msg"], err["details"]) == (msg, details)


def test_agent_not_running(fake_agent: FakeAgent) -> None:
    fake_agent.close()
    sock = fake_agent.socket
    for command in ("ADD", "DEL"):
        rc, err = invoke(command, conf(fake_agent))
        assert (rc, err["code"]) == (1, 11)
        assert err["msg"] == (
            f"ciliary agent of node fake-node is not running (socket {sock}); try again later"
        )
        assert err["details"].startswith(f"connection refused on agent socket {sock}")
    sock.unlink()
    rc, err = invoke("STATUS", conf(fake_agent))
    assert (rc, err["code"]) == (1, 50)
    assert err["msg"] == f"ciliary agent of node fake-node is not running (socket {sock})"
    assert err["details"] == (
        f"agent socket {sock} does not exist: is the ciliary agent of node 'fake-node' running?"
    )


def test_agent_that_does_not_answer_in_time(fake_agent: FakeAgent) -> None:
    fake_agent.reply("GET", "/v1/healthz", lambda conn: fake_agent.stop.wait(10))
    with pytest.raises(spec.CNIError) as exc, main.agent(str(fake_agent.socket), timeout=0.2) as cl:
        cl.healthz()
    assert exc.value.code == 11
    assert exc.value.msg == (
        f"ciliary agent of node fake-node did not answer in time (socket {fake_agent.socket}); "
        "try again later"
    )


def test_permission_denied_is_an_io_failure() -> None:
    err = main.agent_error(
        AgentPermissionError("permission denied on agent socket /s (it is root-only)", "/s"),
        "/run/ciliary/n/agent.sock",
        spec.ErrorCode.TRY_AGAIN_LATER,
    )
    assert err.code == 5 and err.msg == (
        "permission denied on the ciliary agent socket /run/ciliary/n/agent.sock (it is root-only)"
    )
    assert isinstance(AgentPermissionError("x"), AgentUnavailableError)


def test_node_names_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CILIARY_RUN_DIR", "/tmp/r")
    assert main.agent_socket("n1", None) == "/tmp/r/n1/agent.sock"
    assert main.agent_socket("n1", "/explicit.sock") == "/explicit.sock"
    with pytest.raises(spec.CNIError) as exc:
        main.agent_socket("../n", None)
    assert (
        exc.value.code == 7
        and exc.value.msg == """network config: "node": invalid node name '../n'"""
    )


# --------------------------------------------------------------------------- DEL, CHECK, GC, STATUS


def test_del_removes_the_attachments_endpoints(fake_agent: FakeAgent) -> None:
    others = {**ENDPOINT, "id": 8, "ifname": "net1"}
    fake_agent.reply("GET", "/v1/endpoint", http(200, [ENDPOINT, others]))
    fake_agent.reply("DELETE", "/v1/endpoint/7", error(404, "endpoint 7 not found", "not-found"))
    assert invoke("DEL", conf(fake_agent)) == (0, None)  # deleted meanwhile: fine
    assert [(r.method, r.target) for r in fake_agent.requests] == [
        ("GET", "/v1/endpoint"), ("DELETE", "/v1/endpoint/7"),
    ]  # fmt: skip


def test_del_failure_of_the_agent_is_reported(fake_agent: FakeAgent) -> None:
    fake_agent.reply("GET", "/v1/endpoint", http(200, [ENDPOINT]))
    fake_agent.reply("DELETE", "/v1/endpoint/7", error(500, "internal error: x", "internal"))
    rc, err = invoke("DEL", conf(fake_agent))
    assert (rc, err["code"]) == (1, 100)


@pytest.mark.parametrize("answer", [http(200, {"allocations": []}), error(409, "x", "conflict")])
def test_del_without_endpoint_releases_leftover_addresses(
    fake_agent: FakeAgent, answer: bytes
) -> None:
    fake_agent.reply("GET", "/v1/endpoint", http(200, []))
    fake_agent.reply("DELETE", "/v1/ipam", answer)
    assert invoke("DEL", conf(fake_agent)) == (0, None)
    assert fake_agent.requests[-1].target == "/v1/ipam?owner=c1%2Feth0"


def prev_result() -> dict[str, Any]:
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": "lxc1234"}, {"name": "eth0", "sandbox": NETNS}],
            "ips": [{"address": "10.0.0.5/32", "interface": 1},
                    {"address": "192.168.0.1/24", "interface": 0}]}  # fmt: skip


def test_check(fake_agent: FakeAgent) -> None:
    fake_agent.reply("POST", "/v1/endpoint/check", http(200, {"ok": True, "problems": []}))
    assert invoke("CHECK", conf(fake_agent, "1.0.0", prevResult=prev_result())) == (0, None)
    assert fake_agent.requests[0].body == {
        "container_id": "c1", "ifname": "eth0", "netns": NETNS, "addresses": ["10.0.0.5/32"],
        "network": "net",
    }  # fmt: skip
    problems = ["address 10.0.0.5 is missing on eth0", "interface eth0 is down"]
    fake_agent.reply("POST", "/v1/endpoint/check", http(200, {"ok": False, "problems": problems}))
    rc, err = invoke("CHECK", conf(fake_agent, "1.0.0", prevResult=prev_result()))
    assert (rc, err["code"]) == (1, 100)
    assert err["msg"] == f"CHECK of c1/eth0 failed: {'; '.join(problems)}"


def test_check_error_names_each_problem_once(fake_agent: FakeAgent) -> None:
    problems = ["address 10.0.0.5 is missing on eth0", "programs are not attached to lxc1"]
    fake_agent.reply("POST", "/v1/endpoint/check", http(200, {"ok": False, "problems": problems}))
    _, err = invoke("CHECK", conf(fake_agent, "1.0.0", prevResult=prev_result()))
    # what a runtime prints: libcni's Error() is ``msg`` then ``; details`` when there are any
    shown = err["msg"] + (f"; {err['details']}" if err.get("details") else "")
    assert [shown.count(p) for p in problems] == [1, 1], shown
    assert shown.count("c1/eth0") == 1, shown


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
@pytest.mark.parametrize("depth", [100_000, 3_000])
def test_deeply_nested_config_is_a_decode_failure(
    fake_agent: FakeAgent, capsys: pytest.CaptureFixture[str], command: str, depth: int
) -> None:
    environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": NETNS,
               "CNI_IFNAME": "eth0"}  # fmt: skip
    nested = '{"cniVersion": "1.0.0", "name": "n", "type": "ciliary-cni", "x": '
    for stdin in ("[" * depth + "]" * depth, nested + "[" * depth + "]" * depth + "}"):
        rc, out = main.run(environ, stdin, main.HANDLERS, main.PLUGIN)
        err = json.loads(out)
        assert (rc, err["code"]) == (1, 6), out
        assert err["msg"] == (
            "network config on stdin is nested too deeply to decode (no CNI config nests "
            "beyond a few levels)"
        )
    assert capsys.readouterr().err == ""  # no traceback: not a bug of the plugin
    assert fake_agent.requests == []


def test_version_with_a_deeply_nested_config_answers() -> None:
    rc, out = main.run({"CNI_COMMAND": "VERSION"}, "[" * 100_000, main.HANDLERS, main.PLUGIN)
    assert rc == 0 and json.loads(out)["cniVersion"] == "1.1.0"


def test_gc_sends_the_valid_attachments(
    fake_agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    resp = {"endpoints_removed": [3, 4], "addresses_released": ["10.0.0.9", "fd00::9"]}
    fake_agent.reply("POST", "/v1/gc", http(200, resp))
    valid = [{"containerID": "c1", "ifname": "eth0"}]
    config = {**conf(fake_agent), "cni.dev/valid-attachments": valid}
    assert invoke("GC", config) == (0, None)
    assert fake_agent.requests[0].body == {
        "valid_attachments": valid, "network": "net", "scope": "endpoints"}  # fmt: skip
    assert capsys.readouterr().err == (
        "ciliary-cni: GC removed endpoints [3, 4] and released 10.0.0.9, fd00::9\n"
    )


def test_status(fake_agent: FakeAgent) -> None:
    fake_agent.reply("GET", "/v1/healthz", http(200, {"status": "ok", "node": "fake-node"}))
    assert invoke("STATUS", conf(fake_agent)) == (0, None)
    fake_agent.reply("GET", "/v1/healthz", error(503, "datapath not loaded", "internal"))
    rc, err = invoke("STATUS", conf(fake_agent))
    assert (rc, err["code"]) == (1, 50)
    assert err["msg"] == (
        "ciliary agent of node fake-node is not healthy: "
        "agent failed (HTTP 503, internal): datapath not loaded"
    )


# --------------------------------------------------------------------------- ciliary-ipam


def ipam_conf(agent: FakeAgent, version: str = "0.4.0", **ipam: Any) -> dict[str, Any]:
    section = {"type": "ciliary-ipam", "agent_socket": str(agent.socket), **ipam}
    return {"cniVersion": version, "name": "br", "type": "bridge", "node": "ignored",
            "ipam": section}  # fmt: skip


def allocation(address: str, family: int, plen: int, gateway: str | None) -> dict[str, Any]:
    return {"owner": "c1/eth0", "kind": "ipam-plugin", "family": family, "address": address,
            "prefix_len": plen, "gateway": gateway, "pool": "default", "block": None,
            "created_at": 1.0}  # fmt: skip


ALLOCATIONS = [allocation("10.0.0.7", 4, 24, "10.0.0.1"), allocation("fd00::7", 6, 120, None)]


def test_ipam_add(fake_agent: FakeAgent) -> None:
    fake_agent.reply("POST", "/v1/ipam", http(201, {"allocations": ALLOCATIONS}))
    config = ipam_conf(fake_agent, pools=["blue"], dns={"search": ["svc"]})
    config["runtimeConfig"] = {"ips": ["10.0.0.7"]}
    rc, result = invoke("ADD", config, ipam=True)
    assert rc == 0, result
    assert fake_agent.requests[0].body == {
        "owner": "c1/eth0", "kind": "ipam-plugin", "families": None, "requested": ["10.0.0.7"],
        "pools": ["blue"],
    }  # fmt: skip
    assert result == {
        "cniVersion": "0.4.0",
        "ips": [{"version": "4", "address": "10.0.0.7/24", "gateway": "10.0.0.1"},
                {"version": "6", "address": "fd00::7/120"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],  # no gateway, no default route
        "dns": {"search": ["svc"]},
    }  # fmt: skip


def test_ipam_add_with_configured_routes_and_nothing_allocated(fake_agent: FakeAgent) -> None:
    fake_agent.reply("POST", "/v1/ipam", http(201, {"allocations": ALLOCATIONS[:1]}))
    routes = [{"dst": "10.1.0.0/16", "gw": "10.0.0.254"}]
    rc, result = invoke("ADD", ipam_conf(fake_agent, "1.0.0", routes=routes), ipam=True)
    assert rc == 0 and result["routes"] == routes
    fake_agent.reply("POST", "/v1/ipam", http(201, {"allocations": []}))
    rc, err = invoke("ADD", ipam_conf(fake_agent), ipam=True)
    assert (rc, err["code"], err["msg"]) == (1, 100, "the agent allocated no address to c1/eth0")


def test_ipam_del(fake_agent: FakeAgent) -> None:
    fake_agent.reply("DELETE", "/v1/ipam", error(404, "nothing held", "ipam"))
    assert invoke("DEL", ipam_conf(fake_agent), ipam=True) == (0, None)
    fake_agent.reply("DELETE", "/v1/ipam", error(409, "c1/eth0 is an endpoint", "conflict"))
    rc, err = invoke("DEL", ipam_conf(fake_agent), ipam=True)
    assert (rc, err["code"]) == (1, 100) and "is an endpoint" in err["msg"]


def test_ipam_check(fake_agent: FakeAgent) -> None:
    listing = {"mode": "cluster-pool", "node": "n", "pools": [], "blocks": [],
               "allocations": ALLOCATIONS}  # fmt: skip
    fake_agent.reply("GET", "/v1/ipam", http(200, listing))
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.7/24"}]}
    assert invoke("CHECK", {**ipam_conf(fake_agent), "prevResult": prev}, ipam=True) == (0, None)
    lost = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.8/24"}]}
    rc, err = invoke("CHECK", {**ipam_conf(fake_agent), "prevResult": lost}, ipam=True)
    assert err["msg"] == "CHECK of c1/eth0 failed: 10.0.0.8/24 no longer allocated to it"
    rc, err = invoke("CHECK", ipam_conf(fake_agent), ipam=True, cid="other")
    assert rc == 1 and err["msg"] == "CHECK of other/eth0 failed: it holds no address any more"


def test_ipam_gc_is_scoped_to_ipam_plugin_allocations(
    fake_agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    resp = {"endpoints_removed": [], "addresses_released": ["10.0.0.9"]}
    fake_agent.reply("POST", "/v1/gc", http(200, resp))
    valid = [{"containerID": "c1", "ifname": "eth0"}]
    config = {**ipam_conf(fake_agent, "1.1.0"), "cni.dev/attachments": valid}
    assert invoke("GC", config, ipam=True) == (0, None)
    assert fake_agent.requests[0].body == {
        "valid_attachments": valid, "network": "br", "scope": "ipam-plugin"}  # fmt: skip
    assert capsys.readouterr().err == "ciliary-ipam: GC released 10.0.0.9\n"
    rc, err = invoke("GC", ipam_conf(fake_agent, "1.1.0"), ipam=True)
    assert (rc, err["code"]) == (1, 7) and "cni.dev/valid-attachments" in err["msg"]
