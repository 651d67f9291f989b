"""Policy trace: would this connection be allowed, and by which rule?

The answer comes from *simulating the datapath lookup on the computed map state*, not from
evaluating the rules again: the same two longest-prefix lookups ``bpf/lib/policy.h`` does (the
remote identity, and identity 0), a deny from either wins, else the longer allow decides, else
default deny. So a trace and the datapath agree by construction, and whatever the engine got wrong
shows up in the trace too (the property tests compare traces with an independent evaluator of the
documented semantics).

One direction is traced against the policy of the endpoint it belongs to: ingress against the
destination's policy with the source as remote identity, egress against the source's policy with
the destination as remote identity. A connection between two endpoints needs both
(:func:`trace_flow`); a side that is not an endpoint (the world, another node) has no policy there
and allows everything. Replies of allowed connections are not looked up at all (connection
tracking), so only the first packet's direction matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from ciliary.core.flow import DROP_POLICY, DROP_POLICY_DENY
from ciliary.policy.explain import PolicyRef
from ciliary.policy.identity import WILDCARD_IDENTITY
from ciliary.policy.mapstate import PROTO_TCP, PROTO_UDP, Direction, MapKey, RuleRef
from ciliary.policy.resolve import EndpointPolicy

__all__ = [
    "DNSVerdict", "FlowTrace", "Reason", "TraceResult", "dns_verdict", "trace", "trace_flow",
]  # fmt: skip

Reason: TypeAlias = Literal["allowed", "denied by rule", "default deny", "not enforced"]


@dataclass(frozen=True, slots=True)
class TraceResult:
    """One direction's verdict.

    ``reason``: ``allowed`` (an allow entry of an enforced direction matched), ``denied by rule``
    (a deny entry matched: drop reason 181), ``default deny`` (nothing matched in an enforced
    direction: drop reason 133) or ``not enforced`` (the direction is not enforced and no deny
    matched). ``deciding`` are the rules behind the deciding entry, ``matched_key`` that entry.
    For ``default deny``, ``enforced_by`` are the policies that put the direction into default
    deny (:class:`~ciliary.policy.explain.DefaultDeny` says it in words).
    """

    allowed: bool
    reason: Reason
    deciding: frozenset[RuleRef] = frozenset()
    matched_key: MapKey | None = None
    enforced_by: tuple[PolicyRef, ...] = ()

    @property
    def drop_reason(self) -> int | None:
        """The datapath's drop reason for this verdict (None when allowed)."""
        if self.allowed:
            return None
        return DROP_POLICY_DENY if self.reason == "denied by rule" else DROP_POLICY


def trace(
    policy: EndpointPolicy | None,
    remote_identity: int,
    protocol: int,
    port: int,
    direction: Direction,
) -> TraceResult:
    """The datapath's verdict for a packet of ``protocol`` to ``port`` (ICMP: the type) between
    the endpoint whose ``policy`` this is and ``remote_identity``, in ``direction``. ``policy``
    None: the side is not an endpoint (nothing enforced)."""
    if policy is None:
        return TraceResult(True, "not enforced")
    if not 0 <= port <= 0xFFFF or not 0 <= protocol <= 255:
        raise ValueError(f"bad packet protocol {protocol} / port {port}")
    egress = direction == "egress"
    specific = policy.lookup(remote_identity, egress, protocol, port)
    wildcard = (
        specific
        if remote_identity == WILDCARD_IDENTITY
        else policy.lookup(WILDCARD_IDENTITY, egress, protocol, port)
    )
    for found in (specific, wildcard):
        if found is not None and found[1].deny:
            return TraceResult(False, "denied by rule", found[1].derived_from, found[0])
    best = specific
    if wildcard is not None and (best is None or wildcard[0].prefixlen > best[0].prefixlen):
        best = wildcard
    if best is None:
        return TraceResult(False, "default deny", enforced_by=policy.enforced_by(direction))
    reason: Reason = "allowed" if policy.enforced(direction) else "not enforced"
    return TraceResult(True, reason, best[1].derived_from, best[0])


@dataclass(frozen=True, slots=True)
class FlowTrace:
    """Both halves of a connection: the source's egress, then the destination's ingress."""

    egress: TraceResult
    ingress: TraceResult

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed

    @property
    def deciding(self) -> TraceResult:
        """The half that decided: the first that drops, else the ingress."""
        if not self.egress.allowed:
            return self.egress
        return self.ingress


def trace_flow(  # noqa: PLR0917 - source, then destination, then the packet
    src_policy: EndpointPolicy | None,
    src_identity: int,
    dst_policy: EndpointPolicy | None,
    dst_identity: int,
    protocol: int,
    port: int,
) -> FlowTrace:
    """Trace a new connection from a source to a destination (either may be a non-endpoint: pass
    None as its policy). The egress half is checked against the source's policy, the ingress half
    against the destination's; both must allow."""
    return FlowTrace(
        egress=trace(src_policy, dst_identity, protocol, port, "egress"),
        ingress=trace(dst_policy, src_identity, protocol, port, "ingress"),
    )


@dataclass(frozen=True, slots=True)
class DNSVerdict:
    """The DNS proxy's decision for one query: ``allowed``, and why (``reason``: ``allowed``,
    ``no L7 rule`` (the deciding entry sends nothing to the proxy: allowed), ``name not
    allowed``, ``denied by rule``, ``default deny``); ``key`` the deciding entry, ``rules`` the
    rules behind it."""

    allowed: bool
    reason: str
    key: MapKey | None = None
    rules: frozenset[RuleRef] = frozenset()


def dns_verdict(
    policy: EndpointPolicy | None, server_identity: int, protocol: int, port: int, name: str
) -> DNSVerdict:
    """Whether the endpoint whose egress ``policy`` this is (None: no endpoint, nothing
    enforced) may ask ``name`` from a server of ``server_identity`` on ``protocol``/``port``."""
    if protocol not in (PROTO_UDP, PROTO_TCP):
        raise ValueError(f"DNS over protocol {protocol}: expected UDP (17) or TCP (6)")
    verdict = trace(policy, server_identity, protocol, port, "egress")
    if not verdict.allowed:
        return DNSVerdict(False, verdict.reason, verdict.matched_key, verdict.deciding)
    l7 = None
    if policy is not None and verdict.matched_key is not None:
        l7 = policy.l7.get(verdict.matched_key)
    if l7 is None or l7.kind != "dns":
        return DNSVerdict(True, "no L7 rule", verdict.matched_key, verdict.deciding)
    if l7.allows_dns_name(name):
        return DNSVerdict(True, "allowed", verdict.matched_key, l7.derived_from)
    return DNSVerdict(False, "name not allowed", verdict.matched_key, l7.derived_from)
