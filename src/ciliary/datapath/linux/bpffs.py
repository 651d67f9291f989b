"""The BPF filesystem at /sys/fs/bpf: mounted by us when the machine has none (setup, or the
datapath itself, as cilium-agent does), recorded in ``SETUP_MARKER``, and given back when the last
user is gone, so the machine ends as it was found.

A fresh bpffs is never empty: the kernel's bpf_preload puts ``maps.debug`` and ``progs.debug``
into every new instance. "Nothing of ours or anyone's left" therefore means only those two.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

BPF_FS = Path("/sys/fs/bpf")
SETUP_MARKER = Path("/run/ciliary-setup-mounted-bpffs")
KERNEL_PRELOAD = frozenset({"maps.debug", "progs.debug"})


def _mounted() -> bool:
    with open("/proc/mounts") as mounts:
        return any(
            len(p) >= 3 and p[1] == str(BPF_FS) and p[2] == "bpf"
            for p in (line.split() for line in mounts)
        )


def ensure_mounted() -> None:
    """Mount bpffs at /sys/fs/bpf unless something already is; remember that we did."""
    if _mounted():
        return
    result = subprocess.run(
        ["mount", "-t", "bpf", "bpf", str(BPF_FS)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise OSError(f"cannot mount bpffs at {BPF_FS}: {result.stderr.strip()}")
    SETUP_MARKER.touch()


def unmount_if_setup_mounted() -> bool:
    """Unmount /sys/fs/bpf if setup mounted it and it holds nothing but the kernel's preload
    files; True when it did. Never touches a bpffs someone else mounted or still uses."""
    if not SETUP_MARKER.exists() or not _mounted():
        return False
    if set(os.listdir(BPF_FS)) - KERNEL_PRELOAD:
        return False
    result = subprocess.run(["umount", str(BPF_FS)], capture_output=True, check=False)
    if result.returncode != 0:
        return False
    with contextlib.suppress(FileNotFoundError):
        SETUP_MARKER.unlink()
    return True
