"""Pods on real veths talk through bpf_lxc: every protocol, both families, with the datapath's
own events describing the packets correctly, and an agent kill -9 that breaks nothing."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ciliary.client.agent import AgentClient
from ciliary.core.models import MonitorEvent
from ciliary.lab import manager

from .conftest import CILIARY, Lab

# the conftest lab, shared, and taken first (before the others add their pods): its endpoints
# are asserted as a whole; the pod it adds (default/late) is its own, the agent it kills is back
SHARES_LAB = True
SHARES_LAB_FRESH = True


def _wait_listening(lab: Lab) -> None:
    deadline = time.monotonic() + 15
    ip = lab.pod_ip("shop/server")
    while time.monotonic() < deadline:
        if (
            lab.run(
                "default/client", "ciliary", "workload", "tcp-echo", ip, "7", "--timeout", "1"
            ).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    pytest.fail("server pod never started listening")


class Monitor(threading.Thread):
    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.client = AgentClient(sock)
        self.events: list[MonitorEvent] = []
        self.started_ok = threading.Event()

    def run(self) -> None:
        self.started_ok.set()
        try:
            for ev in self.client.monitor():
                self.events.append(ev)
        except Exception:
            return

    def stop(self) -> None:
        self.client.close()


@pytest.mark.parametrize("family", [4, 6])
def test_pod_to_pod_tcp_udp_icmp(lab: Lab, family: int) -> None:
    _wait_listening(lab)
    server = lab.pod_ip("shop/server", family)
    host = f"[{server}]" if family == 6 else server
    checks = [
        ["ciliary", "workload", "http-get", f"http://{host}/"],
        ["ciliary", "workload", "tcp-echo", server, "7", "--count", "3"],
        ["ciliary", "workload", "udp-echo", server, "7", "--count", "3"],
        ["ciliary", "workload", "ping", server, "-c", "3", "-i", "0.1"],
    ]
    for argv in checks:
        res = lab.run("default/client", *argv)
        assert res.returncode == 0, f"{argv}: {res.stdout} {res.stderr}"


def test_endpoints_ready_with_identities(lab: Lab) -> None:
    with AgentClient(manager.agent_socket(lab.node, name=lab.name)) as cl:
        eps = [e for e in cl.endpoints() if e.namespace != "kube-system"]  # the lab's DNS pod
    # the node's health endpoint: no pod, no namespace, reserved:health
    assert [(e.namespace, e.identity) for e in eps if not e.pod_name] == [("", 4)]
    eps = [e for e in eps if e.pod_name]
    assert {(e.namespace, e.pod_name) for e in eps} == {("default", "client"), ("shop", "server")}
    assert all(e.state.value == "ready" for e in eps)
    assert all(e.identity >= 256 for e in eps)
    assert len({e.identity for e in eps}) == 2
    for e in eps:
        assert e.ipv4 and e.ipv6 and e.lxc.startswith("lxc") and len(e.lxc) <= 15


def test_monitor_reports_packets_with_correct_fields(lab: Lab) -> None:
    _wait_listening(lab)
    sock = manager.agent_socket(lab.node, name=lab.name)
    with AgentClient(sock) as cl:
        eps = {f"{e.namespace}/{e.pod_name}": e for e in cl.endpoints()}
    client, server = eps["default/client"], eps["shop/server"]
    mon = Monitor(sock)
    mon.start()
    mon.started_ok.wait(5)
    time.sleep(0.3)
    assert (
        lab.run(
            "default/client", "ciliary", "workload", "tcp-echo", server.ipv4 or "", "7"
        ).returncode
        == 0
    )
    assert (
        lab.run(
            "default/client", "ciliary", "workload", "udp-echo", server.ipv6 or "", "7"
        ).returncode
        == 0
    )
    assert (
        lab.run(
            "default/client", "ciliary", "workload", "ping", server.ipv4 or "", "-c", "1"
        ).returncode
        == 0
    )
    time.sleep(0.5)
    mon.stop()
    evs = mon.events

    syn = [e for e in evs if e.protocol == "TCP" and e.tcp_flags == ["SYN"] and e.dst_port == 7]
    assert syn, f"no SYN event among {len(evs)}"
    e = syn[-1]
    assert (e.src_ip, e.dst_ip, e.ip_version) == (client.ipv4, server.ipv4, 4)
    assert (e.src_identity, e.dst_identity) == (client.identity, server.identity)
    assert (e.endpoint_id, e.dst_endpoint_id) == (client.id, server.id)
    assert (e.verdict, e.type, e.observation_point) == ("FORWARDED", "trace", "to-endpoint")
    assert (e.src_pod, e.dst_pod) == ("default/client", "shop/server")
    assert e.is_reply is False and e.ct_state == "new"
    assert e.ifname == client.lxc and e.src_mac == client.mac
    synack = [
        x
        for x in evs
        if x.protocol == "TCP" and set(x.tcp_flags) == {"SYN", "ACK"} and x.src_port == 7
    ]
    assert synack and synack[-1].is_reply and synack[-1].ct_state == "reply"
    assert synack[-1].src_identity == server.identity

    udp = [x for x in evs if x.protocol == "UDP" and x.ip_version == 6 and x.dst_port == 7]
    assert udp and udp[-1].src_ip == client.ipv6 and udp[-1].dst_ip == server.ipv6
    replies = [x for x in evs if x.protocol == "UDP" and x.ip_version == 6 and x.src_port == 7]
    assert replies and replies[-1].is_reply

    icmp = [x for x in evs if x.protocol == "ICMPv4" and x.icmp_type == 8]
    assert icmp and icmp[-1].dst_ip == server.ipv4 and icmp[-1].summary == "ICMPv4 EchoRequest"
    assert all(x.time.endswith("Z") and x.ts_ns > 0 and x.node == lab.node for x in evs)


def test_spoofed_source_is_dropped_and_reported(lab: Lab) -> None:
    """Anti-spoofing: a packet whose source is not the pod's address is dropped (reason 132)."""
    sock = manager.agent_socket(lab.node, name=lab.name)
    pod_ns = f"/run/netns/cilp-{lab.name}-default-client"
    spoof = "10.200.0.250"
    subprocess.run(
        ["ip", "-n", Path(pod_ns).name, "addr", "add", f"{spoof}/32", "dev", "eth0"], check=True
    )
    mon = Monitor(sock)
    mon.start()
    mon.started_ok.wait(5)
    time.sleep(0.3)
    try:
        res = lab.run(
            "default/client", "ping", "-c", "1", "-W", "1", "-I", spoof, lab.pod_ip("shop/server")
        )
        assert res.returncode != 0
        time.sleep(0.5)
    finally:
        mon.stop()
        subprocess.run(
            ["ip", "-n", Path(pod_ns).name, "addr", "del", f"{spoof}/32", "dev", "eth0"], check=True
        )
    drops = [e for e in mon.events if e.type == "drop" and e.src_ip == spoof]
    assert drops, [e.summary for e in mon.events]
    assert drops[0].drop_reason == 132 and drops[0].verdict == "DROPPED"
    assert drops[0].drop_reason_desc == "Invalid source ip"


