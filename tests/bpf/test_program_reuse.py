"""A node's datapath loaded again over its pins (an agent's restart) takes the pinned programs
instead of loading them anew only when a load would give the same programs: objects of the same
content (the ``programs-<digest>`` mark) and every map a pinned program uses still pinned.
Otherwise it loads and pins them again, as before."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.datapath.libbpf import prog_map_ids
from ciliary.datapath.loader import (
    FROM_CONTAINER,
    PIN_ROOT,
    PROGRAMS_MARKER,
    NodeDatapath,
    default_object_dir,
    remove_pins,
)


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = PIN_ROOT / f"reuse{secrets.token_hex(3)}"
    try:
        yield path
    finally:
        remove_pins(path)


def _load(pin_dir: Path) -> tuple[bool, int, set[int]]:
    """(programs reused, cil_from_container's pin inode, the map ids it uses) of one load."""
    dp = NodeDatapath(default_object_dir() / "bpf_lxc.o", pin_dir, lb_max=1024)
    dp.load()
    try:
        uses = set(prog_map_ids(dp._program_fd(FROM_CONTAINER)))
        return dp.reused_programs, os.stat(pin_dir / FROM_CONTAINER).st_ino, uses
    finally:
        dp.close()


def test_pinned_programs_are_taken_only_when_a_load_would_give_them(pin_dir: Path) -> None:
    reused, pin, uses = _load(pin_dir)
    assert not reused
    (marker,) = pin_dir.glob(PROGRAMS_MARKER + "*")
    # the restart: the same objects, the same maps
    assert _load(pin_dir) == (True, pin, uses)
    # other objects (another digest): loaded and pinned again, the mark made anew
    marker.rename(pin_dir / (PROGRAMS_MARKER + "0" * 16))
    reused, again, uses_again = _load(pin_dir)
    assert not reused and again != pin and uses_again == uses
    assert [p.name for p in pin_dir.glob(PROGRAMS_MARKER + "*")] == [marker.name]
    # a map it uses made anew (its pin gone): the pinned program would use the old one
    os.unlink(pin_dir / "ciliary_ct")
    reused, third, uses_third = _load(pin_dir)
    assert not reused and third != again and uses_third != uses
    assert _load(pin_dir)[:2] == (True, third)
