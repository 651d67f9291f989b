"""The L7 proxies' listener selection in the kernel (bpf/bpf_sk_lookup.c attached by
datapath/sklookup.py, its socket map filled by agent/proxysockets.py): in a scratch network
namespace, a connection whose conntrack entry says "redirected to proxy port P" reaches the
socket listening on P although it was addressed to port 80 (the accepted socket's local address
is the original one); a connection without such an entry is the kernel's business (the
namespace's own listener on port 80 gets it); a redirected one whose proxy has no socket in the
map reaches nobody, not even that listener (fail closed). The socket got into the map the way
the agent puts Envoy's there: found in the process's descriptor table, duplicated with
pidfd_getfd (here the process is the script itself)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ciliary.agent.proxysockets import ProxySockets
from ciliary.datapath import sklookup
from ciliary.datapath.libbpf import BPF_MAP_TYPE_SOCKHASH, BPFObject, map_create
from ciliary.datapath.linux import netns
from ciliary.datapath.loader import PIN_ROOT, default_object_dir, remove_pins

SCRIPT = r"""
import json, os, socket, sys
from ciliary.agent.proxysockets import ProxySockets
from ciliary.datapath.libbpf import Map
from ciliary.datapath.maps.conntrack import CT_F_PROXY_REDIRECT, CTEntryC, CTKeyC
from ciliary.datapath.linux import netns
from ciliary.datapath.linux.procsockets import socket_cookie
from ciliary.datapath.sklookup import ProxySocketMap
netns.enter(sys.argv[1])  # not `ip netns exec`: its /sys has no bpffs
pins = sys.argv[2]
ct = Map.from_pin(f"{pins}/ciliary_ct")
socks = ProxySocketMap(Map.from_pin(f"{pins}/ciliary_proxy_socks"))
def redirect(client_port):
    k = CTKeyC(sport=client_port, dport=80, proto=6, family=2)
    k.saddr[:4] = k.daddr[:4] = [127, 0, 0, 1]
    ct.update(bytes(k), bytes(CTEntryC(flags=CT_F_PROXY_REDIRECT, proxy_port=socket.htons(15001))))
def connect(client_port):
    c = socket.socket()
    c.bind(("127.0.0.1", client_port))
    c.settimeout(2)
    try:
        c.connect(("127.0.0.1", 80))
    except OSError as err:
        return err.errno
    return "connected"
proxy = socket.create_server(("127.0.0.1", 15001))
node = socket.create_server(("0.0.0.0", 80))  # the node's own listener of the original port
out = {"synced": ProxySockets(socks, lambda: os.getpid(), lambda: {15001}).sync()}
out["cookie"] = socks.cookies().get((15001, 2)) == socket_cookie(proxy.fileno())
proxy.settimeout(2)
redirect(40001)
out["redirected"] = connect(40001)
conn, _ = proxy.accept()
out["proxy_local"] = list(conn.getsockname())
out["plain"] = connect(40002)
node.accept()
proxy.close()  # the kernel takes a closed socket out of the map
out["map_after_close"] = len(socks.cookies())
redirect(40003)
out["no_proxy"] = connect(40003)
print(json.dumps(out))
"""


@pytest.fixture
def scratch() -> Iterator[tuple[str, Path]]:
    name = f"t-sklookup-{secrets.token_hex(3)}"
    pins = PIN_ROOT / name
    netns.create(name)  # loopback up
    try:
        yield name, pins
    finally:
        remove_pins(pins)
        netns.remove(name)


def test_redirected_connection_reaches_the_proxy_listener(scratch: tuple[str, Path]) -> None:
    name, pins = scratch
    path = netns.path_of(name)
    obj = BPFObject.open(default_object_dir() / sklookup.OBJECT, pin_dir=pins)
    try:
        obj.load()
        sklookup.attach(obj, pins, path)
        sklookup.attach(obj, pins, path)  # a restarted agent: the same link, program replaced
    finally:
        obj.close()
    assert sklookup.attached_netns(pins) == os.stat(path).st_ino
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, name, str(pins)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["synced"] is True
    assert out["cookie"] is True  # the listener itself, not a copy
    assert out["redirected"] == "connected"
    assert out["proxy_local"] == ["127.0.0.1", 80]  # the original destination
    assert out["plain"] == "connected"  # to the namespace's own listener
    assert out["map_after_close"] == 0
    assert out["no_proxy"] != "connected"  # not the node's listener of port 80 either
    assert sklookup.detach(pins)
    assert sklookup.attached_netns(pins) is None


LISTENER = r"""
import socket, sys, time
s = socket.create_server(("127.0.0.1", int(sys.argv[1])), reuse_port=True)
print("listening", flush=True)
time.sleep(60)
"""


def test_the_socket_map_follows_the_proxy_process() -> None:
    """ProxySockets puts the proxy process's listener in the map, and when that process exits
    (its pidfd) waits for the next one's: the map holds the new process's socket."""
    socks = sklookup.ProxySocketMap(map_create(BPF_MAP_TYPE_SOCKHASH, "t_proxy_socks", 4, 8, 4))
    port = 15000 + secrets.randbelow(1000)
    procs: list[subprocess.Popen[str]] = []

    def spawn() -> int:
        p = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline() == "listening\n"
        return p.pid

    async def scenario() -> tuple[int, int, int]:
        sockets = ProxySockets(socks, lambda: procs[-1].pid if procs else None, lambda: {port})
        spawn()
        sockets.changed()
        first = await _until(lambda: socks.cookies().get((port, 2)))
        procs[-1].kill()
        procs[-1].wait()
        gone = await _until(lambda: not socks.cookies() and 1)  # the kernel dropped it
        spawn()  # the supervisor's restart
        second = await _until(lambda: socks.cookies().get((port, 2)))
        await sockets.stop()
        return first, gone, second

    try:
        first, gone, second = asyncio.run(scenario())
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        socks.map.close()
    assert first and gone and second and second != first


async def _until(probe: Callable[[], int | None], timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return value
