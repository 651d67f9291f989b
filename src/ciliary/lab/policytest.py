"""``ciliary policy test``: policy expectations, checked with real packets in a running lab.

A ``PolicyTest`` file (``ciliary.io/v1alpha1``) lists flows and whether policy must allow or deny
them. Each case is observed three ways:

- **the datapath's own verdict**, which alone decides: while a probe runs, the runner listens to
  the monitor stream of every node's agent and takes the drop event of the probe's flow, else its
  trace FORWARDED at the last hop (``to-endpoint`` for a pod, or ``to-proxy`` when its entry
  names an L7 proxy: the connection is allowed, the proxy decides each request; for anything
  else ``to-stack``, or
  ``to-network`` where BPF host routing sends it straight to a device, in native mode). It
  is what the eBPF program decided and names the drop reason (133 "Policy denied", 181 "Policy
  denied by denylist") and the deciding rules, or for a default deny the policies that put the
  endpoint into it;
- **the client's result**, which must agree but never stands in for the datapath: a timeout also
  happens when a server is down or a route is missing, so it proves no deny, and a request the
  datapath forwarded proves no allow if its reply never comes back. So a ``deny`` needs the drop
  event (a policy drop reason, or exactly ``dropReason`` when given) and a client that did not get
  through; an ``allow`` needs the FORWARDED event and, towards a pod or a world host, a reply
  (connected, a TCP reset or ICMP port unreachable from the peer, a UDP answer, an echo reply).
  A case without the event it needs fails and says which one is missing;
- **``policy trace``**: the agent's explanation from its computed policy map state, compared with
  the datapath (a disagreement is a failure: one of them is wrong).

Probes run inside the source's network namespace (a pod's, the node's for ``from: host``, a
world host's for ``from: world:NAME``) as short-lived processes, one new connection each, so
every case is a new flow through conntrack and policy. A probe whose drop event has arrived is
stopped at once: denied cases cost milliseconds, not a timeout.

The file (one or more documents)::

    apiVersion: ciliary.io/v1alpha1
    kind: PolicyTest
    metadata: {name: shop-rules}
    spec:
      timeout: 2              # seconds per probe (default 2)
      cases:
      - {from: default/client, to: shop/web, port: 80, protocol: TCP, expect: allow}
      - {from: default/client, to: shop/db, port: 5432, expect: deny, dropReason: 133}
      - {from: shop/web, to: 10.200.0.9, port: 53, protocol: UDP, expect: allow}
      - {from: host, to: shop/web, port: 80, expect: allow, rule: shop/allow-host}
      - {name: no ping, from: default/client, to: shop/db, protocol: ICMP, expect: deny}
      - {from: world:partner, to: shop/web, port: 80, expect: deny}
      - {from: shop/web, to: world:partner, port: 443, expect: allow}

``from`` is a pod (``[namespace/]name``), ``host`` (the node of the other side; ``host:NODE``
to name one) or ``world:NAME``, a host of the world outside the cluster (the Lab's
``spec.externals``; ``world`` alone when the lab has one); ``to`` is a pod, ``host[:NODE]``,
``world[:NAME]`` or an IP address (a world host's address is that host). A case with a world
host has a pod on its other side (the pod's node enforces it). Traffic to a world host goes to
its address and is answered by what its ``command`` serves (a closed TCP port's reset is a reply
too); the world reaches pods directly only in native routing mode, where the lab gives each world
host a route to every node's pod CIDRs. ``protocol`` is TCP (default),
UDP (both need ``port``) or ICMP (an echo request, no port). ``family: 6`` probes pods over
IPv6. ``dropReason`` (133 or 181) and ``rule`` (text one of the deciding rules must contain)
sharpen a case. Unknown fields are errors and every problem is one line naming the file, the
document, the dotted path of the field and what was expected (``tests.yaml: document 1
(PolicyTest shop): spec.cases[2].expect: expected 'allow' or 'deny', got 'alow'``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from ciliary.client.agent import AgentClient, AgentClientError
from ciliary.core.flow import POLICY_DROPS, drop_reason_text
from ciliary.core.models import MonitorEvent, TraceHalf, TraceRequest, TraceResponse
from ciliary.k8s.fields import format_path
from ciliary.lab import manager, process
from ciliary.lab.state import LabRecord, PodRecord
from ciliary.policy.api.errors import one_line, show

__all__ = [
    "API_VERSION",
    "KIND",
    "CaseResult",
    "PolicyTest",
    "PolicyTestCase",
    "PolicyTestError",
    "PolicyTestReport",
    "load_file",
    "parse_text",
    "run",
]

API_VERSION = "ciliary.io/v1alpha1"
KIND = "PolicyTest"
DEFAULT_TIMEOUT = 2.0
MONITOR_WARMUP = 0.3
"""Seconds to let the monitor subscriptions reach the agents before the first probe."""
EVENT_GRACE = 2.0
"""Seconds to keep waiting for the datapath's event once the client has finished."""
SERVER_START_GRACE = 5.0
"""Seconds after its container started that a pod's refused connection is tried again (a
just-started server not listening yet); a server of unknown age (world hosts, other addresses)
gets them from the first refusal."""

