"""Socket-LB's attachment, as upstream's pkg/socketlb: ``bpf_sock.o``'s cgroup sock_addr programs
on a node's cgroup (the agent's ``--cgroup-root``), each through a BPF link pinned under
``<pin dir>/socketlb/``.

Why links and pins: a pinned link keeps its program attached while the agent is down (as the tc
programs stay on their devices), and a restarted agent replaces the program inside the link
atomically (``bpf_link_update``): no connect() ever runs without translation in between. A link
whose cgroup is another one (the flag changed) or gone is replaced by a new link. Removing the
pins detaches (``--bpf-lb-sock=false``, or no ``--cgroup-root``: the tc-level LB alone).

A cgroup program sees the sockets of every process in the cgroup and its descendants, whatever
their network namespace: the lab puts a node's pod processes (containers and ``lab exec``) in
that node's cgroup and nothing else of the node there."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

from ciliary.datapath.libbpf import (
    BPF_CGROUP_INET4_CONNECT,
    BPF_CGROUP_INET4_GETPEERNAME,
    BPF_CGROUP_INET6_CONNECT,
    BPF_CGROUP_INET6_GETPEERNAME,
    BPF_CGROUP_UDP4_RECVMSG,
    BPF_CGROUP_UDP4_SENDMSG,
    BPF_CGROUP_UDP6_RECVMSG,
    BPF_CGROUP_UDP6_SENDMSG,
    BPFError,
    BPFObject,
    link_cgroup_id,
    pin_link,
    prog_from_pin,
)

__all__ = ["LINK_DIR", "PROGRAMS", "SOCK_OBJECT", "attach", "attached", "detach"]

SOCK_OBJECT: Final = "bpf_sock.o"
LINK_DIR: Final = "socketlb"

PROGRAMS: Final[dict[str, int]] = {
    "cil_sock4_connect": BPF_CGROUP_INET4_CONNECT,
    "cil_sock6_connect": BPF_CGROUP_INET6_CONNECT,
    "cil_sock4_sendmsg": BPF_CGROUP_UDP4_SENDMSG,
    "cil_sock6_sendmsg": BPF_CGROUP_UDP6_SENDMSG,
    "cil_sock4_recvmsg": BPF_CGROUP_UDP4_RECVMSG,
    "cil_sock6_recvmsg": BPF_CGROUP_UDP6_RECVMSG,
    "cil_sock4_getpeername": BPF_CGROUP_INET4_GETPEERNAME,
    "cil_sock6_getpeername": BPF_CGROUP_INET6_GETPEERNAME,
}
"""Program name in bpf_sock.c -> the cgroup hook it is attached to."""


def _cgroup_id(cgroup: Path) -> int:
    return os.stat(cgroup).st_ino  # a cgroup v2 directory's inode number is its id


def attach(obj: BPFObject, pin_dir: Path, cgroup: Path) -> None:
    """Attach every program of the loaded ``obj`` (bpf_sock.o) to ``cgroup``: the program of a
    pinned link on that cgroup is replaced, any other pinned link is replaced by a new one."""
    if not cgroup.is_dir():
        raise FileNotFoundError(f"--cgroup-root {cgroup}: no such cgroup directory")
    links = pin_dir / LINK_DIR
    links.mkdir(parents=True, exist_ok=True)
    want = _cgroup_id(cgroup)
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, attach_type in PROGRAMS.items():
            pin_link(links / name, obj.program_fd(name), cg_fd, attach_type,
                     attached_to=link_cgroup_id, want=want)  # fmt: skip
    finally:
        os.close(cg_fd)


def attached(pin_dir: Path) -> dict[str, int]:
    """Program name -> the id of the cgroup its pinned link is attached to (0: that cgroup is
    gone); programs without a link are absent."""
    out: dict[str, int] = {}
    for name in PROGRAMS:
        pin = pin_dir / LINK_DIR / name
        if not pin.exists():
            continue
        try:
            fd = prog_from_pin(pin)
        except BPFError:
            continue
        try:
            out[name] = link_cgroup_id(fd) or 0
        finally:
            os.close(fd)
    return out


def detach(pin_dir: Path) -> bool:
    """Remove the links' pins, which detaches the programs; True when there were any."""
    links = pin_dir / LINK_DIR
    found = False
    for name in PROGRAMS:
        with contextlib.suppress(FileNotFoundError):
            (links / name).unlink()
            found = True
    with contextlib.suppress(OSError):
        links.rmdir()
    return found
