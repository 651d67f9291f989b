"""What a pod, another local user or a stranger on a node's addresses can reach of a lab.

Hubble's :4244 serves TLS with the lab CA's certificates and requires a client certificate
(#10.18); the relay listens on a root-only unix socket, or with TLS + client certificates on TCP
(#10.19); pods have their own mount view without the agents', Hubble's or the relay's sockets
(#10.20) and a container's environment, not ours (#10.23).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ciliary.lab import manager
from ciliary.lab.certs import LabCA, node_server_name, router_addresses
from ciliary.lab.podsandbox import CONTAINER_PATH
from tests.e2e.conftest import CILIARY, assert_no_leftovers, unique

PROBE = str(Path(__file__).with_name("hubble_probe.py"))
PYTHON = sys.executable
MARKER = "CILIARY_TEST_LEAK_MARKER"

LAB = """\
apiVersion: ciliary.io/v1alpha1
kind: Lab
metadata: {{name: {lab}}}
spec:
  nodes:
  - name: {node}
  hubble:
    relay: {{listenAddress: "{relay}"}}
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
metadata: {{name: envpod, labels: {{app: envpod}}}}
spec:
  containers:
  - name: main
    command: [ciliary, workload, pause]
    env:
    - {{name: GREETING, value: hello}}
"""


@dataclass
class SecLab:
    name: str
    node: str
    relay: str  # the published relay address (relay.addr)

    @property
    def ca(self) -> LabCA:
        return LabCA(Path(f"/run/ciliary/lab/{self.name}"), cluster=self.name)

    @property
    def netns(self) -> str:
        return manager.node_netns(self.name, self.node)

    def run(self, pod: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(pod, list(argv), name=self.name, timeout=60)


def _up(tmp: Path, relay: str) -> SecLab:
    name, node = unique("sec"), unique("ns")
    path = tmp / f"{name}.yaml"
    path.write_text(LAB.format(lab=name, node=node, relay=relay))
    view = manager.up(path)
    assert view.relay is not None and view.relay.alive
    return SecLab(name, node, manager.relay_address_file(name).read_text().strip())


def _down(lab: SecLab) -> None:
    if lab.name in manager.list_labs():
        manager.down(lab.name)
    assert_no_leftovers(lab.name, [lab.node])
    assert not lab.ca.dir.exists(), "lab certificates left after lab down"


@pytest.fixture(scope="module")
def slab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecLab]:
    """The default lab: relay on its unix socket. Our environment carries a marker that must
    not reach the pods."""
    os.environ[MARKER] = "leaked"
    lab: SecLab | None = None
    try:
        lab = _up(tmp_path_factory.mktemp("sec"), "")
        yield lab
    finally:
        os.environ.pop(MARKER, None)
        if lab is not None:
            _down(lab)


@pytest.fixture(scope="module")
def tcp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecLab]:
    """A lab whose file asks for a TCP relay."""
    lab: SecLab | None = None
    try:
        lab = _up(tmp_path_factory.mktemp("sectcp"), "127.0.0.1:0")
        yield lab
    finally:
        if lab is not None:
            _down(lab)


def _probe_in_node(lab: SecLab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lab.netns, PYTHON, PROBE, "127.0.0.1:4244", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# ---- #10.18: the node's :4244 ------------------------------------------------------------------


def test_node_hubble_tcp_needs_tls_and_a_client_certificate(slab: SecLab) -> None:
    server_name = node_server_name(slab.node, slab.name)
    ca = str(slab.ca.ca_cert)
    plain = _probe_in_node(slab)
    assert plain.returncode == 1 and plain.stdout.startswith("FAIL UNAVAILABLE"), plain
    no_cert = _probe_in_node(slab, "--ca", ca, "--server-name", server_name)
    assert no_cert.returncode == 1 and no_cert.stdout.startswith("FAIL UNAVAILABLE"), no_cert
    relay = slab.ca.relay_client()
    ok = _probe_in_node(
        slab, "--ca", ca, "--cert", str(relay.cert), "--key", str(relay.key),
        "--server-name", server_name,
    )  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok


def test_lab_certificates_are_root_only(slab: SecLab) -> None:
    tls = slab.ca.dir
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    files = sorted(tls.iterdir())
    assert {f.name for f in files} >= {
        "ca.crt", "ca.key", f"hubble-server-{slab.node}.crt", f"hubble-server-{slab.node}.key",
        "hubble-relay-client.crt", "hubble-relay-client.key",
    }  # fmt: skip
    for f in files:
        assert f.stat().st_uid == 0 and stat.S_IMODE(f.stat().st_mode) == 0o600, f


# ---- #10.19: the relay -------------------------------------------------------------------------


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        os.setgid(65534)
        os.setgroups([])
        os.setuid(65534)

    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=60, check=False, preexec_fn=drop
    )


def test_relay_listens_on_a_root_only_unix_socket(slab: SecLab) -> None:
    assert slab.relay == f"unix://{manager.relay_socket(slab.name)}"
    sock = manager.relay_socket(slab.name)
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    # root: the relay answers (and `ciliary observe` finds it by the published address)
    assert (
        subprocess.run([PYTHON, PROBE, slab.relay], capture_output=True, check=False).returncode
        == 0
    )
    res = subprocess.run(
        [CILIARY, "hubble", "status", "--server", slab.relay],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    # another user cannot even connect
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n"
        "    print(type(e).__name__); sys.exit(1)\nprint('connected')\n"
    )
    res = _as_nobody("/usr/bin/python3", "-c", script, str(sock))  # stdlib only
    assert res.returncode == 1 and res.stdout.strip() == "PermissionError", res


def test_tcp_relay_requires_a_client_certificate(tcp_lab: SecLab) -> None:
    assert tcp_lab.relay.startswith("tls://127.0.0.1:")
    target = tcp_lab.relay.removeprefix("tls://")
    ca = str(tcp_lab.ca.ca_cert)
    plain = subprocess.run([PYTHON, PROBE, target], capture_output=True, text=True, check=False)
    assert plain.stdout.startswith("FAIL UNAVAILABLE"), plain
    no_cert = subprocess.run(
        [PYTHON, PROBE, target, "--ca", ca], capture_output=True, text=True, check=False
    )
    assert no_cert.stdout.startswith("FAIL UNAVAILABLE"), no_cert
    user = tcp_lab.ca.pair("hubble-client")
    res = subprocess.run(
        [CILIARY, "hubble", "status", "--server", tcp_lab.relay, "--tls-ca-cert-files", ca,
         "--tls-client-cert-file", str(user.cert), "--tls-client-key-file", str(user.key)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Healthcheck" in res.stdout
    # the lab's own relay: `ciliary hubble` finds the lab's CA and user certificate itself
    res = subprocess.run(
        [CILIARY, "hubble", "status", "--server", tcp_lab.relay],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


# ---- #10.20: what a pod can reach --------------------------------------------------------------

POD_SCRIPT = """\
import json, os, socket, sys
out = {}
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        out[path] = "connected"
    except OSError as e:
        out[path] = type(e).__name__
    finally:
        s.close()
