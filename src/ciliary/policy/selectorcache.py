"""The selector cache: which known identities each peer selector selects, kept up to date.

Policy peers are written as selectors (``fromEndpoints`` label selectors, entities, CIDRs); the
policy map needs identity numbers. Cilium resolves this once per distinct selector in its
``SelectorCache`` (``pkg/policy/selectorcache.go``): every selector any rule uses is matched against
every known identity once, and when an identity appears, changes or goes away, only the selections
it enters or leaves change, and the cache says which, so only the endpoints whose policy uses those
selectors need regenerating. This is that cache, without the locking and user callbacks (the agent
asks which selectors changed and maps them to endpoints through
:attr:`ciliary.policy.resolve.EndpointPolicy.selectors`).

Peer selectors are small frozen values, compared by value, so two rules writing the same selector
share one cache entry:

- :class:`LabelPeer`: an endpoint label selector (``fromRequires`` already folded in);
- :class:`EntityPeer`: an entity (:func:`ciliary.policy.identity.entity_selects`);
- :class:`CIDRPeer`: a CIDR minus its ``except`` prefixes. As Cilium does
  (``CIDRRule``/``ComputeResultantCIDRSet``), the CIDR is first cut into the largest prefixes that
  avoid every exception, and the peer selects the identities labelled ``cidr:`` with one of them;
  because a CIDR identity carries the labels of all its supernets, that is every CIDR identity
  whose prefix lies inside the CIDR and outside every exception. A piece that is a whole address
  family (``0.0.0.0/0``) also selects that family's world identity (``reserved:world-ipv4``), as
  Cilium's ``CIDRSlice.GetAsEndpointSelectors`` adds the world selector for ``/0``.

A selector that selects everything (an empty label selector, the entity ``all``) is still answered
here, but the policy map uses identity 0 for it (:func:`is_wildcard`), as Cilium does for its
wildcard selector, so that peers not yet known are covered too.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

from ciliary.policy.api.labels import LabelSet
from ciliary.policy.api.model import Entity, Network
from ciliary.policy.api.selector import Selector
from ciliary.policy.identity import (
    LABEL_WORLD_IPV4,
    LABEL_WORLD_IPV6,
    RESERVED_IDENTITIES,
    Identity,
    cidr_label,
    entity_selects,
)

__all__ = [
    "CIDRPeer",
    "EntityPeer",
    "LabelPeer",
    "PeerSelector",
    "SelectorCache",
    "cidr_blocks",
    "is_wildcard",
]


@dataclass(frozen=True, slots=True)
class LabelPeer:
    """An endpoint label selector (``from/toEndpoints``, requirements folded in)."""

    selector: Selector

    def selects(self, identity: Identity, labels: LabelSet) -> bool:
        return self.selector.matches(labels)

    def __str__(self) -> str:
        return f"endpoints({self.selector})"


@dataclass(frozen=True, slots=True)
class EntityPeer:
    """A ``from/toEntities`` entity."""

    entity: Entity

    def selects(self, identity: Identity, labels: LabelSet) -> bool:
        return entity_selects(self.entity, identity)

    def __str__(self) -> str:
        return f"entity({self.entity})"


@dataclass(frozen=True, slots=True)
class CIDRPeer:
    """A ``from/toCIDR(Set)`` entry: ``cidr`` minus ``except_cidrs``."""

    cidr: Network
    except_cidrs: tuple[Network, ...] = ()

    @property
    def labels(self) -> frozenset[str]:
        """The labels any one of which makes an identity selected."""
        return _cidr_peer_labels(self.cidr, self.except_cidrs)

    def selects(self, identity: Identity, labels: LabelSet) -> bool:
        return not self.labels.isdisjoint(identity.labels)

    def __str__(self) -> str:
        if not self.except_cidrs:
            return f"cidr({self.cidr})"
        return f"cidr({self.cidr} except {', '.join(map(str, self.except_cidrs))})"


PeerSelector: TypeAlias = LabelPeer | EntityPeer | CIDRPeer


def is_wildcard(peer: PeerSelector) -> bool:
    """Whether ``peer`` selects every identity, known or not (the map uses identity 0)."""
    if isinstance(peer, LabelPeer):
        return peer.selector.is_wildcard
    return isinstance(peer, EntityPeer) and peer.entity == "all"


def cidr_blocks(cidr: Network, excepts: Iterable[Network] = ()) -> list[Network]:
    """The largest prefixes covering ``cidr`` minus ``excepts`` (in address order)."""
    relevant = [e for e in excepts if e.version == cidr.version and e.overlaps(cidr)]
    if not relevant:
        return [cidr]
    if any(cidr.subnet_of(e) for e in relevant):  # type: ignore[arg-type]
        return []
    low, high = cidr.subnets(prefixlen_diff=1)
    return cidr_blocks(low, relevant) + cidr_blocks(high, relevant)


@functools.lru_cache(maxsize=4096)
def _cidr_peer_labels(cidr: Network, excepts: tuple[Network, ...]) -> frozenset[str]:
    labels: set[str] = set()
    for block in cidr_blocks(cidr, excepts):
        labels.add(cidr_label(block))
        if block.prefixlen == 0:
            labels.add(LABEL_WORLD_IPV4 if block.version == 4 else LABEL_WORLD_IPV6)
    return frozenset(labels)


_IndexLabel: TypeAlias = tuple[str, str | None] | None


def _index_label(peer: PeerSelector) -> _IndexLabel:
    """A label every identity ``peer`` selects has, (key, value) or (key, None) for the key
    alone (:attr:`Selector.index_label`); None: no such label, or not a label selector."""
    return peer.selector.index_label if isinstance(peer, LabelPeer) else None


def _index_of(labels: LabelSet) -> frozenset[tuple[str, str | None]]:
    """What an identity is indexed under: each (key, value) and each (key, None)."""
    pairs = labels.pairs()
    return pairs | {(key, None) for key, _ in pairs}


class SelectorCache:
    """Known identities and, per peer selector in use, the identities it selects.

    Starts with the reserved identities (they always exist). ``version`` goes up with every change
    of the known identities, so a computed policy can tell whether it is still current, and
    :meth:`unchanged_since` tells whether the selections it used are.

    Selectors and identities are both indexed by label key and value (:attr:`Selector.index_label`,
    sources aside): a new selector is matched only against the identities with its label (or its
    key, for a selector whose first requirement is an expression), a new or changed identity only
    against the selectors whose label it has (or had), plus those without one (entities, CIDRs,
    selectors of only ``NotIn``/``DoesNotExist``).
    """

    _uids = itertools.count(1)

    def __init__(self, identities: Iterable[Identity] = RESERVED_IDENTITIES) -> None:
        self.uid = next(SelectorCache._uids)
        """Distinguishes caches (a computed policy is only valid for the cache it came from)."""
        self._version = 0
        self._drops = 0
        self._identities: dict[int, Identity] = {}
        self._label_sets: dict[int, LabelSet] = {}
        self._by_label: dict[tuple[str, str | None], set[int]] = {}
        """(key, value) and (key, None) → the identities with such a label (any source)."""
        self._selected: dict[PeerSelector, set[int]] = {}
        self._peers_by_label: dict[_IndexLabel, set[PeerSelector]] = {}
        self._changed_at: dict[PeerSelector, int] = {}
        """Per kept selector, the version at which its selection was made or last changed."""
        self._frozen: dict[PeerSelector, frozenset[int]] = {}
        for identity in identities:
            self.upsert_identity(identity)

    @property
    def version(self) -> int:
        return self._version

    @property
    def drops(self) -> int:
        """How many times :meth:`retain` dropped selectors (a user of selections made before
        must ask for them again to keep them tracked)."""
        return self._drops

    def identities(self) -> Mapping[int, Identity]:
        """The known identities by number (a read-only view)."""
        return MappingProxyType(self._identities)

    def get(self, number: int) -> Identity | None:
        return self._identities.get(number)

    def selectors(self) -> frozenset[PeerSelector]:
        """The selectors whose selections are being kept."""
        return frozenset(self._selected)

    def unchanged_since(self, peers: Iterable[PeerSelector], version: int) -> bool:
        """Whether every one of ``peers`` is kept and selects what it selected at ``version``
        (a selector dropped by :meth:`retain` meanwhile counts as changed)."""
        changed_at = self._changed_at
        return all(changed_at.get(peer, version + 1) <= version for peer in peers)

    def _peers_for(self, index: Iterable[tuple[str, str | None]]) -> set[PeerSelector]:
        """The selectors that may select an identity with the labels ``index`` stands for."""
        by_label = self._peers_by_label
        found = set(by_label.get(None, ()))
        for label in index:
            found.update(by_label.get(label, ()))
        return found

    def upsert_identity(self, identity: Identity) -> frozenset[PeerSelector]:
        """Add an identity, or change the labels of a known one. Returns the selectors whose
        selections changed (an identity added with labels nobody selects changes none)."""
        old = self._identities.get(identity.id)
        if old == identity:
            return frozenset()
        label_set = LabelSet(identity.labels)
        index = _index_of(label_set)
        old_index = _index_of(self._label_sets[identity.id]) if old is not None else frozenset()
        for label in old_index - index:
            self._by_label[label].discard(identity.id)
        for label in index:
            self._by_label.setdefault(label, set()).add(identity.id)
        self._identities[identity.id] = identity
        self._label_sets[identity.id] = label_set
        self._version += 1
        changed: list[PeerSelector] = []
        for peer in self._peers_for(old_index | index):
            selected = self._selected[peer]
            hit = peer.selects(identity, label_set)
            if hit != (identity.id in selected):
                if hit:
                    selected.add(identity.id)
                else:
                    selected.discard(identity.id)
                changed.append(peer)
        for peer in changed:
            self._frozen.pop(peer, None)
            self._changed_at[peer] = self._version
        return frozenset(changed)

    def remove_identity(self, number: int) -> frozenset[PeerSelector]:
        """Forget an identity. Returns the selectors that had selected it."""
        if self._identities.pop(number, None) is None:
            return frozenset()
        index = _index_of(self._label_sets.pop(number))
        for label in index:
            self._by_label[label].discard(number)
        self._version += 1
        changed: list[PeerSelector] = []
        for peer in self._peers_for(index):
            selected = self._selected[peer]
            if number in selected:
                selected.discard(number)
                changed.append(peer)
        for peer in changed:
            self._frozen.pop(peer, None)
            self._changed_at[peer] = self._version
        return frozenset(changed)

    def selections(self, peer: PeerSelector) -> frozenset[int]:
        """The known identities ``peer`` selects; the selector is kept from now on (until
        :meth:`retain` drops it) and updated as identities come and go."""
        frozen = self._frozen.get(peer)
        if frozen is not None:
            return frozen
        selected = self._selected.get(peer)
        if selected is None:
            key = _index_label(peer)
            candidates = self._identities if key is None else self._by_label.get(key, ())
            label_sets = self._label_sets
            identities = self._identities
            selected = {
                number
                for number in candidates
                if peer.selects(identities[number], label_sets[number])
            }
            self._selected[peer] = selected
            self._peers_by_label.setdefault(key, set()).add(peer)
            self._changed_at[peer] = self._version
        frozen = frozenset(selected)
        self._frozen[peer] = frozen
        return frozen

    def retain(self, peers: Iterable[PeerSelector]) -> int:
        """Stop keeping every selector not in ``peers`` (those no policy uses any more).
        Returns how many were dropped."""
        keep = set(peers)
        gone = [peer for peer in self._selected if peer not in keep]
        for peer in gone:
            del self._selected[peer]
            self._peers_by_label[_index_label(peer)].discard(peer)
            self._frozen.pop(peer, None)
            self._changed_at.pop(peer, None)
        if gone:
            self._drops += 1
        return len(gone)
