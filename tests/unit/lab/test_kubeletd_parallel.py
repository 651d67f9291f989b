"""The kubelet role syncs pods concurrently (``--parallel`` workers), never two syncs of one pod
at once (an event during a sync syncs it again after), and concurrent starts each write only
their own pod's entry of the lab record, so none loses another's (the real ``manager`` start with
the netns, CNI, agent and process steps replaced by slow fakes)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ciliary.lab import kubeletd, manager
from ciliary.lab.state import LabRecord, NodeRecord, PodRecord

LAB = "kpar"


def api_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "command": ["pause"]}]},
        "status": {"phase": "Pending"},
    }


def test_pods_sync_concurrently_never_the_same_pod_twice() -> None:
    kl = kubeletd.Kubelet(LAB, kube=None, parallel=4)  # type: ignore[arg-type]
    lock = threading.Lock()
    running: set[str] = set()
    peak = [0]
    runs: list[str] = []
    overlaps: list[str] = []

    def sync(key: str, _obj: object) -> None:
        with lock:
            if key in running:
                overlaps.append(key)
            running.add(key)
            peak[0] = max(peak[0], len(running))
            runs.append(key)
        time.sleep(0.2)
        with lock:
            running.discard(key)

    kl.sync = sync  # type: ignore[method-assign]

    async def scenario() -> None:
        kl.start_workers()
        for i in range(8):
            kl.enqueue(f"default/p{i}")
        await asyncio.sleep(0.05)
        kl.enqueue("default/p0")  # an event while p0's sync runs: p0 again after it, not during
        kl.enqueue("default/p0")
        while kl.queued or kl.in_flight:
            await asyncio.sleep(0.01)
        for task in kl.tasks:
            task.cancel()
        await asyncio.gather(*kl.tasks, return_exceptions=True)
        kl.executor.shutdown()

    started = time.monotonic()
    asyncio.run(scenario())
    elapsed = time.monotonic() - started
    assert overlaps == []
    assert peak[0] == 4  # bounded by --parallel, and reached
    assert sorted(runs) == sorted([f"default/p{i}" for i in range(8)] + ["default/p0"])
    assert elapsed < 8 * 0.2  # one at a time would take 1.6 s (+ p0 again)


def test_parallel_must_be_positive() -> None:
    with pytest.raises(ValueError, match="--parallel must be at least 1"):
        kubeletd.Kubelet(LAB, kube=None, parallel=0)  # type: ignore[arg-type]


def test_concurrent_starts_keep_every_pod_in_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager, "LAB_ROOT", tmp_path)
    node = NodeRecord(name="n1", netns="ns-n1", state_dir="/x", pin_dir="/x", socket="/x/sock")
    rec = LabRecord(name=LAB, file=None, created_at=0, nodes=[node])
    rec.pods.append(
        PodRecord(name="own", namespace="default", node="n1", netns="p", container_id="c")
    )
    (tmp_path / LAB).mkdir()
    (tmp_path / LAB / "state.json").write_text(rec.model_dump_json())

    made: dict[str, int] = {}

    class Cni:
        def add(self, container_id: str, *_a: Any, **_k: Any) -> None:
            made[container_id] = len(made) + 1
            time.sleep(0.2)  # slow, as a real CNI ADD: the starts overlap

    class Agent:
        def __init__(self, _sock: Path) -> None: ...
        def __enter__(self) -> Agent:
            return self

        def __exit__(self, *_exc: object) -> None: ...
        def endpoints(self) -> list[SimpleNamespace]:
            return [
                SimpleNamespace(container_id=c, id=i, ipv4=f"10.0.0.{i}/32", ipv6=None)
                for c, i in made.items()
            ]

    def start_container(_rec: object, _pod: object, _prec: object, crec: Any, _s: object) -> None:
        time.sleep(0.05)
        crec.pid, crec.pid_start_time = 1, 1

    monkeypatch.setattr(manager.netns, "create", lambda name: Path("/run/netns") / name)
    monkeypatch.setattr(manager, "_cni", lambda _rec, _nrec: Cni())
    monkeypatch.setattr(manager, "AgentClient", Agent)
    monkeypatch.setattr(manager, "start_container", start_container)
    monkeypatch.setattr(manager, "_check_started", lambda _rec, _prec: None)
    monkeypatch.setattr(manager.podlogs, "pod_log_dir", lambda *a: tmp_path / "logs")

    kl = kubeletd.Kubelet(LAB, kube=None, parallel=6)  # type: ignore[arg-type]
    names = [f"web-{i}" for i in range(6)]
    statuses: list[Any] = [None] * len(names)

    def start(i: int) -> None:
        statuses[i] = kl.sync(f"default/{names[i]}", api_pod(names[i]))

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert all(s is not None and s["phase"] == "Running" for s in statuses), statuses
    pods = manager.record(LAB).pods
    assert sorted(p.key for p in pods if p.kubelet) == sorted(f"default/{n}" for n in names)
    assert all(p.ipv4 and p.containers[0].pid == 1 for p in pods if p.kubelet)
    assert [p.key for p in pods if not p.kubelet] == ["default/own"]  # not the kubelet's: kept

    # and concurrent stops drop only their own pod
    rec_now = manager.record(LAB)
    gone = [p for p in rec_now.pods if p.key in ("default/web-0", "default/web-1")]
    monkeypatch.setattr(manager.netns, "remove", lambda _name: None)
    stops = [threading.Thread(target=manager.remove_kubelet_pod, args=(rec_now, p)) for p in gone]
    for t in stops:
        t.start()
    for t in stops:
        t.join()
    left = sorted(p.key for p in manager.record(LAB).pods if p.kubelet)
    assert left == sorted(f"default/{n}" for n in names[2:])
