"""The few etcd v3 calls the API server makes, typed, over one gRPC channel.

aetcd (pinned) is a maintained asyncio client that works with our grpcio/protobuf; its
high-level methods leave out what kube-apiserver's storage needs (ranges at a revision with a
limit, watches from a revision with ``prev_kv`` and progress requests), so this module speaks to
etcd through aetcd's generated stubs directly — the one place that knows etcd's protocol.

Every write is one transaction guarded by a revision comparison, which is how kube-apiserver gets
optimistic concurrency from etcd: create compares ``create_revision == 0`` (the key does not
exist), update and delete compare ``mod_revision`` with the revision the caller read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

COMPACTED_MESSAGE = "required revision has been compacted"
TOO_LARGE_MESSAGE = "etcdserver: request is too large"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


class EtcdError(Exception):
    """etcd refused or could not be reached (the HTTP layer answers 500/503)."""


class EtcdUnavailableError(EtcdError):
    pass


class RequestTooLargeError(EtcdError):
    """etcd refused a write over its ``--max-request-bytes`` (1.5 MiB by default): in Kubernetes
    the size limit of one stored object."""


class RevisionCompactedError(EtcdError):
    """A read or watch at a revision etcd has already compacted away."""

    def __init__(self, compact_revision: int = 0) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted (compact revision {compact_revision})")


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """One etcd event: a put (``prev`` is the value before it, None when created) or a delete
    (``kv.value`` is empty, ``kv.mod_revision`` the delete's revision, ``prev`` the deleted)."""

    deleted: bool
    kv: KV
    prev: KV | None


@dataclass(frozen=True, slots=True)
class Progress:
    """Every event up to ``revision`` has been delivered on this watch."""

    revision: int


def prefix_end(prefix: str) -> bytes:
    """The exclusive end of a prefix range (etcd's convention: last byte + 1)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), bytes(kv.value), int(kv.create_revision), int(kv.mod_revision))


def _wrap(err: grpc.aio.AioRpcError) -> EtcdError:
    details = err.details() or ""
    if COMPACTED_MESSAGE in details:
        return RevisionCompactedError()
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EtcdUnavailableError(f"etcd unavailable: {details}")
    if TOO_LARGE_MESSAGE in details or (
        # over etcd's gRPC receive limit (--max-request-bytes + 512 KiB) the refusal comes from
        # gRPC itself, before etcd's own check
        err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    ):
        return RequestTooLargeError(TOO_LARGE_MESSAGE)
    return EtcdError(f"etcd: {err.code().name}: {details}")


class EtcdClient:
    """One channel to one etcd member (``host:port``)."""

    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        # etcd is local: after it restarts, reconnect within a second rather than after
        # gRPC's default back-off (up to two minutes), so the API server recovers with it.
        # Range responses of an unpaginated list easily pass gRPC's default 4 MiB receive
        # limit (10k ConfigMaps do); etcd's Go client, kube-apiserver's, accepts up to MaxInt32.
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.max_receive_message_length", 2**31 - 1),
            ],
        )
        self._kv = rpc.KVStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def revision(self) -> int:
        """The store's current revision."""
        rev, _, _ = await self.range("\0", limit=1, keys_only=True)
        return rev

    async def range(
        self,
        key: str,
        end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
    ) -> tuple[int, list[KV], bool]:
        """(header revision, key-values in key order, more) of ``[key, end)`` at ``revision``
        (0: the current one)."""
        req = rpc.RangeRequest(
            key=key.encode(), revision=revision, limit=limit, keys_only=keys_only
        )
        if end is not None:
            req.range_end = end
        try:
            resp = await self._kv.Range(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            raise _wrap(err) from err
        return int(resp.header.revision), [_kv(kv) for kv in resp.kvs], bool(resp.more)

    async def get(self, key: str) -> KV | None:
        _, kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def _txn(self, compare: Any, success: list[Any], failure: list[Any]) -> Any:
        req = rpc.TxnRequest(compare=[compare], success=success, failure=failure)
        try:
            return await self._kv.Txn(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            raise _wrap(err) from err

    async def create(self, key: str, value: bytes) -> int | None:
        """Put ``key`` only if it does not exist: its revision, or None if it exists."""
        compare = rpc.Compare(
            key=key.encode(),
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.CREATE,
            create_revision=0,
        )
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))
        resp = await self._txn(compare, [put], [])
        return int(resp.header.revision) if resp.succeeded else None

    async def update(self, key: str, value: bytes, mod_revision: int) -> int | None:
        """Put ``key`` only if it is still at ``mod_revision``: the new revision, or None."""
        compare = rpc.Compare(
            key=key.encode(),
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.MOD,
            mod_revision=mod_revision,
        )
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))
        resp = await self._txn(compare, [put], [])
        return int(resp.header.revision) if resp.succeeded else None

    async def delete(self, key: str, mod_revision: int) -> int | None:
        """Delete ``key`` only if it is still at ``mod_revision``: the delete's revision, or
        None."""
        compare = rpc.Compare(
            key=key.encode(),
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.MOD,
            mod_revision=mod_revision,
        )
        op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode()))
        resp = await self._txn(compare, [op], [])
        return int(resp.header.revision) if resp.succeeded else None

    async def transaction(
        self,
        *,
        absent: list[str],
        at: dict[str, int],
        puts: dict[str, bytes],
        deletes: list[str],
    ) -> tuple[int | None, set[str]]:
        """One transaction of several keys: if every key of ``absent`` does not exist and every
        key of ``at`` is still at its ``mod_revision``, put ``puts`` and delete ``deletes``.
        Returns (the revision, or None when a comparison failed; then the keys of ``absent``
        that exist)."""
        compares = [
            rpc.Compare(
                key=k.encode(), result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                create_revision=0,
            )
            for k in absent
        ] + [
            rpc.Compare(
                key=k.encode(), result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                mod_revision=rev,
            )
            for k, rev in at.items()
        ]  # fmt: skip
        success = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=v))
            for k, v in puts.items()
        ] + [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode()))
            for k in deletes
        ]
        failure = [
            rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode(), keys_only=True))
            for k in absent
        ]
        req = rpc.TxnRequest(compare=compares, success=success, failure=failure)
        try:
            resp = await self._kv.Txn(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            raise _wrap(err) from err
        if resp.succeeded:
            return int(resp.header.revision), set()
        existing = {k for k, r in zip(absent, resp.responses, strict=True) if r.response_range.kvs}
        return None, existing

    async def compact(self, revision: int) -> None:
        try:
            await self._kv.Compact(
                rpc.CompactionRequest(revision=revision, physical=True), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as err:
            raise _wrap(err) from err

    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        return EtcdWatch(self._watch, self._kv, prefix, start_revision)


class EtcdWatch:
    """One etcd watch stream over a key prefix from ``start_revision`` (inclusive), with the
    previous values; ``request_progress`` makes etcd send a :class:`Progress` once every event
    up to its current revision has been delivered on this stream (what bookmarks are made of)."""

    def __init__(self, stub: Any, kv: Any, prefix: str, start_revision: int) -> None:
        self._stub = stub
        self._kv = kv
        self._prefix = prefix
        self._start = start_revision
        self._call: Any = None

    async def __aenter__(self) -> EtcdWatch:
        if self._start > 1:
            # etcd reports a compacted start revision only after the watch is created, in a
            # later response; a read at the revision before it fails at once instead, so a
            # too-old start is known before the caller answers its client.
            probe = rpc.RangeRequest(
                key=self._prefix.encode(),
                range_end=prefix_end(self._prefix),
                revision=self._start - 1,
                limit=1,
                keys_only=True,
            )
            try:
                await self._kv.Range(probe)
            except grpc.aio.AioRpcError as err:
                if "future revision" not in (err.details() or ""):
                    raise _wrap(err) from err
        self._call = self._stub.Watch()
        create = rpc.WatchCreateRequest(
            key=self._prefix.encode(),
            range_end=prefix_end(self._prefix),
            start_revision=self._start,
            prev_kv=True,
        )
        try:
            await self._call.write(rpc.WatchRequest(create_request=create))
            first = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise _wrap(err) from err
        if first is _EOF:
            raise EtcdUnavailableError("etcd closed the watch stream")
        if first.compact_revision:
            raise RevisionCompactedError(int(first.compact_revision))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None:
            self._call.cancel()

    async def request_progress(self) -> None:
        try:
            await self._call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            raise EtcdUnavailableError(f"etcd watch stream closed: {err}") from err

    async def events(self) -> AsyncIterator[Event | Progress]:
        """Events in revision order; raises :class:`RevisionCompactedError` when etcd compacts past
        this watch and :class:`EtcdUnavailableError` when the stream ends."""
        while True:
            try:
                resp = await self._call.read()
            except grpc.aio.AioRpcError as err:
                raise _wrap(err) from err
            if resp is _EOF:
                raise EtcdUnavailableError("etcd closed the watch stream")
            if resp.compact_revision:
                raise RevisionCompactedError(int(resp.compact_revision))
            if resp.canceled:
                raise EtcdUnavailableError(f"etcd canceled the watch: {resp.cancel_reason}")
            if not resp.events:
                yield Progress(int(resp.header.revision))
                continue
            for ev in resp.events:
                prev = _kv(ev.prev_kv) if ev.HasField("prev_kv") else None
                yield Event(ev.type == rpc.Event.DELETE, _kv(ev.kv), prev)
