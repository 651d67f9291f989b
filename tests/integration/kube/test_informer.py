"""Informers against a real API server + etcd: handler calls in order; an API server killed -9
mid-watch with writes while it is down (the informer converges with exactly the missed
changes); compaction → 410 → relist delivers the difference; selectors on nodeName and labels;
paged lists."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from ciliary.apiserver.etcd import EtcdClient
from ciliary.apiserver.storage import Storage
from ciliary.apiserver.strategy import prepare_create
from ciliary.kube.client import ApiError, KubeClient
from ciliary.kube.informer import Backoff, Informer
from ciliary.lab.controlplane import ControlPlane, restart_apiserver, restart_etcd_member
from tests.integration.kube.helpers import NAMESPACES, PODS, Recorder, eventually, pod, run

pytestmark = pytest.mark.timeout(180)


def informer(kube: KubeClient, rec: Recorder, **kwargs: object) -> Informer:
    inf = Informer(kube, PODS, namespace="t", backoff=Backoff(0.05, 1.0), **kwargs)  # type: ignore[arg-type]
    inf.add_handler(rec)
    return inf


def test_add_update_delete_in_order(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        await kube.create(PODS, pod("p0", app="a"), "t")
        rec = Recorder()
        inf = informer(kube, rec)
        inf.start()
        try:
            await inf.wait_synced(10)
            assert rec.calls == [("add", "p0")]
            assert inf.synced.is_set() and inf.store.get("t/p0") is not None
            await kube.create(PODS, pod("p1", app="a"), "t")
            await kube.patch(PODS, "p1", {"metadata": {"labels": {"app": "b"}}}, "t")
            await kube.delete(PODS, "p1", "t")
            await kube.delete(PODS, "p0", "t")
            await eventually(lambda: len(rec.calls) == 5, what="5 calls")
            assert rec.calls == [
                ("add", "p0"),
                ("add", "p1"),
                ("update", "p1"),
                ("delete", "p1"),
                ("delete", "p0"),
            ]
            assert rec.objects[2]["metadata"]["labels"] == {"app": "b"}
            assert len(inf.store) == 0
            # bookmarks (every second here) move the store's resourceVersion on
            rv = inf.store.resource_version
            await kube.create(NAMESPACES, {"metadata": {"name": "u"}})  # not a pod: no event
            assert await inf.wait_for_resource_version(rv + 1, 10)
            assert len(rec.calls) == 5 and inf.lists == 1
        finally:
            await inf.stop()

    run(control_plane, body)


async def _write_behind_the_apiserver(cp: ControlPlane, *names: str) -> Storage:
    host, port = cp.etcd.host_port
    etcd = EtcdClient(f"{host}:{port}")
    storage = Storage(etcd)
    for name in names:
        await storage.create(PODS, prepare_create(PODS, pod(name), "t"))
    return storage


def test_apiserver_killed_mid_watch_converges_exactly(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        for name in ("a", "b", "c"):
            await kube.create(PODS, pod(name), "t")
        rec = Recorder()
        inf = informer(kube, rec)
        inf.start()
        try:
            await inf.wait_synced(10)
            await kube.create(PODS, pod("k1"), "t")
            await eventually(lambda: len(rec.calls) == 4, what="k1")
            os.kill(control_plane.apiserver_pid, signal.SIGKILL)
            await eventually(lambda: inf.last_error is not None, what="the watch to break")
            # while the API server is down, another writer of the same etcd goes on
            storage = await _write_behind_the_apiserver(control_plane, "d1", "d2")
            try:

                def relabel(obj: dict[str, object]) -> dict[str, object]:
                    meta = dict(obj["metadata"])  # type: ignore[call-overload]
                    meta["labels"] = {"changed": "yes"}
                    return {**obj, "metadata": meta}

                await storage.update(PODS, "t", "a", relabel)
                await storage.delete(PODS, "t", "b", None)
            finally:
                await storage.etcd.close()
            del rec.calls[:]
            await asyncio.to_thread(restart_apiserver, control_plane)
            await kube.create(PODS, pod("k2"), "t")
            await eventually(lambda: len(rec.calls) >= 5, what="the missed changes")
            await asyncio.sleep(0.5)  # nothing more may come
            assert rec.calls == [
                ("add", "d1"),
                ("add", "d2"),
                ("update", "a"),
                ("delete", "b"),
                ("add", "k2"),
            ]
            assert sorted(inf.store.keys()) == ["t/a", "t/c", "t/d1", "t/d2", "t/k1", "t/k2"]
            assert inf.lists == 1  # a rewatch from the last resourceVersion, no relist
        finally:
            await inf.stop()

    run(control_plane, body)


def test_compaction_gone_relist_delivers_the_difference(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        for name in ("a", "b", "c", "same"):
            await kube.create(PODS, pod(name), "t")
        rec = Recorder()
        inf = informer(kube, rec)
        inf.start()
        try:
            await inf.wait_synced(10)
            old_uid = inf.store.get("t/c")["metadata"]["uid"]  # type: ignore[index]
            os.kill(control_plane.apiserver_pid, signal.SIGKILL)
            await eventually(lambda: inf.last_error is not None, what="the watch to break")
            storage = await _write_behind_the_apiserver(control_plane, "d")
            try:

                def relabel(obj: dict[str, object]) -> dict[str, object]:
                    meta = dict(obj["metadata"])  # type: ignore[call-overload]
                    meta["labels"] = {"changed": "yes"}
                    return {**obj, "metadata": meta}

                await storage.update(PODS, "t", "a", relabel)
                await storage.delete(PODS, "t", "b", None)
                await storage.delete(PODS, "t", "c", None)  # and a new c: another object
                await storage.create(PODS, prepare_create(PODS, pod("c"), "t"))
                await storage.etcd.compact(await storage.revision())
            finally:
                await storage.etcd.close()
            del rec.calls[:]
            await asyncio.to_thread(restart_apiserver, control_plane)
            await eventually(lambda: inf.lists == 2, what="a relist after 410")
            await kube.create(PODS, pod("after"), "t")
            await eventually(lambda: ("add", "after") in rec.calls, what="a later event")
            assert rec.calls == [
                ("delete", "b"),
                ("update", "a"),
                ("delete", "c"),
                ("add", "c"),
                ("add", "d"),
                ("add", "after"),
            ]
            assert inf.store.get("t/c")["metadata"]["uid"] != old_uid  # type: ignore[index]
            assert inf.store.get("t/a")["metadata"]["labels"] == {"changed": "yes"}  # type: ignore[index]
            assert isinstance(inf.last_error, ApiError)
        finally:
            await inf.stop()

    run(control_plane, body)


def test_field_selector_node_name_and_label_selector(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        await kube.create(PODS, pod("n1-a", "n1", app="web"), "t")
        await kube.create(PODS, pod("n2-a", "n2", app="web"), "t")
        await kube.create(PODS, pod("n1-b", "n1", app="db"), "t")
        mine, web = Recorder(), Recorder()
        on_node = Informer(kube, PODS, field_selector="spec.nodeName=n1", name="pods-n1")
        on_node.add_handler(mine)
        by_label = Informer(kube, PODS, label_selector="app=web", name="pods-web")
        by_label.add_handler(web)
        on_node.start()
        by_label.start()
        try:
            await on_node.wait_synced(10)
            await by_label.wait_synced(10)
            assert sorted(mine.calls) == [("add", "n1-a"), ("add", "n1-b")]
            assert sorted(web.calls) == [("add", "n1-a"), ("add", "n2-a")]
            await kube.create(PODS, pod("n2-b", "n2", app="db"), "t")
            await kube.create(PODS, pod("n1-c", "n1", app="db"), "t")
            await kube.patch(PODS, "n1-b", {"metadata": {"labels": {"app": "web"}}}, "t")
            await kube.delete(PODS, "n2-a", "t")
            await eventually(lambda: len(mine.calls) == 4, what="node events")
            await eventually(lambda: len(web.calls) == 4, what="label events")
            await asyncio.sleep(0.3)
            assert mine.calls[2:] == [("add", "n1-c"), ("update", "n1-b")]
            assert web.calls[2:] == [("add", "n1-b"), ("delete", "n2-a")]
            assert sorted(on_node.store.keys()) == ["t/n1-a", "t/n1-b", "t/n1-c"]
        finally:
            await on_node.stop()
            await by_label.stop()

    run(control_plane, body)


def test_paged_list(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        for i in range(25):
            await kube.create(PODS, pod(f"p{i:02d}"), "t")
        rec = Recorder()
        inf = informer(kube, rec, page_size=4)
        inf.start()
        try:
            await inf.wait_synced(10)
            assert [n for _, n in rec.calls] == [f"p{i:02d}" for i in range(25)]
            assert all(o["kind"] == "Pod" for o in inf.store.objects())
        finally:
            await inf.stop()

    run(control_plane, body)


def test_etcd_killed_mid_watch_then_converges(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        await kube.create(PODS, pod("e0"), "t")
        rec = Recorder()
        inf = informer(kube, rec)
        inf.start()
        try:
            await inf.wait_synced(10)
            os.kill(control_plane.etcd.pid, signal.SIGKILL)
            await eventually(
                lambda: inf.last_error is not None and inf.last_error.unavailable,
                what="the watch to fail with 503",
            )
            await asyncio.to_thread(restart_etcd_member, control_plane)
            await kube.create(PODS, pod("e1"), "t")
            await kube.delete(PODS, "e0", "t")
            await eventually(lambda: len(rec.calls) == 3, what="e1 and e0's deletion")
            await asyncio.sleep(0.3)
            assert rec.calls == [("add", "e0"), ("add", "e1"), ("delete", "e0")]
        finally:
            await inf.stop()

    run(control_plane, body)


def test_resync_redelivers_the_store(control_plane: ControlPlane) -> None:
    async def body(kube: KubeClient) -> None:
        await kube.create(PODS, pod("r0"), "t")
        rec = Recorder()
        inf = informer(kube, rec, resync_period=0.2)
        inf.start()
        try:
            await inf.wait_synced(10)
            await eventually(lambda: rec.calls.count(("update", "r0")) >= 2, what="resyncs")
            assert rec.calls[0] == ("add", "r0") and inf.lists == 1
        finally:
            await inf.stop()

    run(control_plane, body)
