"""What a pod's process sees besides its network: a container's mount view and environment.

A real runtime gives every container its own mount namespace (the image's root, a few volumes)
and an environment made of the image's ``PATH``, ``HOSTNAME`` and what the pod spec declares.
Lab pods share the machine's root file system, so without care a pod would run as root *next to*
the agents' unix sockets (``/run/ciliary/<node>/agent.sock``, ``hubble.sock``), the lab's relay
socket and certificates, and inherit the environment of whoever ran ``lab up``. This module
builds the wrapper every pod process starts through:

* ``unshare --mount --propagation private`` gives the process a mount namespace of its own (the
  host's mounts are not changed: nothing propagates back), in which a small ``tmpfs`` is mounted
  over each ciliary run directory (``/run/ciliary``, ``/var/run/ciliary`` when it is another
  directory, ``$CILIARY_RUN_DIR``): the agents' API, Hubble's and the relay's sockets and the lab's
  keys do not exist for the pod. A directory the pod must read (the cluster DNS pod's records, as
  a ConfigMap volume would be) is bound back read-only: it is opened *before* the tmpfs hides it
  and bound from that descriptor (``/proc/self/fd/N``, not re-resolved by path); so is a file
  the runtime gives the container at a path of its own (``files``: the pod's
  ``/etc/resolv.conf``, as kubelet writes one per pod for the runtime to bind). The command then
  runs (``setpriv``) without the capabilities that would undo this (:data:`DROPPED_CAPS`: a root
  process keeping ``CAP_SYS_ADMIN`` could unmount the tmpfs or enter the host's mount namespace);
* the environment is exactly the container's: ``PATH`` a standard container ``PATH``,
  ``HOSTNAME`` the pod's name, ``HOME``, then the spec's ``env`` (which may override them).
  The lab's own commands (``ciliary workload ...``, from the lab's virtualenv) are still found
  because a bare command name that the virtualenv provides is resolved to its absolute path when
  the process is spawned; the virtualenv is never put on the pod's ``PATH``.

The wrapper ``exec``s into the command (same pid), so the lab's pid/start-time bookkeeping and
its check that a container really started are unchanged.

:func:`container_command` builds a Kubernetes container's wrapper from its spec (``k8s.core``):
the ``securityContext`` uid/gid (``runAsNonRoot`` refusing root with kubelet's words,
:class:`ContainerConfigError`), ``workingDir``, and a PID namespace of its own in which the
command is PID 1 (there ``unshare`` forks: the spawned pid is unshare's, which exits with the
command's code and does not forward signals, hence ``process.stop_group``), and its
``volumeMounts`` of ``emptyDir`` volumes (:func:`empty_dir_mounts`): a server that must write
(PostgreSQL's data directory, Redis's ``dir``) as a non-root user gets scratch space the way a
runtime gives it, a fresh ``tmpfs`` (mode 0777, ``sizeLimit`` its size) mounted in the
container's mount namespace over an *existing* directory of the machine (pods share its root file
system: nothing is created on it, nothing is left behind). Unlike kubelet's, the volume is the
container's alone and starts empty again when the container restarts. :func:`pod_limits`
is kubelet's pod-level cgroup rule for ``resources.limits``, written by
``datapath.linux.cgrouplimits``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ciliary.datapath.linux import cgrouplimits
from ciliary.k8s import core, quantity
from ciliary.lab import process

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` of a container whose image sets none (containerd's and Docker's default)."""
CONTAINER_HOME = "/root"
DEFAULT_HIDDEN = (Path("/run/ciliary"), Path("/var/run/ciliary"))
HIDDEN_FS_NAME = "ciliary-pod-hidden"
EMPTY_DIR_FS_NAME = "ciliary-emptydir"
DROPPED_CAPS = ",".join(
    f"-{cap}"
    for cap in (
        "sys_admin", "sys_ptrace", "sys_module", "dac_read_search", "bpf", "perfmon",
        "sys_rawio", "sys_boot", "syslog", "mac_admin", "mac_override", "sys_time",
    )
)  # fmt: skip
"""Capabilities a container runtime never grants by default and that would undo the mount view:
``sys_admin`` (unmount the tmpfs, ``setns`` into the host's mount namespace), ``sys_ptrace``
(``/proc/<agent>/root``), ``dac_read_search`` (``open_by_handle_at``), ``bpf``/``perfmon`` (the
agents' maps), and the other host-wide ones."""