Verdict: TypeAlias = Literal["allow", "deny"]
Protocol: TypeAlias = Literal["TCP", "UDP", "ICMP"]


class PolicyTestError(Exception):
    """A PolicyTest file or case that cannot be used; ``problems`` has one line per problem."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [
            one_line(p) for p in ([problems] if isinstance(problems, str) else problems)
        ]
        super().__init__(self.problems[0] if self.problems else "invalid PolicyTest")

    def __str__(self) -> str:
        if len(self.problems) <= 1:
            return self.problems[0] if self.problems else "invalid PolicyTest"
        return f"{self.problems[0]} (+{len(self.problems) - 1} more)"


# --------------------------------------------------------------------------------------------
# The file


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _family(value: object) -> object:
    if isinstance(value, str) and value.lower() in ("ipv4", "ipv6", "4", "6"):
        return int(value[-1])
    return value


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class PolicyTestCase(_Model):
    """One flow and the verdict policy must give it."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    from_: str = Field(
        alias="from", min_length=1, description="[ns/]pod, host[:NODE] or world[:NAME]"
    )
    to: str = Field(
        min_length=1, description="[ns/]pod, host[:NODE], world[:NAME] or an IP address"
    )
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Annotated[Protocol, BeforeValidator(_upper)] = "TCP"
    expect: Annotated[Verdict, BeforeValidator(_lower)]
    family: Annotated[Literal[4, 6] | None, BeforeValidator(_family)] = None
    drop_reason: Literal[133, 181] | None = Field(
        default=None, description="with expect: deny, the drop reason the datapath must give"
    )
    rule: str | None = Field(
        default=None, min_length=1, description="text the deciding rule must contain"
    )


class PolicyTestSpec(_Model):
    cases: list[PolicyTestCase] = Field(min_length=1)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=30)


class PolicyTestMetadata(_Model):
    name: str = Field(min_length=1, max_length=63)


class PolicyTest(_Model):
    api_version: Literal["ciliary.io/v1alpha1"]
    kind: Literal["PolicyTest"]
    metadata: PolicyTestMetadata
    spec: PolicyTestSpec
    filename: str = Field(default="", exclude=True)


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _message(err: Any) -> str:
    kind, value, ctx = err.get("type", ""), err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {show(value)}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the allowed values')}, got {show(value)}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "too_long":
        return f"too long (at most {ctx.get('max_length')})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{err.get('msg', 'out of range').lower()}, got {show(value)}"
    return f"{err.get('msg', 'invalid')} (got {show(value)})"


def _where(filename: str, index: int, doc: object) -> str:
    name = None
    if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
        raw = doc["metadata"].get("name")
        name = raw if isinstance(raw, str) else None
    what = f" ({KIND} {name})" if name else ""
    return f"{filename}: document {index}{what}"


