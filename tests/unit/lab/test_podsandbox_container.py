"""A container's identity, working directory, PID namespace and cgroup limits (#12.5), from its
spec (``ciliary.k8s.core``) to a process that really runs that way: uid/gid from the
``securityContext`` (the container's over the pod's; ``runAsNonRoot`` refusing root as kubelet
does), ``workingDir``, PID 1 of its own PID namespace, and the pod's memory/CPU limits in the
cgroup it runs in (v2 ``memory.max``/``cpu.max``, or v1 on a hybrid host)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliary.datapath.linux import cgroup, cgrouplimits
from ciliary.k8s import core
from ciliary.lab import podsandbox, process
from ciliary.lab.podsandbox import ContainerConfigError, RunAs, pod_limits, run_as


def spec(containers: list[dict[str, Any]], **pod: Any) -> core.PodSpec:
    return core.PodSpec.model_validate({"containers": containers, **pod})


def test_run_as_container_over_pod_then_root() -> None:
    s = spec(
        [
            {"name": "a", "securityContext": {"runAsUser": 1000}},
            {"name": "b"},
            {"name": "c", "securityContext": {"runAsUser": 7, "runAsGroup": 8}},
        ],
        securityContext={"runAsUser": 33, "runAsGroup": 44},
    )
    assert [run_as("t/p", s, c) for c in s.containers] == [
        RunAs(1000, 44), RunAs(33, 44), RunAs(7, 8),
    ]  # fmt: skip
    assert run_as("t/p", spec([{"name": "a"}]), spec([{"name": "a"}]).containers[0]) == RunAs(0, 0)


def test_run_as_non_root_refuses_root_as_kubelet() -> None:
    s = spec([{"name": "a"}], securityContext={"runAsNonRoot": True})
    with pytest.raises(ContainerConfigError, match=r"runAsNonRoot and image will run as root "):
        run_as("t/p", s, s.containers[0])
    s = spec([{"name": "a", "securityContext": {"runAsUser": 0, "runAsNonRoot": True}}])
    with pytest.raises(ContainerConfigError, match="runAsUser breaks non-root policy"):
        podsandbox.container_command("t/p", s, s.containers[0], Path("/run/ciliary"))
    # the container may lift the pod's requirement, and a non-root uid satisfies it
    s = spec(
        [{"name": "a", "securityContext": {"runAsNonRoot": False}}, {"name": "b"}],
        securityContext={"runAsNonRoot": True, "runAsUser": 101},
    )
    assert [run_as("t/p", s, c) for c in s.containers] == [RunAs(101, 0), RunAs(101, 0)]
    assert ContainerConfigError.reason == "CreateContainerConfigError"


def test_pod_limits_and_cgroup_files() -> None:
    limited = spec([
        {"name": "a", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}},
        {"name": "b", "resources": {"limits": {"cpu": 1, "memory": "1Gi"}}},
    ])  # fmt: skip
    limits = pod_limits(limited)
    assert limits == cgrouplimits.Limits(cpu_millis=1250, memory_bytes=64 * 2**20 + 2**30)
    assert limits.v2_files() == {
        "cpu": ("cpu.max", "125000 100000"),
        "memory": ("memory.max", str(64 * 2**20 + 2**30)),
    }
    assert limits.v1_files()["cpu"] == [
        ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "125000"),
    ]  # fmt: skip
    # one container without a memory limit leaves the pod's memory unlimited (kubelet's rule)
    partial = spec([
        {"name": "a", "resources": {"limits": {"cpu": "1m", "memory": "64Mi"}}},
        {"name": "b", "resources": {"limits": {"cpu": "1m"}}},
    ])  # fmt: skip
    assert pod_limits(partial) == cgrouplimits.Limits(cpu_millis=2, memory_bytes=None)
    assert pod_limits(partial).v2_files() == {"cpu": ("cpu.max", "1000 100000")}  # the floor
    with pytest.raises(ValueError, match="quantities must match"):
        spec([{"name": "a", "resources": {"limits": {"memory": "64MB"}}}])


def test_default_wrapper_unchanged() -> None:
    argv = podsandbox.sandbox_argv(["/bin/true"], hide=[Path("/run/ciliary")])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert "setpriv --inh-caps=-all" in argv[7]


@pytest.fixture
def pod_cgroup() -> Iterator[str]:
    relpath = f"ciliary-test-{uuid.uuid4().hex[:8]}"
    try:
        yield relpath
    finally:
        cgroup.kill_and_remove(cgroup.create(relpath))
        cgrouplimits.remove_v1(relpath)


def _spawn(argv: list[str], relpath: str, log: Path) -> tuple[int, int | None]:
    return process.spawn(
        argv,
        netns_path=None,
        cgroup_path=cgroup.create(relpath),
        log_path=log,
        env=podsandbox.container_env("web"),
        inherit_env=False,
    )


def _memory_limit(pid_cgroups: str, relpath: str) -> str:
    """The memory limit of the group the process reported being in (v2 or v1)."""
    root = cgroup.cgroup2_root()
    for line in pid_cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if (
            controllers == ""
            and root is not None
            and (root / path.lstrip("/") / "memory.max").exists()
        ):
            return (root / path.lstrip("/") / "memory.max").read_text().strip()
        if "memory" in controllers.split(","):
            group = cgrouplimits.v1_group("memory", relpath)
            assert group is not None and str(group).endswith(path), (group, path)
            return (group / "memory.limit_in_bytes").read_text().strip()
    raise AssertionError(f"no memory cgroup in {pid_cgroups}")


def test_container_runs_as_its_user_in_its_dir_as_pid_1_limited(
    tmp_path: Path, pod_cgroup: str
) -> None:
    assert os.geteuid() == 0, "namespaces and setpriv need root (privileged tests run as root)"
    work = Path(tempfile.mkdtemp(prefix="ciliary-wd-", dir="/tmp"))
    try:
        os.chmod(work, 0o755)
        script = (
            "id -u; id -g; id -G; pwd; echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
            "ls /proc | grep -c '^[0-9]'; cat /proc/self/cgroup"
        )
        s = spec(
            [{"name": "app", "command": ["/bin/sh", "-c", script], "workingDir": str(work / "w"),
              "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
              "securityContext": {"runAsUser": 1000, "runAsNonRoot": True}}],
            securityContext={"runAsGroup": 2000},
        )  # fmt: skip
        join = cgrouplimits.apply(pod_cgroup, pod_limits(s))
        argv = podsandbox.container_command(
            "t/web", s, s.containers[0], tmp_path / "run", join_cgroups=join
        )
        log = tmp_path / "c.log"
        pid, _ = _spawn(argv, pod_cgroup, log)
        deadline = time.monotonic() + 10
        while (code := process.exit_status(pid)) is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        out = log.read_text().splitlines()
        assert code == 0, out
        assert out[:5] == ["1000", "2000", "2000", str(work / "w"), "1"], out
        assert out[5].startswith("/bin/sh -c id -u"), out  # PID 1 is the container's command
        assert int(out[6]) <= 3, out  # its namespace holds itself and its children only
        assert _memory_limit("\n".join(out[7:]), pod_cgroup) == str(64 * 2**20)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_empty_dir_is_a_fresh_tmpfs_the_user_writes_over_an_existing_directory(
    tmp_path: Path, pod_cgroup: str
) -> None:
    """A non-root container writes into its emptyDir (a tmpfs of its own mount namespace, mode
    0777, ``sizeLimit`` its size); the machine's directory under it is neither seen nor changed."""
    under = Path(tempfile.mkdtemp(prefix="ciliary-ed-", dir="/tmp"))
    try:
        (under / "host-file").write_text("the machine's\n")
        script = (
            f"ls -A {under}; echo hi > {under}/f; cat {under}/f; stat -c %a {under}; df -k {under}"
        )
        s = spec(
            [{"name": "app", "command": ["/bin/sh", "-c", script],
              "securityContext": {"runAsUser": 1000},
              "volumeMounts": [{"name": "scratch", "mountPath": str(under)}]}],
            volumes=[{"name": "scratch", "emptyDir": {"sizeLimit": "8Mi"}}],
        )  # fmt: skip
        argv = podsandbox.container_command("t/web", s, s.containers[0], tmp_path / "run")
        log = tmp_path / "c.log"
        pid, _ = _spawn(argv, pod_cgroup, log)
        deadline = time.monotonic() + 10
        while (code := process.exit_status(pid)) is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        out = log.read_text().splitlines()
        assert code == 0, out
        assert out[:2] == ["hi", "777"], out  # empty: the host's file is not there
        assert out[-1].split()[0] == podsandbox.EMPTY_DIR_FS_NAME, out
        assert out[-1].split()[1] == str(8 * 1024), out
        assert sorted(p.name for p in under.iterdir()) == ["host-file"]
    finally:
        shutil.rmtree(under, ignore_errors=True)


