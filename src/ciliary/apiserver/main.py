"""``ciliary-apiserver``: the lab's Kubernetes API server process.

Flags carry kube-apiserver's names (``--etcd-servers``, ``--bind-address``, ``--secure-port``,
``--tls-cert-file``, ``--tls-private-key-file``, ``--client-ca-file``) so the lab's command line
reads like a cluster's. With a client CA, every client must present a certificate it signed
(kubectl and the agents do); without TLS files it serves plain HTTP (tests of the protocol only).
One asyncio loop; SIGTERM/SIGINT stop it (open watches end, clients relist elsewhere).
``--listen-netns-file`` adds listeners inside other network namespaces (the lab's nodes; see
``apiserver/netnslisten.py``), read at start and on SIGHUP. ``--service-cluster-ip-range`` and
``--service-node-port-range`` are what Services are allocated from (``apiserver/servicealloc.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

from ciliary.apiserver.etcd import EtcdClient
from ciliary.apiserver.netnslisten import NetnsSites
from ciliary.apiserver.server import APIServer
from ciliary.apiserver.servicealloc import (
    DEFAULT_NODE_PORTS,
    DEFAULT_SERVICE_CIDR,
    ServiceAllocator,
    parse_port_range,
    parse_service_cidrs,
)
from ciliary.apiserver.storage import Storage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ciliary-apiserver", description=__doc__.splitlines()[0])
    p.add_argument("--etcd-servers", required=True, help="http://127.0.0.1:2379 (the first)")
    p.add_argument("--bind-address", default="127.0.0.1")
    p.add_argument("--secure-port", type=int, default=6443)
    p.add_argument("--tls-cert-file")
    p.add_argument("--tls-private-key-file")
    p.add_argument("--client-ca-file")
    p.add_argument(
        "--listen-netns-file",
        type=Path,
        help="listeners inside other network namespaces, '<netns path>=<address>:<port>' a line;"
        " read at start and on SIGHUP",
    )
    p.add_argument(
        "--watch-bookmark-interval",
        type=float,
        default=60.0,
        help="seconds between BOOKMARK events on watches that allow them",
    )
    p.add_argument(
        "--pod-log-dir",
        type=Path,
        help="the kubelet role's container logs, <dir>/<namespace>_<pod>_<uid>/<container>/<n>.log"
        " (ciliary.k8s.podlogs), served as pods/<name>/log; without it that is 400",
    )
    p.add_argument(
        "--service-cluster-ip-range",
        default=DEFAULT_SERVICE_CIDR,
        help="the Services' cluster IPs: one CIDR, or one IPv4 and one IPv6 CIDR comma-separated"
        f" (the first is the primary family; default {DEFAULT_SERVICE_CIDR})",
    )
    p.add_argument(
        "--service-node-port-range",
        default=DEFAULT_NODE_PORTS,
        help=f"the Services' node ports, A-B inclusive (default {DEFAULT_NODE_PORTS})",
    )
    p.add_argument("-v", "--v", type=int, default=0, dest="verbosity")
    args = p.parse_args(argv)
    try:
        args.service_allocator = ServiceAllocator(
            parse_service_cidrs(args.service_cluster_ip_range),
            parse_port_range(args.service_node_port_range),
        )
    except ValueError as err:
        p.error(str(err))
    return args


def ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
    if args.client_ca_file:
        ctx.load_verify_locations(args.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def etcd_target(servers: str) -> str:
    first = servers.split(",", maxsplit=1)[0].strip()
    return first.split("://", 1)[-1].rstrip("/")


async def serve(args: argparse.Namespace) -> None:
    etcd = EtcdClient(etcd_target(args.etcd_servers))
    server = APIServer(
        Storage(etcd, claims=args.service_allocator),
        bookmark_interval=args.watch_bookmark_interval,
        pod_log_dir=args.pod_log_dir,
        service_allocator=args.service_allocator,
    )
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    tls = ssl_context(args)
    # Signals first: a SIGHUP sent while the sites start is a reload after them, not a death.
    wake = asyncio.Event()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        wake.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, wake.set)
    # a starter may hold SIGHUP blocked until now (the lab does): one sent meanwhile arrives here
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        # the namespaces' listeners before the port: once /readyz answers there, they are open
        netns_sites = (
            NetnsSites(runner, args.listen_netns_file, tls) if args.listen_netns_file else None
        )
        if netns_sites is not None:
            await netns_sites.sync()
        site = web.TCPSite(runner, args.bind_address, args.secure_port, ssl_context=tls)
        await site.start()
        logging.getLogger(__name__).info(
            "serving on %s:%d (etcd %s)", args.bind_address, args.secure_port, etcd.target
        )
        while True:
            await wake.wait()
            wake.clear()
            if stopping:
                break
            if netns_sites is not None:
                await netns_sites.sync()
    finally:
        began = time.monotonic()
        await runner.cleanup()  # ends open watches and log streams at once (APIServer._end_streams)
        await etcd.close()
        logging.getLogger(__name__).info("stopped in %.2fs", time.monotonic() - began)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbosity >= 4 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
