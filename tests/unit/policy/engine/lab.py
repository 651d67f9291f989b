"""A tiny cluster for engine tests: identities, a repository, a selector cache, and trace helpers.

Endpoints are the pod identities (and the host, for host policies); every other identity (world,
CIDRs, remote nodes) is a peer without a policy of its own here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ciliary.policy.api import Policy, parse_policy_text
from ciliary.policy.fqdn import DNSCache
from ciliary.policy.identity import Identity, cidr_identity, reserved_identity
from ciliary.policy.mapstate import PROTO_TCP
from ciliary.policy.repository import Repository
from ciliary.policy.resolve import EndpointPolicy, Mode, NamedPorts, compute
from ciliary.policy.selectorcache import SelectorCache
from ciliary.policy.trace import FlowTrace, TraceResult, trace, trace_flow

NS = "k8s:io.kubernetes.pod.namespace"

HOST = reserved_identity("host")
WORLD = reserved_identity("world")
WORLD4 = reserved_identity("world-ipv4")
WORLD6 = reserved_identity("world-ipv6")
REMOTE_NODE = reserved_identity("remote-node")
APISERVER = reserved_identity("kube-apiserver")
HEALTH = reserved_identity("health")
INIT = reserved_identity("init")
UNMANAGED = reserved_identity("unmanaged")
INGRESS = reserved_identity("ingress")


def pod(
    number: int, namespace: str, namespace_labels: Mapping[str, str] | None = None, **labels: str
) -> Identity:
    """A pod identity: ``k8s:`` labels, its namespace, and its namespace's labels."""
    out = {f"k8s:{k.replace('_', '-')}={v}" for k, v in labels.items()}
    out.add(f"{NS}={namespace}")
    for key, value in (namespace_labels or {}).items():
        out.add(f"k8s:io.cilium.k8s.namespace.labels.{key}={value}")
    return Identity.of(number, out)


def cidr(n: int, prefix: str) -> Identity:
    return cidr_identity(n, prefix)


class Lab:
    """Policies and identities; ``verdict`` traces one direction, ``flow`` a whole connection."""

    def __init__(self, *identities: Identity, mode: Mode = "default") -> None:
        self.repo = Repository()
        self.cache = SelectorCache()
        self.mode: Mode = mode
        self.named_ports: dict[int, NamedPorts] = {}
        self.fqdns: DNSCache | None = None
        for identity in identities:
            self.cache.upsert_identity(identity)

    def apply(self, text: str) -> list[Policy]:
        policies = parse_policy_text(text, "test.yaml")
        self.repo.replace(policies)
        return policies

    def add(self, *identities: Identity) -> None:
        for identity in identities:
            self.cache.upsert_identity(identity)

    def is_endpoint(self, identity: Identity) -> bool:
        return identity.id == HOST.id or 256 <= identity.id < 1 << 24

    def policy(self, subject: Identity, *, allow_localhost: bool = False) -> EndpointPolicy:
        return compute(
            self.repo,
            self.cache,
            subject,
            named_ports=self.named_ports.get(subject.id, {}),
            remote_named_ports=self.named_ports,
            mode=self.mode,
            allow_localhost=allow_localhost,
            fqdns=self.fqdns,
        )

    def ingress(
        self, dst: Identity, src: Identity, protocol: int = PROTO_TCP, port: int = 80
    ) -> TraceResult:
        return trace(self.policy(dst), src.id, protocol, port, "ingress")

    def egress(
        self, src: Identity, dst: Identity, protocol: int = PROTO_TCP, port: int = 80
    ) -> TraceResult:
        return trace(self.policy(src), dst.id, protocol, port, "egress")

    def flow(
        self, src: Identity, dst: Identity, protocol: int = PROTO_TCP, port: int = 80
    ) -> FlowTrace:
        src_policy = self.policy(src) if self.is_endpoint(src) else None
        dst_policy = self.policy(dst) if self.is_endpoint(dst) else None
        return trace_flow(src_policy, src.id, dst_policy, dst.id, protocol, port)

    def allowed(
        self, src: Identity, dst: Identity, protocol: int = PROTO_TCP, port: int = 80
    ) -> bool:
        return self.flow(src, dst, protocol, port).allowed

    def allowed_from(
        self, dst: Identity, sources: Iterable[Identity], protocol: int = PROTO_TCP, port: int = 80
    ) -> set[int]:
        """The sources whose ingress to ``dst`` is allowed."""
        return {s.id for s in sources if self.ingress(dst, s, protocol, port).allowed}
