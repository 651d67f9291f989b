"""The Hubble UI's policy view and "what if" trace (beyond upstream's UI): for a workload of the
map, what may reach it and what it may reach, per port, and would a connection from a source on
a port be allowed, by which rule.

Computed with the policy engine library — :mod:`ciliary.policy`, the code every agent runs — from
the cluster's objects read from its Kubernetes API (the lab's kubeconfig: ``ciliary lab
kubeconfig``): the CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies and NetworkPolicies
(parsed by the parser the API server validates with), and the pods and namespaces, whose labels
make the security identities (:mod:`ciliary.k8s.podidentity`, the agents' own function). Never
from an agent: the UI stays a client of the relay for flows and of the API for objects, so it
needs no access to the nodes (the same reason upstream's UI is a relay client). The numbers of
the identities are this view's own (a label set is a label set); the entries are the policy map
an agent would compute for the workload (``allow-localhost``, as the agents run), and the trace
is the datapath's two lookups on them (:func:`ciliary.policy.trace.trace_flow`).

A workload's pods share their labels (a controller stamps them from one template); the first pod
of a card stands for it. Pods on the host network are the host, not workloads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ciliary.hubble.ui.servicemap import card_labels, pod_card
from ciliary.k8s.podidentity import security_labels, workload_of
from ciliary.k8s.resources import by_path
from ciliary.kube.client import KubeClient, KubeObject
from ciliary.policy.api import PolicyError, parse_policy_documents
from ciliary.policy.api.documents import api_object_document
from ciliary.policy.api.model import Policy
from ciliary.policy.explain import DefaultDeny
from ciliary.policy.identity import RESERVED_IDENTITIES, Identity, reserved_identity
from ciliary.policy.mapstate import Direction, MapKey, RuleRef
from ciliary.policy.repository import Repository
from ciliary.policy.resolve import EndpointPolicy, compute
from ciliary.policy.selectorcache import SelectorCache
from ciliary.policy.trace import TraceResult, trace_flow

PODS = by_path("", "v1", "pods")
NAMESPACES = by_path("", "v1", "namespaces")
POLICY_TYPES = (
    by_path("cilium.io", "v2", "ciliumnetworkpolicies"),
    by_path("cilium.io", "v2", "ciliumclusterwidenetworkpolicies"),
    by_path("networking.k8s.io", "v1", "networkpolicies"),
)
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPV6": 58}
_PROTOCOL_NAMES = {v: ("ICMPv6" if k == "ICMPV6" else k) for k, v in PROTOCOLS.items()}
RESERVED_SOURCES = ("world", "host", "remote-node", "kube-apiserver")
"""Peers of the what-if besides the workloads (``reserved:<name>`` ids)."""
FIRST_IDENTITY = 256


class PolicyViewError(ValueError):
    """A request the view cannot answer (unknown workload, bad port); the message says which."""


@dataclass
class Workload:
    id: str
    name: str
    namespace: str
    kind: str
    identity: Identity
    labels: list[str]

    @property
    def shown(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Cluster:
    """One read of the cluster: its policies and its workloads with their identities."""

    repo: Repository
    cache: SelectorCache
    workloads: dict[str, Workload]
    refused: list[str] = field(default_factory=list)
    """Policy objects the parser refused (the agents refuse them too): one line each."""

    def _names(self, identity: int) -> list[str]:
        if identity == 0:
            return ["any"]
        if identity < FIRST_IDENTITY:
            reserved = next((i for i in RESERVED_IDENTITIES if i.id == identity), None)
            labels = sorted(reserved.labels) if reserved else []
            return [lb.removeprefix("reserved:") for lb in labels[:1]] or [str(identity)]
        names = [w.shown for w in self.workloads.values() if w.identity.id == identity]
        return sorted(names) or [str(identity)]

    def policy(self, workload: Workload) -> EndpointPolicy:
        return compute(self.repo, self.cache, workload.identity, allow_localhost=True)

    def workload(self, card: str) -> Workload:
        found = self.workloads.get(card)
        if found is None:
            raise PolicyViewError(f"workload {card!r}: no running pod of it in the cluster")
        return found

    def view(self, card: str) -> dict[str, Any]:
        """What may reach the workload (ingress) and what it may reach (egress), per port."""
        w = self.workload(card)
        pol = self.policy(w)
        return {
            "workload": {"id": w.id, "name": w.shown, "kind": w.kind, "labels": w.labels},
            "ingress": self._direction(pol, "ingress"),
            "egress": self._direction(pol, "egress"),
            "refused": self.refused,
        }

    def _direction(self, pol: EndpointPolicy, direction: Direction) -> dict[str, Any]:
        egress = direction == "egress"
        ports: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
        for key, entry in pol.entries.items():
            if key.egress != egress:
                continue
            ports.setdefault((key.protocol, key.port, key.port_prefix), []).append(
                {
                    "peers": self._names(key.identity),
                    "verdict": "denied" if entry.deny else "allowed",
                    "rules": _policies(entry.derived_from)
                    or [_implicit(key.identity, egress, pol.enforced(direction))],
                }
            )
        return {
            "enforced": pol.enforced(direction),
            "enforced_by": [str(p) for p in pol.enforced_by(direction)],
            "ports": [
                {
                    "port": _port_text(MapKey(0, egress, *k)),
                    "peers": sorted(v, key=lambda p: (p["verdict"], p["peers"])),
                }
                for k, v in sorted(ports.items())
            ],
        }

    def _peer(self, card: str) -> tuple[Workload | None, int, str]:
        if card.startswith("reserved:"):
            name = card.removeprefix("reserved:")
            try:
                return None, reserved_identity(name).id, name
            except (KeyError, ValueError):
                raise PolicyViewError(f"source {card!r}: no such reserved identity") from None
        w = self.workload(card)
        return w, w.identity.id, w.shown

    def what_if(self, source: str, destination: str, protocol: str, port: int) -> dict[str, Any]:
        """Would a new connection from ``source`` to ``destination`` on protocol/port be allowed,
        and what decided: the source's egress, then the destination's ingress."""
        proto = PROTOCOLS.get(protocol.upper())
        if proto is None:
            raise PolicyViewError(
                f"protocol {protocol!r}: expected one of {', '.join(_PROTOCOL_NAMES.values())}"
            )
        if not 0 <= port <= 0xFFFF:
            raise PolicyViewError(f"port {port}: expected 0..65535")
        src, src_id, src_name = self._peer(source)
        dst, dst_id, dst_name = self._peer(destination)
        ft = trace_flow(
            self.policy(src) if src else None,
            src_id,
            self.policy(dst) if dst else None,
            dst_id,
            proto,
            port,
        )
        decided = ft.deciding
        direction: Direction = "egress" if decided is ft.egress else "ingress"
        owner = src_name if direction == "egress" else dst_name
        return {
            "source": src_name,
            "destination": dst_name,
            "port": f"{port}/{_PROTOCOL_NAMES[proto]}",
            "allowed": ft.allowed,
            "direction": direction,
            "reason": decided.reason,
            "policies": _policies(decided.deciding),
            "rules": sorted(str(r) for r in decided.deciding),
            "enforced_by": [str(p) for p in decided.enforced_by],
            "text": _explain(decided, direction, owner),
        }


def _implicit(identity: int, egress: bool, enforced: bool) -> str:
    """Why an entry without rules is there."""
    if not enforced:
        return "(no policy selects it for this direction)"
    if identity == 1 and not egress:
        return "(the host: allow-localhost, as the agents run)"
    return "(implicit)"


def _explain(decided: TraceResult, direction: Direction, owner: str) -> str:
    if decided.reason == "default deny":
        return "default deny: " + DefaultDeny(owner, direction, decided.enforced_by).text
    names = ", ".join(_policies(decided.deciding))
    if decided.reason == "denied by rule":
        return f"denied at {direction} by {names}"
    if decided.reason == "not enforced":
        return f"allowed: no policy selects {owner} for {direction}"
    return f"allowed at {direction} by {names}"


def _policies(refs: Iterable[RuleRef]) -> list[str]:
    return sorted(
        {f"{r.policy_kind} {r.name if r.namespace is None else f'{r.namespace}/{r.name}'}"
         for r in refs}
    )  # fmt: skip


def _port_text(key: MapKey) -> str:
    if key.protocol == 0:
        return "any"
    proto = _PROTOCOL_NAMES.get(key.protocol, str(key.protocol))
    if key.port_prefix == 0:
        return f"any/{proto}"
    if key.port_prefix == 16:
        return f"{key.port}/{proto}"
    last = key.port | ((1 << (16 - key.port_prefix)) - 1)
    return f"{key.port}-{last}/{proto}"


async def _items(client: KubeClient, rt: Any) -> list[KubeObject]:
    items: list[KubeObject] = []
    token: str | None = None
    while True:
        page = await client.list(rt, limit=500, continue_token=token)
        items.extend(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue") or None
        if not token:
            return items


def build(
    policy_objects: Iterable[tuple[str, str, KubeObject]],
    pods: Iterable[KubeObject],
    namespaces: Iterable[KubeObject],
) -> Cluster:
    """The view of a cluster from its objects (pure: the unit tests call it directly);
    ``policy_objects`` are (apiVersion, kind, object)."""
    policies: list[Policy] = []
    refused: list[str] = []
    for api_version, kind, obj in policy_objects:
        meta = obj.get("metadata") or {}
        where = f"{kind} {meta.get('namespace', '')}/{meta.get('name', '')}".replace(" /", " ")
        doc = api_object_document(obj)  # as the agents parse it (a list's items may lack the
        doc.setdefault("apiVersion", api_version)  # type: the list's)
        doc.setdefault("kind", kind)
        try:
            policies += parse_policy_documents([(1, doc)], where)
        except PolicyError as err:
            refused.append(f"{where}: {err}")
    repo = Repository()
    repo.replace(policies)
    ns_labels = {
        str((ns.get("metadata") or {}).get("name")): dict(
            (ns.get("metadata") or {}).get("labels") or {}
        )
        for ns in namespaces
    }
    numbers: dict[tuple[str, ...], int] = {}
    workloads: dict[str, Workload] = {}
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        meta = pod.get("metadata") or {}
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        sec = security_labels(ns, labels, ns_labels.get(ns))
        card, wname, kind = pod_card(ns, name, list(sec), list(workload_of(pod)))
        if card in workloads:
            continue
        number = numbers.setdefault(sec, FIRST_IDENTITY + len(numbers))
        workloads[card] = Workload(
            card, wname, ns, kind, Identity.of(number, sec), card_labels(list(sec))
        )
    cache = SelectorCache()
    for identity in RESERVED_IDENTITIES:
        cache.upsert_identity(identity)
    for w in workloads.values():
        cache.upsert_identity(w.identity)
    return Cluster(repo, cache, workloads, refused)


class PolicySource:
    """The cluster's API, read again for every question (policies change; a lab is small)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self._client: KubeClient | None = None

    async def read(self) -> Cluster:
        if self._client is None:
            self._client = await KubeClient.connect(self.kubeconfig)
        client = self._client
        objects = [
            (rt.api_version, rt.kind, obj)
            for rt in POLICY_TYPES
            for obj in await _items(client, rt)
        ]
        return build(objects, await _items(client, PODS), await _items(client, NAMESPACES))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


__all__ = [
    "RESERVED_SOURCES",
    "Cluster",
    "PolicySource",
    "PolicyViewError",
    "Workload",
    "build",
]
