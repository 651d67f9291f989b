"""One worker that writes the agent's state into the API server, latest wanted state per key.

The agent's own writes to the cluster (a CiliumEndpoint per endpoint, its node's entry in each
policy's status) follow state that changes faster than an API round trip and must survive the
API server being away. So callers only say what they want (:meth:`KeyedWriter.want`, never
blocking, never failing) and one task writes it: a key's newer wish replaces one not yet written
(intermediate states are skipped, only the last counts), keys are written in the order they were
first wanted, and a write the API server refuses with an :class:`ApiError` is retried after a
back-off unless a newer wish for that key arrived meanwhile. Other exceptions are bugs: logged,
and the key is dropped (a retry would fail the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from ciliary.kube.client import ApiError
from ciliary.kube.informer import Backoff

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeyedWriter(Generic[K, V]):
    """``write(key, value)`` for the latest ``value`` wanted per ``key``, one at a time."""

    def __init__(
        self,
        name: str,
        write: Callable[[K, V], Awaitable[None]],
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._wanted: dict[K, V] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        """Writes that succeeded (tests)."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def want(self, key: K, value: V) -> None:
        self._wanted[key] = value
        self._idle.clear()
        self._wake.set()

    def forget(self, key: K) -> None:
        """Drop a wish not yet written (its object went away)."""
        self._wanted.pop(key, None)

    def pending(self, key: K) -> V | None:
        return self._wanted.get(key)

    async def flushed(self, timeout: float) -> bool:
        """Until every wanted state is written (tests, shutdown)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._wanted:
                key = next(iter(self._wanted))
                value = self._wanted.pop(key)
                try:
                    await self._write(key, value)
                    self.writes += 1
                    self._backoff.reset()
                except ApiError as err:
                    log.warning("%s %s: %s (retrying)", self.name, key, err)
                    self._wanted.setdefault(key, value)  # a newer wish wins over the retry
                    await asyncio.sleep(self._backoff.delay())
                except Exception:
                    log.exception("%s %s: write failed", self.name, key)
            self._idle.set()
