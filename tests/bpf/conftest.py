"""Kernel tests pin under /sys/fs/bpf: make sure a bpffs is there (a `lab down` earlier in the
run may have given back the one setup mounted). Fixtures of the tests that run bpf_lxc.o's
programs by BPF_PROG_TEST_RUN: the object loaded with its maps, and a netns holding two lxc
devices."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.datapath.libbpf import BPFObject
from ciliary.datapath.linux.bpffs import ensure_mounted

from .test_libbpf import LXC_OBJECT, in_netns


@pytest.fixture(autouse=True, scope="session")
def _bpffs() -> None:
    ensure_mounted()


@pytest.fixture
def two_lxc() -> Iterator[tuple[str, int, int]]:
    """A netns with the client's and the server's node-side devices (lxc0, lxc1): its name and
    their ifindexes."""
    name = f"cilt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for i in (0, 1):
            subprocess.run(["ip", "-n", name, "link", "add", f"lxc{i}", "type", "veth", "peer",
                            "name", f"peer{i}"], check=True)  # fmt: skip
            subprocess.run(["ip", "-n", name, "link", "set", f"lxc{i}", "up"], check=True)
        c, s = in_netns(name, lambda: tuple(map(socket.if_nametoindex, ("lxc0", "lxc1"))))
        yield name, c, s
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def node() -> Iterator[tuple[BPFObject, Path]]:
    subprocess.run(["make", "-s", "-C", str(LXC_OBJECT.parent)], check=True)
    pin_dir = Path("/sys/fs/bpf") / f"ciliary-test-{secrets.token_hex(6)}"
    obj = BPFObject.open(LXC_OBJECT, pin_dir=pin_dir)
    try:
        obj.load()
        yield obj, pin_dir
    finally:
        obj.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