def _check_case(case: PolicyTestCase) -> list[tuple[str, str]]:
    """Problems the field types cannot express, as (field, problem)."""
    problems: list[tuple[str, str]] = []
    if case.protocol in ("TCP", "UDP") and case.port is None:
        problems.append(("port", f"required for {case.protocol}"))
    if case.protocol == "ICMP" and case.port is not None:
        problems.append(("port", "ICMP has no port (an echo request is sent)"))
    if case.drop_reason is not None and case.expect != "deny":
        problems.append(("dropReason", "only with expect: deny"))
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(case.from_)
        problems.append(("from", f"must be a pod or host, not an address ({addr})"))
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(case.to)
        if case.family is not None and addr.version != case.family:
            problems.append(("family", f"{case.family} does not match the address {addr}"))
    return problems


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (the last would silently win otherwise)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key if isinstance(key, str) else id(key_node))
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_text(text: str, filename: str) -> list[PolicyTest]:
    """Every PolicyTest document of ``text``; raises :class:`PolicyTestError` with every problem."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise PolicyTestError(f"{filename}:{where}: invalid YAML: {problem}") from None
    if not docs:
        raise PolicyTestError(
            f"{filename}: no {KIND} document (apiVersion: {API_VERSION}, kind: {KIND})"
        )
    tests: list[PolicyTest] = []
    problems: list[str] = []
    for index, doc in enumerate(docs, start=1):
        where = _where(filename, index, doc)
        if not isinstance(doc, dict):
            problems.append(f"{where}: expected a mapping (apiVersion, kind, metadata, spec)")
            continue
        try:
            test = PolicyTest.model_validate(doc)
        except ValidationError as err:
            for e in err.errors():
                problems.append(f"{where}: {format_path(e['loc'])}: {_message(e)}")
            continue
        for i, case in enumerate(test.spec.cases):
            for field, problem in _check_case(case):
                problems.append(f"{where}: spec.cases[{i}].{field}: {problem}")
        tests.append(test.model_copy(update={"filename": filename}))
    names = [t.metadata.name for t in tests]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{filename}: {KIND} {name!r} is defined more than once")
    if problems:
        raise PolicyTestError(problems)
    return tests


def load_file(path: Path) -> list[PolicyTest]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PolicyTestError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise PolicyTestError(f"{path}: {err.strerror or err}") from None
    return parse_text(text, str(path))


# --------------------------------------------------------------------------------------------
# Results


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class CaseResult(_Result):
    """What one case gave: the datapath's verdict, the client's, the trace's, and the check."""

    test: str
    index: int = Field(description="1-based position in its PolicyTest")
    name: str
    src: str
    dst: str
    src_ip: str
    dst_ip: str
    protocol: str
    port: int | None
    expected: Verdict
    datapath: Verdict | None = Field(description="the datapath's verdict event; None: none seen")
    datapath_event: str = Field(description="the event, as one line ('' when none was seen)")
    drop_reason: int | None
    drop_reason_desc: str | None
    direction: str | None = Field(description="ingress | egress: where the datapath dropped")
    client: str = Field(description="what the probe saw: connected, refused, timeout, ...")
    client_verdict: Verdict | None
    trace: Verdict | None
    trace_reason: str
    rules: list[str] = Field(description="the deciding rules (datapath event, else trace)")
    l7: list[str] = Field(
        default_factory=list,
        description="the L7 rules a proxy decides each request of the flow by (policy trace)",
    )
    reason: str = Field(description="deciding rule or reason, one line")
    verdict: Verdict | None = Field(description="the observed verdict: the datapath's")
    passed: bool
    problems: list[str]
    seconds: float


class PolicyTestReport(_Result):
    lab: str
    tests: list[str]
    cases: list[CaseResult]
    passed: bool
    failed: int


# --------------------------------------------------------------------------------------------
# Resolving the two sides of a case


@dataclass(frozen=True)
class _Peer:
    """One side of a case as the datapath sees it."""

    text: str
    kind: Literal["pod", "host", "world", "ip"]
    ip: str
    node: str | None  # the node it lives on (pods, hosts); None for the world
    netns: str | None  # where a probe from it runs
    pod: PodRecord | None = None

    def trace_ref(self, node: str) -> str:
        """What ``policy trace`` on ``node`` is given for this side."""
        if self.pod is not None and self.node == node:
            return self.pod.key
        return self.ip


