"""The lab's hygiene and input contracts: bad input is one clear line and creates nothing;
`lab down` removes everything, also after `lab up` itself was killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ciliary.lab import manager

from .conftest import CILIARY, LAB_TEMPLATE, Lab, assert_no_leftovers, unique

# the conftest lab, shared (one lab up and down fewer a run): the one test that takes it only
# asks for its node name in a second lab, which is refused before anything is made
SHARES_LAB = True


def _cli(
    *argv: str, user: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    cmd = [CILIARY, *argv]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _valid(lab: str, node: str) -> str:
    return LAB_TEMPLATE.format(lab=lab, node=node, aggregation="medium")


BAD_INPUTS = {
    "malformed": ("lab: [unclosed\n", "line"),
    "unknown-field": (
        "REPLACE",
        "spec.containers[0].comand: unknown field",
    ),
    "duplicate-pod": ("DUP", "duplicate pod default/client"),
    "ip-outside-range": ("OUTSIDE", "10.99.0.5"),
}


def _bad_text(kind: str, lab: str, node: str) -> str:
    good = _valid(lab, node)
    if kind == "malformed":
        return "apiVersion: ciliary.io/v1alpha1\nkind: Lab\nmetadata: {name: [unclosed\n"
    if kind == "unknown-field":
        return good.replace(
            "command: [ciliary, workload, pause]", "comand: [ciliary, workload, pause]"
        )
    if kind == "duplicate-pod":
        return (
            good
            + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n"
            + "  containers:\n  - name: x\n    command: [ciliary, workload, pause]\n"
        )
    if kind == "ip-outside-range":
        return good.replace(
            "metadata: {name: client, labels: {app: client}}",
            "metadata: {name: client, labels: {app: client}, annotations: "
            "{cni.projectcalico.org/ipAddrs: '[\"10.99.0.5\"]'}}",
        )
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_creates_nothing(tmp_path: Path, kind: str) -> None:
    lab, node = unique("bad"), unique("n")
    path = tmp_path / "lab.yaml"
    path.write_text(_bad_text(kind, lab, node))
    res = _cli("lab", "up", str(path))
    assert res.returncode == 1, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: ") and str(path) in lines[0]
    expected = BAD_INPUTS[kind][1]
    if kind == "malformed":
        assert "line" in lines[0] and "column" in lines[0]
    elif kind == "unknown-field":
        assert "document 3 (Pod default/client)" in lines[0] and expected in lines[0]
    else:
        assert expected in lines[0], lines[0]
    assert_no_leftovers(lab, [node])


def test_non_root_is_refused(tmp_path: Path) -> None:
    lab, node = unique("nr"), unique("n")
    path = tmp_path / "lab.yaml"
    path.write_text(_valid(lab, node))
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    res = _cli("lab", "up", str(path), user="65534")
    assert res.returncode == 1
    assert res.stderr.strip() == "Error: this command must run as root (try sudo)"
    assert_no_leftovers(lab, [node])


def test_node_name_in_use_is_refused_and_creates_nothing(lab: Lab, tmp_path: Path) -> None:
    """A second lab asking for a node name another lab uses (the conftest lab's) is refused
    before anything is made (`lab up`'s rollback after resources exist is tested in
    test_lab_apply.py); the first lab is untouched (its `lab down` and the proof that nothing of
    it is left: the conftest lab's teardown)."""
    other = unique("o")
    other_path = tmp_path / "other.yaml"
    other_path.write_text(_valid(other, lab.node))
    res = _cli("lab", "up", str(other_path))
    assert res.returncode == 1
    assert f"node name {lab.node!r} is in use" in res.stderr
    assert_no_leftovers(other, [])
    assert lab.name in manager.list_labs()
    (node,) = manager.status(lab.name).nodes
    assert node.name == lab.node and node.agent_alive


def test_down_after_lab_up_was_killed(tmp_path: Path) -> None:
    lab, node = unique("kill"), unique("n")
    path = tmp_path / "lab.yaml"
    path.write_text(_valid(lab, node))
    proc = subprocess.Popen(
        [CILIARY, "lab", "up", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # kill it once the node exists but before it finished (the agent is starting)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not Path(f"/run/ciliary/{node}").exists():
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert Path(f"/run/ciliary/lab/{lab}/state.json").exists()
    res = _cli("lab", "down", "--name", lab)
    assert res.returncode == 0, res.stderr
    assert_no_leftovers(lab, [node])


def test_down_after_agent_crash(tmp_path: Path) -> None:
    lab, node = unique("ac"), unique("n")
    path = tmp_path / "lab.yaml"
    path.write_text(_valid(lab, node))
    # the CLI's own `lab up` (exit 0), the one e2e run of it that succeeds
    up = _cli("lab", "up", str(path))
    assert up.returncode == 0, up.stderr
    try:
        rec = manager.record(lab)
        pid = rec.nodes[0].agent_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while manager.status(lab).nodes[0].agent_alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not manager.status(lab).nodes[0].agent_alive
    finally:
        res = _cli("lab", "down", "--name", lab)
    assert res.returncode == 0, res.stderr
    assert_no_leftovers(lab, [node])


def test_every_problem_of_the_file_at_once(tmp_path: Path) -> None:
    """Several unknown or invalid fields, in several documents (a policy among them): one run
    reports them all, one `Error:` line each naming file, document and field, in document order,
    and creates nothing."""
    lab, node = unique("many"), unique("n")
    text = _valid(lab, node)
    text = text.replace("monitorAggregation: medium", "monitorAggregation: loud")
    text = text.replace("metadata: {name: shop, labels: {team: shop}}", "metadata: {nme: shop}")
    text = text.replace("command: [ciliary, workload, pause]", "comand: [ciliary, workload, pause]")
    text += (
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: bad, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Up]}\n"
    )
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    res = _cli("lab", "up", str(path))
    assert res.returncode == 1, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) >= 4, res.stderr
    assert all(ln.startswith(f"Error: {path}: document ") for ln in lines), res.stderr
    assert any("document 1" in ln and "monitorAggregation" in ln for ln in lines), res.stderr
    assert any("document 2" in ln and "nme" in ln for ln in lines), res.stderr
    assert any("document 3" in ln and "comand: unknown field" in ln for ln in lines), res.stderr
    assert any("document 5" in ln and "Up" in ln for ln in lines), res.stderr  # the policy's
    numbers = [int(ln.split(": document ")[1].split()[0].rstrip(":")) for ln in lines]
    assert numbers == sorted(numbers), res.stderr
    assert_no_leftovers(lab, [node])


def test_every_problem_of_the_lab_files_policies_at_once(tmp_path: Path) -> None:
    lab, node = unique("mpol"), unique("n")
    policy = (
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: bad, namespace: shop}\n"
        "spec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Sideways]\n"
        "  ingress:\n  - from:\n    - podSelectr: {}\n"
    )
    path = tmp_path / "lab.yaml"
    path.write_text(_valid(lab, node) + policy)
    res = _cli("lab", "up", str(path))
    assert res.returncode == 1, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, res.stderr
    assert all(ln.startswith("Error: ") and str(path) in ln for ln in lines), res.stderr
    assert any("Sideways" in ln for ln in lines) and any("podSelectr" in ln for ln in lines)
    assert_no_leftovers(lab, [node])
