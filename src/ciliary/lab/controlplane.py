"""The lab's control plane: a real etcd and ``ciliary-apiserver`` over TLS, and a kubeconfig.

What ``kind create cluster`` leaves behind for a lab: etcd with its data under
``<lab dir>/etcd``, the API server on a free loopback port serving a certificate of the lab's CA
(``lab/certs.py``) and requiring client certificates from the same CA, and
``<lab dir>/kubeconfig`` (cluster, user with the admin client certificate, context; certificates
embedded, as kind writes them) for kubectl and client libraries. Both processes are recorded by
pid and start time in ``<lab dir>/controlplane.json``, so a later command (or ``lab down``) stops
exactly them; a restarted API server keeps its port, so kubeconfigs stay valid.

Each node reaches the API on its own loopback, ``https://127.0.0.1:6443`` inside the node netns
(as a kubelet dials its local endpoint), never through the root namespace: ``add_node`` adds the
node's netns to ``<lab dir>/apiserver-listeners`` (the server opens a socket *inside* that netns
and serves it, ``apiserver/netnslisten.py``; read again on SIGHUP and by every restart) and writes
``<lab dir>/nodes/<node>/kubeconfig`` with the node's own client certificate (kubelet's identity:
CN ``system:node:<node>``, O ``system:nodes``), for what runs in the node (the agent); its server
is the lab network's address below when the lab has one (as a node of a real cluster dials its
API server on their network), the loopback otherwise.

The API is also on the lab network, as a real cluster's nodes reach their API server at an
address of their network: ``add_network`` adds listeners inside the lab network's namespace on
its own addresses (the bridge's ``.1``/``::1``, port 6443; the serving certificate names them,
``start_control_plane(addresses=...)``), through the same file, so a restarted server opens them
again. Pods do not reach it: ``lab.underlay`` fences the address's API port off from what a node
forwards.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ciliary.apiserver import netnslisten
from ciliary.apiserver.etcdserver import (
    EtcdError,
    EtcdProcess,
    free_port,
    is_bind_race,
    restart_etcd,
    start_etcd,
)
from ciliary.apiserver.servicealloc import IPRange, parse_service_cidrs
from ciliary.core import atomicfile as atomic
from ciliary.datapath.linux import netns
from ciliary.lab.certs import LOOPBACK_ADDRESSES, CertPair, LabCA
from ciliary.lab.process import alive, start_time, stop, venv_bin

STATE_FILE = "controlplane.json"
KUBECONFIG = "kubeconfig"
SERVER_STEM = "kube-apiserver"
ADMIN_STEM = "kube-admin"
ADMIN_USER = "kubernetes-admin"
SERVER_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost")
LISTENERS_FILE = "apiserver-listeners"
POD_LOG_DIR = "pod-logs"
NODE_API_HOST = "127.0.0.1"  # the node netns' loopback: the API's 127.0.0.1 SAN covers it
NODE_API_PORT = 6443  # kube-apiserver's secure port, free in a node netns
# The Services' cluster IPs (kind's defaults): apart from the pod pools (10.200.0.0/16,
# fd00:10:200::/104 by default) and the lab network (172.18.0.0/24, fc00:f853:ccd:e793::/64)
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16,fd00:10:96::/112"
SERVICE_NODE_PORT_RANGE = "30000-32767"
NODES_GROUP = "system:nodes"


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
    def listeners_file(self) -> Path:
        return self.dir / LISTENERS_FILE

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


def _certificates(ca: LabCA, addresses: Sequence[str] = ()) -> tuple[CertPair, CertPair]:
    server = ca.issue(
        SERVER_STEM,
        SERVER_STEM,
        dns_names=SERVER_NAMES,
        addresses=tuple(ipaddress.ip_address(a) for a in (*LOOPBACK_ADDRESSES, *addresses)),
        server=True,
    )
    admin = ca.issue(ADMIN_STEM, ADMIN_USER, server=False)
    return server, admin


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(cp: ControlPlane) -> Path:
    """A kubeconfig as ``kind get kubeconfig`` prints one: certificates embedded, 0600."""
    return _write_kubeconfig(cp, cp.kubeconfig, cp.url, cp.admin)


def _write_kubeconfig(cp: ControlPlane, path: Path, url: str, user: CertPair) -> Path:
    name = f"ciliary-{cp.cluster}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": url,
                    "certificate-authority-data": _b64(cp.ca.ca_cert),
                },
            }
        ],
        "users": [
            {
                "name": name,
                "user": {
                    "client-certificate-data": _b64(user.cert),
                    "client-key-data": _b64(user.key),
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def node_kubeconfig(lab_dir: Path, node: str) -> Path:
    """Where ``add_node`` writes the node's kubeconfig (the path is known before the node exists:
    the record names it first)."""
    return lab_dir / "nodes" / node / KUBECONFIG


def node_listener(netns_path: str | Path) -> netnslisten.NetnsListener:
    return netnslisten.NetnsListener(str(netns_path), NODE_API_HOST, NODE_API_PORT)


def network_url(address: str) -> str:
    """The API's URL at ``address`` of the lab network (the bridge's), port 6443."""
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{NODE_API_PORT}"


def node_listeners(cp: ControlPlane) -> list[netnslisten.NetnsListener]:
    """The listeners the API server is asked to keep (the file; empty when it is missing)."""
    try:
        return netnslisten.parse(cp.listeners_file.read_text())
    except FileNotFoundError:
        return []


def add_node(
    cp: ControlPlane,
    node: str,
    netns_path: str | Path,
    timeout: float = 30.0,
    *,
    server: str | None = None,
) -> Path:
    """Make the API reachable inside ``node``'s netns and return the node's kubeconfig.

    The node's client certificate and kubeconfig (root-only; its server ``server``, one of
    :func:`add_network`'s URLs, else ``https://127.0.0.1:6443``) are written, the loopback
    listener added to the file, the API server told (SIGHUP), and this returns once ``/readyz``
    answers *from inside the netns* at the kubeconfig's server with the node's certificate.
    Idempotent."""
    user = cp.ca.issue(f"kube-node-{node}", f"system:node:{node}", organization=NODES_GROUP,
                       server=False)  # fmt: skip
    path = node_kubeconfig(cp.dir, node)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    url = server or f"https://{NODE_API_HOST}:{NODE_API_PORT}"
    _write_kubeconfig(cp, path, url, user)
    _listen(cp, [node_listener(netns_path)])
    ctx = ssl.create_default_context(cafile=str(cp.ca.ca_cert))
    ctx.load_cert_chain(str(user.cert), str(user.key))
    netns.call_in(str(netns_path), lambda: wait_ready(cp, timeout, url=url, ctx=ctx))
    return path


def add_network(
    cp: ControlPlane, netns_path: str | Path, addresses: Sequence[str], timeout: float = 30.0
) -> list[str]:
    """Make the API reachable on the lab network at each of ``addresses`` (the bridge's, in
    ``netns_path``; the serving certificate must name them) and return their URLs, once
    ``/readyz`` answers at each from inside that netns. Idempotent."""
    _listen(cp, [netnslisten.NetnsListener(str(netns_path), a, NODE_API_PORT) for a in addresses])
    urls = [network_url(a) for a in addresses]

    def ready() -> None:
        for url in urls:
            wait_ready(cp, timeout, url=url)

    netns.call_in(str(netns_path), ready)
    return urls


def _listen(cp: ControlPlane, new: Sequence[netnslisten.NetnsListener]) -> None:
    """Add ``new`` to the listeners file (atomically) and tell the API server (SIGHUP)."""
    listeners = node_listeners(cp)
    missing = [lst for lst in new if lst not in listeners]
    if missing:
        atomic.write_text(cp.listeners_file, netnslisten.render([*listeners, *missing]))
    if cp.apiserver_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(cp.apiserver_pid, signal.SIGHUP)


def kubernetes_service(address: str, port: int = NODE_API_PORT) -> list[dict[str, Any]]:
    """What kube-apiserver creates in ``default`` at start for its clients in the cluster: the
    ``kubernetes`` Service (the first address of the primary service range, port 443 ``https``)
    and its EndpointSlice naming the API server's address on the nodes' network (the lab
    network's own address, port 6443). No selector: nothing but this names its backends."""
    ip = IPRange(parse_service_cidrs(SERVICE_CLUSTER_IP_RANGE)[0]).first
    family = "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"
    meta = {"name": "kubernetes", "namespace": "default"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {**meta, "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": ip,
                "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
                "sessionAffinity": "None",
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {**meta, "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": family,
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
    ]


KUBE_DNS_OFFSET = 9
"""kube-dns's address: the 10th of each service range (network + 10), kubeadm's choice."""


def kube_dns_service(ranges: str = SERVICE_CLUSTER_IP_RANGE) -> dict[str, Any]:
    """``kube-system/kube-dns``, the cluster DNS Service as kubeadm makes it (its labels,
    selector ``k8s-app: kube-dns``, ports ``dns`` 53/UDP and ``dns-tcp`` 53/TCP) at the 10th
    address of each service range: 10.96.0.10, and fd00:10:96::a with a dual-stack range
    (``PreferDualStack``, the primary family first)."""
    ips = [IPRange(net).address(KUBE_DNS_OFFSET) for net in parse_service_cidrs(ranges)]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"k8s-app": "kube-dns"},
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "ipFamilyPolicy": "PreferDualStack" if len(ips) > 1 else "SingleStack",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    }


def pod_log_dir(lab_dir: Path) -> Path:
    """The lab's container logs (``ciliary.k8s.podlogs`` layout), written by the lab's pods and
    read by the API server (``--pod-log-dir``) for ``kubectl logs``."""
    return lab_dir / POD_LOG_DIR


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
        "--listen-netns-file",
        str(lab_dir / LISTENERS_FILE),
        "--pod-log-dir",
        str(pod_log_dir(lab_dir)),
        "--service-cluster-ip-range",
        SERVICE_CLUSTER_IP_RANGE,
        "--service-node-port-range",
        SERVICE_NODE_PORT_RANGE,
    ]
    # SIGHUP (reread the listeners) must not kill it before its handler is in place: blocked in
    # the child from the fork on (the mask survives exec), pending until the server unblocks it
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    with open(lab_dir / "apiserver.log", "ab") as log:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    proc.returncode = 0  # known by pid from now on (stop_apiserver reaps it): detach the Popen
    return proc.pid, start_time(proc.pid)


