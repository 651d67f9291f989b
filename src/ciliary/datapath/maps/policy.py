"""Per-endpoint policy maps: ``ciliary_policy`` (hash of maps, endpoint id → inner map) and one
LPM trie per enforced endpoint, pinned as ``ciliary_policy_<id>`` next to the node's other maps.

Keys are (remote identity, direction, protocol, destination port prefix); a port range is stored
as the smallest set of prefixes covering it (``ciliary.core.ports``), as Cilium does. The
lookup rules the datapath applies are in ``bpf/lib/policy.h``; the map state written here must
respect them (see ``ciliary.policy.mapstate``): no allow entry longer than a covering deny of the
same identity.

Ordering contract for updates (never a window where traffic that must be denied passes): new
denies first, then removal of allows, then new allows, then removal of denies — ``apply()``.
Each of the four steps is one ``BPF_MAP_*_BATCH`` syscall (the LPM trie batches since Linux
5.6's generic batch ops), so a change costs an endpoint at most four syscalls however many
entries it moves; a :class:`PolicyChange` is converted to the kernel's bytes once, however many
endpoints' maps it is written to (the agent hands the same change to every endpoint whose map
state moved the same way).

Revision contract: after each write (entries written or deleted, an inner map linked or
unlinked) the node's policy revision (``ciliary_policy_rev``, :class:`PolicyRevision`) is
raised. The datapath skips the policy check of an established connection's packet whose verdict
its conntrack entry holds for the current revision (``bpf/lib/policy.h``), so a write that did
not raise it would not reach open connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ciliary.datapath.libbpf import BPF_F_NO_PREALLOC, BPF_MAP_TYPE_LPM_TRIE, Map, map_create
from ciliary.datapath.maps.revision import Revision, raise_revision

REVISION_MAP = "ciliary_policy_rev"
REVISION_MASK = 0x3FFFFFFF  # the datapath keeps 30 bits of it in a conntrack entry
POLICY_F_DENY = 0x1
FULL_PREFIX = 64
_BASE_PREFIX = 40  # identity (32) + direction (8)
INNER_MAX_ENTRIES = 65536


class PolicyKeyC(ctypes.Structure):
    """Mirror of C ``struct policy_key`` (bpf/lib/common.h)."""

    C_NAME = "policy_key"
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("sec_label", ctypes.c_uint32),
        ("egress", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("dport", ctypes.c_uint16),
    ]


class PolicyEntryC(ctypes.Structure):
    """Mirror of C ``struct policy_entry`` (bpf/lib/common.h)."""

    C_NAME = "policy_entry"
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("cookie", ctypes.c_uint32),
        ("proxy_port", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("prefixlen", ctypes.c_uint8),
    ]


@dataclass(frozen=True, order=True)
class PolicyKey:
    """One entry's match: ``protocol`` 0 = any (then port must be 0); ``port_prefix`` is how many
    high bits of ``port`` are significant (16 = exactly that port, 0 = any port)."""

    identity: int
    egress: bool
    protocol: int = 0
    port: int = 0
    port_prefix: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port_prefix <= 16:
            raise ValueError(f"port prefix {self.port_prefix} outside 0..16")
        if self.protocol == 0 and (self.port or self.port_prefix):
            raise ValueError("a port needs a protocol")
        if self.port_prefix < 16 and self.port & ((1 << (16 - self.port_prefix)) - 1):
            raise ValueError(f"port {self.port} has bits set beyond its /{self.port_prefix}")

    @property
    def prefixlen(self) -> int:
        if self.protocol == 0:
            return _BASE_PREFIX
        return _BASE_PREFIX + 8 + self.port_prefix

    @functools.cached_property
    def c_bytes(self) -> bytes:
        """``to_c()`` as bytes, made once per key (a key shared by many endpoints' changes is
        written many times)."""
        return bytes(self.to_c())

    def to_c(self) -> PolicyKeyC:
        return PolicyKeyC(
            prefixlen=self.prefixlen,
            sec_label=self.identity,
            egress=1 if self.egress else 0,
            protocol=self.protocol,
            dport=socket.htons(self.port),
        )

    @classmethod
    def from_c(cls, c: PolicyKeyC) -> PolicyKey:
        bits = int(c.prefixlen)
        protocol = int(c.protocol) if bits > _BASE_PREFIX else 0
        prefix = max(0, bits - _BASE_PREFIX - 8) if protocol else 0
        return cls(int(c.sec_label), bool(c.egress), protocol, socket.ntohs(int(c.dport)), prefix)


@dataclass(frozen=True)
class PolicyValue:
    deny: bool
    cookie: int
    proxy_port: int = 0


@dataclass(frozen=True)
class PolicyEntryRecord:
    key: PolicyKey
    value: PolicyValue
    packets: int
    bytes: int


@functools.lru_cache(maxsize=4096)
def _entry_bytes(value: PolicyValue, prefixlen: int) -> bytes:
    """A map value as written (counters zero); few distinct ones exist, so they are kept."""
    return bytes(
        PolicyEntryC(
            cookie=value.cookie,
            proxy_port=socket.htons(value.proxy_port),
            flags=POLICY_F_DENY if value.deny else 0,
            prefixlen=prefixlen,
        )
    )


_Batches = tuple[list[tuple[bytes, bytes]], list[bytes], list[tuple[bytes, bytes]], list[bytes]]
"""(new denies, allows to delete, new allows, denies to delete): key/value bytes, key bytes."""


class PolicyChange:
    """What turns a map holding one state into another: ``changed`` entries to write and
    ``stale`` ones to delete (with the values they have now, which say deny or allow), and the
    four batches :meth:`EndpointPolicyMap.write` hands the kernel in the safe order, made once."""

    __slots__ = ("_batches", "changed", "stale")

    def __init__(
        self, changed: Mapping[PolicyKey, PolicyValue], stale: Mapping[PolicyKey, PolicyValue]
    ) -> None:
        self.changed = changed
        self.stale = stale
        self._batches: _Batches | None = None

    def batches(self) -> _Batches:
        """(new denies, allows to delete, new allows, denies to delete) as the kernel's bytes."""
        if self._batches is None:
            new = [
                (k.c_bytes, _entry_bytes(v, k.prefixlen), v.deny) for k, v in self.changed.items()
            ]
            self._batches = (
                [(k, v) for k, v, deny in new if deny],
                [k.c_bytes for k, v in self.stale.items() if not v.deny],
                [(k, v) for k, v, deny in new if not deny],
                [k.c_bytes for k, v in self.stale.items() if v.deny],
            )
        return self._batches