class _Lab:
    """The running lab: its record, and each node's router addresses (the host's identity)."""

    def __init__(self, rec: LabRecord) -> None:
        self.rec = rec
        self.routers: dict[str, dict[int, str]] = {}
        for node in rec.nodes:
            addrs: dict[int, str] = {}
            with AgentClient(Path(node.socket), timeout=10) as cl:
                ipam = cl.status().ipam
            for ip in (ipam.ipv4_router, ipam.ipv6_router):
                if ip:
                    addrs[ipaddress.ip_address(ip).version] = ip
            self.routers[node.name] = addrs
        self.world = {e.name: e for e in rec.externals}

    def socket(self, node: str) -> Path:
        return Path(next(n.socket for n in self.rec.nodes if n.name == node))

    def node_netns(self, node: str) -> str:
        return next(n.netns for n in self.rec.nodes if n.name == node)

    def _host(self, text: str, node: str | None, family: int) -> _Peer:
        if node is None:
            raise PolicyTestError(f"{text!r}: which node? (write host:NODE)")
        if node not in self.routers:
            known = ", ".join(self.routers)
            raise PolicyTestError(f"{text!r}: the lab has no node {node!r} (nodes: {known})")
        ip = self.routers[node].get(family)
        if ip is None:
            raise PolicyTestError(f"{text!r}: node {node} has no IPv{family} router address")
        return _Peer(text, "host", ip, node, self.node_netns(node))

    def _world(self, text: str, name: str, family: int) -> _Peer:
        known = ", ".join(self.world) or "none: the Lab has no spec.externals"
        if not name:
            if len(self.world) != 1:
                raise PolicyTestError(f"{text!r}: which world host? (write world:NAME; {known})")
            name = next(iter(self.world))
        ext = self.world.get(name)
        if ext is None:
            raise PolicyTestError(f"{text!r}: the lab has no world host {name!r} ({known})")
        return _Peer(text, "world", ext.ipv4 if family == 4 else ext.ipv6, None, ext.netns)

    def _pod(self, text: str, family: int) -> _Peer:
        ns, _, name = text.rpartition("/")
        key = f"{ns or 'default'}/{name}"
        for pod in self.rec.pods:
            if pod.key == key:
                ip = pod.ipv4 if family == 4 else pod.ipv6
                if ip is None:
                    raise PolicyTestError(f"pod {key} has no IPv{family} address")
                return _Peer(text, "pod", ip, pod.node, pod.netns, pod)
        known = ", ".join(p.key for p in self.rec.pods) or "none"
        raise PolicyTestError(f"the lab {self.rec.name!r} has no pod {key} (pods: {known})")

    def resolve(self, text: str, family: int, default_node: str | None) -> _Peer:
        if text == "host" or text.startswith("host:"):
            node = text.partition(":")[2] or default_node
            if node is None and len(self.rec.nodes) == 1:
                node = self.rec.nodes[0].name
            return self._host(text, node, family)
        if _is_world(text):
            return self._world(text, text.partition(":")[2], family)
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return self._pod(text, family)
        for pod in self.rec.pods:
            if str(addr) in (pod.ipv4, pod.ipv6):
                return _Peer(text, "pod", str(addr), pod.node, pod.netns, pod)
        for node, addrs in self.routers.items():
            if str(addr) in addrs.values():
                return _Peer(text, "host", str(addr), node, self.node_netns(node))
        for ext in self.world.values():
            if str(addr) in (ext.ipv4, ext.ipv6):
                return _Peer(text, "world", str(addr), None, ext.netns)
        return _Peer(text, "ip", str(addr), None, None)

    def peers(self, case: PolicyTestCase) -> tuple[_Peer, _Peer]:
        family = case.family
        with contextlib.suppress(ValueError):
            family = ipaddress.ip_address(case.to).version
        fam = family or 4
        # ``host`` means the node of the other side when that side is a pod
        by_name = not (case.from_.startswith("host") or _is_world(case.from_))
        src_pod = self._pod(case.from_, fam) if by_name else None
        dst = self.resolve(case.to, fam, src_pod.node if src_pod else None)
        src = src_pod or self.resolve(case.from_, fam, dst.node)
        if src.netns is None:
            raise PolicyTestError(f"from: {case.from_!r} must be a pod, host or world host")
        if "world" in (src.kind, dst.kind) and "pod" not in (src.kind, dst.kind):
            # only a pod's node sees (and enforces) the flow: no endpoint, no verdict event
            raise PolicyTestError(
                f"{case.from_!r} -> {case.to!r}: a case with a world host needs a pod on its"
                " other side"
            )
        return src, dst


def _is_world(text: str) -> bool:
    """``world`` or ``world:NAME`` (a pod named ``world`` is ``default/world``)."""
    return text == "world" or text.startswith("world:")


# --------------------------------------------------------------------------------------------
# Watching the datapath


