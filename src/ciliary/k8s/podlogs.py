"""Where a container's log lives: the one rule both its writer (the kubelet role, which runs the
container with its output in that file) and its reader (the API server's ``pods/<name>/log``)
follow, so they cannot disagree.

It is kubelet's own layout under ``/var/log/pods``: ``<root>/<namespace>_<pod>_<uid>/<container>/
<restartCount>.log``, one file per run of the container. The pod's uid keeps a pod recreated
under the same name from showing its predecessor's logs; the restart count numbers the runs, so
the current run is the highest number and ``previous=true`` the one below it. The files hold the
container's raw output (no CRI ``<time> stdout F`` prefix: the lab's containers write straight
into them), so they carry no per-line times. Pure: paths only, no I/O.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["container_log_dir", "container_log_path", "pod_log_dir", "run_number"]

LOG_SUFFIX = ".log"


def pod_log_dir(root: Path, namespace: str, pod: str, uid: str) -> Path:
    """The directory of every container log of one pod (kubelet's ``<ns>_<pod>_<uid>``)."""
    return root / f"{namespace}_{pod}_{uid}"


def container_log_dir(root: Path, namespace: str, pod: str, uid: str, container: str) -> Path:
    """The directory of one container's runs."""
    return pod_log_dir(root, namespace, pod, uid) / container


def container_log_path(
    root: Path, namespace: str, pod: str, uid: str, container: str, *, restart_count: int
) -> Path:
    """The file the container's run number ``restart_count`` (0 for its first) writes."""
    if restart_count < 0:
        raise ValueError(f"restart count {restart_count} < 0")
    return container_log_dir(root, namespace, pod, uid, container) / f"{restart_count}{LOG_SUFFIX}"


def run_number(file_name: str) -> int | None:
    """The restart count a file of a container's log directory holds, None if it is not one."""
    stem = file_name.removesuffix(LOG_SUFFIX)
    if stem == file_name or not stem.isdigit():
        return None
    return int(stem)
