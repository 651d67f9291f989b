"""Fixtures for whole-lab tests: unique names per run, and a finalizer that removes the lab and
then proves nothing of it is left (netns, pins, state, cgroups, processes), also on failure."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ciliary.datapath.linux.cgroup import cgroup2_root
from ciliary.lab import manager
from ciliary.lab.state import LabView

REPO = Path(__file__).resolve().parents[2]
CILIARY = str(REPO / ".venv" / "bin" / "ciliary")


@pytest.hookimpl(trylast=True)  # after pytest's own reordering (by fixture), not undone by it
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(pytest.mark.privileged)
    _sharers_together(items)


def _sharers_together(items: list[pytest.Item]) -> None:
    """The modules that share a lab (``SHARES_LAB``) run one after the other, where the first
    of them would run: the lab is up for their time only, not idle (its agents, control plane
    and pods a load on the machine) while the modules between them run. Each module's tests
    keep their order. A module that sets ``SHARES_LAB_FRESH`` (it asserts on the whole of the
    lab as ``lab up`` made it, e.g. its exact endpoints) comes first in its group: the others
    only add under names of their own, so it takes the lab before any of them has; one that
    sets ``SHARES_LAB_LAST`` (it leaves the lab in a state no other may see) comes last. Where
    the modules' ``lab`` fixture is parametrized (a lab per routing mode, ``sharing``'s
    ``variant``), the group runs a parameter at a time, all its modules' tests of that one
    before the next: one of those labs is up at a time (pytest sets a module's fixtures up
    again when its tests resume)."""

    def param(item: pytest.Item) -> object:
        callspec = getattr(item, "callspec", None)
        return None if callspec is None else callspec.params.get("lab")

    def module(item: pytest.Item) -> object:
        return getattr(item, "module", None)

    groups: dict[object, list[object]] = {}  # key -> its modules, in order of first test
    for item in items:
        mod = module(item)
        key = getattr(mod, SHARES_LAB, None)
        if key is not None and mod not in groups.setdefault(key, []):
            groups[key].append(mod)
    if not groups:
        return

    def place(m: object) -> int:  # the fresh one first, the last one last
        if getattr(m, SHARES_LAB_FRESH, False):
            return 0
        return 2 if getattr(m, SHARES_LAB_LAST, False) else 1

    for mods in groups.values():  # stable: the others as they were
        mods.sort(key=place)
    tests: dict[int, list[pytest.Item]] = {}
    for item in items:
        tests.setdefault(id(module(item)), []).append(item)
    ordered: list[pytest.Item] = []
    placed: set[int] = set()
    for item in items:
        mod = module(item)
        if id(mod) in placed:
            continue
        key = getattr(mod, SHARES_LAB, None)
        block: list[pytest.Item] = []
        for m in groups[key] if key is not None else [mod]:
            block += tests[id(m)]
            placed.add(id(m))
        rank: dict[object, int] = {}
        for i in block:
            rank.setdefault(param(i), len(rank))
        ordered += sorted(block, key=lambda i: rank[param(i)])  # stable: one param at a time
    items[:] = ordered


@pytest.fixture(autouse=True, scope="session")
def _must_be_root() -> None:
    # Privileged tests run here (we are root in CI); refusing loudly beats skipping silently.
    assert os.geteuid() == 0, "the e2e suite needs root (netns, BPF): run it as root"


@dataclass
class Lab:
    name: str
    node: str
    view: LabView
    file: Path

    def pod_ip(self, key: str, family: int = 4) -> str:
        for p in manager.status(self.name).pods:
            if f"{p.namespace}/{p.name}" == key:
                ip = p.ipv4 if family == 4 else p.ipv6
                assert ip is not None
                return ip
        raise KeyError(key)

    def run(self, pod: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(pod, list(argv), name=self.name, timeout=timeout)


def unique(prefix: str = "t") -> str:
    return prefix + secrets.token_hex(3)


LAB_TEMPLATE = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  monitorAggregation: {aggregation}
  # kubelet's maxContainerRestartPeriod: an agent test_lab_supervisor kills is back after 2 s,
  # not 10 s and 20 s (longer than its echo while the agent is down)
  kubelet: {{crashLoopBackOff: {{maxContainerRestartPeriod: 2}}}}
  nodes:
  - name: {node}
---
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{team: shop}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, echo-server, --tcp-port, "7", --udp-port, "7"]
  - name: web
    command: [ciliary, workload, http-server, --port, "80"]
"""


def assert_no_leftovers(lab: str, nodes: list[str]) -> None:
    leftovers = (
        [n for n in os.listdir("/run/netns") if f"-{lab}-" in n or n == f"cilu-{lab}"]
        if os.path.isdir("/run/netns")
        else []
    )
    assert leftovers == [], f"netns left: {leftovers}"
    for node in nodes:
        assert not Path(f"/sys/fs/bpf/ciliary/{node}").exists(), f"pins of {node} left"
        assert not Path(f"/run/ciliary/{node}").exists(), f"state dir of {node} left"
        ps = subprocess.run(
            ["pgrep", "-f", f"--node-name {node}"], capture_output=True, text=True, check=False
        )
        assert ps.stdout.strip() == "", f"agent of {node} still running: {ps.stdout}"
    assert not Path(f"/run/ciliary/lab/{lab}").exists(), "lab record left"
    # etcd (--data-dir) and the API server (--tls-cert-file) name the lab's directory
    ps = subprocess.run(
        ["pgrep", "-af", f"/run/ciliary/lab/{lab}/"], capture_output=True, text=True, check=False
    )
    assert ps.stdout.strip() == "", f"control plane of {lab} still running: {ps.stdout}"
    root = cgroup2_root()
    assert root is not None
    assert not (root / "ciliary" / lab).exists(), "lab cgroups left"


