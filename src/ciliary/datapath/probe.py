"""Kernel features the datapath needs, as ``ciliary status`` reports them.

Filesystem facts are read directly; BPF facts are *demonstrated*, not guessed from the version:
the loaded object already uses a ring buffer, an LPM trie, an LRU hash and bpf_redirect_peer, so
a successful load is the proof (the verifier rejects a helper or map type the kernel lacks).
"""

from __future__ import annotations

import os
from pathlib import Path

from ciliary.core.models import KernelFeatures
from ciliary.datapath.linux.cgroup import cgroup2_root


def _is_bpffs(path: Path) -> bool:
    with open("/proc/mounts") as mounts:
        return any(
            len(parts) >= 3 and parts[1] == str(path) and parts[2] == "bpf"
            for parts in (line.split() for line in mounts)
        )


def kernel_features(*, datapath_loaded: bool, attached: bool) -> KernelFeatures:
    return KernelFeatures(
        release=os.uname().release,
        btf=Path("/sys/kernel/btf/vmlinux").exists(),
        bpffs=_is_bpffs(Path("/sys/fs/bpf")),
        cgroup2=cgroup2_root() is not None,
        tcx=attached,
        ringbuf=datapath_loaded,
        lpm_trie=datapath_loaded,
        lru_hash=datapath_loaded,
        redirect_peer=datapath_loaded,
    )