@pytest.mark.parametrize(
    ("mounts", "volumes", "expected"),
    [
        ([{"name": "x", "mountPath": "/tmp"}], [], "names no volume"),
        (
            [{"name": "x", "mountPath": "/tmp"}],
            [{"name": "x", "hostPath": {"path": "/"}}],
            "emptyDir volumes only",
        ),
        ([{"name": "x", "mountPath": "tmp"}], [{"name": "x", "emptyDir": {}}], "absolute path"),
        ([{"name": "x", "mountPath": "/"}], [{"name": "x", "emptyDir": {}}], "other than /"),
        (
            [{"name": "x", "mountPath": "/nonexistent/ciliary"}],
            [{"name": "x", "emptyDir": {}}],
            "expected an existing directory",
        ),
    ],
)
def test_empty_dir_mounts_refused_as_kubelet(
    mounts: list[dict[str, Any]], volumes: list[dict[str, Any]], expected: str
) -> None:
    s = spec([{"name": "app", "command": ["true"], "volumeMounts": mounts}], volumes=volumes)
    with pytest.raises(ContainerConfigError, match=expected) as info:
        podsandbox.container_command("t/web", s, s.containers[0], Path("/run/ciliary"))
    assert "pod: 't/web', container: app, volumeMounts[0]" in str(info.value)


def test_started_recognised_and_stopped_through_its_group(tmp_path: Path, pod_cgroup: str) -> None:
    loop = "trap 'exit 7' TERM; echo trapped; while :; do sleep 0.1; done"
    s = spec([{"name": "app", "command": ["/bin/sh", "-c", loop]}])
    argv = podsandbox.container_command("t/web", s, s.containers[0], tmp_path / "run")
    log = tmp_path / "c.log"
    pid, started = _spawn(argv, pod_cgroup, log)
    t0 = time.monotonic()
    assert process.wait_exec(pid, started, s.containers[0].argv(), timeout=5) is None
    assert time.monotonic() - t0 < 3, "the command behind unshare --fork was not recognised"
    # the shell is its PID namespace's init, which the kernel spares any signal it has no
    # handler for: a SIGTERM before the trap is set would be ignored, not a failure of stop_group
    while "trapped" not in log.read_text() and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    t0 = time.monotonic()
    process.stop_group(pid, started, timeout=5)
    assert not process.alive(pid, started)
    assert time.monotonic() - t0 < 3, "SIGTERM did not reach the container (SIGKILL ended it)"
    assert cgroup.pids(cgroup.create(pod_cgroup)) == []
