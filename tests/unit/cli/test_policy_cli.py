"""``ciliary policy|identity|bpf policy`` and the policy bits of ``monitor`` against a fake agent.

Same approach as ``test_client_and_cli.py``: aiohttp on a real unix socket in a temp run dir,
serving canned model instances, so the real client, error mapping and rendering are exercised
without root or BPF. ``policy validate`` is offline and needs no agent at all.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel

from ciliary.cli import monitor as monitor_cli
from ciliary.cli import policy as policy_cli
from ciliary.cli.bpf import fmt_port_proto
from ciliary.cli.main import main
from ciliary.cli.output import CLIError
from ciliary.client import AgentAPIError, AgentClient
from ciliary.core.models import (
    Endpoint,
    EndpointPolicyStatus,
    EndpointState,
    ErrorResponse,
    IdentityInfo,
    MonitorEvent,
    PolicyChangeResponse,
    PolicyImportRequest,
    PolicyListResponse,
    PolicyMapEntry,
    PolicySummary,
    RuleReference,
    TraceHalf,
    TraceRequest,
    TraceResponse,
)

# --------------------------------------------------------------------------- canned data

POLICIES = PolicyListResponse(
    revision=7,
    policies=[
        PolicySummary(
            key="CiliumNetworkPolicy/shop/allow-client",
            kind="CiliumNetworkPolicy",
            namespace="shop",
            name="allow-client",
            source="shop.yaml:1",
            rules=2,
        ),
        PolicySummary(
            key="CiliumClusterwideNetworkPolicy/deny-world",
            kind="CiliumClusterwideNetworkPolicy",
            namespace=None,
            name="deny-world",
            source="<stdin>:1",
            rules=1,
        ),
    ],
)


def ref(name: str, section: str, *, ns: str | None = "shop", peer: int = 0) -> RuleReference:
    kind = "CiliumNetworkPolicy" if ns else "CiliumClusterwideNetworkPolicy"
    key = f"{kind}/{ns}/{name}" if ns else f"{kind}/{name}"
    return RuleReference(
        policy=key,
        kind=kind,
        namespace=ns,
        name=name,
        rule_index=0,
        section=section,
        peer_index=peer,
    )


ALLOW_CLIENT = ref("allow-client", "ingress")
DENY_ALL = ref("deny-all", "ingressDeny")

IDENTITIES = [
    IdentityInfo(
        id=257,
        labels=["k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop"],
        reserved=False,
        endpoints=[34],
    ),
    IdentityInfo(id=2, labels=["reserved:world"], reserved=True),
    IdentityInfo(
        id=256,
        labels=["k8s:io.kubernetes.pod.namespace=default", "k8s:app=client"],
        reserved=False,
        endpoints=[12, 13],
    ),
]

EP_POLICY = EndpointPolicyStatus(
    endpoint_id=34,
    identity=257,
    revision=7,
    ingress_enforced=True,
    egress_enforced=False,
    policies=["CiliumNetworkPolicy/shop/allow-client"],
    entries=[
        PolicyMapEntry(
            direction="egress",
            identity=0,
            protocol="ANY",
            ports="any",
            action="allow",
            rules=[],
        ),
        PolicyMapEntry(
            direction="egress",
            identity=257,
            protocol="UDP",
            ports="53",
            action="allow",
            rules=[ALLOW_CLIENT],
            proxy_port=10000,
        ),
        PolicyMapEntry(
            direction="ingress",
            identity=256,
            protocol="TCP",
            ports="80",
            action="allow",
            rules=[ALLOW_CLIENT],
            packets=3,
            bytes=222,
        ),
        PolicyMapEntry(
            direction="ingress",
            identity=2,
            protocol="TCP",
            ports="8000-8015",
            action="deny",
            rules=[DENY_ALL],
        ),
    ],
    unsupported=["CiliumNetworkPolicy/shop/allow-client: toFQDNs (L7 DNS)"],
)


def endpoint(id: int, pod: str, ns: str, identity: int) -> Endpoint:
    return Endpoint(
        id=id,
        container_id=f"c-{pod}",
        pod_name=pod,
        namespace=ns,
        labels={"app": pod},
        identity=identity,
        state=EndpointState.READY,
        ipv4=f"10.200.0.{id}",
        ipv6=None,
        ifname="eth0",
        netns=f"/run/netns/{pod}",
        lxc=f"lxc{id:04d}",
        lxc_ifindex=100 + id,
        mac="02:00:00:00:00:01",
        node_mac="02:00:00:00:00:02",
        created_at=1_700_000_000.0,
        log=[],
    )


ENDPOINTS = [endpoint(12, "client", "default", 256), endpoint(34, "web", "shop", 257)]


def trace_response(req: TraceRequest) -> TraceResponse:
    """Allowed unless the destination is shop/web: port 8000 hits a deny rule, others nothing."""
    allowed_egress = TraceHalf(
        direction="egress",
        endpoint="12 (default/client)",
        allowed=True,
        reason="not enforced",
        rules=[],
        matched="egress identity 0 ANY allow",
    )
    if req.dst != "shop/web":
        ingress = TraceHalf(
            direction="ingress",
            endpoint=None,
            allowed=True,
            reason="not enforced",
            rules=[],
            matched=None,
        )
        return _trace(req, allowed_egress, ingress, None, None)
    if req.port == 8000:
        ingress = TraceHalf(
            direction="ingress",
            endpoint="34 (shop/web)",
            allowed=False,
            reason="denied by rule",
            rules=[DENY_ALL],
            matched="ingress identity 2 TCP/8000-8015 deny",
        )
        return _trace(req, allowed_egress, ingress, 181, "Policy denied by denylist")
    if req.port == 80:
        ingress = TraceHalf(
            direction="ingress",
            endpoint="34 (shop/web)",
            allowed=True,
            reason="allowed",
            rules=[ALLOW_CLIENT],
            matched="ingress identity 256 TCP/80 allow",
            l7=["http: method=POST path=/v1/request-landing"],
            proxy_port=10001,
        )
        return _trace(req, allowed_egress, ingress, None, None)
    ingress = TraceHalf(
        direction="ingress",
        endpoint="34 (shop/web)",
        allowed=False,
        reason="default deny",
        rules=[],
        matched=None,
        default_deny_by=["CiliumNetworkPolicy shop/allow-client"],
        explanation=WHY,
        near_misses=[MISS],
    )
    return _trace(req, allowed_egress, ingress, 133, "Policy denied")


WHY = (
    "shop/web is selected for ingress by CiliumNetworkPolicy shop/allow-client; no rule of it"
    " allows this peer/port"
)
MISS = (
    "CiliumNetworkPolicy shop/allow-client spec.ingress[0]: selects app=client in namespace shop,"
    " but the peer is in namespace default"
)


def _trace(
    req: TraceRequest, egress: TraceHalf, ingress: TraceHalf, reason: int | None, desc: str | None
) -> TraceResponse:
    allowed = egress.allowed and ingress.allowed
    return TraceResponse(
        src=req.src,
        src_identity=256,
        dst=req.dst,
        dst_identity=257 if req.dst == "shop/web" else 2,
        protocol=req.protocol,
        port=req.port,
        allowed=allowed,
        verdict="FORWARDED" if allowed else "DROPPED",
        drop_reason=reason,
        drop_reason_desc=desc,
        egress=egress,
        ingress=ingress,
    )


# --------------------------------------------------------------------------- the fake agent


def _json(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        body = data.model_dump_json()
    else:
        body = json.dumps(
            [d.model_dump(mode="json") for d in data] if isinstance(data, list) else data
        )
    return web.Response(text=body, status=status, content_type="application/json")


class FakeAgent:
    """aiohttp on a unix socket, in its own thread and event loop; records what it was sent."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.imports: list[PolicyImportRequest] = []
        self.deletes: list[list[tuple[str, str]]] = []
        self.traces: list[TraceRequest] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    async def policy_put(self, request: web.Request) -> web.Response:
        req = PolicyImportRequest.model_validate(await request.json())
        self.imports.append(req)
        if "endPort: 70" in req.text:
            problem = (
                f"{req.filename}: document 1 (CiliumNetworkPolicy shop/web): "
                "spec.egress[0].toPorts[0].ports[0].endPort: must be >= port (80)"
            )
            return _json(ErrorResponse(error=problem, kind="policy"), 400)
        return _json(PolicyChangeResponse(revision=8, keys=["CiliumNetworkPolicy/shop/web"]))

    async def policy_get(self, _: web.Request) -> web.Response:
        return _json(POLICIES)

    async def policy_delete(self, request: web.Request) -> web.Response:
        query = list(request.query.items())
        self.deletes.append(query)
        keys = [v for k, v in query if k == "key"]
        if request.query.get("all") == "true":
            keys = [p.key for p in POLICIES.policies]
        return _json(PolicyChangeResponse(revision=9, keys=keys))

    async def policy_trace(self, request: web.Request) -> web.Response:
        req = TraceRequest.model_validate(await request.json())
        self.traces.append(req)
        return _json(trace_response(req))

    async def endpoint_list(self, _: web.Request) -> web.Response:
        return _json(ENDPOINTS)

    async def endpoint_get(self, request: web.Request) -> web.Response:
        found = [e for e in ENDPOINTS if e.id == int(request.match_info["id"])]
        if not found:
            return _json(ErrorResponse(error="endpoint not found", kind="not-found"), 404)
        return _json(found[0])

    async def endpoint_policy(self, request: web.Request) -> web.Response:
        if request.match_info["id"] != "34":
            return _json(ErrorResponse(error="endpoint not found", kind="not-found"), 404)
        return _json(EP_POLICY)

    async def identity_list(self, _: web.Request) -> web.Response:
        return _json(IDENTITIES)

    async def identity_get(self, request: web.Request) -> web.Response:
        number = int(request.match_info["id"])
        for info in IDENTITIES:
            if info.id == number:
                return _json(info)
        return _json(ErrorResponse(error=f"identity {number} not found", kind="not-found"), 404)

    async def _start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.put("/v1/policy", self.policy_put),
                web.get("/v1/policy", self.policy_get),
                web.delete("/v1/policy", self.policy_delete),
                web.post("/v1/policy/trace", self.policy_trace),
                web.get("/v1/endpoint", self.endpoint_list),
                web.get("/v1/endpoint/{id}", self.endpoint_get),
                web.get("/v1/endpoint/{id}/policy", self.endpoint_policy),
                web.get("/v1/identity", self.identity_list),
                web.get("/v1/identity/{id}", self.identity_get),
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


