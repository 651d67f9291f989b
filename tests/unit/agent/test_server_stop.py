"""The agent's API server stops without waiting for its monitor subscribers: a client that keeps
a monitor stream open on a quiet datapath (``ciliary monitor``, a PolicyTest run's tap) must not
hold a stopping agent (aiohttp's clean-up waits up to 60 s for running handlers; a lab's agent
was SIGKILLed after its 5 s instead, on every ``lab down`` of a policy lab)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from ciliary.agent.server import APIServer
from ciliary.core.models import API_PREFIX, MonitorEvent


class _Monitor:
    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue[MonitorEvent]] = set()
        self.ever = 0

    def subscribe(self) -> asyncio.Queue[MonitorEvent]:
        q: asyncio.Queue[MonitorEvent] = asyncio.Queue()
        self.subscribers.add(q)
        self.ever += 1
        return q

    def unsubscribe(self, q: asyncio.Queue[MonitorEvent]) -> None:
        self.subscribers.discard(q)


def test_stop_ends_a_quiet_monitor_stream_at_once(tmp_path: Path) -> None:
    async def body() -> tuple[float, bytes]:
        monitor = _Monitor()
        server = APIServer(SimpleNamespace(monitor=monitor), tmp_path / "agent.sock")  # type: ignore[arg-type]
        await server.start()
        connector = aiohttp.UnixConnector(path=str(tmp_path / "agent.sock"))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"http://agent{API_PREFIX}/monitor") as resp,
        ):
            assert resp.status == 200
            for _ in range(500):
                if monitor.subscribers:
                    break
                await asyncio.sleep(0.01)
            assert monitor.ever == 1 and len(monitor.subscribers) == 1
            started = time.monotonic()
            await asyncio.wait_for(server.stop(), timeout=10)
            took = time.monotonic() - started
            rest = await asyncio.wait_for(resp.read(), timeout=5)
        assert monitor.subscribers == set(), "the stream's subscription is gone"
        return took, rest

    took, rest = asyncio.run(body())
    assert took < 3.0, f"stop waited {took:.1f}s for the monitor subscriber"
    assert rest == b"", "no event was sent: the stream just ends"