def container_env(pod_name: str, declared: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """The environment of a container of pod ``pod_name``: Kubernetes' own variables (the lab
    has no API server, so no ``KUBERNETES_SERVICE_*``), then the spec's ``env`` in order."""
    env = {"PATH": CONTAINER_PATH, "HOSTNAME": pod_name, "HOME": CONTAINER_HOME}
    env.update(declared)
    return env


def resolve_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with a bare command name the lab's virtualenv provides (``ciliary``) replaced by
    its absolute path; anything else is left for the container's ``PATH``."""
    if not argv or "/" in argv[0]:
        return list(argv)
    candidate = process.venv_bin() / argv[0]
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate), *argv[1:]]
    return list(argv)


def hidden_dirs(run_root: Path) -> list[Path]:
    """The existing directories to hide from pods: the lab's run directory and ciliary's default
    ones, each once (``/var/run`` is usually a link to ``/run``)."""
    out: list[Path] = []
    seen: set[Path] = set()
    for path in (run_root, *DEFAULT_HIDDEN):
        try:
            real = path.resolve(strict=True)
        except OSError:
            continue
        if real.is_dir() and real not in seen:
            seen.add(real)
            out.append(real)
    # an outer directory hides what is below it: drop nested ones (mount order matters)
    return [p for p in out if not any(o != p and p.is_relative_to(o) for o in out)]


def sandbox_argv(
    argv: Sequence[str],
    *,
    hide: Sequence[Path],
    keep: Sequence[Path] = (),
    user: RunAs | None = None,
    working_dir: str | None = None,
    pid_namespace: bool = False,
    join_cgroups: Sequence[Path] = (),
    empty_dirs: Sequence[EmptyDirMount] = (),
    files: Sequence[tuple[Path, Path]] = (),
) -> list[str]:
    """``argv`` (already resolved) behind a fresh mount namespace in which ``hide`` are empty
    tmpfs and each directory of ``keep`` (below one of ``hide``) is visible again, read-only;
    each ``(source, target)`` of ``files`` bound read-only over the existing file ``target``;
    optionally as ``user``, in ``working_dir`` (created if missing, as runc does), as PID 1 of
    a PID namespace of its own (``/proc`` remounted for it), with ``empty_dirs`` mounted and
    after joining the ``cgroup.procs`` files ``join_cgroups`` (see :func:`container_command`)."""
    lines = ["set -e"]
    for i, path in enumerate(keep):
        lines.append(f"exec {3 + i}< {shlex.quote(str(path))}")
    for i, (source, _) in enumerate(files):
        lines.append(f"exec {3 + len(keep) + i}< {shlex.quote(str(source))}")
    for path in hide:
        lines.append(
            f"mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev,noexec {HIDDEN_FS_NAME} "
            f"{shlex.quote(str(path))}"
        )
    for i, path in enumerate(keep):
        q = shlex.quote(str(path))
        # -c (no canonicalisation): the kernel follows the descriptor to the hidden directory
        lines.append(f"mkdir -p {q}")
        lines.append(f"mount -c --bind /proc/self/fd/{3 + i} {q}")
        lines.append(f"mount -c -o remount,bind,ro {q}")
        lines.append(f"exec {3 + i}<&-")
    for i, (_, target) in enumerate(files):
        fd, q = 3 + len(keep) + i, shlex.quote(str(target))
        lines.append(f"mount -c --bind /proc/self/fd/{fd} {q}")
        lines.append(f"mount -c -o remount,bind,ro {q}")
        lines.append(f"exec {fd}<&-")
    for vol in empty_dirs:
        q = shlex.quote(vol.path)
        size = f",size={vol.size_bytes}" if vol.size_bytes is not None else ""
        lines.append(f"mount -t tmpfs -o mode=0777,nosuid,nodev{size} {EMPTY_DIR_FS_NAME} {q}")
        if vol.read_only:
            lines.append(f"mount -o remount,ro {q}")
    if working_dir is not None:
        q = shlex.quote(working_dir)
        lines.append(f"mkdir -p -- {q}")
        lines.append(f"cd -- {q}")
    lines.append("unset PWD OLDPWD")  # the shells' own: not part of a container's environment
    ids = ""
    if user is not None:
        ids = f"--reuid={user.uid} --regid={user.gid} --clear-groups "
    lines.append(f'exec setpriv {ids}--inh-caps=-all --bounding-set={DROPPED_CAPS} -- "$@"')
    namespaces = ["--mount", "--propagation", "private"]
    if pid_namespace:
        # unshare forks: its child is PID 1 of the new namespace; --kill-child ends that child
        # (and with it the namespace) if unshare is killed
        namespaces += ["--pid", "--fork", "--kill-child", "--mount-proc"]
    wrapped = [
        "unshare", *namespaces, "--",
        "/bin/sh", "-c", "\n".join(lines), "ciliary-pod", *argv,
    ]  # fmt: skip
    if not join_cgroups:
        return wrapped
    join = 'while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'
    return ["/bin/sh", "-c", join, "ciliary-cgroups", *map(str, join_cgroups), "--", *wrapped]


