"""A datapath revision: one counter in a one-slot array map (``ciliary_policy_rev``,
``ciliary_ipcache_rev``) that the agent raises after every write of the maps it covers.

Why: the programs cache what those maps answered (a connection's policy verdict in its conntrack
entry, bpf/lib/policy.h; the ipcache's answers in a per-CPU cache, bpf/lib/ipcache.h) together
with the revision they read, and use a cached answer only while the revision is still that one.
A write that did not raise it would not reach what is cached. The revision never becomes 0: at 0
the programs cache nothing (no writer keeps the revision).
"""

from __future__ import annotations

from ciliary.datapath.libbpf import Map

__all__ = ["Revision", "raise_revision"]

_KEY = (0).to_bytes(4, "little")


class Revision:
    """``m[0]`` (over a :class:`Map` it does not own), kept within ``mask`` (the bits the
    datapath keeps of it). Read back before each raise, so that writers of other processes
    (tests, benchmarks writing a pinned map) never hand out a value again."""

    def __init__(self, m: Map, mask: int = 0xFFFFFFFF) -> None:
        self._map = m
        self._mask = mask

    def current(self) -> int:
        raw = self._map.lookup(_KEY)
        return int.from_bytes(raw[:4], "little") if raw else 0

    def bump(self) -> int:
        nxt = (self.current() + 1) & self._mask or 1
        self._map.update(_KEY, nxt.to_bytes(4, "little"))
        return nxt


def raise_revision(revision: Revision | None) -> None:
    """After a write of the maps ``revision`` covers: the contract (module doc), when the writer
    keeps one (a view without it is a reader's)."""
    if revision is not None:
        revision.bump()