class PolicyRevision(Revision):
    """The node's policy revision, ``ciliary_policy_rev[0]``: raised after every policy write
    (the revision contract above; ``datapath.maps.revision``)."""

    def __init__(self, m: Map) -> None:
        super().__init__(m, REVISION_MASK)


class EndpointPolicyMap:
    """The inner LPM map of one endpoint. ``shared``: the handle :class:`PolicyMaps` keeps
    open and hands out again; closing it is a no-op (``PolicyMaps.remove`` closes it).
    ``revision``: raised after each write (the revision contract above)."""

    def __init__(
        self, m: Map, *, shared: bool = False, revision: PolicyRevision | None = None
    ) -> None:
        self._map = m
        self._shared = shared
        self._revision = revision
        self._revision_map: Map | None = None  # from_pin's own handle of the revision map

    @classmethod
    def from_pin(cls, path: Path) -> EndpointPolicyMap:
        """A pinned inner map (``ciliary_policy_<id>``) opened by another process than the
        agent's (tests, benchmarks), raising the revision pinned next to it on each write."""
        rev_pin = path.parent / REVISION_MAP
        rev_map = Map.from_pin(rev_pin) if rev_pin.exists() else None
        inner = cls(Map.from_pin(path), revision=PolicyRevision(rev_map) if rev_map else None)
        inner._revision_map = rev_map
        return inner

    @property
    def map(self) -> Map:
        return self._map

    def upsert(self, key: PolicyKey, value: PolicyValue) -> None:
        self._map.update(key.c_bytes, _entry_bytes(value, key.prefixlen))
        raise_revision(self._revision)

    def delete(self, key: PolicyKey) -> bool:
        found = self._map.delete(key.c_bytes)
        raise_revision(self._revision)
        return found

    def items(self) -> list[PolicyEntryRecord]:
        out = []
        for kb, vb in self._map.items():
            k = PolicyKeyC.from_buffer_copy(kb)
            v = PolicyEntryC.from_buffer_copy(vb)
            out.append(
                PolicyEntryRecord(
                    PolicyKey.from_c(k),
                    PolicyValue(
                        bool(v.flags & POLICY_F_DENY), int(v.cookie), socket.ntohs(v.proxy_port)
                    ),
                    int(v.packets),
                    int(v.bytes),
                )
            )
        return out

    def current(self) -> dict[PolicyKey, PolicyValue]:
        return {r.key: r.value for r in self.items()}

    def apply(self, desired: Mapping[PolicyKey, PolicyValue]) -> tuple[int, int]:
        """Make the map equal ``desired`` touching only what differs, in the safe order.
        Returns (entries written, entries deleted)."""
        current = self.current()
        stale = {k: v for k, v in current.items() if k not in desired}
        changed = {k: v for k, v in desired.items() if current.get(k) != v}
        return self.apply_changes(changed, stale)

    def apply_changes(
        self, changed: Mapping[PolicyKey, PolicyValue], stale: Mapping[PolicyKey, PolicyValue]
    ) -> tuple[int, int]:
        """Write ``changed`` and delete ``stale`` (the keys with the values they have now), in
        the safe order, without reading the map: for a caller that knows what the map holds
        (the agent diffs against what it wrote last). Returns (entries written, deleted)."""
        return self.write(PolicyChange(changed, stale))

    def write(self, change: PolicyChange) -> tuple[int, int]:
        """:meth:`apply_changes` of a prepared change: one batch syscall per non-empty step."""
        deny_new, allow_gone, allow_new, deny_gone = change.batches()
        if deny_new:
            self._map.update_batch(deny_new)
        if allow_gone:
            self._map.delete_batch(allow_gone)
        if allow_new:
            self._map.update_batch(allow_new)
        if deny_gone:
            self._map.delete_batch(deny_gone)
        if change.changed or change.stale:
            raise_revision(self._revision)
        return len(change.changed), len(change.stale)

    def close(self) -> None:
        if not self._shared:
            self._map.close()
            if self._revision_map is not None:
                self._revision_map.close()