def pod_command(
    argv: Sequence[str],
    run_root: Path,
    keep: Sequence[Path] = (),
    files: Sequence[tuple[Path, Path]] = (),
) -> list[str]:
    """The full argv the lab spawns for a container (or ``lab exec``) command."""
    for path in keep:
        path.mkdir(parents=True, exist_ok=True)
    return sandbox_argv(resolve_command(argv), hide=hidden_dirs(run_root), keep=keep, files=files)


class ContainerConfigError(Exception):
    """A container the runtime must not start (kubelet's ``CreateContainerConfigError``); the
    message is kubelet's, for the pod's status."""

    reason = "CreateContainerConfigError"


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int


def run_as(pod: str, spec: core.PodSpec, container: core.Container) -> RunAs:
    """The uid/gid ``container`` runs as: its ``securityContext``, else the pod's, else root (a
    lab container has no image whose ``USER`` would say otherwise). ``runAsNonRoot`` refuses
    root as kubelet does (``pod`` names the pod in the message)."""
    mine = container.security_context or core.SecurityContext()
    pods = spec.security_context or core.PodSecurityContext()
    uid = mine.run_as_user if mine.run_as_user is not None else pods.run_as_user
    gid = mine.run_as_group if mine.run_as_group is not None else pods.run_as_group
    non_root = mine.run_as_non_root if mine.run_as_non_root is not None else pods.run_as_non_root
    if non_root and uid == 0:
        raise ContainerConfigError(
            f"container's runAsUser breaks non-root policy (pod: {pod!r}, container:"
            f" {container.name})"
        )
    if non_root and uid is None:
        raise ContainerConfigError(
            f"container has runAsNonRoot and image will run as root (pod: {pod!r}, container:"
            f" {container.name})"
        )
    return RunAs(uid or 0, gid or 0)


@dataclass(frozen=True)
class EmptyDirMount:
    """An ``emptyDir`` as a container mounts it: where (a real, existing directory), its size
    limit in bytes (None: tmpfs's default) and whether it is read-only."""

    path: str
    size_bytes: int | None
    read_only: bool


def empty_dir_mounts(
    pod: str, spec: core.PodSpec, container: core.Container
) -> list[EmptyDirMount]:
    """``container``'s ``volumeMounts``, each of an ``emptyDir`` of ``spec.volumes`` over an
    existing directory; anything else is refused (ContainerConfigError naming ``pod``, the
    container and the mount): an undeclared volume, another source than ``emptyDir``, a
    ``mountPath`` that is not an absolute path of an existing directory other than ``/``."""
    volumes = {v.name: v for v in spec.volumes}
    out: list[EmptyDirMount] = []
    for i, mount in enumerate(container.volume_mounts):
        where = f"(pod: {pod!r}, container: {container.name}, volumeMounts[{i}])"
        volume = volumes.get(mount.name)
        if volume is None:
            raise ContainerConfigError(
                f"volumeMount {mount.name!r} names no volume of the pod's spec.volumes {where}"
            )
        if volume.empty_dir is None:
            raise ContainerConfigError(
                f"volume {mount.name!r}: a lab container mounts emptyDir volumes only {where}"
            )
        path = Path(mount.mount_path)
        if not path.is_absolute():
            raise ContainerConfigError(
                f"mountPath {mount.mount_path!r} must be an absolute path {where}"
            )
        real = path.resolve()
        if real == Path("/") or not real.is_dir():
            raise ContainerConfigError(
                f"mountPath {mount.mount_path!r}: expected an existing directory other than / of"
                f" the lab's machine (lab pods share its root file system; the lab creates no"
                f" mount point) {where}"
            )
        limit = volume.empty_dir.size_limit
        size = quantity.memory_bytes(limit) if limit is not None else None
        out.append(EmptyDirMount(str(real), size, mount.read_only))
    return out


