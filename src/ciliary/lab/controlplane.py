"""The lab's control plane: a real etcd and ``ciliary-apiserver`` over TLS, and a kubeconfig.

What ``kind create cluster`` leaves behind for a lab: etcd with its data under
``<lab dir>/etcd``, the API server on a free loopback port serving a certificate of the lab's CA
(``lab/certs.py``) and requiring client certificates from the same CA, and
``<lab dir>/kubeconfig`` (cluster, user with the admin client certificate, context; certificates
embedded, as kind writes them) for kubectl and client libraries. Both processes are recorded by
pid and start time in ``<lab dir>/controlplane.json``, so a later command (or ``lab down``) stops
exactly them; a restarted API server keeps its port, so kubeconfigs stay valid.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from ciliary.apiserver.etcdserver import EtcdProcess, free_port, restart_etcd, start_etcd
from ciliary.lab.certs import LOOPBACK_ADDRESSES, CertPair, LabCA
from ciliary.lab.process import alive, start_time, venv_bin

STATE_FILE = "controlplane.json"
KUBECONFIG = "kubeconfig"
SERVER_STEM = "kube-apiserver"
ADMIN_STEM = "kube-admin"
ADMIN_USER = "kubernetes-admin"
SERVER_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message quotes the failing log)."""


@dataclass
class ControlPlane:
    dir: Path
    cluster: str
    etcd: EtcdProcess
    apiserver_pid: int
    apiserver_started: int | None
    port: int
    bookmark_interval: float

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / KUBECONFIG

    @property
    def apiserver_log(self) -> Path:
        return self.dir / "apiserver.log"

    @property
    def ca(self) -> LabCA:
        return LabCA(self.dir, self.cluster)

    @property
    def admin(self) -> CertPair:
        return self.ca.pair(ADMIN_STEM)

    def apiserver_alive(self) -> bool:
        return alive(self.apiserver_pid, self.apiserver_started)

    def ssl_context(self) -> ssl.SSLContext:
        """What a client of this API server trusts and presents (the admin certificate)."""
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_cert))
        ctx.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return ctx

    def save(self) -> None:
        doc = {
            "cluster": self.cluster,
            "etcd": self.etcd.to_json(),
            "apiserver": {"pid": self.apiserver_pid, "started": self.apiserver_started},
            "port": self.port,
            "bookmarkInterval": self.bookmark_interval,
        }
        path = self.dir / STATE_FILE
        path.write_text(json.dumps(doc, indent=2) + "\n")
        path.chmod(0o600)


