"""What ``toServices`` egress rules select: the endpoint addresses of selector-less Services.

Upstream Cilium (``pkg/k8s`` rule translation, "Services based" in the policy language docs)
allows egress to a Service named by ``k8sService {serviceName, namespace}`` or matched by
``k8sServiceSelector {selector, namespace}`` (on the Service's own labels) only when the Service
has no pod selector: its endpoints are then addresses the cluster does not manage (external
databases, the API server), and the rule allows them as CIDRs, each address a /32 or /128 whose
identity is a local CIDR identity. A Service with a selector is not translated (its pods are
reached with ``toEndpoints``), so such an entry selects nothing; a namespace left out matches
every namespace. The set follows the Services and their EndpointSlices: each change bumps
:attr:`ServiceEndpoints.version`, which the policy computation's cache is keyed on.

Sans-IO: the agent feeds it from its service cache (``agent.policymanager``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_network

from ciliary.policy.api.model import Network, Service

__all__ = ["ServiceEndpoints"]


@dataclass(frozen=True, slots=True)
class _Known:
    labels: Mapping[str, str]
    has_selector: bool
    prefixes: tuple[Network, ...]


@dataclass
class ServiceEndpoints:
    """Services by (namespace, name): their labels, whether they select pods, their endpoint
    addresses (as host prefixes)."""

    version: int = 0
    _known: dict[tuple[str, str], _Known] = field(default_factory=dict)

    def upsert(
        self,
        namespace: str,
        name: str,
        *,
        labels: Mapping[str, str],
        has_selector: bool,
        addresses: Iterable[str],
    ) -> bool:
        """Records a Service; True when what toServices rules select may have changed."""
        prefixes = tuple(sorted({ip_network(a) for a in addresses}, key=str))
        known = _Known(dict(labels), has_selector, prefixes)
        if self._known.get((namespace, name)) == known:
            return False
        self._known[(namespace, name)] = known
        self.version += 1
        return True

    def delete(self, namespace: str, name: str) -> bool:
        if self._known.pop((namespace, name), None) is None:
            return False
        self.version += 1
        return True

    def matching(self, entry: Service) -> list[tuple[str, str]]:
        """The Services (namespace, name) a toServices entry names or selects, selector-less or
        not."""
        out = []
        for (namespace, name), known in sorted(self._known.items()):
            if entry.namespace is not None and entry.namespace != namespace:
                continue
            if entry.name is not None and entry.name != name:
                continue
            if entry.selector is not None and not entry.selector.matches(
                {f"k8s:{k}": v for k, v in known.labels.items()}
            ):
                continue
            out.append((namespace, name))
        return out

    def prefixes(self, entry: Service) -> tuple[Network, ...]:
        """The endpoint addresses a toServices entry allows: those of the selector-less
        Services it matches."""
        found: set[Network] = set()
        for key in self.matching(entry):
            known = self._known[key]
            if not known.has_selector:
                found.update(known.prefixes)
        return tuple(sorted(found, key=str))

    def all_prefixes(self, entries: Iterable[Service]) -> set[Network]:
        out: set[Network] = set()
        for entry in entries:
            out.update(self.prefixes(entry))
        return out

    def has_selector(self, key: tuple[str, str]) -> bool:
        known = self._known.get(key)
        return known is not None and known.has_selector
