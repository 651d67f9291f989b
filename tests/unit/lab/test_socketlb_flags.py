"""Socket-LB's wiring in the lab: every agent gets its node's cgroup as ``--cgroup-root`` and
``--bpf-lb-sock`` from the lab file's ``spec.socketLB.enabled`` (on by default, as Cilium's
with kubeProxyReplacement; false: the tc-level LB alone), which the agent's parser turns into
its config; ``lab exec``'s command joins the pod's cgroup before anything runs (so the node's
socket-LB applies to it too)."""

from __future__ import annotations

from pathlib import Path

from ciliary.agent.main import _parser
from ciliary.datapath.linux import cgroup
from ciliary.lab import manager, podsandbox
from ciliary.lab.state import HubbleRecord, LabRecord, NodeRecord
from tests.unit.lab.test_nodenetwork import lab_spec, lab_text, problems


def _agent_args(socket_lb: bool) -> tuple[Path | None, bool]:
    rec = LabRecord(
        name="demo", file=None, created_at=0, hubble=HubbleRecord(enabled=False),
        socket_lb=socket_lb,
    )  # fmt: skip
    nrec = NodeRecord(
        name="node1",
        netns="ciln-demo-node1",
        state_dir="/run/ciliary/node1",
        pin_dir="/sys/fs/bpf/ciliary/node1",
        socket="/run/ciliary/node1/agent.sock",
    )
    args = _parser().parse_args(manager._agent_argv(rec, nrec)[3:])
    return args.cgroup_root, args.bpf_lb_sock


def test_the_lab_file_switches_socket_lb_and_every_agent_gets_its_node_cgroup() -> None:
    assert lab_spec().socket_lb.enabled is True
    assert lab_spec(socketLB={"enabled": False}).socket_lb.enabled is False
    root = cgroup.cgroup2_root()
    assert root is not None
    node_group = root / "ciliary" / "demo" / "node-node1"
    assert manager.node_cgroup_rel("demo", "node1") == "ciliary/demo/node-node1"
    assert _agent_args(False) == (node_group, False)
    assert _agent_args(True) == (node_group, True)
    assert _parser().parse_args(["--node-name", "x"]).cgroup_root is None  # tc-level LB alone


def test_a_bad_socket_lb_field_is_refused_by_name() -> None:
    assert problems(lab_text(socketLB={"enabled": "maybe"})) == [
        "lab.yaml: document 1 (Lab demo): spec.socketLB.enabled: expected true or false, got "
        "'maybe'"
    ]
    assert problems(lab_text(socketLB={"enabled": True, "mode": "x"})) == [
        "lab.yaml: document 1 (Lab demo): spec.socketLB.mode: unknown field"
    ]


def test_lab_exec_joins_the_pods_cgroup_first() -> None:
    group = Path("/sys/fs/cgroup/unified/ciliary/demo/node-node1/pod-default-client")
    argv = podsandbox.exec_argv("/run/netns/x", ["true"], Path("/run/ciliary"), cgroup=group)
    assert argv[:5] == ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', f"{group}/cgroup.procs",
                        "nsenter"]  # fmt: skip
    assert podsandbox.exec_argv("/run/netns/x", ["true"], Path("/run/ciliary"))[0] == "nsenter"
