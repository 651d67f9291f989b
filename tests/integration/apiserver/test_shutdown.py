"""Stopping the API server with open watches is prompt: shutdown ends the streams at once
instead of waiting the runner's shutdown_timeout (1 s) for handlers that never finish (they only
end when the client goes), which made every ``lab down`` a second slower."""

from __future__ import annotations

import re
import subprocess

from ciliary.lab.controlplane import ControlPlane, stop_apiserver
from tests.kubectl import KUBECTL, kubectl


def test_stop_with_open_watches_does_not_wait_for_them(control_plane: ControlPlane) -> None:
    kubeconfig = control_plane.kubeconfig
    kubectl(kubeconfig, "create", "namespace", "w")
    kubectl(kubeconfig, "create", "configmap", "seen", "-n", "w")
    watchers = [
        subprocess.Popen(
            [KUBECTL, "--kubeconfig", str(kubeconfig), "get", "configmaps", "-n", "w", "-w"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for w in watchers:  # each has its watch open once it printed the list
            assert w.stdout is not None
            assert "seen" in w.stdout.readline() + w.stdout.readline()
        stop_apiserver(control_plane)
        assert not control_plane.apiserver_alive()
        # its own measure (a loaded machine may delay the process, not this): from the signal's
        # handling to the end of cleanup, which waited shutdown_timeout (1 s) for each watch
        stopped = re.findall(r"stopped in ([0-9.]+)s", control_plane.apiserver_log.read_text())
        assert stopped and float(stopped[-1]) < 0.5, stopped
    finally:
        for w in watchers:
            w.kill()
            w.communicate()
