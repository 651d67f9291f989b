"""The work queue and reconcile loop every controller runs, and creation/deletion expectations.

client-go's workqueue contract: a key is queued at most once however often it is added, and is
never handed to two workers at a time; a key added while being processed is processed again
afterwards. A reconcile sees the world through informers (a cache that may lag the API), so:

* a reconcile that failed is retried with per-key back-off (5 ms doubling to 30 s), a 409
  Conflict (the cache was stale) quickly;
* :class:`Expectations` are kube-controller-manager's ``ControllerExpectations``: a controller
  that has just asked for N pods to be created (or deleted) does not act on the pod count again
  until its informer has seen those N (or 5 minutes pass), or it would create them twice.

Informer handlers only queue keys (they run on the informer's delivery path and must not block);
the two every controller needs are :meth:`Controller.enqueue_objects` (its own kind) and
:meth:`Controller.enqueue_owners` (the objects it controls: pods, ReplicaSets).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from ciliary.controllers.informers import PODS
from ciliary.controllers.objects import controller_key
from ciliary.kube.client import ApiError, KubeClient, KubeObject, object_key
from ciliary.kube.informer import HandlerFuncs

log = logging.getLogger(__name__)

EXPECTATIONS_TIMEOUT = 300.0
MAX_RETRY_DELAY = 30.0


class WorkQueue:
    def __init__(self) -> None:
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._ready = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, key: str) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._ready.set()

    def add_after(self, key: str, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds (the earliest of several such requests wins)."""
        timer = self._timers.get(key)
        when = asyncio.get_running_loop().time() + delay
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> str:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._ready.set()

    def __len__(self) -> int:
        return len(self._queue)


@dataclass
class _Expected:
    adds: int
    deletes: int
    deadline: float


class Expectations:
    """Per controller key: how many creations/deletions are still to be observed."""

    def __init__(self) -> None:
        self._by_key: dict[str, _Expected] = {}

    def expect(self, key: str, adds: int = 0, deletes: int = 0) -> None:
        deadline = time.monotonic() + EXPECTATIONS_TIMEOUT
        self._by_key[key] = _Expected(adds, deletes, deadline)

    def created(self, key: str) -> None:
        """A pod of ``key`` was seen created (or its creation failed)."""
        e = self._by_key.get(key)
        if e is not None and e.adds > 0:
            e.adds -= 1

    def deleted(self, key: str) -> None:
        """A pod of ``key`` was seen gone (or its deletion failed)."""
        e = self._by_key.get(key)
        if e is not None and e.deletes > 0:
            e.deletes -= 1

    def satisfied(self, key: str) -> bool:
        e = self._by_key.get(key)
        if e is None:
            return True
        return (e.adds <= 0 and e.deletes <= 0) or time.monotonic() > e.deadline

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)


class PodControl:
    """Creates and deletes a controller's pods, each counted in its expectations (upstream's
    ``RealPodControl`` as the ReplicaSet, DaemonSet and StatefulSet controllers use it): a
    request that failed is counted as observed at once, since no event will ever come for it."""

    def __init__(self, kube: KubeClient, expectations: Expectations) -> None:
        self.kube = kube
        self.expectations = expectations

    async def create(self, key: str, pod: KubeObject, *, exists_ok: bool = False) -> None:
        """Create ``pod`` for controller ``key``; ``exists_ok``: a 409 (a pod of that fixed name
        the cache has not seen yet) is no error."""
        try:
            await self.kube.create(PODS, pod, pod["metadata"]["namespace"])
        except ApiError as err:
            self.expectations.created(key)
            if not (exists_ok and err.status == 409):
                raise
        except BaseException:
            self.expectations.created(key)
            raise

    async def delete(self, key: str, pod: KubeObject) -> None:
        """Delete ``pod`` (this object only: uid precondition); one already gone is no error."""
        m = pod["metadata"]
        try:
            await self.kube.delete(PODS, m["name"], m["namespace"], uid=m.get("uid"))
        except ApiError as err:
            self.expectations.deleted(key)
            if not err.not_found:
                raise


class Controller:
    """A reconcile loop over a :class:`WorkQueue`; subclasses implement :meth:`reconcile`."""

    name = "controller"

    def __init__(self) -> None:
        self.queue = WorkQueue()
        self._failures: dict[str, int] = {}

    async def reconcile(self, key: str) -> float | None:
        """Bring ``key``'s object to its desired state; a number asks to be called again after
        that many seconds (something time-based, such as minReadySeconds, is pending)."""
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                again = await self.reconcile(key)
            except ApiError as err:
                self._retry(key, err, quick=err.status == 409)
            except Exception as err:
                self._retry(key, err, quick=False)
            else:
                self._failures.pop(key, None)
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                self.queue.done(key)

    def enqueue_objects(self) -> HandlerFuncs:
        """A handler queueing the key of every object added, changed or deleted (for the kind
        the controller reconciles, whose keys are its queue's)."""

        def enqueue(obj: KubeObject) -> None:
            self.queue.add(object_key(obj))

        return HandlerFuncs(add=enqueue, update=lambda _old, new: enqueue(new), delete=enqueue)

    def enqueue_owners(self, kind: str, expectations: Expectations | None = None) -> HandlerFuncs:
        """A handler queueing the controller (an owner of ``kind``) of every dependent added,
        changed (the old owner and the new one) or deleted; additions and deletions are counted
        as observed in ``expectations`` (upstream's ``addPod``/``updatePod``/``deletePod``)."""

        def added(obj: KubeObject) -> None:
            if key := controller_key(obj, kind):
                if expectations is not None:
                    expectations.created(key)
                self.queue.add(key)

        def updated(old: KubeObject, new: KubeObject) -> None:
            for obj in (old, new):
                if key := controller_key(obj, kind):
                    self.queue.add(key)

        def deleted(obj: KubeObject) -> None:
            if key := controller_key(obj, kind):
                if expectations is not None:
                    expectations.deleted(key)
                self.queue.add(key)

        return HandlerFuncs(add=added, update=updated, delete=deleted)

    def _retry(self, key: str, err: Exception, *, quick: bool) -> None:
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        delay = 0.005 if quick and n < 5 else min(0.005 * 2**n, MAX_RETRY_DELAY)
        level = logging.DEBUG if quick else logging.WARNING
        log.log(level, "%s: %s failed (%s); retry in %.3fs", self.name, key, err, delay)
        self.queue.add_after(key, delay)
