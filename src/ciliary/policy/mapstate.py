"""Policy map state: the entries an endpoint's policy map must hold, and how the datapath reads
them.

The datapath (``bpf/lib/policy.h``) keeps one LPM trie per endpoint, keyed by (remote identity,
direction, protocol, destination port prefix), and decides each new connection with two lookups:

1. the remote identity's longest matching entry, and identity 0's ("any peer") longest match;
2. a deny from either lookup wins;
3. otherwise the longer of the two allows decides (the identity-specific one on a tie);
4. no match at all: default deny (drop reason 133, ``POLICY_DENIED``).

Within one identity a wildcard protocol (prefix 40) or a port range (port prefix < 16) is simply a
shorter prefix, so the longest-prefix match returns the most specific entry. That is what makes
"deny beats allow at any specificity" (Cilium's rule, ``Documentation/security/policy/deny.rst``)
need care: a deny of all ports and a more specific allow of port 80, for the same identity, would
let the lookup find the allow. So the map state never keeps an allow entry that a deny entry covers
(same direction, and same identity or identity 0, and the deny's prefix a prefix of the allow's):
that allow could never decide anything, since every packet it matches is denied anyway. With that,
the two-lookup rule answers exactly "denied if any deny entry matches, else allowed if any allow
entry matches, else default deny", which is the documented semantics. (Cilium reaches the same end
with ``denyPreferredInsert`` in ``pkg/policy/mapstate.go``.)

This module is datapath-neutral (the agent converts :class:`MapKey`/:class:`MapEntry` one-to-one to
``ciliary.datapath.maps.policy.PolicyKey``/``PolicyValue``, the cookie naming
:attr:`MapEntry.derived_from`): keys, entries, the port-range cut, the map-state builder, the LPM
lookup the datapath performs (for :mod:`ciliary.policy.trace`) and the diff between two states.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from ciliary.core.ports import port_range_prefixes
from ciliary.policy.api.model import PolicyKind

__all__ = [
    "BASE_PREFIX",
    "FULL_PREFIX",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_SCTP",
    "PROTO_TCP",
    "PROTO_UDP",
    "Direction",
    "LPMIndex",
    "MapEntry",
    "MapKey",
    "MapStateBuilder",
    "RuleRef",
    "allow_all_key",
    "diff",
    "keys_for_ports",
    "lookup",
    "map_key",
    "port_range_prefixes",
]

Direction: TypeAlias = Literal["ingress", "egress"]

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58
PROTO_SCTP: Final = 132

BASE_PREFIX: Final = 40
"""Key prefix length of an entry for every protocol and port: identity (32) + direction (8)."""
FULL_PREFIX: Final = 64
"""Key prefix length of an exact (identity, direction, protocol, port) entry."""


@dataclass(frozen=True, order=True, slots=True)
class MapKey:
    """One policy map key, as ``struct policy_key`` with its LPM prefix.

    ``protocol`` 0 means every protocol (then ``port`` and ``port_prefix`` are 0); ``port_prefix``
    is how many high bits of ``port`` are significant (16: exactly that port, 0: every port).
    ICMP keys carry the ICMP type in ``port``.
    """

    identity: int
    egress: bool
    protocol: int = 0
    port: int = 0
    port_prefix: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.identity < 1 << 32:
            raise ValueError(f"identity {self.identity} outside 0..2^32-1")
        if not 0 <= self.protocol <= 255:
            raise ValueError(f"protocol {self.protocol} outside 0..255")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} outside 0..65535")
        if not 0 <= self.port_prefix <= 16:
            raise ValueError(f"port prefix {self.port_prefix} outside 0..16")
        if self.protocol == 0 and (self.port or self.port_prefix):
            raise ValueError("a port needs a protocol")
        if self.port & ~_port_mask(self.port_prefix):
            raise ValueError(f"port {self.port} has bits set beyond its /{self.port_prefix}")

    @property
    def direction(self) -> Direction:
        return "egress" if self.egress else "ingress"

    @property
    def prefixlen(self) -> int:
        """The LPM prefix length (40 for every protocol, 48 + port prefix otherwise)."""
        if self.protocol == 0:
            return BASE_PREFIX
        return BASE_PREFIX + 8 + self.port_prefix

    def matches(self, protocol: int, port: int) -> bool:
        """Whether a packet of ``protocol`` to ``port`` (ICMP: type) falls under this key's
        protocol/port part (identity and direction are the caller's to compare)."""
        if self.protocol == 0:
            return True
        return self.protocol == protocol and port & _port_mask(self.port_prefix) == self.port

    def covers(self, other: MapKey) -> bool:
        """Whether every packet ``other`` matches also matches this key's protocol/port part
        (this key's prefix is a prefix of ``other``'s; identities are not compared)."""
        if self.egress != other.egress:
            return False
        if self.protocol == 0:
            return True
        return (
            self.protocol == other.protocol
            and self.port_prefix <= other.port_prefix
            and other.port & _port_mask(self.port_prefix) == self.port
        )

    def __str__(self) -> str:
        proto = {0: "any", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}.get(
            self.protocol, str(self.protocol)
        )
        if self.protocol == 0:
            where = "any"
        elif self.port_prefix == 0:
            where = f"{proto}/*"
        elif self.port_prefix == 16:
            where = f"{proto}/{self.port}"
        else:
            last = self.port | (~_port_mask(self.port_prefix) & 0xFFFF)
            where = f"{proto}/{self.port}-{last}"
        return f"{self.direction} id={self.identity} {where}"


def _port_mask(prefix: int) -> int:
    return (0xFFFF << (16 - prefix)) & 0xFFFF


_KeyParts: TypeAlias = tuple[int, bool, int, int, int]
_keys: dict[_KeyParts, MapKey] = {}
_KEYS_LIMIT: Final = 1 << 18
"""Keys kept by :func:`map_key`; past this many all are forgotten at once."""


def map_key(
    identity: int, egress: bool, protocol: int = 0, port: int = 0, port_prefix: int = 0
) -> MapKey:
    """``MapKey(identity, egress, protocol, port, port_prefix)``, the same object for the same
    parts: computing a map state makes each key once per peer rule and target (~10k for one
    identity at 1k rules), and a checked frozen key costs ~10x a dictionary lookup."""
    parts = (identity, egress, protocol, port, port_prefix)
    key = _keys.get(parts)
    if key is None:
        key = MapKey(identity, egress, protocol, port, port_prefix)
        if len(_keys) >= _KEYS_LIMIT:
            _keys.clear()
        _keys[parts] = key
    return key


def allow_all_key(egress: bool) -> MapKey:
    """The key of a direction that is not enforced: every identity, protocol and port."""
    return MapKey(0, egress)


@dataclass(frozen=True, order=True, slots=True)
class RuleRef:
    """Which rule (and which of its peer entries) an entry came from."""

    policy_key: str
    policy_kind: PolicyKind
    namespace: str | None
    name: str
    rule_index: int
    direction: Direction
    deny: bool
    peer_index: int

    def __str__(self) -> str:
        where = self.name if self.namespace is None else f"{self.namespace}/{self.name}"
        section = self.direction + ("Deny" if self.deny else "")
        return f"{self.policy_kind} {where} rule {self.rule_index} {section}[{self.peer_index}]"


@dataclass(frozen=True, slots=True)
class MapEntry:
    """What a key does: allow or deny, and the rules that put it there (empty for the allow-all
    entry of a direction that is not enforced). ``proxy_port`` (host order, 0 = none): an allow
    whose traffic goes to the node's L7 proxy listening there (upstream's ``ProxyPort``; set by
    :func:`ciliary.policy.resolve.with_proxy_ports`)."""

    deny: bool
    derived_from: frozenset[RuleRef] = frozenset()
    proxy_port: int = 0


class MapStateBuilder:
    """Collects allow and deny keys with the rules behind them, then produces the map state:
    deny wins on an equal key, and allows covered by a deny are dropped (see the module doc)."""

    def __init__(self) -> None:
        self._allow: dict[MapKey, set[RuleRef]] = {}
        self._deny: dict[MapKey, set[RuleRef]] = {}

    def add(self, key: MapKey, deny: bool, ref: RuleRef | None = None) -> None:
        refs = (self._deny if deny else self._allow).setdefault(key, set())
        if ref is not None:
            refs.add(ref)

    def __len__(self) -> int:
        return len(self._allow) + len(self._deny)

    def build(self) -> dict[MapKey, MapEntry]:
        denies: dict[tuple[int, bool], list[MapKey]] = {}
        for key in self._deny:
            denies.setdefault((key.identity, key.egress), []).append(key)
        out: dict[MapKey, MapEntry] = {}
        for key, refs in self._deny.items():
            out[key] = MapEntry(True, frozenset(refs))
        for key, refs in self._allow.items():
            if key in out or self._covered(key, denies):
                continue
            out[key] = MapEntry(False, frozenset(refs))
        # in key order (MapKey's own ordering, compared as plain tuples: ~10x faster)
        return dict(sorted(out.items(), key=_entry_order))

    @staticmethod
    def _covered(key: MapKey, denies: Mapping[tuple[int, bool], list[MapKey]]) -> bool:
        if not denies:
            return False
        for identity in {key.identity, 0}:
            for deny in denies.get((identity, key.egress), ()):
                if deny.covers(key):
                    return True
        return False


def _entry_order(item: tuple[MapKey, object]) -> tuple[int, bool, int, int, int]:
    key = item[0]
    return key.identity, key.egress, key.protocol, key.port, key.port_prefix


def _candidates(identity: int, egress: bool, protocol: int, port: int) -> Iterator[MapKey]:
    """Every key a packet could match for one identity, longest prefix first."""
    if protocol:
        for prefix in range(16, -1, -1):
            yield MapKey(identity, egress, protocol, port & _port_mask(prefix), prefix)
    yield MapKey(identity, egress)


def lookup(
    entries: Mapping[MapKey, MapEntry], identity: int, egress: bool, protocol: int, port: int
) -> tuple[MapKey, MapEntry] | None:
    """The longest-prefix match for one identity, as the LPM trie lookup answers it."""
    if not 0 <= port <= 0xFFFF or not 0 <= protocol <= 255:
        raise ValueError(f"bad packet protocol {protocol} / port {port}")
    for key in _candidates(identity, egress, protocol, port):
        entry = entries.get(key)
        if entry is not None:
            return key, entry
    return None


class LPMIndex:
    """The entries arranged for fast lookups: per (identity, direction, protocol), only the port
    prefix lengths present are tried, longest first. Answers exactly as :func:`lookup`."""

    __slots__ = ("_any", "_ports")

    def __init__(self, entries: Mapping[MapKey, MapEntry]) -> None:
        self._any: dict[tuple[int, bool], tuple[MapKey, MapEntry]] = {}
        ports: dict[tuple[int, bool, int], dict[tuple[int, int], tuple[MapKey, MapEntry]]] = {}
        for key, entry in entries.items():
            if key.protocol == 0:
                self._any[key.identity, key.egress] = (key, entry)
            else:
                group = ports.setdefault((key.identity, key.egress, key.protocol), {})
                group[key.port, key.port_prefix] = (key, entry)
        self._ports = {
            where: (sorted({prefix for _, prefix in group}, reverse=True), group)
            for where, group in ports.items()
        }

    def lookup(
        self, identity: int, egress: bool, protocol: int, port: int
    ) -> tuple[MapKey, MapEntry] | None:
        found = self._ports.get((identity, egress, protocol))
        if found is not None:
            prefixes, group = found
            for prefix in prefixes:
                hit = group.get((port & _port_mask(prefix), prefix))
                if hit is not None:
                    return hit
        return self._any.get((identity, egress))


def diff(
    old: Mapping[MapKey, MapEntry], new: Mapping[MapKey, MapEntry]
) -> tuple[dict[MapKey, MapEntry], frozenset[MapKey]]:
    """(entries to write, keys to delete) to turn ``old`` into ``new``. Applying them in a safe
    order (new denies, removed allows, new allows, removed denies) is the datapath's job
    (``EndpointPolicyMap.apply``)."""
    to_set = {key: entry for key, entry in new.items() if old.get(key) != entry}
    to_delete = frozenset(key for key in old if key not in new)
    return to_set, to_delete


def keys_for_ports(identity: int, egress: bool, protocol: int, lo: int, hi: int) -> list[MapKey]:
    """The keys of ``protocol`` ports (ICMP: types) ``lo``..``hi`` for one identity (``0``..
    ``65535`` is the single every-port key)."""
    return [
        MapKey(identity, egress, protocol, port, prefix)
        for port, prefix in port_range_prefixes(lo, hi)
    ]
