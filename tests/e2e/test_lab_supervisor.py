"""The lab's supervisor plays kubelet for the agents: a killed agent comes back by itself after
its back-off, `lab status` counts the restart and names the last exit, pods keep their traffic;
`restart-agent` quotes only the new agent's own log when that one dies during start-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from ciliary.client.agent import AgentClient
from ciliary.lab import manager, process

from .conftest import CILIARY, Lab

# the conftest lab, shared (the last of its sharers): the agents these tests kill are back, and
# the holds and exits of the sharers before (lab stop-agent) left no back-off behind
SHARES_LAB = True


def _echo(lab: Lab) -> subprocess.CompletedProcess[str]:
    server = lab.pod_ip("shop/server")
    return lab.run(
        "default/client", "ciliary", "workload", "http-get", f"http://{server}/", "--timeout", "3"
    )


def _wait_new_agent(lab: Lab, old_pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nrec = manager.record(lab.name).nodes[0]
        if nrec.agent_pid not in (None, old_pid) and process.alive(
            nrec.agent_pid, nrec.agent_start_time
        ):
            with AgentClient(Path(nrec.socket), timeout=2) as cl:
                try:
                    cl.healthz()
                except Exception:
                    time.sleep(0.1)
                    continue
            assert nrec.agent_pid is not None
            return nrec.agent_pid
        time.sleep(0.1)
    raise AssertionError(f"no new agent after {timeout}s: {manager.dump(lab.name)}")


def test_killed_agent_is_restarted_and_counted(lab: Lab) -> None:
    assert _echo(lab).returncode == 0
    before = manager.record(lab.name).nodes[0]
    assert before.agent_pid is not None
    restarts = before.agent_restarts
    os.kill(before.agent_pid, signal.SIGKILL)
    assert _echo(lab).returncode == 0, "the datapath keeps pods' traffic while the agent is down"
    new_pid = _wait_new_agent(lab, before.agent_pid)
    res = subprocess.run(
        [CILIARY, "lab", "status", "--name", lab.name, "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    node = json.loads(res.stdout)["nodes"][0]
    assert node["agent_pid"] == new_pid and node["agent_alive"]
    assert node["agent_restarts"] == restarts + 1
    assert node["agent_last_exit"] == "killed by SIGKILL"
    assert json.loads(res.stdout)["supervisor_alive"] is True
    table = subprocess.run(
        [CILIARY, "lab", "status", "--name", lab.name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "killed by SIGKILL" in table and "RESTARTS" in table
    assert _echo(lab).returncode == 0
    with AgentClient(manager.agent_socket(lab.node, name=lab.name)) as cl:
        assert {e.container_id for e in cl.endpoints()} >= {f"{lab.name}-default-client"}


def test_restart_agent_quotes_only_the_new_agents_log(lab: Lab) -> None:
    nrec = manager.record(lab.name).nodes[0]
    assert nrec.agent_pid is not None
    log = Path(nrec.state_dir) / "agent.log"
    with open(log, "a") as fh:
        fh.write("Error: STALE-LINE-FROM-AN-EARLIER-AGENT\n")
    proc = subprocess.Popen(
        [CILIARY, "lab", "restart-agent", lab.node, "--name", lab.name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    killed = None
    while time.monotonic() < deadline and killed is None:
        now = manager.record(lab.name).nodes[0]
        if now.agent_pid not in (None, nrec.agent_pid):
            killed = now.agent_pid
            os.kill(killed, signal.SIGKILL)  # during its start-up
        time.sleep(0.01)
    assert killed is not None
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "exited during start-up" in err
    assert "STALE-LINE" not in err, err
    _wait_new_agent(lab, killed)  # and the supervisor brings it back
    assert _echo(lab).returncode == 0
