"""The service map of one namespace: flows in, workload cards and verdict-colored edges out.

A card is what a person thinks of as one service: the pod's controller (Deployment, DaemonSet,
StatefulSet…, from the flow endpoint's ``workloads``, which our Hubble fills from the pod's
owner references as upstream's does), else the pod itself; endpoints without a pod are shown as
what they are, by their reserved identity (``world``, ``host``, ``remote-node``,
``kube-apiserver``…), and a pod labelled ``k8s-app=kube-dns`` is the cluster's ``kube-dns``. A
card carries its labels (the identity's, without the ones every pod has) and the ports it
listens on (destination ports of the connections that reached or were dropped at it), and
whether it is in the namespace shown (others are peers from another namespace or outside).

An edge is one (source card, destination card, port, protocol), the unit a policy rule speaks
about; its verdict is ``forwarded``, ``dropped`` or ``mixed`` over the flows seen, with the HTTP
methods, paths and status codes of its L7 flows. Replies are not edges: a connection is drawn in
the direction it was opened.

Pure (no I/O): the server feeds it the flows of a stream and sends :meth:`ServiceMap.snapshot`
to the page when :meth:`ServiceMap.add` says the picture changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.printer import flow_ports, reserved_identity_name
from ciliary.hubble.ui.flows import protocol, verdict_class

KUBE_DNS_LABEL = "k8s-app=kube-dns"
L7_VALUES_MAX = 8
"""HTTP methods, paths and codes kept per edge (the first seen)."""

_HIDDEN_LABEL_PREFIXES = ("io.kubernetes.", "io.cilium.k8s.", "io.cilium.")


def _label_text(label: str) -> str:
    """``k8s:app=web`` → ``app=web`` (the source prefix says nothing on a card)."""
    source, sep, rest = label.partition(":")
    return rest if sep and "=" not in source else label


def card_labels(labels: list[str]) -> list[str]:
    """The labels a card shows: the identity's, without namespace/service account/cluster."""
    out = []
    for label in labels:
        text = _label_text(label)
        if label.startswith("reserved:") or text.startswith(_HIDDEN_LABEL_PREFIXES):
            continue
        out.append(text)
    return sorted(set(out))


def pod_card(
    namespace: str, pod: str, labels: list[str], workloads: list[tuple[str, str]]
) -> tuple[str, str, str]:
    """(card id, name, kind) of a pod: ``kube-dns`` for a ``k8s-app=kube-dns`` pod, else its
    first workload (name, kind), else the pod. ``labels`` as the identity has them
    (``k8s:app=web``) or as a card shows them; the policy view names pods read from the API the
    same way, so its workloads are the map's cards."""
    if f"k8s:{KUBE_DNS_LABEL}" in labels or KUBE_DNS_LABEL in labels:
        return f"{namespace}/kube-dns", "kube-dns", "kube-dns"
    if workloads:
        name, kind = workloads[0]
        return f"{namespace}/{kind}/{name}", name, kind
    return f"{namespace}/Pod/{pod}", pod, "Pod"


@dataclass
class Card:
    id: str
    name: str
    namespace: str
    kind: str
    labels: list[str]
    inside: bool
    ports: set[tuple[int, str]] = field(default_factory=set)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "namespace": self.namespace,
            "kind": self.kind,
            "labels": self.labels,
            "inside": self.inside,
            "ports": [f"{port}/{proto}" for port, proto in sorted(self.ports)],
        }


@dataclass
class Edge:
    id: str
    source: str
    target: str
    port: int | None
    protocol: str
    verdicts: set[str] = field(default_factory=set)
    flows: int = 0
    methods: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``forwarded``, ``dropped`` or ``mixed`` (both seen)."""
        if len(self.verdicts) > 1:
            return "mixed"
        return next(iter(self.verdicts), "forwarded")

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "target": self.target,
            "port": self.port,
            "protocol": self.protocol,
            "verdict": self.verdict,
            "flows": self.flows,
            "http": {"methods": self.methods, "paths": self.paths, "codes": self.codes},
        }


def _keep(values: list[Any], value: Any) -> bool:
    """Appends a new value while fewer than L7_VALUES_MAX are kept; True when it did."""
    if value in values or len(values) >= L7_VALUES_MAX:
        return False
    values.append(value)
    return True


class ServiceMap:
    """The cards and edges of ``namespace``'s flows (see the module doc)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.cards: dict[str, Card] = {}
        self.edges: dict[str, Edge] = {}

    def card_of(self, ep: flow_pb2.Endpoint, ip: str) -> Card:
        """The card an endpoint belongs to (made on first sight)."""
        labels = card_labels(list(ep.labels))
        if ep.pod_name:
            ns = ep.namespace
            key, name, kind = pod_card(
                ns,
                ep.pod_name,
                [*ep.labels, *labels],
                [(wl.name, wl.kind) for wl in ep.workloads],
            )
            inside = ns == self.namespace
        else:
            reserved = reserved_identity_name(ep.identity) if ep.identity else None
            if reserved is None:
                reserved = next(
                    (
                        lb.removeprefix("reserved:")
                        for lb in ep.labels
                        if lb.startswith("reserved:")
                    ),
                    None,
                )
            if reserved is not None:
                key, name, kind = f"reserved:{reserved}", reserved, reserved
            else:
                key, name, kind = f"ip:{ip}", ip or "unknown", "ip"
            ns, inside, labels = "", False, [] if reserved is not None else labels
        card = self.cards.get(key)
        if card is None:
            card = Card(key, name, ns, kind, labels, inside)
            self.cards[key] = card
        return card

    def add(self, f: flow_pb2.Flow) -> bool:
        """Takes one flow; True when the map's picture changed (a card, a port, an edge, an
        edge's verdict or L7 values), so that the caller knows to send a new snapshot."""
        if f.HasField("is_reply") and f.is_reply.value:
            return False
        kind = verdict_class(f.verdict)
        if kind == "other":
            return False
        before = len(self.cards)
        src_ip = f.IP.source if f.HasField("IP") else ""
        dst_ip = f.IP.destination if f.HasField("IP") else ""
        src = self.card_of(f.source, src_ip)
        dst = self.card_of(f.destination, dst_ip)
        changed = len(self.cards) != before
        proto = protocol(f)
        _, port_text = flow_ports(f)
        port = int(port_text) if port_text else None
        if port is not None and (port, proto) not in dst.ports:
            dst.ports.add((port, proto))
            changed = True
        edge_id = f"{src.id}->{dst.id}:{port if port is not None else ''}/{proto}"
        edge = self.edges.get(edge_id)
        if edge is None:
            edge = Edge(edge_id, src.id, dst.id, port, proto)
            self.edges[edge_id] = edge
            changed = True
        edge.flows += 1
        if kind not in edge.verdicts:
            edge.verdicts.add(kind)
            changed = True
        if f.HasField("l7") and f.l7.WhichOneof("record") == "http":
            http = f.l7.http
            if http.method:
                changed |= _keep(edge.methods, http.method)
            if http.url:
                changed |= _keep(edge.paths, urlsplit(http.url).path or "/")
            if http.code:
                changed |= _keep(edge.codes, http.code)
        return changed

    def snapshot(self) -> dict[str, Any]:
        """The whole map as the page draws it (cards and edges sorted by id)."""
        return {
            "namespace": self.namespace,
            "cards": [self.cards[k].json() for k in sorted(self.cards)],
            "edges": [self.edges[k].json() for k in sorted(self.edges)],
        }


__all__ = ["Card", "Edge", "ServiceMap", "card_labels", "pod_card"]