class PolicyMaps:
    """The node's outer map and the pinned inner maps of its enforced endpoints.

    Each inner map is opened once and kept open (one fd per enforced endpoint): a rule change
    writes the maps of every endpoint it touches, and opening a pin (path check, obj_get, map
    info, close) cost each of them as much as the write itself. Handles are shared: their
    ``close()`` is a no-op; :meth:`remove` and :meth:`prune` close them."""

    def __init__(self, outer: Map, pin_dir: Path, revision: PolicyRevision | None = None) -> None:
        self._outer = outer
        self._pin_dir = pin_dir
        self._revision = revision
        self._open: dict[int, EndpointPolicyMap] = {}

    def _pin(self, ep_id: int) -> Path:
        return self._pin_dir / f"ciliary_policy_{ep_id}"

    def _outer_key(self, ep_id: int) -> bytes:
        return ctypes.c_uint32(ep_id).value.to_bytes(4, "little")

    def get(self, ep_id: int) -> EndpointPolicyMap | None:
        found = self._open.get(ep_id)
        if found is not None:
            return found
        path = self._pin(ep_id)
        if not path.exists():
            return None
        found = self._open[ep_id] = EndpointPolicyMap(
            Map.from_pin(path), shared=True, revision=self._revision
        )
        return found

    def _forget(self, ep_id: int) -> None:
        found = self._open.pop(ep_id, None)
        if found is not None:
            found.map.close()

    def ensure(
        self, ep_id: int, initial: Mapping[PolicyKey, PolicyValue] | None = None
    ) -> EndpointPolicyMap:
        """The endpoint's inner map, created (filled with ``initial`` *before* it is linked into
        the outer map, so enforcement starts with the complete policy) if it does not exist."""
        existing = self.get(ep_id)
        if existing is not None:
            # Relink only when needed: every map-in-map update waits for an RCU grace period
            # (~15 ms here), which made a policy change at 1000 endpoints take 10 s. A slot
            # reads back as the id of the inner map it points to.
            key = self._outer_key(ep_id)
            linked = self._outer.lookup(key)
            if linked is None or int.from_bytes(linked[:4], "little") != existing.map.info.id:
                self._outer.update(key, existing.map.fd.to_bytes(4, "little"))
                raise_revision(self._revision)
            return existing
        m = map_create(
            BPF_MAP_TYPE_LPM_TRIE, f"cil_pol_{ep_id}",
            ctypes.sizeof(PolicyKeyC), ctypes.sizeof(PolicyEntryC),
            INNER_MAX_ENTRIES, flags=BPF_F_NO_PREALLOC,
        )  # fmt: skip
        inner = EndpointPolicyMap(m, shared=True, revision=self._revision)
        if initial:
            inner.apply(initial)
        path = self._pin(ep_id)
        m.pin(path)
        self._open[ep_id] = inner
        self._outer.update(self._outer_key(ep_id), m.fd.to_bytes(4, "little"))
        raise_revision(self._revision)
        return inner

    def remove(self, ep_id: int) -> None:
        """Stop enforcing (outer entry first), then drop the pin."""
        self._outer.delete(self._outer_key(ep_id))
        raise_revision(self._revision)
        self._forget(ep_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._pin(ep_id))

    def enforced(self) -> list[int]:
        return sorted(int.from_bytes(k, "little") for k in self._outer.keys())  # noqa: SIM118

    def prune(self, keep: Iterable[int]) -> list[int]:
        """Remove maps of endpoints that no longer exist (restart reconciliation)."""
        wanted = set(keep)
        gone = [ep for ep in self.enforced() if ep not in wanted]
        for ep in gone:
            self.remove(ep)
        for path in self._pin_dir.glob("ciliary_policy_*"):
            with contextlib.suppress(ValueError):
                ep = int(path.name.rsplit("_", 1)[1])
                if ep not in wanted:
                    self._forget(ep)
                    path.unlink()
        return gone