def test_cli_tables_and_json(lab: Lab) -> None:
    for argv in (
        ["endpoint", "list"],
        ["status"],
        ["bpf", "ct", "list"],
        ["bpf", "ipcache", "list"],
    ):
        res = subprocess.run(  # noqa: PLW1510
            [CILIARY, "--node", lab.node, *argv], capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 0, res.stderr
        js = subprocess.run(  # noqa: PLW1510
            [CILIARY, "--node", lab.node, *argv, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert js.returncode == 0 and js.stdout.lstrip()[0] in "[{", js.stderr
    # ``monitor -o json`` prints the ping's own events, as JSON, once subscribed (not just any
    # two lines after a sleep): the echo request client -> server and the reply back
    client, server = lab.pod_ip("default/client"), lab.pod_ip("shop/server")
    mon = subprocess.Popen(
        [CILIARY, "--node", lab.node, "monitor", "-o", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert mon.stdout is not None
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        pinged_at = 0.0
        while seen != {"request", "reply"} and time.monotonic() < deadline:
            if time.monotonic() - pinged_at > 2:  # until the subscription is in place
                lab.run("default/client", "ciliary", "workload", "ping", server, "-c", "1")
                pinged_at = time.monotonic()
            if not select.select([mon.stdout], [], [], 0.5)[0]:
                continue
            ev = json.loads(mon.stdout.readline())
            if ev["protocol"] != "ICMPv4":
                continue
            if (ev["src_ip"], ev["dst_ip"], ev["icmp_type"]) == (client, server, 8):
                seen.add("request")
            elif (ev["src_ip"], ev["dst_ip"], ev["icmp_type"]) == (server, client, 0):
                assert ev["is_reply"] is True, ev
                seen.add("reply")
        assert seen == {"request", "reply"}, seen
    finally:
        mon.terminate()
        mon.communicate(timeout=10)


def test_agent_kill9_keeps_stream_and_restores(lab: Lab) -> None:
    """kill -9 of the agent during a TCP stream: the stream does not break; the restarted agent
    lists the same endpoints and can add new pods."""
    _wait_listening(lab)
    sock = manager.agent_socket(lab.node, name=lab.name)
    with AgentClient(sock) as cl:
        before = sorted((e.id, e.container_id, e.ipv4, e.identity) for e in cl.endpoints())
    server = lab.pod_ip("shop/server")
    stream = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/cilp-{lab.name}-default-client", "--", CILIARY,
         "workload", "tcp-stream", server, "7", "--duration", "6", "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(1.5)
    rec = manager.record(lab.name)
    node = next(n for n in rec.nodes if n.name == lab.node)
    assert node.agent_pid is not None
    os.kill(node.agent_pid, signal.SIGKILL)
    time.sleep(1.5)
    # the agent is dead; the datapath still forwards new connections too
    res = lab.run("default/client", "ciliary", "workload", "tcp-echo", server, "7")
    assert res.returncode == 0, res.stderr
    manager.restart_agent(lab.node, name=lab.name)
    out, _ = stream.communicate(timeout=30)
    assert stream.returncode == 0, out
    assert "ok" in out.splitlines()[-1]
    with AgentClient(sock) as cl:
        after = sorted((e.id, e.container_id, e.ipv4, e.identity) for e in cl.endpoints())
        assert after == before
        assert all(e.state.value == "ready" for e in cl.endpoints())
    extra = lab.file.parent / "extra.yaml"
    extra.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, labels: {app: late}}\n"
        "spec:\n  containers:\n  - name: m\n    command: [ciliary, workload, pause]\n"
    )
    manager.apply(extra, name=lab.name)
    res = lab.run("default/late", "ciliary", "workload", "tcp-echo", server, "7")
    assert res.returncode == 0, res.stderr
    with AgentClient(sock) as cl:
        assert len(cl.endpoints()) == len(before) + 1
