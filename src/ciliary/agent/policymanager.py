"""The agent's side of network policy: the engine's repository and selector cache, fed with
this node's identities, turned into each endpoint's BPF policy map.

Where things come from:
  * policies: with a Kubernetes API, its CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies
    and NetworkPolicies (``agent/k8s/policies.py``'s informers call :meth:`upsert_policies` and
    :meth:`remove_policies`), the same set on every node; without one (a standalone agent, the
    CNI tests' runtime), the policies imported through this agent's own API (validated, all or
    nothing), kept as their documents in its state directory (``policies.json``) so that they
    survive a restart, and nowhere else;
  * identities: the endpoint identity allocator (pods) plus node-local CIDR identities
    (``1<<24 | n``) for every prefix a CIDR rule names, which are also written to the ipcache so
    the datapath resolves those addresses to them;
  * named ports of other identities (egress rules naming the destination's port): the endpoint
    manager hands over every local pod's declared container ports with its identity
    (:meth:`PolicyManager.set_remote_named_ports`); the endpoints whose egress rules use a name
    whose resolution changed are regenerated (:meth:`PolicyManager.affected_by_ports`).
Selectors: every repository change (API event, import, delete, load at start) ends with
:meth:`PolicyManager.retain_selectors`: each realized endpoint's policy is computed anew (the
regeneration that follows finds it memoized) and the selector cache drops every selector none of
them uses any more (those of deleted or replaced rules).
Ordering contract: an endpoint's map is complete before the endpoint is marked ready; when a new
identity appears, endpoints whose peer selectors now select it are regenerated before the new
endpoint is reported ready, so its first packet meets up-to-date peers. Map updates go through
``EndpointPolicyMap.apply``/``write`` (denies before allows are removed, …): never a
window where traffic that must be denied passes. A realized endpoint's map gets only the
difference from what was realized last (nothing when the engine's shared result is unchanged), so
a rule change costs the endpoints it touches, not every endpoint of the node; the endpoints whose
map states moved the same way share one ``PolicyChange``, written with at most four batch
syscalls per endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from typing import Any

from ciliary.core.atomicfile import read_json, write_json
from ciliary.core.models import (
    Endpoint,
    EndpointPolicyStatus,
    IdentityInfo,
    PolicyMapEntry,
    PolicySummary,
    RuleReference,
    ServiceInfo,
)
from ciliary.core.proxyports import ProxyPorts
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.policy import PolicyChange, PolicyKey, PolicyValue
from ciliary.policy.api import Policy, PolicyError, parse_policy_documents
from ciliary.policy.api.documents import load_yaml
from ciliary.policy.api.model import FQDNSelector
from ciliary.policy.api.model import Service as ServiceEntry
from ciliary.policy.explain import DefaultDeny, near_misses
from ciliary.policy.fqdn import DNSCache
from ciliary.policy.identity import RESERVED_LABELS, Identity, cidr_identity
from ciliary.policy.mapstate import Direction, MapEntry, MapKey, RuleRef, diff
from ciliary.policy.repository import Repository
from ciliary.policy.resolve import (
    EndpointPolicy,
    Mode,
    NamedPorts,
    compute,
    merge_named_ports,
    with_proxy_ports,
)
from ciliary.policy.selectorcache import SelectorCache, cidr_blocks
from ciliary.policy.services import ServiceEndpoints

log = logging.getLogger(__name__)
Network = IPv4Network | IPv6Network
PROTOCOL_NAMES = {0: "any", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
SAVED_POLICIES = "policies.json"
_CONVERTED_LIMIT = 512
"""Map states (and differences) kept converted; past this many all are forgotten at once."""
"""In a standalone agent's state directory: ``{"policies": {key: {source, index, document}}}``."""


def rule_reference(ref: RuleRef) -> RuleReference:
    return RuleReference(
        policy=ref.policy_key,
        kind=ref.policy_kind,
        namespace=ref.namespace,
        name=ref.name,
        rule_index=ref.rule_index,
        section=ref.direction + ("Deny" if ref.deny else ""),
        peer_index=ref.peer_index,
    )


