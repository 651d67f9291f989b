"""Envoy's listening sockets in the datapath's socket map, for the sk_lookup program.

A redirected connection's SYN that meets Envoy's TIME_WAIT socket of the same tuple (Envoy
closed the earlier connection first; the client reuses its port) is resolved by the kernel's
own TIME_WAIT handling, whose listener lookup runs ``bpf_sk_lookup.c``: that program can only
select a socket it finds in a socket map (``ciliary_proxy_socks``, :mod:`ciliary.datapath.
sklookup` says why the case exists). The sockets are Envoy's, in Envoy's process: this module
takes them from there with ``pidfd_getfd`` (a duplicate of Envoy's descriptor; we are root in
the node's network namespace, Envoy's) and puts them in the map, which then holds them; the
duplicate is closed. Which descriptors: the LISTEN sockets on the configured proxy ports in
``/proc/<envoy>/net/tcp{,6}`` whose inodes Envoy's ``/proc/<pid>/fd`` names.

When: Envoy binds a listener some time after its listener file changed (and after each start),
and no event says so; :meth:`ProxySockets.changed` (after every configuration write and every
start) runs a reconciliation that retries until every configured (port, family) has Envoy's
current socket in the map (short steps first, then up to ``RETRY_MAX_S``). Envoy's exit is
watched through a pidfd (readable when the process ends): the kernel drops its closed sockets
from the map, and the reconciliation waits for the restarted process's. Missing entries are
not a leak of policy: the program then names no listener (fail closed: the client's SYN gets
the TIME_WAIT socket's answer and retries), never another socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Final

from ciliary.datapath.libbpf import BPFError
from ciliary.datapath.linux.procsockets import Listener, listeners, socket_cookie, take_fd
from ciliary.datapath.sklookup import ProxySocketMap

log = logging.getLogger(__name__)

RETRY_FIRST_S: Final = 0.05
RETRY_MAX_S: Final = 1.0


class ProxySockets:
    """The one writer of ``ciliary_proxy_socks``: Envoy's listeners of the configured ports."""

    def __init__(
        self,
        socks: ProxySocketMap,
        pid: Callable[[], int | None],
        ports: Callable[[], set[int]],
        *,
        ipv6: bool = False,
    ) -> None:
        self.socks = socks
        self._pid = pid
        self._ports = ports
        self._families = (socket.AF_INET, socket.AF_INET6) if ipv6 else (socket.AF_INET,)
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._watched: tuple[int, int] | None = None  # (pid, pidfd) whose exit is watched
        self.updates = 0
        """Sockets put in the map so far."""

    def sync(self) -> bool:
        """Put Envoy's current listener of each configured (port, family) in the map; True when
        every one has it."""
        pid, ports = self._pid(), self._ports()
        if not ports:
            return True
        if pid is None:
            return False
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            held = self.socks.cookies()
            newest: dict[tuple[int, socket.AddressFamily], Listener] = {}
            for lst in listeners(pid, ports):  # sorted by inode: the newest socket wins
                newest[lst.port, lst.family] = lst
            for (port, family), lst in newest.items():
                try:
                    fd = take_fd(pidfd, lst.fd)
                except OSError as err:  # closed meanwhile: the next round sees its successor
                    log.debug("proxy socket %d/%s: %s", port, family.name, err)
                    continue
                try:
                    if held.get((port, int(family))) != socket_cookie(fd):
                        self.socks.put(port, family, fd)
                        self.updates += 1
                        log.info("proxy listener %s:%d of envoy (pid %d) in the socket map",
                                 family.name, port, pid)  # fmt: skip
                finally:
                    os.close(fd)
            return all((p, f) in newest for p in ports for f in self._families)
        finally:
            os.close(pidfd)

    def changed(self) -> None:
        """Envoy's configuration was written or Envoy (re)started: reconcile until complete.
        Called on the agent's loop."""
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._reconcile(), name="proxy-sockets"
            )

    async def _reconcile(self) -> None:
        delay = RETRY_FIRST_S
        while self._dirty:
            try:
                done = await asyncio.to_thread(self.sync)
            except (OSError, BPFError):
                log.exception("proxy sockets: not synced")
                done = False
            if done:
                self._dirty = False
                self._watch(self._pid())
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _watch(self, pid: int | None) -> None:
        """Reconcile again when the process ``pid`` ends (its pidfd becomes readable)."""
        if pid is None or (self._watched is not None and self._watched[0] == pid):
            return
        self._unwatch()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.changed()
            return
        self._watched = (pid, pidfd)
        asyncio.get_running_loop().add_reader(pidfd, self._exited, pid)

    def _exited(self, pid: int) -> None:
        log.info("envoy (pid %d) exited: its listeners left the socket map", pid)
        self._unwatch()
        self.changed()

    def _unwatch(self) -> None:
        if self._watched is not None:
            _pid, pidfd = self._watched
            self._watched = None
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)

    async def stop(self) -> None:
        self._dirty = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._unwatch()
