"""Port ranges as longest-prefix blocks: how Cilium (and our engine and policy maps) store a
``port``..``endPort`` range in an LPM trie keyed by the destination port's high bits."""

from __future__ import annotations


def port_range_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """The fewest (port, prefix bits) blocks exactly covering ports ``lo``..``hi`` (inclusive),
    as Cilium cuts a port range for its LPM map."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"bad port range {lo}-{hi}")
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 17 - size.bit_length()))
        lo += size
    return out