class _Tap:
    """The monitor streams of every node, collected into one list (events carry CLOCK_MONOTONIC
    timestamps, the same clock as ``time.monotonic_ns()`` here)."""

    def __init__(self, sockets: Sequence[Path]) -> None:
        self.events: list[MonitorEvent] = []
        self.cond = threading.Condition()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._clients = [AgentClient(s, timeout=10) for s in sockets]
        self._threads = [
            threading.Thread(target=self._read, args=(c,), daemon=True) for c in self._clients
        ]

    def _read(self, client: AgentClient) -> None:
        # Closing the client does not interrupt a stream another thread is reading: the reader
        # leaves (closing its stream) at the next event after the run.
        try:
            for ev in client.monitor():
                if self._stop.is_set():
                    break
                with self.cond:
                    self.events.append(ev)
                    self.cond.notify_all()
        except AgentClientError as err:
            with self.cond:
                self.errors.append(str(err))
                self.cond.notify_all()
        except Exception:  # the stream is closed under us when the run ends
            return

    def __enter__(self) -> _Tap:
        for t in self._threads:
            t.start()
        time.sleep(MONITOR_WARMUP)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout=max(timeout, 0))


def _flow_events(
    events: Sequence[MonitorEvent], since_ns: int, src: _Peer, dst: _Peer, case: PolicyTestCase
) -> list[MonitorEvent]:
    """The events of the probe's own packets (requests, not replies), oldest first."""
    ipv6 = ":" in dst.ip
    proto = {"TCP": "TCP", "UDP": "UDP", "ICMP": "ICMPv6" if ipv6 else "ICMPv4"}[case.protocol]
    out = []
    for ev in events:
        if ev.ts_ns < since_ns or ev.is_reply or ev.protocol != proto or ev.dst_ip != dst.ip:
            continue
        if src.kind != "host" and ev.src_ip != src.ip:  # the host picks its own source address
            continue
        if case.protocol == "ICMP":
            if ev.icmp_type != (128 if ipv6 else 8):
                continue
        elif ev.dst_port != case.port:
            continue
        out.append(ev)
    return out


def _datapath_verdict(events: Sequence[MonitorEvent], dst: _Peer) -> MonitorEvent | None:
    """The event that settles the flow: a drop anywhere, else FORWARDED at the last hop."""
    for ev in events:
        if ev.type == "drop" or ev.verdict == "DROPPED":
            return ev
    # to a pod: delivered, or handed to the L7 proxy its entry names (allowed at L4; the proxy
    # decides each request, and policy trace says by which L7 rules)
    last_hops = {"to-endpoint", "to-proxy"} if dst.kind == "pod" else {"to-stack", "to-network"}
    for ev in events:
        if ev.verdict == "FORWARDED" and ev.observation_point in last_hops:
            return ev
    return None


def _describe_event(ev: MonitorEvent) -> str:
    where = f"{ev.traffic_direction} {ev.observation_point}".strip()
    if ev.type == "drop" or ev.verdict == "DROPPED":
        return f"DROPPED ({ev.drop_reason_desc}, {ev.drop_reason}) {where} on {ev.node}"
    return f"FORWARDED {where} on {ev.node}"


# --------------------------------------------------------------------------------------------
# Probing


