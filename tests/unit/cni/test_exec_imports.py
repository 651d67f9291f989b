"""A runtime execs a plugin for every verb of every pod, and in Python the imports are most of an
exec's cost: pydantic and httpx alone were ~180 ms of a ~200 ms ADD. So both plugins import the
standard library and ``ciliary.cni`` only. These tests run the real modules as executables (with
``-X importtime``, which logs every module imported) and fail when anything else creeps in,
verb by verb, against a fake agent (ADD and CHECK also with a real netns when we may make one).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ciliary.cni import launcher

from .conftest import FakeAgent, http
from .test_agentapi import ENDPOINT

PYTHON = sys.executable
PLUGINS = {"ciliary-cni": "ciliary.cni.main", "ciliary-ipam": "ciliary.cni.ipam_main"}
FORBIDDEN = {"pydantic", "pydantic_core", "httpx", "httpcore", "anyio", "rich", "yaml"}
VERBS = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]


def imported(stderr: str) -> list[str]:
    """Module names from a ``-X importtime`` log, in the order they finished importing."""
    names = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.append(name)
    return names


@pytest.fixture(scope="module")
def interpreter_modules() -> set[str]:
    """What the interpreter imports before any plugin code (site, .pth hooks, ...)."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    return set(imported(proc.stderr))


def exec_plugin(
    module: str, command: str, conf: dict[str, Any], netns: str = "/run/netns/none"
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "CILIARY_"))}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID="c1", CNI_NETNS=netns, CNI_IFNAME="eth0",
               CNI_PATH="/opt/cni/bin")  # fmt: skip
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", module],
        input=json.dumps(conf),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return proc, imported(proc.stderr)


def assert_stdlib_only(modules: list[str], interpreter: set[str]) -> None:
    assert modules, "no -X importtime log"
    assert not FORBIDDEN & {m.split(".")[0] for m in modules}
    for name in modules:
        if name in interpreter:
            continue
        top = name.split(".")[0]
        ours = name in ("ciliary", "ciliary.cni") or name.startswith("ciliary.cni.")
        assert ours or top in sys.stdlib_module_names, f"a plugin exec imports {name}"


