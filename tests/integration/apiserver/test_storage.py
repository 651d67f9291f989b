"""Storage semantics on a real etcd: revisions as resourceVersions, transactions as
optimistic concurrency, consistent paged lists, watches from a revision, compaction → 410."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ciliary.apiserver import errors
from ciliary.apiserver.etcd import EtcdClient
from ciliary.apiserver.etcdserver import EtcdProcess
from ciliary.apiserver.storage import DELETE, Change, Storage
from ciliary.k8s.resources import by_path

pytestmark = pytest.mark.timeout(60)

PODS = by_path("", "v1", "pods")


def pod(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
    }


def run(etcd: EtcdProcess, body: Any) -> Any:
    async def main() -> Any:
        host, port = etcd.host_port
        client = EtcdClient(f"{host}:{port}")
        try:
            return await body(Storage(client))
        finally:
            await client.close()

    return asyncio.run(main())


def test_keys_revisions_and_conflicts(etcd: EtcdProcess) -> None:
    async def body(s: Storage) -> None:
        created = await s.create(PODS, pod("p1"))
        rv = int(created["metadata"]["resourceVersion"])
        raw = await s.etcd.get("/registry/pods/default/p1")
        assert raw is not None and raw.mod_revision == rv
        assert b"resourceVersion" not in raw.value  # the revision is the version
        with pytest.raises(errors.StatusError) as exc:
            await s.create(PODS, pod("p1"))
        assert (exc.value.code, exc.value.reason) == (409, "AlreadyExists")

        def relabel(o: dict[str, Any]) -> dict[str, Any]:
            o["metadata"]["labels"] = {"a": "b"}
            return o

        updated, _ = await s.update(PODS, "default", "p1", relabel, precondition_rv=rv)
        assert int(updated["metadata"]["resourceVersion"]) > rv
        with pytest.raises(errors.StatusError) as exc:
            await s.update(PODS, "default", "p1", relabel, precondition_rv=rv)
        assert (exc.value.code, exc.value.reason) == (409, "Conflict")
        assert "the object has been modified" in exc.value.message
        gone, deleted = await s.update(PODS, "default", "p1", lambda o: DELETE)
        assert deleted and gone["metadata"]["name"] == "p1"
        with pytest.raises(errors.StatusError) as exc:
            await s.get(PODS, "default", "p1")
        assert exc.value.code == 404

    run(etcd, body)


def test_paged_list_is_one_snapshot(etcd: EtcdProcess) -> None:
    async def body(s: Storage) -> None:
        for i in range(7):
            await s.create(PODS, pod(f"p{i}", "a" if i % 2 else "b", parity=str(i % 2)))
        first = await s.list(PODS, None, limit=3)
        assert [o["metadata"]["name"] for o in first.items] == ["p1", "p3", "p5"]
        assert first.continue_token
        await s.create(PODS, pod("p9", "b"))  # after the snapshot: not in later pages
        names = [o["metadata"]["name"] for o in first.items]
        token = first.continue_token
        while token:
            page = await s.list(PODS, None, limit=3, continue_token=token)
            assert page.revision == first.revision
            names += [o["metadata"]["name"] for o in page.items]
            token = page.continue_token
        assert sorted(names) == [f"p{i}" for i in range(7)]
        odd = await s.list(
            PODS, None, limit=2, match=lambda o: o["metadata"]["labels"]["parity"] == "1"
        )
        assert len(odd.items) == 2 and odd.continue_token
        only_a = await s.list(PODS, "a")
        assert {o["metadata"]["namespace"] for o in only_a.items} == {"a"}

    run(etcd, body)


def test_watch_from_revision_and_compaction(etcd: EtcdProcess) -> None:
    async def body(s: Storage) -> None:
        start = await s.revision()
        await s.create(PODS, pod("w1"))
        await s.update(PODS, "default", "w1", lambda o: {**o, "spec": {"x": 1}})
        await s.update(PODS, "default", "w1", lambda o: DELETE)
        seen: list[Change] = []
        async with s.watch(PODS, None, start) as w:
            async for item in w.changes():
                if isinstance(item, Change):
                    seen.append(item)
                if len(seen) == 3:
                    break
        assert [(c.old is None, c.new is None) for c in seen] == [
            (True, False),
            (False, False),
            (False, True),
        ]
        revs = [c.revision for c in seen]
        assert revs == sorted(revs) and revs[0] == start + 1
        deleted = seen[2].old
        assert deleted is not None and deleted["metadata"]["resourceVersion"] == str(revs[2])
        await s.etcd.compact(await s.revision())
        with pytest.raises(errors.StatusError) as exc:
            async with s.watch(PODS, None, start):
                pass
        assert (exc.value.code, exc.value.reason) == (410, "Expired")

    run(etcd, body)
