"""DNS names for ``toFQDNs``: Cilium's name patterns and the DNS cache they select IPs from.

``toFQDNs`` allows egress to the IPs that DNS gave for some names. The names come with the
policy (``matchName``, ``matchPattern``), the IPs from DNS answers the agent saw (its DNS proxy;
``--tofqdns-pre-cache`` at start): this module keeps both halves and joins them, sans-IO.

Patterns (Cilium's ``pkg/fqdn/matchpattern``): names and patterns are compared lowercase and
without the trailing dot (the policy parser normalizes them so). ``*`` alone matches every name;
``*`` inside a label matches any run of DNS characters (``[-a-zA-Z0-9_]``) within that label, never
a dot (``*.cilium.io`` matches ``sub.cilium.io``, not ``cilium.io`` nor ``a.b.cilium.io``); a
leading ``**.`` matches one or more whole labels (``**.cilium.io`` matches ``a.b.cilium.io``).

The cache (Cilium's ``pkg/fqdn`` ``DNSCache``): each (name, IP) lives until the lookup time plus
its TTL, raised to ``min_ttl`` (``--tofqdns-min-ttl``, default 0 as upstream since 1.13); a name
keeps at most ``max_ips_per_name`` IPs (``--tofqdns-endpoint-max-ip-per-hostname``), the ones
expiring last (the others become zombies, as expired answers do at :meth:`DNSCache.expire`).
Every change bumps :attr:`DNSCache.version`, which the policy computation's cache is keyed on,
as the service data of ``toServices`` (:mod:`.services`). Each selected IP becomes a host
prefix, whose identity is a local CIDR identity (as toCIDR's), so the datapath needs nothing
new.

An expired (name, IP) does not leave the selectors at once: it becomes a zombie
(:mod:`.dnszombies`), still selected, until a conntrack GC pass has found no connection using
the IP (:meth:`DNSCache.gc`); the saved cache keeps zombies (``"source": "connection"``
entries) so they survive an agent restart.

Not yet (upstream has them): per-endpoint caches (one cache per node here).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import ip_address, ip_network

from ciliary.core.models import FQDN_SOURCE_CONNECTION, FQDN_SOURCE_LOOKUP
from ciliary.policy.api.model import FQDNSelector, Network
from ciliary.policy.dnszombies import (
    DEFAULT_MAX_DEFERRED_DELETES,
    DNSZombies,
    ZombieCollection,
)

__all__ = [
    "DEFAULT_MAX_IPS_PER_NAME",
    "DNSCache",
    "DNSLookup",
    "normalize_name",
    "pattern_regex",
    "selector_matches",
]

DEFAULT_MAX_IPS_PER_NAME = 1000  # upstream's --tofqdns-endpoint-max-ip-per-hostname
_DNS_CHARS = "[-a-zA-Z0-9_]"


def _address_order(ip: str) -> tuple[int, int]:
    addr = ip_address(ip)
    return addr.version, int(addr)


def normalize_name(name: str) -> str:
    """``Example.COM.`` → ``example.com`` (how names are compared)."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


