"""Events during an agent outage reach Hubble after the restart (issue #10.11).

The datapath keeps working while the agent is down and writes its events into the pinned ring
buffer. The restarted agent must hand that backlog to Hubble, in order, each event once, and
report what the ring could not hold as a LostEvent with the datapath's own count. Real lab, real
packets: an intruder pod tries to connect to a server pod whose policy denies it, while the
node's agent is killed with SIGKILL (no clean stop: nothing saved on the way out).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from ciliary.datapath.libbpf import Map
from ciliary.datapath.maps.events import EventsLostMap
from ciliary.hubble.api.flow import flow_pb2
from ciliary.hubble.api.observer import observer_pb2
from ciliary.lab import manager
from tests.e2e.conftest import CILIARY, shared_kube_lab
from tests.e2e.test_lab_databases import SHARES_LAB as DATABASES_LAB
from tests.e2e.test_lab_databases import write_lab

# test_lab_databases's one-node lab, shared (one lab up and down fewer a run): this module's pods
# and policy are in a namespace of their own, which the policy's selectors cannot leave. It runs
# last of the modules sharing that lab (SHARES_LAB_LAST): it kills the node's agent and overflows
# its ring, whose LostEvent notice no other module's observe (say test_lab_l7_http's "no DNS
# flow") may see; the lab is removed after it.
SHARES_LAB = DATABASES_LAB
SHARES_LAB_LAST = True
NS = "hubblerestart"

PODS = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: intruder, namespace: {ns}, labels: {{app: intruder}}}}
spec:
  containers: [{{name: main, command: [ciliary, workload, pause]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {ns}, labels: {{app: server}}}}
spec:
  containers: [{{name: web, command: [ciliary, workload, http-server, --port, "80"]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server-from-client, namespace: {ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""

# One SYN per attempt: the timeout is shorter than TCP's first retransmission (1 s).
CONNECT_ATTEMPTS = """\
import socket, sys
for port in map(int, sys.argv[2:]):
    s = socket.socket()
    s.settimeout(0.3)
    try:
        s.connect((sys.argv[1], port))
        sys.exit(f"connected to {port}: the policy should deny it")
    except OSError:
        pass
    finally:
        s.close()