def wait_ready(
    cp: ControlPlane,
    timeout: float = 30.0,
    *,
    url: str | None = None,
    ctx: ssl.SSLContext | None = None,
) -> None:
    """Until ``/readyz`` answers over TLS (it reads etcd): at ``url`` (the root netns' port by
    default) with ``ctx`` (the admin certificate by default)."""
    ctx = ctx or cp.ssl_context()
    url = url or cp.url
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not cp.apiserver_alive():
            raise ControlPlaneError(f"ciliary-apiserver exited: {_tail(cp.apiserver_log)}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        time.sleep(0.05)
    raise ControlPlaneError(f"ciliary-apiserver not ready at {url} after {timeout:.0f}s: {last}")


BIND_ATTEMPTS = 3
"""Starts on fresh ports when a port :func:`free_port` promised was taken before etcd or the API
server bound it (:func:`is_bind_race`)."""


def start_control_plane(
    lab_dir: Path,
    *,
    cluster: str = "lab",
    bookmark_interval: float = 60.0,
    addresses: Sequence[str] = (),
) -> ControlPlane:
    """etcd, certificates, the API server and the kubeconfig for ``lab_dir`` (created 0700).
    The serving certificate names loopback and ``addresses`` (the lab network's, for
    :func:`add_network`).

    The API server is spawned first, on etcd's chosen port, and etcd right after: they start
    side by side (etcd is leader in ~0.1 s, before the API server's imports are done and its
    gRPC channel dials), so ``lab up`` pays ~0.6 s for both instead of their sum (~1.5 s).
    A port taken between its choice and its bind is a retry on fresh ports
    (:data:`BIND_ATTEMPTS`)."""
    for attempt in range(BIND_ATTEMPTS):
        try:
            return _start_control_plane(
                lab_dir, cluster=cluster, bookmark_interval=bookmark_interval, addresses=addresses
            )
        except (ControlPlaneError, EtcdError) as err:
            if attempt + 1 == BIND_ATTEMPTS or not is_bind_race(err):
                raise
            # a member that started before the API server failed stored its peer URL: a fresh
            # member on the new ports starts from nothing (the failed start wrote no object)
            shutil.rmtree(lab_dir / "etcd", ignore_errors=True)
    raise AssertionError("unreachable")


def _start_control_plane(
    lab_dir: Path, *, cluster: str, bookmark_interval: float, addresses: Sequence[str]
) -> ControlPlane:
    lab_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = LabCA(lab_dir, cluster)
    server, _ = _certificates(ca, addresses)
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
    if cp.apiserver_pid > 0:  # 0: not started yet
        stop(cp.apiserver_pid, cp.apiserver_started, timeout)


def stop_control_plane(cp: ControlPlane) -> None:
    """The API server, then etcd (its data stays under the lab dir)."""
    try:
        stop_apiserver(cp)
    finally:
        if cp.etcd.pid > 0:  # 0: not started yet (and waitpid(0) would reap any child of ours)
            cp.etcd.stop()


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
