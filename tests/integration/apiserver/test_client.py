"""kubernetes_asyncio (the client the agents will use) against etcd + ciliary-apiserver over
TLS with the lab's client certificate: list + watch semantics, bookmarks, 410 after
compaction, optimistic concurrency, many concurrent writers seen exactly once by every watcher,
and an API server killed mid-watch (the stream ends; a rewatch from the last resourceVersion
after the restart loses and repeats nothing)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from ciliary.apiserver.etcd import EtcdClient
from ciliary.apiserver.storage import Storage
from ciliary.apiserver.strategy import prepare_create
from ciliary.k8s.resources import by_path
from ciliary.lab.controlplane import ControlPlane, restart_apiserver, restart_etcd_member

pytestmark = pytest.mark.timeout(180)

PODS = by_path("", "v1", "pods")


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


async def api_client(cp: ControlPlane) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(cp.kubeconfig), client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


_OPEN: list[watch.Watch] = []


async def settle() -> None:
    """Lets closed TLS connections finish closing before the loop ends (aiohttp closes an SSL
    transport's socket a few loop iterations after the session; a loop that ends first leaves
    the socket to the garbage collector, which warns)."""
    await asyncio.sleep(0.25)


def open_watch(func: Any, *args: Any, **kwargs: Any) -> watch.Watch:
    """A watch stream, closed (with its own ApiClient) when the test's loop ends."""
    w = watch.Watch()
    _OPEN.append(w)
    return w.stream(func, *args, **kwargs)


def run(cp: ControlPlane, body: Callable[[client.CoreV1Api], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        api = await api_client(cp)
        try:
            v1 = client.CoreV1Api(api)
            await v1.create_namespace({"metadata": {"name": "t"}})
            return await body(v1)
        finally:
            while _OPEN:
                await _OPEN.pop().close()
            await api.close()
            await settle()

    return asyncio.run(main())


async def collect(
    stream: watch.Watch, n: int, *, types: tuple[str, ...] = ("ADDED", "MODIFIED", "DELETED")
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for event in stream:
        if event["type"] in types:
            out.append(event)
        if len(out) >= n:
            break
    return out


def test_list_then_watch_in_order_with_bookmarks(control_plane: ControlPlane) -> None:
    async def body(v1: client.CoreV1Api) -> None:
        await v1.create_namespaced_pod("t", pod("before"))
        listed = await v1.list_namespaced_pod("t")
        assert [p.metadata.name for p in listed.items] == ["before"]
        rv = listed.metadata.resource_version
        stream = open_watch(
            v1.list_namespaced_pod,
            "t",
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=30,
        )
        events_task = asyncio.ensure_future(collect(stream, 4))
        await asyncio.sleep(0.3)
        await v1.create_namespaced_pod("t", pod("p1", app="a"))
        await v1.patch_namespaced_pod("p1", "t", {"metadata": {"labels": {"app": "b"}}})
        await v1.delete_namespaced_pod("p1", "t")
        await v1.delete_namespaced_pod("before", "t")
        events = await asyncio.wait_for(events_task, 20)
        assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "p1"),
            ("MODIFIED", "p1"),
            ("DELETED", "p1"),
            ("DELETED", "before"),
        ]
        rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
        assert rvs == sorted(set(rvs)) and rvs[0] > int(rv)
        assert events[1]["raw_object"]["metadata"]["labels"] == {"app": "b"}
        # a quiet watch still gets bookmarks (interval 1 s here), at the store's revision
        bookmarks = await asyncio.wait_for(collect(stream, 1, types=("BOOKMARK",)), 10)
        assert int(bookmarks[0]["raw_object"]["metadata"]["resourceVersion"]) >= rvs[-1]
        stream.stop()

    run(control_plane, body)


def test_label_selector_watch_sees_objects_leave(control_plane: ControlPlane) -> None:
    async def body(v1: client.CoreV1Api) -> None:
        rv = (await v1.list_namespaced_pod("t", label_selector="app=a")).metadata.resource_version
        stream = open_watch(
            v1.list_namespaced_pod,
            "t",
            label_selector="app=a",
            resource_version=rv,
            timeout_seconds=30,
        )
        task = asyncio.ensure_future(collect(stream, 3))
        await asyncio.sleep(0.3)
        await v1.create_namespaced_pod("t", pod("other", app="z"))
        await v1.create_namespaced_pod("t", pod("s1", app="z"))
        await v1.patch_namespaced_pod("s1", "t", {"metadata": {"labels": {"app": "a"}}})
        await v1.patch_namespaced_pod("s1", "t", {"metadata": {"labels": {"x": "1"}}})
        await v1.patch_namespaced_pod("s1", "t", {"metadata": {"labels": {"app": "z"}}})
        events = await asyncio.wait_for(task, 20)
        assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "s1"),
            ("MODIFIED", "s1"),
            ("DELETED", "s1"),
        ]

    run(control_plane, body)