"""

UDP_FLOOD = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for i in range(int(sys.argv[2])):
    try:
        s.sendto(b"x", (sys.argv[1], 9000))
        sent += 1
    except OSError:
        pass
print(sent)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie is dead: the lab, our process here, may be its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class RestartLab:
    name: str
    node: str
    server_ip: str

    @property
    def hubble(self) -> str:
        state_dir = manager.record(self.name).nodes[0].state_dir
        return f"unix://{Path(state_dir) / 'hubble.sock'}"

    def events_lost(self) -> list[int]:
        pin_dir = Path(manager.record(self.name).nodes[0].pin_dir)
        with Map.from_pin(pin_dir / "ciliary_events_lost") as m:
            return EventsLostMap(m).per_cpu()

    def in_intruder(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(
            f"{NS}/intruder", [sys.executable, "-c", script, *args], name=self.name, timeout=120
        )

    def kill_agent(self) -> None:
        """SIGKILL (no clean stop), the lab's supervisor held off (as `lab stop-agent` does) so
        that the outage lasts until :func:`manager.restart_agent`, however long the test takes."""
        pid = manager.record(self.name).nodes[0].agent_pid
        assert pid is not None
        (manager.supervisor_dir(self.name) / f"hold-{self.node}").touch()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the agent survived SIGKILL"

    def observe(self, *args: str) -> list[observer_pb2.GetFlowsResponse]:
        res = subprocess.run(
            [CILIARY, "observe", "--server", self.hubble, "-o", "jsonpb", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert struct_pb2.Struct  # flows may carry Struct extensions: known to json_format
        return [
            json_format.Parse(ln, observer_pb2.GetFlowsResponse()) for ln in res.stdout.splitlines()
        ]


@pytest.fixture(scope="module")
def rlab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[RestartLab]:
    """One lab for the module (test_lab_databases's, with PODS applied: ``lab apply`` puts the
    policy in force before the pods start, as lab up did): each test kills the agent and ends
    with it restarted, and measures against what it found (lost-counter deltas, flows of its
    own ports/protocol)."""
    write = functools.partial(write_lab, tmp_path_factory)
    with shared_kube_lab(request, _shared_labs, SHARES_LAB, write) as (name, nodes, _):
        path = tmp_path_factory.mktemp("hrs") / "pods.yaml"
        path.write_text(PODS.format(ns=NS))
        view = manager.apply(path, name=name)
        server_ip = next(p.ipv4 for p in view.pods if (p.namespace, p.name) == (NS, "server"))
        assert server_ip is not None
        yield RestartLab(name, nodes[0], server_ip)


def _server_drops(
    responses: list[observer_pb2.GetFlowsResponse], server_ip: str, proto: str
) -> list[flow_pb2.Flow]:
    return [
        r.flow
        for r in responses
        if r.HasField("flow")
        and r.flow.verdict == flow_pb2.DROPPED
        and r.flow.IP.destination == server_ip
        and r.flow.l4.HasField(proto)
    ]


def test_denied_attempts_during_an_outage_are_flows_after_the_restart(rlab: RestartLab) -> None:
    ports = [str(p) for p in range(8001, 8011)]
    rlab.kill_agent()
    res = rlab.in_intruder(CONNECT_ATTEMPTS, rlab.server_ip, *ports)
    assert res.returncode == 0, res.stderr
    manager.restart_agent(rlab.node, name=rlab.name)
    deadline = time.monotonic() + 20
    while True:
        responses = rlab.observe("--type", "drop", "--from-pod", f"{NS}/intruder", "--all")
        drops = _server_drops(responses, rlab.server_ip, "TCP")
        if len(drops) >= len(ports) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    # exactly the ten SYNs, each once, in the order they were sent, enriched from restored state
    assert [str(f.l4.TCP.destination_port) for f in drops] == ports
    for f in drops:
        assert f.drop_reason_desc == flow_pb2.POLICY_DENIED
        assert f.l4.TCP.flags.SYN and not f.l4.TCP.flags.ACK
        assert f.source.pod_name == "intruder" and f.destination.pod_name == "server"
        assert "k8s:app=intruder" in f.source.labels
    assert [f.time.ToNanoseconds() for f in drops] == sorted(f.time.ToNanoseconds() for f in drops)
    assert not any(r.HasField("lost_events") for r in responses)


def test_what_the_ring_could_not_hold_is_one_lost_event_with_the_datapath_count(
    rlab: RestartLab,
) -> None:
    before = rlab.events_lost()
    rlab.kill_agent()
    # each denied datagram is two records (policy verdict + drop): ~240k records for a ring
    # of ~80k (8 MiB of 104-byte records)
    res = rlab.in_intruder(UDP_FLOOD, rlab.server_ip, "120000")
    assert res.returncode == 0, res.stderr
    after = rlab.events_lost()
    lost = sum(after) - sum(before)
    assert lost > 0, "the flood did not overflow the ring"
    manager.restart_agent(rlab.node, name=rlab.name)
    deadline = time.monotonic() + 180  # ~75k records to decode, on a busy machine
    while True:  # until the backlog is decoded (reading meanwhile may lap: HUBBLE_RING_BUFFER)
        responses = rlab.observe("--all")
        ring_losses = [
            r.lost_events
            for r in responses
            if r.HasField("lost_events") and r.lost_events.source == flow_pb2.PERF_EVENT_RING_BUFFER
        ]
        if ring_losses or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(n.num_events_lost for n in ring_losses) == lost, json.dumps(
        [json_format.MessageToDict(r) for r in responses if r.HasField("lost_events")]
    )
    # reported per CPU, as the datapath counted them
    by_cpu = {n.cpu.value: n.num_events_lost for n in ring_losses}
    assert by_cpu == {
        cpu: a - b for cpu, (a, b) in enumerate(zip(after, before, strict=True)) if a > b
    }
    # the loss is reported behind the backlog the ring held: no flood flow after the notice
    first_notice = next(
        i
        for i, r in enumerate(responses)
        if r.HasField("lost_events") and r.lost_events.source == flow_pb2.PERF_EVENT_RING_BUFFER
    )
    assert _server_drops(responses[:first_notice], rlab.server_ip, "UDP")
    assert not _server_drops(responses[first_notice:], rlab.server_ip, "UDP")
