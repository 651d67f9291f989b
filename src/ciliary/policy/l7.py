"""L7 rules per policy map key: what a proxy allows on the traffic one allow entry lets through.

An allow rule's ``toPorts`` entry may carry ``rules`` (``http``, ``dns``, ``kafka``, ``l7``):
the port's traffic to the entry's peers then goes through a proxy, which allows only the
requests the rules allow (Cilium's ``L4Filter.PerSelectorPolicies``). The policy computation
(:mod:`.resolve`) keeps, next to the map state, every key whose traffic some rule sends to a
proxy, with the L7 rules of every rule behind that key (:attr:`EndpointPolicy.l7`). Several
rules on one key add up, as allows do: a rule allowing the key *without* L7 rules makes the
proxy allow every request (``wildcard``; upstream adds the same wildcard L7 rule when merging),
as does an empty list of the kind (``dns: []``, ``http: []``).

The proxy's question, "may this endpoint ask for this name from that DNS server", is answered
on the same map state the datapath decides with (:func:`.trace.dns_verdict`): the deciding
entry of the two longest-prefix lookups, then the L7 rules of that entry. So the proxy and the
datapath agree on which rule applies by construction; a query the datapath would not have let
through (it never reaches the proxy then) is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from ciliary.policy.api.model import L7Rules
from ciliary.policy.fqdn import selector_matches
from ciliary.policy.mapstate import RuleRef

__all__ = ["L7Kind", "L7Policy"]

L7Kind: TypeAlias = Literal["http", "dns", "kafka", "l7"]


@dataclass(frozen=True, slots=True)
class L7Policy:
    """The L7 side of one allow entry: the proxy ``kind`` and the rules it enforces.

    ``rules`` are the L7 rule sets of ``kind`` of the rules behind the entry; ``wildcard``: one
    of them allows every request (a rule allowing the entry without L7 rules, or an empty
    list of the kind). ``derived_from``: the rules that carried L7 rules.
    """

    kind: L7Kind
    rules: tuple[L7Rules, ...]
    wildcard: bool
    derived_from: frozenset[RuleRef] = frozenset()

    def describe(self) -> tuple[str, ...]:
        """The rules in words, one line per rule (``policy trace``, PolicyTest reports):
        ``http: method=POST path=/v1/request-landing``, ``dns: matchPattern=*.example.com``;
        ``<kind>: every request`` when one allows everything."""
        if self.wildcard:
            return (f"{self.kind}: every request",)
        lines: dict[str, None] = {}
        for rules in self.rules:
            for fields in _rule_fields(rules):
                lines[f"{self.kind}: {' '.join(fields) or 'every request'}"] = None
        return tuple(lines) or (f"{self.kind}: every request",)

    def allows_dns_name(self, name: str) -> bool:
        """Whether a DNS query for ``name`` passes (``matchName``/``matchPattern``)."""
        if self.wildcard:
            return True
        return any(selector_matches(s, name) for r in self.rules for s in r.dns)


def _rule_fields(rules: L7Rules) -> list[list[str]]:
    """Each rule of ``rules`` as its set fields, ``name=value`` in the policy's spelling."""
    out: list[list[str]] = []
    if rules.kind == "http":
        for r in rules.http:
            named = (("method", r.method), ("path", r.path), ("host", r.host))
            fields = [f"{k}={v}" for k, v in named if v is not None]
            fields += [f"header={h}" for h in r.headers]
            for m in r.header_matches:
                fields.append(f"headerMatch={m.name}" + ("" if m.value is None else f"={m.value}"))
            out.append(fields)
    elif rules.kind == "dns":
        for d in rules.dns:
            name = d.match_name
            out.append(
                [f"matchName={name}" if name is not None else f"matchPattern={d.match_pattern}"]
            )
    elif rules.kind == "kafka":
        for k in rules.kafka:
            named_k = (("role", k.role), ("apiKey", k.api_key), ("apiVersion", k.api_version),
                       ("clientID", k.client_id), ("topic", k.topic))  # fmt: skip
            out.append([f"{n}={v}" for n, v in named_k if v is not None])
    else:
        for pairs in rules.l7:
            out.append([f"l7proto={rules.l7proto}", *(f"{k}={v}" for k, v in pairs)])
    return out
