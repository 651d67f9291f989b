"""Kernel tests pin under /sys/fs/bpf: make sure a bpffs is there (a `lab down` earlier in the
run may have given back the one setup mounted)."""

from __future__ import annotations

import pytest

from ciliary.datapath.linux.bpffs import ensure_mounted


@pytest.fixture(autouse=True, scope="session")
def _bpffs() -> None:
    ensure_mounted()
