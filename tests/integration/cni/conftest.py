"""Fixtures for the CNI integration tests: a real agent in its own node netns, pod netns, and a
way to execute the real plugin binaries as a runtime would.

Everything is uniquely named per run (``cn<hex>`` nodes, ``cicn-``/``cicp-`` netns) and removed
in finalizers, also when a test fails: the agent is stopped (SIGTERM, then SIGKILL), every netns
made is deleted, the node's state dir and BPF pins are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ciliary.client.agent import AgentClient, AgentClientError
from ciliary.core.defaults import ENVOY_PIDFILE, ENVOY_STATE
from ciliary.datapath.libbpf import TcDirection, tcx_programs
from ciliary.datapath.linux.link import in_netns as in_thread_netns
from ciliary.processes import stop_recorded

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python")
RUN_ROOT = Path("/run/ciliary")
PIN_ROOT = Path("/sys/fs/bpf/ciliary")
NETNS_DIR = Path("/run/netns")
AGENT_START_TIMEOUT = 60.0
"""As the lab's (manager.AGENT_READY_TIMEOUT): an agent's start-up is its imports and the
verifier's passes over its BPF objects, some 6 s on a quiet 2-core machine and over 20 s on a
loaded one (the soak restarts the agent a dozen times)."""
CNI_TIMEOUT = 30.0


def unique(prefix: str) -> str:
    return prefix + secrets.token_hex(3)


def sh(*argv: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def netns_add(name: str) -> Path:
    sh("ip", "netns", "add", name)
    return NETNS_DIR / name


def netns_del(name: str) -> None:
    if (NETNS_DIR / name).exists():
        sh("ip", "netns", "del", name, check=False)


def in_netns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *argv, check=check)


def tcx_names(netns: str, dev: str, direction: TcDirection) -> list[str]:
    """The names of the programs on a device's tcx hook (``bpftool`` 7.1 does not list them;
    the kernel keeps 15 characters of a name)."""
    with in_thread_netns(str(NETNS_DIR / netns)):
        return [name for _, name in tcx_programs(socket.if_nametoindex(dev), direction)]


@pytest.fixture(autouse=True, scope="session")
def _must_be_root() -> None:
    # Privileged tests run here (we are root in CI); refusing loudly beats skipping silently.
    assert os.geteuid() == 0, "the CNI integration tests need root (netns, BPF): run as root"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration/cni" in str(item.fspath):
            item.add_marker(pytest.mark.privileged)


# --------------------------------------------------------------------------- the agent


@dataclass
class NodeAgent:
    """One real ``ciliary.agent.main`` process serving a node that is a netns."""

    node: str
    netns: str
    ipv4_range: str | None
    ipv6_range: str | None
    log: Path
    extra_args: tuple[str, ...] = ()
    """More agent flags (``--routing-mode native``, ``--ipv4-node``...)."""
    proc: subprocess.Popen[bytes] | None = None
    _log_file: Any = field(default=None, repr=False)

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def socket(self) -> Path:
        return RUN_ROOT / self.node / "agent.sock"

    def client(self) -> AgentClient:
        return AgentClient(self.socket, timeout=10.0)

    def start(self) -> None:
        assert self.proc is None, "agent already running"
        argv = [PYTHON, "-m", "ciliary.agent.main", "--node-name", self.node, "--netns", self.netns]
        if self.ipv4_range:
            argv += ["--ipv4-range", self.ipv4_range]
        if self.ipv6_range:
            argv += ["--ipv6-range", self.ipv6_range]
        argv += self.extra_args
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode}): {self.log_tail()}")
            if self.socket.exists():
                with contextlib.suppress(AgentClientError), self.client() as cl:
                    cl.healthz()
                    return
            time.sleep(0.05)
        raise AssertionError(f"agent not healthy in {AGENT_START_TIMEOUT}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def links(self, prefix: str = "") -> set[str]:
        out = in_netns(self.netns, "ip", "-j", "link", "show").stdout
        names = {str(link["ifname"]) for link in json.loads(out or "[]")}
        return {n for n in names if n.startswith(prefix)}


@contextlib.contextmanager
def node_agent(
    log_dir: Path, ipv4: str | None, ipv6: str | None, extra_args: tuple[str, ...] = ()
) -> Iterator[NodeAgent]:
    suffix = secrets.token_hex(3)
    agent = NodeAgent(
        node=f"cn{suffix}",
        netns=f"cicn-{suffix}",
        ipv4_range=ipv4,
        ipv6_range=ipv6,
        log=log_dir / f"agent-cn{suffix}.log",
        extra_args=extra_args,
    )
    try:
        netns_add(agent.netns)
        agent.start()
        yield agent
    finally:
        agent.stop()
        # the node's Envoy outlives its agent (the next one adopts it): ended by its pid file
        stop_recorded(RUN_ROOT / agent.node / ENVOY_STATE / ENVOY_PIDFILE)
        netns_del(agent.netns)
        shutil.rmtree(RUN_ROOT / agent.node, ignore_errors=True)
        shutil.rmtree(PIN_ROOT / agent.node, ignore_errors=True)
        for parent in (PIN_ROOT, RUN_ROOT):
            with contextlib.suppress(OSError):
                parent.rmdir()  # only when empty: other agents/labs may live there
        assert not (NETNS_DIR / agent.netns).exists()
        assert not (RUN_ROOT / agent.node).exists()
        assert not (PIN_ROOT / agent.node).exists()


# --------------------------------------------------------------------------- pods


@dataclass
class Pods:
    """Pod network namespaces made by one test; all deleted at its end."""

    made: list[str] = field(default_factory=list)

    def new(self) -> tuple[str, str]:
        name = unique("cicp-")
        self.made.append(name)
        return name, str(netns_add(name))

    def remove(self, name: str) -> None:
        netns_del(name)

    def cleanup(self) -> None:
        for name in self.made:
            netns_del(name)


@pytest.fixture
def pods() -> Iterator[Pods]:
    p = Pods()
    try:
        yield p
    finally:
        p.cleanup()


# --------------------------------------------------------------------------- running plugins


@dataclass
class CNIRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"rc={self.rc} stdout={self.stdout!r} stderr={self.stderr[-2000:]!r}"


def run_plugin(
    command: str | None,
    conf: Mapping[str, Any] | str,
    *,
    plugin: str = "ciliary-cni",
    container_id: str | None = None,
    netns: str | None = None,
    ifname: str | None = "eth0",
    args: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> CNIRun:
    """Execute a plugin binary of the venv as a runtime does: env + stdin, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "CILIARY_"))}
    env["CNI_PATH"] = f"{VENV_BIN}:/usr/lib/cni"
    for key, value in (
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", args),
    ):
        if value is not None:
            env[key] = value
    env.update(extra_env or {})
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    proc = subprocess.run(
        [str(VENV_BIN / plugin)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=CNI_TIMEOUT,
        check=False,
    )
    return CNIRun(proc.returncode, proc.stdout.strip(), proc.stderr)


def assert_cni_error(run: CNIRun, code: int, *fragments: str) -> dict[str, Any]:
    """A spec error: non-zero exit, one JSON object with cniVersion/code/msg on stdout."""
    assert run.rc != 0, str(run)
    err = run.json
    assert isinstance(err, dict), str(run)
    assert err["code"] == code, str(run)
    assert set(err) <= {"cniVersion", "code", "msg", "details"}, str(run)
    assert isinstance(err["msg"], str) and err["msg"] and "\n" not in err["msg"], str(run)
    for fragment in fragments:
        assert fragment in err["msg"], f"{fragment!r} not in {err['msg']!r}"
    return err