def pod_limits(spec: core.PodSpec) -> cgrouplimits.Limits:
    """The pod cgroup's limits, kubelet's rule: a resource is limited at the pod level only when
    every container limits it, to the sum of their limits (one unlimited container leaves the
    pod unlimited)."""

    def total(resource: str, convert: Callable[[str | int | float], int]) -> int | None:
        values = []
        for c in spec.containers:
            limit = (c.resources.limits if c.resources else {}).get(resource)
            if limit is None:
                return None
            values.append(convert(limit))
        return sum(values) if values else None

    return cgrouplimits.Limits(
        cpu_millis=total("cpu", quantity.cpu_millis),
        memory_bytes=total("memory", quantity.memory_bytes),
    )


def container_command(
    pod: str,
    spec: core.PodSpec,
    container: core.Container,
    run_root: Path,
    *,
    keep: Sequence[Path] = (),
    join_cgroups: Sequence[Path] = (),
    files: Sequence[tuple[Path, Path]] = (),
) -> list[str]:
    """The argv a runtime spawns for ``container`` of pod ``pod`` (``namespace/name``): its
    ``command`` + ``args`` behind the pod's mount view (:func:`pod_command`), as its
    ``securityContext`` user (:func:`run_as`, which may refuse it: ContainerConfigError), with
    its ``emptyDir`` mounts (:func:`empty_dir_mounts`, which may refuse them too), in its
    ``workingDir``, as PID 1 of its own PID namespace, having joined ``join_cgroups`` (what
    :func:`ciliary.datapath.linux.cgrouplimits.apply` returned for :func:`pod_limits`). Spawn it
    with :func:`container_env` and into the pod's cgroup as today; the spawned pid is the
    namespace's ``unshare`` (it exits with the container's code); stop the container through
    its process group (:func:`ciliary.lab.process.stop_group`: ``unshare`` does not forward
    signals)."""
    who = run_as(pod, spec, container)
    empty_dirs = empty_dir_mounts(pod, spec, container)
    for path in keep:
        path.mkdir(parents=True, exist_ok=True)
    return sandbox_argv(
        resolve_command(container.argv()),
        hide=hidden_dirs(run_root),
        keep=keep,
        user=who,
        working_dir=container.working_dir,
        pid_namespace=True,
        join_cgroups=join_cgroups,
        empty_dirs=empty_dirs,
        files=files,
    )


def exec_argv(
    netns_path: str | Path,
    argv: Sequence[str],
    run_root: Path,
    files: Sequence[tuple[Path, Path]] = (),
    cgroup: Path | None = None,
) -> list[str]:
    """A command run in a pod from outside (``lab exec``, tests): in the pod's netns and behind
    the same mount view as its containers (``kubectl exec`` joins the container's), and in the
    pod's ``cgroup`` when given (joined before anything runs, so nothing it starts escapes)."""
    inner = ["nsenter", f"--net={netns_path}", "--", *pod_command(argv, run_root, files=files)]
    if cgroup is None:
        return inner
    procs = str(cgroup / "cgroup.procs")
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *inner]


__all__ = [
    "CONTAINER_PATH",
    "ContainerConfigError",
    "EmptyDirMount",
    "RunAs",
    "container_command",
    "container_env",
    "empty_dir_mounts",
    "exec_argv",
    "hidden_dirs",
    "pod_command",
    "pod_limits",
    "resolve_command",
    "run_as",
    "sandbox_argv",
]
