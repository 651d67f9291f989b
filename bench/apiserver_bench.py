"""The lab's Kubernetes API server against the etcd it stores into, measured in the same run.

A Kubernetes API server is a layer over etcd: every create is one etcd transaction, every watch
one etcd watch. What the layer costs is therefore read as a ratio against etcd itself, driven
from the same process with the same concurrency and the same bytes:

- create rate: ``CLIENTS`` concurrent HTTPS clients (keep-alive, the lab's admin certificate)
  POST ConfigMaps to ``ciliary-apiserver``; etcd's own rate is ``CLIENTS`` concurrent aetcd
  ``put`` calls of values as long as the objects the API server stored (read back from etcd).
  Rounds alternate between the two; medians.
- watch fan-out: 1 and ``FANOUT`` watchers connected first (HTTP watch streams from the current
  resourceVersion; etcd watch streams over aetcd's stubs, one gRPC stream each, as the API
  server opens one per watch), then a writer creates ``WATCH_OBJECTS`` objects at the same
  concurrency; events delivered per second = watchers x objects / (first write → last event
  seen by the slowest watcher). Clients count lines or events, they do not decode objects.
- memory: the API server's RSS (``VmRSS``) idle after start, and with ``STORED`` ConfigMaps in
  etcd after one unpaginated list of all of them (its peak, ``VmHWM``, beside it).

Both servers, the clients and the bench share the machine's cores, so absolute numbers are this
machine's; the ratios are what carries. etcd and the API server run under a directory named
with the bench prefix, so ``common.sweep_leftovers`` stops them (by pid and start time) and
removes their data if a run was killed before its ``finally``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aetcd
import aiohttp
from aetcd import rpc

from bench.common import APISERVER_SUFFIX, cpu_seconds, median, tag
from ciliary.apiserver.storage import collection_prefix
from ciliary.k8s.resources import by_path
from ciliary.lab.controlplane import ControlPlane, start_control_plane, stop_control_plane

GROUP = "apiserver"
CLIENTS = 8
CREATES = 1500  # per round and side
ROUNDS = 3
WATCH_OBJECTS = 700  # per round and side
FANOUT = 20
STORED = 10_000
PAYLOAD = 512  # bytes of ConfigMap data per object
CONFIGMAPS = by_path("", "v1", "configmaps")
ETCD_SIDE = "etcd (aetcd)"
API_SIDE = "ciliary-apiserver"


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _configmap(name: str, payload: str) -> bytes:
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"bench": "apiserver"}},
        "data": {"payload": payload},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class Bench:
    """One control plane, one HTTPS connection pool and one aetcd client for a whole run."""

    def __init__(self, cp: ControlPlane, ctx: ssl.SSLContext) -> None:
        self.cp = cp
        self.ctx = ctx
        self.payload = "x" * PAYLOAD
        self.names = itertools.count()
        host, port = cp.etcd.host_port
        self.etcd = aetcd.Client(host, port)
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Bench:
        await self.etcd.connect()
        self.http = aiohttp.ClientSession(
            self.cp.url,
            connector=aiohttp.TCPConnector(ssl=self.ctx, limit=CLIENTS + FANOUT + 2),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        await self.etcd.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self.http is not None
        return self.http

    async def namespace(self, name: str) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        async with self.session.post(
            "/api/v1/namespaces", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"namespace {name}: {resp.status} {await resp.text()}")

    async def _parallel(self, count: int, one: Callable[[int], Awaitable[None]]) -> float:
        """``count`` calls of ``one`` by ``CLIENTS`` workers: seconds taken."""
        todo = iter(range(count))

        async def worker() -> None:
            for n in todo:
                await one(n)

        t0 = time.monotonic()
        async with asyncio.timeout(300):
            await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return time.monotonic() - t0

    async def api_creates(self, namespace: str, count: int) -> float:
        url = f"/api/v1/namespaces/{namespace}/configmaps"
        headers = {"Content-Type": "application/json"}

        async def one(_: int) -> None:
            body = _configmap(f"cm-{next(self.names)}", self.payload)
            async with self.session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 201:
                    raise RuntimeError(f"create: {resp.status}")

        return await self._parallel(count, one)

    async def stored_size(self, namespace: str, name: str) -> int:
        """Bytes etcd holds for the ConfigMap ``name`` the API server created."""
        got = await self.etcd.get(f"{collection_prefix(CONFIGMAPS, namespace)}{name}".encode())
        if got is None:
            raise RuntimeError(f"ConfigMap {namespace}/{name} is not in etcd")
        return len(got.value)

    async def etcd_puts(self, prefix: str, count: int, size: int) -> float:
        value = b"x" * size

        async def one(n: int) -> None:
            await self.etcd.put(f"{prefix}{n}".encode(), value)

        return await self._parallel(count, one)

    # ---- watch fan-out

    async def _api_watcher(
        self, namespace: str, rv: str, want: int, ready: asyncio.Event, done: list[float]
    ) -> None:
        url = f"/api/v1/namespaces/{namespace}/configmaps?watch=1&resourceVersion={rv}"
        async with self.session.get(url) as resp:
            if resp.status != 200:
                raise RuntimeError(f"watch: {resp.status}")
            ready.set()
            seen = 0
            async for chunk in resp.content.iter_any():
                seen += chunk.count(b"\n")  # one event per line; no bookmarks asked for
                if seen >= want:
                    done.append(time.monotonic())
                    return

    async def _etcd_watcher(
        self, prefix: str, want: int, ready: asyncio.Event, done: list[float]
    ) -> None:
        call = rpc.WatchStub(self.etcd.channel).Watch()
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        try:
            create = rpc.WatchCreateRequest(key=key, range_end=end)
            await call.write(rpc.WatchRequest(create_request=create))
            await call.read()  # "created"
            ready.set()
            seen = 0
            while seen < want:
                resp = await call.read()
                seen += len(resp.events)
            done.append(time.monotonic())
        finally:
            call.cancel()

    async def fanout(self, side: str, watchers: int, tag_: str) -> float:
        """Events per second delivered to ``watchers`` while ``WATCH_OBJECTS`` are written."""
        readies = [asyncio.Event() for _ in range(watchers)]
        done: list[float] = []
        if side == API_SIDE:
            namespace = f"watch-{tag_}"
            await self.namespace(namespace)
            async with self.session.get(f"/api/v1/namespaces/{namespace}/configmaps") as resp:
                rv = (await resp.json())["metadata"]["resourceVersion"]
            watches = [
                self._api_watcher(namespace, rv, WATCH_OBJECTS, ready, done) for ready in readies
            ]

            async def write() -> None:
                await self.api_creates(namespace, WATCH_OBJECTS)
        else:
            prefix = f"/bench/watch/{tag_}/"
            watches = [self._etcd_watcher(prefix, WATCH_OBJECTS, r, done) for r in readies]
            size = await self.stored_size("bench", "cm-0")

            async def write() -> None:
                await self.etcd_puts(prefix, WATCH_OBJECTS, size)

        tasks = [asyncio.ensure_future(w) for w in watches]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(r.wait() for r in readies))
            t0 = time.monotonic()
            await write()
            async with asyncio.timeout(120):
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if len(done) != watchers:
            raise RuntimeError(f"{len(done)} of {watchers} watchers saw every event")
        return watchers * WATCH_OBJECTS / (max(done) - t0)

    # ---- memory

    async def fill_and_list(self, stored: int) -> int:
        """Create ConfigMaps until ``stored`` exist (all namespaces), then list them all once."""
        async with self.session.get("/api/v1/configmaps?limit=1") as resp:
            await resp.read()
        count = await self._count()
        if count < stored:
            await self.namespace("fill")
            await self.api_creates("fill", stored - count)
        return await self._count()

    async def _count(self) -> int:
        async with self.session.get("/api/v1/configmaps") as resp:
            if resp.status != 200:
                raise RuntimeError(f"list: {resp.status}")
            return len((await resp.json())["items"])


async def _measure(
    cp: ControlPlane, rounds: int, creates: int, stored: int, log: Callable[[str], None]
) -> dict[str, Any]:
    pid, etcd_pid = cp.apiserver_pid, cp.etcd.pid
    await asyncio.sleep(2)  # settle after start
    idle = []
    for _ in range(3):
        idle.append(_rss_kib(pid) / 1024)
        await asyncio.sleep(1)
    rate: dict[str, list[float]] = {API_SIDE: [], ETCD_SIDE: []}
    cpu: dict[str, list[float]] = {API_SIDE: [], ETCD_SIDE: []}
    fan: dict[int, dict[str, list[float]]] = {n: {API_SIDE: [], ETCD_SIDE: []} for n in (1, FANOUT)}
    async with Bench(cp, cp.ssl_context()) as b:
        await b.namespace("bench")
        await b.api_creates("bench", CLIENTS * 4)  # warm-up: connections, first code paths
        size = await b.stored_size("bench", "cm-0")
        log(f"apiserver: one ConfigMap is {size} bytes in etcd")
        await b.etcd_puts("/bench/warmup/", CLIENTS * 4, size)
        for r in range(rounds):
            c0, e0 = cpu_seconds(pid), cpu_seconds(etcd_pid)
            secs = await b.api_creates("bench", creates)
            c1, e1 = cpu_seconds(pid), cpu_seconds(etcd_pid)
            rate[API_SIDE].append(creates / secs)
            cpu[API_SIDE].append(((c1 - c0) + (e1 - e0)) * 1e3 / creates)
            secs = await b.etcd_puts(f"/bench/put/{r}/", creates, size)
            rate[ETCD_SIDE].append(creates / secs)
            cpu[ETCD_SIDE].append((cpu_seconds(etcd_pid) - e1) * 1e3 / creates)
            log(
                f"apiserver: round {r + 1}: {rate[API_SIDE][-1]:.0f} creates/s,"
                f" etcd {rate[ETCD_SIDE][-1]:.0f} puts/s"
            )
        for r in range(rounds):
            for watchers in (1, FANOUT):
                for side in (ETCD_SIDE, API_SIDE):
                    fan[watchers][side].append(await b.fanout(side, watchers, f"{r}-{watchers}"))
                log(
                    f"apiserver: round {r + 1}, {watchers} watchers: "
                    f"{fan[watchers][API_SIDE][-1]:.0f} events/s,"
                    f" etcd {fan[watchers][ETCD_SIDE][-1]:.0f}"
                )
        count = await b.fill_and_list(stored)
    await asyncio.sleep(2)
    full = []
    for _ in range(3):
        full.append(_rss_kib(pid) / 1024)
        await asyncio.sleep(1)
    return {
        "size": size,
        "rate": rate,
        "cpu": cpu,
        "fan": fan,
        "rss": {"idle": idle, f"{count:,} ConfigMaps stored, listed once": full},
        "peak": _rss_kib(pid, "VmHWM") / 1024,
        "count": count,
    }


def run(
    *,
    rounds: int = ROUNDS,
    creates: int = CREATES,
    stored: int = STORED,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    lab_dir = Path(tempfile.gettempdir()) / f"{tag()}{APISERVER_SUFFIX}"
    cp: ControlPlane | None = None
    try:
        cp = start_control_plane(lab_dir, cluster="bench")
        m = asyncio.run(_measure(cp, rounds, creates, stored, log))
    finally:
        if cp is not None:
            stop_control_plane(cp)
        shutil.rmtree(lab_dir, ignore_errors=True)  # certificates, logs, etcd data (64 MB WAL)

    def result(title: str, unit: str, per: dict[str, list[float]], base: str) -> dict[str, Any]:
        return {
            "benchmark": title,
            "unit": unit,
            "baseline": base,
            "values": {k: median(v) for k, v in per.items()},
            "samples": per,
            "group": GROUP,
        }

    order = [ETCD_SIDE, API_SIDE]

    def ordered(per: dict[str, list[float]]) -> dict[str, list[float]]:
        return {k: per[k] for k in order}

    rss = m["rss"]
    return [
        result(
            f"create rate, {CLIENTS} concurrent clients, ConfigMaps of {m['size']} B in etcd"
            f" (etcd: put of as many bytes), median of {rounds} x {creates:,}",
            "objects/s",
            ordered(m["rate"]),
            ETCD_SIDE,
        ),
        result(
            f"server CPU time per object (etcd put: etcd's; create: API server's + etcd's),"
            f" median of {rounds} rounds",
            "ms",
            ordered(m["cpu"]),
            ETCD_SIDE,
        ),
        *(
            result(
                f"watch events/s delivered to {n} watcher{'s' if n > 1 else ''} while"
                f" {WATCH_OBJECTS} objects are written, median of {rounds} rounds",
                "events/s",
                ordered(m["fan"][n]),
                ETCD_SIDE,
            )
            for n in (1, FANOUT)
        ),
        {
            **result(
                "API server memory (RSS), median of 3 samples",
                "MiB",
                rss,
                "idle",
            ),
            "values": {
                **{k: median(v) for k, v in rss.items()},
                "peak (VmHWM) after the list": m["peak"],
            },
        },
    ]