@lru_cache(maxsize=4096)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The anchored regex of a ``matchPattern`` (normalized as the policy parser does)."""
    pattern = normalize_name(pattern)
    if pattern == "*":
        return re.compile(f"{_DNS_CHARS}+(?:[.]{_DNS_CHARS}+)*")
    prefix = ""
    if pattern.startswith("**."):
        prefix, pattern = f"{_DNS_CHARS}+(?:[.]{_DNS_CHARS}+)*[.]", pattern[3:]
    body = "[.]".join(
        f"{_DNS_CHARS}*".join(re.escape(part) for part in label.split("*"))
        for label in pattern.split(".")
    )
    return re.compile(prefix + body)


def selector_matches(selector: FQDNSelector, name: str) -> bool:
    """Whether a ``toFQDNs`` entry (or DNS rule) selects the DNS name ``name``."""
    name = normalize_name(name)
    if selector.match_name is not None:
        return normalize_name(selector.match_name) == name
    assert selector.match_pattern is not None
    return pattern_regex(selector.match_pattern).fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class DNSLookup:
    """One answer: ``name`` resolved to ``ips`` at ``lookup_time`` (epoch seconds) for ``ttl``."""

    name: str
    ips: tuple[str, ...]
    ttl: int
    lookup_time: float


@dataclass
class DNSCache:
    """Names → IPs with their expiry, and what ``toFQDNs`` selectors select of them."""

    min_ttl: int = 0
    max_ips_per_name: int = DEFAULT_MAX_IPS_PER_NAME
    max_deferred_deletes: int = DEFAULT_MAX_DEFERRED_DELETES
    """--tofqdns-max-deferred-connection-deletes: zombies kept at most (0: none)."""
    version: int = 0
    _expires: dict[str, dict[str, float]] = field(default_factory=dict)  # name → IP → expiry
    _by_ip: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    """IP → its names, sorted (:meth:`names_of`), built again when ``version`` moved."""
    _by_ip_version: int = field(default=-1, compare=False, repr=False)
    zombies: DNSZombies = field(init=False, compare=False, repr=False)
    """The IPs of expired answers, selected until no connection uses them."""

    def __post_init__(self) -> None:
        self.zombies = DNSZombies(self.max_deferred_deletes, self.max_ips_per_name)

    def update(self, lookup: DNSLookup) -> bool:
        """Records an answer; True when the names' IPs changed (not only their expiry)."""
        name = normalize_name(lookup.name)
        expiry = lookup.lookup_time + max(lookup.ttl, self.min_ttl)
        entries = self._expires.setdefault(name, {})
        before = set(entries)
        revived = False
        for ip in lookup.ips:
            key = str(ip_address(ip))
            entries[key] = max(entries.get(key, 0.0), expiry)
            revived |= self.zombies.forget(name, key)
        if len(entries) > self.max_ips_per_name:  # keep those expiring last
            keep = sorted(entries, key=lambda k: entries[k], reverse=True)
            for gone in keep[self.max_ips_per_name :]:
                del entries[gone]
                if gone in before:  # selected until now: a connection may use it (upstream's)
                    self.zombies.upsert(gone, (name,), lookup.lookup_time)
        changed = set(entries) != before
        self.version += changed or revived
        return changed

    def expire(self, now: float) -> set[str]:
        """Moves what expired at ``now`` to the zombies (pending from ``now``: see
        :mod:`.dnszombies`); the names that lost answers (their IPs stay selected)."""
        lost: set[str] = set()
        for name, entries in list(self._expires.items()):
            for ip in [ip for ip, at in entries.items() if at <= now]:
                del entries[ip]
                self.zombies.upsert(ip, (name,), now)
                lost.add(name)
            if not entries:
                del self._expires[name]
        self.version += bool(lost)
        return lost

    def collect_zombies(self) -> ZombieCollection:
        """Removes the zombies no connection used in the last complete conntrack GC pass (and
        those over the limits): their IPs leave the selectors."""
        collected = self.zombies.collect()
        self.version += bool(collected.dead)
        return collected

    def gc(self, now: float) -> ZombieCollection:
        """The DNS GC (upstream's, every second here): :meth:`expire` then
        :meth:`collect_zombies`."""
        self.expire(now)
        return self.collect_zombies()

    def lookup(self, name: str) -> list[str]:
        """The IPs of ``name`` (sorted)."""
        return sorted(self._expires.get(normalize_name(name), {}), key=_address_order)

    def entries(self) -> list[tuple[str, str, float]]:
        """(name, IP, expiry) of every entry, by name then IP (``ciliary fqdn cache list``)."""
        return [
            (name, ip, self._expires[name][ip])
            for name in sorted(self._expires)
            for ip in self.lookup(name)
        ]

    def names(self) -> list[str]:
        return sorted(self._expires)

    def names_of(self, ip: str) -> tuple[str, ...]:
        """The names (normalized: no trailing dot, as upstream's ``GetNamesOf``) an address
        was an answer of, sorted; () when none. Hubble's ``source_names`` /
        ``destination_names``: called per flow, so a dictionary lookup (``ip`` in
        ``str(ip_address(...))`` form) on an index rebuilt only when the IPs changed."""
        if self._by_ip_version != self.version:
            by_ip: dict[str, list[str]] = {}
            for name in sorted(self._expires):
                for addr in self._expires[name]:
                    by_ip.setdefault(addr, []).append(name)
            self._by_ip = {addr: tuple(names) for addr, names in by_ip.items()}
            self._by_ip_version = self.version
        return self._by_ip.get(ip, ())

    def prefixes(self, selectors: Sequence[FQDNSelector]) -> tuple[Network, ...]:
        """The host prefixes of every IP (zombies included) of every name ``selectors``
        select."""
        found = {
            ip_network(ip)
            for name, entries in self._expires.items()
            if any(selector_matches(s, name) for s in selectors)
            for ip in entries
        }
        if len(self.zombies):
            names = {name for z in self.zombies for name in z.names}
            chosen = {n for n in names if any(selector_matches(s, n) for s in selectors)}
            found.update(ip_network(z.ip) for z in self.zombies if z.names & chosen)
        return tuple(sorted(found, key=lambda n: (n.version, n)))

    def dump(self, now: float) -> list[dict[str, object]]:
        """The cache in :meth:`restore`'s shape: what the agent saves to survive a restart.
        The answers not expired at ``now`` one per name and expiry (``ttl`` whole seconds,
        ``lookup-time`` such that each IP expires when it does here), then the zombies and the
        answers expired but not yet made zombies (``"source": "connection"``, ``ttl`` 0,
        ``lookup-time`` the time they are pending deletion from), one per name and time."""
        groups: dict[tuple[str, float], list[str]] = {}
        pending: dict[tuple[str, float], list[str]] = {}
        for name, ip, expiry in self.entries():
            (groups if expiry > now else pending).setdefault((name, expiry), []).append(ip)
        for name, ip, at in self.zombies.entries():
            pending.setdefault((name, at), []).append(ip)
        out: list[dict[str, object]] = []
        for (name, expiry), ips in sorted(groups.items()):
            ttl = math.ceil(expiry - now)
            out.append({"fqdn": name, "ips": ips, "ttl": ttl, "lookup-time": expiry - ttl})
        for (name, at), ips in sorted(pending.items()):
            out.append(
                {
                    "fqdn": name,
                    "ips": ips,
                    "ttl": 0,
                    "lookup-time": at,
                    "source": FQDN_SOURCE_CONNECTION,
                }
            )
        return out

    def load(self, lookups: Iterable[DNSLookup]) -> None:
        for lookup in lookups:
            self.update(lookup)

    def restore(self, data: Iterable[Mapping[str, object]]) -> None:
        """Entries of ``ciliary fqdn cache list -o json`` (``fqdn``, ``ips``, ``ttl``,
        ``lookup-time`` in epoch seconds, ``source`` ``lookup`` (the default) or
        ``connection``: a zombie pending deletion from ``lookup-time``), as upstream's
        ``--tofqdns-pre-cache`` file: all of them or, on the first bad entry, none
        (``ValueError`` naming it)."""
        lookups = []
        pending: dict[tuple[str, str], float] = {}
        for i, entry in enumerate(data):
            name, ips = entry.get("fqdn"), entry.get("ips")
            ttl, at = entry.get("ttl", 0), entry.get("lookup-time", 0)
            source = entry.get("source", FQDN_SOURCE_LOOKUP)
            if not isinstance(name, str) or not isinstance(ips, list):
                raise ValueError(f"entry {i}: expected 'fqdn' (a string) and 'ips' (a list)")
            if not isinstance(ttl, int) or not isinstance(at, int | float):
                raise ValueError(f"entry {i}: expected 'ttl' and 'lookup-time' as numbers")
            if source not in (FQDN_SOURCE_LOOKUP, FQDN_SOURCE_CONNECTION):
                raise ValueError(
                    f"entry {i}: expected 'source' {FQDN_SOURCE_LOOKUP!r} or"
                    f" {FQDN_SOURCE_CONNECTION!r}, got {source!r}"
                )
            try:
                addresses = tuple(str(ip_address(str(ip))) for ip in ips)
            except ValueError as err:
                raise ValueError(f"entry {i}: {err}") from err
            if source == FQDN_SOURCE_CONNECTION:
                for ip in addresses:
                    key = (normalize_name(name), ip)
                    pending[key] = max(pending.get(key, 0.0), float(at))
            else:
                lookups.append(DNSLookup(name, addresses, ttl, float(at)))
        self.load(lookups)
        if pending:
            self.zombies.restore(pending)
            self.version += 1