def load(lab_dir: Path) -> ControlPlane | None:
    try:
        doc = json.loads((lab_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return ControlPlane(
        dir=lab_dir,
        cluster=doc["cluster"],
        etcd=EtcdProcess.from_json(doc["etcd"]),
        apiserver_pid=int(doc["apiserver"]["pid"]),
        apiserver_started=doc["apiserver"]["started"],
        port=int(doc["port"]),
        bookmark_interval=float(doc.get("bookmarkInterval", 60.0)),
    )


def _certificates(ca: LabCA) -> tuple[CertPair, CertPair]:
    server = ca.issue(
        SERVER_STEM,
        SERVER_STEM,
        dns_names=SERVER_NAMES,
        addresses=tuple(ipaddress.ip_address(a) for a in LOOPBACK_ADDRESSES),
        server=True,
    )
    admin = ca.issue(ADMIN_STEM, ADMIN_USER, server=False)
    return server, admin


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(cp: ControlPlane) -> Path:
    """A kubeconfig as ``kind get kubeconfig`` prints one: certificates embedded, 0600."""
    name = f"ciliary-{cp.cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": cp.url,
                    "certificate-authority-data": _b64(cp.ca.ca_cert),
                },
            }
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": _b64(cp.admin.cert),
                    "client-key-data": _b64(cp.admin.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    fd = os.open(cp.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return cp.kubeconfig


def _spawn_apiserver(
    lab_dir: Path, etcd: EtcdProcess, port: int, *, server: CertPair, ca: LabCA, interval: float
) -> tuple[int, int | None]:
    argv = [
        str(venv_bin() / "ciliary-apiserver"),
        "--etcd-servers",
        etcd.client_url,
        "--bind-address",
        "127.0.0.1",
        "--secure-port",
        str(port),
        "--tls-cert-file",
        str(server.cert),
        "--tls-private-key-file",
        str(server.key),
        "--client-ca-file",
        str(ca.ca_cert),
        "--watch-bookmark-interval",
        str(interval),
    ]
    with open(lab_dir / "apiserver.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    proc.returncode = 0  # known by pid from now on (stop_apiserver reaps it): detach the Popen
    return proc.pid, start_time(proc.pid)


def wait_ready(cp: ControlPlane, timeout: float = 30.0) -> None:
    """Until ``/readyz`` answers over TLS with the admin certificate (it reads etcd)."""
    ctx = cp.ssl_context()
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not cp.apiserver_alive():
            raise ControlPlaneError(f"ciliary-apiserver exited: {_tail(cp.apiserver_log)}")
        try:
            with urllib.request.urlopen(f"{cp.url}/readyz", context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        time.sleep(0.05)
    raise ControlPlaneError(f"ciliary-apiserver not ready after {timeout:.0f}s: {last}")


def start_control_plane(
    lab_dir: Path, *, cluster: str = "lab", bookmark_interval: float = 60.0
) -> ControlPlane:
    """etcd, certificates, the API server and the kubeconfig for ``lab_dir`` (created 0700).

    The API server is spawned first, on etcd's chosen port, and etcd right after: they start
    side by side (etcd is leader in ~0.1 s, before the API server's imports are done and its
    gRPC channel dials), so ``lab up`` pays ~0.6 s for both instead of their sum (~1.5 s)."""
    lab_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = LabCA(lab_dir, cluster)
    server, _ = _certificates(ca)
    etcd_port, peer_port, port = free_port(), free_port(), free_port()
    planned = EtcdProcess(
        0, None, f"http://127.0.0.1:{etcd_port}", lab_dir / "etcd", lab_dir / "etcd.log"
    )
    cp = ControlPlane(lab_dir, cluster, planned, 0, None, port, bookmark_interval)
    try:
        cp.apiserver_pid, cp.apiserver_started = _spawn_apiserver(
            lab_dir, planned, port, server=server, ca=ca, interval=bookmark_interval
        )
        cp.save()  # intent first: a failure from here on stops the API server by its pid
        cp.etcd = start_etcd(
            planned.data_dir,
            log_path=planned.log_path,
            client_port=etcd_port,
            peer_port=peer_port,
        )
        cp.save()
        write_kubeconfig(cp)
        wait_ready(cp)
    except BaseException:
        with contextlib.suppress(Exception):
            stop_control_plane(cp)
        raise
    return cp


def restart_apiserver(cp: ControlPlane) -> None:
    """Start the API server again on its port (after it died or was stopped)."""
    stop_apiserver(cp)
    server = cp.ca.pair(SERVER_STEM)
    cp.apiserver_pid, cp.apiserver_started = _spawn_apiserver(
        cp.dir, cp.etcd, cp.port, server=server, ca=cp.ca, interval=cp.bookmark_interval
    )
    cp.save()
    wait_ready(cp)


def restart_etcd_member(cp: ControlPlane) -> None:
    """Start etcd again with its data and ports (after it died or was stopped); the API server
    reconnects by itself."""
    cp.etcd = restart_etcd(cp.etcd)
    cp.save()
    wait_ready(cp)


def stop_apiserver(cp: ControlPlane, timeout: float = 5.0) -> None:
    if cp.apiserver_pid <= 0:
        return
    _reap(cp.apiserver_pid)
    if cp.apiserver_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(cp.apiserver_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while cp.apiserver_alive() and time.monotonic() < deadline:
            _reap(cp.apiserver_pid)
            time.sleep(0.05)
        if cp.apiserver_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(cp.apiserver_pid, signal.SIGKILL)
            for _ in range(100):
                _reap(cp.apiserver_pid)
                if not cp.apiserver_alive():
                    break
                time.sleep(0.02)
    _reap(cp.apiserver_pid)


def stop_control_plane(cp: ControlPlane) -> None:
    """The API server, then etcd (its data stays under the lab dir)."""
    try:
        stop_apiserver(cp)
    finally:
        if cp.etcd.pid > 0:  # 0: not started yet (and waitpid(0) would reap any child of ours)
            cp.etcd.stop()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
