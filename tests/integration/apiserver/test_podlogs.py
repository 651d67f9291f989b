"""``kubectl logs`` (the machine's kubectl) against etcd + ``ciliary-apiserver --pod-log-dir``:
the log files are written where :mod:`ciliary.k8s.podlogs` puts them, as the kubelet role
would, and read back through ``pods/<name>/log``: whole, ``--tail``, ``--limit-bytes``, ``-f``
printing lines written later and ending when the container's next run starts, ``--previous``,
and kube's refusals (no container named, a container not started, ``--timestamps``)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.apiserver.etcdserver import EtcdProcess, free_port
from ciliary.k8s.podlogs import container_log_path

pytestmark = pytest.mark.timeout(120)

VENV_BIN = Path(__file__).resolve().parents[3] / ".venv" / "bin"

POD = """\
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: t}
spec:
  containers:
  - {name: app, image: nginx, command: [nginx]}
  - {name: side, image: busybox, command: [sleep, infinity]}
"""


@pytest.fixture
def server(etcd: EtcdProcess, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    logs = tmp_path / "pod-logs"
    port = free_port()
    with open(tmp_path / "apiserver.log", "wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "ciliary-apiserver"), "--etcd-servers", etcd.client_url,
             "--secure-port", str(port), "--pod-log-dir", str(logs)],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "apiserver.log").read_text()
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=2):
                break
            assert time.monotonic() < deadline, "API server not ready"
            time.sleep(0.05)
        yield url, logs
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kubectl(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--server", url, "-n", "t", *args],
        input=stdin, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_kubectl_logs(server: tuple[str, Path]) -> None:
    url, logs = server
    assert kubectl(url, "create", "-f", "-", stdin=POD).returncode == 0
    uid = json.loads(kubectl(url, "get", "pod", "web", "-o", "json").stdout)["metadata"]["uid"]

    def path(container: str, run: int) -> Path:
        return container_log_path(logs, "t", "web", uid, container, restart_count=run)

    # not started yet: kube's words
    out = kubectl(url, "logs", "web", "-c", "app")
    assert out.returncode != 0
    assert 'container "app" in pod "web" is waiting to start: ContainerCreating' in out.stderr

    first = path("app", 0)
    first.parent.mkdir(parents=True)
    first.write_text("one\ntwo\nthree\n")
    assert kubectl(url, "logs", "web", "-c", "app").stdout == "one\ntwo\nthree\n"
    assert kubectl(url, "logs", "web", "-c", "app", "--tail=2").stdout == "two\nthree\n"
    assert kubectl(url, "logs", "web", "-c", "app", "--tail=0").stdout == ""
    assert kubectl(url, "logs", "web", "-c", "app", "--limit-bytes=6").stdout == "one\ntw"
    out = kubectl(url, "logs", "web", "-c", "nope")
    assert "container nope is not valid for pod web" in out.stderr
    out = kubectl(url, "logs", "web", "-c", "app", "--timestamps")
    assert out.returncode != 0 and "timestamps is not supported" in out.stderr
    out = kubectl(url, "get", "--raw", "/api/v1/namespaces/t/pods/web/log")
    assert "a container name must be specified for pod web, choose one of: [app side]" in (
        out.stderr
    )
    out = kubectl(url, "logs", "web", "-c", "app", "--previous")
    assert 'previous terminated container "app" in pod "web" not found' in out.stderr

    # -f: what is written later arrives; the next run's file ends the stream
    with subprocess.Popen(
        ["kubectl", "--server", url, "-n", "t", "logs", "-f", "web", "-c", "app", "--tail=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ) as follow:  # fmt: skip
        assert follow.stdout is not None
        fd = follow.stdout.fileno()
        got = b""

        def read_until(text: bytes) -> None:
            nonlocal got
            deadline = time.monotonic() + 10
            while text not in got:
                assert time.monotonic() < deadline, got
                if select.select([fd], [], [], 0.5)[0]:
                    got += os.read(fd, 4096)

        try:
            read_until(b"three\n")
            with open(first, "a") as f:
                f.write("four\n")
            read_until(b"three\nfour\n")
            with open(first, "a") as f:
                f.write("five\n")
            path("app", 1).write_text("second run\n")
            assert follow.wait(timeout=10) == 0
            got += follow.stdout.read()
            assert got == b"three\nfour\nfive\n"
        finally:
            if follow.poll() is None:
                follow.kill()

    assert kubectl(url, "logs", "web", "-c", "app").stdout == "second run\n"
    assert kubectl(url, "logs", "web", "-c", "app", "-p").stdout == "one\ntwo\nthree\nfour\nfive\n"


def test_discovery_lists_pods_log(server: tuple[str, Path]) -> None:
    url, _ = server
    out = kubectl(url, "get", "--raw", "/api/v1")
    resources = {r["name"]: r for r in json.loads(out.stdout)["resources"]}
    assert (resources["pods/log"]["kind"], resources["pods/log"]["verbs"]) == ("Pod", ["get"])
