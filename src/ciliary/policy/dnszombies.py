"""DNS "zombies": IPs whose DNS answer expired but that a connection may still use.

toFQDNs allows egress to the IPs DNS gave. If an IP left the selector the moment its answer's
TTL passed, its identity would leave the policy maps and an open connection to it would be cut
at its next packet (policy is checked on every non-reply packet). Upstream Cilium
(``pkg/fqdn/cache.go``, ``DNSZombieMappings``) keeps such an IP as a *zombie*, still selected,
until the conntrack GC has shown that no connection uses it. This module is that state machine,
sans-IO, with times in epoch seconds; :class:`~ciliary.policy.fqdn.DNSCache` owns one.

The life of a zombie:

- :meth:`DNSZombies.upsert` (the cache's expiry): the (IP, name) is pending deletion since
  ``delete_pending_at``; the latest time wins when the IP expires again.
- :meth:`DNSZombies.mark_alive` (each conntrack GC pass): the IPs at either end of an entry
  the pass keeps are alive at the pass's start plus ``--tofqdns-idle-connection-grace-period``.
- :meth:`DNSZombies.ct_gc_done` (after the pass and its marks, never before them: upstream's
  ``SetCTGCTime`` ordering): the start of the last complete pass. A zombie is
  *connection-alive* unless that start is later than both its ``delete_pending_at`` and its
  ``alive_at``, i.e. a whole pass began after it became a zombie and saw no connection.
- :meth:`DNSZombies.collect` (the DNS GC): zombies that are not connection-alive and share no
  name with one that is (upstream keeps the IPs of a name together) are removed, and so are the
  least recently alive beyond ``max_ips_per_name`` per name and ``max_zombies`` in all
  (``--tofqdns-max-deferred-connection-deletes``; 0 keeps none). Their IPs leave the selectors.
- A new answer giving the IP for a name takes that name back (:meth:`DNSZombies.forget`).

Before the first complete pass of a run every zombie is connection-alive, so zombies restored
after an agent restart (their ``alive_at`` is not saved, as upstream resets it) wait for a pass
over the pinned conntrack map before any is removed.

One difference from upstream: the cache makes a zombie pending from the time its expiry is
processed, not from the answer's expiry, so a pass that started before the zombie existed
(between the TTL and the next expiry check) cannot condemn it unseen.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from ipaddress import ip_address

__all__ = [
    "DEFAULT_MAX_DEFERRED_DELETES",
    "DNSZombie",
    "DNSZombies",
    "ZombieCollection",
]

DEFAULT_MAX_DEFERRED_DELETES = 10000  # upstream's --tofqdns-max-deferred-connection-deletes


@dataclass(frozen=True, slots=True)
class DNSZombie:
    """An IP an expired answer gave for ``names``, kept while a connection may use it."""

    ip: str
    names: frozenset[str]
    delete_pending_at: float
    """When the IP became (or last became again) a zombie."""
    alive_at: float = 0.0
    """The last conntrack GC pass that saw a connection of the IP, plus the grace period
    (0: none since the zombie was made or restored)."""


def _importance(z: DNSZombie) -> tuple[float, float, int, int, int]:
    """Sort key, least worth keeping first: upstream's order (least recently alive, longest
    pending, fewest names), then the address for a stable result."""
    addr = ip_address(z.ip)
    return z.alive_at, z.delete_pending_at, len(z.names), addr.version, int(addr)


@dataclass(frozen=True, slots=True)
class ZombieCollection:
    """What :meth:`DNSZombies.collect` removed."""

    dead: tuple[DNSZombie, ...] = ()
    evicted_in_use: int = 0
    """Of ``dead``, those a connection still used (removed by a limit): their connections are
    cut; raising the limit avoids it (the agent logs it)."""


class DNSZombies:
    """The zombies of one DNS cache, by IP (``str(ip_address(...))`` form)."""

    def __init__(self, max_zombies: int, max_ips_per_name: int) -> None:
        self.max_zombies = max_zombies
        self.max_ips_per_name = max_ips_per_name
        self._by_ip: dict[str, DNSZombie] = {}
        self.last_ct_gc = 0.0
        """Start of the last complete conntrack GC pass (0: none in this run)."""
        self.next_ct_gc = 0.0
        """When the next pass is expected (``ciliary fqdn cache list`` shows it as a zombie's
        expiration, as upstream)."""

    def __len__(self) -> int:
        return len(self._by_ip)

    def __iter__(self) -> Iterator[DNSZombie]:
        """Every zombie, in no order (:meth:`zombies` sorts)."""
        return iter(self._by_ip.values())

    def get(self, ip: str) -> DNSZombie | None:
        return self._by_ip.get(ip)

    def zombies(self) -> list[DNSZombie]:
        """Every zombie, by address."""
        return sorted(self._by_ip.values(), key=lambda z: _importance(z)[3:])

    def upsert(self, ip: str, names: Iterable[str], pending_at: float) -> bool:
        """``ip`` (of ``names``) is pending deletion from ``pending_at``; True when it was
        not a zombie yet."""
        old = self._by_ip.get(ip)
        if old is None:
            self._by_ip[ip] = DNSZombie(ip, frozenset(names), pending_at)
            return True
        self._by_ip[ip] = replace(
            old,
            names=old.names | frozenset(names),
            delete_pending_at=max(old.delete_pending_at, pending_at),
        )
        return False

    def forget(self, name: str, ip: str) -> bool:
        """A fresh answer gives ``ip`` for ``name`` again: the zombie loses that name, and goes
        when none is left. True when something changed."""
        old = self._by_ip.get(ip)
        if old is None or name not in old.names:
            return False
        if old.names == {name}:
            del self._by_ip[ip]
        else:
            self._by_ip[ip] = replace(old, names=old.names - {name})
        return True

    def mark_alive(self, at: float, ips: Collection[str]) -> int:
        """The zombies among ``ips`` (addresses a conntrack pass found in use) are alive at
        ``at``; how many were."""
        found = [ip for ip in self._by_ip if ip in ips]
        for ip in found:
            z = self._by_ip[ip]
            self._by_ip[ip] = replace(z, alive_at=max(z.alive_at, at))
        return len(found)

    def ct_gc_done(self, start: float, next_at: float) -> None:
        """A complete conntrack GC pass that began at ``start`` (all its marks made); the next
        is expected at ``next_at``."""
        self.last_ct_gc = max(self.last_ct_gc, start)
        self.next_ct_gc = next_at

    def connection_alive(self, z: DNSZombie) -> bool:
        return not (self.last_ct_gc > z.delete_pending_at and self.last_ct_gc > z.alive_at)

    def collect(self) -> ZombieCollection:
        """Removes the dead zombies and those over the limits (see the module docstring).
        Runs every second: linear in the zombies, sorting only those of a limit exceeded."""
        in_use = {ip for ip, z in self._by_ip.items() if self.connection_alive(z)}
        alive_names = {name for ip in in_use for name in self._by_ip[ip].names}
        dead = {
            ip for ip, z in self._by_ip.items() if ip not in in_use and not z.names & alive_names
        }
        over: set[str] = set()
        if 0 < self.max_ips_per_name < len(self._by_ip) - len(dead):
            by_name: dict[str, list[DNSZombie]] = {}
            for ip, z in self._by_ip.items():
                if ip not in dead:
                    for name in z.names:
                        by_name.setdefault(name, []).append(z)
            for group in by_name.values():
                excess = len(group) - self.max_ips_per_name
                if excess > 0:
                    over.update(z.ip for z in sorted(group, key=_importance)[:excess])
        excess = len(self._by_ip) - len(dead | over) - max(self.max_zombies, 0)
        if excess > 0:
            survivors = [z for ip, z in self._by_ip.items() if ip not in dead and ip not in over]
            over.update(z.ip for z in sorted(survivors, key=_importance)[:excess])
        gone = tuple(self._by_ip.pop(ip) for ip in sorted(dead | over, key=ip_address))
        return ZombieCollection(gone, sum(1 for ip in over if ip in in_use))

    def entries(self) -> list[tuple[str, str, float]]:
        """(name, IP, delete-pending time) of every zombie name, by name then IP."""
        return sorted(
            ((name, z.ip, z.delete_pending_at) for z in self.zombies() for name in z.names),
            key=lambda e: (e[0], *_importance(self._by_ip[e[1]])[3:]),
        )

    def restore(self, pending: Mapping[tuple[str, str], float]) -> None:
        """Zombies of a saved cache, ``(name, IP) → delete-pending time``; not alive since
        (see the module docstring)."""
        for (name, ip), at in pending.items():
            self.upsert(ip, (name,), at)
