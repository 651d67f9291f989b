"""Endpoint manager: the life of every pod attachment on this node, as Cilium's endpoint states.

create:  creating → waiting-for-identity → waiting-to-regenerate → regenerating → ready
delete:  (any) → disconnecting → disconnected (record removed)
restore: (persisted) → restoring → ready, or removed when its netns or device is gone

Ordering contract (a pod never runs unprotected, nothing is half-made):
  * the record is persisted *before* any kernel object is made (intent first), so a crash at any
    point leaves a record that start-up ``restore`` either completes or removes;
  * the endpoint map entry is written without the READY flag, the programs are attached, and only
    then is READY set: the datapath drops (DROP_EP_NOT_READY) rather than forwards for a pod whose
    programs are not in place; the API answers only once the endpoint is ready.
Mutations are serialized by one lock; netlink work runs in a worker thread (which starts and
ends in the node netns), map updates on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

from ciliary.agent.identity import IdentityAllocator
from ciliary.agent.ipam import IPAM, IPAMError
from ciliary.agent.podstore import PodLookup, PodMeta, no_pods
from ciliary.agent.policymanager import PolicyManager
from ciliary.core import atomicfile as store
from ciliary.core.models import (
    CheckResponse,
    Endpoint,
    EndpointCheckRequest,
    EndpointCreateRequest,
    EndpointState,
    IPAllocation,
    IPAMAllocateRequest,
    StateChange,
)
from ciliary.datapath.linux import link as links
from ciliary.datapath.linux.errors import LinkError, NetnsNotFoundError
from ciliary.datapath.loader import NodeDatapath
from ciliary.datapath.maps.endpoints import EP_F_READY
from ciliary.k8s.podidentity import security_labels
from ciliary.policy.identity import RESERVED_LABELS

log = logging.getLogger(__name__)
MAX_ENDPOINT_ID = 4095


def owner_of(container_id: str, ifname: str) -> str:
    """IPAM owner key of an attachment, as CNI identifies it."""
    return f"{container_id}/{ifname}"


class EndpointError(Exception):
    """An endpoint operation failed; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 500, kind: str = "endpoint") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class EndpointManager:
    def __init__(
        self,
        *,
        state_dir: Path,
        datapath: NodeDatapath,
        ipam: IPAM,
        identities: IdentityAllocator,
        pods: PodLookup = no_pods,
        policy: PolicyManager | None = None,
        mtu: int = 1500,
        on_change: Callable[[Endpoint], None] | None = None,
        on_regeneration: Callable[[float, bool], None] | None = None,
    ) -> None:
        self._dir = state_dir / "endpoints"
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dp = datapath
        self._ipam = ipam
        self._ids = identities
        self._pods = pods
        self._pod_meta: dict[int, PodMeta] = {}
        """Each endpoint's pod metadata, read from the store once (create/restore)."""
        self._policy = policy
        self._mtu = mtu
        self._on_change = on_change
        # (seconds, ok) of every policy regeneration of a ready endpoint (regenerate_all), for
        # cilium_endpoint_regeneration*; creation and restore show up through on_change
        self._on_regeneration = on_regeneration
        self._eps: dict[int, Endpoint] = {}
        self._lock = asyncio.Lock()

    # ---- queries -------------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        return [self._eps[i] for i in sorted(self._eps)]

    def get(self, ep_id: int) -> Endpoint | None:
        return self._eps.get(ep_id)

    def by_container(self, container_id: str, ifname: str | None = None) -> Endpoint | None:
        for ep in self._eps.values():
            if ep.container_id == container_id and (ifname is None or ep.ifname == ifname):
                return ep
        return None

    def counts_by_state(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ep in self._eps.values():
            out[ep.state.value] = out.get(ep.state.value, 0) + 1
        return out

    # ---- persistence ---------------------------------------------------------------------

    def _path(self, ep_id: int) -> Path:
        return self._dir / f"{ep_id}.json"

    def _set(
        self, ep: Endpoint, state: EndpointState, reason: str = "", **update: object
    ) -> Endpoint:
        log_entry = StateChange(time=time.time(), state=state, reason=reason)
        new = ep.model_copy(update={"state": state, "log": [*ep.log, log_entry][-20:], **update})
        self._eps[new.id] = new
        store.write_json(self._path(new.id), new.model_dump(mode="json"))
        if self._on_change is not None:
            self._on_change(new)
        return new

    def _next_id(self) -> int:
        used = set(self._eps)
        for candidate in range(1, MAX_ENDPOINT_ID + 1):
            if candidate not in used:
                return candidate
        raise EndpointError("no free endpoint id on this node", 503, "exhausted")

    def _regenerated(self, started: float, ok: bool) -> None:
        if self._on_regeneration is not None:
            self._on_regeneration(time.monotonic() - started, ok)

    # ---- datapath ------------------------------------------------------------------------

    def _addresses(self, ep: Endpoint) -> list[IPv4Address | IPv6Address]:
        return [ip_address(a) for a in (ep.ipv4, ep.ipv6) if a is not None]

    def _program(self, ep: Endpoint, *, ready: bool) -> None:
        for addr in self._addresses(ep):
            self._dp.endpoints.upsert(
                addr,
                ifindex=ep.lxc_ifindex,
                sec_id=ep.identity,
                ep_id=ep.id,
                flags=EP_F_READY if ready else 0,
                mac=ep.mac,
                node_mac=ep.node_mac,
            )
            self._dp.ipcache.upsert(ip_network(addr), ep.identity)

    def _unprogram(self, ep: Endpoint) -> None:
        for addr in self._addresses(ep):
            current = self._dp.endpoints.get(addr)
            if current is not None and current.ep_id == ep.id:
                self._dp.endpoints.delete(addr)
            self._dp.ipcache.delete(ip_network(addr))

    # ---- create --------------------------------------------------------------------------

    async def create(
        self, req: EndpointCreateRequest, *, reserved_identity: int | None = None
    ) -> tuple[Endpoint, bool]:
        """(the endpoint, whether it was made now). A repeated ADD of an attachment that exists
        returns it untouched (CNI: same network, container and ifname give the same result);
        anything else for that container and ifname is a conflict, never a silent rebuild that
        would give the first attachment's CHECK and DEL a different endpoint.

        ``reserved_identity`` is for the agent's own endpoints only (the health endpoint's
        ``reserved:health``), never an API request's: the endpoint gets that identity and its
        reserved labels instead of its pod's."""
        if reserved_identity is not None and reserved_identity not in RESERVED_LABELS:
            raise EndpointError(f"no reserved identity {reserved_identity}", 400, "identity")
        async with self._lock:
            old = self.by_container(req.container_id, req.ifname)
            if old is None:
                return await self._create_locked(req, reserved_identity), True
            return self._existing(old, req), False

    def _existing(self, ep: Endpoint, req: EndpointCreateRequest) -> Endpoint:
        """``ep`` when ``req`` asks for exactly it again; else the conflict error. (Only ready
        endpoints are seen here: create holds the lock until an endpoint is ready or gone, and
        restore removes records a crash left half-made.)"""
        owner = owner_of(req.container_id, req.ifname)
        if ep.network != req.network:
            mine = f"network {ep.network!r}" if ep.network else "no CNI network"
            raise EndpointError(
                f"{owner} is already attached by {mine} (endpoint {ep.id}); network "
                f"{req.network!r} cannot attach the same container interface: use another "
                "ifname, or DEL the existing attachment first",
                409,
                "attachment-conflict",
            )
        wanted = [(a, b) for a, b in ((req.ipv4, ep.ipv4), (req.ipv6, ep.ipv6)) if a]
        if ep.netns != req.netns or any(ip_address(a) != ip_address(b or a) for a, b in wanted):
            raise EndpointError(
                f"{owner} is already attached (endpoint {ep.id}, netns {ep.netns}, "
                f"{', '.join(a for a in (ep.ipv4, ep.ipv6) if a)}): a repeated ADD must ask for "
                "the same netns and addresses; DEL it first to attach it differently",
                409,
                "attachment-conflict",
            )
        return ep

    async def _meta(self, namespace: str, pod_name: str) -> PodMeta | None:
        return await self._pods(namespace, pod_name) if pod_name else None

    def _named_ports(self, ep: Endpoint) -> dict[str, tuple[int, str]]:
        meta = self._pod_meta.get(ep.id)
        return meta.named_ports if meta is not None else {}

    def named_ports(self, ep_id: int) -> dict[str, tuple[int, str]]:
        """The endpoint's pod's named container ports (name → (port, protocol)), as read at
        create/restore."""
        meta = self._pod_meta.get(ep_id)
        return dict(meta.named_ports) if meta is not None else {}

    def workloads(self, ep_id: int) -> tuple[tuple[str, str], ...]:
        """The (name, kind) controllers of the endpoint's pod, as read at create/restore."""
        meta = self._pod_meta.get(ep_id)
        return meta.workloads if meta is not None else ()

    def _remote_ports_changed(self, *pending: Endpoint) -> frozenset[str]:
        """Hand every local pod's named ports (with its identity) to the policy manager, the
        ``pending`` endpoints (not recorded with their identity yet) included; returns the port
        names whose resolution changed (egress named ports)."""
        if self._policy is None:
            return frozenset()
        eps = {e.id: e for e in self._eps.values()} | {e.id: e for e in pending}
        return self._policy.set_remote_named_ports(
            (eps[i].identity, meta.named_ports)
            for i, meta in self._pod_meta.items()
            if i in eps and eps[i].identity != 0
        )

    def _realize_peers(self, changed: frozenset[Any], names: frozenset[str], skip: int) -> None:
        """Every other endpoint whose selections changed, or whose egress named ports moved."""
        if self._policy is None:
            return
        others = dict.fromkeys(
            [*self._policy.affected(changed), *self._policy.affected_by_ports(names)]
        )
        for other in others:
            peer = self._eps.get(other)
            if peer is not None and other != skip:
                self._policy.realize(peer, self._named_ports(peer))

    def _realize_policy(self, ep: Endpoint, changed: frozenset[Any]) -> None:
        """This endpoint's map, then every peer whose selections the new identity changed (or
        whose egress named ports the new pod's ports resolve)."""
        if self._policy is None:
            return
        # a pod declaring no named port cannot change how any name resolves
        names = self._remote_ports_changed(ep) if self._named_ports(ep) else frozenset()
        self._policy.realize(ep, self._named_ports(ep))
        self._realize_peers(changed, names, ep.id)

    def use_identities(self, identities: IdentityAllocator) -> None:
        """Allocate from ``identities`` from now on; only before any endpoint exists (the
        daemon, once its cluster-wide allocator is synced, before restore)."""
        if self._eps:
            raise RuntimeError("identity allocator switched with endpoints present")
        self._ids = identities

    async def selections_changed(self, changed: frozenset[Any]) -> None:
        """Identities came or went elsewhere in the cluster: re-realize the endpoints whose
        policy depends on a selector whose selection changed."""
        if self._policy is None or not changed:
            return
        async with self._lock:
            self._realize_peers(changed, frozenset(), skip=0)

    async def pod_changed(self, namespace: str, pod_name: str, meta: PodMeta) -> int:
        """The cluster's view of a pod (or of its namespace) arrived or changed: each ready
        endpoint of it whose security labels differ gets the identity of the new labels (maps,
        ipcache and the policy of it and its peers), as upstream's pod watcher updates an
        endpoint's labels. A pod the cluster did not know at CNI ADD is settled this way once
        the API has it. Returns how many endpoints changed."""
        async with self._lock:
            changed_eps = 0
            for ep in list(self._eps.values()):
                if ep.namespace != namespace or ep.pod_name != pod_name or ep.reserved_identity:
                    continue
                self._pod_meta[ep.id] = meta
                if ep.state != EndpointState.READY:
                    continue
                sec_labels = security_labels(namespace, meta.labels, meta.namespace_labels)
                if self._ids.lookup(ep.identity) == sec_labels and ep.labels == meta.labels:
                    continue
                identity = await self._ids.allocate(sec_labels)
                changed: frozenset[Any] = frozenset()
                if self._policy is not None:
                    changed = self._policy.identity_added(identity, sec_labels)
                updated = ep.model_copy(update={"labels": dict(meta.labels), "identity": identity})
                self._program(updated, ready=True)
                self._realize_policy(updated, changed)
                self._set(updated, EndpointState.READY, "pod labels changed")
                changed_eps += 1
            return changed_eps

    async def regenerate_all(self, reason: str) -> int:
        """Recompute and write every endpoint's policy (policy repository changed)."""
        if self._policy is None:
            return 0
        async with self._lock:
            for ep in list(self._eps.values()):
                if ep.state == EndpointState.READY:
                    started = time.monotonic()
                    try:
                        self._policy.realize(ep, self._named_ports(ep))
                    except Exception:
                        self._regenerated(started, ok=False)
                        raise
                    self._regenerated(started, ok=True)
            log.info("regenerated %d endpoints: %s", len(self._eps), reason)
            return len(self._eps)

    def _identity_labels(self, ep: Endpoint, meta: PodMeta | None) -> tuple[str, ...]:
        ns_labels = meta.namespace_labels if meta is not None else {}
        return security_labels(ep.namespace, ep.labels, ns_labels)

    async def _resolve_identity(
        self, ep: Endpoint, meta: PodMeta | None
    ) -> tuple[int, tuple[str, ...]]:
        """(number, security labels) of the endpoint: its reserved identity's own (the health
        endpoint's), else the allocator's number for its pod's labels."""
        if ep.reserved_identity is not None:
            return ep.reserved_identity, tuple(sorted(RESERVED_LABELS[ep.reserved_identity]))
        labels = self._identity_labels(ep, meta)
        return await self._ids.allocate(labels), labels

    async def _create_locked(
        self, req: EndpointCreateRequest, reserved_identity: int | None = None
    ) -> Endpoint:
        ep_id = self._next_id()
        meta = await self._meta(req.namespace, req.pod_name)
        labels = dict(req.labels) if req.labels else dict(meta.labels if meta else {})
        ep = Endpoint(
            id=ep_id,
            container_id=req.container_id,
            pod_name=req.pod_name,
            namespace=req.namespace,
            labels=labels,
            identity=0,
            state=EndpointState.CREATING,
            ipv4=None,
            ipv6=None,
            ifname=req.ifname,
            netns=req.netns,
            lxc=links.lxc_name(req.container_id, req.ifname),
            lxc_ifindex=0,
            mac="",
            node_mac="",
            mtu=req.mtu or self._mtu,
            created_at=time.time(),
            network=req.network,
            reserved_identity=reserved_identity,
        )
        # intent first: a crash from here on leaves a record that restore cleans up
        ep = self._set(ep, EndpointState.CREATING, "endpoint requested")
        try:
            try:
                allocs = self._ipam.allocate(
                    IPAMAllocateRequest(
                        owner=owner_of(req.container_id, req.ifname),
                        kind="endpoint",
                        requested=[a for a in (req.ipv4, req.ipv6) if a],
                        pools=req.pools,
                    ),
                    pod_annotations=meta.annotations if meta else None,
                )
            except IPAMError as err:
                status = 409 if err.kind in ("exhausted", "conflict") else 400
                raise EndpointError(
                    str(err), status, "exhausted" if err.kind == "exhausted" else "ipam"
                ) from err
            v4 = next((IPv4Address(a.address) for a in allocs if a.family == 4), None)
            v6 = next((IPv6Address(a.address) for a in allocs if a.family == 6), None)
            router_v4, router_v6 = self._ipam.router_v4, self._ipam.router_v6
            ep = self._set(
                ep,
                EndpointState.WAITING_FOR_IDENTITY,
                "addresses allocated, resolving labels",
                ipv4=str(v4) if v4 else None,
                ipv6=str(v6) if v6 else None,
                ipv4_gateway=str(router_v4) if v4 and router_v4 else None,
                ipv6_gateway=str(router_v6) if v6 and router_v6 else None,
            )
            self._pod_meta[ep.id] = meta or PodMeta()
            identity, sec_labels = await self._resolve_identity(ep, meta)
            changed: frozenset[Any] = frozenset()
            if self._policy is not None:
                changed = self._policy.identity_added(identity, sec_labels)
            ep = self._set(
                ep, EndpointState.WAITING_TO_REGENERATE, "identity ready", identity=identity
            )
            ep = self._set(ep, EndpointState.REGENERATING, "creating interface and datapath")
            pod_if = await asyncio.to_thread(
                links.create_pod_interface,
                netns_path=req.netns,
                container_id=req.container_id,
                ifname=req.ifname,
                ipv4=v4,
                ipv6=v6,
                router_v4=router_v4,
                router_v6=router_v6,
                mtu=ep.mtu,
            )
            ep = ep.model_copy(
                update={
                    "lxc_ifindex": pod_if.lxc_ifindex,
                    "mac": pod_if.mac,
                    "node_mac": pod_if.node_mac,
                }
            )
            self._program(ep, ready=False)
            self._dp.attach(pod_if.lxc_ifindex)
            # the pod's policy (and its peers') is in the maps before the endpoint turns ready
            self._realize_policy(ep, changed)
            self._program(ep, ready=True)
            return self._set(ep, EndpointState.READY, "datapath programmed")
        except Exception as err:
            log.warning("endpoint %d (%s) creation failed: %s", ep_id, req.container_id, err)
            await self._teardown(ep)
            if isinstance(err, EndpointError):
                raise
            if isinstance(err, NetnsNotFoundError):
                raise EndpointError(str(err), 404, "netns") from err
            status = 400 if isinstance(err, LinkError) else 500
            raise EndpointError(
                f"cannot create endpoint for {req.container_id}: {err}", status
            ) from err

    # ---- delete --------------------------------------------------------------------------

    async def delete(self, ep_id: int) -> Endpoint:
        async with self._lock:
            ep = self._eps.get(ep_id)
            if ep is None:
                raise EndpointError(f"endpoint {ep_id} not found", 404, "not-found")
            return await self._delete_locked(ep, "deleted via API")

    async def _delete_locked(self, ep: Endpoint, reason: str) -> Endpoint:
        ep = self._set(ep, EndpointState.DISCONNECTING, reason)
        await self._teardown(ep)
        return ep.model_copy(update={"state": EndpointState.DISCONNECTED})

    async def _teardown(self, ep: Endpoint) -> None:
        """Best-effort removal of everything an endpoint may own; never raises for absent parts."""
        try:
            self._unprogram(ep)
            meta = self._pod_meta.pop(ep.id, None)
            if self._policy is not None:
                self._policy.forget(ep.id)
                if meta is not None and meta.named_ports:
                    # peers allowed towards its named ports lose them
                    self._realize_peers(frozenset(), self._remote_ports_changed(), ep.id)
        except Exception as err:  # a map error must not keep the rest alive
            log.warning("endpoint %d: map cleanup failed: %s", ep.id, err)
        try:
            await asyncio.to_thread(links.delete_link, ep.lxc)
        except LinkError as err:
            log.warning("endpoint %d: %s", ep.id, err)
        try:
            self._ipam.release(owner_of(ep.container_id, ep.ifname))
        except IPAMError as err:
            log.warning("endpoint %d: releasing addresses failed: %s", ep.id, err)
        self._eps.pop(ep.id, None)
        store.remove(self._path(ep.id))
        if self._on_change is not None:
            self._on_change(ep.model_copy(update={"state": EndpointState.DISCONNECTED}))

    # ---- restore -------------------------------------------------------------------------

    async def restore(self) -> tuple[int, int]:
        """Bring back persisted endpoints after a restart; returns (restored, removed)."""
        restored = removed = 0
        async with self._lock:
            records: list[Endpoint] = []
            for path in sorted(self._dir.glob("*.json")):
                try:
                    records.append(Endpoint.model_validate(store.read_json(path)))
                except (OSError, ValueError) as err:
                    log.warning("dropping unreadable endpoint record %s: %s", path, err)
                    store.remove(path)
            for ep in records:
                self._eps[ep.id] = ep
            for ep in records:
                if await self._restore_one(ep):
                    restored += 1
                else:
                    removed += 1
            removed += await self._reconcile()
            self._release_orphans()
        return restored, removed

    def _release_orphans(self) -> list[IPAllocation]:
        """Addresses of endpoints that never finished (or vanished) go back to the pool."""
        owners = {owner_of(e.container_id, e.ifname) for e in self._eps.values()}
        return self._ipam.gc(lambda a: a.kind != "endpoint" or a.owner in owners)

    async def release_orphaned_addresses(self) -> list[IPAllocation]:
        async with self._lock:
            return self._release_orphans()

    # ---- CNI GC / CHECK ----------------------------------------------------------------------

    async def gc(
        self, network: str, valid: set[str], scope: str = "endpoints"
    ) -> tuple[list[int], list[str]]:
        """CNI GC of ``network``: ``endpoints`` (ciliary-cni) removes that network's endpoints,
        and their addresses, whose attachment (``cid/ifname``) is not valid; ``ipam-plugin``
        (ciliary-ipam) releases only addresses handed to other plugins.

        As the spec says, a GC only considers attachments the same network made: endpoints of
        another network, and endpoints with no network recorded (made through the API, or
        persisted before the network was recorded at ADD: which network made them cannot be
        proven), are never collected; DEL still removes them. Endpoint addresses go only with
        their endpoint (or when no endpoint owns them any more). IPAM-plugin allocations do not
        record their network: their GC is by attachment only (see docs/cni.md)."""
        removed: list[int] = []
        async with self._lock:
            if scope == "endpoints":
                for ep in list(self._eps.values()):
                    if ep.network != network:
                        continue
                    if owner_of(ep.container_id, ep.ifname) not in valid:
                        await self._delete_locked(ep, f"garbage-collected (CNI GC of {network})")
                        removed.append(ep.id)
                owners = {owner_of(e.container_id, e.ifname) for e in self._eps.values()}
                released = self._ipam.gc(lambda a: a.kind != "endpoint" or a.owner in owners)
            else:
                released = self._ipam.gc(lambda a: a.kind != "ipam-plugin" or a.owner in valid)
        return removed, [a.address for a in released]

    async def check(self, req: EndpointCheckRequest) -> CheckResponse:
        problems: list[str] = []
        ep = self.by_container(req.container_id, req.ifname)
        if ep is None:
            return CheckResponse(ok=False, problems=["no endpoint on this node"])
        if req.network is not None and ep.network not in (None, req.network):
            problems.append(f"endpoint {ep.id} belongs to network {ep.network!r}")
        if ep.state != EndpointState.READY:
            problems.append(f"endpoint {ep.id} is {ep.state.value}, not ready")
        if ep.netns != req.netns:
            problems.append(f"endpoint {ep.id} lives in {ep.netns}, not {req.netns}")
        try:
            state = await asyncio.to_thread(links.inspect_pod_interface, req.netns, req.ifname)
        except LinkError as err:
            return CheckResponse(ok=False, problems=[*problems, str(err)])
        if not state.exists:
            problems.append(f"interface {req.ifname} is missing in {req.netns}")
        else:
            if not state.up:
                problems.append(f"interface {req.ifname} is down")
            want = [a.split("/")[0] for a in req.addresses] or [a for a in (ep.ipv4, ep.ipv6) if a]
            for addr in want:
                if addr not in state.addresses:
                    problems.append(f"address {addr} is missing on {req.ifname}")
            for gw in (ep.ipv4_gateway, ep.ipv6_gateway):
                if gw and gw not in state.default_gateways:
                    problems.append(f"default route via {gw} is missing")
        ifindex = await asyncio.to_thread(links.link_index, ep.lxc)
        if ifindex is None:
            problems.append(f"node-side device {ep.lxc} is missing")
        elif not self._dp.is_attached(ifindex):
            problems.append(f"programs are not attached to {ep.lxc}")
        return CheckResponse(ok=not problems, problems=problems)

    async def _restore_one(self, ep: Endpoint) -> bool:
        """Re-program one persisted endpoint; False (and removed) if it died while we were down."""
        # Only endpoints that were ready (or being restored from ready) come back. One caught
        # half-way through creation belongs to an ADD that failed from the runtime's point of
        # view (it will DEL or retry), and its record lacks what re-programming needs.
        finished = (EndpointState.READY, EndpointState.RESTORING)
        alive = ep.state in finished and bool(ep.mac) and Path(ep.netns).exists()
        ifindex = await asyncio.to_thread(links.link_index, ep.lxc) if alive else None
        if ifindex is None:
            log.info("endpoint %d (%s): gone while down, removing", ep.id, ep.container_id)
            await self._teardown(ep)
            return False
        restoring = self._set(ep, EndpointState.RESTORING, "agent restart", lxc_ifindex=ifindex)
        meta = await self._meta(ep.namespace, ep.pod_name)
        self._pod_meta[ep.id] = meta or PodMeta()
        identity, labels = await self._resolve_identity(ep, meta)
        programmed = restoring.model_copy(update={"identity": identity})
        changed: frozenset[Any] = frozenset()
        if self._policy is not None:
            changed = self._policy.identity_added(identity, labels)
        self._program(programmed, ready=True)
        self._dp.attach(ifindex)
        self._realize_policy(programmed, changed)
        self._set(programmed, EndpointState.READY, "restored")
        return True

    async def _reconcile(self) -> int:
        """Remove kernel objects no endpoint owns (left by a crash between steps)."""
        owned = {ep.lxc for ep in self._eps.values()}
        removed = 0
        for name in await asyncio.to_thread(links.list_links, links.LXC_PREFIX):
            if name not in owned:
                await asyncio.to_thread(links.delete_link, name)
                removed += 1
        self._dp.policy.prune(self._eps)
        mine = {(a, ep.id) for ep in self._eps.values() for a in self._addresses(ep)}
        for rec in self._dp.endpoints.items():
            if (rec.addr, rec.ep_id) not in mine:
                self._dp.endpoints.delete(rec.addr)
        return removed