def test_watch_from_compacted_revision_is_410(control_plane: ControlPlane) -> None:
    async def body(v1: client.CoreV1Api) -> None:
        old = (await v1.list_namespaced_pod("t")).metadata.resource_version
        for i in range(3):
            await v1.create_namespaced_pod("t", pod(f"c{i}"))
        host, port = control_plane.etcd.host_port
        etcd = EtcdClient(f"{host}:{port}")
        try:
            await etcd.compact(await etcd.revision())
        finally:
            await etcd.close()
        stream = open_watch(v1.list_namespaced_pod, "t", resource_version=old, timeout_seconds=5)
        with pytest.raises(ApiException) as exc:
            await collect(stream, 1)
        assert exc.value.status == 410
        # the informer's answer to 410: relist, and watch from the list's revision
        relisted = await v1.list_namespaced_pod("t")
        assert sorted(p.metadata.name for p in relisted.items) == ["c0", "c1", "c2"]
        stream = open_watch(
            v1.list_namespaced_pod,
            "t",
            resource_version=relisted.metadata.resource_version,
            timeout_seconds=10,
        )
        task = asyncio.ensure_future(collect(stream, 1))
        await asyncio.sleep(0.3)
        await v1.create_namespaced_pod("t", pod("after"))
        (event,) = await asyncio.wait_for(task, 10)
        assert event["raw_object"]["metadata"]["name"] == "after"

    run(control_plane, body)


def test_stale_resource_version_one_update_wins(control_plane: ControlPlane) -> None:
    async def body(v1: client.CoreV1Api) -> None:
        created = await v1.create_namespaced_pod("t", pod("shared"))
        a, b = created.to_dict(), created.to_dict()
        a_body = {
            **pod("shared", who="a"),
            "metadata": {
                **pod("shared", who="a")["metadata"],
                "resourceVersion": a["metadata"]["resource_version"],
            },
        }
        b_body = {
            **pod("shared", who="b"),
            "metadata": {
                **pod("shared", who="b")["metadata"],
                "resourceVersion": b["metadata"]["resource_version"],
            },
        }
        results = await asyncio.gather(
            v1.replace_namespaced_pod("shared", "t", a_body),
            v1.replace_namespaced_pod("shared", "t", b_body),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, ApiException)]
        assert len(wins) == 1 and len(losses) == 1, results
        assert losses[0].status == 409 and "Conflict" in (losses[0].body or "")
        stored = await v1.read_namespaced_pod("shared", "t")
        assert stored.metadata.labels == wins[0].metadata.labels

    run(control_plane, body)


def test_concurrent_creates_each_seen_once_by_every_watcher(control_plane: ControlPlane) -> None:
    writers, per_writer, watchers = 10, 100, 3

    async def body(v1: client.CoreV1Api) -> None:
        rv = (await v1.list_namespaced_pod("t")).metadata.resource_version
        clients = [await api_client(control_plane) for _ in range(writers)]
        watch_clients = [await api_client(control_plane) for _ in range(watchers)]
        try:
            tasks = []
            for wc in watch_clients:
                stream = open_watch(
                    client.CoreV1Api(wc).list_namespaced_pod,
                    "t",
                    resource_version=rv,
                    timeout_seconds=150,
                )
                tasks.append(asyncio.ensure_future(collect(stream, writers * per_writer)))
            await asyncio.sleep(0.5)

            async def write(i: int, api: client.ApiClient) -> None:
                core = client.CoreV1Api(api)
                for j in range(per_writer):
                    await core.create_namespaced_pod("t", pod(f"w{i}-{j}"))

            await asyncio.gather(*(write(i, c) for i, c in enumerate(clients)))
            listed = await v1.list_namespaced_pod("t")
            assert len(listed.items) == writers * per_writer
            expected = {f"w{i}-{j}" for i in range(writers) for j in range(per_writer)}
            for events in await asyncio.wait_for(asyncio.gather(*tasks), 120):
                names = [e["raw_object"]["metadata"]["name"] for e in events]
                assert {e["type"] for e in events} == {"ADDED"}
                assert len(names) == len(expected) and set(names) == expected
                rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
                assert rvs == sorted(rvs)
        finally:
            for c in (*clients, *watch_clients):
                await c.close()

    run(control_plane, body)


