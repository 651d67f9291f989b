"""``policy trace``: explain a flow from the same map state the datapath uses.

Each side is resolved the way the datapath sees it: a pod or endpoint id is a local endpoint
(its identity, its realized policy); an address is looked up in the endpoints, else in the
ipcache (longest prefix, else world). The verdict comes from the engine's ``trace_flow``, which
simulates the two-lookup LPM rule of ``bpf/lib/policy.h`` on the entries written to the maps. A
default deny is explained as the monitor explains its drops (the policies that selected the
endpoint for that direction), with the near misses: allow rules whose selector matched the peer's
labels but not its namespace. An allow whose entry carries L7 rules says them (and the proxy port
the datapath redirects to): the connection is allowed, its requests are the proxy's to decide.
"""

from __future__ import annotations

from ipaddress import ip_address

from ciliary.agent.endpoints import EndpointError, EndpointManager
from ciliary.agent.policymanager import PolicyManager, endpoint_name, rule_reference
from ciliary.core.flow import drop_reason_text
from ciliary.core.models import Endpoint, TraceHalf, TraceRequest, TraceResponse
from ciliary.policy.explain import DefaultDeny
from ciliary.policy.mapstate import Direction
from ciliary.policy.resolve import EndpointPolicy
from ciliary.policy.trace import TraceResult, trace_flow

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}


def _resolve(
    side: str, endpoints: EndpointManager, policy: PolicyManager
) -> tuple[Endpoint | None, int]:
    eps = endpoints.endpoints()
    if side.isdigit():
        ep = endpoints.get(int(side))
        if ep is None:
            raise EndpointError(f"endpoint {side} not found", 404, "not-found")
        return ep, ep.identity
    try:
        addr = ip_address(side)
    except ValueError:
        ns, _, name = side.rpartition("/")
        ns = ns or "default"
        for ep in eps:
            if ep.namespace == ns and ep.pod_name == name:
                return ep, ep.identity
        raise EndpointError(
            f"no endpoint for pod {ns}/{name} on this node", 404, "not-found"
        ) from None
    for ep in eps:
        if str(addr) in (ep.ipv4, ep.ipv6):
            return ep, ep.identity
    return None, policy.identity_of_address(str(addr))


def _half(  # noqa: PLR0917 - the side, its peer, the verdict, where it came from
    direction: Direction,
    ep: Endpoint | None,
    peer: int,
    result: TraceResult,
    policy: PolicyManager,
    computed: EndpointPolicy | None,
) -> TraceHalf:
    explanation, misses = "", []
    if ep is not None and result.reason == "default deny":
        explanation = DefaultDeny(endpoint_name(ep), direction, result.enforced_by).text
        misses = policy.near_misses(ep, direction, peer)
    # allowed with L7 rules: the proxy decides each request by them (the deciding entry's)
    l7, proxy_port = [], 0
    if computed is not None and result.allowed and result.matched_key is not None:
        found = computed.l7.get(result.matched_key)
        entry = computed.entries.get(result.matched_key)
        l7 = list(found.describe()) if found is not None else []
        proxy_port = entry.proxy_port if entry is not None else 0
    return TraceHalf(
        direction=direction,
        endpoint=f"{ep.id} ({ep.namespace}/{ep.pod_name})" if ep is not None else None,
        allowed=result.allowed,
        reason=result.reason,
        rules=[rule_reference(r) for r in sorted(result.deciding)],
        matched=str(result.matched_key) if result.matched_key is not None else None,
        default_deny_by=[str(p) for p in result.enforced_by],
        explanation=explanation,
        near_misses=misses,
        l7=l7,
        proxy_port=proxy_port,
    )


def trace(req: TraceRequest, endpoints: EndpointManager, policy: PolicyManager) -> TraceResponse:
    src_ep, src_id = _resolve(req.src, endpoints, policy)
    dst_ep, dst_id = _resolve(req.dst, endpoints, policy)

    def pol(ep: Endpoint | None) -> EndpointPolicy | None:
        if ep is None:
            return None
        return policy.realized(ep.id) or policy.compute(ep)

    src_pol, dst_pol = pol(src_ep), pol(dst_ep)
    flow = trace_flow(src_pol, src_id, dst_pol, dst_id, PROTOCOLS[req.protocol], req.port)
    reason = flow.deciding.drop_reason
    return TraceResponse(
        src=req.src,
        src_identity=src_id,
        dst=req.dst,
        dst_identity=dst_id,
        protocol=req.protocol,
        port=req.port,
        allowed=flow.allowed,
        verdict="FORWARDED" if flow.allowed else "DROPPED",
        drop_reason=reason,
        drop_reason_desc=drop_reason_text(reason) if reason else None,
        egress=_half("egress", src_ep, dst_id, flow.egress, policy, src_pol),
        ingress=_half("ingress", dst_ep, src_id, flow.ingress, policy, dst_pol),
    )