_PROBE = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
# a DNS query (id 0x4369, RD, one question: ". IN NS"): DNS servers answer it, echo servers echo it
query = bytes.fromhex("436901000001000000000000") + b"\x00\x00\x02\x00\x01"
try:
    if proto == "TCP":
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((host, port))
        print("connected")
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((host, port))
            s.send(query)
            s.recv(65535)
        print("answered")
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error: " + (e.strerror or str(e)).lower())
"""


def _probe_argv(case: PolicyTestCase, dst: _Peer, timeout: float) -> list[str]:
    if case.protocol == "ICMP":
        ciliary = str(Path(sys.executable).parent / "ciliary")
        return [ciliary, "workload", "ping", dst.ip, "-c", "1", "-W", f"{timeout:g}"]
    return [sys.executable, "-c", _PROBE, case.protocol, dst.ip, str(case.port), f"{timeout:g}"]


def _client_outcome(case: PolicyTestCase, rc: int, out: str, err: str) -> str:
    """One word (or ``error: ...``) for what the probe process saw."""
    if case.protocol == "ICMP":
        if rc == 0:
            return "replied"
        text = (out + "\n" + err).lower()
        if "unreachable" in text or "prohibited" in text:
            return "error: unreachable"
        return "timeout" if " 0 received" in text else f"error: {one_line(err or out)[:80]}"
    words = out.strip().splitlines()
    return words[-1] if words else f"error: {one_line(err)[:80] or f'exit {rc}'}"


def _client_verdict(outcome: str) -> Verdict | None:
    if outcome in ("connected", "answered", "replied", "refused"):
        return "allow"
    if outcome == "timeout":
        return "deny"
    return None


@dataclass
class _Probe:
    outcome: str
    event: MonitorEvent | None
    seconds: float


def _probe(tap: _Tap, src: _Peer, dst: _Peer, case: PolicyTestCase, timeout: float) -> _Probe:
    assert src.netns is not None
    argv = ["nsenter", f"--net=/run/netns/{src.netns}", "--", *_probe_argv(case, dst, timeout)]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    first = len(tap.events)  # events already there are older than this probe
    start_ns = time.monotonic_ns()
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    found: list[MonitorEvent | None] = [None]

    def seen() -> bool:
        found[0] = _datapath_verdict(
            _flow_events(tap.events[first:], start_ns, src, dst, case), dst
        )
        return found[0] is not None

    def settled() -> bool:
        return seen() or proc.poll() is not None

    deadline = start + timeout + 5.0
    stopped: str | None = None
    try:
        while time.monotonic() < deadline:
            tap.wait(settled, min(0.05, deadline - time.monotonic()))
            ev = found[0]
            if ev is not None and ev.verdict == "DROPPED" and proc.poll() is None:
                proc.kill()  # the datapath has spoken; the client would only time out
                stopped = "stopped (dropped)"
                break
            if proc.poll() is not None:
                break
        else:
            proc.kill()
            stopped = "stopped (hung)"
        out, err = proc.communicate(timeout=10)
        if found[0] is None:
            # The client is done but its event may still be on its way from the agent (a busy
            # node): wait for the event itself, not for "settled", which the exit already is.
            tap.wait(seen, EVENT_GRACE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outcome = stopped or _client_outcome(case, proc.returncode, out, err)
    return _Probe(outcome, found[0], time.monotonic() - start)


# --------------------------------------------------------------------------------------------
# Tracing


def _trace_one(lab: _Lab, node: str, src: _Peer, dst: _Peer, case: PolicyTestCase) -> TraceResponse:
    ipv6 = ":" in dst.ip
    if case.protocol == "ICMP":
        req = TraceRequest(
            src=src.trace_ref(node),
            dst=dst.trace_ref(node),
            protocol="ICMPv6" if ipv6 else "ICMP",
            port=128 if ipv6 else 8,
        )
    else:
        req = TraceRequest(
            src=src.trace_ref(node), dst=dst.trace_ref(node), protocol=case.protocol,
            port=case.port or 0,
        )  # fmt: skip
    with AgentClient(lab.socket(node), timeout=10) as cl:
        return cl.policy_trace(req)


def _trace(lab: _Lab, src: _Peer, dst: _Peer, case: PolicyTestCase) -> tuple[TraceHalf, TraceHalf]:
    """(egress half, ingress half): each from the agent of the node whose endpoint it is."""
    src_node = src.node if src.kind == "pod" else None
    dst_node = dst.node if dst.kind == "pod" else None
    first = src_node or dst_node or src.node or lab.rec.nodes[0].name
    tr = _trace_one(lab, first, src, dst, case)
    egress, ingress = tr.egress, tr.ingress
    if dst_node is not None and dst_node != first:
        ingress = _trace_one(lab, dst_node, src, dst, case).ingress
    return egress, ingress


def _half_text(half: TraceHalf) -> str:
    if half.rules:
        l7 = f"; L7 (proxy): {', '.join(half.l7)}" if half.l7 else ""
        return f"{half.direction}: " + "; ".join(str(r) for r in half.rules) + l7
    why = f": {half.explanation}" if half.explanation else ""
    return f"{half.direction}: {half.reason}{why}"


def _trace_summary(egress: TraceHalf, ingress: TraceHalf) -> tuple[Verdict, str, list[str]]:
    if not egress.allowed:
        deciding = egress
    elif not ingress.allowed:
        deciding = ingress
    else:
        deciding = ingress if ingress.reason == "allowed" else egress
        if deciding.reason != "allowed":
            return "allow", "not enforced", []
    verdict: Verdict = "allow" if egress.allowed and ingress.allowed else "deny"
    rules = [str(r) for r in deciding.rules] or list(deciding.default_deny_by)
    return verdict, _half_text(deciding), rules


# --------------------------------------------------------------------------------------------
# Running


def _case_name(test: PolicyTest, index: int, case: PolicyTestCase) -> str:
    return case.name or f"{test.metadata.name}#{index}"


def _check(case: PolicyTestCase, res: dict[str, Any], dst_kind: str) -> list[str]:
    """Every way the observed case falls short of its expectation (empty: it holds).

    Only the datapath's own event decides: a deny is a drop event (with the expected reason, else
    a policy drop reason), never a client's timeout (a server that is down, a route that is
    missing, a probe that is too slow all time out too); an allow is a FORWARDED event at the
    last hop, and towards a pod or world host the client must also have seen the reply (the
    request was forwarded, but a dropped reply would break the connection all the same). A case
    without the event it needs fails, saying which event is missing.
    """
    problems: list[str] = []
    datapath: Verdict | None = res["datapath"]
    client = res["client"]
    if datapath is None:
        needed = "drop" if case.expect == "deny" else "FORWARDED"
        problems.append(
            f"no {needed} event from the datapath for this flow (the client saw {client}):"
            f" the client alone proves no {case.expect}"
        )
    elif datapath != case.expect:
        problems.append(f"expected {case.expect}, the datapath says {datapath}")
    if res["trace"] is not None and datapath is not None and res["trace"] != datapath:
        problems.append(f"policy trace says {res['trace']} but the datapath says {datapath}")
    if datapath == "deny":
        if res["client_verdict"] == "allow":
            problems.append(f"the client got through ({client}) although the datapath dropped")
        wanted = case.drop_reason
        if wanted is not None and res["drop_reason"] != wanted:
            problems.append(
                f"expected drop reason {wanted} ({drop_reason_text(wanted)}), got"
                f" {res['drop_reason']} ({res['drop_reason_desc']})"
            )
        elif wanted is None and res["drop_reason"] not in POLICY_DROPS:
            problems.append(
                f"dropped for {res['drop_reason_desc']} ({res['drop_reason']}), not by policy"
            )
    replied = res["client_verdict"] == "allow"
    # a pod or a lab's world host answers (a reset of a closed TCP port is an answer too)
    answers = dst_kind in ("pod", "world")
    if case.expect == "allow" and datapath == "allow" and answers and not replied:
        problems.append(
            f"the datapath forwarded the request but the client saw no reply ({client})"
        )
    if case.rule is not None and not any(case.rule in r for r in res["rules"]):
        problems.append(f"no deciding rule contains {case.rule!r}")
    return problems


def _start_grace_left(lab: _Lab, dst: _Peer) -> float:
    """How long a refusal from ``dst`` may still be a server starting: SERVER_START_GRACE after
    the youngest container that could be it started (the pod's own; a node's hostNetwork pods for
    the host), all of it when the server is not ours to see (world hosts, other addresses) or a
    container is not running (being restarted)."""
    if dst.kind == "pod" and dst.pod is not None:
        pods = [dst.pod]
    elif dst.kind == "host":
        pods = [p for p in lab.rec.pods if p.host_network and p.node == dst.node]
    else:
        return SERVER_START_GRACE
    youngest = float("inf")
    for pod in pods:
        for c in pod.containers:
            age = process.age(c.pid, c.pid_start_time) if c.pid is not None else None
            if age is None:
                return SERVER_START_GRACE
            youngest = min(youngest, age)
    return max(0.0, SERVER_START_GRACE - youngest)


def _run_case(
    lab: _Lab, tap: _Tap, *, test: PolicyTest, index: int, case: PolicyTestCase, timeout: float
) -> CaseResult:
    src, dst = lab.peers(case)
    probe = _probe(tap, src, dst, case, timeout)
    # A pod is Ready once its containers run (no readiness probe, as in Kubernetes), which can be
    # before its server listens: a TCP "refused" (a RST; never a policy's doing: denied packets
    # are dropped) is asked again for a moment, so a case reports what the started workload
    # answers. Not UDP: its "refused" is an ICMP error, which the kernel rate-limits, so asking
    # again would turn a closed port's answer into a timeout.
    settle = time.monotonic() + _start_grace_left(lab, dst)
    while case.protocol == "TCP" and probe.outcome == "refused" and time.monotonic() < settle:
        time.sleep(0.2)
        probe = _probe(tap, src, dst, case, timeout)
    if probe.event is None:  # a lost race with the monitor subscription: once more
        probe = _probe(tap, src, dst, case, timeout)
    egress, ingress = _trace(lab, src, dst, case)
    trace_verdict, trace_reason, trace_rules = _trace_summary(egress, ingress)
    ev = probe.event
    datapath: Verdict | None = None
    if ev is not None:
        datapath = "deny" if ev.verdict == "DROPPED" else "allow"
    client_verdict = _client_verdict(probe.outcome)
    if ev is not None and ev.policy_rules:
        # the rules name their own section (``... rule 0 egress[1]``); a drop says where it was
        rules = list(ev.policy_rules)
        reason = "; ".join(rules)
        if datapath == "deny":
            reason = f"{ev.traffic_direction}: {reason}"
    elif ev is not None and ev.verdict_reason:
        why = f": {ev.explanation}" if ev.explanation else ""
        rules, reason = (
            list(ev.default_deny_by),
            f"{ev.traffic_direction}: {ev.verdict_reason}{why}",
        )
    else:
        rules, reason = trace_rules, trace_reason
    # allowed at L4 with L7 rules (policy trace): the proxy decides each request by them
    l7 = [line for half in (egress, ingress) if half.allowed for line in half.l7]
    if datapath == "allow" and l7 and "L7 (proxy)" not in reason:
        reason = f"{reason}; L7 (proxy): {', '.join(l7)}"
    res: dict[str, Any] = {
        "test": test.metadata.name,
        "index": index,
        "name": _case_name(test, index, case),
        "src": case.from_,
        "dst": case.to,
        "src_ip": src.ip,
        "dst_ip": dst.ip,
        "protocol": case.protocol,
        "port": case.port,
        "expected": case.expect,
        "datapath": datapath,
        "datapath_event": _describe_event(ev) if ev is not None else "",
        "drop_reason": ev.drop_reason if ev is not None and datapath == "deny" else None,
        "drop_reason_desc": ev.drop_reason_desc if ev is not None and datapath == "deny" else None,
        "direction": ev.traffic_direction if ev is not None and datapath == "deny" else None,
        "client": probe.outcome,
        "client_verdict": client_verdict,
        "trace": trace_verdict,
        "trace_reason": trace_reason,
        "rules": rules,
        "l7": l7,
        "reason": reason,
        "verdict": datapath,
        "seconds": round(probe.seconds, 3),
    }
    problems = _check(case, res, dst.kind)
    if ev is None and tap.errors:
        problems.append(f"the monitor stream failed: {tap.errors[0]}")
    return CaseResult(**res, passed=not problems, problems=problems)


@contextlib.contextmanager
def _lab_errors() -> Iterator[None]:
    try:
        yield
    except manager.LabError as err:
        raise PolicyTestError(str(err)) from err
    except AgentClientError as err:
        raise PolicyTestError(f"agent: {err}") from err


def run(
    tests: Sequence[PolicyTest],
    *,
    name: str | None = None,
    timeout: float | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
) -> PolicyTestReport:
    """Run every case of ``tests`` in the lab ``name`` (default: the only lab)."""
    with _lab_errors():
        rec = manager.record(name)
        lab = _Lab(rec)
        resolved = []  # resolve every side first: a typo fails the run before any packet
        problems = []
        for test in tests:
            for i, case in enumerate(test.spec.cases):
                try:
                    lab.peers(case)
                except PolicyTestError as err:
                    where = f"{test.filename or '<tests>'}: {KIND} {test.metadata.name}"
                    problems.append(f"{where}: spec.cases[{i}]: {err}")
                resolved.append((test, i + 1, case))
        if problems:
            raise PolicyTestError(problems)
        results: list[CaseResult] = []
        with _Tap([Path(n.socket) for n in rec.nodes]) as tap:
            for test, index, case in resolved:
                result = _run_case(
                    lab, tap, test=test, index=index, case=case,
                    timeout=timeout or test.spec.timeout,
                )  # fmt: skip
                results.append(result)
                if on_case is not None:
                    on_case(result)
    failed = sum(not r.passed for r in results)
    return PolicyTestReport(
        lab=rec.name,
        tests=[t.metadata.name for t in tests],
        cases=results,
        passed=failed == 0,
        failed=failed,
    )