@pytest.mark.parametrize("plugin", PLUGINS)
def test_version_imports_only_the_standard_library(
    plugin: str, interpreter_modules: set[str]
) -> None:
    proc, modules = exec_plugin(PLUGINS[plugin], "VERSION", {"cniVersion": "1.0.0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"
    assert_stdlib_only(modules, interpreter_modules)


def conf_for(plugin: str, agent: FakeAgent) -> dict[str, Any]:
    valid = [{"containerID": "c1", "ifname": "eth0"}]
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.5/32"}]}
    base = {"cniVersion": "1.1.0", "name": "net", "prevResult": prev,
            "cni.dev/valid-attachments": valid}  # fmt: skip
    if plugin == "ciliary-cni":
        return {**base, "type": "ciliary-cni", "agent_socket": str(agent.socket)}
    return {**base, "type": "bridge", "ipam": {"type": "ciliary-ipam",
                                                "agent_socket": str(agent.socket)}}  # fmt: skip


def serve_everything(agent: FakeAgent) -> None:
    allocation = {
        "owner": "c1/eth0",
        "kind": "ipam-plugin",
        "family": 4,
        "address": "10.0.0.5",
        "prefix_len": 24,
        "gateway": "10.0.0.1",
        "pool": "default",
        "created_at": 1.0,
    }
    allocations = http(200, {"allocations": [allocation]})
    gc = http(200, {"endpoints_removed": [], "addresses_released": []})
    for method, path, reply in [
        ("PUT", "/v1/endpoint", http(201, ENDPOINT)),
        ("GET", "/v1/endpoint", http(200, [ENDPOINT])),
        ("DELETE", "/v1/endpoint/7", http(200, ENDPOINT)),
        ("POST", "/v1/endpoint/check", http(200, {"ok": True, "problems": []})),
        ("POST", "/v1/gc", gc),
        ("GET", "/v1/healthz", http(200, {"status": "ok", "node": "fake-node"})),
        ("POST", "/v1/ipam", allocations),
        ("DELETE", "/v1/ipam", allocations),
        ("GET", "/v1/ipam", allocations),
    ]:  # fmt: skip
        agent.reply(method, path, reply)


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[str | None]:
    """A network namespace other than ours (ADD and CHECK insist), when we may make one."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        yield None
        return
    holder = subprocess.Popen(
        ["unshare", "--net", "sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        path = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):
            if holder.poll() is None and os.readlink(path) != os.readlink("/proc/self/ns/net"):
                break
            subprocess.run(["sleep", "0.02"], check=False)
        yield path if holder.poll() is None else None
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_verb_imports_only_the_standard_library(
    plugin: str,
    verb: str,
    fake_agent: FakeAgent,
    interpreter_modules: set[str],
    pod_netns: str | None,
) -> None:
    serve_everything(fake_agent)
    needs_netns = plugin == "ciliary-cni" and verb in ("ADD", "CHECK")
    if needs_netns and pod_netns is None:
        pytest.skip("needs a network namespace of its own (root and unshare)")
    netns = pod_netns if needs_netns and pod_netns else "/run/netns/none"
    proc, modules = exec_plugin(PLUGINS[plugin], verb, conf_for(plugin, fake_agent), netns)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    if verb != "VERSION":
        assert fake_agent.requests, "the verb never reached the agent"
    if verb == "ADD":
        assert json.loads(proc.stdout)["ips"][0]["address"].startswith("10.0.0.5/")
    assert_stdlib_only(modules, interpreter_modules)


def test_the_executables_are_these_modules() -> None:
    """The executables a runtime execs are the modules tested above, as setup installs them:
    the launchers (``-IS``, the package's directory on ``sys.path``), not pip's console scripts
    (after a ``pip install``, ``make setup`` writes them again)."""
    bin_dir = Path(PYTHON).parent
    for plugin, module in PLUGINS.items():
        script = bin_dir / plugin
        assert script.exists(), f"{script} is not installed (make setup)"
        text = script.read_text()
        assert f"from {module} import main" in text
        want = launcher.script(PYTHON, str(launcher.package_root()), module)
        assert text == want, f"{script} is not ciliary.cni.launcher's (make setup writes it)"


# --------------------------------------------------------------------------- the hot path
#
# ADD and DEL run for every pod and VERSION whenever a runtime probes: on those, a plugin exec
# imports the modules below and nothing else. Everything outside the list (``json`` and ``re``
# ~9 ms, ``socket`` and ``enum`` ~10 ms, ``ipaddress`` ~5 ms, ``typing``...) fails the test:
# a new import there needs a measurement and a line here.

HOT_VERBS = ["ADD", "DEL", "VERSION"]
HOT_PATH_MODULES = frozenset((
    "ciliary", "ciliary.cni", "ciliary.cni.main", "ciliary.cni.spec", "ciliary.cni.agentapi",
    "ciliary.cni.cjson", "ciliary.cni.ipam_main",
    "__future__", "gc", "errno", "fcntl", "_json", "_socket",
    "os", "stat", "_stat", "posixpath", "genericpath", "_collections_abc",
))  # fmt: skip


@pytest.fixture(scope="module")
def launchers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Launchers written as setup writes them, for the interpreter running the tests."""
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    launcher.install(bin_dir, python=PYTHON)
    return {plugin: bin_dir / plugin for plugin in PLUGINS}


def exec_launcher(
    path: Path, command: str, conf: dict[str, Any], netns: str, *, importtime: bool
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Exec a launcher as a runtime does, with nothing but ``CNI_*`` in its environment. With
    ``importtime``: its #! line's interpreter and flags, plus ``-X importtime``."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}  # fmt: skip
    argv = [str(path)]
    if importtime:
        interpreter, flags = path.read_text().splitlines()[0].removeprefix("#!").split(" ")
        argv = [interpreter, flags, "-X", "importtime", str(path)]
    proc = subprocess.run(
        argv, input=json.dumps(conf), capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    return proc, imported(proc.stderr)


@functools.cache
def hot_path_allowed() -> frozenset[str]:
    """What ``python -I -S`` imports before any code of a launcher, and HOT_PATH_MODULES."""
    proc = subprocess.run(
        [PYTHON, "-I", "-S", "-X", "importtime", "-c", "pass"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return HOT_PATH_MODULES | set(imported(proc.stderr))


@pytest.mark.parametrize("verb", HOT_VERBS)
@pytest.mark.parametrize("plugin", PLUGINS)
def test_the_hot_path_imports_only_what_it_needs(
    plugin: str,
    verb: str,
    fake_agent: FakeAgent,
    launchers: dict[str, Path],
    pod_netns: str | None,
) -> None:
    serve_everything(fake_agent)
    if plugin == "ciliary-cni" and verb == "ADD" and pod_netns is None:
        pytest.skip("needs a network namespace of its own (root and unshare)")
    netns = (
        pod_netns if plugin == "ciliary-cni" and verb == "ADD" and pod_netns else "/run/netns/none"
    )
    conf = conf_for(plugin, fake_agent)
    proc, modules = exec_launcher(launchers[plugin], verb, conf, netns, importtime=True)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    if verb == "ADD":
        assert json.loads(proc.stdout)["ips"][0]["address"].startswith("10.0.0.5/")
    assert modules, "no -X importtime log"
    extra = [m for m in modules if m not in hot_path_allowed()]
    assert not extra, f"a {plugin} {verb} imports {extra} (see HOT_PATH_MODULES)"


def test_a_launcher_runs_isolated_in_a_bare_environment(
    fake_agent: FakeAgent, launchers: dict[str, Path], tmp_path: Path
) -> None:
    """Exec'd through its #! line with only ``CNI_*`` set (no PATH, no HOME), a launcher still
    finds the package; ``PYTHON*`` variables of the runtime cannot redirect it (-I)."""
    serve_everything(fake_agent)
    conf = conf_for("ciliary-cni", fake_agent)
    proc, _ = exec_launcher(launchers["ciliary-cni"], "DEL", conf, "", importtime=False)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    assert [r.method for r in fake_agent.requests][:1] == ["GET"], "DEL never reached the agent"
    trap = tmp_path / "ciliary" / "cni"
    trap.mkdir(parents=True)
    (trap.parent / "__init__.py").write_text("")
    (trap / "__init__.py").write_text("")
    (trap / "main.py").write_text("raise SystemExit('PYTHONPATH was honoured')\n")
    proc = subprocess.run(
        [str(launchers["ciliary-cni"])], input="", capture_output=True, text=True, timeout=60,
        env={"CNI_COMMAND": "VERSION", "PYTHONPATH": str(tmp_path), "PYTHONHOME": "/nonexistent"},
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout)["supportedVersions"], proc.stderr


def test_a_launcher_refuses_an_interpreter_no_kernel_can_exec() -> None:
    for python in ("python3", "/opt/my python/bin/python3", "/" + "p" * 300):
        with pytest.raises(launcher.LauncherError, match="interpreter path"):
            launcher.script(python, "/src", "ciliary.cni.main")
