"""A stand-in for the node's L7 proxies in tests with real packets (issue #15, bpf/lib/proxy.h):
transparent listeners in the node netns that answer what they saw, after speaking to the
original destination as the pod (the contract docs/architecture.md gives the real proxies), and
a pod-side client. Scripts run with ``ip netns exec``; the servers print ``ready`` once bound."""

from __future__ import annotations

import subprocess
from dataclasses import replace

from ciliary.datapath.maps.policy import EndpointPolicyMap

from .conftest import PIN_ROOT, PYTHON

# The stand-in proxy: transparent TCP and UDP listeners (ports: argv 1 and 2) on both wildcard
# addresses. Each request is passed on to the original destination as the pod (IP_TRANSPARENT,
# bound to the pod's address and port; argv 3 "own-port": a port of its own and SO_MARK 0x0A00,
# as Envoy's) and answered with what it saw: the original destination (the accepted socket's
# local address; the datagram's IP_RECVORIGDSTADDR, answered from that address as a transparent
# socket bound to it), the pod, and the destination's answer.
LISTENER = r"""
import select, socket, struct, sys
IP_TRANSPARENT, IP_RECVORIGDSTADDR, IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR = 19, 20, 75, 74


def transparent(kind, bind):
    v6 = ":" in bind[0]
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(2)
    s.bind(bind)
    return s


def upstream(kind, pod, orig):
    # to the original destination as the pod: its address and port, or (mode "own-port") its
    # address and a port of the proxy's, marked as the proxy's (SO_MARK 0x0A00)
    own_port = len(sys.argv) > 3 and sys.argv[3] == "own-port"
    up = transparent(kind, (pod[0], 0) if own_port else pod[:2])
    if own_port:
        up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x0A00)
    try:
        up.connect(orig[:2])
        up.send(b"hello")
        return up.recv(200).decode()
    except OSError as err:
        return f"error {type(err).__name__} {err.errno}"
    finally:
        up.close()


def orig_dst(anc):
    for level, kind, raw in anc:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR:
            return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
    return None


tcp, udp = [], []
for wildcard in ("0.0.0.0", "::"):
    t = transparent(socket.SOCK_STREAM, (wildcard, int(sys.argv[1])))
    t.settimeout(None)
    t.listen(8)
    tcp.append(t)
    u = transparent(socket.SOCK_DGRAM, (wildcard, int(sys.argv[2])))
    if wildcard == "::":
        u.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
    else:
        u.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    udp.append(u)
print("ready", flush=True)
while True:
    for s in select.select(tcp + udp, [], [])[0]:
        if s in tcp:
            c, peer = s.accept()
            orig = c.getsockname()
            answer = upstream(socket.SOCK_STREAM, peer, orig)
            c.sendall(f"proxy tcp {orig[0]}:{orig[1]} from {peer[0]}, upstream: {answer}".encode())
            c.close()
        else:
            data, anc, _, peer = s.recvmsg(512, 256)
            orig = orig_dst(anc)
            answer = upstream(socket.SOCK_DGRAM, peer, orig)
            out = transparent(socket.SOCK_DGRAM, orig)  # answers from the original destination
            text = f"proxy udp {orig[0]}:{orig[1]} from {peer[0]}, upstream: {answer}"
            out.sendto(text.encode(), peer)
            out.close()
"""

# A pod's client: one TCP connection or one UDP query on a connected socket (so only an answer
# from the address asked is accepted); prints the answer, or the error.
CLIENT = r"""
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "tcp":
        s = socket.create_connection((host, port), timeout=2)
    else:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))
        s.send(b"query")
    print(s.recv(200).decode())
except OSError as err:
    print(f"error {type(err).__name__}")
"""


def netns_exec(netns: str, script: str, *args: str) -> str:
    res = subprocess.run(
        ["ip", "netns", "exec", netns, PYTHON, "-c", script, *args],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    return res.stdout.strip()


def serve(netns: str, script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, PYTHON, "-c", script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.communicate(timeout=10)[1]!r}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=10)


def point_to(node: str, ep_id: int, tcp_port: int, udp_port: int) -> None:
    """Point the redirecting entries of endpoint ``ep_id``'s policy map (node ``node``'s pin) at
    the stand-in's ports: the agent's own proxies hold the ports it allocated."""
    inner = EndpointPolicyMap.from_pin(PIN_ROOT / node / f"ciliary_policy_{ep_id}")
    try:
        for key, value in inner.current().items():
            if value.proxy_port:
                port = tcp_port if key.protocol == 6 else udp_port
                inner.upsert(key, replace(value, proxy_port=port))
    finally:
        inner.close()
