"""The API server listening inside other network namespaces (``apiserver/netnslisten.py``): a
node netns reaches it on its own loopback with the node's kubeconfig (the machine's kubectl run
in the netns), a namespace without a listener does not; a listener removed from the file and a
SIGHUP closes it; a line the server cannot open (netns gone) is logged and the rest keeps
serving; a restarted server opens its listeners again. Scratch namespaces, removed in finally."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from ciliary.apiserver import netnslisten
from ciliary.core import atomicfile as atomic
from ciliary.datapath.linux import netns
from ciliary.lab import controlplane
from ciliary.lab.controlplane import ControlPlane

pytestmark = [pytest.mark.timeout(180), pytest.mark.privileged]

KUBECTL = "/usr/bin/kubectl"


@pytest.fixture
def scratch_netns() -> Iterator[list[str]]:
    names = [f"cilt-api-{secrets.token_hex(3)}" for _ in range(2)]
    try:
        for name in names:
            netns.create(name)
        yield names
    finally:
        for name in names:
            netns.remove(name)


def kubectl_in(
    ns: str, kubeconfig: str, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, KUBECTL, "--kubeconfig", kubeconfig, "--request-timeout=5s",
         *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_parse_and_render_round_trip() -> None:
    text = "# nodes\n/run/netns/a=127.0.0.1:6443\n\n/run/netns/b=[::1]:6443  # v6\n"
    listeners = netnslisten.parse(text)
    assert listeners == [
        netnslisten.NetnsListener("/run/netns/a", "127.0.0.1", 6443),
        netnslisten.NetnsListener("/run/netns/b", "::1", 6443),
    ]
    assert netnslisten.parse(netnslisten.render(listeners)) == listeners
    for bad in ("a=127.0.0.1:6443", "/run/netns/a=localhost:6443", "/run/netns/a=127.0.0.1:0"):
        with pytest.raises(ValueError, match="line 2"):
            netnslisten.parse(f"/run/netns/x=127.0.0.1:1\n{bad}\n")


def test_a_node_netns_reaches_the_api_on_its_loopback(
    control_plane: ControlPlane, scratch_netns: list[str]
) -> None:
    node_ns, other_ns = scratch_netns
    kubeconfig = controlplane.add_node(control_plane, "n1", netns.path_of(node_ns))
    assert kubeconfig == control_plane.dir / "nodes" / "n1" / "kubeconfig"
    assert oct(os.stat(kubeconfig).st_mode & 0o777) == "0o600"
    assert oct(os.stat(kubeconfig.parent).st_mode & 0o777) == "0o700"
    doc = yaml.safe_load(kubeconfig.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    # the node's own identity, kubelet's form
    subject = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in",
         str(control_plane.ca.pair("kube-node-n1").cert)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "O = system:nodes" in subject and "CN = system:node:n1" in subject
    ok = kubectl_in(node_ns, str(kubeconfig), "get", "namespaces", "-o", "name")
    assert ok.returncode == 0, ok.stderr
    # a namespace without a listener: nothing answers on its loopback
    refused = kubectl_in(other_ns, str(kubeconfig), "get", "--raw=/readyz")
    assert refused.returncode != 0 and "was refused" in refused.stderr, refused.stderr
    # idempotent: a second add keeps one listener
    controlplane.add_node(control_plane, "n1", netns.path_of(node_ns))
    assert len(controlplane.node_listeners(control_plane)) == 1

    # kill -9 and a restart: the new server has opened the listener again once it is ready
    os.kill(control_plane.apiserver_pid, signal.SIGKILL)
    controlplane.restart_apiserver(control_plane)
    again = kubectl_in(node_ns, str(kubeconfig), "get", "--raw=/readyz")
    assert again.returncode == 0, again.stderr

    # a line whose netns is gone is logged and skipped; removing n1's line closes its listener
    other = controlplane.add_node(control_plane, "n2", netns.path_of(other_ns))
    gone = netnslisten.NetnsListener("/run/netns/cilt-api-gone", "127.0.0.1", 6443)
    atomic.write_text(
        control_plane.listeners_file,
        netnslisten.render([gone, controlplane.node_listener(netns.path_of(other_ns))]),
    )
    os.kill(control_plane.apiserver_pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while kubectl_in(node_ns, str(kubeconfig), "get", "--raw=/readyz").returncode == 0:
        assert time.monotonic() < deadline, "n1's listener still open after SIGHUP"
        time.sleep(0.2)
    assert control_plane.apiserver_alive()
    still = kubectl_in(other_ns, str(other), "get", "--raw=/readyz")
    assert still.returncode == 0, still.stderr
    log = control_plane.apiserver_log.read_text()
    assert "cannot listen on /run/netns/cilt-api-gone=127.0.0.1:6443" in log