GOOD_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-client
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

BAD_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: web
  egress:
  - toPorts:
    - ports:
      - port: "80"
        endPort: 70
  ingress:
  - toPorts:
    - ports:
      - port: "99999"
"""


@pytest.fixture
def policy_files(tmp_path: Path) -> tuple[Path, Path]:
    good = tmp_path / "good.yaml"
    bad = tmp_path / "bad.yaml"
    good.write_text(GOOD_POLICY)
    bad.write_text(BAD_POLICY)
    return good, bad


# --------------------------------------------------------------------------- client


def test_client_policy_methods(agent: FakeAgent) -> None:
    with AgentClient(agent.sock, timeout=5) as c:
        assert c.policy_list() == POLICIES
        assert c.policy_import("x: 1", "f.yaml").revision == 8
        assert agent.imports[-1] == PolicyImportRequest(text="x: 1", filename="f.yaml")
        deleted = c.policy_delete(["CiliumNetworkPolicy/a/b", "NetworkPolicy/c/d"])
        assert deleted.keys == ["CiliumNetworkPolicy/a/b", "NetworkPolicy/c/d"]
        assert agent.deletes[-1] == [
            ("key", "CiliumNetworkPolicy/a/b"),
            ("key", "NetworkPolicy/c/d"),
        ]
        assert len(c.policy_delete(all=True).keys) == 2
        assert agent.deletes[-1] == [("all", "true")]
        with pytest.raises(ValueError):
            c.policy_delete()
        req = TraceRequest(src="default/client", dst="shop/web", port=80)
        assert c.policy_trace(req) == trace_response(req)
        assert c.endpoint_policy(34) == EP_POLICY
        assert c.identities() == IDENTITIES
        assert c.identity(2) == IDENTITIES[1]
        with pytest.raises(AgentAPIError) as exc:
            c.identity(9999)
        assert exc.value.status == 404 and "9999" in str(exc.value)


# --------------------------------------------------------------------------- policy changes


def test_policy_import_prints_revision_and_keys(
    agent: FakeAgent, policy_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good, _ = policy_files
    assert main(["policy", "import", str(good)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Revision: 8",
        "Imported: CiliumNetworkPolicy/shop/web",
    ]
    assert agent.imports[-1] == PolicyImportRequest(text=GOOD_POLICY, filename=str(good))
    assert main(["policy", "import", str(good), "-o", "json"]) == 0
    assert PolicyChangeResponse.model_validate_json(capsys.readouterr().out).revision == 8


def test_policy_import_from_stdin(
    agent: FakeAgent, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD_POLICY))
    assert main(["policy", "import", "-"]) == 0
    assert agent.imports[-1] == PolicyImportRequest(text=GOOD_POLICY, filename="<stdin>")
    assert "Revision: 8" in capsys.readouterr().out


def test_policy_import_rejected_is_one_error_line(
    agent: FakeAgent, policy_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, bad = policy_files
    assert main(["policy", "import", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"Error: {bad}: document 1 (CiliumNetworkPolicy shop/web): ")
    assert "endPort: must be >= port (80)" in err
    # the agent names the first problem; the CLI counts the rest with the same parser
    assert f"(+1 more problem: ciliary policy validate {bad})" in err


def test_policy_import_missing_file(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "import", "/nonexistent/p.yaml"]) == 1
    assert capsys.readouterr().err == (
        "Error: cannot read /nonexistent/p.yaml: No such file or directory\n"
    )
    assert agent.imports == []


def test_policy_get_table_and_json(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "get"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "KIND", "NAMESPACE", "NAME", "RULES", "SOURCE"]
    # sorted by key; cluster-wide policies have no namespace
    assert lines[1].split() == [
        "CiliumClusterwideNetworkPolicy/deny-world",
        "CiliumClusterwideNetworkPolicy",
        "-",
        "deny-world",
        "1",
        "<stdin>:1",
    ]
    assert lines[2].split()[0] == "CiliumNetworkPolicy/shop/allow-client"
    assert lines[-1] == "Revision: 7"
    assert main(["policy", "get", "-o", "json"]) == 0
    listing = PolicyListResponse.model_validate_json(capsys.readouterr().out)
    assert listing.revision == 7
    assert {p.key for p in listing.policies} == {p.key for p in POLICIES.policies}


def test_policy_get_one(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("CiliumNetworkPolicy/shop/allow-client", "shop/allow-client"):
        assert main(["policy", "get", key, "-o", "json"]) == 0
        listing = PolicyListResponse.model_validate_json(capsys.readouterr().out)
        assert [p.name for p in listing.policies] == ["allow-client"]
    assert main(["policy", "get", "deny-world"]) == 0
    out = capsys.readouterr().out
    assert "deny-world" in out and "allow-client" not in out
    assert main(["policy", "get", "shop/nope"]) == 1
    assert capsys.readouterr().err.startswith("Error: policy shop/nope not found")


def test_policy_delete(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "delete", "CiliumNetworkPolicy/shop/a", "NetworkPolicy/shop/b"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Revision: 9",
        "Deleted: CiliumNetworkPolicy/shop/a",
        "Deleted: NetworkPolicy/shop/b",
    ]
    assert agent.deletes[-1] == [
        ("key", "CiliumNetworkPolicy/shop/a"),
        ("key", "NetworkPolicy/shop/b"),
    ]
    assert main(["policy", "delete", "--all", "-o", "json"]) == 0
    assert len(PolicyChangeResponse.model_validate_json(capsys.readouterr().out).keys) == 2
    assert agent.deletes[-1] == [("all", "true")]
    for argv in (["policy", "delete"], ["policy", "delete", "--all", "x"]):
        assert main(argv) == 1
        assert "or --all" in capsys.readouterr().err
    assert len(agent.deletes) == 2


# --------------------------------------------------------------------------- validate (offline)


def test_validate_valid_file_offline(
    run_dir: Path, policy_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good, _ = policy_files
    # no agent is running in run_dir: validate must not need one
    assert main(["policy", "validate", str(good)]) == 0
    assert capsys.readouterr().out == (
        f"{good}: 2 policies valid (1 CiliumNetworkPolicy, 1 NetworkPolicy)\n"
    )


def test_validate_invalid_file_lists_every_problem(
    run_dir: Path, policy_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = policy_files
    assert main(["policy", "validate", str(bad), str(good)]) == 1
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if line.startswith(f"{bad}:")]
    assert len(problems) == 2, lines
    assert all("document 1 (CiliumNetworkPolicy shop/web)" in p for p in problems)
    assert any(
        p.endswith("spec.egress[0].toPorts[0].ports[0].endPort: must be >= port (80)")
        for p in problems
    )
    assert any("spec.ingress[0].toPorts[0].ports[0].port:" in p and "99999" in p for p in problems)
    # the other file is still checked and reported
    assert lines[-1].startswith(f"{good}: 2 policies valid")


def test_validate_json_stdin_and_unreadable(
    run_dir: Path,
    policy_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD_POLICY))
    assert main(["policy", "validate", "-", "/nonexistent.yaml", "-o", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data[0] == {
        "file": "<stdin>",
        "valid": True,
        "policies": ["CiliumNetworkPolicy/shop/allow-client", "NetworkPolicy/shop/deny-all"],
        "problems": [],
    }
    assert data[1]["valid"] is False
    assert data[1]["problems"] == ["/nonexistent.yaml: cannot read: No such file or directory"]
    _, bad = policy_files
    assert main(["policy", "validate", str(bad), "-o", "json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert result["valid"] is False and len(result["problems"]) == 2


def test_validate_not_a_policy(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert main(["policy", "validate", str(empty), str(other)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{empty}: ") and "no documents" in lines[0]
    assert lines[1].startswith(f"{other}: ") and "ConfigMap" in lines[1]


# --------------------------------------------------------------------------- trace


def test_parse_dport() -> None:
    assert policy_cli.parse_dport(None) == ("TCP", 0)
    assert policy_cli.parse_dport("80") == ("TCP", 80)
    assert policy_cli.parse_dport("80/tcp") == ("TCP", 80)
    assert policy_cli.parse_dport("53/UDP") == ("UDP", 53)
    assert policy_cli.parse_dport("8/icmp") == ("ICMP", 8)
    assert policy_cli.parse_dport("128/icmpv6") == ("ICMPv6", 128)
    assert policy_cli.parse_dport("2905/sctp") == ("SCTP", 2905)
    for bad in ("http", "80/gre", "70000", "300/icmp", "80/", "-1"):
        with pytest.raises(CLIError, match="invalid --dport"):
            policy_cli.parse_dport(bad)


def test_trace_allowed_exit_0(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "trace", "--from", "default/client", "--to", "shop/web", "--dport", "80"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert agent.traces[-1] == TraceRequest(
        src="default/client", dst="shop/web", protocol="TCP", port=80
    )
    lines = out.splitlines()
    assert lines[0] == (
        "Tracing From: default/client (identity 256) => To: shop/web (identity 257) Ports: [80/TCP]"
    )
    assert "Final verdict: ALLOWED" in lines
    assert "Egress verdict (source policy, endpoint 12 (default/client)):" in lines
    assert "Ingress verdict (destination policy, endpoint 34 (shop/web)):" in lines
    assert any(
        line.strip().startswith("Rules:")
        and line.endswith("CiliumNetworkPolicy shop/allow-client rule 0 ingress[0]")
        for line in lines
    )
    assert any(line.endswith("ingress identity 256 TCP/80 allow") for line in lines)
    # an entry with L7 rules: the rules each request is decided by, and the proxy
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("L7 rules:"))
    assert lines[at].endswith("http: method=POST path=/v1/request-landing")
    assert lines[at + 1].strip() == "(each request decided by the L7 proxy on port 10001)"


def test_trace_denied_by_rule_exit_1(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "trace", "--from", "12", "--to", "shop/web", "--dport", "8000/tcp"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "Final verdict: DENIED (Policy denied by denylist)" in out.splitlines()
    assert "CiliumNetworkPolicy shop/deny-all rule 0 ingressDeny[0]" in out
    assert "denied by rule" in out


def test_trace_default_deny_exit_1_and_json(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["policy", "trace", "--from", "default/client", "--to", "shop/web", "--dport", "22"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "Final verdict: DENIED (Policy denied)" in out.splitlines()
    flat = " ".join(out.split())  # the table wraps long cells
    assert f"Rules: default deny: {WHY}" in flat
    assert f"Near misses: {MISS}" in flat
    assert main([*argv, "-o", "json"]) == 1
    resp = TraceResponse.model_validate_json(capsys.readouterr().out)
    assert not resp.allowed and resp.drop_reason == 133
    assert resp == trace_response(agent.traces[-1])


def test_trace_to_non_endpoint_and_icmp(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["policy", "trace", "--from", "client", "--to", "1.1.1.1", "--dport", "8/icmp"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert agent.traces[-1].protocol == "ICMP" and agent.traces[-1].port == 8
    assert "Ports: [ICMP type 8]" in out
    assert "To: 1.1.1.1 (identity 2, reserved:world)" in out
    assert "destination is not a local endpoint" in out


def test_trace_bad_dport_is_usage_error(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    # exit 2 like every usage error: 1 means "denied" to scripts
    assert main(["policy", "trace", "--from", "a", "--to", "b", "--dport", "80/xyz"]) == 2
    assert "argument --dport: expected PORT[/PROTO]" in capsys.readouterr().err
    assert agent.traces == []


def test_final_verdict_falls_back_on_the_drop_reason() -> None:
    req = TraceRequest(src="a", dst="shop/web", port=8000)
    resp = trace_response(req).model_copy(update={"drop_reason_desc": None})
    assert policy_cli.final_verdict(resp) == "DENIED (Policy denied by denylist)"


# --------------------------------------------------------------------------- identity


def test_identity_list_table_and_json(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["identity", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "LABELS", "ENDPOINTS"]
    assert lines[1].split() == ["2", "reserved:world", "-"]
    # one label per line, sorted; endpoints on the identity's first line
    assert lines[2].split() == ["256", "k8s:app=client", "12,", "13"]
    assert lines[3].split() == ["k8s:io.kubernetes.pod.namespace=default"]
    assert lines[4].split() == ["257", "k8s:app=web", "34"]
    assert main(["identity", "list", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [IdentityInfo.model_validate(d) for d in data] == sorted(IDENTITIES, key=lambda i: i.id)


def test_identity_get(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["identity", "get", "257"]) == 0
    out = capsys.readouterr().out
    assert "k8s:app=web" in out and "k8s:io.kubernetes.pod.namespace=shop" in out
    assert main(["identity", "get", "2", "-o", "json"]) == 0
    assert IdentityInfo.model_validate_json(capsys.readouterr().out) == IDENTITIES[1]
    assert main(["identity", "get", "4242"]) == 1
    assert capsys.readouterr().err == "Error: identity 4242 not found\n"
    assert main(["identity", "get", "web"]) == 1
    assert "expected a number" in capsys.readouterr().err


# --------------------------------------------------------------------------- bpf policy get


def test_fmt_port_proto() -> None:
    assert fmt_port_proto("ANY", "any") == "ANY"
    assert fmt_port_proto("TCP", "any") == "ANY/TCP"
    assert fmt_port_proto("TCP", "80") == "80/TCP"
    assert fmt_port_proto("UDP", "8000-8015") == "8000-8015/UDP"


def test_bpf_policy_get_table(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bpf", "policy", "get", "34"]) == 0
    lines = capsys.readouterr().out.splitlines()
    text = "\n".join(lines)
    assert "Policy enforcement:" in text and "ingress enforced, egress not enforced" in text
    assert "Policy revision:" in text and "CiliumNetworkPolicy/shop/allow-client" in text
    assert "Warning: not enforced: CiliumNetworkPolicy/shop/allow-client: toFQDNs" in text
    head = next(i for i, line in enumerate(lines) if line.startswith("ACTION"))
    assert lines[head].split()[:3] == ["ACTION", "DIRECTION", "IDENTITY"]
    for column in ("LABELS", "PORT/PROTO", "PROXY PORT", "PACKETS", "BYTES", "RULES"):
        assert column in lines[head]
    rows = lines[head + 1 :]
    # ingress first, denies first within a direction
    assert rows[0].split() == [
        "Deny", "Ingress", "2", "reserved:world", "8000-8015/TCP", "NONE", "0", "0",
        "CiliumNetworkPolicy", "shop/deny-all", "rule", "0", "ingressDeny[0]",
    ]  # fmt: skip
    assert rows[1].split() == [
        "Allow", "Ingress", "256", "k8s:app=client", "80/TCP", "NONE", "3", "222",
        "CiliumNetworkPolicy", "shop/allow-client", "rule", "0", "ingress[0]",
    ]  # fmt: skip
    assert rows[2].split() == ["k8s:io.kubernetes.pod.namespace=default"]
    assert rows[3].split() == [
        "Allow", "Egress", "0", "reserved:unknown", "ANY", "NONE", "0", "0", "-",
    ]  # fmt: skip
    # an L7 entry names the port of the proxy its traffic goes to (upstream's PROXY PORT)
    assert rows[4].split()[:6] == ["Allow", "Egress", "257", "k8s:app=web", "53/UDP", "10000"]


def test_bpf_policy_get_by_pod_and_json(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bpf", "policy", "get", "pod:shop/web", "-o", "json"]) == 0
    assert EndpointPolicyStatus.model_validate_json(capsys.readouterr().out) == EP_POLICY
    assert main(["bpf", "policy", "get", "12"]) == 1
    assert capsys.readouterr().err == "Error: endpoint not found\n"


def test_endpoint_get_with_policy(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["endpoint", "get", "34", "--policy"]) == 0
    out = capsys.readouterr().out
    assert "lxc0034" in out and "Policy revision:" in out and "reserved:unknown" in out
    assert main(["endpoint", "get", "pod:shop/web", "--policy", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert Endpoint.model_validate(data["endpoint"]) == ENDPOINTS[1]
    assert EndpointPolicyStatus.model_validate(data["policy"]) == EP_POLICY


# --------------------------------------------------------------------------- monitor


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
        "src_ip": "10.200.0.12",
        "dst_ip": "10.200.0.34",
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
        "dst_pod": "shop/web",
        "summary": "TCP Flags: SYN",
    }
    base.update(over)
    return MonitorEvent.model_validate(base)


def test_monitor_appends_the_policy_verdict() -> None:
    allowed = make_event(
        "trace",
        traffic_direction="ingress",
        policy_rules=[str(ALLOW_CLIENT)],
        verdict_reason="allowed",
    )
    assert monitor_cli.format_event(allowed).endswith(
        "tcp SYN (default/client -> shop/web) "
        "policy: CiliumNetworkPolicy shop/allow-client rule 0 ingress[0]"
    )
    denied = make_event("drop", verdict_reason="default deny")
    line = monitor_cli.format_event(denied)
    assert line.startswith("xx drop (Policy denied) ")
    assert line.endswith("(default/client -> shop/web) default deny")
    by_rule = make_event(
        "drop",
        drop_reason=181,
        drop_reason_desc="Policy denied by denylist",
        policy_rules=[str(DENY_ALL)],
        verdict_reason="denied by rule",
    )
    assert monitor_cli.format_event(by_rule).endswith(
        "policy: CiliumNetworkPolicy shop/deny-all rule 0 ingressDeny[0]"
    )
    # without policy information the line is unchanged
    assert monitor_cli.format_event(make_event("trace")).endswith("(default/client -> shop/web)")