def test_apiserver_killed_mid_watch_then_rewatch_loses_nothing(
    control_plane: ControlPlane,
) -> None:
    async def body(v1: client.CoreV1Api) -> None:
        rv = (await v1.list_namespaced_pod("t")).metadata.resource_version
        stream = open_watch(v1.list_namespaced_pod, "t", resource_version=rv, timeout_seconds=60)
        seen: list[dict[str, Any]] = []
        ended = asyncio.Event()

        async def consume() -> None:
            try:
                async for event in stream:
                    seen.append(event)
            except Exception:  # the connection broke: as good as the end of the stream
                pass
            ended.set()

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        await v1.create_namespaced_pod("t", pod("k1"))
        await v1.create_namespaced_pod("t", pod("k2"))
        while len(seen) < 2:
            await asyncio.sleep(0.05)
        os.kill(control_plane.apiserver_pid, signal.SIGKILL)
        await asyncio.wait_for(ended.wait(), 10)
        await task
        last_rv = seen[-1]["raw_object"]["metadata"]["resourceVersion"]
        # while the API server is down another writer of the same etcd goes on
        host, port = control_plane.etcd.host_port
        etcd = EtcdClient(f"{host}:{port}")
        try:
            storage = Storage(etcd)
            for name in ("d1", "d2", "d3"):
                await storage.create(PODS, prepare_create(PODS, pod(name), "t"))
        finally:
            await etcd.close()
        await asyncio.to_thread(restart_apiserver, control_plane)
        relisted = await v1.list_namespaced_pod("t")
        assert sorted(p.metadata.name for p in relisted.items) == ["d1", "d2", "d3", "k1", "k2"]
        stream = open_watch(
            v1.list_namespaced_pod, "t", resource_version=last_rv, timeout_seconds=10
        )
        task2 = asyncio.ensure_future(collect(stream, 4))
        await asyncio.sleep(0.3)
        await v1.create_namespaced_pod("t", pod("k3"))
        events = await asyncio.wait_for(task2, 15)
        assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "d1"),
            ("ADDED", "d2"),
            ("ADDED", "d3"),
            ("ADDED", "k3"),
        ]

    run(control_plane, body)


def test_etcd_killed_mid_watch_then_rewatch_loses_nothing(control_plane: ControlPlane) -> None:
    async def body(v1: client.CoreV1Api) -> None:
        rv = (await v1.list_namespaced_pod("t")).metadata.resource_version
        stream = open_watch(v1.list_namespaced_pod, "t", resource_version=rv, timeout_seconds=60)
        seen: list[dict[str, Any]] = []
        failure: list[BaseException] = []

        async def consume() -> None:
            try:
                async for event in stream:
                    seen.append(event)
            except ApiException as err:  # the ERROR event the API server sends
                failure.append(err)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        await v1.create_namespaced_pod("t", pod("e1"))
        while not seen:
            await asyncio.sleep(0.05)
        os.kill(control_plane.etcd.pid, signal.SIGKILL)
        await asyncio.wait_for(task, 15)
        assert failure and failure[0].status == 503, failure
        with pytest.raises(ApiException) as exc:
            await v1.create_namespaced_pod("t", pod("while-down"))
        assert exc.value.status == 503
        await asyncio.to_thread(restart_etcd_member, control_plane)
        await v1.create_namespaced_pod("t", pod("e2"))
        last_rv = seen[-1]["raw_object"]["metadata"]["resourceVersion"]
        rewatch = open_watch(
            v1.list_namespaced_pod, "t", resource_version=last_rv, timeout_seconds=10
        )
        events = await asyncio.wait_for(collect(rewatch, 1), 15)
        assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events] == [
            ("ADDED", "e2")
        ]
        relisted = await v1.list_namespaced_pod("t")
        assert sorted(p.metadata.name for p in relisted.items) == ["e1", "e2"]

    run(control_plane, body)
