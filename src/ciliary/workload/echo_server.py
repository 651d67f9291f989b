"""``echo-server``: TCP and UDP echo (RFC 862), to test L4 reachability of both protocols.

TCP connections get one thread each and are echoed until the client closes, so a long-lived
connection (``tcp-stream``) can prove that established flows survive agent restarts; UDP
datagrams are echoed to their sender. One log line per connection or datagram.
"""

from __future__ import annotations

import argparse
import socket
import socketserver

from ciliary.workload.common import (
    ServerService,
    Service,
    TCPServer,
    UDPServer,
    describe_error,
    fail,
    format_address,
    log,
    serve_until_signal,
)


class _TCPEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        peer = format_address(self.client_address)
        log(f"tcp-echo connection from {peer}")
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError as exc:
            log(f"tcp-echo connection from {peer}: {describe_error(exc)}")


class _UDPEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data: bytes = self.request[0]
        sock: socket.socket = self.request[1]
        peer = format_address(self.client_address)
        try:
            sock.sendto(data, self.client_address)
        except OSError as exc:
            log(f"udp-echo {len(data)} bytes from {peer}: reply failed: {describe_error(exc)}")
            return
        log(f"udp-echo {len(data)} bytes from {peer}")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("echo-server", help="echo TCP connections and/or UDP datagrams")
    parser.add_argument("--tcp-port", type=int, help="TCP port to echo on (0: any free port)")
    parser.add_argument("--udp-port", type=int, help="UDP port to echo on (0: any free port)")
    parser.add_argument("--bind", help="address to listen on (default: [::], dual-stack)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.tcp_port is None and args.udp_port is None:
        return fail("echo-server", "give --tcp-port, --udp-port or both")
    services: list[Service] = []
    ready: list[str] = []
    where = f"tcp port {args.tcp_port}"
    try:
        if args.tcp_port is not None:
            tcp = TCPServer(args.bind, args.tcp_port, _TCPEcho)
            services.append(ServerService("tcp", tcp))
            ready.append(f"echo-server: listening on tcp {format_address(tcp.server_address)}")
        if args.udp_port is not None:
            where = f"udp port {args.udp_port}"
            udp = UDPServer(args.bind, args.udp_port, _UDPEcho)
            services.append(ServerService("udp", udp))
            ready.append(f"echo-server: listening on udp {format_address(udp.server_address)}")
    except (OSError, ValueError, OverflowError) as exc:
        for service in services:
            if isinstance(service, ServerService):
                service.server.server_close()
        return fail("echo-server", f"cannot listen on {where}: {describe_error(exc)}")
    return serve_until_signal(services, "echo-server", ready=ready)
