"""A pod process's environment and mount view (#10.20, #10.23), checked on the wrapper itself:
it runs for real (a private mount namespace of its own, nothing changes on the host)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ciliary.lab import podsandbox, process
from ciliary.lab.podsandbox import CONTAINER_PATH, container_env, resolve_command


def test_container_env_is_kubernetes_own_then_the_spec() -> None:
    env = container_env("web-1", [("A", "1"), ("PATH", "/opt/bin")])
    assert env == {"PATH": "/opt/bin", "HOSTNAME": "web-1", "HOME": "/root", "A": "1"}
    assert container_env("p")["PATH"] == CONTAINER_PATH


def test_lab_commands_resolve_to_the_virtualenv() -> None:
    assert resolve_command(["ciliary", "workload", "pause"]) == [
        str(process.venv_bin() / "ciliary"), "workload", "pause",
    ]  # fmt: skip
    assert resolve_command(["ping", "-c1", "x"]) == ["ping", "-c1", "x"]  # the pod's PATH
    assert resolve_command(["/bin/true"]) == ["/bin/true"]


def test_hidden_dirs_are_empty_and_kept_dirs_read_only(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "mount namespaces need root (privileged tests run as root)"
    run_root = tmp_path / "run"
    secret = run_root / "node" / "agent.sock"
    keep = run_root / "lab" / "x" / "dns"
    keep.mkdir(parents=True)
    (keep / "records.json").write_text("{}")
    secret.parent.mkdir(parents=True)
    secret.write_text("secret")
    script = (
        f"ls -A {run_root}; cat {keep}/records.json; echo; test -e {secret} || echo hidden; "
        f"touch {keep}/x 2>/dev/null || echo read-only; umount {run_root} 2>/dev/null "
        "|| echo no-umount; env"
    )
    argv = podsandbox.sandbox_argv(["/bin/sh", "-c", script], hide=[run_root], keep=[keep])
    res = subprocess.run(argv, env={"PATH": CONTAINER_PATH, "X": "1"}, capture_output=True,
                         text=True, timeout=30, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:5] == ["lab", "{}", "hidden", "read-only", "no-umount"]
    assert secret.read_text() == "secret"  # the host still sees it
    assert not (keep / "x").exists()