out["listing"] = sorted(os.listdir("/run/ciliary"))
print(json.dumps(out))
"""


def test_pod_cannot_reach_agent_hubble_or_relay_sockets(slab: SecLab) -> None:
    status = manager.status(slab.name)
    node = next(n for n in status.nodes if n.name == slab.node)
    agent_sock = Path(node.socket)
    hubble_sock = agent_sock.with_name("hubble.sock")
    relay_sock = manager.relay_socket(slab.name)
    paths = [agent_sock, hubble_sock, relay_sock]
    for p in paths:  # they exist and answer root in the root mount namespace
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(p))
    # ... and through the agent's own root, the way out of a mount namespace for root
    via_proc = [f"/proc/{node.agent_pid}/root{p}" for p in paths]
    res = slab.run("default/client", "python", "-c", POD_SCRIPT, *map(str, paths), *via_proc)
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    for p in paths:
        assert seen[str(p)] == "FileNotFoundError", seen
    for p in via_proc:
        assert seen[p] == "PermissionError", seen
    assert seen["listing"] == [], seen  # an empty tmpfs, not the node's state


def test_pod_cannot_read_flows_from_its_nodes_4244(slab: SecLab) -> None:
    """The node's :4244 is reachable from the pod (through its gateway) but useless without a
    client certificate: plaintext and certificate-less TLS both fail."""
    status = manager.status(slab.name)
    node = next(n for n in status.nodes if n.name == slab.node)
    assert node.ipv4_cidr is not None
    (gateway,) = router_addresses([node.ipv4_cidr])
    target = f"{gateway}:4244"
    reach = slab.run(
        "default/client", "python", "-c",
        f"import socket; socket.create_connection(('{gateway}', 4244), timeout=5); print('up')",
    )  # fmt: skip
    assert reach.stdout.strip() == "up", reach  # the port is there ...
    server_name = node_server_name(slab.node, slab.name)
    plain = slab.run("default/client", "python", PROBE, target)
    assert plain.stdout.startswith("FAIL UNAVAILABLE"), plain  # ... but not in plaintext
    ca_pem = slab.ca.ca_cert.read_text()  # the CA certificate is public; its key is not
    no_cert = slab.run(
        "default/client", "python", PROBE, target, "--ca-pem", ca_pem, "--server-name", server_name
    )
    assert no_cert.stdout.startswith("FAIL UNAVAILABLE"), no_cert  # ... nor without a cert


# ---- #10.23: a container's environment ---------------------------------------------------------


def _expected_env(pod: str, **declared: str) -> dict[str, str]:
    return {"PATH": CONTAINER_PATH, "HOSTNAME": pod, "HOME": "/root", **declared}


def test_container_environment_is_the_spec_and_kubernetes_own(slab: SecLab) -> None:
    assert os.environ.get(MARKER) == "leaked"  # we had it when the lab started the pod
    pod = next(p for p in manager.status(slab.name).pods if p.name == "envpod")
    (pid,) = pod.pids
    # the environment the container's command was started with: PID 1 of its PID namespace,
    # the child of the recorded ``unshare`` (lab.podsandbox)
    (child,) = [
        int(c)
        for t in Path(f"/proc/{pid}/task").iterdir()
        for c in (t / "children").read_text().split()
    ]
    raw = Path(f"/proc/{child}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
    assert env == _expected_env("envpod", GREETING="hello")


def test_exec_in_pod_gets_the_containers_environment(slab: SecLab) -> None:
    res = slab.run("default/client", "env")
    assert res.returncode == 0, res.stderr
    env = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert env == _expected_env("client")
