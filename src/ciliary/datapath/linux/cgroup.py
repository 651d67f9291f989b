"""cgroup v2 groups for lab processes, so that every process of a pod (or agent) can be found
and ended together (``cgroup.kill``), whatever it forked, and nothing outlives ``lab down``."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ciliary.datapath.linux.errors import LinkError


def cgroup2_root() -> Path | None:
    """Mount point of the unified (v2) hierarchy, wherever this distro put it."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return Path(parts[1])
    return None


def create(relpath: str) -> Path:
    root = cgroup2_root()
    if root is None:
        raise LinkError("no cgroup2 hierarchy is mounted")
    path = root / relpath
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LinkError(f"cannot create cgroup {path}: {err.strerror}") from err
    return path


def add_self(path: Path) -> None:
    """Move the calling process into ``path`` (used in a child before exec)."""
    (path / "cgroup.procs").write_text(str(os.getpid()))


def pids(path: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    return []


def kill_and_remove(path: Path, timeout: float = 5.0) -> None:
    """SIGKILL every process in the group and its children, then remove the directories."""
    if not path.exists():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _kill_one(sub, timeout)
    _kill_one(path, timeout)


def _kill_one(path: Path, timeout: float) -> None:
    kill = path / "cgroup.kill"
    if kill.exists():
        with contextlib.suppress(OSError):
            kill.write_text("1")
    else:
        for pid in pids(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    deadline = time.monotonic() + timeout
    while pids(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise LinkError(f"cannot remove cgroup {path}: {err.strerror}") from err
            time.sleep(0.02)


def find_by_id(root: Path, cgroup_id: int) -> Path | None:
    """The cgroup at or under ``root`` whose id (its directory's inode number, what
    ``bpf_get_current_cgroup_id`` returns) is ``cgroup_id``; None when there is none."""
    for top, _dirs, _files in os.walk(root):  # every directory once, as a top
        with contextlib.suppress(OSError):
            if os.stat(top).st_ino == cgroup_id:
                return Path(top)
    return None


def netns_inodes(path: Path) -> set[int]:
    """The network namespaces (nsfs inode numbers) of the processes directly in ``path``."""
    out: set[int] = set()
    for pid in pids(path):
        with contextlib.suppress(OSError):
            out.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
    return out