SHARES_LAB = "SHARES_LAB"
"""A module that sets ``SHARES_LAB`` takes the lab of the module before it that set the same value
(one ``lab up`` for all of them instead of one each): ``True`` for the ``lab`` fixture below, an
example's file name for ``test_policy_runner.policy_lab``. It must leave the lab as it found it
but for additions of its own (pods, namespaces, Services under names no other module uses). The
lab is removed after the last module that shares it, or at the end of the session if that one
did not run."""

SHARES_LAB_FRESH = "SHARES_LAB_FRESH"
"""A sharing module that sets ``SHARES_LAB_FRESH = True`` runs before the others that share its
lab (``_sharers_together``): it sees the lab as ``lab up`` made it, with nothing added."""

SHARES_LAB_LAST = "SHARES_LAB_LAST"
"""A sharing module that sets ``SHARES_LAB_LAST = True`` runs after the others that share its lab
(``_sharers_together``): what it leaves (e.g. a LostEvent in its agent's Hubble after a ring
overflow) no other module sees; the lab is removed after it."""

T = TypeVar("T")


def _shares(module: object, key: str) -> bool:
    value = getattr(module, SHARES_LAB, None)
    return value is True if key == "conftest" else value == key


@pytest.fixture(scope="session")
def _shared_labs() -> Iterator[dict[str, tuple[Any, Callable[[Any], None]]]]:
    held: dict[str, tuple[Any, Callable[[Any], None]]] = {}
    yield held
    for made, down in held.values():  # the last sharing module did not run (deselected, -x)
        down(made)


@contextlib.contextmanager
def sharing(
    request: pytest.FixtureRequest,
    held: dict[str, tuple[Any, Callable[[Any], None]]],
    key: str,
    make: Callable[[], T],
    down: Callable[[T], None],
    *,
    variant: str = "",
) -> Iterator[T]:
    """The lab of ``key`` for a module fixture: the one a module before it left (if this module
    shares ``key``), else ``make()``; afterwards kept for the next module that shares ``key``,
    else ``down`` (also when a test of this module failed: the next one starts clean). A
    parametrized fixture's labs (one per routing mode, say) are held apart by ``variant``: the
    modules that share ``key`` take the one of their own parameter."""
    shares = _shares(request.module, key)
    slot = f"{key}[{variant}]" if variant else key
    made: T = held.pop(slot)[0] if shares and slot in held else make()
    keep = False
    try:
        yield made
        mods = [getattr(item, "module", None) for item in request.session.items]
        last = max((i for i, m in enumerate(mods) if m is request.module), default=-1)
        failed = request.session.testsfailed > 0
        keep = shares and not failed and any(_shares(m, key) for m in mods[last + 1 :])
    finally:
        if keep:
            held[slot] = (made, down)
        else:
            down(made)


def _lab_down(lab: Lab) -> None:
    if lab.name in manager.list_labs():
        manager.down(lab.name)
    assert_no_leftovers(lab.name, [lab.node])


def _lab_up(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    name, node = unique("e2e"), unique("n")
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB_TEMPLATE.format(lab=name, node=node, aggregation="medium"))
    try:
        return Lab(name, node, manager.up(path), path)
    except BaseException:
        if name in manager.list_labs():
            manager.down(name)
        assert_no_leftovers(name, [node])
        raise


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[Lab]:
    with sharing(
        request, _shared_labs, "conftest", lambda: _lab_up(tmp_path_factory), _lab_down
    ) as made:
        yield made


KubeLab = tuple[str, list[str], str]
"""A lab of ``kube_lab``/``shared_kube_lab``: (name, nodes, admin kubeconfig path)."""


def _kube_lab_down(name: str, nodes: list[str]) -> None:
    if name in manager.list_labs():
        manager.down(name)
    assert_no_leftovers(name, nodes)


@contextlib.contextmanager
def shared_kube_lab(
    request: pytest.FixtureRequest,
    held: dict[str, tuple[Any, Callable[[Any], None]]],
    key: str,
    write: Callable[[], tuple[Path, str, list[str]]],
    *,
    variant: str = "",
) -> Iterator[KubeLab]:
    """``kube_lab`` for the modules that share ``key`` (``sharing``, ``variant`` as there):
    ``write()`` writes the lab file, giving (its path, the lab's name, its nodes), when this
    module makes the lab."""

    def make() -> KubeLab:
        path, name, nodes = write()
        try:
            manager.up(path)
        except BaseException:
            _kube_lab_down(name, nodes)
            raise
        return name, nodes, str(manager.kubeconfig(name))

    with sharing(
        request, held, key, make, lambda made: _kube_lab_down(made[0], made[1]), variant=variant
    ) as lab:
        yield lab


@contextlib.contextmanager
def kube_lab(path: Path, name: str, nodes: list[str]) -> Iterator[str]:
    """``lab up`` of the lab file at ``path`` (lab ``name`` with ``nodes``), yielding its admin
    kubeconfig (``manager.kubeconfig``, what ``ciliary lab kubeconfig`` prints: the command
    itself is tested in test_lab_kubectl, test_policy_world and test_hubble_agent; here it was a
    second's Python start per lab) for tests.kubectl; afterwards ``lab down`` and the proof that
    nothing of it is left, also when the test failed."""
    try:
        manager.up(path)
        yield str(manager.kubeconfig(name))
    finally:
        _kube_lab_down(name, nodes)