def endpoint_name(ep: Endpoint) -> str:
    """``namespace/pod`` of an endpoint (``endpoint ID`` when it has no pod)."""
    return f"{ep.namespace}/{ep.pod_name}" if ep.pod_name else f"endpoint {ep.id}"


def ports_text(key: MapKey) -> str:
    if key.protocol == 0 or key.port_prefix == 0:
        return "any"
    if key.port_prefix == 16:
        return str(key.port)
    last = key.port | ((1 << (16 - key.port_prefix)) - 1)
    return f"{key.port}-{last}"


class PolicyManager:
    def __init__(
        self,
        *,
        datapath: NodeDatapath,
        saved: Path | None = None,
        mode: Mode = "default",
        identity_labels: Callable[[int], tuple[str, ...] | None],
        all_identities: Callable[[], Iterable[tuple[int, tuple[str, ...]]]],
        fqdns: DNSCache | None = None,
        proxy_ports: ProxyPorts | None = None,
    ) -> None:
        self._dp = datapath
        self._saved = saved / SAVED_POLICIES if saved is not None else None
        """Where imported policies are kept (a standalone agent); None: memory only."""
        self._documents: dict[str, dict[str, Any]] = {}
        """Imported policies' documents by key ({source, index, document}), as saved."""
        self._mode: Mode = mode
        self._labels_of = identity_labels
        self.repo = Repository()
        self.cache = SelectorCache()
        self._cookies: dict[frozenset[RuleRef], int] = {}
        self._per_identity: dict[
            tuple[int, tuple[str, ...], frozenset[tuple[str, tuple[int, str]]] | None],
            EndpointPolicy,
        ] = {}
        """The engine's result per (identity, its labels, named ports), valid for ``_epoch``:
        the repository's revision, the selector cache's version and drops, the service and DNS
        data's versions and the remote named ports object (replaced whenever they are set)."""
        self._epoch: tuple[int, ...] = ()
        self._converted: dict[
            int, tuple[Mapping[MapKey, MapEntry], dict[PolicyKey, PolicyValue]]
        ] = {}
        """Map states (by id, the object kept so the id stays its own) as the map's keys and
        values: endpoints sharing a computed policy share its conversion."""
        self._converted_changes: dict[
            tuple[int, int],
            tuple[Mapping[MapKey, MapEntry], Mapping[MapKey, MapEntry], PolicyChange],
        ] = {}
        """The same for the difference between two map states."""
        self._by_cookie: dict[int, frozenset[RuleRef]] = {}
        self._cidr_ids: dict[Network, Identity] = {}
        self.services = ServiceEndpoints()
        """The Services toServices rules select from (fed by the service cache)."""
        self._service_entries: list[ServiceEntry] = []
        """Every toServices entry of the repository's policies (what a Service change can
        affect)."""
        self.fqdns = fqdns if fqdns is not None else DNSCache()
        self._proxy_ports = proxy_ports
        """The node's L7 proxies: L7 entries get their ports (None: allowed at L4)."""
        """The DNS answers toFQDNs rules select IPs from (``--tofqdns-pre-cache``, expiry)."""
        self._fqdn_entries: list[FQDNSelector] = []
        """Every toFQDNs entry of the repository's policies."""
        self._fqdn_allowed: tuple[Network, ...] = ()
        """What those entries select, as the last sync of the CIDR identities wrote it."""
        self._realized: dict[int, EndpointPolicy] = {}
        self._inputs: dict[int, tuple[Endpoint, dict[str, tuple[int, str]] | None]] = {}
        self._remote_ports: Mapping[int, NamedPorts] = {}
        self._listeners: list[Callable[[], None]] = []
        self.on_realized: list[Callable[[int], None]] = []
        """Called with an endpoint's id after its policy was realized or forgotten (the
        node's Envoy follows the L7 rules of every endpoint's realized policy)."""
        for number, labels in all_identities():
            self.cache.upsert_identity(Identity.of(number, labels))

    # ---- identities --------------------------------------------------------------------------

    def identity_added(self, number: int, labels: Iterable[str]) -> frozenset[Any]:
        """Make the selector cache know an identity; returns the selectors whose selection
        changed (the caller regenerates the endpoints that depend on them)."""
        return self.cache.upsert_identity(Identity.of(number, labels))

    def identity_removed(self, number: int) -> frozenset[Any]:
        """Forget an identity (deleted in the cluster); returns the selectors that had selected
        it (the caller regenerates the endpoints that depend on them)."""
        return self.cache.remove_identity(number)

    def set_remote_named_ports(
        self, declarations: Iterable[tuple[int, Mapping[str, tuple[int, str]]]]
    ) -> frozenset[str]:
        """The named ports egress rules resolve against: (identity, one pod's named ports) for
        every pod this node knows. Returns the names whose resolution changed for some identity
        (the caller regenerates :meth:`affected_by_ports` of them)."""
        new = merge_named_ports(declarations)
        old = self._remote_ports
        changed: set[str] = set()
        for identity in set(old) | set(new):
            before = old.get(identity, {})
            after = new.get(identity, {})
            changed.update(n for n in set(before) | set(after) if before.get(n) != after.get(n))
        self._remote_ports = new
        return frozenset(changed)

    def remote_named_ports(self) -> Mapping[int, NamedPorts]:
        return self._remote_ports

    def identities(self, endpoints: list[Endpoint]) -> list[IdentityInfo]:
        users: dict[int, list[int]] = {}
        for ep in endpoints:
            users.setdefault(ep.identity, []).append(ep.id)
        return [
            IdentityInfo(
                id=ident.id,
                labels=sorted(ident.labels),
                reserved=ident.is_reserved,
                endpoints=sorted(users.get(ident.id, [])),
            )
            for ident in sorted(self.cache.identities().values(), key=lambda i: i.id)
        ]

    # ---- policies ----------------------------------------------------------------------------

    def load_saved(self) -> int:
        """Load the policies a standalone agent saved before it restarted (a document the parser
        refuses now is logged and left out: it never reaches the datapath); returns how many."""
        if self._saved is None or not self._saved.exists():
            return 0
        try:
            saved = read_json(self._saved).get("policies") or {}
        except (OSError, ValueError, AttributeError) as err:
            raise PolicyError(f"{self._saved}: unreadable saved policies: {err}") from err
        policies: list[Policy] = []
        for key, body in saved.items():
            try:
                parsed = parse_policy_documents(
                    [(int(body["index"]), body["document"])], str(body["source"])
                )
            except (PolicyError, KeyError, TypeError, ValueError) as err:
                log.error("%s: ignoring saved policy %s: %s", self._saved, key, err)
                continue
            self._documents[key] = body
            policies += parsed
        if policies:
            self.repo.replace(policies)
            self._repository_changed()
        return len(policies)

    def _save(self) -> None:
        if self._saved is not None:
            write_json(self._saved, {"policies": self._documents})

    def upsert_policies(self, policies: Iterable[Policy]) -> None:
        """Add or replace policies (by key) that arrived from the Kubernetes API: the
        repository and the derived state follow at once (the caller regenerates endpoints)."""
        self.repo.replace(list(policies))
        self._repository_changed()

    def remove_policies(self, keys: Iterable[str]) -> bool:
        """Remove the policies of these keys that the repository holds; True if any was."""
        present = [k for k in keys if self.repo.get(k) is not None]
        if present:
            self.repo.delete(present)
            self._repository_changed()
        return bool(present)

    def import_text(self, text: str, filename: str) -> list[str]:
        """Validate (raises PolicyError, nothing applied), save, apply; returns the keys."""
        docs = load_yaml(text, filename)
        if not docs:
            raise PolicyError(f"{filename}: the file has no documents (expected policy documents)")
        policies = parse_policy_documents(docs, filename)
        bodies = dict(docs)
        before = dict(self._documents)
        for p in policies:
            index = int(p.source.rsplit(":", 1)[1])
            self._documents[p.key] = {"source": filename, "index": index, "document": bodies[index]}
        try:
            self._save()
        except OSError:
            self._documents = before
            raise
        self.repo.replace(policies)
        self._repository_changed()
        return [p.key for p in policies]

    def delete(self, keys: list[str] | None) -> list[str]:
        targets = [p.key for p in self.repo.policies()] if keys is None else keys
        unknown = [k for k in targets if self.repo.get(k) is None]
        if unknown:
            raise KeyError(f"no such policy: {', '.join(unknown)}")
        if targets:
            for key in targets:
                self._documents.pop(key, None)
            self._save()
            self.repo.delete(targets)
            self._repository_changed()
        return targets

    def service_changed(self, namespace: str, name: str, svc: ServiceInfo | None) -> bool:
        """A Service or its endpoints changed (``svc`` as the service cache now has it, None:
        deleted). True when what toServices rules allow changed: the CIDR identities have
        followed, and the caller must regenerate every endpoint, as after a policy event."""
        before = self._services_allowed()
        if svc is None:
            changed = self.services.delete(namespace, name)
        else:
            changed = self.services.upsert(
                namespace, name, labels=svc.labels, has_selector=svc.selector is not None,
                addresses=[b.address for b in svc.backends],
            )  # fmt: skip
        if not changed or self._services_allowed() == before:
            return False
        self._repository_changed()
        return True

    def _services_allowed(self) -> list[tuple[Network, ...]]:
        return [self.services.prefixes(entry) for entry in self._service_entries]

    def dns_changed(self, change: Callable[[DNSCache], object]) -> bool:
        """Applies ``change`` to the DNS cache (an answer, an expiry). True when what toFQDNs
        rules allow changed: the CIDR identities have followed, and the caller must regenerate
        every endpoint, as after a policy event."""
        version = self.fqdns.version
        change(self.fqdns)
        if self.fqdns.version == version:  # nothing changed (most expiry checks): no scan
            return False
        if self.fqdns.prefixes(self._fqdn_entries) == self._fqdn_allowed:
            return False
        self._repository_changed()
        return True

    def add_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after every change of the repository (API event, import, delete,
        load at start), once the derived state (CIDR identities, selector cache) follows it."""
        self._listeners.append(listener)

    def _repository_changed(self) -> None:
        self._sync_cidr_identities()
        self.retain_selectors()
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("policy change listener failed")

    def summaries(self) -> list[PolicySummary]:
        return [
            PolicySummary(
                key=p.key,
                kind=p.kind,
                namespace=p.namespace,
                name=p.name,
                source=p.source,
                rules=len(p.rules),
            )
            for p in sorted(self.repo.policies(), key=lambda p: p.key)
        ]

    def _sync_cidr_identities(self) -> None:
        """Local identities (and ipcache entries) for exactly the prefixes CIDR rules name, and
        those toServices and toFQDNs entries select now."""
        wanted: set[Network] = set()
        service_entries: list[ServiceEntry] = []
        fqdn_entries: list[FQDNSelector] = []
        for pol in self.repo.policies():
            for rule in pol.rules:
                for peer in (*rule.ingress, *rule.egress, *rule.ingress_deny, *rule.egress_deny):
                    for cidr in peer.cidrs:
                        if cidr.cidr is None:  # cidrGroupRef entries carry no prefix
                            continue
                        wanted.add(cidr.cidr)
                        wanted.update(cidr.except_cidrs)
                        # the block minus its exceptions, as the selector cache selects it
                        wanted.update(cidr_blocks(cidr.cidr, cidr.except_cidrs))
                    service_entries.extend(peer.services)
                    wanted.update(self.services.all_prefixes(peer.services))
                    fqdn_entries.extend(peer.fqdns)
        self._service_entries = service_entries
        self._fqdn_entries = fqdn_entries
        self._fqdn_allowed = self.fqdns.prefixes(fqdn_entries)
        wanted.update(self._fqdn_allowed)
        for prefix in [p for p in self._cidr_ids if p not in wanted]:
            ident = self._cidr_ids.pop(prefix)
            self._dp.ipcache.delete(prefix)
            self.cache.remove_identity(ident.id)
        used = {i.id & 0xFFFFFF for i in self._cidr_ids.values()}
        n = 1
        for prefix in sorted(wanted - set(self._cidr_ids), key=str):
            while n in used:
                n += 1
            ident = cidr_identity(n, prefix)
            used.add(n)
            self._cidr_ids[prefix] = ident
            self.cache.upsert_identity(ident)
            # pod and node addresses keep their own /32 entries (longer prefixes win)
            self._dp.ipcache.upsert(prefix, ident.id)

    # ---- endpoints ---------------------------------------------------------------------------

    def _cookie(self, refs: frozenset[RuleRef]) -> int:
        if not refs:
            return 0
        found = self._cookies.get(refs)
        if found is None:
            found = len(self._cookies) + 1
            self._cookies[refs] = found
            self._by_cookie[found] = refs
        return found

    def rules_of_cookie(self, cookie: int) -> list[RuleReference]:
        return [rule_reference(r) for r in sorted(self._by_cookie.get(cookie, frozenset()))]

    def compute(
        self, ep: Endpoint, named_ports: dict[str, tuple[int, str]] | None = None
    ) -> EndpointPolicy:
        # a reserved identity's endpoint (the health endpoint) is selected by its own labels
        labels = self._labels_of(ep.identity) or tuple(sorted(RESERVED_LABELS.get(ep.identity, ())))
        # endpoints of one identity share its result (until anything it is computed from moves)
        epoch = (
            self.repo.revision, self.cache.version, self.cache.drops, self.services.version,
            self.fqdns.version, id(self._remote_ports),
        )  # fmt: skip
        if epoch != self._epoch:
            self._epoch = epoch
            self._per_identity.clear()
        key = (ep.identity, labels, frozenset(named_ports.items()) if named_ports else None)
        pol = self._per_identity.get(key)
        if pol is None:
            # As Cilium in Kubernetes mode (allow-localhost=always): the node itself always
            # reaches its pods (kubelet probes); deny rules still win over it.
            pol = compute(
                self.repo, self.cache, Identity.of(ep.identity, labels),
                named_ports=named_ports or {}, remote_named_ports=self._remote_ports,
                mode=self._mode, allow_localhost=True, services=self.services, fqdns=self.fqdns,
            )  # fmt: skip
            if self._proxy_ports is not None:  # fixed for the manager's life
                pol = with_proxy_ports(pol, self._proxy_ports)
            self._per_identity[key] = pol
        return pol

    def realize(
        self, ep: Endpoint, named_ports: dict[str, tuple[int, str]] | None = None
    ) -> EndpointPolicy:
        """Write the endpoint's computed policy into its map (or drop the map: not enforced).

        Only what differs from the policy realized last is written, without reading the map
        back; nothing at all when the engine handed out the same map state (a change elsewhere,
        or a shared result kept). The first time, and after a write that failed, the map is
        compared with what the kernel holds. ``on_realized`` hears of changed map states only."""
        pol = self.compute(ep, named_ports)
        old = self._realized.pop(ep.id, None)  # a failed write below leaves no stale base
        enforced = pol.ingress_enforced or pol.egress_enforced
        was_enforced = old is not None and (old.ingress_enforced or old.egress_enforced)
        same = old is not None and old.entries is pol.entries and was_enforced == enforced
        if not same:
            if not enforced:
                self._dp.policy.remove(ep.id)
            elif old is not None and was_enforced:
                self._write_changes(ep.id, old, pol)
            else:
                self._write_whole(ep.id, pol)
        self._realized[ep.id] = pol
        self._inputs[ep.id] = (ep, named_ports)
        if not same:
            for fn in self.on_realized:
                fn(ep.id)
        return pol

    @staticmethod
    def _key(k: MapKey) -> PolicyKey:
        return PolicyKey(k.identity, k.egress, k.protocol, k.port, k.port_prefix)

    def _value(self, e: MapEntry) -> PolicyValue:
        return PolicyValue(e.deny, self._cookie(e.derived_from), e.proxy_port)

    def _write_changes(self, ep_id: int, old: EndpointPolicy, pol: EndpointPolicy) -> None:
        """The map, which holds ``old``, made equal to ``pol`` by writing the difference."""
        inner = self._dp.policy.get(ep_id)
        if inner is None:  # gone meanwhile: write it whole
            self._write_whole(ep_id, pol)
            return
        try:
            inner.write(self._changes(old.entries, pol.entries))
        finally:
            inner.close()

    def _changes(
        self, old: Mapping[MapKey, MapEntry], new: Mapping[MapKey, MapEntry]
    ) -> PolicyChange:
        """The change (entries to write, entries to delete with their values) from ``old`` to
        ``new``, converted; made once per pair of map states, so the endpoints sharing them
        share it and its batches are built once."""
        key = (id(old), id(new))
        found = self._converted_changes.get(key)
        if found is None or found[0] is not old or found[1] is not new:
            changed, stale = diff(old, new)
            found = (
                old,
                new,
                PolicyChange(
                    {self._key(k): self._value(e) for k, e in changed.items()},
                    {self._key(k): self._value(old[k]) for k in stale},
                ),
            )
            if len(self._converted_changes) >= _CONVERTED_LIMIT:
                self._converted_changes.clear()
            self._converted_changes[key] = found
        return found[2]

    def _desired(self, entries: Mapping[MapKey, MapEntry]) -> dict[PolicyKey, PolicyValue]:
        """``entries`` as the map's keys and values; converted once per map state."""
        found = self._converted.get(id(entries))
        if found is None or found[0] is not entries:
            found = (entries, {self._key(k): self._value(e) for k, e in entries.items()})
            if len(self._converted) >= _CONVERTED_LIMIT:
                self._converted.clear()
            self._converted[id(entries)] = found
        return found[1]

    def _write_whole(self, ep_id: int, pol: EndpointPolicy) -> None:
        """The map made equal to ``pol`` against what the kernel holds (created if missing)."""
        desired = self._desired(pol.entries)
        inner = self._dp.policy.ensure(ep_id, desired)
        try:
            inner.apply(desired)
        finally:
            inner.close()

    def forget(self, ep_id: int) -> None:
        self._dp.policy.remove(ep_id)
        self._realized.pop(ep_id, None)
        self._inputs.pop(ep_id, None)
        for fn in self.on_realized:
            fn(ep_id)

    def affected(self, changed: frozenset[Any]) -> list[int]:
        """Endpoints whose realized policy depends on one of the changed selectors."""
        return [ep for ep, pol in self._realized.items() if pol.selectors & changed]

    def affected_by_ports(self, names: Iterable[str]) -> list[int]:
        """Endpoints whose realized policy has egress rules on one of these port names."""
        wanted = frozenset(names)
        if not wanted:
            return []
        return [ep for ep, pol in self._realized.items() if pol.egress_port_names & wanted]

    def retain_selectors(self) -> int:
        """Let the selector cache forget every selector the endpoints' policies under the
        current repository do not depend on. Returns how many were dropped; a later computation
        that needs one again re-adds it. (Until the endpoints are regenerated, a realized policy
        may still name a dropped selector: it belongs to a rule that is gone, so the identity
        changes it would miss no longer matter.)"""
        used: set[Any] = set()
        inputs = {
            (ep.identity, frozenset(named_ports.items()) if named_ports else None): (
                ep,
                named_ports,
            )
            for ep, named_ports in self._inputs.values()
        }  # endpoints of one identity with the same ports: one computation
        seen: set[int] = set()
        for ep, named_ports in inputs.values():
            selectors = self.compute(ep, named_ports).selectors
            if id(selectors) not in seen:  # results are shared: union each set once
                seen.add(id(selectors))
                used |= selectors
        dropped = self.cache.retain(used)
        if dropped:
            log.debug("selector cache: dropped %d unused selectors", dropped)
        return dropped

    def realized(self, ep_id: int) -> EndpointPolicy | None:
        return self._realized.get(ep_id)

    def default_deny(self, ep_id: int, direction: Direction) -> DefaultDeny | None:
        """Why endpoint ``ep_id``'s ``direction`` drops what no rule allows (a default-deny
        drop's explanation: the datapath's event names the endpoint and the direction); None
        when the endpoint is unknown or the direction is not enforced."""
        pol = self._realized.get(ep_id)
        inputs = self._inputs.get(ep_id)
        if pol is None or inputs is None or not pol.enforced(direction):
            return None
        return DefaultDeny(endpoint_name(inputs[0]), direction, pol.enforced_by(direction))

    def near_misses(self, ep: Endpoint, direction: Direction, peer_identity: int) -> list[str]:
        """Allow rules selecting ``ep`` whose selector for ``direction`` matched the peer's
        labels but not its namespace (see :func:`ciliary.policy.explain.near_misses`)."""
        labels = self._labels_of(ep.identity) or ()
        peer = self._labels_of(peer_identity)
        if self._mode == "never" or peer is None:
            return []
        return list(near_misses(self.repo.rules_for(labels), direction, peer))

    def status(self, ep: Endpoint) -> EndpointPolicyStatus:
        pol = self._realized.get(ep.id) or self.compute(ep)
        counters: dict[PolicyKey, tuple[int, int]] = {}
        inner = self._dp.policy.get(ep.id)
        if inner is not None:
            try:
                counters = {r.key: (r.packets, r.bytes) for r in inner.items()}
            finally:
                inner.close()
        entries = []
        for key, entry in sorted(pol.entries.items()):
            pk = PolicyKey(key.identity, key.egress, key.protocol, key.port, key.port_prefix)
            packets, nbytes = counters.get(pk, (0, 0))
            entries.append(self._entry(key, entry, packets, nbytes))
        return EndpointPolicyStatus(
            endpoint_id=ep.id, identity=ep.identity, revision=pol.revision,
            ingress_enforced=pol.ingress_enforced, egress_enforced=pol.egress_enforced,
            policies=list(pol.policies), entries=entries, unsupported=list(pol.unsupported),
            ingress_enforced_by=[str(p) for p in pol.ingress_enforced_by],
            egress_enforced_by=[str(p) for p in pol.egress_enforced_by],
        )  # fmt: skip

    @staticmethod
    def _entry(key: MapKey, entry: MapEntry, packets: int, nbytes: int) -> PolicyMapEntry:
        return PolicyMapEntry(
            direction="egress" if key.egress else "ingress",
            identity=key.identity,
            protocol=PROTOCOL_NAMES.get(key.protocol, str(key.protocol)),
            ports=ports_text(key),
            action="deny" if entry.deny else "allow",
            rules=[rule_reference(r) for r in sorted(entry.derived_from)],
            packets=packets,
            bytes=nbytes,
            proxy_port=entry.proxy_port,
        )

    def identity_of_address(self, addr: str) -> int:
        """What the datapath would resolve an address to (ipcache longest match, else world)."""
        return self.identity_of_ip(ip_address(addr))

    def identity_of_ip(self, addr: IPv4Address | IPv6Address) -> int:
        """:meth:`identity_of_address` of an address already parsed."""
        found = self._dp.ipcache.lookup(addr)
        if found is not None:
            return found
        return 9 if addr.version == 4 else 10
