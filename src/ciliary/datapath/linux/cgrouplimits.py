"""CPU and memory limits on a lab cgroup, the way kubelet writes them on either cgroup version.

On a unified (v2) host the pod's own cgroup (``datapath.linux.cgroup``) gets ``cpu.max``
(``<quota> <period>``) and ``memory.max`` (bytes), after the controllers are enabled in each
ancestor's ``cgroup.subtree_control``. On a hybrid host (v1 ``cpu`` and ``memory`` hierarchies
beside a v2 one without those controllers, as this project's CI machine is) a controller bound
to v1 cannot be used from v2: the limits go to a group of the same relative path in the v1
hierarchy, below the *calling process's own* v1 group (so the lab never moves processes out of
whatever limits it runs under), as ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` and
``memory.limit_in_bytes``. The v1 groups' ``cgroup.procs`` are returned for the pod's process to
join before it execs (the v2 group it joins already).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ciliary.datapath.linux.cgroup import cgroup2_root
from ciliary.datapath.linux.errors import LinkError

__all__ = ["CPU_PERIOD_US", "Limits", "apply", "remove_v1"]

CPU_PERIOD_US = 100_000  # kubelet's CFS period
MIN_CPU_QUOTA_US = 1_000  # kubelet's floor (the kernel refuses less)


@dataclass(frozen=True)
class Limits:
    cpu_millis: int | None = None
    memory_bytes: int | None = None

    def cpu_quota_us(self) -> int | None:
        if self.cpu_millis is None:
            return None
        return max(MIN_CPU_QUOTA_US, self.cpu_millis * CPU_PERIOD_US // 1000)

    def v2_files(self) -> dict[str, tuple[str, str]]:
        """controller → (file, value) in a v2 group."""
        out: dict[str, tuple[str, str]] = {}
        quota = self.cpu_quota_us()
        if quota is not None:
            out["cpu"] = ("cpu.max", f"{quota} {CPU_PERIOD_US}")
        if self.memory_bytes is not None:
            out["memory"] = ("memory.max", str(self.memory_bytes))
        return out

    def v1_files(self) -> dict[str, list[tuple[str, str]]]:
        """controller → [(file, value)] in a v1 group (the period before the quota)."""
        out: dict[str, list[tuple[str, str]]] = {}
        quota = self.cpu_quota_us()
        if quota is not None:
            out["cpu"] = [
                ("cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu.cfs_quota_us", str(quota)),
            ]
        if self.memory_bytes is not None:
            out["memory"] = [("memory.limit_in_bytes", str(self.memory_bytes))]
        return out


def _v1_mount(controller: str) -> Path | None:
    with open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "cgroup" and controller in parts[3].split(","):
                return Path(parts[1])
    return None


def _own_v1_group(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path.lstrip("/")
    return ""


def v1_group(controller: str, relpath: str) -> Path | None:
    """Where ``relpath``'s v1 group of ``controller`` lives (None: no such v1 hierarchy)."""
    mount = _v1_mount(controller)
    if mount is None:
        return None
    return mount / _own_v1_group(controller) / relpath


def _enable_v2(root: Path, relpath: str, controller: str) -> None:
    parent = root
    for part in Path(relpath).parts[:-1] or ():
        _write(parent / "cgroup.subtree_control", f"+{controller}")
        parent = parent / part
    _write(parent / "cgroup.subtree_control", f"+{controller}")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise LinkError(f"cannot write {value!r} to {path}: {err.strerror}") from err


def apply(relpath: str, limits: Limits) -> list[Path]:
    """Apply ``limits`` to the lab cgroup ``relpath``; returns the v1 ``cgroup.procs`` files the
    process must also join (empty on a v2 host)."""
    root = cgroup2_root()
    available: set[str] = set()
    if root is not None:
        with contextlib.suppress(OSError):
            available = set((root / "cgroup.controllers").read_text().split())
    join: list[Path] = []
    v1 = limits.v1_files()
    for controller, (name, value) in limits.v2_files().items():
        if root is not None and controller in available:
            _enable_v2(root, relpath, controller)
            group = root / relpath
            group.mkdir(parents=True, exist_ok=True)
            _write(group / name, value)
            continue
        group_v1 = v1_group(controller, relpath)
        if group_v1 is None:
            raise LinkError(f"no cgroup hierarchy offers the {controller} controller")
        group_v1.mkdir(parents=True, exist_ok=True)
        for file, val in v1[controller]:
            _write(group_v1 / file, val)
        join.append(group_v1 / "cgroup.procs")
    return join


def remove_v1(relpath: str) -> None:
    """Remove ``relpath``'s v1 cpu/memory groups (once their processes are gone)."""
    for controller in ("cpu", "memory"):
        group = v1_group(controller, relpath)
        if group is not None:
            with contextlib.suppress(OSError):
                group.rmdir()
